"""The HTTP API (FastAPI), versioned under ``/v1``; OpenAPI at ``/docs``.

Bad input never gives a 500: engine :class:`InputError` and unusable results
become 422 with ``{"detail": {"message": ..., "where": ...}}``; limits give
413/422/429 naming the limit (:mod:`fitserve.service.limits`).

Every ``/v1/jobs`` route needs an API token (``Authorization: Bearer``) unless
the service runs in open mode (:mod:`fitserve.service.auth`).  A job belongs to
the user who submitted it: to anybody else (but an admin) it does not exist (404).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import redis
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from fitserve import __version__
from fitserve.engine import InputError, ScanOptions
from fitserve.service import toyjobs
from fitserve.service.aggregate import AggregationError, contours, results_document, to_csv
from fitserve.service.auth import AuthError, Principal, TokenStore
from fitserve.service.guard import rss_bytes
from fitserve.service.joblog import JobLog
from fitserve.service.limits import LimitExceeded, read_body, with_body
from fitserve.service.queue import ChunkQueue
from fitserve.service.settings import Settings
from fitserve.service.store import JobStore
from fitserve.service.submission import SubmissionDesk, principal_of, read_json
from fitserve.service.worker import redis_client


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, where: str | None = None) -> None:
        self.status, self.message, self.where = status, message, where


def _text(s: str | None) -> str | None:
    """Text any JSON response can carry (a lone surrogate from the input becomes an escape)."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(s, str) else s


def _problem(status: int, message: str, where: str | None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"detail": {"message": _text(message), "where": _text(where)}}, status_code=status, headers=headers
    )


def create_api(settings: Settings | None = None, client: redis.Redis | None = None) -> FastAPI:
    """The JSON API under ``/v1`` (and the service-wide error handlers), with its desk on ``app.state.desk``.

    The web pages are mounted on it from outside (:func:`fitserve.app.create_app`).
    """
    settings = settings or Settings()
    r = client or redis_client(settings)
    store = JobStore(r, settings.key_prefix)
    queue = ChunkQueue(r, settings.key_prefix, max_user_chunks=settings.max_user_chunks)
    tokens = TokenStore(r, settings.key_prefix)

    # Swagger UI and ReDoc from the installed fastapi-offline package, not a CDN: /docs and
    # /redoc work on HPC nodes without internet
    app = FastAPIOffline(
        title="fitserve",
        version=__version__,
        description=(
            "CLs fits of pyhf likelihoods as a service. Submit a background workspace and a patchset, "
            "poll the job, fetch per-hypothesis results (JSON/CSV), exclusion contours and the exclusion plot."
        ),
    )
    app.state.settings, app.state.store, app.state.queue, app.state.tokens = settings, store, queue, tokens
    app.state.joblog = JobLog(store)
    desk = app.state.desk = SubmissionDesk(settings, store, queue, tokens, app.state.joblog)
    who = principal_of  # the FastAPI dependency of every /v1/jobs route: 401 without a valid token

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return _problem(422, exc.message, exc.where)

    @app.exception_handler(AggregationError)
    async def _agg_error(_: Request, exc: AggregationError) -> JSONResponse:
        return _problem(422, str(exc), "results")

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return _problem(401, str(exc), "Authorization", headers={"WWW-Authenticate": 'Bearer realm="fitserve"'})

    @app.exception_handler(LimitExceeded)
    async def _limit(_: Request, exc: LimitExceeded) -> JSONResponse:
        return _problem(exc.status, exc.message, exc.where)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = (exc.errors() or [{}])[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        return _problem(422, err.get("msg", "invalid request"), loc or "request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if not request.url.path.startswith("/v1/"):
            return await http_exception_handler(request, exc)  # the web pages keep theirs
        where = "request body" if exc.status_code == 400 else "path"
        return _problem(exc.status_code, str(exc.detail), where, headers=getattr(exc, "headers", None))

    @app.exception_handler(HTTPProblem)
    async def _problem_handler(_: Request, exc: HTTPProblem) -> JSONResponse:
        return _problem(exc.status, exc.message, exc.where)

    @app.exception_handler(redis.RedisError)
    async def _redis_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        return _problem(503, f"job store unavailable: {exc}", "redis")

    def _status(job_id: str, principal: Principal) -> dict[str, Any]:
        st = desk.status(job_id, principal)
        if st is None:  # no such job, or another user's: as if it did not exist
            raise HTTPProblem(404, f"no job with id {job_id!r}", "job id")
        base = f"/v1/jobs/{job_id}"
        st["links"] = {
            "self": base,
            "results": f"{base}/results",
            "csv": f"{base}/results?format=csv",
            "contours": f"{base}/contours",
            "plot": f"{base}/plot.png",
        }
        return st

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
    async def submit(request: Request, principal: Principal = Depends(who)) -> JSONResponse:
        """Submit a scan: JSON body or multipart upload of the files. Answers 202 with the job id."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            body = await read_body(request, settings.max_body_bytes)
            boundary = (
                request.headers.get("content-type", "").partition("boundary=")[2].split(";")[0].strip().strip('"')
            )
            if body and boundary and not body.rstrip(b"\r\n").endswith(b"--" + boundary.encode("latin-1") + b"--"):
                raise HTTPProblem(
                    400, "the multipart body ends before its closing boundary (a cut-off upload?)", "request body"
                )
            form = await with_body(request, body).form(max_files=3, max_fields=3, max_part_size=settings.max_body_bytes)
            parts: dict[str, Any] = {}
            for key in form.keys():
                if key not in ("workspace", "patchset", "options"):
                    raise InputError(
                        f"unknown form field {key!r} (expected workspace, patchset, options)", where="request body"
                    )
                value = form[key]
                raw = await value.read() if hasattr(value, "read") else value
                parts[key] = read_json(raw, where=f"{key} (upload)") if raw not in (b"", "") else None
            await form.close()
            workspace, patchset, options = parts.get("workspace"), parts.get("patchset"), parts.get("options")
        elif ctype in ("application/json", "") or ctype.endswith("+json"):
            body = read_json(await read_body(request, settings.max_body_bytes), where="request body")
            if not isinstance(body, dict):
                raise InputError("expected a JSON object with 'workspace', 'patchset', 'options'", where="request body")
            unknown = set(body) - {"workspace", "patchset", "options"}
            if unknown:
                raise InputError(f"unknown field(s) {', '.join(sorted(map(repr, unknown)))}", where="request body")
            workspace, patchset, options = body.get("workspace"), body.get("patchset"), body.get("options")
        else:
            raise HTTPProblem(
                415, f"unsupported content type {ctype!r}: use application/json or multipart/form-data", "content-type"
            )
        job = await run_in_threadpool(desk.prepare, workspace, patchset, options)
        sub = await run_in_threadpool(desk.submit, job, principal.user)
        st = await run_in_threadpool(_status, sub.job_id, principal)
        body = {
            "id": sub.job_id,
            "state": st["state"],
            "total": sub.total,
            "cached": sub.cached,
            "to_compute": sub.to_compute,
            "links": st["links"],
        }
        return JSONResponse(body, status_code=202, headers={"Location": st["links"]["self"]})

    @app.get("/v1/whoami", tags=["service"])
    def whoami(principal: Principal = Depends(who)) -> dict[str, Any]:
        """The user the request's token belongs to, and the service's auth mode."""
        return {"user": principal.user, "admin": principal.admin, "auth": desk.auth_mode}

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(
        limit: int = Query(100, ge=1),
        user: str | None = Query(
            None, max_length=64, description="Admins only: this user's jobs (default: everybody's)."
        ),
        principal: Principal = Depends(who),
    ) -> dict[str, Any]:
        """Most recent jobs first: the caller's own; an admin's token lists everybody's."""
        if user is not None and not principal.admin and user != principal.user:
            raise HTTPProblem(403, "only an admin token may list another user's jobs", "user")
        return {"jobs": desk.jobs(principal, limit, user)}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def job_status(job_id: str, principal: Principal = Depends(who)) -> dict[str, Any]:
        """State (queued, running, done, failed, cancelled), progress, counts, timings, errors."""
        return _status(job_id, principal)

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"])
    def cancel(job_id: str, principal: Principal = Depends(who)) -> dict[str, Any]:
        """Cancel a queued or running job (chunks not started are skipped)."""
        _status(job_id, principal)
        state = store.cancel(job_id)
        if state in ("done", "failed"):
            raise HTTPProblem(409, f"job already {state}", "job state")
        queue.drop(store.chunk_ids(job_id))
        return _status(job_id, principal)

    def _records(job_id: str, principal: Principal) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        st = _status(job_id, principal)
        meta = store.meta(job_id)
        if meta is None:
            raise HTTPProblem(404, f"no job with id {job_id!r}", "job id")
        return st, meta, store.results(job_id, meta)

    @app.get("/v1/jobs/{job_id}/results", tags=["results"])
    def results(job_id: str, format: Literal["json", "csv"] = "json", principal: Principal = Depends(who)) -> Response:
        """Per-hypothesis results (schema of ``fitserve scan``); partial while the job runs."""
        st, meta, recs = _records(job_id, principal)
        if format == "csv":
            return PlainTextResponse(
                to_csv(recs, meta.get("labels")),
                media_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'},
            )
        return JSONResponse(results_document(st, meta, recs, __version__))

    @app.get("/v1/jobs/{job_id}/contours", tags=["results"])
    def job_contours(job_id: str, principal: Principal = Depends(who)) -> dict[str, Any]:
        """CLs = 1 - CL exclusion contours (2-D grids) or the limit curve (1-D grids)."""
        st, meta, recs = _records(job_id, principal)
        cl = ScanOptions.stored(meta["options"]).confidence_level
        out = contours(recs, meta.get("labels"), cl=cl, complete=st["state"] == "done")
        return {"job": job_id, "state": st["state"], **out}

    def _plot(job_id: str, fmt: str, principal: Principal) -> Response:
        from fitserve.service.plot import FORMATS, exclusion_plot

        st, meta, recs = _records(job_id, principal)
        if not recs:
            raise HTTPProblem(409, "no results yet", "job state")
        cl = ScanOptions.stored(meta["options"]).confidence_level
        data = exclusion_plot(recs, meta.get("labels"), cl=cl, fmt=fmt)
        return Response(data, media_type=FORMATS[fmt])

    @app.get("/v1/jobs/{job_id}/plot.png", tags=["results"], response_class=Response)
    def plot_png(job_id: str, principal: Principal = Depends(who)) -> Response:
        """The exclusion plot (observed, expected ±1σ, grid points) as PNG."""
        return _plot(job_id, "png", principal)

    @app.get("/v1/jobs/{job_id}/toys/{patch}.png", tags=["results"], response_class=Response)
    def toys_png(job_id: str, patch: str, principal: Principal = Depends(who)) -> Response:
        """The two toy distributions of one hypothesis' test statistic and the observed value (toy-based jobs)."""
        from fitserve.service.plot import toy_plot

        st, meta, recs = _records(job_id, principal)
        if "toys" not in meta:
            raise HTTPProblem(409, "this job is not toy-based (options.calculator 'asymptotics')", "options.calculator")
        if patch not in meta["names"]:
            raise HTTPProblem(404, f"job {job_id!r} has no hypothesis {patch!r}", "patch")
        dist = toyjobs.distributions(store, meta, patch)
        if dist is None:
            raise HTTPProblem(409, f"no toys of {patch!r} computed yet", "job state")
        q_obs, q_sb, q_b = dist
        return Response(
            toy_plot(q_obs, q_sb, q_b, patch, recs.get(patch), meta["options"].get("test_stat", "qtilde")),
            media_type="image/png",
        )

    @app.get("/v1/jobs/{job_id}/plot.svg", tags=["results"], response_class=Response)
    def plot_svg(job_id: str, principal: Principal = Depends(who)) -> Response:
        """The exclusion plot as SVG."""
        return _plot(job_id, "svg", principal)

    @app.get("/v1/jobs/{job_id}/plot.pdf", tags=["results"], response_class=Response)
    def plot_pdf(job_id: str, principal: Principal = Depends(who)) -> Response:
        """The exclusion plot as PDF (for papers)."""
        return _plot(job_id, "pdf", principal)

    @app.get("/v1/health", tags=["service"])
    def health() -> JSONResponse:
        """Redis reachability, live workers (with their resident memory), queue depth, the memory limits."""
        t0 = time.perf_counter()
        try:
            r.ping()
            info = r.info("server")
            redis_status = {
                "ok": True,
                "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
                "version": info.get("redis_version"),
            }
        except redis.RedisError as exc:
            return JSONResponse(
                {"status": "down", "redis": {"ok": False, "error": str(exc)}, "workers": []}, status_code=503
            )
        workers = store.workers()  # each with rss_bytes (its process) and rss_tree_bytes (with its executor's)
        return JSONResponse(
            {
                "status": "ok" if workers else "degraded",
                "version": __version__,
                "redis": redis_status,
                "workers": workers,
                "queue": queue.stats(),
                "api": {"rss_bytes": rss_bytes()},
                "limits": {
                    "worker_memory_bytes": settings.worker_memory(),
                    "batch_memory_bytes": settings.batch_memory(),
                    "chunk_wall_s": settings.chunk_wall_s,
                    "max_parameters": settings.max_parameters,
                    "max_bins": settings.max_bins,
                    "max_structure_groups": settings.max_structure_groups,
                },
            }
        )

    return app
