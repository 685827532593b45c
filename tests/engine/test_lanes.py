"""fit.lanes_for: how many lanes a batch's pool gets, from the model's per-lane cost (the occupancy model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fitserve.engine import fit, infer

EXAMPLE = Path(__file__).parents[2] / "workspaces" / "example"


@pytest.mark.parametrize("width", [1, 3, 4, 8, 32, 64, 128, 1000])
@pytest.mark.parametrize("cost", [0.05, 0.2, 1.0, 5.0])
def test_a_power_of_two_between_4_and_the_cap(width, cost):
    lanes = fit.lanes_for(width, 32, cost)
    assert lanes in (4, 8, 16, 32)
    assert lanes <= max(4, 1 << (width - 1).bit_length())  # never more lanes than a power of two of the chains
    assert fit.lanes_for(width, 8, cost) <= 8


def test_cheap_lanes_are_many_and_dear_lanes_are_few():
    """Measured (bench_paper's lane sweep): 3L-RJ, 0.17 ms per lane, is fastest on 32 lanes at width 128;
    1Lbb (1 ms) on 8 (27 ms per hypothesis against 36 ms on 32); the 256-parameter model (4.6 ms) on 4."""
    assert fit.lanes_for(128, 32, 0.13) == 32
    assert fit.lanes_for(128, 32, 0.9) in (8, 16)
    assert fit.lanes_for(16, 32, 2.9) == 4
    for width in (8, 32, 64, 128):
        picks = [fit.lanes_for(width, 32, c) for c in (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)]
        assert picks == sorted(picks, reverse=True)  # dearer lanes never get more of them


def _scan_costs(monkeypatch, ws, patches) -> list[float]:
    """The per-lane costs the engine handed to lanes_for while scanning ``patches``."""
    costs: list[float] = []
    real = infer.lanes_for

    def spy(width, max_lanes=32, lane_cost_ms=None):
        costs.append(lane_cost_ms)
        return real(width, max_lanes, lane_cost_ms)

    monkeypatch.setattr(infer, "lanes_for", spy)
    from fitserve.engine.scan import scan

    out = scan(ws, patches, {}, validate=False)
    assert all(r["converged"] for r in out["results"].values())
    return costs


def test_the_engine_prices_lanes_by_the_model(monkeypatch):
    from fitserve.generate import signal_patchset, sized_workspace

    ws = json.loads((EXAMPLE / "BkgOnly.json").read_text())
    patches = json.loads((EXAMPLE / "patchset.json").read_text())["patches"]
    small = _scan_costs(monkeypatch, ws, patches[:2])
    assert small and all(0 < c < 0.2 for c in small)
    assert _scan_costs(monkeypatch, ws, patches[:8]) == [small[0]]  # per hypothesis: the batch width does not count
    bkg = sized_workspace()
    big = _scan_costs(monkeypatch, bkg, signal_patchset(bkg)["patches"][:1])
    assert big and all(c > 1.0 for c in big)  # 256 parameters, 128 bins
