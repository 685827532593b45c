"""The HistFactory likelihood of one hypothesis, as pure JAX functions.

A purpose-built evaluator over the dense tensors of ``model.BatchedModel``
(gathers over small index tables, closed-form interpolation codes) rather than
pyhf's generic graph: its gradient and Hessian are cheap enough to fit whole
grids with exact Newton steps.

The NLL is split into a *variable* part, written so that it is exactly zero at
a saturated point and free of catastrophic cancellation, and a *constant* part
that depends on the data only.  pyhf's naive form ``tau*log(gamma*tau) -
gamma*tau`` loses every digit below ~1e-3 when ``tau`` is 1e12 (shapesys with
1e-6 relative uncertainty, as in ATLAS-SUSY-2018-06); the stable form keeps
the NLL accurate to ~1e-14, which the optimiser's acceptance test relies on.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, Mapping

from fitserve.engine.runtime import configure_env

configure_env()  # before JAX starts its backend (the engine's first JAX import is this module)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fitserve.engine.aot import exported_jit  # noqa: E402

jax.config.update("jax_enable_x64", True)

#: main and auxiliary data of one fit: ``main`` [B], ``aux_normal`` [P], ``aux_pois`` [P]
Arrays = Mapping[str, jax.Array]


def _shared() -> Any:
    """Marks a field of :class:`ModelTensors` as an index table shared by a batch (no leading H axis)."""
    return dataclasses.field(metadata={"shared": True})


@partial(jax.tree_util.register_dataclass)
@dataclasses.dataclass(frozen=True)
class ModelTensors:
    """The dense tensors of a padded model (:class:`fitserve.engine.model.BatchedModel`), a JAX PyTree.

    Shapes of one hypothesis; a batch has a leading ``H`` axis on every field but
    the shared index tables (marked :func:`_shared`: ``sb_slot``, ``sb_bin``,
    ``mult``), so that ``vmap``'s axes follow from the type (:func:`in_axes`).
    ``P`` parameters ordered ``[alphas | multiplicative]`` (the first ``nA`` are
    the normsys/histosys alphas), ``B`` bins, ``S`` sample slots, ``SB`` (slot,
    bin) pairs, ``Km`` the width of the multiplicative index table.

    The normsys factors come raw (``ns_hi``/``ns_lo``) from the model and
    prepared (``ns_log_hi``/``ns_log_lo``, with ``ns_coef`` for code4) by
    :func:`prepare`; a field that does not apply is None (a PyTree node without
    leaves).  ``t[name]`` reads a field by name, for scripts written against
    the dict form.
    """

    nominal: jax.Array  # [SB] nominal yield of each (slot, bin) pair (0: padding)
    hs_hi: jax.Array  # [SB, nA] histosys delta hi - nominal per alpha (0: none)
    hs_lo: jax.Array  # [SB, nA] histosys delta lo - nominal per alpha
    mult_on: jax.Array  # [SB, Km] bool: which entries of the shared table ``mult`` act on this hypothesis
    init: jax.Array  # [P] start values (padding: neutral, fixed)
    lo: jax.Array  # [P] lower bounds
    hi: jax.Array  # [P] upper bounds
    fixed: jax.Array  # [P] bool
    normal_mask: jax.Array  # [P] bool: Gaussian-constrained parameters
    normal_aux: jax.Array  # [P] their auxiliary data (means)
    normal_sigma: jax.Array  # [P] their widths
    pois_mask: jax.Array  # [P] bool: Poisson-constrained parameters (shapesys)
    pois_tau: jax.Array  # [P] their scale factors tau
    pois_aux: jax.Array  # [P] their auxiliary data
    observed: jax.Array  # [B] observed main data (0: padding bins)
    sb_slot: jax.Array = _shared()  # [SB] int32: sample slot of each pair
    sb_bin: jax.Array = _shared()  # [SB] int32: bin of each pair
    mult: jax.Array = _shared()  # [SB, Km] int32: multiplicative parameters of each pair (P: the constant 1)
    ns_hi: jax.Array | None = None  # [S, nA] normsys factor at alpha = +1 (1: none); raw
    ns_lo: jax.Array | None = None  # [S, nA] normsys factor at alpha = -1; raw
    ns_log_hi: jax.Array | None = None  # [S, nA] log ns_hi; prepared
    ns_log_lo: jax.Array | None = None  # [S, nA] log ns_lo; prepared
    ns_coef: jax.Array | None = None  # [6, S, nA] code4 polynomial coefficients a1..a6; prepared, code4 only

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    @property
    def prepared(self) -> bool:
        """Whether the normsys tables are precomputed (:func:`prepare`)."""
        return self.ns_log_hi is not None

    def replace(self, **changes: Any) -> ModelTensors:
        return dataclasses.replace(self, **changes)

    def per_hypothesis(self) -> ModelTensors:
        """These tensors without the shared index tables (what each fit lane holds)."""
        return self.replace(**dict.fromkeys(SHARED))

    def with_shared(self, other: ModelTensors) -> ModelTensors:
        """These (per-hypothesis) tensors with the shared index tables of ``other``."""
        return self.replace(**{k: getattr(other, k) for k in SHARED})

    def one(self, h: int) -> ModelTensors:
        """Hypothesis ``h`` of a batch: every per-hypothesis field at index ``h``, the shared tables as they are."""
        return self.replace(
            **{
                f.name: getattr(self, f.name)[h]
                for f in dataclasses.fields(self)
                if f.name not in SHARED and getattr(self, f.name) is not None
            }
        )


# the tensors may cross the boundary of an exported kernel (``jax.export``): their node type by name
# (a registered dataclass without meta fields: its auxiliary data is ``()``)
jax.export.register_pytree_node_serialization(
    ModelTensors,
    serialized_name="fitserve.engine.likelihood.ModelTensors",
    serialize_auxdata=lambda _: b"",
    deserialize_auxdata=lambda _: (),
)

#: Index tables shared by every hypothesis of a batch (no leading H axis): the fields marked shared.
SHARED = frozenset(f.name for f in dataclasses.fields(ModelTensors) if f.metadata.get("shared"))
#: ``vmap`` axes of a batch of :class:`ModelTensors`: per-hypothesis fields 0, shared tables None
IN_AXES = ModelTensors(**{f.name: None if f.name in SHARED else 0 for f in dataclasses.fields(ModelTensors)})


def in_axes(t: ModelTensors | None = None) -> ModelTensors:
    """``vmap`` axes for a batch of :class:`ModelTensors` (:data:`IN_AXES`; ``t`` is not needed)."""
    return IN_AXES


def n_alpha(t: ModelTensors) -> int:
    """Number of interpolated parameters (normsys/histosys): the first ``nA`` of theta."""
    return (t.ns_hi if t.ns_hi is not None else t.ns_log_hi).shape[-1]


# pyhf's code4 polynomial for |alpha| < 1 (alpha0 = 1): inverse of the 6x6
# system in pyhf.interpolators.code4 (``_slow_code4`` docstring).
_CODE4_AINV = np.array(
    [
        [15 / 16, -15 / 16, -7 / 16, -7 / 16, 1 / 16, -1 / 16],
        [3 / 2, 3 / 2, -9 / 16, 9 / 16, 1 / 16, 1 / 16],
        [-5 / 8, 5 / 8, 5 / 8, 5 / 8, -1 / 8, 1 / 8],
        [-3 / 2, -3 / 2, 7 / 8, -7 / 8, -1 / 8, -1 / 8],
        [3 / 16, -3 / 16, -3 / 16, -3 / 16, 1 / 16, -1 / 16],
        [1 / 2, 1 / 2, -5 / 16, 5 / 16, 1 / 16, 1 / 16],
    ]
)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def normsys_tables(hi: jax.Array, lo: jax.Array, code: str) -> dict[str, jax.Array]:
    """What the normsys interpolation needs of ``hi``/``lo``, computed once per model.

    ``log_hi``, ``log_lo`` and, for code4, the six polynomial coefficients
    (leading axis 6).  Evaluating the coefficients per fit iteration cost more
    than the rest of the likelihood together.
    """
    out = {"ns_log_hi": jnp.log(hi), "ns_log_lo": jnp.log(lo)}
    if code == "code4":
        log_hi, log_lo = out["ns_log_hi"], out["ns_log_lo"]
        b = jnp.stack([hi - 1, lo - 1, log_hi * hi, -log_lo * lo, log_hi**2 * hi, log_lo**2 * lo], axis=0)
        out["ns_coef"] = jnp.tensordot(jnp.asarray(_CODE4_AINV), b, axes=1)  # [6, ...] coefficients a1..a6
    return out


def normsys_code1(alpha: jax.Array, log_hi: jax.Array, log_lo: jax.Array) -> tuple[jax.Array, ...]:
    """Normsys code1, exponential: ``f = hi**alpha`` for alpha >= 0, ``lo**-alpha`` below (pyhf.interpolators.code1).

    Returns ``(log_lin, poly, g, h)`` as :func:`_normsys_terms`; ``g`` is the
    right derivative at the kink alpha = 0.  https://pyhf.readthedocs.io/en/stable/_generated/pyhf.interpolators.code1.html
    """
    slope = jnp.where(alpha >= 0, log_hi, -log_lo)
    zero = jnp.zeros_like(log_hi)
    return alpha * slope, jnp.ones_like(log_hi), slope, zero


def normsys_code4(alpha: jax.Array, log_hi: jax.Array, log_lo: jax.Array, coef: jax.Array) -> tuple[jax.Array, ...]:
    """Normsys code4: ``1 + sum_i a_i alpha**i`` (i = 1..6) for |alpha| < 1, code1 outside (pyhf.interpolators.code4).

    ``coef``: the six coefficients ``a_i`` of :func:`normsys_tables` (alpha0 = 1).
    Returns ``(log_lin, poly, g, h)`` as :func:`_normsys_terms`.
    https://pyhf.readthedocs.io/en/stable/_generated/pyhf.interpolators.code4.html
    """
    slope = jnp.where(alpha >= 0, log_hi, -log_lo)
    zero = jnp.zeros_like(log_hi)
    c = coef
    a = jnp.clip(alpha, -1.0, 1.0)  # keeps the unused branch finite
    a2, a3, a4, a5 = a * a, a**3, a**4, a**5
    poly = 1.0 + c[0] * a + c[1] * a2 + c[2] * a3 + c[3] * a4 + c[4] * a5 + c[5] * a**6
    d1 = c[0] + 2 * c[1] * a + 3 * c[2] * a2 + 4 * c[3] * a3 + 5 * c[4] * a4 + 6 * c[5] * a5
    d2 = 2 * c[1] + 6 * c[2] * a + 12 * c[3] * a2 + 20 * c[4] * a3 + 30 * c[5] * a4
    # extreme hi/lo (e.g. 105 / 0.01 in the staus likelihood) can make the polynomial
    # cross zero as in pyhf; only an exact zero needs guarding
    safe = jnp.where(poly != 0, poly, jnp.finfo(poly.dtype).tiny)
    g_in, h_in = d1 / safe, d2 / safe - (d1 / safe) ** 2
    inside = (alpha < 1) & (alpha > -1)
    log_lin = jnp.where(inside, 0.0, alpha * slope)
    return log_lin, jnp.where(inside, poly, 1.0), jnp.where(inside, g_in, slope), jnp.where(inside, h_in, zero)


def _normsys_terms(
    alpha: jax.Array, tab: Mapping[str, jax.Array] | ModelTensors, code: str
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Normsys per entry from :func:`normsys_tables`: ``(log_lin, poly, g, h)``.

    The factor is ``f = poly * exp(log_lin)``: ``log_lin`` is the log-linear
    extrapolation where it applies (code1 everywhere, code4 for |alpha| >= 1)
    and ``poly`` the code4 polynomial inside (|alpha| < 1), so a product over
    entries needs one ``exp`` per slot, not per entry.  ``g = f'/f`` and
    ``h = (log f)''``.  pyhf's code1 / code4 with alpha0 = 1 (:func:`normsys_code1`,
    :func:`normsys_code4`), in closed form so that the Hessian needs no automatic
    differentiation.
    """
    if code == "code1":
        return normsys_code1(alpha, tab["ns_log_hi"], tab["ns_log_lo"])
    return normsys_code4(alpha, tab["ns_log_hi"], tab["ns_log_lo"], tab["ns_coef"])


def prepare_batch(t: ModelTensors, codes: tuple[str, str]) -> ModelTensors:
    """:func:`prepare` for a batch of hypotheses (leading axis H; shared tables stay shared)."""
    if t.prepared:
        return t
    return _prepare_batch(t, codes=codes)


@exported_jit(static_argnames=("codes",))
def _prepare_batch(t: ModelTensors, codes: tuple[str, str]) -> ModelTensors:
    return jax.vmap(prepare, in_axes=(IN_AXES, None), out_axes=IN_AXES)(t, codes)


def _normsys(alpha: jax.Array, hi: jax.Array, lo: jax.Array, code: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normsys factor ``f`` with ``g = f'/f`` and ``h = (log f)''`` per entry (reference form)."""
    log_lin, poly, g, h = _normsys_terms(alpha, normsys_tables(hi, lo, code), code)
    return poly * jnp.exp(log_lin), g, h


def prepare(t: ModelTensors, codes: tuple[str, str]) -> ModelTensors:
    """The model tensors with the normsys tables precomputed (see :func:`normsys_tables`).

    Call once per model (outside the fit loop); every likelihood function
    accepts raw or prepared tensors.  One hypothesis (``jax.vmap`` it for a batch).
    """
    if t.prepared:
        return t
    return t.replace(ns_hi=None, ns_lo=None, **normsys_tables(t.ns_hi, t.ns_lo, codes[0]))


def histosys_code0(alpha: jax.Array, up: jax.Array, dn: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Histosys code0, piecewise linear: ``delta = alpha * up`` for alpha >= 0, ``alpha * dn`` below (pyhf's code0).

    ``up = hi - nom``, ``dn = nom - lo``; returns ``(delta, d delta, d2 delta)``, the first
    derivative the right one at the kink alpha = 0 (as normsys code1; the left one: see
    :func:`value_grad_hess_fisher`).  https://pyhf.readthedocs.io/en/stable/_generated/pyhf.interpolators.code0.html
    """
    zero = jnp.zeros_like(up)
    pos = alpha >= 0
    return jnp.where(pos, alpha * up, alpha * dn), jnp.where(pos, up, dn), zero


def histosys_code4p(alpha: jax.Array, up: jax.Array, dn: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Histosys code4p: ``alpha S + alpha^2 (3 alpha^4 - 10 alpha^2 + 15) A`` inside |alpha| <= 1, linear outside.

    ``S = (up + dn) / 2``, ``A = (up - dn) / 16``; returns ``(delta, d delta, d2 delta)``
    (pyhf.interpolators.code4p).  https://pyhf.readthedocs.io/en/stable/_generated/pyhf.interpolators.code4p.html
    """
    zero = jnp.zeros_like(up)
    s = 0.5 * (up + dn)
    asym = 0.0625 * (up - dn)
    a = alpha
    a2 = a * a
    inner = a * s + a2 * (a2 * (3 * a2 - 10) + 15) * asym
    d_inner = s + a * (a2 * (18 * a2 - 40) + 30) * asym
    dd_inner = (a2 * (90 * a2 - 120) + 30) * asym
    above, below = a > 1, a < -1
    delta = jnp.where(above, a * up, jnp.where(below, a * dn, inner))
    d1 = jnp.where(above, up, jnp.where(below, dn, d_inner))
    d2 = jnp.where(above | below, zero, dd_inner)
    return delta, d1, d2


def _histosys(alpha: jax.Array, dhi: jax.Array, dlo: jax.Array, code: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Histosys delta with first and second derivative in alpha.

    ``dhi = hi - nom`` and ``dlo = lo - nom``; pyhf's code0 / code4p
    (:func:`histosys_code0`, :func:`histosys_code4p`).
    """
    up, dn = dhi, -dlo  # pyhf's delta_up, delta_dn
    return (histosys_code0 if code == "code0" else histosys_code4p)(alpha, up, dn)


def _sample_terms(theta: jax.Array, t: ModelTensors, codes: tuple[str, str]):
    """Per (slot, bin) the three factors of the rate ``R = A * N * M``.

    ``A`` = nominal + histosys deltas, ``N`` = product of normsys factors of
    the slot, ``M`` = product of multiplicative parameters (normfactor, lumi,
    shapesys, staterror, shapefactor), with what their derivatives need.
    The interpolation tables are dense over the alphas ``theta[:nA]``.
    """
    tab = prepare(t, codes)
    alpha = theta[: n_alpha(t)]
    log_lin, poly, g, h = _normsys_terms(alpha[None, :], tab, codes[0])  # [S, nA]
    n_slot = jnp.prod(poly, axis=-1) * jnp.exp(jnp.sum(log_lin, axis=-1))  # [S]
    f = None
    delta, d1, d2 = _histosys(alpha[None, :], t.hs_hi, t.hs_lo, codes[1])  # [SB, nA]
    a = t.nominal + jnp.sum(delta, axis=-1)  # [SB]
    x = jnp.where(t.mult_on, jnp.concatenate([theta, jnp.ones((1,), theta.dtype)])[t.mult], 1.0)  # [SB, Km]
    m = jnp.prod(x, axis=-1)
    return (f, g, h, n_slot), (d1, d2, a), (x, m)


def expected_main(theta: jax.Array, t: ModelTensors, codes: tuple[str, str]) -> jax.Array:
    """Expected event counts per bin, ``[B]``."""
    (_, _, _, n_slot), (_, _, a), (_, m) = _sample_terms(theta, t, codes)
    rates = a * n_slot[t.sb_slot] * m
    return jax.ops.segment_sum(rates, t.sb_bin, num_segments=t.observed.shape[-1])


def expected_aux(theta: jax.Array, t: ModelTensors) -> tuple[jax.Array, jax.Array]:
    """Expected auxiliary data (normal means, Poisson rates) -- for Asimov data."""
    return theta, theta * t.pois_tau


def _xm1mlog1p(u: jax.Array) -> jax.Array:
    """``u - log(1 + u)`` without cancellation for small ``u``."""
    small = jnp.abs(u) < 1e-3
    us = jnp.where(small, u, 0.0)
    series = us * us * (0.5 + us * (-1 / 3 + us * (0.25 + us * (-0.2 + us / 6))))
    ul = jnp.where(small, 1.0, u)
    return jnp.where(small, series, ul - jnp.log1p(ul))


def _poisson_dev(lam: jax.Array, n: jax.Array) -> jax.Array:
    """``lam - n*log(lam) - (n - n*log(n))``: zero at ``lam == n``, stable."""
    safe_n = jnp.where(n > 0, n, 1.0)
    return jnp.where(n > 0, safe_n * _xm1mlog1p((lam - safe_n) / safe_n), lam)


def nll_variable(theta: jax.Array, t: ModelTensors, data: Arrays, codes: tuple[str, str]) -> jax.Array:
    """The parameter-dependent part of ``-log L`` (see module docstring)."""
    lam = expected_main(theta, t, codes)
    main = jnp.sum(_poisson_dev(lam, data["main"]))
    z = (theta - data["aux_normal"]) / t.normal_sigma
    normal = jnp.sum(jnp.where(t.normal_mask, 0.5 * z * z, 0.0))
    gamma = jnp.where(t.pois_mask, theta, 1.0)  # keeps masked gradients finite
    pois = jnp.sum(jnp.where(t.pois_mask, _poisson_dev(gamma * t.pois_tau, data["aux_pois"]), 0.0))
    return main + normal + pois


def nll_constant(t: ModelTensors, data: Arrays) -> jax.Array:
    """The data-only part of ``-log L``, so that variable + constant equals pyhf's NLL."""

    def sat(n: jax.Array) -> jax.Array:  # -log Poisson(n | n)
        return n - jax.scipy.special.xlogy(n, n) + jax.scipy.special.gammaln(n + 1.0)

    main = jnp.sum(sat(data["main"]))
    normal = jnp.sum(jnp.where(t.normal_mask, jnp.log(t.normal_sigma) + _LOG_SQRT_2PI, 0.0))
    pois = jnp.sum(jnp.where(t.pois_mask, sat(data["aux_pois"]), 0.0))
    return main + normal + pois


def observed_data(t: ModelTensors) -> dict[str, jax.Array]:
    """Observed main and auxiliary data of one hypothesis."""
    return {"main": t.observed, "aux_normal": t.normal_aux, "aux_pois": t.pois_aux}


def asimov_data(theta: jax.Array, t: ModelTensors, codes: tuple[str, str]) -> dict[str, jax.Array]:
    """Asimov data at parameters ``theta`` (pyhf's ``expected_data``)."""
    normal, pois = expected_aux(theta, t)
    return {"main": expected_main(theta, t, codes), "aux_normal": normal, "aux_pois": pois}


def _leave_out_products(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Products over the last axis leaving out one factor ``[.., K]`` and two ``[.., K, K]``.

    Computed without division, so a parameter at exactly zero (a POI at its
    bound) still gets correct derivatives.
    """
    k = x.shape[-1]
    eye = jnp.eye(k, dtype=bool)
    one = jnp.where(eye[None], 1.0, x[:, None, :])  # [SB, K, K]: row k has x_k replaced by 1
    loo = jnp.prod(one, axis=-1)
    pair = eye[:, None, :] | eye[None, :, :]  # [K, K, K]: drop j == k or j == l
    loo2 = jnp.prod(jnp.where(pair[None], 1.0, x[:, None, None, :]), axis=-1)
    loo2 = jnp.where(eye[None], 0.0, loo2)
    return loo, loo2


def value_grad_hess(theta: jax.Array, t: ModelTensors, data: Arrays, codes: tuple[str, str]):
    """``nll_variable`` with its exact gradient and Hessian (see :func:`value_grad_hess_fisher`)."""
    value, grad, hess, _ = value_grad_hess_fisher(theta, t, data, codes)
    return value, grad, hess


def has_kinks(codes: tuple[str, str]) -> bool:
    """Whether the interpolation codes make the NLL kinked at alpha = 0 (normsys code1, histosys code0).

    Their derivative jumps there (``log hi`` against ``-log lo``, ``hi - nom``
    against ``nom - lo``), and a minimum can sit exactly on the kink, where no
    gradient test can pass: the optimiser then needs the one-sided
    derivatives (:func:`value_grad_hess_fisher` with ``left=True``).
    """
    return codes[0] == "code1" or codes[1] == "code0"


def value_grad_hess_fisher(theta: jax.Array, t: ModelTensors, data: Arrays, codes: tuple[str, str], left: bool = False):
    """``nll_variable`` with its exact gradient, Hessian and the Fisher matrix, in closed form.

    With ``left=True`` a fifth value: the gradient with the *left* derivative
    for every alpha exactly at a kink (0 with the codes of :func:`has_kinks`;
    the gradient itself has the right one there, elsewhere the two agree).

    The Fisher matrix (the Hessian's expectation over the main data,
    ``J^T diag(1/lam) J`` plus the constraints) is positive semi-definite
    everywhere; the optimiser steps with it where the Hessian is not positive
    definite (far from the minimum, interpolation polynomials and bins with
    more events than expected make the NLL locally non-convex).

    The rate of each (slot, bin) is ``R = A N M``.  With the parameters
    ordered ``[alphas | multiplicative]``, ``A'`` (histosys) and ``(log N)'``
    (normsys) are dense ``[SB, nA]`` / ``[S, nA]`` tables straight from the
    interpolation codes, and ``M'`` is a thin ``[SB, Pm]`` matrix.  The
    Hessian of ``sum_b D(lam_b)`` is ``J^T D'' J`` plus ``sum_sb w_sb R''``,
    whose cross terms are summed per slot before the matrix products (``N``
    is constant over a slot's bins): a few ``[nA, S] @ [S, nA]`` products and
    no scatters, ~10x cheaper than ``jax.hessian`` of the same function.
    """
    n_par = theta.shape[0]
    n_a = n_alpha(t)
    n_m = n_par - n_a
    n_bins = t.observed.shape[-1]
    slot, sbbin = t.sb_slot, t.sb_bin
    (_, g_n, h_n, n_slot), (d_a, dd_a, a), (x, m) = _sample_terms(theta, t, codes)
    n_slots = n_slot.shape[0]
    n = n_slot[slot]  # [SB]
    r = a * n * m
    lam = jax.ops.segment_sum(r, sbbin, num_segments=n_bins)

    # M' on the multiplicative columns: leave-one-out products placed by a one-hot table
    loo, loo2 = _leave_out_products(x)
    on = t.mult_on
    loo = jnp.where(on, loo, 0.0)
    loo2 = jnp.where(on[:, :, None] & on[:, None, :], loo2, 0.0)
    onehot = (t.mult[:, :, None] == (n_a + jnp.arange(n_m))[None, None, :]).astype(theta.dtype)  # [SB, Km, Pm]
    d_m = jnp.einsum("sk,skj->sj", loo, onehot)  # [SB, Pm]

    # main Poisson term D(lam; n) = lam - n - n log(lam / n)
    obs = data["main"]
    dev = jnp.sum(_poisson_dev(lam, obs))
    d_dev = 1.0 - jnp.where(obs > 0, obs / lam, 0.0)  # [B]
    dd_dev = jnp.where(obs > 0, obs / (lam * lam), 0.0)
    g_n_sb = g_n[slot]  # [SB, nA]
    d_r = jnp.concatenate([(n * m)[:, None] * d_a + r[:, None] * g_n_sb, (a * n)[:, None] * d_m], axis=1)  # dR/dtheta
    jac = jax.ops.segment_sum(d_r, sbbin, num_segments=n_bins)  # [B, P]
    grad = jac.T @ d_dev
    hess = jac.T @ (dd_dev[:, None] * jac)
    fisher = jac.T @ (jnp.where(lam > 0, 1.0 / jnp.where(lam > 0, lam, 1.0), 0.0)[:, None] * jac)

    # sum_sb w R'': cross terms of the three factors, summed per slot where N is constant
    w = d_dev[sbbin]  # [SB]
    wmn, wan, wr = w * m * n, w * a * n, w * r
    u = jax.ops.segment_sum(wmn[:, None] * d_a, slot, num_segments=n_slots)  # [S, nA]
    v = jax.ops.segment_sum(wan[:, None] * d_m, slot, num_segments=n_slots)  # [S, Pm]
    wr_s = jax.ops.segment_sum(wr, slot, num_segments=n_slots)  # [S]
    # A' x N' (both orders) and N's own g g^T in one product:
    # u^T g + g^T u + g^T W g = c + c^T with c = (u + W g / 2)^T g
    c = (u + 0.5 * wr_s[:, None] * g_n).T @ g_n
    aa = c + c.T
    aa = aa + jnp.diag(wmn @ dd_a + wr_s @ h_n)  # A'' and (log N)'' are diagonal
    am = d_a.T @ ((w * n)[:, None] * d_m) + g_n.T @ v  # A' x M' and N' x M'
    # M'' pairs (k != l): Km^2 numbers per (slot, bin) scattered into [Pm, Pm] (the index table is
    # shared by the batch); a one-hot product here cost O(SB Km Pm^2), the largest term of big models
    col = jnp.clip(t.mult - n_a, 0, n_m)  # padding (index P) -> column Pm, dropped below
    mm = jnp.zeros((n_m + 1, n_m + 1), theta.dtype).at[col[:, :, None], col[:, None, :]].add(wan[:, None, None] * loo2)
    mm = mm[:n_m, :n_m]
    hess = hess + jnp.block([[aa, am], [am.T, mm]])

    # constraints (separable: diagonal Hessian)
    sig2 = t.normal_sigma**2
    z = theta - data["aux_normal"]
    normal_mask = t.normal_mask
    val_n = jnp.sum(jnp.where(normal_mask, 0.5 * z * z / sig2, 0.0))
    g_c = jnp.where(normal_mask, z / sig2, 0.0)
    h_c = jnp.where(normal_mask, 1.0 / sig2, 0.0)
    pm = t.pois_mask
    gamma = jnp.where(pm, theta, 1.0)
    tau = t.pois_tau
    aux = data["aux_pois"]
    val_p = jnp.sum(jnp.where(pm, _poisson_dev(gamma * tau, aux), 0.0))
    g_c = g_c + jnp.where(pm, tau - aux / gamma, 0.0)
    h_c = h_c + jnp.where(pm, aux / (gamma * gamma), 0.0)
    value = dev + val_n + val_p
    if not left:
        return value, grad + g_c, hess + jnp.diag(h_c), fisher + jnp.diag(h_c)
    # one-sided derivatives at the kink: only the alpha columns of the Jacobian change
    at0 = theta[:n_a] == 0
    tab = prepare(t, codes)
    g_n_left = jnp.where(at0[None, :], -tab.ns_log_lo, g_n) if codes[0] == "code1" else g_n
    d_a_left = jnp.where(at0[None, :], -t.hs_lo, d_a) if codes[1] == "code0" else d_a
    d_r_left = (n * m)[:, None] * d_a_left + r[:, None] * g_n_left[slot]
    grad_left = grad.at[:n_a].set(jax.ops.segment_sum(d_r_left, sbbin, num_segments=n_bins).T @ d_dev)
    return value, grad + g_c, hess + jnp.diag(h_c), fisher + jnp.diag(h_c), grad_left + g_c
