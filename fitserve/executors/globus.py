"""Globus Compute executor: chunks run on a Globus Compute endpoint (an HPC centre, a cluster).

The Globus Compute cloud refuses a task submission over 10 MB, a *batch
request* over 10 MB (``TASK_PAYLOAD_TOO_LARGE``; the SDK's ``Executor``
coalesces up to ``batch_size`` tasks into one request) and a result over 10 MB
(``MaxResultSizeExceeded``), and allows 20 requests per 10 s.  A published
pallet (1Lbb: 13.4 MB of patches, a 1.2 MB background) sent the naive way
breaks the first two, so this executor keeps every request under the limits
by construction:

* the task is :func:`fitserve.executors.globus_task.run_globus_task`, sent by
  reference, with one *request* mapping (protocol in that module);
* the background workspace travels **once per endpoint**, by content hash: the
  first task of a workspace carries it, later ones only its hash; a worker
  that has not cached it answers ``need_workspace`` and only that task is sent
  again with the workspace;
* patches travel zlib-compressed, and a chunk is split into as many tasks as
  needed so that each task's serialized payload (measured with the SDK's own
  ``ComputeSerializer``, as ``Batch.add`` packs it) fits ``(limit − batch
  envelope) / batch_size``; so a full batch request stays under the limit;
* a task that fits one request but not that share (a large background sent
  inline) goes through a second SDK executor with ``batch_size=1``;
* a hypothesis that cannot fit even one request alone is marked failed
  before anything is submitted, with a :class:`PayloadTooLarge` message naming
  the sizes; the rest of its chunk is sent;
* results travel compressed; the task refuses to return more than half the
  result limit, and patches per task are capped so that records fit;
* requests (batch submissions and function registrations) go through a
  client-side sliding-window limiter (default 18 per 10 s, under the
  service's 20);
* the task first checks that the worker's fitserve, engine and Python match
  the client's and fails with a message naming both (:class:`VersionMismatch`).

Authentication is the SDK's normal login flow: the first ``Client()`` on a
machine opens the Globus Auth login and keeps tokens in
``~/.globus_compute/storage.db``; unattended workers use a client identity
(``GLOBUS_COMPUTE_CLIENT_ID`` / ``GLOBUS_COMPUTE_CLIENT_SECRET``).

The endpoint id comes, first found, from the ``endpoint_id`` argument, the site
file's ``globus.endpoint_id`` or ``FITSERVE_GLOBUS_ENDPOINT_ID``; a multi-user
endpoint's template variables from ``globus.user_endpoint_config`` (or
``FITSERVE_GLOBUS_USER_ENDPOINT_CONFIG``, JSON).

Needs ``pip install 'fitserve[globus]'`` (``globus-compute-sdk``).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
import zlib
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fitserve.engine import error_record, patch_values
from fitserve.executors.base import Executor
from fitserve.executors.globus_task import PROTOCOL, run_globus_task, versions, workspace_sha

ENV_ENDPOINT_ID = "FITSERVE_GLOBUS_ENDPOINT_ID"
ENV_USER_ENDPOINT_CONFIG = "FITSERVE_GLOBUS_USER_ENDPOINT_CONFIG"
DEFAULT_CAPACITY = 16
DEFAULT_BATCH_SIZE = 16
#: what one compressed record may take in a reply (records are ~1 kB of JSON before compression)
RECORD_BYTES_BOUND = 2048
#: room kept in every request for what the SDK adds around the tasks (task group, runtime, keys)
ENVELOPE_SLACK = 4096


@dataclass(frozen=True)
class CloudLimits:
    """The Globus Compute service's documented limits (docs/limits.rst), as fitserve keeps to them."""

    max_request_bytes: int = 10_000_000  # one task submission or one batch request
    max_result_bytes: int = 10_000_000  # one task's serialized result
    max_requests: int = 20  # requests per window ...
    window_s: float = 10.0  # ... of this many seconds

    @classmethod
    def from_site(cls, globus: dict[str, Any]) -> CloudLimits:
        keys = {"max_request_bytes", "max_result_bytes", "max_requests", "window_s"}
        return cls(**{k: globus[k] for k in keys if globus.get(k) is not None})


class PayloadTooLarge(ValueError):
    """A hypothesis whose task cannot fit one Globus Compute request, found before submission."""


class VersionMismatch(RuntimeError):
    """The endpoint's worker runs a different fitserve, engine or Python than this client."""


class RequestLimiter:
    """At most ``max_requests`` calls in any ``window_s`` seconds (a sliding window); callers wait."""

    def __init__(self, max_requests: int, window_s: float) -> None:
        self.max_requests = max(1, int(max_requests))
        self.window_s = float(window_s)
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.calls = 0
        self.waited_s = 0.0

    def acquire(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                while self._times and now - self._times[0] >= self.window_s:
                    self._times.popleft()
                if len(self._times) < self.max_requests:
                    self._times.append(now)
                    self.calls += 1
                    return
                delay = self.window_s - (now - self._times[0]) + 0.01
                self.waited_s += delay
                time.sleep(delay)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def limited(*args: Any, **kwargs: Any) -> Any:
            self.acquire()
            return fn(*args, **kwargs)

        limited._fitserve_limited = True  # type: ignore[attr-defined]
        return limited


def resolve_endpoint_id(endpoint_id: str | None, site_data: dict[str, Any], source: str) -> str:
    """The endpoint id from the argument, the site file, or the environment; checked to be a UUID."""
    from fitserve.executors.sites import SiteError

    globus = site_data.get("globus") or {}
    value = endpoint_id or globus.get("endpoint_id") or os.environ.get(ENV_ENDPOINT_ID)
    if not value:
        raise SiteError(
            source, "globus.endpoint_id", f"missing: give the endpoint id in the site file or {ENV_ENDPOINT_ID}"
        )
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        where = "globus.endpoint_id" if not endpoint_id and globus.get("endpoint_id") else "endpoint_id"
        raise SiteError(source, where, f"not a UUID: {value!r}") from None


def resolve_user_endpoint_config(
    value: dict[str, Any] | None, globus: dict[str, Any], source: str
) -> dict[str, Any] | None:
    """Template variables for a multi-user endpoint: argument, then site file, then the environment (JSON)."""
    from fitserve.executors.sites import SiteError

    if value is None:
        value = globus.get("user_endpoint_config")
    if value is None and os.environ.get(ENV_USER_ENDPOINT_CONFIG):
        try:
            value = json.loads(os.environ[ENV_USER_ENDPOINT_CONFIG])
        except json.JSONDecodeError as exc:
            raise SiteError(source, ENV_USER_ENDPOINT_CONFIG, f"not JSON: {exc}") from None
    if value is not None and not isinstance(value, dict):
        raise SiteError(source, "globus.user_endpoint_config", f"expected a mapping, got {type(value).__name__}")
    return value or None


class TaskSizer:
    """Exact sizes of tasks and batch requests as the SDK will send them.

    A task's payload is the string ``Batch.add`` builds (``pack_buffers([serialize(args),
    serialize(kwargs)])``); inside the request body it is a JSON string.  The envelope is
    the JSON of an empty ``Batch.prepare()`` with this executor's settings.
    """

    def __init__(self, user_endpoint_config: dict[str, Any] | None) -> None:
        from globus_compute_sdk.sdk.batch import Batch, create_user_runtime
        from globus_compute_sdk.serialize import ComputeSerializer

        self._serde = ComputeSerializer()
        batch = Batch(uuid.uuid4(), None, user_endpoint_config, True, user_runtime=create_user_runtime())
        batch.tasks[uuid.uuid4()] = []
        self.envelope = len(json.dumps(batch.prepare())) + ENVELOPE_SLACK

    def task_bytes(self, request: dict[str, Any]) -> int:
        payload = self._serde.pack_buffers([self._serde.serialize((request,)), self._serde.serialize({})])
        return len(json.dumps(payload)) + 2  # the ", " between tasks of a batch


@dataclass
class GlobusStats:
    """What went over the wire, for the health endpoint and the docs."""

    tasks: int = 0
    largest_task_bytes: int = 0
    workspace_sent: int = 0
    workspace_misses: int = 0


class _Chunk:
    """The chunk's future, resolved when all of its tasks have answered."""

    def __init__(self, parts: int) -> None:
        self.future: Future = Future()
        self.records: dict[str, Any] = {}
        self.pending = parts
        self.lock = threading.Lock()
        self.subs: list[Future] = []
        self.future.add_done_callback(self._maybe_cancel)

    def _maybe_cancel(self, fut: Future) -> None:
        if fut.cancelled():
            for sub in list(self.subs):
                sub.cancel()

    def add(self, records: dict[str, Any]) -> None:
        with self.lock:
            self.records.update(records)
            self.pending -= 1
            done = self.pending == 0
        if done:
            self._settle(lambda: self.future.set_result(self.records))

    def fail(self, exc: BaseException) -> None:
        self._settle(lambda: self.future.set_exception(exc))

    def _settle(self, action: Callable[[], None]) -> None:
        try:
            if not self.future.done():
                action()
        except InvalidStateError:  # cancelled or failed meanwhile
            pass


class GlobusComputeExecutor(Executor):
    """Submits fitserve's task to a Globus Compute endpoint within the service's limits.

    ``sdk_factory`` builds the SDK executors (default ``globus_compute_sdk.Executor``;
    called with ``endpoint_id``, ``client``, ``batch_size``, ``user_endpoint_config``,
    ``label``), e.g. a stand-in for the cloud service in tests; ``sdk_executor``
    replaces both lanes with one object that has ``submit(fn, *args) -> Future``
    and ``shutdown``.  ``client`` is the SDK ``Client`` (default: ``Client()``,
    which logs in); its ``batch_run`` and ``register_function`` are rate-limited.
    """

    name = "globus"

    def __init__(
        self,
        endpoint_id: str | None = None,
        site: str | Path | dict[str, Any] | None = None,
        capacity: int | None = None,
        client: Any = None,
        sdk_executor: Any = None,
        sdk_factory: Callable[..., Any] | None = None,
        user_endpoint_config: dict[str, Any] | None = None,
        batch_size: int | None = None,
        limits: CloudLimits | None = None,
        **_ignored: Any,
    ) -> None:
        from fitserve.executors.sites import load_site

        sdk_class = self._sdk_class()  # a clear error first if the SDK is missing (the sizes need its serializer)
        source = str(site) if site is not None and not isinstance(site, dict) else "settings"
        data = load_site(site) if site is not None else {}
        globus = dict(data.get("globus") or {})
        self._globus = globus
        self.endpoint_id = resolve_endpoint_id(endpoint_id, data, source)
        self.site = str(site) if site is not None and not isinstance(site, dict) else None
        self._capacity = int(capacity or globus.get("capacity") or data.get("capacity") or DEFAULT_CAPACITY)
        self.limits = limits or CloudLimits.from_site(globus)
        self.user_endpoint_config = resolve_user_endpoint_config(user_endpoint_config, globus, source)
        self.batch_size = max(1, int(batch_size or globus.get("batch_size") or DEFAULT_BATCH_SIZE))
        self.expect = {k: v for k, v in versions().items() if k in ("fitserve", "engine", "python")}
        self.stats = GlobusStats()
        self._sizer = TaskSizer(self.user_endpoint_config)
        room = self.limits.max_request_bytes - self._sizer.envelope
        #: a task's share of a full batch request, and the most one request alone can carry
        self.task_budget = room // self.batch_size
        self.single_budget = room
        self.max_patches_per_task = max(1, self.limits.max_result_bytes // 2 // RECORD_BYTES_BOUND)
        self._workspaces: dict[str, bytes] = {}  # sha -> bytes, for tasks sent again on a miss
        self._sent: set[str] = set()
        self._lock = threading.Lock()
        self.limiter = RequestLimiter(
            min(self.limits.max_requests, int(globus.get("client_max_requests") or 18)), self.limits.window_s
        )
        self._closed = False
        if sdk_executor is not None:
            self._sdk = self._single = sdk_executor
            self._factory = None
        else:
            self._factory = sdk_factory or sdk_class
            self._client = self._limited(client)
            self._sdk = self._new_sdk(self.batch_size)
            self._single = None

    # construction ----------------------------------------------------------------
    @staticmethod
    def _sdk_class() -> Callable[..., Any]:
        try:
            from globus_compute_sdk import Executor as SDKExecutor
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise RuntimeError(
                "the globus executor needs the Globus Compute SDK: pip install 'fitserve[globus]'"
            ) from exc
        return SDKExecutor

    def _limited(self, client: Any) -> Any:
        if client is None:
            from globus_compute_sdk import Client

            client = Client()
        for name in ("batch_run", "register_function"):
            fn = getattr(client, name, None)
            if fn is not None and not getattr(fn, "_fitserve_limited", False):
                setattr(client, name, self.limiter.wrap(fn))
        return client

    def _new_sdk(self, batch_size: int) -> Any:
        kwargs: dict[str, Any] = {
            "endpoint_id": self.endpoint_id,
            "label": f"fitserve-bs{batch_size}",
            "batch_size": batch_size,
            "client": self._client,
        }
        if self.user_endpoint_config:
            kwargs["user_endpoint_config"] = self.user_endpoint_config
        for key in ("resource_specification", "amqp_port"):
            if self._globus.get(key) is not None:
                kwargs[key] = self._globus[key]
        return self._factory(**kwargs)

    def _single_lane(self) -> Any:
        with self._lock:
            if self._single is None:
                self._single = self._new_sdk(1)
            return self._single

    @property
    def capacity(self) -> int:
        return self._capacity

    # planning --------------------------------------------------------------------
    def _request(
        self, sha: str, ws: bytes | None, patches: list[bytes] | None, options: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL,
            "expect": self.expect,
            "ws_sha": sha,
            "ws": ws,
            "patches": patches,
            "options": options,
            "max_result_bytes": self.limits.max_result_bytes,
        }

    def plan(
        self,
        sha: str,
        ws: bytes | None,
        patches: list[bytes] | None,
        names: list[str],
        options: dict[str, Any],
        refused: dict[int, str] | None = None,
    ) -> list[tuple[dict[str, Any], int]]:
        """Split one chunk into ``(request, task_bytes)``; one of them carries ``ws`` if given.

        Tasks are grouped to fit :attr:`task_budget` (so a batch of ``batch_size`` fits one
        request); the workspace rides with the first task it fits with.  A task that cannot
        fit its share goes to the single lane if it fits :attr:`single_budget`.  A patch that
        cannot fit one request even alone is put into ``refused`` (index -> message) or, if
        ``refused`` is None, raises :class:`PayloadTooLarge`; so does a workspace that fits
        with no task.
        """
        if patches is None:
            req = self._request(sha, ws, None, options)
            return [(req, self._fit_alone(req, names[:1], ws))]
        out: list[tuple[dict[str, Any], int]] = []
        base = self._sizer.task_bytes(self._request(sha, None, [], options))
        group: list[int] = []
        used = base

        def flush() -> None:
            nonlocal group, used
            if group:
                out.extend(self._exact(sha, patches, names, group, options, refused))
            group, used = [], base

        for i, p in enumerate(patches):
            cost = (len(p) * 4 + 2) // 3 * 78 // 76 + 64  # base64 with a "\n" (JSON "\\n") per 76 characters
            if group and (used + cost > self.task_budget or len(group) >= self.max_patches_per_task):
                flush()
            group.append(i)
            used += cost
        flush()
        if ws is None or not out:
            return out
        for budget in (self.task_budget, self.single_budget):
            for k, (req, _) in enumerate(out):
                with_ws = dict(req, ws=ws)
                size = self._sizer.task_bytes(with_ws)
                if size <= budget:
                    out[k] = (with_ws, size)
                    return out
        smallest = min(self._sizer.task_bytes(dict(r, ws=ws)) for r, _ in out)
        raise PayloadTooLarge(
            f"the background workspace ({len(ws):,} bytes compressed) does not fit one Globus Compute request "
            f"with any task of this chunk (smallest: {smallest:,} bytes, limit {self.limits.max_request_bytes:,} "
            f"less {self._sizer.envelope:,} bytes of envelope): use the parsl executor for this likelihood"
        )

    def _exact(
        self,
        sha: str,
        patches: list[bytes],
        names: list[str],
        idx: list[int],
        options: dict[str, Any],
        refused: dict[int, str] | None,
    ) -> list[tuple[dict[str, Any], int]]:
        req = self._request(sha, None, [patches[i] for i in idx], options)
        size = self._sizer.task_bytes(req)
        if size <= self.task_budget:
            return [(req, size)]
        if len(idx) == 1:
            try:
                return [(req, self._fit_alone(req, [names[idx[0]]], None, size))]
            except PayloadTooLarge as exc:
                if refused is None:
                    raise
                refused[idx[0]] = str(exc)
                return []
        half = len(idx) // 2
        return self._exact(sha, patches, names, idx[:half], options, refused) + self._exact(
            sha, patches, names, idx[half:], options, refused
        )

    def _fit_alone(self, req: dict[str, Any], names: list[str], ws: bytes | None, size: int | None = None) -> int:
        size = size if size is not None else self._sizer.task_bytes(req)
        if size > self.single_budget:
            what = f"hypothesis {names[0]!r}" if names and names[0] else "the workspace"
            ws_part = f" (with its background workspace inline, {len(ws):,} bytes compressed)" if ws is not None else ""
            raise PayloadTooLarge(
                f"{what}: one task is {size:,} bytes as the Globus Compute SDK serializes it{ws_part}, over the "
                f"{self.limits.max_request_bytes:,}-byte request limit of the Globus Compute service (less "
                f"{self._sizer.envelope:,} bytes of request envelope); it cannot be sent to an endpoint: "
                f"use the parsl executor for this likelihood"
            )
        return size

    # submission ------------------------------------------------------------------
    def submit(
        self, workspace: dict[str, Any] | bytes, patches: Sequence[dict[str, Any]] | None, options: dict[str, Any]
    ) -> Future:
        if isinstance(workspace, dict):
            ws = zlib.compress(json.dumps(workspace, sort_keys=True, separators=(",", ":")).encode())
        else:
            ws = bytes(workspace)
            if ws[:1] in (b"{", b" ", b"\n"):
                ws = zlib.compress(ws)
        sha = workspace_sha(ws)
        plist = list(patches) if patches is not None else None
        names = [p.get("metadata", {}).get("name", "") for p in plist] if plist is not None else [""]
        pz = None if plist is None else [zlib.compress(json.dumps(p, separators=(",", ":")).encode()) for p in plist]
        with self._lock:
            inline = sha not in self._sent
            self._workspaces[sha] = ws
            if len(self._workspaces) > 8:
                self._workspaces.pop(next(iter(self._workspaces)))
        refused: dict[int, str] = {}
        parts = self.plan(sha, ws if inline else None, pz, names, dict(options), refused)  # may raise PayloadTooLarge
        with self._lock:
            if not inline or any(r["ws"] is not None for r, _ in parts):
                self._sent.add(sha)
            if inline and parts:
                self.stats.workspace_sent += 1
        chunk = _Chunk(len(parts))
        chunk.records.update({names[i]: error_record(patch_values(plist[i]), msg) for i, msg in refused.items()})  # type: ignore[index]
        if not parts:
            chunk.future.set_result(chunk.records)
        for req, size in parts:
            self._send(req, size, chunk)
        return chunk.future

    def _send(self, req: dict[str, Any], size: int, chunk: _Chunk) -> None:
        single = size > self.task_budget
        with self._lock:
            self.stats.tasks += 1
            self.stats.largest_task_bytes = max(self.stats.largest_task_bytes, size)
        lane = self._single_lane() if single else self._sdk
        try:
            fut = lane.submit(run_globus_task, req)
        except Exception as exc:  # the SDK executor is shut down or its submitter died
            chunk.fail(exc)
            return
        chunk.subs.append(fut)
        fut.add_done_callback(lambda f: self._on_reply(f, req, chunk))

    def _on_reply(self, fut: Future, req: dict[str, Any], chunk: _Chunk) -> None:
        if fut.cancelled() or chunk.future.done():
            return
        try:
            reply = fut.result()
        except Exception as exc:
            chunk.fail(_explain(exc, self.expect))
            return
        status = reply.get("status") if isinstance(reply, dict) else None
        if status == "ok":
            chunk.add(json.loads(zlib.decompress(reply["records"])))
        elif status == "need_workspace":
            with self._lock:
                self.stats.workspace_misses += 1
                ws = self._workspaces.get(req["ws_sha"])
            if ws is None:
                chunk.fail(RuntimeError(f"workspace {req['ws_sha'][:12]} asked for again but no longer held here"))
                return
            plist = None if req["patches"] is None else [json.loads(zlib.decompress(p)) for p in req["patches"]]
            names = [p.get("metadata", {}).get("name", "") for p in plist] if plist is not None else [""]
            refused: dict[int, str] = {}
            try:
                parts = self.plan(req["ws_sha"], ws, req["patches"], names, req["options"], refused)
            except PayloadTooLarge as exc:
                chunk.fail(exc)
                return
            errors = {names[i]: error_record(patch_values(plist[i]), msg) for i, msg in refused.items()}  # type: ignore[index]
            if not parts:
                chunk.add(errors)
                return
            with chunk.lock:
                chunk.records.update(errors)
                chunk.pending += len(parts) - 1
            for r, size in parts:
                self._send(r, size, chunk)
        elif status == "version_mismatch":
            chunk.fail(VersionMismatch(reply.get("message", "version mismatch")))
        else:
            chunk.fail(RuntimeError(reply.get("message") if isinstance(reply, dict) else f"unexpected reply {reply!r}"))

    def describe(self) -> dict[str, Any]:
        s = self.stats
        return {
            "executor": self.name,
            "capacity": self.capacity,
            "endpoint_id": self.endpoint_id,
            "site": self.site,
            "batch_size": self.batch_size,
            "task_budget_bytes": self.task_budget,
            "tasks": s.tasks,
            "largest_task_bytes": s.largest_task_bytes,
            "workspace_sent": s.workspace_sent,
            "workspace_misses": s.workspace_misses,
            "requests": self.limiter.calls,
        }

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for lane in {id(x): x for x in (self._sdk, self._single) if x is not None}.values():
            try:
                lane.shutdown(wait=False, cancel_futures=True)
            except TypeError:  # a stand-in without the keyword arguments
                lane.shutdown()


def _explain(exc: BaseException, expect: dict[str, str]) -> BaseException:
    """Turn the SDK's remote tracebacks for a missing or foreign fitserve into one clear line."""
    text = str(exc)
    if "No module named 'fitserve" in text:
        return VersionMismatch(
            f"the endpoint's workers cannot import fitserve (the client runs fitserve "
            f"{expect.get('fitserve')}, Python {expect.get('python')}): install "
            f"'fitserve[globus]=={expect.get('fitserve')}' in the endpoint's worker environment "
            f"or run the workers in the fitserve container (docs/hpc-centres.md)"
        )
    if "WorkerLost" in text:
        return VersionMismatch(
            f"the endpoint's worker died while unpacking or running the task (WorkerLost); the "
            f"usual cause is a different Python or dill on the endpoint (the client runs Python "
            f"{expect.get('python')}): run `fitserve endpoint check` there. Original error: {text[:500]}"
        )
    return exc
