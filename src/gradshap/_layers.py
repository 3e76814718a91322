"""Attributions at a hidden layer: the model split at the layer into a body and a head.

With ``layer=``, the explainers attribute the model's output to the layer's output ``h``:
``model(x) = head(body(x))``, and the rows explained are ``h = body(x)`` against the
background's (or baseline's) activations ``body(b)``. The engine then runs unchanged on the
head, so every guarantee it gives at the inputs holds at the layer: completeness
(``sum(values) = head(body(x)) - mean head(body(b))``, up to the reported residual), the
same draws from the same seed, the same error model.

A layer is given as:

- torch: a submodule of the model, or its name in ``model.named_modules()``; for a module
  whose forward returns a tuple (``nn.LSTM``), ``(module, i)`` picks element ``i``. The
  body is the model run with a forward hook that records the module's output; the head is
  the model run with a forward hook that replaces the module's output (the model's own
  inputs then only stand in: the output must depend on them through the layer alone, which
  every call checks). The hooks live for one forward pass each and are removed after it,
  also when it fails;
- Keras: a layer of a functional or Sequential model, or its name: body and head are the
  two functional models the layer cuts the graph into;
- any framework: ``(body, head)``, two models of the framework with ``head(body(x))`` equal
  to the model's output (JAX and TensorFlow functions, whose layers cannot be reached
  from outside, are split this way).
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import numpy as np

from gradshap import _engine, _tiling, _validation, backends
from gradshap.backends import Adapter, _state

__all__ = ["Split", "data_of", "explain_inputs", "layer_of", "split"]


class Split:
    """A model cut at a layer: ``full`` (the whole model), ``body`` (inputs -> the layer's
    output) and ``head`` (the layer's output -> the model's output), as adapters."""

    def __init__(self, full: Adapter, body: Adapter, head: Adapter, name: str):
        self.full, self.body, self.head, self.name = full, body, head, name

    def activations(self, xp, inputs: tuple, batch_size: int | None, what: str):
        """``body(inputs)``, the layer's output for the rows of ``inputs`` (``what`` they are)."""
        with _state.explaining(self.body):
            out = _forward(self.body, xp, inputs, batch_size)
        _check_single(out, f"the output of `layer` ({self.name}) at {what}")
        return out

    def check(self, xp, inputs: tuple, h, batch_size: int | None) -> None:
        """Raise unless ``head(h)`` is the model's output at ``inputs`` up to rounding: the
        model's output must depend on its inputs through the layer alone."""
        with _state.explaining(self.full):
            whole = _forward(self.full, xp, inputs, batch_size)
        with _state.explaining(self.head):
            cut = _forward(self.head, _validation.namespace_of((h,), "x"), (h,), batch_size)
        pairs = list(zip(_leaves(whole), _leaves(cut)))
        gap, diff = 0.0, 0.0
        for whole, cut in pairs:
            whole, cut = _validation.to_numpy(whole), _validation.to_numpy(cut)
            if whole.shape != cut.shape or not np.issubdtype(whole.dtype, np.floating):
                continue  # the engine reports outputs it cannot explain
            a, b = whole.astype(np.float64), cut.astype(np.float64)
            scale = math.sqrt(np.finfo(whole.dtype).eps) * max(1.0, float(np.max(np.abs(a), initial=0.0)))
            d = float(np.max(np.abs(a - b), initial=0.0))
            if d / scale > gap:
                gap, diff = d / scale, d
        if gap > 1.0:
            msg = (
                f"the model's output at `x` differs from the head's output at the activations of "
                f"`layer` ({self.name}) by up to {diff:.3g}, more than rounding explains: the output "
                "depends on the input other than through that layer (a skip connection around it, another "
                "input, or a layer that runs more than once), so the layer's output does not determine it. "
                "Pick a layer every path passes through, or pass layer=(body, head) with "
                "model(x) == head(body(x))"
            )
            raise ValueError(msg)


def split(model: Any, layer: Any, framework: str | None, arrays: tuple) -> Split:
    """The :class:`Split` of ``model`` at ``layer`` (see the module docstring); ``arrays``
    are rows of the model's inputs (the torch head's stand-in inputs come from the first)."""
    if framework is None:
        framework = backends.detect(model, arrays)
    if framework == "tensorflow" and backends._module("keras").recognizes(model, arrays):
        framework = "keras"
    if isinstance(layer, (tuple, list)) and len(layer) == 2 and all(callable(p) for p in layer):
        body, head = layer
        wrap = backends._module("keras").wrap if framework == "keras" else (
            lambda m: backends.make(m, framework, arrays))
        return Split(_full(model, framework, arrays), wrap(body), backends.make(head, framework, arrays),
                     "head(body(x))")
    if framework == "torch":
        return _torch_split(model, layer, arrays)
    if framework == "keras":
        return _keras_split(model, layer)
    msg = (
        f"`layer` for a {framework} model must be a pair (body, head) of callables with "
        f"model(x) == head(body(x)); got {_validation.type_name(layer)}"
    )
    raise TypeError(msg)


def _full(model: Any, framework: str, arrays: tuple) -> Adapter:
    if framework == "keras":  # the model may take token ids: only ever run forward here
        return backends._module("keras").wrap(model)
    return backends.make(model, framework, arrays)


def _forward(adapter: Adapter, xp, inputs: tuple, batch_size: int | None):
    """The engine's chunked forward pass (:func:`gradshap._engine._outputs`), at the default
    batch size where none is given."""
    if batch_size is None:
        batch_size = _tiling.default_batch_size(sum(math.prod(a.shape[1:]) for a in inputs),
                                                device=_validation.device_of(xp, inputs[0]))
    return _engine._outputs(adapter, xp, inputs, batch_size, adapter.compiles)


def _leaves(out: Any) -> list:
    """The arrays in a model's output: itself, or those in a tuple, list or dict (a Hugging Face output)."""
    if isinstance(out, dict):
        return [leaf for v in out.values() for leaf in _leaves(v)]
    if isinstance(out, (tuple, list)):
        return [leaf for v in out for leaf in _leaves(v)]
    return [out] if hasattr(out, "shape") and hasattr(out, "dtype") else []


def _check_single(out: Any, what: str) -> None:
    if isinstance(out, (tuple, list, dict)):
        msg = (
            f"{what} is a {type(out).__name__} of {len(out)}; gradshap explains one array. For a torch "
            "module returning a tuple (nn.LSTM) pass layer=(module, i) to explain element i; otherwise "
            "pass layer=(body, head) with a body that returns one array"
        )
        raise TypeError(msg)
    if not hasattr(out, "shape"):
        msg = f"{what} is a {_validation.type_name(out)}; expected an array"
        raise TypeError(msg)


# --------------------------------------------------------------------------- torch


def _torch_module(model: Any, layer: Any):
    """``(module, index, name)`` from ``layer``: a submodule, its name, or ``(either, i)``."""
    torch = sys.modules["torch"]
    index = None
    if isinstance(layer, tuple) and len(layer) == 2 and isinstance(layer[1], int) and not isinstance(layer[1], bool):
        layer, index = layer
    names = dict(model.named_modules()) if isinstance(model, torch.nn.Module) else {}
    if isinstance(layer, str):
        if layer not in names:
            shown = ", ".join(repr(k) for k in list(names)[1:11]) + (" ..." if len(names) > 11 else "")
            msg = f"`layer` {layer!r} is not the name of a submodule of `model`; its submodules are {shown}"
            raise ValueError(msg)
        return names[layer], index, repr(layer)
    for name, module in names.items():
        if module is layer:
            return module, index, repr(name or type(module).__name__)
    msg = (
        "`layer` must be a submodule of `model`, its name in model.named_modules(), (either, i) for "
        f"element i of a module that returns a tuple, or a pair (body, head); got {_validation.type_name(layer)}"
    )
    raise ValueError(msg)


def _torch_split(model: Any, layer: Any, arrays: tuple) -> Split:
    from gradshap.backends.torch import TorchAdapter

    module, index, name = _torch_module(model, layer)
    # The head's stand-in inputs: the first row of `arrays`, broadcast (not copied) to each batch.
    standin = tuple(a[:1] for a in arrays)

    def pick(out):
        if index is None:
            return out
        if not isinstance(out, tuple) or not -len(out) <= index < len(out):
            msg = (f"`layer` ({name}, {index}): the module returned {_validation.type_name(out)}, not a tuple "
                   f"with element {index}")
            raise TypeError(msg)
        return out[index]

    def body(points: tuple):
        seen = []
        handle = module.register_forward_hook(lambda _m, _i, out: seen.append(pick(out)))
        try:
            model(*points)
        finally:
            handle.remove()
        _check_runs(len(seen), name)
        return seen[0]

    def head(points: tuple):
        (h,) = points
        runs = []

        def replace(_m, _i, out):
            runs.append(1)
            if index is None:
                return h
            return out[:index % len(out)] + (h,) + out[index % len(out) + 1 :]

        handle = module.register_forward_hook(replace)
        try:
            out = model(*(a.expand(h.shape[0], *a.shape[1:]) for a in standin))
        finally:
            handle.remove()
        _check_runs(len(runs), name)
        return out

    return Split(TorchAdapter(model), TorchAdapter(model, call=body), TorchAdapter(model, call=head), name)


def _check_runs(runs: int, name: str) -> None:
    if runs != 1:
        msg = (
            f"`layer` ({name}) ran {runs} times in one forward pass of the model; expected once. A layer "
            "used several times (or never) has no single output to explain: pass layer=(body, head)"
        )
        raise ValueError(msg)


# --------------------------------------------------------------------------- Keras


def _keras_split(model: Any, layer: Any) -> Split:
    keras = sys.modules["keras"]
    wrap = backends._module("keras").wrap
    name = repr(layer) if isinstance(layer, str) else repr(getattr(layer, "name", layer))
    if isinstance(layer, str):
        try:
            layer = model.get_layer(layer)
        except ValueError:
            shown = ", ".join(repr(lay.name) for lay in model.layers[:10])
            msg = f"`layer` {name} is not the name of a layer of `model`; its layers are {shown}"
            raise ValueError(msg) from None
    if not isinstance(layer, keras.Layer) or not any(lay is layer for lay in getattr(model, "layers", ())):
        msg = ("`layer` must be a layer of `model` or its name, or a pair (body, head); got "
               f"{_validation.type_name(layer)}")
        raise ValueError(msg)
    try:
        inputs, outputs, cut = model.inputs, model.outputs, layer.output
    except (AttributeError, ValueError) as err:
        msg = (
            f"cannot cut `model` at `layer` {name}: {err}. A Keras model is cut at a layer when it is "
            "functional or Sequential (built with an Input) and the layer is called once; otherwise pass "
            "layer=(body, head)"
        )
        raise ValueError(msg) from None
    _check_single(cut, f"the output of `layer` ({name})")

    def one(tensors):
        return tensors[0] if len(tensors) == 1 else tensors

    body, head = keras.Model(one(inputs), cut), keras.Model(cut, one(outputs))
    return Split(wrap(model), wrap(body), wrap(head), name)


def data_of(split_: Split | None, x: Any, h: Any) -> Any:
    """What an Explanation's ``data`` holds: the layer's activations, or ``x`` without a layer."""
    return x if split_ is None else h


def explain_inputs(split_: Split, xp, xs: tuple, background: tuple, batch_size: int | None) -> tuple:
    """The layer's activations at ``xs`` (checked against the model's output) and at ``background``."""
    hx = split_.activations(xp, xs, batch_size, "`x`")
    split_.check(xp, xs, hx, batch_size)
    hb = split_.activations(xp, background, batch_size, "the background")
    return (hx,), (hb,)


def layer_of(model: Any, layer: Any, framework: str | None, arrays: tuple, make: Callable) -> tuple:
    """``(split or None, adapter)``: the model's adapter (``make()``), or the head's at ``layer``."""
    if layer is None:
        return None, make()
    found = split(model, layer, framework, arrays)
    return found, found.head
