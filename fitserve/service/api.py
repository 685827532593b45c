"""The HTTP API (FastAPI), versioned under ``/v1``; OpenAPI at ``/docs``.

Bad input never gives a 500: engine :class:`InputError` and unusable results
become 422 with ``{"detail": {"message": ..., "where": ...}}``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import redis
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError

from fitserve import __version__
from fitserve.engine.errors import InputError
from fitserve.engine.inputs import apply_patch, expand_hypotheses, validate_patchset, validate_workspace
from fitserve.engine.options import ScanOptions
from fitserve.service.aggregate import AggregationError, contours, results_document, to_csv
from fitserve.service.queue import ChunkQueue
from fitserve.service.settings import Settings
from fitserve.service.store import JobStore, NewJob
from fitserve.service.worker import redis_client


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, where: str | None = None) -> None:
        self.status, self.message, self.where = status, message, where


def _problem(status: int, message: str, where: str | None) -> JSONResponse:
    return JSONResponse({"detail": {"message": message, "where": where}}, status_code=status)


def parse_options(raw: Any) -> tuple[dict[str, Any], list[str] | None]:
    """Split API options into engine options (validated) and the ``patches`` subset."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError("options must be a JSON object", where="options")
    raw = dict(raw)
    names = raw.pop("patches", None)
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise InputError("must be a list of patch names", where="options.patches")
    try:
        opts = ScanOptions.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        raise InputError(err.get("msg", "invalid"), where=f"options.{loc}" if loc else "options") from None
    return opts.model_dump(mode="json"), names


def prepare_job(workspace: Any, patchset: Any, options: Any, settings: Settings) -> NewJob:
    """Validate a submission and turn it into a :class:`NewJob` (raises InputError)."""
    opts, names = parse_options(options)
    if workspace is None:
        raise InputError("missing: a background-only (or full) pyhf workspace is required", where="workspace")
    validate_workspace(workspace, where="workspace")
    if patchset is None:
        if names:
            raise InputError("a patch subset was given but no patchset", where="options.patches")
        hyp = expand_hypotheses(workspace, None)[0]
        return NewJob(workspace=workspace, patches=None, names=[hyp.name], values=[[]], options=opts)
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
    if len(patches) > settings.max_hypotheses:
        raise InputError(f"{len(patches)} hypotheses exceed this service's limit of {settings.max_hypotheses}", where="patchset")
    for patch in patches:  # cheap check that every patch applies; the engine validates each model
        apply_patch(workspace, patch["patch"], where=f"patchset: patch {patch['metadata']['name']!r}")
    dims = {len(p["metadata"].get("values", [])) for p in patches}
    if len(dims) > 1:
        raise InputError(f"patches have grid values of different lengths {sorted(dims)}", where="patchset")
    return NewJob(
        workspace=workspace,
        patches=patches,
        names=[p["metadata"]["name"] for p in patches],
        values=[list(p["metadata"].get("values", [])) for p in patches],
        options=opts,
        labels=list(patchset.get("metadata", {}).get("labels", [])),
    )


def enqueue_job(job: NewJob, store: JobStore, queue: ChunkQueue, settings: Settings) -> tuple[str, int]:
    """Store a prepared job and queue its uncached hypotheses in chunks; ``(job id, number queued)``."""
    job_id, todo = store.create_job(job)
    if todo:
        size = settings.chunk_size
        ids = queue.enqueue(job_id, [todo[i : i + size] for i in range(0, len(todo), size)])
        store.add_chunks(job_id, ids)
    return job_id, len(todo)


def _json(raw: bytes | str, where: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = f"line {exc.lineno}, column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise InputError(f"not valid JSON ({detail})", where=where) from None


def create_app(settings: Settings | None = None, client: redis.Redis | None = None) -> FastAPI:
    settings = settings or Settings()
    r = client or redis_client(settings)
    store = JobStore(r, settings.key_prefix)
    queue = ChunkQueue(r, settings.key_prefix)

    app = FastAPI(
        title="fitserve",
        version=__version__,
        description=(
            "CLs fits of pyhf likelihoods as a service. Submit a background workspace and a patchset, "
            "poll the job, fetch per-hypothesis results (JSON/CSV), exclusion contours and the exclusion plot."
        ),
    )
    app.state.settings, app.state.store, app.state.queue = settings, store, queue

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return _problem(422, exc.message, exc.where)

    @app.exception_handler(AggregationError)
    async def _agg_error(_: Request, exc: AggregationError) -> JSONResponse:
        return _problem(422, str(exc), "results")

    @app.exception_handler(HTTPProblem)
    async def _problem_handler(_: Request, exc: HTTPProblem) -> JSONResponse:
        return _problem(exc.status, exc.message, exc.where)

    @app.exception_handler(redis.RedisError)
    async def _redis_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        return _problem(503, f"job store unavailable: {exc}", "redis")

    def _status(job_id: str) -> dict[str, Any]:
        st = store.status(job_id)
        if st is None:
            raise HTTPProblem(404, f"no job with id {job_id!r}", "job id")
        base = f"/v1/jobs/{job_id}"
        st["links"] = {"self": base, "results": f"{base}/results", "csv": f"{base}/results?format=csv",
                       "contours": f"{base}/contours", "plot": f"{base}/plot.png"}
        return st

    async def _read_body(request: Request) -> bytes:
        chunks, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > settings.max_body_bytes:
                raise HTTPProblem(413, f"request body exceeds {settings.max_body_bytes} bytes", "request body")
            chunks.append(part)
        return b"".join(chunks)

    from fitserve.web import mount_web

    mount_web(app)  # the HTML pages at / (quick limits, uploads, job pages)

    submit_schema = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["workspace"],
                        "properties": {
                            "workspace": {"type": "object", "description": "background-only (or full) pyhf workspace"},
                            "patchset": {"type": "object", "description": "pyhf PatchSet; omit for one full workspace"},
                            "options": {
                                "type": "object",
                                "description": "test_stat (qtilde|q|q0), poi_test, limits, cls_only, confidence_level, "
                                "modifier_settings (atlas|pyhf|mapping), measurement, patches (subset of patch names)",
                            },
                        },
                    }
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["workspace"],
                        "properties": {
                            "workspace": {"type": "string", "format": "binary"},
                            "patchset": {"type": "string", "format": "binary"},
                            "options": {"type": "string", "description": "options as JSON text (or a JSON file)"},
                        },
                    }
                },
            },
        }
    }

    @app.post("/v1/jobs", status_code=202, openapi_extra=submit_schema, tags=["jobs"])
    async def submit(request: Request) -> JSONResponse:
        """Submit a scan: JSON body or multipart upload of the files. Answers 202 with the job id."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            raise HTTPProblem(413, f"request body exceeds {settings.max_body_bytes} bytes", "request body")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await request.form(max_files=3, max_fields=3, max_part_size=settings.max_body_bytes)
            parts: dict[str, Any] = {}
            for key in form.keys():
                if key not in ("workspace", "patchset", "options"):
                    raise InputError(f"unknown form field {key!r} (expected workspace, patchset, options)", where="request body")
                value = form[key]
                raw = await value.read() if hasattr(value, "read") else value
                parts[key] = _json(raw, where=f"{key} (upload)") if raw not in (b"", "") else None
            await form.close()
            workspace, patchset, options = parts.get("workspace"), parts.get("patchset"), parts.get("options")
        elif ctype in ("application/json", "") or ctype.endswith("+json"):
            body = _json(await _read_body(request), where="request body")
            if not isinstance(body, dict):
                raise InputError("expected a JSON object with 'workspace', 'patchset', 'options'", where="request body")
            unknown = set(body) - {"workspace", "patchset", "options"}
            if unknown:
                raise InputError(f"unknown field(s) {', '.join(sorted(map(repr, unknown)))}", where="request body")
            workspace, patchset, options = body.get("workspace"), body.get("patchset"), body.get("options")
        else:
            raise HTTPProblem(415, f"unsupported content type {ctype!r}: use application/json or multipart/form-data", "content-type")
        job = await run_in_threadpool(prepare_job, workspace, patchset, options, settings)
        job_id, n_todo = await run_in_threadpool(enqueue_job, job, store, queue, settings)
        st = await run_in_threadpool(_status, job_id)
        body = {"id": job_id, "state": st["state"], "total": len(job.names), "cached": len(job.names) - n_todo,
                "to_compute": n_todo, "links": st["links"]}
        return JSONResponse(body, status_code=202, headers={"Location": st["links"]["self"]})

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(limit: int = Query(100, ge=1)) -> dict[str, Any]:
        """Most recent jobs first."""
        return {"jobs": store.list_jobs(min(limit, settings.max_jobs_listed))}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def job_status(job_id: str) -> dict[str, Any]:
        """State (queued, running, done, failed, cancelled), progress, counts, timings, errors."""
        return _status(job_id)

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"])
    def cancel(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (chunks not started are skipped)."""
        _status(job_id)
        state = store.cancel(job_id)
        if state in ("done", "failed"):
            raise HTTPProblem(409, f"job already {state}", "job state")
        queue.drop(store.chunk_ids(job_id))
        return _status(job_id)

    def _records(job_id: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        st = _status(job_id)
        meta = store.meta(job_id)
        if meta is None:
            raise HTTPProblem(404, f"no job with id {job_id!r}", "job id")
        return st, meta, store.results(job_id, meta)

    @app.get("/v1/jobs/{job_id}/results", tags=["results"])
    def results(job_id: str, format: Literal["json", "csv"] = "json") -> Response:
        """Per-hypothesis results (schema of ``fitserve scan``); partial while the job runs."""
        st, meta, recs = _records(job_id)
        if format == "csv":
            return PlainTextResponse(to_csv(recs, meta.get("labels")), media_type="text/csv",
                                     headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'})
        return JSONResponse(results_document(st, meta, recs, __version__))

    @app.get("/v1/jobs/{job_id}/contours", tags=["results"])
    def job_contours(job_id: str) -> dict[str, Any]:
        """CLs = 1 - CL exclusion contours (2-D grids) or the limit curve (1-D grids)."""
        st, meta, recs = _records(job_id)
        cl = meta["options"].get("confidence_level", 0.95)
        out = contours(recs, meta.get("labels"), cl=cl, complete=st["state"] == "done")
        return {"job": job_id, "state": st["state"], **out}

    def _plot(job_id: str, fmt: str) -> Response:
        from fitserve.service.plot import FORMATS, exclusion_plot

        st, meta, recs = _records(job_id)
        if not recs:
            raise HTTPProblem(409, "no results yet", "job state")
        cl = meta["options"].get("confidence_level", 0.95)
        data = exclusion_plot(recs, meta.get("labels"), cl=cl, fmt=fmt)
        return Response(data, media_type=FORMATS[fmt])

    @app.get("/v1/jobs/{job_id}/plot.png", tags=["results"], response_class=Response)
    def plot_png(job_id: str) -> Response:
        """The exclusion plot (observed, expected ±1σ, grid points) as PNG."""
        return _plot(job_id, "png")

    @app.get("/v1/jobs/{job_id}/plot.svg", tags=["results"], response_class=Response)
    def plot_svg(job_id: str) -> Response:
        """The exclusion plot as SVG."""
        return _plot(job_id, "svg")

    @app.get("/v1/health", tags=["service"])
    def health() -> JSONResponse:
        """Redis reachability, live workers, queue depth."""
        t0 = time.perf_counter()
        try:
            r.ping()
            info = r.info("server")
            redis_status = {"ok": True, "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
                            "version": info.get("redis_version")}
        except redis.RedisError as exc:
            return JSONResponse({"status": "down", "redis": {"ok": False, "error": str(exc)}, "workers": []}, status_code=503)
        workers = store.workers()
        return JSONResponse({
            "status": "ok" if workers else "degraded",
            "version": __version__,
            "redis": redis_status,
            "workers": workers,
            "queue": queue.stats(),
        })

    return app
