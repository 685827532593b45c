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

import zlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from fitserve.engine import likelihood as lh
from fitserve.engine.infer import Engine, HypoTestResult, test_statistic
from fitserve.engine.toystats import ToyRun, merge_records, summarize, toy_record  # noqa: F401 (re-exported)

#: toys drawn per compiled sampling call (the chunk's toys are drawn in blocks of this many)
SAMPLE_BLOCK = 1024
#: lanes of a toy pool: fixed, so that a toy's fits are the same in every chunk
TOY_LANES = 32
SIGNAL_PLUS_BACKGROUND, BACKGROUND_ONLY = 0, 1
#: counters of this process: toys fitted, free fits refitted by the local-minimum guard
STATS = {"toys": 0, "refits": 0}


def hypothesis_key(seed: int, name: str) -> jax.Array:
    """The random key of one hypothesis: its seed and its name (independent toys per hypothesis)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


@partial(jax.jit, static_argnames=("codes",))
def _sample(t1: lh.ModelTensors, gen: jax.Array, key: jax.Array, index: jax.Array, codes: tuple[str, str]):
    """Pseudo-data of the toys ``index`` ([N]) generated at ``gen`` (one hypothesis' tensors ``t1``)."""
    lam = jnp.maximum(lh.expected_main(gen, t1, codes), 0.0)
    normal, pois = t1.normal_mask, t1.pois_mask

    def one(k):
        k_main, k_normal, k_pois = jax.random.split(jax.random.fold_in(key, k), 3)
        main = jax.random.poisson(k_main, lam, dtype=jnp.int64).astype(gen.dtype)
        aux_n = jnp.where(
            normal, gen + t1.normal_sigma * jax.random.normal(k_normal, gen.shape, gen.dtype), t1.normal_aux
        )
        rate = jnp.where(pois, gen * t1.pois_tau, 1.0)
        aux_p = jnp.where(pois, jax.random.poisson(k_pois, rate, dtype=jnp.int64).astype(gen.dtype), t1.pois_aux)
        return main, aux_n, aux_p

    return jax.vmap(one)(index)


def sample(engine: Engine, gen: np.ndarray, key: jax.Array, start: int, stop: int) -> tuple[np.ndarray, ...]:
    """Main and auxiliary data of toys ``[start, stop)`` of hypothesis 0 of ``engine``, generated at ``gen``."""
    t1 = engine.t.one(0)
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
    pool = engine.pool(TOY_LANES)
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
    again = engine.pool(TOY_LANES)
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
