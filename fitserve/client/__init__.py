"""Python client of the fitserve service (sync and asyncio), and the ``submit``/``status``/``results``/``plot`` commands.

>>> from fitserve import Client
>>> with Client("http://127.0.0.1:8000") as client:
...     job = client.submit("BkgOnly.json", "patchset.json")
...     job.wait(progress=True)
...     df = job.dataframe()
...     job.plot("exclusion.png")

Imports httpx only: no JAX, no pyhf.
"""

from fitserve.client._core import Results, RetryPolicy
from fitserve.client.aio import AsyncClient, AsyncJob
from fitserve.client.config import ClientConfig, resolve
from fitserve.client.errors import (
    BadInput,
    Conflict,
    FitserveError,
    JobFailed,
    JobTimeout,
    NotFound,
    ServerUnavailable,
    Unauthorised,
)
from fitserve.client.sync import Client, Job

__all__ = [
    "Client",
    "Job",
    "AsyncClient",
    "AsyncJob",
    "Results",
    "RetryPolicy",
    "ClientConfig",
    "resolve",
    "FitserveError",
    "BadInput",
    "NotFound",
    "Unauthorised",
    "Conflict",
    "ServerUnavailable",
    "JobFailed",
    "JobTimeout",
]
