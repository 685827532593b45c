"""Limits a submission must respect; each error names the limit and the setting that sets it.

* size of the request body: 413 (checked while reading, in :mod:`fitserve.service.api`);
* hypotheses per job, bins and parameters per model: 422 (:func:`check_job_size`, :func:`check_model_size`);
* jobs queued or running per user: 429 (:meth:`fitserve.service.store.JobStore.reserve_slot`).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from fitserve.engine import InputError
from fitserve.engine.inputs import PER_BIN_PARAMETERS


class LimitExceeded(Exception):
    """A limit other than a model's content: answered with ``status`` (413 or 429)."""

    def __init__(self, status: int, message: str, where: str) -> None:
        super().__init__(message)
        self.status, self.message, self.where = status, message, where


def limit_text(limit: str, value: int) -> str:
    """``max_bins = 5000 (FITSERVE_MAX_BINS)``: the limit, its value and how to change it."""
    return f"{limit} = {value} (FITSERVE_{limit.upper()})"


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole request body; 413 (LimitExceeded) past ``max_bytes``, by Content-Length or as it streams in (chunked)."""
    too_big = LimitExceeded(
        413, f"request body larger than the limit {limit_text('max_body_bytes', max_bytes)}, in bytes", "request body"
    )
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise too_big
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > max_bytes:
            raise too_big
        chunks.append(part)
    return b"".join(chunks)


def with_body(request: Request, body: bytes) -> Request:
    """``request`` again, reading ``body`` (already read under the limit): for Starlette's form parser,
    whose own ``max_part_size`` bounds only non-file fields."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, replay)


def model_size(spec: dict[str, Any]) -> tuple[int, int]:
    """``(bins, parameters)`` of a workspace, as pyhf's model would count them.

    Bins: all channels' bins.  Parameters: one per normfactor, normsys, histosys
    and lumi modifier name, one per bin for shapesys, staterror and shapefactor
    (per channel, as pyhf does).  Counting the JSON avoids building a pyhf
    model (seconds for large workspaces) just to refuse it.
    """
    bins = 0
    scalar: set[str] = set()
    per_bin: set[tuple[str, str]] = set()
    per_bin_count = 0
    for channel in spec.get("channels", []):
        samples = channel.get("samples", [])
        nbins = max((len(s.get("data", [])) for s in samples), default=0)
        bins += nbins
        for sample in samples:
            for mod in sample.get("modifiers", []):
                name, kind = mod.get("name"), mod.get("type")
                if kind in PER_BIN_PARAMETERS:
                    if (name, channel.get("name")) not in per_bin:
                        per_bin.add((name, channel.get("name")))
                        per_bin_count += nbins
                else:
                    scalar.add(name)
    return bins, len(scalar) + per_bin_count


def check_model_size(spec: dict[str, Any], max_bins: int, max_parameters: int, where: str) -> None:
    """422 (InputError) when a model has more bins or parameters than this service accepts."""
    try:
        bins, params = model_size(spec)
    except (AttributeError, TypeError):
        return  # malformed: the schema validation that follows says what is wrong
    if bins > max_bins:
        raise InputError(
            f"the model has {bins} bins, more than the limit {limit_text('max_bins', max_bins)}", where=where
        )
    if params > max_parameters:
        raise InputError(
            f"the model has {params} parameters, more than the limit {limit_text('max_parameters', max_parameters)}",
            where=where,
        )


def check_job_size(n: int, max_hypotheses: int, where: str = "patchset") -> None:
    if n > max_hypotheses:
        raise InputError(
            f"{n} hypotheses in one job, more than the limit {limit_text('max_hypotheses', max_hypotheses)}; "
            "split the patchset over several jobs (options.patches selects a subset)",
            where=where,
        )


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def check_plan(job_plan: Any, names: list[str], chunk_size: int, settings: Any) -> None:
    """422 (InputError) when what the engine would build for a chunk exceeds a limit.

    ``job_plan`` is :func:`fitserve.engine.budget.plan` of the job in its chunks: the padded
    (union) parameters and bins of each structure group, the estimated peak memory of one batch
    at the width the engine will use, and the compilations of the whole job.
    """
    index = {n: i for i, n in enumerate(names)}

    def where(group: Any) -> str:
        first = index.get(group.names[0], 0)
        lo = first - first % chunk_size
        return (
            f"patchset: patches {lo}..{min(lo + chunk_size, len(names)) - 1} (chunk of {chunk_size}, "
            f"structure group of {len(group.names)} from {group.names[0]!r})"
        )

    checks = (
        ("union_params", "max_parameters", settings.max_parameters, "parameters"),
        ("union_bins", "max_bins", settings.max_bins, "bins"),
    )
    for attr, limit, value, what in checks:
        g = job_plan.largest(attr)
        if g is not None and getattr(g, attr) > value:
            raise InputError(
                f"the padded model the engine builds for these patches has {getattr(g, attr)} {what} (the union "
                f"of the patches' {what}: patches whose new parameters cannot be aligned by role add up), more "
                f"than the limit {limit_text(limit, value)}; submit such patches in separate jobs or name their "
                "parameters consistently",
                where=where(g),
            )
    budget = settings.batch_memory()
    g = job_plan.largest("peak_bytes")
    if g is not None and g.peak_bytes > budget:
        raise InputError(
            f"fitting one hypothesis of this padded model (P = {g.n_params} parameters in shape buckets, "
            f"{g.union_params} without; {g.n_sb} sample bins) "
            f"needs an estimated {_mb(g.peak_bytes)}, more than the batch memory budget {_mb(budget)} "
            f"({limit_text('batch_memory_bytes', settings.batch_memory_bytes)}, 0 = a quarter of the worker's memory)",
            where=where(g),
        )
    n = job_plan.structure_groups
    if n > settings.max_structure_groups:
        raise InputError(
            f"the patches form {n} structure groups (different channel layouts, each compiled separately), "
            f"more than the limit {limit_text('max_structure_groups', settings.max_structure_groups)}; "
            "submit patches of one layout per job",
            where="patchset",
        )
