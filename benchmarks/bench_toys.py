"""Toy-based CLs: toys per second against pyhf's ToyCalculator in the same run, and Parsl scaling.

* **toys/s** on a 1-bin model (pyhf's 1bin_shapesys validation model), on
  staus (published background, a generated signal point) and on 1Lbb (the
  paper's C1N2_Wh_hbb_550_200 point): pyhf's ``ToyCalculator.distributions``
  (numpy backend, default SciPy fit) on a few toys, fitserve on many, both
  distributions counted, compilation excluded (a warm-up run first);
* **10,000 + 10,000 toys** of the 1-bin model: in this process (warm), and
  in a new process (import, build and compile from the persistent cache
  included);
* **scaling**: one 1Lbb point with 10,000 + 10,000 toys as chunks of 1,000
  toys through the Parsl executor (HighThroughputExecutor, local provider)
  with 1 and 2 workers; the merged CLs of both runs must be identical.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_toys.py [--quick]

Writes ``benchmarks/results/toys.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections import deque
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_paper import inputs  # noqa: E402

ONE_BIN = {
    "channels": [
        {
            "name": "singlechannel",
            "samples": [
                {"name": "signal", "data": [10.0], "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
                {
                    "name": "background",
                    "data": [50.0],
                    "modifiers": [{"name": "uncorr_bkguncrt", "type": "shapesys", "data": [7.0]}],
                },
            ],
        }
    ],
    "observations": [{"name": "singlechannel", "data": [55.0]}],
    "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": []}}],
    "version": "1.0.0",
}
LBB_POINT = "C1N2_Wh_hbb_550_200"


def model_inputs(name: str) -> tuple[dict, list[dict] | None]:
    """(background or full workspace, [one patch] or None)."""
    if name == "1-bin":
        return ONE_BIN, None
    bkg, patches = inputs(name)
    if name == "1Lbb":
        return bkg, [next(p for p in patches if p["metadata"]["name"] == LBB_POINT)]
    return bkg, [patches[len(patches) // 2]]


def pyhf_toys_per_s(name: str, n: int) -> tuple[float, int]:
    """Toys per second of pyhf's ToyCalculator steps (both distributions of ``n`` toys; model build excluded).

    ``ToyCalculator.distributions`` itself aborts on the first toy whose fit fails (pyhf #1427, #2128;
    it happens on 1Lbb), so its steps are run here: the generating fits, ``make_pdf(pars).sample``,
    then the test statistic of each toy, a failed fit counted.  Returns (toys/s, failed toys).
    """
    import numpy as np
    import pyhf
    from pyhf.infer.mle import fixed_poi_fit
    from pyhf.infer.test_statistics import qmu_tilde

    warnings.filterwarnings("ignore")
    pyhf.set_backend("numpy")
    bkg, patches = model_inputs(name)
    ws = pyhf.Workspace(bkg if patches is None else pyhf.patchset.Patch(patches[0]).apply(pyhf.Workspace(bkg)))
    model = ws.model(modifier_settings={"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}})
    data = ws.data(model)
    init, bounds, fixed = model.config.suggested_init(), model.config.suggested_bounds(), model.config.suggested_fixed()
    np.random.seed(0)
    t0 = time.perf_counter()
    failed = 0
    for mu_gen in (1.0, 0.0):
        pars = fixed_poi_fit(mu_gen, data, model, init, bounds, fixed)
        for toy in model.make_pdf(pars).sample((n,)):
            try:
                qmu_tilde(1.0, toy, model, init, bounds, fixed)
            except pyhf.exceptions.FailedMinimization:
                failed += 1
    return 2 * n / (time.perf_counter() - t0), failed


def fitserve_run(name: str, n: int) -> dict[str, Any]:
    """Warm toys/s of fitserve (``n`` toys per distribution) and the record."""
    from fitserve.engine.scan import scan

    bkg, patches = model_inputs(name)
    scan(bkg, patches, {"calculator": "toybased", "n_toys": 64})  # compile
    t0 = time.perf_counter()
    out = scan(bkg, patches, {"calculator": "toybased", "n_toys": n})
    wall = time.perf_counter() - t0
    (rec,) = out["results"].values()
    return {
        "toys_per_s": 2 * n / wall,
        "wall_s": wall,
        "CLs_obs": rec["CLs_obs"],
        "CLs_obs_err": rec["uncertainty"]["CLs_obs"] if rec.get("uncertainty") else None,
        "CLs_asymptotic": rec["asymptotic"]["CLs_obs"],
        "failed": [rec["toys"]["failed_sb"], rec["toys"]["failed_b"]],
    }


def new_process_seconds(n: int) -> float:
    """10k + 10k toys of the 1-bin model in a new interpreter (persistent compilation cache as it is)."""
    code = (
        "import json,sys; from fitserve.engine.scan import scan; "
        f"ws=json.loads(sys.argv[1]); r=scan(ws,None,{{'calculator':'toybased','n_toys':{n}}}); "
        "print(json.dumps(next(iter(r['results'].values()))['CLs_obs']))"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, json.dumps(ONE_BIN)], check=True, capture_output=True)
    return time.perf_counter() - t0


def parsl_scaling(n_toys: int, chunk: int, workers: int) -> dict[str, Any]:
    """One 1Lbb point's toys as chunks through a local Parsl pool; wall time and the merged record."""
    from fitserve.engine import toys
    from fitserve.executors.parsl import ParslExecutor

    bkg, patches = model_inputs("1Lbb")
    ws = zlib.compress(json.dumps(bkg).encode())
    base = {"calculator": "toybased", "n_toys": n_toys}
    ranges = [[a, min(a + chunk, n_toys)] for a in range(0, n_toys, chunk)]
    with tempfile.TemporaryDirectory() as tmp:
        ex = ParslExecutor(workers=workers, data_dir=tmp)
        try:
            warm = [ex.submit(ws, patches, {**base, "n_toys": 8, "toy_range": [0, 8]}) for _ in range(workers)]
            for f in warm:
                f.result()
            todo, inflight, parts = deque(ranges), set(), []
            t0 = time.perf_counter()
            while todo or inflight:
                while todo and len(inflight) < max(ex.capacity, workers):
                    inflight.add(ex.submit(ws, patches, {**base, "toy_range": todo.popleft()}))
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                parts += [next(iter(f.result().values())) for f in done]
            wall = time.perf_counter() - t0
        finally:
            ex.shutdown()
    merged = toys.merge_records(parts, "qtilde", n_toys, 0, 0.01)
    return {
        "workers": workers,
        "wall_s": wall,
        "toys_per_s": 2 * n_toys / wall,
        "chunks": len(ranges),
        "CLs_obs": merged["CLs_obs"],
        "CLs_exp": merged["CLs_exp"],
        "uncertainty": merged["uncertainty"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer toys (a smoke run, not the figures)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "toys.json")
    args = ap.parse_args()
    q = args.quick
    # toys per distribution: (pyhf, fitserve)
    plan = {
        "1-bin": (200, 10_000),
        "staus": (4 if q else 15, 200 if q else 2000),
        "1Lbb": (2 if q else 6, 100 if q else 1000),
    }
    res: dict[str, Any] = {"cpus": os.cpu_count(), "models": {}}
    for name, (n_pyhf, n_ours) in plan.items():
        theirs, pyhf_failed = pyhf_toys_per_s(name, n_pyhf)
        ours = fitserve_run(name, n_ours)
        res["models"][name] = {
            "pyhf_toys": 2 * n_pyhf,
            "pyhf_toys_per_s": theirs,
            "pyhf_failed": pyhf_failed,
            "fitserve_toys": 2 * n_ours,
            **ours,
            "ratio": ours["toys_per_s"] / theirs,
        }
        print(
            f"{name:6s} pyhf {theirs:8.2f} toys/s ({2 * n_pyhf} toys, {pyhf_failed} failed) | fitserve {ours['toys_per_s']:9.1f} toys/s "
            f"({2 * n_ours} toys, {ours['wall_s']:.2f} s) | x{ours['toys_per_s'] / theirs:.0f} | CLs {ours['CLs_obs']:.4f} "
            f"+- {ours['CLs_obs_err'] or 0:.4f} (asymptotic {ours['CLs_asymptotic']:.4f}); failed {ours['failed']}",
            flush=True,
        )
    one = res["models"]["1-bin"]
    res["one_bin_10k_warm_s"] = one["wall_s"]
    res["one_bin_10k_new_process_s"] = new_process_seconds(10_000)
    print(
        f"1-bin 10,000 + 10,000 toys: {one['wall_s']:.2f} s warm, {res['one_bin_10k_new_process_s']:.2f} s in a new "
        "process (import, build, compile from the cache)",
        flush=True,
    )
    n_scale = 1000 if q else 10_000
    runs = [parsl_scaling(n_scale, 100 if q else 1000, w) for w in (1, 2)]
    res["parsl"] = runs
    for r in runs:
        print(
            f"Parsl, 1Lbb {n_scale} + {n_scale} toys, {r['workers']} worker(s): {r['wall_s']:.1f} s "
            f"({r['toys_per_s']:.0f} toys/s, {r['chunks']} chunks); CLs {r['CLs_obs']}",
            flush=True,
        )
    res["parsl_speedup"] = runs[0]["wall_s"] / runs[1]["wall_s"]
    res["parsl_identical"] = runs[0]["CLs_exp"] == runs[1]["CLs_exp"] and runs[0]["CLs_obs"] == runs[1]["CLs_obs"]
    print(f"speed-up 2 vs 1 workers: {res['parsl_speedup']:.2f}x; merged numbers identical: {res['parsl_identical']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
