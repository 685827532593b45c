"""From per-hypothesis records to what physicists look at: tables, exclusion contours, limit curves.

Pure functions of plain data (no Redis, no HTTP), so they are easy to test.

Contours (2-D grids): CLs is interpolated *linearly in log10(CLs)* on the
Delaunay triangulation of the grid points (coordinates scaled to the unit
square first, so that axes with different ranges weigh the same), sampled on
a regular mesh, and the ``CLs = 0.05`` level (``1 - confidence_level``) is
traced with contourpy.  Hypotheses that did not converge or failed are left
out and counted.

Expected curves follow the order of ``CLs_exp`` (pyhf's expected set,
-2σ, -1σ, median, +1σ, +2σ of the background-only test statistic):
``expected_m2 = CLs_exp[0]`` ... ``expected = CLs_exp[2]`` ... ``expected_p2 = CLs_exp[4]``.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable

import numpy as np

CURVES = {
    "observed": None,
    "expected": 2,
    "expected_m1": 1,
    "expected_p1": 3,
    "expected_m2": 0,
    "expected_p2": 4,
}
EXP_SUFFIX = ("m2", "m1", "", "p1", "p2")
MESH = 200
LOG_FLOOR = 1e-12


class AggregationError(ValueError):
    """The results cannot be aggregated this way (e.g. no grid values)."""


def usable(rec: dict[str, Any]) -> bool:
    return bool(rec.get("converged")) and not rec.get("error") and rec.get("CLs_obs") is not None


def curve_value(rec: dict[str, Any], curve: str) -> float | None:
    idx = CURVES[curve]
    if idx is None:
        return rec.get("CLs_obs")
    exp = rec.get("CLs_exp") or []
    return exp[idx] if len(exp) > idx else None


def grid_dimension(records: dict[str, dict[str, Any]]) -> int:
    for name, r in records.items():  # pyhf's schema allows strings as grid values
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r.get("values") or []):
            raise AggregationError(
                f"the grid values of {name!r} are not all numbers ({r.get('values')!r:.80}): no contours or plot"
            )
    dims = {len(r.get("values") or []) for r in records.values()}
    if not dims:
        return 0
    if len(dims) > 1:
        raise AggregationError(f"hypotheses have grid values of different lengths {sorted(dims)}")
    return dims.pop()


def _log_cls(values: Iterable[float | None]) -> np.ndarray:
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    return np.log10(np.clip(arr, LOG_FLOOR, 1.0))


class Grid2D:
    """Interpolates log10(CLs) of scattered 2-D grid points onto a regular mesh."""

    def __init__(self, points: np.ndarray, mesh: int = MESH) -> None:
        from scipy.spatial import Delaunay, QhullError

        self.points = points
        lo, hi = points.min(axis=0), points.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        self.lo, self.span = lo, span
        scaled = (points - lo) / span
        if len(points) < 3 or np.any(hi <= lo):
            raise AggregationError("a 2-D contour needs at least 3 grid points spanning both axes")
        try:
            self.tri = Delaunay(scaled)
        except QhullError as exc:
            raise AggregationError(f"grid points cannot be triangulated: {exc}") from None
        g = np.linspace(0.0, 1.0, mesh)
        gx, gy = np.meshgrid(g, g)
        self.X = gx * span[0] + lo[0]
        self.Y = gy * span[1] + lo[1]
        self._gx, self._gy = gx, gy

    def interpolate(self, log_cls: np.ndarray) -> np.ma.MaskedArray:
        from scipy.interpolate import LinearNDInterpolator

        z = LinearNDInterpolator(self.tri, log_cls)(self._gx, self._gy)
        return np.ma.masked_invalid(z)

    def contour(self, log_cls: np.ndarray, level: float) -> list[list[list[float]]]:
        import contourpy

        z = self.interpolate(log_cls)
        if z.count() == 0:
            return []
        gen = contourpy.contour_generator(self.X, self.Y, z, line_type="Separate")
        return [np.round(line, 6).tolist() for line in gen.lines(math.log10(level)) if len(line) > 1]


def _split(records: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    good = [n for n, r in records.items() if usable(r)]
    bad = [n for n, r in records.items() if not usable(r)]
    return good, bad


def contours(
    records: dict[str, dict[str, Any]], labels: list[str] | None = None, cl: float = 0.95, complete: bool = True
) -> dict[str, Any]:
    """Exclusion contours (2-D grid) or the limit curve (1-D grid) at CLs = 1 - cl."""
    level = 1.0 - cl
    dim = grid_dimension(records)
    good, bad = _split(records)
    counts = {
        "used": len(good),
        "not_converged": sum(1 for n in bad if not records[n].get("error")),
        "errors": sum(1 for n in bad if records[n].get("error")),
    }
    base = {"level": level, "labels": list(labels or []), "complete": complete, "points": counts}
    if dim == 2:
        if len(good) < 3:
            return {**base, "kind": "2d", "contours": {c: [] for c in CURVES}, "note": "fewer than 3 usable points"}
        pts = np.array([records[n]["values"] for n in good], dtype=float)
        grid = Grid2D(pts)
        out = {}
        for curve in CURVES:
            out[curve] = grid.contour(_log_cls(curve_value(records[n], curve) for n in good), level)
        return {
            **base,
            "kind": "2d",
            "interpolation": f"linear in log10(CLs) on the Delaunay triangulation of the grid (axes scaled to [0, 1]), {MESH}x{MESH} mesh, contourpy",
            "contours": out,
        }
    if dim == 1:
        order = sorted(good, key=lambda n: records[n]["values"][0])
        x = [float(records[n]["values"][0]) for n in order]
        curves = {c: [curve_value(records[n], c) for n in order] for c in CURVES}
        crossings = {c: _crossings(x, v, level) for c, v in curves.items()}
        uls = [records[n].get("upper_limit") for n in order]
        upper = None
        if order and all(u for u in uls):
            upper = {"obs": [u["obs"] for u in uls], "exp": [u["exp"] for u in uls]}
        return {
            **base,
            "kind": "1d",
            "x": x,
            "names": order,
            "cls": curves,
            "crossings": crossings,
            "upper_limit": upper,
        }
    raise AggregationError(
        f"contours need hypotheses on a 1-D or 2-D grid (patch metadata 'values'); these have {dim} values each"
    )


def _crossings(x: list[float], cls: list[float | None], level: float) -> list[float]:
    """Grid positions where CLs crosses ``level`` (interpolated linearly in log10 CLs)."""
    out = []
    z = _log_cls(cls)
    t = math.log10(level)
    for i in range(len(x) - 1):
        a, b = z[i] - t, z[i + 1] - t
        if np.isnan(a) or np.isnan(b):
            continue
        if a == 0:
            out.append(x[i])
        elif a * b < 0:
            out.append(float(x[i] + (x[i + 1] - x[i]) * a / (a - b)))
    if len(z) and z[-1] == t:
        out.append(x[-1])
    return out


def results_document(
    status: dict[str, Any], meta: dict[str, Any], records: dict[str, dict[str, Any]], version: str
) -> dict[str, Any]:
    """The job's results in the schema of ``fitserve scan`` (plus job information)."""
    return {
        "fitserve_version": version,
        "options": meta["options"],
        "timing": {"compile_s": None, "fit_s": status["timings"]["compute_s"], "total_s": status["timings"]["total_s"]},
        "results": records,
        "job": status["id"],
        "state": status["state"],
        "complete": status["state"] == "done" and len(records) == status["progress"]["total"],
        "labels": meta.get("labels", []),
        "progress": status["progress"],
        "counts": status["counts"],
    }


def to_csv(records: dict[str, dict[str, Any]], labels: list[str] | None = None) -> str:
    """One row per hypothesis; grid values in columns named after the PatchSet labels."""
    dim = max((len(r.get("values") or []) for r in records.values()), default=0)
    labels = list(labels or [])
    value_cols = [labels[i] if i < len(labels) else f"value_{i}" for i in range(dim)]
    exp_cols = [f"CLs_exp_{s}" if s else "CLs_exp" for s in EXP_SUFFIX]
    ul_cols = ["upper_limit_obs"] + [f"upper_limit_exp_{s}" if s else "upper_limit_exp" for s in EXP_SUFFIX]
    header = [
        "name",
        *value_cols,
        "CLs_obs",
        *exp_cols,
        "CLsb_obs",
        "CLb_obs",
        "mu_hat",
        "nll_free",
        "converged",
        *ul_cols,
        "error",
    ]
    toys = any(r.get("calculator") == "toybased" for r in records.values())
    if toys:  # toy-based: Monte Carlo uncertainties and toy counts
        header += [
            "CLs_obs_err",
            *[c.replace("CLs_exp", "CLs_exp_err") for c in exp_cols],
            "n_toys",
            "toys_sb",
            "toys_b",
            "failed_sb",
            "failed_b",
        ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for name, r in records.items():
        vals = list(r.get("values") or []) + [""] * (dim - len(r.get("values") or []))
        exp = list(r.get("CLs_exp") or [None] * 5)
        ul = r.get("upper_limit") or {}
        ulv = [ul.get("obs")] + list(ul.get("exp") or [None] * 5)
        row = [
            name,
            *vals,
            r.get("CLs_obs"),
            *exp,
            r.get("CLsb_obs"),
            r.get("CLb_obs"),
            r.get("mu_hat"),
            r.get("nll_free"),
            bool(r.get("converged")),
            *ulv,
            r.get("error") or "",
        ]
        if toys:
            unc, t = r.get("uncertainty") or {}, r.get("toys") or {}
            row += [
                unc.get("CLs_obs"),
                *(unc.get("CLs_exp") or [None] * 5),
                t.get("n_toys"),
                t.get("n_sb"),
                t.get("n_b"),
                t.get("failed_sb"),
                t.get("failed_b"),
            ]
        w.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
    return buf.getvalue()
