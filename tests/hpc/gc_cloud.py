"""A stand-in for the Globus Compute cloud service that enforces its documented limits.

The real SDK runs unchanged on the client side: ``globus_compute_sdk.Client``
(with a null authorizer) builds the HTTP requests with ``globus_sdk``'s own
transport, and ``globus_compute_sdk.Executor`` batches tasks with its own
submitter thread; only the socket is replaced, by a ``requests`` transport
adapter mounted on the client's sessions.  So what this stand-in measures is
the HTTP body the service would receive.  It refuses, as the service does:

* a request body over ``max_request_bytes`` (a batch request, 413 ``TASK_PAYLOAD_TOO_LARGE``),
* a single task payload over that limit (same code),
* more than ``max_requests`` requests in any ``window_s`` seconds (429 ``TOO_MANY_REQUESTS``),

and each task goes, as the endpoint receives it (function code + payload in a
messagepack ``Task``), to a real, locally started ``GlobusComputeEngine`` whose
workers run it with ``execute_task`` (which enforces the endpoint's result
limit); a result over ``max_result_bytes`` becomes a ``MaxResultSizeExceeded``
error here.  Results reach the SDK's own ``_ResultWatcher._match_results_to_futures``
(deserialized with the client's serializer) through an in-process queue instead
of AMQP.  Every request and result size is recorded in :class:`Ledger`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import pika
import requests
from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_endpoint.engines.base import GCFuture
from globus_compute_sdk import Client
from globus_compute_sdk import Executor as SDKExecutor
from globus_compute_sdk.sdk.executor import _RESULT_WATCHERS, _ResultWatcher
from globus_sdk import NullAuthorizer
from requests.adapters import BaseAdapter

from fitserve.executors.globus import CloudLimits


@dataclass
class Ledger:
    """What crossed the stand-in, for assertions and for the docs' figures."""

    requests: list[dict[str, Any]] = field(default_factory=list)  # one per HTTP request: path, bytes, tasks, t
    task_bytes: list[int] = field(default_factory=list)
    result_bytes: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # every limit violation, as the service would answer

    def max_requests_in_window(self, window_s: float) -> int:
        times = sorted(r["t"] for r in self.requests)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window_s:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def summary(self) -> dict[str, Any]:
        submits = [r for r in self.requests if r["path"].endswith("/submit")]
        return {
            "requests": len(self.requests),
            "batch_requests": len(submits),
            "tasks": len(self.task_bytes),
            "largest_request_bytes": max((r["bytes"] for r in self.requests), default=0),
            "largest_task_bytes": max(self.task_bytes, default=0),
            "largest_result_bytes": max(self.result_bytes, default=0),
            "most_tasks_in_a_request": max((r["tasks"] for r in submits), default=0),
            "refused": list(self.refused),
        }


class _Reply:
    @staticmethod
    def make(request: requests.PreparedRequest, status: int, body: dict[str, Any]) -> requests.Response:
        resp = requests.Response()
        resp.status_code = status
        resp._content = json.dumps(body).encode()
        resp.headers["Content-Type"] = "application/json"
        resp.url = request.url
        resp.request = request
        resp.encoding = "utf-8"
        return resp


class LimitedCloud(BaseAdapter):
    """The web service + AMQP result queues, in-process; ``engine`` is a started GlobusComputeEngine."""

    def __init__(self, engine: Any, limits: CloudLimits | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.limits = limits or CloudLimits()
        self.ledger = Ledger()
        self.functions: dict[str, str] = {}
        self._arrivals: deque[float] = deque()
        self._results: dict[str, list[tuple[Any, Result]]] = defaultdict(list)
        self._lock = threading.Lock()
        self.watchers: list[_ResultWatcher] = []

    # the client side -------------------------------------------------------------
    def client(self) -> Client:
        """A real SDK Client whose HTTP requests end up here."""
        c = Client(authorizer=NullAuthorizer(), do_version_check=False)
        for sub in (c._compute_web_client.v2, c._compute_web_client.v3):
            sub.transport.session.mount("https://", self)
            sub.transport.session.mount("http://", self)
        return c

    def sdk_factory(self, **kwargs: Any) -> SDKExecutor:
        """For ``GlobusComputeExecutor(sdk_factory=...)``: the SDK's Executor, results from here."""
        kwargs.setdefault("task_group_id", uuid.uuid4())  # its own result queue, not the process-wide default
        return _StandInSDKExecutor(self, **kwargs)

    # HTTP ------------------------------------------------------------------------
    def send(self, request: requests.PreparedRequest, **_: Any) -> requests.Response:
        body = request.body or b""
        size = len(body if isinstance(body, bytes) else body.encode())
        path = request.path_url
        now = time.monotonic()
        with self._lock:
            while self._arrivals and now - self._arrivals[0] >= self.limits.window_s:
                self._arrivals.popleft()
            self._arrivals.append(now)
            too_many = len(self._arrivals) > self.limits.max_requests
        data = json.loads(body) if body else {}
        tasks = data.get("tasks") or {}
        self.ledger.requests.append(
            {
                "path": path,
                "bytes": size,
                "t": now,
                "tasks": sum(len(v) for v in tasks.values()) if isinstance(tasks, dict) else 0,
                "user_endpoint_config": data.get("user_endpoint_config"),
            }
        )
        if too_many:
            self.ledger.refused.append(
                f"{path}: more than {self.limits.max_requests} requests in {self.limits.window_s} s"
            )
            return _Reply.make(request, 429, {"code": "TOO_MANY_REQUESTS", "error": "rate limit exceeded"})
        if size > self.limits.max_request_bytes:
            self.ledger.refused.append(f"{path}: request of {size} bytes")
            return _Reply.make(request, 413, {"code": "TASK_PAYLOAD_TOO_LARGE", "error": f"request of {size} bytes"})
        if request.method == "POST" and path == "/v3/functions":
            fid = str(uuid.uuid4())
            self.functions[fid] = data["function_code"]
            return _Reply.make(request, 200, {"function_uuid": fid})
        if request.method == "POST" and path.startswith("/v3/endpoints/") and path.endswith("/submit"):
            return self._submit(request, path.split("/")[3], data)
        return _Reply.make(request, 404, {"code": "NOT_FOUND", "error": f"{request.method} {path} is not stood in for"})

    def close(self) -> None:
        """(requests' adapter interface; the watchers are stopped by :meth:`stop`)"""

    def stop(self) -> None:
        for rw in self.watchers:
            rw._time_to_stop = True

    def _submit(self, request: requests.PreparedRequest, endpoint_id: str, data: dict[str, Any]) -> requests.Response:
        for payloads in data["tasks"].values():
            for p in payloads:
                n = len(json.dumps(p))
                self.ledger.task_bytes.append(n)
                if n > self.limits.max_request_bytes:
                    self.ledger.refused.append(f"task payload of {n} bytes")
                    return _Reply.make(request, 413, {"code": "TASK_PAYLOAD_TOO_LARGE", "error": f"task of {n} bytes"})
        tg = data.get("task_group_id") or str(uuid.uuid4())
        out: dict[str, list[str]] = {}
        for fid, payloads in data["tasks"].items():
            code = self.functions[fid]
            out[fid] = []
            for payload in payloads:
                task_id = uuid.uuid4()
                out[fid].append(str(task_id))
                self._run(tg, task_id, code + payload)
        return _Reply.make(
            request,
            200,
            {"tasks": out, "task_group_id": tg, "request_id": str(uuid.uuid4()), "endpoint_id": endpoint_id},
        )

    def _run(self, tg: str, task_id: uuid.UUID, buffer: str) -> None:
        fut = GCFuture(gc_task_id=task_id)

        def done(f: Any) -> None:
            try:
                packed = f.result()
                result = messagepack.unpack(packed)
            except Exception as exc:  # noqa: BLE001  (the engine lost the task)
                result = Result(
                    task_id=task_id,
                    data=f"{type(exc).__name__}: {exc}",
                    error_details={"code": "WorkerLost", "user_message": str(exc)},
                )
            if not result.is_error:
                self.ledger.result_bytes.append(len(result.data))
                if len(result.data) > self.limits.max_result_bytes:
                    self.ledger.refused.append(f"result of {len(result.data)} bytes")
                    result = Result(
                        task_id=task_id,
                        data=f"MaxResultSizeExceeded: {len(result.data)}",
                        error_details={"code": "MaxResultSizeExceeded", "user_message": "result too large"},
                    )
            with self._lock:
                self._results[tg].append((pika.BasicProperties(timestamp=int(time.time())), result))

        fut.add_done_callback(done)
        self.engine.submit(fut, messagepack.pack(Task(task_id=task_id, task_buffer=buffer)), resource_specification={})

    def take_results(self, tg: str) -> list[tuple[Any, Result]]:
        with self._lock:
            return self._results.pop(tg, [])


class _QueueResultWatcher(_ResultWatcher):
    """The SDK's result watcher with the AMQP connection replaced by the stand-in's queue."""

    def __init__(self, cloud: LimitedCloud, task_group_id: uuid.UUID, client: Client) -> None:
        super().__init__(task_group_id, client, poll_period_s=0.05)
        self.daemon = True
        self.cloud = cloud

    def run(self) -> None:
        self._thread_id = threading.get_ident()
        while not self._time_to_stop:
            for props, res in self.cloud.take_results(str(self.task_group_id)):
                self._received_results[str(res.task_id)] = (props, res)
                self._time_to_check_results.set()
            if self._time_to_check_results.is_set():
                self._time_to_check_results.clear()
                self._match_results_to_futures()
            time.sleep(self.poll_period_s)

    def _stop_ioloop(self) -> None:
        self._time_to_stop = True


class _StandInSDKExecutor(SDKExecutor):
    def __init__(self, cloud: LimitedCloud, **kwargs: Any) -> None:
        self._cloud = cloud
        super().__init__(**kwargs)

    def _get_result_watcher(self) -> _ResultWatcher:
        rw = _RESULT_WATCHERS.get(self.task_group_id)
        if rw is None or not rw.is_alive() or getattr(rw, "cloud", None) is not self._cloud or rw._time_to_stop:
            rw = _QueueResultWatcher(self._cloud, self.task_group_id, self.client)
            self._cloud.watchers.append(rw)
            rw.start()
        return rw
