"""The executor interface: run one chunk of a scan somewhere, get a future of records.

An executor knows nothing about HTTP or Redis.  The worker hands it the
background workspace (once per chunk), the chunk's patches and the scan
options; it returns a :class:`concurrent.futures.Future` whose result is
``{patch_name: record}`` exactly as :func:`fitserve.engine.scan.run_chunk`
returns it.

What runs remotely is :func:`run_chunk_task`, a plain importable function of
the installed package (no closures are pickled), so any backend that can call
a Python function by reference (Parsl, Globus Compute, a process pool) can run
it.  Backends are plug-ins found by name through entry points
(:mod:`fitserve.executors.registry`).
"""

from __future__ import annotations

import abc
import json
import zlib
from concurrent.futures import Future
from typing import Any, Callable, Sequence

from fitserve.engine import InputError, error_record, patch_values


def decode_workspace(workspace: dict[str, Any] | bytes | str) -> dict[str, Any]:
    """Accept a workspace as a dict, JSON text, or zlib-compressed JSON bytes."""
    if isinstance(workspace, dict):
        return workspace
    if isinstance(workspace, (bytes, bytearray, memoryview)):
        raw = bytes(workspace)
        if raw[:1] not in (b"{", b" ", b"\n"):
            raw = zlib.decompress(raw)
        return json.loads(raw)
    return json.loads(workspace)


def error_records(patches: Sequence[dict[str, Any] | None], message: str) -> dict[str, dict[str, Any]]:
    """One error record per patch (by its name), for chunks an executor refuses or loses."""
    return {p["metadata"]["name"]: error_record(patch_values(p), message) for p in patches if p}


def run_chunk_task(
    workspace: dict[str, Any] | bytes | str,
    patches: Sequence[dict[str, Any]] | None,
    options: dict[str, Any],
    cancel: Callable[[], bool] | None = None,
) -> dict[str, dict[str, Any]]:
    """The remote task: fit one chunk of hypotheses and return plain records.

    ``workspace`` is the background workspace, sent once per chunk (a dict or
    compressed JSON bytes as the job store keeps it).  ``patches`` are pyhf
    patch objects (``None``: the workspace is itself the one hypothesis).

    If the engine rejects the chunk as bad input, each patch is retried alone
    so that one bad patch marks only its own hypothesis as failed.

    ``cancel``: an optional picklable *cancel token*, called by the engine between fit blocks
    (:func:`fitserve.engine.scan.run_chunk`); True stops the chunk with
    :class:`~fitserve.engine.errors.Cancelled`, an exception it raises ends the chunk with it.  The
    service passes a :class:`fitserve.service.guard.ChunkGuard`; executors only carry it.
    """
    from fitserve.engine import run_chunk

    ws = decode_workspace(workspace)
    patch_list = list(patches) if patches is not None else None
    try:
        return run_chunk(ws, patch_list, options, cancel=cancel)
    except InputError as exc:
        if not patch_list:
            raise
        if len(patch_list) == 1:
            return error_records(patch_list, str(exc))
    records: dict[str, dict[str, Any]] = {}
    for patch in patch_list:
        try:
            records.update(run_chunk(ws, [patch], options, cancel=cancel))
        except InputError as exc:
            records.update(error_records([patch], str(exc)))
    return records


class Executor(abc.ABC):
    """Runs chunks of a scan; one instance per worker process."""

    #: registry name, e.g. ``"local"`` or ``"parsl"``
    name: str = "base"
    #: whether :meth:`submit` takes a ``cancel`` token that reaches the running task
    accepts_cancel: bool = False

    @property
    def capacity(self) -> int:
        """How many chunks the worker should keep in flight at once."""
        return 1

    @abc.abstractmethod
    def submit(
        self,
        workspace: dict[str, Any] | bytes,
        patches: Sequence[dict[str, Any]] | None,
        options: dict[str, Any],
    ) -> Future:
        """Start one chunk; the future resolves to ``{patch_name: record}``.

        Executors with ``accepts_cancel`` also take ``cancel=`` (a picklable token for
        :func:`run_chunk_task`).
        """

    def describe(self) -> dict[str, Any]:
        """A small JSON-able description for the health endpoint."""
        return {"executor": self.name, "capacity": self.capacity}

    def shutdown(self) -> None:  # noqa: B027  (optional: an executor holding nothing needs no shutdown)
        """Release workers and threads; pending futures may be cancelled."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
