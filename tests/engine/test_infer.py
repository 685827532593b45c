"""CLs and upper limits against pyhf on published and synthetic likelihoods."""

from __future__ import annotations

import numpy as np
import pyhf
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


def _pyhf_model(spec, codes):
    ws = pyhf.Workspace(spec)
    model = ws.model(modifier_settings={"normsys": {"interpcode": codes[0]}, "histosys": {"interpcode": codes[1]}})
    return model, ws.data(model)


def _patch(ps, name):
    return next(p for p in ps["patches"] if p["metadata"]["name"] == name)


@pytest.mark.parametrize("codes", [("code4", "code4p"), ("code1", "code0")])
def test_example_cls_match_pyhf(example, codes):
    """Every modifier type, both interpolation settings: |dCLs| <= 1e-4 (points near the boundary)."""
    bkg, ps = example
    pyhf.set_backend("numpy")
    patches = [_patch(ps, "sig_575_262p5"), _patch(ps, "sig_750_87p5")]
    settings = "atlas" if codes == ("code4", "code4p") else "pyhf"
    out = scan(bkg, patches, {"modifier_settings": settings})["results"]
    for patch in patches:
        name = patch["metadata"]["name"]
        model, data = _pyhf_model(pyhf.patchset.Patch(patch).apply(pyhf.Workspace(bkg)), codes)
        cls_obs, cls_exp = pyhf.infer.hypotest(1.0, data, model, test_stat="qtilde", return_expected_set=True)
        rec = out[name]
        assert rec["converged"]
        assert rec["CLs_obs"] == pytest.approx(float(cls_obs), abs=1e-4), name
        np.testing.assert_allclose(rec["CLs_exp"], [float(v) for v in cls_exp], atol=1e-4)


def test_example_limits_bracketed_by_pyhf(example):
    """Each of our six limits lies within 0.5% of pyhf's CLs = 0.05 crossing.

    Cheaper than pyhf's own ``toms748_scan`` (minutes per point here) and just as
    strict: pyhf's CLs must be above 0.05 at 0.995*limit and below at 1.005*limit.
    """
    bkg, ps = example
    pyhf.set_backend("numpy")
    patch = _patch(ps, "sig_750_87p5")
    rec = scan(bkg, [patch], {"limits": True})["results"]["sig_750_87p5"]
    model, data = _pyhf_model(pyhf.patchset.Patch(patch).apply(pyhf.Workspace(bkg)), ("code4", "code4p"))
    limits = [rec["upper_limit"]["obs"]] + rec["upper_limit"]["exp"]
    assert limits[1:] == sorted(limits[1:])  # -2 sigma ... +2 sigma
    for k, limit in enumerate(limits):
        for factor, above in ((0.995, True), (1.005, False)):
            obs, exp = pyhf.infer.hypotest(limit * factor, data, model, test_stat="qtilde", return_expected_set=True)
            value = float(obs) if k == 0 else float(exp[k - 1])
            assert (value > 0.05) == above, (k, factor, value)


@pytest.mark.parametrize("test_stat", ["q", "q0"])
def test_other_test_statistics_match_pyhf(example, test_stat):
    bkg, ps = example
    pyhf.set_backend("numpy")
    patch = _patch(ps, "sig_575_262p5")
    rec = scan(bkg, [patch], {"test_stat": test_stat})["results"][patch["metadata"]["name"]]
    full = pyhf.patchset.Patch(patch).apply(pyhf.Workspace(bkg))
    model, data = _pyhf_model(full, ("code4", "code4p"))
    poi = 0.0 if test_stat == "q0" else 1.0
    cls_obs, cls_exp = pyhf.infer.hypotest(poi, data, model, test_stat=test_stat, return_expected_set=True)
    assert rec["CLs_obs"] == pytest.approx(float(cls_obs), abs=1e-4)
    np.testing.assert_allclose(rec["CLs_exp"], [float(v) for v in cls_exp], atol=1e-4)


def test_single_workspace_and_no_recompile(example):
    """A full workspace is one hypothesis; a second call in-process compiles nothing."""
    from fitserve.engine.inputs import load_json
    from .conftest import EXAMPLE

    single = load_json(EXAMPLE / "single.json")
    first = scan(single)
    second = scan(single)
    assert len(first["results"]) == 1
    assert second["timing"]["compile_s"] == 0.0
    assert list(second["results"].values())[0]["CLs_obs"] == pytest.approx(list(first["results"].values())[0]["CLs_obs"], abs=1e-12)


@pytest.mark.parametrize("folder", ["atlas-susy-2018-04-staus", "atlas-susy-2018-31-sbottom-C"])
def test_published_background_with_generated_grid(folder):
    """64 generated signal points on a published background: every fit converges, and
    two points (one excluded, one not) agree with pyhf (default SciPy fit, which converges
    here: its free-fit NLL is checked against ours)."""
    from fitserve.generate import signal_patchset

    from .conftest import LIKELIHOODS, load, need_shared

    need_shared(LIKELIHOODS / folder)
    bkg = load(LIKELIHOODS / folder / "BkgOnly.json")
    patches = signal_patchset(bkg)["patches"]
    res = scan(bkg, patches, {})["results"]
    assert all(r["converged"] for r in res.values())
    cls = {name: r["CLs_obs"] for name, r in res.items()}
    excluded = min(cls, key=lambda n: abs(cls[n] - 0.01))
    allowed = min(cls, key=lambda n: abs(cls[n] - 0.3))
    pyhf.set_backend("numpy")
    for name in (excluded, allowed):
        patch = next(p for p in patches if p["metadata"]["name"] == name)
        model, data = _pyhf_model(pyhf.patchset.Patch(patch).apply(pyhf.Workspace(bkg)), ("code4", "code4p"))
        cls_obs, cls_exp = pyhf.infer.hypotest(1.0, data, model, test_stat="qtilde", return_expected_set=True)
        _, twice_nll = pyhf.infer.mle.fit(data, model, return_fitted_val=True)
        assert 2 * res[name]["nll_free"] <= float(twice_nll) + 1e-3, name  # we reach pyhf's minimum (or lower)
        assert res[name]["CLs_obs"] == pytest.approx(float(cls_obs), abs=5e-3), name
        np.testing.assert_allclose(res[name]["CLs_exp"], [float(v) for v in cls_exp], atol=5e-3)
