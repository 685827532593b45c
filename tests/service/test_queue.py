"""A worker that dies mid-chunk does not lose the chunk: another worker claims it (XAUTOCLAIM)."""

from __future__ import annotations

import redis

from fitserve.service.queue import ChunkQueue

from .conftest import tiny_inputs, wait_until


def test_chunk_of_a_dead_worker_is_claimed_and_finished(service, tiny):
    ws, ps = tiny
    job = service.submit(ws, ps)  # no worker yet: 2 chunks wait in the stream
    queue = ChunkQueue(redis.Redis.from_url(service.settings.redis_url), service.settings.key_prefix)
    taken = queue.read("dead-worker", count=1, block_ms=None)  # a worker takes a chunk ... and dies
    assert len(taken) == 1 and taken[0].job_id == job["id"]
    assert queue.stats()["chunks_pending"] == 1
    service.start_worker()  # claim_idle_ms=1000 in the test settings
    st = service.wait(job["id"], timeout=60)
    assert st["state"] == "done" and st["counts"]["computed"] == 3 and st["counts"]["errors"] == 0
    assert queue.stats() == {**queue.stats(), "chunks_pending": 0, "chunks_waiting": 0}


def test_a_chunk_that_keeps_killing_workers_is_given_up(service, tiny):
    ws, ps = tiny
    settings = service.settings.model_copy(update={"max_deliveries": 2, "chunk_size": 3})
    r = redis.Redis.from_url(settings.redis_url)
    queue = ChunkQueue(r, settings.key_prefix)
    job = service.submit(ws, ps, patches=["sig_0"])
    assert queue.read("dead-1", count=1, block_ms=None)
    wait_until(lambda: queue.claim_stale("dead-2", 200, 1), timeout=10, what="first claim")  # delivery 2, dies again
    service.start_worker(settings=settings)  # delivery 3 > max_deliveries
    st = service.wait(job["id"], timeout=30)
    assert st["state"] == "failed" and st["counts"]["errors"] == 1
    assert "abandoned after 2 attempts" in st["errors"][0]["error"]


def test_chunks_wait_per_user_and_are_dispatched_round_robin(service):
    """Without a worker, chunks wait on their owners' lists; a read takes one user's chunk after the other's."""
    from fitserve.service.store import JobStore
    from fitserve.service.submission import enqueue_job, prepare_job

    r = redis.Redis.from_url(service.settings.redis_url)
    settings = service.settings
    store, queue = JobStore(r, settings.key_prefix), ChunkQueue(r, settings.key_prefix)
    ws, ps = tiny_inputs(6, [61.0 + k for k in range(6)])
    big, _ = enqueue_job(prepare_job(ws, ps, {}, settings), store, queue, settings, owner="alice")  # 3 chunks
    small, _ = enqueue_job(prepare_job(*tiny_inputs(1, [71.0]), {}, settings), store, queue, settings, owner="bob")
    assert queue.stats()["chunks_waiting"] == 4 and r.xlen(queue.stream) == 0
    order = [queue.read("w", count=1, block_ms=None)[0].job_id for _ in range(3)]
    assert order == [small, big, big]  # bob joined last, at the front: served before alice's second chunk
    service.http.delete(f"/v1/jobs/{big}")  # its last chunk is still waiting: dropped when its turn comes
    assert queue.read("w", count=1, block_ms=None) == []
    assert queue.stats()["chunks_waiting"] == 0
