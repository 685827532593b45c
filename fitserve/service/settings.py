"""Service configuration: environment variables ``FITSERVE_*`` and/or a settings file.

Precedence (highest first): keyword arguments, environment variables, the
settings file named by ``FITSERVE_CONFIG`` (YAML or TOML), ``.env`` in the
working directory, the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FITSERVE_", env_file=".env", extra="ignore")

    #: Redis server used as job store, result cache and queue.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every Redis key, so several deployments can share one server.
    key_prefix: str = "fitserve"
    #: Executor the worker runs chunks on: ``local`` or ``parsl`` (see fitserve.executors).
    executor: str = "local"
    #: Worker processes (parsl) or threads (local) per worker.
    parsl_workers: int = Field(1, ge=1)
    #: Optional Parsl site file (YAML) for HPC providers; default: local pool.
    parsl_site: Path | None = None
    #: Hypotheses per chunk (one chunk = one task on an executor).
    chunk_size: int = Field(16, ge=1)
    #: Toys (per distribution) per chunk of a toy-based job: one hypothesis and this many toys of it.
    toy_chunk_size: int = Field(1000, ge=1)
    #: Where the embedded Redis keeps its AOF, and Parsl its run directories.
    data_dir: Path = Path("var")
    #: A chunk pending this long without a heartbeat is taken over by another worker.
    claim_idle_ms: int = Field(30_000, ge=100)
    #: Give up on a chunk after this many deliveries (its hypotheses are marked failed).
    max_deliveries: int = Field(3, ge=1)
    #: ``token``: every request needs an API token (``fitserve token create``); ``open``: no
    #: authentication, one local user who sees everything (only sensible on 127.0.0.1).
    #: Unset, the commands pick ``open`` when they listen on a loopback address, else ``token``;
    #: :func:`fitserve.app.create_app` alone picks ``token``.
    auth: Literal["open", "token"] | None = None
    #: Limits on what one request may ask for (each error names the limit it hit; docs/service.md, Limits).
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_hypotheses: int = Field(10_000, ge=1)
    #: Toys of a toy-based job, both distributions of every hypothesis counted.
    max_job_toys: int = Field(2_000_000, ge=1)
    #: Bins and parameters of one (patched) model, counted as pyhf does, and of the padded model the
    #: engine builds for a chunk (the union of its patches' parameters).
    max_bins: int = Field(5_000, ge=1)
    max_parameters: int = Field(2_000, ge=1)
    #: Structure groups (channel layouts: models compiled separately) in one job; each costs seconds
    #: of compilation per chunk and ~10 files in the compile cache.
    max_structure_groups: int = Field(8, ge=1)
    #: Memory of one worker (bytes); 0: half of this machine's (or the cgroup's) memory.
    worker_memory_bytes: int = Field(0, ge=0)
    #: Memory one batch of fits may take by the engine's estimate (fitserve.engine.budget); wider
    #: batches are split, a model whose single hypothesis does not fit is refused.  0: a quarter of
    #: the worker's memory.
    batch_memory_bytes: int = Field(0, ge=0)
    #: A chunk running longer than this (seconds), or whose worker process grows past the worker's
    #: memory, fails with a clear error; the worker goes on.
    chunk_wall_s: float = Field(900.0, gt=0)
    #: Jobs one user may have queued or running at once (HTTP 429 beyond).
    max_active_jobs: int = Field(20, ge=1)
    #: Chunks of one user dispatched (queued for a worker or running) at once; 0: no limit.  Users
    #: are served round-robin in any case.
    max_user_chunks: int = Field(0, ge=0)
    max_jobs_listed: int = Field(1000, ge=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get("FITSERVE_CONFIG")
        if path:
            if Path(path).suffix.lower() == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        sources.append(dotenv_settings)
        return tuple(sources)

    def worker_memory(self) -> int:
        """Bytes one worker may use (``worker_memory_bytes``, else half of the machine's memory)."""
        from fitserve.engine import physical_memory

        return self.worker_memory_bytes or physical_memory() // 2

    def batch_memory(self) -> int:
        """Bytes one batch of fits may use (``batch_memory_bytes``, else a quarter of the worker's)."""
        return self.batch_memory_bytes or self.worker_memory() // 4

    def executor_settings(self) -> dict[str, Any]:
        """Keyword arguments for :func:`fitserve.executors.get_executor`."""
        return {"workers": self.parsl_workers, "site": self.parsl_site, "data_dir": self.data_dir}
