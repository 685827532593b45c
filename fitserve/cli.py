"""The ``fitserve`` command line.

``scan`` runs the engine locally.  The service, client and endpoint commands
live beside the code they drive and register themselves here, so this module
stays a thin table of contents.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from fitserve.engine.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Batched CLs fits of pyhf likelihoods, locally or as a service.")


@app.callback()
def main() -> None:
    """Batched CLs fits of pyhf likelihoods, locally or as a service."""


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error on stderr and exit non-zero."""
    typer.echo(f"fitserve: error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def scan(
    workspace: Path = typer.Argument(..., help="Background-only workspace (with PATCHSET) or one full workspace."),
    patchset: Optional[Path] = typer.Argument(None, help="pyhf PatchSet JSON with one patch per signal hypothesis."),
    output: Path = typer.Option(Path("results.json"), "-o", "--output", help="Where to write the results JSON."),
    limits: bool = typer.Option(False, "--limits", help="Also compute 95% CL upper limits on the POI (observed and expected band)."),
    test_stat: str = typer.Option("qtilde", "--test-stat", help="qtilde, q or q0."),
    poi_test: float = typer.Option(1.0, "--poi-test", help="POI value tested for CLs."),
    patch: Optional[list[str]] = typer.Option(None, "--patch", help="Only these patches (repeatable)."),
    cls_only: bool = typer.Option(False, "--cls-only", help="Print only the observed CLs per hypothesis."),
    modifier_settings: str = typer.Option("atlas", "--modifier-settings", help="'atlas' (normsys code4, histosys code4p) or 'pyhf' (code1, code0)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Compute CLs (and optionally upper limits) for every hypothesis, locally."""
    from fitserve.engine.inputs import load_json, validate_patchset
    from fitserve.engine.options import ScanOptions
    from fitserve.engine.scan import scan as run_scan

    try:
        options = ScanOptions(
            test_stat=test_stat, poi_test=poi_test, limits=limits, cls_only=cls_only, modifier_settings=modifier_settings
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
            result = run_scan(ws, patches, options, names=patch, progress=bar.update if bar else None, where=str(workspace))
        finally:
            if bar:
                bar.close()
    except InputError as exc:
        fail(str(exc))
    output.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    if cls_only:
        for name, rec in result["results"].items():
            typer.echo(f"{name}\t{rec['CLs_obs']}")
    else:
        n = len(result["results"])
        bad = sum(not r["converged"] for r in result["results"].values())
        excluded = sum(1 for r in result["results"].values() if r["converged"] and r["CLs_obs"] is not None and r["CLs_obs"] < 1 - options.confidence_level)
        typer.echo(
            f"{n} hypotheses, {excluded} excluded at {options.confidence_level:.0%} CL, {bad} not converged; "
            f"compile {result['timing']['compile_s']:.1f} s, fit {result['timing']['fit_s']:.1f} s -> {output}",
            err=True,
        )


class _progress_bar:
    """tqdm on stderr, driven by the engine's ``progress(done, total)`` callback."""

    def __init__(self) -> None:
        self._bar = None

    def update(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, unit="hyp", file=sys.stderr, disable=None)
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _register_subcommands() -> None:
    """Let the service, client and endpoint packages add their commands."""
    import importlib

    for module in ("fitserve.generate_cli", "fitserve.service.commands", "fitserve.service.token_commands", "fitserve.client.commands", "fitserve.endpoint_commands"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module or (exc.name and module.startswith(exc.name + ".")):
                continue  # that part of fitserve is not built yet
            raise
        mod.register(app)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    app()
