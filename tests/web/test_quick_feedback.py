"""The quick limit: one uncertainty for every bin, and a message while a new bin count compiles."""

from __future__ import annotations

from fitserve.web import counting

from .test_quick import fill


def test_one_relative_uncertainty_applies_to_every_bin() -> None:
    one = counting.parse_form({"observed": "3, 8, 20", "background": "2.5, 6, 18", "uncertainty": "0.2",
                               "signal": "1, 4, 6", "mode": "relative"})
    each = counting.parse_form({"observed": "3, 8, 20", "background": "2.5, 6, 18", "uncertainty": "0.2, 0.2, 0.2",
                                "signal": "1, 4, 6", "mode": "relative"})
    assert one.ok and one.uncertainty == each.uncertainty == [0.5, 1.2, 3.6]
    two = counting.parse_form({"observed": "3, 8, 20", "background": "2.5, 6, 18", "uncertainty": "0.2, 0.3",
                               "signal": "1, 4, 6", "mode": "relative"})
    assert "give one value per bin" in two.errors["uncertainty"]


def test_a_first_limit_for_a_new_bin_count_says_it_compiles(page, web, shot) -> None:
    page.goto(web.url + "/")
    # 9 bins: no warm-up compiles this size
    fill(page, observed="5, 5, 5, 5, 5, 5, 5, 5, 5", background="4, 4, 4, 4, 4, 4, 4, 4, 4", uncertainty="0.2",
         signal="1, 1, 1, 1, 1, 1, 1, 1, 1", mode="relative")
    page.click("button[type=submit]", no_wait_after=True)
    note = page.get_by_test_id("computing")
    note.wait_for(state="visible", timeout=5_000)
    assert "Compiling the fit for 9 bins" in note.inner_text()
    shot(page, "quick-compiling", widths=("laptop",))
    page.get_by_test_id("result").wait_for(timeout=300_000)
    # the same size again: compiled, so only "Computing..."
    page.click("button[type=submit]", no_wait_after=True)
    note = page.get_by_test_id("computing")
    note.wait_for(state="visible", timeout=5_000)
    assert note.inner_text().startswith("Computing")
