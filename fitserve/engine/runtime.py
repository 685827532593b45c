"""Process-wide settings of the JAX runtime the engine needs: float64, CPU threads, compile cache.

Call :func:`configure` before the first fit (``fitserve.engine.scan`` does on
import).  Threads must be set before JAX creates its CPU backend, so they are
read from the environment once per process.
"""

from __future__ import annotations

import os
from pathlib import Path

#: XLA CPU threads per engine process unless ``FITSERVE_THREADS`` says otherwise.
#: One: the fit lanes already vectorise the work; XLA's intra-op threads gain
#: little on matrices of this size, and where the cores are shared (a loaded
#: node, several workers) they made fits 5x slower than single-threaded ones
#: (benchmarks/bench_paper.py, "under load").  Scale out with workers instead.
DEFAULT_THREADS = 1

_configured: dict[str, object] = {}


def threads_from_env() -> int:
    value = os.environ.get("FITSERVE_THREADS", "").strip()
    if not value:
        return DEFAULT_THREADS
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    n = int(value)
    if n < 1:
        raise ValueError(f"FITSERVE_THREADS must be a positive integer or 'auto', not {value!r}")
    return n


def configure_env(threads: int | None = None) -> int:
    """Put the thread setting into ``XLA_FLAGS`` before JAX starts its CPU backend.

    Called when the engine's JAX modules are first imported, so that every
    process of the engine (CLI, worker, tests) runs with the same setting and
    gives bit-identical results for the same batch shapes.
    """
    n = threads if threads is not None else threads_from_env()
    flags = os.environ.get("XLA_FLAGS", "")
    if n == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        # XLA has no flag for a thread count: one thread, or its default (all cores)
        flags = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    if _fast_compile() and "xla_cpu_use_fusion_emitters" not in flags:
        flags = f"{flags} --xla_cpu_use_fusion_emitters=false".strip()
    os.environ["XLA_FLAGS"] = flags
    return n


#: jaxlib releases whose XLA knows ``--xla_cpu_use_fusion_emitters`` and where turning them off
#: was measured (an XLA flag it does not know aborts the process, so only these get it)
FAST_COMPILE_JAXLIB = ((0, 10), (0, 11))


def _fast_compile() -> bool:
    """XLA's older CPU emitters: the fit block compiles in 1.9 s instead of 2.9 s (1Lbb), fits as fast.

    Measured with benchmarks/bench_paper.py's figures on jaxlib 0.10.2 (staus: 2.7 -> 1.9 s of
    compile, the same steady ms per hypothesis within noise).  ``FITSERVE_XLA_FAST_COMPILE=0``
    keeps XLA's default.
    """
    if os.environ.get("FITSERVE_XLA_FAST_COMPILE", "1") == "0":
        return False
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = tuple(int(p) for p in version("jaxlib").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    lo, hi = FAST_COMPILE_JAXLIB
    return lo <= release < hi


def configure(threads: int | None = None, cache: str | os.PathLike[str] | None = None) -> dict[str, object]:
    """Set float64, the XLA CPU thread count (``FITSERVE_THREADS``) and the persistent compile cache.

    Idempotent; the thread count only takes effect if JAX has not started its
    CPU backend yet in this process.  Returns what was set.
    """
    if _configured:
        return dict(_configured)
    n = configure_env(threads)
    _limit_blas(n)
    import jax

    jax.config.update("jax_enable_x64", True)
    _configured["threads"] = n
    if os.environ.get("FITSERVE_JAX_CACHE", "1") != "0":
        _configured["cache"] = str(enable_compilation_cache(cache))
    return dict(_configured)


def _limit_blas(n: int) -> None:
    """The same thread count for the BLAS/LAPACK libraries already loaded (XLA calls LAPACK for Cholesky)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the libraries keep their own settings
        return
    threadpool_limits(limits=n)


def enable_compilation_cache(path: str | os.PathLike[str] | None = None) -> Path:
    """Turn on JAX's persistent compilation cache (``FITSERVE_JAX_CACHE``).

    A new process fitting a structure of a shape bucket it has seen before
    then loads the compiled fit instead of compiling it again.
    """
    import jax

    cache = Path(path or os.environ.get("FITSERVE_JAX_CACHE") or Path.home() / ".cache" / "fitserve" / "jax")
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache
