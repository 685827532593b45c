"""Fixtures for the service tests: a REAL redis-server (AOF on), the API under uvicorn, workers.

redis-server comes from PATH (Debian: ``apt-get install -y redis-server``); the
tests skip with that hint if it is missing.  The published likelihoods are
looked up in ``<repo root>/../shared/likelihoods``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fitserve.service.localhost import free_port, wait_until  # noqa: F401  (used by other test packages too)
from fitserve.service.settings import Settings
from service.workload import tiny_inputs  # noqa: F401  (used by other test packages too)

REPO = Path(__file__).resolve().parents[2]
LIKELIHOODS = REPO.parent / "shared" / "likelihoods"
RJ = LIKELIHOODS / "atlas-susy-2018-06-3L-RJ"
#: how many 3L-RJ hypotheses the end-to-end test fits (all 66 once the engine is fast)
E2E_PATCHES = 8


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not on PATH (Debian: apt-get install -y redis-server)")
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--dir",
            str(data),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(data / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(up, timeout=15, what="redis-server")
        assert client.config_get("appendonly")["appendonly"] == "yes"
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    """Settings isolated per test by a fresh key prefix (so the result cache starts empty)."""
    return Settings(
        redis_url=redis_url,
        key_prefix=f"test-{secrets.token_hex(4)}",
        executor="local",
        chunk_size=2,
        auth="open",
        data_dir=tmp_path,
        claim_idle_ms=1000,
    )


@pytest.fixture(scope="session")
def rj() -> tuple[dict[str, Any], dict[str, Any]]:
    if not (RJ / "BkgOnly.json").exists() or not (RJ / "patchset.json").exists():
        pytest.skip(f"published likelihoods not found at {RJ} (expected <repo root>/../shared/likelihoods)")
    return json.loads((RJ / "BkgOnly.json").read_text()), json.loads((RJ / "patchset.json").read_text())


def spread(names: list[str], n: int) -> list[str]:
    """n names spread over the whole list (the grid), not just its first corner."""
    if n >= len(names):
        return list(names)
    step = len(names) / n
    return [names[int(i * step)] for i in range(n)]


# a tiny 1-bin model (tests/service/workload.py): fast to fit, no shared data needed


@pytest.fixture
def tiny() -> tuple[dict[str, Any], dict[str, Any]]:
    return tiny_inputs()


class Service:
    """The API (uvicorn, real HTTP on a free port) and workers, in this process's threads."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from fitserve.app import create_app

        self.settings = settings
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._server_thread = threading.Thread(target=self.server.run, daemon=True)
        self._server_thread.start()
        wait_until(lambda: self.server.started, timeout=20, what="uvicorn")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        self.workers: list[tuple[Any, threading.Thread]] = []

    def start_worker(self, executor: Any = None, settings: Settings | None = None) -> Any:
        from fitserve.service.worker import Worker

        w = Worker(settings or self.settings, executor=executor)
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        self.workers.append((w, t))
        return w

    def stop_workers(self) -> None:
        for w, _ in self.workers:
            w.stop()
        for _, t in self.workers:
            t.join(60)
        self.workers.clear()

    def submit(self, workspace: dict, patchset: dict | None = None, **options: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"workspace": workspace, "options": options}
        if patchset is not None:
            body["patchset"] = patchset
        resp = self.http.post("/v1/jobs", json=body)
        assert resp.status_code == 202, resp.text
        return resp.json()

    def status(self, job_id: str) -> dict[str, Any]:
        resp = self.http.get(f"/v1/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait(self, job_id: str, timeout: float = 180) -> dict[str, Any]:
        return wait_until(
            lambda: (s := self.status(job_id))["state"] in ("done", "failed", "cancelled") and s,
            timeout=timeout,
            interval=0.2,
            what=f"job {job_id}",
        )

    def close(self) -> None:
        self.stop_workers()
        self.http.close()
        self.server.should_exit = True
        self._server_thread.join(20)


@pytest.fixture
def service(settings: Settings):
    svc = Service(settings)
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture(autouse=True)
def _no_budget_left_by_earlier_workers(monkeypatch):
    """In-process workers export FITSERVE_BATCH_MEMORY_BYTES for the engine; start each test without it."""
    monkeypatch.delenv("FITSERVE_BATCH_MEMORY_BYTES", raising=False)
