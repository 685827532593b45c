"""Fixtures for the HPC tests: a real single-node Slurm cluster, the service fixtures, site files.

``slurm`` starts the cluster with ``scripts/slurm-cluster.sh`` (idempotent; needs
root and Debian's ``slurm-wlm`` and ``munge``) and skips with the reason if it
cannot.  The service fixtures (real redis-server, API, workers) are the service
tests' own, reused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from service.conftest import *  # noqa: F401,F403  (redis_url, settings, service, tiny, Service, wait_until, ...)
from service.conftest import REPO

ENDPOINTS = REPO / "endpoints"
SLURM_SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
VENV_BIN = str(Path(sys.executable).parent)
#: a worker_init for test blocks: this checkout's virtualenv, CPU-only JAX
TEST_WORKER_INIT = f'export PATH="{VENV_BIN}:$PATH"; export JAX_PLATFORMS=cpu'


@pytest.fixture(scope="session")
def slurm() -> str:
    """A running Slurm cluster; returns its partition name."""
    if os.geteuid() != 0:
        pytest.skip("a Slurm cluster needs root to start (scripts/slurm-cluster.sh)")
    if shutil.which("slurmctld") is None or shutil.which("munged") is None and not Path("/usr/sbin/munged").exists():
        pytest.skip("Slurm is not installed: apt-get install -y slurm-wlm munge")
    proc = subprocess.run(["bash", str(SLURM_SCRIPT), "start"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"scripts/slurm-cluster.sh could not start Slurm: {proc.stderr.strip()[-500:]}")
    return "debug"


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A syntactically valid kube-config naming an unreachable cluster (KubernetesProvider
    reads one when it is built; nothing is contacted)."""
    pytest.importorskip(
        "kubernetes",
        reason="Parsl's KubernetesProvider needs the kubernetes package: pip install 'fitserve[kubernetes]'",
    )
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "test", "user": {"token": "not-a-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "fitserve"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("KUBECONFIG", str(path))  # for child processes
    import kubernetes.config.kube_config as kc  # read KUBECONFIG when first imported

    monkeypatch.setattr(kc, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    return path


def slurm_site(partition: str, workers: int = 1) -> dict[str, Any]:
    """endpoints/slurm.yaml with this machine's values: partition, loopback address, shared node."""
    site = yaml.safe_load((ENDPOINTS / "slurm.yaml").read_text())
    site["executor"].update(
        address="127.0.0.1",
        max_workers_per_node=workers,
        cores_per_worker=1,
        heartbeat_period=2,
        heartbeat_threshold=10,
        encrypted=False,
    )
    site["provider"].update(
        partition=partition,
        exclusive=False,
        walltime="00:10:00",
        init_blocks=1,
        min_blocks=0,
        max_blocks=1,
        worker_init=TEST_WORKER_INIT,
    )
    site["provider"]["launcher"] = {"type": "SrunLauncher"}
    return site


def slurm_jobs(marker: str) -> list[dict[str, str]]:
    """Slurm jobs whose stdout path contains ``marker`` (there is no accounting database:
    ``scontrol show job``, which keeps finished jobs for MinJobAge = 300 s)."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True).stdout
    jobs = []
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if marker in fields.get("StdOut", "") or marker in fields.get("Command", ""):
            jobs.append(fields)
    return jobs


def engine_from_template(site: str, overrides: dict, provider_overrides: dict) -> Any:
    """The GlobusComputeEngine of endpoints/globus-compute/<site>/config.yaml with test values, via the endpoint's loader."""
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    from fitserve.cli.endpoint import render_template
    from fitserve.executors.parsl import _venv_on_path

    _venv_on_path()  # the engine starts `globus-compute-endpoint python-exec ...` through PATH, as an endpoint does
    data = yaml.safe_load(render_template(site))
    data["engine"].update(overrides)
    data["engine"]["provider"].update(provider_overrides)
    return load_config_yaml(yaml.safe_dump(data)).engine


@pytest.fixture(scope="session")
def workspace_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workers' workspace cache (FITSERVE_WORKSPACE_CACHE), set before any engine starts its workers."""
    path = tmp_path_factory.mktemp("ws-cache")
    os.environ["FITSERVE_WORKSPACE_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def local_engine(tmp_path_factory: pytest.TempPathFactory, workspace_cache: Path) -> Any:
    """GlobusComputeEngine + LocalProvider from endpoints/globus-compute/local (2 workers), started as an endpoint starts it."""
    pytest.importorskip(
        "globus_compute_endpoint", reason="needs the Globus Compute endpoint package: pip install 'fitserve[globus]'"
    )
    import uuid

    engine = engine_from_template(
        "local",
        {"max_workers_per_node": 2, "heartbeat_period": 2, "heartbeat_threshold": 10},
        {"worker_init": TEST_WORKER_INIT, "init_blocks": 1, "min_blocks": 1},
    )
    engine.start(endpoint_id=uuid.uuid4(), run_dir=str(tmp_path_factory.mktemp("gce-local")))
    try:
        yield engine
    finally:
        engine.shutdown()
