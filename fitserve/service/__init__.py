"""The fitting service: HTTP API, Redis job store and queue, worker loop, aggregation.

Start it with ``fitserve up`` (Redis + one worker + API on one machine), or
the parts separately with ``fitserve serve`` and ``fitserve worker``.
"""
