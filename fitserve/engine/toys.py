"""Toy-based CLs: pseudo-experiments of one hypothesis, fitted on a pool of lanes.

pyhf's ``ToyCalculator`` conventions (``pyhf.infer.calculators``):

* the *signal + background* toys are generated at the fixed-POI fit to the
  observed data at the tested ``mu`` (for ``q0``: at ``mu = 0``), the
  *background-only* toys at the fixed-POI fit at ``mu = 0`` (for ``q0``: at
  ``mu = 1``) -- the nuisance parameters profiled on the data, as in the
  LHC Higgs combination procedure (ATL-PHYS-PUB-2011-11);
* a toy samples the main measurement from Poisson(expected rates) and the
  auxiliary data from the constraint terms: Normal(alpha, sigma) for normal
  constraints, Poisson(gamma * tau) for Poisson ones;
* the test statistic of each toy (``qtilde``, ``q`` or ``q0``) comes from a
  free and a fixed-POI fit of that toy;
* ``CLsb = P(q >= q_obs | s+b)`` and ``CLb = P(q >= q_obs | b)`` are the
  fractions of toys at or above the observed value (pyhf's
  ``EmpiricalDistribution.pvalue``), ``CLs = CLsb / CLb``; the expected band
  is the (2.275, 15.87, 50, 84.13, 97.72) percentiles of the CLs values that
  each background-only toy would give (pyhf's ``expected_pvalues``); for
  ``q0`` the observed value and band are ``CLsb`` (p0), as in pyhf.

Every CLs value carries its Monte Carlo uncertainty (:func:`summarize`).

**Reproducible.**  Toy ``k`` of distribution ``d`` of hypothesis ``name`` is
drawn from the JAX key ``fold_in(fold_in(fold_in(key(seed), crc32(name)), d),
k)``, so its data do not depend on which chunk or worker draws it; each
hypothesis is built and fitted alone (its own padded shapes) on a fixed number
of lanes, so its fits are the same arithmetic in every chunk: the toys of
``[0, n)`` in one process equal those of ``[0, a)`` and ``[a, n)`` run
anywhere (same CPU kind and library versions).

**Fault tolerant.**  A toy whose free or fixed-POI fit does not converge is
counted as failed and left out of the distributions (NaN), never an error of
the hypothesis; more than ``max_failed`` of them flags the hypothesis.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from fitserve.engine import likelihood as lh
from fitserve.engine.infer import Engine, HypoTestResult, test_statistic

#: pyhf's percentiles of the expected band (-2 ... +2 sigma of a normal distribution)
BAND_PERCENTILES = np.array([2.27501319, 15.86552539, 50.0, 84.13447461, 97.72498681])
#: toys drawn per compiled sampling call (the chunk's toys are drawn in blocks of this many)
SAMPLE_BLOCK = 1024
#: lanes of a toy pool: fixed, so that a toy's fits are the same in every chunk
TOY_LANES = 32
SIGNAL_PLUS_BACKGROUND, BACKGROUND_ONLY = 0, 1
#: counters of this process: toys fitted, free fits refitted by the local-minimum guard
STATS = {"toys": 0, "refits": 0}


@dataclass
class ToyRun:
    """The toys ``[start, stop)`` of both distributions of one hypothesis.

    ``q_sb`` / ``q_b``: the test statistic of each toy (NaN: a fit failed).
    """

    q_obs: float
    q_sb: np.ndarray
    q_b: np.ndarray
    start: int
    stop: int


def hypothesis_key(seed: int, name: str) -> jax.Array:
    """The random key of one hypothesis: its seed and its name (independent toys per hypothesis)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


@partial(jax.jit, static_argnames=("codes",))
def _sample(t1: dict, gen: jax.Array, key: jax.Array, index: jax.Array, codes: tuple[str, str]):
    """Pseudo-data of the toys ``index`` ([N]) generated at ``gen`` (one hypothesis' tensors ``t1``)."""
    lam = jnp.maximum(lh.expected_main(gen, t1, codes), 0.0)
    normal, pois = t1["normal_mask"], t1["pois_mask"]

    def one(k):
        k_main, k_normal, k_pois = jax.random.split(jax.random.fold_in(key, k), 3)
        main = jax.random.poisson(k_main, lam, dtype=jnp.int64).astype(gen.dtype)
        aux_n = jnp.where(normal, gen + t1["normal_sigma"] * jax.random.normal(k_normal, gen.shape, gen.dtype),
                          t1["normal_aux"])
        rate = jnp.where(pois, gen * t1["pois_tau"], 1.0)
        aux_p = jnp.where(pois, jax.random.poisson(k_pois, rate, dtype=jnp.int64).astype(gen.dtype), t1["pois_aux"])
        return main, aux_n, aux_p

    return jax.vmap(one)(index)


def sample(engine: Engine, gen: np.ndarray, key: jax.Array, start: int, stop: int) -> tuple[np.ndarray, ...]:
    """Main and auxiliary data of toys ``[start, stop)`` of hypothesis 0 of ``engine``, generated at ``gen``."""
    t1 = {k: (v if k in lh.SHARED else v[0]) for k, v in engine.t.items()}
    parts = []
    for lo in range(start, stop, SAMPLE_BLOCK):
        index = np.arange(lo, lo + SAMPLE_BLOCK, dtype=np.int64)  # full blocks: one compiled shape
        parts.append([np.asarray(a) for a in _sample(t1, np.asarray(gen), key, index, engine.codes)])
    n = stop - start
    return tuple(np.concatenate([p[i] for p in parts])[:n] for i in range(3))


def run_toys(engine: Engine, ht: HypoTestResult, name: str, n_toys: tuple[int, int], seed: int) -> ToyRun:
    """Fit the toys ``[start, stop)`` of both distributions of the one hypothesis of ``engine``.

    ``ht`` is its asymptotic hypothesis test, whose fits are the generating
    points: the fixed-POI fit to the data at ``mu`` (s+b) and the Asimov
    generating fit (b-only, at 0; for q0 at 1).  Each toy's free fit starts
    at the point its toy was generated from, the fixed-POI fit from there.
    """
    start, stop = n_toys
    mu = ht.poi_test
    key = hypothesis_key(seed, name)
    q_obs = float(test_statistic(ht.test_stat, ht.nll_fixed[:1], ht.nll_free[:1], ht.mu_hat[:1], mu)[0])
    free = engine.free_mask(False)[0]
    pool = engine.pool()
    pool.lanes = TOY_LANES
    ids, data = [], []
    gens = (ht.fixed_poi_fit_to_data.x[0], ht.asimov_generator.x[0])
    for d, gen in enumerate(gens):
        main, aux_n, aux_p = sample(engine, gen, jax.random.fold_in(key, d), start, stop)
        x0 = np.clip(gen, engine.lo[0], engine.hi[0])
        data.append((main, aux_n, aux_p))
        ids.append([pool.add_toy(0, (main[k], aux_n[k], aux_p[k]), x0, free, mu) for k in range(stop - start)])
    pool.run()
    fits = [(pool.result(ids[d], 0), pool.result(ids[d], 1)) for d in range(2)]
    # guard: a free fit above the fixed-POI fit of the same toy stopped in a local minimum; refit it
    # from the fixed-POI minimum (the POI free again)
    again = engine.pool()
    again.lanes = TOY_LANES
    redo = []
    for d, (f_free, f_fixed) in enumerate(fits):
        stuck = np.nonzero(f_fixed.converged & (f_fixed.fval < f_free.fval - 1e-9 * (1 + np.abs(f_free.fval))))[0]
        main, aux_n, aux_p = data[d]
        redo.append((stuck, [again.add(0, (main[k], aux_n[k], aux_p[k]), f_fixed.x[k], free) for k in stuck]))
    again.run()
    qs = []
    for d, (f_free, f_fixed) in enumerate(fits):
        stuck, rid = redo[d]
        nll_free, mu_hat, ok_free = f_free.fval.copy(), f_free.x[:, engine.poi].copy(), f_free.converged.copy()
        if stuck.size:
            r = again.result(rid)
            better = r.converged & (r.fval < nll_free[stuck])
            nll_free[stuck] = np.where(better, r.fval, nll_free[stuck])
            mu_hat[stuck] = np.where(better, r.x[:, engine.poi], mu_hat[stuck])
            ok_free[stuck] |= r.converged
        STATS["refits"] += int(stuck.size)
        q = test_statistic(ht.test_stat, f_fixed.fval, np.minimum(nll_free, f_fixed.fval), mu_hat, mu)
        qs.append(np.where(ok_free & f_fixed.converged, q, np.nan))
    STATS["toys"] += 2 * (stop - start)
    return ToyRun(q_obs, qs[0], qs[1], start, stop)


def _tail(sorted_q: np.ndarray, value: np.ndarray | float) -> np.ndarray:
    """Fraction of the (sorted) toys with a test statistic at or above ``value`` (pyhf's ``pvalue``)."""
    return (sorted_q.size - np.searchsorted(sorted_q, value, side="left")) / sorted_q.size


def _binomial_error(p: np.ndarray | float, n: int) -> np.ndarray:
    """Standard error of a fraction of ``n`` toys; ``p (1 - p)`` floored at ``1/n`` so that 0 or 1 still has one."""
    p = np.asarray(p, float)
    return np.sqrt(np.maximum(p * (1 - p), 1.0 / n) / n)


def summarize(q_obs: float, q_sb: np.ndarray, q_b: np.ndarray, test_stat: str) -> dict:
    """CLs, its expected band and their Monte Carlo uncertainties from two toy distributions.

    Uncertainties: binomial for ``CLsb`` and ``CLb`` (independent samples,
    propagated to their ratio); for each band edge, the spread of the
    order statistic of the background-only toys (``sqrt(N u (1 - u))``
    positions either side of quantile ``u``) combined with the binomial error
    of ``CLsb`` there.  ``None`` where a value is undefined (no toy at or above
    the observed value in the background-only sample: more toys needed).
    """
    sb = np.sort(q_sb[np.isfinite(q_sb)])
    b = np.sort(q_b[np.isfinite(q_b)])
    n_sb, n_b = sb.size, b.size
    out: dict = {"n_sb": int(n_sb), "n_b": int(n_b)}
    if n_sb == 0 or n_b == 0:
        return {**out, "CLs_obs": None, "CLs_exp": None, "CLsb_obs": None, "CLb_obs": None, "uncertainty": None}
    clsb, clb = float(_tail(sb, q_obs)), float(_tail(b, q_obs))
    e_sb, e_b = float(_binomial_error(clsb, n_sb)), float(_binomial_error(clb, n_b))
    q0 = test_stat == "q0"
    if q0:
        cls, e_cls = clsb, e_sb
    elif clb > 0:
        cls = clsb / clb
        e_cls = math.hypot(e_sb / clb, cls * e_b / clb)
    else:
        cls = e_cls = None
    # expected band: the CLs (q0: CLsb) that each background-only toy would give
    at_sb, at_b = _tail(sb, b), _tail(b, b)  # at_b >= 1/n_b: every toy counts itself
    vals = at_sb if q0 else at_sb / at_b
    exp = np.percentile(vals, BAND_PERCENTILES)
    u = BAND_PERCENTILES / 100.0
    ordered = np.sort(vals)
    pos = u * (n_b - 1)
    spread = np.sqrt(n_b * u * (1 - u))
    grid = np.arange(n_b)
    order_err = 0.5 * (np.interp(pos + spread, grid, ordered) - np.interp(pos - spread, grid, ordered))
    q_at = np.percentile(b, 100 - BAND_PERCENTILES)  # the toy value at each edge (CLs falls as q rises)
    p_sb = _tail(sb, q_at)
    count_err = _binomial_error(p_sb, n_sb) / (1.0 if q0 else np.maximum(_tail(b, q_at), 1.0 / n_b))
    exp_err = np.hypot(order_err, count_err)
    return {
        **out,
        "CLs_obs": cls,
        "CLs_exp": [float(v) for v in exp],
        "CLsb_obs": clsb,
        "CLb_obs": clb,
        "uncertainty": {"CLs_obs": e_cls, "CLs_exp": [float(v) for v in exp_err], "CLsb_obs": e_sb, "CLb_obs": e_b},
    }


def _raw(q: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in q.tolist()]


def toy_record(run: ToyRun, test_stat: str, n_toys: int, seed: int, max_failed: float, keep_raw: bool) -> dict:
    """The toy-based part of a result record (merged into the asymptotic record's fields).

    ``keep_raw``: also the test statistic of every toy (``toy_q``), what a
    chunk returns so that the service can merge chunks (:func:`merge_records`).
    """
    rec = _summary_fields(run.q_obs, run.q_sb, run.q_b, test_stat, n_toys, seed, max_failed, [[run.start, run.stop]])
    if keep_raw:
        rec["toy_q"] = {"start": run.start, "stop": run.stop, "sb": _raw(run.q_sb), "b": _raw(run.q_b)}
    return rec


def _summary_fields(q_obs: float, q_sb: np.ndarray, q_b: np.ndarray, test_stat: str, n_toys: int, seed: int,
                    max_failed: float, ranges: list) -> dict:
    s = summarize(q_obs, q_sb, q_b, test_stat)
    n_run = int(q_sb.size)
    failed = [int(np.isnan(q_sb).sum()), int(np.isnan(q_b).sum())]
    toys = {"n_toys": n_toys, "seed": seed, "ranges": ranges, "done": n_run, "q_obs": q_obs,
            "n_sb": s["n_sb"], "n_b": s["n_b"], "failed_sb": failed[0], "failed_b": failed[1]}
    rec: dict = {"CLs_obs": s["CLs_obs"], "CLs_exp": s["CLs_exp"], "CLsb_obs": s["CLsb_obs"], "CLb_obs": s["CLb_obs"],
                 "uncertainty": s["uncertainty"], "toys": toys}
    frac = max(failed) / max(n_run, 1)
    if frac > max_failed:
        toys["flagged"] = True
        rec["warning"] = (f"{failed[0]} signal+background and {failed[1]} background-only toy fits of {n_run} "
                          f"did not converge (more than {max_failed:.0%}); they are left out")
    elif s["CLs_obs"] is None and s["n_b"]:
        rec["warning"] = "no background-only toy reaches the observed test statistic: CLs needs more toys"
    return rec


def merge_records(parts: list[dict], test_stat: str, n_toys: int, seed: int, max_failed: float) -> dict:
    """One toy-based record from chunk records of the same hypothesis (their ``toy_q``).

    Chunks may cover any disjoint toy ranges; the merged distributions are the
    toys of all of them (the CLs of ``[0, n)`` equals the unchunked run's).
    The fields of the first part that do not depend on toys are kept.
    """
    parts = sorted(parts, key=lambda r: r["toy_q"]["start"])
    q_sb = np.concatenate([np.asarray([np.nan if v is None else v for v in p["toy_q"]["sb"]], float) for p in parts])
    q_b = np.concatenate([np.asarray([np.nan if v is None else v for v in p["toy_q"]["b"]], float) for p in parts])
    ranges = [[p["toy_q"]["start"], p["toy_q"]["stop"]] for p in parts]
    base = {k: v for k, v in parts[0].items() if k not in ("toy_q", "warning")}
    base.update(_summary_fields(parts[0]["toys"]["q_obs"], q_sb, q_b, test_stat, n_toys, seed, max_failed, ranges))
    return base


def distributions(record: dict) -> tuple[float, np.ndarray, np.ndarray]:
    """``(q_obs, q_sb, q_b)`` of a record that carries its toys (``toy_q``): for plots."""
    raw = record["toy_q"]
    as_array = lambda xs: np.asarray([np.nan if v is None else v for v in xs], float)  # noqa: E731
    return float(record["toys"]["q_obs"]), as_array(raw["sb"]), as_array(raw["b"])
