"""Limits a submission must respect; each error names the limit and the setting that sets it.

* size of the request body: 413 (checked while reading, in :mod:`fitserve.service.api`);
* hypotheses per job, bins and parameters per model: 422 (:func:`check_job_size`, :func:`check_model_size`);
* jobs queued or running per user: 429 (:meth:`fitserve.service.store.JobStore.reserve_slot`).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from fitserve.engine.errors import InputError
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
    too_big = LimitExceeded(413, f"request body larger than the limit {limit_text('max_body_bytes', max_bytes)}, in bytes",
                            "request body")
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
        raise InputError(f"the model has {bins} bins, more than the limit {limit_text('max_bins', max_bins)}", where=where)
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
