"""fitserve: batched CLs fits of pyhf likelihoods as a service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fitserve")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
