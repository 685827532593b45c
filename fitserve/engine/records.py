"""The one shape of a per-hypothesis result, and the one place that builds it.

A record is what :func:`fitserve.engine.scan.run_chunk` returns per hypothesis,
what executors carry back and what the service stores (the cache) and serves::

    {"values", "CLs_obs", "CLs_exp" (5, pyhf's order), "CLsb_obs", "CLb_obs",
     "mu_hat", "nll_free", "nll_fixed", "converged", "edm",
     "upper_limit": {"obs", "exp"[, "above"]} or None, "error"
     [, "multimodal", "warning"]}

Rules kept here and nowhere else:

* a hypothesis whose fits did not converge carries no CLs, fit or limit
  numbers (``None``), only ``converged: false`` and an ``error`` saying why:
  a number that looks valid is never reported for it;
* records are strict JSON: non-finite numbers become ``None``
  (:func:`clean_record`), and a hypothesis marked converged whose observed CLs
  is not a finite number is marked not converged;
* an error (bad input, a chunk that failed) is a record too
  (:func:`error_record`), with every field present.

Plain ``dict`` at run time (JSON-able, picklable by any executor); :class:`Record`
is its static type.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, TypedDict


class UpperLimit(TypedDict, total=False):
    obs: float | None
    exp: list[float | None]
    above: list[float | None]


class Record(TypedDict, total=False):
    values: list[float]
    CLs_obs: float | None
    CLs_exp: list[float | None] | None
    CLsb_obs: float | None
    CLb_obs: float | None
    mu_hat: float | None
    nll_free: float | None
    nll_fixed: float | None
    converged: bool
    edm: float | None
    upper_limit: UpperLimit | None
    error: str | None
    multimodal: bool
    warning: str


#: Every field of a record, in the order records are written.
FIELDS = (
    "values",
    "CLs_obs",
    "CLs_exp",
    "CLsb_obs",
    "CLb_obs",
    "mu_hat",
    "nll_free",
    "nll_fixed",
    "converged",
    "edm",
    "upper_limit",
    "error",
)
#: What a ``cls_only`` scan keeps of each record.
CLS_ONLY_FIELDS = ("values", "CLs_obs", "converged", "error")


def finite(x: Any) -> float | None:
    """``x`` as a float, or ``None`` if it is not a finite number (or is None)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def make_record(
    values: Sequence[float],
    *,
    converged: bool,
    error: str | None = None,
    edm: Any = None,
    cls_obs: Any = None,
    cls_exp: Sequence[Any] | None = None,
    clsb_obs: Any = None,
    clb_obs: Any = None,
    mu_hat: Any = None,
    nll_free: Any = None,
    nll_fixed: Any = None,
    upper_limit: UpperLimit | None = None,
) -> Record:
    """The record of one hypothesis.  Numbers of a hypothesis that did not converge are dropped (``None``)."""
    ok = bool(converged)

    def num(x: Any) -> float | None:
        return finite(x) if ok else None

    return {
        "values": list(values),
        "CLs_obs": num(cls_obs),
        "CLs_exp": [finite(v) for v in cls_exp] if ok and cls_exp is not None else None,
        "CLsb_obs": num(clsb_obs),
        "CLb_obs": num(clb_obs),
        "mu_hat": num(mu_hat),
        "nll_free": num(nll_free),
        "nll_fixed": num(nll_fixed),
        "converged": ok,
        "edm": finite(edm),
        "upper_limit": upper_limit if ok else None,
        "error": error,
    }


def error_record(values: Sequence[float], message: str) -> Record:
    """The record of a hypothesis that could not be fitted at all (bad input, a failed chunk)."""
    return make_record(values, converged=False, error=message)


def patch_values(patch: dict[str, Any] | None) -> list[float]:
    """The grid values of a pyhf patch (``[]`` for none)."""
    return list((patch or {}).get("metadata", {}).get("values", []))


def cls_only(rec: Record) -> Record:
    """What a ``cls_only`` scan reports of ``rec``."""
    return {k: rec[k] for k in CLS_ONLY_FIELDS if k in rec}  # type: ignore[literal-required, return-value]


def _finite_tree(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_tree(v) for v in obj]
    return obj


def clean_record(rec: dict[str, Any]) -> Record:
    """Make a record (from any executor) strict JSON: non-finite numbers become null.

    A hypothesis whose observed CLs is not a finite number cannot be used for
    limits or contours, so it is marked ``converged: false``.
    """
    cls_obs = rec.get("CLs_obs")
    out = _finite_tree(rec)
    if rec.get("converged") and not rec.get("error") and (cls_obs is None or not math.isfinite(float(cls_obs))):
        out["converged"] = False
    return out
