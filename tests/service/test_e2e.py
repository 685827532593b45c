"""End to end over HTTP on the published ATLAS 3L-RJ likelihood: results, cache, overlap, cancel."""

from __future__ import annotations

import time

import pytest

from fitserve.engine import clean_record
from fitserve.engine.scan import scan

from .conftest import E2E_PATCHES, spread, wait_until

pytestmark = pytest.mark.shared


def assert_records_equal(got: dict, want: dict, rel: float = 1e-9) -> None:
    assert list(got) == list(want)
    for name, rec in want.items():
        rec = clean_record(rec)
        for key, value in rec.items():
            if isinstance(value, float):
                assert got[name][key] == pytest.approx(value, rel=rel, abs=1e-12), (name, key)
            elif isinstance(value, list) and value and isinstance(value[0], float):
                assert got[name][key] == pytest.approx(value, rel=rel, abs=1e-12), (name, key)
            else:
                assert got[name][key] == value, (name, key)


def test_end_to_end_results_contours_plot_cache_and_overlap(service, rj):
    ws, ps = rj
    names = spread([p["metadata"]["name"] for p in ps["patches"]], E2E_PATCHES)
    service.start_worker()
    job = service.submit(ws, ps, patches=names)
    assert job["to_compute"] == len(names)
    st = service.wait(job["id"])
    assert st["state"] == "done" and st["progress"]["done"] == len(names)
    ref = scan(ws, ps["patches"], names=names)
    doc = service.http.get(f"/v1/jobs/{job['id']}/results").json()
    assert doc["complete"] and doc["labels"] == ["m_C1N2", "m_N1"]
    assert_records_equal(doc["results"], ref["results"])
    unusable = sum(1 for r in doc["results"].values() if not r["converged"])
    assert st["counts"]["not_converged"] == unusable

    cont = service.http.get(f"/v1/jobs/{job['id']}/contours").json()
    assert cont["kind"] == "2d" and cont["complete"] and cont["labels"] == ["m_C1N2", "m_N1"]
    assert cont["points"]["used"] + cont["points"]["not_converged"] == len(names)
    assert set(cont["contours"]) == {"observed", "expected", "expected_m1", "expected_p1", "expected_m2", "expected_p2"}
    for fmt, ctype in (("png", "image/png"), ("svg", "image/svg+xml")):
        plot = service.http.get(f"/v1/jobs/{job['id']}/plot.{fmt}")
        assert plot.status_code == 200 and plot.headers["content-type"] == ctype and len(plot.content) > 1000

    # resubmission: answered from the cache at once, nothing computed
    again = service.submit(ws, ps, patches=names)
    assert again["state"] == "done" and again["cached"] == len(names) and again["to_compute"] == 0
    assert service.status(again["id"])["counts"]["computed"] == 0
    assert service.http.get(f"/v1/jobs/{again['id']}/results").json()["results"] == doc["results"]

    # overlap: only the new hypotheses are fitted
    extra = [n for n in (p["metadata"]["name"] for p in ps["patches"]) if n not in names][:2]
    over = service.submit(ws, ps, patches=names + extra)
    assert over["cached"] == len(names) and over["to_compute"] == 2
    st = service.wait(over["id"])
    assert st["state"] == "done" and st["counts"] == {**st["counts"], "cached": len(names), "computed": 2}
    # other options are another cache entry
    assert service.submit(ws, ps, patches=names[:1], poi_test=0.5)["to_compute"] == 1


def test_cancel_stops_a_running_job_and_partial_results_show(settings, rj):
    from .conftest import Service

    ws, ps = rj
    svc = Service(settings.model_copy(update={"chunk_size": 1}))
    try:
        names = [p["metadata"]["name"] for p in ps["patches"]][10:16]
        svc.start_worker()
        job = svc.submit(ws, ps, patches=names)
        wait_until(lambda: svc.status(job["id"])["progress"]["done"] >= 1, timeout=120, what="first hypothesis")
        partial = svc.http.get(f"/v1/jobs/{job['id']}/results").json()
        assert not partial["complete"] and 1 <= len(partial["results"]) < len(names)
        resp = svc.http.delete(f"/v1/jobs/{job['id']}")
        assert resp.status_code == 200 and resp.json()["state"] == "cancelled"
        at_cancel = resp.json()["progress"]["done"]
        time.sleep(3)  # the one chunk in flight may finish; no new one starts
        st = svc.status(job["id"])
        assert st["state"] == "cancelled" and st["progress"]["done"] <= at_cancel + 1 < len(names)
        assert svc.http.get("/v1/health").json()["queue"]["chunks_waiting"] == 0
        assert svc.http.delete(f"/v1/jobs/{job['id']}").status_code == 200
    finally:
        svc.close()
