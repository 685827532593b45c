"""Signing in to the web pages with an API token, and per-user isolation there, in headless Chromium."""

from __future__ import annotations

import json

import pytest
import redis
from service.conftest import Service, tiny_inputs

from fitserve.service.auth import TokenStore


@pytest.fixture
def secured_web(settings):
    svc = Service(settings.model_copy(update={"auth": "token"}))
    tokens = TokenStore(redis.Redis.from_url(settings.redis_url), settings.key_prefix)
    svc.tokens = {"alice": tokens.create("alice"), "bob": tokens.create("bob")}
    svc.url = f"http://127.0.0.1:{svc.port}"
    try:
        yield svc
    finally:
        svc.close()


def sign_in(page, url: str, token: str, then: str = "/full") -> None:
    page.goto(url + then)
    assert "/login" in page.url  # not signed in: sent to the sign-in page, which remembers where to go next
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(url + then)


def test_sign_in_submit_and_other_users_see_nothing(browser, secured_web, tmp_path, shot):
    svc = secured_web
    svc.start_worker()
    ws, ps = tiny_inputs(3)
    (tmp_path / "bkg.json").write_text(json.dumps(ws))
    (tmp_path / "patchset.json").write_text(json.dumps(ps))

    alice = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    alice.goto(svc.url + "/full")
    alice.wait_for_selector("#login-form")
    alice.fill("#token", "fs_not-a-real-token")
    alice.click("#login-form button[type=submit]")
    assert "not valid" in alice.get_by_test_id("error-login").inner_text()
    shot(alice, "login-error")

    sign_in(alice, svc.url, svc.tokens["alice"])
    assert alice.get_by_test_id("viewer").inner_text() == "alice"
    alice.set_input_files("#workspace", str(tmp_path / "bkg.json"))
    alice.set_input_files("#patchset", str(tmp_path / "patchset.json"))
    alice.click("#full-form button[type=submit]")
    alice.wait_for_url("**/jobs/*")
    job_id = alice.url.rsplit("/", 1)[1]
    # the page's own polling of /v1/jobs/{id} is authenticated by the cookie
    alice.wait_for_selector("[data-testid=job-state]:text('done')", timeout=120_000)
    assert alice.request.get(f"{svc.url}/v1/jobs/{job_id}").json()["owner"] == "alice"

    bob = browser.new_context().new_page()
    sign_in(bob, svc.url, svc.tokens["bob"], then="/")
    resp = bob.goto(f"{svc.url}/jobs/{job_id}")
    assert resp.status == 404 and "No such job" in bob.content()
    for route in ("", "/results", "/plot.png", "/contours"):
        assert bob.request.get(f"{svc.url}/v1/jobs/{job_id}{route}").status == 404
    assert bob.request.delete(f"{svc.url}/v1/jobs/{job_id}").status == 404
    assert bob.request.get(f"{svc.url}/v1/jobs").json()["jobs"] == []
    shot(bob, "other-users-job")

    # signing out forgets the token: the pages send you back to sign in
    bob.click("form.who button[type=submit]")
    bob.wait_for_url("**/login")
    bob.goto(f"{svc.url}/jobs/{job_id}")
    assert "/login" in bob.url
    assert bob.request.get(f"{svc.url}/v1/jobs").status == 401

    # nobody signed in: every page leads to the sign-in form, the API says 401
    anon = browser.new_context().new_page()
    for path in ("/", "/full", f"/jobs/{job_id}"):
        anon.goto(svc.url + path)
        assert "/login" in anon.url, path
    shot(anon, "login")
