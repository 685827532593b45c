"""Limits on what the engine builds (issue #17), checked at submission against the real API.

The hostile shapes of tests/service/hostile_shapes.py are refused with 422 naming the limit, the
measured value and the setting; nothing is queued for them.  The plan the API checks
(fitserve.engine.budget) agrees with the models the engine really builds.
"""

from __future__ import annotations

import json

import pytest

from fitserve.engine import budget
from fitserve.engine.inputs import expand_hypotheses
from fitserve.engine.model import compile_hypotheses
from fitserve.service.settings import Settings

from .conftest import RJ, Service
from .hostile_shapes import group_explosion, union_blowup, wide_patch


def _refused(svc: Service, ws: dict, ps: dict, *needles: str) -> dict:
    resp = svc.http.post("/v1/jobs", json={"workspace": ws, "patchset": ps})
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    for needle in needles:
        assert needle in detail["message"] + " @ " + detail["where"], detail
    return detail


@pytest.fixture
def api(settings: Settings):
    svc = Service(settings.model_copy(update={"chunk_size": 16}))  # the default chunk size: the probes' shapes
    try:
        yield svc
    finally:
        svc.close()


def test_union_blowup_is_refused_at_submission_naming_the_padded_parameters(api):
    for k, padded in ((200, 3206),):  # K = 4998 (P = 79,970) has 5004 parameters per patch already
        ws, ps = union_blowup(k)
        detail = _refused(
            api, ws, ps, f"has {padded} parameters", "max_parameters = 2000 (FITSERVE_MAX_PARAMETERS)", "patches 0..15"
        )
        assert "union" in detail["message"]
    assert api.http.get("/v1/health").json()["queue"]["chunks_waiting"] == 0  # nothing queued for them


def test_union_blowup_under_the_limit_is_planned_in_batches_that_fit(api):
    """K = 40 and 100 (P = 646, 1606) pass max_parameters; the engine narrows their batches to the budget."""
    for k in (40, 100):
        ws, ps = union_blowup(k)
        group = budget.plan(ws, ps["patches"], {}, chunk_size=16, budget_bytes=api.settings.batch_memory()).groups[0]
        assert group.peak_bytes <= api.settings.batch_memory() and group.width >= 1


def test_group_explosion_is_refused_naming_the_structure_groups(api):
    ws, ps = group_explosion(32)
    _refused(api, ws, ps, "32 structure groups", "max_structure_groups = 8 (FITSERVE_MAX_STRUCTURE_GROUPS)")
    ws, ps = group_explosion(8)  # at the limit: accepted
    assert api.http.post("/v1/jobs", json={"workspace": ws, "patchset": ps}).status_code == 202


def test_sixteen_patches_at_the_old_parameter_limit_are_refused(api):
    ws, ps = wide_patch(5000, n=16)  # 16 such patches: 77 GB per chunk before; one alone 61 s and 6.8 GB
    _refused(api, ws, ps, "5005 parameters", "max_parameters = 2000")


def test_a_batch_over_the_memory_budget_is_refused_and_a_narrower_one_planned(settings):
    svc = Service(settings.model_copy(update={"chunk_size": 16, "batch_memory_bytes": 64 * 2**20}))
    try:
        ws, ps = wide_patch(400, n=1)  # one hypothesis alone needs more than 64 MiB
        detail = _refused(svc, ws, ps, "batch memory budget 64 MiB", "FITSERVE_BATCH_MEMORY_BYTES")
        assert "405 without" in detail["message"]
    finally:
        svc.close()
    ws, ps = union_blowup(5)  # P = 86: 16 fit together need ~30 MiB, 4 fit under 8 MiB
    wide = budget.plan(ws, ps["patches"], {}, chunk_size=16).groups[0]
    narrow = budget.plan(ws, ps["patches"], {}, chunk_size=16, budget_bytes=8 * 2**20).groups[0]
    assert wide.width == 16 and 1 <= narrow.width < 16 and narrow.peak_bytes <= 8 * 2**20 < wide.peak_bytes


def test_max_width_is_the_widest_batch_under_the_budget():
    per = budget.batch_bytes(1, 300, 10, 40)
    assert budget.max_width(300, 10, 40, 10 * per) == 10
    assert budget.max_width(300, 10, 40, per - 1) == 0  # not even one: the caller refuses
    assert budget.batch_bytes(10, 300, 10, 40) <= 10 * per + 10
    assert budget.max_width(600, 10, 40, 10 * per) < budget.max_width(300, 10, 40, 10 * per)


@pytest.mark.parametrize("shape", ["union", "groups", "rj"])
def test_plan_agrees_with_the_models_the_engine_builds(shape):
    if shape == "union":
        ws, ps = union_blowup(3)
    elif shape == "groups":
        ws, ps = group_explosion(5)
    else:
        if not (RJ / "patchset.json").exists():
            pytest.skip("published likelihoods not found")
        ws, ps = json.loads((RJ / "BkgOnly.json").read_text()), json.loads((RJ / "patchset.json").read_text())
    patches = ps["patches"][:16]
    planned = budget.plan(ws, patches, {}).groups
    built = compile_hypotheses(expand_hypotheses(ws, patches), ws)
    assert len(planned) == len(built)
    for g, m in zip(planned, built):
        assert list(g.names) == m.names
        assert (g.n_params, g.n_bins, g.n_sb, g.k_mult, g.k_histosys) == (
            m.n_params,
            m.arrays["observed"].shape[1],
            m.arrays["nominal"].shape[1],
            m.structure["mult"].shape[1],
            m.arrays["hs_hi"].shape[-1],
        )
        assert g.width == budget.model_width(m, budget_bytes=2**40)
