"""``fitserve scan``: the engine on this machine, no service (workspace and patchset files in, results JSON out)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from fitserve.cli.common import MODIFIER_SETTINGS_HELP, fail, parse_modifier_settings
from fitserve.engine import InputError


def register(app: typer.Typer) -> None:
    """Add ``fitserve scan`` to the main app."""
    app.command()(scan)


def scan(
    workspace: Path = typer.Argument(
        ..., metavar="WORKSPACE", help="Background-only workspace (with PATCHSET) or one full workspace."
    ),
    patchset: Optional[Path] = typer.Argument(
        None, metavar="[PATCHSET]", help="pyhf PatchSet JSON with one patch per signal hypothesis."
    ),
    output: Path = typer.Option(Path("results.json"), "-o", "--output", help="Where to write the results JSON."),
    limits: bool = typer.Option(
        False, "--limits", help="Also compute upper limits on the POI at --cl (observed and expected band)."
    ),
    test_stat: str = typer.Option("qtilde", "--test-stat", help="qtilde, q or q0 (discovery: p0 instead of CLs)."),
    poi_test: float = typer.Option(1.0, "--poi-test", help="POI value tested for CLs."),
    confidence_level: float = typer.Option(0.95, "--cl", help="Confidence level of the exclusion and the limits."),
    measurement: Optional[str] = typer.Option(
        None, "--measurement", help="Measurement name in the workspace (default: the first)."
    ),
    patch: Optional[list[str]] = typer.Option(
        None, "--patch", help="Only this patch; repeat for several (--patch A --patch B)."
    ),
    name: Optional[str] = typer.Option(
        None, "--name", help="Name of the hypothesis of a single full workspace (default: the file name)."
    ),
    cls_only: bool = typer.Option(False, "--cls-only", help="Print only the observed CLs per hypothesis."),
    modifier_settings: str = typer.Option("atlas", "--modifier-settings", help=MODIFIER_SETTINGS_HELP),
    restarts: Optional[int] = typer.Option(
        None,
        "--restarts",
        help="Extra free and fixed-POI fits per hypothesis from spread starts (local minima; default: 4 for models of at most 8 free parameters, else 0).",
    ),
    limit_max: Optional[float] = typer.Option(
        None, "--limit-max", help="How far the limit search goes (default: 10x the POI's upper bound)."
    ),
    calculator: str = typer.Option(
        "asymptotics", "--calculator", help="asymptotics (default) or toybased (pseudo-experiments)."
    ),
    n_toys: int = typer.Option(
        1000, "--n-toys", help="With --calculator toybased: toys per distribution (s+b and b-only)."
    ),
    seed: int = typer.Option(0, "--seed", help="With --calculator toybased: random seed (same seed, same numbers)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Compute CLs (and optionally upper limits) for every hypothesis, locally."""
    from fitserve.engine import ScanOptions, load_json, run_scan, validate_patchset

    try:
        options = ScanOptions(
            test_stat=test_stat,
            poi_test=poi_test,
            limits=limits,
            cls_only=cls_only,
            confidence_level=confidence_level,
            modifier_settings=parse_modifier_settings(modifier_settings),
            measurement=measurement,
            restarts=restarts,
            limit_max=limit_max,
            calculator=calculator,
            n_toys=n_toys,
            seed=seed,
        )
    except ValueError as exc:
        fail(f"bad option: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}")
    try:
        ws = load_json(workspace)
        patches = None
        if patchset is not None:
            patches = validate_patchset(load_json(patchset), where=str(patchset))["patches"]
        bar = _progress_bar() if progress else None
        try:
            result = run_scan(
                ws,
                patches,
                options,
                names=patch,
                progress=bar.update if bar else None,
                where=str(workspace),
                on_event=_compile_notice(bar),
            )
        finally:
            if bar:
                bar.close()
    except InputError as exc:
        fail(str(exc))
    if patchset is None:
        (rec,) = result["results"].values()  # one full workspace: one hypothesis, named after the file or --name
        result["results"] = {name or workspace.stem: rec}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    if cls_only:
        for key, rec in result["results"].items():
            typer.echo(f"{key}\t{rec['CLs_obs']}")
    else:
        typer.echo(
            f"{scan_summary(result, options)}; compile {result['timing']['compile_s']:.1f} s, "
            f"fit {result['timing']['fit_s']:.1f} s -> {output}",
            err=True,
        )


#: One-sided p-values of 3 and 5 sigma (evidence, discovery).
P_3SIGMA, P_5SIGMA = 1.3498980316301e-3, 2.866515718791939e-7


def scan_summary(result: dict[str, Any], options: Any) -> str:
    """One line: exclusions at the job's CL, or for q0 (discovery) the p0 values in significance terms."""
    recs = [r for r in result["results"].values()]
    ok = [r for r in recs if r.get("converged") and r.get("CLs_obs") is not None]
    bad = len(recs) - len(ok)
    if options.test_stat != "q0":
        excluded = sum(r["CLs_obs"] < 1 - options.confidence_level for r in ok)
        return f"{len(recs)} hypotheses, {excluded} excluded at {options.confidence_level:.0%} CL, {bad} not converged"
    from scipy.stats import norm

    text = f"{len(recs)} hypotheses (discovery, q0), {bad} not converged"
    if ok:
        best_name, best = min(
            ((k, r) for k, r in result["results"].items() if r in ok), key=lambda kv: kv[1]["CLs_obs"]
        )
        p0 = best["CLs_obs"]
        text += (
            f"; smallest p0 {p0:.3g} (Z = {norm.isf(p0):.2f} sigma) at {best_name}; "
            f"{sum(r['CLs_obs'] < P_3SIGMA for r in ok)} with p0 below 3 sigma, {sum(r['CLs_obs'] < P_5SIGMA for r in ok)} below 5 sigma"
        )
    return text


def _compile_notice(bar: Optional[_progress_bar]) -> Any:
    """``on_event`` for the engine: one line when a model structure compiles (the slow first step)."""

    def on_event(event: str, info: dict[str, Any]) -> None:
        if event != "compile":
            return
        line = (
            f"compiling the fit for this model structure ({info.get('n_params', '?')} parameters, "
            f"{info.get('n_bins', '?')} bins: 3-20 s the first time, under 1 s from the cache)..."
        )
        if bar is not None:
            bar.write(line)
        else:
            typer.echo(line, err=True)

    return on_event


class _progress_bar:
    """tqdm on stderr, driven by the engine's ``progress(done, total)`` callback (first called with 0).

    ``smoothing=0``: the rate is the average since the start, not a burst over the last
    few milliseconds after a batch of fits lands at once.
    """

    def __init__(self) -> None:
        self._bar = None

    def update(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, unit="hyp", file=sys.stderr, disable=None, smoothing=0, mininterval=0.5)
        self._bar.n = done
        self._bar.refresh()

    def write(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
