"""fitserve's engine against pyhf, side by side in one run, reported as ratios.

pyhf: numpy backend, default (SciPy) optimiser, ``hypotest`` per point on a few
points of each grid.  fitserve: whole grids (3L-RJ 66 points; staus and
sbottom-C 64 generated points).  Prints compile time, steady-state time,
per-hypothesis time and ratios, and writes ``benchmarks/results/engine.json``.
Peak memory for 1000 staus hypotheses is measured in a child process.

    python benchmarks/bench_engine.py [--pyhf-points 3] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pyhf

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "likelihoods"
ATLAS = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}


def grids() -> dict[str, tuple[dict, list[dict]]]:
    from fitserve.generate import signal_patchset

    out = {}
    rj = SHARED / "atlas-susy-2018-06-3L-RJ"
    out["3L-RJ"] = (json.loads((rj / "BkgOnly.json").read_text()), json.loads((rj / "patchset.json").read_text())["patches"])
    for name, folder in (("staus", "atlas-susy-2018-04-staus"), ("sbottom-C", "atlas-susy-2018-31-sbottom-C")):
        bkg = json.loads((SHARED / folder / "BkgOnly.json").read_text())
        out[name] = (bkg, signal_patchset(bkg)["patches"])
    return out


def pyhf_seconds(bkg: dict, patches: list[dict], n: int) -> float:
    pyhf.set_backend("numpy")
    times = []
    for patch in patches[:: max(1, len(patches) // n)][:n]:
        ws = pyhf.patchset.Patch(patch).apply(pyhf.Workspace(bkg))
        t0 = time.perf_counter()
        w = pyhf.Workspace(ws)
        model = w.model(modifier_settings=ATLAS)
        pyhf.infer.hypotest(1.0, w.data(model), model, test_stat="qtilde", return_expected_set=True)
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def memory_child() -> None:
    from fitserve.engine.scan import scan
    from fitserve.generate import signal_patchset

    bkg = json.loads((SHARED / "atlas-susy-2018-04-staus" / "BkgOnly.json").read_text())
    grid = [(300 + 5 * i, 10 * j) for i in range(40) for j in range(25)]
    patches = signal_patchset(bkg, grid)["patches"]
    scan(bkg, patches, {}, validate=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pyhf-points", type=int, default=3)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    from fitserve.engine.scan import scan

    report = {}
    for name, (bkg, patches) in grids().items():
        t_pyhf = pyhf_seconds(bkg, patches, args.pyhf_points)
        t0 = time.perf_counter()
        cold = scan(bkg, patches, {}, validate=False)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = scan(bkg, patches, {}, validate=False)
        warm_s = time.perf_counter() - t0
        n = len(patches)
        per_hyp = warm["timing"]["fit_s"] / n
        row = {
            "hypotheses": n,
            "pyhf_s_per_hypothesis": t_pyhf,
            "compile_s": cold["timing"]["compile_s"],
            "cold_scan_s": cold_s,
            "steady_scan_s": warm_s,
            "steady_fit_s_per_hypothesis": per_hyp,
            "ratio_steady_per_hypothesis": t_pyhf / per_hyp,
            "ratio_cold_scan": t_pyhf * n / cold_s,
            "converged": sum(r["converged"] for r in warm["results"].values()),
        }
        report[name] = row
        print(f"{name:10s} n={n:3d}  pyhf {t_pyhf:6.2f} s/hyp | compile {row['compile_s']:5.1f} s, cold scan {cold_s:6.1f} s, "
              f"steady {per_hyp * 1e3:7.1f} ms/hyp | x{row['ratio_steady_per_hypothesis']:.0f} steady, "
              f"x{row['ratio_cold_scan']:.1f} cold | converged {row['converged']}/{n}", flush=True)
    if not args.skip_memory:
        out = subprocess.run([sys.executable, __file__, "--memory-child"], capture_output=True, text=True, check=True)
        report["staus_1000_peak_rss_gib"] = float(out.stdout.strip().splitlines()[-1])
        print(f"peak RSS for 1000 staus hypotheses: {report['staus_1000_peak_rss_gib']:.2f} GiB")
    dest = REPO / "benchmarks" / "results"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "engine.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    if "--memory-child" in sys.argv:
        memory_child()
    else:
        main()
