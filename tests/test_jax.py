"""JAX adapter: plain callables, functools.partial(apply, params), Flax NNX and Equinox."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest

import gradshap
from conftest import import_or_fail
from models import mlp_weights, numpy_mlp


def _reference(weights, bg, x, **kw):
    return gradshap.GradientExplainer(numpy_mlp(weights), bg, framework="numpy")(x, **kw)


def _apply(params, x):
    jnp = import_or_fail("jax").numpy
    h = x
    for i, (w, b) in enumerate(params["layers"]):
        h = h @ w + b
        h = jnp.tanh(h) if i < len(params["layers"]) - 1 else h
    return h * params["scale"]


def test_partial_apply_params_matches_numpy_reference(rng):
    jnp = import_or_fail("jax").numpy
    weights = mlp_weights(rng)
    params = {"layers": [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights], "scale": 1.0}
    bg, x = rng.normal(size=(8, 6)), rng.normal(size=(3, 6))
    kw = dict(target=2, n_samples=30, seed=11)
    exp = gradshap.GradientExplainer(functools.partial(_apply, params), jnp.asarray(bg))(jnp.asarray(x), **kw)
    ref = _reference(weights, bg, x, **kw)
    np.testing.assert_allclose(np.asarray(exp.values), ref.values, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(np.asarray(exp.base_values), ref.base_values, rtol=1e-12)


def test_equinox_module_is_vmapped_over_rows(rng):
    jax = import_or_fail("jax")
    eqx = import_or_fail("equinox")
    jnp = jax.numpy
    weights = mlp_weights(rng, sizes=(6, 16, 3))

    class PerExample(eqx.Module):
        w1: jax.Array
        b1: jax.Array
        w2: jax.Array
        b2: jax.Array
        drop: eqx.nn.Dropout

        def __call__(self, x):  # one example, as Equinox modules are written
            h = self.drop(jnp.tanh(x @ self.w1 + self.b1), key=None)
            return h @ self.w2 + self.b2

    (w1, b1), (w2, b2) = weights
    module = PerExample(*(jnp.asarray(a) for a in (w1, b1, w2, b2)), eqx.nn.Dropout(0.5))
    bg, x = rng.normal(size=(8, 6)), rng.normal(size=(3, 6))
    kw = dict(target="predicted", n_samples=24, seed=5)
    exp = gradshap.GradientExplainer(module, jnp.asarray(bg))(jnp.asarray(x), **kw)
    ref = _reference(weights, bg, x, **kw)
    np.testing.assert_allclose(np.asarray(exp.values), ref.values, rtol=1e-10, atol=1e-13)
    assert module.drop.inference is False  # the user's module is untouched


def test_flax_module_updates_between_calls_are_seen(rng):
    jax = import_or_fail("jax")
    nnx = import_or_fail("flax.nnx")
    jnp = jax.numpy
    lin = nnx.Linear(3, 1, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    bg, x = jnp.zeros((4, 3)), jnp.ones((2, 3))
    explainer = gradshap.GradientExplainer(lin, bg)
    first = explainer(x, n_samples=8, seed=0)
    np.testing.assert_allclose(np.asarray(first.values), np.broadcast_to(np.asarray(lin.kernel[...])[:, 0], (2, 3)), rtol=1e-12)
    lin.kernel[...] = lin.kernel[...] * 2.0  # e.g. a training step between two explanations
    second = explainer(x, n_samples=8, seed=0)
    np.testing.assert_allclose(np.asarray(second.values), 2 * np.asarray(first.values), rtol=1e-12)


def test_jax_float32_default_stays_float32(rng):
    jnp = import_or_fail("jax").numpy
    w = jnp.asarray(rng.normal(size=(4,)), dtype=jnp.float32)
    bg = jnp.asarray(rng.normal(size=(6, 4)), dtype=jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, 4)), dtype=jnp.float32)
    exp = gradshap.GradientExplainer(lambda p: p @ w, bg)(x, n_samples=12, sampler="balanced", seed=0)
    assert exp.values.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(exp.values), np.asarray(w * (x - bg.mean(0))), rtol=1e-5, atol=1e-6)


def test_whole_call_programs_match_the_numpy_reference_for_every_target(rng, monkeypatch):
    """A dense model on JAX runs the column step as whole programs (outputs, stretches of
    rows looped over inside, results): 23 rows at batch_size 12 are four stretches, the
    30 samples over 7 background rows two column counts (2 columns of 5, 5 of 4) whose
    groups of 3 columns reach back, and the last chunk of each set is filled with
    repeated slots. Every kind of target gives the
    NumPy reference's numbers, through programs, not per-chunk steps."""
    jnp = import_or_fail("jax").numpy
    from gradshap import _engine

    programs = []
    run_program = _engine._attribute_program
    monkeypatch.setattr(_engine, "_attribute_program", lambda *a, **k: programs.append(1) or run_program(*a, **k))
    weights = mlp_weights(rng)
    params = {"layers": [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights], "scale": 1.0}
    bg, x = rng.normal(size=(7, 6)), rng.normal(size=(23, 6))
    explainer = gradshap.GradientExplainer(functools.partial(_apply, params), jnp.asarray(bg), batch_size=12)
    fnp = numpy_mlp(weights)
    per_row = rng.integers(0, 3, size=23)
    for target in (2, [0, 2], "predicted", per_row, jnp.asarray(per_row)):
        exp = explainer(jnp.asarray(x), target=target, n_samples=30, seed=5)
        ref = _reference(weights, bg, x, target=target if not hasattr(target, "devices") else per_row,
                         n_samples=30, seed=5)
        for name in ("values", "stderr", "base_values", "output", "delta"):
            np.testing.assert_allclose(np.asarray(getattr(exp, name)), getattr(ref, name), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name} for target {target!r}")
    assert len(programs) == 6  # one per target; the list has two
    # Other rows and another seed: draws kept from the calls above must not be reused.
    for rows, seed in ((slice(3, 8), 5), (slice(0, 5), 6), (slice(0, 5), 5), (slice(0, 23), 6)):
        exp = explainer(jnp.asarray(x[rows]), target=2, n_samples=30, seed=seed)
        ref = _reference(weights, bg, x[rows], target=2, n_samples=30, seed=seed)
        np.testing.assert_allclose(np.asarray(exp.values), ref.values, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(exp.stderr), ref.stderr, rtol=1e-9, atol=1e-12)
    assert len(programs) == 10
    picked = explainer(jnp.asarray(x[:5]), target=lambda out: out[:, 1] - out[:, 0], n_samples=30, seed=5)
    ref = gradshap.GradientExplainer((lambda p: fnp[0](p)[:, 1] - fnp[0](p)[:, 0], lambda p: fnp[1](p)[:, 1] - fnp[1](p)[:, 0]),
                                     bg, framework="numpy")(x[:5], n_samples=30, seed=5)
    np.testing.assert_allclose(np.asarray(picked.values), ref.values, rtol=1e-9, atol=1e-12)
    assert len(programs) == 11


def _counting_mlp(rng):
    """The tanh MLP's weights, the model on JAX, and the list of the row counts it was
    traced (or run) with."""
    jnp = import_or_fail("jax").numpy
    weights = mlp_weights(rng)
    params = {"layers": [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights], "scale": 1.0}
    traced = []

    def model(p):
        traced.append(p.shape[0])
        return _apply(params, p)

    return weights, model, traced


def _assert_the_reference(explainer, weights, bg, x, **kw):
    """``explainer`` on ``x`` gives the NumPy reference's values, errors, base values,
    outputs, residuals and target."""
    jnp = import_or_fail("jax").numpy
    exp = explainer(jnp.asarray(x), **kw)
    target = kw.get("target")
    ref = _reference(weights, bg, x, **{**kw, "target": np.asarray(target) if hasattr(target, "devices") else target})
    for name in ("values", "stderr", "base_values", "output", "delta"):
        np.testing.assert_allclose(np.asarray(getattr(exp, name)), getattr(ref, name), rtol=1e-9, atol=1e-12,
                                   err_msg=f"{name} for {len(x)} rows, {kw}")
    np.testing.assert_array_equal(np.asarray(exp.target), np.asarray(ref.target))


def test_a_new_row_count_runs_the_programs_of_the_count_it_pads_to(rng, capsys):
    """Programs compile per row count, so a call's programs run its rows padded with copies
    of them, up to the most rows its plan runs in as many chunks: 30 samples over 7
    background rows at batch_size 40 run 8 slots (row, column group) a chunk, 2 and 5
    column groups per row, so 37 rows pad to 38, and 5 to 6. After calls of 38 and 6
    rows, calls of 37 and 5 trace the model no more, and every kind of target gives the
    NumPy reference's numbers for the caller's rows."""
    jnp = import_or_fail("jax").numpy
    from gradshap import _engine, _sampling

    design = _sampling.plan("auto", 30, 7)
    assert [_engine._program_rows(design, 40, n) for n in (37, 38, 5, 6)] == [38, 38, 6, 6]
    weights, model, traced = _counting_mlp(rng)
    bg, x = rng.normal(size=(7, 6)), rng.normal(size=(38, 6))
    explainer = gradshap.GradientExplainer(model, jnp.asarray(bg), batch_size=40)
    for rows in (38, 6):
        explainer(jnp.asarray(x[:rows]), target=1, n_samples=30, seed=4)
    seen = len(traced)
    per_row = rng.integers(0, 3, size=37)
    cases = [(37, 1), (37, "predicted"), (37, per_row), (37, jnp.asarray(per_row)), (37, [0, 2]), (5, 2), (5, per_row[:5])]
    for rows, target in cases:
        _assert_the_reference(explainer, weights, bg, x[:rows], target=target, n_samples=30, seed=4)
    assert len(traced) == seen
    capsys.readouterr()
    explainer(jnp.asarray(x[:37]), target=1, n_samples=30, seed=4, progress=True)
    assert "1110/1110" in capsys.readouterr().err  # the caller's rows only
    # At the default batch_size, 20 rows fit one chunk with a plan of their own, and 17
    # rows pad to 20 (_engine._few_rows).
    assert [_engine._program_rows(design, 8192, n) for n in (17, 20, 21)] == [20, 20, 24]
    explainer = gradshap.GradientExplainer(model, jnp.asarray(bg))
    explainer(jnp.asarray(x[:20]), target=1, n_samples=30, seed=4)
    seen = len(traced)
    _assert_the_reference(explainer, weights, bg, x[:17], target=1, n_samples=30, seed=4)
    assert len(traced) == seen


def test_a_new_row_count_on_the_per_chunk_path_runs_the_steps_of_the_count_it_pads_to(rng, capsys):
    """30 samples over 40 background rows give no column two samples: chunks of 2 rows x
    30 samples at batch_size 60 (a last row group is padded to 2 rows anyway), run as
    programs (:func:`_engine._blocks_program`) or, with smoothing noise, by the per-chunk
    path. 11 rows pad to 12 on both, so after calls of 12 rows, calls of 11 trace the
    model no more, and give the NumPy reference's numbers for the caller's rows; a few
    rows (5 at the default batch_size) pad to 6."""
    jnp = import_or_fail("jax").numpy
    from gradshap import _engine, _sampling

    design = _sampling.plan("auto", 30, 40)
    assert not _engine._uses_columns(design, 0.0, None, 60)
    assert _engine._uses_blocks(design, 0.0, None, 60) and not _engine._uses_blocks(design, 0.3, None, 60)
    adapter = gradshap.GradientExplainer(lambda p: p, jnp.zeros((40, 6))).adapter
    for program in (False, True):
        padded = [_engine._padded_rows(adapter, jnp, design, 0.0, None, bs, n, program)
                  for bs, n in ((60, 11), (60, 12), (8192, 5), (8192, 6))]
        assert padded == [12, 12, 6, 6]
    weights, model, traced = _counting_mlp(rng)
    bg, x = rng.normal(size=(40, 6)), rng.normal(size=(12, 6))
    per_row = rng.integers(0, 3, size=11)
    for explainer, rows in ((gradshap.GradientExplainer(model, jnp.asarray(bg), batch_size=60), 11),
                            (gradshap.GradientExplainer(model, jnp.asarray(bg)), 5)):
        for stdevs in (0.0, 0.3):
            explainer(jnp.asarray(x[: rows + 1]), target=1, n_samples=30, seed=4, stdevs=stdevs)
        seen = len(traced)
        for target, stdevs in ((1, 0.0), ("predicted", 0.0), (per_row[:rows], 0.0), (jnp.asarray(per_row[:rows]), 0.0),
                               (2, 0.3)):
            _assert_the_reference(explainer, weights, bg, x[:rows], target=target, n_samples=30, seed=4, stdevs=stdevs)
        assert len(traced) == seen
    capsys.readouterr()
    explainer(jnp.asarray(x[:5]), target=1, n_samples=30, seed=4, progress=True)
    assert "150/150" in capsys.readouterr().err  # the caller's rows only


def test_whole_blocks_run_as_programs_in_pieces_of_row_groups(rng, capsys):
    """Where each chunk holds a whole block of samples for its rows (30 samples over 40
    background rows: one column), a dense model on JAX runs the call as programs too: at
    batch_size 60, chunks of 2 rows x 30 samples, and 23 rows (padded to 24) as pieces of
    2, 8, 8 and 6 rows, each looping over its chunks inside. Every kind of target gives
    the NumPy reference's numbers; a second call, and one at 23 rows after 24, trace the
    model no more; the progress bar counts the caller's rows."""
    jnp = import_or_fail("jax").numpy
    from gradshap import _engine, _sampling

    design = _sampling.plan("auto", 30, 40)
    assert _engine._pieces(design, 60, 24) == (2, None, (0, 2, 10, 18, 24))
    assert [_engine._program_rows(design, 60, n) for n in (23, 24, 1, 2, 3)] == [24, 24, 1, 2, 4]
    weights, model, traced = _counting_mlp(rng)
    bg, x = rng.normal(size=(40, 6)), rng.normal(size=(24, 6))
    explainer = gradshap.GradientExplainer(model, jnp.asarray(bg), batch_size=60)
    blocks = []
    run_blocks = _engine._blocks_program
    try:
        _engine._blocks_program = lambda *a, **k: blocks.append(a[5].shape) or run_blocks(*a, **k)
        explainer(jnp.asarray(x), target=1, n_samples=30, seed=4)
        seen = len(traced)
        per_row = rng.integers(0, 3, size=23)
        for target in (1, [0, 2], "predicted", per_row, jnp.asarray(per_row)):
            _assert_the_reference(explainer, weights, bg, x[:23], target=target, n_samples=30, seed=4)
        assert len(traced) == seen
    finally:
        _engine._blocks_program = run_blocks
    assert blocks == [(1, 2, 30), (4, 2, 30), (3, 2, 30)]  # traced once per piece size
    # Other rows and another seed: the kept draws of the calls above must not be reused.
    for rows, seed in ((slice(3, 9), 4), (slice(0, 6), 5), (slice(0, 24), 5)):
        _assert_the_reference(explainer, weights, bg, x[rows], target=2, n_samples=30, seed=seed)
    capsys.readouterr()
    explainer(jnp.asarray(x[:23]), target=1, n_samples=30, seed=4, progress=True)
    assert "690/690" in capsys.readouterr().err


@pytest.mark.parametrize(("batch_size", "raise_at", "chunk"), [(220, 160, 100), (140, 140, 70)])
def test_whole_block_programs_retry_out_of_memory_at_half_the_batch(rng, batch_size, raise_at, chunk):
    """After an out-of-memory error a call runs again at half the batch_size. 8 rows of 20
    samples over 40 background rows at batch_size 220 run one chunk of 8 rows; at 110,
    chunks of 5 rows, which do not divide the 8: the last piece, 3 rows, fills its chunk
    with copies of its rows. At 140, chunks of 7 rows (8 rows pad to 14); at 70, chunks of
    7 rows x 10 samples, no longer whole blocks: the per-chunk path. The numbers are the
    NumPy reference's, and no chunk after the first two traces (the check for slow
    primitives, the outputs) holds more points than the halved batch_size."""
    jnp = import_or_fail("jax").numpy
    from gradshap import _engine, _sampling

    design = _sampling.plan("auto", 20, 40)
    assert _engine._program_rows(design, batch_size, 8) == {220: 8, 140: 14}[batch_size]
    assert _engine._uses_blocks(design, 0.0, None, 110) and not _engine._uses_blocks(design, 0.0, None, 70)
    weights, model, traced = _counting_mlp(rng)

    def small_device(p):
        if p.shape[0] == raise_at:
            raise MemoryError("fake RESOURCE_EXHAUSTED")
        return model(p)

    bg, x = rng.normal(size=(40, 6)), rng.normal(size=(8, 6))
    explainer = gradshap.GradientExplainer(small_device, jnp.asarray(bg), batch_size=batch_size)
    explainer.adapter.is_out_of_memory = lambda err: "fake RESOURCE_EXHAUSTED" in str(err)
    with pytest.warns(ResourceWarning, match=f"retrying with batch_size={batch_size // 2}$"):
        _assert_the_reference(explainer, weights, bg, x, target=1, n_samples=20, seed=3)
    assert chunk in traced and not any(size > batch_size // 2 for size in traced[2:])


def test_convolutions_on_cpu_run_a_compiled_step_per_chunk(rng):
    """XLA's CPU runtime runs a convolution's VJP slower inside a loop than called per
    chunk, so a model with one gets no row loop there; a dense model gets lax.map."""
    jax = import_or_fail("jax")
    jnp = jax.numpy
    from gradshap.backends import jax as jax_backend

    kernel = jnp.asarray(rng.normal(size=(2, 1, 3, 3)))

    def conv(x):
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME")
        return jnp.sum(jnp.tanh(y), axis=(1, 2, 3))

    images = jnp.asarray(rng.normal(size=(4, 1, 6, 6)))
    dense = jnp.asarray(rng.normal(size=(5,)))
    assert gradshap.GradientExplainer(conv, images).adapter.row_loop((images,)) is None
    rows = jnp.asarray(rng.normal(size=(4, 5)))
    assert gradshap.GradientExplainer(lambda v: jnp.tanh(v) @ dense, rows).adapter.row_loop((rows,)) is jax_backend.map_rows
    # Run as programs anyway (its 8 samples over 4 images take the column step), it gives
    # the per-chunk steps' numbers.
    forced = gradshap.GradientExplainer(conv, images)
    forced.adapter.row_loop = lambda points: jax_backend.map_rows
    exp = forced(images[:3], n_samples=8, seed=1)
    ref = gradshap.GradientExplainer(conv, images)(images[:3], n_samples=8, seed=1)
    np.testing.assert_allclose(np.asarray(exp.values), np.asarray(ref.values), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(exp.stderr), np.asarray(ref.stderr), rtol=1e-9, atol=1e-12)


def test_a_callable_target_passed_again_traces_nothing_new(rng):
    """The adapter composed with a callable target is kept per callable, with its compiled
    programs: a second call with the same function traces the model no more; another
    function composes (and traces) anew, with its own numbers."""
    jnp = import_or_fail("jax").numpy
    traces = {"n": 0}
    w = jnp.asarray(rng.normal(size=(4, 3)))

    def model(p):
        traces["n"] += 1
        return jnp.tanh(p @ w)

    bg, x = jnp.asarray(rng.normal(size=(5, 4))), jnp.asarray(rng.normal(size=(6, 4)))
    explainer = gradshap.GradientExplainer(model, bg)

    def pick(out):
        return out[:, 0] - out[:, 2]

    first = explainer(x, target=pick, n_samples=20, seed=0)
    seen = traces["n"]
    again = explainer(x, target=pick, n_samples=20, seed=0)
    assert traces["n"] == seen
    np.testing.assert_array_equal(np.asarray(again.values), np.asarray(first.values))
    other = explainer(x, target=lambda out: out[:, 1], n_samples=20, seed=0)
    assert traces["n"] > seen
    single = explainer(x, target=1, n_samples=20, seed=0)
    np.testing.assert_allclose(np.asarray(other.values), np.asarray(single.values), rtol=1e-12, atol=1e-14)
    difference = explainer(x, target=[0, 2], n_samples=20, seed=0)
    np.testing.assert_allclose(np.asarray(first.values), np.asarray(difference.values[..., 0] - difference.values[..., 1]),
                               rtol=1e-9, atol=1e-12)


def test_programs_hold_one_piece_of_rows_at_a_time(rng):
    """XLA's CPU runtime runs queued programs at once, each with its buffers: before queuing
    a piece of rows, the engine waits for the piece before it (peak memory stays set by
    batch_size, not by the rows). 23 rows at batch_size 48 are pieces of 4 rows (the first
    row group, then about four chunks' worth of samples each) and a last one of 3: five
    waits, each on the shares of the piece queued before."""
    jax = import_or_fail("jax")
    jnp = jax.numpy
    from gradshap import _engine

    w = jnp.asarray(rng.normal(size=(6,)))
    bg, x = jnp.asarray(rng.normal(size=(7, 6))), jnp.asarray(rng.normal(size=(23, 6)))
    explainer = gradshap.GradientExplainer(lambda p: jnp.tanh(p) @ w, bg, batch_size=48)
    assert _engine._pieces(gradshap._sampling.plan("auto", 30, 7), 48, 23)[2] == (0, 4, 8, 12, 16, 20, 23)
    waited = []
    explainer.adapter.wait = lambda arrays: waited.append(arrays[0][0].shape)
    exp = explainer(x, n_samples=30, seed=2)
    assert waited == [(4, 6)] * 5
    ref = gradshap.GradientExplainer(lambda p: jnp.tanh(p) @ w, bg)(x, n_samples=30, seed=2)
    np.testing.assert_allclose(np.asarray(exp.values), np.asarray(ref.values), rtol=1e-9, atol=1e-12)


def _per_chunk_explainer(rng, batch_size):
    """A dense model on JAX with the per-chunk column path (no row loop), its weights, the
    background and rows to explain."""
    jnp = import_or_fail("jax").numpy
    weights = mlp_weights(rng)
    params = {"layers": [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights], "scale": 1.0}
    bg, x = rng.normal(size=(7, 6)), rng.normal(size=(20, 6))
    explainer = gradshap.GradientExplainer(functools.partial(_apply, params), jnp.asarray(bg), batch_size=batch_size)
    explainer.adapter.row_loop = lambda points: None
    return explainer, weights, bg, x


def test_few_rows_run_as_slots_of_the_shapes_compiled_already(rng, monkeypatch):
    """30 samples over 7 background rows at batch_size 40: chunks of 8 rows, one column per
    group. A call with 5 rows runs as slots of those shapes (5 rows x 7 column groups, in
    chunks of 8 slots: 1.14 times the points of a plan for 5 rows) and traces no chunk step;
    1 row would compute 8 times its points as slots, so it gets its own plan, traced anew.
    Both give the NumPy reference's numbers."""
    jnp = import_or_fail("jax").numpy
    from gradshap import _engine

    traced = []
    chunk = _engine._chunk_columns
    monkeypatch.setattr(_engine, "_chunk_columns", lambda *a: traced.append(1) or chunk(*a))
    explainer, weights, bg, x = _per_chunk_explainer(rng, 40)
    sets = ((2, 5), (5, 4))
    plan = _engine._column_plan(sets, 40, 20, True)
    assert plan == (8, (1, 1)) == _engine._column_plan(sets, 40, 5, True) != _engine._column_plan(sets, 40, 1, True)
    explainer(jnp.asarray(x), target=2, n_samples=30, seed=5)
    assert len(traced) == 2  # one chunk shape per set of equal counts
    for rows, new in ((5, 0), (1, 2)):
        before = len(traced)
        exp = explainer(jnp.asarray(x[:rows]), target=2, n_samples=30, seed=5)
        assert len(traced) == before + new
        ref = _reference(weights, bg, x[:rows], target=2, n_samples=30, seed=5)  # (NumPy's steps run eagerly)
        np.testing.assert_allclose(np.asarray(exp.values), ref.values, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(exp.stderr), ref.stderr, rtol=1e-9, atol=1e-12)


def test_last_rows_of_the_per_chunk_column_path_pad_to_what_their_slots_hold(rng, capsys, caplog):
    """The per-chunk column path (no row loop) runs its last rows as slots: at batch_size
    40, 8 slots a chunk and 2 and 5 column groups per row, 2 last rows fill as many chunks
    as 3, so 18 rows run as 19. After a call of 19 rows, a call of 18 compiles only the
    padding and the cutting back (a gather and two slices), and gives the NumPy
    reference's numbers and the caller's count of gradients."""
    jax = import_or_fail("jax")
    jnp = jax.numpy
    from gradshap import _engine, _sampling

    explainer, weights, bg, x = _per_chunk_explainer(rng, 40)
    design = _sampling.plan("auto", 30, 7)
    assert [_engine._padded_rows(explainer.adapter, jnp, design, 0.0, None, 40, n, False) for n in (18, 19, 20)] == \
        [19, 19, 20]
    explainer(jnp.asarray(x[:19]), target=2, n_samples=30, seed=5)
    jnp.asarray(x[:18])  # (the comparison's own conversion, compiled before)
    with caplog.at_level("WARNING", logger="jax"), jax.log_compiles(True):
        caplog.clear()
        _assert_the_reference(explainer, weights, bg, x[:18], target=2, n_samples=30, seed=5)
    compiled = [m.group(1) for r in caplog.records if (m := re.match(r"Compiling jit\((\w+)\)", r.getMessage()))]
    assert sorted(compiled) == ["_take", "dynamic_slice", "dynamic_slice"]
    capsys.readouterr()
    explainer(jnp.asarray(x[:18]), target=2, n_samples=30, seed=5, progress=True)
    assert "540/540" in capsys.readouterr().err  # the caller's rows only


def test_the_results_are_one_program_where_eager_ops_compile(rng, monkeypatch):
    """JAX compiles each eager op at each new shape: a call's results (values, standard
    errors, base values, residuals, the finiteness check) are one compiled program there,
    traced once per shape; NumPy runs them eagerly at every call."""
    jnp = import_or_fail("jax").numpy
    from gradshap import _engine

    ran = []
    finish = _engine._finish_program
    monkeypatch.setattr(_engine, "_finish_program", lambda *a: ran.append(1) or finish(*a))
    explainer, weights, bg, x = _per_chunk_explainer(rng, 40)
    for _ in range(3):
        exp = explainer(jnp.asarray(x), target=2, n_samples=30, seed=5)
    assert len(ran) == 1
    ref = _reference(weights, bg, x, target=2, n_samples=30, seed=5)
    assert len(ran) == 2
    for name in ("values", "stderr", "base_values", "output", "delta"):
        np.testing.assert_allclose(np.asarray(getattr(exp, name)), getattr(ref, name), rtol=1e-9, atol=1e-12)
