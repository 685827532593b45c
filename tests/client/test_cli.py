"""``fitserve submit | status | results | plot | cancel | jobs`` against the real running service."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from fitserve.cli import app


@pytest.fixture
def cli(monkeypatch, tmp_path):
    for var in ("FITSERVE_URL", "FITSERVE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FITSERVE_CLIENT_CONFIG", str(tmp_path / "client.toml"))
    (tmp_path / "client.toml").write_text("")
    runner = CliRunner()

    def run(*args: str, env: dict[str, str] | None = None, code: int = 0):
        result = runner.invoke(app, [str(a) for a in args], env=env)
        assert result.exit_code == code, (args, result.stdout, result.stderr, result.exception)
        return result

    return run


def test_submit_wait_status_results_plot(cli, live, example_paths, reference, tmp_path):
    bkg, patchset = example_paths
    env = {"FITSERVE_URL": live.url}
    # --cl 0.9: other options than the Python tests' submissions, so not answered from their cache entries
    out = cli("submit", bkg, patchset, "--cl", "0.9", "--wait", "--progress", "-o", tmp_path / "cls.csv", env=env)
    job_id = out.stdout.strip()
    assert len(job_id) == 24
    assert f"submitted job {job_id} to {live.url}: 25 hypotheses" in out.stderr
    assert "25/25" in out.stderr and f"job {job_id} done: 25/25 hypotheses" in out.stderr
    rows = list(csv.DictReader((tmp_path / "cls.csv").open()))
    assert len(rows) == 25 and float(rows[0]["CLs_obs"]) == reference[rows[0]["name"]]["CLs_obs"]

    status = cli("status", job_id, env=env).stdout
    assert "state     done" in status and "progress  25/25 (100%)" in status and "labels    m_parent, m_LSP" in status
    assert "confidence_level=0.9 " in status
    assert json.loads(cli("status", job_id, "--json", env=env).stdout)["state"] == "done"

    cli("results", job_id, "-o", tmp_path / "cls.json", env=env)
    doc = json.loads((tmp_path / "cls.json").read_text())
    assert doc["complete"] and doc["results"].keys() == reference.keys()
    assert json.loads(cli("results", job_id, env=env).stdout)["results"] == doc["results"]

    # --server wins over FITSERVE_URL, which wins over the config file
    (tmp_path / "client.toml").write_text('url = "http://127.0.0.1:9"\n')
    cli(
        "plot",
        job_id,
        "-o",
        tmp_path / "exclusion.png",
        "--server",
        live.url,
        env={"FITSERVE_URL": "http://127.0.0.1:9"},
    )
    assert (tmp_path / "exclusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert job_id in cli("jobs", env=env).stdout
    (tmp_path / "client.toml").write_text(f'url = "{live.url}"\n')
    assert job_id in cli("jobs").stdout


def test_errors_are_one_line_with_the_servers_message(cli, live, example_paths, tmp_path):
    bkg, patchset = example_paths
    env = {"FITSERVE_URL": live.url}
    err = cli("status", "deadbeef", env=env, code=1).stderr
    assert err == "fitserve: error: job id: no job with id 'deadbeef'\n"
    err = cli("submit", bkg, patchset, "--test-stat", "chi2", env=env, code=1).stderr
    assert err.startswith("fitserve: error: options.test_stat: ") and "qtilde" in err
    err = cli("submit", tmp_path / "missing.json", env=env, code=1).stderr
    assert "file not found" in err
    err = cli("results", "deadbeef", "-o", tmp_path / "out.txt", env=env, code=1).stderr
    assert "use .json, .csv" in err
