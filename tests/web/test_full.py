"""The full-likelihood pages in headless Chromium: upload, live progress, plot, sortable table, downloads, inline errors."""

from __future__ import annotations

import csv
import io
import json

import pytest
from service.conftest import E2E_PATCHES, REPO, RJ, spread

EXAMPLE = REPO / "workspaces" / "example"


def cells(page, col: int) -> list[str]:
    return page.eval_on_selector_all(
        "[data-testid=results-table] tbody tr",
        f"rows => rows.map(r => r.cells[{col}].dataset.sort ?? r.cells[{col}].textContent)",
    )


@pytest.mark.shared
@pytest.mark.timeout(900)
def test_upload_3L_RJ_progress_plot_table_downloads(page, web, rj, shot):
    ws, ps = rj
    names = spread([p["metadata"]["name"] for p in ps["patches"]], E2E_PATCHES)
    web.start_worker()
    page.goto(web.url + "/full")
    page.set_input_files("#workspace", str(RJ / "BkgOnly.json"))
    page.set_input_files("#patchset", str(RJ / "patchset.json"))
    page.fill("#patches", ", ".join(names))
    shot(page, "full-form")
    page.click("button[type=submit]")
    page.wait_for_url("**/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    assert page.get_by_test_id("job-state").inner_text() in ("queued", "running", "done")
    shot(page, "job-progress")
    # live progress: the numbers move without a reload (the page polls /v1/jobs/{id})
    page.wait_for_function(
        f"() => document.querySelector('[data-testid=job-progress]').textContent.trim() !== '0 / {len(names)}'",
        timeout=600_000,
    )
    assert "0 computed" not in page.get_by_test_id("job-counts").inner_text()
    shot(page, "job-progress-moved", widths=("phone",))

    # the page polls /v1/jobs/{id} and reloads itself when the job is over
    page.wait_for_selector("[data-testid=job-state]:text('done')", timeout=600_000)
    page.get_by_test_id("results-table").wait_for(timeout=30_000)
    assert page.get_by_test_id("job-progress").inner_text() == f"{len(names)} / {len(names)}"

    plot = page.get_by_test_id("plot")
    plot.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 300", arg=plot.element_handle())

    # the table: one row per hypothesis, grid columns named by the PatchSet labels, numbers as in the API
    heads = page.eval_on_selector_all(
        "[data-testid=results-table] thead th", "ths => ths.map(t => t.textContent.trim())"
    )
    assert heads[:5] == [
        "hypothesis",
        "status",
        "m_C1N2",
        "m_N1",
        "CLs obs",
    ]  # status next to the name: in view at 1280 px
    doc = page.request.get(f"{web.url}/v1/jobs/{job_id}/results").json()
    assert sorted(cells(page, 0)) == sorted(names)
    for name, sort_value in zip(cells(page, 0), cells(page, 4)):
        want = doc["results"][name]["CLs_obs"]
        assert (float(sort_value) if sort_value else None) == (
            pytest.approx(want, rel=1e-12) if want is not None else None
        )

    # sortable: CLs obs ascending, then descending (empty cells last)
    page.click("[data-testid=results-table] thead th:nth-child(5)")
    up = [float(v) for v in cells(page, 4) if v]
    assert (
        up == sorted(up)
        and page.get_attribute("[data-testid=results-table] thead th:nth-child(5)", "aria-sort") == "ascending"
    )
    page.click("[data-testid=results-table] thead th:nth-child(5)")
    down = [float(v) for v in cells(page, 4) if v]
    assert down == sorted(down, reverse=True)
    page.click("[data-testid=results-table] thead th:nth-child(3)")  # by m_C1N2
    xs = [float(v) for v in cells(page, 2)]
    assert xs == sorted(xs)
    shot(page, "job-done")

    # downloads: JSON, CSV, PNG links work
    got = {}
    for testid in ("download-json", "download-csv", "download-png"):
        href = page.get_by_test_id(testid).get_attribute("href")
        resp = page.request.get(web.url + href)
        assert resp.ok, (testid, resp.status)
        got[testid] = resp
    assert json.loads(got["download-json"].body())["complete"] is True
    rows = list(csv.DictReader(io.StringIO(got["download-csv"].text())))
    assert sorted(r["name"] for r in rows) == sorted(names)
    assert got["download-png"].headers["content-type"] == "image/png" and got["download-png"].body()[:4] == b"\x89PNG"


def test_upload_errors_are_shown_next_to_the_field_and_nothing_is_lost(page, web, shot, tmp_path):
    bad_json = tmp_path / "notes.json"
    bad_json.write_text("this is not JSON")
    not_pyhf = tmp_path / "other.json"
    not_pyhf.write_text(json.dumps({"channels": 5, "hello": "world"}))

    page.goto(web.url + "/full")
    shot(page, "full-empty")
    # nothing chosen
    page.click("button[type=submit]")
    assert "choose a background-only" in page.get_by_test_id("error-workspace").inner_text()

    # a file that is not JSON, a JSON that is not a workspace, and a bad option, all at once
    page.set_input_files("#workspace", str(not_pyhf))
    page.set_input_files("#patchset", str(bad_json))
    page.fill("#poi_test", "one")
    page.fill("#patches", "sig_a sig_b")
    page.check("#limits")
    page.click("button[type=submit]")
    page.get_by_test_id("error-patchset").wait_for()
    assert "not valid JSON" in page.get_by_test_id("error-patchset").inner_text()
    assert "number" in page.get_by_test_id("error-poi_test").inner_text()
    assert page.locator(".field:has(#patchset) [data-testid=error-patchset]").count() == 1
    # options typed are still there
    assert page.input_value("#poi_test") == "one" and page.input_value("#patches") == "sig_a sig_b"
    assert page.is_checked("#limits")
    shot(page, "full-errors")

    page.fill("#poi_test", "1")
    page.set_input_files("#patchset", str(EXAMPLE / "patchset.json"))
    page.click("button[type=submit]")
    page.get_by_test_id("error-workspace").wait_for()
    assert "workspace" in page.get_by_test_id("error-workspace").inner_text().lower()
    assert page.get_by_test_id("kept-patchset").inner_text().count("patchset.json") == 1  # kept, not chosen again

    # a good workspace; the patchset kept from the last try; a patch name that does not exist
    page.set_input_files("#workspace", str(EXAMPLE / "BkgOnly.json"))
    page.click("button[type=submit]")
    page.get_by_test_id("error-patches").wait_for()
    assert "no patch named 'sig_a'" in page.get_by_test_id("error-patches").inner_text()
    assert page.get_by_test_id("kept-workspace").count() == 1 and page.get_by_test_id("kept-patchset").count() == 1

    # fix the last mistake: both files come from the server's keep, the job is created
    first = json.loads((EXAMPLE / "patchset.json").read_text())["patches"][0]["metadata"]["name"]
    page.fill("#patches", first)
    page.click("button[type=submit]")
    page.wait_for_url("**/jobs/*")
    st = page.request.get(web.url + "/v1/jobs/" + page.url.rsplit("/", 1)[1]).json()
    assert st["progress"]["total"] == 1 and st["options"]["limits"] is True

    page.goto(web.url + "/jobs/doesnotexist")
    assert "No such job" in page.content()


def test_full_form_runs_toys_and_links_their_distributions(page, web, shot):
    """The full upload with the toy calculator: the job's records are toy-based, each row links its toy plot."""
    web.start_worker()
    page.goto(web.url + "/full")
    page.set_input_files("#workspace", str(EXAMPLE / "BkgOnly.json"))
    page.set_input_files("#patchset", str(EXAMPLE / "patchset.json"))
    page.fill("#patches", "sig_750_87p5")
    page.select_option("#calculator", "toybased")
    page.fill("#n_toys", "150")
    page.fill("#seed", "4")
    page.click("button[type=submit]")
    page.wait_for_url("**/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("[data-testid=job-state]:text('done')", timeout=600_000)
    doc = page.request.get(f"{web.url}/v1/jobs/{job_id}/results").json()
    rec = doc["results"]["sig_750_87p5"]
    assert rec["calculator"] == "toybased" and rec["toys"]["n_toys"] == 150 and rec["toys"]["seed"] == 4
    link = page.get_by_test_id("toys-plot")
    resp = page.request.get(web.url + link.get_attribute("href"))
    assert resp.ok and resp.body()[:4] == b"\x89PNG"
    shot(page, "job-toys", widths=("laptop",))
