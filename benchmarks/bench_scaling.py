"""Scaling of the Parsl executor: hypotheses/s for 1 and 2 local Parsl workers on a 256-point grid.

    .venv/bin/python benchmarks/bench_scaling.py [--grid 16] [--chunk-size 16] [--workers 1 2]

Input: workspaces/example/BkgOnly.json with a 16 x 16 synthetic signal grid
(``fitserve.generate.signal_patchset``), 256 hypotheses, CLs only (no limits).

Measured, per worker count, on a ``ParslExecutor`` (HighThroughputExecutor +
LocalProvider, the worker's own executor, without Redis/HTTP):

* warm-up: one chunk per Parsl worker (imports and JAX compilation in each
  worker process), not timed into the throughput;
* the 256 hypotheses as 256/chunk-size chunks, all submitted at once, the
  executor's ``capacity`` at a time as the service worker keeps them in flight;
  hypotheses/s = 256 / wall time;
* Parsl's own overhead: the round trip of a trivial task of the same package
  (``decode_workspace('{}')``), median of 20.

Also measured in this process: the bare per-chunk cost (``run_chunk_task`` on a
chunk after a warm-up), the number the docs' scaling model starts from.

Writes benchmarks/results/bench_scaling.json (git-ignored) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fitserve.executors.base import decode_workspace, run_chunk_task  # noqa: E402
from fitserve.executors.parsl import ParslExecutor  # noqa: E402
from fitserve.generate import default_grid, signal_patchset  # noqa: E402


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_all(executor: ParslExecutor, ws: bytes, parts: list[list], options: dict) -> tuple[float, int]:
    """Keep ``capacity`` chunks in flight, like the service worker; return (wall s, records)."""
    todo = deque(parts)
    inflight = set()
    n = 0
    t0 = time.perf_counter()
    while todo or inflight:
        while todo and len(inflight) < executor.capacity:
            inflight.add(executor.submit(ws, todo.popleft(), options))
        done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
        for f in done:
            n += len(f.result())
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=16, help="grid points per axis (16: 256 hypotheses)")
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_scaling.json")
    args = ap.parse_args()

    import zlib

    bkg = json.loads((REPO / "workspaces" / "example" / "BkgOnly.json").read_text())
    patches = signal_patchset(bkg, default_grid(args.grid, args.grid))["patches"]
    ws_bytes = zlib.compress(json.dumps(bkg).encode())
    options = {"cls_only": True}
    parts = chunks(patches, args.chunk_size)
    print(f"{len(patches)} hypotheses in {len(parts)} chunks of {args.chunk_size}; {os.cpu_count()} CPUs", flush=True)

    # bare per-chunk cost in this process (after compiling for the chunk shape)
    run_chunk_task(ws_bytes, parts[0], options)
    bare = []
    for part in parts[1:4]:
        t = time.perf_counter()
        run_chunk_task(ws_bytes, part, options)
        bare.append(time.perf_counter() - t)
    chunk_s = statistics.median(bare)
    print(
        f"bare run_chunk_task: {chunk_s:.3f} s per chunk of {args.chunk_size} ({args.chunk_size / chunk_s:.1f} hyp/s)",
        flush=True,
    )

    results = {
        "hypotheses": len(patches),
        "chunk_size": args.chunk_size,
        "chunks": len(parts),
        "bare_chunk_s": chunk_s,
        "bare_hyp_per_s": args.chunk_size / chunk_s,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "runs": [],
    }
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            ex = ParslExecutor(workers=workers, data_dir=tmp)
            try:
                # warm-up: every Parsl worker imports fitserve and compiles the chunk shape
                warm = [ex.submit(ws_bytes, parts[i % len(parts)], options) for i in range(workers)]
                for f in warm:
                    f.result()
                warm_s = time.perf_counter() - t
                trips = []
                for _ in range(20):
                    t1 = time.perf_counter()
                    fut = _trivial(ex)
                    fut.result()
                    trips.append(time.perf_counter() - t1)
                wall, n = run_all(ex, ws_bytes, parts, options)
            finally:
                ex.shutdown()
        assert n == len(patches)
        run = {
            "workers": workers,
            "wall_s": wall,
            "hyp_per_s": n / wall,
            "startup_and_warmup_s": warm_s,
            "parsl_round_trip_s": statistics.median(trips),
            "per_chunk_s": wall * min(workers, len(parts)) / len(parts),
        }
        results["runs"].append(run)
        print(
            f"parsl {workers} worker(s): {wall:.1f} s, {n / wall:.1f} hyp/s; start+warm-up {warm_s:.1f} s; "
            f"empty-task round trip {run['parsl_round_trip_s'] * 1e3:.1f} ms",
            flush=True,
        )
    if len(results["runs"]) >= 2:
        r1, r2 = results["runs"][0], results["runs"][1]
        results["speedup"] = r2["hyp_per_s"] / r1["hyp_per_s"]
        print(f"speed-up {r2['workers']} vs {r1['workers']} workers: {results['speedup']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"-> {args.out}")


_TRIVIAL = {}


def _trivial(ex: ParslExecutor):
    """A trivial task of the installed package on the executor's own pool (Parsl overhead only)."""
    app = _TRIVIAL.get(id(ex))
    if app is None:
        from parsl import python_app

        from fitserve.executors.parsl import _LABEL

        app = _TRIVIAL[id(ex)] = python_app(decode_workspace, data_flow_kernel=ex._dfk, executors=[_LABEL])
    return app("{}")


if __name__ == "__main__":
    main()
