"""Fixtures for the client tests: the service tests' real redis-server, API and workers, reused.

``live``: one API + worker for the whole session, in this process, its chunks
of ``CHUNK`` hypotheses slowed down by ``CHUNK_DELAY_S`` each so that progress
visibly moves.  ``reference`` runs the engine on the same chunks, so the fit
compiles once for both (the engine's jitted functions are shared in-process).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from service.conftest import *  # noqa: F401,F403  (redis_url, settings, service, tiny, Service, ...)
from service.conftest import REPO, Service

from fitserve.executors.base import run_chunk_task
from fitserve.executors.local import LocalExecutor
from fitserve.service.settings import Settings

EXAMPLE = REPO / "workspaces" / "example"
CHUNK = 5  # the 25-point example grid: 5 chunks, one batch shape
CHUNK_DELAY_S = 0.5


def _slow_chunk(workspace: Any, patches: Any, options: Any) -> Any:
    time.sleep(CHUNK_DELAY_S)
    return run_chunk_task(workspace, patches, options)


class SlowLocalExecutor(LocalExecutor):
    """The local executor, each chunk delayed a little (the example grid fits in milliseconds once compiled)."""

    def submit(self, workspace, patches, options):  # type: ignore[override]
        return self._pool.submit(_slow_chunk, workspace, patches, options)


@pytest.fixture(scope="session")
def example_paths() -> tuple[Path, Path]:
    return EXAMPLE / "BkgOnly.json", EXAMPLE / "patchset.json"


@pytest.fixture(scope="session")
def example(example_paths) -> tuple[dict[str, Any], dict[str, Any]]:
    ws, ps = example_paths
    return json.loads(ws.read_text()), json.loads(ps.read_text())


@pytest.fixture(scope="session")
def reference(example) -> dict[str, Any]:
    """The engine's own records on the example grid, ``fitserve.engine.scan.scan`` (no service)."""
    from fitserve.engine.scan import scan

    ws, ps = example
    patches = ps["patches"]
    results: dict[str, Any] = {}
    for i in range(0, len(patches), CHUNK):
        results.update(scan(ws, patches[i : i + CHUNK])["results"])
    return results


@pytest.fixture(scope="session")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(
        redis_url=redis_url,
        key_prefix=f"client-{secrets.token_hex(4)}",
        executor="local",
        chunk_size=CHUNK,
        auth="open",
        data_dir=tmp_path_factory.mktemp("client-data"),
        claim_idle_ms=5000,
    )
    svc = Service(settings)
    svc.start_worker(executor=SlowLocalExecutor())
    svc.url = f"http://127.0.0.1:{svc.port}"
    try:
        yield svc
    finally:
        svc.close()
