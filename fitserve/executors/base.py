"""The executor interface: run one chunk of a scan somewhere, get a future of records.

An executor knows nothing about HTTP or Redis.  The worker hands it the
background workspace (once per chunk), the chunk's patches and the scan
options; it returns a :class:`concurrent.futures.Future` whose result is
``{patch_name: record}`` exactly as :func:`fitserve.engine.scan.run_chunk`
returns it.

What runs remotely is :func:`run_chunk_task`, a plain importable function of
the installed package (no closures are pickled), so any backend that can call
a Python function by reference (Parsl, Globus Compute, a process pool) can run
it.  New backends register themselves with :func:`register_executor` and are
built by name with :func:`get_executor`.
"""

from __future__ import annotations

import abc
import json
import math
import zlib
from concurrent.futures import Future
from typing import Any, Callable, Sequence


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


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def clean_record(rec: dict[str, Any]) -> dict[str, Any]:
    """Make a record strict JSON: non-finite numbers become null.

    A hypothesis whose observed CLs is not a finite number cannot be used for
    limits or contours, so it is marked ``converged: false``.
    """
    cls_obs = rec.get("CLs_obs")
    out = _finite(rec)
    if rec.get("converged") and not rec.get("error") and (cls_obs is None or not math.isfinite(float(cls_obs))):
        out["converged"] = False
    return out


def _error_record(patch: dict[str, Any] | None, message: str) -> dict[str, Any]:
    values = list((patch or {}).get("metadata", {}).get("values", []))
    return {
        "values": values,
        "CLs_obs": None,
        "CLs_exp": None,
        "CLsb_obs": None,
        "CLb_obs": None,
        "mu_hat": None,
        "nll_free": None,
        "converged": False,
        "upper_limit": None,
        "error": message,
    }


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
    from fitserve.engine.errors import InputError
    from fitserve.engine.scan import run_chunk

    ws = decode_workspace(workspace)
    patch_list = list(patches) if patches is not None else None
    try:
        return {name: clean_record(rec) for name, rec in run_chunk(ws, patch_list, options, cancel=cancel).items()}
    except InputError as exc:
        if not patch_list or len(patch_list) == 1:
            name = patch_list[0]["metadata"]["name"] if patch_list else None
            if name is None:
                raise
            return {name: _error_record(patch_list[0], str(exc))}
    records: dict[str, dict[str, Any]] = {}
    for patch in patch_list:
        name = patch["metadata"]["name"]
        try:
            records.update({n: clean_record(r) for n, r in run_chunk(ws, [patch], options, cancel=cancel).items()})
        except InputError as exc:
            records[name] = _error_record(patch, str(exc))
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

    def shutdown(self) -> None:
        """Release workers and threads; pending futures may be cancelled."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


_REGISTRY: dict[str, Callable[..., Executor]] = {}


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Make an executor available to :func:`get_executor` (and ``fitserve worker --executor``)."""
    _REGISTRY[name] = factory


def available_executors() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_executor(name: str, **settings: Any) -> Executor:
    """Build the executor called ``name``; ``settings`` go to its constructor.

    Unknown keyword settings are ignored by the built-in executors so that one
    settings object can configure any of them.
    """
    _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None
    return factory(**settings)


def _load_builtin() -> None:
    if "local" not in _REGISTRY:
        from fitserve.executors import local  # noqa: F401  (registers itself)
    if "parsl" not in _REGISTRY:
        from fitserve.executors import parsl as _parsl  # noqa: F401
    if "globus" not in _REGISTRY:
        from fitserve.executors import globus as _globus  # noqa: F401  (imports the SDK only when built)
