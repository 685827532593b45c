"""``fitserve endpoint init|check|sites``: Globus Compute endpoint configurations and site files.

``fitserve endpoint init --site slurm DIR`` writes ``DIR/config.yaml`` from
``endpoints/globus-compute/<site>/config.yaml`` (a GlobusComputeEngine with the
site's Parsl provider and a worker_init that installs fitserve), then checks it
with the endpoint package's own loader if it is installed.
``fitserve endpoint check PATH`` checks an endpoint configuration (a directory or
config.yaml) or a fitserve site file (endpoints/*.yaml) without starting anything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

SITES = ("slurm", "pbs", "kubernetes", "local")
#: where the ready-to-edit files live (a source checkout, or an editable install)
ENDPOINTS_DIR = Path(__file__).resolve().parents[1] / "endpoints"
TEMPLATES_DIR = ENDPOINTS_DIR / "globus-compute"


def template_path(site: str) -> Path:
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    path = TEMPLATES_DIR / site / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"endpoint template {path} not found (templates ship in the fitserve source tree: endpoints/globus-compute/)")
    return path


def render_template(site: str, display_name: str | None = None, venv: str | None = None, pip_spec: str | None = None) -> str:
    """The template's text with the chosen display name, venv and pip requirement filled in."""
    text = template_path(site).read_text()
    if display_name is not None:
        text, n = re.subn(r"(?m)^display_name: .*$", f"display_name: {_yaml_str(display_name)}", text)
        assert n == 1
    if venv is not None:
        text = text.replace('${FITSERVE_VENV:-$HOME/.fitserve/venv}', "${FITSERVE_VENV:-" + venv + "}")
    if pip_spec is not None:
        text = text.replace('${FITSERVE_PIP_SPEC:-fitserve[globus]}', "${FITSERVE_PIP_SPEC:-" + pip_spec + "}")
    return text


def _yaml_str(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string is a valid YAML scalar


def check_endpoint_config(path: Path) -> str:
    """Load an endpoint configuration with ``globus_compute_endpoint``'s offline loader.

    Returns a one-line summary; raises ``ValueError`` naming the file on errors and
    ``ImportError`` if the endpoint package is not installed.
    """
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    cfg_path = path / "config.yaml" if path.is_dir() else path
    try:
        config = load_config_yaml(cfg_path.read_text())
    except Exception as exc:  # click.ClickException and friends
        msg = getattr(exc, "message", None) or str(exc)
        raise ValueError(f"{cfg_path}: {msg}") from exc
    engine = getattr(config, "engine", None)
    if engine is None:
        return f"{cfg_path}: {type(config).__name__} (no engine: a multi-user endpoint)"
    provider = getattr(engine, "provider", None)
    return f"{cfg_path}: {type(config).__name__}, {type(engine).__name__} with {type(provider).__name__}"


def register(app: typer.Typer) -> None:
    endpoint = typer.Typer(no_args_is_help=True, help="Globus Compute endpoint configurations and site files for HPC centres.")
    app.add_typer(endpoint, name="endpoint")

    @endpoint.command("init")
    def init(
        directory: Path = typer.Argument(..., help="Endpoint directory, e.g. ~/.globus_compute/fitserve (created)."),
        site: str = typer.Option(..., "--site", help="slurm, pbs, kubernetes or local."),
        display_name: Optional[str] = typer.Option(None, help="Name shown in the Globus web app."),
        venv: Optional[str] = typer.Option(None, help="Virtual environment the workers use (default $HOME/.fitserve/venv)."),
        pip_spec: Optional[str] = typer.Option(None, help="What worker_init installs if fitserve is missing (default fitserve[globus])."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing config.yaml."),
        check: bool = typer.Option(True, "--check/--no-check", help="Validate with globus_compute_endpoint's loader."),
    ) -> None:
        """Write DIR/config.yaml for a GlobusComputeEngine on SITE (edit the lines marked EDIT)."""
        try:
            text = render_template(site, display_name, venv, pip_spec)
        except (ValueError, FileNotFoundError) as exc:
            typer.echo(f"fitserve: error: {exc}", err=True)
            raise typer.Exit(2)
        target = directory / "config.yaml"
        if target.exists() and not force:
            typer.echo(f"fitserve: error: {target} exists (use --force to overwrite)", err=True)
            raise typer.Exit(2)
        directory.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        typer.echo(f"wrote {target} ({site}); edit the lines marked EDIT, then: globus-compute-endpoint start {directory.name}")
        if check:
            try:
                typer.echo("checked: " + check_endpoint_config(target))
            except ImportError:
                typer.echo("not checked: globus-compute-endpoint is not installed (pip install 'fitserve[globus]')", err=True)
            except ValueError as exc:
                typer.echo(f"fitserve: warning: {exc}", err=True)
                raise typer.Exit(1)

    @endpoint.command("check")
    def check_cmd(
        path: Path = typer.Argument(..., help="An endpoint directory or config.yaml, or a site file (endpoints/*.yaml)."),
        executor: str = typer.Option("parsl", help="For site files: parsl or globus."),
    ) -> None:
        """Check a configuration without starting anything; errors name the file and key."""
        from fitserve.executors.sites import SiteError, check_site, load_site

        is_endpoint = path.is_dir() or path.name == "config.yaml"
        if not is_endpoint:
            try:
                data = load_site(path)
            except SiteError:
                data = None
            if data is not None and "globus" in data and executor == "parsl" and "provider" not in data:
                executor = "globus"
        try:
            if is_endpoint:
                typer.echo("ok: " + check_endpoint_config(path))
            else:
                check_site(path, executor)
                typer.echo(f"ok: {path} ({executor} site)")
        except ImportError:
            typer.echo("fitserve: error: globus-compute-endpoint is not installed (pip install 'fitserve[globus]')", err=True)
            raise typer.Exit(2)
        except (SiteError, ValueError) as exc:
            typer.echo(f"fitserve: error: {exc}", err=True)
            raise typer.Exit(2)

    @endpoint.command("sites")
    def sites() -> None:
        """List the ready-made site files and endpoint templates."""
        for f in sorted(ENDPOINTS_DIR.glob("*.yaml")):
            typer.echo(f"site file      {f}")
        for s in SITES:
            typer.echo(f"endpoint init  --site {s:<10} ({TEMPLATES_DIR / s / 'config.yaml'})")
