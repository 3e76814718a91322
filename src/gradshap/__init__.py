"""gradshap: Expected Gradients (GradientSHAP) for PyTorch, JAX, Keras 3 and TensorFlow.

One engine, written against the Python array API, on thin framework adapters. Importing
gradshap imports no deep-learning framework, and no matplotlib: ``gradshap.plots`` is
loaded on first use (``gradshap.plots.bar(exp)`` works after a plain ``import gradshap``).
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
    "plots",
    "reference",
    "token_attributions",
]

#: Submodules loaded on first attribute access, so that ``import gradshap`` stays light.
_LAZY_SUBMODULES = ("plots",)


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"gradshap.{name}")  # also binds it on the package
    msg = f"module 'gradshap' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
