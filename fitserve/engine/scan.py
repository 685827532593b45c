"""The high-level call: group patches, compile (cached), fit, return records.

Contract relied on by the CLI, the service and remote workers:

* ``scan(workspace, patches=None, options=None, names=None, progress=None)``
  returns ``{"fitserve_version", "options", "timing", "results"}``;
* ``run_chunk(workspace, patches, options) -> {patch_name: record}`` is the
  same for one chunk of a job (what executors run remotely).

A record is ``{"values", "CLs_obs", "CLs_exp" (5, pyhf's order), "CLsb_obs",
"CLb_obs", "mu_hat", "nll_free", "nll_fixed", "converged", "edm",
"upper_limit": {"obs", "exp"} or None, "error"}``.  A hypothesis whose fits
did not converge has ``converged: false``, ``error`` saying so and no CLs or
limit numbers: a number that looks valid is never reported for it.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Literal, Sequence

import jax
import numpy as np

from fitserve import __version__
from fitserve.engine import budget, infer, toys
from fitserve.engine.budget import MAX_BATCH, batch_size  # noqa: F401 -- where they were (bench, callers)
from fitserve.engine.inputs import expand_hypotheses, validate_workspace
from fitserve.engine.model import BatchedModel, compile_each, compile_hypotheses
from fitserve.engine.options import ScanOptions
from fitserve.engine.records import cls_only, finite, make_record
from fitserve.engine.runtime import configure

configure()


def _as_options(options: ScanOptions | dict[str, Any] | None) -> ScanOptions:
    if options is None:
        return ScanOptions()
    if isinstance(options, ScanOptions):
        return options
    return ScanOptions.model_validate(options)


def _limit_record(ul: infer.UpperLimits, i: int) -> dict[str, Any]:
    """Six limits kept separately; an edge beyond the search is ``None`` with its bound in ``above``."""
    vals = [finite(v) if ok else None for v, ok in zip(ul.limits[i], ul.converged[i])]
    above = [finite(a) if ok else None for a, ok in zip(ul.above[i], ul.converged[i])]
    rec: dict[str, Any] = {"obs": vals[0], "exp": vals[1:]}
    if any(a is not None for a in above):
        rec["above"] = above
    return rec


def _records(
    model: BatchedModel,
    n: int,
    ht: infer.HypoTestResult,
    ul: infer.UpperLimits | None,
    opts: ScanOptions,
    codes: tuple[str, str],
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i in range(n):
        ok = bool(ht.converged[i])
        rec: dict[str, Any] = make_record(
            model.values[i],
            converged=ok,
            error=None if ok else diagnose(model, ht, i, codes),
            edm=ht.edm_max[i],
            cls_obs=ht.cls_obs[i],
            cls_exp=ht.cls_exp[i],
            clsb_obs=ht.clsb_obs[i],
            clb_obs=ht.clb_obs[i],
            mu_hat=ht.mu_hat[i],
            nll_free=ht.nll_free[i],
            nll_fixed=ht.nll_fixed[i],
        )
        if ht.multimodal[i]:
            rec["multimodal"] = True
            rec["warning"] = "fits of this hypothesis ended in different minima; the lowest was kept" + (
                "" if opts.restarts else " (try restarts for a wider search)"
            )
        if ul is not None and ok:
            rec["upper_limit"] = _limit_record(ul, i)
            missing = [k for k, c in enumerate(ul.converged[i]) if not c]
            if missing:
                names = ["observed"] + [
                    f"expected {s}" for s in ("-2 sigma", "-1 sigma", "median", "+1 sigma", "+2 sigma")
                ]
                rec["warning"] = "upper-limit search did not converge for: " + ", ".join(names[k] for k in missing)
        if opts.cls_only:
            rec = cls_only(rec)
        out[model.names[i]] = rec
    return out


def diagnose(model: BatchedModel, ht: infer.HypoTestResult, i: int, codes: tuple[str, str]) -> str:
    """Why the fits of hypothesis ``i`` did not converge, in words."""
    roles = (
        ("free fit to data", ht.free_fit_to_data),
        ("fixed-POI fit to data", ht.fixed_poi_fit_to_data),
        ("Asimov generating fit", ht.asimov_generator),
        ("fixed-POI fit to Asimov data", ht.fixed_poi_fit_to_asimov),
    )
    failed = [(name, r) for name, r in roles if not r.converged[i]]
    if not failed:
        return "fit did not converge"
    name, r = failed[0]
    edm = float(r.edm[i])
    if not np.isfinite(edm):
        pair = _degenerate(model, r.x[i], i, codes)
        if pair:
            return (
                f"fit did not converge ({name}): the Hessian is singular there; parameters {pair} are not identifiable"
            )
        return f"fit did not converge ({name}): the Hessian is not positive definite at the last point"
    return f"fit did not converge ({name}, EDM {edm:.3g})"


def _degenerate(model: BatchedModel, x: np.ndarray, i: int, codes: tuple[str, str]) -> str | None:
    """The parameters along the Hessian's flattest direction at ``x`` (one hypothesis, numpy)."""
    from fitserve.engine import likelihood as lh

    t = model.hypothesis(i)
    try:
        _, _, h = jax.jit(lh.value_grad_hess, static_argnames=("codes",))(x, t, lh.observed_data(t), codes)
    except Exception:  # noqa: BLE001 -- a diagnosis must never fail the scan
        return None
    h = np.asarray(h)
    free = ~np.asarray(t.fixed)
    idx = np.nonzero(free)[0]
    if idx.size < 2 or not np.isfinite(h).all():
        return None
    sub = h[np.ix_(idx, idx)]
    d = np.sqrt(np.maximum(np.abs(np.diag(sub)), 1e-300))
    w, v = np.linalg.eigh(sub / np.outer(d, d))
    vec = np.abs(v[:, 0])
    top = idx[np.argsort(vec)[::-1][:2]]
    labels = model.param_labels[i]
    names = [labels[j] or model.param_names[j] for j in top]
    return " and ".join(repr(n) for n in names)


def _check_poi(model: BatchedModel, opts: ScanOptions) -> BatchedModel:
    """pyhf's rules for the POI: the tested value inside its bounds, 0 inside them for qtilde/q0."""
    from fitserve.engine.errors import InputError

    lo = model.arrays["lo"][:, model.poi_index]
    hi = model.arrays["hi"][:, model.poi_index]
    name = next(
        (lab for lab in model.param_labels[0] if lab is not None and lab == model.param_names[model.poi_index]),
        model.param_names[model.poi_index],
    )
    mu = opts.tested_poi
    outside = (mu < lo) | (mu > hi)
    if outside.any():
        k = int(np.argmax(outside))
        if not opts.widen_poi_bounds:
            raise InputError(
                f"poi_test {mu:g} lies outside the bounds [{lo[k]:g}, {hi[k]:g}] of the POI {name!r} "
                f"(hypothesis {model.names[k]!r}); widen the bounds in the measurement, or set widen_poi_bounds",
                where="options.poi_test",
            )
        model.arrays["lo"][:, model.poi_index] = np.minimum(lo, mu)
        model.arrays["hi"][:, model.poi_index] = np.maximum(hi, mu)
    if opts.test_stat in ("qtilde", "q0") and ((lo > 0) | (hi < 0)).any():
        k = int(np.argmax((lo > 0) | (hi < 0)))
        raise InputError(
            f"the {opts.test_stat} test statistic needs 0 inside the POI bounds, but {name!r} has "
            f"[{lo[k]:g}, {hi[k]:g}] (hypothesis {model.names[k]!r})",
            where="options.test_stat",
        )
    return model


def _fit_batch(
    model: BatchedModel, opts: ScanOptions, n_real: int, cancel: Callable[[], bool] | None = None
) -> tuple[dict[str, dict[str, Any]], float]:
    """Fit the first ``n_real`` hypotheses of one padded batch; their records and the fit seconds."""
    codes = opts.interpcodes()
    t0 = time.perf_counter()
    engine = infer.Engine(model.tensors(), model.poi_index, codes, n_real=n_real, cancel=cancel)
    ht = infer.hypotest(engine, opts.poi_test, opts.test_stat, restarts=opts.restarts_for(engine.max_free))
    ul = (
        infer.upper_limits(engine, ht, cl=opts.confidence_level, rtol=opts.limit_rtol, search_max=opts.limit_max)
        if opts.limits
        else None
    )
    return _records(model, n_real, ht, ul, opts, codes), time.perf_counter() - t0


def _fit_toys(
    model: BatchedModel, opts: ScanOptions, cancel: Callable[[], bool] | None = None
) -> tuple[dict[str, dict[str, Any]], float]:
    """Toy-based CLs of the one hypothesis of ``model`` (see :mod:`fitserve.engine.toys`)."""
    codes = opts.interpcodes()
    t0 = time.perf_counter()
    engine = infer.Engine(model.tensors(), model.poi_index, codes, n_real=1, cancel=cancel)
    ht = infer.hypotest(engine, opts.poi_test, opts.test_stat, restarts=opts.restarts_for(engine.max_free))
    rec = _records(model, 1, ht, None, opts.model_copy(update={"cls_only": False}), codes)[model.names[0]]
    rec["calculator"] = "toybased"
    rec["asymptotic"] = {"CLs_obs": rec["CLs_obs"], "CLs_exp": rec["CLs_exp"]}
    if rec["converged"]:
        run = toys.run_toys(engine, ht, model.names[0], opts.toys(), opts.seed)
        rec.update(
            toys.toy_record(
                run, opts.test_stat, opts.n_toys, opts.seed, opts.toys_max_failed, keep_raw=opts.toy_range is not None
            )
        )
    else:
        rec.update({"CLs_obs": None, "CLs_exp": None, "CLsb_obs": None, "CLb_obs": None})
    if opts.cls_only:
        rec = {k: rec[k] for k in ("values", "CLs_obs", "converged", "error", "calculator", "toys") if k in rec}
    return {model.names[0]: rec}, time.perf_counter() - t0


def scan(
    workspace: dict[str, Any],
    patches: Sequence[dict[str, Any]] | None = None,
    options: ScanOptions | dict[str, Any] | None = None,
    names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    validate: bool | Literal["patches"] = True,
    where: str = "workspace",
    cancel: Callable[[], bool] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """CLs (and optionally upper limits) for every hypothesis.

    ``patches`` are pyhf patch objects applied to ``workspace`` (the
    background); ``None`` fits ``workspace`` itself as one hypothesis.
    ``validate``: True checks the workspace and what each patch changes
    against pyhf's schema, ``"patches"`` only the latter (the caller validated
    the workspace), False nothing.  ``where`` names the workspace in errors.

    ``cancel()`` is asked between fit blocks (at least every second or so of
    fitting); when it returns True the scan raises :class:`~fitserve.engine.errors.Cancelled`.
    ``on_event(name, info)`` hears ``"compile"`` (``info``: ``structure``,
    ``n_params``, ``n_bins``, ``width``) before the first fit of a model
    structure this process has not fitted yet, the slow first step.
    """
    opts = _as_options(options).check_combination(where="options")
    t_start = time.perf_counter()
    if validate is True:
        validate_workspace(workspace, where=where)
    hyps = expand_hypotheses(workspace, patches, names, validate=bool(validate))
    build = compile_each if opts.calculator == "toybased" else compile_hypotheses
    models = build(hyps, workspace if patches is not None else None, opts.measurement)
    t_build = time.perf_counter() - t_start

    total = len(hyps)
    results_by_name: dict[str, dict[str, Any]] = {}
    if progress:
        progress(0, total)
    with _ENGINE_LOCK:
        fit_s, compile_s = _fit_models(models, opts, results_by_name, total, progress, cancel, on_event)
    results = {h.name: results_by_name[h.name] for h in hyps}
    return {
        "fitserve_version": __version__,
        "options": opts.model_dump(),
        "timing": {
            "build_s": t_build,
            "compile_s": compile_s,
            "fit_s": fit_s,
            "total_s": time.perf_counter() - t_start,
        },
        "results": results,
    }


#: One scan at a time per process: concurrent XLA executions from several threads of one
#: process (the local executor's threads, the web form's quick limit) deadlocked in the CPU
#: runtime (all threads waiting on results, 0% CPU); the engine runs one XLA thread anyway.
_ENGINE_LOCK = threading.RLock()


def _fit_models(
    models: list[BatchedModel],
    opts: ScanOptions,
    results_by_name: dict[str, dict[str, Any]],
    total: int,
    progress: Callable[[int, int], None] | None,
    cancel: Callable[[], bool] | None,
    on_event: Callable[[str, dict[str, Any]], None] | None,
) -> tuple[float, float]:
    """Fit every batch of every structure group; (fit seconds, compile seconds)."""
    fit_s = compile_s = 0.0
    done = 0
    for model in models:
        _check_poi(model, opts)
        toys = opts.calculator == "toybased"  # one hypothesis per model (compile_each), its toys fill the lanes
        size = 1 if toys else budget.model_width(model)  # batch_size, narrowed to the batch memory budget
        if on_event is not None and (model.structure_key, size) not in _FITTED:
            on_event(
                "compile",
                {
                    "structure": model.structure_key,
                    "n_params": model.n_params,
                    "n_bins": sum(nb for _, nb in model.channels),
                    "width": size,
                },
            )
        _FITTED.add((model.structure_key, size))
        for lo in range(0, model.n_hypotheses, size):
            idx = list(range(lo, min(lo + size, model.n_hypotheses)))
            n_real = len(idx)
            batch = model.take(idx + [idx[0]] * (size - n_real))  # pad with copies: fixed shapes
            c0 = len(_COMPILE_SPANS)
            records, seconds = _fit_toys(batch, opts, cancel) if toys else _fit_batch(batch, opts, n_real, cancel)
            compiled = min(_covered(_COMPILE_SPANS[c0:]), seconds)
            del _COMPILE_SPANS[c0:]  # (one scan at a time: _ENGINE_LOCK)
            compile_s += compiled
            fit_s += max(seconds - compiled, 0.0)
            for name in batch.names[:n_real]:
                results_by_name[name] = records[name]
            done += n_real
            if progress:
                progress(done, total)
    return fit_s, compile_s


#: (start, end) of every span JAX spent tracing, lowering, compiling or loading compiled code
_COMPILE_SPANS: list[tuple[float, float]] = []
#: (structure key, batch width) pairs fitted in this process (compiled already)
_FITTED: set[tuple[str, int]] = set()
_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
    "/jax/compilation_cache/cache_retrieval_time_sec",
}


def _on_duration(event: str, seconds: float, **_: Any) -> None:
    """Note when JAX traced, compiled or loaded compiled code (the span ends now)."""
    if event in _COMPILE_EVENTS:
        end = time.perf_counter()
        _COMPILE_SPANS.append((end - seconds, end))


def _covered(spans: Sequence[tuple[float, float]]) -> float:
    """Seconds covered by the union of ``spans``.

    The events nest (a jitted function traced inside another's trace, a cache
    lookup inside a compile): summing their durations counted some time twice,
    so that a cold small scan reported more compile time than it took and
    ``fit 0.0 s``.
    """
    total, reach = 0.0, float("-inf")
    for lo, hi in sorted(spans):
        if hi > reach:
            total += hi - max(lo, reach)
            reach = hi
    return total


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def run_chunk(
    workspace: dict[str, Any],
    patches: Sequence[dict[str, Any]] | None,
    options: ScanOptions | dict[str, Any] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit every patch of one chunk; plain JSON-able records by patch name.

    The service validated the workspace when the job was submitted, so only
    what each patch changes is checked here.  ``cancel``: as in :func:`scan`.
    """
    return scan(workspace, patches, options, validate="patches", cancel=cancel)["results"]
