"""Toy distributions to numbers: CLs, the expected band, their Monte Carlo uncertainties, merging chunks.

Plain numpy (no JAX), so that the service merges the chunks of a toy-based
job without starting the engine; the toys themselves come from
:mod:`fitserve.engine.toys`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: pyhf's percentiles of the expected band (-2 ... +2 sigma of a normal distribution)
BAND_PERCENTILES = np.array([2.27501319, 15.86552539, 50.0, 84.13447461, 97.72498681])


@dataclass
class ToyRun:
    """The toys ``[start, stop)`` of both distributions of one hypothesis.

    ``q_sb`` / ``q_b``: the test statistic of each toy (NaN: a fit failed).
    """

    q_obs: float
    q_sb: np.ndarray
    q_b: np.ndarray
    start: int
    stop: int


def _tail(sorted_q: np.ndarray, value: np.ndarray | float) -> np.ndarray:
    """Fraction of the (sorted) toys with a test statistic at or above ``value`` (pyhf's ``pvalue``)."""
    return (sorted_q.size - np.searchsorted(sorted_q, value, side="left")) / sorted_q.size


def _binomial_error(p: np.ndarray | float, n: int) -> np.ndarray:
    """Standard error of a fraction of ``n`` toys; ``p (1 - p)`` floored at ``1/n`` so that 0 or 1 still has one."""
    p = np.asarray(p, float)
    return np.sqrt(np.maximum(p * (1 - p), 1.0 / n) / n)


def summarize(q_obs: float, q_sb: np.ndarray, q_b: np.ndarray, test_stat: str) -> dict:
    """CLs, its expected band and their Monte Carlo uncertainties from two toy distributions.

    Uncertainties: binomial for ``CLsb`` and ``CLb`` (independent samples,
    propagated to their ratio); for each band edge, the spread of the
    order statistic of the background-only toys (``sqrt(N u (1 - u))``
    positions either side of quantile ``u``) combined with the binomial error
    of ``CLsb`` there.  ``None`` where a value is undefined (no toy at or above
    the observed value in the background-only sample: more toys needed).
    """
    sb = np.sort(q_sb[np.isfinite(q_sb)])
    b = np.sort(q_b[np.isfinite(q_b)])
    n_sb, n_b = sb.size, b.size
    out: dict = {"n_sb": int(n_sb), "n_b": int(n_b)}
    if n_sb == 0 or n_b == 0:
        return {**out, "CLs_obs": None, "CLs_exp": None, "CLsb_obs": None, "CLb_obs": None, "uncertainty": None}
    clsb, clb = float(_tail(sb, q_obs)), float(_tail(b, q_obs))
    e_sb, e_b = float(_binomial_error(clsb, n_sb)), float(_binomial_error(clb, n_b))
    q0 = test_stat == "q0"
    if q0:
        cls, e_cls = clsb, e_sb
    elif clb > 0:
        cls = clsb / clb
        e_cls = math.hypot(e_sb / clb, cls * e_b / clb)
    else:
        cls = e_cls = None
    # expected band: the CLs (q0: CLsb) that each background-only toy would give
    at_sb, at_b = _tail(sb, b), _tail(b, b)  # at_b >= 1/n_b: every toy counts itself
    vals = at_sb if q0 else at_sb / at_b
    exp = np.percentile(vals, BAND_PERCENTILES)
    u = BAND_PERCENTILES / 100.0
    ordered = np.sort(vals)
    pos = u * (n_b - 1)
    spread = np.sqrt(n_b * u * (1 - u))
    grid = np.arange(n_b)
    order_err = 0.5 * (np.interp(pos + spread, grid, ordered) - np.interp(pos - spread, grid, ordered))
    q_at = np.percentile(b, 100 - BAND_PERCENTILES)  # the toy value at each edge (CLs falls as q rises)
    p_sb = _tail(sb, q_at)
    count_err = _binomial_error(p_sb, n_sb) / (1.0 if q0 else np.maximum(_tail(b, q_at), 1.0 / n_b))
    exp_err = np.hypot(order_err, count_err)
    return {
        **out,
        "CLs_obs": cls,
        "CLs_exp": [float(v) for v in exp],
        "CLsb_obs": clsb,
        "CLb_obs": clb,
        "uncertainty": {"CLs_obs": e_cls, "CLs_exp": [float(v) for v in exp_err], "CLsb_obs": e_sb, "CLb_obs": e_b},
    }


def _raw(q: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in q.tolist()]


def toy_record(run: ToyRun, test_stat: str, n_toys: int, seed: int, max_failed: float, keep_raw: bool) -> dict:
    """The toy-based part of a result record (merged into the asymptotic record's fields).

    ``keep_raw``: also the test statistic of every toy (``toy_q``), what a
    chunk returns so that the service can merge chunks (:func:`merge_records`).
    """
    rec = _summary_fields(run.q_obs, run.q_sb, run.q_b, test_stat, n_toys, seed, max_failed, [[run.start, run.stop]])
    if keep_raw:
        rec["toy_q"] = {"start": run.start, "stop": run.stop, "sb": _raw(run.q_sb), "b": _raw(run.q_b)}
    return rec


def _summary_fields(
    q_obs: float,
    q_sb: np.ndarray,
    q_b: np.ndarray,
    test_stat: str,
    n_toys: int,
    seed: int,
    max_failed: float,
    ranges: list,
) -> dict:
    s = summarize(q_obs, q_sb, q_b, test_stat)
    n_run = int(q_sb.size)
    failed = [int(np.isnan(q_sb).sum()), int(np.isnan(q_b).sum())]
    toys = {
        "n_toys": n_toys,
        "seed": seed,
        "ranges": ranges,
        "done": n_run,
        "q_obs": q_obs,
        "n_sb": s["n_sb"],
        "n_b": s["n_b"],
        "failed_sb": failed[0],
        "failed_b": failed[1],
    }
    rec: dict = {
        "CLs_obs": s["CLs_obs"],
        "CLs_exp": s["CLs_exp"],
        "CLsb_obs": s["CLsb_obs"],
        "CLb_obs": s["CLb_obs"],
        "uncertainty": s["uncertainty"],
        "toys": toys,
    }
    frac = max(failed) / max(n_run, 1)
    if frac > max_failed:
        toys["flagged"] = True
        rec["warning"] = (
            f"{failed[0]} signal+background and {failed[1]} background-only toy fits of {n_run} "
            f"did not converge (more than {max_failed:.0%}); they are left out"
        )
    elif s["CLs_obs"] is None and s["n_b"]:
        rec["warning"] = "no background-only toy reaches the observed test statistic: CLs needs more toys"
    return rec


def merge_records(parts: list[dict], test_stat: str, n_toys: int, seed: int, max_failed: float) -> dict:
    """One toy-based record from chunk records of the same hypothesis (their ``toy_q``).

    Chunks may cover any disjoint toy ranges; the merged distributions are the
    toys of all of them (the CLs of ``[0, n)`` equals the unchunked run's).
    The fields of the first part that do not depend on toys are kept.
    """
    parts = sorted(parts, key=lambda r: r["toy_q"]["start"])
    q_obs, q_sb, q_b = distributions(parts)
    ranges = [[p["toy_q"]["start"], p["toy_q"]["stop"]] for p in parts]
    base = {k: v for k, v in parts[0].items() if k not in ("toy_q", "warning")}
    base.update(_summary_fields(q_obs, q_sb, q_b, test_stat, n_toys, seed, max_failed, ranges))
    return base


def distributions(parts: list[dict]) -> tuple[float, np.ndarray, np.ndarray]:
    """``(q_obs, q_sb, q_b)`` of chunk records that carry their toys (``toy_q``), in toy order; NaN: a failed toy."""
    parts = sorted(parts, key=lambda r: r["toy_q"]["start"])

    def joined(key: str) -> np.ndarray:
        return np.asarray([np.nan if v is None else v for p in parts for v in p["toy_q"][key]], float)

    return float(parts[0]["toys"]["q_obs"]), joined("sb"), joined("b")
