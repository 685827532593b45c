"""Client pieces that need no server: configuration, error mapping, retries (httpx.MockTransport), inputs, imports."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from fitserve.client import (
    BadInput,
    Client,
    Conflict,
    FitserveError,
    NotFound,
    RetryPolicy,
    ServerUnavailable,
    Unauthorised,
    resolve,
)
from fitserve.client._core import Waiter, as_spec, submit_request
from fitserve.client.config import ConfigError

NO_WAIT = RetryPolicy(retries=3, backoff=0.0, connect_retries=0)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("FITSERVE_URL", "FITSERVE_TOKEN", "FITSERVE_CLIENT_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return monkeypatch


def test_url_and_token_precedence_flag_env_file_default(clean_env, tmp_path):
    assert resolve() == resolve(None, None)
    cfg = resolve()
    assert (cfg.url, cfg.token, cfg.url_source) == ("http://127.0.0.1:8000", None, "default")

    default_file = tmp_path / "xdg" / "fitserve" / "client.toml"
    default_file.parent.mkdir(parents=True)
    default_file.write_text('url = "http://from-xdg:1"\n')
    assert resolve().url == "http://from-xdg:1"

    file = tmp_path / "client.toml"
    file.write_text('url = "http://from-file:8000/"\ntoken = "file-token"\n')
    clean_env.setenv("FITSERVE_CLIENT_CONFIG", str(file))
    cfg = resolve()
    assert (cfg.url, cfg.token, cfg.url_source, cfg.token_source) == (
        "http://from-file:8000",
        "file-token",
        str(file),
        str(file),
    )

    clean_env.setenv("FITSERVE_URL", "http://from-env:9000")
    cfg = resolve()
    assert (cfg.url, cfg.token, cfg.url_source) == ("http://from-env:9000", "file-token", "environment")
    clean_env.setenv("FITSERVE_TOKEN", "env-token")
    assert resolve().token == "env-token"

    cfg = resolve("flag-host:7000", "flag-token")
    assert (cfg.url, cfg.token, cfg.url_source, cfg.token_source) == (
        "http://flag-host:7000",
        "flag-token",
        "argument",
        "argument",
    )


def test_bad_config_file_is_reported(clean_env, tmp_path):
    file = tmp_path / "client.toml"
    file.write_text("url = 8000\n")
    clean_env.setenv("FITSERVE_CLIENT_CONFIG", str(file))
    with pytest.raises(ConfigError, match="url must be a string"):
        resolve()
    file.write_text("url = [\n")
    with pytest.raises(ConfigError, match="cannot read the client config"):
        resolve()
    assert resolve("http://x", "t").url == "http://x"  # not read when flags give both
    clean_env.setenv("FITSERVE_CLIENT_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="config file not found"):
        resolve()


def mock_client(handler, **kw) -> Client:
    return Client("http://fitserve.test", transport=httpx.MockTransport(handler), **kw)


def test_token_is_sent_as_bearer(clean_env):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"status": "ok"})

    mock_client(handler, token="s3cret").health()
    mock_client(handler).health()
    assert seen == ["Bearer s3cret", None]


@pytest.mark.parametrize(
    ("status", "body", "cls", "message", "where"),
    [
        (
            422,
            {"detail": {"message": "must be qtilde", "where": "options.test_stat"}},
            BadInput,
            "must be qtilde",
            "options.test_stat",
        ),
        (
            413,
            {"detail": {"message": "request body exceeds 1024 bytes", "where": "request body"}},
            BadInput,
            "request body exceeds 1024 bytes",
            "request body",
        ),
        (
            415,
            {"detail": {"message": "unsupported content type", "where": "content-type"}},
            BadInput,
            "unsupported content type",
            "content-type",
        ),
        (400, {"detail": "Bad request"}, BadInput, "Bad request", None),
        (
            422,
            {"detail": [{"loc": ["query", "limit"], "msg": "Input should be greater than or equal to 1"}]},
            BadInput,
            "Input should be greater than or equal to 1",
            "limit",
        ),
        (
            401,
            {"detail": {"message": "invalid token", "where": "authorization"}},
            Unauthorised,
            "invalid token",
            "authorization",
        ),
        (403, {"detail": "Forbidden"}, Unauthorised, "Forbidden", None),
        (
            404,
            {"detail": {"message": "no job with id 'x'", "where": "job id"}},
            NotFound,
            "no job with id 'x'",
            "job id",
        ),
        (
            409,
            {"detail": {"message": "job already done", "where": "job state"}},
            Conflict,
            "job already done",
            "job state",
        ),
        (500, "Internal Server Error", FitserveError, "HTTP 500 from the server: Internal Server Error", None),
    ],
)
def test_error_statuses_become_typed_exceptions_with_the_servers_message(clean_env, status, body, cls, message, where):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=body)

    with pytest.raises(cls) as err:
        mock_client(handler, retry=NO_WAIT).job("x").status()
    assert type(err.value) is cls
    assert (err.value.message, err.value.where, err.value.status) == (message, where, status)
    assert len(calls) == 1  # only 503 and connection errors are retried


def test_503_is_retried_with_backoff_then_succeeds_or_gives_up(clean_env, monkeypatch):
    sleeps = []
    monkeypatch.setattr("fitserve.client.sync.time.sleep", sleeps.append)
    answers = iter([503, 503, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        code = next(answers)
        if code == 503:
            return httpx.Response(503, json={"detail": {"message": "job store unavailable: refused", "where": "redis"}})
        return httpx.Response(200, json={"jobs": []})

    assert mock_client(handler, retry=RetryPolicy(retries=4, backoff=0.5)).jobs() == []
    assert len(sleeps) == 2 and 0.4 <= sleeps[0] <= 0.6 and 0.8 <= sleeps[1] <= 1.2  # exponential, with jitter

    sleeps.clear()
    n = 0

    def always_503(request: httpx.Request) -> httpx.Response:
        nonlocal n
        n += 1
        return httpx.Response(
            503, headers={"Retry-After": "2"}, json={"detail": {"message": "job store unavailable", "where": "redis"}}
        )

    with pytest.raises(ServerUnavailable) as err:
        mock_client(always_503, retry=RetryPolicy(retries=3)).submit({"channels": []})
    assert n == 4 and sleeps == [2.0, 2.0, 2.0]  # Retry-After honoured; bounded attempts
    assert (err.value.status, err.value.where, err.value.message) == (503, "redis", "job store unavailable")


def test_inputs_dicts_paths_json_text_and_pyhf_objects(tmp_path):
    import pyhf

    ws = {"channels": [], "observations": [], "measurements": [], "version": "1.0.0"}
    ps = {
        "metadata": {"name": "x", "labels": ["m"]},
        "version": "1.0.0",
        "patches": [{"metadata": {"name": "p", "values": [1.0]}, "patch": [{"op": "add", "path": "/a", "value": 1}]}],
    }
    assert submit_request(ws, ps, {"test_stat": "q", "limits": None}) == {
        "json": {"workspace": ws, "patchset": ps, "options": {"test_stat": "q"}}
    }
    assert "patchset" not in submit_request(ws, None, {})["json"]

    path = tmp_path / "BkgOnly.json"
    path.write_text(json.dumps(ws))
    req = submit_request(str(path), ps, {"poi_test": 0.5})
    assert req["files"]["workspace"] == ("BkgOnly.json", path.read_bytes(), "application/json")
    assert json.loads(req["files"]["patchset"][1]) == ps and json.loads(req["data"]["options"]) == {"poi_test": 0.5}
    assert as_spec(json.dumps(ws), "workspace")[1] == json.dumps(ws).encode()

    pyhf_ps = pyhf.PatchSet(
        {
            **ps,
            "metadata": {
                **ps["metadata"],
                "description": "d",
                "digests": {"sha256": "0" * 64},
                "references": {"hepdata": "ins0000001"},
            },
        }
    )
    spec = as_spec(pyhf_ps, "patchset")
    assert spec["patches"] == ps["patches"] and spec["metadata"]["labels"] == ["m"]
    json.dumps(spec)

    with pytest.raises(BadInput, match="file not found") as err:
        submit_request(tmp_path / "nope.json", None, {})
    assert err.value.where == f"workspace {str(tmp_path / 'nope.json')!r}"
    with pytest.raises(TypeError, match="not int"):
        as_spec(3, "workspace")


def test_waiter_drives_a_bar_from_finished_hypotheses():
    class Bar:
        total = n = None
        shown: list = []

        def refresh(self):
            self.shown.append((self.n, self.total))

    bar = Bar()
    w = Waiter("abc", timeout=None, progress=bar, poll_interval=1.0)
    st = {"state": "running", "progress": {"done": 0, "total": 25}, "counts": {}}
    delays = [w.step({**st, "progress": {"done": d, "total": 25}}) for d in (0, 5, 10)]
    assert w.step({**st, "state": "done", "progress": {"done": 25, "total": 25}}) is None
    assert bar.shown == [(0, 25), (5, 25), (10, 25), (25, 25)]
    assert delays == sorted(delays) and delays[0] == 0.25 and max(delays) <= 1.0


def test_importing_fitserve_stays_light():
    """``from fitserve import Client`` imports httpx only; the command line (every client command) no JAX, pyhf or Redis."""
    code = (
        "import sys, fitserve; assert 'fitserve.client' not in sys.modules; "
        "from fitserve import Client, AsyncClient; "
        "heavy = [m for m in ('jax', 'pyhf', 'numpy', 'pandas', 'pydantic', 'fitserve.engine', 'fitserve.service') "
        "if m in sys.modules]; assert not heavy, heavy; "
        "import fitserve.cli; "
        "heavy = [m for m in ('jax', 'pyhf', 'numpy', 'pandas', 'redis', 'fastapi', 'pydantic', 'fitserve.engine.scan', "
        "'fitserve.service.store') if m in sys.modules]; assert not heavy, heavy; "
        "print(Client.__module__, AsyncClient.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["fitserve.client.sync", "fitserve.client.aio"]
