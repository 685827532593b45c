"""``fitserve generate``: write example workspaces and synthetic signal grids.

Kept apart from :mod:`fitserve.generate` so the generator stays importable
without typer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from fitserve.engine import InputError

generate_app = typer.Typer(no_args_is_help=True, help="Write example workspaces and synthetic signal patchsets.")


def _fail(message: str) -> None:
    """One line on stderr (pyhf's schema messages span several), exit 2."""
    parts = (part.strip() for part in str(message).splitlines())
    line = "; ".join(part for part in parts if part and not part.endswith(":"))
    typer.echo(f"fitserve: error: {line}", err=True)
    raise typer.Exit(2)


@generate_app.command("example")
def example(
    outdir: Path = typer.Argument(..., help="Folder to write BkgOnly.json, patchset.json and single.json into."),
    grid: int = typer.Option(5, "--grid", min=1, help="N for an N x N signal grid."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (data fluctuation, systematics)."),
) -> None:
    """Write the synthetic example workspace, its signal grid and one full workspace."""
    from fitserve.generate import write_example

    try:
        paths = write_example(outdir, grid=grid, seed=seed)
    except OSError as exc:
        _fail(f"{outdir}: cannot write: {exc.strerror}")
    typer.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)


@generate_app.command("signal")
def signal(
    bkg: Path = typer.Argument(..., help="Background-only pyhf workspace (JSON)."),
    output: Path = typer.Option(Path("patchset.json"), "-o", "--output", help="Where to write the patchset."),
    n_parent: int = typer.Option(8, "--n-parent", min=1, help="Grid points along the parent mass."),
    n_lsp: int = typer.Option(8, "--n-lsp", min=1, help="Grid points along the LSP mass."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (systematics chosen, MC-stat sizes)."),
    strength: float = typer.Option(
        1.0, "--strength", help="Scale all signal yields (1: about 40% of the grid excluded)."
    ),
    channel: Optional[list[str]] = typer.Option(
        None, "--channel", help="Signal channels (repeatable; default: the SR channels)."
    ),
    hepdata: Optional[str] = typer.Option(
        None, "--hepdata", help="INSPIRE id of the analysis (insNNNNNNN) for the metadata."
    ),
) -> None:
    """Write a synthetic signal patchset (2-D mass grid) for a background-only workspace."""
    from fitserve.engine import load_json, validate_patchset, validate_workspace
    from fitserve.generate import NO_HEPDATA_RECORD, default_grid, dumps, signal_patchset

    if strength <= 0:
        _fail("--strength must be positive")
    if hepdata is not None and not re.fullmatch(r"ins[0-9]{7}", hepdata):
        _fail(f"--hepdata must look like ins1234567, not {hepdata!r}")
    try:
        spec = validate_workspace(load_json(bkg), where=str(bkg))
        try:
            patchset = signal_patchset(
                spec,
                default_grid(n_parent, n_lsp),
                channels=channel,
                seed=seed,
                strength=strength,
                hepdata=hepdata or NO_HEPDATA_RECORD,
            )
        except (ValueError, KeyError) as exc:
            raise InputError(f"cannot add a signal: {exc}", where=str(bkg)) from exc
        validate_patchset(patchset, where="generated patchset")
    except InputError as exc:
        _fail(str(exc))
    try:
        output.write_text(dumps(patchset))
    except OSError as exc:
        _fail(f"{output}: cannot write: {exc.strerror}")
    typer.echo(f"wrote {len(patchset['patches'])} signal patches -> {output}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``fitserve generate`` to the main app."""
    app.add_typer(generate_app, name="generate")
