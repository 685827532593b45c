"""The Redis job store: jobs, inputs stored once by content hash, results that double as the cache.

Keys (``P`` is ``settings.key_prefix``)::

    P:ws:{sha256}          background workspace, zlib-compressed JSON, stored once
    P:patch:{sha256}       one patch object, zlib-compressed JSON, stored once
    P:result:{hkey}        one hypothesis record (JSON): the cache, shared by all jobs
    P:jobs                 sorted set of job ids by creation time
    P:user:{name}:jobs     sorted set of one user's job ids by creation time
    P:user:{name}:active   set of the user's jobs that may still be queued or running
    P:job:{id}             hash: owner, state, total, counters (n_cached, n_computed, n_error,
                           n_not_converged), created/started/finished, compute_s
    P:job:{id}:meta        JSON: options, labels, names, values, hkeys, patch shas, ws sha
    P:job:{id}:done        hash: hypothesis name -> how it finished (progress, idempotent)
    P:job:{id}:errors      hash: hypothesis name -> record with "error" (never cached)
    P:job:{id}:chunks      list of the job's entry ids in the chunk stream
    P:web:upload:{user}:{token}  an upload the web form keeps for a second try (expires)
    P:worker:{name}        a live worker's heartbeat (JSON, expires)
    P:toypart:..., P:job:{id}:toyparts:{name}   toy-based jobs: see fitserve.service.toyjobs

``hkey`` = sha256 of (workspace sha, patch sha, options, engine version): the
same hypothesis asked for again, by any job, is answered from ``P:result``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import zlib
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import redis

from fitserve import __version__
from fitserve.engine import ENGINE_VERSION, clean_record, error_record
from fitserve.service import toyjobs

if TYPE_CHECKING:  # a type only: importing the store loads none of the engine's submission check
    from fitserve.engine import PreparedJob

FINAL_STATES = ("done", "failed", "cancelled")

# Record finished hypotheses idempotently (a redelivered chunk counts once) and
# finish the job when every hypothesis is accounted for.
# The compute time of the chunk is added only when it recorded something new, so storing
# a chunk again (after an interrupted store, or a second run) neither loses nor doubles it.
# KEYS: done-hash, job-hash.  ARGV: now, compute seconds, then (name, kind, not_converged) triples.
_RECORD_LUA = """
local added = 0
for i = 3, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i+1]) == 1 then
    redis.call('HINCRBY', KEYS[2], 'n_' .. ARGV[i+1], 1)
    if ARGV[i+2] == '1' then redis.call('HINCRBY', KEYS[2], 'n_not_converged', 1) end
    added = added + 1
  end
end
if added > 0 and tonumber(ARGV[2]) > 0 then redis.call('HINCRBYFLOAT', KEYS[2], 'compute_s', ARGV[2]) end
local done = redis.call('HLEN', KEYS[1])
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
if done >= total then
  local st = redis.call('HGET', KEYS[2], 'state')
  if st == 'queued' or st == 'running' then
    local nerr = tonumber(redis.call('HGET', KEYS[2], 'n_error') or '0')
    if nerr >= total and total > 0 then st = 'failed' else st = 'done' end
    redis.call('HSET', KEYS[2], 'state', st, 'finished', ARGV[1])
    redis.call('HSETNX', KEYS[2], 'started', ARGV[1])
  end
end
return {added, done}
"""

# Move a job to a new state only from the given states.  KEYS: job-hash.
# ARGV: new state, timestamp field ('' for none), now, allowed states...
_TRANSITION_LUA = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return nil end
for i = 4, #ARGV do
  if st == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', ARGV[1])
    if ARGV[2] ~= '' then redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) end
    return ARGV[1]
  end
end
return st
"""


# Reserve one of a user's slots for active jobs: forget jobs that have finished
# (or vanished), then add the new one unless the user is at the limit.
# KEYS: active-set.  ARGV: job-key prefix ("P:job:"), new job id, limit.  Returns the count before.
_RESERVE_LUA = """
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local st = redis.call('HGET', ARGV[1] .. id, 'state')
  if st ~= 'queued' and st ~= 'running' and st ~= 'reserved' then redis.call('SREM', KEYS[1], id) end
end
local n = redis.call('SCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then return n end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('HSET', ARGV[1] .. ARGV[2], 'state', 'reserved')
redis.call('EXPIRE', ARGV[1] .. ARGV[2], 600)
return n
"""


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def engine_version() -> str:
    """Part of every cache key: results of another engine version are never reused."""
    return str(ENGINE_VERSION or __version__)


def hypothesis_key(ws_sha: str, patch_sha: str | None, options_json: bytes, engine: str) -> str:
    return sha256(b"|".join([ws_sha.encode(), (patch_sha or "-").encode(), options_json, engine.encode()]))


def _pack(obj: Any) -> bytes:
    return zlib.compress(canonical_json(obj), 3)


def _unpack(raw: bytes) -> Any:
    return json.loads(zlib.decompress(raw))


def _s(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class JobStore:
    def __init__(self, client: redis.Redis, prefix: str = "fitserve") -> None:
        self.r = client
        self.p = prefix
        self._record = client.register_script(_RECORD_LUA)
        self._transition = client.register_script(_TRANSITION_LUA)
        self._reserve = client.register_script(_RESERVE_LUA)

    # keys ------------------------------------------------------------------
    def k(self, *parts: str) -> str:
        return ":".join((self.p, *parts))

    def job_key(self, job_id: str, suffix: str | None = None) -> str:
        return self.k("job", job_id, suffix) if suffix else self.k("job", job_id)

    # creating jobs -----------------------------------------------------------
    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(12)

    def reserve_slot(self, owner: str, job_id: str, limit: int) -> int | None:
        """Hold one of ``owner``'s ``limit`` slots for active jobs for ``job_id``.

        Returns None when reserved, else how many jobs the user has queued or
        running.  Atomic (one Lua script), so concurrent submissions cannot
        overshoot; a reservation not followed by :meth:`create_job` expires.
        """
        n = self._reserve(keys=[self.k("user", owner, "active")], args=[self.k("job", ""), job_id, limit])
        return None if int(n) < limit else int(n)

    def create_job(
        self,
        job: PreparedJob,
        owner: str = "local",
        job_id: str | None = None,
        also: Callable[[Any, list[str]], None] | None = None,
        toy_chunk_size: int = 1000,
    ) -> tuple[str, list[str], list[Any]]:
        """Store ``owner``'s job and its inputs; return ``(job_id, names still to compute, replies of also)``.

        Hypotheses already in the cache are recorded as done at once.  Every
        write happens in one MULTI/EXEC transaction, together with what
        ``also(pipeline, names to compute)`` adds (the API queues the chunks
        there): if Redis fails half-way, nothing of the job exists, so the
        client's retry cannot leave a job that stays queued for ever.
        ``toy_chunk_size``: toys per chunk of a toy-based job (the service's setting).
        """
        now = time.time()
        job_id = job_id or self.new_id()
        ws_bytes = canonical_json(job.workspace)
        ws_sha = sha256(ws_bytes)
        options = job.options_doc
        options_json = canonical_json(options)  # the one serialisation: cache keys and the job hash
        engine = engine_version()
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.k("ws", ws_sha), zlib.compress(ws_bytes, 3), nx=True)
        patch_shas: list[str | None] = []
        if job.patches is None:
            patch_shas = [None]
        else:
            for patch in job.patches:
                pb = canonical_json(patch)
                psha = sha256(pb)
                patch_shas.append(psha)
                pipe.set(self.k("patch", psha), zlib.compress(pb, 3), nx=True)
        hkeys = [hypothesis_key(ws_sha, ps, options_json, engine) for ps in patch_shas]
        toys_meta = None
        if toyjobs.is_toys(options):
            base_json = canonical_json(toyjobs.base_options(options))
            toys_meta = {
                "ranges": toyjobs.toy_ranges(int(options["n_toys"]), toy_chunk_size),
                "bases": [hypothesis_key(ws_sha, ps, base_json, engine) for ps in patch_shas],
            }
        cached = self.r.mget([self.k("result", h) for h in hkeys]) if hkeys else []
        hits = [(name, json.loads(raw)) for name, raw in zip(job.names, cached) if raw is not None]
        todo = [name for name, raw in zip(job.names, cached) if raw is None]
        meta = {
            "id": job_id,
            "options": options,
            "labels": job.labels,
            "names": job.names,
            "values": job.values,
            "hkeys": hkeys,
            "patch_shas": patch_shas,
            "ws_sha": ws_sha,
            "engine_version": engine,
        }
        if toys_meta is not None:
            meta["toys"] = toys_meta
        total = len(job.names)
        pipe.set(self.job_key(job_id, "meta"), _pack(meta))
        pipe.hset(
            self.job_key(job_id),
            mapping={
                "owner": owner,
                "state": "queued",
                "total": total,
                "created": now,
                "n_cached": 0,
                "n_computed": 0,
                "n_error": 0,
                "n_not_converged": 0,
                "compute_s": 0.0,
                "grid_dim": len(job.values[0]) if job.values else 0,
                "options": options_json,
                "labels": canonical_json(job.labels),
            },
        )
        if toys_meta is not None:
            pipe.hset(self.job_key(job_id), mapping={"toys_total": 2 * int(options["n_toys"]) * total, "toys_done": 0})
        pipe.persist(self.job_key(job_id))  # drop the expiry of the reservation
        pipe.zadd(self.k("jobs"), {job_id: now})
        pipe.zadd(self.k("user", owner, "jobs"), {job_id: now})
        if hits or total == 0:
            self._record_done(job_id, [(name, "cached", not rec.get("converged", False)) for name, rec in hits], pipe)
        before = len(pipe)
        if also is not None and todo:
            also(pipe, todo)
        replies = pipe.execute()
        return job_id, todo, replies[before:]

    # reading ---------------------------------------------------------------
    def meta(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.get(self.job_key(job_id, "meta"))
        return _unpack(raw) if raw is not None else None

    def workspace_bytes(self, ws_sha: str) -> bytes | None:
        """The stored workspace as zlib-compressed JSON (what executors accept)."""
        return self.r.get(self.k("ws", ws_sha))

    def patches(self, shas: Sequence[str]) -> list[dict[str, Any]]:
        raws = self.r.mget([self.k("patch", s) for s in shas])
        missing = [s for s, raw in zip(shas, raws) if raw is None]
        if missing:
            raise KeyError(f"patch {missing[0]} missing from the store")
        return [_unpack(raw) for raw in raws]

    def state(self, job_id: str) -> str | None:
        return _s(self.r.hget(self.job_key(job_id), "state"))

    def status(self, job_id: str, max_errors: int = 20) -> dict[str, Any] | None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.job_key(job_id))
        pipe.hlen(self.job_key(job_id, "done"))
        if max_errors > 0:  # COUNT 0 is a syntax error in Redis
            pipe.hscan(self.job_key(job_id, "errors"), count=max_errors)
        h, done, *scanned = pipe.execute()
        errs = scanned[0][1] if scanned else {}
        h = {_s(k): _s(v) for k, v in h.items()}
        if not h or h.get("state") == "reserved":
            return None
        total = int(h.get("total", 0))
        created = float(h["created"])
        started = float(h["started"]) if "started" in h else None
        finished = float(h["finished"]) if "finished" in h else None
        end = finished or time.time()
        errors = []
        for name, raw in list(errs.items())[:max_errors]:
            errors.append({"hypothesis": _s(name), "error": json.loads(raw).get("error")})
        if h.get("error"):
            errors.insert(0, {"hypothesis": None, "error": h["error"]})
        return {
            "id": job_id,
            "owner": h.get("owner", "local"),
            "state": h["state"],
            "progress": {"done": done, "total": total, "fraction": (done / total) if total else 1.0},
            "counts": {
                "cached": int(h.get("n_cached", 0)),
                "computed": int(h.get("n_computed", 0)),
                "errors": int(h.get("n_error", 0)),
                "not_converged": int(h.get("n_not_converged", 0)),
            },
            "grid_dim": int(h.get("grid_dim", 0)),
            "labels": json.loads(h.get("labels") or "[]"),
            "options": json.loads(h.get("options") or "{}"),
            "timings": {
                "created": created,
                "started": started,
                "finished": finished,
                "queued_s": (started or end) - created,
                "run_s": (end - started) if started else None,
                "total_s": end - created,
                "compute_s": float(h.get("compute_s", 0.0)),
            },
            "errors": errors,
            **(
                {
                    "toys": {
                        "done": int(h.get("toys_done", 0)),
                        "total": int(h["toys_total"]),
                        "cached": int(h.get("toys_cached", 0)),
                    }
                }
                if "toys_total" in h
                else {}
            ),
        }

    def list_jobs(self, limit: int = 100, user: str | None = None) -> list[dict[str, Any]]:
        """Most recent jobs first: ``user``'s, or everybody's when ``user`` is None."""
        index = self.k("user", user, "jobs") if user is not None else self.k("jobs")
        ids = [_s(i) for i in self.r.zrevrange(index, 0, limit - 1)]
        out = []
        for job_id in ids:
            st = self.status(job_id, max_errors=0)
            if st:
                st.pop("errors", None)
                out.append(st)
        return out

    def results(self, job_id: str, meta: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Records known so far, in the job's hypothesis order (partial while running)."""
        meta = meta or self.meta(job_id)
        if meta is None:
            return {}
        raws = self.r.mget([self.k("result", h) for h in meta["hkeys"]]) if meta["hkeys"] else []
        errs = {_s(k): v for k, v in self.r.hgetall(self.job_key(job_id, "errors")).items()}
        out: dict[str, dict[str, Any]] = {}
        for name, raw in zip(meta["names"], raws):
            if raw is not None:
                out[name] = json.loads(raw)
            elif name in errs:
                out[name] = json.loads(errs[name])
            elif "toys" in meta:  # a toy-based hypothesis still running: its toys so far
                part = toyjobs.partial(self, meta, name)
                if part is not None:
                    out[name] = part
        return out

    def cached_names(self, meta: dict[str, Any], names: Iterable[str]) -> set[str]:
        index = {n: i for i, n in enumerate(meta["names"])}
        names = list(names)
        raws = self.r.mget([self.k("result", meta["hkeys"][index[n]]) for n in names]) if names else []
        return {n for n, raw in zip(names, raws) if raw is not None}

    # state changes -----------------------------------------------------------
    def transition(self, job_id: str, new: str, allowed: Sequence[str], stamp: str = "") -> str | None:
        res = self._transition(keys=[self.job_key(job_id)], args=[new, stamp, time.time(), *allowed])
        return _s(res)

    def chunk_ids(self, job_id: str) -> list[str]:
        return [_s(i) for i in self.r.lrange(self.job_key(job_id, "chunks"), 0, -1)]

    def mark_running(self, job_id: str) -> str | None:
        return self.transition(job_id, "running", ["queued"], stamp="started")

    def cancel(self, job_id: str) -> str | None:
        return self.transition(job_id, "cancelled", ["queued", "running"], stamp="finished")

    def _record_done(
        self, job_id: str, items: Sequence[tuple[str, str, bool]], pipe: Any = None, compute_s: float = 0.0
    ) -> tuple[int, int]:
        """Record finished hypotheses (idempotent); in ``pipe``, queued there (returns zeros)."""
        args: list[Any] = [time.time(), compute_s]
        for name, kind, nc in items:
            args.extend([name, kind, "1" if nc else "0"])
        keys = [self.job_key(job_id, "done"), self.job_key(job_id)]
        if pipe is not None:
            self._record(keys=keys, args=args, client=pipe)
            return 0, 0
        added, done = self._record(keys=keys, args=args)
        return int(added), int(done)

    def store_records(
        self,
        job_id: str,
        meta: dict[str, Any],
        records: dict[str, dict[str, Any]],
        kind: str = "computed",
        compute_s: float = 0.0,
    ) -> tuple[int, int]:
        """Save one chunk's records (cache for good ones, job-local for errors); advance progress."""
        index = {n: i for i, n in enumerate(meta["names"])}
        pipe = self.r.pipeline(transaction=False)
        items = []
        for name, rec in records.items():
            if name not in index:
                continue
            rec = clean_record(rec)
            if rec.get("error"):
                pipe.hset(self.job_key(job_id, "errors"), name, canonical_json(rec))
                items.append((name, "error", False))
            else:
                pipe.set(self.k("result", meta["hkeys"][index[name]]), canonical_json(rec))
                items.append((name, kind, not rec.get("converged", False)))
        pipe.execute()
        return self._record_done(job_id, items, compute_s=compute_s)

    def mark_cached(self, job_id: str, meta: dict[str, Any], names: Iterable[str]) -> tuple[int, int]:
        """Hypotheses another job computed meanwhile: count them as cached."""
        names = list(names)
        index = {n: i for i, n in enumerate(meta["names"])}
        raws = self.r.mget([self.k("result", meta["hkeys"][index[n]]) for n in names]) if names else []
        items = [
            (n, "cached", not json.loads(raw).get("converged", False)) for n, raw in zip(names, raws) if raw is not None
        ]
        return self._record_done(job_id, items)

    def fail_hypotheses(self, job_id: str, meta: dict[str, Any], names: Iterable[str], message: str) -> tuple[int, int]:
        index = {n: i for i, n in enumerate(meta["names"])}
        records = {
            n: error_record(meta["values"][index[n]] if meta["values"] else [], message) for n in names if n in index
        }
        return self.store_records(job_id, meta, records)

    # uploads the web form keeps for a second try ---------------------------------------
    def keep_upload(self, user: str, token: str, blob: bytes, ttl_s: int) -> None:
        """Keep ``user``'s upload under ``token`` for ``ttl_s`` seconds (the key holds the user: nobody else reads it)."""
        self.r.set(self.k("web", "upload", user, token), blob, ex=ttl_s)

    def kept_upload(self, user: str, token: str) -> bytes | None:
        return self.r.get(self.k("web", "upload", user, token))

    # workers -----------------------------------------------------------------
    def worker_heartbeat(self, name: str, info: dict[str, Any], ttl_s: int = 15) -> None:
        self.r.set(self.k("worker", name), canonical_json({**info, "seen": time.time()}), ex=ttl_s)

    def worker_gone(self, name: str) -> None:
        self.r.delete(self.k("worker", name))

    def workers(self) -> list[dict[str, Any]]:
        keys = list(self.r.scan_iter(match=self.k("worker", "*"), count=1000))
        raws = self.r.mget(keys) if keys else []
        return [json.loads(raw) for raw in raws if raw is not None]
