"""Where the client finds the server and its token.

Each of ``url`` and ``token`` is taken from, in this order:

1. the argument (``Client(url=...)``, ``--server`` / ``--token`` on the command line);
2. the environment: ``FITSERVE_URL``, ``FITSERVE_TOKEN``;
3. the config file, TOML, ``~/.config/fitserve/client.toml`` (or ``$XDG_CONFIG_HOME/fitserve/client.toml``;
   another path in ``FITSERVE_CLIENT_CONFIG``)::

       url = "http://fitserve.example.org:8000"
       token = "..."

4. the default: ``http://127.0.0.1:8000`` (what ``fitserve up`` listens on), no token.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitserve.client.errors import FitserveError

DEFAULT_URL = "http://127.0.0.1:8000"
ENV_URL, ENV_TOKEN, ENV_CONFIG = "FITSERVE_URL", "FITSERVE_TOKEN", "FITSERVE_CLIENT_CONFIG"


class ConfigError(FitserveError):
    """The client config file cannot be read."""


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str | None
    #: where each value came from: "argument", "environment", the config file's path, or "default"
    url_source: str
    token_source: str | None


def config_path() -> Path:
    """The client config file (which need not exist)."""
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "fitserve" / "client.toml"


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    if not path.is_file():
        if os.environ.get(ENV_CONFIG) and path == config_path():
            raise ConfigError(f"config file not found (named by {ENV_CONFIG})", where=str(path))
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the client config: {exc}", where=str(path)) from None
    unknown = set(data) - {"url", "token"}
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(sorted(map(repr, unknown)))} (expected url, token)", where=str(path)
        )
    for key in ("url", "token"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{key} must be a string", where=str(path))
    return data


def resolve(url: str | None = None, token: str | None = None) -> ClientConfig:
    """The server URL and token: argument > environment > config file > default."""
    file_data: dict[str, Any] | None = None

    def from_file() -> dict[str, Any]:
        nonlocal file_data
        if file_data is None:
            file_data = read_config_file()
        return file_data

    def pick(arg: str | None, env: str, key: str) -> tuple[str | None, str | None]:
        if arg:
            return arg, "argument"
        if os.environ.get(env):
            return os.environ[env], "environment"
        if from_file().get(key):
            return from_file()[key], str(config_path())
        return None, None

    u, u_src = pick(url, ENV_URL, "url")
    t, t_src = pick(token, ENV_TOKEN, "token")
    if u is None:
        u, u_src = DEFAULT_URL, "default"
    u = u.strip().rstrip("/")
    if "://" not in u:
        u = "http://" + u
    return ClientConfig(url=u, token=t, url_source=u_src or "default", token_source=t_src)
