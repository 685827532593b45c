"""fitserve.engine.runtime: how many cores one engine process keeps busy, and with which threads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fitserve.engine import runtime

EXAMPLE = Path(__file__).parents[2] / "workspaces" / "example"

#: a small scan (its fits factorise with LAPACK, which loads SciPy's OpenBLAS), then what the
#: process's threads and BLAS libraries look like
PROBE = """
import json, os, sys
from fitserve.engine.scan import scan
from threadpoolctl import threadpool_info
ws = json.load(open(sys.argv[1] + "/BkgOnly.json"))
patches = json.load(open(sys.argv[1] + "/patchset.json"))["patches"][:2]
out = scan(ws, patches, {}, validate=False)
tasks = []
for tid in os.listdir("/proc/self/task"):
    try:
        name = open(f"/proc/self/task/{tid}/comm").read().strip()
        tasks.append({"name": name, "cores": sorted(os.sched_getaffinity(int(tid)))})
    except OSError:
        pass
print(json.dumps({
    "converged": [r["converged"] for r in out["results"].values()],
    "blas": [{"api": i["internal_api"], "threads": i["num_threads"], "file": i["filepath"]} for i in threadpool_info()],
    "tasks": tasks,
    "allowed": sorted(os.sched_getaffinity(0)),
}))
"""


def _probe(tmp_path: Path, **env: str) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in runtime.BLAS_THREAD_VARS and k != runtime.THREADS_VAR}
    e.update(FITSERVE_JAX_CACHE=str(tmp_path / "cache"), **env)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(EXAMPLE)], capture_output=True, text=True, env=e)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_blas_loaded_after_start_runs_on_one_thread(tmp_path):
    """XLA's Cholesky loads SciPy's OpenBLAS at the first fit, after the engine limited the loaded ones.

    Left alone it started one spinning thread per core and steady 1Lbb fits took 2x as long.
    """
    out = _probe(tmp_path)
    assert all(out["converged"])
    assert any("scipy" in b["file"] for b in out["blas"]), out["blas"]  # the late library is there
    assert [b["threads"] for b in out["blas"]] == [1] * len(out["blas"]), out["blas"]


def test_a_users_blas_setting_is_kept(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    runtime._blas_env()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "3"
    assert os.environ["MKL_NUM_THREADS"] == "1"


def _runtime_threads(out: dict) -> list[dict]:
    return [t for t in out["tasks"] if t["name"].startswith("tf_XLA")]


@pytest.mark.skipif(runtime.allowed_cores() < 2, reason="a pool narrower than the machine needs 2 cores")
def test_fitserve_threads_sets_the_runtime_pool_and_leaves_every_thread_all_cores(tmp_path):
    every = _probe(tmp_path, FITSERVE_THREADS="auto")
    one = _probe(tmp_path, FITSERVE_THREADS="1")
    assert len(_runtime_threads(every)) == len(every["allowed"])
    assert len(_runtime_threads(one)) == 1
    # the pool was narrowed only while it was made: no thread stays pinned to one core
    assert all(t["cores"] == one["allowed"] for t in one["tasks"]), one["tasks"]
    assert all(one["converged"]) and all(every["converged"])


def test_default_is_every_allowed_core(monkeypatch):
    monkeypatch.delenv("FITSERVE_THREADS", raising=False)
    assert runtime.threads_from_env() == runtime.allowed_cores()
    monkeypatch.setenv("FITSERVE_THREADS", "auto")
    assert runtime.threads_from_env() == runtime.allowed_cores()
    monkeypatch.setenv("FITSERVE_THREADS", "3")
    assert runtime.threads_from_env() == 3


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_thread_count_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("FITSERVE_THREADS", value)
    with pytest.raises(ValueError, match=r"FITSERVE_THREADS must be a positive integer or 'auto'"):
        runtime.threads_from_env()


def test_a_container_cpu_quota_counts_as_cores(tmp_path):
    """A Kubernetes CPU limit is a cgroup quota: the pod still sees every core of its node."""
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert runtime.cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime.cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    v1 = tmp_path / "cpu"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime.cgroup_cpu_quota(tmp_path) == 2.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert runtime.cgroup_cpu_quota(tmp_path) is None
    assert runtime.cgroup_cpu_quota(tmp_path / "nowhere") is None


def test_allowed_cores_is_the_smaller_of_affinity_and_quota(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda: 0.5)
    assert runtime.allowed_cores() == 1
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda: cores + 8.0)
    assert runtime.allowed_cores() == cores
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda: None)
    assert runtime.allowed_cores() == cores
