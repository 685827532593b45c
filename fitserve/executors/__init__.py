"""Executors run chunks of a scan somewhere: in-process, on Parsl workers, on Globus Compute endpoints.

``get_executor(name, **settings)`` builds one by name from the plug-ins installed
(entry-point group ``fitserve.executors``, :mod:`fitserve.executors.registry`);
``run_chunk_task`` is the importable function every backend runs.
"""

from fitserve.executors.base import Executor, run_chunk_task
from fitserve.executors.registry import get_executor

__all__ = ["Executor", "get_executor", "run_chunk_task"]
