"""``fitserve token create|list|revoke``: API tokens, managed by the service's operator.

These talk to Redis directly (``--redis-url`` / ``FITSERVE_REDIS_URL``), not to
the API: whoever runs them holds the keys to the job store anyway.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional

import typer

from fitserve.cli.common import service_settings

REDIS_HELP = "Redis URL of the service (default: FITSERVE_REDIS_URL or redis://127.0.0.1:6379/0)."

token_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API tokens (stored hashed in Redis).")


def _tokens(redis_url: Optional[str]):
    import redis

    from fitserve.service.auth import TokenStore
    from fitserve.service.worker import redis_client

    settings = service_settings(redis_url=redis_url)
    client = redis_client(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        typer.echo(f"fitserve: error: cannot reach Redis at {settings.redis_url}: {exc}", err=True)
        raise typer.Exit(2)
    return TokenStore(client, settings.key_prefix)


@token_app.command("create")
def create(
    user: str = typer.Option(..., "--user", help="Who the token is for: jobs submitted with it belong to this user."),
    admin: bool = typer.Option(False, "--admin", help="An admin token sees and lists every user's jobs."),
    label: str = typer.Option("", "--label", help="A note kept with the token (e.g. where it is used)."),
    redis_url: Optional[str] = typer.Option(None, help=REDIS_HELP),
) -> None:
    """Create a token and print it (the only time it is shown: Redis keeps its hash)."""
    store = _tokens(redis_url)
    try:
        token = store.create(user, admin=admin, label=label)
    except ValueError as exc:
        typer.echo(f"fitserve: error: --user: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(
        f"token for {user!r}{' (admin)' if admin else ''}; give it to the user, it is not shown again:", err=True
    )
    typer.echo(token)


@token_app.command("list")
def list_tokens(redis_url: Optional[str] = typer.Option(None, help=REDIS_HELP)) -> None:
    """Every token's id, user, role, creation date and label (never the token)."""
    rows = _tokens(redis_url).list()
    if not rows:
        typer.echo("no tokens", err=True)
        return
    for t in rows:
        when = dt.datetime.fromtimestamp(t["created"], dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        typer.echo(f"{t['id']}  {t['user']:<24} {'admin' if t['admin'] else 'user ':<5}  {when}  {t['label']}")


@token_app.command("revoke")
def revoke(
    token_id: Optional[str] = typer.Argument(None, help="Token id from `fitserve token list` (8+ hex digits)."),
    user: Optional[str] = typer.Option(None, "--user", help="Revoke all of this user's tokens."),
    redis_url: Optional[str] = typer.Option(None, help=REDIS_HELP),
) -> None:
    """Revoke a token (by id) or all tokens of a user; requests with them get 401 at once."""
    if token_id is None and user is None:
        typer.echo("fitserve: error: give a token id or --user", err=True)
        raise typer.Exit(2)
    try:
        n = _tokens(redis_url).revoke(token_id, user)
    except ValueError as exc:
        typer.echo(f"fitserve: error: {exc}", err=True)
        raise typer.Exit(2)
    if n == 0:
        typer.echo("fitserve: error: no such token", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {n} token{'s' if n != 1 else ''}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
