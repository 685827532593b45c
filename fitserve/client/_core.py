"""What the sync and async clients share: requests, error mapping, retries, waiting, result shaping.

The clients only differ in how they send a request and sleep.  Everything an
endpoint needs is described once, as a :class:`Call` (method, path, body and
``parse``, which turns the response into the value the caller gets), and the
job and client methods that are one call each live in :class:`JobMethods` and
:class:`ClientMethods`: they return ``client._request(call)``, which is the
value itself for :class:`~fitserve.client.Client` and an awaitable for
:class:`~fitserve.client.AsyncClient`.

This module imports httpx only (no JAX, no pyhf, no pandas until asked for a DataFrame).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import httpx

from fitserve import __version__
from fitserve.client.errors import (
    BadInput,
    Conflict,
    FitserveError,
    JobFailed,
    JobTimeout,
    NotFound,
    ServerUnavailable,
    Unauthorised,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas

FINAL_STATES = frozenset({"done", "failed", "cancelled"})
API = "/v1"
PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
RESULT_FORMATS = {".json": "json", ".csv": "csv"}
USER_AGENT = f"fitserve-client/{__version__}"


# ---------------------------------------------------------------------------- inputs
def _load_file(path: str | os.PathLike[str], what: str) -> tuple[str, bytes]:
    p = Path(path).expanduser()
    try:
        return p.name, p.read_bytes()
    except FileNotFoundError:
        raise BadInput("file not found", where=f"{what} {str(p)!r}") from None
    except OSError as exc:
        raise BadInput(f"cannot read the file: {exc.strerror or exc}", where=f"{what} {str(p)!r}") from None


def as_spec(obj: Any, what: str) -> dict[str, Any] | tuple[str, bytes] | None:
    """A workspace/patchset argument as a JSON-able dict, or ``(file name, bytes)`` for a file path.

    Accepts a dict (or a ``pyhf.Workspace``, which is one), a path (``str`` or
    ``Path``), JSON text, or a ``pyhf.PatchSet`` (anything with ``.patches`` of
    objects with ``.metadata`` and ``.patch``).  Files are sent as they are;
    the server parses and validates them, and its message names the part.
    """
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (bytes, bytearray)):
        return f"{what}.json", bytes(obj)
    if isinstance(obj, str) and obj.lstrip().startswith("{"):
        return f"{what}.json", obj.encode()
    if isinstance(obj, (str, os.PathLike)):
        return _load_file(obj, what)
    patches = getattr(obj, "patches", None)
    if patches is not None and hasattr(obj, "metadata"):  # pyhf.PatchSet
        return {
            "metadata": dict(obj.metadata),
            "version": getattr(obj, "version", "1.0.0"),
            "patches": [{"metadata": dict(p.metadata), "patch": list(p.patch)} for p in patches],
        }
    raise TypeError(f"{what}: expected a dict, a file path, JSON text or a pyhf object, not {type(obj).__name__}")


def submit_request(workspace: Any, patchset: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """httpx keyword arguments for ``POST /v1/jobs``: JSON if all inputs are objects, else multipart with the files."""
    ws, ps = as_spec(workspace, "workspace"), as_spec(patchset, "patchset")
    if ws is None:
        raise BadInput("missing: a background-only (or full) pyhf workspace is required", where="workspace")
    opts = {k: v for k, v in options.items() if v is not None}
    if not isinstance(ws, tuple) and not isinstance(ps, tuple):
        body: dict[str, Any] = {"workspace": ws, "options": opts}
        if ps is not None:
            body["patchset"] = ps
        return {"json": body}
    files = {}
    for name, spec in (("workspace", ws), ("patchset", ps)):
        if spec is None:
            continue
        fname, data = spec if isinstance(spec, tuple) else (f"{name}.json", json.dumps(spec).encode())
        files[name] = (fname, data, "application/json")
    return {"files": files, "data": {"options": json.dumps(opts)}}


# ---------------------------------------------------------------------------- calls
@dataclass(frozen=True)
class Call:
    """One HTTP request and how to turn its (successful) response into a value."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    body: dict[str, Any] = field(default_factory=dict)  # json= / files= / data= for httpx
    parse: Callable[[httpx.Response], Any] = lambda r: r.json()

    def kwargs(self) -> dict[str, Any]:
        return {"params": self.params, **self.body}


# ---------------------------------------------------------------------------- errors
_BY_STATUS: dict[int, type[FitserveError]] = {
    400: BadInput,
    413: BadInput,
    415: BadInput,
    422: BadInput,
    401: Unauthorised,
    403: Unauthorised,
    404: NotFound,
    409: Conflict,
    502: ServerUnavailable,
    503: ServerUnavailable,
    504: ServerUnavailable,
}


def _detail(resp: httpx.Response) -> tuple[str, str | None]:
    """The server's ``{"detail": {"message", "where"}}``; also FastAPI's own forms (string, list of errors)."""
    try:
        body = resp.json()
    except (ValueError, UnicodeDecodeError):
        text = resp.text.strip()
        return (text[:500] or resp.reason_phrase or f"HTTP {resp.status_code}"), None
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict) and "message" in detail:
        return str(detail["message"]), detail.get("where")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # FastAPI request validation
        err = detail[0]
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        return str(err.get("msg", detail)), loc or None
    if isinstance(detail, str):
        return detail, None
    if isinstance(body, dict) and body.get("status") == "down":  # /v1/health when Redis is down
        return f"service is down: {body.get('redis', {}).get('error', 'job store unreachable')}", "redis"
    return json.dumps(detail)[:500], None


def error_from_response(resp: httpx.Response) -> FitserveError:
    message, where = _detail(resp)
    cls = _BY_STATUS.get(resp.status_code) or (BadInput if 400 <= resp.status_code < 500 else FitserveError)
    if cls is FitserveError:
        message = f"HTTP {resp.status_code} from the server: {message}"
    return cls(message, where=where, status=resp.status_code)


def error_from_transport(exc: httpx.TransportError, url: str) -> FitserveError:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return ServerUnavailable(f"cannot connect to the fitserve server ({reason})", where=url)
    if isinstance(exc, httpx.TimeoutException):
        return ServerUnavailable(f"the server did not answer in time ({type(exc).__name__})", where=url)
    return ServerUnavailable(f"connection to the server failed ({type(exc).__name__}: {reason})", where=url)


def checked(resp: httpx.Response, call: Call) -> Any:
    if resp.is_success:
        return call.parse(resp)
    raise error_from_response(resp)


# ---------------------------------------------------------------------------- retries
@dataclass(frozen=True)
class RetryPolicy:
    """Retry a request answered 503 (the server is up but its job store is not), with exponential backoff.

    Connection errors are retried by the httpx transport (``connect_retries``,
    its own exponential backoff): a request that could not connect was never
    sent, so that is safe for every method.  Nothing else is retried by a
    single request.

    ``wait_grace``: ``job.wait()`` polls a status, which is safe to repeat, so it
    goes on through a server that is down or restarting (connection refused or
    dropped, 502/503/504 after the retries above) for up to this many seconds
    in a row, with backoff, before it raises
    :class:`~fitserve.client.errors.ServerUnavailable`.
    """

    retries: int = 4  # 503 answers retried this often (5 attempts in all)
    backoff: float = 0.5  # first delay, doubled each time, with jitter
    max_delay: float = 8.0
    connect_retries: int = 3
    wait_grace: float = 60.0

    def delay(self, resp: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying ``resp`` (the answer to try ``attempt``, from 0), or None: don't retry."""
        if resp.status_code != 503 or attempt >= self.retries:
            return None
        after = _retry_after(resp.headers.get("retry-after"))
        if after is not None:
            return min(after, self.max_delay)
        return min(self.backoff * 2**attempt, self.max_delay) * random.uniform(0.8, 1.2)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def http_options(url: str, token: str | None, timeout: float | httpx.Timeout) -> dict[str, Any]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if not isinstance(timeout, httpx.Timeout):
        timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
    return {"base_url": url, "headers": headers, "timeout": timeout}


# ---------------------------------------------------------------------------- results
EXP_SUFFIX = ("m2", "m1", "", "p1", "p2")  # CLs_exp[0..4] = -2σ..+2σ, as in the server's CSV


def _exp_names(prefix: str) -> list[str]:
    return [f"{prefix}_{s}" if s else prefix for s in EXP_SUFFIX]


def result_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per hypothesis: name, grid values named by the PatchSet labels, then the record's numbers.

    Column names follow the server's CSV (``CLs_exp_m2`` … ``CLs_exp_p2``,
    ``upper_limit_obs``, ``upper_limit_exp_m2`` …).
    """
    labels = list(doc.get("labels") or [])
    rows = []
    for name, rec in (doc.get("results") or {}).items():
        row: dict[str, Any] = {"name": name}
        for i, v in enumerate(rec.get("values") or []):
            row[labels[i] if i < len(labels) else f"value_{i}"] = v
        for key, value in rec.items():
            if key == "values":
                continue
            if key == "CLs_exp":
                row.update(zip(_exp_names("CLs_exp"), value or [None] * 5))
            elif key == "upper_limit":
                ul = value or {}
                row["upper_limit_obs"] = ul.get("obs")
                row.update(zip(_exp_names("upper_limit_exp"), ul.get("exp") or [None] * 5))
            elif not isinstance(value, (list, dict)):
                row[key] = value
        rows.append(row)
    return rows


class Results(dict):
    """The job's results document (a plain dict, as the server sends it) with a few conveniences.

    Keys: ``results`` ({hypothesis name: record}, records in the schema of
    ``fitserve scan``), ``options``, ``labels``, ``state``, ``complete``
    (False while the job runs: the results are partial), ``progress``, ``counts``, ``job``.
    """

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        return self["results"]

    @property
    def complete(self) -> bool:
        return bool(self.get("complete"))

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per hypothesis (see :func:`result_rows`)."""
        return result_rows(self)

    def to_dataframe(self) -> pandas.DataFrame:
        """A pandas DataFrame, one row per hypothesis, indexed by name (needs ``pip install 'fitserve[pandas]'``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe() needs pandas: pip install 'fitserve[pandas]'") from None
        rows = self.rows()
        return pd.DataFrame(rows, columns=list(rows[0]) if rows else ["name"]).set_index("name")


def _write(path: str | os.PathLike[str], data: bytes) -> Path:
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def suffix_format(path: str | os.PathLike[str] | None, formats: Mapping[str, str], default: str, what: str) -> str:
    if path is None:
        return default
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise BadInput(
            f"cannot tell the format from the suffix {suffix or '(none)'!r}: use {', '.join(formats)}",
            where=f"{what} {str(path)!r}",
        )
    return formats[suffix]


# ---------------------------------------------------------------------------- waiting
class Waiter:
    """The logic of ``job.wait``: progress display, deadline and poll interval; the clients only poll and sleep.

    ``progress``: False (nothing), True (a tqdm bar on stderr counting finished
    hypotheses), a callable (called with every status polled), or a tqdm-like
    object with ``total``, ``n``, ``refresh()`` (you close it).
    """

    #: first pause after a poll that found the server unavailable, doubled (with jitter) up to the max
    OUTAGE_BACKOFF = 0.5
    OUTAGE_MAX_DELAY = 5.0

    def __init__(
        self, job_id: str, timeout: float | None, progress: Any, poll_interval: float, grace: float = 60.0
    ) -> None:
        self.job_id = job_id
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.poll_interval = max(0.05, poll_interval)
        self.interval = min(0.25, self.poll_interval)  # poll fast at first, then every poll_interval
        self.progress = progress
        self._bar: Any = None
        self._own_bar = progress is True
        self.grace = max(0.0, grace)
        self._down_since: float | None = None
        self._failures = 0

    def _show(self, status: Mapping[str, Any]) -> None:
        if not self.progress:
            return
        if callable(self.progress) and not hasattr(self.progress, "refresh"):
            self.progress(status)
            return
        prog = status.get("progress", {})
        if self._bar is None:
            if self._own_bar:
                from tqdm.auto import tqdm

                # smoothing=0: the average rate since the start; hypotheses land a chunk at a time, and
                # tqdm's default (a burst over the last update) read millions of hyp/s
                self._bar = tqdm(
                    total=prog.get("total", 0),
                    unit="hyp",
                    desc=f"job {self.job_id[:12]}",
                    file=sys.stderr,
                    dynamic_ncols=True,
                    leave=True,
                    smoothing=0,
                )
            else:
                self._bar = self.progress
                self._bar.total = prog.get("total", 0)
        counts = status.get("counts", {})
        post = status.get("state", "")
        if counts.get("cached"):
            post += f", {counts['cached']} cached"
        if counts.get("errors"):
            post += f", {counts['errors']} errors"
        if hasattr(self._bar, "set_postfix_str"):
            self._bar.set_postfix_str(post, refresh=False)
        self._bar.n = prog.get("done", 0)
        self._bar.refresh()

    def unavailable(self, exc: ServerUnavailable) -> float:
        """Seconds to sleep before polling again after ``exc``; re-raises it once the server has been
        unavailable for ``grace`` seconds in a row, or when ``timeout`` has run out."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self._failures += 1
        down = now - self._down_since
        left = self.grace - down
        if self.deadline is not None:
            left = min(left, self.deadline - now)
        if left <= 0:
            raise exc
        delay = min(self.OUTAGE_BACKOFF * 2 ** (self._failures - 1), self.OUTAGE_MAX_DELAY) * random.uniform(0.8, 1.2)
        return min(delay, left)

    def step(self, status: Mapping[str, Any]) -> float | None:
        """Seconds to sleep before the next poll, or None when the job has finished (raises JobFailed, JobTimeout)."""
        if self._down_since is not None:  # the server answers again
            self._down_since, self._failures = None, 0
        self._show(status)
        state = status.get("state")
        if state in FINAL_STATES:
            if state == "failed":
                errs = status.get("errors") or []
                first = errs[0] if errs else {}
                msg = first.get("error") or "the job failed"
                where = f"hypothesis {first['hypothesis']!r}" if first.get("hypothesis") else f"job {self.job_id}"
                raise JobFailed(msg, where=where)
            return None
        delay = self.interval
        self.interval = min(self.interval * 1.5, self.poll_interval)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                prog = status.get("progress", {})
                raise JobTimeout(
                    f"not finished after {self.timeout:g} s ({state}, {prog.get('done', 0)}/{prog.get('total', '?')} "
                    "hypotheses); the job keeps running",
                    where=f"job {self.job_id}",
                )
            delay = min(delay, left)
        return delay

    def close(self) -> None:
        if self._own_bar and self._bar is not None:
            self._bar.close()


# ---------------------------------------------------------------------------- shared methods
class JobMethods:
    """A handle on one job.  Methods that are one request each (sync: values; async: awaitables)."""

    _client: Any

    def __init__(self, client: Any, job_id: str, info: dict[str, Any] | None = None) -> None:
        self._client = client
        self.id = job_id
        #: the last status (or submission answer) seen for this job
        self.info: dict[str, Any] = dict(info or {})

    def __repr__(self) -> str:
        state = self.info.get("state")
        return f"<{type(self).__name__} {self.id}{' ' + state if state else ''}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobMethods) and other.id == self.id and other._client is self._client

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def url(self) -> str:
        return f"{self._client.url}{API}/jobs/{self.id}"

    def _remember(self, resp: httpx.Response) -> dict[str, Any]:
        self.info = resp.json()
        return self.info

    def status(self) -> Any:
        """State (queued, running, done, failed, cancelled), ``progress`` {done, total, fraction}, ``counts``, ``timings``, ``errors``."""
        return self._client._request(Call("GET", f"{API}/jobs/{self.id}", parse=self._remember))

    def results(self) -> Any:
        """The results document as :class:`Results` (a dict; ``.to_dataframe()`` with pandas).  Partial while running."""
        return self._client._request(Call("GET", f"{API}/jobs/{self.id}/results", parse=lambda r: Results(r.json())))

    def dataframe(self) -> Any:
        """The results as a pandas DataFrame, one row per hypothesis (needs pandas)."""
        return self._client._request(
            Call("GET", f"{API}/jobs/{self.id}/results", parse=lambda r: Results(r.json()).to_dataframe())
        )

    def csv(self) -> Any:
        """The results as CSV text (the server's: one row per hypothesis, grid values in label-named columns)."""
        return self._client._request(
            Call("GET", f"{API}/jobs/{self.id}/results", params={"format": "csv"}, parse=lambda r: r.text)
        )

    def save_results(self, path: str | os.PathLike[str]) -> Any:
        """Write the results to ``path``: ``.json`` (the document) or ``.csv``; returns the Path."""
        fmt = suffix_format(path, RESULT_FORMATS, "json", "output")
        return self._client._request(
            Call(
                "GET",
                f"{API}/jobs/{self.id}/results",
                params={"format": fmt},
                parse=lambda r: _write(path, _pretty(r) if fmt == "json" else r.content),
            )
        )

    def contours(self) -> Any:
        """2-D grids: CLs = 1 - CL contours (``contours`` {observed, expected, expected_m1/p1/m2/p2: [[x, y], ...] lines});
        1-D grids: CLs curves and crossings."""
        return self._client._request(Call("GET", f"{API}/jobs/{self.id}/contours"))

    def plot(self, path: str | os.PathLike[str] | None = None, format: str | None = None) -> Any:
        """The exclusion plot: written to ``path`` (``.png`` or ``.svg``; returns the Path), or its bytes if no path."""
        fmt = format or suffix_format(path, PLOT_FORMATS, "png", "plot")
        if fmt not in PLOT_FORMATS.values():
            raise BadInput(f"unknown plot format {fmt!r}: use png or svg", where="format")
        parse = (lambda r: r.content) if path is None else (lambda r: _write(path, r.content))
        return self._client._request(Call("GET", f"{API}/jobs/{self.id}/plot.{fmt}", parse=parse))

    def toys_plot(self, patch: str, path: str | os.PathLike[str] | None = None) -> Any:
        """Toy-based jobs: the two test-statistic distributions of hypothesis ``patch`` with the observed value,
        as PNG: written to ``path`` (returns the Path), or its bytes if no path."""
        from urllib.parse import quote

        parse = (lambda r: r.content) if path is None else (lambda r: _write(path, r.content))
        return self._client._request(Call("GET", f"{API}/jobs/{self.id}/toys/{quote(patch, safe='')}.png", parse=parse))

    def cancel(self) -> Any:
        """Cancel the job (chunks not started are skipped); returns its status.  Raises Conflict if it has finished."""
        return self._client._request(Call("DELETE", f"{API}/jobs/{self.id}", parse=self._remember))


def _pretty(resp: httpx.Response) -> bytes:
    return (json.dumps(resp.json(), indent=1) + "\n").encode()


class ClientMethods:
    """Client methods that are one request each (sync: values; async: awaitables)."""

    _job_cls: type[JobMethods]
    url: str

    def submit(self, workspace: Any, patchset: Any = None, **options: Any) -> Any:
        """Submit a CLs scan; returns a Job at once (``job.wait()`` to wait for it).

        ``workspace``: the background-only (or one full) workspace; ``patchset``:
        the pyhf PatchSet, one patch per signal hypothesis (None: fit the full
        workspace).  Each as a dict, a file path, or a ``pyhf.Workspace`` /
        ``pyhf.PatchSet``.  ``options``: ``test_stat`` (qtilde, q, q0),
        ``poi_test``, ``limits``, ``cls_only``, ``confidence_level``,
        ``modifier_settings`` (atlas, pyhf or a mapping), ``measurement``,
        ``patches`` (a subset of patch names), ``calculator`` (``"asymptotics"``
        or ``"toybased"``) with ``n_toys`` and ``seed``.  Bad input raises
        :class:`~fitserve.client.errors.BadInput` with the server's message.
        """
        call = Call(
            "POST",
            f"{API}/jobs",
            body=submit_request(workspace, patchset, options),
            parse=lambda r: self._job_cls(self, r.json()["id"], r.json()),
        )
        return self._request(call)  # type: ignore[attr-defined]

    def job(self, job_id: str) -> JobMethods:
        """A handle on an existing job (no request is made)."""
        return self._job_cls(self, job_id)

    def jobs(self, limit: int = 100) -> Any:
        """Recent jobs, newest first, as Job handles (``job.info`` holds each one's status)."""
        return self._request(
            Call(
                "GET",
                f"{API}/jobs",
                params={"limit": limit},  # type: ignore[attr-defined]
                parse=lambda r: [self._job_cls(self, j["id"], j) for j in r.json()["jobs"]],
            )
        )

    def health(self) -> Any:
        """``status`` (ok, degraded: no worker), Redis, live workers, queue depth.  ServerUnavailable if down."""
        return self._request(Call("GET", f"{API}/health"))  # type: ignore[attr-defined]
