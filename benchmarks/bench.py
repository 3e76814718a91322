"""``python benchmarks/bench.py``: gradshap against each framework's floor, captum and shap.

Every framework group (torch, jax, tensorflow, keras on each backend) runs in a fresh
subprocess, so frameworks never share a process, a thread pool or an allocator. Inside a
group the rows are timed interleaved (round r runs every row once), so that load from
elsewhere on the machine hits every row alike; each row's first call is a warm-up whose
extra time (JAX compile, tf.function trace) is reported apart. Where runs are short (the
MLP: 5-20 ms), the floor and gradshap rows (and gradshap-bigbg) then run further rounds,
interleaved, until each has ``--min-time`` seconds of runs (2 s; at most 100 rounds),
with gradshap-linear and by-hand in the same rounds: their ratio is what the targets are
about, and five runs of it under other load read 1.15x in one full run and 1.44x in the
next.

Rows of a group (each made by a small function below, registered in ``ROWS``):

- ``floor``: the framework's own batched forward + backward (input gradients only) over
  exactly the points gradshap evaluates, in the best of a few chunk sizes (and, for torch
  CNNs, memory formats): a short sweep ranks them, and its two fastest are both timed in
  the rounds; the floor is the one with the lower median there;
- ``gradshap``: ``GradientExplainer(model, background)(x, n_samples=S, seed=0)`` with
  default settings;
- ``gradshap-bigbg`` (the MLP): the same call against 1,000 background rows, where the
  ``auto`` design is one column of samples with a background row each, not the columns of
  one background row each that 100 rows give: another path of the engine, over as many
  points, so the same floor;
- ``gradshap-linear``: the gradshap call with the model replaced by one linear layer from
  the same inputs to the same outputs (:meth:`workloads.Workload.linear`), timed against
  the real model's floor: its ratio is what the engine's own work (draws, interpolation,
  multiply and reductions, the call's fixed costs) costs next to that floor, the share
  of a call that no model can take away;
- ``by-hand``: expected gradients written directly in the framework, as a user would
  write them without a library: per chunk of whole rows, gather the baseline rows of
  gradshap's draws, interpolate, the VJP, multiply by ``x - baseline`` and average per
  row; compiled per chunk where the floor is (jax.jit, tf.function), in the best chunk
  size (and variant) of a sweep as the floor's. It gives the estimate only: no standard
  error, base value or completeness check. Where every background row is drawn equally
  often (the MLP: 2 samples each) it is gradshap's estimate, to rounding; where the counts
  differ by one (the CNN: 200 samples over 64 rows, 8 rows drawn 4 times and 56 rows 3
  times) gradshap weights every background row alike, and the plain mean weights the 8
  rows a third more. Its ratio to the floor is what the estimator's own arithmetic costs,
  written plainly;
- ``captum``: captum's ``GradientShap`` at the same number of samples (torch);
- ``shap``: shap's ``GradientExplainer`` at the same number of samples (torch, TF).

Peak memory is the rise of the process's resident set (VmHWM after a reset through
/proc/self/clear_refs, minus VmRSS before the call) in a fresh subprocess per workload
and group, after a warm-up call and a malloc_trim(0), so that buffers the warm-up freed
are back with the OS and cannot hide the next call's peak. The C heap's mmap threshold is
fixed at 128 KiB there (glibc's ``mallopt``): by default glibc raises it to the size of
each big block freed, after which big blocks come from the heap and their pages stay
resident when freed, so a reading counts whichever buffers the allocator happened to
keep (gradshap on the torch MLP read 17.3 MiB in one run and 21.0 MiB in the next, at
one setting). With the threshold fixed, big buffers are mapped and unmapped as they are
made and freed, and the rise is the peak of live memory (5.52-5.57 MiB over six runs).
gradshap's memory rows call it with a new seed each time (1, 2, ...), as they did when
gradshap kept the draws of the call before (up to a753be7), so that readings compare.

Outputs (``--out``, default ``benchmarks/results``): ``bench.json``, ``bench.md`` and
``bench.png``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402

_RESULT = "BENCH-RESULT "
_PROGRESS = "BENCH-PROGRESS "

#: Framework groups, in the order they run. Each runs in its own subprocess.
GROUPS = ("torch", "jax", "tensorflow", "keras-tensorflow", "keras-jax", "keras-torch")

#: Chunk sizes (points per forward + backward) the floor tries, per workload.
FLOOR_CHUNKS = {"mlp": (1024, 4096, 16384), "cnn": (64, 128, 256, 512), "resnet": (16, 32, 64, 128)}


class Skip(Exception):
    """A row that cannot run here; the message says why."""


# ============================================================================ worker side


def _emit_progress(text: str) -> None:
    print(_PROGRESS + text, flush=True)


def _device() -> str:
    """'gpu' when torch or JAX sees one, else 'cpu' (decides the default workloads)."""
    try:
        import torch

        if torch.cuda.is_available():
            return "gpu"
    except ImportError:
        pass
    return "cpu"


class Case:
    """One workload at one size, with the exact points gradshap will evaluate."""

    def __init__(self, wl: workloads.Workload, n_rows: int, n_samples: int):
        from gradshap import _sampling

        self.wl, self.n_rows, self.n_samples = wl, n_rows, n_samples
        self.x, self.bg = wl.data(n_rows)
        key = _sampling.seed_key(0)
        index, alpha, _ = _sampling.samples("auto", key, np.arange(n_rows), n_samples, len(self.bg))
        # gradshap's draws at seed 0: background row and alpha per (row, sample), (n_rows, S).
        self.index, self.alpha = index, alpha.astype(np.float32)
        base = self.bg[index.reshape(-1)]
        xs = np.repeat(self.x, n_samples, axis=0)
        a = alpha.reshape(-1, *([1] * (self.x.ndim - 1))).astype(np.float32)
        self.points = (base + a * (xs - base)).astype(np.float32)
        target = 0 if wl.target is None else wl.target
        self.cot = np.zeros((len(self.points), wl.n_outputs), np.float32)
        self.cot[:, target] = 1.0


class Group:
    """What a framework group supplies: arrays, a sync, a model, and its rows."""

    name = "?"
    layout = "NCHW"
    gradshap_framework: str | None = None

    def model(self, wl):
        raise NotImplementedError

    def array(self, a: np.ndarray):
        raise NotImplementedError

    def sync(self, value) -> None:
        pass

    def numpy(self, value) -> np.ndarray:
        return np.asarray(value)

    def floor_runner(self, model, case: Case, chunk: int, variant: str) -> Callable[[], Any]:
        raise NotImplementedError

    def floor_variants(self, wl) -> tuple:
        return ("",)

    def by_hand_runner(self, model, case: Case, chunk: int, variant: str) -> Callable[[], Any]:
        """Expected gradients written directly in the framework (the ``by-hand`` row): per
        chunk of about ``chunk`` points, whole rows of ``case``'s draws; returns the estimate
        ``(n_rows, *features)`` in the group's layout."""
        raise NotImplementedError

    def peak_device_memory(self) -> float | None:
        return None

    def reset_device_memory(self) -> None:
        pass


class TorchGroup(Group):
    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # torch imports sympy at the first autograd.grad with grad_outputs (about 0.3 s): a
        # cost of the process, paid here rather than by whichever row runs first.
        leaf = torch.ones(2, requires_grad=True)
        torch.autograd.grad(leaf * 2.0, leaf, grad_outputs=torch.ones(2))

    def model(self, wl):
        return wl.build("torch").to(self.device)

    def array(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def sync(self, value=None):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def numpy(self, value):
        return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)

    def floor_variants(self, wl):
        return ("contiguous", "channels_last") if len(wl.input_shape) == 3 else ("contiguous",)

    def floor_runner(self, model, case, chunk, variant):
        torch = self.torch
        for p in model.parameters():
            p.requires_grad_(False)
        pts, cot = self.array(case.points), self.array(case.cot)
        if variant == "channels_last":
            pts = _channels_last(torch, pts)

        def run():
            grads = None
            for i in range(0, len(pts), chunk):
                leaf = pts[i : i + chunk].detach().requires_grad_(True)
                with torch.enable_grad():
                    out = model(leaf)
                    (grads,) = torch.autograd.grad(out, leaf, grad_outputs=cot[i : i + chunk])
            self.sync()
            return grads

        return run

    def by_hand_runner(self, model, case, chunk, variant):
        for p in model.parameters():
            p.requires_grad_(False)
        torch = self.torch
        layout = (lambda p: _channels_last(torch, p)) if variant == "channels_last" else None
        return _torch_by_hand(torch, model, case, self.array, chunk, layout, self.sync)

    def peak_device_memory(self):
        if self.device.type != "cuda":
            return None
        return self.torch.cuda.max_memory_allocated() / 2**20

    def reset_device_memory(self):
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats()


class JaxGroup(Group):
    name = "jax"

    def __init__(self):
        import jax

        self.jax = jax

    def model(self, wl):
        return wl.build("jax")

    def array(self, a):
        return self.jax.numpy.asarray(a)

    def sync(self, value):
        self.jax.block_until_ready(value)

    def floor_runner(self, model, case, chunk, variant):
        jax = self.jax
        # The model's parameters are arguments, as in any JAX training or inference loop.
        params, apply = model.args[0], model.func

        @jax.jit
        def vjp(params, points, cot):
            out, pullback = jax.vjp(lambda p: apply(params, p), points)
            return pullback(cot)[0]

        chunks, cots = _padded_chunks(case.points, chunk), _padded_chunks(case.cot, chunk)
        chunks, cots = [self.array(c) for c in chunks], [self.array(c) for c in cots]

        def run():
            grads = [vjp(params, p, c) for p, c in zip(chunks, cots)]
            jax.block_until_ready(grads)
            return grads[-1]

        return run

    def by_hand_runner(self, model, case, chunk, variant):
        return _jax_by_hand(self.jax, model.func, model.args[0], case, chunk, self.array, self.layout)


def _channels_last(torch, points):
    """A copy of NCHW ``points`` in channels-last strides, even for one channel (where
    ``.contiguous(memory_format=...)`` keeps the NCHW strides, and oneDNN then takes NCHW)."""
    n, c, h, w = points.shape
    return torch.empty_strided(points.shape, (c * h * w, 1, w * c, c), device=points.device).copy_(points)


def _torch_by_hand(torch, fn, case: Case, array: Callable, chunk: int, layout: Callable | None, sync: Callable):
    """The ``by-hand`` row in torch (eager): ``fn(points)`` the model's outputs."""
    x, bg, a = array(case.x), array(case.bg), array(case.alpha)
    index, cot = torch.from_numpy(case.index).to(x.device), array(case.cot)
    (n, s), fshape = case.index.shape, tuple(x.shape[1:])
    k = max(1, chunk // s)

    def run():
        parts = []
        for r0 in range(0, n, k):
            r1 = min(n, r0 + k)
            base = bg[index[r0:r1].reshape(-1)].reshape(r1 - r0, s, *fshape)
            diff = x[r0:r1].unsqueeze(1) - base
            points = (base + a[r0:r1].reshape(r1 - r0, s, *[1] * len(fshape)) * diff).reshape(-1, *fshape)
            leaf = (points if layout is None else layout(points)).requires_grad_(True)
            with torch.enable_grad():
                (grads,) = torch.autograd.grad(fn(leaf), leaf, grad_outputs=cot[r0 * s : r1 * s])
            parts.append((diff * grads.reshape(diff.shape)).mean(dim=1))
        sync()
        return torch.cat(parts)

    return run


def _row_chunks(case: Case, chunk: int, layout: str, convert: Callable) -> list:
    """The compiled by-hand rows' arguments: per chunk of ``max(1, chunk // samples)`` rows
    (the last padded with the first rows, so that every chunk has one shape), the rows of
    ``case.x`` in ``layout``, their draws' indices and alphas ``(k, S)`` and cotangents
    ``(k, S, K)``, each passed through ``convert``."""
    n, s = case.index.shape
    k = max(1, chunk // s)
    rows = np.arange(-(-n // k) * k) % n
    arrays = (workloads.to_layout(case.x, layout), case.index, case.alpha, case.cot.reshape(n, s, -1))
    return [tuple(convert(np.ascontiguousarray(v[rows[r0 : r0 + k]])) for v in arrays) for r0 in range(0, len(rows), k)]


def _jax_by_hand(jax, apply, params, case: Case, chunk: int, array: Callable, layout: str):
    """The ``by-hand`` row in JAX: ``apply(params, points)`` the model's outputs; one
    jitted function per chunk, as the floor."""
    bg = array(workloads.to_layout(case.bg, layout))
    n_out = case.cot.shape[1]

    @jax.jit
    def step(params, x_rows, index, alpha, cot):
        k, s = index.shape
        base = bg[index.reshape(-1)].reshape(k, s, *bg.shape[1:])
        diff = x_rows[:, None] - base
        points = (base + alpha.reshape(k, s, *[1] * (bg.ndim - 1)) * diff).reshape(k * s, *bg.shape[1:])
        _, pullback = jax.vjp(lambda p: apply(params, p), points)
        (grads,) = pullback(cot.reshape(k * s, n_out))
        return (diff * grads.reshape(diff.shape)).mean(axis=1)

    chunks = _row_chunks(case, chunk, layout, array)

    def run():
        out = [step(params, *c) for c in chunks]
        jax.block_until_ready(out)
        return jax.numpy.concatenate(out)[: case.n_rows]

    return run


def _tf_by_hand(tf, fn, case: Case, chunk: int, xla: bool):
    """The ``by-hand`` row in TensorFlow: ``fn(points)`` the model's outputs; one
    ``tf.function`` per chunk shape, as the floor (``xla``: ``jit_compile``)."""
    bg = tf.constant(workloads.to_layout(case.bg, "NHWC"))
    n_out = case.cot.shape[1]

    @tf.function(reduce_retracing=True, jit_compile=xla)
    def step(x_rows, index, alpha, cot):
        k, s = index.shape
        fshape = list(bg.shape[1:])
        base = tf.reshape(tf.gather(bg, tf.reshape(index, [-1])), [k, s, *fshape])
        diff = x_rows[:, None] - base
        points = tf.reshape(base + tf.reshape(alpha, [k, s, *[1] * len(fshape)]) * diff, [k * s, *fshape])
        with tf.GradientTape() as tape:
            tape.watch(points)
            out = fn(points)
        grads = tape.gradient(out, points, output_gradients=tf.reshape(cot, [k * s, n_out]))
        return tf.reduce_mean(diff * tf.reshape(grads, tf.shape(diff)), axis=1)

    chunks = _row_chunks(case, chunk, "NHWC", tf.constant)

    def run():
        return tf.concat([step(*c) for c in chunks], axis=0)[: case.n_rows].numpy()

    return run


def _padded_chunks(a: np.ndarray, chunk: int) -> list:
    """``a`` cut into chunks of ``chunk`` rows, the last padded (one compiled shape)."""
    parts = [a[i : i + chunk] for i in range(0, len(a), chunk)]
    if len(parts[-1]) < chunk:
        parts[-1] = np.concatenate([parts[-1], a[: chunk - len(parts[-1])]])
    return parts


class TensorFlowGroup(Group):
    """TensorFlow: the Keras-built model (TF backend) called as a plain function of tensors."""

    name = "tensorflow"
    layout = "NHWC"
    gradshap_framework = "tensorflow"

    def __init__(self):
        import tensorflow as tf

        self.tf = tf

    def model(self, wl):
        keras_model = wl.build("keras")
        return lambda x: keras_model(x, training=False)

    def array(self, a):
        return self.tf.constant(workloads.to_layout(a, self.layout))

    def numpy(self, value):
        return np.asarray(value)

    def floor_variants(self, wl):
        # The plain graph and XLA (jit_compile=True, Keras' "auto" choice on this backend):
        # the faster of the two is the floor.
        return ("graph", "xla")

    def floor_runner(self, model, case, chunk, variant):
        tf = self.tf

        @tf.function(reduce_retracing=True, jit_compile=variant == "xla")
        def vjp(points, cot):
            with tf.GradientTape() as tape:
                tape.watch(points)
                out = model(points)
            return tape.gradient(out, points, output_gradients=cot)

        chunks = [self.array(c) for c in _padded_chunks(case.points, chunk)]
        cots = [tf.constant(c) for c in _padded_chunks(case.cot, chunk)]

        def run():
            grads = [vjp(p, c) for p, c in zip(chunks, cots)]
            return grads[-1].numpy()

        return run

    def by_hand_runner(self, model, case, chunk, variant):
        return _tf_by_hand(self.tf, model, case, chunk, variant == "xla")


class KerasGroup(Group):
    """A keras.Model on one Keras backend (KERAS_BACKEND is set for the subprocess)."""

    layout = "NHWC"
    gradshap_framework = "keras"

    def __init__(self, backend: str):
        self.name = f"keras-{backend}"
        self.backend = backend
        self.inner = {"tensorflow": TensorFlowGroup, "jax": JaxGroup, "torch": TorchGroup}[backend]()

    def model(self, wl):
        return wl.build("keras")

    def array(self, a):
        a = workloads.to_layout(a, self.layout)
        if self.backend == "torch":
            import keras

            return keras.ops.convert_to_tensor(a)
        return self.inner.array(a) if self.backend == "jax" else self.inner.tf.constant(a)

    def sync(self, value):
        if self.backend == "jax":
            self.inner.jax.block_until_ready(value)

    def numpy(self, value):
        import keras

        return keras.ops.convert_to_numpy(value)

    def floor_variants(self, wl):
        return self.inner.floor_variants(wl) if self.backend == "tensorflow" else ("",)

    def floor_runner(self, model, case, chunk, variant):
        if self.backend == "tensorflow":
            return TensorFlowGroup.floor_runner(self.inner, lambda x: model(x, training=False), case, chunk, variant)
        if self.backend == "jax":
            jax = self.inner.jax
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]

            @jax.jit
            def vjp(trainable, non_trainable, points, cot):
                def f(p):
                    return model.stateless_call(trainable, non_trainable, p, training=False)[0]

                out, pullback = jax.vjp(f, points)
                return pullback(cot)[0]

            chunks = [self.array(c) for c in _padded_chunks(case.points, chunk)]
            cots = [jax.numpy.asarray(c) for c in _padded_chunks(case.cot, chunk)]

            def run():
                grads = [vjp(trainable, non_trainable, p, c) for p, c in zip(chunks, cots)]
                jax.block_until_ready(grads)
                return grads[-1]

            return run
        torch = self.inner.torch
        pts = torch.from_numpy(workloads.to_layout(case.points, self.layout))
        cot = torch.from_numpy(case.cot)

        def run():
            grads = None
            for i in range(0, len(pts), chunk):
                leaf = pts[i : i + chunk].detach().requires_grad_(True)
                out = model(leaf, training=False)
                (grads,) = torch.autograd.grad(out, leaf, grad_outputs=cot[i : i + chunk])
            return grads

        return run

    def by_hand_runner(self, model, case, chunk, variant):
        call = lambda p: model(p, training=False)  # noqa: E731
        if self.backend == "tensorflow":
            return _tf_by_hand(self.inner.tf, call, case, chunk, variant == "xla")
        if self.backend == "jax":
            params = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])

            def apply(params, points):
                return model.stateless_call(*params, points, training=False)[0]

            return _jax_by_hand(self.inner.jax, apply, params, case, chunk, self.inner.array, self.layout)
        return _torch_by_hand(self.inner.torch, call, case, self.array, chunk, None, lambda: None)


def make_group(name: str) -> Group:
    if name == "torch":
        return TorchGroup()
    if name == "jax":
        return JaxGroup()
    if name == "tensorflow":
        return TensorFlowGroup()
    if name.startswith("keras-"):
        return KerasGroup(name.split("-", 1)[1])
    msg = f"unknown group {name!r}"
    raise ValueError(msg)


# ---------------------------------------------------------------------------- rows
# A row function takes (group, model, case, options) and returns a zero-argument callable
# that runs the row once and returns its values (or None), plus a dict of details. It
# raises Skip when the row cannot run here.


def row_floor(group: Group, model, case: Case, opts: dict):
    """The floor: the best (chunk, variant) of a short sweep (:func:`_swept`)."""
    return _swept(case, opts, group.floor_variants(case.wl),
                  lambda chunk, variant: group.floor_runner(model, case, chunk, variant))


def row_by_hand(group: Group, model, case: Case, opts: dict):
    """Expected gradients written by hand in the framework, at the best of the floor's
    candidates (chunk, variant) in a sweep of its own (:func:`_swept`)."""
    return _swept(case, opts, group.floor_variants(case.wl),
                  lambda chunk, variant: group.by_hand_runner(model, case, chunk, variant))


def _swept(case: Case, opts: dict, variants: tuple, make: Callable):
    """``make(chunk, variant)``'s runner at the best (chunk, variant) of a short sweep.

    The candidates are timed interleaved (round r runs each once) and ranked by their
    fastest run: on a shared machine, load only ever adds time, so the minimum is the
    least disturbed reading, and a candidate is not favoured because a burst of load hit
    the others. The two fastest go on to the timed rounds (``runner_up`` in the details);
    :func:`settle_floor` keeps the one with the lower median there.
    """
    chunks = FLOOR_CHUNKS[case.wl.name]
    n_points = len(case.points)
    chunks = tuple(c for c in chunks if c < n_points) + (min(n_points, max(chunks)),)
    chunks = tuple(sorted(set(chunks)))
    if opts["quick"]:
        chunks = chunks[-1:]
    runs, warmups = {}, {}
    for variant in variants:
        for chunk in chunks:
            name = f"{chunk}{'/' + variant if variant else ''}"
            run = runs[name] = make(chunk, variant)
            warmups[name] = _timed(run, _clock(opts))[0]  # compile / warm-up
    times: dict = {name: [] for name in runs}
    for _ in range(opts["sweep_repeats"]):
        for name, run in runs.items():
            times[name].append(_timed(run, _clock(opts))[0])
    sweep = {name: min(t) for name, t in times.items()}
    ranked = sorted(sweep, key=sweep.get)
    # "warmups": each candidate's first call (compile, trace), reported as the floor's warm-up.
    details = {"best": ranked[0], "sweep": sweep, "warmups": warmups}
    if len(ranked) > 1 and not opts["quick"]:
        # The runner-up is timed too, in the same rounds as the other rows; the floor is the
        # one of the two with the lower median there (see worker_time). Three sweep rounds
        # can all be disturbed: one run picked 1,024 points for the torch MLP, whose 4,096
        # ran at 20.3 ms in the sweep and at 10.4-11 ms otherwise; that floor read 13.8 ms.
        details["runner_up"] = (ranked[1], runs[ranked[1]])
    return runs[ranked[0]], details  # both warmed up by the sweep


def row_gradshap(group: Group, model, case: Case, opts: dict):
    return _gradshap_row(group, model, case, opts, case.bg, new_count=opts.get("new_count", True))


def row_gradshap_bigbg(group: Group, model, case: Case, opts: dict):
    n_background = case.wl.large_background
    run, details = _gradshap_row(group, model, case, opts, case.wl.background(n_background), new_count=False)
    return run, {**details, "background_rows": n_background}


def row_gradshap_linear(group: Group, model, case: Case, opts: dict):
    run, details = _gradshap_row(group, group.model(case.wl.linear()), case, opts, case.bg, new_count=False)
    return run, {**details, "linear_model": True}


def _gradshap_row(group: Group, model, case: Case, opts: dict, background: np.ndarray, *, new_count: bool):
    """gradshap's default call on ``case.x`` against ``background``, its first call timed;
    with ``new_count``, then a first call at one row fewer (``new_count_s``, else None)."""
    import gradshap

    x = group.array(case.x)
    try:
        explainer = gradshap.GradientExplainer(model, group.array(background), framework=group.gradshap_framework)
        run = _gradshap_runner(group, explainer, x, case, case.n_samples, fresh_seeds=opts.get("fresh_seeds", False))
        first = _timed(run, _clock(opts))[0]  # the first call: JAX compile, tf.function trace
        # Then one call with a row fewer: a row count whose compiled shapes, unless the
        # engine reuses those of the first call's count, are compiled or traced anew.
        fewer = len(case.x) - 1
        new_count_s = _timed(_gradshap_runner(group, explainer, group.array(case.x[:fewer]), case, case.n_samples),
                             _clock(opts))[0] \
            if fewer and new_count else None
    except NotImplementedError as err:
        raise Skip(f"gradshap's {group.gradshap_framework} adapter is not implemented yet ({err})") from err
    return run, {"batch_size": _batch_size(explainer, case, x), "first_s": first, "new_count_s": new_count_s}


def _gradshap_runner(group, explainer, x, case, n_samples, *, fresh_seeds: bool = False):
    """One call of ``explainer`` at seed 0; with ``fresh_seeds``, at seeds 1, 2, ... (the
    memory rows, whose readings then compare with those of trees that kept the draws of
    the call before, up to a753be7)."""
    seeds = itertools.count(1) if fresh_seeds else itertools.repeat(0)

    def run():
        exp = explainer(x, target=case.wl.target, n_samples=n_samples, seed=next(seeds))
        group.sync(exp.values)
        return exp.values

    return run


def _batch_size(explainer, case, x) -> int:
    import array_api_compat

    from gradshap import _tiling

    if explainer.batch_size is not None:
        return explainer.batch_size
    try:
        device = array_api_compat.device(x)
    except TypeError:  # TensorFlow tensors are outside array-api-compat
        device = getattr(x, "device", None)
    return _tiling.default_batch_size(
        int(np.prod(case.wl.input_shape)), device=device, compiled=explainer.adapter.compiles
    )


def _select_output(model, target):
    """``model`` returning only the explained output, as (m, 1) (a torch module)."""
    from torch import nn

    class Select(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return out if target is None else out[:, target : target + 1]

    return Select().eval()


def row_captum(group: Group, model, case: Case, opts: dict):
    if group.name != "torch":
        raise Skip("captum explains torch models only")
    try:
        from captum.attr import GradientShap
    except ImportError as err:
        raise Skip("captum is not installed") from err
    explainer = GradientShap(model)
    x, bg = group.array(case.x), group.array(case.bg)
    target = 0 if case.wl.target is None else case.wl.target

    def run():
        torch = group.torch
        # captum draws its baselines and alphas from torch's global RNG: seed it, so every
        # repeat does the same work.
        torch.manual_seed(0)
        values = explainer.attribute(x, baselines=bg, n_samples=case.n_samples, stdevs=0.0, target=target)
        group.sync()
        return values

    return run, {}


def row_shap(group: Group, model, case: Case, opts: dict):
    if group.name not in ("torch", "tensorflow"):
        raise Skip("shap's GradientExplainer is run for torch and TensorFlow models")
    try:
        import shap
    except ImportError as err:
        raise Skip("shap is not installed") from err
    if group.name == "torch":
        # One output only: shap would otherwise explain all of them (10x the work).
        wrapped = _select_output(model, case.wl.target)
        x, bg = group.array(case.x), group.array(case.bg)
    else:
        keras_model = case.keras_model if hasattr(case, "keras_model") else None
        if keras_model is None:
            raise Skip("no Keras model for shap's TensorFlow path")
        wrapped = keras_model
        x, bg = workloads.to_layout(case.x, "NHWC"), workloads.to_layout(case.bg, "NHWC")
    try:
        explainer = shap.GradientExplainer(wrapped, bg)
    except Exception as err:  # noqa: BLE001 - shap's own failure, reported as a skip
        raise Skip(f"shap.GradientExplainer failed: {type(err).__name__}: {err}") from err

    def run():
        np.random.seed(0)  # shap draws from NumPy's global RNG
        values = explainer.shap_values(x, nsamples=case.n_samples)
        values = values[0] if isinstance(values, list) else values
        return np.asarray(values).reshape(case.x.shape) if group.name == "torch" else np.asarray(values)

    try:
        first = _timed(run, _clock(opts))[0]
    except Exception as err:  # noqa: BLE001
        raise Skip(f"shap.GradientExplainer failed: {type(err).__name__}: {err}") from err
    return run, {"first_s": first}


#: Row name -> row function. A new row is one function and one entry here.
ROWS: dict[str, Callable] = {"floor": row_floor, "gradshap": row_gradshap, "gradshap-bigbg": row_gradshap_bigbg,
                             "gradshap-linear": row_gradshap_linear, "by-hand": row_by_hand, "captum": row_captum,
                             "shap": row_shap}

#: Rows timed only (no memory row), against the same floor.
TIMED_ONLY = ("gradshap-bigbg", "gradshap-linear", "by-hand")

#: Rows each group runs.
GROUP_ROWS = {
    "torch": ("floor", "gradshap", "gradshap-bigbg", "gradshap-linear", "by-hand", "captum", "shap"),
    "jax": ("floor", "gradshap", "gradshap-bigbg", "gradshap-linear", "by-hand"),
    "tensorflow": ("floor", "gradshap", "gradshap-bigbg", "gradshap-linear", "by-hand", "shap"),
    "keras-tensorflow": ("floor", "gradshap", "gradshap-bigbg", "gradshap-linear", "by-hand"),
    "keras-jax": ("floor", "gradshap", "gradshap-bigbg", "gradshap-linear", "by-hand"),
    "keras-torch": ("floor", "gradshap", "gradshap-bigbg", "gradshap-linear", "by-hand"),
}


# Further rounds of the floor and gradshap rows, until each has this many seconds of timed
# runs (full runs), at most MAX_EXTRA_ROUNDS of them.
MIN_TIME_S = 2.0
MAX_EXTRA_ROUNDS = 100


def settle_floor(row: dict, runner_up: str, times: list) -> None:
    """The floor ``row`` (its sweep's ``best`` and timed ``times``) becomes the runner-up
    candidate, timed in the same rounds, where that one's median is lower; the other is
    kept under ``runner_up``."""
    if statistics.median(times) < statistics.median(row["times"]):
        row["runner_up"] = {"best": row["best"], "median_s": statistics.median(row["times"])}
        row["best"], row["times"] = runner_up, list(times)
    else:
        row["runner_up"] = {"best": runner_up, "median_s": statistics.median(times)}


def _timed(run: Callable, clock: Callable[[], float] = time.perf_counter) -> tuple[float, Any]:
    """``run()``'s duration on ``clock`` (seconds), and its value."""
    t0 = clock()
    value = run()
    return clock() - t0, value


def _clock(opts: dict) -> Callable[[], float]:
    """The clock the rows of a worker are timed on (``opts["clock"]``; see :func:`worker_time`)."""
    return opts.get("clock", time.perf_counter)


def _values_summary(group: Group, values, layout: str) -> np.ndarray:
    v = group.numpy(values)
    if v.ndim == 4 and layout == "NHWC":
        v = np.transpose(v, (0, 3, 1, 2))
    return v


def worker_time(spec: dict, *, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time every row of one group on every workload; interleaved repeats.

    ``clock``: seconds, read before and after each timed run (and around each row's setup);
    every duration reported, and so the number of further rounds (``min_time_s``), is
    measured on it. The bench uses ``time.perf_counter``; the tests pass a fake clock, to
    get a set number of rounds whatever the machine's load.
    """
    group = make_group(spec["group"])
    out = {"group": group.name, "workloads": {}}
    for wname in spec["workloads"]:
        wl = workloads.get(wname)
        n_rows = wl.quick_rows if spec["quick"] else wl.n_rows
        case = Case(wl, n_rows, spec["n_samples"])
        model = group.model(wl)
        if group.name == "tensorflow":
            case.keras_model = wl.build("keras")
        opts = {"quick": spec["quick"], "sweep_repeats": 1 if spec["quick"] else 3, "clock": clock}
        runners, info, alternates = {}, {}, {}
        row_names = [r for r in spec["rows"] if r != "gradshap-bigbg" or wl.large_background]
        # gradshap first: a Keras group whose adapter is missing has nothing to compare.
        order = sorted(row_names, key=lambda r: r != "gradshap")
        for rname in order:
            if group.name.startswith("keras-") and "skipped" in info.get("gradshap", {}):
                info[rname] = {"skipped": "no gradshap row to compare with (see the gradshap row)"}
                continue
            _emit_progress(f"{group.name} {wname}: {rname} (setup)")
            try:
                t0 = clock()
                run, details = ROWS[rname](group, model, case, opts)
                runner_up = details.pop("runner_up", None)
                # A row that ran its first call itself (to check that it runs, or in a sweep)
                # says how long it took: that call is the warm-up reported.
                reported = details.pop("first_s", None)
                checked, value = _timed(run, clock)
                first = checked if reported is None else reported
                setup = clock() - t0 - checked - (reported or 0.0)
                info[rname] = {"setup_s": setup, "first_s": first, **details, "times": []}
                if runner_up is not None:
                    alternates[rname] = (runner_up[0], runner_up[1], [])
                if rname == "gradshap":
                    info[rname]["values"] = _values_summary(group, value, group.layout)
                elif rname == "by-hand" and "values" in info.get("gradshap", {}):
                    # The same draws: the same estimate, to float32 rounding, where every
                    # background row is drawn equally often (the module doc says where not).
                    info[rname]["max_abs_diff_vs_gradshap"] = float(np.max(np.abs(
                        _values_summary(group, value, group.layout) - info["gradshap"]["values"])))
                runners[rname] = run
            except Skip as err:
                info[rname] = {"skipped": str(err)}
            except Exception as err:  # noqa: BLE001 - a failing row must not hide the others
                info[rname] = {"skipped": f"failed: {type(err).__name__}: {err}"}
        info = {r: info[r] for r in row_names}
        runners = {r: runners[r] for r in row_names if r in runners}
        gc.collect()

        def one_round(names: list, label: str) -> None:
            for rname in names:
                _emit_progress(f"{group.name} {wname}: {rname} {label}")
                info[rname]["times"].append(_timed(runners[rname], clock)[0])
                if rname in alternates:
                    alternates[rname][2].append(_timed(alternates[rname][1], clock)[0])

        for r in range(spec["repeats"]):
            one_round(list(runners), f"run {r + 1}/{spec['repeats']}")
        # gradshap / floor from more rounds of those two where runs are short (module doc).
        # (The other gradshap rows and the by-hand row too: their ratios to the floor are
        # read the same way. The linear model's row, the shortest, and the by-hand row ride
        # along: they do not set the rounds.)
        pair = [r for r in ("floor", "gradshap", *TIMED_ONLY) if r in runners]
        settled = [r for r in pair if r in ("floor", "gradshap", "gradshap-bigbg")]
        extra = 0
        while "floor" in settled and len(settled) >= 2 and extra < MAX_EXTRA_ROUNDS and \
                min(sum(info[r]["times"]) for r in settled) < spec.get("min_time_s", 0.0):
            extra += 1
            one_round(pair, f"extra round {extra}")
        for rname, (name, _, times) in alternates.items():
            settle_floor(info[rname], name, times)
        for d in info.values():
            if "warmups" in d:
                d["first_s"] = d.pop("warmups")[d["best"]]
        for rname, d in info.items():
            if "times" in d and d["times"]:
                d["median_s"] = statistics.median(d["times"])
                d["min_s"] = min(d["times"])
                d["warmup_extra_s"] = max(0.0, d["first_s"] - d["median_s"])
            if "values" in d:
                np.save(Path(spec["tmp"]) / f"values-{group.name}-{wname}.npy", d.pop("values"))
        out["workloads"][wname] = {"n_rows": n_rows, "n_points": len(case.points), "rows": info}
    if spec.get("memory_inline"):
        # Smoke runs measure memory in the same process, after the timings.
        floor_best = {w: d["rows"].get("floor", {}).get("best") for w, d in out["workloads"].items()}
        out["memory"] = {
            w: worker_memory({**spec, "workload": w, "floor_best": floor_best}, group)["rows"] for w in spec["workloads"]
        }
    return out


# ---------------------------------------------------------------------------- memory


def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _libc():
    """The C library through ctypes, or ``None`` where it cannot be loaded."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _fix_heap_threshold() -> None:
    """Big blocks (>= 128 KiB) mapped and returned to the OS when freed, at every size
    (glibc only; see the module docstring)."""
    try:
        libc = _libc()
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: setting it turns off the dynamic threshold
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD: the heap's free top goes back too
    except AttributeError:  # no libc, or not glibc
        pass


def _release_free_memory() -> None:
    """Give the C heap's free pages back to the OS, so that the next peak is measured
    from what is live, not hidden by buffers a warm-up freed (glibc only)."""
    try:
        _libc().malloc_trim(0)
    except AttributeError:  # no libc, or not glibc
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rise_mib(run: Callable, group: Group) -> dict:
    """Peak resident-set rise during ``run()`` (and the GPU's peak allocation, if any)."""
    gc.collect()
    _release_free_memory()
    group.reset_device_memory()
    before = _status_mib("VmRSS")
    if not _reset_hwm():
        return {"error": "cannot reset the peak RSS (/proc/self/clear_refs)"}
    run()
    rise = _status_mib("VmHWM") - before
    result = {"rss_rise_mib": round(rise, 2)}
    gpu = group.peak_device_memory()
    if gpu is not None:
        result["gpu_peak_mib"] = round(gpu, 2)
    return result


def worker_memory(spec: dict, group: Group | None = None) -> dict:
    """Peak memory of each row on one workload; for gradshap also at 4x rows and 4x samples."""
    _fix_heap_threshold()
    group = make_group(spec["group"]) if group is None else group
    wl = workloads.get(spec["workload"])
    n_rows = wl.quick_rows if spec["quick"] else wl.n_rows
    n_samples = spec["n_samples"]
    case = Case(wl, n_rows, n_samples)
    model = group.model(wl)
    if group.name == "tensorflow":
        case.keras_model = wl.build("keras")
    opts = {"quick": True, "sweep_repeats": 1, "fresh_seeds": True, "new_count": False}  # (timed in the time rows)
    out = {"group": group.name, "workload": wl.name, "rows": {}}
    for rname in spec["rows"]:
        if rname in TIMED_ONLY:
            continue
        _emit_progress(f"memory {group.name} {wl.name}: {rname}")
        try:
            if rname == "floor":
                # The floor's memory at the chunk size the timing run found best.
                best = spec.get("floor_best", {}).get(wl.name)
                if best is None:
                    continue
                chunk, _, variant = best.partition("/")
                run, details = group.floor_runner(model, case, int(chunk), variant), {"best": best}
            else:
                run, details = ROWS[rname](group, model, case, opts)
            run()
            res = peak_rise_mib(run, group)
            if rname == "gradshap":
                res["scaling"] = _gradshap_scaling(group, model, case, n_rows, n_samples, 1 if spec["quick"] else 3)
            out["rows"][rname] = res
        except Skip as err:
            out["rows"][rname] = {"skipped": str(err)}
        except Exception as err:  # noqa: BLE001
            out["rows"][rname] = {"skipped": f"failed: {type(err).__name__}: {err}"}
    return out


def _gradshap_scaling(group, model, case, n_rows, n_samples, repeats: int) -> dict:
    """Peak rise at (n, S), (4n, S) and (n, 4S), each after its own warm-up; the median
    of ``repeats`` rounds, the three sizes interleaved (the C heap makes single readings
    scatter by several MiB)."""
    import gradshap

    bg = group.array(case.bg)
    explainer = gradshap.GradientExplainer(model, bg, framework=group.gradshap_framework)
    x4, _ = case.wl.data(4 * n_rows)
    configs = {"base": (case.x, n_samples), "rows_x4": (x4, n_samples), "samples_x4": (case.x, 4 * n_samples)}
    runs = {label: _gradshap_runner(group, explainer, group.array(x), case, s, fresh_seeds=True)
            for label, (x, s) in configs.items()}
    readings = {label: [] for label in configs}
    for _ in range(repeats):
        for label, run in runs.items():
            run()
            readings[label].append(peak_rise_mib(run, group).get("rss_rise_mib"))
    result = {label: statistics.median(v) for label, v in readings.items()}
    base = result["base"]
    for label in ("rows_x4", "samples_x4"):
        result[f"{label}_ratio"] = round(result[label] / base, 3) if base and base > 0 else None
    return result


def worker_main(spec: dict) -> int:
    if spec["kind"] == "time":
        result = worker_time(spec)
    else:
        result = worker_memory(spec)
    print(_RESULT + json.dumps(result, default=float), flush=True)
    return 0


# ============================================================================ driver side


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def available_groups() -> list[str]:
    groups = []
    if _installed("torch"):
        groups.append("torch")
    if _installed("jax"):
        groups.append("jax")
    if _installed("tensorflow"):
        groups.append("tensorflow")
    if _installed("keras"):
        backends = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
        groups += [f"keras-{b}" for b, mod in backends.items() if _installed(mod)]
    return groups


def _worker_env(group: str) -> dict:
    import gradshap

    env = dict(os.environ)
    src = str(Path(gradshap.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # Each framework at its defaults (float32, all cores); quiet logs.
    env["JAX_ENABLE_X64"] = "0"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONWARNINGS"] = "ignore"
    if group.startswith("keras-"):
        env["KERAS_BACKEND"] = group.split("-", 1)[1]
    elif group == "tensorflow":
        env["KERAS_BACKEND"] = "tensorflow"
    return env


def _run_worker(spec: dict, bar, timeout: float) -> dict:
    import tempfile

    cmd = [sys.executable, str(HERE / "bench.py"), "--worker", json.dumps(spec)]
    env = _worker_env(spec["group"])
    result, lines = None, []
    deadline = time.monotonic() + timeout
    # stderr goes to a file: frameworks log a lot there, and a full pipe would block the worker.
    with tempfile.TemporaryFile("w+") as err, subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(_PROGRESS):
                if bar is not None:
                    bar.set_postfix_str(line[len(_PROGRESS):][:60], refresh=True)
            elif line.startswith(_RESULT):
                result = json.loads(line[len(_RESULT):])
            else:
                lines.append(line)
            if time.monotonic() > deadline:
                proc.kill()
                break
        proc.wait()
        err.seek(0)
        stderr = err.read()
    if result is None:
        text = stderr.strip().splitlines() or lines or ["(no output)"]
        # The cause (an exception's line, or Python's fatal error) may sit above the last lines.
        cause = [ln for ln in text if ln.startswith("Fatal Python error") or re.match(r"\w[\w.]*(Error|Exception)\b", ln)]
        tail = "\n".join(([cause[-1]] if cause and cause[-1] not in text[-3:] else []) + text[-3:])
        return {"error": f"worker exited with code {proc.returncode}: {tail}"}
    return result


def _parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/bench.py",
        description="Time gradshap against each framework's floor, captum and shap; write JSON, markdown and a PNG.",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run (no timing claims)")
    p.add_argument("--workloads", default=None, help="comma-separated from: " + ", ".join(workloads.WORKLOADS)
                   + " (default: mlp,cnn, and resnet when a GPU is present; mlp with --quick)")
    p.add_argument("--groups", default=None, help="comma-separated from: " + ", ".join(GROUPS)
                   + " (default: every installed one)")
    p.add_argument("--rows", default=None, help="comma-separated rows to run (default: all of " + ", ".join(ROWS) + ")")
    p.add_argument("--n-samples", type=int, default=None, help="samples per row (default 200; 16 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per row after the warm-up (default 5; 1 with --quick)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of timed runs of the floor and gradshap rows at least, in further rounds of those "
                        f"two (at most {MAX_EXTRA_ROUNDS}; default {MIN_TIME_S:g}; 0 with --quick)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--jobs", type=int, default=None,
                   help="framework groups run at once (default 1; 3 with --quick). Timings need 1")
    p.add_argument("--out", default=str(HERE / "results"), help="output folder (default benchmarks/results)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        return worker_main(json.loads(argv[1]))
    args = _parse(argv)
    device = _device()
    if args.workloads:
        names = args.workloads.split(",")
    elif args.quick:
        names = ["mlp"]
    else:
        names = [w.name for w in workloads.WORKLOADS.values() if device == "gpu" or not w.gpu_only]
    for name in names:
        if name not in workloads.WORKLOADS:
            print(f"gradshap bench: unknown workload {name!r}; choose from {', '.join(workloads.WORKLOADS)}", file=sys.stderr)
            return 2
    groups = args.groups.split(",") if args.groups else available_groups()
    for g in groups:
        if g not in GROUPS:
            print(f"gradshap bench: unknown group {g!r}; choose from {', '.join(GROUPS)}", file=sys.stderr)
            return 2
    for name in ("n_samples", "repeats", "jobs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"bench: --{name.replace('_', '-')} must be a positive integer; got {value}", file=sys.stderr)
            return 2
    if args.min_time is not None and not args.min_time >= 0:
        print(f"bench: --min-time must be a number of seconds >= 0; got {args.min_time}", file=sys.stderr)
        return 2
    rows_filter = set(args.rows.split(",")) if args.rows else set(ROWS)
    n_samples = args.n_samples or (16 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 5)
    min_time = args.min_time if args.min_time is not None else (0.0 if args.quick else MIN_TIME_S)
    out_dir = Path(args.out)
    try:  # before any work: a bad --out is found in a second, not after the runs
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"bench: cannot write to --out {args.out!r}: {err.strerror or err}", file=sys.stderr)
        return 2
    import shutil
    import tempfile

    # Values cross between worker processes through .npy files here (for the diff columns).
    tmp = Path(tempfile.mkdtemp(prefix="gradshap-bench-"))

    # Full runs measure memory in a fresh process per group and workload; smoke runs
    # measure it inline and run groups side by side (their timings mean nothing).
    inline = args.quick and not args.no_memory
    jobs = []
    for g in groups:
        rows = [r for r in GROUP_ROWS[g] if r in rows_filter]
        base = {"group": g, "quick": args.quick, "n_samples": n_samples, "rows": rows, "tmp": str(tmp)}
        jobs.append({**base, "kind": "time", "workloads": names, "repeats": repeats, "min_time_s": min_time,
                     "memory_inline": inline})
        if not args.no_memory and not inline:
            jobs += [{**base, "kind": "memory", "workload": w} for w in names]
    n_parallel = args.jobs or (3 if args.quick else 1)

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="gradshap bench", unit="job", dynamic_ncols=True)
    started = time.time()
    timing, memory, errors = {}, {}, {}

    def record(job, res):
        if "error" in res:
            errors[f"{job['kind']} {job['group']}"] = res["error"]
        elif job["kind"] == "time":
            timing[job["group"]] = res
            if "memory" in res:
                memory[job["group"]] = res.pop("memory")
        else:
            memory.setdefault(job["group"], {})[job["workload"]] = res["rows"]
        if bar is not None:
            bar.update(1)

    if n_parallel > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n_parallel) as pool:
            futures = [(job, pool.submit(_run_worker, job, bar, 1800)) for job in jobs]
            for job, fut in futures:
                record(job, fut.result())
    else:
        for job in jobs:
            if bar is not None:
                bar.set_description(f"{job['kind']} {job['group']}")
            if job["kind"] == "memory":
                found = timing.get(job["group"], {}).get("workloads", {})
                best = {w: d["rows"].get("floor", {}).get("best") for w, d in found.items()}
                job["floor_best"] = {w: b for w, b in best.items() if b}
            record(job, _run_worker(job, bar, timeout=1800))
    if bar is not None:
        bar.close()

    report = build_report(timing, memory, errors, names, tmp, n_samples=n_samples, repeats=repeats,
                          min_time_s=min_time, quick=args.quick, argv=argv, elapsed=time.time() - started, device=device)
    shutil.rmtree(tmp, ignore_errors=True)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2, default=float))
    md = render_markdown(report)
    (out_dir / "bench.md").write_text(md)
    render_png(report, out_dir / "bench.png")
    print(md)
    print(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'}, {out_dir / 'bench.png'}")
    failed = failures(report)
    if failed:
        print(f"bench: {len(failed)} failure(s): {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def failures(report: dict) -> list:
    """What failed in a run: jobs whose worker gave no result, and rows (timed or measured
    for memory) that raised; a row skipped for a stated reason (an anchor not installed,
    no GPU) is not a failure."""
    out = [f"job {name}" for name in report["errors"]]
    for r in report["rows"]:
        for what, reason in (("", r.get("skipped")), (" (memory)", r.get("memory", {}).get("skipped"))):
            if str(reason or "").startswith("failed:"):
                out.append(f"row {r['workload']} {r['group']} {r['row']}{what}: {reason}")
    return out


# ---------------------------------------------------------------------------- report


def build_report(timing, memory, errors, names, tmp: Path, **meta) -> dict:
    rows = []
    for wname in names:
        floors, floor_mins, anchors = {}, {}, {}
        for g, res in timing.items():
            d = res["workloads"].get(wname, {}).get("rows", {})
            if "median_s" in d.get("floor", {}):
                floors[g] = d["floor"]["median_s"]
                floor_mins[g] = d["floor"].get("min_s")
            for a in ("captum", "shap"):
                if "median_s" in d.get(a, {}):
                    anchors[(a, g)] = d[a]["median_s"]
        ref = _reference_values(tmp, wname)
        for g, res in timing.items():
            wd = res["workloads"].get(wname, {})
            for rname, d in wd.get("rows", {}).items():
                row = {"workload": wname, "group": g, "row": rname, "n_rows": wd["n_rows"], "n_points": wd["n_points"]}
                if "skipped" in d:
                    row["skipped"] = d["skipped"]
                    rows.append(row)
                    continue
                row.update({k: d[k] for k in ("median_s", "min_s", "warmup_extra_s", "times") if k in d})
                for k in ("best", "sweep", "runner_up", "batch_size", "new_count_s", "background_rows", "linear_model",
                          "max_abs_diff_vs_gradshap"):
                    if k in d:
                        row[k] = d[k]
                if g in floors:
                    row["x_floor"] = d["median_s"] / floors[g]
                    if "min_s" in d and floor_mins.get(g):
                        row["x_floor_min"] = d["min_s"] / floor_mins[g]
                if rname == "gradshap":
                    captum = anchors.get(("captum", "torch"))
                    shap_t = anchors.get(("shap", g)) or anchors.get(("shap", "torch"))
                    if captum:
                        row["x_captum"] = d["median_s"] / captum
                    if shap_t:
                        row["shap_speedup"] = shap_t / d["median_s"]
                    diff = _value_diff(tmp, wname, g, ref)
                    if diff is not None:
                        row["max_abs_diff_vs_torch"] = diff
                mem = memory.get(g, {}).get(wname, {}).get(rname, {})
                if mem:
                    row["memory"] = mem
                rows.append(row)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "device": meta["device"], "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "versions": _versions(),
        "command": " ".join(["python benchmarks/bench.py", *meta["argv"]]),
        "n_samples": meta["n_samples"], "repeats": meta["repeats"], "min_time_s": meta.get("min_time_s", 0.0),
        "quick": meta["quick"],
        "elapsed_s": meta["elapsed"], "rows": rows, "errors": errors,
        "memory_method": "peak RSS rise (VmHWM after /proc/self/clear_refs reset, minus VmRSS before) in a fresh "
                         "subprocess per group and workload, after a warm-up call and malloc_trim(0), with glibc's mmap "
                         "threshold fixed at 128 KiB (mallopt) so that freed big buffers leave the resident set",
    }


def _reference_values(tmp: Path, wname: str):
    path = tmp / f"values-torch-{wname}.npy"
    return np.load(path) if path.exists() else None


def _value_diff(tmp: Path, wname: str, group: str, ref) -> float | None:
    path = tmp / f"values-{group}-{wname}.npy"
    if ref is None or not path.exists():
        return None
    v = np.load(path)
    if v.shape != ref.shape:
        return None
    return float(np.max(np.abs(v.astype(np.float64) - ref.astype(np.float64))))


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("gradshap", "torch", "jax", "tensorflow", "tensorflow-cpu", "keras", "captum", "shap", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def render_markdown(report: dict) -> str:
    lines = [
        f"gradshap bench, {report['date']}, {report['machine']['cpus']} CPUs, device: {report['machine']['device']}; "
        f"{report['n_samples']} samples per row, median of {report['repeats']} run(s) after a warm-up"
        + (f" (the floor and gradshap rows: further rounds of those two up to {report['min_time_s']:g} s of runs "
           "each; 'runs' in the notes)" if report.get("min_time_s") else "")
        + "; 'x floor (min)' is the ratio of the fastest runs, the reading least disturbed by other load.",
        "",
        "| workload | group | row | rows x samples | median | min | x floor | x floor (min) | x captum | shap / this "
        "| warm-up extra | peak RSS rise | 4x rows, 4x samples | max diff vs torch | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        size = f"{r['n_rows']} x {r['n_points'] // max(1, r['n_rows'])}"
        if "skipped" in r:
            lines.append(f"| {r['workload']} | {r['group']} | {r['row']} | {size} | skipped | | | | | | | | | | {r['skipped']} |")
            continue
        mem = r.get("memory", {})
        rss = f"{mem['rss_rise_mib']:.1f} MiB" if "rss_rise_mib" in mem else mem.get("skipped", "")
        if "gpu_peak_mib" in mem:
            rss += f" (GPU {mem['gpu_peak_mib']:.0f} MiB)"
        sc = mem.get("scaling", {})
        scaling = ""
        if sc.get("rows_x4_ratio") is not None:
            scaling = f"{sc['rows_x4_ratio']:.2f}x, {sc['samples_x4_ratio']:.2f}x"
        notes = []
        if "best" in r:
            notes.append(f"best chunk {r['best']}")
        if "runner_up" in r:
            notes.append(f"runner-up {r['runner_up']['best']}: {_fmt_s(r['runner_up']['median_s'])}")
        if "background_rows" in r:
            notes.append(f"{r['background_rows']:,} background rows")
        if r.get("linear_model"):
            notes.append("the model replaced by one linear layer")
        if "max_abs_diff_vs_gradshap" in r:
            notes.append(f"max diff vs gradshap {r['max_abs_diff_vs_gradshap']:.1e}")
        if "batch_size" in r:
            notes.append(f"batch_size {r['batch_size']}")
        if r.get("new_count_s") is not None:
            notes.append(f"first call at {r['n_rows'] - 1} rows: {_fmt_s(r['new_count_s'])}")
        if len(r.get("times", ())) > report["repeats"]:
            notes.append(f"{len(r['times'])} runs")
        lines.append(
            f"| {r['workload']} | {r['group']} | {r['row']} | {size} | {_fmt_s(r['median_s'])} | {_fmt_s(r['min_s'])} | "
            f"{_ratio(r.get('x_floor'))} | {_ratio(r.get('x_floor_min'))} | {_ratio(r.get('x_captum'))} | "
            f"{_ratio(r.get('shap_speedup'))} | "
            f"{_fmt_s(r['warmup_extra_s'])} | {rss} | {scaling} | "
            f"{_sci(r.get('max_abs_diff_vs_torch'))} | {'; '.join(notes)} |"
        )
    if report["errors"]:
        lines += ["", "Errors:"] + [f"- {k}: {v}" for k, v in report["errors"].items()]
    lines += ["", f"Peak memory: {report['memory_method']}.", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def _sci(v) -> str:
    return "" if v is None else f"{v:.1e}"


def _ratio(v) -> str:
    return "" if v is None else f"{v:.2f}x"


def render_png(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in report["rows"] if "median_s" in r]
    names = list(dict.fromkeys(r["workload"] for r in done)) or ["(none)"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.5), squeeze=False)
    colors = {"floor": "#888888", "gradshap": "#1f77b4", "captum": "#ff7f0e", "shap": "#d62728"}
    for ax, wname in zip(axes[0], names):
        rs = [r for r in done if r["workload"] == wname]
        labels = [f"{r['row']}\n{r['group']}" for r in rs]
        vals = [r["median_s"] * 1e3 for r in rs]
        bars = ax.bar(range(len(rs)), vals, color=[colors.get(r["row"], "#2ca02c") for r in rs])
        for b, r in zip(bars, rs):
            if "x_floor" in r:
                ax.annotate(f"{r['x_floor']:.2f}x", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(rs)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("median wall time (ms, log)")
        ax.set_title(f"{wname}: {rs[0]['n_rows'] if rs else ''} rows x {report['n_samples']} samples", fontsize=9)
    fig.suptitle(f"gradshap bench {report['date']} ({report['machine']['device']}); label: ratio to the floor", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
