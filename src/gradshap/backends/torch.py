"""PyTorch adapter: torch.autograd, eval mode for the call, all model state restored after."""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Callable

from gradshap.backends import Adapter, require


def recognizes(model: Any, arrays: tuple) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(model, torch.nn.Module) or any(isinstance(a, torch.Tensor) for a in arrays)


class TorchAdapter(Adapter):
    name = "torch"

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
        # The engine's first model call is a forward pass: inputs are checked here, once.
        torch = self._torch
        if not all(isinstance(p, torch.Tensor) for p in points):
            kinds = ", ".join(sorted({f"{type(p).__module__}.{type(p).__name__}" for p in points}))
            msg = (f"`x` and `background` for a torch model must be torch tensors; got {kinds}. gradshap "
                   "never converts silently: pass torch.from_numpy(a) (on the model's device)")
            raise TypeError(msg)
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
        return _session(self._torch, self.model)


# The calls in progress per model (by id; an entry lives only while a call runs): the first
# call to start records the model's modes, flags and torch's RNG states and sets eval mode;
# the last to end restores them. Calls from several threads on one model are then each
# made in eval mode, and the model is left as the first found it.
_ACTIVE: dict = {}
_ACTIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def _session(torch, model):
    with _ACTIVE_LOCK:
        entry = _ACTIVE.get(id(model))
        if entry is None:
            entry = _ACTIVE[id(model)] = [0, _enter(torch, model)]
        entry[0] += 1
    try:
        # Per call (grad modes are per thread): no graph is recorded for the engine's own
        # operations, even on inputs that require grad, and a caller's inference mode is
        # left for the call (value_and_grad enables gradients for the model alone).
        with torch.inference_mode(False), torch.no_grad():
            yield
    finally:
        with _ACTIVE_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                del _ACTIVE[id(model)]
                _restore(torch, *entry[1])


def _enter(torch, model) -> tuple:
    """Record the state a call changes, then set eval mode and freeze the parameters."""
    is_module = isinstance(model, torch.nn.Module)
    modes = [(m, m.training) for m in model.modules()] if is_module else []
    flags = [(p, p.requires_grad) for p in model.parameters()] if is_module else []
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    state = (modes, flags, torch.get_rng_state(), cuda_rng)
    if is_module:
        model.eval()
        # Parameters need no gradient here: skipping them saves the weight-gradient half
        # of every backward pass and leaves `.grad` untouched.
        for p, _ in flags:
            p.requires_grad_(False)
    return state


def _restore(torch, modes: list, flags: list, cpu_rng, cuda_rng) -> None:
    for m, training in modes:
        m.training = training
    for p, flag in flags:
        p.requires_grad_(flag)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)


def make(model: Any) -> TorchAdapter:
    return TorchAdapter(model)
