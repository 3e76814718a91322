"""PyTorch adapter: torch.autograd, eval mode for the call, all model state restored after."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable

from gradshap.backends import Adapter, _state, require


def recognizes(model: Any, arrays: tuple) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(model, torch.nn.Module) or any(isinstance(a, torch.Tensor) for a in arrays)


class TorchAdapter(Adapter):
    name = "torch"
    arrays = "torch tensors"

    def __init__(self, model: Callable, output_fn: Callable | None = None, call: Callable | None = None):
        """``call(points)``: how the model is called (default ``model(*points)``)."""
        self._torch = require("torch")
        from array_api_compat import torch as xp

        self.xp = xp
        self.model, self.output_fn = model, output_fn
        self._call_model = call if call is not None else (lambda points: model(*points))
        # Convolutions on CPU run faster on channels-last (NHWC) activations (oneDNN's
        # native layout): images are handed to a model with Conv2d layers in that layout.
        # A model that cannot take it (a .view() on the activations) is detected on the
        # first call and then gets contiguous inputs.
        torch = self._torch
        self._channels_last = isinstance(model, torch.nn.Module) and any(
            isinstance(m, torch.nn.Conv2d) for m in model.modules()
        )
        self._layout_checked = False

    def _layout(self, p):
        if not (self._channels_last and p.ndim == 4 and p.device.type == "cpu"):
            return p
        n, c, h, w = p.shape
        if c == 1:
            # With one channel the two layouts hold the same bytes: restride, no copy.
            return p.contiguous().as_strided(p.shape, (h * w, 1, w, 1))
        return p.contiguous(memory_format=self._torch.channels_last)

    def _call(self, points: tuple):
        out = self._call_model(points)
        return out if self.output_fn is None else self.output_fn(out)

    def _checked(self, fn: Callable, points: tuple):
        """``fn(points in the preferred layout)``; falls back to contiguous inputs for good
        if the first call fails in channels-last."""
        if not self._channels_last:
            return fn(points)
        try:
            result = fn(tuple(self._layout(p) for p in points))
        except RuntimeError as err:
            # Only the failure of a .view() on channels-last activations; the model's own
            # errors propagate as they are.
            if self._layout_checked or "view size is not compatible" not in str(err):
                raise
            self._channels_last = False
            return fn(points)
        self._layout_checked = True
        return result

    def forward(self, points: tuple):
        torch = self._torch
        try:
            with torch.no_grad():
                return self._checked(self._call, points)
        except RuntimeError as err:
            self._raise_dtype_mismatch(points, err)
            raise

    def _raise_dtype_mismatch(self, points: tuple, err: RuntimeError) -> None:
        """A clearer error where the inputs' dtype is not the model's parameters' dtype."""
        torch, model = self._torch, self.model
        if not isinstance(model, torch.nn.Module):
            return
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        given = {p.dtype for p in points}
        if dtypes and not given <= dtypes:
            names = lambda ds: ", ".join(sorted(str(d).replace("torch.", "") for d in ds))  # noqa: E731
            msg = (f"`x` and `background` have dtype {names(given)} but the model's parameters are "
                   f"{names(dtypes)}; gradshap never casts silently: convert the inputs with .to(dtype) "
                   "or the model with model.to(dtype)")
            raise TypeError(msg) from err

    def value_and_grad(self, points: tuple, cotangent):
        return self._checked(lambda p: self._value_and_grad(p, cotangent), points)

    def _value_and_grad(self, points: tuple, cotangent):
        torch = self._torch
        with torch.enable_grad():
            leaves = tuple(p.detach().requires_grad_(True) for p in points)
            out = self._call(leaves)
            grads = torch.autograd.grad(
                out, leaves, grad_outputs=cotangent.reshape(out.shape).to(out.dtype), allow_unused=True
            )
        # An input the model ignores has no graph edge: its gradient is exactly zero.
        grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads))
        return out.detach(), grads

    def is_out_of_memory(self, err: BaseException) -> bool:
        return isinstance(err, self._torch.OutOfMemoryError)

    def compose(self, fn: Callable) -> "TorchAdapter":
        adapter = TorchAdapter(self.model, fn, self._call_model)
        adapter.name = self.name
        return adapter

    def session(self) -> contextlib.AbstractContextManager:
        return _state.torch_model(self._torch, self.model)


def make(model: Any) -> TorchAdapter:
    return TorchAdapter(model)
