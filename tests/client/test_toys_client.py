"""Toy-based scans from every front door: ``fitserve scan``, ``fitserve submit``, the Python client."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from fitserve import Client
from fitserve.cli import app
from fitserve.engine.scan import scan

ONE_BIN = {
    "channels": [
        {
            "name": "SR",
            "samples": [
                {"name": "signal", "data": [12.0], "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
                {
                    "name": "background",
                    "data": [50.0],
                    "modifiers": [{"name": "unc", "type": "shapesys", "data": [7.0]}],
                },
            ],
        }
    ],
    "observations": [{"name": "SR", "data": [52.0]}],
    "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": []}}],
    "version": "1.0.0",
}


def test_scan_command_runs_toys(tmp_path):
    path = tmp_path / "one_bin.json"
    path.write_text(json.dumps(ONE_BIN))
    out = tmp_path / "toys.json"
    res = CliRunner().invoke(
        app,
        [
            "scan",
            str(path),
            "--calculator",
            "toybased",
            "--n-toys",
            "400",
            "--seed",
            "3",
            "--no-progress",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    rec = json.loads(out.read_text())["results"]["one_bin"]
    want = scan(ONE_BIN, None, {"calculator": "toybased", "n_toys": 400, "seed": 3})["results"]
    assert rec["CLs_exp"] == next(iter(want.values()))["CLs_exp"]
    assert rec["toys"]["n_toys"] == 400 and rec["toys"]["seed"] == 3 and rec["uncertainty"]["CLs_obs"] > 0


def test_submit_and_python_client_run_toys(live, tmp_path, monkeypatch):
    for var in ("FITSERVE_URL", "FITSERVE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FITSERVE_CLIENT_CONFIG", str(tmp_path / "client.toml"))
    (tmp_path / "client.toml").write_text("")
    ws = tmp_path / "one_bin.json"
    ws.write_text(json.dumps(ONE_BIN))
    res = CliRunner().invoke(
        app,
        [
            "submit",
            str(ws),
            "--calculator",
            "toybased",
            "--n-toys",
            "300",
            "--seed",
            "9",
            "--wait",
            "--no-progress",
            "-o",
            str(tmp_path / "toys.csv"),
        ],
        env={"FITSERVE_URL": live.url},
    )
    assert res.exit_code == 0, (res.stdout, res.stderr)
    (row,) = list(csv.DictReader((tmp_path / "toys.csv").open()))
    want = next(iter(scan(ONE_BIN, None, {"calculator": "toybased", "n_toys": 300, "seed": 9})["results"].values()))
    assert float(row["CLs_obs"]) == want["CLs_obs"] and float(row["CLs_obs_err"]) == want["uncertainty"]["CLs_obs"]
    assert row["n_toys"] == "300"
    job_id = res.stdout.strip().splitlines()[-1]
    st = CliRunner().invoke(app, ["status", job_id], env={"FITSERVE_URL": live.url})
    assert st.exit_code == 0 and "toys      600/600" in st.stdout, st.stdout
    jobs = CliRunner().invoke(app, ["jobs"], env={"FITSERVE_URL": live.url})
    assert f"{job_id}" in jobs.stdout and "toys=300 seed=9" in jobs.stdout.split(job_id)[1].splitlines()[0], jobs.stdout

    with Client(live.url) as client:
        job = client.submit(ONE_BIN, calculator="toybased", n_toys=300, seed=9)
        job.wait(timeout=120)
        (rec,) = job.results()["results"].values()
        assert rec["CLs_exp"] == want["CLs_exp"]
        name = next(iter(job.results()["results"]))
        png = job.toys_plot(name, tmp_path / "toys.png")
        assert png.read_bytes()[:4] == b"\x89PNG"
