"""Regenerate ``legacy_grid_pyhf.json``: pyhf on the generated example grid with the legacy codes.

    python tests/engine/references/make_legacy_grid.py     (~10 min)

The grid is ``fitserve.generate.example_files(grid=4, seed=0)`` (16 patches)
with normsys code1 / histosys code0, whose NLL is kinked at alpha = 0: several
of its minima sit exactly on a kink.  Stored: pyhf's CLs (observed and
expected) at every POI value of ``POIS`` for the first ``PATCHES`` patches, and pyhf's toms748
upper limits (rtol 1e-4 on [0, 10]) for the patches of ``LIMIT_PATCHES``.
pyhf 0.7.6, numpy backend, SciPy (SLSQP) at tolerance 1e-12, qtilde.  The
test suite reads the JSON (tests/engine/test_kinks.py).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pyhf

from fitserve import generate

HERE = Path(__file__).resolve().parent
POIS = [0.5, 1.0, 2.0, 3.0, 4.2, 4.4, 4.6, 4.8, 5.0]  # before kinks were handled, 4.2-5.0 failed for sig_400_*
PATCHES = 8  # the first eight: sig_400_* and sig_633p333_*
LIMIT_PATCHES = ["sig_400_0", "sig_400_233p333", "sig_633p333_116p667", "sig_633p333_350"]
SETTINGS = {"normsys": {"interpcode": "code1"}, "histosys": {"interpcode": "code0"}}


def main() -> None:
    warnings.filterwarnings("ignore")
    pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer(tolerance=1e-12))
    files = generate.example_files(grid=4, seed=0)
    bkg = pyhf.Workspace(files["BkgOnly.json"])
    out = {
        "pyhf_version": pyhf.__version__,
        "modifier_settings": SETTINGS,
        "test_stat": "qtilde",
        "grid": {"generator": "fitserve.generate.example_files", "grid": 4, "seed": 0},
        "optimizer": "scipy SLSQP, tolerance 1e-12",
        "pois": POIS,
        "cls": {},
        "limits": {},
    }
    for patch in files["patchset.json"]["patches"][:PATCHES]:
        name = patch["metadata"]["name"]
        ws = pyhf.Workspace(pyhf.patchset.Patch(patch).apply(bkg))
        model = ws.model(modifier_settings=SETTINGS)
        data = ws.data(model)
        rows = []
        for mu in POIS:
            obs, exp = pyhf.infer.hypotest(mu, data, model, test_stat="qtilde", return_expected_set=True)
            rows.append([float(obs)] + [float(v) for v in exp])
        out["cls"][name] = rows
        if name in LIMIT_PATCHES:
            obs, exp = pyhf.infer.intervals.upper_limits.toms748_scan(
                data, model, 0.0, 10.0, rtol=1e-4, test_stat="qtilde"
            )
            out["limits"][name] = {"obs": float(obs), "exp": [float(v) for v in exp]}
        print(name, out["limits"].get(name), flush=True)
    (HERE / "legacy_grid_pyhf.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
