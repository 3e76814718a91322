"""PyTorch adapter: torch.autograd, eval mode for the call, all model state restored after."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable

from gradshap.backends import Adapter, require


def recognizes(model: Any, arrays: tuple) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(model, torch.nn.Module) or any(isinstance(a, torch.Tensor) for a in arrays)


class TorchAdapter(Adapter):
    name = "torch"

    def __init__(self, model: Callable, output_fn: Callable | None = None):
        self._torch = require("torch")
        from array_api_compat import torch as xp

        self.xp = xp
        self.model = model
        self.output_fn = output_fn

    def _call(self, points: tuple):
        out = self.model(*points)
        return out if self.output_fn is None else self.output_fn(out)

    def forward(self, points: tuple):
        with self._torch.no_grad():
            return self._call(points)

    def value_and_grad(self, points: tuple, cotangent):
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
        return TorchAdapter(self.model, fn)

    @contextlib.contextmanager
    def session(self):
        torch = self._torch
        model = self.model
        is_module = isinstance(model, torch.nn.Module)
        modes = [(m, m.training) for m in model.modules()] if is_module else []
        flags = [(p, p.requires_grad) for p in model.parameters()] if is_module else []
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        try:
            if is_module:
                model.eval()
                # Parameters need no gradient here: skipping them saves the weight-gradient
                # half of every backward pass and leaves `.grad` untouched.
                for p, _ in flags:
                    p.requires_grad_(False)
            yield
        finally:
            for m, training in modes:
                m.training = training
            for p, flag in flags:
                p.requires_grad_(flag)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)


def make(model: Any) -> TorchAdapter:
    return TorchAdapter(model)
