"""Reliability: out-of-memory retry, global RNG states, devices, half precision, large calls."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest

import gradshap
from conftest import import_or_fail


def test_out_of_memory_halves_the_batch_and_gives_the_same_numbers(rng):
    torch = import_or_fail("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()

    class SmallDevice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, p):
            if p.requires_grad and p.shape[0] > 16:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.net(p)

    # 40 rows x 10 samples: enough rows that a chunk holds as many points as batch_size
    # allows, more than the device's 16 until batch_size is 16.
    bg, x = torch.as_tensor(rng.normal(size=(6, 4))), torch.as_tensor(rng.normal(size=(40, 4)))
    with pytest.warns(ResourceWarning, match=r"retrying with batch_size=(32|16)") as record:
        exp = gradshap.GradientExplainer(SmallDevice(), bg, batch_size=64)(x, n_samples=10, seed=1)
    assert [str(w.message)[-2:] for w in record] == ["32", "16"]
    ref = gradshap.GradientExplainer(net, bg, batch_size=7)(x, n_samples=10, seed=1)
    torch.testing.assert_close(exp.values, ref.values, rtol=1e-12, atol=1e-14)


def test_other_errors_are_not_retried(rng):
    torch = import_or_fail("torch")

    def model(p):
        raise RuntimeError("shape mismatch in layer 3")

    with pytest.raises(RuntimeError, match="layer 3"):
        gradshap.GradientExplainer(model, torch.zeros(3, 2))(torch.ones(2, 2))


def test_global_rngs_restored_even_when_the_model_uses_and_raises(rng):
    torch = import_or_fail("torch")
    calls = {"n": 0}

    def noisy_model(p):
        calls["n"] += 1
        np.random.rand(3)
        random.random()
        torch.rand(3)
        if calls["n"] > 3:
            raise ValueError("fails midway")
        return p.sum(1)

    states = (np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state().clone())
    with pytest.raises(ValueError, match="fails midway"):
        gradshap.GradientExplainer(noisy_model, torch.zeros(3, 2), batch_size=4)(torch.ones(8, 2), n_samples=4, seed=0)
    np.testing.assert_array_equal(states[0], np.random.get_state()[1])
    assert states[1] == random.getstate()
    assert torch.equal(states[2], torch.get_rng_state())


def test_x_and_background_on_different_devices_is_an_error():
    torch = import_or_fail("torch")
    model = torch.nn.Linear(3, 1)
    bg = torch.zeros(4, 3, device="meta")
    with pytest.raises(ValueError, match=r"`x` is on device cpu but `background` is on meta.*never copies"):
        gradshap.GradientExplainer(model, bg)(torch.ones(2, 3))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_models_accumulate_in_float32(dtype, rng):
    torch = import_or_fail("torch")
    w = rng.normal(size=(6,))
    lin = torch.nn.Linear(6, 1, bias=False).to(getattr(torch, dtype))
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(w[None]))
    bg = rng.normal(size=(8, 6))
    x = rng.normal(size=(3, 6))
    conv = lambda a: torch.as_tensor(a).to(getattr(torch, dtype))  # noqa: E731
    exp = gradshap.GradientExplainer(lin, conv(bg))(conv(x), n_samples=400, sampler="balanced", seed=0)
    assert exp.values.dtype == getattr(torch, dtype)
    assert exp.delta.dtype == torch.float32 and exp.base_values.dtype == torch.float32
    wq = lin.weight.detach().double().numpy()[0]
    bq, xq = conv(bg).double().numpy(), conv(x).double().numpy()
    expected = wq * (xq - bq.mean(0))
    # 400 samples summed in float32: the result carries only the final rounding to `dtype`.
    tol = {"float16": 2e-3, "bfloat16": 1.6e-2}[dtype]
    np.testing.assert_allclose(exp.values.double().numpy(), expected, rtol=tol, atol=tol * np.abs(expected).max())


def test_memory_is_set_by_the_batch_not_by_rows_or_samples(rng):
    """Working memory beyond the returned arrays: flat in n_samples, and in rows it grows
    only by copies of the result itself (never by rows x samples)."""
    w = rng.normal(size=(30,))
    model = (lambda p: p @ w, lambda p: np.broadcast_to(w, p.shape))
    bg = rng.normal(size=(50, 30))
    explainer = gradshap.GradientExplainer(model, bg, framework="numpy", batch_size=512)

    def working_memory(n_rows, n_samples):
        x = rng.normal(size=(n_rows, 30))
        tracemalloc.start()
        exp = explainer(x, n_samples=n_samples, seed=0)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del exp
        return peak - current

    # 4x the samples in one design (with fewer samples than background rows the design
    # changes: one column of distinct rows, and no per-background-row statistics).
    base = working_memory(2_000, 256)
    assert working_memory(2_000, 1024) < 1.10 * base
    result_bytes = 6_000 * 30 * 8  # the values (and stderr) of the extra rows
    assert working_memory(8_000, 256) < base + 3 * result_bytes
    # rows x samples x features of float64 would be 245 MB here; the engine never holds that.
    assert working_memory(8_000, 128) < 20e6


def test_half_batch_of_a_huge_call_still_explains_everything(rng):
    w = rng.normal(size=(5,))
    model = (lambda p: p @ w, lambda p: np.broadcast_to(w, p.shape))
    bg = rng.normal(size=(10, 5))
    x = rng.normal(size=(100_000, 5))
    exp = gradshap.GradientExplainer(model, bg, framework="numpy", batch_size=8192)(x, n_samples=20, sampler="balanced", seed=0)
    np.testing.assert_allclose(exp.values, w * (x - bg.mean(0)), atol=1e-10)


def _torch_peak_bytes(run):
    """``run()`` and the peak bytes of torch CPU tensors allocated during it (from the
    profiler's allocation records; torch keeps no CPU allocator statistics)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = run()
    records = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    live = peak = 0
    for e in records:
        live += e.nbytes()  # negative for a release
        peak = max(peak, live)
    return result, peak


def test_a_thousand_images_run_in_bounded_memory_and_show_progress(capsys):
    """1,000 MNIST-sized images through a small CNN: the engine's peak memory (torch tensors,
    and NumPy buffers under tracemalloc) grows from 250 to 1,000 images by no more than
    the extra rows of the result; the progress bar counts all 1,000 x 4 gradients."""
    torch = import_or_fail("torch")
    import_or_fail("tqdm")
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 10),
    )
    gen = torch.Generator().manual_seed(1)
    bg, images = torch.rand(16, 1, 28, 28, generator=gen), torch.rand(1000, 1, 28, 28, generator=gen)
    explainer = gradshap.GradientExplainer(net, bg, batch_size=128)

    def explain(n, progress=False):
        return explainer(images[:n], target=3, n_samples=4, seed=0, progress=progress)

    explain(8)  # warm-up: first-call allocations and the layout check
    capsys.readouterr()

    def numpy_working_memory(n):
        tracemalloc.start()
        exp = explain(n)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del exp
        return peak - current

    small, small_peak = _torch_peak_bytes(lambda: explain(250))
    large, large_peak = _torch_peak_bytes(lambda: explain(1000, progress=True))
    err = capsys.readouterr().err
    assert "0/4000" in err and "4000/4000" in err  # the bar knows the total from the start
    # Rows are independent: the first 250 rows are the same numbers in both calls.
    assert torch.equal(large.values[:250], small.values)
    assert torch.isfinite(large.values).all() and large.values.abs().sum() > 0
    extra_rows = 750 * 28 * 28 * 4  # bytes of 750 more rows of one float32 result array
    # All 4,000 points' first-layer activations would be 86 MB; the peak holds one chunk's.
    assert large_peak < small_peak + extra_rows
    assert large_peak < 20e6
    assert numpy_working_memory(1000) < numpy_working_memory(250) + 2 * extra_rows
