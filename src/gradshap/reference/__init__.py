"""Forward-only reference attributions, for checking gradient-based ones.

- :func:`exact_shapley`: interventional Shapley values by brute force over all
  coalitions of features (or feature groups); exact, usable up to about 16 players.
- :func:`sampling_shapley`: the permutation Monte Carlo estimate of the same values,
  with its standard error.

Both use only forward passes of ``f`` and are written against the array API, so they
run on NumPy, PyTorch, JAX or array-api-strict arrays alike.
"""

from gradshap.reference._shapley import exact_shapley as exact_shapley
from gradshap.reference._shapley import sampling_shapley as sampling_shapley

__all__ = ["exact_shapley", "sampling_shapley"]
