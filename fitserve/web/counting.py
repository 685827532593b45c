"""Quick limits for a counting experiment: form values -> pyhf workspace -> CLs and upper limits.

The model is the one of ``pyhf.simplemodels.uncorrelated_background`` written
out as a full workspace (observations and a measurement included): per bin a
``signal`` sample scaled by the normfactor ``mu`` and a ``background`` sample
with an uncorrelated ``shapesys`` carrying the background uncertainty.  The
POI bounds are ``[0, mu_max]`` with ``mu_max`` large enough for the limit to
lie inside (see :func:`mu_upper_bound`), so the downloaded workspace gives the
same numbers with ``pyhf.infer.hypotest`` / ``upper_limit`` out of the box.

It is fitted in-process by :func:`fitserve.engine.run_scan`.  The compiled
fit depends only on the number of bins, so :class:`Warmup` compiles the
common sizes in a background thread when the web app starts.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from fitserve.engine import ScanOptions

log = logging.getLogger("fitserve.web")

#: Most bins a quick-limit model may have.
MAX_BINS = 50
#: Bin counts compiled in the background when the app starts.
WARM_BINS = (1, 2, 3)
#: When the quick-limit engine compiles (``FITSERVE_WEB_WARMUP``): at startup (in a background thread), on first use, never.
WARMUP_MODES = ("startup", "lazy", "off")


def warmup_mode() -> str:
    mode = os.environ.get("FITSERVE_WEB_WARMUP", "startup").strip().lower()
    return mode if mode in WARMUP_MODES else "startup"


FIELDS = ("observed", "background", "uncertainty", "signal")
#: How the quick limit is computed: qtilde at mu = 1, upper limits, the default 95% CL.
OPTIONS = ScanOptions(limits=True)
_SPLIT = re.compile(r"[,;\s]+")


@dataclass
class CountingInput:
    """The parsed form; ``errors`` maps a field name (or ``"form"``) to a message."""

    raw: dict[str, str]
    observed: list[float] = field(default_factory=list)
    background: list[float] = field(default_factory=list)
    uncertainty: list[float] = field(default_factory=list)  # absolute, per bin
    signal: list[float] = field(default_factory=list)
    mode: str = "absolute"
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def n_bins(self) -> int:
        return len(self.observed)


def _numbers(text: str) -> list[float]:
    parts = [p for p in _SPLIT.split(text.strip()) if p]
    out = []
    for p in parts:
        try:
            x = float(p)
        except ValueError:
            raise ValueError(f"{p!r} is not a number") from None
        if not math.isfinite(x):
            raise ValueError(f"{p!r} is not a finite number")
        out.append(x)
    return out


def parse_form(form: Mapping[str, Any]) -> CountingInput:
    """Check the four fields (comma-separated numbers, one per bin) and the uncertainty mode."""
    raw = {k: str(form.get(k, "") or "").strip() for k in FIELDS}
    raw["mode"] = str(form.get("mode") or "absolute")
    inp = CountingInput(raw=raw, mode=raw["mode"])
    if inp.mode not in ("absolute", "relative"):
        inp.errors["mode"] = "choose absolute (events) or relative (fraction of the background)"
    values: dict[str, list[float]] = {}
    for name in FIELDS:
        if not raw[name]:
            inp.errors[name] = "required: one number per bin, comma-separated"
            continue
        try:
            values[name] = _numbers(raw[name])
        except ValueError as exc:
            inp.errors[name] = str(exc)
            continue
        if not values[name]:
            inp.errors[name] = "required: one number per bin, comma-separated"
            del values[name]
            continue
        if len(values[name]) > MAX_BINS:
            inp.errors[name] = f"{len(values[name])} bins: at most {MAX_BINS}"
            del values[name]
    checks = {
        "observed": (lambda x: x >= 0, "observed counts cannot be negative"),
        "background": (lambda x: x > 0, "the expected background must be positive in every bin"),
        "uncertainty": (
            lambda x: x > 0,
            "the background uncertainty must be positive (use a small value if negligible)",
        ),
        "signal": (lambda x: x >= 0, "the expected signal cannot be negative"),
    }
    for name, (good, message) in checks.items():
        if name in values and not all(good(x) for x in values[name]):
            bad = next(x for x in values[name] if not good(x))
            inp.errors[name] = f"{message} (got {bad:g})"
            del values[name]
    if "signal" in values and not any(x > 0 for x in values["signal"]):
        inp.errors["signal"] = "the expected signal must be positive in at least one bin"
        del values["signal"]
    # bin counts: the observed field sets the number of bins (even if one of its values is bad)
    n_ref = len([p for p in _SPLIT.split(raw["observed"]) if p]) or None
    if n_ref and len(values.get("uncertainty", [])) == 1:  # one uncertainty (often "0.2" relative) for every bin
        values["uncertainty"] = values["uncertainty"] * n_ref
    for name in FIELDS[1:]:
        if name in values and n_ref is not None and len(values[name]) != n_ref:
            inp.errors[name] = f"{len(values[name])} value(s) but {n_ref} observed bin(s): give one value per bin"
            del values[name]
    if inp.errors:
        return inp
    inp.observed, inp.background, inp.signal = values["observed"], values["background"], values["signal"]
    unc = values["uncertainty"]
    inp.uncertainty = [u * b for u, b in zip(unc, inp.background)] if inp.mode == "relative" else unc
    return inp


def mu_upper_bound(inp: CountingInput) -> float:
    """An upper bound of the POI that surely contains the 95% CL limit (at least pyhf's 10).

    A generous bound on the number of signal events: the observed count plus
    ten standard deviations of (Poisson + background uncertainty), plus 10.
    """
    n, b = sum(inp.observed), sum(inp.background)
    db = math.sqrt(sum(u * u for u in inp.uncertainty))
    s_max = n + 10.0 * math.sqrt(n + b + db * db) + 10.0
    mu_max = s_max / sum(inp.signal)
    if mu_max <= 10.0:
        return 10.0
    return float(f"{mu_max:.2g}") * 2  # round, then keep a margin


def build_workspace(inp: CountingInput) -> dict[str, Any]:
    """The counting model as a full pyhf workspace (validated against pyhf's schema)."""
    import pyhf

    spec = {
        "channels": [
            {
                "name": "counting",
                "samples": [
                    {
                        "name": "signal",
                        "data": list(inp.signal),
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                    {
                        "name": "background",
                        "data": list(inp.background),
                        "modifiers": [{"name": "uncorr_bkguncrt", "type": "shapesys", "data": list(inp.uncertainty)}],
                    },
                ],
            }
        ],
        "observations": [{"name": "counting", "data": list(inp.observed)}],
        "measurements": [
            {
                "name": "quick_limit",
                "config": {"poi": "mu", "parameters": [{"name": "mu", "bounds": [[0.0, mu_upper_bound(inp)]]}]},
            }
        ],
        "version": "1.0.0",
    }
    pyhf.Workspace(spec)  # schema validation
    return spec


@dataclass
class QuickLimit:
    workspace: dict[str, Any]
    record: dict[str, Any]
    signal_total: float
    seconds: float

    @property
    def cls_obs(self) -> float | None:
        return self.record.get("CLs_obs")

    @property
    def excluded(self) -> bool | None:
        return OPTIONS.excluded(self.cls_obs)

    #: the CL of the verdict and the limits, as the page shows it ("95%"), and the CLs it is decided at
    cl_text = f"{100 * OPTIONS.confidence_level:g}%"
    exclusion_cls = OPTIONS.exclusion_cls

    @property
    def cls_exp(self) -> list[float | None]:
        return self.record.get("CLs_exp") or [None] * 5

    @property
    def mu_limit(self) -> dict[str, Any] | None:
        return self.record.get("upper_limit")

    @property
    def events_limit(self) -> dict[str, Any] | None:
        ul = self.mu_limit
        if not ul:
            return None
        scale = self.signal_total
        return {"obs": _times(ul.get("obs"), scale), "exp": [_times(x, scale) for x in ul.get("exp") or []]}


def _times(x: float | None, k: float) -> float | None:
    return None if x is None else x * k


#: One lock per bin count: a request waits for the warm-up compiling its size instead of compiling it twice.
_locks: dict[int, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(n_bins: int) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(n_bins, threading.Lock())


#: Bin counts this process has compiled the fit for: the page warns before a first (slow) one.
_compiled: set[int] = set()


def compiled_sizes() -> list[int]:
    return sorted(_compiled)


def compute(inp: CountingInput) -> QuickLimit:
    """CLs at mu = 1 and the upper limits at :data:`OPTIONS` (qtilde, asymptotics, 95% CL) with the engine."""
    from fitserve.engine import run_scan

    ws = build_workspace(inp)
    t0 = time.perf_counter()
    with _lock(inp.n_bins):
        out = run_scan(ws, None, OPTIONS)
        _compiled.add(inp.n_bins)
    record = next(iter(out["results"].values()))
    return QuickLimit(workspace=ws, record=record, signal_total=sum(inp.signal), seconds=time.perf_counter() - t0)


def example_input(n_bins: int) -> CountingInput:
    form = {
        "observed": ",".join(["12"] * n_bins),
        "background": ",".join(["10"] * n_bins),
        "uncertainty": ",".join(["2"] * n_bins),
        "signal": ",".join(["5"] * n_bins),
    }
    return parse_form(form)


class Warmup:
    """Compiles the engine for the common bin counts in a daemon thread (once per process)."""

    _started = False
    _guard = threading.Lock()
    done = threading.Event()
    _stop = threading.Event()
    warmed: dict[int, float] = {}

    @classmethod
    def start(cls, bins: tuple[int, ...] = WARM_BINS) -> bool:
        with cls._guard:
            if cls._started:
                return False
            cls._started = True
        threading.Thread(target=cls._run, args=(bins,), name="fitserve-web-warmup", daemon=True).start()
        return True

    @classmethod
    def _run(cls, bins: tuple[int, ...]) -> None:
        try:
            for n in bins:
                if cls._stop.is_set():
                    break
                t0 = time.perf_counter()
                compute(example_input(n))
                cls.warmed[n] = time.perf_counter() - t0
                log.info("quick-limit engine warmed up for %d bin(s) in %.1f s", n, cls.warmed[n])
        except Exception:  # pragma: no cover - a failed warm-up only costs the first user time
            log.exception("quick-limit warm-up failed")
        finally:
            cls.done.set()

    @classmethod
    def shutdown(cls, timeout: float = 120.0) -> None:
        """Stop after the compilation in progress and wait for it.

        The thread is a daemon; left inside XLA while the interpreter exits,
        it aborts the process (SIGABRT, "terminate called ..."), so the server
        waits for it on shutdown.
        """
        cls._stop.set()
        if cls._started:
            cls.done.wait(timeout)
