"""The worker loop: take chunks from the queue, run them on an executor, store records.

One worker keeps up to ``executor.capacity`` chunks in flight.  While a chunk
runs, the worker heartbeats its queue entries so nobody else takes them; if the
worker dies, the entries go stale and another worker claims them
(:meth:`ChunkQueue.claim_stale`).  Before running a chunk it drops hypotheses
that another job computed meanwhile (the cache), and it skips chunks of
cancelled jobs.
"""

from __future__ import annotations

import logging
import os
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
from fitserve.service.queue import Chunk, ChunkQueue
from fitserve.service.settings import Settings
from fitserve.service.store import FINAL_STATES, JobStore

log = logging.getLogger("fitserve.worker")


@dataclass
class _InFlight:
    chunk: Chunk
    meta: dict[str, Any]
    names: list[str]
    started: float = field(default_factory=time.perf_counter)


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, health_check_interval=30, socket_keepalive=True)


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
        self.queue = ChunkQueue(self.r, settings.key_prefix)
        self._executor = executor
        self._own_executor = executor is None
        self.stop_event = threading.Event()
        self.inflight: dict[Future, _InFlight] = {}
        self._meta = _LRU(64)
        self._ws = _LRU(4)
        self.chunks_done = 0

    # lifecycle ---------------------------------------------------------------
    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = get_executor(self.settings.executor, **self.settings.executor_settings())
        return self._executor

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        """Loop until :meth:`stop`; leaves unfinished chunks claimable by other workers."""
        self.queue.ensure_group()
        executor = self.executor
        capacity = max(1, executor.capacity)
        claim_every = max(0.1, self.settings.claim_idle_ms / 2000)
        touch_every = max(0.05, self.settings.claim_idle_ms / 3000)
        last_beat = last_claim = last_touch = last_cancel = 0.0
        log.info("worker %s started: %s", self.name, executor.describe())
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if now - last_beat > 2:
                    self._heartbeat()
                    last_beat = now
                if self.inflight and now - last_touch > touch_every:
                    self.queue.touch(self.name, [f.chunk.entry_id for f in self.inflight.values()])
                    last_touch = now
                if self.inflight and now - last_cancel > 0.5:
                    self._drop_cancelled()
                    last_cancel = now
                free = capacity - len(self.inflight)
                if free > 0:
                    chunks: list[Chunk] = []
                    if now - last_claim > claim_every:
                        chunks = self.queue.claim_stale(self.name, self.settings.claim_idle_ms, free)
                        last_claim = now
                    if len(chunks) < free:
                        block = None if self.inflight else 500
                        chunks += self.queue.read(self.name, free - len(chunks), block)
                    for chunk in chunks:
                        self._start(chunk)
                if self.inflight:
                    done, _ = wait(list(self.inflight), timeout=0.2, return_when=FIRST_COMPLETED)
                    for fut in done:
                        self._finish(fut, self.inflight.pop(fut))
        finally:
            self._release()

    def _heartbeat(self) -> None:
        info = {
            "name": self.name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": __version__,
            "inflight": len(self.inflight),
            "chunks_done": self.chunks_done,
            **self.executor.describe(),
        }
        self.store.worker_heartbeat(self.name, info)

    def _release(self) -> None:
        """On stop: make our unfinished chunks claimable at once, shut the executor down."""
        ids = [f.chunk.entry_id for f in self.inflight.values()]
        try:
            if ids:
                self.r.xclaim(
                    self.queue.stream, self.queue.group, self.name, 0, ids,
                    idle=self.settings.claim_idle_ms * 10, justid=True,
                )
            else:  # nothing pending under our name: leave no stale consumer behind
                self.r.xgroup_delconsumer(self.queue.stream, self.queue.group, self.name)
            self.store.worker_gone(self.name)
        except redis.RedisError:
            pass
        self.inflight.clear()
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
        except Exception as exc:  # keep the worker alive; the chunk fails visibly
            log.exception("chunk %s of job %s could not start", chunk.entry_id, chunk.job_id)
            meta = self._job_meta(chunk.job_id) if chunk.job_id else None
            if meta is not None:
                self.store.fail_hypotheses(chunk.job_id, meta, chunk.names, f"chunk could not start: {type(exc).__name__}: {exc}")
            self.queue.ack([chunk.entry_id])

    def _start_inner(self, chunk: Chunk) -> None:
        meta = self._job_meta(chunk.job_id) if chunk.job_id else None
        if meta is None:
            self.queue.ack([chunk.entry_id])
            return
        if self.store.state(chunk.job_id) in FINAL_STATES:
            self.queue.ack([chunk.entry_id])
            return
        if chunk.deliveries > self.settings.max_deliveries:
            self.store.fail_hypotheses(
                chunk.job_id, meta, chunk.names,
                f"chunk abandoned after {chunk.deliveries - 1} attempts (its worker stopped responding)",
            )
            self.queue.ack([chunk.entry_id])
            return
        cached = self.store.cached_names(meta, chunk.names)
        if cached:
            self.store.mark_cached(chunk.job_id, meta, cached)
        names = [n for n in chunk.names if n not in cached]
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
        fut = self.executor.submit(ws, patches, meta["options"])
        self.inflight[fut] = _InFlight(chunk, meta, names)

    def _finish(self, fut: Future, item: _InFlight) -> None:
        elapsed = time.perf_counter() - item.started
        job_id = item.chunk.job_id
        try:
            records = fut.result()
            missing = [n for n in item.names if n not in records]
            if missing:
                self.store.fail_hypotheses(job_id, item.meta, missing, "the engine returned no record for this hypothesis")
            self.store.store_records(job_id, item.meta, records, compute_s=elapsed)
        except Exception as exc:
            log.warning("chunk %s of job %s failed: %s", item.chunk.entry_id, job_id, exc)
            self.store.fail_hypotheses(job_id, item.meta, item.names, f"chunk failed: {type(exc).__name__}: {exc}")
        self.queue.ack([item.chunk.entry_id])
        self.chunks_done += 1

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


def run_worker(settings: Settings, stop: threading.Event | None = None) -> None:
    worker = Worker(settings)
    if stop is not None:
        threading.Thread(target=lambda: (stop.wait(), worker.stop()), daemon=True).start()
    worker.run()
