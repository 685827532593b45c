"""The exclusion plot: observed line, expected line with ±1σ band, grid points (mplhep ATLAS style).

Uses matplotlib's object API (no pyplot state), so it is safe in a server.
Style changes are process-global in matplotlib, hence the lock.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from fitserve.service.aggregate import CURVES, AggregationError, Grid2D, _log_cls, curve_value, grid_dimension, usable

_LOCK = threading.Lock()
FORMATS = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
OBSERVED, BAND = "#d62728", "#ffdf3d"


def axis_label(label: str | None, unit: str | None, fallback: str) -> str:
    """``m_parent`` -> ``m_parent [GeV]``: the PatchSet's label with its unit.

    The unit comes from the PatchSet metadata (``units``, one per label) when it has one;
    a mass label (``m_...``, ``mass...``) of a SUSY/exotics grid is in GeV otherwise.
    """
    text = label or fallback
    if unit is None and label and (label.startswith("m_") or label.lower().startswith("mass")):
        unit = "GeV"
    return f"{text} [{unit}]" if unit else text


def exclusion_plot(
    records: dict[str, dict[str, Any]],
    labels: list[str] | None = None,
    cl: float = 0.95,
    fmt: str = "png",
    title: str | None = None,
    units: list[str | None] | None = None,
) -> bytes:
    """Render the exclusion plot of a 2-D grid, the CLs curve of a 1-D grid, or one point's limits, as PNG, SVG or PDF."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown plot format {fmt!r}")
    dim = grid_dimension(records)
    if dim == 0 and not _has_limits(records):
        raise AggregationError(
            "a single hypothesis has no grid to draw: submit it with limits for a plot of its upper limit"
        )
    if dim not in (0, 1, 2):
        raise AggregationError(
            f"a plot needs hypotheses on a 1-D or 2-D grid (patch metadata 'values'); these have {dim} values each"
        )
    labels = list(labels or [])
    with _figure((7.5, 6.0), fmt) as (ax, out):
        units = list(units or []) + [None] * 2
        names = [axis_label(labels[i] if i < len(labels) else None, units[i], f"value {i}") for i in range(2)]
        if dim == 2:
            _plot_2d(ax, records, names, 1.0 - cl)
        elif dim == 1:
            _plot_1d(ax, records, names, 1.0 - cl)
        else:
            _plot_limit(ax, records, cl)
        ax.set_title(
            title or (f"{cl:.0%} CL exclusion (CLs)" if dim else f"{cl:.0%} CL upper limit (CLs)"),
            fontsize=12,
            loc="left",
        )
    return out.getvalue()


@contextmanager
def _figure(size: tuple[float, float], fmt: str) -> Iterator[tuple[Any, io.BytesIO]]:
    """One axes in the ATLAS style (matplotlib is not thread-safe: one figure at a time); rendered as
    ``fmt`` into the yielded buffer when the block ends."""
    import matplotlib.style
    import mplhep
    from matplotlib.figure import Figure

    buf = io.BytesIO()
    with _LOCK, matplotlib.style.context(mplhep.style.ATLAS):
        fig = Figure(figsize=size)
        ax = fig.add_subplot()
        yield ax, buf
        fig.tight_layout()
        fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight", pad_inches=0.1)


def _plot_2d(ax: Any, records: dict[str, dict[str, Any]], labels: list[str], level: float) -> None:
    good = [n for n, r in records.items() if usable(r)]
    bad = [n for n, r in records.items() if not usable(r)]
    t = math.log10(level)
    if len(good) >= 3:
        grid = Grid2D(np.array([records[n]["values"] for n in good], dtype=float))
        z = {
            c: grid.interpolate(_log_cls(curve_value(records[n], c) for n in good))
            for c in ("observed", "expected", "expected_m1", "expected_p1")
        }
        # ±1σ band: excluded by the -1σ expectation but not by the +1σ one.  min() of the two
        # distances to the threshold is a continuous surface whose zero contour follows both
        # interpolated contours, so the band has smooth edges (a filled yes/no mask had steps)
        band = np.ma.minimum(t - z["expected_m1"], z["expected_p1"] - t)
        if band.count() and np.ma.max(band) > 0:
            ax.contourf(grid.X, grid.Y, band, levels=[0.0, float(np.ma.max(band)) + 1.0], colors=[BAND], alpha=0.9)
        ax.fill_between([], [], color=BAND, label=r"Expected $\pm 1\sigma$")
        if np.ma.min(z["expected"]) < t < np.ma.max(z["expected"]):
            ax.contour(grid.X, grid.Y, z["expected"], levels=[t], colors="black", linestyles="--", linewidths=2)
        ax.plot([], [], "k--", lw=2, label="Expected")
        if np.ma.min(z["observed"]) < t < np.ma.max(z["observed"]):
            # solid, as its legend entry: matplotlib dashes negative levels of one-colour contours
            ax.contour(grid.X, grid.Y, z["observed"], levels=[t], colors=OBSERVED, linewidths=2.5, linestyles="solid")
        ax.plot([], [], color=OBSERVED, lw=2.5, ls="-", label="Observed")
    pts = {n: records[n]["values"] for n in records}
    excl = [pts[n] for n in good if records[n]["CLs_obs"] < level]
    allowed = [pts[n] for n in good if records[n]["CLs_obs"] >= level]
    if excl:
        ax.scatter(
            *np.array(excl).T, s=18, c=OBSERVED, marker="o", label=f"excluded ({len(excl)})", zorder=5, clip_on=False
        )
    if allowed:
        ax.scatter(
            *np.array(allowed).T,
            s=18,
            facecolors="none",
            edgecolors="0.3",
            marker="o",
            label=f"allowed ({len(allowed)})",
            zorder=5,
            clip_on=False,
        )
    if bad:
        ax.scatter(
            *np.array([pts[n] for n in bad]).T,
            s=30,
            c="0.5",
            marker="x",
            label=f"not converged / failed ({len(bad)})",
            zorder=6,
            clip_on=False,
        )
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    xs, ys = [v[0] for v in pts.values()], [v[1] for v in pts.values()]
    if xs and max(xs) > min(xs):  # markers on the edge of the grid stay whole
        ax.set_xlim(min(xs) - 0.04 * (max(xs) - min(xs)), max(xs) + 0.04 * (max(xs) - min(xs)))
    if ys and max(ys) > min(ys):  # head room for the legend
        ax.set_ylim(min(ys) - 0.05 * (max(ys) - min(ys)), max(ys) + 0.4 * (max(ys) - min(ys)))
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
    ax.set_xlabel(labels[0])
    ax.set_ylabel("CLs")
    ax.legend(fontsize=10, frameon=False)


def _has_limits(records: dict[str, dict[str, Any]]) -> bool:
    return any(
        isinstance(r.get("upper_limit"), dict) and r["upper_limit"].get("obs") is not None for r in records.values()
    )


def _plot_limit(ax: Any, records: dict[str, dict[str, Any]], cl: float) -> None:
    """One hypothesis (a full workspace): its observed upper limit on mu and the expected band, one row per hypothesis."""
    rows = [
        (n, r["upper_limit"])
        for n, r in records.items()
        if isinstance(r.get("upper_limit"), dict) and r["upper_limit"].get("obs") is not None
    ]
    for i, (_name, ul) in enumerate(rows):
        exp = ul.get("exp") or []
        if len(exp) == 5 and all(e is not None for e in exp):
            ax.fill_betweenx(
                [i - 0.3, i + 0.3], exp[0], exp[4], color=BAND, label=r"Expected $\pm 2\sigma$" if i == 0 else None
            )
            ax.fill_betweenx(
                [i - 0.3, i + 0.3], exp[1], exp[3], color="#3fca3f", label=r"Expected $\pm 1\sigma$" if i == 0 else None
            )
            ax.plot([exp[2]] * 2, [i - 0.3, i + 0.3], "k--", lw=2, label="Expected" if i == 0 else None)
        ax.plot([ul["obs"]] * 2, [i - 0.3, i + 0.3], color=OBSERVED, lw=2.5, label="Observed" if i == 0 else None)
    ax.set_yticks(range(len(rows)), [n for n, _ in rows])
    ax.set_ylim(-0.8, len(rows) - 0.2 + 0.8)
    ax.set_xlim(left=0)
    ax.set_xlabel(rf"{cl:.0%} CL upper limit on the signal strength $\mu$")
    ax.legend(fontsize=10, frameon=False, loc="upper right", ncols=2)


def toy_plot(
    q_obs: float,
    q_sb: np.ndarray,
    q_b: np.ndarray,
    name: str,
    record: dict[str, Any] | None = None,
    test_stat: str = "qtilde",
    fmt: str = "png",
) -> bytes:
    """The two toy distributions of one hypothesis' test statistic with the observed value (pyhf's toy plot).

    Histograms of the signal+background and background-only toys on a log scale (failed toys left
    out), a line at the observed value, and CLs with its Monte Carlo uncertainty in the legend.
    """
    sb, b = q_sb[np.isfinite(q_sb)], q_b[np.isfinite(q_b)]
    top = max(float(np.max(sb, initial=0.0)), float(np.max(b, initial=0.0)), q_obs, 1e-3) * 1.05
    bins = np.linspace(0.0, top, 51)
    symbol = {"qtilde": r"$\tilde{q}_{\mu}$", "q": r"$q_{\mu}$", "q0": r"$q_0$"}.get(test_stat, test_stat)
    with _figure((7.5, 5.5), fmt) as (ax, out):
        ax.hist(
            b, bins=bins, histtype="step", color="tab:blue", linewidth=1.6, label=f"background-only ({b.size} toys)"
        )
        ax.hist(
            sb,
            bins=bins,
            histtype="step",
            color="tab:red",
            linewidth=1.6,
            label=f"signal + background ({sb.size} toys)",
        )
        label = f"observed {symbol} = {q_obs:.3g}"
        if record and record.get("CLs_obs") is not None:
            err = (record.get("uncertainty") or {}).get("CLs_obs")
            label += f"\nCLs = {record['CLs_obs']:.4g}" + (f" ± {err:.2g}" if err is not None else "")
        ax.axvline(q_obs, color="black", linestyle="--", linewidth=1.4, label=label)
        ax.set_yscale("log")
        ax.set_xlabel(f"test statistic {symbol}")
        ax.set_ylabel("toys")
        ax.legend(fontsize=10, loc="upper right")
        ax.set_title(f"toys of {name}", fontsize=12, loc="left")
    return out.getvalue()
