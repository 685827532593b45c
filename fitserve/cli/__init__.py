"""The ``fitserve`` command line: one room, one module per command group.

* :mod:`~fitserve.cli.scan`: ``scan`` (the engine on this machine);
* :mod:`~fitserve.cli.service`: ``serve``, ``worker``, ``up`` (the service);
* :mod:`~fitserve.cli.generate`: ``generate example|signal``;
* :mod:`~fitserve.cli.tokens`: ``token create|list|revoke``;
* :mod:`~fitserve.cli.client`: ``submit``, ``status``, ``results``, ``plot``, ``cancel``, ``jobs`` (the client);
* :mod:`~fitserve.cli.endpoint`: ``endpoint init|check|sites`` (Globus Compute, site files).

Each module imports what its commands drive when they run, so ``fitserve
--help`` (and every client command) starts without JAX, pyhf or Redis.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from fitserve.cli import client, endpoint, generate, scan, service, tokens
from fitserve.cli.common import no_flag_placeholders

no_flag_placeholders()

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Batched CLs fits of pyhf likelihoods, locally or as a service."
)


def _version(value: bool) -> None:
    if value:
        from fitserve import __version__

        typer.echo(f"fitserve {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Batched CLs fits of pyhf likelihoods, locally or as a service."""


for group in (scan, generate, service, tokens, client, endpoint):
    group.register(app)


def entry() -> None:
    """The ``fitserve`` console script: the app, then a quick exit after ``scan``.

    A process that has run JAX spends 0.25-0.4 s in interpreter teardown (XLA's
    client and thread pools; measured on this project's 2-core machine), which
    a user waits through after every ``fitserve scan``.  Once the command has
    written its results, output is flushed and the process ends without that
    teardown.  Other commands (servers, workers, clients with atexit cleanup)
    exit normally; tests call ``app`` itself.
    """
    code: int = 0
    try:
        app()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if sys.argv[1:2] == ["scan"] and "jax" in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
