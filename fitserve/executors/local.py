"""In-process executor: chunks run on a small thread pool of this process."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Sequence

from fitserve.executors.base import Executor, run_chunk_task


class LocalExecutor(Executor):
    """Runs :func:`run_chunk_task` on ``workers`` threads (default 1).

    One thread keeps the worker loop responsive (heartbeats, cancellation)
    while the engine fits; the engine itself uses the cores it wants.
    """

    name = "local"
    accepts_cancel = True  # the token runs in the chunk's thread

    def __init__(self, workers: int = 1, **_ignored: Any) -> None:
        self.workers = max(1, int(workers))
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="fitserve-chunk")

    @property
    def capacity(self) -> int:
        return self.workers

    def submit(
        self,
        workspace: dict[str, Any] | bytes,
        patches: Sequence[dict[str, Any]] | None,
        options: dict[str, Any],
        cancel: Callable[[], bool] | None = None,
    ) -> Future:
        return self._pool.submit(run_chunk_task, workspace, patches, options, cancel)

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "capacity": self.capacity, "workers": self.workers}

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
