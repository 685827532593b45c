"""The task a Globus Compute endpoint runs for fitserve, and the worker side of its protocol.

Globus Compute caps every submission, every batch request and every result at
10 MB and carries the task's arguments through its cloud service, so the
:mod:`fitserve.executors.globus` executor does not send the background
workspace with every chunk.  It sends one *request* mapping per task::

    {"protocol": 1,
     "expect":   {"fitserve": "0.1.0", "engine": "jax-2", "python": "3.11"},
     "ws_sha":   "<sha256 of the compressed workspace bytes>",
     "ws":       b"<zlib JSON>" or None,        # None: the worker should have it cached
     "patches":  [b"<zlib JSON of one patch>", ...] or None,
     "options":  {...},
     "max_result_bytes": 10485760}

and :func:`run_globus_task` answers with a small *reply* mapping whose
``status`` is ``ok`` (``records`` is the zlib JSON of ``{patch_name: record}``),
``need_workspace`` (the workspace is not cached here: the executor sends the
request again with ``ws``), ``version_mismatch`` (``message`` names both sides'
fitserve, engine and Python versions) or ``result_too_large``.

The workspace cache is a directory (``FITSERVE_WORKSPACE_CACHE``, default
``~/.cache/fitserve/workspaces``; on a shared home one copy serves every node)
plus a small in-process map, both keyed by content hash, so the workspace
crosses the cloud once per endpoint, not once per chunk.

Every value in a request and a reply is a plain ``bytes``/``str``/``dict``/``list``,
whose pickles read the same on any Python 3, so a version mismatch reaches this
check instead of failing as ``WorkerLost`` while the arguments are unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

PROTOCOL = 1
ENV_CACHE = "FITSERVE_WORKSPACE_CACHE"
_MEMORY: OrderedDict[str, bytes] = OrderedDict()
_MEMORY_ENTRIES = 4
_LOCK = threading.Lock()


def versions() -> dict[str, str]:
    """What this side runs: fitserve, the engine's numerical version, Python (major.minor) and a few
    packages whose versions matter for the fits and for Globus Compute's serialization."""
    from importlib.metadata import PackageNotFoundError, version

    import fitserve
    from fitserve.engine import ENGINE_VERSION

    out = {
        "fitserve": fitserve.__version__,
        "engine": ENGINE_VERSION,
        "python": ".".join(platform.python_version_tuple()[:2]),
    }
    for pkg in ("jax", "jaxlib", "dill", "globus-compute-sdk", "globus-compute-endpoint"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


#: the versions that must agree between the client that submits and the worker that fits
MATCHED = ("fitserve", "engine", "python")


def mismatch(expect: dict[str, str], have: dict[str, str]) -> str | None:
    """A message naming both sides' versions if any of :data:`MATCHED` differ, else None."""
    diff = [k for k in MATCHED if k in expect and expect.get(k) != have.get(k)]
    if not diff:
        return None

    def side(v: dict[str, str]) -> str:
        return f"fitserve {v.get('fitserve', '?')}, engine {v.get('engine', '?')}, Python {v.get('python', '?')}"

    return (
        f"version mismatch ({', '.join(diff)}): the client runs {side(expect)}; the endpoint's worker runs "
        f"{side(have)}. Install the same fitserve and Python on both sides (docs/hpc-centres.md), "
        f"e.g. use the fitserve worker container or pip install 'fitserve[globus]=={expect.get('fitserve')}'."
    )


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "fitserve" / "workspaces")


def workspace_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _remember(sha: str, data: bytes) -> None:
    with _LOCK:
        _MEMORY[sha] = data
        _MEMORY.move_to_end(sha)
        while len(_MEMORY) > _MEMORY_ENTRIES:
            _MEMORY.popitem(last=False)


def cache_put(sha: str, data: bytes) -> None:
    """Keep a workspace in memory and (best effort, atomically) on disk."""
    if workspace_sha(data) != sha:
        raise ValueError(f"workspace content does not match its hash {sha[:12]}")
    _remember(sha, data)
    d = cache_dir()
    target = d / f"{sha}.json.z"
    if target.exists():
        return
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError:  # a read-only or full cache only costs another transfer
        pass


def cache_get(sha: str) -> bytes | None:
    with _LOCK:
        data = _MEMORY.get(sha)
    if data is not None:
        return data
    try:
        data = (cache_dir() / f"{sha}.json.z").read_bytes()
    except OSError:
        return None
    if workspace_sha(data) != sha:  # a torn or foreign file: treat as a miss
        return None
    _remember(sha, data)
    return data


def run_globus_task(request: dict[str, Any]) -> dict[str, Any]:
    """Fit one task's hypotheses on the endpoint (see the module docstring for the protocol)."""
    have = versions()
    if request.get("protocol") != PROTOCOL:
        return {
            "status": "version_mismatch",
            "versions": have,
            "message": f"task protocol {request.get('protocol')!r} from the client, {PROTOCOL} on the endpoint's "
            f"worker (fitserve {have['fitserve']}): install the same fitserve on both sides",
        }
    msg = mismatch(request.get("expect") or {}, have)
    if msg:
        return {"status": "version_mismatch", "message": msg, "versions": have}
    sha = request["ws_sha"]
    ws = request.get("ws")
    if ws is not None:
        cache_put(sha, ws)
    else:
        ws = cache_get(sha)
        if ws is None:
            return {"status": "need_workspace", "ws_sha": sha}
    from fitserve.executors.base import run_chunk_task

    patches_z = request.get("patches")
    patches = None if patches_z is None else [json.loads(zlib.decompress(p)) for p in patches_z]
    records = run_chunk_task(ws, patches, request.get("options") or {})
    packed = zlib.compress(json.dumps(records, separators=(",", ":")).encode())
    limit = int(request.get("max_result_bytes") or 10 * 1024 * 1024)
    if len(packed) > limit // 2:  # base64 and the pickle frame make the result ~4/3 of this
        return {
            "status": "result_too_large",
            "message": f"{len(records)} records compress to {len(packed):,} bytes, "
            f"over half the result limit of {limit:,} bytes: use smaller chunks",
        }
    return {"status": "ok", "records": packed}
