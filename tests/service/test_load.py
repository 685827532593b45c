"""Load: 20 users at once, each submitting 5 small jobs, against the real API (uvicorn), redis-server and workers.

Every user has its own API token (token mode), so the test also checks per-user
isolation under load: each user lists exactly its own 5 jobs.  The jobs are
distinct (every hypothesis has its own signal yield), so nothing is answered
from the cache and all 400 hypotheses are fitted by the workers; each record
must equal the engine run in this process on the same patches.

Request latencies (submit, status polls, results, listing) are recorded by a
transport wrapped around each client's and printed as p50/p95 (``pytest -s``
shows them); nothing is asserted about timing.  The same scenario with the API
and workers as separate processes, with a bare-engine baseline:
``benchmarks/bench_load.py``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from fitserve.client import Client
from fitserve.client.errors import NotFound
from fitserve.engine import clean_record
from fitserve.engine.scan import scan
from fitserve.service.auth import TokenStore
from service.conftest import Service
from service.workload import TimedTransport, load_job, percentile

CLIENTS = 20
JOBS = 5
PATCHES = 4  # hypotheses per job: 400 in all


def job_inputs(user: int, job: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tiny model with PATCHES hypotheses whose yields are unique to (user, job)."""
    return load_job(user, job, PATCHES)


def assert_records_equal(got: dict[str, Any], want: dict[str, Any], rel: float = 1e-9) -> None:
    assert sorted(got) == sorted(want)
    for name, rec in want.items():
        for key, value in clean_record(rec).items():
            if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
                assert got[name][key] == pytest.approx(value, rel=rel, abs=1e-12), (name, key)
            else:
                assert got[name][key] == value, (name, key)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_20_users_5_jobs_each_all_correct_and_isolated(settings):
    svc = Service(settings.model_copy(update={"auth": "token", "chunk_size": 2}))
    try:
        store = TokenStore(redis.Redis.from_url(settings.redis_url), settings.key_prefix)
        tokens = [store.create(f"user{i}") for i in range(CLIENTS)]
        url = f"http://127.0.0.1:{svc.port}"
        svc.start_worker()
        svc.start_worker()  # two consumers of the one chunk stream

        log: list[tuple[str, int, float]] = []
        lock = threading.Lock()
        start = threading.Barrier(CLIENTS)
        jobs: dict[int, list[tuple[str, dict, dict, dict]]] = {}  # user -> [(job id, status, results doc, inputs)]
        turnaround: list[float] = []
        listed: dict[int, list[str]] = {}
        peeks: dict[int, str] = {}
        failures: list[BaseException] = []

        def user(i: int) -> None:
            try:
                with Client(url, token=tokens[i], transport=TimedTransport(log, lock)) as client:
                    start.wait(60)
                    submitted = []
                    for j in range(JOBS):
                        ws, ps = job_inputs(i, j)
                        t0 = time.perf_counter()
                        submitted.append((client.submit(ws, ps), t0, (ws, ps)))
                    mine = []
                    for job, t0, inputs in submitted:
                        st = job.wait(timeout=240, poll_interval=0.5)
                        with lock:
                            turnaround.append(time.perf_counter() - t0)
                        mine.append((job.id, st, job.results(), inputs))
                    jobs[i] = mine
                    listed[i] = [j.id for j in client.jobs()]
                    # another user's job (whoever finished before us) is "no such job" for this one
                    others = [jid for u, js in list(jobs.items()) if u != i for jid, *_ in js]
                    if others:
                        try:
                            client.job(others[0]).status()
                            peeks[i] = "visible"
                        except NotFound:
                            peeks[i] = "404"
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)

        t_start = time.perf_counter()
        threads = [threading.Thread(target=user, args=(i,), name=f"user{i}") for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(280)
        wall = time.perf_counter() - t_start
        assert not failures, failures[:3]
        assert not any(t.is_alive() for t in threads)

        # latencies (reported, not asserted) and no server errors
        print(
            f"\n{CLIENTS} users x {JOBS} jobs x {PATCHES} hypotheses in {wall:.2f} s "
            f"({CLIENTS * JOBS * PATCHES / wall:.1f} hypotheses/s, 2 workers, in-process API)"
        )
        for kind in ("submit", "status", "results", "list"):
            ms = [dt * 1000 for k, _, dt in log if k == kind]
            if ms:
                print(
                    f"  {kind:8s} n={len(ms):4d}  p50 {percentile(ms, 50):7.1f} ms  p95 {percentile(ms, 95):7.1f} ms  "
                    f"max {max(ms):7.1f} ms"
                )
        print(
            f"  turnaround (submit to done seen) p50 {percentile(turnaround, 50):.2f} s  p95 {percentile(turnaround, 95):.2f} s"
        )
        server_errors = [(k, code) for k, code, _ in log if code >= 500]
        assert server_errors == []
        assert sum(1 for k, _, _ in log if k == "submit") == CLIENTS * JOBS  # nothing was retried

        # all 100 jobs done, every hypothesis fitted (none from the cache), each equal to the engine
        assert sorted(jobs) == list(range(CLIENTS))
        all_ids = [jid for mine in jobs.values() for jid, *_ in mine]
        assert len(set(all_ids)) == CLIENTS * JOBS
        for i, mine in jobs.items():
            assert len(mine) == JOBS
            for job_id, st, doc, (ws, ps) in mine:
                assert st["state"] == "done", (job_id, st["state"], st.get("errors"))
                assert st["owner"] == f"user{i}"
                assert st["progress"]["done"] == st["progress"]["total"] == PATCHES
                assert st["counts"]["cached"] == 0 and st["counts"]["computed"] == PATCHES
                assert st["counts"]["errors"] == 0
                assert doc["complete"] and len(doc["results"]) == PATCHES
                ref = scan(ws, ps["patches"])
                assert_records_equal(doc["results"], ref["results"])
        # isolation: everybody lists exactly their own 5 jobs, and another's job is a 404
        for i, mine in jobs.items():
            assert sorted(listed[i]) == sorted(jid for jid, *_ in mine), f"user{i}"
        assert peeks and set(peeks.values()) == {"404"}
    finally:
        svc.close()
