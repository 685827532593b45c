"""Typed errors of the fitserve client.

Every error from the server becomes one of these, carrying the server's
``message`` and ``where`` (the place in the input it names, e.g.
``options.test_stat`` or ``patchset: patch 'X'``) and the HTTP ``status``
(``None`` when no answer came back at all).
"""

from __future__ import annotations


class FitserveError(Exception):
    """Base class: something the fitserve service (or the way to it) refused or failed."""

    def __init__(self, message: str, where: str | None = None, status: int | None = None) -> None:
        self.message = message
        self.where = where
        self.status = status
        super().__init__(f"{where}: {message}" if where else message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(message={self.message!r}, where={self.where!r}, status={self.status!r})"


class BadInput(FitserveError, ValueError):
    """The server rejected the submission or request (HTTP 400, 413, 415, 422)."""


class NotFound(FitserveError, LookupError):
    """No such job (HTTP 404)."""


class Unauthorised(FitserveError, PermissionError):
    """Missing or wrong token (HTTP 401, 403)."""


class Conflict(FitserveError):
    """The job is not in a state that allows this (HTTP 409: cancelling a finished job, plotting with no results)."""


class ServerUnavailable(FitserveError, ConnectionError):
    """The service cannot be reached, or its job store is down (HTTP 503), after the retries."""


class JobFailed(FitserveError):
    """The job ended in state ``failed`` (raised by ``wait``)."""


class JobTimeout(FitserveError, TimeoutError):
    """``wait(timeout=...)`` ran out before the job finished; the job keeps running."""


__all__ = [
    "FitserveError",
    "BadInput",
    "NotFound",
    "Unauthorised",
    "Conflict",
    "ServerUnavailable",
    "JobFailed",
    "JobTimeout",
]
