"""Test statistics, asymptotic CLs and upper limits for batches of hypotheses.

Mirrors pyhf's ``infer`` (``AsymptoticCalculator`` with the ``normal`` base
distribution, ``qmu_tilde`` / ``qmu`` / ``q0``, ``upper_limit``) with every fit
batched: one call fits the same role (fixed-POI, free, Asimov ...) for all
hypotheses at once.  Upper limits use bracketing root finding on
``log CLs(mu) = log(1 - CL)`` (scipy's vectorised Chandrupatla method, so that
every iteration is one batched fit), not a fixed grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import elementwise
from scipy.stats import norm

from fitserve.engine import likelihood as lh
from fitserve.engine.errors import Cancelled
from fitserve.engine.fit import fit_rows_jit

# pyhf's expected band: test statistic values for n_sigma in [2, 1, 0, -1, -2]
_N_SIGMA = np.array([2.0, 1.0, 0.0, -1.0, -2.0])


@dataclass
class HypoTestResult:
    """Per-hypothesis arrays (leading axis H)."""

    cls_obs: np.ndarray
    cls_exp: np.ndarray  # [H, 5]
    clsb_obs: np.ndarray
    clb_obs: np.ndarray
    mu_hat: np.ndarray
    nll_free: np.ndarray  # full NLL (pyhf convention: -log L) of the free fit to data
    nll_fixed: np.ndarray  # at the tested POI value
    converged: np.ndarray  # all fits of the hypothesis converged
    edm_max: np.ndarray
    state: dict[str, Any]  # what upper limits reuse


def _with_poi(x: jax.Array, poi: int, value: jax.Array) -> jax.Array:
    return x.at[..., poi].set(value)


def _stack_data(datas: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    return {k: jnp.stack([d[k] for d in datas], axis=1) for k in datas[0]}


@partial(jax.jit, static_argnames=("codes",))
def _asimov(theta, t, codes):
    return jax.vmap(lh.asimov_data, in_axes=(0, lh.in_axes(t), None))(theta, t, codes)


@jax.jit
def _observed(t):
    return jax.vmap(lh.observed_data, in_axes=(lh.in_axes(t),))(t)


@jax.jit
def _constant(t, data):
    return jax.vmap(lh.nll_constant, in_axes=(lh.in_axes(t), 0))(t, data)


#: Rows per hypothesis in one compiled fit call.  Every stage (hypothesis
#: test, Asimov fits, limit scans) is cut into calls of this width, so one
#: compiled function serves the whole scan.
ROWS = 3


def _fit(t: dict[str, jax.Array], poi: int, rows: list[tuple[dict[str, jax.Array], jax.Array, bool]], codes: tuple[str, str],
         cancel: Callable[[], bool] | None = None):
    """Fit ``rows`` = [(data, x0, fix_poi), ...] for every hypothesis.

    Returns (x [H, n, P], fval [H, n], edm [H, n], converged [H, n]) as numpy.
    ``cancel()`` is asked before each compiled call; True raises :class:`Cancelled`.
    """
    free_base = ~t["fixed"]
    padded = rows + [rows[-1]] * (-len(rows) % ROWS)
    out: list[Any] = []
    for i in range(0, len(padded), ROWS):
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        part = padded[i : i + ROWS]
        data = _stack_data([d for d, _, _ in part])
        x0 = jnp.stack([x for _, x, _ in part], axis=1)
        free = jnp.stack([free_base.at[:, poi].set(False) if fix else free_base for _, _, fix in part], axis=1)
        out.append(fit_rows_jit(t, data, x0, free, codes))
    x = jnp.concatenate([r.x for r in out], axis=1)[:, : len(rows)]
    cat = lambda field: np.concatenate([np.asarray(getattr(r, field)) for r in out], axis=1)[:, : len(rows)]  # noqa: E731
    return x, cat("fval"), cat("edm"), cat("converged")


def _tmu(f_fixed, f_free, mu_hat, mu, test_stat):
    """pyhf's q_mu / q_mu-tilde (POI bounded at 0 gives the tilde) and q0."""
    t = np.clip(2.0 * (f_fixed - f_free), 0.0, None)
    if test_stat == "q0":
        return np.where(mu_hat < 0, 0.0, t)
    return np.where(mu_hat > mu, 0.0, t)


def _pvalues(q, qa, test_stat):
    """CLsb, CLb, CLs for observed test statistic ``q`` and Asimov ``qa``."""
    sq, sqa = np.sqrt(q), np.sqrt(qa)
    if test_stat in ("q", "q0"):
        ts = sq - sqa
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = np.where(sq <= sqa, sq - sqa, (q - qa) / (2 * sqa))
    clsb = norm.cdf(-(ts + sqa))
    clb = norm.cdf(-ts)
    return clsb, clb, clsb / clb


def _expected_cls(qa, test_stat):
    """Expected band, pyhf order (n_sigma = 2, 1, 0, -1, -2); CLsb for q0."""
    sqa = np.sqrt(qa)[..., None]
    clsb = norm.cdf(-(_N_SIGMA + sqa))
    clb = norm.cdf(-_N_SIGMA) * np.ones_like(clsb)
    return clsb if test_stat == "q0" else clsb / clb


def hypotest(t: dict[str, jax.Array], poi: int, poi_test: float, test_stat: str, codes: tuple[str, str],
             cancel: Callable[[], bool] | None = None) -> HypoTestResult:
    """Five fits per hypothesis, batched, as pyhf's ``AsymptoticCalculator``."""
    asimov_mu = 1.0 if test_stat == "q0" else 0.0
    mu = 0.0 if test_stat == "q0" else float(poi_test)
    init = t["init"]
    obs = _observed(t)
    xa, fa, edm_a, ok_a = _fit(
        t, poi, [(obs, _with_poi(init, poi, asimov_mu), True), (obs, init, False), (obs, _with_poi(init, poi, mu), True)], codes, cancel
    )
    gen = xa[:, 0]
    asimov = _asimov(gen, t, codes)
    xb, fb, edm_b, ok_b = _fit(t, poi, [(asimov, _with_poi(gen, poi, mu), True), (asimov, gen, False)], codes, cancel)
    mu_hat = np.asarray(xa[:, 1, poi])
    mu_hat_a = np.asarray(xb[:, 1, poi])
    q = _tmu(fa[:, 2], fa[:, 1], mu_hat, mu, test_stat)
    qa = _tmu(fb[:, 0], fb[:, 1], mu_hat_a, mu, test_stat)
    clsb, clb, cls = _pvalues(q, qa, test_stat)
    cls_exp = _expected_cls(qa, test_stat)
    const = np.asarray(_constant(t, obs))
    converged = ok_a.all(axis=1) & ok_b.all(axis=1)
    edm = np.maximum(edm_a.max(axis=1), edm_b.max(axis=1))
    return HypoTestResult(
        cls_obs=clsb if test_stat == "q0" else cls,
        cls_exp=cls_exp,
        clsb_obs=clsb,
        clb_obs=clb,
        mu_hat=mu_hat,
        nll_free=fa[:, 1] + const,
        nll_fixed=fa[:, 2] + const,
        converged=converged,
        edm_max=edm,
        state={
            "obs": obs,
            "asimov": asimov,
            "gen": gen,
            "free_x": xa[:, 1],
            "f_free": fa[:, 1],
            "f_free_asimov": fb[:, 1],
            "mu_hat_asimov": mu_hat_a,
            "qa": qa,
            "poi_test": mu,
        },
    )


@dataclass
class UpperLimits:
    obs: np.ndarray  # [H]
    exp: np.ndarray  # [H, 5], pyhf's band order
    converged: np.ndarray  # [H] root finding and every fit converged


def upper_limits(
    t: dict[str, jax.Array],
    poi: int,
    ht: HypoTestResult,
    test_stat: str,
    codes: tuple[str, str],
    cl: float = 0.95,
    rtol: float = 1e-3,
    cancel: Callable[[], bool] | None = None,
) -> UpperLimits:
    """Observed and expected upper limits on the POI by bracketing root finding."""
    if test_stat == "q0":
        raise ValueError("upper limits need the qtilde or q test statistic")
    H = t["init"].shape[0]
    st = ht.state
    alpha = 1.0 - cl
    lo_b = float(np.max(np.asarray(t["lo"][:, poi])))
    hi_b = float(np.min(np.asarray(t["hi"][:, poi])))
    lo_b = max(lo_b, 0.0)
    fits_ok = np.ones((H, 6), dtype=bool)
    warm = [st["free_x"]] + [st["gen"]] * 6

    def cls_grid(mu: np.ndarray) -> np.ndarray:
        """CLs for mu [H, 6]: column 0 observed, columns 1..5 the expected band."""
        mu_j = jnp.asarray(mu)
        # warm start: each row from its previous solution (root finding moves mu a little)
        rows = [(st["obs"], _with_poi(warm[0], poi, mu_j[:, 0]), True)]
        rows += [(st["asimov"], _with_poi(warm[k + 1], poi, mu_j[:, k]), True) for k in range(6)]
        x, f, _, ok = _fit(t, poi, rows, codes, cancel)
        for k in range(7):
            warm[k] = jnp.where(jnp.asarray(ok[:, k])[:, None], x[:, k], warm[k])
        q = _tmu(f[:, 0], st["f_free"], ht.mu_hat, mu[:, 0], test_stat)
        qa = _tmu(f[:, 1:], st["f_free_asimov"][:, None], st["mu_hat_asimov"][:, None], mu, test_stat)
        out = np.empty_like(mu)
        out[:, 0] = _pvalues(q, qa[:, 0], test_stat)[2]
        exp = _expected_cls(qa[:, 1:], test_stat)  # [H, 5, 5]: (column, n_sigma)
        out[:, 1:] = exp[:, np.arange(5), np.arange(5)]
        fits_ok[:] &= np.concatenate([(ok[:, 0] & ok[:, 1])[:, None], ok[:, 2:]], axis=1)
        return out

    last_mu = np.full((H, 6), 1.0)

    def objective(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        # scipy passes only unfinished elements, sometimes two points per element
        # (both bracket ends): evaluate full, fixed-shape [H, 6] grids, one per round
        x, idx = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(idx))
        xf, kf = x.reshape(-1), idx.reshape(-1)
        out = np.empty_like(xf)
        pending = np.arange(xf.size)
        while pending.size:
            _, first = np.unique(kf[pending], return_index=True)
            now = pending[first]
            flat = last_mu.reshape(-1).copy()
            flat[kf[now]] = xf[now]
            with np.errstate(divide="ignore"):
                val = np.log(np.maximum(cls_grid(flat.reshape(H, 6)), 1e-300)) - np.log(alpha)
            out[now] = val.reshape(-1)[kf[now]]
            last_mu.reshape(-1)[kf[now]] = xf[now]
            pending = np.setdiff1d(pending, now)
        return out.reshape(x.shape)

    idx = np.arange(H * 6)
    # Start from the asymptotic formulae (sigma from the Asimov test statistic at
    # the tested POI value, arXiv:1007.1727), so that bracketing needs few steps.
    sqa = np.sqrt(np.maximum(st["qa"], 0.0))
    sigma = np.where(sqa > 0, st["poi_test"] / np.where(sqa > 0, sqa, 1.0), hi_b)
    guess = np.empty((H, 6))
    guess[:, 0] = np.maximum(ht.mu_hat, 0.0) + sigma * norm.ppf(1 - alpha / 2)
    guess[:, 1:] = sigma[:, None] * (norm.ppf(1 - alpha * norm.cdf(-_N_SIGMA)) - _N_SIGMA)
    span = hi_b - lo_b
    xl0 = np.clip(lo_b + 0.6 * (guess - lo_b), lo_b + 1e-6 * span, hi_b - 2e-6 * span).reshape(-1)
    xr0 = np.clip(lo_b + 1.4 * (guess.reshape(-1) - lo_b), xl0 + 1e-6 * span, hi_b)
    bracket = elementwise.bracket_root(objective, xl0, xr0, xmin=lo_b, xmax=hi_b, args=(idx,), maxiter=12)
    found = np.asarray(bracket.success)
    root = elementwise.find_root(objective, (bracket.bracket[0], bracket.bracket[1]), args=(idx,), tolerances={"xrtol": rtol})
    limits = np.where(found & np.asarray(root.success), np.asarray(root.x), np.nan).reshape(H, 6)
    ok = np.isfinite(limits).all(axis=1) & fits_ok.all(axis=1) & ht.converged
    return UpperLimits(obs=limits[:, 0], exp=limits[:, 1:], converged=ok)
