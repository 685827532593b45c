"""The fit engine: pyhf workspaces in, CLs and upper limits out (no HTTP, Redis or Parsl here).

Importing this package does not import JAX; ``fitserve.engine.scan`` does.
"""

#: Bumped whenever results may change numerically; part of the service's cache keys.
ENGINE_VERSION = "jax-1"
