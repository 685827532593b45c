"""The Parsl executor (HighThroughputExecutor, LocalProvider, 2 workers) gives the local executor's results."""

from __future__ import annotations

import pytest

from fitserve.executors import get_executor

from .conftest import spread

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def test_parsl_two_workers_match_local_executor(service, rj):
    ws, ps = rj
    names = spread([p["metadata"]["name"] for p in ps["patches"]], 4)
    chosen = [p for p in ps["patches"] if p["metadata"]["name"] in names]
    with get_executor("local") as local:
        want = {}
        for i in range(0, len(chosen), 2):
            want.update(local.submit(ws, chosen[i : i + 2], {}).result())

    parsl = get_executor("parsl", workers=2, data_dir=service.settings.data_dir)
    try:
        assert parsl.capacity == 2
        service.start_worker(executor=parsl)  # 2 chunks of 2 run side by side on the pool
        job = service.submit(ws, ps, patches=names)
        st = service.wait(job["id"], timeout=240)
        assert st["state"] == "done" and st["counts"]["computed"] == 4
        got = service.http.get(f"/v1/jobs/{job['id']}/results").json()["results"]
        health = service.http.get("/v1/health").json()
        assert health["workers"][0]["executor"] == "parsl" and health["workers"][0]["workers"] == 2
    finally:
        service.stop_workers()
        parsl.shutdown()
    assert list(got) == names
    for name in names:
        assert _same(got[name], want[name])


def _same(a: dict, b: dict) -> bool:
    for key, value in b.items():
        if isinstance(value, float):
            assert a[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        elif isinstance(value, list) and value and isinstance(value[0], float):
            assert a[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        else:
            assert a[key] == value, key
    return True
