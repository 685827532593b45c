"""Site files (endpoints/*.yaml): every shipped file builds; every error names the file and the key."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from fitserve.cli import app
from fitserve.executors.parsl import build_config
from fitserve.executors.sites import SiteError, check_site, load_site

from .conftest import ENDPOINTS


@pytest.mark.parametrize("name", ["local", "slurm", "pbspro"])
def test_shipped_parsl_sites_build(name, tmp_path):
    config, capacity = build_config(workers=1, run_dir=tmp_path, site=ENDPOINTS / f"{name}.yaml")
    htex = config.executors[0]
    provider = htex.provider
    assert (
        type(provider).__name__
        == {"local": "LocalProvider", "slurm": "SlurmProvider", "pbspro": "PBSProProvider"}[name]
    )
    assert capacity == htex.max_workers_per_node * provider.nodes_per_block * provider.max_blocks
    # each worker's XLA pool is its share of the node, not the whole node (docs/engine.md#threads)
    assert f"FITSERVE_THREADS={int(htex.cores_per_worker)}" in provider.worker_init
    if name != "local":
        assert htex.cpu_affinity == "block"  # exclusive nodes: each worker on its own cores
        assert "activate" in provider.worker_init and provider.walltime == "02:00:00"
        assert type(provider.launcher).__name__ in ("SrunLauncher", "MpiExecLauncher")


@pytest.mark.parametrize("workers", [1, 2, 64])
def test_the_local_pool_gives_each_worker_its_share_of_the_cores(workers, tmp_path):
    config, _ = build_config(workers=workers, run_dir=tmp_path)
    share = max(1, (os.cpu_count() or 1) // workers)
    assert config.executors[0].provider.worker_init == f"export FITSERVE_THREADS={share}"


def test_kubernetes_site_builds(kubeconfig, tmp_path):
    config, capacity = build_config(workers=1, run_dir=tmp_path, site=ENDPOINTS / "kubernetes.yaml")
    provider = config.executors[0].provider
    assert "FITSERVE_THREADS=1" in provider.worker_init  # cores_per_worker: 1
    assert type(provider).__name__ == "KubernetesProvider"
    assert (provider.image, provider.namespace, provider.max_mem, provider.init_cpu) == (
        "ghcr.io/your-org/fitserve:latest",
        "fitserve",
        "4Gi",
        2,
    )
    assert config.executors[0].worker_port_range == (54000, 54100)  # a YAML list became the tuple Parsl wants
    assert capacity == 2 * 8


def test_globus_site(monkeypatch):
    monkeypatch.delenv("FITSERVE_GLOBUS_ENDPOINT_ID", raising=False)
    assert (
        check_site(ENDPOINTS / "globus.yaml", "globus")["globus"]["endpoint_id"]
        == "00000000-0000-0000-0000-000000000000"
    )
    monkeypatch.setenv("FITSERVE_GLOBUS_ENDPOINT_ID", "5d1ee5c1-5b07-4a6b-9c1f-8d9a1b8e0c11")
    assert load_site(ENDPOINTS / "globus.yaml")["globus"]["endpoint_id"] == "5d1ee5c1-5b07-4a6b-9c1f-8d9a1b8e0c11"


BAD = [
    ("provider:\n  type: SlurmProvider\n  partiton: short\n", "provider.partiton", "did you mean 'partition'"),
    (
        "provider:\n  type: SlurmProvider\n  nodes_per_block: two\n",
        "provider.nodes_per_block",
        "not an instance of int",
    ),
    ("provider:\n  type: SlurmProvder\n", "provider.type", "unknown provider 'SlurmProvder'"),
    ("provider:\n  partition: short\n", "provider.type", "missing"),
    (
        "provider:\n  type: SlurmProvider\n  launcher: {type: Srun}\n",
        "provider.launcher.type",
        "unknown launcher 'Srun'",
    ),
    ("provider:\n  type: KubernetesProvider\n", "provider.image", "required by KubernetesProvider"),
    ("executor:\n  max_workers: 4\n", "executor.max_workers", "unknown option of HighThroughputExecutor"),
    ("executor:\n  label: mine\n", "executor.label", "set by fitserve"),
    ("executor: 4\n", "executor", "expected a mapping"),
    ("capacity: 0\n", "capacity", "positive integer"),
    ("providers:\n  type: SlurmProvider\n", "providers", "unknown key"),
    ("globus:\n  endpoint: x\n", "globus.endpoint", "unknown key"),
    (
        "provider:\n  type: SlurmProvider\n  worker_init: source ${FITSERVE_TEST_UNSET_VAR}/bin/activate\n",
        "provider.worker_init",
        "FITSERVE_TEST_UNSET_VAR is not set",
    ),
]


@pytest.mark.parametrize("text,key,message", BAD, ids=[b[1] for b in BAD])
def test_errors_name_file_and_key(tmp_path, text, key, message):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(SiteError) as err:
        check_site(path)
    assert str(err.value).startswith(f"{path}: {key}: "), str(err.value)
    assert message in str(err.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(SiteError, match=r"nope\.yaml: file not found"):
        load_site(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("provider:\n  type: [SlurmProvider\n")
    with pytest.raises(SiteError, match=r"bad\.yaml: invalid YAML: line \d+, column \d+"):
        load_site(bad)
    bad.write_text("- a list\n")
    with pytest.raises(SiteError, match="expected a mapping at the top level"):
        load_site(bad)
    os.environ.pop("FITSERVE_TEST_DEFAULTED", None)
    ok = tmp_path / "ok.yaml"
    ok.write_text(
        "provider:\n  type: LocalProvider\n  worker_init: source ${FITSERVE_TEST_DEFAULTED:-/opt/venv}/bin/activate\n"
    )
    assert load_site(ok)["provider"]["worker_init"] == "source /opt/venv/bin/activate"


def test_worker_command_reports_bad_site_before_starting(tmp_path):
    bad = tmp_path / "slurm.yaml"
    bad.write_text("provider:\n  type: SlurmProvider\n  walltime: 2\n")
    result = CliRunner().invoke(
        app, ["worker", "--executor", "parsl", "--site", str(bad), "--redis-url", "redis://127.0.0.1:1/0"]
    )
    assert result.exit_code == 2
    assert f"{bad}: provider.walltime:" in result.output


def test_endpoint_check_command():
    runner = CliRunner()
    for name in ("slurm", "pbspro", "local", "globus"):
        result = runner.invoke(app, ["endpoint", "check", str(ENDPOINTS / f"{name}.yaml")])
        assert result.exit_code == 0, result.output
    assert "globus site" in runner.invoke(app, ["endpoint", "check", str(ENDPOINTS / "globus.yaml")]).output
