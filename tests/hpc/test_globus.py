"""Globus Compute up to the cloud boundary.

What cannot run here is the Globus cloud service (no internet).  Everything up to
it runs for real: every endpoint template is loaded by the endpoint package's own
offline loader; ``GlobusComputeEngine`` instances built from the templates (with
LocalProvider, and with SlurmProvider on the real Slurm cluster) are started with
``engine.start(endpoint_id=..., run_dir=...)`` and run ``run_chunk_task`` from tasks
packed the way the endpoint receives them (gc_loopback.py); the ``globus`` executor
builds the SDK's ``Executor(endpoint_id=...)``, and through the service, with the
cloud replaced by that in-process loopback, its job equals the local executor's.
"""

from __future__ import annotations

import uuid

import pytest
from typer.testing import CliRunner

pytest.importorskip(
    "globus_compute_endpoint", reason="needs the Globus Compute endpoint package: pip install 'fitserve[globus]'"
)
pytest.importorskip("globus_compute_sdk", reason="needs the Globus Compute SDK: pip install 'fitserve[globus]'")

from globus_compute_endpoint.endpoint.config.utils import load_config_yaml  # noqa: E402

from fitserve.cli import app  # noqa: E402
from fitserve.cli.endpoint import SITES  # noqa: E402
from fitserve.executors import get_executor, run_chunk_task  # noqa: E402
from fitserve.executors.globus import GlobusComputeExecutor  # noqa: E402

from .conftest import ENDPOINTS, TEST_WORKER_INIT, engine_from_template, slurm_jobs, wait_until  # noqa: E402
from .gc_loopback import LoopbackSDKExecutor, pack_task, run_on_engine  # noqa: E402

PROVIDERS = {
    "slurm": "SlurmProvider",
    "pbs": "PBSProProvider",
    "kubernetes": "KubernetesProvider",
    "local": "LocalProvider",
}


def _shutdown(engine) -> None:
    try:
        engine.shutdown()
    except Exception:  # an engine that never started
        pass


@pytest.mark.parametrize("site", SITES)
def test_every_template_loads_with_the_endpoint_loader(site, kubeconfig):
    text = (ENDPOINTS / "globus-compute" / site / "config.yaml").read_text()
    config = load_config_yaml(text)
    try:
        assert type(config).__name__ == "UserEndpointConfig"
        assert type(config.engine).__name__ == "GlobusComputeEngine"
        assert type(config.engine.provider).__name__ == PROVIDERS[site]
        init = config.engine.provider.worker_init
        # the XLA pool of each worker: its cores, not the whole node's
        assert f"FITSERVE_THREADS={int(config.engine.executor.cores_per_worker)}" in init
        if site != "kubernetes":  # the image holds fitserve; elsewhere worker_init installs it
            assert '/bin/pip" install' in init and "FITSERVE_PIP_SPEC:-fitserve[globus]" in init and "activate" in init
    finally:
        _shutdown(config.engine)


def test_endpoint_init_writes_a_valid_config(tmp_path, kubeconfig):
    runner = CliRunner()
    for site in SITES:
        target = tmp_path / site
        result = runner.invoke(
            app,
            [
                "endpoint",
                "init",
                "--site",
                site,
                str(target),
                "--display-name",
                f"fitserve {site}",
                "--venv",
                "/shared/fitserve/venv",
            ],
        )
        assert result.exit_code == 0, result.output
        assert f"GlobusComputeEngine with {PROVIDERS[site]}" in result.output
        config = load_config_yaml((target / "config.yaml").read_text())
        assert config.display_name == f"fitserve {site}"
        if site != "kubernetes":
            assert "${FITSERVE_VENV:-/shared/fitserve/venv}" in config.engine.provider.worker_init
        _shutdown(config.engine)
    again = runner.invoke(app, ["endpoint", "init", "--site", "slurm", str(tmp_path / "slurm")])
    assert again.exit_code == 2 and "exists" in again.output
    assert runner.invoke(app, ["endpoint", "init", "--site", "lsf", str(tmp_path / "x")]).exit_code == 2
    assert runner.invoke(app, ["endpoint", "check", str(tmp_path / "pbs")]).exit_code == 0


def test_task_function_travels_by_reference(tiny):
    """The function buffer names fitserve.executors.base.run_chunk_task; it carries no code or data."""
    ws, ps = tiny
    _, packed, function_buffer = pack_task(run_chunk_task, b"x" * 10, ps["patches"], {})
    assert len(function_buffer) < 400
    import base64
    import pickle
    import pickletools

    body = function_buffer.split("\n", 2)[2]
    ops = [arg for op, arg, _ in pickletools.genops(base64.b64decode(body)) if isinstance(arg, str)]
    assert "fitserve.executors.base" in ops and "run_chunk_task" in ops
    assert pickle.loads(base64.b64decode(body)) is run_chunk_task


@pytest.mark.slow
def test_local_engine_runs_the_task(local_engine, tiny):
    ws, ps = tiny
    import json
    import zlib

    from fitserve.executors.base import decode_workspace  # noqa: F401  (the workspace travels compressed)

    packed_ws = zlib.compress(json.dumps(ws).encode())
    got = run_on_engine(local_engine, run_chunk_task, packed_ws, ps["patches"], {}).result(timeout=180)
    want = run_chunk_task(ws, ps["patches"], {})
    assert set(got) == set(want)
    for name in want:
        assert got[name]["CLs_obs"] == pytest.approx(want[name]["CLs_obs"], rel=1e-9)
        assert got[name]["CLs_exp"] == pytest.approx(want[name]["CLs_exp"], rel=1e-9)


@pytest.mark.slow
def test_globus_executor_through_the_service(local_engine, service, tiny):
    """`--executor globus` with the cloud replaced by the loopback to the local engine."""
    ws, ps = tiny
    with get_executor("local") as local:
        want = local.submit(ws, ps["patches"], {}).result()
    loopback = LoopbackSDKExecutor(local_engine)
    gx = get_executor("globus", endpoint_id=str(uuid.uuid4()), sdk_executor=loopback, capacity=2)
    try:
        service.start_worker(executor=gx)
        job = service.submit(ws, ps)
        st = service.wait(job["id"], timeout=180)
        assert st["state"] == "done" and st["counts"]["computed"] == 3
        got = service.http.get(f"/v1/jobs/{job['id']}/results").json()["results"]
        health = service.http.get("/v1/health").json()
        assert health["workers"][0]["executor"] == "globus" and health["workers"][0]["endpoint_id"] == gx.endpoint_id
    finally:
        service.stop_workers()
        gx.shutdown()
    # 3 hypotheses in chunks of 2: two tasks, plus one sent again with the workspace for each worker that missed it
    assert loopback.submitted == 2 + gx.stats.workspace_misses and gx.stats.workspace_sent == 1
    for name in want:
        assert got[name]["CLs_obs"] == pytest.approx(want[name]["CLs_obs"], rel=1e-9)
        assert got[name]["CLs_exp"] == pytest.approx(want[name]["CLs_exp"], rel=1e-9)


def test_globus_executor_builds_the_sdk_executor(monkeypatch, tmp_path):
    """With no stand-in, the SDK's own Executor is built for the endpoint id (no network until a submit)."""
    import globus_compute_sdk

    class NoNetworkClient:  # what the SDK's login flow would produce
        pass

    ep = str(uuid.uuid4())
    site = tmp_path / "globus.yaml"
    site.write_text(f"globus:\n  endpoint_id: {ep}\n  capacity: 7\n  batch_size: 32\n")
    gx = get_executor("globus", site=site, client=NoNetworkClient())
    try:
        assert isinstance(gx, GlobusComputeExecutor) and isinstance(gx._sdk, globus_compute_sdk.Executor)
        assert str(gx._sdk.endpoint_id) == ep and gx._sdk.batch_size == 32 and gx.capacity == 7
        d = gx.describe()
        assert (d["executor"], d["capacity"], d["endpoint_id"], d["site"], d["batch_size"]) == (
            "globus",
            7,
            ep,
            str(site),
            32,
        )
    finally:
        gx.shutdown()
    monkeypatch.setenv("FITSERVE_GLOBUS_ENDPOINT_ID", "not-a-uuid")
    with pytest.raises(ValueError, match="endpoint_id: not a UUID"):
        get_executor("globus", client=NoNetworkClient())


@pytest.mark.slow
def test_slurm_engine_runs_the_task(slurm, tiny, tmp_path):
    """GlobusComputeEngine + SlurmProvider (endpoints/globus-compute/slurm) on the real Slurm cluster."""
    ws, ps = tiny
    engine = engine_from_template(
        "slurm",
        {
            "max_workers_per_node": 1,
            "cores_per_worker": 1,
            "address": "127.0.0.1",
            "heartbeat_period": 2,
            "heartbeat_threshold": 10,
            "encrypted": False,
        },
        {
            "partition": slurm,
            "exclusive": False,
            "walltime": "00:10:00",
            "init_blocks": 1,
            "min_blocks": 0,
            "max_blocks": 1,
            "worker_init": TEST_WORKER_INIT,
        },
    )
    engine.start(endpoint_id=uuid.uuid4(), run_dir=str(tmp_path))
    try:
        got = run_on_engine(engine, run_chunk_task, ws, ps["patches"][:2], {}).result(timeout=240)
        jobs = wait_until(lambda: slurm_jobs(str(tmp_path)), timeout=30, what="the engine's Slurm job")
        assert jobs[0]["Partition"] == slurm and "srun" in open(jobs[0]["Command"]).read()
    finally:
        engine.shutdown()
        import subprocess

        for j in slurm_jobs(str(tmp_path)):
            subprocess.run(["scancel", j["JobId"]], capture_output=True)
    want = run_chunk_task(ws, ps["patches"][:2], {})
    for name in want:
        assert got[name]["CLs_obs"] == pytest.approx(want[name]["CLs_obs"], rel=1e-9)
