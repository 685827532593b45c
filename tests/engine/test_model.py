"""The padded batched model is exact: per-hypothesis NLL equals pyhf's at random points."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pyhf
import pytest

from fitserve.engine import likelihood as lh
from fitserve.engine.inputs import expand_hypotheses
from fitserve.engine.model import compile_hypotheses

from .conftest import ATLAS


def _pyhf_vector(model: pyhf.Model, labels: list[str | None], pars: np.ndarray, theta: np.ndarray) -> np.ndarray:
    theta = theta.copy()
    for j, lab in enumerate(labels):
        if lab is None:
            continue
        name, i = (lab.split("[")[0], int(lab.split("[")[1][:-1])) if "[" in lab else (lab, 0)
        theta[j] = pars[model.config.par_slice(name)][i]
    return theta


def _random_points(model: pyhf.Model, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    init = np.asarray(model.config.suggested_init(), dtype=float)
    bounds = np.asarray(model.config.suggested_bounds(), dtype=float)
    points = [init]
    for _ in range(n - 1):
        width = np.minimum(bounds[:, 1] - bounds[:, 0], 2.0)
        points.append(np.clip(init + rng.normal(size=init.shape) * 0.3 * width, bounds[:, 0] + 1e-6, bounds[:, 1]))
    return points


def _check(bkg, patches, names, codes, settings, atol, rtol):
    hyps = expand_hypotheses(bkg, patches, names)
    [bm] = compile_hypotheses(hyps, bkg)
    rng = np.random.default_rng(7)
    for h, hyp in enumerate(hyps):
        ws = pyhf.Workspace(hyp.spec)
        model = ws.model(modifier_settings=settings)
        data = ws.data(model)
        t = bm.hypothesis(h)
        obs = lh.observed_data(t)
        for pars in _random_points(model, rng, 4):
            theta = _pyhf_vector(model, bm.param_labels[h], pars, bm.arrays["init"][h])
            ref = -float(model.logpdf(pars, data)[0])
            mine = float(lh.nll_variable(jnp.asarray(theta), t, obs, codes) + lh.nll_constant(t, obs))
            assert mine == pytest.approx(ref, abs=atol, rel=rtol), (hyp.name, ref, mine)
    return bm


@pytest.mark.parametrize("codes", [("code4", "code4p"), ("code1", "code0")])
def test_example_nll_equals_pyhf(example, codes):
    bkg, ps = example
    settings = {"normsys": {"interpcode": codes[0]}, "histosys": {"interpcode": codes[1]}}
    names = [p["metadata"]["name"] for p in ps["patches"][:5]]
    _check(bkg, ps["patches"], names, codes, settings, atol=1e-9, rtol=1e-11)


def test_3l_padding_exact(rj):
    """3L-RJ: 66 patches with differently named signal samples form ONE batch.

    Patches carry 9 to 51 signal modifiers and some skip a channel; padding must
    contribute nothing.  pyhf evaluates ``tau*log(gamma*tau)`` with tau = 1e12
    naively, so its NLL carries rounding of ~1e-3 absolute: compare at 1e-11
    relative plus that rounding.
    """
    bkg, ps, _ = rj
    patches = ps["patches"]
    sizes = [sum(len(op["value"]["modifiers"]) for op in p["patch"]) for p in patches]
    n_channels = [len(p["patch"]) for p in patches]
    chosen = {int(np.argmin(sizes)), int(np.argmax(sizes)), n_channels.index(min(n_channels)), 0}
    names = [patches[i]["metadata"]["name"] for i in sorted(chosen)]
    assert len(compile_hypotheses(expand_hypotheses(bkg, patches), bkg)) == 1  # one structure group
    _check(bkg, patches, names, ("code4", "code4p"), ATLAS, atol=5e-3, rtol=1e-11)


def test_padding_equals_unpadded(rj):
    """A hypothesis padded into the whole grid has the same NLL as compiled alone."""
    bkg, ps, _ = rj
    hyps = expand_hypotheses(bkg, ps["patches"])
    [grid] = compile_hypotheses(hyps, bkg)
    rng = np.random.default_rng(3)
    for h in (0, 17, 40):
        [alone] = compile_hypotheses([hyps[h]], bkg)
        tg = grid.hypothesis(h)
        ta = alone.hypothesis(0)
        for _ in range(3):
            xa = np.asarray(ta["init"]) + np.where(np.asarray(ta["fixed"]), 0, rng.normal(size=alone.n_params) * 0.05)
            xg = np.asarray(tg["init"]).copy()
            pos = {lab: j for j, lab in enumerate(grid.param_labels[h]) if lab is not None}
            for j, lab in enumerate(alone.param_labels[0]):
                if lab is not None:  # None: a padding parameter of the shape bucket
                    xg[pos[lab]] = xa[j]
            for codes in (("code4", "code4p"), ("code1", "code0")):
                fa = lh.nll_variable(jnp.asarray(xa), ta, lh.observed_data(ta), codes) + lh.nll_constant(
                    ta, lh.observed_data(ta)
                )
                fg = lh.nll_variable(jnp.asarray(xg), tg, lh.observed_data(tg), codes) + lh.nll_constant(
                    tg, lh.observed_data(tg)
                )
                assert float(fg) == pytest.approx(float(fa), rel=1e-13, abs=1e-9)


def _derivative_check(bkg, patches, h):
    import jax

    [bm] = compile_hypotheses(expand_hypotheses(bkg, patches), bkg)
    t = bm.hypothesis(h)
    obs = lh.observed_data(t)
    rng = np.random.default_rng(0)
    for codes in (("code4", "code4p"), ("code1", "code0")):
        x = jnp.where(
            t["fixed"], t["init"], jnp.clip(t["init"] + rng.normal(size=bm.n_params) * 0.7, t["lo"] + 1e-3, t["hi"])
        )
        v, g, h = lh.value_grad_hess(x, t, obs, codes)
        f = lambda y: lh.nll_variable(y, t, obs, codes)  # noqa: E731
        assert float(v) == pytest.approx(float(f(x)), rel=1e-14)
        np.testing.assert_allclose(g, jax.grad(f)(x), rtol=1e-9, atol=1e-9 * float(jnp.abs(g).max()))
        np.testing.assert_allclose(h, jax.hessian(f)(x), rtol=1e-9, atol=1e-9 * float(jnp.abs(h).max()))
    # at a kink (alphas exactly 0, legacy codes): the gradient has the right derivatives, the extra one the left
    codes = ("code1", "code0")
    n_a = lh.n_alpha(t)
    x0 = x.at[:n_a].set(0.0)
    _, g_right, _, _, g_left = lh.value_grad_hess_fisher(x0, t, obs, codes, left=True)
    f = lambda y: lh.nll_variable(y, t, obs, codes)  # noqa: E731
    # autodiff just beside the kink, inside each smooth side: the one-sided derivatives
    right = jax.grad(f)(x0.at[:n_a].set(1e-300))
    left = jax.grad(f)(x0.at[:n_a].set(-1e-300))
    np.testing.assert_allclose(g_right, right, rtol=1e-9, atol=1e-9 * float(jnp.abs(right).max()))
    np.testing.assert_allclose(g_left, left, rtol=1e-9, atol=1e-9 * float(jnp.abs(left).max()))
    assert not np.allclose(g_left[:n_a], g_right[:n_a])  # the kinks are real in these models
    np.testing.assert_allclose(g_left[n_a:], g_right[n_a:], rtol=0, atol=0)


def test_closed_form_derivatives_match_autodiff_on_the_example(example):
    """Every modifier type (workspaces/example); no shared data needed."""
    bkg, ps = example
    _derivative_check(bkg, ps["patches"][:3], 2)


def test_closed_form_derivatives_match_autodiff(rj):
    bkg, ps, _ = rj
    _derivative_check(bkg, ps["patches"][:3], 2)


@pytest.mark.parametrize("code", ["code1", "code4"])
def test_normsys_log_derivatives_also_where_the_polynomial_turns_negative(code):
    """Extreme published normsys (hi=105.6, lo=0.01 in the staus likelihood): g = f'/f, h = (log|f|)''."""
    import jax

    hi = jnp.array([105.646, 1.07661, 0.9, 1.0])
    lo = jnp.array([0.01, 0.923388, 1.2, 1.0])
    for a in np.linspace(-1.6, 1.6, 33):
        alpha = jnp.full(4, a)
        f, g, h = lh._normsys(alpha, hi, lo, code)
        df = jax.vmap(jax.grad(lambda x, u, d: lh._normsys(x, u, d, code)[0]))(alpha, hi, lo)
        d2 = jax.vmap(jax.grad(jax.grad(lambda x, u, d: jnp.log(jnp.abs(lh._normsys(x, u, d, code)[0])))))(
            alpha, hi, lo
        )
        np.testing.assert_allclose(g, df / f, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(h, d2, rtol=1e-7, atol=1e-9)
