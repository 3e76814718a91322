"""GradientExplainer: a model and a background, explained by the one engine."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from gradshap import _engine, _layers, _validation, backends
from gradshap.backends import Adapter
from gradshap.explanation import Explanation

__all__ = ["GradientExplainer", "expected_gradients"]


class GradientExplainer:
    """Expected Gradients (GradientSHAP) for a model of any supported framework.

    Parameters
    ----------
    model : torch.nn.Module, JAX callable, Flax NNX or Equinox module, keras.Model,
        tf.Module / callable of tensors, or with ``framework="numpy"`` a pair ``(f, grad_f)``.
        The model maps a batch ``(m, *features)`` (or one batch per input) to ``(m,)``
        or ``(m, n_outputs)``.
    background : array or tuple of arrays
        Background rows, in the model's framework, dtype and device. Its rows define
        what "absent" means: the estimate converges to the average of path integrals from
        each background row to ``x``.
    framework : {"torch", "jax", "keras", "tensorflow", "numpy"}, optional
        Detected from the model and arrays when not given.
    batch_size : int, optional
        Most points sent through the model at once; sets peak memory. By default it
        is chosen from the input size.
    feature_names : sequence of str, optional
        Carried into every Explanation.
    layer : optional
        Explain the output of a hidden layer instead of the inputs: the values are
        Expected Gradients of the rest of the model (the head) at the layer's activations
        of ``x``, against the activations of the background, and have the layer output's
        shape; ``Explanation.data`` holds the activations of ``x``. A torch submodule or
        its name in ``model.named_modules()`` (``(module, i)`` for element ``i`` of a
        tuple output), a Keras layer or its name (functional and Sequential models), or
        for any framework a pair ``(body, head)`` with ``model(x) == head(body(x))``.
        ``x`` and ``background`` are then the model's inputs (token ids included). See
        ``docs/layers.md``.
    """

    def __init__(
        self,
        model: Any,
        background: Any,
        *,
        framework: str | None = None,
        batch_size: int | None = None,
        feature_names: Sequence[str] | None = None,
        layer: Any = None,
    ):
        self.background = background
        self._background = _validation.as_inputs(background, "background")
        self._xp = _validation.namespace_of(self._background, "background")
        self.layer = layer
        self._split, self.adapter = _layers.layer_of(
            model, layer, framework, self._background, lambda: backends.make(model, framework, self._background))
        self._compose = backends.composer(self.adapter)  # a callable target's adapter, kept here
        self.framework = self.adapter.name
        self.model = model
        self.batch_size = None if batch_size is None else _validation.check_positive_int(batch_size, "batch_size")
        # With a layer, names are the layer's units: their count is known at the call only.
        self.feature_names = _validation.check_feature_names(feature_names, () if layer is not None else self._background)

    def __call__(
        self,
        x: Any,
        *,
        target: Any = None,
        n_samples: int = 200,
        sampler: str = "auto",
        stdevs: float = 0.0,
        seed: Any = None,
        progress: bool = False,
        rtol: float | None = None,
        max_samples: int | None = None,
        row_ids: Any = None,
    ) -> Explanation:
        """Explain the rows of ``x``.

        Parameters
        ----------
        x : array or tuple of arrays
            Rows to explain, ``(n, *features)``, like ``background``.
        target : None, int, array of ints, "predicted", list of ints, or callable
            Which output to explain: ``None`` for a single-output model; an int for one
            output of every row; an array (``(n,)`` ints) for one output per row;
            ``"predicted"`` for each row's argmax; a list of ints for several outputs
            (results gain a trailing axis); a callable ``outputs -> (m,)`` in the
            model's framework for anything else.
        n_samples : int
            Gradient evaluations per row (and target); in adaptive mode, the first round.
        sampler : {"auto", "lattice", "balanced", "iid", "sobol", "exhaustive"}
            Sampling design of (baseline, alpha) pairs. ``"auto"`` is ``"lattice"``: every
            background row gets an equal share of the samples and the alphas of each form a
            randomly shifted lattice. ``"exhaustive"`` is deterministic: the same
            ``m``-point Gauss-Legendre rule in alpha for every background row, with
            ``m = n_samples // len(background)`` (so it needs ``n_samples >= len(background)``
            and uses ``m * len(background)`` samples).
            ``"iid"`` is what shap and captum do. See ``docs/accuracy.md``.
        stdevs : float
            Standard deviation of Gaussian noise added to ``x`` per sample (SmoothGrad-style
            local smoothing). The completeness target becomes ``E f(x + noise) - E f(b)``.
        seed : int, numpy.random.Generator or None
            Fixes every draw. The same seed gives the same values for any batch size and
            in every framework. ``None`` takes a fresh seed (and a Generator gives one);
            the integer used is ``Explanation.seed``.
        progress : bool
            Show a tqdm progress bar.
        rtol : float, optional
            Adaptive mode: keep doubling each row's samples until the norm of its standard
            errors, and (without ``stdevs``) its completeness residual, are at most
            ``rtol`` times the norm of its values. ``Explanation.n_samples`` is then an
            array of the samples each row used.
        max_samples : int, optional
            Adaptive mode's budget per row (default ``32 * n_samples``). Rows that do not
            reach ``rtol`` within it are returned with a RuntimeWarning.
        row_ids : array of ints, optional
            One distinct non-negative id per row of ``x`` (default ``0..n-1``). Draws are
            keyed by (seed, row id), so rows explained in pieces, in any order and on any
            worker, get the numbers of one call over them all:
            :meth:`Explanation.concat` joins the pieces.
        """
        xs = _validation.as_inputs(x, "x")
        xp = _validation.namespace_of(xs + self._background, "x")
        background = self._background
        if self._split is not None:
            xs, background = _layers.explain_inputs(self._split, xp, xs, background, self.batch_size)
        result = _engine.run(
            self.adapter, xs, background, target=target, n_samples=n_samples,
            sampler=sampler, stdevs=stdevs, seed=seed, batch_size=self.batch_size,
            progress=progress, xp=xp, rtol=rtol, max_samples=max_samples, compose=self._compose,
            row_ids=row_ids,
        )
        return Explanation.from_result(
            result, data=_layers.data_of(self._split, x, xs[0]),
            many_inputs=self._split is None and isinstance(x, (tuple, list)), feature_names=self.feature_names
        )

    def __repr__(self) -> str:
        return f"GradientExplainer(framework={self.framework!r}, batch_size={self.batch_size})"


class _FunctionAdapter(Adapter):
    """A user's ``value_and_grad(points) -> (outputs, gradients)`` of a scalar function."""

    name = "function"

    def __init__(self, value_and_grad: Callable, n_inputs: int):
        self._fn = value_and_grad
        self._n_inputs = n_inputs

    def _call(self, points: tuple):
        out, grads = self._fn(points if self._n_inputs > 1 else points[0])
        return out, grads if isinstance(grads, tuple) else (grads,)

    def forward(self, points: tuple):
        return self._call(points)[0]

    def value_and_grad(self, points: tuple, cotangent):
        return self._call(points)

    def compose(self, fn: Callable):
        msg = (
            "a callable `target` cannot be composed with a plain `value_and_grad`; select the "
            "output inside value_and_grad, or use gradshap.GradientExplainer"
        )
        raise TypeError(msg)


def expected_gradients(
    value_and_grad: Callable,
    x: Any,
    background: Any,
    *,
    target: Any = None,
    n_samples: int = 200,
    sampler: str = "auto",
    stdevs: float = 0.0,
    seed: Any = None,
    batch_size: int | None = None,
    progress: bool = False,
    xp: Any = None,
    rtol: float | None = None,
    max_samples: int | None = None,
    row_ids: Any = None,
):
    """Expected Gradients for any differentiable function, in any array-API namespace.

    Parameters
    ----------
    value_and_grad : callable or Adapter
        ``value_and_grad(points) -> (outputs, gradients)`` for a function with one scalar
        output per row: ``outputs`` has shape ``(m,)`` and ``gradients`` the shape of
        ``points`` (a tuple of arrays for a model with several inputs). Rows must be
        independent (no batch statistics). An adapter from :mod:`gradshap.backends`
        is also accepted and then supports every kind of ``target``.
    x, background : array or tuple of arrays
        Rows to explain, and the background rows whose distribution defines "absent".
    target : None
        With a plain ``value_and_grad`` the function is already scalar: leave ``None``.
    n_samples, sampler, stdevs, seed, batch_size, progress, rtol, max_samples, row_ids
        As for :class:`gradshap.GradientExplainer`.
    xp : array namespace, optional
        Inferred from ``x`` when not given.

    Returns
    -------
    Explanation

    Examples
    --------
    >>> import numpy as np, gradshap
    >>> w = np.array([1.0, -2.0, 0.5])
    >>> vg = lambda p: (p @ w, np.broadcast_to(w, p.shape))
    >>> bg = np.zeros((4, 3)); x = np.ones((2, 3))
    >>> exp = gradshap.expected_gradients(vg, x, bg, n_samples=8, seed=0)
    >>> np.allclose(exp.values, w * (x - bg.mean(0)))
    True
    """
    xs = _validation.as_inputs(x, "x")
    bgs = _validation.as_inputs(background, "background")
    adapter = value_and_grad if isinstance(value_and_grad, Adapter) else _FunctionAdapter(value_and_grad, len(xs))
    if not isinstance(value_and_grad, Adapter) and target is not None:
        msg = (
            "`target` must be None with a plain `value_and_grad`, which already returns one "
            f"scalar per row; got {target!r}. Select the output inside value_and_grad, or use "
            "gradshap.GradientExplainer"
        )
        raise ValueError(msg)
    result = _engine.run(
        adapter, xs, bgs, target=target, n_samples=n_samples, sampler=sampler, stdevs=stdevs,
        seed=seed, batch_size=batch_size, progress=progress, xp=xp, rtol=rtol, max_samples=max_samples,
        row_ids=row_ids,
    )
    return Explanation.from_result(result, data=x, many_inputs=isinstance(x, (tuple, list)))
