"""The check a running chunk asks between fit blocks: was its job cancelled, is it over budget?

A :class:`ChunkGuard` is what the worker hands an executor as the chunk's ``cancel`` token
(:func:`fitserve.executors.base.run_chunk_task`).  It is a small picklable object, so it works in
the worker's own threads (local executor) and in Parsl's worker processes alike; there it opens
its own Redis connection.  The engine calls it between compiled fit calls and limit-search steps
(:func:`fitserve.engine.scan.run_chunk`, ``cancel=``):

* it reads the job's state at most every ``poll_s`` (one ``HGET``) and answers True once the job
  is cancelled: the engine raises :class:`~fitserve.engine.errors.Cancelled` and the chunk stops;
* past ``wall_s`` seconds since its first call it raises :class:`ChunkBudgetExceeded`;
* when the process's resident memory exceeds ``max_rss_bytes`` it raises :class:`ChunkBudgetExceeded`.

A Redis that does not answer never stops a chunk (the guard says "go on" and asks again later).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

_CLIENTS: dict[str, Any] = {}


class ChunkBudgetExceeded(RuntimeError):
    """A chunk ran past its wall-time or memory budget; its hypotheses fail with this message."""


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (``/proc``; 0 where unavailable)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def tree_rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process and its descendants (the worker plus its Parsl pool)."""
    pid = pid or os.getpid()
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += rss_bytes(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return total


@dataclass
class ChunkGuard:
    """``guard()`` -> True when the job was cancelled; raises ChunkBudgetExceeded past a budget."""

    redis_url: str
    job_key: str  # P:job:{id}, whose ``state`` field says "cancelled"
    wall_s: float = 900.0
    max_rss_bytes: int = 0  # 0: no memory check
    poll_s: float = 0.5
    started: float | None = field(default=None, compare=False)
    _next_poll: float = field(default=0.0, compare=False)
    _cancelled: bool = field(default=False, compare=False)

    def __call__(self) -> bool:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        if now - self.started > self.wall_s:
            raise ChunkBudgetExceeded(
                f"the chunk ran {now - self.started:.0f} s, past its wall-time budget chunk_wall_s = {self.wall_s:g} "
                "(FITSERVE_CHUNK_WALL_S); split the job or ask for fewer upper limits"
            )
        if self.max_rss_bytes:
            rss = rss_bytes()
            if rss > self.max_rss_bytes:
                raise ChunkBudgetExceeded(
                    f"the fitting process grew to {rss / 2**20:,.0f} MiB, past the worker memory budget "
                    f"{self.max_rss_bytes / 2**20:,.0f} MiB (FITSERVE_WORKER_MEMORY_BYTES)"
                )
        if not self._cancelled and now >= self._next_poll:
            self._next_poll = now + self.poll_s
            self._cancelled = self._job_cancelled()
        return self._cancelled

    def _job_cancelled(self) -> bool:
        import redis

        try:
            client = _CLIENTS.get(self.redis_url)
            if client is None:
                client = _CLIENTS[self.redis_url] = redis.Redis.from_url(
                    self.redis_url, socket_connect_timeout=2, socket_timeout=2
                )
            state = client.hget(self.job_key, "state")
        except redis.RedisError:
            return False
        return state in (b"cancelled", "cancelled")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(started=None, _next_poll=0.0, _cancelled=False)  # the clock starts where it runs
        return state


def tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process and its live descendants (``/proc``), for measuring work after a cancel."""
    pid = pid or os.getpid()
    tick = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError, IndexError):
            pass
    return total
