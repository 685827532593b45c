"""The globus executor within Globus Compute's limits, against a stand-in that enforces them (gc_cloud.py).

The real SDK (Client, Executor with its batching thread, Batch, serializer, result
matching) and a real locally started GlobusComputeEngine run; only the HTTPS and
AMQP transports are replaced.  The stand-in refuses what the service refuses
(request > 10 MB, task > 10 MB, result > 10 MB, > 20 requests in 10 s) and records
every size; the tests assert that nothing was refused and show that the naive
encoding (the one fitserve used before) is refused.

``FITSERVE_1LBB_POINTS=125`` runs the whole 1Lbb pallet through the service
(default: 32 points, two chunks of 16) and prints the sizes as JSON.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import zlib

import pytest

pytest.importorskip(
    "globus_compute_endpoint", reason="needs the Globus Compute endpoint package: pip install 'fitserve[globus]'"
)
pytest.importorskip("globus_compute_sdk", reason="needs the Globus Compute SDK: pip install 'fitserve[globus]'")

from globus_sdk import GlobusAPIError  # noqa: E402

from fitserve.executors import run_chunk_task  # noqa: E402
from fitserve.executors.globus import CloudLimits, GlobusComputeExecutor, PayloadTooLarge, VersionMismatch  # noqa: E402
from fitserve.executors.globus_task import cache_get, cache_put, mismatch, versions, workspace_sha  # noqa: E402

from .conftest import REPO  # noqa: E402
from .gc_cloud import LimitedCloud  # noqa: E402

LBB = REPO.parent / "shared" / "likelihoods" / "atlas-susy-2019-08-1Lbb"
MB = 10_000_000


@pytest.fixture(scope="module")
def lbb():
    if not (LBB / "patchset.json").exists():
        pytest.skip(f"1Lbb likelihood not found at {LBB}")
    return (LBB / "BkgOnly.json").read_bytes(), json.loads((LBB / "patchset.json").read_text())


@pytest.fixture
def settings(settings):
    """The service's settings with the default chunk size (16 hypotheses per chunk)."""
    return settings.model_copy(update={"chunk_size": 16})


@pytest.fixture
def cloud(local_engine):
    c = LimitedCloud(local_engine)
    yield c
    c.stop()


def _executor(cloud: LimitedCloud, **kw) -> GlobusComputeExecutor:
    return GlobusComputeExecutor(
        endpoint_id=str(uuid.uuid4()), client=cloud.client(), sdk_factory=cloud.sdk_factory, **kw
    )


@pytest.mark.shared
def test_naive_encoding_is_refused_by_the_stand_in(lbb, local_engine):
    """What fitserve sent before: the compressed background and 16 uncompressed patches per task, 16 tasks
    in one batch request (the SDK coalesces up to batch_size=128): one request of ~24 MB, refused."""
    ws, ps = lbb
    cloud = LimitedCloud(local_engine)
    client = cloud.client()
    fid = client.register_function(run_chunk_task)
    batch = client.create_batch(create_websocket_queue=True)
    for i in range(16):
        batch.add(fid, (zlib.compress(ws), ps["patches"][16 * i : 16 * i + 16] or ps["patches"][:16], {}))
    with pytest.raises(GlobusAPIError) as err:
        client.batch_run(str(uuid.uuid4()), batch)
    assert err.value.http_status == 413 and err.value.code == "TASK_PAYLOAD_TOO_LARGE"
    one = cloud.ledger.requests[-1]
    assert one["bytes"] > 2 * MB and cloud.ledger.refused
    print(f"\nnaive: one batch request of {one['bytes']:,} bytes for 16 tasks")


@pytest.mark.shared
@pytest.mark.slow
def test_1lbb_through_the_service_within_the_limits(lbb, cloud, service):
    """1Lbb through the API, the worker and the globus executor: every request, task and result under the limits."""
    ws, ps = lbb
    n = int(os.environ.get("FITSERVE_1LBB_POINTS", "32"))
    names = [p["metadata"]["name"] for p in ps["patches"]][:n]
    gx = _executor(cloud, capacity=16)
    try:
        service.start_worker(executor=gx)
        job = service.submit(json.loads(ws), ps, patches=names, cls_only=True)
        st = service.wait(job["id"], timeout=1500)
        results = service.http.get(f"/v1/jobs/{job['id']}/results").json()["results"]
    finally:
        service.stop_workers()
        gx.shutdown()
    assert st["state"] == "done" and st["counts"]["computed"] == n, st
    assert all(r["converged"] for r in results.values())
    s = cloud.ledger.summary()
    print(
        "\n1Lbb via the stand-in:",
        json.dumps(
            {
                "points": n,
                **s,
                **{
                    k: gx.describe()[k]
                    for k in ("batch_size", "task_budget_bytes", "workspace_sent", "workspace_misses")
                },
                "max_requests_in_10s": cloud.ledger.max_requests_in_window(10.0),
            }
        ),
    )
    assert s["refused"] == []
    assert s["largest_request_bytes"] < MB and s["largest_task_bytes"] < MB and s["largest_result_bytes"] < MB
    assert cloud.ledger.max_requests_in_window(10.0) <= 20
    assert gx.stats.workspace_sent == 1  # the background crossed once, plus once per worker that missed it
    assert s["tasks"] == gx.stats.tasks and gx.stats.tasks >= -(-n // 16)


@pytest.mark.shared
def test_planning_keeps_a_full_batch_under_the_limit(lbb, local_engine):
    """Chunks of 1Lbb (16 patches, 1.5 MB as JSON) become tasks whose batch of ``batch_size`` fits 10 MB,
    measured with the SDK's serializer; with a tight limit the inline background takes the single lane."""
    ws, ps = lbb
    cloud = LimitedCloud(local_engine)
    gx = _executor(cloud)
    try:
        wz = zlib.compress(ws)
        pz = [zlib.compress(json.dumps(p).encode()) for p in ps["patches"][:16]]
        names = [p["metadata"]["name"] for p in ps["patches"][:16]]
        parts = gx.plan(workspace_sha(wz), wz, pz, names, {})
        assert len(parts) == 1 and parts[0][1] <= gx.task_budget
        assert gx._sizer.envelope + gx.batch_size * gx.task_budget <= MB
        tight = _executor(cloud, limits=CloudLimits(max_request_bytes=600_000))
        parts = tight.plan(workspace_sha(wz), wz, pz, names, {})
        assert parts[0][0]["ws"] is not None and all(p[0]["ws"] is None for p in parts[1:])
        assert parts[0][1] > tight.task_budget >= max(p[1] for p in parts[1:])  # background inline: single lane
        assert sorted(sum((p[0]["patches"] for p in parts), [])) == sorted(pz)
        assert not cloud.ledger.requests  # planning sends nothing
        tight.shutdown()
    finally:
        gx.shutdown()


def test_a_hypothesis_that_cannot_fit_fails_alone_before_submission(tiny, local_engine):
    """With a 40,000-byte request limit, an incompressible 40 kB patch cannot travel: it is marked
    failed with the sizes before anything is sent; the other hypothesis of its chunk is fitted."""
    ws, ps = tiny
    cloud = LimitedCloud(local_engine, CloudLimits(max_request_bytes=40_000))
    gx = _executor(cloud, limits=CloudLimits(max_request_bytes=40_000))
    big = {
        "metadata": {"name": "huge", "values": [1.0]},
        "patch": [{"op": "add", "path": "/x", "value": os.urandom(40_000).hex()}],
    }
    try:
        got = gx.submit(ws, [ps["patches"][1], big], {}).result(timeout=120)
    finally:
        gx.shutdown()
        cloud.stop()
    assert re.match(
        r"hypothesis 'huge': one task is [\d,]+ bytes .* over the 40,000-byte request limit", got["huge"]["error"]
    )
    assert got["huge"]["converged"] is False and got["sig_1"]["converged"] is True
    assert gx.stats.tasks == 1 and cloud.ledger.refused == []
    assert max(r["bytes"] for r in cloud.ledger.requests) < 40_000
    with pytest.raises(PayloadTooLarge, match="hypothesis 'huge'"):
        gx.plan("0" * 64, None, [zlib.compress(json.dumps(big).encode())], ["huge"], {})


@pytest.mark.slow
def test_workspace_by_hash_and_a_miss(tiny, cloud, workspace_cache):
    """Once sent, the workspace goes by hash; a worker without it answers need_workspace and gets it."""
    ws, ps = tiny
    gx = _executor(cloud)
    other = json.loads(json.dumps(ws))
    other["observations"][0]["data"] = [x + 1 for x in other["observations"][0]["data"]]
    try:
        want = run_chunk_task(other, ps["patches"][:1], {})
        wz = zlib.compress(json.dumps(other, sort_keys=True, separators=(",", ":")).encode())
        gx._sent.add(workspace_sha(wz))  # as if this endpoint had it already: the first task goes by hash only
        got = gx.submit(other, ps["patches"][:1], {}).result(timeout=120)
        assert gx.stats.workspace_misses == 1 and gx.stats.tasks == 2 and gx.stats.workspace_sent == 0
        assert got["sig_0"]["CLs_obs"] == pytest.approx(want["sig_0"]["CLs_obs"], rel=1e-9)
        assert (workspace_cache / f"{workspace_sha(wz)}.json.z").read_bytes() == wz
        got = gx.submit(other, ps["patches"][1:2], {}).result(timeout=120)
        assert gx.stats.tasks == 3 and gx.stats.workspace_misses == 1  # cached on the endpoint: by hash only
    finally:
        gx.shutdown()


@pytest.mark.slow
def test_version_mismatch_names_both_sides(tiny, cloud):
    ws, ps = tiny
    gx = _executor(cloud)
    gx.expect = {**gx.expect, "python": "3.99", "fitserve": "9.9.9"}
    try:
        with pytest.raises(VersionMismatch) as err:
            gx.submit(ws, ps["patches"][:1], {}).result(timeout=120)
    finally:
        gx.shutdown()
    have = versions()
    msg = str(err.value)
    assert f"the client runs fitserve 9.9.9, engine {have['engine']}, Python 3.99" in msg
    assert (
        f"the endpoint's worker runs fitserve {have['fitserve']}, engine {have['engine']}, Python {have['python']}"
        in msg
    )


def test_version_check_and_cache_helpers(tmp_path, monkeypatch):
    have = versions()
    assert mismatch({k: have[k] for k in ("fitserve", "engine", "python")}, have) is None
    assert "python" in mismatch({**have, "python": "3.10"}, have)
    monkeypatch.setenv("FITSERVE_WORKSPACE_CACHE", str(tmp_path))
    data = zlib.compress(b'{"channels": []}')
    sha = workspace_sha(data)
    with pytest.raises(ValueError, match="does not match its hash"):
        cache_put(sha, data + b"x")
    cache_put(sha, data)
    assert (tmp_path / f"{sha}.json.z").read_bytes() == data and cache_get(sha) == data
    assert cache_get("0" * 64) is None


def test_request_limiter_keeps_the_window():
    import time

    from fitserve.executors.globus import RequestLimiter

    lim = RequestLimiter(3, 0.5)
    t0 = time.monotonic()
    stamps = []
    for _ in range(7):
        lim.acquire()
        stamps.append(time.monotonic() - t0)
    for i in range(3, 7):
        assert stamps[i] - stamps[i - 3] >= 0.5


@pytest.mark.slow
def test_user_endpoint_config_from_the_site_file_reaches_the_template(tiny, cloud, tmp_path):
    """globus.user_endpoint_config in the site file travels with every batch request; the multi-user
    endpoint renders its template with it (here: the template `fitserve endpoint init --multi-user` wrote)."""
    from typer.testing import CliRunner

    from fitserve.cli import app
    from fitserve.cli.endpoint import check_multi_user

    ws, ps = tiny
    site = tmp_path / "globus.yaml"
    site.write_text(
        f"globus:\n  endpoint_id: {uuid.uuid4()}\n  user_endpoint_config:\n    ACCOUNT_ID: atlas42\n"
        f"    NODES_PER_BLOCK: 2\n    WALLTIME: '00:30:00'\n    PARTITION: short\n"
    )
    gx = GlobusComputeExecutor(site=site, client=cloud.client(), sdk_factory=cloud.sdk_factory)
    try:
        gx.submit(ws, ps["patches"][:1], {}).result(timeout=120)
    finally:
        gx.shutdown()
    sent = [r["user_endpoint_config"] for r in cloud.ledger.requests if r["path"].endswith("/submit")]
    assert sent == [{"ACCOUNT_ID": "atlas42", "NODES_PER_BLOCK": 2, "WALLTIME": "00:30:00", "PARTITION": "short"}]
    mep = tmp_path / "mep"
    assert (
        CliRunner()
        .invoke(app, ["endpoint", "init", "--multi-user", str(mep), "--site", "slurm", "--no-check"])
        .exit_code
        == 0
    )
    summary = check_multi_user(mep, sent[0])
    assert "account=atlas42, partition=short, nodes_per_block=2, walltime=00:30:00" in summary


@pytest.mark.slow
def test_request_rate_stays_under_the_limit(tiny, local_engine):
    """With the service's rate limit set to 3 requests per 2 s (stand-in and executor alike), seven
    requests in a row are spread out by the executor's limiter and none is refused."""
    ws, ps = tiny
    limits = CloudLimits(max_requests=3, window_s=2.0)
    cloud = LimitedCloud(local_engine, limits)
    gx = _executor(cloud, limits=limits)
    try:
        for i in range(6):
            gx.submit(ws, ps["patches"][i % 3 : i % 3 + 1], {"poi_test": 1.0 + i}).result(timeout=120)
    finally:
        gx.shutdown()
        cloud.stop()
    assert len(cloud.ledger.requests) == 7 and cloud.ledger.refused == []
    assert cloud.ledger.max_requests_in_window(2.0) <= 3 and gx.limiter.waited_s > 0


@pytest.mark.slow
def test_a_result_over_the_limit_fails_with_its_size(tiny, cloud):
    """The task measures its compressed records against the result limit the client sent and
    refuses, naming the sizes, rather than letting the endpoint drop the result."""
    ws, ps = tiny
    gx = _executor(cloud, limits=CloudLimits(max_result_bytes=400))
    try:
        with pytest.raises(
            RuntimeError, match=r"1 records compress to [\d,]+ bytes, over half the result limit of 400 bytes"
        ):
            gx.submit(ws, ps["patches"][:1], {}).result(timeout=120)
    finally:
        gx.shutdown()
    assert cloud.ledger.refused == []
