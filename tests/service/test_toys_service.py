"""Toy-based jobs through the service: chunks of toy ranges, merge, cache by range, progress in toys, plot."""

from __future__ import annotations

import pytest

from fitserve.engine.scan import scan

from .workload import tiny_inputs


def _toy_settings(settings):
    return settings.model_copy(update={"toy_chunk_size": 300})


@pytest.fixture
def toy_service(settings):
    from .conftest import Service

    svc = Service(_toy_settings(settings))
    try:
        yield svc
    finally:
        svc.close()


def test_toy_job_equals_one_engine_run_and_reuses_ranges(toy_service):
    ws, ps = tiny_inputs(2)
    svc = toy_service
    svc.start_worker()
    svc.start_worker()  # two workers share the chunks of one hypothesis
    job = svc.submit(ws, ps, calculator="toybased", n_toys=1000, seed=5)
    st = svc.wait(job["id"])
    assert st["state"] == "done" and st["counts"]["errors"] == 0
    assert st["toys"] == {"done": 4000, "total": 4000, "cached": 0}
    got = svc.http.get(f"/v1/jobs/{job['id']}/results").json()["results"]
    ref = scan(ws, ps["patches"], {"calculator": "toybased", "n_toys": 1000, "seed": 5})["results"]
    for name, want in ref.items():
        rec = got[name]
        assert rec["calculator"] == "toybased" and "toy_q" not in rec and "partial" not in rec
        for key in ("CLs_obs", "CLs_exp", "CLsb_obs", "CLb_obs", "uncertainty"):
            assert rec[key] == want[key], (name, key)  # 4 chunks of toys on 2 workers, exactly one run's numbers
        assert rec["toys"]["ranges"] == [[0, 300], [300, 600], [600, 900], [900, 1000]]

    # more toys, same seed: only the new ranges are computed
    more = svc.submit(ws, ps, calculator="toybased", n_toys=1500, seed=5)
    st2 = svc.wait(more["id"])
    assert st2["state"] == "done" and st2["toys"]["total"] == 6000
    assert st2["toys"]["cached"] == 2 * 2 * 900  # [0, 300), [300, 600), [600, 900) of both hypotheses
    rec = svc.http.get(f"/v1/jobs/{more['id']}/results").json()["results"]["sig_0"]
    assert rec["toys"]["n_toys"] == 1500 and rec["toys"]["n_sb"] + rec["toys"]["failed_sb"] == 1500
    ref = scan(ws, [ps["patches"][0]], {"calculator": "toybased", "n_toys": 1500, "seed": 5})["results"]["sig_0"]
    assert rec["CLs_exp"] == ref["CLs_exp"] and rec["CLs_obs"] == ref["CLs_obs"]

    png = svc.http.get(f"/v1/jobs/{more['id']}/toys/sig_0.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert svc.http.get(f"/v1/jobs/{more['id']}/toys/nope.png").status_code == 404
    csv = svc.http.get(f"/v1/jobs/{more['id']}/results", params={"format": "csv"}).text
    assert "CLs_obs_err" in csv.splitlines()[0]


def test_partial_results_while_running_and_toy_limits(toy_service):
    from fitserve.service import toyjobs

    ws, ps = tiny_inputs(1)
    svc = toy_service
    job = svc.submit(ws, ps, calculator="toybased", n_toys=600, seed=1)
    st = svc.status(job["id"])
    assert st["state"] == "queued" and st["toys"] == {"done": 0, "total": 1200, "cached": 0}
    # the first of its two chunks, computed as a worker would and stored as its part
    part = scan(ws, ps["patches"], {"calculator": "toybased", "n_toys": 600, "seed": 1, "toy_range": [0, 300]})[
        "results"
    ]
    store = svc.server.config.app.state.store
    meta = store.meta(job["id"])
    assert not toyjobs.add_part(store, job["id"], meta, "sig_0", [0, 300], part["sig_0"])
    assert toyjobs.add_part(store, job["id"], meta, "sig_0", [0, 300], part["sig_0"]) is False  # idempotent
    assert svc.status(job["id"])["toys"]["done"] == 600
    rec = svc.http.get(f"/v1/jobs/{job['id']}/results").json()["results"]["sig_0"]
    assert rec["partial"] is True and rec["toys"]["done"] == 300 and rec["toys"]["ranges"] == [[0, 300]]
    assert rec["uncertainty"]["CLs_obs"] > 0 and "toy_q" not in rec
    svc.start_worker()
    st = svc.wait(job["id"])
    assert st["state"] == "done" and st["toys"]["done"] == 1200
    final = svc.http.get(f"/v1/jobs/{job['id']}/results").json()["results"]["sig_0"]
    want = scan(ws, ps["patches"], {"calculator": "toybased", "n_toys": 600, "seed": 1})["results"]["sig_0"]
    assert (
        "partial" not in final and final["CLs_exp"] == want["CLs_exp"] and final["uncertainty"] == want["uncertainty"]
    )

    bad = svc.http.post(
        "/v1/jobs", json={"workspace": ws, "patchset": ps, "options": {"calculator": "toybased", "toy_range": [0, 10]}}
    )
    assert bad.status_code == 422 and "toy_range" in bad.text
    huge = svc.http.post(
        "/v1/jobs", json={"workspace": ws, "patchset": ps, "options": {"calculator": "toybased", "n_toys": 1_000_001}}
    )
    assert huge.status_code == 413 and "max_job_toys" in huge.text
    limits = svc.http.post(
        "/v1/jobs", json={"workspace": ws, "patchset": ps, "options": {"calculator": "toybased", "limits": True}}
    )
    assert limits.status_code == 422 and "asymptotic" in limits.text
