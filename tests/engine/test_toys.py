"""Toy-based CLs against pyhf's ToyCalculator, the asymptotic formulae, and itself in chunks.

pyhf's numbers are stored (tests/engine/references/make_toys_pyhf.py): its
two test-statistic distributions per case, so that agreement is judged by the
Monte Carlo uncertainty of both samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fitserve.engine import toys
from fitserve.engine.errors import InputError
from fitserve.engine.scan import scan

REFERENCE = json.loads((Path(__file__).parent / "references" / "toys_pyhf.json").read_text())


def _one(out: dict) -> dict:
    (rec,) = out["results"].values()
    return rec


@pytest.mark.parametrize("case", sorted(REFERENCE["cases"]))
def test_toys_agree_with_pyhf_toycalculator(case):
    """Same toy count as pyhf; every CLs value within 3 combined Monte Carlo standard errors."""
    ref = REFERENCE["cases"][case]
    n = REFERENCE["n_toys"]
    opts = {
        "calculator": "toybased",
        "n_toys": n,
        "seed": 1,
        "test_stat": ref["test_stat"],
        "poi_test": ref["poi_test"],
    }
    rec = _one(scan(ref["workspace"], None, opts))
    assert rec["converged"] and rec["error"] is None and rec["calculator"] == "toybased"
    assert rec["toys"]["n_sb"] == n and rec["toys"]["n_b"] == n
    assert rec["toys"]["q_obs"] == pytest.approx(ref["q_obs"], rel=1e-5, abs=1e-7)
    theirs = toys.summarize(ref["q_obs"], np.asarray(ref["q_sb"]), np.asarray(ref["q_b"]), ref["test_stat"])
    assert theirs["CLs_obs"] == pytest.approx(ref["CLs_obs"]) and theirs["CLs_exp"] == pytest.approx(ref["CLs_exp"])
    sigma = np.hypot(rec["uncertainty"]["CLs_obs"], theirs["uncertainty"]["CLs_obs"])
    assert abs(rec["CLs_obs"] - ref["CLs_obs"]) < 3 * sigma, (rec["CLs_obs"], ref["CLs_obs"], sigma)
    sigma_exp = np.hypot(rec["uncertainty"]["CLs_exp"], theirs["uncertainty"]["CLs_exp"])
    d = np.abs(np.asarray(rec["CLs_exp"]) - np.asarray(ref["CLs_exp"]))
    assert (d < 3 * sigma_exp + 1e-12).all(), (rec["CLs_exp"], ref["CLs_exp"], sigma_exp)


def _high_count() -> dict:
    return {
        "channels": [
            {
                "name": "SR",
                "samples": [
                    {
                        "name": "signal",
                        "data": [60.0, 40.0],
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                    {
                        "name": "bkg",
                        "data": [1000.0, 600.0],
                        "modifiers": [
                            {"name": "unc", "type": "shapesys", "data": [30.0, 25.0]},
                            {"name": "norm", "type": "normsys", "data": {"hi": 1.02, "lo": 0.98}},
                        ],
                    },
                ],
            }
        ],
        "observations": [{"name": "SR", "data": [1010.0, 590.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }


def test_high_counts_agree_with_the_asymptotic_formulae():
    rec = _one(scan(_high_count(), None, {"calculator": "toybased", "n_toys": 10_000, "seed": 3}))
    assert rec["converged"] and rec["toys"]["failed_sb"] == 0 and rec["toys"]["failed_b"] == 0
    asym = rec["asymptotic"]
    assert 0.05 < asym["CLs_obs"] < 0.6  # a regime where the comparison means something
    assert abs(rec["CLs_obs"] - asym["CLs_obs"]) < 0.01
    np.testing.assert_allclose(rec["CLs_exp"][:4], asym["CLs_exp"][:4], atol=0.01)
    # +2 sigma: more than 2.3% of background-only toys fit mu_hat > mu, where q = 0 and CLs = 1;
    # the asymptotic band has no such pile-up (pyhf's toys show it too, toys_pyhf.json)
    assert rec["CLs_exp"][4] == 1.0 and asym["CLs_exp"][4] < 1.0


def test_chunks_merge_to_the_unchunked_numbers_exactly():
    ws = REFERENCE["cases"]["1bin_shapesys_qtilde"]["workspace"]
    base = {"calculator": "toybased", "n_toys": 1500, "seed": 7}
    whole = _one(scan(ws, None, base))
    parts = [_one(scan(ws, None, {**base, "toy_range": r})) for r in ([900, 1500], [0, 400], [400, 900])]
    assert all("toy_q" in p for p in parts) and "toy_q" not in whole
    merged = toys.merge_records(parts, "qtilde", 1500, 7, 0.01)
    for key in ("CLs_obs", "CLs_exp", "CLsb_obs", "CLb_obs", "uncertainty"):
        assert merged[key] == whole[key], key
    assert merged["toys"]["ranges"] == [[0, 400], [400, 900], [900, 1500]]
    other_seed = _one(scan(ws, None, {**base, "seed": 8}))
    assert other_seed["CLs_exp"] != whole["CLs_exp"]  # the seed matters


def test_failed_toy_fits_are_counted_and_left_out():
    """The signal's normalisation k is measured in a 2-event control region: a toy with no CR event
    sets k = 0, where the POI has no effect and its fit cannot converge (pyhf would report a number)."""
    ws = {
        "channels": [
            {
                "name": "SR",
                "samples": [
                    {
                        "name": "signal",
                        "data": [10.0],
                        "modifiers": [
                            {"name": "mu", "type": "normfactor", "data": None},
                            {"name": "k", "type": "normfactor", "data": None},
                        ],
                    },
                    {"name": "bkg", "data": [10.0], "modifiers": []},
                ],
            },
            {
                "name": "CR",
                "samples": [
                    {"name": "ctrl", "data": [2.0], "modifiers": [{"name": "k", "type": "normfactor", "data": None}]}
                ],
            },
        ],
        "observations": [{"name": "SR", "data": [18.0]}, {"name": "CR", "data": [2.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }
    rec = _one(scan(ws, None, {"calculator": "toybased", "n_toys": 1000}))
    t = rec["toys"]
    assert rec["converged"] and rec["error"] is None and rec["CLs_obs"] is not None
    assert t["failed_b"] > 50 and t["n_b"] == 1000 - t["failed_b"] and t["n_sb"] == 1000 - t["failed_sb"]
    assert t["flagged"] and "did not converge" in rec["warning"]
    relaxed = _one(scan(ws, None, {"calculator": "toybased", "n_toys": 1000, "toys_max_failed": 0.5}))
    assert "flagged" not in relaxed["toys"] and relaxed["CLs_obs"] == rec["CLs_obs"]


def test_toy_options_are_checked():
    ws = REFERENCE["cases"]["1bin_shapesys_qtilde"]["workspace"]
    with pytest.raises(Exception, match="asymptotic calculator only"):
        scan(ws, None, {"calculator": "toybased", "limits": True})
    with pytest.raises(Exception, match="toy_range"):
        scan(ws, None, {"calculator": "toybased", "n_toys": 10, "toy_range": [5, 20]})
    with pytest.raises(InputError):
        scan(ws, None, {"calculator": "toybased", "poi_test": 50.0})  # outside the POI bounds, as asymptotics
