"""Small models with known answers, built with identical weights in every framework."""

from __future__ import annotations

import numpy as np

from conftest import import_or_fail


def linear_weights(rng, n_features: int, n_outputs: int = 1):
    return rng.normal(size=(n_features, n_outputs)), rng.normal(size=(n_outputs,))


def mlp_weights(rng, sizes=(6, 16, 16, 3)):
    """Weights of a tanh MLP, scaled so the model is clearly nonlinear on N(0, 1) inputs."""
    return [(rng.normal(size=(a, b)) / np.sqrt(a) * 1.5, rng.normal(size=(b,)) * 0.3) for a, b in zip(sizes, sizes[1:])]


def numpy_mlp(weights):
    """(f, grad_f) for the tanh MLP: f (m, K) and its Jacobian (m, K, d)."""

    def f(p):
        h = p
        for i, (w, b) in enumerate(weights):
            h = h @ w + b
            if i < len(weights) - 1:
                h = np.tanh(h)
        return h

    def grad_f(p):
        jac = np.broadcast_to(np.eye(p.shape[1]), (p.shape[0], p.shape[1], p.shape[1]))
        h = p
        for i, (w, b) in enumerate(weights):
            h = h @ w + b
            jac = jac @ w  # (m, d, width)
            if i < len(weights) - 1:
                h = np.tanh(h)
                jac = jac * (1 - h**2)[:, None, :]
        return np.transpose(jac, (0, 2, 1))

    return f, grad_f


def torch_mlp(weights, dtype="float64"):
    torch = import_or_fail("torch")
    layers = []
    for i, (w, b) in enumerate(weights):
        lin = torch.nn.Linear(*w.shape).to(getattr(torch, dtype))
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(w.T))
            lin.bias.copy_(torch.as_tensor(b))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def jax_mlp(weights):
    jnp = import_or_fail("jax").numpy
    ws = [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights]

    def f(p):
        h = p
        for i, (w, b) in enumerate(ws):
            h = h @ w + b
            if i < len(ws) - 1:
                h = jnp.tanh(h)
        return h

    return f


def tf_mlp(weights, dtype="float64"):
    """The tanh MLP as a ``tf.Module``."""
    tf = import_or_fail("tensorflow")

    class TanhMLP(tf.Module):
        def __init__(self):
            super().__init__()
            self.layers = [(tf.Variable(w.astype(dtype)), tf.Variable(b.astype(dtype))) for w, b in weights]

        def __call__(self, x):
            h = x
            for i, (w, b) in enumerate(self.layers):
                h = h @ w + b
                h = tf.tanh(h) if i < len(self.layers) - 1 else h
            return h

    return TanhMLP()


class Backend:
    """One framework's arrays and models, for the tests that run in every framework (the
    ``backend`` fixture of conftest.py). ``numpy`` is the engine's own NumPy path, with
    models given as ``(f, jacobian)``."""

    def __init__(self, name: str):
        self.name = name
        self.lib = None if name == "numpy" else import_or_fail(name)

    def __repr__(self) -> str:
        return self.name

    def array(self, a, dtype: str = "float64"):
        """``a`` as this framework's array of ``dtype``, on its default device."""
        a = np.asarray(a, dtype=dtype)
        if self.name == "torch":
            return self.lib.from_numpy(a.copy())
        if self.name == "jax":
            return self.lib.numpy.asarray(a)
        if self.name == "tensorflow":
            return self.lib.constant(a)
        return a

    @staticmethod
    def host(a) -> np.ndarray:
        """A NumPy copy (tuples map elementwise)."""
        from gradshap._arrays import to_numpy

        return to_numpy(a)

    def device(self, a) -> str:
        if self.name == "tensorflow":
            return a.device
        import array_api_compat as aac

        return str(aac.device(a))

    def linear(self, w: np.ndarray, b: np.ndarray, dtype: str = "float64"):
        """``x @ w + b`` (``(m, K)`` outputs)."""
        w, b = np.asarray(w, dtype=dtype), np.asarray(b, dtype=dtype)
        if self.name == "numpy":
            def jacobian(p):
                return np.broadcast_to(w[:, 0], p.shape) if w.shape[1] == 1 else np.broadcast_to(w.T, (p.shape[0], *w.T.shape))

            return (lambda p: p @ w + b), jacobian
        if self.name == "torch":
            lin = self.lib.nn.Linear(*w.shape).to(getattr(self.lib, dtype))
            with self.lib.no_grad():
                lin.weight.copy_(self.lib.from_numpy(w.T.copy()))
                lin.bias.copy_(self.lib.from_numpy(b))
            return lin
        wa, ba = self.array(w, dtype), self.array(b, dtype)
        return lambda p: p @ wa + ba

    def mlp(self, weights, dtype: str = "float64"):
        """The tanh MLP of :func:`mlp_weights` (three outputs)."""
        if self.name == "numpy":
            return numpy_mlp(weights)
        if self.name == "torch":
            return torch_mlp(weights, dtype)
        if self.name == "tensorflow":
            return tf_mlp(weights, dtype)
        return jax_mlp(weights)

    def explainer(self, model, background, **kwargs):
        import gradshap

        return gradshap.GradientExplainer(model, background, framework=self.name, **kwargs)


def reference_estimate(grad, x: np.ndarray, background: np.ndarray, *, n_samples: int, sampler: str = "auto",
                       seed=None) -> np.ndarray:
    """Expected Gradients' estimate written out in NumPy from the engine's own draws
    (:func:`gradshap._sampling.samples`, row ``r`` of the call being row id ``r``):
    ``sum_j w_j (x - b_j) * grad(b_j + a_j (x - b_j))``, with ``grad(points) -> (m, d)``
    the gradient of the scalar explained."""
    from gradshap import _sampling

    n, d = x.shape
    index, alpha, w = _sampling.samples(sampler, _sampling.seed_key(seed), np.arange(n), n_samples, len(background))
    base = background[index]  # (n, s, d)
    diff = x[:, None, :] - base
    g = np.reshape(grad(np.reshape(base + alpha[..., None] * diff, (-1, d))), diff.shape)
    return np.einsum("s,nsd->nd", w, diff * g)


#: The per-row fields of an Explanation that partition invariance compares.
ROW_FIELDS = ("values", "stderr", "base_values", "output", "delta")


def assert_same_rows(exp, whole, host=np.asarray) -> None:
    """``exp`` (rows explained in pieces and joined) holds ``whole``'s numbers: the same row
    ids, seed and sampler, and every per-row field equal to 1e-12 relative with the same
    shape and dtype. ``delta`` is a difference of terms of the size of ``output`` and
    ``base_values``: its rounding is relative to those."""
    np.testing.assert_array_equal(exp.row_ids, whole.row_ids)
    assert exp.seed == whole.seed and exp.sampler == whole.sampler
    scale = max(np.max(np.abs(host(getattr(whole, name)))) for name in ("output", "base_values"))
    for name in ROW_FIELDS:
        a, b = host(getattr(exp, name)), host(getattr(whole, name))
        assert a.shape == b.shape and a.dtype == b.dtype, name
        floor = 1e-12 * scale if name == "delta" else 1e-14 * np.max(np.abs(b))
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=floor, err_msg=name)
