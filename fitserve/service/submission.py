"""The front desk: the one way a job gets into the service, for the API and the web form alike.

A :class:`SubmissionDesk` (one per app, ``app.state.desk``) says who is asking
(:meth:`~SubmissionDesk.principal`), checks a submission
(:meth:`~SubmissionDesk.prepare`: the engine's one submission check,
:func:`~fitserve.engine.check_submission`, against the service's limits: options,
workspace, patchset and the engine's plan of the job; :class:`InputError` or
:class:`LimitExceeded` on anything wrong), files it
(:meth:`~SubmissionDesk.submit`: the job and its chunks in one Redis
transaction, the job log told) and shows a job to its owner only
(:meth:`~SubmissionDesk.status`).  The HTTP API (:mod:`fitserve.service.api`)
and the web pages (:mod:`fitserve.web`) only read their requests and answer
in their own formats: neither knows how a job is stored.

Options are parsed once, by the engine's :class:`ScanOptions`
(:meth:`ScanOptions.parse`), which also owns the rules between options (no
upper limits with ``q0``); the store writes them (:meth:`JobStore.create_job`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from fitserve.engine import (
    InputError,
    LimitError,
    PreparedJob,
    ScanOptions,
    SubmissionLimits,
    check_options,
    check_submission,
    parse_json,
)
from fitserve.service import toyjobs
from fitserve.service.auth import COOKIE, Principal, TokenStore, auth_mode, authenticate
from fitserve.service.limits import LimitExceeded, limit_text
from fitserve.service.queue import ChunkQueue
from fitserve.service.settings import Settings
from fitserve.service.store import JobStore

#: limits the engine refuses that this service answers with 413 (the others: 422, as any InputError)
TOO_LARGE = ("max_job_toys",)


def read_json(raw: bytes | str, where: str) -> Any:
    """A submitted JSON document (InputError naming ``where``: bad JSON, deep nesting, huge integers)."""
    return parse_json(raw, where=where)


def parse_options(raw: Any) -> tuple[ScanOptions, list[str] | None]:
    """API options as the engine's :class:`ScanOptions` and the ``patches`` subset (InputError on anything wrong)."""
    opts, names = check_options(raw, where="options")
    if opts.toy_range is not None:
        raise InputError(
            "toy_range is chosen by the service (chunks of toy_chunk_size toys); ask for n_toys",
            where="options.toy_range",
        )
    return opts, names


def submission_limits(settings: Settings) -> SubmissionLimits:
    """The service's limits as the engine's :class:`SubmissionLimits`, each named with its setting."""
    names = ("max_hypotheses", "max_bins", "max_parameters", "max_structure_groups", "max_job_toys")
    texts = {name: limit_text(name, getattr(settings, name)) for name in names}
    texts["batch_memory_bytes"] = (
        f"{limit_text('batch_memory_bytes', settings.batch_memory_bytes)}, 0 = a quarter of the worker's memory"
    )
    return SubmissionLimits(
        **{name: getattr(settings, name) for name in names},
        batch_memory_bytes=settings.batch_memory(),
        chunk_size=settings.chunk_size,
        texts=texts,
    )


def prepare_job(workspace: Any, patchset: Any, options: Any, settings: Settings) -> PreparedJob:
    """Validate a submission into the engine's :class:`PreparedJob` (raises InputError, LimitExceeded).

    The engine's one submission check (:func:`fitserve.engine.check_submission`) against this
    service's limits; the limits answered with 413 become :class:`LimitExceeded`.
    """
    opts, names = parse_options(options)
    try:
        return check_submission(workspace, patchset, opts, submission_limits(settings), names)
    except LimitError as exc:
        if exc.limit in TOO_LARGE:
            raise LimitExceeded(413, exc.message, exc.where or "options") from None
        raise


def enqueue_job(
    job: PreparedJob, store: JobStore, queue: ChunkQueue, settings: Settings, owner: str = "local"
) -> tuple[str, int]:
    """Store ``owner``'s prepared job and queue its uncached hypotheses in chunks; ``(job id, number queued)``.

    Raises :class:`LimitExceeded` (429) when the owner already has ``max_active_jobs`` queued or running.
    """
    job_id = store.new_id()
    active = store.reserve_slot(owner, job_id, settings.max_active_jobs)
    if active is not None:
        raise LimitExceeded(
            429,
            f"user {owner!r} already has {active} jobs queued or running, the limit "
            f"{limit_text('max_active_jobs', settings.max_active_jobs)}; wait for one to finish or cancel one",
            "jobs",
        )
    size = settings.chunk_size

    def chunks(pipe: Any, todo: list[str]) -> None:  # queued in the same transaction as the job
        if job.options.calculator == "toybased":  # one hypothesis and one range of its toys per chunk
            ranges = toyjobs.toy_ranges(job.options.n_toys, settings.toy_chunk_size)
            queue.enqueue(job_id, toyjobs.entries(todo, ranges), pipe=pipe, user=owner)
            return
        queue.enqueue(job_id, [todo[i : i + size] for i in range(0, len(todo), size)], pipe=pipe, user=owner)

    job_id, todo, _ = store.create_job(
        job, owner=owner, job_id=job_id, also=chunks, toy_chunk_size=settings.toy_chunk_size
    )
    return job_id, len(todo)


@dataclass(frozen=True)
class Submitted:
    """A job the desk filed: its id, how many hypotheses it has and how many were in the cache."""

    job_id: str
    total: int
    to_compute: int

    @property
    def cached(self) -> int:
        return self.total - self.to_compute


class SubmissionDesk:
    """Who is asking, what they may submit, and the jobs they may see: shared by the API and the web pages."""

    def __init__(
        self, settings: Settings, store: JobStore, queue: ChunkQueue, tokens: TokenStore, joblog: Any = None
    ) -> None:
        self.settings, self.store, self.queue, self.tokens, self.joblog = settings, store, queue, tokens, joblog

    # who -------------------------------------------------------------------------------
    @property
    def auth_mode(self) -> str:
        return auth_mode(self.settings)

    def principal(self, authorization: str | None, cookie: str | None) -> Principal:
        """The user of a request's bearer token (else the web pages' cookie); AuthError if nobody valid."""
        return authenticate(self.auth_mode, self.tokens, authorization, cookie)

    # what ------------------------------------------------------------------------------
    @staticmethod
    def check_options(options: Any) -> ScanOptions:
        """The options alone (the web form shows their mistakes with those of the files)."""
        return parse_options(options)[0]

    def prepare(self, workspace: Any, patchset: Any, options: Any) -> PreparedJob:
        """Everything about a submission that can be checked before it is stored (InputError, LimitExceeded)."""
        return prepare_job(workspace, patchset, options, self.settings)

    def submit(self, job: PreparedJob, owner: str) -> Submitted:
        """Store ``owner``'s prepared job and queue it (LimitExceeded 429 past ``max_active_jobs``)."""
        job_id, n_todo = enqueue_job(job, self.store, self.queue, self.settings, owner)
        if self.joblog is not None:
            self.joblog.submitted(job_id, owner, len(job.names), n_todo, job.options_doc)
        return Submitted(job_id, len(job.names), n_todo)

    # jobs ------------------------------------------------------------------------------
    def status(self, job_id: str, principal: Principal, max_errors: int = 20) -> dict[str, Any] | None:
        """The job's status for ``principal``; None when there is no such job or it is somebody else's."""
        st = self.store.status(job_id, max_errors=max_errors)
        if st is None or not principal.owns(st["owner"]):  # another user's job: as if it did not exist
            return None
        return st

    def jobs(self, principal: Principal, limit: int, user: str | None = None) -> list[dict[str, Any]]:
        """Most recent jobs first: ``user``'s (admins only for another user), else the caller's (an admin's: all)."""
        scope = user if user is not None else (None if principal.admin else principal.user)
        return self.store.list_jobs(min(limit, self.settings.max_jobs_listed), user=scope)


def principal_of(request: Request) -> Principal:
    """Who sent a FastAPI ``request`` (bearer token, else the web pages' cookie); AuthError if nobody valid."""
    desk: SubmissionDesk = request.app.state.desk
    return desk.principal(request.headers.get("authorization"), request.cookies.get(COOKIE))
