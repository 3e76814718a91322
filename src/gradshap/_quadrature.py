"""Rules for the path integral in alpha, and the constants of their error model.

Every rule here integrates over ``[0, 1]`` with weights that sum to exactly 1 (checked
with :func:`math.fsum`), so a constant integrand, such as the gradient of a linear
model, is integrated without error by every method.

Error model
-----------
Along a path from a baseline to ``x``, the integrand of a ReLU network is piecewise
constant: it jumps where a unit switches on or off. A jump of size ``d`` at ``t`` adds
``d * (W(t) - t)`` to the error of a rule, where ``W(t)`` is the total weight of the
nodes left of ``t``, and adds ``d**2 * W(t) * (1 - W(t))`` to the weighted spread of the
integrand over the nodes. Averaged over a uniformly placed jump these are

    A = integral_0^1 (W(t) - t)**2 dt        and        B = integral_0^1 W(t) (1 - W(t)) dt,

so ``A / B`` turns the spread of the integrand over a rule's nodes, which is observed,
into the squared error the rule is expected to make on an integrand with that much
jumpy variation. :func:`jump_constants` computes ``A`` and ``B`` exactly for a rule.
The same model gives the exact answer for i.i.d. nodes, and for a randomly shifted
lattice it reproduces the lattice's error for any integrand whose periodic extension
has a Fourier spectrum falling like ``1/h`` (a jump anywhere, or ``f(0) != f(1)``);
for smooth integrands it overstates the error of every rule.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["METHODS", "gauss_legendre", "jump_constants", "rule"]

#: Integration methods of :class:`gradshap.IntegratedGradients`.
METHODS = ("gausslegendre", "midpoint", "trapezoid", "left", "right")


def _normalised(weights: np.ndarray) -> np.ndarray:
    """``weights`` scaled to sum to 1, with the rounding residue folded into the largest one."""
    w = np.asarray(weights, dtype=np.float64) / math.fsum(weights)
    for _ in range(3):
        residue = 1.0 - math.fsum(w)
        if residue == 0.0:
            break
        k = int(np.argmax(w))
        w[k] = w[k] + residue
    return w


@functools.lru_cache(maxsize=64)
def _gauss_legendre(m: int) -> tuple[np.ndarray, np.ndarray]:
    if m <= 64:
        t, w = np.polynomial.legendre.leggauss(m)
    else:
        # Newton's method from the asymptotic guesses, all nodes at once: O(m^2) work where the
        # eigenvalue method is O(m^3) (seconds for thousands of nodes).
        k = np.arange(1, m + 1)
        t = np.cos(np.pi * (k - 0.25) / (m + 0.5))
        for _ in range(100):
            p0, p1 = np.ones_like(t), t.copy()
            for j in range(2, m + 1):
                p0, p1 = p1, ((2 * j - 1) * t * p1 - (j - 1) * p0) / j
            dp = m * (t * p1 - p0) / (t * t - 1.0)
            step = p1 / dp
            t = t - step
            if np.max(np.abs(step)) < 1e-15:
                break
        p0, p1 = np.ones_like(t), t.copy()
        for j in range(2, m + 1):
            p0, p1 = p1, ((2 * j - 1) * t * p1 - (j - 1) * p0) / j
        dp = m * (t * p1 - p0) / (t * t - 1.0)
        w = 2.0 / ((1.0 - t * t) * dp * dp)
        t = t[::-1].copy()
        w = w[::-1].copy()
    return (t + 1.0) / 2.0, _normalised(w)


def gauss_legendre(m: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m``-point Gauss-Legendre rule on ``[0, 1]``: exact for polynomials of degree ``< 2m``."""
    t, w = _gauss_legendre(int(m))
    return t.copy(), w.copy()


def rule(method: str, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of an ``m``-point rule on ``[0, 1]``, nodes ascending."""
    if method not in METHODS:
        msg = f"`method` must be one of {', '.join(map(repr, METHODS))}; got {method!r}"
        raise ValueError(msg)
    if method == "gausslegendre":
        return gauss_legendre(m)
    if method == "trapezoid":
        if m < 2:
            msg = f"`n_steps` must be at least 2 for method='trapezoid' (it uses both end points); got {m}"
            raise ValueError(msg)
        w = np.ones(m)
        w[0] = w[-1] = 0.5
        return np.linspace(0.0, 1.0, m), _normalised(w)
    offset = {"midpoint": 0.5, "left": 0.0, "right": 1.0}[method]
    return (np.arange(m) + offset) / m, _normalised(np.ones(m))


def jump_constants(nodes: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """``(A, B)`` of the error model above for a deterministic rule (exact integrals)."""
    order = np.argsort(nodes, kind="stable")
    t = np.concatenate([[0.0], np.asarray(nodes, dtype=np.float64)[order], [1.0]])
    level = np.concatenate([[0.0], np.cumsum(np.asarray(weights, dtype=np.float64)[order])])
    level[-1] = 1.0
    a, b = t[:-1], t[1:]
    # On [a, b) the cumulative weight W is the constant `level`.
    sq = ((b - level) ** 3 - (a - level) ** 3) / 3.0
    spread = level * (1.0 - level) * (b - a)
    return float(np.sum(sq)), float(np.sum(spread))
