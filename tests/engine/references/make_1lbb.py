"""Regenerate ``1lbb_pyhf.json``: pyhf's CLs for a few points of the 1Lbb pallet (~10 s a point).

    python tests/engine/references/make_1lbb.py

pyhf 0.7.6, numpy backend, SciPy (SLSQP) at tolerance 1e-10 from pyhf's
initial values, qtilde at mu = 1, code4 / code4p.  The test suite reads the
JSON instead of refitting (tests/engine/test_paper.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyhf

HERE = Path(__file__).resolve().parent
LBB = HERE.parents[3] / "shared" / "likelihoods" / "atlas-susy-2019-08-1Lbb"
POINTS = ["C1N2_Wh_hbb_1000_0", "C1N2_Wh_hbb_900_250", "C1N2_Wh_hbb_400_100", "C1N2_Wh_hbb_250_0"]


def main() -> None:
    pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer(tolerance=1e-10))
    bkg = pyhf.Workspace(json.loads((LBB / "BkgOnly.json").read_text()))
    ps = pyhf.PatchSet(json.loads((LBB / "patchset.json").read_text()))
    out = {
        "pyhf_version": pyhf.__version__,
        "modifier_settings": {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}},
        "test_stat": "qtilde",
        "poi_test": 1.0,
        "optimizer": "scipy SLSQP, tolerance 1e-10",
        "points": {},
    }
    for name in POINTS:
        ws = pyhf.Workspace(ps[name].apply(bkg))
        model = ws.model(modifier_settings=out["modifier_settings"])
        data = ws.data(model)
        cls_obs, cls_exp = pyhf.infer.hypotest(1.0, data, model, test_stat="qtilde", return_expected_set=True)
        out["points"][name] = {"CLs_obs": float(cls_obs), "CLs_exp": [float(v) for v in cls_exp]}
        print(name, out["points"][name], flush=True)
    (HERE / "1lbb_pyhf.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
