"""CLs and upper limits against pyhf on published and synthetic likelihoods."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fitserve.engine.scan import scan


def test_3l_rj_against_robust_reference(rj):
    """All 66 points of ATLAS-SUSY-2018-06 against pyhf with a robust optimiser, observed and
    expected within 0.005 everywhere (the reference's two corrected points included).

    pyhf's default optimiser excludes none of them (CLs ~ 1); 14 are excluded.
    """
    bkg, ps, ref = rj
    out = scan(bkg, ps["patches"], {"test_stat": "qtilde", "poi_test": 1.0})
    res = out["results"]
    assert len(res) == 66
    robust = ref["robust"]
    for name, rec in res.items():
        r = robust[name]
        assert rec["converged"], name
        assert abs(rec["CLs_obs"] - r["CLs_obs"]) <= 0.005, name
        assert np.max(np.abs(np.array(rec["CLs_exp"]) - np.array(r["CLs_exp"]))) <= 0.005, name
        # reference nll_free is pyhf's twice_nll
        assert 2 * rec["nll_free"] <= r["nll_free"] + 1e-3, name
    assert sum(rec["CLs_obs"] < 0.05 for rec in res.values()) == 14
    assert sum(r["CLs_obs"] < 0.05 for r in ref["scipy_default"].values()) == 0


REF = json.loads((Path(__file__).parent / "references" / "example_pyhf.json").read_text())


def _patch(ps, name):
    return next(p for p in ps["patches"] if p["metadata"]["name"] == name)


@pytest.mark.parametrize("settings", ["atlas", "legacy"])
def test_example_cls_match_pyhf(example, settings):
    """Every modifier type, both interpolation settings: |dCLs| <= 1e-4 (points near the boundary)."""
    bkg, ps = example
    refs = REF["cls"][settings]
    out = scan(bkg, [_patch(ps, n) for n in refs], {"modifier_settings": settings})["results"]
    for name, ref in refs.items():
        rec = out[name]
        assert rec["converged"]
        assert rec["CLs_obs"] == pytest.approx(ref["CLs_obs"], abs=1e-4), name
        np.testing.assert_allclose(rec["CLs_exp"], ref["CLs_exp"], atol=1e-4)


def test_example_limits_match_pyhf_toms748(example):
    """Each of our six limits within 0.5% of pyhf's toms748_scan (rtol 1e-5), stored."""
    bkg, ps = example
    rec = scan(bkg, [_patch(ps, "sig_750_87p5")], {"limits": True, "limit_rtol": 1e-4})["results"]["sig_750_87p5"]
    ref = REF["limits"]["sig_750_87p5"]
    limits = [rec["upper_limit"]["obs"]] + rec["upper_limit"]["exp"]
    assert limits[1:] == sorted(limits[1:])  # -2 sigma ... +2 sigma
    np.testing.assert_allclose(limits, [ref["obs"], *ref["exp"]], rtol=5e-3)


@pytest.mark.parametrize("test_stat", ["q", "q0"])
def test_other_test_statistics_match_pyhf(example, test_stat):
    bkg, ps = example
    patch = _patch(ps, "sig_575_262p5")
    rec = scan(bkg, [patch], {"test_stat": test_stat})["results"][patch["metadata"]["name"]]
    ref = REF["other_test_stats"][test_stat]
    assert rec["CLs_obs"] == pytest.approx(ref["CLs_obs"], abs=1e-4)
    np.testing.assert_allclose(rec["CLs_exp"], ref["CLs_exp"], atol=1e-4)


def test_single_workspace_and_no_recompile(example):
    """A full workspace is one hypothesis; a second call in-process compiles nothing."""
    from fitserve.engine.inputs import load_json
    from .conftest import EXAMPLE

    single = load_json(EXAMPLE / "single.json")
    first = scan(single)
    second = scan(single)
    assert len(first["results"]) == 1
    assert second["timing"]["compile_s"] == 0.0
    assert list(second["results"].values())[0]["CLs_obs"] == pytest.approx(
        list(first["results"].values())[0]["CLs_obs"], abs=1e-12
    )


@pytest.mark.parametrize("folder", ["atlas-susy-2018-04-staus", "atlas-susy-2018-31-sbottom-C"])
def test_published_background_with_generated_grid(folder):
    """64 generated signal points on a published background: every fit converges, and
    two points (one excluded, one not) agree with pyhf (default SciPy fit, which converges
    here: its free-fit NLL is checked against ours; pyhf's numbers stored)."""
    from fitserve.generate import signal_patchset

    from .conftest import LIKELIHOODS, load, need_shared

    need_shared(LIKELIHOODS / folder)
    bkg = load(LIKELIHOODS / folder / "BkgOnly.json")
    patches = signal_patchset(bkg)["patches"]
    res = scan(bkg, patches, {})["results"]
    assert all(r["converged"] for r in res.values())
    refs = REF["published"][folder]
    assert min(res[n]["CLs_obs"] for n in refs) < 0.05 < max(res[n]["CLs_obs"] for n in refs)  # one excluded, one not
    for name, ref in refs.items():
        assert 2 * res[name]["nll_free"] <= ref["twice_nll"] + 1e-3, name  # we reach pyhf's minimum (or lower)
        assert res[name]["CLs_obs"] == pytest.approx(ref["CLs_obs"], abs=5e-3), name
        np.testing.assert_allclose(res[name]["CLs_exp"], ref["CLs_exp"], atol=5e-3)
