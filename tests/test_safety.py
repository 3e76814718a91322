"""The user's model and global state are left exactly as found, also when a call fails."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

import gradshap
from conftest import import_or_fail


def _torch_bn_model(torch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)
    )
    model.train()
    # Give BatchNorm non-trivial running statistics.
    with torch.no_grad():
        model(torch.randn(64, 5) * 3 + 1)
    model[0].weight.requires_grad_(False)  # a user's frozen layer must stay frozen
    return model


def _snapshot(torch, model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.grad for p in model.parameters()],
        torch.get_rng_state().clone(),
        np.random.get_state()[1].copy(),
        random.getstate(),
    )


def _assert_same(torch, before, after):
    assert before[0] == after[0]
    assert before[1] == after[1]
    for k in before[2]:
        assert torch.equal(before[2][k], after[2][k]), k
    assert all(g is None for g in after[3])
    assert torch.equal(before[4], after[4])
    np.testing.assert_array_equal(before[5], after[5])
    assert before[6] == after[6]


def test_torch_model_state_untouched_by_a_call():
    torch = import_or_fail("torch")
    model = _torch_bn_model(torch)
    before = _snapshot(torch, model)
    bg, x = torch.randn(10, 5, generator=torch.Generator().manual_seed(1)), torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    before = _snapshot(torch, model)
    exp = gradshap.GradientExplainer(model, bg)(x, n_samples=20, seed=0)
    _assert_same(torch, before, _snapshot(torch, model))
    # The call ran in eval mode: the answer equals an explicit eval-mode model's.
    model.eval()
    ref = gradshap.GradientExplainer(model, bg)(x, n_samples=20, seed=0)
    torch.testing.assert_close(exp.values, ref.values)


def test_torch_model_state_restored_when_the_model_raises():
    torch = import_or_fail("torch")
    model = _torch_bn_model(torch)
    calls = {"n": 0}

    def fail_on_third_call(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom inside the model")

    handle = model[4].register_forward_hook(fail_on_third_call)
    bg, x = torch.zeros(10, 5), torch.ones(30, 5)
    before = _snapshot(torch, model)
    with pytest.raises(RuntimeError, match="boom inside the model"):
        gradshap.GradientExplainer(model, bg, batch_size=8)(x, n_samples=4, seed=0)
    handle.remove()
    _assert_same(torch, before, _snapshot(torch, model))


def test_torch_model_state_restored_on_keyboard_interrupt_between_chunks():
    torch = import_or_fail("torch")
    model = _torch_bn_model(torch)
    bg, x = torch.zeros(10, 5), torch.ones(30, 5)
    explainer = gradshap.GradientExplainer(model, bg, batch_size=8)
    original = explainer.adapter.value_and_grad
    calls = {"n": 0}

    def interrupt(points, cot):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(points, cot)

    explainer.adapter.value_and_grad = interrupt
    before = _snapshot(torch, model)
    with pytest.raises(KeyboardInterrupt):
        explainer(x, n_samples=4, seed=0)
    _assert_same(torch, before, _snapshot(torch, model))


def test_flax_nnx_module_untouched_and_run_in_eval_mode():
    jax = import_or_fail("jax")
    nnx = import_or_fail("flax.nnx")
    jnp = jax.numpy

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(4, 6, rngs=rngs, param_dtype=jnp.float64)
            self.bn = nnx.BatchNorm(6, rngs=rngs, param_dtype=jnp.float64, dtype=jnp.float64)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.out = nnx.Linear(6, 1, rngs=rngs, param_dtype=jnp.float64)

        def __call__(self, x):
            return self.out(self.drop(self.bn(jax.nn.relu(self.lin(x)))))[:, 0]

    net = Net(nnx.Rngs(0))
    net.bn.mean[...] = jnp.linspace(0.1, 0.6, 6, dtype=net.bn.mean[...].dtype)  # distinctive running statistics
    def host(a):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a = jax.random.key_data(a)  # the module's RNG streams must be untouched too
        return np.asarray(a)

    state_before = jax.tree_util.tree_map(host, nnx.state(net))
    bg = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)))
    exp = gradshap.GradientExplainer(net, bg)(x, n_samples=16, seed=0)
    state_after = jax.tree_util.tree_map(host, nnx.state(net))
    jax.tree_util.tree_map(np.testing.assert_array_equal, state_before, state_after)
    assert net.bn.use_running_average is False and net.drop.deterministic is False
    # Deterministic (eval mode): the same call gives the same numbers, and completeness holds
    # in expectation for this piecewise-linear model.
    again = gradshap.GradientExplainer(net, bg)(x, n_samples=16, seed=0)
    np.testing.assert_array_equal(np.asarray(exp.values), np.asarray(again.values))
    net.eval()
    np.testing.assert_allclose(np.asarray(exp.output), np.asarray(net(x)), rtol=1e-12)


def test_import_gradshap_imports_no_framework():
    code = (
        "import sys, gradshap, gradshap.explanation, gradshap.cli;"
        "bad = [m for m in ('torch', 'jax', 'tensorflow', 'keras', 'flax', 'matplotlib') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
