"""The worker loop: take chunks from the queue, run them on an executor, store records.

One worker keeps up to ``executor.capacity`` chunks in flight.  While a chunk
runs, the worker heartbeats its queue entries so nobody else takes them; if the
worker dies, the entries go stale and another worker claims them
(:meth:`ChunkQueue.claim_stale`).  Before running a chunk it drops hypotheses
that another job computed meanwhile (the cache), and it skips chunks of
cancelled jobs.

Redis going away does not stop a worker.  Any Redis error in the loop (heartbeat,
touch, claim, read, start, storing) pauses it with exponential backoff
(``RETRY_MIN_S`` doubling to ``RETRY_MAX_S``) and it tries again; meanwhile the
chunks in flight keep running, and their records are kept in memory and stored
(then acked) once Redis answers again.  Chunks read but not started yet are
kept too.  Storing is idempotent (the job's done-hash is written with
``HSETNX``), so a chunk stored twice - after an interrupted store, or because
another worker also ran it - is counted once.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

import redis

from fitserve import __version__
from fitserve.executors import Executor, get_executor
from fitserve.executors.base import decode_workspace
from fitserve.service import toyjobs
from fitserve.service.guard import ChunkGuard, rss_bytes, tree_rss_bytes
from fitserve.service.queue import Chunk, ChunkQueue
from fitserve.service.settings import Settings
from fitserve.service.store import FINAL_STATES, JobStore

log = logging.getLogger("fitserve.worker")

#: First pause after a Redis error; doubled (with jitter) while errors go on, up to RETRY_MAX_S.
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0
#: A finished chunk whose records Redis refuses this often (an error other than
#: an unreachable server) is given up here and left pending for redelivery.
MAX_STORE_FAILURES = 5

#: Errors that mean "Redis is not reachable (now)": wait for it, keep everything.
OUTAGE_ERRORS = (redis.ConnectionError, redis.TimeoutError)


@dataclass
class _InFlight:
    chunk: Chunk
    meta: dict[str, Any]
    names: list[str]
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None


@dataclass
class _Finished:
    """A chunk the executor finished whose records are not stored (and acked) yet."""

    item: _InFlight
    records: dict[str, dict[str, Any]] | None
    error: BaseException | None
    elapsed: float
    waited: bool = False  # finished while Redis was unreachable
    attempts: int = 0  # tries to store it so far
    failures: int = 0  # of those, failures other than an unreachable Redis


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def _takes_cancel(executor: Executor) -> bool:
    """Whether ``executor.submit`` takes the cancel token: it says so (``accepts_cancel``) and its
    ``submit`` has the parameter (a subclass overriding ``submit`` without it does not)."""
    if not getattr(executor, "accepts_cancel", False):
        return False
    try:
        params = inspect.signature(executor.submit).parameters
    except (TypeError, ValueError):
        return False
    return "cancel" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def redis_client(settings: Settings) -> redis.Redis:
    # Explicit timeouts (older redis-py has none): a Redis that hangs gives an error, not a hang.
    # The socket timeout exceeds the worker's longest XREADGROUP BLOCK (0.5 s).
    # (TCP keepalive only for TCP: a Unix socket URL, the private Redis of `fitserve up`, refuses it)
    keepalive = {} if settings.redis_url.startswith("unix:") else {"socket_keepalive": True}
    return redis.Redis.from_url(
        settings.redis_url,
        health_check_interval=30,
        socket_connect_timeout=5,
        socket_timeout=15,
        **keepalive,
    )


class Worker:
    def __init__(
        self,
        settings: Settings,
        executor: Executor | None = None,
        name: str | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.r = client or redis_client(settings)
        self.store = JobStore(self.r, settings.key_prefix)
        self.queue = ChunkQueue(self.r, settings.key_prefix, max_user_chunks=settings.max_user_chunks)
        # The engine narrows batches to this budget (fitserve.engine.budget.batch_budget), in this
        # process and in executor processes started from it: the same budget the API checked.
        os.environ["FITSERVE_BATCH_MEMORY_BYTES"] = str(settings.batch_memory())
        self._executor = executor
        self._own_executor = executor is None
        #: chunks stopped by a cancel (running when their job was cancelled) or a budget
        self.chunks_cancelled = 0
        self.chunks_over_budget = 0
        self.stop_event = threading.Event()
        self.inflight: dict[Future, _InFlight] = {}
        #: chunks read or claimed but not started yet (kept over a Redis outage)
        self.backlog: list[Chunk] = []
        #: chunks computed whose records are not stored yet (kept over a Redis outage)
        self.finished: list[_Finished] = []
        self._meta = _LRU(64)
        self._ws = _LRU(4)
        self.chunks_done = 0
        #: Redis outages ridden out; chunks whose records waited for Redis to come back;
        #: chunks claimed from other (dead) workers; hypotheses found recorded already (a chunk
        #: delivered or run twice: counted once).  All in the heartbeat (``/v1/health``).
        self.outages = 0
        self.chunks_kept = 0
        self.chunks_claimed = 0
        self.recorded_already = 0
        self._redis_down = False
        self._group_ready = False
        self._last = {"beat": 0.0, "claim": 0.0, "touch": 0.0, "cancel": 0.0}

    # lifecycle ---------------------------------------------------------------
    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = get_executor(self.settings.executor, **self.settings.executor_settings())
        return self._executor

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        """Loop until :meth:`stop`; leaves unfinished chunks claimable by other workers.

        Redis errors never end the loop: it backs off and tries again, keeping
        chunks in flight and finished records until Redis answers.
        """
        executor = self.executor
        capacity = max(1, executor.capacity)
        log.info("worker %s started: %s", self.name, executor.describe())
        pause = RETRY_MIN_S
        down_since: float | None = None
        kept_before = 0
        try:
            while not self.stop_event.is_set():
                try:
                    self._step(capacity)
                except redis.RedisError as exc:
                    if isinstance(exc, OUTAGE_ERRORS):
                        self._redis_down = True
                        if down_since is None:
                            down_since, kept_before = time.monotonic(), self.chunks_kept
                            self.outages += 1
                            log.warning(
                                "Redis unreachable (%s: %s): %d chunks in flight, %d finished and %d waiting are kept; "
                                "retrying with backoff",
                                type(exc).__name__,
                                exc,
                                len(self.inflight),
                                len(self.finished),
                                len(self.backlog),
                            )
                    else:  # Redis answered with an error: log it, back off, go on
                        log.warning(
                            "Redis error in the worker loop (retrying): %s: %s", type(exc).__name__, exc, exc_info=True
                        )
                        if "NOGROUP" in str(exc):  # the stream or its group is gone (e.g. Redis lost its data)
                            self._group_ready = False
                    self._collect(pause * random.uniform(0.8, 1.2))  # chunks keep finishing meanwhile
                    pause = min(pause * 2, RETRY_MAX_S)
                    continue
                pause = RETRY_MIN_S
                if down_since is not None:
                    log.warning(
                        "Redis is back after %.1f s: %d chunks that finished meanwhile are stored, %d in flight",
                        time.monotonic() - down_since,
                        self.chunks_kept - kept_before,
                        len(self.inflight),
                    )
                    down_since = None
        finally:
            self._release()

    def _step(self, capacity: int) -> None:
        """One round of the loop; any Redis error leaves everything in place to be retried."""
        if not self._group_ready:
            self.queue.ensure_group()
            self._group_ready = True
        self._save_finished()
        self._redis_down = False
        settings, last = self.settings, self._last
        claim_every = max(0.1, settings.claim_idle_ms / 2000)
        touch_every = max(0.05, settings.claim_idle_ms / 3000)
        now = time.monotonic()
        if now - last["beat"] > 2:
            self._heartbeat()
            last["beat"] = now
        held = self._held_ids()
        if held and now - last["touch"] > touch_every:
            self.queue.touch(self.name, held)
            last["touch"] = now
        if self.inflight and now - last["cancel"] > 0.5:
            self._drop_cancelled()
            last["cancel"] = now
        free = capacity - len(self.inflight) - len(self.backlog)
        if free > 0:
            if now - last["claim"] > claim_every:
                claimed = self.queue.claim_stale(self.name, settings.claim_idle_ms, free)
                last["claim"] = now
                if claimed:
                    self.chunks_claimed += len(claimed)
                    log.info(
                        "took over %d stale chunks (idle > %d ms): %s",
                        len(claimed),
                        settings.claim_idle_ms,
                        ", ".join(f"{c.entry_id} (delivery {c.deliveries})" for c in claimed),
                    )
                self.backlog += claimed
                free -= len(claimed)
            if free > 0:
                block = None if (self.inflight or self.backlog) else 500
                self.backlog += self.queue.read(self.name, free, block)
        while self.backlog and len(self.inflight) < capacity:
            self._start(self.backlog[0])  # a Redis error keeps it in the backlog
            self.backlog.pop(0)
        if self.inflight:
            self._collect(0.2)
            self._save_finished()

    def _held_ids(self) -> list[str]:
        """Queue entries this worker is responsible for: waiting, running, or finished but not stored."""
        return (
            [c.entry_id for c in self.backlog]
            + [f.chunk.entry_id for f in self.inflight.values()]
            + [f.item.chunk.entry_id for f in self.finished]
        )

    def _heartbeat(self) -> None:
        info = {
            "name": self.name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": __version__,
            "inflight": len(self.inflight),
            "chunks_done": self.chunks_done,
            "chunks_cancelled": self.chunks_cancelled,
            "chunks_over_budget": self.chunks_over_budget,
            "chunks_claimed": self.chunks_claimed,
            "chunks_kept": self.chunks_kept,
            "redis_outages": self.outages,
            "recorded_already": self.recorded_already,
            "rss_bytes": rss_bytes(),
            "rss_tree_bytes": tree_rss_bytes(),
            "memory_budget_bytes": self.settings.worker_memory(),
            "batch_memory_bytes": self.settings.batch_memory(),
            **self.executor.describe(),
        }
        self.store.worker_heartbeat(self.name, info)

    def _release(self) -> None:
        """On stop: store what finished, make our other chunks claimable at once, shut the executor down."""
        try:
            self._save_finished()
        except redis.RedisError as exc:
            log.warning(
                "could not store %d finished chunks before stopping (%s); they will be run again",
                len(self.finished),
                exc,
            )
        ids = self._held_ids()
        try:
            if ids:
                self.queue.release(self.name, ids, idle_ms=self.settings.claim_idle_ms * 10)
            else:  # nothing pending under our name: leave no stale consumer behind
                self.queue.leave(self.name)
            self.store.worker_gone(self.name)
        except redis.RedisError:
            pass
        self.inflight.clear()
        self.backlog.clear()
        self.finished.clear()
        if self._own_executor and self._executor is not None:
            self._executor.shutdown()
        log.info("worker %s stopped", self.name)

    # chunks ------------------------------------------------------------------
    def _job_meta(self, job_id: str) -> dict[str, Any] | None:
        meta = self._meta.get(job_id)
        if meta is None:
            meta = self.store.meta(job_id)
            if meta is not None:
                self._meta.put(job_id, meta)
        return meta

    def _workspace(self, ws_sha: str) -> bytes | None:
        ws = self._ws.get(ws_sha)
        if ws is None:
            ws = self.store.workspace_bytes(ws_sha)
            if ws is not None:
                self._ws.put(ws_sha, ws)
        return ws

    def _start(self, chunk: Chunk) -> None:
        try:
            self._start_inner(chunk)
        except redis.RedisError:
            raise  # Redis trouble is not the chunk's fault: it is started again once Redis answers
        except Exception as exc:  # keep the worker alive; the chunk fails visibly
            log.exception("chunk %s of job %s could not start", chunk.entry_id, chunk.job_id)
            meta = self._job_meta(chunk.job_id) if chunk.job_id else None
            if meta is not None:
                self.store.fail_hypotheses(
                    chunk.job_id, meta, chunk.names, f"chunk could not start: {type(exc).__name__}: {exc}"
                )
            self.queue.ack([chunk.entry_id])

    def _start_inner(self, chunk: Chunk) -> None:
        # Everything that reads or writes Redis comes before the executor is given the chunk (and is
        # idempotent), so a Redis error here never leaves a chunk running that the worker does not track.
        meta = self._job_meta(chunk.job_id) if chunk.job_id else None
        if meta is None:
            self.queue.ack([chunk.entry_id])
            return
        if self.store.state(chunk.job_id) in FINAL_STATES:
            self.queue.ack([chunk.entry_id])
            return
        if chunk.deliveries > self.settings.max_deliveries:
            self.store.fail_hypotheses(
                chunk.job_id,
                meta,
                chunk.names,
                f"chunk abandoned after {chunk.deliveries - 1} attempts (its worker stopped responding)",
            )
            self.queue.ack([chunk.entry_id])
            return
        cached = self.store.cached_names(meta, chunk.names)
        if cached:
            added, _ = self.store.mark_cached(chunk.job_id, meta, cached)
            if added < len(cached):
                self.recorded_already += len(cached) - added
                log.info(
                    "chunk %s of job %s: %d of its hypotheses were recorded already, they count once (a repeated delivery)",
                    chunk.entry_id,
                    chunk.job_id,
                    len(cached) - added,
                )
        names = [n for n in chunk.names if n not in cached]
        if chunk.toys is not None and names and toyjobs.has_part(self.store, meta, names[0], chunk.toys):
            toyjobs.add_part(self.store, chunk.job_id, meta, names[0], chunk.toys, None)  # another job ran these toys
            names = []
        if not names:
            self.queue.ack([chunk.entry_id])
            return
        self.store.mark_running(chunk.job_id)
        ws = self._workspace(meta["ws_sha"])
        if ws is None:
            raise KeyError(f"workspace {meta['ws_sha']} missing from the store")
        index = {n: i for i, n in enumerate(meta["names"])}
        shas = [meta["patch_shas"][index[n]] for n in names]
        patches = None if shas == [None] else self.store.patches(shas)
        refusal = self._over_budget(ws, patches, meta["options"])
        if refusal is not None:  # a job queued under other limits: fail it before anything is allocated
            self.chunks_over_budget += 1
            self.store.fail_hypotheses(chunk.job_id, meta, names, refusal)
            self.queue.ack([chunk.entry_id])
            return
        item = _InFlight(chunk, meta, names)
        executor = self.executor
        options = meta["options"] if chunk.toys is None else {**meta["options"], "toy_range": chunk.toys}
        if _takes_cancel(executor):
            fut = executor.submit(ws, patches, options, cancel=self._guard(chunk.job_id))
        else:  # e.g. Globus Compute: the task cannot reach Redis; chunks not started are still dropped
            fut = executor.submit(ws, patches, options)
        fut.add_done_callback(lambda _f: setattr(item, "ended", time.perf_counter()))
        self.inflight[fut] = item

    def _guard(self, job_id: str) -> ChunkGuard:
        """The cancel token of one chunk: job cancelled, wall-time and memory budgets (fitserve.service.guard)."""
        s = self.settings
        return ChunkGuard(
            s.redis_url, self.store.job_key(job_id), wall_s=s.chunk_wall_s, max_rss_bytes=s.worker_memory()
        )

    def _over_budget(self, ws: bytes, patches: list[dict[str, Any]] | None, options: dict[str, Any]) -> str | None:
        """Why the chunk's batches would not fit the batch memory budget (None: they fit, or no plan)."""
        from fitserve.engine import plan_job

        budget = self.settings.batch_memory()
        try:
            largest = plan_job(decode_workspace(ws), patches, options, budget_bytes=budget).largest("peak_bytes")
        except Exception:  # the engine reports bad input itself, with the hypothesis it belongs to
            return None
        if largest is None or largest.peak_bytes <= budget:
            return None
        return (
            f"chunk refused before fitting: one hypothesis of its padded model (P = {largest.n_params}) needs "
            f"an estimated {largest.peak_bytes / 2**20:,.0f} MiB, more than the batch memory budget "
            f"{budget / 2**20:,.0f} MiB (FITSERVE_BATCH_MEMORY_BYTES)"
        )

    def _collect(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for chunks in flight; move finished ones (records or error) to ``finished``."""
        if not self.inflight:
            self.stop_event.wait(timeout)
            return
        done, _ = wait(list(self.inflight), timeout=timeout, return_when=FIRST_COMPLETED)
        for fut in done:
            item = self.inflight.pop(fut)
            elapsed = (item.ended or time.perf_counter()) - item.started
            try:
                fin = _Finished(item, fut.result(), None, elapsed, waited=self._redis_down)
            except Exception as exc:
                log.warning("chunk %s of job %s failed: %s", item.chunk.entry_id, item.chunk.job_id, exc)
                fin = _Finished(item, None, exc, elapsed, waited=self._redis_down)
            self.finished.append(fin)

    def _save_finished(self) -> None:
        """Store (then ack) finished chunks, oldest first; on a Redis error the rest wait for the next try."""
        while self.finished:
            fin = self.finished[0]
            try:
                self._save(fin)
            except OUTAGE_ERRORS:
                raise
            except redis.RedisError as exc:
                fin.failures += 1
                if fin.failures < MAX_STORE_FAILURES:
                    raise
                log.error(
                    "giving up storing chunk %s of job %s after %d Redis errors (%s); it stays pending and "
                    "will be delivered again",
                    fin.item.chunk.entry_id,
                    fin.item.chunk.job_id,
                    fin.failures,
                    exc,
                )
            else:
                self.chunks_done += 1
                if fin.waited or fin.attempts > 1:
                    self.chunks_kept += 1
            self.finished.pop(0)

    def _save(self, fin: _Finished) -> None:
        """Record one finished chunk and ack it.  Safe to repeat: recording is idempotent (HSETNX)."""
        item, job_id = fin.item, fin.item.chunk.job_id
        fin.attempts += 1
        if fin.error is None:
            records = fin.records or {}
            missing = [n for n in item.names if n not in records]
            if missing:
                self.store.fail_hypotheses(
                    job_id, item.meta, missing, "the engine returned no record for this hypothesis"
                )
            parts = {
                n: r for n, r in records.items() if item.chunk.toys is not None and "toy_q" in r and not r.get("error")
            }
            for name, rec in parts.items():  # one range of a toy-based hypothesis: merged when all ranges are in
                toyjobs.add_part(self.store, job_id, item.meta, name, item.chunk.toys, rec, compute_s=fin.elapsed)
            records = {n: r for n, r in records.items() if n not in parts}
            added, _ = self.store.store_records(job_id, item.meta, records, compute_s=0.0 if parts else fin.elapsed)
            if added < len(records):  # HSETNX kept the first record of each: counted once
                self.recorded_already += len(records) - added
                log.info(
                    "chunk %s of job %s: %d of its hypotheses were recorded already, they count once (ran twice, or stored again after a Redis error)",
                    item.chunk.entry_id,
                    job_id,
                    len(records) - added,
                )
        elif type(fin.error).__name__ == "Cancelled":  # its job was cancelled while it ran: nothing to record
            self.chunks_cancelled += 1
            log.info(
                "chunk %s of job %s stopped after %.1f s: the job was cancelled",
                item.chunk.entry_id,
                job_id,
                fin.elapsed,
            )
        else:
            exc = fin.error
            if type(exc).__name__ == "ChunkBudgetExceeded":
                self.chunks_over_budget += 1
            self.store.fail_hypotheses(job_id, item.meta, item.names, f"chunk failed: {type(exc).__name__}: {exc}")
        self.queue.ack([item.chunk.entry_id])

    def _drop_cancelled(self) -> None:
        """Cancel chunks of cancelled jobs that have not started on the executor yet."""
        for fut, item in list(self.inflight.items()):
            if self.store.state(item.chunk.job_id) == "cancelled":
                try:
                    cancelled = fut.cancel()
                except Exception:
                    cancelled = False
                if cancelled:
                    self.inflight.pop(fut, None)
                    self.queue.ack([item.chunk.entry_id])
