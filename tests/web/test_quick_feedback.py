"""The quick limit: one uncertainty for every bin, and a message while a new bin count compiles."""

from __future__ import annotations

import pytest

from fitserve.web import counting

from .test_quick import fill


def test_one_relative_uncertainty_applies_to_every_bin() -> None:
    one = counting.parse_form(
        {
            "observed": "3, 8, 20",
            "background": "2.5, 6, 18",
            "uncertainty": "0.2",
            "signal": "1, 4, 6",
            "mode": "relative",
        }
    )
    each = counting.parse_form(
        {
            "observed": "3, 8, 20",
            "background": "2.5, 6, 18",
            "uncertainty": "0.2, 0.2, 0.2",
            "signal": "1, 4, 6",
            "mode": "relative",
        }
    )
    assert one.ok and one.uncertainty == each.uncertainty == pytest.approx([0.5, 1.2, 3.6])
    two = counting.parse_form(
        {
            "observed": "3, 8, 20",
            "background": "2.5, 6, 18",
            "uncertainty": "0.2, 0.3",
            "signal": "1, 4, 6",
            "mode": "relative",
        }
    )
    assert "give one value per bin" in two.errors["uncertainty"]


def test_a_first_limit_for_a_new_bin_count_says_it_compiles(page, web, shot) -> None:
    page.goto(web.url + "/")
    # 9 bins: no warm-up compiles this size
    fill(
        page,
        observed="5, 5, 5, 5, 5, 5, 5, 5, 5",
        background="4, 4, 4, 4, 4, 4, 4, 4, 4",
        uncertainty="0.2",
        signal="1, 1, 1, 1, 1, 1, 1, 1, 1",
        mode="relative",
    )
    hidden, text = submit(page)
    assert not hidden and "Compiling the fit for 9 bins" in text, text
    page.get_by_test_id("result").wait_for(timeout=300_000)
    # the same size again: compiled, so only "Computing..."
    hidden, text = submit(page)
    assert not hidden and text.startswith("Computing"), text
    page.get_by_test_id("result").wait_for(timeout=60_000)
    shot(page, "quick-9-bins-one-uncertainty")


def submit(page) -> tuple[bool, str]:
    """Submit the form as the button does and read the note the page shows while it waits for the answer."""
    return page.evaluate("""() => {
        document.getElementById("quick-form").requestSubmit();
        const note = document.getElementById("computing");
        return [note.hidden, note.textContent];
    }""")
