"""The paper's benchmark pallet (1Lbb) against published numbers and a stored pyhf reference,
and the engine's answers at the edges: negative templates, limits beyond the POI bound, POI checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pyhf
import pytest

from fitserve.engine.errors import InputError
from fitserve.engine.scan import scan
from fitserve.generate import scaled_sample

from .conftest import LIKELIHOODS, load, need_shared

LBB = LIKELIHOODS / "atlas-susy-2019-08-1Lbb"
REFERENCE = Path(__file__).parent / "references" / "1lbb_pyhf.json"
#: ../shared/likelihoods/README.md, from the pyhf + funcX paper's code (code4 / code4p, qtilde, mu = 1)
PUBLISHED = {"C1N2_Wh_hbb_1000_0": (0.58568, [0.04988, 0.12645, 0.29259, 0.56942, 0.84760])}


@pytest.fixture(scope="module")
def lbb():
    need_shared(LBB)
    bkg, ps = load(LBB / "BkgOnly.json"), load(LBB / "patchset.json")
    ref = json.loads(REFERENCE.read_text())
    names = list(ref["points"])
    patches = [p for p in ps["patches"] if p["metadata"]["name"] in names]
    return bkg, patches, ref, scan(bkg, patches, {})["results"]


def test_1lbb_reproduces_the_published_cls(lbb):
    *_, res = lbb
    for name, (obs, exp) in PUBLISHED.items():
        assert res[name]["converged"]
        assert res[name]["CLs_obs"] == pytest.approx(obs, abs=1e-4)
        np.testing.assert_allclose(res[name]["CLs_exp"], exp, atol=1e-4)


def test_1lbb_equals_stored_pyhf_reference(lbb):
    """pyhf at a tight tolerance (tests/engine/references/make_1lbb.py); we may only be better converged."""
    _, _, ref, res = lbb
    for name, r in ref["points"].items():
        assert res[name]["converged"], name
        assert res[name]["CLs_obs"] == pytest.approx(r["CLs_obs"], abs=1e-5), name
        np.testing.assert_allclose(res[name]["CLs_exp"], r["CLs_exp"], atol=1e-5, err_msg=name)


def _patch(ps, name):
    return next(p for p in ps["patches"] if p["metadata"]["name"] == name)


def test_limit_edge_beyond_the_poi_bound_is_a_bound_not_a_failure(example):
    """sig_1100_0: only the +2 sigma edge lies above the POI's upper bound 10."""
    bkg, ps = example
    patch = _patch(ps, "sig_1100_0")
    capped = scan(bkg, [patch], {"limits": True, "limit_max": 10.0})["results"]["sig_1100_0"]
    assert capped["converged"] and capped["error"] is None
    ul = capped["upper_limit"]
    assert ul["exp"][4] is None and ul["above"][5] == 10.0  # pyhf's order: the +2 sigma limit last
    assert ul["obs"] is not None and all(v is not None for v in ul["exp"][:4])
    assert ul["obs"] == pytest.approx(7.99, rel=0.01) and ul["exp"][2] == pytest.approx(4.47, rel=0.01)
    wide = scan(bkg, [patch], {"limits": True})["results"]["sig_1100_0"]["upper_limit"]  # default: up to 10x the bound
    assert "above" not in wide and wide["exp"][4] > 10.0
    np.testing.assert_allclose(wide["exp"][:4], ul["exp"][:4], rtol=2e-3)


def test_poi_test_outside_the_bounds_is_refused_unless_widened(example):
    bkg, ps = example
    patch = _patch(ps, "sig_750_87p5")
    with pytest.raises(InputError) as info:
        scan(bkg, [patch], {"poi_test": 12.0})
    assert info.value.where == "options.poi_test" and "outside the bounds" in info.value.message
    rec = scan(bkg, [patch], {"poi_test": 12.0, "widen_poi_bounds": True})["results"]["sig_750_87p5"]
    assert rec["converged"] and rec["CLs_obs"] < 0.05


def test_qtilde_needs_zero_inside_the_poi_bounds(example):
    bkg, ps = example
    bkg = copy.deepcopy(bkg)
    params = bkg["measurements"][0]["config"]["parameters"]
    params.append({"name": bkg["measurements"][0]["config"]["poi"], "bounds": [[0.5, 10.0]]})
    with pytest.raises(InputError) as info:
        scan(bkg, [_patch(ps, "sig_750_87p5")], {})
    assert info.value.where == "options.test_stat" and "0 inside the POI bounds" in info.value.message


def test_negative_template_bins_are_fitted_like_pyhf(example):
    """Negative-weight Monte Carlo: a negative yield in one sample's bin and negative histosys bins."""
    bkg, ps = example
    bkg = copy.deepcopy(bkg)
    done = 0
    for ch in bkg["channels"]:
        for s in ch["samples"]:
            for m in s["modifiers"]:
                if m["type"] == "histosys" and done < 2:
                    m["data"]["lo_data"][0] = -0.00032 if done == 0 else m["data"]["lo_data"][0]
                    m["data"]["hi_data"][-1] = -0.0558 if done == 1 else m["data"]["hi_data"][-1]
                    s["data"][0] = s["data"][0] if done else -0.25
                    done += 1
    assert done == 2
    patch = _patch(ps, "sig_575_262p5")
    rec = scan(bkg, [patch], {})["results"]["sig_575_262p5"]
    pyhf.set_backend("numpy")
    ws = pyhf.Workspace(pyhf.patchset.Patch(patch).apply(pyhf.Workspace(bkg)))
    model = ws.model(modifier_settings={"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}})
    obs, exp = pyhf.infer.hypotest(1.0, ws.data(model), model, test_stat="qtilde", return_expected_set=True)
    assert rec["converged"]
    assert rec["CLs_obs"] == pytest.approx(float(obs), abs=1e-4)
    np.testing.assert_allclose(rec["CLs_exp"], [float(v) for v in exp], atol=1e-4)


def _scaled(patch: dict, factor: float) -> dict:
    out = copy.deepcopy(patch)
    out["metadata"]["name"] += "_scaled"
    out["patch"] = [{**op, "value": scaled_sample(op["value"], factor)} for op in out["patch"]]
    return out


def test_1lbb_signal_scaled_up_converges_and_is_more_excluded():
    """Points whose fixed-POI fits are the hardest of the grid (low masses: the signal at mu = 1 is
    far above the data) still converge with 5% more signal, and CLs falls as the signal grows."""
    need_shared(LBB)
    bkg, ps = load(LBB / "BkgOnly.json"), load(LBB / "patchset.json")
    base = [_patch(ps, n) for n in ("C1N2_Wh_hbb_175_0", "C1N2_Wh_hbb_250_25", "C1N2_Wh_hbb_350_0")]
    res = scan(bkg, base + [_scaled(p, 1.05) for p in base], {})["results"]
    for p in base:
        name = p["metadata"]["name"]
        assert res[name]["converged"] and res[name + "_scaled"]["converged"], (name, res[name + "_scaled"])
        assert res[name + "_scaled"]["CLs_obs"] < res[name]["CLs_obs"], name
        assert res[name + "_scaled"]["CLs_exp"][2] < res[name]["CLs_exp"][2], name
