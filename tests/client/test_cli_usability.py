"""What a new user meets on the command line: --version, help texts, scan's options, summaries, jobs, cancel."""

from __future__ import annotations

import json
import re
import time

import pytest
from service.workload import tiny_inputs
from typer.testing import CliRunner

from fitserve import __version__
from fitserve.cli import app

runner = CliRunner()


def run(*args: object, code: int = 0, env: dict[str, str] | None = None):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "160", **(env or {})})
    assert result.exit_code == code, (args, result.stdout, result.stderr, result.exception)
    return result


def _commands() -> list[list[str]]:
    import typer.main

    group = typer.main.get_command(app)
    out = [[]]
    for name, cmd in group.commands.items():
        out.append([name])
        for sub in getattr(cmd, "commands", {}):
            out.append([name, sub])
    return out


def test_version() -> None:
    assert run("--version").stdout.strip() == f"fitserve {__version__}"


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "fitserve")
def test_help_has_no_value_placeholder_after_flags(command: list[str]) -> None:
    text = run(*command, "--help").stdout
    assert "<bool>" not in text, text
    if command == ["scan"]:
        assert "--cl" in text and "--measurement" in text and "repeat for several" in text and "<float>" in text


@pytest.fixture
def tiny_files(tmp_path):
    ws, ps = tiny_inputs(3)
    (tmp_path / "bkg.json").write_text(json.dumps(ws))
    (tmp_path / "ps.json").write_text(json.dumps(ps))
    full = json.loads(json.dumps(ws))
    full["channels"][0]["samples"].append(ps["patches"][0]["patch"][0]["value"])
    (tmp_path / "full_ws.json").write_text(json.dumps(full))
    return tmp_path


def test_scan_takes_cl_measurement_json_settings_and_repeated_patches(tiny_files) -> None:
    d = tiny_files
    settings = '{"normsys": {"interpcode": "code1"}, "histosys": {"interpcode": "code0"}}'
    res = run(
        "scan",
        d / "bkg.json",
        d / "ps.json",
        "-o",
        d / "out" / "r.json",
        "--cl",
        "0.9",
        "--measurement",
        "meas",
        "--patch",
        "sig_0",
        "--patch",
        "sig_2",
        "--modifier-settings",
        settings,
        "--no-progress",
    )
    doc = json.loads((d / "out" / "r.json").read_text())
    assert sorted(doc["results"]) == ["sig_0", "sig_2"]
    assert doc["options"]["confidence_level"] == 0.9 and doc["options"]["measurement"] == "meas"
    assert doc["options"]["modifier_settings"] == json.loads(settings)
    assert "excluded at 90% CL" in res.stderr
    bad = run("scan", d / "bkg.json", d / "ps.json", "--modifier-settings", "{nope", code=2)
    assert "not valid JSON" in bad.stderr


def test_scan_q0_summary_speaks_of_significance(tiny_files) -> None:
    d = tiny_files
    res = run("scan", d / "bkg.json", d / "ps.json", "-o", d / "q0.json", "--test-stat", "q0", "--no-progress")
    assert "excluded" not in res.stderr
    assert re.search(
        r"smallest p0 \S+ \(Z = -?\d+\.\d\d sigma\) at sig_\d; \d+ with p0 below 3 sigma, \d+ below 5 sigma", res.stderr
    ), res.stderr


def test_a_full_workspace_is_named_after_its_file_or_name(tiny_files) -> None:
    d = tiny_files
    run("scan", d / "full_ws.json", "-o", d / "one.json", "--no-progress")
    assert list(json.loads((d / "one.json").read_text())["results"]) == ["full_ws"]
    run("scan", d / "full_ws.json", "-o", d / "two.json", "--name", "my point", "--no-progress")
    assert list(json.loads((d / "two.json").read_text())["results"]) == ["my point"]


def test_scan_says_when_it_compiles_a_new_structure(tmp_path) -> None:
    """A structure this process has not fitted: 7 signal bins nobody else uses."""
    ws, ps = tiny_inputs(2)
    ws["channels"][0]["samples"][0]["data"] = [50.0] * 7
    ws["observations"][0]["data"] = [52.0] * 7
    for p in ps["patches"]:
        p["patch"][0]["value"]["data"] = [5.0] * 7
    (tmp_path / "b.json").write_text(json.dumps(ws))
    (tmp_path / "p.json").write_text(json.dumps(ps))
    res = run("scan", tmp_path / "b.json", tmp_path / "p.json", "-o", tmp_path / "r.json")
    assert "compiling the fit for this model structure (" in res.stderr


def test_jobs_lists_the_options(live, example_paths) -> None:
    bkg, ps = example_paths
    env = {"FITSERVE_URL": live.url}
    job_id = run(
        "submit", bkg, ps, "--poi-test", "0.45", "--patch", "sig_400_0", "--wait", "--no-progress", env=env
    ).stdout.strip()
    line = next(row for row in run("jobs", env=env).stdout.splitlines() if row.startswith(job_id))
    assert "qtilde mu=0.45 CL=95%" in line and "asymptotic" in line


def test_cancel_reports_what_it_actually_cancelled(live, example_paths) -> None:
    bkg, ps = example_paths
    env = {"FITSERVE_URL": live.url}
    job_id = run("submit", bkg, ps, "--poi-test", "0.7", env=env).stdout.strip()
    from fitserve.client import Client

    job = Client(live.url).job(job_id)
    deadline = time.monotonic() + 60
    while job.status()["progress"]["done"] < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    out = run("cancel", job_id, env=env).stdout
    m = re.search(r"cancelled job \w+: (\d+)/25 hypotheses have results.*, (\d+) not run", out)
    assert m, out
    time.sleep(3)
    final = job.status()
    assert final["state"] == "cancelled" and final["progress"]["done"] == int(m.group(1)), (out, final["progress"])
