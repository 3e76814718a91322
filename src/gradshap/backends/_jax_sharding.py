"""JAX on several devices: one call spreads each chunk's points over every device of the
default backend along their first axis, with the parameters and the other arguments
replicated. Each point's numbers are those of one device, so the results match one device's."""

from __future__ import annotations

import functools

import numpy as np

from gradshap.backends import require

__all__ = ["everywhere", "spread"]


def everywhere(tree):
    """The JAX arrays of ``tree`` replicated on every device of the default backend
    (arrays already laid out over them, and NumPy arrays, are left as they are)."""
    jax = require("jax")
    devices = jax.devices()
    whole = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), ("rows",)), jax.sharding.PartitionSpec())

    def place(a):
        if isinstance(a, jax.Array) and len(a.sharding.device_set) < len(devices):
            return jax.device_put(a, whole)
        return a

    return jax.tree_util.tree_map(place, tree)


def spread(points: tuple, cotangent):
    """``points`` and ``cotangent`` laid out over every device of the default backend
    along their first axis (unchanged on one device)."""
    jax = require("jax")
    devices = jax.devices()
    n = points[0].shape[0]
    if len(devices) < 2 or n == 0:
        return points, cotangent
    pad = -n % len(devices)
    if pad:
        at = jax.numpy.arange(n + pad) % n
        points, cotangent = tuple(jax.numpy.take(p, at, axis=0) for p in points), jax.numpy.take(cotangent, at, axis=0)
    rows = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), ("rows",)),
                                      jax.sharding.PartitionSpec("rows"))
    spread = functools.partial(jax.lax.with_sharding_constraint, shardings=rows)
    return tuple(spread(p) for p in points), spread(cotangent)
