"""Site files: YAML descriptions of where a worker's chunks run (Parsl providers, Globus Compute).

A site file is data, not code, so a site administrator can edit one without
touching fitserve.  ``endpoints/*.yaml`` are ready-to-edit examples::

    description: one line shown in logs and `fitserve endpoint sites`
    capacity: 8                       # chunks the worker keeps in flight (default: all worker slots)
    executor:                         # parsl.executors.HighThroughputExecutor keyword arguments
      address: 10.0.0.5               # where the compute nodes reach the interchange
      max_workers_per_node: 4
    provider:                         # any class in parsl.providers, with its keyword arguments
      type: SlurmProvider
      partition: short
      walltime: "01:00:00"
      launcher: {type: SrunLauncher}  # any class in parsl.launchers
    globus:                           # only for `--executor globus`
      endpoint_id: 2f9c…              # the Globus Compute endpoint that runs the chunks

Every error names the file and the key (``endpoints/slurm.yaml: provider.nodes_per_block:
expected int, got str '2'``) and is raised as :class:`SiteError`, a ``ValueError``.
Strings may use ``${VAR}`` / ``${VAR:-default}`` environment references, expanded
when the file is loaded (e.g. ``worker_init: source ${FITSERVE_VENV:-/opt/fitserve}/bin/activate``).
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
from pathlib import Path
from typing import Any, Mapping

TOP_LEVEL_KEYS = {"description", "capacity", "executor", "provider", "globus"}
GLOBUS_KEYS = {
    "endpoint_id",
    "capacity",
    "resource_specification",
    "user_endpoint_config",
    "amqp_port",
    "batch_size",
    # the cloud service's limits (fitserve.executors.globus.CloudLimits) and the client-side request rate
    "max_request_bytes",
    "max_result_bytes",
    "max_requests",
    "window_s",
    "client_max_requests",
}
#: HighThroughputExecutor arguments fitserve sets itself
RESERVED_EXECUTOR_KEYS = {"label", "provider"}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SiteError(ValueError):
    """A site file that cannot be used; the message starts with ``<file>: <key>:``."""

    def __init__(self, source: str, key: str | None, message: str) -> None:
        self.source = source
        self.key = key
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


def _expand(value: Any, source: str, key: str) -> Any:
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise SiteError(
                source, key, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)"
            )

        return _ENV_REF.sub(repl, value)
    if isinstance(value, dict):
        return {k: _expand(v, source, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def load_site(site: str | Path | Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """Read and check a site file (or an already parsed mapping); return the expanded mapping."""
    import yaml

    if isinstance(site, Mapping):
        data: Any = dict(site)
        source = source or "site"
    else:
        path = Path(site)
        source = source or str(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise SiteError(source, None, "file not found (ready-made sites: endpoints/*.yaml)") from None
        except OSError as exc:
            raise SiteError(source, None, f"cannot read: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            raise SiteError(source, None, f"invalid YAML: {where}{getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SiteError(source, None, f"expected a mapping at the top level, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - TOP_LEVEL_KEYS)
    if unknown:
        raise SiteError(source, unknown[0], f"unknown key (known: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    data = _expand(data, source, "")
    for key in ("executor", "provider", "globus"):
        if key in data and data[key] is not None and not isinstance(data[key], dict):
            raise SiteError(source, key, f"expected a mapping, got {type(data[key]).__name__}")
    if "capacity" in data:
        cap = data["capacity"]
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise SiteError(source, "capacity", f"expected a positive integer, got {cap!r}")
    globus = data.get("globus") or {}
    unknown = sorted(set(map(str, globus)) - GLOBUS_KEYS)
    if unknown:
        raise SiteError(source, f"globus.{unknown[0]}", f"unknown key (known: {', '.join(sorted(GLOBUS_KEYS))})")
    return data


# building Parsl objects with errors that name the key ------------------------------------
def _check_kwargs(
    cls: type, kwargs: dict[str, Any], source: str, key: str, reserved: frozenset[str] | set[str] = frozenset()
) -> None:
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = {n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL}
    for name in kwargs:
        if name in reserved:
            raise SiteError(source, f"{key}.{name}", "set by fitserve; remove it from the site file")
        if name not in known and not takes_any:
            close = difflib.get_close_matches(str(name), sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SiteError(source, f"{key}.{name}", f"unknown option of {cls.__name__}{hint}")
    missing = [
        n
        for n, p in params.items()
        if n != "self"
        and p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in kwargs
    ]
    if missing:
        raise SiteError(source, f"{key}.{missing[0]}", f"required by {cls.__name__}")


_TYPEGUARD_ARG = re.compile(r'argument "([^"]+)"')


def _coerce(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """YAML has no tuples: turn lists into the tuples a signature asks for."""
    params = inspect.signature(cls.__init__).parameters
    out = dict(kwargs)
    for name, value in kwargs.items():
        ann = str(params[name].annotation).replace("typing.", "") if name in params else ""
        if isinstance(value, list):
            low = ann.lower()
            if "list[tuple" in low:
                out[name] = [tuple(v) if isinstance(v, list) else v for v in value]
            elif "tuple" in low:
                out[name] = tuple(value)
    return out


def _construct(cls: type, kwargs: dict[str, Any], source: str, key: str) -> Any:
    try:
        return cls(**_coerce(cls, kwargs))
    except SiteError:
        raise
    except Exception as exc:  # typeguard TypeError, provider-specific ValueError, missing optional module
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        m = _TYPEGUARD_ARG.search(msg)
        where = f"{key}.{m.group(1)}" if m and m.group(1) in kwargs else key
        raise SiteError(source, where, f"{cls.__name__}: {type(exc).__name__}: {msg}") from exc


def _typed(module: Any, spec: Any, source: str, key: str) -> tuple[type, dict[str, Any]]:
    if not isinstance(spec, dict):
        raise SiteError(source, key, f"expected a mapping with a 'type', got {type(spec).__name__}")
    spec = dict(spec)
    type_name = spec.pop("type", None)
    if not type_name:
        raise SiteError(
            source, f"{key}.type", "missing (e.g. SlurmProvider, PBSProProvider, KubernetesProvider, LocalProvider)"
        )
    cls = getattr(module, str(type_name), None)
    if not inspect.isclass(cls):
        names = sorted(n for n in dir(module) if not n.startswith("_") and inspect.isclass(getattr(module, n)))
        raise SiteError(
            source, f"{key}.type", f"unknown {key.split('.')[-1]} {type_name!r} (known: {', '.join(names)})"
        )
    return cls, spec


def build_provider(data: Mapping[str, Any], source: str = "site") -> Any:
    """The Parsl provider (with its launcher) a site file describes; LocalProvider if none."""
    import parsl.launchers
    import parsl.providers

    pcls, pkw = _typed(parsl.providers, data.get("provider") or {"type": "LocalProvider"}, source, "provider")
    lspec = pkw.pop("launcher", None)
    _check_kwargs(pcls, pkw, source, "provider")
    if lspec is not None:
        if "launcher" not in inspect.signature(pcls.__init__).parameters:
            raise SiteError(source, "provider.launcher", f"{pcls.__name__} takes no launcher")
        lcls, lkw = _typed(parsl.launchers, lspec, source, "provider.launcher")
        _check_kwargs(lcls, lkw, source, "provider.launcher")
        pkw["launcher"] = _construct(lcls, lkw, source, "provider.launcher")
    return _construct(pcls, pkw, source, "provider")


def executor_kwargs(data: Mapping[str, Any], source: str = "site") -> dict[str, Any]:
    """The site's HighThroughputExecutor keyword arguments, checked against its signature."""
    from parsl.executors import HighThroughputExecutor

    ekw = dict(data.get("executor") or {})
    _check_kwargs(HighThroughputExecutor, ekw, source, "executor", RESERVED_EXECUTOR_KEYS)
    return ekw


def build_htex(data: Mapping[str, Any], workers: int, label: str, source: str = "site") -> tuple[Any, int]:
    """``(HighThroughputExecutor, capacity)`` for a site: the worker's ``workers`` fill
    ``max_workers_per_node`` unless the site sets it; capacity defaults to all worker
    slots of all blocks (``max_workers_per_node * nodes_per_block * max_blocks``)."""
    from parsl.executors import HighThroughputExecutor

    provider = build_provider(data, source)
    ekw = {"max_workers_per_node": workers, **executor_kwargs(data, source)}
    htex = _construct(HighThroughputExecutor, {"label": label, "provider": provider, **ekw}, source, "executor")
    per_node = int(ekw.get("max_workers_per_node") or workers)
    per_block = per_node * int(getattr(provider, "nodes_per_block", 1) or 1)
    capacity = int(data.get("capacity") or per_block * max(1, int(getattr(provider, "max_blocks", 1) or 1)))
    return htex, capacity


def check_site(site: str | Path | Mapping[str, Any], executor: str = "parsl") -> dict[str, Any]:
    """Load a site and build (but do not start) what it describes, so that every error is
    reported before a worker starts.  Returns the loaded mapping."""
    source = str(site) if not isinstance(site, Mapping) else "site"
    data = load_site(site)
    if executor == "globus":
        if not (data.get("globus") or {}).get("endpoint_id") and not os.environ.get("FITSERVE_GLOBUS_ENDPOINT_ID"):
            raise SiteError(source, "globus.endpoint_id", "missing (or set FITSERVE_GLOBUS_ENDPOINT_ID)")
    else:
        htex, _ = build_htex(data, 1, "fitserve_check", source)
        del htex
    return data
