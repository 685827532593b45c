"""The HTTP API on a tiny 1-bin model: submission forms, validation errors, results formats, health.

Real redis-server, real uvicorn over HTTP, a worker with the local executor.
"""

from __future__ import annotations

import copy
import json

import pytest

from fitserve.engine import clean_record
from fitserve.engine.scan import scan


def test_health_reports_redis_and_workers(service):
    body = service.http.get("/v1/health").json()
    assert body["redis"]["ok"] and body["workers"] == [] and body["status"] == "degraded"
    service.start_worker()
    from .conftest import wait_until

    wait_until(lambda: service.http.get("/v1/health").json()["workers"], timeout=10, what="worker heartbeat")
    body = service.http.get("/v1/health").json()
    assert body["status"] == "ok" and body["workers"][0]["executor"] == "local"


def test_json_submission_runs_and_matches_the_engine(service, tiny):
    ws, ps = tiny
    service.start_worker()
    job = service.submit(ws, ps)
    assert job["total"] == 3 and job["to_compute"] == 3
    st = service.wait(job["id"])
    assert st["state"] == "done" and st["progress"] == {"done": 3, "total": 3, "fraction": 1.0}
    assert st["counts"]["computed"] == 3 and st["timings"]["run_s"] is not None
    doc = service.http.get(f"/v1/jobs/{job['id']}/results").json()
    ref = scan(ws, ps["patches"])
    assert doc["complete"] and doc["labels"] == ["m_X"] and doc["options"] == ref["options"]
    assert doc["results"] == {n: clean_record(r) for n, r in ref["results"].items()}
    csv = service.http.get(f"/v1/jobs/{job['id']}/results", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("name,m_X,CLs_obs") and len(csv.text.splitlines()) == 4
    cont = service.http.get(f"/v1/jobs/{job['id']}/contours").json()
    assert (
        cont["kind"] == "1d"
        and len(cont["crossings"]["observed"]) == 1
        and 150 < cont["crossings"]["observed"][0] < 200
    )
    png = service.http.get(f"/v1/jobs/{job['id']}/plot.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    listed = service.http.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_multipart_upload_and_full_workspace(service, tiny):
    ws, ps = tiny
    service.start_worker()
    files = {
        "workspace": ("BkgOnly.json", json.dumps(ws), "application/json"),
        "patchset": ("patchset.json", json.dumps(ps), "application/json"),
    }
    resp = service.http.post(
        "/v1/jobs", files=files, data={"options": json.dumps({"patches": ["sig_2"], "test_stat": "q"})}
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["total"] == 1
    st = service.wait(resp.json()["id"])
    assert st["state"] == "done" and st["options"]["test_stat"] == "q"

    # one full workspace (no patchset): one hypothesis named after the measurement
    full = copy.deepcopy(ws)
    full["channels"][0]["samples"].append(ps["patches"][1]["patch"][0]["value"])
    job = service.submit(full)
    st = service.wait(job["id"])
    assert st["state"] == "done"
    res = service.http.get(f"/v1/jobs/{job['id']}/results").json()["results"]
    assert list(res) == ["meas"] and res["meas"]["CLs_obs"] == pytest.approx(
        scan(full)["results"]["meas"]["CLs_obs"], rel=1e-9
    )
    assert service.http.get(f"/v1/jobs/{job['id']}/contours").status_code == 422


def _err(resp, status=422):
    assert resp.status_code == status, resp.text
    return resp.json()["detail"]


def test_bad_input_is_422_naming_the_problem(service, tiny):
    ws, ps = tiny
    post = lambda **kw: service.http.post("/v1/jobs", **kw)  # noqa: E731
    assert _err(post(content=b"{not json", headers={"content-type": "application/json"}))["where"] == "request body"
    assert _err(post(json={"workspace": {"channels": 3}}))["where"] == "workspace /channels"
    assert "workspace" in _err(post(json={"patchset": ps}))["where"]
    d = _err(post(json={"workspace": ws, "patchset": ps, "options": {"test_stat": "chi2"}}))
    assert d["where"] == "options.test_stat"
    d = _err(post(json={"workspace": ws, "patchset": ps, "options": {"patches": ["sig_0", "nope"]}}))
    assert d["where"] == "options.patches" and "'nope'" in d["message"]
    assert _err(post(json={"workspace": ws, "patchset": {"patches": []}}))["where"].startswith("patchset")
    bad = copy.deepcopy(ps)
    bad["patches"][1]["patch"][0]["path"] = "/channels/7/samples/1"
    d = _err(post(json={"workspace": ws, "patchset": bad}))
    assert "sig_1" in d["where"] and "does not apply" in d["message"]
    assert _err(post(json={"workspace": ws, "extra": 1}))["where"] == "request body"
    nan_ws = json.dumps({"workspace": ws}).replace("52.0", "NaN")
    assert (
        _err(post(content=nan_ws, headers={"content-type": "application/json"}))["where"]
        == "workspace /observations/0/data/0"
    )
    assert _err(post(content=b"x", headers={"content-type": "text/plain"}), 415)["where"] == "content-type"
    assert _err(service.http.get("/v1/jobs/nope"), 404)["where"] == "job id"
    assert service.http.get("/v1/jobs").json()["jobs"] == []  # nothing was stored


def test_body_limit_is_413(settings):
    from .conftest import Service, tiny_inputs

    svc = Service(settings.model_copy(update={"max_body_bytes": 2048}))
    try:
        ws, ps = tiny_inputs(20)
        assert _err(svc.http.post("/v1/jobs", json={"workspace": ws, "patchset": ps}), 413)["where"] == "request body"
    finally:
        svc.close()


def test_openapi_lists_the_endpoints(service):
    paths = service.http.get("/openapi.json").json()["paths"]
    for p in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/results",
        "/v1/jobs/{job_id}/contours",
        "/v1/jobs/{job_id}/plot.png",
        "/v1/jobs/{job_id}/plot.svg",
        "/v1/health",
    ):
        assert p in paths
    assert "multipart/form-data" in paths["/v1/jobs"]["post"]["requestBody"]["content"]
    assert service.http.get("/docs").status_code == 200
