"""Process-wide settings of the JAX runtime the engine needs: float64, CPU threads, compile cache.

Call :func:`configure` before the first fit (``fitserve.engine.scan`` does on
import).  Threads must be set before JAX creates its CPU backend, so they are
read from the environment once per process.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: What ``FITSERVE_THREADS`` means: the cores one engine process may keep busy.  Unset
#: or ``auto``: every core of the process's CPU affinity (what a Slurm step, ``taskset``
#: or a cgroup gives it).  XLA's CPU runtime runs independent parts of the compiled fit
#: on a pool of that many threads (1Lbb steady on 2 quiet cores: 33 ms per hypothesis,
#: against 50 ms with a pool of one).  The matrix kernels themselves (Eigen, LAPACK's
#: Cholesky through OpenBLAS) always run on one thread: the lanes vectorise the work
#: already, and a second OpenBLAS thread per 128 x 128 factorisation made steady fits
#: 2x slower (benchmarks/bench_paper.py).
THREADS_VAR = "FITSERVE_THREADS"

_configured: dict[str, object] = {}
_pool_started = False


def allowed_cores() -> int:
    """The cores this process may keep busy: its CPU affinity, or less where a CPU quota says so.

    A container's CPU limit (Kubernetes ``resources.limits.cpu``, Docker ``--cpus``) is a
    cgroup quota, not an affinity: the process still sees every core of the node, and a
    pool of that many threads would be throttled.  So the quota counts too.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def cgroup_cpu_quota(root: str | os.PathLike[str] = "/sys/fs/cgroup") -> float | None:
    """The cgroup's CPU quota in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None where unlimited."""
    base = Path(root)
    try:
        quota, period = (base / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((base / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((base / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def threads_from_env() -> int:
    """``FITSERVE_THREADS`` as a number of cores (unset or ``auto``: :func:`allowed_cores`)."""
    value = os.environ.get(THREADS_VAR, "").strip()
    if not value or value == "auto":
        return allowed_cores()
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{THREADS_VAR} must be a positive integer or 'auto', not {value!r}")
    return n


def configure_env(threads: int | None = None) -> int:
    """Set the thread count before JAX starts its CPU backend (``XLA_FLAGS``, BLAS variables, pool).

    Called when the engine's JAX modules are first imported, so that every
    process of the engine (CLI, worker, tests) runs with the same setting.
    """
    n = threads if threads is not None else threads_from_env()
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        # single-threaded matrix kernels: the runtime pool below is the engine's parallelism
        flags = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    if _fast_compile() and "xla_cpu_use_fusion_emitters" not in flags:
        flags = f"{flags} --xla_cpu_use_fusion_emitters=false".strip()
    os.environ["XLA_FLAGS"] = flags
    _blas_env()
    if n < allowed_cores():
        _start_cpu_backend(n)
    return n


def _start_cpu_backend(n: int) -> None:
    """Create JAX's CPU client with a runtime pool of ``n`` threads, then give every thread all cores back.

    XLA has no flag for its pool's size (jax-ml/jax #743, #1539): it starts one
    thread per core of the affinity it sees when the client is created.  So the
    affinity is narrowed to ``n`` cores for that moment only, and afterwards
    every thread of the process (the pool's included) may again run on any
    allowed core.  Pinning the pool instead made fits 2x slower beside other
    work, whenever the scheduler left a busy process on the pinned core.
    Does nothing once the backend exists (JAX was used before the engine).
    """
    global _pool_started
    if _pool_started or not hasattr(os, "sched_setaffinity"):
        return
    _pool_started = True
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(sorted(allowed)[:n]))
    try:
        import jax

        jax.devices("cpu")
    finally:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), allowed)
            except OSError:  # a thread that ended meanwhile
                pass


#: the thread-count variables of the BLAS/LAPACK builds a Python process may load
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def _blas_env() -> None:
    """One thread for the BLAS/LAPACK libraries that are loaded *later* (unless the user set one).

    XLA's CPU Cholesky calls LAPACK through SciPy (``scipy.linalg.cython_lapack``),
    whose own OpenBLAS is loaded only at the first factorisation, after
    :func:`_limit_blas` has run.  Left to itself that OpenBLAS starts one
    spinning thread per core for 128 x 128 matrices: steady 1Lbb fits took
    65 ms per hypothesis instead of 33 ms on 2 quiet cores, and slowed down
    further beside other work.  A library reads these variables when it loads,
    so they are set here, before JAX starts.
    """
    for var in BLAS_THREAD_VARS:
        os.environ.setdefault(var, "1")


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
    _limit_blas()
    import jax

    jax.config.update("jax_enable_x64", True)
    _configured["threads"] = n
    if os.environ.get("FITSERVE_JAX_CACHE", "1") != "0":
        _configured["cache"] = str(enable_compilation_cache(cache))
    return dict(_configured)


def _limit_blas() -> None:
    """One thread for the BLAS/LAPACK libraries already loaded (:func:`_blas_env` covers later ones)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the libraries keep their own settings
        return
    threadpool_limits(limits=1)


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
