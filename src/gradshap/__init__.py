"""gradshap: Expected Gradients (GradientSHAP) for PyTorch, JAX, Keras 3 and TensorFlow.

One engine, written against the Python array API, on thin framework adapters. Importing
gradshap imports no deep-learning framework.
"""

from gradshap import reference as reference
from gradshap._explainer import GradientExplainer as GradientExplainer
from gradshap._explainer import expected_gradients as expected_gradients
from gradshap._groups import Group as Group
from gradshap._groups import GroupedExplanation as GroupedExplanation
from gradshap._groups import confusion_labels as confusion_labels
from gradshap._integrated import IntegratedGradients as IntegratedGradients
from gradshap._sampling import SAMPLERS as SAMPLERS
from gradshap._text import token_attributions as token_attributions
from gradshap.explanation import Explanation as Explanation

__version__ = "0.1.0"

__all__ = [
    "SAMPLERS",
    "Explanation",
    "GradientExplainer",
    "Group",
    "GroupedExplanation",
    "IntegratedGradients",
    "__version__",
    "confusion_labels",
    "expected_gradients",
    "reference",
    "token_attributions",
]
