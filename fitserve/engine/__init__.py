"""The fit engine: pyhf workspaces in, CLs and upper limits out (no HTTP, Redis or Parsl here).

The front door other rooms import: :class:`ScanOptions` (every rule about
options), :class:`Record` and its constructors (the one shape of a result or
an error), :class:`InputError` / :class:`Cancelled`, and :func:`run_chunk`
(``fitserve.engine.scan.scan`` for a whole scan: the name ``scan`` here is
that module's).

Importing this package does not import JAX; ``run_chunk`` does, on first use.
"""

from typing import Any

from fitserve.engine.errors import Cancelled, InputError
from fitserve.engine.options import ScanOptions
from fitserve.engine.records import Record, clean_record, error_record, make_record

#: Bumped whenever results may change numerically; part of the service's cache keys.
ENGINE_VERSION = "jax-1"

__all__ = ["ENGINE_VERSION", "Cancelled", "InputError", "Record", "ScanOptions", "clean_record", "error_record",
           "make_record", "run_chunk"]

_LAZY = {"run_chunk"}


def __getattr__(name: str) -> Any:
    """``run_chunk`` imports JAX: loaded when first asked for."""
    if name in _LAZY:
        from fitserve.engine import scan as _scan_module

        return getattr(_scan_module, name)
    raise AttributeError(f"module 'fitserve.engine' has no attribute {name!r}")
