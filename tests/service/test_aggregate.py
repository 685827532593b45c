"""Aggregation on synthetic grids whose exclusion boundary is known exactly (no Redis, no engine)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fitserve.service.aggregate import AggregationError, contours, to_csv
from fitserve.service.plot import exclusion_plot


def record(values, cls_obs, shift=0.0, converged=True, error=None):
    # CLs_exp: the same surface moved by -2..+2 "sigma" shifts (in log10 CLs)
    exp = [cls_obs * 10 ** (shift * k) for k in (-2, -1, 0, 1, 2)]
    return {
        "values": list(values),
        "CLs_obs": cls_obs,
        "CLs_exp": exp,
        "CLsb_obs": cls_obs / 2,
        "CLb_obs": 0.5,
        "mu_hat": 0.0,
        "nll_free": 1.0,
        "converged": converged,
        "upper_limit": None,
        "error": error,
    }


def grid_2d(bad: set[tuple[float, float]] = frozenset()):
    """log10 CLs = -(x + y) / 100: the CLs = 0.05 contour is the line x + y = 100 log10(20) ~ 130.1."""
    recs = {}
    for x in np.linspace(0, 200, 11):
        for y in np.linspace(0, 100, 6):
            cls = 10 ** (-(x + y) / 100)
            recs[f"p_{x:g}_{y:g}"] = record((x, y), cls, shift=0.1, converged=(x, y) not in bad)
    return recs


def test_2d_contour_follows_the_known_boundary():
    out = contours(grid_2d(), labels=["m_a", "m_b"])
    assert out["kind"] == "2d" and out["labels"] == ["m_a", "m_b"]
    assert set(out["contours"]) == {"observed", "expected", "expected_m1", "expected_p1", "expected_m2", "expected_p2"}
    c = 100 * math.log10(20)
    lines = out["contours"]["observed"]
    assert lines, "no observed contour"
    pts = np.concatenate([np.array(line) for line in lines])
    assert np.allclose(pts.sum(axis=1), c, atol=0.5)
    # expected_m1 is CLs_exp[1] = CLs * 10**-0.1: boundary where x + y = c - 10
    pts = np.concatenate([np.array(line) for line in out["contours"]["expected_m1"]])
    assert np.allclose(pts.sum(axis=1), c - 10, atol=0.5)


def test_not_converged_points_are_left_out_and_counted():
    out = contours(grid_2d(bad={(200.0, 100.0), (0.0, 0.0)}))
    assert out["points"] == {"used": 64, "not_converged": 2, "errors": 0}


def test_1d_limit_curve_crossings():
    recs = {f"p{i}": record((x,), 10 ** (-x / 100)) for i, x in enumerate(range(0, 301, 50))}
    out = contours(recs, labels=["m_X"])
    assert out["kind"] == "1d" and out["x"] == [0, 50, 100, 150, 200, 250, 300]
    assert out["crossings"]["observed"] == pytest.approx([100 * math.log10(20)])


def test_contours_need_a_grid():
    with pytest.raises(AggregationError, match="1-D or 2-D grid"):
        contours({"ws": record((), 0.5)})


def test_csv_uses_patchset_labels():
    text = to_csv({"a": record((1.0, 2.0), 0.5), "b": record((3.0, 4.0), 0.01, converged=False)}, ["m_a", "m_b"])
    lines = text.strip().splitlines()
    assert lines[0].startswith("name,m_a,m_b,CLs_obs,CLs_exp_m2,CLs_exp_m1,CLs_exp,CLs_exp_p1,CLs_exp_p2,")
    assert len(lines) == 3 and lines[1].startswith("a,1.0,2.0,0.5,") and ",False," in lines[2]


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("svg", b"<?xml")])
def test_plots_render(fmt, magic):
    assert exclusion_plot(grid_2d(bad={(0.0, 0.0)}), ["m_a", "m_b"], fmt=fmt).startswith(magic)
    recs = {f"p{i}": record((x,), 10 ** (-x / 100), shift=0.1) for i, x in enumerate(range(0, 301, 50))}
    assert exclusion_plot(recs, ["m_X"], fmt=fmt).startswith(magic)
