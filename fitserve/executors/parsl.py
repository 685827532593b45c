"""Parsl executor: chunks run on a HighThroughputExecutor's worker pool.

By default the pool is on this machine (``LocalProvider``, ``workers``
processes, loopback addresses only).  :func:`build_config` is the one place
that turns settings into a ``parsl.Config``; it also reads a *site file*
(YAML) naming a Parsl provider and launcher, so Slurm/PBS/Kubernetes sites can
be added as data without touching the service::

    # site.yaml (ready-made ones: endpoints/*.yaml; format: fitserve.executors.sites)
    capacity: 64                      # chunks the worker keeps in flight
    executor:                         # HighThroughputExecutor keyword arguments
      max_workers_per_node: 32
      address: 10.0.0.5
    provider:
      type: SlurmProvider             # any class in parsl.providers
      partition: short
      nodes_per_block: 1
      max_blocks: 2
      worker_init: "source /opt/venv/bin/activate"
      launcher: {type: SrunLauncher}  # any class in parsl.launchers
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Sequence

from fitserve.executors.base import Executor, run_chunk_task

_LABEL = "fitserve_htex"


def _venv_on_path() -> None:
    """Parsl starts ``interchange.py`` and ``process_worker_pool.py`` through PATH."""
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = bindir + (os.pathsep + path if path else "")


def build_config(
    workers: int = 1, run_dir: str | Path = "runinfo", site: str | Path | dict[str, Any] | None = None
) -> tuple[Any, int]:
    """Return ``(parsl.Config, capacity)`` for a local pool or a site description."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    workers = max(1, int(workers))
    if site is None:
        # each worker process's share of the cores sizes its XLA pool (runtime.threads_from_env);
        # without it every worker would start a pool of all cores beside the others
        share = max(1, (os.cpu_count() or 1) // workers)
        provider = LocalProvider(
            init_blocks=1, min_blocks=1, max_blocks=1, worker_init=f"export FITSERVE_THREADS={share}"
        )
        htex = HighThroughputExecutor(
            label=_LABEL,
            provider=provider,
            address="127.0.0.1",
            loopback_address="127.0.0.1",
            max_workers_per_node=workers,
            cores_per_worker=1.0 / workers if workers > (os.cpu_count() or 1) else 1.0,
            heartbeat_period=5,
            heartbeat_threshold=30,
            encrypted=False,
        )
        capacity = workers
    else:
        from fitserve.executors.sites import build_htex
        from fitserve.executors.sites import load_site as _load

        source = str(site) if not isinstance(site, dict) else "site"
        data = _load(site, source)
        htex, capacity = build_htex(data, workers, _LABEL, source)
    config = Config(
        executors=[htex], run_dir=str(run_dir), strategy="simple", usage_tracking=0, initialize_logging=False
    )
    return config, capacity


class ParslExecutor(Executor):
    """Submits :func:`run_chunk_task` to a Parsl HighThroughputExecutor.

    Each instance owns its own ``DataFlowKernel`` (not the global
    ``parsl.load``), so it can be created and cleaned up more than once per
    process.
    """

    name = "parsl"
    accepts_cancel = True  # the token is pickled with the task and asked in the pool's worker process

    def __init__(
        self,
        workers: int = 1,
        run_dir: str | Path | None = None,
        site: str | Path | None = None,
        data_dir: str | Path | None = None,
        **_ignored: Any,
    ) -> None:
        from parsl import python_app
        from parsl.dataflow.dflow import DataFlowKernel

        _venv_on_path()
        if run_dir is None:
            run_dir = Path(data_dir or ".") / "parsl-runinfo"
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.workers = max(1, int(workers))
        self.site = str(site) if site else None
        config, self._capacity = build_config(self.workers, run_dir, site)
        self._dfk = DataFlowKernel(config)
        self._app = python_app(run_chunk_task, data_flow_kernel=self._dfk, executors=[_LABEL])
        self._lock = threading.Lock()
        self._closed = False

    @property
    def capacity(self) -> int:
        return self._capacity

    def submit(
        self,
        workspace: dict[str, Any] | bytes,
        patches: Sequence[dict[str, Any]] | None,
        options: dict[str, Any],
        cancel: Callable[[], bool] | None = None,
    ) -> Future:
        return self._app(workspace, list(patches) if patches is not None else None, dict(options), cancel)

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "capacity": self.capacity, "workers": self.workers, "site": self.site}

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._dfk.cleanup()
