"""What every command group of the ``fitserve`` command line shares: errors, option parsing, help layout."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer


def no_flag_placeholders() -> None:
    """Help without ``<bool>`` after flags that take no value (``--limits``, ``--help``).

    Typer's rich help prints every option's type; for a flag there is no value to type,
    so the placeholder only misleads.  Options that take a value keep theirs.
    """
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "_fitserve", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.is_flag and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._fitserve = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error on stderr and exit non-zero."""
    typer.echo(f"fitserve: error: {message}", err=True)
    raise typer.Exit(code)


MODIFIER_SETTINGS_HELP = (
    "'atlas' (normsys code4, histosys code4p; default), 'legacy' (code1, code0; pyhf < 0.7's default; 'pyhf' is an alias), "
    'or a pyhf-style JSON object, e.g. \'{"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code0"}}\'.'
)


def parse_modifier_settings(value: Optional[str]) -> Any:
    """A settings name as is, or a JSON object (the explicit pyhf ``modifier_settings`` mapping)."""
    if value is None or not value.lstrip().startswith("{"):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON ({exc.msg} at character {exc.pos})", param_hint="--modifier-settings")


def service_settings(**overrides: Any) -> Any:
    """The service's Settings with the options given on the command line; a bad one is one line, exit 2."""
    from pydantic import ValidationError

    from fitserve.service.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err.get("loc", ()))
        typer.echo(
            f"fitserve: error: setting {name!r} (--{name.replace('_', '-')} / FITSERVE_{name.upper()}): {err.get('msg')}",
            err=True,
        )
        raise typer.Exit(2)
