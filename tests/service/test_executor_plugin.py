"""A new executor is a plug-in: its own module and one entry point (``fitserve.executors``), nothing else.

``tests/plugins`` holds such a plug-in as ``pip install`` would leave it in
site-packages: the module ``fitserve_example_executor`` and the distribution's
metadata (``fitserve_example_executor-0.1.dist-info/entry_points.txt``).  With
that folder on ``sys.path`` the registry (:mod:`fitserve.executors.registry`)
finds it by name, in a fresh process as in the worker of a running service.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fitserve.executors import get_executor

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def test_builtin_executors_are_entry_points_too():
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group="fitserve.executors")}
    assert found["local"] == "fitserve.executors.local:LocalExecutor"
    assert found["parsl"] == "fitserve.executors.parsl:ParslExecutor"
    assert found["globus"] == "fitserve.executors.globus:GlobusComputeExecutor"
    assert "example" not in found  # not installed: tests/plugins is not on the path here


def test_unknown_executor_names_the_installed_ones():
    with pytest.raises(ValueError, match=r"unknown executor 'nope'; available: globus, local, parsl"):
        get_executor("nope")


def test_plugin_found_in_a_fresh_process():
    """No test machinery: a plain interpreter with the plug-in's folder on its path."""
    code = (
        "import json; from fitserve.executors import get_executor; "
        "e = get_executor('example', workers=3, redis_url='ignored'); print(json.dumps(e.describe()))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120
    ).stdout
    assert json.loads(out) == {"executor": "example", "capacity": 1, "chunks": 0}


def test_worker_runs_a_job_on_the_plugin(service, tiny, monkeypatch):
    """``FITSERVE_EXECUTOR=example``: the worker builds the plug-in by name and the job is done on it."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    ws, ps = tiny
    with pytest.raises(ValueError, match=r"available: example, globus, local, parsl"):
        get_executor("nope")
    with get_executor("local") as local:
        want = local.submit(ws, ps["patches"], {}).result()

    settings = service.settings.model_copy(update={"executor": "example"})
    worker = service.start_worker(settings=settings)
    job = service.submit(ws, ps)
    st = service.wait(job["id"], timeout=180)
    assert st["state"] == "done" and st["counts"]["computed"] == 3, st
    assert type(worker.executor).__module__ == "fitserve_example_executor"
    assert worker.executor.chunks == 2  # 3 hypotheses in chunks of 2
    got = service.http.get(f"/v1/jobs/{job['id']}/results").json()["results"]
    assert {n: r["CLs_obs"] for n, r in got.items()} == {n: r["CLs_obs"] for n, r in want.items()}
    health = service.http.get("/v1/health").json()
    assert health["workers"][0]["executor"] == "example"
