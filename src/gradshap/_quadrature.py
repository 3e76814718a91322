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

Gauss-Legendre nodes
--------------------
Up to 64 nodes, :func:`numpy.polynomial.legendre.leggauss` (an eigenvalue problem, then a
Newton step). Above, each node and weight is computed in closed form, O(1) work per node
and O(m) in all, with no iteration, by the asymptotic expansions of

    I. Bogaert, "Iteration-free computation of Gauss-Legendre quadrature nodes and
    weights", SIAM J. Sci. Comput. 36(3), A1008-A1026 (2014),

whose error falls fast with ``m``: against a 40-digit Newton solution, nodes and weights
are within 1e-15 relative from 65 nodes on, up to the rounding residue that
:func:`_normalised` folds into the largest weight (numpy's weights are off by 2e-12 at
100 nodes, and by 2e-7 at the end nodes of 3,000; its eigenvalue problem costs O(m**3)).
"""

from __future__ import annotations

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


#: From this many nodes on, Bogaert's expansions. Their error falls fast with m, numpy's
#: grows: largest relative error of a weight against a 40-digit reference, Bogaert's / numpy's,
#: 5e-12 / 7e-14 at 20 nodes, 3e-14 / 7e-13 at 40, 8e-16 / 1.3e-12 at 64.
_ASYMPTOTIC_FROM = 65

# The first 21 zeros ``j`` of the Bessel function J0, each with J1(j)**2 (computed with
# mpmath at 30 digits). Further zeros come from McMahon's expansion.
_BESSEL_J0_ZEROS = np.array([
    (2.4048255576957728, 0.26951412394191693), (5.5200781102863106, 0.1157801385822037),
    (8.6537279129110122, 0.073686351136408215), (11.791534439014282, 0.054037573198116282),
    (14.930917708487786, 0.042661429017243091), (18.071063967910923, 0.035242103490996101),
    (21.211636629879259, 0.030021070103054673), (24.352471530749303, 0.026147391495308089),
    (27.493479132040255, 0.023159121824691392), (30.634606468431975, 0.020783829122267858),
    (33.775820213573569, 0.018850450669317668), (36.917098353664044, 0.017246157569665008),
    (40.058425764628239, 0.015893518105923598), (43.19979171317673, 0.01473762609647219),
    (46.341188371661814, 0.013738465145387118), (49.482609897397817, 0.012866181737615133),
    (52.624051841114996, 0.012098051548626798), (55.765510755019979, 0.011416471224491609),
    (58.906983926080942, 0.010807592791180204), (62.04846919022717, 0.010260372926280763),
    (65.18996480020686, 0.0097658971397910505),
])

# Bogaert's polynomial fits, in x = alpha**2, of the coefficient functions of his expansions
# of the node angle (F1, F2, F3) and of the weight (W1, W2, W3); highest power first, for
# np.polyval. Values from the paper's reference code (FastGL).
_NODE_FITS = (
    (-1.29052996274280508e-12, 2.40724685864330122e-10, -3.13148654635992041e-8,
     2.75573168962061236e-6, -1.48809523713909148e-4, 4.16666666665193395e-3, -4.16666666666662960e-2),
    (2.20639421781871004e-9, -7.53036771373769327e-8, 1.61969259453836262e-6,
     -2.53300326008232026e-5, 2.82116886057560435e-4, -2.09022248387852903e-3, 8.15972221772932266e-3),
    (-2.97058225375526230e-8, 5.55845330223796210e-7, -5.67797841356833082e-6,
     4.18498100329504574e-5, -2.51395293283965915e-4, 1.28654198542845137e-3, -4.16012165620204365e-3),
)
_WEIGHT_FITS = (
    (-2.20902861044616638e-14, 2.30365726860377377e-12, -1.75257700735423808e-10, 1.03756066927916796e-8,
     -4.63968647553221331e-7, 1.49644593625028648e-5, -3.26278659594412170e-4, 4.36507936507598105e-3,
     -3.05555555555553028e-2, 8.33333333333333302e-2),
    (3.63117412152654783e-12, 7.67643545069893131e-11, -7.12912857233642221e-9, 2.11483880685947151e-7,
     -3.81817918680045468e-6, 4.65969530694968391e-5, -4.07297185611335764e-4, 2.68959435694729661e-3,
     -1.11111111111214923e-2),
    (2.01826791256703302e-9, -4.38647122520206649e-8, 5.08898347288671653e-7, -3.97933316519135276e-6,
     2.00559326396458327e-5, -4.22888059282921162e-5, -1.05646050254076141e-4, -9.47969308958577323e-5,
     6.56966489926484797e-3),
)

# Asymptotic series of J1(j_k)**2 for k past the table, with y = 1 / (k - 1/4):
# y * (2 / pi**2 + y**4 * S(y**2)), S's coefficients (highest power first) from the same paper.
_J1_SQUARED_SERIES = (
    1.85395398206345629e-1, -2.66837393702323758e-2, 4.96101423268883103e-3, -1.23632349727175415e-3,
    4.33710719130746278e-4, -2.28969902772111653e-4, 1.98924364245969295e-4, -3.03380429711290253e-4,
)


def _bessel_j0_zeros(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``k``-th zeros ``j`` of J0 (``k >= 1``) and ``J1(j)**2``."""
    # McMahon's expansion (DLMF 10.21.19 at order 0); its next term is below 2e-17 of j
    # from k = 22, the first zero past the table, on.
    a = np.pi * (k - 0.25)
    r2 = 1.0 / (a * a)
    zeros = a + (1.0 / 8.0 + r2 * (-31.0 / 384.0 + r2 * (3779.0 / 15360.0 - r2 * 6277237.0 / 3440640.0))) / a
    y = 1.0 / (k - 0.25)
    y2 = y * y
    j1_squared = y * (2.0 / np.pi**2 + y2 * y2 * np.polyval(_J1_SQUARED_SERIES, y2))
    n = min(len(k), len(_BESSEL_J0_ZEROS))
    zeros[:n], j1_squared[:n] = _BESSEL_J0_ZEROS[:n, 0], _BESSEL_J0_ZEROS[:n, 1]
    return zeros, j1_squared


def _bogaert(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (on [0, 1], ascending) and weights (on [-1, 1]) of the m-point rule, m >= 65.

    The ``k``-th node from either end is ``(1 -+ cos theta_k) / 2``: ``theta_k`` and its
    weight come in closed form from the ``k``-th zero of J0 (Bogaert 2014).
    """
    half = (m + 1) // 2  # k = 1 .. half reaches the middle; the rest mirror them
    k = np.arange(1, half + 1, dtype=np.float64)
    j, b = _bessel_j0_zeros(k)
    v = 1.0 / (m + 0.5)
    alpha = v * j
    x = alpha * alpha
    f1, f2, f3 = (np.polyval(c, x) for c in _NODE_FITS)
    g1, g2, g3 = (np.polyval(c, x) for c in _WEIGHT_FITS)
    j_over_sin = j / np.sin(alpha)
    u = v * v * j_over_sin
    u2 = u * u
    theta = v * (j + alpha * u * (f1 + u2 * (f2 + u2 * f3)))
    weights = 2.0 * v / (b * j_over_sin * (1.0 + u2 * (g1 + u2 * (g2 + u2 * g3))))
    # (1 - cos theta) / 2 = sin(theta / 2)**2: full relative accuracy near 0.
    low = np.sin(0.5 * theta) ** 2
    lower = m // 2
    middle = [0.5] if m % 2 else []
    nodes = np.concatenate([low[:lower], middle, 1.0 - low[:lower][::-1]])
    return nodes, np.concatenate([weights, weights[:lower][::-1]])


def gauss_legendre(m: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m``-point Gauss-Legendre rule on ``[0, 1]``: exact for polynomials of degree ``< 2m``.

    Up to 64 nodes, numpy's eigenvalue method; above, Bogaert's closed forms, O(1) work per
    node (see the module docstring).
    """
    m = int(m)
    if m < _ASYMPTOTIC_FROM:
        t, w = np.polynomial.legendre.leggauss(m)
        return (t + 1.0) / 2.0, _normalised(w)
    t, w = _bogaert(m)
    return t, _normalised(w)


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
