"""High-level scan API (TEMPORARY pyhf-backed stub; the JAX engine replaces the body).

The contract other layers rely on:

* ``run_chunk(workspace, patches, options) -> {patch_name: record}``
* ``scan(workspace, patches=None, options=None, names=None, progress=None) -> dict``
  returning ``{"fitserve_version", "options", "timing", "results"}``.

A record is ``{"values": [...], "CLs_obs": x, "CLs_exp": [5], "CLsb_obs": x,
"CLb_obs": x, "mu_hat": x, "nll_free": x, "converged": bool,
"upper_limit": {"obs": x, "exp": [5]} or None, "error": str or None}``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import pyhf

from fitserve import __version__
from fitserve.engine.inputs import expand_hypotheses, validate_workspace
from fitserve.engine.options import ScanOptions


def _as_options(options: ScanOptions | dict[str, Any] | None) -> ScanOptions:
    if options is None:
        return ScanOptions()
    if isinstance(options, ScanOptions):
        return options
    return ScanOptions.model_validate(options)


def run_chunk(
    workspace: dict[str, Any],
    patches: Sequence[dict[str, Any]] | None,
    options: ScanOptions | dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit every patch of one chunk; return plain JSON-able records by patch name."""
    return scan(workspace, patches, options)["results"]


def scan(
    workspace: dict[str, Any],
    patches: Sequence[dict[str, Any]] | None = None,
    options: ScanOptions | dict[str, Any] | None = None,
    names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    opts = _as_options(options)
    validate_workspace(workspace)
    hyps = expand_hypotheses(workspace, patches, names)
    t0 = time.perf_counter()
    results = {}
    for i, h in enumerate(hyps):
        ws = pyhf.Workspace(h.spec)
        model = ws.model(modifier_settings=dict(zip(("normsys", "histosys"), ({"interpcode": c} for c in opts.interpcodes()))))
        data = ws.data(model)
        cls_obs, tails, cls_exp = pyhf.infer.hypotest(
            opts.poi_test, data, model, test_stat=opts.test_stat, return_tail_probs=True, return_expected_set=True
        )
        results[h.name] = {
            "values": h.values,
            "CLs_obs": float(cls_obs),
            "CLs_exp": [float(x) for x in cls_exp],
            "CLsb_obs": float(tails[0]),
            "CLb_obs": float(tails[-1]),
            "mu_hat": None,
            "nll_free": None,
            "converged": True,
            "upper_limit": None,
            "error": None,
        }
        if progress:
            progress(i + 1, len(hyps))
    return {
        "fitserve_version": __version__,
        "options": opts.model_dump(),
        "timing": {"compile_s": 0.0, "fit_s": time.perf_counter() - t0},
        "results": results,
    }
