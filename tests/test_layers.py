"""Attributions at a hidden layer (``layer=``) in torch, JAX and TensorFlow (Keras: test_keras_layers.py).

The layer's attributions are Expected Gradients of the rest of the model (the head) at the
layer's activations, so they must equal the engine's answer for the head given the
activations directly, from the same seed, and satisfy completeness at the layer.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradshap
from conftest import import_or_fail
from models import jax_mlp, mlp_weights, tf_mlp, torch_mlp

SIZES = (4, 8, 6, 2)


def split_models(backend, weights):
    """``(model, layer, body, head)``: a tanh MLP cut after its first tanh; ``layer`` in the
    framework's native form (torch: the Tanh module; elsewhere the pair (body, head))."""
    if backend.name == "torch":
        model = torch_mlp(weights)
        return model, model[1], model[:2], model[2:]
    w0, b0 = weights[0]
    if backend.name == "jax":
        jnp = backend.lib.numpy
        body, head = (lambda p: jnp.tanh(p @ jnp.asarray(w0) + jnp.asarray(b0))), jax_mlp(weights[1:])
        return jax_mlp(weights), (body, head), body, head
    tf = backend.lib
    body, head = (lambda p: tf.tanh(p @ tf.constant(w0) + tf.constant(b0))), tf_mlp(weights[1:])
    return tf_mlp(weights), (body, head), body, head


def forward(backend, fn, a):
    out = fn(a)
    return out.detach() if backend.name == "torch" else out


@pytest.fixture
def problem(rng):
    return mlp_weights(rng, SIZES), rng.normal(size=(5, SIZES[0])), rng.normal(size=(6, SIZES[0]))


LAYERED = ["torch", "jax", "tensorflow"]


@pytest.mark.parametrize("backend", LAYERED, indirect=True)
def test_equals_expected_gradients_of_the_head_on_the_activations(backend, problem):
    weights, x, bg = problem
    model, layer, body, head = split_models(backend, weights)
    xs, bgs = backend.array(x), backend.array(bg)
    got = gradshap.GradientExplainer(model, bgs, layer=layer)(xs, target=1, n_samples=40, seed=3)
    hx, hb = forward(backend, body, xs), forward(backend, body, bgs)
    want = gradshap.GradientExplainer(head, hb)(hx, target=1, n_samples=40, seed=3)
    assert tuple(got.values.shape) == (5, SIZES[1])
    for name in ("values", "stderr", "base_values", "output", "delta"):
        np.testing.assert_allclose(backend.host(getattr(got, name)), backend.host(getattr(want, name)),
                                   rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(backend.host(got.data), backend.host(hx), rtol=0, atol=0)


@pytest.mark.parametrize("backend", LAYERED, indirect=True)
def test_completeness_at_the_layer(backend, problem):
    weights, x, bg = problem
    model, layer, _, _ = split_models(backend, weights)
    xs, bgs = backend.array(x), backend.array(bg)
    # 6 background rows x a 24-point Gauss-Legendre rule: the path integrals to ~1e-13.
    exp = gradshap.GradientExplainer(model, bgs, layer=layer)(xs, target=0, n_samples=6 * 24, sampler="exhaustive")
    f_x, f_b = (backend.host(forward(backend, model, a))[:, 0] for a in (xs, bgs))
    values = backend.host(exp.values)
    np.testing.assert_allclose(backend.host(exp.output), f_x, rtol=1e-12)
    np.testing.assert_allclose(backend.host(exp.base_values), np.full(5, f_b.mean()), rtol=1e-12)
    np.testing.assert_allclose(values.sum(axis=1), f_x - f_b.mean(), rtol=0, atol=1e-10)
    assert np.max(np.abs(backend.host(exp.delta))) < 1e-10


@pytest.mark.parametrize("backend", LAYERED, indirect=True)
def test_integrated_gradients_at_the_layer(backend, problem):
    weights, x, _ = problem
    model, layer, body, head = split_models(backend, weights)
    xs, base = backend.array(x), backend.array(np.full((1, SIZES[0]), 0.25))
    got = gradshap.IntegratedGradients(model, base, layer=layer)(xs, target=1, n_steps=32)
    want = gradshap.IntegratedGradients(head, forward(backend, body, base))(forward(backend, body, xs), target=1,
                                                                            n_steps=32)
    np.testing.assert_allclose(backend.host(got.values), backend.host(want.values), rtol=1e-12, atol=1e-14)
    f_x, f_0 = (backend.host(forward(backend, model, a))[:, 1] for a in (xs, base))
    np.testing.assert_allclose(backend.host(got.values).sum(axis=1), f_x - f_0, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- torch


@pytest.fixture
def torch():
    return import_or_fail("torch")


def hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_torch_layer_by_name_module_and_split_agree(torch, problem):
    weights, x, bg = problem
    model = torch_mlp(weights)
    xs, bgs = torch.from_numpy(x), torch.from_numpy(bg)
    results = [gradshap.GradientExplainer(model, bgs, layer=layer)(xs, target=0, n_samples=24, seed=1).values
               for layer in ("1", model[1], (model[:2], model[2:]))]
    for r in results[1:]:
        np.testing.assert_allclose(r.numpy(), results[0].numpy(), rtol=1e-12, atol=1e-14)


def test_torch_model_left_as_found_also_after_an_error(torch, problem):
    weights, x, bg = problem
    model = torch.nn.Sequential(torch_mlp(weights[:1]), torch.nn.Tanh(), torch.nn.Dropout(0.5), torch_mlp(weights[1:]))
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    rng_state = torch.get_rng_state()
    explainer = gradshap.GradientExplainer(model, torch.from_numpy(bg), layer="1")
    exp = explainer(torch.from_numpy(x), target=0, n_samples=12, seed=0)
    # Eval mode inside the call: dropout off, so the head is deterministic and complete.
    assert np.max(np.abs(exp.delta.numpy())) < 0.1 * np.max(np.abs(exp.output.numpy() - exp.base_values.numpy()))
    with pytest.raises(RuntimeError):
        explainer(torch.zeros((2, SIZES[0] + 1), dtype=torch.float64), n_samples=4)  # the wrong width
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_torch_hooks_removed_when_the_head_pass_fails(torch, problem):
    """An error raised after the layer, inside a hooked pass (here: in the first gradient pass)."""
    weights, x, bg = problem

    class FailsUnderGrad(torch.nn.Module):
        def forward(self, h):
            if torch.is_grad_enabled():
                raise RuntimeError("failed in the head")
            return h

    model = torch.nn.Sequential(torch_mlp(weights[:1]), torch.nn.Tanh(), FailsUnderGrad(),
                                torch_mlp(weights[1:])).train()
    explainer = gradshap.GradientExplainer(model, torch.from_numpy(bg), layer=model[1])
    with pytest.raises(RuntimeError, match="failed in the head"):
        explainer(torch.from_numpy(x), target=0, n_samples=4)
    assert hooks(model) == 0 and model.training
    assert all(p.requires_grad for p in model.parameters())


def residual_model(torch):
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(3, 3).double()
            self.out = torch.nn.Linear(3, 1).double()

        def forward(self, x):
            return self.out(x + torch.tanh(self.inner(x)))

    return Model()


def test_torch_skip_connection_around_the_layer_is_refused(torch, rng):
    model = residual_model(torch)
    bg, x = torch.from_numpy(rng.normal(size=(4, 3))), torch.from_numpy(rng.normal(size=(2, 3)))
    with pytest.raises(ValueError, match="other than through that layer"):
        gradshap.GradientExplainer(model, bg, layer="inner")(x, n_samples=4)
    assert hooks(model) == 0


def test_torch_token_ids_explained_at_the_embedding(torch, rng):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4).double()
    lin = torch.nn.Linear(4, 1).double()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lin = emb, lin

        def forward(self, ids):
            return self.lin(torch.tanh(self.emb(ids)).mean(dim=1))

    model = Model()
    ids = torch.from_numpy(rng.integers(0, 10, size=(3, 7)))
    bg = torch.from_numpy(rng.integers(0, 10, size=(5, 7)))
    exp = gradshap.GradientExplainer(model, bg, layer="emb")(ids, n_samples=5 * 32, sampler="exhaustive")
    assert tuple(exp.values.shape) == (3, 7, 4)
    f = model(ids).detach().numpy()[:, 0]
    np.testing.assert_allclose(exp.values.numpy().sum(axis=(1, 2)), f - model(bg).detach().numpy().mean(),
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(exp.data, emb(ids).detach())


def test_torch_tuple_output_needs_a_selector(torch, rng):
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(3, 4, batch_first=True).double()
            self.out = torch.nn.Linear(4, 1).double()

        def forward(self, x):
            seq, _ = self.lstm(x)
            return self.out(seq[:, -1])

    model = Model()
    x, bg = torch.from_numpy(rng.normal(size=(2, 5, 3))), torch.from_numpy(rng.normal(size=(3, 5, 3)))
    with pytest.raises(TypeError, match=r"layer=\(module, i\)"):
        gradshap.GradientExplainer(model, bg, layer="lstm")(x, n_samples=3)
    exp = gradshap.IntegratedGradients(model, bg[:1], layer=("lstm", 0))(x, n_steps=40)
    assert tuple(exp.values.shape) == (2, 5, 4)
    f = model(x).detach().numpy()[:, 0]
    np.testing.assert_allclose(exp.values.numpy().sum(axis=(1, 2)), f - model(bg[:1]).detach().numpy()[0],
                               rtol=0, atol=1e-8)
    assert hooks(model) == 0


def test_torch_layer_used_twice_is_refused(torch, problem):
    weights, x, bg = problem
    act = torch.nn.Tanh()
    model = torch.nn.Sequential(torch_mlp(weights[:1]), act, torch_mlp(weights[1:2]), act, torch_mlp(weights[2:]))
    with pytest.raises(ValueError, match=r"ran 2 times in one forward pass"):
        gradshap.GradientExplainer(model, torch.from_numpy(bg), layer=act)(torch.from_numpy(x), target=0, n_samples=4)
    assert hooks(model) == 0


def test_torch_unknown_layer_names_the_submodules(torch, problem):
    model = torch_mlp(problem[0])
    with pytest.raises(ValueError, match=r"not the name of a submodule.*'0', '1'"):
        gradshap.GradientExplainer(model, torch.from_numpy(problem[2]), layer="encoder")
    with pytest.raises(ValueError, match="must be a submodule"):
        gradshap.GradientExplainer(model, torch.from_numpy(problem[2]), layer=torch.nn.Tanh())


def test_split_needed_for_functions(rng):
    jnp = import_or_fail("jax").numpy
    with pytest.raises(TypeError, match=r"pair \(body, head\)"):
        gradshap.GradientExplainer(lambda p: p.sum(axis=1), jnp.zeros((2, 3)), layer="dense")
