"""Server-rendered web pages of the service (Jinja2, a little JavaScript, no build step).

* ``/``: quick limit for a counting experiment, computed in-process;
* ``/full``: upload a likelihood (background + patchset, or one workspace),
  submitted through the same job store and queue as ``POST /v1/jobs``;
* ``/jobs/{id}``: live progress, then the exclusion plot, a sortable table
  and downloads.

``mount_web(app)`` adds them to the API app made by
:func:`fitserve.service.api.create_api` (:func:`fitserve.app.create_app` does
both); the pages submit and read jobs through its submission desk
(``app.state.desk``).  ``FITSERVE_WEB_WARMUP`` chooses when
the quick-limit engine is compiled: ``startup`` (default: in a background
thread when the server starts), ``lazy`` (when the form is first shown) or
``off``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI


def mount_web(app: FastAPI) -> None:
    """Add the HTML pages and ``/static`` to ``app`` (which holds the submission desk in ``state.desk``)."""
    from urllib.parse import quote

    from fastapi import Request
    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles

    from fitserve.web.counting import Warmup, warmup_mode
    from fitserve.web.routes import STATIC, LoginRequired, router

    app.include_router(router)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any):  # type: ignore[no-untyped-def]
        if warmup_mode() == "startup":
            Warmup.start()
        try:
            async with inner(a) as state:
                yield state
        finally:
            from fastapi.concurrency import run_in_threadpool

            await run_in_threadpool(Warmup.shutdown)

    app.router.lifespan_context = lifespan
