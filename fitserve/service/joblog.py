"""One log line per job in ``fitserve up`` / ``fitserve serve``: when it is submitted and when it ends.

Without it the terminal of a running service stays silent across any number of jobs.
The API process watches the jobs it accepted (a poll of their status once a second in
one daemon thread) and logs on the ``fitserve.jobs`` logger, which the commands send
to stderr.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from fitserve.service.describe import options_text

log = logging.getLogger("fitserve.jobs")

FINAL = ("done", "failed", "cancelled")


class JobLog:
    """Logs ``submitted`` now and ``done``/``failed``/``cancelled`` (counts, times) once the job ends."""

    def __init__(self, store: Any, interval: float = 1.0) -> None:
        self.store, self.interval = store, interval
        self._watched: dict[str, str] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def submitted(self, job_id: str, user: str, total: int, to_compute: int, options: dict[str, Any]) -> None:
        log.info(
            "job %s submitted by %s: %d hypotheses (%d cached, %d to compute); %s",
            job_id,
            user,
            total,
            total - to_compute,
            to_compute,
            options_text(options),
        )
        with self._lock:
            self._watched[job_id] = user
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fitserve-joblog", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self._watched)
            for job_id in ids:
                try:
                    st = self.store.status(job_id, max_errors=0)
                except Exception:  # Redis down: try again next round
                    break
                if st is None or st["state"] in FINAL:
                    with self._lock:
                        self._watched.pop(job_id, None)
                    if st is not None:
                        log.info("%s", ended_line(st))


def ended_line(st: dict[str, Any]) -> str:
    p, c, t = st["progress"], st["counts"], st["timings"]
    return (
        f"job {st['id']} {st['state']}: {p['done']}/{p['total']} hypotheses ({c['computed']} computed, "
        f"{c['cached']} cached, {c['errors']} errors, {c['not_converged']} not converged) "
        f"in {t['total_s']:.1f} s (queued {t['queued_s']:.1f} s, compute {t['compute_s']:.1f} s)"
    )


def log_to_stderr() -> None:
    """Send the job lines to stderr (the commands run uvicorn at warning level, logging unconfigured)."""
    if any(getattr(h, "_fitserve", False) for h in log.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler._fitserve = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
