"""Integrated Gradients: the single-baseline case of the engine, with a deterministic rule in alpha."""

from __future__ import annotations

from typing import Any, Sequence

import array_api_compat as aac

from gradshap import _engine, _layers, _quadrature, _sampling, _validation, backends
from gradshap.explanation import Explanation

__all__ = ["IntegratedGradients"]


class IntegratedGradients:
    """Integrated Gradients (Sundararajan et al., 2017) on the same engine and adapters.

    ``phi_i = (x_i - b_i) * integral_0^1 d f(b + a (x - b)) / d x_i da``, the integral
    taken by a quadrature rule whose weights sum to exactly 1, so a constant gradient
    (a linear model) is integrated exactly by every method.

    Parameters
    ----------
    model
        As for :class:`gradshap.GradientExplainer`.
    baseline : array or tuple of arrays, optional
        ``None`` (zeros), one baseline shaped like a row of ``x`` (with or without a
        leading axis of 1), or one baseline per row of ``x`` (``(n, *features)``).
    framework : str, optional
        Detected from the model and arrays when not given.
    batch_size : int, optional
        Most points sent through the model at once.
    feature_names : sequence of str, optional
        Carried into every Explanation.
    layer : optional
        Attribute to a hidden layer's output, as for :class:`gradshap.GradientExplainer`:
        the path runs in the layer's activations, from the baseline's activations to
        those of ``x`` (``baseline`` is given at the model's inputs, e.g. pad token ids),
        and completeness holds there. See ``docs/layers.md``.

    Examples
    --------
    >>> import numpy as np, gradshap
    >>> f = lambda p: np.prod(p, axis=1)                       # f(x) = x1 * x2 * x3
    >>> grad = lambda p: np.prod(p, axis=1)[:, None] / p
    >>> ig = gradshap.IntegratedGradients((f, grad), framework="numpy")
    >>> x = np.array([[1.0, 2.0, 3.0]])
    >>> exp = ig(x, n_steps=2)                                   # exact: degree-2 integrand
    >>> np.allclose(exp.values, f(x) / 3), np.allclose(exp.delta, 0)
    (True, True)
    """

    def __init__(
        self,
        model: Any,
        baseline: Any = None,
        *,
        framework: str | None = None,
        batch_size: int | None = None,
        feature_names: Sequence[str] | None = None,
        layer: Any = None,
    ):
        self.model = model
        self.layer, self._split = layer, None
        self.baseline = baseline
        self._framework = framework
        self.batch_size = None if batch_size is None else _validation.check_positive_int(batch_size, "batch_size")
        # Checked against the inputs' feature shapes at the first call (the baseline may be None).
        self.feature_names = _validation.check_feature_names(feature_names, ())
        self.adapter = self._compose = None
        if baseline is not None:
            arrays = _validation.as_inputs(baseline, "baseline")
            _validation.namespace_of(arrays, "baseline")
            self._made(arrays)

    def _made(self, arrays: tuple) -> None:
        self._split, adapter = _layers.layer_of(
            self.model, self.layer, self._framework, arrays, lambda: backends.make(self.model, self._framework, arrays))
        self.adapter = adapter
        self._compose = backends.composer(adapter)  # a callable target's adapter, kept here

    @property
    def framework(self) -> str | None:
        return None if self.adapter is None else self.adapter.name

    def _baselines(self, xp, xs: tuple) -> tuple[tuple, bool]:
        """Baselines as a tuple of ``(m, *features)`` arrays, and whether there is one per row."""
        n = xs[0].shape[0]
        if self.baseline is None:
            return tuple(xp.full((1, *a.shape[1:]), 0.0, dtype=a.dtype, device=aac.device(a)) for a in xs), False
        bs = _validation.as_inputs(self.baseline, "baseline")
        if len(bs) != len(xs):
            msg = f"`baseline` has {len(bs)} input(s) but `x` has {len(xs)}; pass one baseline array per model input"
            raise ValueError(msg)
        out, per_row = [], set()
        for k, (b, a) in enumerate(zip(bs, xs)):
            feat = tuple(a.shape[1:])
            name = "`baseline`" if len(bs) == 1 else f"`baseline[{k}]`"
            if tuple(b.shape) == feat:
                b = xp.reshape(b, (1, *feat))
            if tuple(b.shape[1:]) != feat or b.shape[0] not in (1, n):
                msg = (
                    f"{name} has shape {_validation.shape_str(tuple(b.shape))}; expected "
                    f"{_validation.shape_str(feat)}, {_validation.shape_str((1, *feat))} or "
                    f"{_validation.shape_str((n, *feat))} (one baseline per row of `x`)"
                )
                raise ValueError(msg)
            per_row.add(b.shape[0] == n and n > 1)
            out.append(b)
        if len(per_row) > 1:
            msg = "`baseline` arrays must all be shared (one row) or all per-row (n rows)"
            raise ValueError(msg)
        return tuple(out), per_row.pop()

    def __call__(
        self,
        x: Any,
        *,
        target: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        progress: bool = False,
        row_ids: Any = None,
    ) -> Explanation:
        """Attribute the rows of ``x``.

        Parameters
        ----------
        x : array or tuple of arrays
            Rows to explain, ``(n, *features)``.
        target
            As for :class:`gradshap.GradientExplainer`.
        n_steps : int
            Gradient evaluations per row (nodes of the rule).
        method : {"gausslegendre", "midpoint", "trapezoid", "left", "right"}
            Gauss-Legendre (default) is exact for polynomial integrands of degree
            ``< 2 * n_steps``; midpoint and trapezoid err like ``n_steps**-2`` on smooth
            paths, left and right like ``n_steps**-1``.
        row_ids : array of ints, optional
            One distinct non-negative id per row (default ``0..n-1``), carried into the
            Explanation so that pieces join with :meth:`Explanation.concat`. The rule is
            deterministic: the numbers do not depend on the ids.

        Returns
        -------
        Explanation
            ``base_values`` is ``f(baseline)``, ``delta`` the completeness residual
            ``sum(values) - (f(x) - f(baseline))`` of each row, and ``stderr`` the
            error a kink of the observed size would cause with this rule (an indicator:
            the rule is deterministic; see ``docs/accuracy.md``).
        """
        n_steps = _validation.check_positive_int(n_steps, "n_steps")
        if not isinstance(method, str) or method not in _quadrature.METHODS:
            msg = f"`method` must be one of {', '.join(map(repr, _quadrature.METHODS))}; got {method!r}"
            raise ValueError(msg)
        xs = _validation.as_inputs(x, "x")
        xp = _validation.namespace_of(xs, "x")
        baselines, per_row = self._baselines(xp, xs)
        if self.adapter is None:  # no baseline given: the framework is known from the first x
            self._made(xs)
        adapter = self.adapter
        design = _sampling.rule_design(method, n_steps, paired=per_row)
        if self._split is not None:
            xs, baselines = _layers.explain_inputs(self._split, xp, xs, baselines, self.batch_size)
        result = _engine.run(
            adapter, xs, baselines, target=target, n_samples=n_steps, sampler=design,
            batch_size=self.batch_size, progress=progress, xp=xp, seed=0, compose=self._compose, row_ids=row_ids,
        )
        return Explanation.from_result(
            result, data=_layers.data_of(self._split, x, xs[0]),
            many_inputs=self._split is None and isinstance(x, (tuple, list)),
            feature_names=_validation.check_feature_names(self.feature_names, xs),
        )

    def __repr__(self) -> str:
        return f"IntegratedGradients(framework={self.framework!r}, batch_size={self.batch_size})"
