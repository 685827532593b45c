"""``fitserve endpoint init|check|sites``: Globus Compute endpoint configurations and site files.

``fitserve endpoint init --site slurm DIR`` writes ``DIR/config.yaml`` from
``endpoints/globus-compute/<site>/config.yaml`` (a GlobusComputeEngine with the
site's Parsl provider and a worker_init that installs fitserve), then checks it
with the endpoint package's own loader if it is installed.
``fitserve endpoint init --multi-user DIR --site slurm`` writes a multi-user
(manager) endpoint instead: ``config.yaml``, ``user_config_template.yaml.j2``,
``user_config_schema.json`` and an example ``identity_mapping.json`` from
``endpoints/globus-compute/multi-user/``, then renders the template for example
user options with the endpoint package's own renderer and loads the result.
``fitserve endpoint check PATH`` checks an endpoint configuration (a directory or
config.yaml) or a fitserve site file (endpoints/*.yaml) without starting anything,
and reports this side's fitserve, engine, Python and package versions (those the
task compares with the client's).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

SITES = ("slurm", "pbs", "kubernetes", "local")
MULTI_USER_SITES = ("slurm", "pbs", "kubernetes", "slurm-gpu")
#: where the ready-to-edit files live (a source checkout, or an editable install)
ENDPOINTS_DIR = Path(__file__).resolve().parents[2] / "endpoints"
TEMPLATES_DIR = ENDPOINTS_DIR / "globus-compute"
MULTI_USER_DIR = TEMPLATES_DIR / "multi-user"
DEFAULT_IMAGE = "ghcr.io/your-org/fitserve-worker:0.1.0"
#: user options a rendering check uses when none are given (what a user would send as user_endpoint_config)
EXAMPLE_USER_OPTIONS = {"ACCOUNT_ID": "phy123", "NODES_PER_BLOCK": 2, "WALLTIME": "01:00:00", "PARTITION": "short"}


def template_path(site: str) -> Path:
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    path = TEMPLATES_DIR / site / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(
            f"endpoint template {path} not found (templates ship in the fitserve source tree: endpoints/globus-compute/)"
        )
    return path


def render_template(
    site: str, display_name: str | None = None, venv: str | None = None, pip_spec: str | None = None
) -> str:
    """The template's text with the chosen display name, venv and pip requirement filled in."""
    text = template_path(site).read_text()
    if display_name is not None:
        text, n = re.subn(r"(?m)^display_name: .*$", f"display_name: {_yaml_str(display_name)}", text)
        assert n == 1
    if venv is not None:
        text = text.replace("${FITSERVE_VENV:-$HOME/.fitserve/venv}", "${FITSERVE_VENV:-" + venv + "}")
    if pip_spec is not None:
        text = text.replace("${FITSERVE_PIP_SPEC:-fitserve[globus]}", "${FITSERVE_PIP_SPEC:-" + pip_spec + "}")
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


def write_multi_user(
    directory: Path,
    site: str,
    venv: str | None = None,
    container_type: str | None = None,
    container_uri: str | None = None,
    display_name: str | None = None,
    force: bool = False,
) -> list[Path]:
    """Write a multi-user endpoint directory for ``site``; returns the files written."""
    import json

    if site not in MULTI_USER_SITES:
        raise ValueError(f"unknown multi-user site {site!r}; choose one of {', '.join(MULTI_USER_SITES)}")
    if container_type not in (None, "none", "apptainer", "singularity", "docker", "podman"):
        raise ValueError(f"unknown container type {container_type!r} (apptainer, singularity, docker, podman)")
    ctype = container_type or "none"
    uri = container_uri or (DEFAULT_IMAGE if site == "kubernetes" or ctype in ("docker", "podman") else "")
    if ctype in ("apptainer", "singularity") and not container_uri:
        raise ValueError(
            "--container-uri is required with an apptainer/singularity container (e.g. /sw/fitserve/fitserve-worker.sif)"
        )
    directory = directory.expanduser().resolve()
    config = (MULTI_USER_DIR / "config.yaml").read_text().replace("__ENDPOINT_DIR__", str(directory))
    if display_name is not None:
        config, n = re.subn(r"(?m)^display_name: .*$", f"display_name: {_yaml_str(display_name)}", config)
    template = (MULTI_USER_DIR / f"user_config_template.{site}.yaml.j2").read_text()
    template = (
        template.replace("__FITSERVE_VENV__", venv or "/sw/fitserve/venv")
        .replace("__CONTAINER_TYPE__", ctype)
        .replace("__CONTAINER_URI__", uri)
    )
    schema = json.loads((MULTI_USER_DIR / "user_config_schema.json").read_text())
    if site != "kubernetes":
        schema["required"] = ["ACCOUNT_ID"]
    if site != "slurm-gpu":
        schema["properties"].pop("GPUS_PER_NODE")
    files = {
        "config.yaml": config,
        "user_config_template.yaml.j2": template,
        "user_config_schema.json": json.dumps(schema, indent=2) + "\n",
        "identity_mapping.json": (MULTI_USER_DIR / "identity_mapping.json").read_text(),
    }
    existing = [directory / f for f in files if (directory / f).exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists (use --force to overwrite)")
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return [directory / f for f in files]


def check_multi_user(directory: Path, user_options: dict | None = None) -> str:
    """Load DIR/config.yaml (a manager endpoint), render DIR/user_config_template.yaml.j2 for
    ``user_options`` with the endpoint package's renderer and schema check, as the endpoint does
    for a user, and load the rendered configuration (building its engine and provider)."""
    import json
    import os
    import pwd
    import uuid
    from dataclasses import asdict

    from globus_compute_endpoint.endpoint.config.utils import (
        load_config_yaml,
        load_user_config_schema,
        load_user_config_template,
        render_config_user_template,
    )
    from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity
    from globus_compute_sdk.sdk.batch import create_user_runtime

    cfg_path = directory / "config.yaml"
    try:
        parent = load_config_yaml(cfg_path.read_text())
    except Exception as exc:
        raise ValueError(f"{cfg_path}: {getattr(exc, 'message', None) or exc}") from exc
    if getattr(parent, "engine", None) is not None:
        raise ValueError(f"{cfg_path}: has an engine block, so it is a single-user endpoint, not a multi-user one")
    idmap = getattr(parent, "identity_mapping_config_path", None)
    if idmap is not None and not Path(idmap).exists():
        raise ValueError(f"{cfg_path}: identity_mapping_config_path: {idmap} does not exist")
    tpl_path = directory / "user_config_template.yaml.j2"
    schema = load_user_config_schema(directory / "user_config_schema.json")
    opts = dict(EXAMPLE_USER_OPTIONS if user_options is None else user_options)
    if schema and "GPUS_PER_NODE" in schema.get("properties", {}) and user_options is None:
        opts["GPUS_PER_NODE"] = 4
    me = MappedPosixIdentity(
        local_user_record=pwd.getpwuid(os.getuid()), matched_identity=uuid.UUID(int=0), globus_identity_candidates=[]
    )
    try:
        rendered = render_config_user_template(
            parent,
            load_user_config_template(tpl_path),
            tpl_path,
            me,
            schema,
            opts,
            json.loads(json.dumps(asdict(create_user_runtime()))),
        )
    except Exception as exc:
        msg = getattr(exc, "message", None) or str(exc)
        raise ValueError(
            f"{tpl_path}: with user options {json.dumps(opts)}: {type(exc).__name__}: {msg.splitlines()[0]}"
        ) from exc
    try:
        user = load_config_yaml(rendered)
    except Exception as exc:
        raise ValueError(
            f"{tpl_path}: the rendered configuration does not load: {getattr(exc, 'message', None) or exc}"
        ) from exc
    engine = user.engine
    try:
        provider = engine.provider
        summary = (
            f"{cfg_path}: multi-user endpoint; {tpl_path.name} rendered for {json.dumps(opts)}: "
            f"{type(engine).__name__} with {type(provider).__name__}"
        )
        for attr in ("account", "partition", "queue", "nodes_per_block", "walltime"):
            if getattr(provider, attr, None) not in (None, ""):
                summary += f", {attr}={getattr(provider, attr)}"
        if getattr(engine, "container_type", None):
            summary += f", container {engine.container_type} {engine.container_uri}"
        return summary
    finally:
        try:
            engine.shutdown()
        except Exception:
            pass


def versions_report(python: str | None = None) -> dict:
    """This side's versions (or those of another interpreter, e.g. the workers' venv)."""
    import json
    import subprocess

    if python is None:
        from fitserve.executors.globus_task import versions

        return versions()
    code = "import json; from fitserve.executors.globus_task import versions; print(json.dumps(versions()))"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ValueError(
            f"{python}: cannot report fitserve versions: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
        )
    return json.loads(proc.stdout)


def register(app: typer.Typer) -> None:
    endpoint = typer.Typer(
        no_args_is_help=True, help="Globus Compute endpoint configurations and site files for HPC centres."
    )
    app.add_typer(endpoint, name="endpoint")

    @endpoint.command("init")
    def init(
        directory: Path = typer.Argument(..., help="Endpoint directory, e.g. ~/.globus_compute/fitserve (created)."),
        site: str = typer.Option(
            ..., "--site", help="slurm, pbs, kubernetes or local (multi-user: slurm, pbs, kubernetes, slurm-gpu)."
        ),
        multi_user: bool = typer.Option(
            False, "--multi-user", help="Write a multi-user (manager) endpoint with a per-user template."
        ),
        container_type: Optional[str] = typer.Option(
            None, help="Multi-user: run workers in a container (apptainer, singularity, docker, podman)."
        ),
        container_uri: Optional[str] = typer.Option(
            None, help="Multi-user: the fitserve worker image (a .sif path or an image reference)."
        ),
        display_name: Optional[str] = typer.Option(None, help="Name shown in the Globus web app."),
        venv: Optional[str] = typer.Option(
            None, help="Virtual environment the workers use (default $HOME/.fitserve/venv)."
        ),
        pip_spec: Optional[str] = typer.Option(
            None, help="What worker_init installs if fitserve is missing (default fitserve[globus])."
        ),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing config.yaml."),
        check: bool = typer.Option(True, "--check/--no-check", help="Validate with globus_compute_endpoint's loader."),
    ) -> None:
        """Write DIR/config.yaml for a GlobusComputeEngine on SITE (edit the lines marked EDIT)."""
        if multi_user:
            try:
                files = write_multi_user(directory, site, venv, container_type, container_uri, display_name, force)
            except (ValueError, FileExistsError) as exc:
                typer.echo(f"fitserve: error: {exc}", err=True)
                raise typer.Exit(2)
            for f in files:
                typer.echo(f"wrote {f}")
            typer.echo(f"edit the lines marked EDIT, then (as root): globus-compute-endpoint start {directory.name}")
            if check:
                try:
                    typer.echo("checked: " + check_multi_user(directory.expanduser().resolve()))
                except ImportError:
                    typer.echo(
                        "not checked: globus-compute-endpoint is not installed (pip install 'fitserve[globus]')",
                        err=True,
                    )
                except ValueError as exc:
                    typer.echo(f"fitserve: warning: {exc}", err=True)
                    raise typer.Exit(1)
            return
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
        typer.echo(
            f"wrote {target} ({site}); edit the lines marked EDIT, then: globus-compute-endpoint start {directory.name}"
        )
        if check:
            try:
                typer.echo("checked: " + check_endpoint_config(target))
            except ImportError:
                typer.echo(
                    "not checked: globus-compute-endpoint is not installed (pip install 'fitserve[globus]')", err=True
                )
            except ValueError as exc:
                typer.echo(f"fitserve: warning: {exc}", err=True)
                raise typer.Exit(1)

    @endpoint.command("check")
    def check_cmd(
        path: Path = typer.Argument(
            ..., help="An endpoint directory or config.yaml, or a site file (endpoints/*.yaml)."
        ),
        executor: str = typer.Option("parsl", help="For site files: parsl or globus."),
        user_options: Optional[Path] = typer.Option(
            None, help="Multi-user: JSON user options to render the template with."
        ),
        python: Optional[str] = typer.Option(
            None, help="Also report the versions of this interpreter (e.g. the workers' venv python)."
        ),
    ) -> None:
        """Check a configuration without starting anything; errors name the file and key.

        For endpoint directories it also prints this side's versions (fitserve, engine, Python, ...),
        which fitserve's task compares with the client's."""
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
            if is_endpoint and path.is_dir() and (path / "user_config_template.yaml.j2").exists():
                import json as _json

                opts = _json.loads(user_options.read_text()) if user_options else None
                typer.echo("ok: " + check_multi_user(path.resolve(), opts))
                _print_versions(python)
            elif is_endpoint:
                typer.echo("ok: " + check_endpoint_config(path))
                _print_versions(python)
            else:
                check_site(path, executor)
                typer.echo(f"ok: {path} ({executor} site)")
        except ImportError:
            typer.echo(
                "fitserve: error: globus-compute-endpoint is not installed (pip install 'fitserve[globus]')", err=True
            )
            raise typer.Exit(2)
        except (SiteError, ValueError) as exc:
            typer.echo(f"fitserve: error: {exc}", err=True)
            raise typer.Exit(2)

    def _print_versions(python: str | None) -> None:
        for label, py in (("this side", None), (python, python)) if python else (("this side", None),):
            v = versions_report(py)
            typer.echo(f"versions ({label}): " + ", ".join(f"{k} {val}" for k, val in v.items()))

    @endpoint.command("sites")
    def sites() -> None:
        """List the ready-made site files and endpoint templates."""
        for f in sorted(ENDPOINTS_DIR.glob("*.yaml")):
            typer.echo(f"site file      {f}")
        for s in SITES:
            typer.echo(f"endpoint init  --site {s:<10} ({TEMPLATES_DIR / s / 'config.yaml'})")
        for s in MULTI_USER_SITES:
            typer.echo(
                f"endpoint init  --multi-user --site {s:<10} ({MULTI_USER_DIR / f'user_config_template.{s}.yaml.j2'})"
            )
