"""Traced fits kept across processes: ``jax.export`` of the engine's jitted kernels, per shape.

JAX's persistent compilation cache (``runtime.enable_compilation_cache``) saves
XLA's work, but every new process still traces the Python fit loop and lowers
it to StableHLO before it can look the executable up: 0.5 s for the fit block,
more than a whole 16-point scan of a small model takes.  :func:`exported_jit`
adds the missing level.  The first process to meet a shape signature exports
the jitted function (``jax.export``: the lowered module, serialised) next to
the compilation cache; later processes deserialise it instead of tracing, and
XLA's cache then serves the executable.

The file's key covers everything that could change the traced program: the
function, its static arguments, the tree structure, shapes and dtypes of its
inputs, the source of every engine module, the JAX and jaxlib versions, the
backend and ``XLA_FLAGS``.  An edit to the engine therefore never runs a stale
export.  Anything that cannot be exported (a PyTree node type with no
serialisation) falls back to the plain ``jax.jit``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from functools import cache
from pathlib import Path
from typing import Any, Callable, Sequence

import jax

#: counters for the benchmark and the tests: exports written, loaded, and calls that fell back to jit
STATS = {"exported": 0, "loaded": 0, "fallback": 0}
_lock = threading.Lock()


@cache
def _code_hash() -> str:
    """The engine's source and the JAX toolchain, hashed once per process."""
    import jaxlib

    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(f"{jax.__version__} {jaxlib.__version__} {jax.default_backend()}".encode())
    h.update(os.environ.get("XLA_FLAGS", "").encode())
    h.update(str(jax.config.jax_enable_x64).encode())
    return h.hexdigest()


def _folder() -> Path | None:
    """``<compilation cache>/export``, or None where the compilation cache or ``FITSERVE_AOT`` is off."""
    path = jax.config.jax_compilation_cache_dir
    if not path or os.environ.get("FITSERVE_JAX_CACHE", "1") == "0" or os.environ.get("FITSERVE_AOT", "1") == "0":
        return None
    return Path(path) / "export"


def _signature(args: Sequence[Any]) -> str:
    leaves, tree = jax.tree_util.tree_flatten(args)
    shapes = ";".join(f"{getattr(x, 'dtype', type(x).__name__)}{tuple(getattr(x, 'shape', ()))}" for x in leaves)
    return f"{tree}|{shapes}"


def exported_jit(static_argnames: Sequence[str] = ()) -> Callable[[Callable], Callable]:
    """``jax.jit(fun, static_argnames=...)`` whose traced program is also kept on disk per signature.

    Use as a decorator.  Static arguments must be passed by keyword (as the
    engine does), so that they can be part of the key.
    """

    def wrap(fun: Callable) -> Callable:
        jitted = jax.jit(fun, static_argnames=tuple(static_argnames))
        loaded: dict[str, Callable] = {}

        def call(*args: Any, **static: Any) -> Any:
            folder = _folder()
            if folder is None:
                return jitted(*args, **static)
            sig = f"{fun.__module__}.{fun.__qualname__}|{sorted(static.items())}|{_signature(args)}"
            run = loaded.get(sig)
            if run is None:
                with _lock:
                    run = loaded.get(sig) or _load_or_export(jitted, folder, sig, args, static)
                    loaded[sig] = run
            return run(*args)

        call.jitted = jitted  # type: ignore[attr-defined]
        call.__doc__, call.__name__, call.__wrapped__ = fun.__doc__, fun.__name__, fun  # type: ignore[attr-defined]
        return call

    return wrap


def _load_or_export(jitted: Callable, folder: Path, sig: str, args: Sequence[Any], static: dict) -> Callable:
    from jax import export

    key = hashlib.sha256(f"{_code_hash()}|{sig}".encode()).hexdigest()[:40]
    path = folder / f"{key}.jaxexport"
    exp = None
    if path.exists():
        try:
            exp = export.deserialize(bytearray(path.read_bytes()))
            STATS["loaded"] += 1
        except Exception:  # a truncated or foreign file: export again
            exp = None
    if exp is None:
        try:
            exp = export.export(jitted)(*args, **static)
            blob = exp.serialize()
        except Exception:  # e.g. a PyTree node type without serialisation: no disk level for it
            STATS["fallback"] += 1
            return lambda *a: jitted(*a, **static)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(bytes(blob))
        os.replace(tmp, path)  # atomic: concurrent workers never read half a file
        STATS["exported"] += 1
    return jax.jit(exp.call)
