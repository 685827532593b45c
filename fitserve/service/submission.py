"""The front desk: the one way a job gets into the service, for the API and the web form alike.

A :class:`SubmissionDesk` (one per app, ``app.state.desk``) says who is asking
(:meth:`~SubmissionDesk.principal`), checks a submission
(:meth:`~SubmissionDesk.prepare`: options, workspace, patchset, the service's
limits and the engine's plan of the job; :class:`InputError` or
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

from fitserve.engine import InputError, ScanOptions
from fitserve.engine.inputs import (
    Hypothesis,
    apply_patch,
    check_measurement,
    check_values,
    expand_hypotheses,
    parse_json,
    validate_patchset,
    validate_workspace,
)
from fitserve.service import toyjobs
from fitserve.service.auth import COOKIE, Principal, TokenStore, auth_mode, authenticate
from fitserve.service.limits import LimitExceeded, check_job_size, check_model_size, check_plan, limit_text
from fitserve.service.queue import ChunkQueue
from fitserve.service.settings import Settings
from fitserve.service.store import JobStore, NewJob


def read_json(raw: bytes | str, where: str) -> Any:
    """A submitted JSON document (InputError naming ``where``: bad JSON, deep nesting, huge integers)."""
    return parse_json(raw, where=where)


def parse_options(raw: Any) -> tuple[ScanOptions, list[str] | None]:
    """API options as the engine's :class:`ScanOptions` and the ``patches`` subset (InputError on anything wrong)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError("options must be a JSON object", where="options")
    check_values(raw, where="options", dotted=True)
    raw = dict(raw)
    names = raw.pop("patches", None)
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise InputError("must be a list of patch names", where="options.patches")
    opts = ScanOptions.parse(raw, where="options")
    if opts.toy_range is not None:
        raise InputError(
            "toy_range is chosen by the service (chunks of toy_chunk_size toys); ask for n_toys",
            where="options.toy_range",
        )
    return opts, names


def prepare_job(workspace: Any, patchset: Any, options: Any, settings: Settings) -> NewJob:
    """Validate a submission and turn it into a :class:`NewJob` (raises InputError, LimitExceeded)."""
    opts, names = parse_options(options)
    if workspace is None:
        raise InputError("missing: a background-only (or full) pyhf workspace is required", where="workspace")
    validate_workspace(workspace, where="workspace")
    if patchset is None:
        if names:
            raise InputError("a patch subset was given but no patchset", where="options.patches")
        check_measurement(workspace, opts.measurement, where="workspace")
        check_model_size(workspace, settings.max_bins, settings.max_parameters, where="workspace")
        hyp = expand_hypotheses(workspace, None)[0]
        check_built(None, [hyp], opts, settings)
        return NewJob(workspace=workspace, patches=None, names=[hyp.name], values=[[]], options=opts)
    check_measurement(workspace, opts.measurement, where="workspace", poi=False)
    validate_patchset(patchset, where="patchset")
    patches = patchset["patches"]
    if names:
        by_name = {p["metadata"]["name"]: p for p in patches}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputError(f"no patch named {', '.join(map(repr, missing[:5]))}", where="options.patches")
        patches = [by_name[n] for n in dict.fromkeys(names)]
    if not patches:
        raise InputError("no hypotheses to fit", where="patchset")
    check_job_size(len(patches), settings.max_hypotheses)
    hyps = []
    for patch in patches:  # cheap check that every patch applies; the engine validates each model
        where = f"patchset: patch {patch['metadata']['name']!r}"
        patched = apply_patch(workspace, patch["patch"], where=where)
        check_measurement(patched, opts.measurement, where=where)
        check_model_size(patched, settings.max_bins, settings.max_parameters, where=where)
        hyps.append(Hypothesis(name=patch["metadata"]["name"], values=[], spec=patched))
    dims = {len(p["metadata"].get("values", [])) for p in patches}
    if len(dims) > 1:
        raise InputError(f"patches have grid values of different lengths {sorted(dims)}", where="patchset")
    check_built(workspace, hyps, opts, settings)
    return NewJob(
        workspace=workspace,
        patches=patches,
        names=[p["metadata"]["name"] for p in patches],
        values=[list(p["metadata"].get("values", [])) for p in patches],
        options=opts,
        labels=list(patchset.get("metadata", {}).get("labels", [])),
    )


def check_built(
    workspace: dict[str, Any] | None, hyps: list[Hypothesis], opts: ScanOptions, settings: Settings
) -> None:
    """Refuse (422) a job whose padded models, batch memory or structure groups exceed the limits.

    The engine's own plan of the job (:func:`fitserve.engine.budget.plan_hypotheses`), chunked as
    the workers will run it: nothing is allocated or fitted.
    """
    from fitserve.engine.budget import plan_hypotheses

    if opts.calculator == "toybased":
        toys = 2 * opts.n_toys * len(hyps)
        if toys > settings.max_job_toys:
            raise LimitExceeded(
                413,
                f"the job asks for {toys:,} toys ({opts.n_toys:,} per distribution, two distributions, "
                f"{len(hyps)} hypotheses), more than the limit {limit_text('max_job_toys', settings.max_job_toys)}",
                "options.n_toys",
            )
    job_plan = plan_hypotheses(
        hyps,
        workspace,
        opts.model_dump(mode="json"),
        chunk_size=settings.chunk_size,
        budget_bytes=settings.batch_memory(),
    )
    check_plan(job_plan, [h.name for h in hyps], settings.chunk_size, settings)


def enqueue_job(
    job: NewJob, store: JobStore, queue: ChunkQueue, settings: Settings, owner: str = "local"
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
    job.toy_chunk_size = settings.toy_chunk_size

    def chunks(pipe: Any, todo: list[str]) -> None:  # queued in the same transaction as the job
        if job.options.calculator == "toybased":  # one hypothesis and one range of its toys per chunk
            ranges = toyjobs.toy_ranges(job.options.n_toys, settings.toy_chunk_size)
            queue.enqueue(job_id, toyjobs.entries(todo, ranges), pipe=pipe, user=owner)
            return
        queue.enqueue(job_id, [todo[i : i + size] for i in range(0, len(todo), size)], pipe=pipe, user=owner)

    job_id, todo, _ = store.create_job(job, owner=owner, job_id=job_id, also=chunks)
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

    def prepare(self, workspace: Any, patchset: Any, options: Any) -> NewJob:
        """Everything about a submission that can be checked before it is stored (InputError, LimitExceeded)."""
        return prepare_job(workspace, patchset, options, self.settings)

    def submit(self, job: NewJob, owner: str) -> Submitted:
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
