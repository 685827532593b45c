"""Executors run chunks of a scan somewhere: in-process, on Parsl workers, later Globus Compute.

``get_executor(name, **settings)`` builds one by name; ``run_chunk_task`` is the
importable function every backend runs.
"""

from fitserve.executors.base import Executor, available_executors, get_executor, register_executor, run_chunk_task

__all__ = ["Executor", "available_executors", "get_executor", "register_executor", "run_chunk_task"]
