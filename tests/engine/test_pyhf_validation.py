"""pyhf's validation suite against tight pyhf references.

The cases of pyhf's ``tests/test_validation.py`` and the HistFactory XML inputs
of its ``validation/`` folder, stored as workspaces in ``pyhf_validation/cases``;
the references (pyhf, SciPy SLSQP at tolerance 1e-14, Minuit, a multistart
search) in ``pyhf_validation/references.json``.  Both are made by
``pyhf_validation/make_references.py``; these tests only read them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fitserve.engine.errors import InputError
from fitserve.engine.options import ScanOptions
from fitserve.engine.scan import scan

HERE = Path(__file__).resolve().parent / "pyhf_validation"
CASES = {p.stem: json.loads(p.read_text()) for p in sorted((HERE / "cases").glob("*.json"))}
REFS = json.loads((HERE / "references.json").read_text())["cases"]

#: |dCLs| allowed against a tight reference (absolute), and the free fit's NLL above it
CLS_ATOL = 1e-5
NLL_SLACK = 1e-6

WELL_POSED = [n for n in CASES if REFS[n].get("well_posed")]
MULTIMODAL = [n for n in CASES if REFS[n].get("multimodal")]
TOYS = [n for n in CASES if CASES[n]["calctype"] == "toybased"]
REFUSED = [n for n in CASES if REFS[n].get("pyhf_refuses")]
#: pyhf's recorded numbers that are ROOT's (absolute and relative tolerance given)
ROOT = [n for n in CASES if (CASES[n]["pyhf_recorded"] or {}).get("atol")]


def run(case: dict, **extra) -> dict:
    """fitserve's record of a case (its workspace is one hypothesis)."""
    options = {
        "test_stat": case["test_stat"],
        "poi_test": case["poi_test"],
        "modifier_settings": case["modifier_settings"],
        **extra,
    }
    if case.get("measurement"):
        options["measurement"] = case["measurement"]
    results = scan(case["workspace"], None, options)["results"]
    assert len(results) == 1
    return next(iter(results.values()))


def cls(rec: dict) -> np.ndarray:
    return np.array([rec["CLs_obs"], *rec["CLs_exp"]])


def test_fixtures_cover_pyhf_suite():
    """Every case of pyhf's test_validation and a reference for each; the asymptotic ones are pyhf's own
    (pyhf's default fit of the stored workspace reproduces pyhf's recorded numbers within pyhf's tolerance)."""
    pyhf_ids = {c["origin"].get("test") for c in CASES.values()}
    assert len([t for t in pyhf_ids if t and t.startswith("test_validation[")]) == 10
    assert "test_shapesys_nuisparfilter_validation" in pyhf_ids
    assert {
        "test_import_roundtrip[example-one]",
        "test_import_roundtrip[example-two]",
        "test_import_roundtrip[example-three]",
    } <= pyhf_ids
    assert set(REFS) == set(CASES)
    for name, case in CASES.items():
        if case["pyhf_recorded"] and case["calctype"] == "asymptotics":
            assert REFS[name]["pyhf_default"]["reproduces_recorded"], name


@pytest.mark.parametrize("name", WELL_POSED)
def test_cls_match_tight_reference(name):
    """CLs_obs and the five CLs_exp within 1e-5 of the tight reference; fits at least as low as its minima."""
    case, ref = CASES[name], REFS[name]["tight"]
    rec = run(case)
    assert rec["converged"], rec["error"]
    assert not rec.get("multimodal"), rec.get("warning")
    dcls = np.abs(cls(rec) - cls(ref))
    assert dcls.max() <= CLS_ATOL, dcls
    assert rec["nll_free"] <= ref["nll_free"] + NLL_SLACK
    assert rec["nll_fixed"] <= ref["nll_fixed"] + NLL_SLACK


@pytest.mark.parametrize("name", ROOT)
def test_cls_match_root(name):
    """ROOT's numbers recorded in pyhf's tests, within pyhf's own tolerance (np.allclose there)."""
    case = CASES[name]
    rec, root = run(case), case["pyhf_recorded"]
    np.testing.assert_allclose(cls(rec), [root["CLs_obs"], *root["CLs_exp"]], rtol=root["rtol"], atol=root["atol"])


@pytest.mark.parametrize("name", REFUSED)
def test_refused_like_pyhf(name):
    """pyhf cannot test these (see the README); neither may we: a refusal, never numbers."""
    with pytest.raises(InputError):
        run(CASES[name])


LOCAL_SILENT = pytest.mark.xfail(
    strict=True,
    reason=(
        "known limit (docs/engine.md): without restarts, and where the guard (free fit <= fixed-POI fit) does not see it, a fit to the observed data ends in a local minimum and nothing flags "
        "the hypothesis multimodal (2bin_2channel_coupledhistosys: the free fit, NLL 15.143 vs 14.644, CLs_obs 0.225 vs "
        "0.138; the XML coupled-histosys cases: the fixed-POI fit, NLL 14.512 vs 14.239, CLs_obs 0.066 vs 0.114)"
    ),
)


@pytest.mark.parametrize("restarts", [pytest.param(0, marks=LOCAL_SILENT), None, 4])
@pytest.mark.parametrize("name", MULTIMODAL)
def test_multimodal_case_global_or_flagged(name, restarts):
    """Several local minima: fitserve's answer is the global-minimum one (within 0.01), or it says it may not be.

    In 2bin_2channel_coupledhistosys pyhf's recorded CLs_obs (0.080) and the tight single-start fit (0.256) are
    local answers; at the global minima of every fit (multistart search, checked on a grid) CLs_obs is 0.138.
    """
    case, glob = CASES[name], REFS[name]["global"]
    rec = run(case, restarts=restarts)
    assert rec["converged"], rec["error"]
    near = np.abs(cls(rec) - cls(glob)).max() <= 0.01
    assert near or rec.get("multimodal"), (rec["CLs_obs"], glob["CLs_obs"])
    assert rec["nll_free"] <= glob["nll_free"] + NLL_SLACK or rec.get("multimodal")


@pytest.mark.parametrize("name", MULTIMODAL)
def test_multimodal_case_global_with_restarts(name):
    """With restarts, every fit at its global minimum: CLs within 0.01 of the global-minimum answer."""
    case, glob = CASES[name], REFS[name]["global"]
    rec = run(case, restarts=4)
    assert rec["converged"], rec["error"]
    assert rec["nll_free"] <= glob["nll_free"] + NLL_SLACK
    assert rec["nll_fixed"] <= glob["nll_fixed"] + NLL_SLACK
    dcls = np.abs(cls(rec) - cls(glob))
    assert dcls.max() <= 0.01, dcls


@pytest.mark.parametrize("name", TOYS)
def test_toy_based_case(name):
    """Toy-based CLs (pyhf's recorded numbers: 2000 toys, numpy seed 0); a loose check, toys are random."""
    if "calculator" not in ScanOptions.model_fields:
        pytest.skip("fitserve has no toy calculator option yet (issue #13); fixture and pyhf's numbers stored")
    case = CASES[name]
    rec = run(case, calculator="toybased", n_toys=case["toys"]["ntoys"])
    expected = np.array([case["pyhf_recorded"]["CLs_obs"], *case["pyhf_recorded"]["CLs_exp"]])
    ntoys = case["toys"]["ntoys"]
    # five binomial standard errors of a p-value from ntoys toys, at least 5/ntoys
    tol = np.maximum(5 * np.sqrt(expected * (1 - expected) / ntoys), 5 / ntoys)
    assert np.all(np.abs(cls(rec) - expected) <= tol), (cls(rec), expected)
