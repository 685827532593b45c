"""Sharing one service (issue #17): fairness between users, cancel that stops running chunks, chunk budgets.

Real redis-server, real API (uvicorn) and workers in threads (local executor) or a real Parsl pool.
Assertions are on counters and states; the figures (delays, CPU after a cancel) are printed as
``SHARED {...}`` lines for the docs, never asserted against the clock except as generous bounds.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from fitserve.service.auth import TokenStore
from fitserve.service.guard import tree_cpu_seconds
from fitserve.service.localhost import wait_until
from fitserve.service.store import JobStore

from .conftest import Service
from .hostile_shapes import union_blowup
from .workload import tiny_inputs


def figure(**values: Any) -> None:
    print("SHARED", json.dumps(values, sort_keys=True), flush=True)


def _post(svc: Service, ws: dict, ps: dict, token: str | None = None, **options: Any) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = svc.http.post("/v1/jobs", json={"workspace": ws, "patchset": ps, "options": options}, headers=headers)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def _status(svc: Service, job_id: str, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = svc.http.get(f"/v1/jobs/{job_id}", headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _wait(svc: Service, job_id: str, token: str | None = None, timeout: float = 240) -> dict[str, Any]:
    return wait_until(
        lambda: (s := _status(svc, job_id, token))["state"] in ("done", "failed", "cancelled") and s,
        timeout=timeout,
        interval=0.1,
        what=f"job {job_id}",
    )


def test_small_job_of_another_user_waits_for_at_most_one_chunk_of_a_large_job(settings):
    """alice's 40-hypothesis job (20 chunks) runs; bob's 2-hypothesis job, submitted after it started,
    is dispatched as soon as alice's running chunk ends: at most one of alice's chunks is dispatched
    between bob's submission and bob's chunk (the stream entry ids give the dispatch order)."""
    chunk = 2
    svc = Service(settings.model_copy(update={"auth": "token", "chunk_size": chunk}))
    tokens = TokenStore(redis.Redis.from_url(settings.redis_url), settings.key_prefix)
    alice, bob = tokens.create("alice"), tokens.create("bob")
    try:
        svc.start_worker()
        warm = _post(svc, *tiny_inputs(1, [2.5]), token=bob, limits=True)  # compile the shape first
        _wait(svc, warm, bob)
        big = _post(svc, *tiny_inputs(40, [3.0 + 0.5 * k for k in range(40)]), token=alice, limits=True)
        wait_until(
            lambda: _status(svc, big, alice)["progress"]["done"] >= chunk,
            timeout=120,
            interval=0.05,
            what="alice's job to be running",
        )
        r = redis.Redis.from_url(settings.redis_url)
        now_s, now_us = r.time()
        t0 = time.monotonic()
        small = _post(svc, *tiny_inputs(2, [7.25, 8.25]), token=bob, limits=True)
        st = _wait(svc, small, bob, timeout=120)
        waited = time.monotonic() - t0
        assert st["state"] == "done" and st["counts"]["computed"] == 2

        # the dispatch order, from the stream entry ids (their time part is when a chunk was dispatched):
        # alice's chunks dispatched after bob submitted and before bob's one chunk
        def key(entry: str) -> tuple[int, int]:
            ms, seq = entry.split("-")
            return int(ms), int(seq)

        store = JobStore(r, settings.key_prefix)
        bob_chunk = key(store.chunk_ids(small)[0])
        submitted = (now_s * 1000 + now_us // 1000, 0)
        between = [c for c in map(key, store.chunk_ids(big)) if submitted <= c < bob_chunk]
        assert len(between) <= 1, f"{len(between)} of alice's chunks were dispatched before bob's"
        passed = len(between)
        alone = st["timings"]["compute_s"]
        final = _wait(svc, big, alice)
        assert final["state"] == "done" and final["progress"]["done"] == 40, final
        assert len(store.chunk_ids(big)) == 20
        figure(
            test="fairness",
            small_job_total_s=round(waited, 2),
            small_job_compute_s=round(alone, 2),
            big_job_chunks_dispatched_before_it=passed,
            big_job_total_s=round(final["timings"]["total_s"], 2),
        )
    finally:
        svc.close()


#: settings of the cancel tests: one chunk of 16 hypotheses fitted one at a time (a batch budget of
#: 24 MB fits one hypothesis of P = 166 (193 in shape buckets), not two): ~350 short compiled calls, ~5 s once compiled
LONG = {"chunk_size": 16, "batch_memory_bytes": 24_000_000}


def _long_chunk(salt: float = 0.0) -> tuple[dict, dict]:
    """16 hypotheses with upper limits on a P = 166 padded model (the union blow-up at K = 10)."""
    return union_blowup(10, n=16, salt=salt)


@pytest.fixture
def long_service(settings):
    svc = Service(settings.model_copy(update=LONG))
    try:
        yield svc
    finally:
        svc.close()


def _warm_up(svc: Service) -> float:
    """Run the long chunk's structure once (other yields), so the cancelled chunk is fitting, not compiling:
    the engine asks ``cancel()`` between compiled calls, and the first call of a structure compiles it."""
    st = _wait(svc, _post(svc, *_long_chunk(salt=0.05), limits=True), timeout=240)
    assert st["state"] == "done", st
    return st["timings"]["compute_s"]


def _cancel_and_measure(svc: Service, worker: Any, job_id: str, cpu_pid: int | None = None) -> dict[str, float]:
    wait_until(
        lambda: worker.inflight and _status(svc, job_id)["state"] == "running",
        timeout=120,
        interval=0.05,
        what="the chunk to be running",
    )
    time.sleep(1.0)  # inside the fitting
    assert worker.inflight, "the chunk finished before it could be cancelled"
    t0 = time.monotonic()
    resp = svc.http.delete(f"/v1/jobs/{job_id}")
    assert resp.status_code == 200 and resp.json()["state"] == "cancelled", resp.text
    wait_until(
        lambda: worker.chunks_cancelled == 1 and not worker.inflight,
        timeout=90,
        interval=0.05,
        what="the running chunk to stop",
    )
    stopped = time.monotonic() - t0
    cpu0 = tree_cpu_seconds(cpu_pid)
    time.sleep(3.0)
    cpu = tree_cpu_seconds(cpu_pid) - cpu0
    st = _status(svc, job_id)
    assert st["state"] == "cancelled" and st["progress"]["done"] == 0, st  # nothing recorded for the stopped chunk
    assert cpu < 1.5, f"{cpu:.2f} CPU seconds in the 3 s after the chunk stopped"
    return {"cancel_to_stop_s": round(stopped, 2), "cpu_s_in_3s_after": round(cpu, 2)}


def test_cancel_stops_the_running_chunk_local_executor(long_service):
    service = long_service
    worker = service.start_worker()
    whole = _warm_up(service)
    ws, ps = _long_chunk()
    job = _post(service, ws, ps, limits=True)
    figure(test="cancel_local", warm_up_chunk_s=round(whole, 2), **_cancel_and_measure(service, worker, job))
    tiny = service.submit(*tiny_inputs(1))  # the worker goes on
    assert service.wait(tiny["id"], timeout=120)["state"] == "done"


@pytest.mark.slow
def test_cancel_stops_the_running_chunk_parsl_executor(long_service):
    from fitserve.executors import get_executor

    service = long_service
    parsl = get_executor("parsl", workers=1, data_dir=service.settings.data_dir)
    try:
        worker = service.start_worker(executor=parsl)
        whole = _warm_up(service)
        ws, ps = _long_chunk()
        job = _post(service, ws, ps, limits=True)
        figure(
            test="cancel_parsl", warm_up_chunk_s=round(whole, 2), **_cancel_and_measure(service, worker, job)
        )  # the pool's processes included
        tiny = service.submit(*tiny_inputs(1))
        assert service.wait(tiny["id"], timeout=180)["state"] == "done"
    finally:
        service.stop_workers()
        parsl.shutdown()


def test_chunk_past_its_wall_time_budget_fails_clearly_and_the_worker_goes_on(settings):
    svc = Service(settings.model_copy(update={**LONG, "chunk_wall_s": 1.0}))
    try:
        worker = svc.start_worker()
        ws, ps = _long_chunk()
        st = _wait(svc, _post(svc, ws, ps, limits=True), timeout=120)
        assert st["state"] == "failed" and st["counts"]["errors"] == 16, st
        assert "past its wall-time budget chunk_wall_s = 1 (FITSERVE_CHUNK_WALL_S)" in st["errors"][0]["error"]
        assert worker.chunks_over_budget == 1
        ok = _wait(svc, _post(svc, *tiny_inputs(1)), timeout=120)  # the same worker: fast chunks pass
        assert ok["state"] == "done"
    finally:
        svc.close()


def test_chunk_past_the_worker_memory_budget_fails_clearly_and_health_shows_rss(settings):
    svc = Service(settings.model_copy(update={"worker_memory_bytes": 64 * 2**20, "batch_memory_bytes": 2**30}))
    try:
        worker = svc.start_worker()
        st = _wait(svc, _post(svc, *tiny_inputs(2)), timeout=120)  # any fit: this process is past 64 MiB
        assert st["state"] == "failed" and "past the worker memory budget 64 MiB" in st["errors"][0]["error"], st
        assert worker.chunks_over_budget == 1
        health = wait_until(lambda: (h := svc.http.get("/v1/health").json())["workers"] and h, timeout=10)
        w = health["workers"][0]
        assert (
            w["rss_bytes"] > 64 * 2**20
            and w["rss_tree_bytes"] >= w["rss_bytes"]
            and w["memory_budget_bytes"] == 64 * 2**20
        )
        assert health["api"]["rss_bytes"] > 0 and health["limits"]["batch_memory_bytes"] == 2**30
    finally:
        svc.close()
