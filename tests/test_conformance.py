"""Conformance matrix: one MLP with BatchNorm and one small CNN, with identical weights in
every framework, explained with one seed, must give the same attributions.

The weights and inputs are made with NumPy from a fixed seed; the reference is PyTorch in
float32. This file checks torch (against an analytic identity), JAX and a tf.Module;
tests/test_keras_conformance.py checks Keras on each of its backends, one process per backend,
against the same reference built from these helpers.

Layouts: torch convolutions are NCHW, everything else here NHWC. The torch CNN takes
NCHW inputs and flattens in HWC order (as a port of a Keras model would); its values are
transposed back to NHWC before comparing.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from conftest import import_or_fail

#: float32 agreement asked of every cell: max |values - reference| / max |reference|.
RTOL = 1e-5
BN_EPS = 1e-3
N_SAMPLES = 32
BATCH_SIZE = 64  # several chunks per call, and a padded last chunk
SEED = 7

#: name -> (explainer keyword arguments); the MLP and CNN use different samplers and targets.
CASES = {
    "mlp": {"target": [0, 2], "sampler": "iid"},
    "cnn": {"target": "predicted", "sampler": "balanced"},
}


@functools.lru_cache(maxsize=None)
def weights(kind: str) -> dict:
    """NumPy float32 weights, identical for every framework (Keras layouts: HWIO, (in, out))."""
    rng = np.random.default_rng(20261121 if kind == "mlp" else 20261122)

    def f32(*shape, scale=1.0, shift=0.0):
        return (shift + scale * rng.standard_normal(shape)).astype(np.float32)

    if kind == "mlp":
        return {
            "w1": f32(6, 16, scale=0.5), "b1": f32(16, scale=0.1),
            "gamma": f32(16, scale=0.2, shift=1.0), "beta": f32(16, scale=0.1),
            "mean": f32(16, scale=0.3), "var": (0.5 + rng.random(16)).astype(np.float32),
            "w2": f32(16, 3, scale=0.5), "b2": f32(3, scale=0.1),
        }
    return {"k": f32(3, 3, 2, 4, scale=0.4), "bk": f32(4, scale=0.1), "wd": f32(36, 3, scale=0.3), "bd": f32(3, scale=0.1)}


@functools.lru_cache(maxsize=None)
def data(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, background) as NumPy float32, channels-last for the CNN."""
    rng = np.random.default_rng(11 if kind == "mlp" else 12)
    shape = (6,) if kind == "mlp" else (8, 8, 2)
    return rng.standard_normal((4, *shape)).astype(np.float32), rng.standard_normal((8, *shape)).astype(np.float32)


def relative_error(values, reference) -> float:
    values, reference = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    assert values.shape == reference.shape
    return float(np.max(np.abs(values - reference)) / np.max(np.abs(reference)))


# ---- torch: the reference ---------------------------------------------------------------

def torch_model(kind: str):
    torch = import_or_fail("torch")
    nn = torch.nn
    p = {k: torch.from_numpy(v) for k, v in weights(kind).items()}
    if kind == "mlp":
        lin1, bn, lin2 = nn.Linear(6, 16), nn.BatchNorm1d(16, eps=BN_EPS), nn.Linear(16, 3)
        with torch.no_grad():
            lin1.weight.copy_(p["w1"].T), lin1.bias.copy_(p["b1"])
            bn.weight.copy_(p["gamma"]), bn.bias.copy_(p["beta"])
            bn.running_mean.copy_(p["mean"]), bn.running_var.copy_(p["var"])
            lin2.weight.copy_(p["w2"].T), lin2.bias.copy_(p["b2"])
        return nn.Sequential(lin1, bn, nn.Tanh(), lin2)

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.dense = nn.Conv2d(2, 4, 3), nn.Linear(36, 3)
            with torch.no_grad():
                self.conv.weight.copy_(p["k"].permute(3, 2, 0, 1)), self.conv.bias.copy_(p["bk"])
                self.dense.weight.copy_(p["wd"].T), self.dense.bias.copy_(p["bd"])

        def forward(self, x):  # x: NCHW
            h = nn.functional.avg_pool2d(torch.tanh(self.conv(x)), 2)
            return self.dense(h.permute(0, 2, 3, 1).flatten(1))  # flatten in HWC order

    return CNN()


@functools.lru_cache(maxsize=None)
def torch_reference(kind: str) -> np.ndarray:
    """Torch float32 attributions, in NHWC for the CNN (plus a trailing axis for a target list)."""
    torch = import_or_fail("torch")
    import gradshap

    x, bg = data(kind)
    to_torch = (lambda a: torch.from_numpy(a)) if kind == "mlp" else (lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy()))
    exp = gradshap.GradientExplainer(torch_model(kind), to_torch(bg), batch_size=BATCH_SIZE)
    values = exp(to_torch(x), seed=SEED, n_samples=N_SAMPLES, **CASES[kind]).values.numpy()
    return values if kind == "mlp" else values.transpose(0, 2, 3, 1)


# ---- JAX: a plain function of (params, x), channels-last --------------------------------

def jax_apply(kind: str, params: dict, x, *, flatten_chw: bool = False):
    jax = import_or_fail("jax")
    jnp = jax.numpy
    if kind == "mlp":
        h = x @ params["w1"] + params["b1"]
        h = (h - params["mean"]) / jnp.sqrt(params["var"] + BN_EPS) * params["gamma"] + params["beta"]
        return jnp.tanh(h) @ params["w2"] + params["b2"]
    h = jax.lax.conv_general_dilated(x, params["k"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jnp.tanh(h + params["bk"])
    n = h.shape[0]
    h = jnp.mean(jnp.reshape(h, (n, 3, 2, 3, 2, 4)), axis=(2, 4))
    h = jnp.transpose(h, (0, 3, 1, 2)) if flatten_chw else h
    return jnp.reshape(h, (n, 36)) @ params["wd"] + params["bd"]


def jax_values(kind: str, **apply_kwargs) -> np.ndarray:
    jax = import_or_fail("jax")
    import gradshap

    params = {k: jax.numpy.asarray(v) for k, v in weights(kind).items()}
    model = functools.partial(jax_apply, kind, params, **apply_kwargs)
    x, bg = (jax.numpy.asarray(a) for a in data(kind))
    exp = gradshap.GradientExplainer(model, bg, batch_size=BATCH_SIZE)
    values = exp(x, seed=SEED, n_samples=N_SAMPLES, **CASES[kind]).values
    assert values.dtype == jax.numpy.float32
    return np.asarray(values)


# ---- TensorFlow: a tf.Module, channels-last ---------------------------------------------

def tf_module(kind: str):
    tf = import_or_fail("tensorflow")
    p = weights(kind)

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.p = {k: tf.Variable(v, name=k) for k, v in p.items()}

        def __call__(self, x):
            p = self.p
            if kind == "mlp":
                h = tf.nn.batch_normalization(x @ p["w1"] + p["b1"], p["mean"], p["var"], p["beta"], p["gamma"], BN_EPS)
                return tf.tanh(h) @ p["w2"] + p["b2"]
            h = tf.tanh(tf.nn.conv2d(x, p["k"], 1, "VALID") + p["bk"])
            h = tf.nn.avg_pool2d(h, 2, 2, "VALID")
            return tf.reshape(h, (-1, 36)) @ p["wd"] + p["bd"]

    return Model()


def tf_values(kind: str) -> np.ndarray:
    tf = import_or_fail("tensorflow")
    import gradshap

    x, bg = (tf.constant(a) for a in data(kind))
    exp = gradshap.GradientExplainer(tf_module(kind), bg, batch_size=BATCH_SIZE)
    assert exp.framework == "tensorflow"
    values = exp(x, seed=SEED, n_samples=N_SAMPLES, **CASES[kind]).values
    assert isinstance(values, tf.Tensor) and values.dtype == tf.float32
    return values.numpy()


# ---- NumPy float64: the estimator written out, with hand-derived gradients ---------------

def numpy_forward_and_grad(kind: str, points: np.ndarray, target: int | None):
    """Outputs (m, 3) at ``points`` and, for ``target``, the gradient of that output."""
    p = {k: v.astype(np.float64) for k, v in weights(kind).items()}
    if kind == "mlp":
        scale = p["gamma"] / np.sqrt(p["var"] + BN_EPS)
        h = np.tanh((points @ p["w1"] + p["b1"] - p["mean"]) * scale + p["beta"])
        out = h @ p["w2"] + p["b2"]
        grad = None if target is None else ((1 - h**2) * scale * p["w2"][:, target]) @ p["w1"].T
        return out, grad
    m = points.shape[0]
    patches = np.stack([np.stack([points[:, i:i + 3, j:j + 3, :] for j in range(6)], 1) for i in range(6)], 1)
    h = np.tanh(np.einsum("nijabc,abco->nijo", patches, p["k"]) + p["bk"])
    out = np.mean(h.reshape(m, 3, 2, 3, 2, 4), axis=(2, 4)).reshape(m, 36) @ p["wd"] + p["bd"]
    if target is None:
        return out, None
    g_pool = p["wd"][:, target].reshape(3, 3, 4)
    g_conv = np.repeat(np.repeat(g_pool, 2, 0), 2, 1) / 4 * (1 - h**2)  # (m, 6, 6, 4)
    grad = np.zeros_like(points)
    for a in range(3):
        for b in range(3):
            grad[:, a:a + 6, b:b + 6, :] += np.einsum("nijo,co->nijc", g_conv, p["k"][a, b])
    return out, grad


def numpy_estimator(kind: str) -> np.ndarray:
    """Expected Gradients for the CASES setting, one draw at a time, in float64."""
    from gradshap import _sampling

    x, bg = (a.astype(np.float64) for a in data(kind))
    case = CASES[kind]
    index, alpha, weight = _sampling.samples(case["sampler"], _sampling.seed_key(SEED), np.arange(len(x)),
                                             N_SAMPLES, len(bg))
    targets = case["target"] if isinstance(case["target"], list) else None
    if targets is None:  # "predicted"
        predicted = np.argmax(numpy_forward_and_grad(kind, x, None)[0], axis=1)
    per_target = []
    for t in targets or [None]:
        rows = []
        for r in range(len(x)):
            tr = predicted[r] if t is None else t
            base = bg[index[r]]
            a = alpha[r].reshape((-1,) + (1,) * (x.ndim - 1))
            _, grad = numpy_forward_and_grad(kind, base + a * (x[r] - base), tr)
            rows.append(np.tensordot(weight, (x[r] - base) * grad, axes=1))
        per_target.append(np.stack(rows))
    return np.stack(per_target, axis=-1) if targets else per_target[0]


# ---- the matrix, main-process part --------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(CASES))
def test_torch_reference_is_the_estimator(kind):
    """The reference itself equals the estimator written out in float64 NumPy with
    hand-derived gradients (same draws), in the input's NHWC shape."""
    reference = torch_reference(kind)
    assert reference.shape == data(kind)[0].shape + ((2,) if kind == "mlp" else ())
    assert relative_error(reference, numpy_estimator(kind)) <= RTOL


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("framework", ["jax", "tensorflow"])
def test_same_attributions_as_torch(framework, kind):
    values = jax_values(kind) if framework == "jax" else tf_values(kind)
    assert relative_error(values, torch_reference(kind)) <= RTOL


def test_matrix_detects_a_layout_mistake():
    """Negative control: flattening the CNN's features in CHW instead of HWC order (the
    classic NCHW/NHWC port bug) is caught by far more than the tolerance."""
    assert relative_error(jax_values("cnn", flatten_chw=True), torch_reference("cnn")) > 1e3 * RTOL
