"""The job list and the job page show each job's options; excluded rows at the job's CL, explained; table in view at 1280 px."""

from __future__ import annotations

import httpx
from service.conftest import REPO

EXAMPLE = REPO / "workspaces" / "example"


def _submit(web, **options) -> str:
    import json

    ws, ps = (json.loads((EXAMPLE / f).read_text()) for f in ("BkgOnly.json", "patchset.json"))
    r = httpx.post(web.url + "/v1/jobs", json={"workspace": ws, "patchset": ps, "options": options}, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_job_list_and_job_page_show_options_and_cl_aware_exclusion(page, web, shot):
    web.start_worker()
    page.goto(web.url + "/jobs")
    assert page.get_by_test_id("no-jobs").count() == 1
    job_id = _submit(web, confidence_level=0.68, cls_only=False, modifier_settings="atlas")
    page.goto(web.url + "/jobs")
    row = page.locator(f"[data-testid=jobs-table] tr[data-job='{job_id}']")
    assert "qtilde mu=1 CL=68% atlas asymptotic" in row.inner_text()
    shot(page, "jobs-list")
    row.locator("a").click()
    page.wait_for_url(f"**/jobs/{job_id}")
    page.wait_for_selector("[data-testid=job-state]:text('done')", timeout=600_000)
    page.get_by_test_id("results-table").wait_for(timeout=30_000)
    plot = page.get_by_test_id("plot")
    page.wait_for_function("img => img.complete && img.naturalWidth > 300", arg=plot.element_handle(), timeout=60_000)
    opts = page.get_by_test_id("job-options").inner_text()
    for text in (
        "test statistic",
        "qtilde",
        "POI value tested",
        "68%",
        "upper limits",
        "no",
        "calculator",
        "asymptotic",
    ):
        assert text in opts, opts
    assert "excluded at 68% CL" in page.get_by_test_id("row-legend").inner_text()
    # "excluded" at the job's CL (CLs_obs < 0.32), not 0.05
    recs = httpx.get(f"{web.url}/v1/jobs/{job_id}/results", timeout=30).json()["results"]
    want = {n for n, r in recs.items() if r["CLs_obs"] is not None and r["CLs_obs"] < 0.32}
    got = set(page.eval_on_selector_all("tr.excluded", "rows => rows.map(r => r.dataset.name)"))
    assert got == want and want != {n for n, r in recs.items() if r["CLs_obs"] is not None and r["CLs_obs"] < 0.05}
    # at 1280 px every column, status included, is in view without scrolling the table
    page.set_viewport_size({"width": 1280, "height": 900})
    right = page.eval_on_selector(
        "[data-testid=results-table] thead th:last-child", "th => th.getBoundingClientRect().right"
    )
    assert right <= 1280, right
    scroll = page.eval_on_selector(".scroll", "d => [d.scrollWidth, d.clientWidth]")
    assert scroll[0] <= scroll[1], scroll
    shot(page, "job-options")


def test_a_full_workspace_with_limits_gets_a_limit_plot(page, web, shot):
    import json

    web.start_worker()
    ws = json.loads((EXAMPLE / "single.json").read_text())
    r = httpx.post(web.url + "/v1/jobs", json={"workspace": ws, "options": {"limits": True}}, timeout=60)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    page.goto(f"{web.url}/jobs/{job_id}")
    page.wait_for_selector("[data-testid=job-state]:text('done')", timeout=600_000)
    plot = page.get_by_test_id("plot")
    plot.wait_for(timeout=30_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 300", arg=plot.element_handle(), timeout=60_000)
    pdf = httpx.get(f"{web.url}/v1/jobs/{job_id}/plot.pdf", timeout=60)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    shot(page, "job-single-workspace")
