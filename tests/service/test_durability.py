"""Durability with real processes and a real redis-server: nothing is lost, nothing is counted twice.

* a worker process killed with SIGKILL in the middle of a 200-hypothesis job: another worker
  claims its chunks (XAUTOCLAIM) and the job completes, every hypothesis recorded once;
* redis-server stopped (SIGTERM, then SIGKILL) twice in the middle of a job and started again on
  the same port and directory: the worker process rides the outages out, the API answers 503
  meanwhile, nothing stored before is lost (AOF, ``appendfsync always``), the job completes;
* the API process killed (SIGTERM, SIGKILL) and started again while a client waits on a job:
  ``job.wait()`` (sync and asyncio) carries on and returns the finished job;
* a worker frozen (SIGSTOP) until its chunk was taken over, then resumed: the chunk runs twice
  and its hypotheses are still recorded once.

Every process is a real OS process (``python -m fitserve.cli worker|serve``) on free ports, with
its data and logs in ``tmp_path``.  The figures measured (recovery times, redeliveries) are
printed on lines starting ``DURABILITY`` (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fitserve.client import AsyncClient, Client
from fitserve.service.localhost import free_port, wait_until
from fitserve.service.queue import ChunkQueue
from fitserve.service.redis_server import EmbeddedRedis
from fitserve.service.store import JobStore

from .conftest import tiny_inputs

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server not on PATH (Debian: apt-get install -y redis-server)"
)

N = 200  # hypotheses of the big job
CHUNK = 4  # hypotheses per chunk: 50 chunks, one batch shape
OPTIONS = {"limits": True}  # upper limits too: ~0.1 s a chunk, so a job lasts long enough to be hit mid-way
CLAIM_IDLE_MS = 1000


def grid(n: int = N, first: float = 5.0, step: float = 0.2) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tiny 1-bin model with ``n`` distinct signal yields (all fits converge, all limits inside the bounds)."""
    ws, ps = tiny_inputs(n)
    for i, patch in enumerate(ps["patches"]):
        patch["patch"][0]["value"]["data"] = [first + step * i]
    return ws, ps


def figure(**values: Any) -> None:
    print("DURABILITY", json.dumps(values, sort_keys=True), flush=True)


# ------------------------------------------------------------------ processes
class Procs:
    """Child processes of one test (own sessions, logs in tmp_path), all killed at the end."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp_path, env
        self.procs: list[subprocess.Popen] = []

    def start(self, label: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{label}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "fitserve.cli", *args],
            env=self.env,
            cwd=self.tmp,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        proc.label = label  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def log(self, label: str) -> str:
        return (self.tmp / f"{label}.log").read_text(errors="replace")

    def worker(self, name: str) -> subprocess.Popen:
        return self.start(name, "worker", "--name", name)

    def api(self, port: int, label: str = "api") -> subprocess.Popen:
        proc = self.start(label, "serve", "--port", str(port), "--log-level", "warning")
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited with code {proc.returncode}:\n{self.log(label)[-3000:]}")
            try:
                return httpx.get(f"{url}/v1/health", timeout=2).status_code in (200, 503)
            except httpx.TransportError:
                return False

        wait_until(up, timeout=60, interval=0.1, what="the API")
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


def service_env(redis_url: str, prefix: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_") or k == "FITSERVE_JAX_CACHE"}
    env.update(
        {
            "FITSERVE_REDIS_URL": redis_url,
            "FITSERVE_KEY_PREFIX": prefix,
            "FITSERVE_EXECUTOR": "local",
            "FITSERVE_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
            "FITSERVE_CHUNK_SIZE": str(CHUNK),
            "FITSERVE_AUTH": "open",
            "FITSERVE_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """The engine run directly, in this process, on the big job's hypotheses."""
    from fitserve.engine.scan import scan

    ws, ps = grid()
    return scan(ws, ps["patches"], OPTIONS)["results"]


# ------------------------------------------------------------------ checks
def assert_records_equal(got: dict[str, Any], want: dict[str, Any], rel: float = 1e-9) -> None:
    from fitserve.engine import clean_record

    assert list(got) == list(want)
    for name, rec in want.items():
        for key, value in clean_record(rec).items():
            if isinstance(value, (float, list)) and value and not isinstance(value, bool):
                assert got[name][key] == pytest.approx(value, rel=rel, abs=1e-12), (name, key)
            elif isinstance(value, dict):
                assert got[name][key]["obs"] == pytest.approx(value["obs"], rel=rel, abs=1e-12), (name, key)
                assert got[name][key]["exp"] == pytest.approx(value["exp"], rel=rel, abs=1e-12), (name, key)
            else:
                assert got[name][key] == value, (name, key)


def assert_complete_exactly_once(
    r: redis.Redis, prefix: str, job: Any, final: dict[str, Any], reference: dict[str, Any]
) -> None:
    """Done, 200/200, every hypothesis recorded once (done-hash fields = counter sum = total), results right."""
    store = JobStore(r, prefix)
    assert final["state"] == "done", final
    assert final["progress"]["done"] == final["progress"]["total"] == N
    counts = final["counts"]
    assert counts["errors"] == 0 and counts["not_converged"] == 0, counts
    assert counts["computed"] + counts["cached"] == N, counts  # counters bumped once per hypothesis (HSETNX)
    assert r.hlen(store.job_key(job.id, "done")) == N
    raw = {k.decode(): v.decode() for k, v in r.hgetall(store.job_key(job.id)).items()}
    assert int(raw["n_computed"]) + int(raw["n_cached"]) + int(raw["n_error"]) == N
    doc = job.results()
    assert doc.complete and doc["state"] == "done"
    assert list(doc.records) == list(reference)  # exactly the 200 names, in the job's order
    assert_records_equal(doc.records, reference)
    stats = ChunkQueue(r, prefix).stats()
    assert stats["chunks_pending"] == 0 and stats["chunks_waiting"] == 0, stats


def pending_of(r: redis.Redis, queue: ChunkQueue, consumer: str) -> list[dict[str, Any]]:
    return r.xpending_range(queue.stream, queue.group, "-", "+", 1000, consumername=consumer)


# ------------------------------------------------------------------ 1. kill -9 a worker
def worker_beat(api: str, name: str) -> dict[str, Any]:
    """The last heartbeat of worker ``name`` as ``/v1/health`` shows it (its counters); {} if none is live."""
    workers = httpx.get(f"{api}/v1/health", timeout=10).json().get("workers", [])
    return next((w for w in workers if w.get("name") == name), {})


def test_worker_killed_with_sigkill_mid_job_every_hypothesis_recorded_once(redis_url, tmp_path, reference):
    prefix = f"dur-kill-{secrets.token_hex(4)}"
    r = redis.Redis.from_url(redis_url)
    queue, store = ChunkQueue(r, prefix), JobStore(r, prefix)
    procs = Procs(tmp_path, service_env(redis_url, prefix, tmp_path))
    try:
        port = free_port()
        victim = procs.worker("victim")
        procs.api(port)
        client = Client(f"http://127.0.0.1:{port}")
        ws, ps = grid()
        job = client.submit(ws, ps, **OPTIONS)
        assert job.info["to_compute"] == N
        done_key = store.job_key(job.id, "done")

        # some (not all) hypotheses done, and the victim holds chunks it has not acked
        def mid_job() -> Any:
            n = r.hlen(done_key)
            held = pending_of(r, queue, "victim")
            return 40 <= n <= N - 2 * CHUNK and held and (n, held)

        wait_until(mid_job, timeout=120, interval=0.01, what="the job to be partly done")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        t_kill = time.monotonic()
        assert victim.returncode == -signal.SIGKILL
        done_at_kill = r.hlen(done_key)
        held = {p["message_id"].decode() for p in pending_of(r, queue, "victim")}
        assert 0 < done_at_kill < N and held, (done_at_kill, held)
        assert job.status()["state"] == "running"

        procs.worker("rescuer")
        t_claimed = t_first = None
        while True:  # watch the rescuer take over the victim's chunks, then finish the job
            now = time.monotonic()
            if t_claimed is None and not pending_of(r, queue, "victim"):
                t_claimed = now
            if t_first is None and r.hlen(done_key) > done_at_kill:
                t_first = now
            if store.state(job.id) in ("done", "failed", "cancelled"):
                break
            assert now - t_kill < 180, "the job did not finish after the worker was killed"
            time.sleep(0.02)
        t_done = time.monotonic()
        final = job.wait(timeout=10)
        assert t_claimed is not None and t_first is not None
        assert_complete_exactly_once(r, prefix, job, final, reference)

        # every chunk the victim held was delivered again, to the rescuer, and nothing else was
        claims = re.findall(r"took over \d+ stale chunks.*?: (.*)", procs.log("rescuer"))
        claimed = {
            m.group(1): int(m.group(2)) for line in claims for m in re.finditer(r"(\S+) \(delivery (\d+)\)", line)
        }
        assert set(claimed) == held, (claimed, held)
        assert all(d == 2 for d in claimed.values()), claimed
        figure(
            test="worker_sigkill",
            done_at_kill=done_at_kill,
            redelivered_chunks=len(held),
            kill_to_claimed_s=round(t_claimed - t_kill, 2),
            kill_to_first_record_s=round(t_first - t_kill, 2),
            kill_to_done_s=round(t_done - t_kill, 2),
            computed=final["counts"]["computed"],
            cached=final["counts"]["cached"],
        )
    finally:
        procs.close()
        r.close()


def test_hung_worker_that_resumes_after_its_chunk_was_taken_over_counts_once(redis_url, tmp_path, reference):
    """A worker frozen (SIGSTOP) past claim_idle_ms loses its chunk to another, then wakes up (SIGCONT) and
    finishes it too: the chunk runs twice, its hypotheses are recorded once (HSETNX)."""
    prefix = f"dur-stop-{secrets.token_hex(4)}"
    r = redis.Redis.from_url(redis_url)
    queue, store = ChunkQueue(r, prefix), JobStore(r, prefix)
    procs = Procs(tmp_path, service_env(redis_url, prefix, tmp_path))
    sleeper = None
    try:
        port = free_port()
        sleeper = procs.worker("sleeper")
        procs.api(port)
        client = Client(f"http://127.0.0.1:{port}")
        ws, ps = grid()
        job = client.submit(ws, ps, **OPTIONS)
        done_key = store.job_key(job.id, "done")
        wait_until(
            lambda: 40 <= r.hlen(done_key) <= N - 2 * CHUNK and pending_of(r, queue, "sleeper"),
            timeout=120,
            interval=0.01,
            what="the job to be partly done",
        )
        sleeper.send_signal(signal.SIGSTOP)
        held = {p["message_id"].decode() for p in pending_of(r, queue, "sleeper")}
        done_at_stop = r.hlen(done_key)
        assert held and done_at_stop < N
        procs.worker("other")
        # the other worker takes the frozen one's chunks over and records them ...
        wait_until(
            lambda: not pending_of(r, queue, "sleeper") and r.hlen(done_key) >= done_at_stop + CHUNK,
            timeout=60,
            interval=0.02,
            what="the chunks of the frozen worker to be taken over",
        )
        sleeper.send_signal(signal.SIGCONT)  # ... and the frozen one wakes up and finishes its chunk as well
        final = job.wait(timeout=180)
        assert_complete_exactly_once(r, prefix, job, final, reference)
        assert sleeper.poll() is None  # it carried on working
        # the second recording was a no-op: the workers count the hypotheses they found recorded already
        twice = wait_until(
            lambda: (
                (
                    n := sum(
                        worker_beat(f"http://127.0.0.1:{port}", name).get("recorded_already", 0)
                        for name in ("sleeper", "other")
                    )
                )
                > 0
                and n
            ),
            timeout=30,
            interval=0.2,
            what="a worker to count a repeated recording",
        )
        claimed = set(re.findall(r"(\S+) \(delivery \d+\)", procs.log("other")))
        assert held <= claimed, (held, claimed)
        figure(
            test="worker_sigstop",
            held_chunks=len(held),
            recorded_twice=twice,
            computed=final["counts"]["computed"],
            cached=final["counts"]["cached"],
        )
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.send_signal(signal.SIGCONT)
        procs.close()
        r.close()


# ------------------------------------------------------------------ 2. restart redis-server
def test_redis_restarted_mid_job_worker_rides_it_out_nothing_lost(tmp_path, reference):
    port, rdir = free_port(), tmp_path / "redis"
    server = EmbeddedRedis(port, rdir, binary=REDIS_SERVER).start()
    url = server.url
    prefix = f"dur-redis-{secrets.token_hex(4)}"
    r = redis.Redis.from_url(url)
    assert r.config_get("appendonly")["appendonly"] == "yes"
    assert r.config_get("appendfsync")["appendfsync"] == "always"
    store = JobStore(r, prefix)
    procs = Procs(tmp_path, service_env(url, prefix, tmp_path))
    try:
        api_port = free_port()
        worker = procs.worker("steady")
        procs.api(api_port)
        api = f"http://127.0.0.1:{api_port}"
        client = Client(api)
        # a job finished before any outage: its results must come back unchanged
        small_ws, small_ps = grid(8, first=60.0, step=1.0)
        small = client.submit(small_ws, small_ps, **OPTIONS)
        assert small.wait(timeout=120)["state"] == "done"
        small_before = small.results().records
        assert len(small_before) == 8

        ws, ps = grid()
        job = client.submit(ws, ps, **OPTIONS)
        done_key = store.job_key(job.id, "done")
        outages = []
        for how, fraction in (("SIGTERM", 0.25), ("SIGKILL", 0.6)):
            wait_until(
                lambda: r.hlen(done_key) >= fraction * N, timeout=120, interval=0.01, what=f"{fraction:.0%} done"
            )
            before = job.results().records  # partial results, all stored before the outage
            if how == "SIGTERM":
                server.stop()
            else:
                server.kill()
            t_down = time.monotonic()
            assert 0 < len(before) < N, len(before)

            # the API answers 503 naming Redis (not 500) while it is down
            resp = httpx.get(f"{api}/v1/jobs/{job.id}", timeout=10)
            assert resp.status_code == 503 and resp.json()["detail"]["where"] == "redis", resp.text
            assert httpx.get(f"{api}/v1/health", timeout=10).status_code == 503
            time.sleep(max(0.0, 2.0 - (time.monotonic() - t_down)))  # 2 s without Redis
            assert worker.poll() is None, f"the worker died with Redis:\n{procs.log('steady')[-3000:]}"

            server = EmbeddedRedis(port, rdir, binary=REDIS_SERVER).start()  # same port, same AOF
            t_up = time.monotonic()
            done_at_restart = r.hlen(done_key)
            wait_until(
                lambda: httpx.get(f"{api}/v1/jobs/{job.id}", timeout=10).status_code == 200,
                timeout=30,
                interval=0.05,
                what="the API to answer again",
            )
            t_api = time.monotonic()
            wait_until(
                lambda: r.hlen(done_key) > done_at_restart or store.state(job.id) == "done",
                timeout=60,
                interval=0.02,
                what="the worker to record again",
            )
            t_resumed = time.monotonic()

            after = job.results().records
            assert {n: after[n] for n in before} == before  # nothing finished before the outage was lost
            assert small.results().records == small_before and small.status()["state"] == "done"
            assert len(after) >= done_at_restart >= len(before)
            outages.append(
                {
                    "signal": how,
                    "done_before": len(before),
                    "down_s": round(t_up - t_down, 2),
                    "api_back_after_redis_s": round(t_api - t_up, 2),
                    "worker_records_again_after_redis_s": round(t_resumed - t_up, 2),
                }
            )

        final = job.wait(timeout=180)
        assert worker.poll() is None, "the worker did not survive"
        assert_complete_exactly_once(r, prefix, job, final, reference)
        # the worker's own counters, from its heartbeat (every 2 s) in /v1/health
        beat = wait_until(
            lambda: (w := worker_beat(api, "steady")).get("redis_outages") == 2 and w,
            timeout=30,
            interval=0.2,
            what="the worker's heartbeat to count both outages",
        )
        kept, redelivered = beat["chunks_kept"], beat["chunks_claimed"]
        assert kept >= 1, beat  # results computed during an outage were kept and stored afterwards
        figure(
            test="redis_restart",
            outages=outages,
            chunks_kept_over_outages=kept,
            redelivered_chunks=redelivered,
            computed=final["counts"]["computed"],
            cached=final["counts"]["cached"],
        )
    finally:
        procs.close()
        r.close()
        server.stop()


# ------------------------------------------------------------------ 3. restart the API
@pytest.mark.parametrize("how,flavour", [("SIGTERM", "sync"), ("SIGKILL", "sync"), ("SIGKILL", "async")])
def test_api_restarted_while_a_client_waits(redis_url, tmp_path, how, flavour):
    prefix = f"dur-api-{secrets.token_hex(4)}"
    r = redis.Redis.from_url(redis_url)
    procs = Procs(tmp_path, service_env(redis_url, prefix, tmp_path))
    try:
        port = free_port()
        api = procs.api(port)
        client = Client(f"http://127.0.0.1:{port}")
        ws, ps = grid()
        job = client.submit(ws, ps)  # no worker yet: the job cannot finish before the API goes away
        polled: list[dict[str, Any]] = []
        outcome: dict[str, Any] = {}

        async def async_wait() -> dict[str, Any]:
            async with AsyncClient(client.url) as aclient:
                return await aclient.job(job.id).wait(timeout=180, poll_interval=0.2, progress=polled.append)

        def waiting() -> None:
            try:
                if flavour == "sync":
                    outcome["status"] = job.wait(timeout=180, poll_interval=0.2, progress=polled.append)
                else:
                    outcome["status"] = asyncio.run(async_wait())
            except Exception as exc:  # noqa: BLE001  (reported by the assertions below)
                outcome["error"] = exc
            outcome["t"] = time.monotonic()

        waiter = threading.Thread(target=waiting, daemon=True)
        waiter.start()
        wait_until(lambda: polled, timeout=30, what="the first poll")
        api.send_signal(getattr(signal, how))
        api.wait(30)
        t_down = time.monotonic()
        procs.worker("worker")  # the job runs while the API is down
        time.sleep(3.0)
        assert waiter.is_alive() and not outcome, outcome  # still waiting through the outage
        with pytest.raises(httpx.TransportError):  # nobody listens: the client's polls fail meanwhile
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
        t_restart = time.monotonic()
        procs.api(port, label="api-again")
        t_up = time.monotonic()
        waiter.join(120)
        assert not waiter.is_alive() and "error" not in outcome, outcome
        final = outcome["status"]
        assert final["state"] == "done" and final["progress"]["done"] == final["progress"]["total"] == N
        assert final["counts"]["computed"] + final["counts"]["cached"] == N and final["counts"]["errors"] == 0
        assert (
            polled[0]["state"] in ("queued", "running") and outcome["t"] > t_restart
        )  # the same wait() spanned the outage
        assert r.hlen(JobStore(r, prefix).job_key(job.id, "done")) == N
        assert len(job.results().records) == N
        figure(
            test=f"api_{how.lower()}_{flavour}",
            api_down_s=round(t_restart - t_down, 2),
            api_start_s=round(t_up - t_restart, 2),
            wait_returned_after_restart_s=round(outcome["t"] - t_restart, 2),
            polls_seen=len(polled),
        )
    finally:
        procs.close()
        r.close()
