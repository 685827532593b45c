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

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import jax

from fitserve import __version__
from fitserve.engine import infer
from fitserve.engine.inputs import expand_hypotheses, validate_workspace
from fitserve.engine.model import BatchedModel, compile_hypotheses
from fitserve.engine.options import ScanOptions

#: Hypotheses fitted together in one vectorised batch (at most).
MAX_BATCH = 64


def enable_compilation_cache(path: str | os.PathLike[str] | None = None) -> Path:
    """Turn on JAX's persistent compilation cache (``FITSERVE_JAX_CACHE``).

    A new process fitting a structure it has seen before then loads the
    compiled fit instead of compiling it again.
    """
    cache = Path(path or os.environ.get("FITSERVE_JAX_CACHE") or Path.home() / ".cache" / "fitserve" / "jax")
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache


if os.environ.get("FITSERVE_JAX_CACHE", "1") != "0":
    enable_compilation_cache()


def _as_options(options: ScanOptions | dict[str, Any] | None) -> ScanOptions:
    if options is None:
        return ScanOptions()
    if isinstance(options, ScanOptions):
        return options
    return ScanOptions.model_validate(options)


def batch_size(n: int, max_batch: int = MAX_BATCH) -> int:
    """One fixed batch size for ``n`` hypotheses: few batches, little padding.

    All batches of a scan share it, so the fit compiles once per structure.
    """
    n_batches = max(1, math.ceil(n / max_batch))
    per = math.ceil(n / n_batches)
    return min(max_batch, 8 * math.ceil(per / 8)) if per > 4 else per


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _records(model: BatchedModel, n: int, ht: infer.HypoTestResult, ul: infer.UpperLimits | None, opts: ScanOptions) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i in range(n):
        ok = bool(ht.converged[i])
        rec: dict[str, Any] = {
            "values": list(model.values[i]),
            "CLs_obs": _finite(ht.cls_obs[i]) if ok else None,
            "CLs_exp": [_finite(v) for v in ht.cls_exp[i]] if ok else None,
            "CLsb_obs": _finite(ht.clsb_obs[i]) if ok else None,
            "CLb_obs": _finite(ht.clb_obs[i]) if ok else None,
            "mu_hat": _finite(ht.mu_hat[i]) if ok else None,
            "nll_free": _finite(ht.nll_free[i]) if ok else None,
            "nll_fixed": _finite(ht.nll_fixed[i]) if ok else None,
            "converged": ok,
            "edm": _finite(ht.edm_max[i]),
            "upper_limit": None,
            "error": None if ok else f"fit did not converge (max EDM {float(ht.edm_max[i]):.3g})",
        }
        if ul is not None and ok:
            if ul.converged[i]:
                rec["upper_limit"] = {"obs": _finite(ul.obs[i]), "exp": [_finite(v) for v in ul.exp[i]]}
            else:
                rec["error"] = "upper-limit search did not converge or found no crossing inside the POI bounds"
        if opts.cls_only:
            rec = {k: rec[k] for k in ("values", "CLs_obs", "converged", "error")}
        out[model.names[i]] = rec
    return out


def _fit_batch(model: BatchedModel, opts: ScanOptions, cancel: Callable[[], bool] | None = None) -> tuple[dict[str, dict[str, Any]], float]:
    """Fit one padded batch; returns records of the real hypotheses and fit seconds."""
    codes = opts.interpcodes()
    t = model.tensors()
    t0 = time.perf_counter()
    ht = infer.hypotest(t, model.poi_index, opts.poi_test, opts.test_stat, codes, cancel=cancel)
    ul = (
        infer.upper_limits(t, model.poi_index, ht, opts.test_stat, codes, cl=opts.confidence_level, cancel=cancel)
        if opts.limits
        else None
    )
    return _records(model, model.n_hypotheses, ht, ul, opts), time.perf_counter() - t0


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
    opts = _as_options(options)
    if opts.limits and opts.test_stat == "q0":
        from fitserve.engine.errors import InputError

        raise InputError("upper limits need test_stat qtilde or q, not q0", where="options")
    t_start = time.perf_counter()
    if validate is True:
        validate_workspace(workspace, where=where)
    hyps = expand_hypotheses(workspace, patches, names, validate=bool(validate))
    models = compile_hypotheses(hyps, workspace if patches is not None else None, opts.measurement)
    t_build = time.perf_counter() - t_start

    total = len(hyps)
    done = 0
    results_by_name: dict[str, dict[str, Any]] = {}
    fit_s = 0.0
    compile_s = 0.0
    if progress:
        progress(0, total)
    for model in models:
        size = batch_size(model.n_hypotheses)
        if on_event is not None and (model.structure_key, size) not in _FITTED:
            on_event("compile", {"structure": model.structure_key, "n_params": model.n_params,
                                 "n_bins": sum(nb for _, nb in model.channels), "width": size})
        _FITTED.add((model.structure_key, size))
        for lo in range(0, model.n_hypotheses, size):
            idx = list(range(lo, min(lo + size, model.n_hypotheses)))
            n_real = len(idx)
            batch = model.take(idx + [idx[0]] * (size - n_real))  # pad with copies: fixed shapes
            c0 = _COMPILE_SECONDS[0]
            records, seconds = _fit_batch(batch, opts, cancel)
            compiled = _COMPILE_SECONDS[0] - c0
            compile_s += compiled
            fit_s += max(seconds - compiled, 0.0)
            for name in batch.names[:n_real]:
                results_by_name[name] = records[name]
            done += n_real
            if progress:
                progress(done, total)
    results = {h.name: results_by_name[h.name] for h in hyps}
    return {
        "fitserve_version": __version__,
        "options": opts.model_dump(),
        "timing": {"build_s": t_build, "compile_s": compile_s, "fit_s": fit_s, "total_s": time.perf_counter() - t_start},
        "results": results,
    }


_COMPILE_SECONDS = [0.0]
#: (structure key, batch width) pairs fitted in this process (compiled already)
_FITTED: set[tuple[str, int]] = set()
_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
    "/jax/compilation_cache/cache_retrieval_time_sec",
}


def _on_duration(event: str, seconds: float, **_: Any) -> None:
    """Sum the time JAX spends tracing, compiling or loading compiled code."""
    if event in _COMPILE_EVENTS:
        _COMPILE_SECONDS[0] += seconds


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
