"""NumPy models with analytic gradients, shared by the accuracy tests.

Each model is a ``value_and_grad(points) -> (outputs, gradients)`` for
:func:`gradshap.expected_gradients`, with ``.f`` for forward-only references and
``.pair`` for ``framework="numpy"``.
"""

from __future__ import annotations

import numpy as np


class Model:
    def __init__(self, f, grad):
        self.f, self.grad = f, grad
        self.pair = (f, grad)

    def __call__(self, points):
        return self.f(points), self.grad(points)


def linear(w: np.ndarray, bias: float = 0.3) -> Model:
    return Model(lambda p: p @ w + bias, lambda p: np.broadcast_to(w, p.shape).copy())


def additive(w: np.ndarray) -> Model:
    """``sum_i w_i sin(x_i)``: an additive model that is not polynomial."""
    return Model(lambda p: np.sin(p) @ w, lambda p: np.cos(p) * w)


def multilinear(terms: list[tuple[int, ...]], coef: np.ndarray) -> Model:
    """``sum_t coef_t prod_{i in term t} x_i``: linear in each feature."""

    def f(p):
        return sum(c * np.prod(p[:, list(t)], axis=1) for c, t in zip(coef, terms))

    def grad(p):
        g = np.zeros_like(p)
        for c, t in zip(coef, terms):
            for i in t:
                others = [j for j in t if j != i]
                g[:, i] += c * (np.prod(p[:, others], axis=1) if others else 1.0)
        return g

    return Model(f, grad)


def network(d: int, hidden: int = 24, *, seed: int = 0, act: str = "relu") -> Model:
    """``v . act(W x + c)``: piecewise linear (``relu``) or smooth (``tanh``)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(hidden, d)) / np.sqrt(d)
    c = rng.normal(size=hidden) * 0.3
    v = rng.normal(size=hidden) / np.sqrt(hidden)

    def f(p):
        z = p @ w.T + c
        return (np.maximum(z, 0.0) if act == "relu" else np.tanh(z)) @ v

    def grad(p):
        z = p @ w.T + c
        slope = (z > 0).astype(p.dtype) if act == "relu" else 1.0 - np.tanh(z) ** 2
        return (slope * v) @ w

    model = Model(f, grad)
    model.params = (w, c, v)
    return model


def relative_error(estimate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-row ``||estimate - reference|| / ||reference||``."""
    n = reference.shape[0]
    diff = np.reshape(estimate - reference, (n, -1))
    return np.linalg.norm(diff, axis=1) / np.linalg.norm(np.reshape(reference, (n, -1)), axis=1)
