"""Placeholder until the Keras 3 / TensorFlow adapters land: recognizes nothing."""

from __future__ import annotations

from typing import Any


def recognizes(model: Any, arrays: tuple) -> bool:
    return False


def make(model: Any):
    msg = "the keras adapter is not available in this version of gradshap"
    raise NotImplementedError(msg)
