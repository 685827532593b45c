"""fitserve: batched CLs fits of pyhf likelihoods as a service."""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("fitserve")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "Client", "AsyncClient"]

_LAZY = {"Client": "fitserve.client", "AsyncClient": "fitserve.client"}


def __getattr__(name: str) -> Any:
    """``from fitserve import Client`` imports the client (httpx only) on first use; ``import fitserve`` stays light."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fitserve' has no attribute {name!r}")
