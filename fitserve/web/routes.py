"""Routes of the web pages; the JSON API (``/v1``) stays the one source of jobs and results.

Jobs get in through the service's submission desk (``app.state.desk``,
:class:`fitserve.service.submission.SubmissionDesk`), the same as ``POST /v1/jobs``,
and are read through its store; the pages never touch Redis keys themselves.
"""

from __future__ import annotations

import json
import re
import secrets
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from fitserve import __version__
from fitserve.engine import InputError, ScanOptions
from fitserve.service.auth import COOKIE, OPEN, AuthError, Principal
from fitserve.service.describe import options_text
from fitserve.service.limits import LimitExceeded, read_body, with_body
from fitserve.service.submission import SubmissionDesk, principal_of, read_json
from fitserve.web import counting

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)

TERMINAL = ("done", "failed", "cancelled")
#: rows of the results table rendered into the job page (the downloads have all)
MAX_TABLE_ROWS = 2000
#: uploads kept for a form shown again with an error (seconds)
STASH_TTL_S = 3600
FULL_OPTION_FIELDS = (
    "test_stat",
    "poi_test",
    "confidence_level",
    "modifier_settings",
    "measurement",
    "patches",
    "calculator",
    "n_toys",
    "seed",
)


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, float)):
        return f"{x:.{digits}g}"
    return str(x)


templates.env.filters["num"] = fmt


def when(ts: float) -> str:
    """A job's submission time, UTC, to the second (the same on every viewer's screen)."""
    import datetime as dt

    return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


templates.env.filters["when"] = when


def _desk(request: Request) -> SubmissionDesk:
    return request.app.state.desk


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    viewer = getattr(request.state, "viewer", None)
    context = {
        "version": __version__,
        "path": request.url.path,
        "viewer": viewer,
        "auth": _desk(request).auth_mode,
        **context,
    }
    return templates.TemplateResponse(request, name, context, status_code=status)


# --- who is looking -------------------------------------------------------------------


class LoginRequired(Exception):
    """A page asked for without a valid token: answered by a redirect to ``/login``."""


def viewer(request: Request) -> Principal:
    """The principal of a page request (the ``fitserve_token`` cookie, or a bearer header).

    Kept on ``request.state`` so the templates can show who is signed in.
    """
    try:
        who = principal_of(request)
    except AuthError as exc:
        raise LoginRequired(str(exc)) from None
    request.state.viewer = who
    return who


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no open redirect to another host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    if _desk(request).auth_mode == "open":
        return RedirectResponse(_safe_next(next), status_code=303)
    return _page(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login", response_class=HTMLResponse)
async def login_submit(request: Request) -> Response:
    """Check the token and keep it in an HttpOnly, SameSite=Strict cookie for the pages and their API calls."""
    form = await request.form(max_files=0, max_fields=4, max_part_size=4096)
    token = str(form.get("token") or "").strip()
    target = _safe_next(str(form.get("next") or "/"))
    who = await run_in_threadpool(_desk(request).tokens.lookup, token) if token else None
    if who is None:
        msg = "paste your API token" if not token else "this token is not valid (or has been revoked)"
        return _page(request, "login.html", {"next": target, "error": msg}, 401)
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=30 * 24 * 3600,
        path="/",
    )
    return resp


@router.post("/logout")
def logout(request: Request) -> Response:
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


# --- quick limit ------------------------------------------------------------------


def _quick_query(params: dict[str, str]) -> str:
    return urlencode({k: params.get(k, "") for k in (*counting.FIELDS, "mode")})


@router.get("/", response_class=HTMLResponse)
def quick_page(request: Request) -> HTMLResponse:
    """The counting form; with its fields in the query string, also the result (or the errors)."""
    viewer(request)
    params = dict(request.query_params)
    submitted = any(k in params for k in counting.FIELDS)
    ctx: dict[str, Any] = {"form": {"mode": "absolute", **params}, "errors": {}, "result": None}
    status = 200
    if counting.warmup_mode() == "lazy":
        counting.Warmup.start()  # once per process
    if submitted:
        inp = counting.parse_form(params)
        ctx["form"] = inp.raw
        if inp.ok:
            try:
                ctx["result"] = counting.compute(inp)
            except InputError as exc:
                inp.errors["form"] = f"{exc.where + ': ' if exc.where else ''}{exc.message}"
            else:
                ctx["n_bins"] = inp.n_bins
                ctx["workspace_url"] = "/quick/workspace.json?" + _quick_query(inp.raw)
        ctx["errors"] = inp.errors
        status = 422 if inp.errors else 200
    ctx["warming"] = counting.Warmup._started and not counting.Warmup.done.is_set()
    ctx["warm_bins"] = counting.WARM_BINS
    ctx["compiled"] = counting.compiled_sizes()  # after this request's own compilation
    return _page(request, "quick.html", ctx, status)


@router.get("/quick/workspace.json")
def quick_workspace(request: Request) -> Response:
    """The counting model of the form values as a pyhf workspace (a download)."""
    viewer(request)
    inp = counting.parse_form(dict(request.query_params))
    if not inp.ok:
        field, message = next(iter(inp.errors.items()))
        return JSONResponse({"detail": {"message": message, "where": field}}, status_code=422)
    ws = counting.build_workspace(inp)
    return Response(
        json.dumps(ws, indent=2),
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="quick_limit_workspace.json"'},
    )


# --- full likelihood ----------------------------------------------------------------


def _field_of(where: str | None) -> str:
    """Which form field an API error location concerns."""
    where = where or ""
    if where.startswith("workspace"):
        return "workspace"
    if where.startswith("patchset"):
        return "patchset"
    if where.startswith("options."):
        name = where.split(".", 1)[1].split(".")[0]
        return name if name in FULL_OPTION_FIELDS else "options"
    return "form"


def _stash(request: Request, filename: str, raw: bytes) -> str:
    """Keep an upload for the form shown again; it is the uploader's (nobody else can use the token)."""
    token = secrets.token_urlsafe(16)
    blob = json.dumps({"filename": filename}).encode() + b"\n" + zlib.compress(raw, 3)
    _desk(request).store.keep_upload(request.state.viewer.user, token, blob, STASH_TTL_S)
    return token


def _unstash(request: Request, token: str) -> tuple[str, bytes] | None:
    if not re.fullmatch(r"[A-Za-z0-9_-]{10,64}", token or ""):
        return None
    blob = _desk(request).store.kept_upload(request.state.viewer.user, token)
    if blob is None:
        return None
    head, _, body = blob.partition(b"\n")
    return json.loads(head)["filename"], zlib.decompress(body)


def _options_from_form(form: dict[str, str]) -> dict[str, Any]:
    opts: dict[str, Any] = {"limits": form.get("limits") == "on"}
    for key in ("test_stat", "modifier_settings", "measurement", "calculator"):
        if form.get(key):
            opts[key] = form[key]
    toys = opts.get("calculator") == "toybased"
    for key in ("poi_test", "confidence_level") + (("n_toys", "seed") if toys else ()):
        if form.get(key, "").strip():
            opts[key] = form[key].strip()  # pydantic parses numbers and explains bad ones
    names = [n for n in re.split(r"[,\s]+", form.get("patches", "")) if n]
    if names:
        opts["patches"] = names
    return opts


FULL_DEFAULTS = {
    "test_stat": "qtilde",
    "poi_test": "1.0",
    "confidence_level": "0.95",
    "modifier_settings": "atlas",
    "measurement": "",
    "patches": "",
    "limits": "",
    "calculator": "asymptotics",
    "n_toys": "1000",
    "seed": "0",
}


@router.get("/full", response_class=HTMLResponse)
def full_page(request: Request) -> HTMLResponse:
    viewer(request)
    return _page(request, "full.html", {"form": dict(FULL_DEFAULTS), "errors": {}, "kept": {}})


@router.post("/full", response_class=HTMLResponse)
async def full_submit(request: Request) -> Response:
    """Validate and submit exactly as ``POST /v1/jobs`` does; on an error show the form again, nothing lost."""
    who = viewer(request)
    desk = _desk(request)
    settings = desk.settings
    try:
        body = await read_body(request, settings.max_body_bytes)
    except LimitExceeded as exc:
        return HTMLResponse(exc.message, status_code=exc.status)
    form = await with_body(request, body).form(max_files=2, max_fields=20, max_part_size=settings.max_body_bytes)
    values: dict[str, str] = {k: v for k, v in form.items() if isinstance(v, str)}
    values.setdefault("limits", "")
    errors: dict[str, str] = {}
    kept: dict[str, dict[str, str]] = {}
    docs: dict[str, Any] = {}
    raws: dict[str, tuple[str, bytes]] = {}
    for name in ("workspace", "patchset"):
        upload = form.get(name)
        if upload is not None and not isinstance(upload, str) and upload.filename:
            raws[name] = (upload.filename, await upload.read())
        elif values.get(f"{name}_token"):
            got = await run_in_threadpool(_unstash, request, values[f"{name}_token"])
            if got is None:
                errors[name] = "the file kept from your last try has expired: choose it again"
                continue
            raws[name] = got
        elif name == "workspace":
            errors[name] = "choose a background-only (or full) pyhf workspace (JSON)"
            continue
        if name in raws:
            try:
                docs[name] = read_json(raws[name][1], where=name)
            except InputError as exc:
                errors[name] = exc.message
    await form.close()
    if docs.get("patchset") is not None and not isinstance(docs.get("patchset"), dict):
        errors["patchset"] = "not a pyhf PatchSet (expected a JSON object)"
    options = _options_from_form(values)
    try:  # options are checked even when a file is at fault, so every mistake shows at once
        desk.check_options(options)
    except InputError as exc:
        errors.setdefault(_field_of(exc.where), exc.message)
    if not errors:
        try:
            job = await run_in_threadpool(desk.prepare, docs.get("workspace"), docs.get("patchset"), options)
        except InputError as exc:
            field = _field_of(exc.where)
            where = exc.where if exc.where and exc.where != field else None
            errors[field] = f"{where}: {exc.message}" if where and field in ("workspace", "patchset") else exc.message
        else:
            try:
                sub = await run_in_threadpool(desk.submit, job, who.user)
            except LimitExceeded as exc:
                errors["form"] = exc.message
            else:
                return RedirectResponse(f"/jobs/{sub.job_id}", status_code=303)
    # keep the uploads that are not at fault, so the user need not choose them again
    for name, (filename, raw) in raws.items():
        if name not in errors:
            kept[name] = {"token": await run_in_threadpool(_stash, request, filename, raw), "filename": filename}
    return _page(request, "full.html", {"form": {**FULL_DEFAULTS, **values}, "errors": errors, "kept": kept}, 422)


# --- job page -------------------------------------------------------------------------


def _rows(recs: dict[str, dict[str, Any]], opts: ScanOptions) -> list[dict[str, Any]]:
    """Table rows; "excluded" at the job's own confidence level (:meth:`ScanOptions.excluded`), not a fixed 0.05."""
    rows = []
    for name, rec in list(recs.items())[:MAX_TABLE_ROWS]:
        exp = rec.get("CLs_exp") or [None] * 5
        ul = rec.get("upper_limit") or {}
        ul_exp = ul.get("exp") or [None] * 5
        if rec.get("converged"):
            status = "no limit" if rec.get("error") else "ok"
        else:
            status = "not converged" if "converge" in (rec.get("error") or "converge") else "failed"
        rows.append(
            {
                "name": name,
                "values": rec.get("values") or [],
                "cls_obs": rec.get("CLs_obs"),
                "cls_exp": exp[2],
                "cls_m1": exp[1],
                "cls_p1": exp[3],
                "ul_obs": ul.get("obs"),
                "ul_exp": ul_exp[2],
                "excluded": opts.excluded(rec.get("CLs_obs")),
                "status": status,
                "error": rec.get("error"),
            }
        )
    return rows


def _job_context(request: Request, job_id: str, who: Principal = OPEN) -> dict[str, Any] | None:
    desk = _desk(request)
    st = desk.status(job_id, who)
    if st is None:  # no such job, or another user's: as if it did not exist
        return None
    ctx: dict[str, Any] = {
        "job": st,
        "terminal": st["state"] in TERMINAL,
        "rows": [],
        "base": f"/v1/jobs/{job_id}",
        "options": option_items(st.get("options") or {}),
        "discovery": ScanOptions.stored(st.get("options")).discovery,
    }
    if ctx["terminal"]:
        meta = desk.store.meta(job_id)
        recs = desk.store.results(job_id, meta) if meta else {}
        opts = ScanOptions.stored((meta or {}).get("options"))
        cl = opts.confidence_level
        ctx.update(
            rows=_rows(recs, opts),
            n_results=len(recs),
            truncated=len(recs) > MAX_TABLE_ROWS,
            labels=(meta or {}).get("labels") or [f"x{i}" for i in range(st["grid_dim"])],
            has_plot=(st["grid_dim"] in (1, 2) and any(r.get("CLs_obs") is not None for r in recs.values()))
            or (
                st["grid_dim"] == 0 and any((r.get("upper_limit") or {}).get("obs") is not None for r in recs.values())
            ),
            limits=any(r.get("upper_limit") for r in recs.values()),
            cl=cl,
            toys=opts.calculator == "toybased",
        )
    return ctx


def option_items(opts: dict[str, Any]) -> list[tuple[str, str]]:
    """The options a job ran with, as (name, value) for the job page and the job list."""
    ms = opts.get("modifier_settings", "atlas")
    items = [
        ("test statistic", str(opts.get("test_stat", "qtilde"))),
        ("POI value tested", "-" if opts.get("test_stat") == "q0" else f"{opts.get('poi_test', 1.0):g}"),
        ("confidence level", f"{100 * float(opts.get('confidence_level', 0.95)):g}%"),
        ("upper limits", "yes" if opts.get("limits") else "no"),
        ("interpolation", ms if isinstance(ms, str) else json.dumps(ms)),
        (
            "calculator",
            "asymptotic"
            if opts.get("calculator") != "toybased"
            else f"toys ({int(opts.get('n_toys', 1000)):,} per distribution, seed {int(opts.get('seed', 0))})",
        ),
    ]
    if opts.get("measurement"):
        items.append(("measurement", str(opts["measurement"])))
    return items


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    """The signed-in user's jobs, newest first, so a closed tab does not lose one."""
    who = viewer(request)
    jobs = _desk(request).jobs(who, 200)
    rows = [{"job": st, "options": options_text(st.get("options") or {})} for st in jobs]
    return _page(request, "jobs.html", {"rows": rows})


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    ctx = _job_context(request, job_id, viewer(request))
    if ctx is None:
        return _page(request, "missing.html", {"job_id": job_id}, 404)
    return _page(request, "job.html", ctx)
