"""Fixtures for the browser tests: the service fixtures of tests/service, Playwright on Debian's chromium.

Screenshots of every page state go to ``test-output/web/`` (git-ignored), at a
laptop (1280 px) and a phone (390 px) width.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# tests/ is not a package: pytest puts tests/ on sys.path and names that conftest "service.conftest"
from service.conftest import *  # noqa: F401,F403  (redis_url, settings, service, rj, Service, ...)
from service.conftest import REPO

CHROMIUM = os.environ.get("FITSERVE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "test-output" / "web"
LAPTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's chromium, not a Playwright download (none can be fetched here)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not found at {CHROMIUM} (Debian: apt-get install -y chromium)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": LAPTOP, "accept_downloads": True}


@pytest.fixture
def shot():
    """``shot(page, name)``: full-page screenshots at laptop and phone width into test-output/web/."""
    SHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str, widths: tuple[str, ...] = ("laptop", "phone")) -> None:
        before = page.viewport_size
        for which in widths:
            page.set_viewport_size(LAPTOP if which == "laptop" else PHONE)
            page.screenshot(path=str(SHOTS / f"{name}-{which}.png"), full_page=True)
        page.set_viewport_size(before)

    return take


@pytest.fixture
def web(service):
    """The service (API + web pages) with its base URL."""
    service.url = f"http://127.0.0.1:{service.port}"
    return service
