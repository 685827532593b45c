"""An executor plug-in as a third party would write it: this module and one entry point, nothing else.

``fitserve_example_executor-0.1.dist-info`` next to it is what ``pip install``
writes for a distribution declaring::

    [project.entry-points."fitserve.executors"]
    example = "fitserve_example_executor:InlineExecutor"

so with this folder on ``sys.path`` (as site-packages is) ``fitserve worker
--executor example`` runs on it (tests/service/test_executor_plugin.py).
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Sequence

from fitserve.executors import Executor, run_chunk_task


class InlineExecutor(Executor):
    """Runs each chunk at once, in the worker's own thread (the smallest executor there is)."""

    name = "example"

    def __init__(self, **_settings: Any) -> None:
        self.chunks = 0

    def submit(
        self, workspace: dict[str, Any] | bytes, patches: Sequence[dict[str, Any]] | None, options: dict[str, Any]
    ) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(run_chunk_task(workspace, patches, options))
        except Exception as exc:  # the worker records the chunk as failed
            fut.set_exception(exc)
        self.chunks += 1
        return fut

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "capacity": self.capacity, "chunks": self.chunks}
