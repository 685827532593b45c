"""The asyncio client: :class:`AsyncClient` and :class:`AsyncJob` (httpx.AsyncClient underneath).

The same methods as :class:`~fitserve.client.Client` and
:class:`~fitserve.client.Job`, awaited::

    async with AsyncClient("http://127.0.0.1:8000") as client:
        job = await client.submit(bkg, patchset)
        await job.wait(progress=True)
        results = await job.results()
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from fitserve.client import _core
from fitserve.client.config import resolve
from fitserve.client.errors import ServerUnavailable


class AsyncJob(_core.JobMethods):
    """A submitted job; every method is awaited (``await job.status()``, ``await job.plot(path)``, ...)."""

    async def wait(
        self,
        timeout: float | None = None,
        progress: Any = False,
        poll_interval: float = 1.0,
        grace: float | None = None,
    ) -> dict[str, Any]:
        """Wait until the job is done or cancelled; returns its final status (see :meth:`fitserve.client.Job.wait`)."""
        waiter = _core.Waiter(
            self.id, timeout, progress, poll_interval, grace=self._client.retry.wait_grace if grace is None else grace
        )
        try:
            while True:
                try:
                    status = await self.status()
                except ServerUnavailable as exc:  # a GET: safe to send again
                    await asyncio.sleep(waiter.unavailable(exc))
                    continue
                if (delay := waiter.step(status)) is None:
                    return status
                await asyncio.sleep(delay)
        finally:
            waiter.close()


class AsyncClient(_core.ClientMethods):
    """asyncio client of a fitserve service; arguments as :class:`~fitserve.client.Client`."""

    _job_cls = AsyncJob

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retry: _core.RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        cfg = resolve(url, token)
        self.url, self.token = cfg.url, cfg.token
        self.retry = retry or _core.RetryPolicy()
        transport = transport or httpx.AsyncHTTPTransport(retries=self.retry.connect_retries)
        self._http = httpx.AsyncClient(transport=transport, **_core.http_options(self.url, self.token, timeout))

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url}>"

    async def _request(self, call: _core.Call) -> Any:
        attempt = 0
        while True:
            try:
                resp = await self._http.request(call.method, call.path, **call.kwargs())
            except httpx.TransportError as exc:
                raise _core.error_from_transport(exc, self.url) from exc
            delay = self.retry.delay(resp, attempt)
            if delay is None:
                return _core.checked(resp, call)
            attempt += 1
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
