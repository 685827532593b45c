"""The fit engine: pyhf workspaces in, CLs and upper limits out (no HTTP, Redis or Parsl here).

The front door other rooms import: :class:`ScanOptions` (every rule about
options), :class:`Record` and its constructors (the one shape of a result or
an error), :class:`InputError` / :class:`LimitError` / :class:`Cancelled`, the
one submission check :func:`check_submission` (with :func:`check_options`,
:class:`SubmissionLimits` and the :class:`PreparedJob` it returns, and
:func:`parse_json` for submitted documents), and :func:`run_chunk`
(``fitserve.engine.scan.scan`` for a whole scan: the name ``scan`` here is
that module's).

Importing this package imports neither JAX nor pydantic: ``run_chunk`` (JAX),
``ScanOptions`` (pydantic) and the submission check are loaded on first use.
"""

from typing import TYPE_CHECKING, Any

from fitserve.engine.errors import Cancelled, InputError, LimitError
from fitserve.engine.records import Record, clean_record, error_record, make_record

if TYPE_CHECKING:
    from fitserve.engine.inputs import parse_json
    from fitserve.engine.options import ScanOptions
    from fitserve.engine.scan import run_chunk
    from fitserve.engine.submission import PreparedJob, SubmissionLimits, check_options, check_submission
    from fitserve.engine.toystats import distributions as toy_distributions
    from fitserve.engine.toystats import merge_records as merge_toy_records

#: Bumped whenever results may change numerically; part of the service's cache keys.
ENGINE_VERSION = "jax-2"  # jax-2: convergence at interpolation kinks, restarts of the Asimov fits, toys

__all__ = [
    "ENGINE_VERSION",
    "Cancelled",
    "InputError",
    "LimitError",
    "PreparedJob",
    "Record",
    "ScanOptions",
    "SubmissionLimits",
    "check_options",
    "check_submission",
    "clean_record",
    "error_record",
    "make_record",
    "merge_toy_records",
    "parse_json",
    "run_chunk",
    "toy_distributions",
]

#: loaded on first use: name -> module
_LAZY = {
    "ScanOptions": "fitserve.engine.options",
    "run_chunk": "fitserve.engine.scan",
    "parse_json": "fitserve.engine.inputs",
    **dict.fromkeys(
        ("PreparedJob", "SubmissionLimits", "check_options", "check_submission"), "fitserve.engine.submission"
    ),
}
#: toy-based results (numpy only): the chunks of a hypothesis merged, its distributions for a plot
_ALIASES = {
    "merge_toy_records": ("fitserve.engine.toystats", "merge_records"),
    "toy_distributions": ("fitserve.engine.toystats", "distributions"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY or name in _ALIASES:
        import importlib

        module, attr = _ALIASES.get(name, (_LAZY.get(name), name))
        value = globals()[name] = getattr(importlib.import_module(module), attr)
        return value
    raise AttributeError(f"module 'fitserve.engine' has no attribute {name!r}")
