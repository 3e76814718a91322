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
