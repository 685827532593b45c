"""Limits a submission must respect; each error names the limit and the setting that sets it.

* size of the request body: 413 (checked while reading, in :mod:`fitserve.service.api`);
* hypotheses per job, bins and parameters per model and per padded model, batch memory, structure
  groups: 422, toys per job: 413 (the engine's :func:`~fitserve.engine.check_submission` holds a
  job against :func:`fitserve.service.submission.submission_limits`, named by :func:`limit_text`);
* jobs queued or running per user: 429 (:meth:`fitserve.service.store.JobStore.reserve_slot`).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request


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
