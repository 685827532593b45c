"""Executors are plug-ins: found by name in the ``fitserve.executors`` entry-point group.

A package (fitserve itself, or any other installed distribution) offers an
executor by naming its class, or any factory returning an
:class:`~fitserve.executors.base.Executor`, in its metadata::

    [project.entry-points."fitserve.executors"]
    dask = "fitserve_dask:DaskExecutor"

and ``fitserve worker --executor dask`` (``FITSERVE_EXECUTOR=dask``) runs on it;
nothing in fitserve changes.  The factory gets the worker's executor settings as
keyword arguments (:meth:`fitserve.service.settings.Settings.executor_settings`)
and should ignore the ones it does not know.  fitserve's own ``local``,
``parsl`` and ``globus`` are registered the same way (``pyproject.toml``).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from fitserve.executors.base import Executor

GROUP = "fitserve.executors"


def _entry_points() -> dict[str, EntryPoint]:
    """The executors installed now, by name (read from package metadata on each call: no stale cache)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)  # the first distribution on sys.path wins, as for console scripts
    return found


def get_executor(name: str, **settings: Any) -> Executor:
    """Build the executor called ``name``; ``settings`` go to its factory.

    Unknown keyword settings are ignored by the built-in executors so that one
    settings object can configure any of them.
    """
    eps = _entry_points()
    try:
        ep = eps[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; available: {', '.join(sorted(eps))}") from None
    factory = ep.load()
    executor = factory(**settings)
    if not isinstance(executor, Executor):
        raise TypeError(f"executor {name!r} ({ep.value}) built a {type(executor).__name__}, not a fitserve Executor")
    return executor
