"""Faithfulness and stability of explanations, batched through the model's forward pass, every
score with its standard error over rows. Import it explicitly: ``from gradshap import metrics``.

- :func:`deletion`, :func:`insertion`: the target output as the top features (or groups)
  are removed or put back (Petsiuk et al., 2018), and the area under each curve.
- :func:`infidelity`: how well attributions predict the output's change under perturbations
  (Yeh et al., 2019), in its scale-invariant (normalised) form by default.
- :func:`max_sensitivity`: the largest change of an explanation within a radius, relative
  to its norm (Yeh et al., 2019).
- :func:`error`: relative L2 and max error against a reference (exact or permutation
  Shapley values, a converged Explanation), and whether the reported ``stderr`` covers it.
- :func:`compare`: several explainers on the same rows, a table with 95% intervals.

See ``docs/metrics.md``.
"""

from gradshap.metrics._common import Score as Score
from gradshap.metrics._common import patches as patches
from gradshap.metrics._compare import METRICS as METRICS
from gradshap.metrics._compare import Comparison as Comparison
from gradshap.metrics._compare import compare as compare
from gradshap.metrics._curves import Curve as Curve
from gradshap.metrics._curves import deletion as deletion
from gradshap.metrics._curves import insertion as insertion
from gradshap.metrics._error import ErrorReport as ErrorReport
from gradshap.metrics._error import error as error
from gradshap.metrics._infidelity import background_perturbations as background_perturbations
from gradshap.metrics._infidelity import infidelity as infidelity
from gradshap.metrics._sensitivity import max_sensitivity as max_sensitivity

__all__ = ["METRICS", "Comparison", "Curve", "ErrorReport", "Score", "background_perturbations", "compare",
           "deletion", "error", "infidelity", "insertion", "max_sensitivity",
           "patches"]
