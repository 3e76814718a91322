"""Dask: ``map_blocks`` over a dask array gives one call's numbers however the rows are chunked."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from analytic_models import network

import gradshap
from gradshap.distributed import explain_dask_array
from conftest import import_or_fail
from models import ROW_FIELDS, assert_same_rows, mlp_weights, torch_mlp



@pytest.fixture(scope="module")
def da():
    return import_or_fail("dask.array")


@pytest.mark.parametrize("sampler", ["lattice", "sobol", "iid"])
def test_uneven_blocks_equal_one_call(da, sampler, rng):
    model = network(5, seed=2)
    explainer = gradshap.GradientExplainer(model.pair, rng.normal(size=(7, 5)), framework="numpy")
    x = rng.normal(size=(23, 5))
    options = {"n_samples": 24, "sampler": sampler, "stdevs": 0.1}
    lazy = explain_dask_array(explainer, da.from_array(x, chunks=((5, 11, 1, 6), 5)), **options)
    assert isinstance(lazy.seed, int)  # seed=None resolved once, for every block
    whole = explainer(x, seed=lazy.seed, **options)
    exp = lazy.compute(scheduler="threads")
    assert_same_rows(exp, whole)
    assert exp.n_samples == whole.n_samples
    # The lazy fields hold the same numbers, with the Explanation's shapes and dtypes.
    values = lazy.values.compute(scheduler="threads")
    assert values.dtype == whole.values.dtype and values.shape == (23, 5)
    np.testing.assert_allclose(values, whole.values, rtol=1e-12)


def test_images_several_targets_and_a_torch_model(da, rng):
    """(n, 2, 3) rows of a torch model, two targets, rows offset: ids are offset + position."""
    torch = import_or_fail("torch")
    net = torch.nn.Sequential(torch.nn.Flatten(), torch_mlp(mlp_weights(rng)))
    bg = torch.from_numpy(rng.normal(size=(6, 2, 3)))
    explainer = gradshap.GradientExplainer(net, bg)
    x = rng.normal(size=(10, 2, 3))
    options = {"target": [2, 0], "n_samples": 16, "seed": 5}
    lazy = explain_dask_array(explainer, da.from_array(x, chunks=(3, 2, 3)),
                                                   convert=torch.from_numpy, row_offset=100, **options)
    exp = lazy.compute(scheduler="threads")
    whole = explainer(torch.from_numpy(x), row_ids=np.arange(100, 110), **options).to_numpy()
    assert exp.values.shape == (10, 2, 3, 2) and exp.target == (2, 0)
    assert_same_rows(exp, whole)


def test_per_row_targets_and_adaptive_rows(da, rng):
    w = rng.normal(size=(4, 3))
    f = lambda v: np.tanh(v) @ w  # noqa: E731
    jac = lambda v: np.transpose(w[None, :, :] * (1 - np.tanh(v)[:, :, None] ** 2), (0, 2, 1))  # noqa: E731
    explainer = gradshap.GradientExplainer((f, jac), rng.normal(size=(5, 4)), framework="numpy")
    x = rng.normal(size=(9, 4)) * np.linspace(0.2, 3, 9)[:, None]
    options = {"target": rng.integers(0, 3, size=9), "n_samples": 8, "seed": 3, "rtol": 0.05, "max_samples": 256}
    exp = explain_dask_array(explainer, da.from_array(x, chunks=(4, 4)), **options).compute(
        scheduler="threads")
    whole = explainer(x, **options)
    np.testing.assert_array_equal(exp.target, options["target"])
    np.testing.assert_array_equal(exp.n_samples, whole.n_samples)
    assert len(set(whole.n_samples.tolist())) > 1
    for name in ROW_FIELDS:
        np.testing.assert_allclose(getattr(exp, name), getattr(whole, name), rtol=1e-12, atol=1e-15)


def test_bad_arrays_are_refused(da, rng):
    explainer = gradshap.GradientExplainer(network(4).pair, rng.normal(size=(3, 4)), framework="numpy")
    with pytest.raises(TypeError, match="`x` must be a dask.array.Array; got numpy.ndarray"):
        explain_dask_array(explainer, np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"chunked along rows only.*x.rechunk\(\{1: -1\}\)"):
        explain_dask_array(explainer, da.zeros((6, 4), chunks=(3, 2)))
    with pytest.raises(ValueError, match="`row_offset` must be a non-negative int"):
        explain_dask_array(explainer, da.zeros((6, 4), chunks=(3, 4)), row_offset=-1)


def test_importing_gradshap_and_its_distributed_package_imports_neither_engine():
    code = ("import sys, gradshap, gradshap.distributed; "
            "print(sorted(m for m in ('ray', 'dask', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_worker_processes_give_the_same_numbers(da, rng):
    """Dask's process scheduler pickles the explainer to each worker process: the blocks
    explained there equal one call."""
    explainer = gradshap.GradientExplainer(network(4, seed=1).pair, rng.normal(size=(5, 4)), framework="numpy")
    x = rng.normal(size=(12, 4))
    lazy = explain_dask_array(explainer, da.from_array(x, chunks=(5, 4)), n_samples=12, seed=6)
    exp = lazy.compute(scheduler="processes", num_workers=2)
    assert_same_rows(exp, explainer(x, n_samples=12, seed=6))
