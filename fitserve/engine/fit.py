"""Bounded, batched minimisation of the NLL: a pool of fit *lanes* that retire converged fits.

The optimiser is a projected Newton method with Levenberg-Marquardt damping
(trust-region ratio test) on the exact Hessian, in variables rescaled by the
square root of the Hessian diagonal.  The rescaling makes it invariant to the
parameters' units: in ATLAS-SUSY-2018-06 the Poisson-constrained gammas have
curvature ~1e12 next to nuisance parameters of curvature ~1, which defeats
optimisers with absolute tolerances (pyhf's SLSQP never leaves its start there).

Written here rather than taken from optimistix/jaxopt because neither offers a
bound-constrained second-order method whose stopping rule is a scale-invariant
estimated distance to minimum (EDM = 1/2 g^T H^-1 g on the free variables),
nor a way to retire finished rows of a vectorised batch.  A fit is reported as
converged only if, at the returned point, the Hessian restricted to the free
variables is positive definite and the EDM is below ``EDM_CONVERGED``: a
stalled iteration is reported, never passed off as a minimum.

**Lanes.**  ``fit_tasks`` runs any number of fits ("tasks": a hypothesis, its
data, a start point and which parameters float) on a fixed number ``L`` of
lanes, one compiled XLA loop of ``BLOCK`` iterations at a time.  Inside the
loop, a lane whose fit has converged takes the next task from a small queue on
the device in the same iteration, so no lane waits for the slowest fit of a
batch (a ``vmap`` over a ``while_loop`` runs every row until the slowest one
stops: two thirds of the work went to rows that had converged).  Between
blocks the host tops the queue up, collects finished fits and asks
``cancel()``.  The compiled shapes depend only on the lane count, the queue
length and the model's (bucketed) shapes, never on the number of tasks.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

from fitserve.engine import likelihood as lh
from fitserve.engine.aot import exported_jit
from fitserve.engine.errors import Cancelled

EDM_TARGET = 1e-12  # iterate until here
EDM_CONVERGED = 1e-6  # report as converged below this (Minuit's default goal is 1e-4)
MAX_ITER = 200  # Newton iterations per fit
BLOCK = 16  # iterations per compiled call (between host checks)
LAM_STALLED = 1e12  # damping beyond which a fit has stalled


class Tasks(NamedTuple):
    """Q fits to run (host arrays): hypothesis index, data, start point, free parameters."""

    h: np.ndarray  # [Q] int
    main: np.ndarray  # [Q, B] main-measurement counts
    aux_normal: np.ndarray  # [Q, P]
    aux_pois: np.ndarray  # [Q, P]
    x0: np.ndarray  # [Q, P]
    free: np.ndarray  # [Q, P] bool
    cold: np.ndarray | None = None  # [Q] bool: far from a minimum, start with Fisher steps (default: all)


class FitResult(NamedTuple):
    """Per task: the minimum found and how good it is."""

    x: np.ndarray  # [Q, P]
    fval: np.ndarray  # [Q] variable part of the NLL at x
    edm: np.ndarray  # [Q]
    converged: np.ndarray  # [Q] bool
    n_iter: np.ndarray  # [Q]


#: Task kinds.  A HYPOTEST task is the chain of fits of one asymptotic
#: hypothesis test, run in one lane without returning to the host: (0) free fit
#: to the data, (1) fixed-POI fit at mu from its minimum, (2) fixed-POI fit at
#: the Asimov generating value from the same minimum (skipped when the two POI
#: values are equal), (3) fixed-POI fit at mu to the Asimov data generated at
#: the minimum of (2) or (1).  Each stage reports a result.  A TOY task is the
#: pair of fits of one pseudo-experiment: (0) the free fit, (1) the fixed-POI
#: fit at mu from its minimum.
SINGLE, HYPOTEST, TOY = 0, 1, 2
STAGES = 4

#: Counters of the last ``fit_tasks`` calls of this process (benchmarks print them).
STATS = {"lane_iterations": 0, "task_iterations": 0, "fits": 0}


class _Lanes(NamedTuple):
    """The device state of L lanes (one fit each)."""

    slot: jax.Array  # [L] output slot of the lane's task this block, -1 idle
    h: jax.Array  # [L]
    main: jax.Array  # [L, B]
    aux_normal: jax.Array  # [L, P]
    aux_pois: jax.Array  # [L, P]
    free: jax.Array  # [L, P]
    x: jax.Array  # [L, P]
    f: jax.Array  # [L]
    g: jax.Array  # [L, P]
    g_left: jax.Array  # [L, P] the gradient with left derivatives at kinks (== g without kinks)
    hess: jax.Array  # [L, P, P]
    fisher: jax.Array  # [L, P, P]
    use_fisher: jax.Array  # [L] bool: step with the Fisher matrix (the Hessian was not positive definite)
    lam: jax.Array  # [L]
    it: jax.Array  # [L]
    final: jax.Array  # [L] bool: take no more steps, report at the next undamped check
    model: lh.ModelTensors  # the lanes' own copies of their hypotheses' tensors [L, ...] (shared tables None)
    kind: jax.Array  # [L] SINGLE or HYPOTEST (a chain of four fits, see :data:`HYPOTEST`)
    stage: jax.Array  # [L] position in the chain
    anchor: jax.Array  # [L, P] the chain's free-fit minimum (start of its second fixed-POI fit)
    mu: jax.Array  # [L, 2] the chain's tested and Asimov-generating POI values


class _Out(NamedTuple):
    """What a block hands back per output slot: the minima of the fits that finished in it."""

    x: jax.Array  # [L + R, P]
    f: jax.Array
    edm: jax.Array
    converged: jax.Array
    it: jax.Array
    main: jax.Array  # [L + R, B] the main data the fit used (Asimov data generated in a lane)
    done: jax.Array  # [L + R] bool: this slot finished in the block


# the lane state crosses the boundary of an exported block (:mod:`fitserve.engine.aot`)
export.register_namedtuple_serialization(_Lanes, serialized_name="fitserve.engine.fit._Lanes")
export.register_namedtuple_serialization(_Out, serialized_name="fitserve.engine.fit._Out")


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


def _step(x, f, g, g_left, hess, fisher, use_fisher, lam, lo, hi, free, kink):
    """Damped Newton (or Fisher-scoring) step of one lane, and the EDM at ``x`` where the Newton system is undamped.

    ``kink`` marks the parameters whose NLL may be kinked at 0 (legacy
    interpolation codes; all False otherwise), ``g_left`` the gradient with
    their left derivatives there.  A kink is treated like a bound: a step
    stops on it rather than crossing it, and a parameter on it whose one-sided
    derivatives both point uphill (``g_left <= 0 <= g``: zero is in the
    subgradient) is held there, as one at an active bound is; the EDM is then
    judged on the other parameters.  Without this the minimum on a kink can
    never pass a gradient test.
    """
    at0 = kink & (x == 0)
    go_right = at0 & (g < 0)
    go_left = at0 & ~go_right & (g_left > 0)
    held = at0 & ~go_right & ~go_left
    lo = jnp.where(kink & ((x > 0) | go_right), jnp.maximum(lo, 0.0), lo)
    hi = jnp.where(kink & ((x < 0) | go_left), jnp.minimum(hi, 0.0), hi)
    g = jnp.where(go_left, g_left, g)
    mask = _free_set(x, g, lo, hi, free) & ~held
    a = jnp.where(use_fisher, fisher, hess)
    d, hs, gs = _scaled_system(g, a, mask)
    eye = jnp.eye(hs.shape[0], dtype=hs.dtype)
    p, ok = _chol_solve(hs + lam * eye, -gs)
    p = jnp.where(mask, p, 0.0)
    edm = jnp.where(ok & (lam == 0) & ~use_fisher, -0.5 * jnp.dot(gs, p), jnp.inf)
    x_new = jnp.where(mask, jnp.clip(x + p / d, lo, hi), x)
    step = x_new - x
    pred = -(jnp.dot(g, step) + 0.5 * step @ a @ step)
    return x_new, pred, ok, edm


def _accept(f, f_new, pred, ok, lam, use_fisher):
    """Trust-region ratio test: accept the step?  New damping and matrix.

    A Hessian that is not positive definite switches to the Fisher matrix at
    the same damping (no wasted ramp of the damping); a good Fisher step
    switches back to Newton for quadratic convergence near the minimum.
    """
    actual = f - f_new
    # a step whose model predicts no decrease (clipped at a bound) or whose NLL is
    # not finite (negative rates) counts as a bad step: damp more, never stand still
    finite = jnp.isfinite(f_new)
    rho = jnp.where(finite & (pred > 0), actual / jnp.where(pred > 0, pred, 1.0), -jnp.inf)
    noise = 1e-13 * (1 + jnp.abs(f))  # the NLL's rounding level
    accept = ok & finite & (actual >= -noise) & ((rho > 1e-4) | (jnp.abs(actual) <= noise))
    to_fisher = ~ok & ~use_fisher
    lam = jnp.where(
        to_fisher,
        lam,
        jnp.where(
            ~ok,
            jnp.maximum(lam * 10.0, 1e-3),
            jnp.where(
                rho > 0.75,
                lam * 0.1,
                # the NLL went up: the quadratic model is poor this far out, damp hard
                jnp.where(
                    rho < 0, jnp.maximum(lam * 10.0, 1e-2), jnp.where(rho < 0.25, jnp.maximum(lam * 4.0, 1e-4), lam)
                ),
            ),
        ),
    )
    # a good step with little damping, or one whose predicted decrease is at the NLL's
    # rounding level (rho is noise there): go undamped, where the EDM can be checked
    floor = ok & finite & (pred <= noise) & (jnp.abs(actual) <= 10 * noise)
    lam = jnp.where(((rho > 0.75) & (lam < 1e-3)) | floor, 0.0, lam)
    # back to Newton after a good Fisher step, or at the rounding floor (a start that is already the
    # minimum: only an undamped Newton system can check the EDM there)
    use_fisher = to_fisher | (use_fisher & ~(accept & ((rho > 0.5) | floor)))
    return accept, jnp.where(lam < 1e-7, 0.0, lam), use_fisher


@exported_jit(static_argnames=("codes", "block", "max_iter"))
def _run_block(t, s: _Lanes, queue, n_queue, poi, codes, block=BLOCK, max_iter=MAX_ITER):
    """Up to ``block`` iterations of every lane, refilling finished lanes from ``queue``.

    ``poi`` (the POI's index) is an argument, not a constant, so that models
    of one shape bucket share the compiled code whatever their POI's place.

    On entry a lane that is still fitting owns output slot ``lane`` (its task
    came from an earlier block); a task taken from the queue's entry ``j``
    owns slot ``n_lanes + j``.
    """
    n_lanes = s.x.shape[0]
    s = s._replace(slot=jnp.where(s.slot >= 0, jnp.arange(n_lanes, dtype=jnp.int32), -1))
    n_slots = (n_lanes + queue["h"].shape[0]) * STAGES  # a result per stage of each task
    p = s.x.shape[1]
    out = _Out(
        x=jnp.zeros((n_slots, p), s.x.dtype),
        f=jnp.zeros(n_slots, s.x.dtype),
        edm=jnp.full(n_slots, jnp.inf, s.x.dtype),
        converged=jnp.zeros(n_slots, bool),
        it=jnp.zeros(n_slots, jnp.int32),
        main=jnp.zeros((n_slots, s.main.shape[1]), s.x.dtype),
        done=jnp.zeros(n_slots, bool),
    )
    lo_all, hi_all = t.lo, t.hi

    kinky = lh.has_kinks(codes)
    kink = (jnp.arange(p) < lh.n_alpha(t)) if kinky else jnp.zeros(p, bool)

    def vgh(x, th, main, aux_n, aux_p):
        out = lh.value_grad_hess_fisher(
            x, th.with_shared(t), {"main": main, "aux_normal": aux_n, "aux_pois": aux_p}, codes, left=kinky
        )
        return out if kinky else (*out, out[1])

    def load(model, refill, new_h):
        """Copy the tensors of the refilled lanes' hypotheses into the lanes (in place, only those lanes).

        A gather of every lane's tensors in every iteration cost more than the likelihood itself.
        """
        order = jnp.argsort(~refill, stable=True).astype(jnp.int32)

        def one(j, model):
            i = order[j]
            return jax.tree.map(
                lambda v, tk: jax.lax.dynamic_update_index_in_dim(v, tk[new_h[i]], i, 0), model, t.per_hypothesis()
            )

        return jax.lax.fori_loop(0, jnp.sum(refill, dtype=jnp.int32), one, model)

    def body(carry):
        s, out, used, k = carry
        active = s.slot >= 0
        lo, hi = lo_all[s.h], hi_all[s.h]
        lam = jnp.where(s.final, 0.0, s.lam)
        x_new, pred, ok, edm = jax.vmap(_step, in_axes=(0,) * 11 + (None,))(
            s.x, s.f, s.g, s.g_left, s.hess, s.fisher, s.use_fisher, lam, lo, hi, s.free, kink
        )
        reached = ok & (edm < EDM_TARGET)
        finish = active & (reached | s.final)
        conv = ok & (edm < EDM_CONVERGED)
        idx = jnp.where(finish, s.slot * STAGES + s.stage, n_slots)  # out of range: dropped
        out = _Out(
            x=out.x.at[idx].set(s.x, mode="drop"),
            f=out.f.at[idx].set(s.f, mode="drop"),
            edm=out.edm.at[idx].set(edm, mode="drop"),
            converged=out.converged.at[idx].set(conv, mode="drop"),
            it=out.it.at[idx].set(s.it, mode="drop"),
            main=out.main.at[idx].set(s.main, mode="drop"),
            done=out.done.at[idx].set(True, mode="drop"),
        )
        # a chain goes on in its lane; lanes that are idle or done take the next queued tasks
        cont = finish & (((s.kind == HYPOTEST) & (s.stage < STAGES - 1)) | ((s.kind == TOY) & (s.stage == 0)))
        same_mu = s.mu[:, 0] == s.mu[:, 1]
        next_stage = jnp.where(s.stage == 0, 1, jnp.where((s.stage == 1) & ~same_mu, 2, 3))
        anchor = jnp.where((finish & (s.stage == 0))[:, None], s.x, s.anchor)
        want = (~active | finish) & ~cont
        q = used + jnp.cumsum(want, dtype=jnp.int32) - 1
        refill = want & (q < n_queue)
        qi = jnp.clip(q, 0, queue["h"].shape[0] - 1)
        start = refill | cont
        take = lambda new, old: jnp.where(refill.reshape(refill.shape + (1,) * (old.ndim - 1)), new[qi], old)  # noqa: E731
        h = take(queue["h"], s.h)
        main, aux_n, aux_p = (
            take(queue["main"], s.main),
            take(queue["aux_normal"], s.aux_normal),
            take(queue["aux_pois"], s.aux_pois),
        )
        kind, mu = take(queue["kind"], s.kind), take(queue["mu"], s.mu)
        stage = jnp.where(refill, 0, jnp.where(cont, next_stage, s.stage)).astype(jnp.int32)
        poi_only = jnp.arange(p) == poi
        free = jnp.where(refill[:, None], queue["free"][qi], jnp.where(cont[:, None], s.free & ~poi_only, s.free))
        model = load(s.model, refill, h)
        # start points: a queued task's own, or the chain's next (from the anchor for stage 2, else from here)
        gen = jnp.where(refill[:, None], queue["x0"][qi], jnp.where((next_stage == 2)[:, None], anchor, s.x))
        # Asimov data generated in the lane at the start point (the generating fit's minimum)
        regen = jnp.where(refill, queue["regen"][qi], cont & (next_stage == 3))
        asimov_main = jax.vmap(lambda x, th: lh.expected_main(x, th.with_shared(t), codes))(gen, model)
        main = jnp.where(regen[:, None], asimov_main, main)
        aux_n = jnp.where(regen[:, None], gen, aux_n)
        aux_p = jnp.where(regen[:, None], gen * model.pois_tau, aux_p)
        poi_value = jnp.where(refill, queue["poi_value"][qi], jnp.where(next_stage == 2, mu[:, 1], mu[:, 0]))
        x0 = jnp.where(jnp.isnan(poi_value)[:, None], gen, gen.at[:, poi].set(poi_value))
        x0 = jnp.where(free, jnp.clip(x0, lo_all[h], hi_all[h]), x0)
        point = jnp.where(start[:, None], x0, x_new)
        f_new, g_new, h_new, fi_new, gl_new = jax.vmap(vgh)(point, model, main, aux_n, aux_p)
        stepping = active & ~finish
        accept, lam_new, use_f = jax.vmap(_accept)(s.f, f_new, pred, ok, lam, s.use_fisher)
        accept = stepping & accept
        keep = lambda new, old, m: jnp.where(m.reshape(m.shape + (1,) * (old.ndim - 1)), new, old)  # noqa: E731
        x = keep(point, s.x, start | accept)
        f = keep(f_new, s.f, start | accept)
        g = keep(g_new, s.g, start | accept)
        g_left = keep(gl_new, s.g_left, start | accept)
        hess = keep(h_new, s.hess, start | accept)
        fisher = keep(fi_new, s.fisher, start | accept)
        use_f = jnp.where(refill, queue["cold"][qi], jnp.where(cont, False, use_f))
        it = jnp.where(start, 0, jnp.where(stepping, s.it + 1, s.it)).astype(jnp.int32)
        lam_next = jnp.where(start, 0.0, lam_new)
        final = jnp.where(start, False, stepping & ((it >= max_iter) | (lam_next > LAM_STALLED)))
        slot = jnp.where(refill, n_lanes + qi, jnp.where(finish & ~cont, -1, s.slot)).astype(jnp.int32)
        s = _Lanes(
            slot,
            h,
            main,
            aux_n,
            aux_p,
            free,
            x,
            f,
            g,
            g_left,
            hess,
            fisher,
            use_f,
            lam_next,
            it,
            final,
            model,
            kind,
            stage,
            anchor,
            mu,
        )
        return s, out, used + jnp.sum(refill, dtype=jnp.int32), k + 1

    def cond(carry):
        s, _, used, k = carry
        return (k < block) & (jnp.any(s.slot >= 0) | (used < n_queue))

    s, out, used, k = jax.lax.while_loop(cond, body, (s, out, jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32)))
    return s, out, used, k


@exported_jit(static_argnames=("n_lanes", "n_par", "n_bins"))
def _empty_lanes(t: lh.ModelTensors, n_lanes: int, n_par: int, n_bins: int) -> _Lanes:
    z = lambda *shape: jnp.zeros(shape)  # noqa: E731
    model = jax.tree.map(lambda v: jnp.repeat(v[:1], n_lanes, axis=0), t.per_hypothesis())
    return _Lanes(
        slot=jnp.full(n_lanes, -1, jnp.int32),
        h=jnp.zeros(n_lanes, jnp.int32),
        main=z(n_lanes, n_bins),
        aux_normal=z(n_lanes, n_par),
        aux_pois=jnp.ones((n_lanes, n_par)),
        free=jnp.zeros((n_lanes, n_par), bool),
        x=z(n_lanes, n_par),
        f=z(n_lanes),
        g=z(n_lanes, n_par),
        g_left=z(n_lanes, n_par),
        hess=jnp.broadcast_to(jnp.eye(n_par), (n_lanes, n_par, n_par)) + 0.0,
        fisher=jnp.broadcast_to(jnp.eye(n_par), (n_lanes, n_par, n_par)) + 0.0,
        use_fisher=jnp.zeros(n_lanes, bool),
        lam=z(n_lanes),
        it=jnp.zeros(n_lanes, jnp.int32),
        final=jnp.zeros(n_lanes, bool),
        model=model,
        kind=jnp.zeros(n_lanes, jnp.int32),
        stage=jnp.zeros(n_lanes, jnp.int32),
        anchor=z(n_lanes, n_par),
        mu=z(n_lanes, 2),
    )


#: The lane-count model (:func:`lanes_for`), fitted to bench_paper's lane sweep on 2 cores
#: (1Lbb, staus, sbottom-C, 3L-RJ and the 256-parameter model, widths 8-128, 4-32 lanes).
#: One block iteration costs ``ITERATION_MS + lanes * lane_ms``: the fixed part is what
#: more lanes amortise, the per-lane part grows with the model (0.17 ms for 3L-RJ, 1 ms
#: for 1Lbb, 4.6 ms for 256 parameters), so more lanes pay only for small models.
ITERATION_MS = 0.8
#: per-lane cost: ~0.7 ns per byte of a hypothesis's prepared tensors plus ~0.13 ns per P^3 (the factorisation)
LANE_NS_PER_BYTE, LANE_NS_PER_P3 = 0.705, 0.134
#: lanes idle while the slowest chains finish: ~IDLE_AT_ONE * (lanes / chains) ** IDLE_POWER
#: (44% with one chain per lane, 7% with four, 1-3% with sixteen)
IDLE_AT_ONE, IDLE_POWER = 0.4, 0.8


def lane_ms(t: lh.ModelTensors) -> float:
    """The model's per-lane cost of one iteration in ms (:data:`LANE_NS_PER_BYTE`, :data:`LANE_NS_PER_P3`)."""
    per_hypothesis = 0
    for name, value in _fields(t):
        if value is None or not hasattr(value, "shape"):
            continue
        rows = 1 if name in lh.SHARED else max(1, int(value.shape[0]))
        per_hypothesis += value.size * value.dtype.itemsize / rows
    n_par = int(t.init.shape[-1])
    return 1e-6 * (LANE_NS_PER_BYTE * per_hypothesis + LANE_NS_PER_P3 * n_par**3)


def _fields(t: lh.ModelTensors):
    return ((f, getattr(t, f)) for f in t.__dataclass_fields__)


def lanes_for(n_tasks: int, max_lanes: int = 32, lane_cost_ms: float | None = None) -> int:
    """Lane count for a pool of ``n_tasks`` chains: the power of two in [4, ``max_lanes``] of least expected time.

    Expected time per chain ∝ ``(ITERATION_MS / lanes + lane_cost_ms) / (1 - idle)``
    with idle from :data:`IDLE_AT_ONE` and :data:`IDLE_POWER`: fewer lanes keep
    each one busy to the end of the batch, more lanes share the fixed cost of an
    iteration.  Measured on 1Lbb at widths 32/64/128, 32 lanes took 55/55/36 ms
    per hypothesis and the chosen 4/8/8 lanes 34/32/27 ms; on 3L-RJ (0.17 ms
    per lane) 32 lanes stay the best.  ``lane_cost_ms`` None: 1 ms (1Lbb's).
    """
    cost = 1.0 if lane_cost_ms is None else max(float(lane_cost_ms), 1e-6)
    top = 4
    while top < min(n_tasks, max_lanes):
        top *= 2
    top = min(top, max(4, max_lanes))
    best, best_j = 4, float("inf")
    lanes = 4
    while lanes <= top:
        idle = IDLE_AT_ONE * (lanes / max(n_tasks, 1)) ** IDLE_POWER
        j = (ITERATION_MS / lanes + cost) / max(1.0 - idle, 1e-3)
        if j < best_j * (1 - 1e-9):
            best, best_j = lanes, j
        lanes *= 2
    return best


class Pool:
    """A queue of fit tasks run on ``lanes`` lanes.

    ``add`` queues one fit, ``add_hypotest`` the chain of four fits of an
    asymptotic hypothesis test (see :data:`HYPOTEST`: the later fits start
    from the earlier minima in the same lane, no barrier between the stages
    of different hypotheses).  ``run`` works until nothing is left;
    ``result(ids, stage)`` gives the minima found.
    """

    def __init__(
        self,
        t: lh.ModelTensors,
        codes: tuple[str, str],
        lanes: int,
        poi: int,
        cancel: Callable[[], bool] | None = None,
    ) -> None:
        self.t, self.codes, self.lanes, self.poi, self.cancel = t, codes, lanes, poi, cancel
        self.n_par = int(t.init.shape[1])
        self.n_bins = int(t.observed.shape[1])
        self._spec: list[tuple] = []
        self._pending: deque[int] = deque()
        self._res: dict[tuple[int, int], tuple[np.ndarray, float, float, bool, int, np.ndarray]] = {}

    def add(
        self,
        h: int,
        data: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        x0: np.ndarray,
        free: np.ndarray,
        cold: bool = False,
        poi_value: float = float("nan"),
    ) -> int:
        """Queue a fit of hypothesis ``h`` from ``x0``; ``data`` (main, aux_normal, aux_pois), or None:
        Asimov data generated at ``x0``.  ``poi_value`` (not NaN) sets the POI of the start."""
        return self._add(h, data, x0, free, cold, poi_value, SINGLE, (np.nan, np.nan))

    def add_hypotest(
        self,
        h: int,
        data: tuple[np.ndarray, np.ndarray, np.ndarray],
        x0: np.ndarray,
        free: np.ndarray,
        mu: float,
        asimov_mu: float,
    ) -> int:
        """Queue the four fits of a hypothesis test of ``h`` at ``mu`` (free fit from ``x0``, cold)."""
        return self._add(h, data, x0, free, True, float("nan"), HYPOTEST, (mu, asimov_mu))

    def add_toy(
        self, h: int, data: tuple[np.ndarray, np.ndarray, np.ndarray], x0: np.ndarray, free: np.ndarray, mu: float
    ) -> int:
        """Queue the two fits of a pseudo-experiment of ``h``: free from ``x0``, then the POI fixed at ``mu``."""
        return self._add(h, data, x0, free, False, float("nan"), TOY, (mu, mu))

    def _add(self, h, data, x0, free, cold, poi_value, kind, mu) -> int:
        tid = len(self._spec)
        regen = data is None
        if regen:
            data = (np.zeros(self.n_bins), np.zeros(self.n_par), np.ones(self.n_par))
        self._spec.append((h, data[0], data[1], data[2], x0, free, cold, regen, poi_value, kind, mu))
        self._pending.append(tid)
        return tid

    def _queue(self, chosen: list[int], size: int) -> dict[str, np.ndarray]:
        specs = [self._spec[i] for i in chosen] + [self._spec[chosen[0] if chosen else 0]] * (size - len(chosen))
        cols = list(zip(*specs))
        # numpy arrays straight into the compiled call (jnp.asarray would compile a copy per shape)
        return {
            "h": np.asarray(cols[0], np.int32),
            "main": np.stack(cols[1]),
            "aux_normal": np.stack(cols[2]),
            "aux_pois": np.stack(cols[3]),
            "x0": np.stack(cols[4]),
            "free": np.stack(cols[5]),
            "cold": np.asarray(cols[6], bool),
            "regen": np.asarray(cols[7], bool),
            "poi_value": np.asarray(cols[8], float),
            "kind": np.asarray(cols[9], np.int32),
            "mu": np.asarray(cols[10], float),
        }

    def run(self) -> None:
        lanes, queue_len = self.lanes, 2 * self.lanes
        if not self._pending:
            return
        lane_task = np.full(lanes, -1)
        state = _empty_lanes(self.t, n_lanes=lanes, n_par=self.n_par, n_bins=self.n_bins)
        lane_iters = done_iters = 0
        while self._pending or (lane_task >= 0).any():
            if self.cancel is not None and self.cancel():
                raise Cancelled("cancelled")
            chosen = [self._pending.popleft() for _ in range(min(queue_len, len(self._pending)))]
            queue = self._queue(chosen, queue_len)
            state, out, used, k = _run_block(
                self.t, state, queue, np.int32(len(chosen)), np.int32(self.poi), codes=self.codes
            )
            used, k = int(used), int(k)
            lane_iters += lanes * k
            slot_task = np.concatenate([lane_task, np.asarray(chosen + [-1] * (queue_len - len(chosen)))])
            self._pending.extendleft(reversed(chosen[used:]))
            slots = np.asarray(state.slot)
            lane_task = np.where(slots >= 0, slot_task[np.maximum(slots, 0)], -1)
            done = np.nonzero(np.asarray(out.done))[0]
            if done.size:
                xs, fs, es = np.asarray(out.x), np.asarray(out.f), np.asarray(out.edm)
                oks, its, mains = np.asarray(out.converged), np.asarray(out.it), np.asarray(out.main)
                for row in done:
                    key = (int(slot_task[row // STAGES]), int(row % STAGES))
                    self._res[key] = (
                        xs[row],
                        float(fs[row]),
                        float(es[row]),
                        bool(oks[row]),
                        int(its[row]),
                        mains[row],
                    )
                    done_iters += int(its[row]) + 1
        STATS["lane_iterations"] += lane_iters
        STATS["task_iterations"] += done_iters
        STATS["fits"] += len(self._res)

    def result(self, ids: list[int] | np.ndarray, stage: int = 0) -> FitResult:
        rows = [self._res[(int(i), stage)] for i in ids]
        if not rows:
            return FitResult(
                np.zeros((0, self.n_par)), np.zeros(0), np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int32)
            )
        return FitResult(
            np.stack([r[0] for r in rows]),
            np.asarray([r[1] for r in rows]),
            np.asarray([r[2] for r in rows]),
            np.asarray([r[3] for r in rows], bool),
            np.asarray([r[4] for r in rows]),
        )

    def main_data(self, ids: list[int] | np.ndarray, stage: int = 0) -> np.ndarray:
        """The main data each fit used (``[Q, B]``): Asimov data generated in the lanes."""
        return np.stack([self._res[(int(i), stage)][5] for i in ids])


def fit_tasks(
    t: lh.ModelTensors,
    tasks: Tasks,
    codes: tuple[str, str],
    lanes: int,
    cancel: Callable[[], bool] | None = None,
    poi: int = 0,
) -> FitResult:
    """Minimise every task on ``lanes`` lanes; results in task order (see :class:`Pool`)."""
    pool = Pool(t, codes, lanes, poi, cancel)
    cold = np.ones(len(tasks.h), bool) if tasks.cold is None else np.asarray(tasks.cold, bool)
    ids = [
        pool.add(
            int(tasks.h[i]),
            (tasks.main[i], tasks.aux_normal[i], tasks.aux_pois[i]),
            tasks.x0[i],
            tasks.free[i],
            cold=bool(cold[i]),
        )
        for i in range(len(tasks.h))
    ]
    pool.run()
    return pool.result(ids)
