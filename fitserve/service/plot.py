"""The exclusion plot: observed line, expected line with ±1σ band, grid points (mplhep ATLAS style).

Uses matplotlib's object API (no pyplot state), so it is safe in a server.
Style changes are process-global in matplotlib, hence the lock.
"""

from __future__ import annotations

import io
import math
import threading
from typing import Any

import numpy as np

from fitserve.service.aggregate import CURVES, AggregationError, Grid2D, _log_cls, curve_value, grid_dimension, usable

_LOCK = threading.Lock()
FORMATS = {"png": "image/png", "svg": "image/svg+xml"}


def exclusion_plot(records: dict[str, dict[str, Any]], labels: list[str] | None = None, cl: float = 0.95, fmt: str = "png", title: str | None = None) -> bytes:
    """Render the exclusion plot of a 2-D grid (or the CLs curve of a 1-D grid) as PNG or SVG bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown plot format {fmt!r}")
    dim = grid_dimension(records)
    if dim not in (1, 2):
        raise AggregationError(f"a plot needs hypotheses on a 1-D or 2-D grid (patch metadata 'values'); these have {dim} values each")
    import matplotlib.style
    import mplhep
    from matplotlib.figure import Figure

    labels = list(labels or [])
    with _LOCK, matplotlib.style.context(mplhep.style.ATLAS):
        fig = Figure(figsize=(7.5, 6.0))
        ax = fig.add_subplot()
        if dim == 2:
            _plot_2d(ax, records, labels, 1.0 - cl)
        else:
            _plot_1d(ax, records, labels, 1.0 - cl)
        ax.set_title(title or f"{cl:.0%} CL exclusion (CLs)", fontsize=12, loc="left")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=110)
    return buf.getvalue()


def _plot_2d(ax: Any, records: dict[str, dict[str, Any]], labels: list[str], level: float) -> None:
    good = [n for n, r in records.items() if usable(r)]
    bad = [n for n, r in records.items() if not usable(r)]
    t = math.log10(level)
    if len(good) >= 3:
        grid = Grid2D(np.array([records[n]["values"] for n in good], dtype=float))
        z = {c: grid.interpolate(_log_cls(curve_value(records[n], c) for n in good)) for c in ("observed", "expected", "expected_m1", "expected_p1")}
        # ±1σ band: excluded by the -1σ expectation but not by the +1σ one
        band = np.ma.masked_array(((z["expected_m1"] < t) & (z["expected_p1"] >= t)).astype(float), mask=np.ma.getmaskarray(z["expected_m1"]))
        if band.count() and band.max() > 0.5:
            ax.contourf(grid.X, grid.Y, band, levels=[0.5, 1.5], colors=["#ffdf3d"], alpha=0.9)
        ax.fill_between([], [], color="#ffdf3d", label=r"Expected $\pm 1\sigma$")
        if np.ma.min(z["expected"]) < t < np.ma.max(z["expected"]):
            ax.contour(grid.X, grid.Y, z["expected"], levels=[t], colors="black", linestyles="--", linewidths=2)
        ax.plot([], [], "k--", lw=2, label="Expected")
        if np.ma.min(z["observed"]) < t < np.ma.max(z["observed"]):
            ax.contour(grid.X, grid.Y, z["observed"], levels=[t], colors="#d62728", linewidths=2.5)
        ax.plot([], [], color="#d62728", lw=2.5, label="Observed")
    pts = {n: records[n]["values"] for n in records}
    excl = [pts[n] for n in good if records[n]["CLs_obs"] < level]
    allowed = [pts[n] for n in good if records[n]["CLs_obs"] >= level]
    if excl:
        ax.scatter(*np.array(excl).T, s=18, c="#d62728", marker="o", label=f"excluded ({len(excl)})", zorder=5)
    if allowed:
        ax.scatter(*np.array(allowed).T, s=18, facecolors="none", edgecolors="0.3", marker="o", label=f"allowed ({len(allowed)})", zorder=5)
    if bad:
        ax.scatter(*np.array([pts[n] for n in bad]).T, s=30, c="0.5", marker="x", label=f"not converged / failed ({len(bad)})", zorder=6)
    ax.set_xlabel(labels[0] if labels else "value 0")
    ax.set_ylabel(labels[1] if len(labels) > 1 else "value 1")
    ys = [v[1] for v in pts.values()]
    if ys and max(ys) > min(ys):  # head room for the legend
        ax.set_ylim(min(ys) - 0.03 * (max(ys) - min(ys)), max(ys) + 0.4 * (max(ys) - min(ys)))
    ax.legend(loc="upper left", fontsize=10, frameon=False, ncols=2)


def _plot_1d(ax: Any, records: dict[str, dict[str, Any]], labels: list[str], level: float) -> None:
    good = sorted((n for n, r in records.items() if usable(r)), key=lambda n: records[n]["values"][0])
    x = np.array([records[n]["values"][0] for n in good], dtype=float)
    c = {k: np.array([curve_value(records[n], k) for n in good], dtype=float) for k in CURVES}
    if len(good):
        ax.fill_between(x, c["expected_m2"], c["expected_p2"], color="#ffdf3d", label=r"Expected $\pm 2\sigma$")
        ax.fill_between(x, c["expected_m1"], c["expected_p1"], color="#3fca3f", label=r"Expected $\pm 1\sigma$")
        ax.plot(x, c["expected"], "k--", label="Expected")
        ax.plot(x, c["observed"], "k-o", ms=4, label="Observed")
    ax.axhline(level, color="#d62728", lw=1.5, label=f"CLs = {level:g}")
    ax.set_yscale("log")
    ax.set_xlabel(labels[0] if labels else "value 0")
    ax.set_ylabel("CLs")
    ax.legend(fontsize=10, frameon=False)
