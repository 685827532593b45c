"""Errors the engine raises for bad input.

Every message names *where* the problem is (file, patch, JSON path) so the
CLI can print it on one line and the service can return it as an HTTP 4xx.
"""

from __future__ import annotations


class InputError(ValueError):
    """The user's workspace, patchset or options cannot be used.

    ``where`` is a human-readable location (a file name, ``patch 'X'``, a JSON
    pointer); ``message`` says what is wrong there.
    """

    def __init__(self, message: str, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class LimitError(InputError):
    """A submission over one of the caller's limits (:class:`~fitserve.engine.submission.SubmissionLimits`).

    ``limit`` names it (``max_bins``, ``max_job_toys``, ...), so the caller can answer it its own way.
    """

    def __init__(self, message: str, where: str | None, limit: str) -> None:
        super().__init__(message, where=where)
        self.limit = limit


class Cancelled(RuntimeError):
    """The caller's ``cancel()`` check said stop: raised between fit blocks, never mid-write."""
