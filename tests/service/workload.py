"""Small inputs and request timing shared by the service tests and ``benchmarks/bench_load.py``.

No pytest here: the benchmark imports it (with ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import httpx


def tiny_workspace() -> dict[str, Any]:
    """A 1-bin background-only workspace: fast to fit, no shared data needed."""
    return {
        "channels": [
            {
                "name": "SR",
                "samples": [
                    {
                        "name": "bkg",
                        "data": [50.0],
                        "modifiers": [{"name": "bkg_norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}}],
                    }
                ],
            }
        ],
        "observations": [{"name": "SR", "data": [52.0]}],
        "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }


def tiny_inputs(n: int = 3, signals: list[float] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`tiny_workspace` and a patchset of ``n`` signal hypotheses (yields ``signals``, default 5, 15, 25, ...)."""
    signals = signals if signals is not None else [5.0 + 10.0 * i for i in range(n)]
    patches = [
        {
            "metadata": {"name": f"sig_{i}", "values": [100.0 + 50 * i]},
            "patch": [
                {
                    "op": "add",
                    "path": "/channels/0/samples/1",
                    "value": {
                        "name": "signal",
                        "data": [signal],
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                }
            ],
        }
        for i, signal in enumerate(signals)
    ]
    ps = {
        "metadata": {
            "name": "tiny",
            "description": "test",
            "digests": {"sha256": "0" * 64},
            "labels": ["m_X"],
            "references": {"hepdata": "ins0000000"},
        },
        "patches": patches,
        "version": "1.0.0",
    }
    return tiny_workspace(), ps


def load_job(user: int, job: int, n: int, salt: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tiny model with ``n`` hypotheses whose yields 4 + 6k + j + 0.05u (+ ``salt``) are unique to
    (user u < 20, job j < 6, hypothesis k): no two load jobs share a cache entry.  ``salt`` 0.025 gives
    yields between those of any load job (a warm-up that compiles the shape without caching a result)."""
    return tiny_inputs(n, [4.0 + 6.0 * k + 1.0 * job + 0.05 * user + salt for k in range(n)])


def kind_of(request: httpx.Request) -> str:
    """Which API call a request is: submit, list, status, results, or its method and path."""
    parts = request.url.path.strip("/").split("/")  # v1, jobs, {id}, results
    if request.method == "POST" and parts == ["v1", "jobs"]:
        return "submit"
    if request.method == "GET" and parts == ["v1", "jobs"]:
        return "list"
    if request.method == "GET" and len(parts) == 3 and parts[1] == "jobs":
        return "status"
    if request.method == "GET" and len(parts) == 4 and parts[3] == "results":
        return "results"
    return f"{request.method} {request.url.path}"


class TimedTransport(httpx.HTTPTransport):
    """Records (kind, HTTP status, seconds) of every request, the response body read included."""

    def __init__(self, log: list[tuple[str, int, float]], lock: threading.Lock) -> None:
        super().__init__(retries=3)
        self.log, self.lock = log, lock

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        t0 = time.perf_counter()
        resp = super().handle_request(request)
        try:
            raw = b"".join(resp.stream)
        finally:
            resp.stream.close()
        dt = time.perf_counter() - t0
        with self.lock:
            self.log.append((kind_of(request), resp.status_code, dt))
        return httpx.Response(
            resp.status_code,
            headers=resp.headers,
            stream=httpx.ByteStream(raw),
            extensions=resp.extensions,
            request=request,
        )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s) / 100) - 1))]
