"""Multi-user endpoint templates: written by `fitserve endpoint init --multi-user`, checked with the
endpoint package's own loader (config.yaml), schema check and Jinja renderer (user template), the
rendered configuration loaded (engine and provider built), and the identity mapping run."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

pytest.importorskip(
    "globus_compute_endpoint", reason="needs the Globus Compute endpoint package: pip install 'fitserve[globus]'"
)

from globus_compute_endpoint.endpoint.config.utils import load_config_yaml  # noqa: E402

from fitserve.cli import app  # noqa: E402
from fitserve.cli.endpoint import MULTI_USER_SITES, check_multi_user  # noqa: E402

PROVIDERS = {
    "slurm": "SlurmProvider",
    "pbs": "PBSProProvider",
    "kubernetes": "KubernetesProvider",
    "slurm-gpu": "SlurmProvider",
}


@pytest.mark.parametrize("site", MULTI_USER_SITES)
def test_init_multi_user_renders_and_loads(site, tmp_path, kubeconfig):
    target = tmp_path / site
    result = CliRunner().invoke(
        app, ["endpoint", "init", "--multi-user", str(target), "--site", site, "--venv", "/sw/fs/venv"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in target.iterdir()) == [
        "config.yaml",
        "identity_mapping.json",
        "user_config_schema.json",
        "user_config_template.yaml.j2",
    ]
    assert f"GlobusComputeEngine with {PROVIDERS[site]}" in result.output
    parent = load_config_yaml((target / "config.yaml").read_text())
    assert (
        type(parent).__name__ == "CoreEndpointConfig"
        and parent.identity_mapping_config_path == target / "identity_mapping.json"
    )
    opts = {
        "ACCOUNT_ID": "atlas42",
        "NODES_PER_BLOCK": 3,
        "WALLTIME": "00:30:00",
        "PARTITION": "short",
        "MAX_BLOCKS": 2,
        "WORKER_INIT_COMMAND": "module load gcc",
    }
    if site == "slurm-gpu":
        opts["GPUS_PER_NODE"] = 2
    summary = check_multi_user(target, opts)
    assert PROVIDERS[site] in summary
    if site != "kubernetes":
        assert "account=atlas42" in summary and "nodes_per_block=3" in summary and "walltime=00:30:00" in summary


def _render(target, opts):
    """The template rendered exactly as the endpoint renders it for a user, then loaded."""
    import os
    import pwd

    from globus_compute_endpoint.endpoint.config.utils import load_user_config_schema, render_config_user_template
    from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity

    parent = load_config_yaml((target / "config.yaml").read_text())
    me = MappedPosixIdentity(
        local_user_record=pwd.getpwuid(os.getuid()), matched_identity=uuid.UUID(int=0), globus_identity_candidates=[]
    )
    tpl = target / "user_config_template.yaml.j2"
    text = render_config_user_template(
        parent, tpl.read_text(), tpl, me, load_user_config_schema(target / "user_config_schema.json"), opts, {}
    )
    return load_config_yaml(text)


def test_rendered_values_reach_the_provider_and_container(tmp_path):
    target = tmp_path / "gpu"
    result = CliRunner().invoke(
        app,
        [
            "endpoint",
            "init",
            "--multi-user",
            str(target),
            "--site",
            "slurm-gpu",
            "--container-type",
            "apptainer",
            "--container-uri",
            "/sw/fitserve/fitserve-worker.sif",
            "--no-check",
        ],
    )
    assert result.exit_code == 0, result.output
    cfg = _render(target, {"ACCOUNT_ID": "cms7", "GPUS_PER_NODE": 2, "WORKER_INIT_COMMAND": 'echo "hi"'})
    try:
        eng, prov = cfg.engine, cfg.engine.provider
        assert (eng.container_type, eng.container_uri) == ("apptainer", "/sw/fitserve/fitserve-worker.sif")
        assert "--nv" in eng.container_cmd_options
        assert eng.executor.available_accelerators == ["0", "1"] and eng.executor.max_workers_per_node == 2
        assert prov.account == "cms7" and "--gpus-per-node=2" in prov.scheduler_options
        assert (
            'eval "echo \\"hi\\""' in prov.worker_init and "activate" not in prov.worker_init
        )  # the image holds fitserve
    finally:
        cfg.engine.shutdown()


def test_schema_refuses_bad_user_options(tmp_path):
    target = tmp_path / "slurm"
    assert (
        CliRunner()
        .invoke(app, ["endpoint", "init", "--multi-user", str(target), "--site", "slurm", "--no-check"])
        .exit_code
        == 0
    )
    for bad, what in (
        ({"NODES_PER_BLOCK": 2}, "'ACCOUNT_ID' is a required property"),
        ({"ACCOUNT_ID": "x; rm -rf /"}, "does not match"),
        ({"ACCOUNT_ID": "a", "NODES_PER_BLOCK": 0}, "less than the minimum"),
        ({"ACCOUNT_ID": "a", "PARTITON": "short"}, "Additional properties are not allowed"),
    ):
        with pytest.raises(ValueError, match=what):
            check_multi_user(target, bad)
    result = CliRunner().invoke(
        app, ["endpoint", "check", str(target), "--user-options", str(_write(tmp_path, {"WALLTIME": "1h"}))]
    )
    assert result.exit_code == 2 and "user_config_template.yaml.j2: with user options" in result.output


def _write(tmp_path, data):
    p = tmp_path / "opts.json"
    p.write_text(json.dumps(data))
    return p


def test_identity_mapping_example_maps_institutional_identities(tmp_path):
    from globus_compute_endpoint.endpoint.identity_mapper import PosixIdentityMapper

    target = tmp_path / "ep"
    assert (
        CliRunner()
        .invoke(app, ["endpoint", "init", "--multi-user", str(target), "--site", "pbs", "--no-check"])
        .exit_code
        == 0
    )
    mapper = PosixIdentityMapper(target / "identity_mapping.json", "fitserve-test")
    try:
        alice, eve = str(uuid.uuid4()), str(uuid.uuid4())
        got = mapper.map_identities(
            [
                {"id": alice, "username": "alice@university.edu", "status": "used"},
                {"id": eve, "username": "eve@elsewhere.org", "status": "used"},
            ]
        )
        assert got == [[{alice: ["alice"]}]]
    finally:
        mapper.stop_watching()


def test_check_reports_versions(tmp_path):
    target = tmp_path / "k8s"
    assert (
        CliRunner()
        .invoke(app, ["endpoint", "init", "--multi-user", str(target), "--site", "kubernetes", "--no-check"])
        .exit_code
        == 0
    )
    from fitserve.executors.globus_task import versions

    v = versions()
    result = CliRunner().invoke(app, ["endpoint", "check", str(tmp_path / "nope")])
    assert result.exit_code == 2
    init = CliRunner().invoke(app, ["endpoint", "init", "--site", "local", str(tmp_path / "single")])
    assert init.exit_code == 0, init.output
    result = CliRunner().invoke(app, ["endpoint", "check", str(tmp_path / "single")])
    assert result.exit_code == 0, result.output
    assert (
        f"versions (this side): fitserve {v['fitserve']}, engine {v['engine']}, python {v['python']}" in result.output
    )
