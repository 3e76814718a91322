"""The demos' models, in PyTorch and in JAX (Flax NNX), and their small training loops.

Both frameworks get the same architectures. Training is plain mini-batch Adam with the
mini-batches drawn from a NumPy generator seeded by ``seed``; the last partial batch of
an epoch is dropped (BatchNorm needs more than one row, and JAX compiles one shape).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from gradshap.backends import require

__all__ = ["build", "fit", "predict", "to_framework"]


# ------------------------------------------------------------------- PyTorch

def _torch_mlp(n_features: int):
    """The MLP of the Gradient SHAP tutorial: two hidden layers of 64, BatchNorm, dropout."""
    nn = require("torch").nn
    return nn.Sequential(OrderedDict(
        layer_1=nn.Linear(n_features, 64), relu_1=nn.ReLU(), batchnorm1=nn.BatchNorm1d(64),
        layer_2=nn.Linear(64, 64), relu_2=nn.ReLU(), batchnorm2=nn.BatchNorm1d(64),
        dropout=nn.Dropout(p=0.5), layer_out=nn.Linear(64, 1),
    ))


def _torch_cnn(n_classes: int):
    """A small CNN for 1x8x8 images: two 3x3 convolutions, a 2x2 max-pool, two dense layers."""
    nn = require("torch").nn
    return nn.Sequential(OrderedDict(
        conv_1=nn.Conv2d(1, 8, 3, padding=1), relu_1=nn.ReLU(),
        conv_2=nn.Conv2d(8, 16, 3, padding=1), relu_2=nn.ReLU(), pool=nn.MaxPool2d(2),
        flatten=nn.Flatten(), dense=nn.Linear(16 * 4 * 4, 64), relu_3=nn.ReLU(),
        dropout=nn.Dropout(p=0.25), layer_out=nn.Linear(64, n_classes),
    ))


def _fit_torch(model, X: np.ndarray, y: np.ndarray, *, task: str, lr: float, batches: Callable) -> list[float]:
    torch = require("torch")
    loss_fn = torch.nn.BCEWithLogitsLoss() if task == "binary" else torch.nn.CrossEntropyLoss()
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(y.astype(np.float32 if task == "binary" else np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for epoch_batches in batches():
        total = 0.0
        for idx in epoch_batches:
            index = torch.from_numpy(idx)
            out = model(Xt[index])
            loss = loss_fn(out[:, 0] if task == "binary" else out, yt[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / max(1, sum(len(i) for i in epoch_batches)))
    model.eval()
    return losses


# ----------------------------------------------------------------------- JAX

def _jax_mlp(n_features: int, seed: int):
    nnx = require("flax.nnx", "jax")

    class MLP(nnx.Module):
        """The tutorial's MLP in Flax NNX (BatchNorm momentum and epsilon as in PyTorch)."""

        def __init__(self, rngs):
            self.layer_1 = nnx.Linear(n_features, 64, rngs=rngs)
            self.batchnorm1 = nnx.BatchNorm(64, momentum=0.9, epsilon=1e-5, rngs=rngs)
            self.layer_2 = nnx.Linear(64, 64, rngs=rngs)
            self.batchnorm2 = nnx.BatchNorm(64, momentum=0.9, epsilon=1e-5, rngs=rngs)
            self.dropout = nnx.Dropout(0.5, rngs=rngs)
            self.layer_out = nnx.Linear(64, 1, rngs=rngs)

        def __call__(self, x):
            x = self.batchnorm1(nnx.relu(self.layer_1(x)))
            x = self.batchnorm2(nnx.relu(self.layer_2(x)))
            return self.layer_out(self.dropout(x))

    return MLP(nnx.Rngs(params=seed, dropout=seed + 1))


def _jax_cnn(n_classes: int, seed: int):
    nnx = require("flax.nnx", "jax")

    class CNN(nnx.Module):
        """The same small CNN, channel-last (N, 8, 8, 1) as Flax convolutions expect."""

        def __init__(self, rngs):
            self.conv_1 = nnx.Conv(1, 8, (3, 3), padding="SAME", rngs=rngs)
            self.conv_2 = nnx.Conv(8, 16, (3, 3), padding="SAME", rngs=rngs)
            self.dense = nnx.Linear(16 * 4 * 4, 64, rngs=rngs)
            self.dropout = nnx.Dropout(0.25, rngs=rngs)
            self.layer_out = nnx.Linear(64, n_classes, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.conv_2(nnx.relu(self.conv_1(x))))
            x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
            return self.layer_out(self.dropout(x))

    return CNN(nnx.Rngs(params=seed, dropout=seed + 1))


def _fit_jax(model, X: np.ndarray, y: np.ndarray, *, task: str, lr: float, batches: Callable) -> list[float]:
    jnp = require("jax.numpy", "jax")
    nnx = require("flax.nnx", "jax")
    optax = require("optax", "jax")
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    def loss_of(m, xb, yb):
        out = m(xb)
        if task == "binary":
            return optax.sigmoid_binary_cross_entropy(out[:, 0], yb).mean()
        return optax.softmax_cross_entropy_with_integer_labels(out, yb).mean()

    @nnx.jit
    def step(m, opt, xb, yb):
        loss, grads = nnx.value_and_grad(loss_of)(m, xb, yb)
        opt.update(m, grads)
        return loss

    Xj = jnp.asarray(X)
    yj = jnp.asarray(y.astype(np.float32 if task == "binary" else np.int32))
    losses = []
    model.train()
    for epoch_batches in batches():
        total = 0.0
        for idx in epoch_batches:
            total += float(step(model, optimizer, Xj[idx], yj[idx])) * len(idx)
        losses.append(total / max(1, sum(len(i) for i in epoch_batches)))
    model.eval()
    return losses


# ------------------------------------------------------------------- public

def to_framework(framework: str, a: np.ndarray):
    """``a`` as the framework's array (float32 stays float32)."""
    if framework == "torch":
        return require("torch").from_numpy(np.ascontiguousarray(a))
    return require("jax.numpy", "jax").asarray(a)


def build(framework: str, kind: str, size: int, seed: int):
    """A fresh model: ``kind`` "mlp" (``size`` features) or "cnn" (``size`` classes)."""
    if framework == "torch":
        torch = require("torch")
        with torch.random.fork_rng():  # the user's global RNG is left as it was
            torch.manual_seed(seed)
            return _torch_mlp(size) if kind == "mlp" else _torch_cnn(size)
    return _jax_mlp(size, seed) if kind == "mlp" else _jax_cnn(size, seed)


def fit(framework: str, model: Any, X: np.ndarray, y: np.ndarray, *, task: str, epochs: int,
        batch_size: int = 32, lr: float = 1e-3, seed: int = 0, progress: bool = True) -> list[float]:
    """Train ``model`` in place with Adam; returns the mean training loss of each epoch."""
    tqdm = require("tqdm", "plots").tqdm
    rng = np.random.default_rng(seed)
    n_full = (len(X) // batch_size) * batch_size

    def batches():
        bar = tqdm(range(epochs), desc="training", unit="epoch", disable=not progress, leave=False)
        for _ in bar:
            perm = rng.permutation(len(X))[:n_full]
            yield [perm[i:i + batch_size] for i in range(0, n_full, batch_size)]

    if framework == "torch":
        torch = require("torch")
        with torch.random.fork_rng():  # dropout draws from torch's global RNG
            torch.manual_seed(seed + 2)
            return _fit_torch(model, X, y, task=task, lr=lr, batches=batches)
    return _fit_jax(model, X, y, task=task, lr=lr, batches=batches)


def predict(framework: str, model: Any, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The model's outputs (logits) on ``X`` in eval mode, as a NumPy array."""
    outs = []
    for i in range(0, len(X), batch_size):
        xb = to_framework(framework, X[i:i + batch_size])
        if framework == "torch":
            with require("torch").no_grad():
                outs.append(model(xb).numpy())
        else:
            outs.append(np.asarray(model(xb)))
    return np.concatenate(outs, axis=0)
