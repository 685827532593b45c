"""``fitserve submit | status | results | plot | cancel | jobs``: the client on the command line.

Added to the ``fitserve`` app by :func:`register`.  The server URL and the
token come from ``--server`` / ``--token``, else ``FITSERVE_URL`` /
``FITSERVE_TOKEN``, else the client config file (``~/.config/fitserve/client.toml``
or ``FITSERVE_CLIENT_CONFIG``), else ``http://127.0.0.1:8000``.
Errors print one line ``fitserve: error: <where>: <message>`` on stderr and exit 1.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from fitserve.cli.common import parse_modifier_settings
from fitserve.service.describe import options_text

SERVER_HELP = "Server URL (default: FITSERVE_URL, the client config file, http://127.0.0.1:8000)."
TOKEN_HELP = "API token, sent as 'Authorization: Bearer' (default: FITSERVE_TOKEN, the client config file)."


@contextmanager
def _client(server: Optional[str], token: Optional[str]) -> Iterator[Any]:
    """A Client; client errors become one line on stderr and exit code 1."""
    from fitserve.client import Client, FitserveError

    try:
        with Client(server, token) as client:
            yield client
    except FitserveError as exc:
        typer.echo(f"fitserve: error: {exc}", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted (a submitted job keeps running on the server)", err=True)
        raise typer.Exit(130)


def _progress(flag: Optional[bool]) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def _fmt_s(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _summary(st: dict[str, Any]) -> str:
    p, c, t = st["progress"], st["counts"], st["timings"]
    text = (
        f"job {st['id']} {st['state']}: {p['done']}/{p['total']} hypotheses "
        f"({c['computed']} computed, {c['cached']} cached, {c['errors']} errors, {c['not_converged']} not converged)"
    )
    if st["state"] in ("done", "failed", "cancelled"):
        text += f" in {_fmt_s(t.get('total_s'))}"
    return text


def _settle(job: Any, before: dict[str, Any], timeout: float = 15.0) -> tuple[dict[str, Any], bool]:
    """After a cancel: poll until chunks that were already running have stopped recording (2 s quiet).

    The cancel answer is a snapshot; results of chunks in flight keep arriving for a
    moment, so reporting that snapshot ("16/25") contradicted the next ``status`` (25/25).
    Returns the last status and whether it had settled.
    """
    import time

    st, last, stable_since = before, before["progress"]["done"], time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() - stable_since < 2.0:
        if time.monotonic() > deadline:
            return st, False
        time.sleep(0.5)
        st = job.status()
        if st["progress"]["done"] != last:
            last, stable_since = st["progress"]["done"], time.monotonic()
    return st, True


def _wait(job: Any, progress: Optional[bool], timeout: Optional[float]) -> dict[str, Any]:
    st = job.wait(progress=_progress(progress), timeout=timeout)
    typer.echo(_summary(st), err=True)
    for err in st.get("errors") or []:
        typer.echo(f"  {err.get('hypothesis') or 'job'}: {err.get('error')}", err=True)
    return st


def _check_suffix(path: Optional[Path], kind: str) -> None:
    """Refuse an output file name whose format is unknown before making any request."""
    from fitserve.client._core import PLOT_FORMATS, RESULT_FORMATS, suffix_format

    if kind == "plot":
        suffix_format(path, PLOT_FORMATS, "png", "plot")
    else:
        suffix_format(path, RESULT_FORMATS, "json", "output")


def register(app: typer.Typer) -> None:
    @app.command(rich_help_panel="Client")
    def submit(
        workspace: Path = typer.Argument(
            ..., help="Background-only workspace (with PATCHSET) or one full workspace (JSON)."
        ),
        patchset: Optional[Path] = typer.Argument(None, help="pyhf PatchSet JSON, one patch per signal hypothesis."),
        server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
        token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
        wait: bool = typer.Option(False, "--wait", help="Wait for the job to finish (progress bar on stderr)."),
        progress: Optional[bool] = typer.Option(
            None, "--progress/--no-progress", help="Progress bar while waiting (default: if stderr is a terminal)."
        ),
        timeout: Optional[float] = typer.Option(
            None, "--timeout", help="With --wait: give up waiting after this many seconds (the job keeps running)."
        ),
        output: Optional[Path] = typer.Option(
            None, "-o", "--output", help="With --wait: write the results here (.json or .csv)."
        ),
        test_stat: Optional[str] = typer.Option(None, "--test-stat", help="qtilde (default), q or q0."),
        poi_test: Optional[float] = typer.Option(None, "--poi-test", help="POI value tested for CLs (default 1)."),
        limits: bool = typer.Option(False, "--limits", help="Also compute upper limits on the POI."),
        cls_only: bool = typer.Option(False, "--cls-only", help="Only the observed CLs per hypothesis."),
        confidence_level: Optional[float] = typer.Option(None, "--cl", help="Confidence level (default 0.95)."),
        modifier_settings: Optional[str] = typer.Option(
            None, "--modifier-settings", help="atlas (default), legacy/pyhf, or a pyhf-style JSON object (as for scan)."
        ),
        measurement: Optional[str] = typer.Option(None, "--measurement", help="Measurement name in the workspace."),
        patch: Optional[list[str]] = typer.Option(
            None, "--patch", help="Only this patch; repeat for several (--patch A --patch B)."
        ),
        calculator: Optional[str] = typer.Option(
            None, "--calculator", help="asymptotics (default) or toybased (pseudo-experiments)."
        ),
        n_toys: Optional[int] = typer.Option(
            None, "--n-toys", help="With --calculator toybased: toys per distribution (default 1000)."
        ),
        seed: Optional[int] = typer.Option(None, "--seed", help="With --calculator toybased: random seed (default 0)."),
    ) -> None:
        """Submit a CLs scan to a fitserve server; prints the job id on stdout."""
        if output is not None and not wait:
            typer.echo("fitserve: error: -o/--output needs --wait (or use: fitserve results JOB -o FILE)", err=True)
            raise typer.Exit(2)
        if output is not None:
            with _client(server, token):
                _check_suffix(output, "output")
        options = {
            "test_stat": test_stat,
            "poi_test": poi_test,
            "limits": limits or None,
            "cls_only": cls_only or None,
            "confidence_level": confidence_level,
            "modifier_settings": parse_modifier_settings(modifier_settings),
            "measurement": measurement,
            "patches": list(patch) if patch else None,
            "calculator": calculator,
            "n_toys": n_toys,
            "seed": seed,
        }
        with _client(server, token) as client:
            job = client.submit(workspace, patchset, **options)
            info = job.info
            typer.echo(
                f"submitted job {job.id} to {client.url}: {info['total']} hypotheses "
                f"({info['cached']} cached, {info['to_compute']} to compute)",
                err=True,
            )
            typer.echo(job.id)
            if wait:
                st = _wait(job, progress, timeout)
                if output is not None and st["state"] == "done":
                    typer.echo(f"wrote {job.save_results(output)}", err=True)
                if st["state"] != "done":
                    raise typer.Exit(1)

    @app.command(rich_help_panel="Client")
    def status(
        job_id: str = typer.Argument(..., metavar="JOB", help="Job id (from fitserve submit)."),
        server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
        token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the server's status document as JSON."),
        wait: bool = typer.Option(False, "--wait", help="Wait for the job to finish first."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar while waiting."),
    ) -> None:
        """State, progress, counts and timings of a job."""
        with _client(server, token) as client:
            job = client.job(job_id)
            st = job.wait(progress=_progress(progress)) if wait else job.status()
        if as_json:
            typer.echo(json.dumps(st, indent=1))
            return
        p, c, t = st["progress"], st["counts"], st["timings"]
        opts = " ".join(f"{k}={v}" for k, v in st.get("options", {}).items() if v is not None)
        lines = [
            f"job       {st['id']}",
            f"state     {st['state']}",
            f"progress  {p['done']}/{p['total']} ({p['fraction']:.0%})",
            *(
                [f"toys      {st['toys']['done']:,}/{st['toys']['total']:,} ({st['toys']['cached']:,} from the cache)"]
                if st.get("toys")
                else []
            ),
            f"counts    {c['computed']} computed, {c['cached']} cached, {c['errors']} errors, {c['not_converged']} not converged",
            f"timings   queued {_fmt_s(t.get('queued_s'))}, running {_fmt_s(t.get('run_s'))}, compute {_fmt_s(t.get('compute_s'))}",
            f"labels    {', '.join(st.get('labels') or []) or '-'}",
            f"options   {opts}",
        ]
        lines += [f"error     {e.get('hypothesis') or 'job'}: {e.get('error')}" for e in st.get("errors") or []]
        typer.echo("\n".join(lines))

    @app.command(rich_help_panel="Client")
    def results(
        job_id: str = typer.Argument(..., metavar="JOB", help="Job id."),
        output: Optional[Path] = typer.Option(
            None,
            "-o",
            "--output",
            help="Write to this file: .json (the results document) or .csv (one row per hypothesis). Default: JSON on stdout.",
        ),
        server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
        token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
        wait: bool = typer.Option(False, "--wait", help="Wait for the job to finish first."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar while waiting."),
    ) -> None:
        """Per-hypothesis results of a job (partial while it runs)."""
        with _client(server, token) as client:
            _check_suffix(output, "output")
            job = client.job(job_id)
            if wait:
                _wait(job, progress, None)
            st = job.status()
            if output is None:
                typer.echo(json.dumps(job.results(), indent=1))
            else:
                typer.echo(f"wrote {job.save_results(output)}", err=True)
        if st["state"] != "done":
            p = st["progress"]
            typer.echo(
                f"warning: job {st['state']}, results are partial ({p['done']}/{p['total']} hypotheses)", err=True
            )

    @app.command(rich_help_panel="Client")
    def plot(
        job_id: str = typer.Argument(..., metavar="JOB", help="Job id."),
        output: Path = typer.Option(
            Path("exclusion.png"), "-o", "--output", help="Where to write the plot: .png, .svg or .pdf."
        ),
        server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
        token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
        wait: bool = typer.Option(False, "--wait", help="Wait for the job to finish first."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar while waiting."),
    ) -> None:
        """The exclusion plot of a job (observed, expected ±1σ, grid points)."""
        with _client(server, token) as client:
            job = client.job(job_id)
            _check_suffix(output, "plot")
            if wait:
                _wait(job, progress, None)
            typer.echo(f"wrote {job.plot(output)}", err=True)

    @app.command(rich_help_panel="Client")
    def cancel(
        job_id: str = typer.Argument(..., metavar="JOB", help="Job id."),
        server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
        token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
    ) -> None:
        """Cancel a queued or running job."""
        with _client(server, token) as client:
            job = client.job(job_id)
            before = job.cancel()
            after, settled = _settle(job, before)
        done0, done, total = before["progress"]["done"], after["progress"]["done"], after["progress"]["total"]
        text = f"cancelled job {job_id}: {done}/{total} hypotheses have results"
        if done > done0:
            text += f" ({done - done0} from chunks that were already running when it was cancelled)"
        text += f", {total - done} not run"
        if not settled:
            text += "; chunks still running may add more (see: fitserve status JOB)"
        typer.echo(text)

    @app.command(rich_help_panel="Client")
    def jobs(
        limit: int = typer.Option(20, "--limit", "-n", help="How many, newest first."),
        server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
        token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
    ) -> None:
        """Recent jobs on the server."""
        import datetime as dt

        with _client(server, token) as client:
            found = client.jobs(limit=limit)
        for job in found:
            st = job.info
            created = dt.datetime.fromtimestamp(st["timings"]["created"]).strftime("%Y-%m-%d %H:%M:%S")
            p = st["progress"]
            typer.echo(
                f"{job.id}  {created}  {st['state']:<9}  {p['done']:>5}/{p['total']:<5}  {options_text(st.get('options') or {})}"
            )
