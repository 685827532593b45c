"""Regenerate ``example_pyhf.json``: pyhf on the project's example grid and two published backgrounds (~5 min).

    python tests/engine/references/make_example.py

pyhf 0.7.6, numpy backend, default SciPy fit (as pyhf users run it), from
pyhf's initial values.  Stored:

* ``cls``: CLs (observed, expected band) at mu = 1, qtilde, of two example patches
  with the atlas (code4/code4p) and the legacy (code1/code0) codes;
* ``other_test_stats``: q at mu = 1 and q0 for one example patch;
* ``limits``: pyhf's ``toms748_scan`` upper limits (rtol 1e-5, on [0, 10]) of sig_750_87p5;
* ``published``: CLs and the free fit's NLL of two generated signal points (one
  excluded, one not) on the staus and sbottom-C backgrounds (``../shared``).

The tests read the JSON (tests/engine/test_infer.py) instead of refitting.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pyhf

from fitserve.generate import signal_patchset

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
EXAMPLE = REPO / "workspaces" / "example"
LIKELIHOODS = REPO.parent / "shared" / "likelihoods"
CODES = {"atlas": ("code4", "code4p"), "legacy": ("code1", "code0")}
PUBLISHED = {
    "atlas-susy-2018-04-staus": ["sig_600_250", "sig_800_350"],
    "atlas-susy-2018-31-sbottom-C": ["sig_400_350", "sig_700_350"],
}


def model_of(bkg: dict, patch: dict, codes: tuple[str, str]):
    ws = pyhf.Workspace(pyhf.patchset.Patch(patch).apply(pyhf.Workspace(bkg)))
    model = ws.model(modifier_settings={"normsys": {"interpcode": codes[0]}, "histosys": {"interpcode": codes[1]}})
    return model, ws.data(model)


def _swap(pair):
    model, data = pair
    return data, model


def hypotest(mu, data, model, test_stat="qtilde"):
    obs, exp = pyhf.infer.hypotest(mu, data, model, test_stat=test_stat, return_expected_set=True)
    return {"CLs_obs": float(obs), "CLs_exp": [float(v) for v in exp]}


def main() -> None:
    warnings.filterwarnings("ignore")
    pyhf.set_backend("numpy")
    bkg = json.loads((EXAMPLE / "BkgOnly.json").read_text())
    patches = {p["metadata"]["name"]: p for p in json.loads((EXAMPLE / "patchset.json").read_text())["patches"]}
    out = {
        "pyhf_version": pyhf.__version__,
        "optimizer": "scipy SLSQP, pyhf's default",
        "cls": {},
        "other_test_stats": {},
        "limits": {},
        "published": {},
    }
    for label, codes in CODES.items():
        out["cls"][label] = {
            n: hypotest(1.0, *_swap(model_of(bkg, patches[n], codes))) for n in ("sig_575_262p5", "sig_750_87p5")
        }
    model, data = model_of(bkg, patches["sig_575_262p5"], CODES["atlas"])
    out["other_test_stats"] = {"q": hypotest(1.0, data, model, "q"), "q0": hypotest(0.0, data, model, "q0")}
    model, data = model_of(bkg, patches["sig_750_87p5"], CODES["atlas"])
    obs, exp = pyhf.infer.intervals.upper_limits.toms748_scan(data, model, 0.0, 10.0, rtol=1e-5, test_stat="qtilde")
    out["limits"]["sig_750_87p5"] = {"obs": float(obs), "exp": [float(v) for v in exp]}
    print("limits", out["limits"], flush=True)
    for folder, names in PUBLISHED.items():
        if not (LIKELIHOODS / folder).exists():
            continue
        pbkg = json.loads((LIKELIHOODS / folder / "BkgOnly.json").read_text())
        gen = {p["metadata"]["name"]: p for p in signal_patchset(pbkg)["patches"]}
        out["published"][folder] = {}
        for name in names:
            model, data = model_of(pbkg, gen[name], CODES["atlas"])
            rec = hypotest(1.0, data, model)
            _, twice_nll = pyhf.infer.mle.fit(data, model, return_fitted_val=True)
            rec["twice_nll"] = float(twice_nll)
            out["published"][folder][name] = rec
            print(folder, name, rec, flush=True)
    (HERE / "example_pyhf.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
