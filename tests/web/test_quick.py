"""The quick-limit form in headless Chromium: numbers shown equal the engine's; bad input explained inline."""

from __future__ import annotations

import json
import os
import time

import pytest

from fitserve.engine.scan import scan
from fitserve.web import counting
from fitserve.web.routes import fmt

from .conftest import SHOTS

EXP = range(5)  # CLs_exp order: -2σ, -1σ, median, +1σ, +2σ


class CompileCounter:
    """JAX traces, compilations and compilation-cache loads in this process (the server's too) while ``with`` it.

    "Fast" is a structural fact, not a clock reading: a warmed-up size is answered without compiling.
    """

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/backend_compile_duration",
        "/jax/compilation_cache/cache_retrieval_time_sec",
    )
    _active: list[CompileCounter] = []
    _registered = False

    def __init__(self) -> None:
        self.events: list[str] = []

    @classmethod
    def _listen(cls, event: str, _seconds: float, **_: object) -> None:
        if event in cls.EVENTS:
            for counter in cls._active:
                counter.events.append(event)

    def __enter__(self) -> CompileCounter:
        import jax

        if not CompileCounter._registered:
            jax.monitoring.register_event_duration_secs_listener(CompileCounter._listen)
            CompileCounter._registered = True
        CompileCounter._active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        CompileCounter._active.remove(self)


def fill(page, observed: str, background: str, uncertainty: str, signal: str, mode: str = "absolute") -> None:
    page.fill("#observed", observed)
    page.fill("#background", background)
    page.fill("#uncertainty", uncertainty)
    page.check(f"input[name=mode][value={mode}]")
    page.fill("#signal", signal)


def shown(page, testid: str) -> tuple[str, float | None]:
    cell = page.get_by_test_id(testid)
    raw = cell.get_attribute("data-value")
    return cell.inner_text().strip(), (float(raw) if raw not in (None, "", "None") else None)


def assert_shows(page, form: dict[str, str]) -> None:
    """Every number on the page equals the engine's for the same counts (text to 4 digits, attribute exactly)."""
    inp = counting.parse_form(form)
    rec = scan(counting.build_workspace(inp), None, {"limits": True})["results"]["quick_limit"]
    s_tot = sum(inp.signal)
    want = {
        "cls-obs": rec["CLs_obs"],
        "mu-obs": rec["upper_limit"]["obs"],
        "events-obs": rec["upper_limit"]["obs"] * s_tot,
    }
    for k in EXP:
        want[f"cls-exp-{k}"] = rec["CLs_exp"][k]
        want[f"mu-exp-{k}"] = rec["upper_limit"]["exp"][k]
        want[f"events-exp-{k}"] = rec["upper_limit"]["exp"][k] * s_tot
    for testid, value in want.items():
        text, exact = shown(page, testid)
        assert text == fmt(value), (testid, text, value)
        assert exact == pytest.approx(value, rel=1e-9), testid
    verdict = page.get_by_test_id("verdict").inner_text()
    assert verdict == ("Excluded" if rec["CLs_obs"] < 0.05 else "Not excluded")


@pytest.mark.timeout(600)
def test_counting_form_shows_the_engines_numbers_fast(page, web, shot):
    assert counting.Warmup.done.wait(420), "engine warm-up did not finish"
    page.goto(web.url + "/")
    shot(page, "quick-empty")

    # one bin, absolute uncertainty: the first request after the warm-up
    form = {"observed": "12", "background": "10", "uncertainty": "2", "signal": "5", "mode": "absolute"}
    fill(page, **form)
    t0 = time.perf_counter()
    with CompileCounter() as first_compiles:
        page.click("button[type=submit]")
        page.get_by_test_id("result").wait_for()
    first = time.perf_counter() - t0
    first_server = page.get_by_test_id("compute-seconds").inner_text()
    assert_shows(page, form)
    shot(page, "quick-result-1bin")

    # three bins, relative uncertainty (bin count warmed up too)
    form = {
        "observed": "3, 8, 20",
        "background": "2.5, 6, 18",
        "uncertainty": "0.3, 0.2, 0.1",
        "signal": "1, 4, 6",
        "mode": "relative",
    }
    fill(page, **form)
    t0 = time.perf_counter()
    with CompileCounter() as second_compiles:
        page.click("button[type=submit]")
        page.wait_for_url("**signal=1%2C+4%2C+6**")
        page.get_by_test_id("result").wait_for()
    second = time.perf_counter() - t0
    second_server = page.get_by_test_id("compute-seconds").inner_text()
    assert_shows(page, form)
    # the form keeps what was typed
    assert page.input_value("#observed") == form["observed"] and page.is_checked("input[name=mode][value=relative]")
    shot(page, "quick-result-3bins")

    # the workspace download is the model that gave these numbers, a valid pyhf workspace
    with page.expect_download() as dl:
        page.get_by_test_id("download-workspace").click()
    ws = json.loads(open(dl.value.path()).read())
    assert ws == counting.build_workspace(counting.parse_form(form))
    import pyhf

    pyhf.Workspace(ws)

    (SHOTS / "quick-timings.txt").write_text(
        f"warm-up (s per bin count): {counting.Warmup.warmed}\n"
        f"click -> result shown, 1 bin (first request): {first:.2f} s (engine in the server: {first_server} s)\n"
        f"click -> result shown, 3 bins: {second:.2f} s (engine in the server: {second_server} s)\n"
        f"load average: {os.getloadavg()}\n"
    )
    # fast because nothing compiled: the warm-up had compiled both sizes (the times above are figures, not asserts)
    assert first_compiles.events == [] and second_compiles.events == [], (first_compiles.events, second_compiles.events)


def test_counting_form_explains_bad_input_next_to_the_field(page, web, shot):
    page.goto(web.url + "/")
    fill(page, observed="-1, 4", background="ten, 5", uncertainty="1, 1", signal="2, 3, 4")
    page.click("button[type=submit]")
    page.get_by_test_id("error-observed").wait_for()
    expect = {
        "observed": "cannot be negative",
        "background": "'ten' is not a number",
        "signal": "3 value(s) but 2 observed bin(s)",
    }
    for name, text in expect.items():
        err = page.locator(f".field:has(#{name}) [data-testid=error-{name}]")
        assert text in err.inner_text(), name
        assert page.get_attribute(f"#{name}", "aria-invalid") == "true"
    assert page.get_by_test_id("error-uncertainty").count() == 0
    assert page.get_by_test_id("result").count() == 0
    # nothing is lost from the form
    assert [page.input_value(f"#{n}") for n in counting.FIELDS] == ["-1, 4", "ten, 5", "1, 1", "2, 3, 4"]
    shot(page, "quick-errors")

    fill(page, observed="4", background="5", uncertainty="0", signal="0")
    page.click("button[type=submit]")
    page.get_by_test_id("error-uncertainty").wait_for()
    assert "must be positive" in page.get_by_test_id("error-uncertainty").inner_text()
    assert "at least one bin" in page.get_by_test_id("error-signal").inner_text()
