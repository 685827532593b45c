"""The app ``fitserve serve`` and ``fitserve up`` run: the JSON API with the web pages mounted on it.

Composed here, outside both, so that the service knows nothing of the pages
(:mod:`fitserve.service.api` builds the API and its submission desk) and the
pages only use the desk and the store (:mod:`fitserve.web`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from fitserve.service.api import create_api
from fitserve.service.settings import Settings
from fitserve.web import mount_web


def create_app(settings: Settings | None = None, client: Any = None) -> FastAPI:
    """The API (``/v1``, ``/docs``) and the HTML pages (``/``, ``/full``, ``/jobs``) in one app."""
    app = create_api(settings, client)
    mount_web(app)
    return app
