"""The chunk queue: per-user waiting lists, dispatched round-robin into one Redis Stream with one
consumer group shared by all workers.

* ``enqueue`` appends one entry per chunk (job id + hypothesis names) to the *user's* waiting list
  (``P:sched:user:{name}``) and puts the user on the ring of users with work waiting.
* ``read`` first *dispatches* as many chunks as the worker asks for from the waiting lists into the
  stream, one per user in turn (round-robin over the ring, skipping users that already have
  ``max_user_chunks`` dispatched, and dropping chunks of jobs no longer queued or running), then
  hands new stream entries to the consumer; they stay *pending* until acked.  The stream thus
  only holds chunks a worker is about to run or runs: a small job of another user waits for at
  most the chunks already running, never for a whole large job queued before it.
* ``touch`` is the heartbeat of a busy worker: it resets the idle time of the
  entries it is working on (``XCLAIM ... JUSTID`` to itself).
* ``claim_stale`` takes over entries whose worker stopped heartbeating (it
  died or hangs) with ``XAUTOCLAIM``, so no chunk is lost; ``release`` is a
  stopping worker handing its entries back at once, ``leave`` its goodbye.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import redis

GROUP = "workers"

# Append chunks to a user's waiting list; a user not on the ring joins it at the front (served next:
# the others were served while it had nothing waiting).  Wake one blocked reader per chunk.
# KEYS: user list, ring set, ring list, wake list.  ARGV: user, then "job\nnames-json" entries.
_SCHEDULE_LUA = """
for i = 2, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then redis.call('LPUSH', KEYS[3], ARGV[1]) end
for i = 2, math.min(#ARGV, 65) do redis.call('RPUSH', KEYS[4], '1') end
redis.call('LTRIM', KEYS[4], -64, -1)
return #ARGV - 1
"""

# Move up to ARGV[2] chunks from the users' waiting lists into the stream, one user at a time in ring order.
# KEYS: stream, ring list, ring set.  ARGV: key prefix, wanted, per-user cap (0: none), group.
# Returns the number dispatched.
_DISPATCH_LUA = """
local prefix, want, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[4])
local npend = (ok and type(pending) == 'table' and tonumber(pending[1])) or 0
local undelivered = redis.call('XLEN', KEYS[1]) - npend
if undelivered > 0 then want = want - undelivered end
if want <= 0 then return 0 end
local dispatched = {}
if cap > 0 then
  for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 10000)) do
    local f = e[2]
    for i = 1, #f, 2 do
      if f[i] == 'user' then dispatched[f[i + 1]] = (dispatched[f[i + 1]] or 0) + 1 end
    end
  end
end
local moved, idle, ops = 0, 0, 0
while moved < want and ops < 10000 do
  local n = redis.call('LLEN', KEYS[2])
  if n == 0 or idle >= n then break end
  local user = redis.call('LMOVE', KEYS[2], KEYS[2], 'LEFT', 'RIGHT')
  ops = ops + 1
  idle = idle + 1
  if cap == 0 or (dispatched[user] or 0) < cap then
    local list = prefix .. ':sched:user:' .. user
    while true do
      local raw = redis.call('LPOP', list)
      ops = ops + 1
      if not raw then
        redis.call('LREM', KEYS[2], 0, user)
        redis.call('SREM', KEYS[3], user)
        idle = idle - 1  -- it left the ring: its visit does not count towards a full round
        break
      end
      local cut = string.find(raw, string.char(10), 1, true)
      local job, names = string.sub(raw, 1, cut - 1), string.sub(raw, cut + 1)
      local st = redis.call('HGET', prefix .. ':job:' .. job, 'state')
      if st == 'queued' or st == 'running' then
        local id = redis.call('XADD', KEYS[1], '*', 'job', job, 'names', names, 'user', user)
        redis.call('RPUSH', prefix .. ':job:' .. job .. ':chunks', id)
        dispatched[user] = (dispatched[user] or 0) + 1
        moved, idle = moved + 1, 0
        break
      end
    end
  end
end
return moved
"""


@dataclass
class Chunk:
    entry_id: str
    job_id: str
    names: list[str]
    deliveries: int = 1
    #: ``[start, stop)`` of the toys of a toy-based job's chunk (one hypothesis); None otherwise
    toys: list[int] | None = None


def _decode(entry_id: Any, fields: dict[Any, Any] | None) -> Chunk | None:
    eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    if not fields:
        return Chunk(eid, "", [])  # deleted entry still pending: ack it away
    f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    job = f.get("job", b"")
    job = job.decode() if isinstance(job, bytes) else job
    names = json.loads(f.get("names", b"[]"))
    if isinstance(names, dict):  # a toy chunk: {"names": [name], "toys": [start, stop]}
        return Chunk(eid, job, list(names["names"]), toys=list(names["toys"]))
    return Chunk(eid, job, names)


class ChunkQueue:
    def __init__(
        self, client: redis.Redis, prefix: str = "fitserve", group: str = GROUP, max_user_chunks: int = 0
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.stream = f"{prefix}:chunks"
        self.group = group
        #: chunks of one user dispatched (in the stream: waiting for a worker or running) at once; 0: no cap
        self.max_user_chunks = max_user_chunks
        self.ring, self.ring_set, self.wake = f"{prefix}:sched:ring", f"{prefix}:sched:ring-set", f"{prefix}:sched:wake"
        self._schedule = client.register_script(_SCHEDULE_LUA)
        self._dispatch = client.register_script(_DISPATCH_LUA)

    def user_list(self, user: str) -> str:
        return f"{self.prefix}:sched:user:{user}"

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def enqueue(
        self, job_id: str, chunks: Sequence[Sequence[str] | dict[str, Any]], pipe: Any = None, user: str = "local"
    ) -> int:
        """Put the chunks on ``user``'s waiting list; in ``pipe`` (a transaction of the caller) only queue the commands.

        A chunk is a list of hypothesis names, or for toy-based jobs ``{"names": [name], "toys": [start, stop]}``.

        They reach the stream (and get entry ids, listed under ``P:job:{id}:chunks``) when a worker reads.
        """
        self.ensure_group()
        entries = [f"{job_id}\n{json.dumps(names if isinstance(names, dict) else list(names))}" for names in chunks]
        if not entries:
            return 0
        keys = [self.user_list(user), self.ring_set, self.ring, self.wake]
        if pipe is not None:
            self._schedule(keys=keys, args=[user, *entries], client=pipe)
            return len(entries)
        return int(self._schedule(keys=keys, args=[user, *entries]))

    def dispatch(self, count: int) -> int:
        """Move up to ``count`` waiting chunks into the stream, round-robin over users; how many moved."""
        return int(
            self._dispatch(
                keys=[self.stream, self.ring, self.ring_set],
                args=[self.prefix, count, self.max_user_chunks, self.group],
            )
        )

    def waiting(self) -> int:
        """Chunks on the users' waiting lists (not dispatched yet)."""
        users = self.r.lrange(self.ring, 0, -1)
        if not users:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for u in users:
            pipe.llen(self.user_list(u.decode() if isinstance(u, bytes) else u))
        return sum(int(n) for n in pipe.execute())

    @staticmethod
    def entry_ids(replies: Sequence[Any]) -> list[str]:
        return [i.decode() if isinstance(i, bytes) else i for i in replies]

    def read(self, consumer: str, count: int, block_ms: int | None) -> list[Chunk]:
        """Dispatch up to ``count`` chunks fairly, then read up to ``count`` new entries.

        With ``block_ms``, wait that long for work to be enqueued when there is none.
        """
        try:
            self.dispatch(count)
            resp = self.r.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count)
            if not resp and block_ms:
                if self.r.blpop([self.wake], timeout=block_ms / 1000):
                    self.dispatch(count)
                    resp = self.r.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count)
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
                    info = self.r.xpending_range(
                        self.stream, self.group, min=chunk.entry_id, max=chunk.entry_id, count=1
                    )
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

    def release(self, consumer: str, entry_ids: Sequence[str], idle_ms: int) -> None:
        """A stopping worker's entries, made claimable at once: their idle time set past ``claim_stale``'s threshold."""
        if entry_ids:
            self.r.xclaim(self.stream, self.group, consumer, 0, list(entry_ids), idle=idle_ms, justid=True)

    def leave(self, consumer: str) -> None:
        """Remove a consumer that holds nothing from the group (no stale consumer left behind)."""
        self.r.xgroup_delconsumer(self.stream, self.group, consumer)

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
        g = next(
            (g for g in groups if (g["name"].decode() if isinstance(g["name"], bytes) else g["name"]) == self.group),
            None,
        )
        pending = int(g["pending"]) if g else 0
        length = int(self.r.xlen(self.stream))
        return {
            "chunks_waiting": max(0, length - pending) + self.waiting(),
            "chunks_pending": pending,
            "consumers": int(g["consumers"]) if g else 0,
        }
