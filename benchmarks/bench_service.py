"""Service overhead and throughput: a 64-point grid over HTTP vs `fitserve scan` (the bare engine) in one run.

    .venv/bin/python benchmarks/bench_service.py [--points 64] [--workers 1 2] [--chunk-size 16]

For each Parsl worker count: a fresh embedded Redis key space, the API under
uvicorn (real HTTP on loopback), one `fitserve worker --executor parsl`
process.  A warm-up job (same points and chunk shapes, POI test value 0.9, so no
cache hits) lets the Parsl workers import and compile the engine first, as a
long-running service would have.
The measured time runs from POST /v1/jobs to the poll that sees state "done"
(poll interval 0.1 s).  The bare time is `fitserve.engine.scan.scan` on the
same points in this process, after one identical (cold) scan.

Writes benchmarks/results/bench_service.json (git-ignored) and prints ratios.
Target: service with 1 worker < 1.3x the bare engine time for 64+ points.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from fitserve.service.localhost import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
RJ = REPO.parent / "shared" / "likelihoods" / "atlas-susy-2018-06-3L-RJ"


def run_job(http: httpx.Client, body: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    resp = http.post("/v1/jobs", json=body)
    resp.raise_for_status()
    job_id = resp.json()["id"]
    st = wait_until(
        lambda: (s := http.get(f"/v1/jobs/{job_id}").json())["state"] in ("done", "failed", "cancelled") and s, 3600
    )
    wall = time.perf_counter() - t0
    if st["state"] != "done":
        raise RuntimeError(f"job {job_id} ended {st['state']}: {st['errors'][:3]}")
    return wall, http.get(f"/v1/jobs/{job_id}/results").json()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_service.json")
    args = ap.parse_args()

    import uvicorn

    from fitserve import __version__
    from fitserve.app import create_app
    from fitserve.engine.scan import scan
    from fitserve.service.redis_server import EmbeddedRedis
    from fitserve.service.settings import Settings

    ws = json.loads((RJ / "BkgOnly.json").read_text())
    ps = json.loads((RJ / "patchset.json").read_text())
    all_names = [p["metadata"]["name"] for p in ps["patches"]]
    if args.points > len(all_names):
        raise SystemExit(f"--points at most {len(all_names)} with this patchset")
    names = all_names[: args.points]

    # Both sides are timed warm: the bare engine after one identical scan, the
    # service after a warm-up job with the same points and chunk shapes but another
    # POI value (so nothing is answered from the cache), as a long-running service is.
    print(f"bare engine: scan() of {len(names)} points ...", flush=True)
    t0 = time.perf_counter()
    scan(ws, ps["patches"], names=names)
    bare_cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    bare = scan(ws, ps["patches"], names=names)
    bare_s = time.perf_counter() - t0
    print(f"  cold {bare_cold_s:.2f} s, warm {bare_s:.2f} s, {len(names) / bare_s:.2f} hypotheses/s", flush=True)

    data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"fitserve-bench-{secrets.token_hex(3)}"
    rds = EmbeddedRedis(free_port(), data_dir / "redis").start()
    runs = []
    try:
        for n in args.workers:
            settings = Settings(
                redis_url=rds.url,
                key_prefix=f"bench-{secrets.token_hex(4)}",
                executor="parsl",
                parsl_workers=n,
                chunk_size=args.chunk_size,
                data_dir=data_dir,
                auth="open",
            )
            port = free_port()
            server = uvicorn.Server(
                uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
            )
            th = threading.Thread(target=server.run, daemon=True)
            th.start()
            env = {
                **os.environ,
                "FITSERVE_REDIS_URL": rds.url,
                "FITSERVE_KEY_PREFIX": settings.key_prefix,
                "FITSERVE_EXECUTOR": "parsl",
                "FITSERVE_PARSL_WORKERS": str(n),
                "FITSERVE_DATA_DIR": str(data_dir),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
            worker = subprocess.Popen(
                [sys.executable, "-m", "fitserve.cli", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
            try:
                wait_until(lambda: server.started, 30)
                wait_until(lambda: http.get("/v1/health").json()["workers"], 120)
                t_warm, _ = run_job(
                    http, {"workspace": ws, "patchset": ps, "options": {"patches": names, "poi_test": 0.9}}
                )
                print(f"service, Parsl {n} worker(s): warm-up {t_warm:.2f} s; {len(names)} points ...", flush=True)
                wall, doc = run_job(http, {"workspace": ws, "patchset": ps, "options": {"patches": names}})
                diffs = [
                    abs(doc["results"][k]["CLs_obs"] - v["CLs_obs"]) / max(abs(v["CLs_obs"]), 1e-300)
                    for k, v in bare["results"].items()
                    if v["CLs_obs"] is not None
                    and v["CLs_obs"] == v["CLs_obs"]
                    and doc["results"][k]["CLs_obs"] is not None
                ]
                max_rel = max(diffs, default=0.0)
                same = max_rel < 1e-6
                t_cache, _ = run_job(http, {"workspace": ws, "patchset": ps, "options": {"patches": names}})
                run = {
                    "parsl_workers": n,
                    "chunk_size": args.chunk_size,
                    "wall_s": wall,
                    "hypotheses_per_s": len(names) / wall,
                    "ratio_to_bare": wall / bare_s,
                    "cache_hit_resubmit_s": t_cache,
                    "warmup_s": t_warm,
                    "results_equal_bare": same,
                    "max_rel_diff_cls_obs": max_rel,
                }
                runs.append(run)
                print(
                    f"  {wall:.2f} s, {run['hypotheses_per_s']:.2f} hypotheses/s, {run['ratio_to_bare']:.2f}x bare; "
                    f"cached resubmission {t_cache * 1000:.0f} ms; CLs_obs max rel. diff to bare {max_rel:.1e}",
                    flush=True,
                )
            finally:
                http.close()
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(60)
                except subprocess.TimeoutExpired:
                    worker.kill()
                server.should_exit = True
                th.join(20)
    finally:
        rds.stop()

    out = {
        "benchmark": "bench_service",
        "fitserve_version": __version__,
        "points": len(names),
        "likelihood": "atlas-susy-2018-06-3L-RJ",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "bare_scan_s": bare_s,
        "bare_cold_scan_s": bare_cold_s,
        "bare_hypotheses_per_s": len(names) / bare_s,
        "service": runs,
        "target": "service (1 Parsl worker) / bare < 1.3 for 64+ points",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print("\nsummary:")
    print(f"  bare engine      {bare_s:8.2f} s  {len(names) / bare_s:6.2f} hyp/s")
    for run in runs:
        ok = "OK" if run["parsl_workers"] != 1 or run["ratio_to_bare"] < 1.3 else "ABOVE TARGET"
        print(
            f"  service parsl x{run['parsl_workers']} {run['wall_s']:8.2f} s  {run['hypotheses_per_s']:6.2f} hyp/s  "
            f"ratio {run['ratio_to_bare']:.2f}x {ok if run['parsl_workers'] == 1 else ''}"
        )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
