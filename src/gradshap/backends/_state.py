"""The state a call leaves as found: model modes and flags, and every global random generator.

A call may change what it must (a torch model's eval mode, its parameters' ``requires_grad``)
and restores it on the way out, under errors, Ctrl-C and threads; generators the model
draws from (Python's, NumPy's, torch's, TensorFlow's, Keras') are put back as they were.
:func:`explaining` is the context every model call of gradshap runs in; the adapters'
``session()`` members use the framework guards below.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading

import numpy as np

__all__ = ["explaining", "keras_seed_generator", "tensorflow_generator", "torch_model"]


@contextlib.contextmanager
def explaining(adapter):
    """Python's and NumPy's global RNG states as found, and ``adapter.session()`` entered."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with adapter.session():
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


# The calls in progress per torch model (by id; an entry lives only while a call runs): the
# first call to start records the model's modes, flags and torch's RNG states and sets eval
# mode; the last to end restores them. Calls from several threads on one model are then
# each made in eval mode, and the model is left as the first found it.
_ACTIVE: dict = {}
_ACTIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def torch_model(torch, model):
    """One call on a torch ``model`` (a module or any callable): eval mode, frozen parameters,
    no graph for gradshap's own operations, inference mode left; all restored after."""
    with _ACTIVE_LOCK:
        entry = _ACTIVE.get(id(model))
        if entry is None:
            entry = _ACTIVE[id(model)] = [0, _torch_enter(torch, model)]
        entry[0] += 1
    try:
        # Per call (grad modes are per thread); value_and_grad enables gradients for the model alone.
        with torch.inference_mode(False), torch.no_grad():
            yield
    finally:
        with _ACTIVE_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                del _ACTIVE[id(model)]
                _torch_restore(torch, *entry[1])


def _torch_enter(torch, model) -> tuple:
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


def _torch_restore(torch, modes: list, flags: list, cpu_rng, cuda_rng) -> None:
    for m, training in modes:
        m.training = training
    for p, flag in flags:
        p.requires_grad_(flag)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)


@contextlib.contextmanager
def tensorflow_generator():
    """TensorFlow's global ``tf.random.Generator`` as found: the same object, in the same state.

    Read from its module without ``tf.random.get_global_generator()``, which would create
    one (and raises under op determinism when none is set). A generator the call created
    is dropped again. Does nothing unless TensorFlow is already imported.
    """
    ops = sys.modules.get("tensorflow.python.ops.stateful_random_ops")
    found = getattr(ops, "global_generator", None)
    state = None if found is None else found.state.numpy()
    try:
        yield
    finally:
        if ops is not None:
            ops.global_generator = found
            if found is not None:
                found.state.assign(state)


@contextlib.contextmanager
def keras_seed_generator(keras):
    """Keras' global ``SeedGenerator`` as found: the same object (or none), in the same state."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR
    except ImportError:  # another Keras layout: nothing known to restore
        yield
        return
    found = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
    state = None if found is None else keras.ops.convert_to_numpy(found.state.value).copy()
    try:
        yield
    finally:
        global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, found)
        if found is not None:
            found.state.assign(state)
