"""`fitserve up` on a shared machine: its own private Redis, no orphans after SIGKILL, clean Ctrl-C.

Real `fitserve up` / `fitserve worker` processes, real signals, real redis-server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from fitserve.service.redis_server import find_redis_binary

from .conftest import REPO, free_port, tiny_inputs, wait_until

pytestmark = pytest.mark.skipif(find_redis_binary() is None, reason="no redis-server binary")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_")}
    return {**env, "FITSERVE_WEB_WARMUP": "off", **extra}


class Up:
    """One `fitserve up` in ``cwd`` (its data directory ``cwd/var``), on a free API port."""

    def __init__(self, cwd: Path, executor: str = "local", port: int | None = None) -> None:
        self.cwd, self.port = cwd, port or free_port()
        cwd.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fitserve.cli", "up", "--port", str(self.port), "--executor", executor],
            cwd=cwd,
            env={**_env(), "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def wait_up(self) -> Up:
        line = self.proc.stdout.readline()
        assert "fitserve is up" in line, line + (self.proc.stderr.read() if self.proc.poll() is not None else "")
        wait_until(lambda: self.http.get("/v1/health").json()["status"] == "ok", timeout=90, what="worker")
        return self

    def run_job(self, n: int) -> str:
        ws, ps = tiny_inputs(n)
        job = self.http.post("/v1/jobs", json={"workspace": ws, "patchset": ps}).json()
        wait_until(lambda: self.http.get(f"/v1/jobs/{job['id']}").json()["state"] == "done", timeout=90, what="job")
        return job["id"]

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        return rc, self.proc.stderr.read()


def _family(root: psutil.Process, mark: str) -> list[psutil.Process]:
    """``root``, its descendants, and processes naming ``mark`` (Parsl's pool is reparented to init)."""
    found = {p.pid: p for p in [root, *root.children(recursive=True)]}
    for p in psutil.process_iter(["cmdline"]):
        if mark in " ".join(p.info["cmdline"] or []):
            found[p.pid] = p
    return list(found.values())


def _cmd(p: psutil.Process) -> str:
    """The command line, or "" for a process that has just exited."""
    try:
        return " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


def _alive(procs: list[psutil.Process]) -> list[str]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return left


def test_two_services_on_one_machine_do_not_see_each_other(tmp_path: Path) -> None:
    a, b = Up(tmp_path / "alice"), Up(tmp_path / "bob")
    try:
        a.wait_up(), b.wait_up()
        ja, jb = a.run_job(2), b.run_job(3)
        assert [j["id"] for j in a.http.get("/v1/jobs").json()["jobs"]] == [ja]
        assert [j["id"] for j in b.http.get("/v1/jobs").json()["jobs"]] == [jb]
        assert b.http.get(f"/v1/jobs/{ja}").status_code == 404
        workers_a = {w["pid"] for w in a.http.get("/v1/health").json()["workers"]}
        workers_b = {w["pid"] for w in b.http.get("/v1/health").json()["workers"]}
        assert len(workers_a) == len(workers_b) == 1 and not workers_a & workers_b
        # nothing listens on TCP for their Redis: each is a Unix socket in its own data directory
        assert (tmp_path / "alice/var/redis/redis.sock").is_socket() and (
            tmp_path / "bob/var/redis/redis.sock"
        ).is_socket()
        time.sleep(2)  # the job log polls once a second
    finally:
        rca, erra = a.stop()
        rcb, errb = b.stop()
    assert rca == rcb == 0, erra + errb
    assert "started a private Redis for this service" in erra and "6379" not in erra
    # one line per job: submitted (with its options), and done with counts and times
    assert f"job {ja} submitted by local: 2 hypotheses (0 cached, 2 to compute); qtilde mu=1 CL=95%" in erra, erra
    assert f"job {ja} done: 2/2 hypotheses (2 computed, 0 cached, 0 errors" in erra, erra
    assert ja not in errb and f"job {jb} done: 3/3" in errb


def test_a_second_service_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    first = Up(tmp_path).wait_up()
    try:
        second = Up(tmp_path)
        rc = second.proc.wait(60)
        err = second.proc.stderr.read()
        assert rc == 2, err
        assert "another fitserve up" in err and "--data-dir" in err
        first.run_job(1)  # the first one is unharmed
    finally:
        first.stop()


def test_a_busy_port_is_one_clear_error_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        up = Up(tmp_path, port=busy.getsockname()[1])
        rc = up.proc.wait(60)
        err = up.proc.stderr.read()
    assert rc == 2, err
    assert "cannot listen on 127.0.0.1" in err and "--port" in err
    assert "Traceback" not in err and not (tmp_path / "var" / "redis").exists(), "something started before the check"


def test_sigkill_of_fitserve_up_leaves_no_redis_worker_or_parsl_process(tmp_path: Path) -> None:
    up = Up(tmp_path, executor="parsl").wait_up()
    up.run_job(1)  # Parsl's pool is up and has worked
    root = psutil.Process(up.proc.pid)
    family = _family(root, str(tmp_path))
    names = " ".join(_cmd(p) for p in family)
    assert "redis-server" in names and "fitserve.cli worker" in names and "process_worker_pool" in names, names
    up.proc.kill()
    up.proc.wait()
    try:
        try:
            wait_until(lambda: not _alive(family), timeout=30, what="the children of a SIGKILLed fitserve up to exit")
        except TimeoutError:
            raise AssertionError(f"still running 30 s after the SIGKILL: {_alive(family)}") from None
    finally:
        for p in family:  # never leave them behind on failure either
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    up.proc.stderr.close(), up.proc.stdout.close()
    # the next service on this data directory starts its own Redis again and finds the job
    again = Up(tmp_path).wait_up()
    try:
        assert len(again.http.get("/v1/jobs").json()["jobs"]) == 1
    finally:
        again.stop()


@pytest.mark.parametrize("executor", ["parsl", "local"])
def test_ctrl_c_stops_a_worker_and_its_pool_within_seconds(tmp_path: Path, redis_url: str, executor: str) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it."""
    env = {
        **_env(),
        "PYTHONPATH": str(REPO),
        "FITSERVE_REDIS_URL": redis_url,
        "FITSERVE_DATA_DIR": str(tmp_path),
        "FITSERVE_KEY_PREFIX": f"ctrlc-{executor}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "fitserve.cli", "worker", "--executor", executor],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
    )
    family: list[psutil.Process] = []
    try:
        for line in proc.stderr:
            if "started" in line:
                break
        root = psutil.Process(proc.pid)
        if executor == "parsl":
            wait_until(
                lambda: "process_worker_pool" in " ".join(_cmd(p) for p in _family(root, str(tmp_path))),
                timeout=60,
                what="Parsl's pool",
            )
        family = _family(root, str(tmp_path))
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(15)
        assert rc == 0, proc.stderr.read()
        wait_until(lambda: not _alive(family), timeout=15, what="Parsl's interchange and pool to exit")
        assert "DFK still running" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_a_killed_parsl_worker_takes_its_interchange_with_it(tmp_path: Path, redis_url: str) -> None:
    """SIGKILL of the worker itself (no clean-up runs): the interchange exits by the parent-death signal."""
    env = {
        **_env(),
        "PYTHONPATH": str(REPO),
        "FITSERVE_REDIS_URL": redis_url,
        "FITSERVE_DATA_DIR": str(tmp_path),
        "FITSERVE_KEY_PREFIX": "killed-worker",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "fitserve.cli", "worker", "--executor", "parsl"],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    root = psutil.Process(proc.pid)
    family: list[psutil.Process] = []
    try:
        interchange = wait_until(
            lambda: [p for p in root.children() if "interchange" in _cmd(p)], timeout=60, what="Parsl's interchange"
        )
        family = _family(root, str(tmp_path))
        proc.kill()
        proc.wait()
        wait_until(lambda: not _alive(interchange), timeout=15, what="the interchange of a SIGKILLed worker to exit")
    finally:
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
