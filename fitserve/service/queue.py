"""The chunk queue: a Redis Stream with one consumer group shared by all workers.

* ``enqueue`` adds one entry per chunk (job id + hypothesis names).
* ``read`` hands new entries to one consumer; they stay *pending* until acked.
* ``touch`` is the heartbeat of a busy worker: it resets the idle time of the
  entries it is working on (``XCLAIM ... JUSTID`` to itself).
* ``claim_stale`` takes over entries whose worker stopped heartbeating (it
  died or hangs) with ``XAUTOCLAIM``, so no chunk is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import redis

GROUP = "workers"


@dataclass
class Chunk:
    entry_id: str
    job_id: str
    names: list[str]
    deliveries: int = 1


def _decode(entry_id: Any, fields: dict[Any, Any] | None) -> Chunk | None:
    eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    if not fields:
        return Chunk(eid, "", [])  # deleted entry still pending: ack it away
    f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    job = f.get("job", b"")
    job = job.decode() if isinstance(job, bytes) else job
    return Chunk(eid, job, json.loads(f.get("names", b"[]")))


class ChunkQueue:
    def __init__(self, client: redis.Redis, prefix: str = "fitserve", group: str = GROUP) -> None:
        self.r = client
        self.stream = f"{prefix}:chunks"
        self.group = group

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def enqueue(self, job_id: str, chunks: Sequence[Sequence[str]], pipe: Any = None) -> list[str]:
        """Add the chunks; in ``pipe`` (a transaction of the caller) only queue the commands."""
        self.ensure_group()
        own = pipe is None
        if own:
            pipe = self.r.pipeline(transaction=False)
        for names in chunks:
            pipe.xadd(self.stream, {"job": job_id, "names": json.dumps(list(names))})
        return self.entry_ids(pipe.execute()) if own else []

    @staticmethod
    def entry_ids(replies: Sequence[Any]) -> list[str]:
        return [i.decode() if isinstance(i, bytes) else i for i in replies]

    def read(self, consumer: str, count: int, block_ms: int | None) -> list[Chunk]:
        try:
            resp = self.r.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count, block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()
            return []
        out = []
        for _stream, entries in resp or []:
            for eid, fields in entries:
                chunk = _decode(eid, fields)
                if chunk:
                    out.append(chunk)
        return out

    def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[Chunk]:
        """Take over up to ``count`` entries idle for ``min_idle_ms`` (their worker is gone)."""
        try:
            resp = self.r.xautoclaim(self.stream, self.group, consumer, min_idle_ms, start_id="0-0", count=count)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()
            return []
        entries = resp[1] if len(resp) > 1 else []
        deleted = resp[2] if len(resp) > 2 else []
        out = [c for c in (_decode(eid, fields) for eid, fields in entries) if c]
        out += [Chunk(d.decode() if isinstance(d, bytes) else d, "", []) for d in deleted]
        try:
            for chunk in out:
                if chunk.job_id:
                    info = self.r.xpending_range(self.stream, self.group, min=chunk.entry_id, max=chunk.entry_id, count=1)
                    if info:
                        chunk.deliveries = int(info[0]["times_delivered"])
        except (redis.ConnectionError, redis.TimeoutError):
            # The entries are ours now (XAUTOCLAIM went through): return them rather than leave them to go
            # stale and be delivered once more; a count we could not read stays at 1 for this delivery.
            pass
        return out

    def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            self.r.xclaim(self.stream, self.group, consumer, 0, list(entry_ids), justid=True)

    def ack(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            pipe = self.r.pipeline(transaction=True)
            pipe.xack(self.stream, self.group, *entry_ids)
            pipe.xdel(self.stream, *entry_ids)
            pipe.execute()

    def drop(self, entry_ids: Sequence[str]) -> int:
        """Delete entries (e.g. of a cancelled job); a worker holding one just acks it away."""
        return int(self.r.xdel(self.stream, *entry_ids)) if entry_ids else 0

    def stats(self) -> dict[str, Any]:
        try:
            groups = self.r.xinfo_groups(self.stream)
        except redis.ResponseError:
            return {"chunks_waiting": 0, "chunks_pending": 0, "consumers": 0}
        g = next((g for g in groups if (g["name"].decode() if isinstance(g["name"], bytes) else g["name"]) == self.group), None)
        pending = int(g["pending"]) if g else 0
        length = int(self.r.xlen(self.stream))
        return {"chunks_waiting": max(0, length - pending), "chunks_pending": pending, "consumers": int(g["consumers"]) if g else 0}
