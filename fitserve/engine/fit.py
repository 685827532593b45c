"""Bounded, batched minimisation of the NLL with convergence diagnostics.

A projected Newton method with Levenberg-Marquardt damping (trust-region
ratio test) on the exact Hessian, in variables rescaled by the square root of
the Hessian diagonal.  The rescaling makes it invariant to the parameters'
units: in ATLAS-SUSY-2018-06 the Poisson-constrained gammas have curvature
~1e12 next to nuisance parameters of curvature ~1, which defeats optimisers
with absolute tolerances (pyhf's SLSQP never leaves its start there).

Written here rather than taken from optimistix/jaxopt because neither offers
a bound-constrained second-order method whose stopping rule is a
scale-invariant estimated distance to minimum (EDM = 1/2 g^T H^-1 g on the
free variables), which is what "converged" must mean: a fit is reported as
converged only if, at the returned point, the Hessian restricted to the free
variables is positive definite and the EDM is below ``EDM_CONVERGED``.  A
stalled iteration is therefore reported, never passed off as a minimum.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fitserve.engine import likelihood  # noqa: F401  (enables float64)

EDM_TARGET = 1e-12  # iterate until here
EDM_CONVERGED = 1e-6  # report as converged below this (Minuit's default goal is 1e-4)
MAX_ITER = 200


class FitResult(NamedTuple):
    x: jax.Array
    fval: jax.Array  # variable part of the NLL at x
    edm: jax.Array
    converged: jax.Array
    n_iter: jax.Array


class _State(NamedTuple):
    x: jax.Array
    f: jax.Array
    g: jax.Array
    h: jax.Array
    lam: jax.Array
    edm: jax.Array
    it: jax.Array
    done: jax.Array


def _free_set(x, g, lo, hi, free):
    """Free variables that are not held at a bound by an outward gradient."""
    at_lo = (x <= lo) & (g > 0)
    at_hi = (x >= hi) & (g < 0)
    return free & ~at_lo & ~at_hi


def _scaled_system(g, h, mask):
    d = jnp.sqrt(jnp.maximum(jnp.abs(jnp.diag(h)), 1e-12))
    hs = h / jnp.outer(d, d)
    m2 = jnp.outer(mask, mask)
    eye = jnp.eye(h.shape[0], dtype=h.dtype)
    hs = jnp.where(m2, hs, eye)
    gs = jnp.where(mask, g / d, 0.0)
    return d, hs, gs


def _chol_solve(a, b):
    """Solve ``a x = b``; ``ok`` is False if ``a`` is not positive definite."""
    c = jnp.linalg.cholesky(a)
    ok = jnp.all(jnp.isfinite(c)) & jnp.all(jnp.diag(c) > 0)
    c = jnp.where(ok, c, jnp.eye(a.shape[0], dtype=a.dtype))
    y = jax.scipy.linalg.cho_solve((c, True), b)
    return y, ok


def _edm(g, h, mask):
    _, hs, gs = _scaled_system(g, h, mask)
    y, ok = _chol_solve(hs, gs)
    return jnp.where(ok, 0.5 * jnp.dot(gs, y), jnp.inf)


def minimize(
    vgh: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    x0: jax.Array,
    lo: jax.Array,
    hi: jax.Array,
    free: jax.Array,
    max_iter: int = MAX_ITER,
) -> FitResult:
    """Minimise over the box ``[lo, hi]`` moving only ``free`` variables.

    ``vgh(x)`` returns the value, gradient and Hessian.  Pure JAX; call it
    under ``jax.vmap`` to fit many rows at once.
    """
    x0 = jnp.where(free, jnp.clip(x0, lo, hi), x0)  # fixed values may sit outside the bounds

    f0, g0, h0 = vgh(x0)
    edm0 = _edm(g0, h0, _free_set(x0, g0, lo, hi, free))
    state = _State(x0, f0, g0, h0, jnp.asarray(0.0, x0.dtype), edm0, jnp.asarray(0), edm0 < EDM_TARGET)

    def cond(s: _State):
        return (~s.done) & (s.it < max_iter)

    def body(s: _State) -> _State:
        mask = _free_set(s.x, s.g, lo, hi, free)
        d, hs, gs = _scaled_system(s.g, s.h, mask)
        eye = jnp.eye(hs.shape[0], dtype=hs.dtype)
        p, ok = _chol_solve(hs + s.lam * eye, -gs)
        p = jnp.where(mask, p, 0.0)
        dx = p / d
        x_new = jnp.where(mask, jnp.clip(s.x + dx, lo, hi), s.x)
        step = x_new - s.x
        pred = -(jnp.dot(s.g, step) + 0.5 * step @ s.h @ step)
        f_new, g_new, h_new = vgh(x_new)
        actual = s.f - f_new
        # a step whose model predicts no decrease (clipped at a bound) or whose NLL is
        # not finite (negative rates) counts as a bad step: damp more, never stand still
        rho = jnp.where(jnp.isfinite(f_new) & (pred > 0), actual / jnp.where(pred > 0, pred, 1.0), -jnp.inf)
        noise = 1e-13 * (1 + jnp.abs(s.f))  # the NLL's rounding level
        accept = ok & jnp.isfinite(f_new) & (actual >= -noise) & ((rho > 1e-4) | (jnp.abs(actual) <= noise))
        lam = jnp.where(
            ~ok,
            jnp.maximum(s.lam * 10.0, 1e-3),
            jnp.where(rho > 0.75, s.lam * 0.1, jnp.where(rho < 0.25, jnp.maximum(s.lam * 4.0, 1e-4), s.lam)),
        )
        lam = jnp.where(lam < 1e-7, 0.0, lam)
        x = jnp.where(accept, x_new, s.x)
        f = jnp.where(accept, f_new, s.f)
        g = jnp.where(accept, g_new, s.g)
        h = jnp.where(accept, h_new, s.h)
        edm = _edm(g, h, _free_set(x, g, lo, hi, free))  # undamped, at the current point
        stalled = lam > 1e12
        return _State(x, f, g, h, lam, edm, s.it + 1, (edm < EDM_TARGET) | stalled)

    s = jax.lax.while_loop(cond, body, state)
    return FitResult(s.x, s.f, s.edm, s.edm < EDM_CONVERGED, s.it)


def fit_rows(t, data, x0, free, codes: tuple[str, str]) -> FitResult:
    """Fit R rows for each of H hypotheses.

    ``t``: model arrays with leading axis H; ``data``: main/aux data with
    leading axes (H, R); ``x0``, ``free``: (H, R, P).  Returns a ``FitResult``
    with leading axes (H, R).
    """
    from fitserve.engine.likelihood import in_axes, value_grad_hess

    def one(t_h, data_r, x0_r, free_r):
        return minimize(lambda x: value_grad_hess(x, t_h, data_r, codes), x0_r, t_h["lo"], t_h["hi"], free_r)

    rows = jax.vmap(one, in_axes=(None, 0, 0, 0))
    return jax.vmap(rows, in_axes=(in_axes(t), 0, 0, 0))(t, data, x0, free)


fit_rows_jit = jax.jit(fit_rows, static_argnames=("codes",))
