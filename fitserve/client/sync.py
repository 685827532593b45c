"""The blocking client: :class:`Client` and :class:`Job` (httpx.Client underneath)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from fitserve.client import _core
from fitserve.client.config import resolve
from fitserve.client.errors import ServerUnavailable


class Job(_core.JobMethods):
    """A submitted job.  ``status()``, ``wait()``, ``results()``, ``dataframe()``, ``csv()``,
    ``save_results(path)``, ``contours()``, ``plot(path)``, ``cancel()``."""

    def wait(
        self,
        timeout: float | None = None,
        progress: Any = False,
        poll_interval: float = 1.0,
        grace: float | None = None,
    ) -> dict[str, Any]:
        """Block until the job is done or cancelled; returns its final status.

        ``progress=True`` shows a tqdm bar (stderr) that moves as hypotheses
        finish; a callable gets every status polled.  Raises
        :class:`~fitserve.client.errors.JobTimeout` after ``timeout`` seconds
        (the job keeps running) and :class:`~fitserve.client.errors.JobFailed`
        if the job failed.  A server that is down or restarting is polled
        again with backoff for up to ``grace`` seconds in a row (default: the
        client's ``retry.wait_grace``, 60 s) before
        :class:`~fitserve.client.errors.ServerUnavailable` is raised.
        """
        waiter = _core.Waiter(
            self.id, timeout, progress, poll_interval, grace=self._client.retry.wait_grace if grace is None else grace
        )
        try:
            while True:
                try:
                    status = self.status()
                except ServerUnavailable as exc:  # a GET: safe to send again
                    time.sleep(waiter.unavailable(exc))
                    continue
                if (delay := waiter.step(status)) is None:
                    return status
                time.sleep(delay)
        finally:
            waiter.close()


class Client(_core.ClientMethods):
    """Client of a fitserve service.

    >>> from fitserve import Client
    >>> client = Client("http://127.0.0.1:8000")
    >>> job = client.submit("BkgOnly.json", "patchset.json", test_stat="qtilde")
    >>> job.wait(progress=True)
    >>> job.results()["results"]["sig_400_0"]["CLs_obs"]
    >>> job.plot("exclusion.png")

    ``url`` and ``token`` default to ``FITSERVE_URL`` / ``FITSERVE_TOKEN``, then
    the config file (see :mod:`fitserve.client.config`), then
    ``http://127.0.0.1:8000``.  The token goes in ``Authorization: Bearer``.
    Connection errors are retried by the transport and 503 answers with
    backoff (``retry``); every other error raises at once, typed
    (:mod:`fitserve.client.errors`).  ``job.wait()`` also rides out a server
    that is down for a while (``retry.wait_grace``).
    """

    _job_cls = Job

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retry: _core.RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        cfg = resolve(url, token)
        self.url, self.token = cfg.url, cfg.token
        self.retry = retry or _core.RetryPolicy()
        transport = transport or httpx.HTTPTransport(retries=self.retry.connect_retries)
        self._http = httpx.Client(transport=transport, **_core.http_options(self.url, self.token, timeout))

    def __repr__(self) -> str:
        return f"<Client {self.url}>"

    def _request(self, call: _core.Call) -> Any:
        attempt = 0
        while True:
            try:
                resp = self._http.request(call.method, call.path, **call.kwargs())
            except httpx.TransportError as exc:
                raise _core.error_from_transport(exc, self.url) from exc
            delay = self.retry.delay(resp, attempt)
            if delay is None:
                return _core.checked(resp, call)
            attempt += 1
            time.sleep(delay)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
