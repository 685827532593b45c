"""Load: many users at once, each submitting a few small jobs, over HTTP; API latency, turnaround, throughput.

    .venv/bin/python benchmarks/bench_load.py [--clients 20] [--jobs 5] [--patches 4] [--workers 1] [--threads 1]
                                              [--chunk-size 16] [--poll-interval 0.5] [--no-warmup]

Set-up, as in production but on one machine:

* an embedded ``redis-server`` (AOF, ``appendfsync always``) in a temporary directory;
* the API as its own process, ``python -m fitserve.cli serve --auth token``: a
  separate process, not uvicorn in this one, so the load generator's 20 client
  threads do not share the API's interpreter (GIL) and the latencies measured
  are the server's, as a deployment would see them;
* ``--workers`` processes ``python -m fitserve.cli worker`` (executor ``local``
  with ``--threads`` threads each), configured through ``FITSERVE_*``;
* one API token per user, created in Redis with ``TokenStore`` (what
  ``fitserve token create`` does); each client thread uses its own.

Each of ``--clients`` threads (one :class:`fitserve.client.Client` each, all
released at once by a barrier) submits ``--jobs`` jobs of ``--patches``
hypotheses of a tiny 1-bin model, then waits for each (``job.wait``, polling
every ``--poll-interval`` s at most) and fetches its results.  Every hypothesis
has its own signal yield, so nothing is answered from the cache.  Before that,
a warm-up user submits jobs of the same shape (other yields) so the workers
have compiled the engine, as a long-running service has; then that user alone
submits ``--jobs`` jobs the same way, the latency baseline of the table (the
same requests with nobody else on the service).

Measured: every request's latency (body read included) by a transport wrapped
around each client, per request type (count, p50, p95, max); job turnaround
(submit sent to "done" seen by the client, and the server's own created to
finished); total wall time and throughput (hypotheses/s); 4xx/5xx answers
(must be none).  Correctness: every record equals ``fitserve.engine.scan.scan``
of the same job in this process (max. relative difference reported).
Baseline, after the service is stopped (so it has the CPU to itself, as the
service had): the bare engine, warm, fitting the same hypotheses in this
process, as one ``scan()`` per job (the same 100 calls) and as one ``scan()`` of
all of them; reported as ratios service / bare.

Prints a table and writes benchmarks/results/load.json (git-ignored).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from fitserve.service.localhost import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from service.workload import TimedTransport, load_job, percentile, tiny_workspace  # noqa: E402  (the load test's own)

KINDS = ("submit", "status", "results", "list")


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


def max_rel_diff(got: dict[str, Any], want: dict[str, Any]) -> float:
    """Largest relative difference over the numbers of two records (inf if a number is missing or the keys differ)."""
    from fitserve.engine import clean_record

    worst = 0.0
    for key, value in clean_record(want).items():
        a, b = got.get(key), value
        pairs = list(zip(a, b)) if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) else [(a, b)]
        for x, y in pairs:
            if isinstance(y, float) and not isinstance(y, bool):
                if not isinstance(x, (int, float)):
                    return math.inf
                worst = max(worst, abs(x - y) / max(abs(y), 1e-12))
            elif x != y:
                return math.inf
    return worst


# ---------------------------------------------------------------------------- the service
class Stack:
    """Embedded Redis, the API process and worker processes."""

    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        from fitserve.service.redis_server import EmbeddedRedis

        self.data_dir = data_dir
        self.redis = EmbeddedRedis(free_port(), data_dir / "redis").start()
        self.prefix = f"load-{secrets.token_hex(4)}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "FITSERVE_REDIS_URL": self.redis.url,
            "FITSERVE_KEY_PREFIX": self.prefix,
            "FITSERVE_EXECUTOR": "local",
            "FITSERVE_PARSL_WORKERS": str(args.threads),
            "FITSERVE_CHUNK_SIZE": str(args.chunk_size),
            "FITSERVE_DATA_DIR": str(data_dir),
            "FITSERVE_AUTH": "token",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._spawn(
            "api",
            ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--auth", "token", "--log-level", "warning"],
        )
        for i in range(args.workers):
            self._spawn(f"worker{i}", ["worker", "--name", f"load-worker-{i}"])

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.data_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "fitserve.cli", *argv],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append((name, proc))

    def wait_ready(self, workers: int) -> None:
        def ready() -> bool:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with code {proc.returncode}; see {self.data_dir / (name + '.log')}"
                    )
            try:
                h = httpx.get(f"{self.url}/v1/health", timeout=5).json()
            except httpx.HTTPError:
                return False
            return h.get("status") == "ok" and len(h.get("workers") or []) >= workers

        wait_until(ready, timeout=180, interval=0.2, what="API and workers")

    def tokens(self, users: list[str]) -> dict[str, str]:
        import redis

        from fitserve.service.auth import TokenStore

        client = redis.Redis.from_url(self.redis.url)
        try:
            store = TokenStore(client, self.prefix)
            return {u: store.create(u, label="bench_load") for u in users}
        finally:
            client.close()

    def stop(self) -> None:
        for _, proc in reversed(self.procs):  # workers first, then the API
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.redis.stop()


# ---------------------------------------------------------------------------- the load
def run_load(
    url: str,
    tokens: list[str],
    first_user: int,
    jobs: int,
    patches: int,
    poll: float,
    log: list[tuple[str, int, float]],
    salt: float = 0.0,
) -> dict[str, Any]:
    """Each token's client submits ``jobs`` jobs, waits for them, fetches results and lists its jobs."""
    from fitserve.client import Client

    lock = threading.Lock()
    barrier = threading.Barrier(len(tokens) + 1)
    out: dict[int, list[dict[str, Any]]] = {}
    listed: dict[int, list[str]] = {}
    failures: list[str] = []
    ws = tiny_workspace()

    def user(i: int, token: str) -> None:
        try:
            with Client(url, token=token, timeout=120, transport=TimedTransport(log, lock)) as client:
                barrier.wait(120)
                sent = []
                for j in range(jobs):
                    ps = load_job(i, j, patches, salt)[1]
                    t0 = time.perf_counter()
                    sent.append((client.submit(ws, ps), t0, j))
                mine = []
                for job, t0, j in sent:
                    st = job.wait(timeout=1800, poll_interval=poll)
                    t_done = time.perf_counter()
                    mine.append(
                        {
                            "id": job.id,
                            "user": i,
                            "job": j,
                            "status": st,
                            "turnaround_s": t_done - t0,
                            "results": job.results()["results"],
                        }
                    )
                listed[i] = [j.id for j in client.jobs()]
                out[i] = mine
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(f"user{i}: {type(exc).__name__}: {exc}")
            try:
                barrier.abort()
            except threading.BrokenBarrierError:
                pass

    threads = [threading.Thread(target=user, args=(first_user + n, tok), daemon=True) for n, tok in enumerate(tokens)]
    for t in threads:
        t.start()
    try:
        barrier.wait(120)
    except threading.BrokenBarrierError:
        pass  # a client failed before the start; its message is in failures
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"jobs": [j for mine in out.values() for j in mine], "listed": listed, "failures": failures, "wall_s": wall}


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20, help="concurrent users (threads), one API token each")
    ap.add_argument("--jobs", type=int, default=5, help="jobs per user")
    ap.add_argument("--patches", type=int, default=4, help="hypotheses per job")
    ap.add_argument("--workers", type=int, default=1, help="`fitserve worker` processes")
    ap.add_argument("--threads", type=int, default=1, help="local executor threads per worker (FITSERVE_PARSL_WORKERS)")
    ap.add_argument("--chunk-size", type=int, default=16, help="FITSERVE_CHUNK_SIZE")
    ap.add_argument("--poll-interval", type=float, default=0.5, help="the clients' longest poll interval (job.wait)")
    ap.add_argument("--no-warmup", action="store_true", help="measure cold workers (engine compile included)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "load.json")
    args = ap.parse_args()
    if args.jobs > 6 or args.clients > 20:
        # the yields 4 + 6k + j + 0.05u are unique for j < 6, u < 20; beyond that jobs could share cache entries
        ap.error("at most --jobs 6 and --clients 20 (so that no two hypotheses are the same)")

    from fitserve import __version__
    from fitserve.engine.scan import scan

    n_jobs = args.clients * args.jobs
    n_hyp = n_jobs * args.patches
    print(
        f"{args.clients} clients x {args.jobs} jobs x {args.patches} hypotheses = {n_jobs} jobs, {n_hyp} hypotheses; "
        f"{args.workers} worker process(es) x {args.threads} thread(s), chunk size {args.chunk_size}",
        flush=True,
    )

    data_dir = Path(tempfile.mkdtemp(prefix="fitserve-load-"))
    log: list[tuple[str, int, float]] = []
    warm_log: list[tuple[str, int, float]] = []
    alone_log: list[tuple[str, int, float]] = []
    stack = Stack(args, data_dir)
    try:
        t0 = time.perf_counter()
        stack.wait_ready(args.workers)
        print(
            f"API (separate process) and {args.workers} worker(s) up in {time.perf_counter() - t0:.1f} s; "
            f"logs in {data_dir}",
            flush=True,
        )
        users = [f"user{i}" for i in range(args.clients)]
        tokens = stack.tokens(users + ["warmup"])
        warmup_s = None
        if not args.no_warmup:
            # salted yields that no load job has; 2 jobs per worker thread so that every worker compiles
            n_warm = max(2, 2 * args.workers * args.threads)
            warm = run_load(stack.url, [tokens["warmup"]], 0, min(n_warm, 6), args.patches, 0.2, warm_log, salt=0.025)
            if warm["failures"]:
                raise SystemExit(f"warm-up failed: {warm['failures']}")
            warmup_s = warm["wall_s"]
            print(f"warm-up: {len(warm['jobs'])} jobs in {warmup_s:.2f} s", flush=True)
        # the same requests from one client alone: the latency baseline of the table
        alone = run_load(
            stack.url, [tokens["warmup"]], 0, args.jobs, args.patches, args.poll_interval, alone_log, salt=0.0125
        )
        if alone["failures"]:
            raise SystemExit(f"single client failed: {alone['failures']}")
        print(f"one client alone: {len(alone['jobs'])} jobs in {alone['wall_s']:.2f} s", flush=True)
        print("load ...", flush=True)
        load = run_load(stack.url, [tokens[u] for u in users], 0, args.jobs, args.patches, args.poll_interval, log)
    finally:
        stack.stop()
    if load["failures"]:
        raise SystemExit("clients failed:\n  " + "\n  ".join(load["failures"][:10]))

    # ---- baseline: the bare engine in this process, warm (after one identical-shape scan)
    ws = tiny_workspace()
    scan(ws, load_job(0, 0, args.patches, salt=0.025)[1]["patches"])  # compile (yields of no load job)
    t0 = time.perf_counter()
    refs = {
        (u, j): scan(ws, load_job(u, j, args.patches)[1]["patches"])["results"]
        for u in range(args.clients)
        for j in range(args.jobs)
    }
    bare_per_job_s = time.perf_counter() - t0
    every = []
    for u in range(args.clients):
        for j in range(args.jobs):
            for p in load_job(u, j, args.patches)[1]["patches"]:
                p = copy.deepcopy(p)
                p["metadata"]["name"] = f"u{u}_j{j}_{p['metadata']['name']}"
                every.append(p)
    t0 = time.perf_counter()
    scan(ws, every)
    bare_one_cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scan(ws, every)
    bare_one_s = time.perf_counter() - t0

    # ---- correctness, isolation, errors
    done = [j for j in load["jobs"] if j["status"]["state"] == "done"]
    worst = 0.0
    wrong_count = 0
    for j in load["jobs"]:
        ref = refs[(j["user"], j["job"])]
        if sorted(j["results"]) != sorted(ref):
            wrong_count += 1
            worst = math.inf
            continue
        worst = max([worst] + [max_rel_diff(j["results"][k], ref[k]) for k in ref])
    cached = sum(j["status"]["counts"]["cached"] for j in load["jobs"])
    by_user: dict[int, set[str]] = {}
    for j in load["jobs"]:
        by_user.setdefault(j["user"], set()).add(j["id"])
    isolated = all(
        set(load["listed"].get(u, [])) == by_user.get(u, set()) and len(by_user.get(u, ())) == args.jobs
        for u in range(args.clients)
    )
    codes = [code for _, code, _ in log]
    n5xx = sum(1 for c in codes if c >= 500)
    n4xx = sum(1 for c in codes if 400 <= c < 500)

    latency = {k: summary([dt * 1000 for kind, _, dt in log if kind == k]) for k in KINDS}
    latency_alone = {k: summary([dt * 1000 for kind, _, dt in alone_log if kind == k]) for k in KINDS}
    turnaround_alone = summary([j["turnaround_s"] for j in alone["jobs"]])
    turnaround = summary([j["turnaround_s"] for j in load["jobs"]])
    server_turnaround = summary([j["status"]["timings"]["total_s"] for j in load["jobs"]])
    queued = summary([j["status"]["timings"]["queued_s"] for j in load["jobs"]])
    wall = load["wall_s"]
    ok = len(done) == n_jobs and wrong_count == 0 and worst <= 1e-9 and n5xx == 0 and isolated and cached == 0

    out = {
        "benchmark": "bench_load",
        "fitserve_version": __version__,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "setup": {
            "clients": args.clients,
            "jobs_per_client": args.jobs,
            "hypotheses_per_job": args.patches,
            "worker_processes": args.workers,
            "threads_per_worker": args.threads,
            "executor": "local",
            "chunk_size": args.chunk_size,
            "poll_interval_s": args.poll_interval,
            "auth": "token",
            "api": "separate process (python -m fitserve.cli serve)",
            "warmup": not args.no_warmup,
            "warmup_s": warmup_s,
        },
        "jobs": n_jobs,
        "jobs_done": len(done),
        "hypotheses": n_hyp,
        "hypotheses_from_cache": cached,
        "latency_ms": latency,
        "latency_ms_one_client_alone": latency_alone,
        "turnaround_s": turnaround,
        "turnaround_s_one_client_alone": turnaround_alone,
        "server_turnaround_s": server_turnaround,
        "server_queued_s": queued,
        "wall_s": wall,
        "hypotheses_per_s": n_hyp / wall,
        "jobs_per_s": n_jobs / wall,
        "http": {"requests": len(codes), "5xx": n5xx, "4xx": n4xx},
        "correct": {"max_rel_diff_vs_engine": worst, "jobs_with_wrong_hypotheses": wrong_count, "tolerance": 1e-9},
        "isolation": {"each_user_lists_exactly_its_jobs": isolated},
        "bare_engine": {
            "per_job_scans_s": bare_per_job_s,
            "one_scan_s": bare_one_s,
            "one_scan_cold_s": bare_one_cold_s,
            "ratio_service_to_per_job_scans": wall / bare_per_job_s,
            "ratio_service_to_one_scan": wall / bare_one_s,
        },
        "ok": ok,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")

    print(
        f"\nAPI latency, ms ({len(codes)} requests under load; body read included), "
        f"{args.clients} clients at once | one client alone"
    )
    print(f"  {'request':8s} {'count':>6s} {'p50':>8s} {'p95':>8s} {'max':>8s} | {'count':>6s} {'p50':>8s} {'p95':>8s}")
    for k in KINDS:
        s, a = latency[k], latency_alone[k]
        if s["n"]:
            right = f"{a['n']:6d} {a['p50']:8.1f} {a['p95']:8.1f}" if a["n"] else f"{0:6d}"
            print(f"  {k:8s} {s['n']:6d} {s['p50']:8.1f} {s['p95']:8.1f} {s['max']:8.1f} | {right}")
    print(
        f"job turnaround, s: client (submit sent to done seen) p50 {turnaround['p50']:.2f}  p95 {turnaround['p95']:.2f}  "
        f"max {turnaround['max']:.2f};  server (created to finished) p50 {server_turnaround['p50']:.2f}  "
        f"p95 {server_turnaround['p95']:.2f};  one client alone: p50 {turnaround_alone['p50']:.2f}  "
        f"p95 {turnaround_alone['p95']:.2f}"
    )
    print(
        f"wall {wall:.2f} s for {n_jobs} jobs / {n_hyp} hypotheses: {n_hyp / wall:.1f} hypotheses/s, {n_jobs / wall:.1f} jobs/s"
    )
    print(
        f"HTTP: {n5xx} 5xx, {n4xx} 4xx;  jobs done {len(done)}/{n_jobs};  from cache {cached};  "
        f"max rel. diff to the engine {worst:.1e};  every user lists exactly its own jobs: {isolated}"
    )
    print(
        f"bare engine in one process (warm): {n_jobs} scan() calls {bare_per_job_s:.2f} s -> service/bare "
        f"x{wall / bare_per_job_s:.2f};  one scan() of all {n_hyp} {bare_one_s:.2f} s (cold {bare_one_cold_s:.2f} s) "
        f"-> service/bare x{wall / bare_one_s:.2f}"
    )
    print(("OK" if ok else "FAILED") + f" -> {args.out}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
