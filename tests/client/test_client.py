"""The Python client (sync and async) against a real running service: Redis, worker and API over HTTP."""

from __future__ import annotations

import asyncio
import copy
import re
import time

import pytest
from service.conftest import Service, free_port, tiny_inputs
from service.test_e2e import assert_records_equal

from fitserve import AsyncClient, Client
from fitserve.client import BadInput, Conflict, JobFailed, JobTimeout, NotFound, RetryPolicy, ServerUnavailable
from fitserve.executors.local import LocalExecutor

FAST_RETRY = RetryPolicy(retries=2, backoff=0.01, connect_retries=2)


def png_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        im.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_submit_wait_with_progress_results_equal_engine_and_plot(live, example_paths, reference, tmp_path, capsys):
    bkg, patchset = example_paths
    with Client(live.url) as client:
        job = client.submit(bkg, patchset)  # file paths, as an analyst has them
        assert re.fullmatch(r"[0-9a-f]{24}", job.id)
        assert job.info["total"] == 25 and job.info["to_compute"] == 25
        capsys.readouterr()
        final = job.wait(progress=True, timeout=300, poll_interval=0.2)
        bar = capsys.readouterr().err

        assert final["state"] == "done" and final["progress"] == {"done": 25, "total": 25, "fraction": 1.0}
        # the bar counted finished hypotheses as the chunks came in, up to 25/25
        seen = [int(n) for n in re.findall(r"(\d+)/25 ", bar)]
        assert seen[-1] == 25 and seen == sorted(seen), bar
        assert len(set(seen)) >= 3, f"the bar did not move: {seen}"

        res = job.results()
        assert isinstance(res, dict) and res.complete and res["labels"] == ["m_parent", "m_LSP"]
        assert_records_equal(res.records, reference)

        pd = pytest.importorskip("pandas")
        df = job.dataframe()
        assert isinstance(df, pd.DataFrame) and len(df) == 25 and df.index.name == "name"
        assert {"m_parent", "m_LSP", "CLs_obs", "CLs_exp_m2", "CLs_exp", "CLs_exp_p2", "converged"} <= set(df.columns)
        assert df.loc["sig_400_0", "CLs_obs"] == reference["sig_400_0"]["CLs_obs"]
        assert (df["CLs_obs"] < 0.05).sum() == 10  # the example's 10 excluded points

        csv_path = job.save_results(tmp_path / "cls.csv")
        header, *rows = csv_path.read_text().splitlines()
        assert header.startswith("name,m_parent,m_LSP,CLs_obs,") and len(rows) == 25
        json_path = job.save_results(tmp_path / "cls.json")
        assert json_path.read_text().startswith("{") and job.csv() == csv_path.read_text()

        cont = job.contours()
        assert cont["kind"] == "2d" and cont["complete"] and cont["contours"]["observed"]

        png = job.plot(tmp_path / "plots" / "exclusion.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = png_size(png)
        assert width >= 400 and height >= 300
        svg = job.plot(tmp_path / "exclusion.svg")
        assert b"<svg" in svg.read_bytes()[:500]

        # listed, and a finished job cannot be cancelled: the server's message comes through
        assert job in client.jobs()
        with pytest.raises(Conflict, match="already done") as err:
            job.cancel()
        assert err.value.status == 409 and err.value.where == "job state"


def test_pyhf_objects_are_accepted_and_resubmission_comes_from_the_cache(live, example, reference):
    import pyhf

    ws, ps = example
    with Client(live.url) as client:
        first = client.submit(ws, ps)  # dicts
        first.wait(timeout=300, poll_interval=0.2)
        again = client.submit(pyhf.Workspace(ws), pyhf.PatchSet(ps), patches=["sig_400_0", "sig_1100_350"])
        assert again.info["state"] == "done" and again.info["cached"] == 2 and again.info["to_compute"] == 0
        st = again.wait(timeout=5)
        assert st["counts"]["computed"] == 0
        recs = again.results().records
        assert list(recs) == ["sig_400_0", "sig_1100_350"]
        assert_records_equal(recs, {k: reference[k] for k in recs})


def test_async_client(live, example):
    ws, ps = example
    names = ["sig_400_0", "sig_400_87p5", "sig_575_0", "sig_575_87p5", "sig_750_0"]  # one chunk; not collinear

    async def main():
        async with AsyncClient(live.url) as client:
            job = await client.submit(ws, ps, poi_test=0.5, patches=names)  # new options: really computed
            assert job.info["to_compute"] == 5
            seen = []
            final = await job.wait(
                progress=lambda st: seen.append(st["progress"]["done"]), timeout=300, poll_interval=0.2
            )
            res, cont, png, listed = await asyncio.gather(
                job.results(), job.contours(), job.plot(), client.jobs(limit=5)
            )
            with pytest.raises(NotFound):
                await client.job("0" * 24).status()
            return final, seen, res, cont, png, listed, job

    final, seen, res, cont, png, listed, job = asyncio.run(main())
    assert final["state"] == "done" and final["counts"]["computed"] == 5
    assert seen[-1] == 5 and seen == sorted(seen)
    assert list(res.records) == names and res["options"]["poi_test"] == 0.5
    assert cont["job"] == job.id
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert listed[0].id == job.id and listed[0].info["state"] == "done"


def test_bad_input_not_found_carry_the_servers_message(live, example, tmp_path):
    ws, ps = example
    with Client(live.url) as client:
        with pytest.raises(BadInput) as err:
            client.submit(ws, ps, test_stat="chi2")
        assert err.value.status == 422 and err.value.where == "options.test_stat"
        assert "qtilde" in err.value.message  # pydantic's message, as the server words it

        with pytest.raises(BadInput, match="no patch named 'nope'") as err:
            client.submit(ws, ps, patches=["nope"])
        assert err.value.where == "options.patches"

        broken = copy.deepcopy(ps)
        broken["patches"][3]["patch"][0]["path"] = "/channels/99/samples/-"
        with pytest.raises(BadInput) as err:
            client.submit(ws, broken)
        assert err.value.where == f"patchset: patch {ps['patches'][3]['metadata']['name']!r}"

        bad_json = tmp_path / "bad.json"
        bad_json.write_text('{"channels": [')
        with pytest.raises(BadInput, match="not valid JSON") as err:
            client.submit(bad_json, ps)
        assert err.value.where == "workspace (upload)"
        with pytest.raises(BadInput, match="file not found"):
            client.submit(tmp_path / "missing.json")

        with pytest.raises(NotFound) as err:
            client.job("deadbeef").results()
        assert (
            err.value.status == 404 and err.value.message == "no job with id 'deadbeef'" and err.value.where == "job id"
        )
        assert str(err.value) == "job id: no job with id 'deadbeef'"


class FailingExecutor(LocalExecutor):
    """The local executor, but every chunk raises where it runs (a broken node, say)."""

    def submit(self, workspace, patches, options):  # type: ignore[override]
        return self._pool.submit(_broken_node, workspace, patches, options)


def _broken_node(workspace, patches, options):
    raise RuntimeError("the node ran out of memory")


def test_a_job_whose_hypotheses_all_fail_raises_jobfailed(service):
    # its own service: a job with errors must not be in the shared one's GET /v1/jobs
    # (the service answers that listing 503 while a listed job has errors: HSCAN ... COUNT 0)
    # a valid submission whose every chunk fails where it runs (the input checks at submission
    # now catch every invalid model, so the failure comes from the executor)
    service.start_worker(executor=FailingExecutor())
    ws, ps = tiny_inputs(2)
    with Client(f"http://127.0.0.1:{service.port}") as client:
        job = client.submit(ws, ps)
        with pytest.raises(JobFailed) as err:
            job.wait(timeout=120, poll_interval=0.2)
        assert err.value.where in ("hypothesis 'sig_0'", "hypothesis 'sig_1'") and err.value.message
        assert job.info["state"] == "failed" and job.info["counts"]["errors"] == 2


def test_wait_timeout_then_cancel(service, tiny):
    # a service with no worker: the job stays queued
    with Client(f"http://127.0.0.1:{service.port}") as client:
        job = client.submit(*tiny)
        with pytest.raises(JobTimeout, match=r"not finished after 0.5 s \(queued, 0/3"):
            job.wait(timeout=0.5, poll_interval=0.1)
        assert job.cancel()["state"] == "cancelled"
        assert job.wait(timeout=1)["state"] == "cancelled"


def test_server_unavailable_after_retries(redis_url, tmp_path):
    # nothing listening: connection refused, retried by the transport, then ServerUnavailable
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retry=FAST_RETRY) as client:
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailable, match="cannot connect") as err:
            client.health()
        assert time.monotonic() - t0 >= 0.45  # httpcore retried at once, then after 0.5 s
    assert err.value.status is None and err.value.where == url

    # the API is up but its Redis is not: a real 503, retried with backoff, then the server's message
    from fitserve.service.settings import Settings

    svc = Service(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", data_dir=tmp_path, auth="open"))
    try:
        with Client(f"http://127.0.0.1:{svc.port}", retry=FAST_RETRY) as client:
            with pytest.raises(ServerUnavailable) as err:
                client.job("0" * 24).status()
            assert err.value.status == 503 and err.value.where == "redis"
            assert err.value.message.startswith("job store unavailable")
            with pytest.raises(ServerUnavailable, match="service is down"):
                client.health()
    finally:
        svc.close()
