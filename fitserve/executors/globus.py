"""Globus Compute executor: chunks run on a Globus Compute endpoint (an HPC centre, a cluster).

The worker submits :func:`fitserve.executors.run_chunk_task` (the same
importable function every backend runs) through
``globus_compute_sdk.Executor(endpoint_id=...)``.  The SDK serializes the
function *by reference* (module and name, registered once per executor), the
arguments as data: the compressed background workspace once per chunk, the
chunk's patches and the options.  The result is the chunk's small
``{patch_name: record}`` mapping.

Authentication is the SDK's normal login flow: the first ``Client()`` on a
machine opens the Globus Auth login (a URL to visit, a code to paste) and keeps
tokens in ``~/.globus_compute/storage.db``; unattended workers use a client
identity (``GLOBUS_COMPUTE_CLIENT_ID`` / ``GLOBUS_COMPUTE_CLIENT_SECRET``).

The endpoint id comes, first found, from the ``endpoint_id`` argument, the site
file's ``globus.endpoint_id`` (``fitserve worker --executor globus --site
endpoints/globus.yaml``) or ``FITSERVE_GLOBUS_ENDPOINT_ID``.

Needs ``pip install 'fitserve[globus]'`` (``globus-compute-sdk``).
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Sequence

from fitserve.executors.base import Executor, register_executor, run_chunk_task

ENV_ENDPOINT_ID = "FITSERVE_GLOBUS_ENDPOINT_ID"
DEFAULT_CAPACITY = 16


def resolve_endpoint_id(endpoint_id: str | None, site_data: dict[str, Any], source: str) -> str:
    """The endpoint id from the argument, the site file, or the environment; checked to be a UUID."""
    from fitserve.executors.sites import SiteError

    globus = site_data.get("globus") or {}
    value = endpoint_id or globus.get("endpoint_id") or os.environ.get(ENV_ENDPOINT_ID)
    if not value:
        raise SiteError(source, "globus.endpoint_id", f"missing: give the endpoint id in the site file or {ENV_ENDPOINT_ID}")
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        where = "globus.endpoint_id" if not endpoint_id and globus.get("endpoint_id") else "endpoint_id"
        raise SiteError(source, where, f"not a UUID: {value!r}") from None


class GlobusComputeExecutor(Executor):
    """Submits :func:`run_chunk_task` to a Globus Compute endpoint.

    ``sdk_executor`` replaces the ``globus_compute_sdk.Executor`` (anything with
    ``submit(fn, *args) -> Future`` and ``shutdown``), e.g. in tests where the
    Globus cloud service is out of reach; ``client`` is passed to the SDK
    executor (default: the SDK's own ``Client()``, which logs in).
    """

    name = "globus"

    def __init__(
        self,
        endpoint_id: str | None = None,
        site: str | Path | dict[str, Any] | None = None,
        capacity: int | None = None,
        client: Any = None,
        sdk_executor: Any = None,
        **_ignored: Any,
    ) -> None:
        from fitserve.executors.sites import load_site

        source = str(site) if site is not None and not isinstance(site, dict) else "settings"
        data = load_site(site) if site is not None else {}
        globus = dict(data.get("globus") or {})
        self.endpoint_id = resolve_endpoint_id(endpoint_id, data, source)
        self.site = str(site) if site is not None and not isinstance(site, dict) else None
        self._capacity = int(capacity or globus.get("capacity") or data.get("capacity") or DEFAULT_CAPACITY)
        if sdk_executor is None:
            try:
                from globus_compute_sdk import Executor as SDKExecutor
            except ImportError as exc:  # pragma: no cover - depends on the installation
                raise RuntimeError(
                    "the globus executor needs the Globus Compute SDK: pip install 'fitserve[globus]'"
                ) from exc
            kwargs: dict[str, Any] = {"endpoint_id": self.endpoint_id, "label": "fitserve"}
            for key in ("resource_specification", "user_endpoint_config", "amqp_port", "batch_size"):
                if globus.get(key) is not None:
                    kwargs[key] = globus[key]
            if client is not None:
                kwargs["client"] = client
            sdk_executor = SDKExecutor(**kwargs)
        self._sdk = sdk_executor
        self._closed = False

    @property
    def capacity(self) -> int:
        return self._capacity

    def submit(self, workspace: dict[str, Any] | bytes, patches: Sequence[dict[str, Any]] | None, options: dict[str, Any]) -> Future:
        if isinstance(workspace, (bytearray, memoryview)):
            workspace = bytes(workspace)
        return self._sdk.submit(run_chunk_task, workspace, list(patches) if patches is not None else None, dict(options))

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "capacity": self.capacity, "endpoint_id": self.endpoint_id, "site": self.site}

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sdk.shutdown(wait=False, cancel_futures=True)
        except TypeError:  # a stand-in without the keyword arguments
            self._sdk.shutdown()


register_executor("globus", GlobusComputeExecutor)
