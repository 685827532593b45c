"""``python -m fitserve.cli``: the same as the ``fitserve`` command (how the service starts its workers)."""

from fitserve.cli import entry

entry()
