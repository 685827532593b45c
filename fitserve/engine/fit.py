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
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fitserve.engine import likelihood as lh
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


class PoolStats(NamedTuple):
    lane_iterations: int  # lanes x iterations run
    task_iterations: int  # iterations spent on fits (the rest idled)


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
    hess: jax.Array  # [L, P, P]
    fisher: jax.Array  # [L, P, P]
    use_fisher: jax.Array  # [L] bool: step with the Fisher matrix (the Hessian was not positive definite)
    lam: jax.Array  # [L]
    it: jax.Array  # [L]
    final: jax.Array  # [L] bool: take no more steps, report at the next undamped check


class _Out(NamedTuple):
    x: jax.Array  # [L + R, P]
    f: jax.Array
    edm: jax.Array
    converged: jax.Array
    it: jax.Array
    done: jax.Array  # [L + R] bool: this slot finished in the block


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


def _hypothesis(t, h):
    return {k: (v if k in lh.SHARED else v[h]) for k, v in t.items()}


def _step(x, f, g, hess, fisher, use_fisher, lam, lo, hi, free):
    """Damped Newton (or Fisher-scoring) step of one lane, and the EDM at ``x`` where the Newton system is undamped."""
    mask = _free_set(x, g, lo, hi, free)
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
                jnp.where(rho < 0, jnp.maximum(lam * 10.0, 1e-2), jnp.where(rho < 0.25, jnp.maximum(lam * 4.0, 1e-4), lam)),
            ),
        ),
    )
    # a good step with little damping, or one whose predicted decrease is at the NLL's
    # rounding level (rho is noise there): go undamped, where the EDM can be checked
    floor = ok & finite & (pred <= noise) & (jnp.abs(actual) <= 10 * noise)
    lam = jnp.where(((rho > 0.75) & (lam < 1e-3)) | floor, 0.0, lam)
    use_fisher = to_fisher | (use_fisher & ~(accept & (rho > 0.5)))
    return accept, jnp.where(lam < 1e-7, 0.0, lam), use_fisher


@partial(jax.jit, static_argnames=("codes", "block", "max_iter"))
def _run_block(t, s: _Lanes, queue, n_queue, codes, block=BLOCK, max_iter=MAX_ITER):
    """Up to ``block`` iterations of every lane, refilling finished lanes from ``queue``."""
    n_lanes = s.x.shape[0]
    n_slots = n_lanes + queue["h"].shape[0]
    p = s.x.shape[1]
    out = _Out(
        x=jnp.zeros((n_slots, p), s.x.dtype),
        f=jnp.zeros(n_slots, s.x.dtype),
        edm=jnp.full(n_slots, jnp.inf, s.x.dtype),
        converged=jnp.zeros(n_slots, bool),
        it=jnp.zeros(n_slots, jnp.int32),
        done=jnp.zeros(n_slots, bool),
    )
    lo_all, hi_all = t["lo"], t["hi"]

    def vgh(x, h, main, aux_n, aux_p):
        th = _hypothesis(t, h)
        return lh.value_grad_hess_fisher(x, th, {"main": main, "aux_normal": aux_n, "aux_pois": aux_p}, codes)

    def body(carry):
        s, out, used, k = carry
        active = s.slot >= 0
        lo, hi = lo_all[s.h], hi_all[s.h]
        lam = jnp.where(s.final, 0.0, s.lam)
        x_new, pred, ok, edm = jax.vmap(_step)(s.x, s.f, s.g, s.hess, s.fisher, s.use_fisher, lam, lo, hi, s.free)
        reached = ok & (edm < EDM_TARGET)
        finish = active & (reached | s.final)
        conv = ok & (edm < EDM_CONVERGED)
        idx = jnp.where(finish, s.slot, n_slots)  # out of range: dropped
        out = _Out(
            x=out.x.at[idx].set(s.x, mode="drop"),
            f=out.f.at[idx].set(s.f, mode="drop"),
            edm=out.edm.at[idx].set(edm, mode="drop"),
            converged=out.converged.at[idx].set(conv, mode="drop"),
            it=out.it.at[idx].set(s.it, mode="drop"),
            done=out.done.at[idx].set(True, mode="drop"),
        )
        # lanes that are idle or just finished take the next queued tasks
        want = ~active | finish
        q = used + jnp.cumsum(want, dtype=jnp.int32) - 1
        refill = want & (q < n_queue)
        qi = jnp.clip(q, 0, queue["h"].shape[0] - 1)
        take = lambda new, old: jnp.where(refill.reshape(refill.shape + (1,) * (old.ndim - 1)), new[qi], old)  # noqa: E731
        h = take(queue["h"], s.h)
        main, aux_n, aux_p = take(queue["main"], s.main), take(queue["aux_normal"], s.aux_normal), take(queue["aux_pois"], s.aux_pois)
        free = take(queue["free"], s.free)
        x0 = jnp.where(free, jnp.clip(queue["x0"][qi], lo_all[queue["h"][qi]], hi_all[queue["h"][qi]]), queue["x0"][qi])
        point = jnp.where(refill[:, None], x0, x_new)
        f_new, g_new, h_new, fi_new = jax.vmap(vgh)(point, h, main, aux_n, aux_p)
        stepping = active & ~finish
        accept, lam_new, use_f = jax.vmap(_accept)(s.f, f_new, pred, ok, lam, s.use_fisher)
        accept = stepping & accept
        keep = lambda new, old, m: jnp.where(m.reshape(m.shape + (1,) * (old.ndim - 1)), new, old)  # noqa: E731
        x = keep(point, s.x, refill | accept)
        f = keep(f_new, s.f, refill | accept)
        g = keep(g_new, s.g, refill | accept)
        hess = keep(h_new, s.hess, refill | accept)
        fisher = keep(fi_new, s.fisher, refill | accept)
        use_f = jnp.where(refill, queue["cold"][qi], use_f)
        it = jnp.where(refill, 0, jnp.where(stepping, s.it + 1, s.it)).astype(jnp.int32)
        lam_next = jnp.where(refill, 0.0, lam_new)
        final = jnp.where(refill, False, stepping & ((it >= max_iter) | (lam_next > LAM_STALLED)))
        slot = jnp.where(refill, n_lanes + qi, jnp.where(finish, -1, s.slot)).astype(jnp.int32)
        s = _Lanes(slot, h, main, aux_n, aux_p, free, x, f, g, hess, fisher, use_f, lam_next, it, final)
        return s, out, used + jnp.sum(refill, dtype=jnp.int32), k + 1

    def cond(carry):
        s, _, used, k = carry
        return (k < block) & (jnp.any(s.slot >= 0) | (used < n_queue))

    s, out, used, k = jax.lax.while_loop(cond, body, (s, out, jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32)))
    return s, out, used, k


def _empty_lanes(n_lanes: int, n_par: int, n_bins: int) -> _Lanes:
    z = lambda *shape: jnp.zeros(shape)  # noqa: E731
    return _Lanes(
        slot=jnp.full(n_lanes, -1, jnp.int32), h=jnp.zeros(n_lanes, jnp.int32), main=z(n_lanes, n_bins),
        aux_normal=z(n_lanes, n_par), aux_pois=jnp.ones((n_lanes, n_par)), free=jnp.zeros((n_lanes, n_par), bool),
        x=z(n_lanes, n_par), f=z(n_lanes), g=z(n_lanes, n_par), hess=jnp.broadcast_to(jnp.eye(n_par), (n_lanes, n_par, n_par)) + 0.0,
        fisher=jnp.broadcast_to(jnp.eye(n_par), (n_lanes, n_par, n_par)) + 0.0, use_fisher=jnp.zeros(n_lanes, bool),
        lam=z(n_lanes), it=jnp.zeros(n_lanes, jnp.int32), final=jnp.zeros(n_lanes, bool),
    )


def lanes_for(n_tasks: int, max_lanes: int = 32) -> int:
    """Lane count for a pool: a power of two up to ``max_lanes`` (fewer for few tasks)."""
    n = 4
    while n < min(n_tasks, max_lanes):
        n *= 2
    return min(n, max(4, max_lanes))


def fit_tasks(
    t: dict[str, jax.Array],
    tasks: Tasks,
    codes: tuple[str, str],
    lanes: int,
    cancel: Callable[[], bool] | None = None,
) -> FitResult:
    """Minimise every task on ``lanes`` lanes; results in task order.

    ``t``: prepared model tensors (:func:`likelihood.prepare_batch`) of the
    hypotheses the tasks index.  ``cancel()`` is asked between blocks of
    ``BLOCK`` iterations; True raises :class:`Cancelled`.
    """
    n_tasks, n_par = tasks.x0.shape
    n_bins = tasks.main.shape[1]
    queue_len = 2 * lanes
    res_x = np.zeros((n_tasks, n_par))
    res_f = np.zeros(n_tasks)
    res_edm = np.full(n_tasks, np.inf)
    res_ok = np.zeros(n_tasks, bool)
    res_it = np.zeros(n_tasks, np.int32)
    cold = np.ones(n_tasks, bool) if tasks.cold is None else np.asarray(tasks.cold, bool)
    pending = deque(range(n_tasks))
    lane_task = np.full(lanes, -1)
    state = _empty_lanes(lanes, n_par, n_bins)
    lane_iters = 0
    while pending or (lane_task >= 0).any():
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        chosen = [pending.popleft() for _ in range(min(queue_len, len(pending)))]
        idx = np.asarray(chosen + [chosen[0] if chosen else 0] * (queue_len - len(chosen)), dtype=np.int64)
        queue = {
            "h": jnp.asarray(tasks.h[idx], jnp.int32), "main": jnp.asarray(tasks.main[idx]),
            "aux_normal": jnp.asarray(tasks.aux_normal[idx]), "aux_pois": jnp.asarray(tasks.aux_pois[idx]),
            "x0": jnp.asarray(tasks.x0[idx]), "free": jnp.asarray(tasks.free[idx]),
            "cold": jnp.asarray(cold[idx]),
        }
        state, out, used, k = _run_block(t, state, queue, jnp.asarray(len(chosen), jnp.int32), codes)
        used, k = int(used), int(k)
        lane_iters += lanes * k
        slot_task = np.concatenate([lane_task, np.asarray(chosen + [-1] * (queue_len - len(chosen)))])
        done = np.asarray(out.done)
        if done.any():
            rows = np.nonzero(done)[0]
            where = slot_task[rows]
            res_x[where] = np.asarray(out.x)[rows]
            res_f[where] = np.asarray(out.f)[rows]
            res_edm[where] = np.asarray(out.edm)[rows]
            res_ok[where] = np.asarray(out.converged)[rows]
            res_it[where] = np.asarray(out.it)[rows]
        pending.extendleft(reversed(chosen[used:]))
        slots = np.asarray(state.slot)
        lane_task = np.where(slots >= 0, slot_task[np.maximum(slots, 0)], -1)
        state = state._replace(slot=jnp.where(state.slot >= 0, jnp.arange(lanes, dtype=jnp.int32), -1))
    STATS["lane_iterations"] += lane_iters
    STATS["task_iterations"] += int(res_it.sum()) + n_tasks
    STATS["fits"] += n_tasks
    return FitResult(res_x, res_f, res_edm, res_ok, res_it)
