"""/docs and /redoc render with no internet (assets from the installed package), and swapped files are named."""

from __future__ import annotations

import json

from service.conftest import REPO

EXAMPLE = REPO / "workspaces" / "example"


def _offline(page, base: str) -> list[tuple[str, str]]:
    """Refuse every request that leaves the service, as on an HPC node; return what was tried."""
    tried: list[str] = []

    def route(r):
        if r.request.url.startswith(base):
            r.continue_()
        else:
            tried.append((r.request.resource_type, r.request.url))
            r.abort()

    page.route("**/*", route)
    return tried


def test_swagger_ui_and_redoc_work_offline(page, web, shot):
    tried = _offline(page, web.url)
    page.goto(web.url + "/docs")
    page.locator(".swagger-ui .opblock-summary-path", has_text="/v1/jobs").first.wait_for(timeout=30_000)
    shot(page, "docs-swagger")
    page.goto(web.url + "/redoc")
    page.get_by_text("Submit a scan", exact=False).first.wait_for(timeout=30_000)
    shot(page, "docs-redoc")
    # nothing the pages need leaves the machine (ReDoc's footer links its own logo image: decoration only)
    assert all(kind == "image" for kind, _ in tried), tried


def test_swapped_files_are_named_as_swapped_in_the_web_form(page, web):
    page.goto(web.url + "/full")
    page.set_input_files("#workspace", str(EXAMPLE / "patchset.json"))
    page.set_input_files("#patchset", str(EXAMPLE / "BkgOnly.json"))
    page.click("button[type=submit]")
    page.get_by_test_id("error-workspace").wait_for()
    assert "swapped" in page.get_by_test_id("error-workspace").inner_text()
    # BkgOnly.json as the patchset too is refused, with the reason
    page.set_input_files("#workspace", str(EXAMPLE / "BkgOnly.json"))
    page.set_input_files("#patchset", str(EXAMPLE / "BkgOnly.json"))
    page.click("button[type=submit]")
    page.get_by_test_id("error-patchset").wait_for()
    assert "swapped" in page.get_by_test_id("error-patchset").inner_text()


def test_swapped_files_are_named_as_swapped_in_the_api(web):
    import httpx

    ws, ps = json.loads((EXAMPLE / "BkgOnly.json").read_text()), json.loads((EXAMPLE / "patchset.json").read_text())
    r = httpx.post(web.url + "/v1/jobs", json={"workspace": ps, "patchset": ws}, timeout=30)
    assert r.status_code == 422 and "swapped" in r.json()["detail"]["message"], r.text
    assert r.json()["detail"]["where"] == "workspace"
