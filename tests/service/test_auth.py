"""API tokens, per-user isolation and limits, against the real API (uvicorn) and a real redis-server.

User A must not read, list, cancel or plot user B's jobs -- through the HTTP API
and the Python client (the web form: tests/web/test_login.py).  Another user's
job answers exactly like a job that does not exist (404), so job ids leak nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest
import redis

from fitserve.client import Client
from fitserve.client.errors import BadInput, NotFound, Unauthorised
from fitserve.service.auth import TokenStore, token_hash
from fitserve.service.localhost import free_port, wait_until
from service.conftest import Service, tiny_inputs

JOB_ROUTES = ("", "/results", "/results?format=csv", "/contours", "/plot.png", "/plot.svg")


@pytest.fixture
def secured(settings):
    """The service in token mode, with tokens for alice, bob and an admin."""
    svc = Service(settings.model_copy(update={"auth": "token", "max_active_jobs": 3}))
    tokens = TokenStore(redis.Redis.from_url(settings.redis_url), settings.key_prefix)
    svc.tokens = {
        "alice": tokens.create("alice"),
        "bob": tokens.create("bob"),
        "root": tokens.create("root", admin=True),
    }
    svc.token_store = tokens
    svc.url = f"http://127.0.0.1:{svc.port}"
    try:
        yield svc
    finally:
        svc.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def submit(svc: Service, token: str, n: int = 3, **options: Any) -> str:
    ws, ps = tiny_inputs(n)
    resp = svc.http.post("/v1/jobs", json={"workspace": ws, "patchset": ps, "options": options}, headers=auth(token))
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def test_tokens_are_required_and_stored_hashed(secured):
    ws, ps = tiny_inputs()
    body = {"workspace": ws, "patchset": ps}
    for headers, message in (
        ({}, "missing API token"),
        (auth("fs_" + "x" * 43), "invalid or revoked API token"),
        ({"Authorization": "Basic YWxpY2U6cHc="}, "malformed Authorization header"),
        ({"Authorization": "Bearer"}, "malformed Authorization header"),
    ):
        resp = secured.http.post("/v1/jobs", json=body, headers=headers)
        assert resp.status_code == 401, resp.text
        assert message in resp.json()["detail"]["message"]
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert secured.http.get("/v1/jobs", headers=headers).status_code == 401
    # Redis holds the token's SHA-256 only, never the token
    r = secured.token_store.r
    alice = secured.tokens["alice"]
    keys = {k.decode() for k in r.scan_iter(match=f"{secured.settings.key_prefix}:*")}
    assert f"{secured.settings.key_prefix}:token:{token_hash(alice)}" in keys
    dump = b"".join(r.dump(k) or b"" for k in keys)
    assert alice.encode() not in dump
    who = secured.http.get("/v1/whoami", headers=auth(alice)).json()
    assert who == {"user": "alice", "admin": False, "auth": "token"}
    # health and the API docs stay public
    assert secured.http.get("/v1/health").status_code in (200, 503)
    assert secured.http.get("/openapi.json").status_code == 200


def test_revoked_token_is_refused_at_once(secured):
    token = secured.token_store.create("carol")
    assert secured.http.get("/v1/jobs", headers=auth(token)).status_code == 200
    assert secured.token_store.revoke(token_hash(token)[:12]) == 1
    resp = secured.http.get("/v1/jobs", headers=auth(token))
    assert resp.status_code == 401 and "revoked" in resp.json()["detail"]["message"]


def test_users_cannot_see_each_others_jobs_through_the_api(secured):
    secured.start_worker()
    a, b, root = (secured.tokens[u] for u in ("alice", "bob", "root"))
    job_a = submit(secured, a)
    job_b = submit(secured, b, poi_test=2.0)
    for job in (job_a, job_b):
        wait_until(
            lambda: secured.http.get(f"/v1/jobs/{job}", headers=auth(root)).json()["state"] == "done",
            timeout=120,
            what=f"job {job}",
        )
    missing = "0" * 24
    for route in JOB_ROUTES:
        own = secured.http.get(f"/v1/jobs/{job_a}{route}", headers=auth(a))
        assert own.status_code == 200, (route, own.text)
        other = secured.http.get(f"/v1/jobs/{job_a}{route}", headers=auth(b))
        absent = secured.http.get(f"/v1/jobs/{missing}{route}", headers=auth(b))
        assert other.status_code == absent.status_code == 404, (route, other.text)
        # indistinguishable from a job that does not exist, apart from the id it names
        assert other.json()["detail"]["message"].replace(job_a, "ID") == absent.json()["detail"]["message"].replace(
            missing, "ID"
        )
    assert secured.http.delete(f"/v1/jobs/{job_a}", headers=auth(b)).status_code == 404
    assert secured.http.get(f"/v1/jobs/{job_a}", headers=auth(a)).json()["state"] == "done"  # bob's cancel did nothing
    # listing: own jobs only; the admin sees all, and may filter by user; others may not
    ids = lambda token, q="": [j["id"] for j in secured.http.get(f"/v1/jobs{q}", headers=auth(token)).json()["jobs"]]
    assert ids(a) == [job_a]
    assert ids(b) == [job_b]
    assert set(ids(root)) == {job_a, job_b}
    assert ids(root, "?user=bob") == [job_b]
    assert ids(a, "?user=alice") == [job_a]
    resp = secured.http.get("/v1/jobs?user=bob", headers=auth(a))
    assert resp.status_code == 403 and "admin" in resp.json()["detail"]["message"]
    # the admin reads anybody's job; the job says whose it is
    st = secured.http.get(f"/v1/jobs/{job_b}", headers=auth(root)).json()
    assert st["owner"] == "bob"


def test_users_cannot_see_each_others_jobs_through_the_client(secured):
    secured.start_worker()
    with (
        Client(secured.url, token=secured.tokens["alice"]) as alice,
        Client(secured.url, token=secured.tokens["bob"]) as bob,
    ):
        ws, ps = tiny_inputs(4)
        job = alice.submit(ws, ps)
        job.wait(timeout=120)
        assert len(job.results()["results"]) == 4
        with pytest.raises(NotFound):
            bob.job(job.id).status()
        with pytest.raises(NotFound):
            bob.job(job.id).results()
        with pytest.raises(NotFound):
            bob.job(job.id).cancel()
        with pytest.raises(NotFound):
            bob.job(job.id).plot()
        assert [j.id for j in bob.jobs()] == []
        assert [j.id for j in alice.jobs()] == [job.id]
    with Client(secured.url, token="fs_wrong") as nobody, pytest.raises(Unauthorised, match="invalid or revoked"):
        nobody.jobs()
    with Client(secured.url) as anonymous, pytest.raises(Unauthorised, match="missing API token"):
        anonymous.submit(ws, ps)


def test_limits_name_what_was_exceeded(settings):
    svc = Service(
        settings.model_copy(
            update={
                "max_body_bytes": 4096,
                "max_hypotheses": 5,
                "max_bins": 3,
                "max_parameters": 4,
                "max_active_jobs": 2,
            }
        )
    )
    try:
        ws, ps = tiny_inputs(3)
        post = lambda body, **kw: svc.http.post("/v1/jobs", json=body, **kw)
        # request body size: 413, by Content-Length and while streaming (chunked, no length)
        big = {"workspace": ws, "patchset": ps, "options": {"measurement": "x" * 5000}}
        for resp in (
            post(big),
            svc.http.post(
                "/v1/jobs",
                content=iter([b'{"workspace": "', b"x" * 5000, b'"}']),
                headers={"Content-Type": "application/json"},
            ),
        ):
            assert resp.status_code == 413, resp.text
            assert "max_body_bytes = 4096 (FITSERVE_MAX_BODY_BYTES)" in resp.json()["detail"]["message"]
        # hypotheses per job: 422
        _, ps6 = tiny_inputs(6)
        resp = post({"workspace": ws, "patchset": ps6})
        assert resp.status_code == 422 and "max_hypotheses = 5" in resp.json()["detail"]["message"]
        # bins per model: the patch adds a 4-bin channel
        wide = [
            {
                "op": "add",
                "path": "/channels/-",
                "value": {"name": "CR", "samples": [{"name": "b", "data": [1.0, 2.0, 3.0, 4.0], "modifiers": []}]},
            },
            {"op": "add", "path": "/observations/-", "value": {"name": "CR", "data": [1, 2, 3, 4]}},
        ]
        ps_wide = {**ps, "patches": [{**ps["patches"][0], "patch": ps["patches"][0]["patch"] + wide}]}
        resp = post({"workspace": ws, "patchset": ps_wide})
        assert resp.status_code == 422, resp.text
        assert (
            "5 bins" in resp.json()["detail"]["message"]
            and "max_bins = 3 (FITSERVE_MAX_BINS)" in resp.json()["detail"]["message"]
        )
        assert resp.json()["detail"]["where"] == "patchset: patch 'sig_0'"
        # parameters per model: four more normsys modifiers on the background
        many = [
            {
                "op": "add",
                "path": "/channels/0/samples/0/modifiers/-",
                "value": {"name": f"np_{i}", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}},
            }
            for i in range(4)
        ]
        ps_many = {**ps, "patches": [{**ps["patches"][1], "patch": ps["patches"][1]["patch"] + many}]}
        resp = post({"workspace": ws, "patchset": ps_many})
        assert resp.status_code == 422 and "max_parameters = 4" in resp.json()["detail"]["message"], resp.text
        assert "sig_1" in resp.json()["detail"]["where"]
        # concurrent jobs per user: 429 (no worker runs, so they stay queued), then a slot frees up
        first = post({"workspace": ws, "patchset": ps}).json()["id"]
        assert post({"workspace": ws, "patchset": ps, "options": {"poi_test": 2}}).status_code == 202
        resp = post({"workspace": ws, "patchset": ps, "options": {"poi_test": 3}})
        assert resp.status_code == 429, resp.text
        assert "max_active_jobs = 2 (FITSERVE_MAX_ACTIVE_JOBS)" in resp.json()["detail"]["message"]
        assert svc.http.delete(f"/v1/jobs/{first}").status_code == 200
        assert post({"workspace": ws, "patchset": ps, "options": {"poi_test": 3}}).status_code == 202
        with Client(f"http://127.0.0.1:{svc.port}") as client, pytest.raises(BadInput, match="max_active_jobs") as err:
            client.submit(ws, ps, poi_test=4.0)
        assert err.value.status == 429
    finally:
        svc.close()


def test_concurrent_submissions_cannot_overshoot_the_job_limit(settings):
    """The slot check is one Lua script: 12 simultaneous submissions, limit 4, exactly 4 accepted."""
    from concurrent.futures import ThreadPoolExecutor

    svc = Service(settings.model_copy(update={"max_active_jobs": 4}))
    try:
        ws, ps = tiny_inputs(2)
        with ThreadPoolExecutor(12) as pool:
            codes = list(
                pool.map(
                    lambda i: (
                        svc.http.post(
                            "/v1/jobs", json={"workspace": ws, "patchset": ps, "options": {"poi_test": 1 + i}}
                        ).status_code
                    ),
                    range(12),
                )
            )
        assert sorted(codes) == [202] * 4 + [429] * 8
    finally:
        svc.close()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fitserve.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_cli_create_list_revoke(secured):
    env = {"FITSERVE_REDIS_URL": secured.settings.redis_url, "FITSERVE_KEY_PREFIX": secured.settings.key_prefix}
    out = run_cli("token", "create", "--user", "dana", "--label", "laptop", env=env)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("fs_") and len(token) > 40 and "not shown again" in out.stderr
    assert secured.http.get("/v1/whoami", headers=auth(token)).json()["user"] == "dana"
    listing = run_cli("token", "list", env=env)
    line = next(ln for ln in listing.stdout.splitlines() if " dana " in ln)
    assert token not in listing.stdout and "laptop" in line and line.split()[0] == token_hash(token)[:12]
    bad = run_cli("token", "create", "--user", "../etc", env=env)
    assert bad.returncode == 2 and "invalid user name" in bad.stderr
    out = run_cli("token", "revoke", line.split()[0], env=env)
    assert out.returncode == 0 and "revoked 1 token" in out.stderr
    assert secured.http.get("/v1/whoami", headers=auth(token)).status_code == 401
    assert run_cli("token", "revoke", line.split()[0], env=env).returncode == 1
    admin = run_cli("token", "create", "--user", "ops", "--admin", env=env).stdout.strip()
    assert secured.http.get("/v1/whoami", headers=auth(admin)).json()["admin"] is True


def _serve(redis_url: str, prefix: str, host: str, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "FITSERVE_REDIS_URL": redis_url, "FITSERVE_KEY_PREFIX": prefix, "FITSERVE_WEB_WARMUP": "off"}
    env.pop("FITSERVE_AUTH", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fitserve.cli",
            "serve",
            "--host",
            host,
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra,
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v1/health").status_code in (200, 503)
        except httpx.TransportError:
            assert proc.poll() is None, "fitserve serve exited"
            return False

    wait_until(answers, timeout=60, what="fitserve serve")
    return proc, port


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


@pytest.mark.parametrize(
    "host, extra, mode, warned",
    [
        ("127.0.0.1", (), "open", False),  # the local default: no tokens, no warning
        ("0.0.0.0", (), "token", False),  # any other address: tokens by default
        ("0.0.0.0", ("--auth", "open"), "open", True),  # open on a shared address: a loud warning
    ],
)
def test_open_mode_is_the_default_on_loopback_only(settings, host, extra, mode, warned):
    proc, port = _serve(settings.redis_url, settings.key_prefix, host, *extra)
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/v1/jobs")
        assert resp.status_code == (200 if mode == "open" else 401), resp.text
    finally:
        err = _stop(proc)
    assert ("WARNING: open mode" in err) is warned, err
