"""Every documented default limit is a job that runs on this machine (issue #17).

The service with its default limits (only where Redis is, the key prefix and the auth mode are set)
accepts a job at each limit, and each completes: the widest model (max_parameters), the most bins
(max_bins), the most structure groups (max_structure_groups), the most hypotheses (max_hypotheses),
the most active jobs of one user (max_active_jobs) and the largest body (max_body_bytes).  The
memory limits are derived from this machine's memory (Settings.worker_memory, batch_memory).
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from fitserve.engine.budget import physical_memory
from fitserve.service.settings import Settings

from .conftest import Service
from .hostile_shapes import five_sample_workspace, group_explosion, wide_patch
from .workload import tiny_inputs

pytestmark = pytest.mark.slow

DEFAULTS = {
    "max_body_bytes": 64 * 2**20,
    "max_hypotheses": 10_000,
    "max_bins": 5_000,
    "max_parameters": 2_000,
    "max_structure_groups": 8,
    "max_active_jobs": 20,
    "chunk_wall_s": 900.0,
    "chunk_size": 16,
    "worker_memory_bytes": 0,
    "batch_memory_bytes": 0,
    "max_user_chunks": 0,
}


def test_defaults_are_the_documented_ones(monkeypatch):
    import os

    for key in [k for k in os.environ if k.startswith("FITSERVE_")]:  # in-process workers export some
        monkeypatch.delenv(key)
    s = Settings()
    assert {k: getattr(s, k) for k in DEFAULTS} == DEFAULTS
    assert s.worker_memory() == physical_memory() // 2 and s.batch_memory() == s.worker_memory() // 4


def _many_bins(n: int) -> dict:
    ws = five_sample_workspace()
    ch = ws["channels"][0]
    ch["samples"] = [
        {
            "name": "bkg",
            "data": [10.0] * n,
            "modifiers": [{"name": "bkg_norm", "type": "normsys", "data": {"hi": 1.05, "lo": 0.95}}],
        },
        {"name": "signal", "data": [1.0] * n, "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
    ]
    ws["observations"][0]["data"] = [11.0] * n
    return ws


def test_a_job_at_each_default_limit_completes(redis_url, tmp_path, monkeypatch):
    import os

    for key in [k for k in os.environ if k.startswith("FITSERVE_") and k != "FITSERVE_JAX_CACHE"]:
        monkeypatch.delenv(key)  # what in-process workers of earlier tests exported
    settings = Settings(
        redis_url=redis_url, key_prefix=f"defaults-{secrets.token_hex(4)}", auth="open", data_dir=tmp_path
    )
    svc = Service(settings)
    try:
        svc.start_worker()
        jobs: dict[str, str] = {}
        t0 = time.monotonic()
        ws, ps = wide_patch(settings.max_parameters - 5)  # 5 background normsys + mu + the rest: P = max_parameters
        jobs["max_parameters"] = svc.submit(ws, ps)["id"]
        jobs["max_bins"] = svc.submit(_many_bins(settings.max_bins))["id"]
        ws, ps = group_explosion(settings.max_structure_groups)
        jobs["max_structure_groups"] = svc.submit(ws, ps)["id"]
        n = settings.max_hypotheses
        jobs["max_hypotheses"] = svc.submit(*tiny_inputs(n, [1.0 + 0.001 * k for k in range(n)]), cls_only=True)["id"]
        for j in range(settings.max_active_jobs - len(jobs) - 1):
            jobs[f"max_active_jobs {j}"] = svc.submit(*tiny_inputs(1, [40.0 + j]))["id"]
        ws, ps = tiny_inputs(1, [77.0])
        body = json.dumps({"workspace": ws, "patchset": ps}).encode()
        body += b" " * (settings.max_body_bytes - len(body))  # exactly max_body_bytes
        resp = svc.http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 202, resp.text
        jobs["max_body_bytes"] = resp.json()["id"]
        over = svc.http.post("/v1/jobs", json={"workspace": ws, "patchset": ps})
        assert over.status_code == 429 and "max_active_jobs = 20" in over.text  # the 21st active job
        for what, job_id in jobs.items():
            st = svc.wait(job_id, timeout=1200)
            assert st["state"] == "done" and st["counts"]["errors"] == 0, (what, st)
            print(
                "DEFAULT-LIMIT",
                json.dumps(
                    {
                        "limit": what,
                        "total_s": round(st["timings"]["total_s"], 1),
                        "compute_s": round(st["timings"]["compute_s"], 1),
                    }
                ),
            )
        print("DEFAULT-LIMIT", json.dumps({"all_s": round(time.monotonic() - t0, 1)}))
    finally:
        svc.close()
