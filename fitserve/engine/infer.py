"""Test statistics, asymptotic CLs and upper limits for batches of hypotheses.

Mirrors pyhf's ``infer`` (``AsymptoticCalculator`` with the ``normal`` base
distribution, ``qmu_tilde`` / ``qmu`` / ``q0``, ``upper_limit``) with every fit
of every hypothesis run on one pool of fit lanes (:mod:`fitserve.engine.fit`):

1. the free fit to the observed data, from the model's initial values (and
   from ``restarts`` spread starting points);
2. from its minimum, the fixed-POI fits to the data at the tested value and at
   the Asimov generating value (a warm start: a few Newton steps each);
3. from the generating fit, the fixed-POI fit to the Asimov data.

The free fit to the Asimov data needs no fit: the Asimov data are the expected
data at the generating point, where every term of the NLL is saturated, so
that point is the global minimum with NLL 0 (``likelihood`` writes the NLL as
deviances from saturation).  Guards catch a free fit stuck in a local
minimum: it can never lie above a fixed-POI fit to the same data; when it
does, it is refitted from the better point and the hypothesis is flagged
``multimodal``.

Upper limits use bracketing root finding on ``log CLs(mu) = log(1 - CL)``
(scipy's vectorised Chandrupatla method) for the observed limit and each of
the five expected-band edges separately, starting from the asymptotic
formulae; each step fits only the edges still searching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import jax
import numpy as np

from fitserve.engine import likelihood as lh
from fitserve.engine.aot import exported_jit
from fitserve.engine.fit import FitResult, Pool, Tasks, fit_tasks, lane_ms, lanes_for

#: The standard normal CDF, ``Phi(x) = erfc(-x / sqrt 2) / 2`` (accurate in both tails), from the C
#: library's ``erfc``: ``scipy.special.ndtr`` computes the same, but importing ``scipy.special``
#: costs 0.2 s of every engine process's start, and these are a few numbers per hypothesis.
_erfc = np.frompyfunc(math.erfc, 1, 1)


def ndtr(x: np.ndarray | float) -> np.ndarray:
    """The standard normal CDF, elementwise (float64 array out)."""
    return np.asarray(_erfc(-np.asarray(x, dtype=float) / math.sqrt(2.0)), dtype=float) * 0.5


# pyhf's expected band: test statistic values for n_sigma in [2, 1, 0, -1, -2]
_N_SIGMA = np.array([2.0, 1.0, 0.0, -1.0, -2.0])
#: a second minimum this much (in NLL) above the best one makes a hypothesis multimodal
MULTIMODAL_TOL = 1e-3
#: default widening of the limit search: up to this times the POI's upper bound
LIMIT_WIDEN = 10.0


# --------------------------------------------------------------------------
# test statistics (arXiv:1007.1727), from the NLL of a fixed-POI and a free fit


def qmu(nll_fixed: np.ndarray, nll_free: np.ndarray, mu_hat: np.ndarray, mu: np.ndarray | float) -> np.ndarray:
    r"""The one-sided profile likelihood ratio for upper limits, eq. (14).

    .. math:: q_\mu = 2\,[\mathrm{NLL}(\mu, \hat{\hat\theta}) - \mathrm{NLL}(\hat\mu, \hat\theta)]
              \ \text{if}\ \hat\mu \le \mu, \ \text{else}\ 0.

    With the POI bounded below at 0 in the free fit this is
    :math:`\tilde q_\mu`, eq. (16) (pyhf's ``qmu_tilde``): the bound does the
    work, the formula is the same.
    """
    t = np.clip(2.0 * (nll_fixed - nll_free), 0.0, None)
    return np.where(mu_hat > mu, 0.0, t)


qmu_tilde = qmu


def q0(nll_fixed: np.ndarray, nll_free: np.ndarray, mu_hat: np.ndarray) -> np.ndarray:
    r"""The discovery test statistic, eq. (12): :math:`q_0 = 2\,[\mathrm{NLL}(0) - \mathrm{NLL}(\hat\mu)]` if :math:`\hat\mu \ge 0`, else 0."""
    t = np.clip(2.0 * (nll_fixed - nll_free), 0.0, None)
    return np.where(mu_hat < 0, 0.0, t)


def test_statistic(name: str, nll_fixed, nll_free, mu_hat, mu):
    return q0(nll_fixed, nll_free, mu_hat) if name == "q0" else qmu(nll_fixed, nll_free, mu_hat, mu)


def pvalues(q: np.ndarray, qa: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""CLsb, CLb and CLs from the observed ``q`` and the Asimov ``qa`` (pyhf's asymptotic ``normal`` distributions).

    :math:`\tilde q_\mu` uses eq. (66) where :math:`q > q_A` (the shifted
    distribution).  Where :math:`q_A = 0` (no sensitivity) the test statistic
    has no spread and ``CLs = 1`` (pyhf #2722), never a division by zero.
    """
    sq, sqa = np.sqrt(q), np.sqrt(qa)
    if name in ("q", "q0"):
        ts = sq - sqa
    else:
        flat = (sq <= sqa) | (sqa == 0)
        ts = np.where(flat, sq - sqa, (q - qa) / (2 * np.where(flat, 1.0, sqa)))
    clsb = ndtr(-(ts + sqa))
    clb = ndtr(-ts)
    with np.errstate(divide="ignore", invalid="ignore"):
        return clsb, clb, np.where(clb > 0, clsb / np.where(clb > 0, clb, 1.0), 1.0)


def expected_cls(qa: np.ndarray, name: str) -> np.ndarray:
    """Expected band, pyhf order (n_sigma = 2, 1, 0, -1, -2); CLsb for q0."""
    sqa = np.sqrt(qa)[..., None]
    clsb = ndtr(-(_N_SIGMA + sqa))
    clb = ndtr(-_N_SIGMA) * np.ones_like(clsb)
    return clsb if name == "q0" else clsb / clb


# --------------------------------------------------------------------------
# data


@exported_jit()
def _observed(t):
    return jax.vmap(lh.observed_data, in_axes=(lh.IN_AXES,))(t)


@exported_jit()
def _constant(t, data):
    return jax.vmap(lh.nll_constant, in_axes=(lh.IN_AXES, 0))(t, data)


def _np(data: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in data.items()}


@dataclass
class Fits:
    """One fit role for every hypothesis (leading axis H)."""

    x: np.ndarray  # [H, P]
    nll: np.ndarray  # [H] variable part
    edm: np.ndarray
    converged: np.ndarray
    multimodal: np.ndarray  # [H]: runs of this role ended in different minima

    @property
    def failed(self) -> np.ndarray:
        return ~self.converged


class Engine:
    """The fits of one prepared batch of hypotheses, through one pool of lanes."""

    def __init__(
        self,
        t: lh.ModelTensors,
        poi: int,
        codes: tuple[str, str],
        n_real: int | None = None,
        cancel: Callable[[], bool] | None = None,
        max_lanes: int = 32,
    ) -> None:
        """``t``: tensors of a batch of H hypotheses, of which the first ``n_real`` are fitted (the rest pad the shapes)."""
        self.t = lh.prepare_batch(t, codes)
        self.poi = poi
        self.codes = codes
        self.cancel = cancel
        width, self.n_par = (int(d) for d in t.init.shape)
        self.n_hyp = width if n_real is None else int(n_real)
        n = self.n_hyp
        self.lanes = lanes_for(width, max_lanes, lane_ms(self.t))
        self.init = np.asarray(t.init)[:n]
        self.lo, self.hi = np.asarray(t.lo)[:n], np.asarray(t.hi)[:n]
        self.base_free = ~np.asarray(t.fixed)[:n]
        #: free parameters of the largest hypothesis (padding parameters are fixed)
        self.max_free = int(self.base_free.sum(axis=1).max()) if n else 0
        self.observed = {k: v[:n] for k, v in _np(_observed(self.t)).items()}

    def free_mask(self, fix_poi: bool) -> np.ndarray:
        free = self.base_free.copy()
        if fix_poi:
            free[:, self.poi] = False
        return free

    def run(
        self, h: np.ndarray, data: dict[str, np.ndarray], x0: np.ndarray, free: np.ndarray, cold: bool = False
    ) -> FitResult:
        """Fit tasks: ``h`` [Q] hypothesis indices, data rows [Q, ...], starts and free masks [Q, P].

        ``cold``: the starts are far from the minimum (initial values), begin with Fisher steps.
        """
        tasks = Tasks(
            h=np.asarray(h),
            main=data["main"],
            aux_normal=data["aux_normal"],
            aux_pois=data["aux_pois"],
            x0=np.asarray(x0),
            free=np.asarray(free),
            cold=np.full(len(h), cold),
        )
        return fit_tasks(self.t, tasks, self.codes, self.lanes, self.cancel, poi=self.poi)

    def pool(self, lanes: int | None = None) -> Pool:
        """A pool of fit lanes on these tensors (``lanes``: the engine's own count by default)."""
        return Pool(self.t, self.codes, lanes or self.lanes, self.poi, self.cancel)

    def fit_role(
        self, data: dict[str, np.ndarray], starts: list[np.ndarray], poi_value: np.ndarray | None, cold: bool = False
    ) -> Fits:
        """The best of several starts per hypothesis for one role (``poi_value`` None: POI free)."""
        n = self.n_hyp
        k = len(starts)
        h = np.tile(np.arange(n), k)
        x0 = np.concatenate(starts)
        if poi_value is not None:
            x0[:, self.poi] = np.tile(poi_value, k)
        free = np.tile(self.free_mask(poi_value is not None), (k, 1))
        rows = {key: np.tile(v, (k,) + (1,) * (v.ndim - 1)) for key, v in data.items()}
        res = self.run(h, rows, x0, free, cold)
        return _best(res, n, k)

    def spread_starts(self, count: int, seed: int = 0) -> list[np.ndarray]:
        """``count`` starting points spread around the initial values (deterministic, the same for every chunking).

        Constrained parameters move by up to ~2 of their constraint widths,
        unconstrained ones (normfactors, the POI) across their range; all stay
        inside the bounds.
        """
        rng = np.random.default_rng(seed)
        n = self.n_hyp
        sigma = np.asarray(self.t.normal_sigma)[:n]
        normal, pois = np.asarray(self.t.normal_mask)[:n], np.asarray(self.t.pois_mask)[:n]
        tau = np.asarray(self.t.pois_tau)[:n]
        out = []
        for _ in range(count):
            # one draw per parameter, shared by the batch: a hypothesis gets the same starts whichever
            # other hypotheses its chunk holds (so chunking never changes a result)
            z = rng.uniform(-2.0, 2.0, size=self.init.shape[1])[None, :]
            span = np.minimum(self.hi - self.lo, 2.0 * np.maximum(np.abs(self.init), 1.0))
            step = np.where(normal, sigma, np.where(pois, 1.0 / np.sqrt(np.maximum(tau, 1e-12)), 0.25 * span))
            x = np.clip(self.init + z * step, self.lo, self.hi)
            out.append(np.where(self.base_free, x, self.init))
        return out


def _best(res: FitResult, n: int, k: int) -> Fits:
    """Per hypothesis the lowest converged of its ``k`` runs (task q = run * n + h)."""
    f = res.fval.reshape(k, n)
    ok = res.converged.reshape(k, n)
    score = np.where(ok, f, np.inf)
    pick = np.argmin(score, axis=0)
    pick = np.where(ok.any(axis=0), pick, 0)  # none converged: report the first run
    cols = np.arange(n)
    q = pick * n + cols
    best = np.where(ok.any(axis=0), score[pick, cols], f[0])
    multimodal = (ok & (f > best[None, :] + MULTIMODAL_TOL * (1 + np.abs(best[None, :])))).any(axis=0)
    return Fits(res.x[q], res.fval[q], res.edm[q], res.converged[q], multimodal)


def _merge(a: Fits, b: Fits) -> Fits:
    """Per hypothesis the better of two fits of one role; multimodal where they ended apart."""
    use_b = b.converged & (~a.converged | (b.nll < a.nll))
    pick = lambda u, v: np.where(use_b.reshape(-1, *([1] * (u.ndim - 1))), v, u)  # noqa: E731
    apart = a.converged & b.converged & (np.abs(a.nll - b.nll) > MULTIMODAL_TOL * (1 + np.abs(a.nll)))
    return Fits(
        pick(a.x, b.x),
        pick(a.nll, b.nll),
        pick(a.edm, b.edm),
        a.converged | b.converged,
        a.multimodal | b.multimodal | apart,
    )


@dataclass
class HypoTestResult:
    """Per-hypothesis results (leading axis H) and the fits they came from (pyhf's ``HypoTestFitResults``)."""

    cls_obs: np.ndarray
    cls_exp: np.ndarray  # [H, 5]
    clsb_obs: np.ndarray
    clb_obs: np.ndarray
    mu_hat: np.ndarray
    nll_free: np.ndarray  # full NLL (pyhf convention: -log L) of the free fit to data
    nll_fixed: np.ndarray  # at the tested POI value
    converged: np.ndarray  # all fits of the hypothesis converged
    edm_max: np.ndarray
    multimodal: np.ndarray  # fits of one role ended in different minima (the best was kept)
    free_fit_to_data: Fits
    fixed_poi_fit_to_data: Fits
    asimov_generator: Fits  # the fixed-POI fit whose parameters generate the Asimov data
    fixed_poi_fit_to_asimov: Fits
    asimov_data: dict[str, np.ndarray]
    qa: np.ndarray
    poi_test: float
    test_stat: str


def hypotest(engine: Engine, poi_test: float, test_stat: str, restarts: int = 0) -> HypoTestResult:
    """CLs for every hypothesis, as pyhf's ``AsymptoticCalculator`` (four fits each, see module docstring).

    All fits go through one :class:`~fitserve.engine.fit.Pool`: when the free
    fit of a hypothesis is done, its fixed-POI fits start from its minimum;
    when the generating fit is done, its Asimov fit starts, while other
    hypotheses are still at their first fit.
    """
    asimov_mu = 1.0 if test_stat == "q0" else 0.0
    mu = 0.0 if test_stat == "q0" else float(poi_test)
    n = engine.n_hyp
    obs = engine.observed
    data = [(obs["main"][h], obs["aux_normal"][h], obs["aux_pois"][h]) for h in range(n)]
    free_all, free_fix = engine.free_mask(False), engine.free_mask(True)
    pool = engine.pool()
    chains = [pool.add_hypotest(h, data[h], engine.init[h], free_all[h], mu, asimov_mu) for h in range(n)]
    starts = engine.spread_starts(restarts)
    spread = [
        (
            [pool.add(h, data[h], x0[h], free_all[h], cold=True) for h in range(n)],
            [pool.add(h, data[h], x0[h], free_fix[h], cold=True, poi_value=mu) for h in range(n)],
            [pool.add(h, data[h], x0[h], free_fix[h], cold=True, poi_value=asimov_mu) for h in range(n)]
            if mu != asimov_mu
            else None,
        )
        for x0 in starts
    ]
    pool.run()
    gen_stage = 1 if mu == asimov_mu else 2
    free = _best(_stack([pool.result(chains, 0)] + [pool.result(f) for f, _, _ in spread]), n, 1 + len(spread))
    fixed = _best(_stack([pool.result(chains, 1)] + [pool.result(x) for _, x, _ in spread]), n, 1 + len(spread))
    first_gen = pool.result(chains, gen_stage)
    gen_fit = (
        fixed
        if mu == asimov_mu
        else _best(_stack([first_gen] + [pool.result(g) for _, _, g in spread]), n, 1 + len(spread))
    )
    # guard: a free fit above a fixed-POI fit to the same data is a local minimum
    for other in (fixed, gen_fit):
        stuck = other.converged & (other.nll < free.nll - 1e-9 * (1 + np.abs(free.nll)))
        if stuck.any():
            again = engine.fit_role(obs, [np.where(stuck[:, None], other.x, free.x)], None)
            again.multimodal |= stuck
            free = _merge(free, again)
    tau = np.asarray(engine.t.pois_tau)[:n]
    moved = np.abs(gen_fit.x - first_gen.x).max(axis=1) > 0
    asimov_main = pool.main_data(chains, 3)
    if moved.any():
        asimov_main = np.where(
            moved[:, None], np.asarray(_expected(engine.t, gen_fit.x, engine.codes))[:n], asimov_main
        )
    asimov = {"main": asimov_main, "aux_normal": gen_fit.x, "aux_pois": gen_fit.x * tau}
    fixed_a = _best(pool.result(chains, 3), n, 1)
    if moved.any() or restarts:
        # the Asimov data moved with their generating fit, or restarts were asked for: refit from the generating
        # point and the spread starts (the chain's own fit stands where its data did not move)
        again = engine.fit_role(asimov, [gen_fit.x] + starts, np.full(n, mu), cold=True)
        fixed_a = _merge(_masked(fixed_a, ~moved), again)
    mu_hat = free.x[:, engine.poi]
    q = test_statistic(test_stat, fixed.nll, free.nll, mu_hat, mu)
    # the free fit to Asimov data is the generating point itself, NLL 0 (saturated)
    qa = test_statistic(test_stat, fixed_a.nll, np.zeros(n), np.full(n, asimov_mu), mu)
    clsb, clb, cls = pvalues(q, qa, test_stat)
    const = np.asarray(_constant(engine.t, _observed(engine.t)))[:n]
    roles = (free, fixed, gen_fit, fixed_a)
    return HypoTestResult(
        cls_obs=clsb if test_stat == "q0" else cls,
        cls_exp=expected_cls(qa, test_stat),
        clsb_obs=clsb,
        clb_obs=clb,
        mu_hat=mu_hat,
        nll_free=free.nll + const,
        nll_fixed=fixed.nll + const,
        converged=np.logical_and.reduce([r.converged for r in roles]),
        edm_max=np.max([r.edm for r in roles], axis=0),
        multimodal=np.logical_or.reduce([r.multimodal for r in roles]),
        free_fit_to_data=free,
        fixed_poi_fit_to_data=fixed,
        asimov_generator=gen_fit,
        fixed_poi_fit_to_asimov=fixed_a,
        asimov_data=asimov,
        qa=qa,
        poi_test=mu,
        test_stat=test_stat,
    )


def _masked(f: Fits, keep: np.ndarray) -> Fits:
    """``f`` with the rows outside ``keep`` marked not converged (so that a merge takes the other fit)."""
    return Fits(f.x, f.nll, f.edm, f.converged & keep, f.multimodal & keep)


def _expected(t: lh.ModelTensors, x: np.ndarray, codes: tuple[str, str]) -> jax.Array:
    """Expected main data of every hypothesis at ``x`` ([H, B]; rows beyond ``x`` repeat its first)."""
    width = int(t.init.shape[0])
    full = np.concatenate([x, np.repeat(x[:1], width - x.shape[0], axis=0)]) if x.shape[0] < width else x
    return _expected_main(t, full, codes=codes)


@exported_jit(static_argnames=("codes",))
def _expected_main(t, x, codes):
    return jax.vmap(lambda xi, ti: lh.expected_main(xi, ti, codes), in_axes=(0, lh.IN_AXES))(x, t)


def _stack(results: list[FitResult]) -> FitResult:
    """Runs of one role, run-major (task q = run * n + h)."""
    return FitResult(*(np.concatenate([getattr(r, f) for r in results]) for f in FitResult._fields))


# --------------------------------------------------------------------------
# upper limits


@dataclass
class UpperLimits:
    """Per hypothesis six limits (column 0 observed, 1..5 the expected band in pyhf's order)."""

    limits: np.ndarray  # [H, 6], NaN where not found
    above: np.ndarray  # [H, 6]: the limit lies above the searched maximum (value: that maximum), else NaN
    converged: np.ndarray  # [H, 6]: found, or bounded, with every fit converged

    @property
    def obs(self) -> np.ndarray:
        return self.limits[:, 0]

    @property
    def exp(self) -> np.ndarray:
        return self.limits[:, 1:]


def upper_limits(
    engine: Engine,
    ht: HypoTestResult,
    cl: float = 0.95,
    rtol: float = 1e-3,
    search_max: float | None = None,
) -> UpperLimits:
    """Observed and expected upper limits on the POI, each edge by its own bracketing root search.

    The search runs from the POI's lower bound (at least 0) to ``search_max``
    (default :data:`LIMIT_WIDEN` times the POI's upper bound: fixed-POI fits
    may sit beyond the bound).  An edge whose CLs is still above ``1 - cl``
    there is reported in ``above``, not as a failure.
    """
    from scipy.optimize import elementwise  # imported here: 0.3 s that a CLs-only scan does not need
    from scipy.special import ndtri

    if ht.test_stat == "q0":
        raise ValueError("upper limits need the qtilde or q test statistic")
    n, poi = engine.n_hyp, engine.poi
    alpha = 1.0 - cl
    lo_b = max(float(np.max(engine.lo[:, poi])), 0.0)
    hi_poi = float(np.min(engine.hi[:, poi]))
    hi_b = float(search_max) if search_max is not None else LIMIT_WIDEN * hi_poi
    hi_b = max(hi_b, lo_b + 1e-6)
    obs, asimov = engine.observed, ht.asimov_data
    free, fixed_obs = ht.free_fit_to_data, ht.fixed_poi_fit_to_data
    f_free, mu_hat = free.nll, ht.mu_hat
    # warm starts per (hypothesis, column): observed-data fit and Asimov fit
    warm_obs = np.repeat(fixed_obs.x[:, None], 6, axis=1)
    warm_a = np.repeat(ht.fixed_poi_fit_to_asimov.x[:, None], 6, axis=1)
    fits_ok = np.ones((n, 6), dtype=bool)

    def cls_at(h: np.ndarray, col: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """CLs at ``mu`` for elements (h, col): col 0 observed (data + Asimov fit), 1..5 band edges (Asimov fit)."""
        is_obs = col == 0
        ho = h[is_obs]
        q_h = np.concatenate([ho, h])
        data = {k: np.concatenate([obs[k][ho], asimov[k][h]]) for k in obs}
        x0 = np.concatenate([warm_obs[ho, 0], warm_a[h, col]])
        mus = np.concatenate([mu[is_obs], mu])
        x0[:, poi] = mus
        free = engine.free_mask(True)[q_h]
        res = engine.run(q_h, data, x0, free)
        no = len(ho)
        ok_a = res.converged[no:]
        warm_a[h, col] = np.where(ok_a[:, None], res.x[no:], warm_a[h, col])
        qa = test_statistic(ht.test_stat, res.fval[no:], 0.0, 0.0, mu)
        out = np.empty(len(h))
        if no:
            warm_obs[ho, 0] = np.where(res.converged[:no, None], res.x[:no], warm_obs[ho, 0])
            q = test_statistic(ht.test_stat, res.fval[:no], f_free[ho], mu_hat[ho], mu[is_obs])
            out[is_obs] = pvalues(q, qa[is_obs], ht.test_stat)[2]
            fits_ok[ho, 0] &= res.converged[:no] & ok_a[is_obs]
        edge = ~is_obs
        if edge.any():
            band = expected_cls(qa[edge], ht.test_stat)  # [m, 5]
            out[edge] = band[np.arange(edge.sum()), col[edge] - 1]
            fits_ok[h[edge], col[edge]] &= ok_a[edge]
        return out

    def objective(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        # scipy passes the unfinished elements, sometimes both bracket ends at once
        x, idx = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(idx))
        xf, kf = x.reshape(-1), idx.reshape(-1)
        with np.errstate(divide="ignore"):
            val = np.log(np.maximum(cls_at(kf // 6, kf % 6, xf), 1e-300)) - np.log(alpha)
        return val.reshape(x.shape)

    idx = np.arange(n * 6)
    # Start from the asymptotic formulae (sigma from the Asimov test statistic at
    # the tested POI value, arXiv:1007.1727), so that bracketing needs few steps.
    sqa = np.sqrt(np.maximum(ht.qa, 0.0))
    sigma = np.where(sqa > 0, ht.poi_test / np.where(sqa > 0, sqa, 1.0), hi_poi)
    guess = np.empty((n, 6))
    guess[:, 0] = np.maximum(mu_hat, 0.0) + sigma * ndtri(1 - alpha / 2)
    guess[:, 1:] = sigma[:, None] * (ndtri(1 - alpha * ndtr(-_N_SIGMA)) - _N_SIGMA)
    span = hi_b - lo_b
    xl0 = np.clip(lo_b + 0.6 * (guess - lo_b), lo_b + 1e-6 * span, hi_b - 2e-6 * span).reshape(-1)
    xr0 = np.clip(lo_b + 1.4 * (guess.reshape(-1) - lo_b), xl0 + 1e-6 * span, hi_b)
    bracket = elementwise.bracket_root(objective, xl0, xr0, xmin=lo_b, xmax=hi_b, args=(idx,), maxiter=20)
    found = np.asarray(bracket.success)
    limits = np.full(n * 6, np.nan)
    if found.any():
        sel = idx[found]
        root = elementwise.find_root(
            objective, (bracket.bracket[0][found], bracket.bracket[1][found]), args=(sel,), tolerances={"xrtol": rtol}
        )
        limits[sel] = np.where(np.asarray(root.success), np.asarray(root.x), np.nan)
    # where no crossing was bracketed: is CLs still above 1 - CL at the top of the search?
    above = np.full(n * 6, np.nan)
    missing = idx[~found]
    if missing.size:
        top = objective(np.full(missing.size, hi_b), missing)
        above[missing[top > 0]] = hi_b
    limits, above = limits.reshape(n, 6), above.reshape(n, 6)
    ok = (np.isfinite(limits) | np.isfinite(above)) & fits_ok & ht.converged[:, None]
    return UpperLimits(limits=limits, above=above, converged=ok)
