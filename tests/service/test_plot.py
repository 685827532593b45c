"""The exclusion plot as a paper needs it: PDF, solid observed line, smooth band, units, nothing clipped.

Real engine results on the example grid; the files land in test-output/plots/ to be looked at.
"""

from __future__ import annotations

import json
import re

import pytest

from fitserve.service.aggregate import AggregationError
from fitserve.service.plot import axis_label, exclusion_plot

from .conftest import REPO, tiny_inputs

OUT = REPO / "test-output" / "plots"
EXAMPLE = REPO / "workspaces" / "example"


@pytest.fixture(scope="module")
def example_records() -> dict:
    from fitserve.engine.scan import scan

    ws, ps = (json.loads((EXAMPLE / f).read_text()) for f in ("BkgOnly.json", "patchset.json"))
    return scan(ws, ps["patches"], {})["results"]


def test_png_svg_and_pdf(example_records) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for fmt, magic in (("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")):
        data = exclusion_plot(example_records, ["m_parent", "m_LSP"], fmt=fmt)
        assert data.startswith(magic), fmt
        (OUT / f"example.{fmt}").write_bytes(data)


def test_observed_line_is_solid_like_its_legend_and_the_expected_dashed(example_records) -> None:
    svg = exclusion_plot(example_records, ["m_parent", "m_LSP"], fmt="svg").decode()
    styles = re.findall(r'style="([^"]*stroke: ?#d62728[^"]*)"', svg)
    assert styles, "no observed line"
    lines = [s for s in styles if "stroke-width: 2.5" in s]
    assert lines and not any("dasharray" in s for s in lines), lines
    assert any("dasharray" in s for s in re.findall(r'style="([^"]*stroke: ?#000000[^"]*)"', svg)), (
        "expected line not dashed"
    )


def test_axis_labels_carry_units_and_edge_points_are_not_clipped(example_records) -> None:
    from matplotlib.figure import Figure

    assert axis_label("m_parent", None, "x") == "m_parent [GeV]"
    assert axis_label("tan_beta", None, "x") == "tan_beta"
    assert axis_label("m_X", "TeV", "x") == "m_X [TeV]"
    svg = exclusion_plot(example_records, ["m_parent", "m_LSP"], fmt="svg").decode()
    assert "m_parent [GeV]" in svg and "m_LSP [GeV]" in svg
    xs = [r["values"][0] for r in example_records.values()]
    import fitserve.service.plot as plot

    seen = {}
    orig = Figure.savefig

    def grab(self, *a, **k):
        ax = self.axes[0]
        seen["xlim"], seen["ylim"] = ax.get_xlim(), ax.get_ylim()
        return orig(self, *a, **k)

    Figure.savefig = grab
    try:
        plot.exclusion_plot(example_records, ["m_parent", "m_LSP"], fmt="png")
    finally:
        Figure.savefig = orig
    assert seen["xlim"][0] < min(xs) and seen["xlim"][1] > max(xs)


def test_a_single_workspace_plots_its_upper_limit_or_says_what_is_needed() -> None:
    from fitserve.engine.scan import scan

    ws, ps = tiny_inputs(1)
    full = json.loads(json.dumps(ws))
    full["channels"][0]["samples"].append(ps["patches"][0]["patch"][0]["value"])
    with_limits = scan(full, None, {"limits": True})["results"]
    data = exclusion_plot(with_limits, [], fmt="png")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "single-limit.png").write_bytes(data)
    assert data.startswith(b"\x89PNG")
    with pytest.raises(AggregationError, match="submit it with limits"):
        exclusion_plot(scan(full, None, {})["results"], [], fmt="png")
