"""The Parsl SlurmProvider path against a REAL Slurm cluster on this machine.

scripts/slurm-cluster.sh starts munged, slurmctld and slurmd (Slurm 22.05, one node
"localhost" with this machine's CPUs, partition "debug").  A `fitserve worker
--executor parsl --site <slurm.yaml>` process (endpoints/slurm.yaml with this
machine's partition and loopback address) submits a Slurm job whose srun-launched
worker pool runs the chunks; the job's results equal the local executor's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from fitserve.executors import get_executor

from .conftest import slurm_jobs, slurm_site, wait_until

pytestmark = pytest.mark.slow


def test_service_job_on_slurm_matches_local_executor(slurm, service, tiny, tmp_path):
    ws, ps = tiny
    with get_executor("local") as local:
        want = local.submit(ws, ps["patches"], {}).result()

    site = tmp_path / "slurm.yaml"
    site.write_text(yaml.safe_dump(slurm_site(slurm)))
    settings = service.settings
    env = {
        **os.environ,
        "FITSERVE_REDIS_URL": settings.redis_url,
        "FITSERVE_KEY_PREFIX": settings.key_prefix,
        "FITSERVE_DATA_DIR": str(tmp_path / "data"),
        "FITSERVE_CLAIM_IDLE_MS": "60000",
        "JAX_PLATFORMS": "cpu",
    }
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "fitserve.cli", "worker", "--executor", "parsl", "--site", str(site)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
    )
    try:
        job = service.submit(ws, ps)
        assert job["total"] == 3
        try:
            st = service.wait(job["id"], timeout=240)
        except (TimeoutError, AssertionError):  # wait_until raised either, depending on the version
            pytest.fail(f"job did not finish; worker log:\n{(tmp_path / 'worker.log').read_text()[-3000:]}")
        assert st["state"] == "done", st
        got = service.http.get(f"/v1/jobs/{job['id']}/results").json()["results"]
        health = service.http.get("/v1/health").json()
        assert any(w.get("executor") == "parsl" and w.get("site") == str(site) for w in health["workers"]), health
        # the chunks ran in a Slurm job of this test's run directory, launched by srun on node localhost
        jobs = wait_until(lambda: slurm_jobs(str(tmp_path)), timeout=30, what="the worker's Slurm job")
        assert jobs[0]["Partition"] == slurm and jobs[0]["NodeList"] == "localhost"
        assert jobs[0]["JobState"] in ("RUNNING", "COMPLETED", "CANCELLED", "COMPLETING"), jobs[0]
        script = open(jobs[0]["Command"]).read()
        assert "srun" in script and "process_worker_pool" in script
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        for j in slurm_jobs(str(tmp_path)):  # never leave a block behind
            subprocess.run(["scancel", j["JobId"]], capture_output=True)
    assert sorted(got) == sorted(want)
    for name, rec in want.items():
        for key, value in rec.items():
            if isinstance(value, float):
                assert got[name][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
            elif isinstance(value, list) and value and isinstance(value[0], float):
                assert got[name][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
            else:
                assert got[name][key] == value, (name, key)
    # the worker gave its block back when it stopped
    assert all(j["JobState"] != "RUNNING" for j in slurm_jobs(str(tmp_path)))
