"""``fitserve serve``, ``fitserve worker`` and ``fitserve up`` (registered into the CLI by ``register``)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import typer

from fitserve.cli.common import service_settings


def _settings_env(settings: Any) -> dict[str, str]:
    """The settings as FITSERVE_* variables, for child processes."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"FITSERVE_{name.upper()}"] = str(value)
    return env


AUTH_HELP = "open (no tokens, one local user) or token (API tokens, `fitserve token create`). Default: FITSERVE_AUTH, else open on 127.0.0.1/localhost and token on any other address."


def _auth_for(settings: Any, host: str) -> Any:
    """Settings with the auth mode decided: open only by default on a loopback address, loudly otherwise."""
    from fitserve.service.localhost import is_loopback

    mode = settings.auth or ("open" if is_loopback(host) else "token")
    if mode == "open" and not is_loopback(host):
        typer.secho(
            f"fitserve: WARNING: open mode (no authentication) on {host}: anybody who can reach this address "
            "can read and cancel every job. Use --auth token on a shared network.",
            err=True,
            fg="red",
            bold=True,
        )
    elif mode == "token":
        typer.echo("auth: API tokens required (create one with `fitserve token create --user NAME`)", err=True)
    return settings.model_copy(update={"auth": mode})


def _venv_path_env(env: dict[str, str]) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        env["PATH"] = bindir + (os.pathsep + path if path else "")
    return env


def _start_executor_shielded(w: Any) -> None:
    """Start the worker's executor with SIGINT ignored, so its processes inherit SIG_IGN.

    Ctrl-C in a terminal signals the whole foreground process group: Parsl's interchange
    and worker pool would die first and leave the DataFlowKernel waiting on them (the
    >40 s hang).  Ignored at their start, they live until the worker, which alone handles
    SIGINT, shuts them down in order.  (SIG_IGN survives exec; a Python child started with
    it ignored installs no KeyboardInterrupt handler.)  The processes started meanwhile also get the
    parent-death signal: if the worker dies without shutting Parsl down (killed), its interchange
    exits too instead of living on (Parsl's pool then ends on its missed heartbeats).
    """
    from fitserve.service.redis_server import die_with_parent

    real_popen = subprocess.Popen

    class _DiesWithWorker(real_popen):  # type: ignore[misc, valid-type]
        """Popen for what the executor starts now (Parsl's interchange): it gets SIGTERM if the worker dies."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            own, theirs = die_with_parent(), kwargs.get("preexec_fn")
            kwargs["preexec_fn"] = own if theirs is None else (lambda: (own(), theirs()))
            super().__init__(*args, **kwargs)

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    subprocess.Popen = _DiesWithWorker  # type: ignore[misc]
    try:
        _ = w.executor
    finally:
        subprocess.Popen = real_popen  # type: ignore[misc]
        signal.signal(signal.SIGINT, previous)


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
        port: int = typer.Option(8000, help="Port to listen on."),
        redis_url: Optional[str] = typer.Option(
            None, help="Redis URL (default: FITSERVE_REDIS_URL or redis://127.0.0.1:6379/0)."
        ),
        log_level: str = typer.Option("info", help="uvicorn log level."),
        auth: Optional[str] = typer.Option(None, help=AUTH_HELP),
    ) -> None:
        """Run the HTTP API (FastAPI under uvicorn); needs Redis and at least one `fitserve worker`."""
        import uvicorn

        from fitserve.app import create_app
        from fitserve.service.joblog import log_to_stderr

        settings = _auth_for(service_settings(redis_url=redis_url, auth=auth), host)
        log_to_stderr()
        typer.echo(
            f"fitserve API on http://{host}:{port} (docs: http://{host}:{port}/docs), Redis {settings.redis_url}",
            err=True,
        )
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)

    @app.command()
    def worker(
        executor: Optional[str] = typer.Option(
            None, help="local, parsl or globus (default: FITSERVE_EXECUTOR or local)."
        ),
        workers: Optional[int] = typer.Option(
            None, "--workers", help="Parsl worker processes / local threads (FITSERVE_PARSL_WORKERS)."
        ),
        redis_url: Optional[str] = typer.Option(None, help="Redis URL (default: FITSERVE_REDIS_URL)."),
        site: Optional[Path] = typer.Option(
            None,
            help="Site file (YAML): a Parsl provider (endpoints/slurm.yaml, pbspro.yaml, kubernetes.yaml) or a Globus Compute endpoint (endpoints/globus.yaml).",
        ),
        name: Optional[str] = typer.Option(None, help="Consumer name in the queue (default: host-pid-random)."),
    ) -> None:
        """Consume chunks from Redis and run them on an executor until SIGINT/SIGTERM."""
        from fitserve.service.worker import Worker

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("parsl").setLevel(logging.WARNING)
        settings = service_settings(executor=executor, parsl_workers=workers, redis_url=redis_url, parsl_site=site)
        if settings.parsl_site is not None and settings.executor in ("parsl", "globus"):
            from fitserve.executors.sites import SiteError, check_site

            try:  # report a bad site file with its file and key before anything starts
                check_site(settings.parsl_site, settings.executor)
            except SiteError as exc:
                typer.echo(f"fitserve: error: {exc}", err=True)
                raise typer.Exit(2)
        if settings.executor == "parsl":
            _venv_path_env(os.environ)  # Parsl finds interchange.py through PATH
        w = Worker(settings, name=name)

        def _stop(signum: int, _frame: Any) -> None:
            if w.stop_event.is_set():
                raise KeyboardInterrupt
            typer.echo(f"fitserve worker {w.name}: stopping (shutting the executor down)...", err=True)
            w.stop()

        signal.signal(signal.SIGTERM, _stop)
        _start_executor_shielded(w)
        signal.signal(signal.SIGINT, _stop)
        typer.echo(f"fitserve worker {w.name}: executor {settings.executor}, Redis {settings.redis_url}", err=True)
        w.run()

    @app.command()
    def up(
        host: str = typer.Option("127.0.0.1", help="Interface the API listens on."),
        port: int = typer.Option(8000, help="Port the API listens on."),
        executor: str = typer.Option("parsl", help="Executor of the worker: parsl (local pool) or local (in-process)."),
        workers: Optional[int] = typer.Option(
            None, "--workers", help="Parsl worker processes (default: FITSERVE_PARSL_WORKERS or 1)."
        ),
        redis_url: Optional[str] = typer.Option(
            None, help="Use this Redis (also FITSERVE_REDIS_URL); default: a private embedded Redis of this service."
        ),
        data_dir: Optional[Path] = typer.Option(
            None, help="Where the embedded Redis keeps its socket and AOF (default: FITSERVE_DATA_DIR or ./var)."
        ),
        auth: Optional[str] = typer.Option(None, help=AUTH_HELP),
    ) -> None:
        """Everything on one machine: a private Redis (or FITSERVE_REDIS_URL), one worker, and the API. Ctrl-C stops all."""
        settings = _auth_for(
            service_settings(
                executor=executor, parsl_workers=workers, redis_url=redis_url, data_dir=data_dir, auth=auth
            ),
            host,
        )
        sock = _bind_or_exit(host, port)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        lock, embedded, settings = _start_redis(settings)
        try:
            _run_up(settings, host, port, sock, embedded)
        finally:
            lock.release()


def _bind_or_exit(host: str, port: int) -> Any:
    """Bind the API's socket before anything else starts: a busy port is one clear error, not a traceback later."""
    import errno
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = " (another fitserve up?); pick a free one with --port N (quickstart: PORT=N ./quickstart.sh)"
        typer.echo(f"fitserve: error: cannot listen on {host}:{port}: {exc.strerror or exc}{hint}", err=True)
        raise typer.Exit(2)
    sock.set_inheritable(True)
    return sock


def _start_redis(settings: Any) -> tuple[Any, Any, Any]:
    """The Redis of ``fitserve up``: the one named explicitly, else a private embedded one; say which."""
    from fitserve.service.redis_server import DataDirLock, ensure_redis, private_redis

    lock = DataDirLock(settings.data_dir)
    try:
        lock.acquire()
        if "redis_url" in settings.model_fields_set:  # --redis-url, FITSERVE_REDIS_URL, .env or settings file
            embedded = ensure_redis(settings.redis_url, settings.data_dir)
            if embedded is None:
                typer.echo(
                    f"using the Redis at {settings.redis_url} (set explicitly; other services using it share its jobs)",
                    err=True,
                )
            else:
                typer.echo(f"started Redis {embedded.binary} on {embedded.url} (AOF in {embedded.dir})", err=True)
            return lock, embedded, settings
        embedded = private_redis(settings.data_dir)
    except RuntimeError as exc:
        lock.release()
        typer.echo(f"fitserve: error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(
        f"started a private Redis for this service on {embedded.unix_socket} (no TCP port; AOF in {embedded.dir})",
        err=True,
    )
    return lock, embedded, settings.model_copy(update={"redis_url": embedded.url})


def _run_up(settings: Any, host: str, port: int, sock: Any, embedded: Any) -> None:
    """Worker child, API in this process; on any exit stop them in order (children also die with us)."""
    import uvicorn

    from fitserve.app import create_app
    from fitserve.service.joblog import log_to_stderr
    from fitserve.service.redis_server import die_with_parent

    log_to_stderr()

    env = _venv_path_env({**os.environ, **_settings_env(settings)})
    worker_proc = subprocess.Popen(
        [sys.executable, "-m", "fitserve.cli", "worker"],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent(),
    )
    stopping = threading.Event()

    def _watch() -> None:
        code = worker_proc.wait()
        if not stopping.is_set():
            typer.echo(f"fitserve: warning: the worker exited with code {code}; jobs will wait", err=True)

    threading.Thread(target=_watch, daemon=True).start()

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                typer.echo(
                    f"fitserve is up: http://{host}:{port}  (API docs: http://{host}:{port}/docs; Ctrl-C to stop)"
                )
                sys.stdout.flush()

    server = _Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning"))

    def _interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # uvicorn re-raises the signal that stopped it once it has shut down: make
    # SIGTERM, like SIGINT, unwind through the clean-up below instead of killing us
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        stopping.set()
        typer.echo("stopping worker...", err=True)
        if worker_proc.poll() is None:
            worker_proc.send_signal(signal.SIGTERM)
            try:
                worker_proc.wait(30)
            except subprocess.TimeoutExpired:
                worker_proc.kill()
                worker_proc.wait()
        if embedded:
            typer.echo("stopping Redis...", err=True)
            embedded.stop()
        typer.echo("fitserve stopped", err=True)
    if not server.started:
        raise typer.Exit(1)
