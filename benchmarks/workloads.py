"""Fixed benchmark workloads: one set of NumPy weights, loaded into every framework.

Each workload is a model architecture, a weight generator, input and background data,
and one builder per framework that turns the NumPy weights into that framework's model.
Weights come from a fixed NumPy seed, so every framework runs exactly the same function
and the benchmark can compare the values it explains across frameworks.

Layouts: arrays are NCHW (PyTorch's convention) for torch and JAX; Keras and TensorFlow
take NHWC, so their builders transpose the kernels and :func:`to_layout` the data.

- ``mlp``: the seed-002 tabular classifier, 30 -> 64 -> 64 -> 1 with ReLU, BatchNorm1d
  and dropout (eval mode, so dropout is the identity and BatchNorm uses its running
  statistics).
- ``cnn``: a small image classifier, 1x28x28 -> 10 classes (two conv + max-pool stages
  and two dense layers).
- ``resnet``: a residual CNN, 3x64x64 -> 10 classes (stem, four residual blocks with
  BatchNorm, global average pooling); meant for GPU runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

__all__ = ["WORKLOADS", "Workload", "get", "to_layout"]


@dataclass
class Workload:
    name: str
    title: str
    input_shape: tuple  # per row, NCHW for images
    n_outputs: int
    target: Any  # what every explainer explains (None or a class index)
    n_rows: int  # rows explained in a full run
    n_background: int
    quick_rows: int
    weights: Callable[[], dict]  # name -> float32 array (torch layout)
    gpu_only: bool = False
    builders: dict = field(default_factory=dict)  # framework -> (weights -> model)
    large_background: int = 0  # background rows of the bench's ``gradshap-bigbg`` row (0: no such row)

    def data(self, n_rows: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
        """(x, background) as float32 NumPy arrays, fixed by ``seed``."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n_rows, *self.input_shape)).astype(np.float32)
        bg = rng.standard_normal((self.n_background, *self.input_shape)).astype(np.float32)
        return x, bg

    def background(self, n_rows: int, seed: int = 8) -> np.ndarray:
        """``n_rows`` background rows drawn as :meth:`data` draws them, fixed by ``seed``."""
        return np.random.default_rng(seed).standard_normal((n_rows, *self.input_shape)).astype(np.float32)

    def build(self, framework: str):
        return self.builders[framework](self.weights())

    def linear(self) -> "Workload":
        """This workload with its model replaced by one linear layer from the same inputs to
        the same outputs (fixed weights): the bench's ``gradshap-linear`` row, a call whose
        model costs next to nothing, so that its time is the engine's own work."""
        f = int(np.prod(self.input_shape))
        nhwc = (*self.input_shape[1:], self.input_shape[0]) if len(self.input_shape) == 3 else self.input_shape
        return replace(
            self, name=f"{self.name}-linear", title=f"{self.title}, model replaced by one linear layer",
            weights=functools.partial(linear_weights, f, self.n_outputs), large_background=0,
            builders={"torch": linear_torch, "jax": linear_jax, "keras": functools.partial(linear_keras, nhwc)},
        )


def _dense(rng, fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
    w = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)
    b = rng.standard_normal(fan_out) * 0.05
    return w.astype(np.float32), b.astype(np.float32)


def _conv(rng, c_in: int, c_out: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    w = rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / (c_in * k * k))
    b = rng.standard_normal(c_out) * 0.05
    return w.astype(np.float32), b.astype(np.float32)


def _batchnorm(rng, c: int, prefix: str) -> dict:
    return {
        f"{prefix}.weight": (1.0 + 0.1 * rng.standard_normal(c)).astype(np.float32),
        f"{prefix}.bias": (0.1 * rng.standard_normal(c)).astype(np.float32),
        f"{prefix}.running_mean": (0.2 * rng.standard_normal(c)).astype(np.float32),
        f"{prefix}.running_var": rng.uniform(0.5, 2.0, c).astype(np.float32),
    }


_BN_EPS = 1e-5

# ----------------------------------------------------------------------------- MLP


def mlp_weights() -> dict:
    rng = np.random.default_rng(2)
    p = {}
    for name, (i, o) in {"layer_1": (30, 64), "layer_2": (64, 64), "layer_out": (64, 1)}.items():
        p[f"{name}.weight"], p[f"{name}.bias"] = _dense(rng, i, o)
    p.update(_batchnorm(rng, 64, "batchnorm1"))
    p.update(_batchnorm(rng, 64, "batchnorm2"))
    return p


def _torch_load(module, weights: dict):
    import torch

    state = {k: torch.from_numpy(v.copy()) for k, v in weights.items()}
    missing = set(module.state_dict()) - set(state) - {k for k in module.state_dict() if k.endswith("num_batches_tracked")}
    if missing:
        msg = f"weights for {sorted(missing)} are missing"
        raise KeyError(msg)
    module.load_state_dict(state, strict=False)
    return module.eval()


def mlp_torch(weights: dict):
    from torch import nn

    class BinaryClassification(nn.Module):
        """The seed-002 tabular classifier."""

        def __init__(self):
            super().__init__()
            self.layer_1 = nn.Linear(30, 64)
            self.layer_2 = nn.Linear(64, 64)
            self.layer_out = nn.Linear(64, 1)
            self.relu = nn.ReLU()
            self.batchnorm1 = nn.BatchNorm1d(64)
            self.batchnorm2 = nn.BatchNorm1d(64)
            self.dropout = nn.Dropout(p=0.5)

        def forward(self, inputs):
            x = self.batchnorm1(self.relu(self.layer_1(inputs)))
            x = self.batchnorm2(self.relu(self.layer_2(x)))
            return self.layer_out(self.dropout(x))

    return _torch_load(BinaryClassification(), weights)


def _jax_params(weights: dict):
    import jax.numpy as jnp

    return {k: jnp.asarray(v) for k, v in weights.items()}


def _jax_bn(p, prefix, x, axis):
    import jax.numpy as jnp

    shape = [1] * x.ndim
    shape[axis] = -1
    scale = p[f"{prefix}.weight"] / jnp.sqrt(p[f"{prefix}.running_var"] + _BN_EPS)
    shift = p[f"{prefix}.bias"] - p[f"{prefix}.running_mean"] * scale
    return x * scale.reshape(shape) + shift.reshape(shape)


def _mlp_apply(p, x):
    import jax

    h = _jax_bn(p, "batchnorm1", jax.nn.relu(x @ p["layer_1.weight"].T + p["layer_1.bias"]), 1)
    h = _jax_bn(p, "batchnorm2", jax.nn.relu(h @ p["layer_2.weight"].T + p["layer_2.bias"]), 1)
    return h @ p["layer_out.weight"].T + p["layer_out.bias"]


def mlp_jax(weights: dict):
    return functools.partial(_mlp_apply, _jax_params(weights))


def _keras_bn(layer, weights, prefix):
    layer.set_weights([weights[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")])


def mlp_keras(weights: dict):
    import keras

    inputs = keras.Input((30,))
    dense = [keras.layers.Dense(n) for n in (64, 64, 1)]
    bns = [keras.layers.BatchNormalization(epsilon=_BN_EPS) for _ in range(2)]
    h = bns[0](keras.layers.ReLU()(dense[0](inputs)))
    h = bns[1](keras.layers.ReLU()(dense[1](h)))
    out = dense[2](keras.layers.Dropout(0.5)(h))
    model = keras.Model(inputs, out)
    for layer, name in zip(dense, ("layer_1", "layer_2", "layer_out")):
        layer.set_weights([weights[f"{name}.weight"].T, weights[f"{name}.bias"]])
    for layer, name in zip(bns, ("batchnorm1", "batchnorm2")):
        _keras_bn(layer, weights, name)
    return model


# ----------------------------------------------------------------------------- one linear layer
# (Workload.linear: the inputs flattened, then one dense layer. Keras flattens NHWC images
# in its own order, so its function differs from torch's and JAX's; only its time is read.)


def linear_weights(n_in: int, n_out: int) -> dict:
    w, b = _dense(np.random.default_rng(5), n_in, n_out)
    return {"1.weight": w, "1.bias": b}


def linear_torch(weights: dict):
    from torch import nn

    n_out, n_in = weights["1.weight"].shape
    return _torch_load(nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_out)), weights)


def _linear_apply(p, x):
    return x.reshape(x.shape[0], -1) @ p["1.weight"].T + p["1.bias"]


def linear_jax(weights: dict):
    return functools.partial(_linear_apply, _jax_params(weights))


def linear_keras(input_shape: tuple, weights: dict):
    import keras

    dense = keras.layers.Dense(weights["1.weight"].shape[0])
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([weights["1.weight"].T, weights["1.bias"]])
    return model


# ----------------------------------------------------------------------------- small CNN


def cnn_weights() -> dict:
    rng = np.random.default_rng(28)
    p = {}
    p["conv1.weight"], p["conv1.bias"] = _conv(rng, 1, 16, 3)
    p["conv2.weight"], p["conv2.bias"] = _conv(rng, 16, 32, 3)
    p["fc1.weight"], p["fc1.bias"] = _dense(rng, 32 * 7 * 7, 128)
    p["fc2.weight"], p["fc2.bias"] = _dense(rng, 128, 10)
    return p


def cnn_torch(weights: dict):
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.fc1 = nn.Linear(32 * 7 * 7, 128)
            self.fc2 = nn.Linear(128, 10)
            self.pool = nn.MaxPool2d(2)
            self.relu = nn.ReLU()

        def forward(self, x):
            x = self.pool(self.relu(self.conv1(x)))
            x = self.pool(self.relu(self.conv2(x)))
            # reshape, not view: the activations may be channels_last.
            x = self.relu(self.fc1(x.reshape(x.shape[0], -1)))
            return self.fc2(x)

    return _torch_load(SmallCNN(), weights)


def _jax_conv(p, name, x, stride=1):
    import jax

    k = p[f"{name}.weight"]
    pad = k.shape[-1] // 2
    y = jax.lax.conv_general_dilated(
        x, k, (stride, stride), [(pad, pad), (pad, pad)], dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    return y + p[f"{name}.bias"].reshape(1, -1, 1, 1)


def _jax_maxpool(x):
    import jax

    return jax.lax.reduce_window(x, -np.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def _cnn_apply(p, x):
    import jax

    h = _jax_maxpool(jax.nn.relu(_jax_conv(p, "conv1", x)))
    h = _jax_maxpool(jax.nn.relu(_jax_conv(p, "conv2", h)))
    h = jax.nn.relu(h.reshape(h.shape[0], -1) @ p["fc1.weight"].T + p["fc1.bias"])
    return h @ p["fc2.weight"].T + p["fc2.bias"]


def cnn_jax(weights: dict):
    return functools.partial(_cnn_apply, _jax_params(weights))


def _keras_conv_weights(weights, name):
    return [np.transpose(weights[f"{name}.weight"], (2, 3, 1, 0)), weights[f"{name}.bias"]]


def cnn_keras(weights: dict):
    import keras

    inputs = keras.Input((28, 28, 1))
    c1 = keras.layers.Conv2D(16, 3, padding="same")
    c2 = keras.layers.Conv2D(32, 3, padding="same")
    f1, f2 = keras.layers.Dense(128), keras.layers.Dense(10)
    h = keras.layers.MaxPooling2D(2)(keras.layers.ReLU()(c1(inputs)))
    h = keras.layers.MaxPooling2D(2)(keras.layers.ReLU()(c2(h)))
    # Flatten in torch's (C, H, W) order so that fc1's weights carry over unchanged.
    h = keras.layers.Flatten()(keras.layers.Permute((3, 1, 2))(h))
    out = f2(keras.layers.ReLU()(f1(h)))
    model = keras.Model(inputs, out)
    c1.set_weights(_keras_conv_weights(weights, "conv1"))
    c2.set_weights(_keras_conv_weights(weights, "conv2"))
    f1.set_weights([weights["fc1.weight"].T, weights["fc1.bias"]])
    f2.set_weights([weights["fc2.weight"].T, weights["fc2.bias"]])
    return model


# ----------------------------------------------------------------------------- residual CNN

_RES_BLOCKS = (("block1", 32, 32, 1), ("block2", 32, 64, 2), ("block3", 64, 64, 1), ("block4", 64, 128, 2))


def resnet_weights() -> dict:
    rng = np.random.default_rng(64)
    p = {}
    p["stem.weight"], p["stem.bias"] = _conv(rng, 3, 32, 3)
    p.update(_batchnorm(rng, 32, "stem_bn"))
    for name, c_in, c_out, stride in _RES_BLOCKS:
        p[f"{name}.conv1.weight"], p[f"{name}.conv1.bias"] = _conv(rng, c_in, c_out, 3)
        p.update(_batchnorm(rng, c_out, f"{name}.bn1"))
        p[f"{name}.conv2.weight"], p[f"{name}.conv2.bias"] = _conv(rng, c_out, c_out, 3)
        p.update(_batchnorm(rng, c_out, f"{name}.bn2"))
        if stride != 1 or c_in != c_out:
            p[f"{name}.skip.weight"], p[f"{name}.skip.bias"] = _conv(rng, c_in, c_out, 1)
    p["fc.weight"], p["fc.bias"] = _dense(rng, 128, 10)
    return p


def resnet_torch(weights: dict):
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.skip = nn.Conv2d(c_in, c_out, 1, stride=stride) if stride != 1 or c_in != c_out else None
            self.relu = nn.ReLU()

        def forward(self, x):
            h = self.relu(self.bn1(self.conv1(x)))
            h = self.bn2(self.conv2(h))
            return self.relu(h + (x if self.skip is None else self.skip(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 3, stride=2, padding=1)
            self.stem_bn = nn.BatchNorm2d(32)
            for name, c_in, c_out, stride in _RES_BLOCKS:
                setattr(self, name, Block(c_in, c_out, stride))
            self.fc = nn.Linear(128, 10)
            self.relu = nn.ReLU()

        def forward(self, x):
            h = self.relu(self.stem_bn(self.stem(x)))
            for name, *_ in _RES_BLOCKS:
                h = getattr(self, name)(h)
            return self.fc(h.mean(dim=(2, 3)))

    return _torch_load(ResNet(), weights)


def _resnet_apply(p, x):
    import jax

    h = jax.nn.relu(_jax_bn(p, "stem_bn", _jax_conv(p, "stem", x, 2), 1))
    for name, c_in, c_out, stride in _RES_BLOCKS:
        r = jax.nn.relu(_jax_bn(p, f"{name}.bn1", _jax_conv(p, f"{name}.conv1", h, stride), 1))
        r = _jax_bn(p, f"{name}.bn2", _jax_conv(p, f"{name}.conv2", r), 1)
        skip = _jax_conv(p, f"{name}.skip", h, stride) if f"{name}.skip.weight" in p else h
        h = jax.nn.relu(r + skip)
    return h.mean(axis=(2, 3)) @ p["fc.weight"].T + p["fc.bias"]


def resnet_jax(weights: dict):
    return functools.partial(_resnet_apply, _jax_params(weights))


def resnet_keras(weights: dict):
    import keras

    def conv(name, c_out, k, stride):
        # A 3x3 stride-2 conv follows an explicit pad (see _pad_same), so it is "valid".
        padding = "valid" if stride != 1 and k > 1 else "same"
        return keras.layers.Conv2D(c_out, k, strides=stride, padding=padding, name=name)

    inputs = keras.Input((64, 64, 3))
    layers = {}

    def add(layer, key):
        layers[key] = layer
        return layer

    bn = lambda key: add(keras.layers.BatchNormalization(epsilon=_BN_EPS, name=key.replace(".", "_")), key)  # noqa: E731
    h = keras.layers.ReLU()(bn("stem_bn")(add(conv("stem", 32, 3, 2), "stem")(_pad_same(inputs, 2))))
    for name, c_in, c_out, stride in _RES_BLOCKS:
        r = add(conv(f"{name}_conv1", c_out, 3, stride), f"{name}.conv1")(_pad_same(h, stride))
        r = keras.layers.ReLU()(bn(f"{name}.bn1")(r))
        r = bn(f"{name}.bn2")(add(conv(f"{name}_conv2", c_out, 3, 1), f"{name}.conv2")(r))
        skip = h
        if stride != 1 or c_in != c_out:
            skip = add(conv(f"{name}_skip", c_out, 1, stride), f"{name}.skip")(h)
        h = keras.layers.ReLU()(keras.layers.Add()([r, skip]))
    out = add(keras.layers.Dense(10), "fc")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, out)
    for key, layer in layers.items():
        if isinstance(layer, keras.layers.BatchNormalization):
            _keras_bn(layer, weights, key)
        elif isinstance(layer, keras.layers.Dense):
            layer.set_weights([weights[f"{key}.weight"].T, weights[f"{key}.bias"]])
        else:
            layer.set_weights(_keras_conv_weights(weights, key))
    return model


def _pad_same(x, stride):
    """Identity for stride 1. For stride 2, Keras' "same" padding pads only after, where
    torch pads one on each side: pad one row and column before, then convolve "valid"."""
    if stride == 1:
        return x
    import keras

    return keras.layers.ZeroPadding2D(((1, 0), (1, 0)))(x)


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """NCHW images to ``layout`` ("NCHW" or "NHWC"); tabular data is returned as is."""
    if x.ndim == 4 and layout == "NHWC":
        return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
    return x


WORKLOADS = {
    "mlp": Workload(
        "mlp", "tabular MLP 30-64-64-1", (30,), 1, None, n_rows=200, n_background=100, quick_rows=8,
        weights=mlp_weights, builders={"torch": mlp_torch, "jax": mlp_jax, "keras": mlp_keras},
        large_background=1000,
    ),
    "cnn": Workload(
        "cnn", "small CNN 1x28x28, 10 classes", (1, 28, 28), 10, 3, n_rows=32, n_background=64, quick_rows=2,
        weights=cnn_weights, builders={"torch": cnn_torch, "jax": cnn_jax, "keras": cnn_keras},
    ),
    "resnet": Workload(
        "resnet", "residual CNN 3x64x64, 10 classes", (3, 64, 64), 10, 3, n_rows=32, n_background=64,
        quick_rows=1, weights=resnet_weights, gpu_only=True,
        builders={"torch": resnet_torch, "jax": resnet_jax, "keras": resnet_keras},
    ),
}


def get(name: str) -> Workload:
    return WORKLOADS[name]
