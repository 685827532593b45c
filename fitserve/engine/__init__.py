"""The fit engine: pyhf workspaces in, CLs and upper limits out (no HTTP, Redis or Parsl here).

The front door other rooms import: :class:`ScanOptions` (every rule about
options), :class:`Record` and its constructors (the one shape of a result or
an error), :class:`InputError` / :class:`LimitError` / :class:`Cancelled`, the
one submission check :func:`check_submission` (with :func:`check_options`,
:class:`SubmissionLimits` and the :class:`PreparedJob` it returns, and
:func:`parse_json` for submitted documents), what a job will take
(:func:`plan_job`: its padded batches and their memory, without fitting;
:func:`physical_memory`), :func:`patch_values` (a patch's grid values),
:func:`run_scan` (a whole scan:
``{"fitserve_version", "options", "timing", "results"}``) and :func:`run_chunk`
(one chunk of a job: its records by patch name).

``run_scan`` is :func:`fitserve.engine.scan.scan` under a name of its own: in a
package a submodule's name is taken by the submodule (``fitserve.engine.scan``
is the module, set on the package whenever it is imported), so the function
cannot be ``fitserve.engine.scan`` too.  ``from fitserve.engine.scan import
scan`` keeps working.

Importing this package imports neither JAX nor pydantic: ``run_chunk`` (JAX),
``ScanOptions`` (pydantic) and the submission check are loaded on first use.
"""

from typing import TYPE_CHECKING, Any

from fitserve.engine.errors import Cancelled, InputError, LimitError
from fitserve.engine.records import Record, clean_record, error_record, make_record, patch_values

if TYPE_CHECKING:
    from fitserve.engine.budget import physical_memory
    from fitserve.engine.budget import plan as plan_job
    from fitserve.engine.inputs import load_json, parse_json, validate_patchset, validate_workspace
    from fitserve.engine.options import ScanOptions
    from fitserve.engine.scan import run_chunk
    from fitserve.engine.scan import scan as run_scan
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
    "load_json",
    "parse_json",
    "patch_values",
    "physical_memory",
    "plan_job",
    "run_chunk",
    "run_scan",
    "toy_distributions",
    "validate_patchset",
    "validate_workspace",
]

#: loaded on first use: name -> module
_LAZY = {
    "ScanOptions": "fitserve.engine.options",
    "run_chunk": "fitserve.engine.scan",
    **dict.fromkeys(("load_json", "parse_json", "validate_patchset", "validate_workspace"), "fitserve.engine.inputs"),
    "physical_memory": "fitserve.engine.budget",
    **dict.fromkeys(
        ("PreparedJob", "SubmissionLimits", "check_options", "check_submission"), "fitserve.engine.submission"
    ),
}
#: under another name: toy-based results (numpy only), the chunks of a hypothesis merged and their
#: distributions for a plot; a whole scan (``scan`` is the module's name); the plan of a job's batches
_ALIASES = {
    "merge_toy_records": ("fitserve.engine.toystats", "merge_records"),
    "run_scan": ("fitserve.engine.scan", "scan"),
    "plan_job": ("fitserve.engine.budget", "plan"),
    "toy_distributions": ("fitserve.engine.toystats", "distributions"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY or name in _ALIASES:
        import importlib

        module, attr = _ALIASES.get(name, (_LAZY.get(name), name))
        value = globals()[name] = getattr(importlib.import_module(module), attr)
        return value
    raise AttributeError(f"module 'fitserve.engine' has no attribute {name!r}")
