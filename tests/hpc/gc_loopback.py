"""What the Globus cloud service does between the SDK and an endpoint, done in-process.

The Globus Compute web service cannot be reached from here, so this stands in
for it and for the endpoint's AMQP plumbing, nothing else: the function and the
arguments are serialized exactly as ``globus_compute_sdk`` serializes them
(``Client.register_function``: ``pack_buffers([serialize(fn)])``;
``Batch.add``: ``pack_buffers([serialize(args), serialize(kwargs)])``), joined
into one task buffer and wrapped in a messagepack ``Task`` as the endpoint
receives it, then given to a real, locally started ``GlobusComputeEngine``
(``engine.submit(GCFuture, packed_task, resource_specification)``), which runs
it on its Parsl workers through ``globus_compute_endpoint.engines.helper.execute_task``.
The messagepack ``Result`` is unpacked and its data deserialized as the SDK's
result watcher does.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from typing import Any, Callable

from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_endpoint.engines.base import GCFuture
from globus_compute_sdk.serialize import ComputeSerializer


class TaskFailed(RuntimeError):
    pass


def pack_task(fn: Callable, *args: Any, **kwargs: Any) -> tuple[uuid.UUID, bytes, str]:
    """``(task_id, packed Task, function buffer)`` as the endpoint receives a submission."""
    serde = ComputeSerializer()
    function_buffer = serde.pack_buffers([serde.serialize(fn)])
    payload = serde.pack_buffers([serde.serialize(args), serde.serialize(kwargs)])
    task_id = uuid.uuid4()
    return task_id, messagepack.pack(Task(task_id=task_id, task_buffer=function_buffer + payload)), function_buffer


def unpack_result(packed: bytes) -> Any:
    result = messagepack.unpack(packed)
    assert isinstance(result, Result)
    if result.is_error:
        raise TaskFailed(result.data)
    return ComputeSerializer().deserialize(result.data)


def run_on_engine(engine: Any, fn: Callable, *args: Any, **kwargs: Any) -> Future:
    """Submit ``fn(*args, **kwargs)`` to a started engine; the future resolves to its value."""
    task_id, packed, _ = pack_task(fn, *args, **kwargs)
    gc_future = GCFuture(gc_task_id=task_id)
    out: Future = Future()

    def done(f: Future) -> None:
        try:
            out.set_result(unpack_result(f.result()))
        except BaseException as exc:  # noqa: BLE001
            out.set_exception(exc)

    gc_future.add_done_callback(done)
    engine.submit(gc_future, packed, resource_specification={})
    return out


class LoopbackSDKExecutor:
    """The part of ``globus_compute_sdk.Executor`` that fitserve uses (``submit``,
    ``shutdown``), delivering tasks to a local engine instead of the cloud."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.submitted = 0

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Future:
        self.submitted += 1
        return run_on_engine(self.engine, fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass
