"""Toy-based jobs: chunks of (hypothesis, toy range), their parts in Redis, and the merge.

A toy job (``calculator: "toybased"``) splits each hypothesis's ``n_toys``
toys into ranges of ``toy_chunk_size`` toys aligned at multiples of it from 0
(``[0, c), [c, 2c), ...``); each range of each hypothesis is one chunk of the
queue.  A chunk's record carries the test statistic of each of its toys and is
stored as a *part*, keyed by content (workspace, patch, every option except
``n_toys``), engine version and range::

    P:toypart:{base}:{start}-{stop}   one range's record with its toys (zlib JSON): the cache
    P:job:{id}:toyparts:{name}        hash: "start-stop" -> 1 for the parts this job has

So a resubmission with more toys (same seed) finds the ranges it shares with
the earlier job and computes only the new ones.  When a hypothesis has all
its parts, they are merged (:func:`fitserve.engine.merge_toy_records`) into
its record, stored like any other (``P:result``, the cache of whole
hypotheses).  While parts are missing, ``partial`` gives the merged numbers
so far (CLs with its current uncertainty).  Progress is counted in toys
(``toys_done`` / ``toys_total`` in the job hash).
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Sequence

from fitserve import engine


def is_toys(options: dict[str, Any]) -> bool:
    return options.get("calculator") == "toybased"


def toy_ranges(n_toys: int, size: int) -> list[list[int]]:
    """``[start, stop)`` ranges of ``size`` toys aligned at multiples of ``size`` (the last one shorter)."""
    size = max(1, int(size))
    return [[a, min(a + size, n_toys)] for a in range(0, n_toys, size)]


def base_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options a part's numbers depend on: all but the toy count and range."""
    return {k: v for k, v in options.items() if k not in ("n_toys", "toy_range")}


def entries(names: Sequence[str], ranges: list[list[int]]) -> list[dict[str, Any]]:
    """Queue entries of a toy job: one per hypothesis and range (what :class:`ChunkQueue` stores as ``names``)."""
    return [{"names": [n], "toys": r} for n in names for r in ranges]


def _part_key(store: Any, meta: dict[str, Any], name: str, rng: Sequence[int]) -> str:
    i = meta["names"].index(name)
    return store.k("toypart", meta["toys"]["bases"][i], f"{int(rng[0])}-{int(rng[1])}")


def _parts_key(store: Any, job_id: str, name: str) -> str:
    return store.job_key(job_id, f"toyparts:{name}")


def has_part(store: Any, meta: dict[str, Any], name: str, rng: Sequence[int]) -> bool:
    return bool(store.r.exists(_part_key(store, meta, name, rng)))


def add_part(
    store: Any,
    job_id: str,
    meta: dict[str, Any],
    name: str,
    rng: Sequence[int],
    record: dict[str, Any] | None,
    compute_s: float = 0.0,
) -> bool:
    """Record one range of ``name`` (``record`` None: it is in the cache already); merge when all are in.

    Idempotent: a range counts once however often it is stored.  Returns whether the hypothesis is complete.
    """
    key = _part_key(store, meta, name, rng)
    if record is not None:
        store.r.set(key, zlib.compress(json.dumps(record).encode(), 3), nx=True)
    field = f"{int(rng[0])}-{int(rng[1])}"
    if store.r.hsetnx(_parts_key(store, job_id, name), field, "1"):
        pipe = store.r.pipeline(transaction=False)
        pipe.hincrby(store.job_key(job_id), "toys_done", 2 * (int(rng[1]) - int(rng[0])))
        if record is None:
            pipe.hincrby(store.job_key(job_id), "toys_cached", 2 * (int(rng[1]) - int(rng[0])))
        if compute_s:
            pipe.hincrbyfloat(store.job_key(job_id), "compute_s", compute_s)
        pipe.execute()
    if store.r.hlen(_parts_key(store, job_id, name)) < len(meta["toys"]["ranges"]):
        return False
    merged = merge(store, meta, name)
    if merged is not None:
        store.store_records(job_id, meta, {name: merged})
    return True


def _load_parts(store: Any, meta: dict[str, Any], name: str) -> list[dict[str, Any]]:
    keys = [_part_key(store, meta, name, r) for r in meta["toys"]["ranges"]]
    return [json.loads(zlib.decompress(raw)) for raw in store.r.mget(keys) if raw is not None]


def _merge_parts(parts: list[dict[str, Any]], options: dict[str, Any]) -> dict[str, Any]:
    return engine.merge_toy_records(
        parts,
        options.get("test_stat", "qtilde"),
        int(options.get("n_toys", 1000)),
        int(options.get("seed", 0)),
        float(options.get("toys_max_failed", 0.01)),
    )


def merge(store: Any, meta: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The record of ``name`` from all its parts (None if one is missing)."""
    parts = _load_parts(store, meta, name)
    if len(parts) < len(meta["toys"]["ranges"]):
        return None
    return _merge_parts(parts, meta["options"])


def partial(store: Any, meta: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The numbers of the parts of ``name`` stored so far, flagged ``partial`` (None: no part yet)."""
    parts = _load_parts(store, meta, name)
    if not parts:
        return None
    rec = _merge_parts(parts, meta["options"])
    rec["partial"] = True
    return rec


def distributions(store: Any, meta: dict[str, Any], name: str):
    """``(q_obs, q_sb, q_b)`` of the toys of ``name`` stored so far (None: none), for the plot."""
    parts = _load_parts(store, meta, name)
    if not parts:
        return None
    return engine.toy_distributions(parts)
