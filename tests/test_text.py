"""Per-token attributions (gradshap.token_attributions) on a small TransformerEncoder classifier.

Per-token attributions sum to ``f(x) - base`` up to the residual; padded positions get
exactly zero; the base is the model's mean output over the baselines, run with each
row's mask (which the test computes directly, from ids: the embedding is per token).
"""

from __future__ import annotations

import numpy as np
import pytest

import gradshap
from conftest import import_or_fail

torch = import_or_fail("torch")

VOCAB, WIDTH, LENGTH, PAD = 12, 8, 6, 0


class Classifier(torch.nn.Module):
    """Token embedding, learned positions, one encoder layer (GELU: smooth, so the quadrature
    converges fast), masked mean pooling, 2 logits."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, WIDTH)
        self.pos = torch.nn.Parameter(0.3 * torch.randn(LENGTH, WIDTH))
        layer = torch.nn.TransformerEncoderLayer(WIDTH, nhead=2, dim_feedforward=16, dropout=0.1,
                                                 activation="gelu", batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.out = torch.nn.Linear(WIDTH, 2)

    def forward(self, ids, mask):
        h = self.enc(self.emb(ids) + self.pos, src_key_padding_mask=mask == 0)
        m = mask[..., None].to(h.dtype)
        return self.out((h * m).sum(dim=1) / m.sum(dim=1))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Classifier().double()


@pytest.fixture
def batch(rng):
    """Five rows of lengths 6, 4, 4, 3, 6 (padded with PAD), and the mask."""
    ids = rng.integers(1, VOCAB, size=(5, LENGTH))
    lengths = np.array([6, 4, 4, 3, 6])
    mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, PAD)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def run(model, ids, mask):
    with torch.no_grad():
        return model.eval()(ids, mask).numpy()


def test_integrated_gradients_from_pad_tokens(model, batch):
    ids, mask = batch
    model.train()
    exp = gradshap.token_attributions(model, ids, layer="emb", attention_mask=mask, baseline=PAD, target=1,
                                      n_steps=64)
    assert model.training  # left as found
    values = exp.values.numpy()
    assert values.shape == (5, LENGTH) and exp.stderr.shape == (5, LENGTH)
    assert np.all(values[mask.numpy() == 0] == 0.0)
    f_x = run(model, ids, mask)[:, 1]
    f_0 = run(model, torch.full_like(ids, PAD), mask)[:, 1]  # the pad baseline under each row's mask
    np.testing.assert_allclose(exp.output.numpy(), f_x, rtol=1e-12)
    np.testing.assert_allclose(exp.base_values.numpy(), f_0, rtol=1e-12)
    np.testing.assert_allclose(values.sum(axis=1), f_x - f_0 + exp.delta.numpy(), rtol=0, atol=1e-12)
    assert np.max(np.abs(exp.delta.numpy())) < 1e-6 * np.max(np.abs(f_x - f_0))
    torch.testing.assert_close(exp.data, ids)


def test_expected_gradients_from_background_sentences(model, batch, rng):
    ids, mask = batch
    bg = torch.from_numpy(rng.integers(1, VOCAB, size=(4, LENGTH)))
    exp = gradshap.token_attributions(model, ids, layer=model.emb, attention_mask=mask, background=bg, target=0,
                                      n_samples=4 * 32, sampler="exhaustive")
    values = exp.values.numpy()
    assert np.all(values[mask.numpy() == 0] == 0.0)
    f_x = run(model, ids, mask)[:, 0]
    # Each row's base: the background sentences with the row's padding, under the row's mask.
    base = np.array([np.mean(run(model, torch.where(m[None] == 1, bg, row[None]), m[None].expand(4, -1))[:, 0])
                     for row, m in zip(ids, mask)])
    np.testing.assert_allclose(exp.base_values.numpy(), base, rtol=1e-10)
    np.testing.assert_allclose(values.sum(axis=1), f_x - base, rtol=0, atol=1e-6 * np.max(np.abs(f_x - base)))
    again = gradshap.token_attributions(model, ids, layer="emb", attention_mask=mask, background=bg, target=0,
                                        n_samples=4 * 32, sampler="exhaustive")
    np.testing.assert_array_equal(again.values.numpy(), values)


def test_rows_match_the_layer_explainer_on_each_mask_group(model, batch, rng):
    """A group of rows of one mask is explained exactly as GradientExplainer(layer=) explains
    them, once the background's padded positions hold the rows' pad tokens."""
    ids, mask = batch
    bg = torch.from_numpy(rng.integers(1, VOCAB, size=(3, LENGTH)))
    exp = gradshap.token_attributions(model, ids, layer="emb", attention_mask=mask, background=bg, target=1,
                                      n_samples=30, seed=5)
    rows = [1, 2]  # the two rows of length 4
    padded_bg = torch.where(mask[1][None] == 1, bg, PAD)
    layer = gradshap.GradientExplainer(model, (padded_bg, mask[rows[:1]].expand(3, -1)), layer="emb")
    want = layer((ids[rows], mask[rows]), target=1, n_samples=30, seed=5, row_ids=rows)
    np.testing.assert_allclose(exp.values.numpy()[rows], want.values.sum(dim=2).numpy(), rtol=1e-12, atol=1e-14)
    assert exp.seed == 5 and np.array_equal(exp.row_ids, np.arange(ids.shape[0]))


def test_rows_explained_in_pieces_give_one_calls_numbers(model, batch, rng):
    """Draws are keyed by (seed, row id), not by a row's place in its mask group or call."""
    ids, mask = batch
    bg = torch.from_numpy(rng.integers(1, VOCAB, size=(3, LENGTH)))
    kw = dict(layer="emb", background=bg, target=1, n_samples=30, seed=7)
    whole = gradshap.token_attributions(model, ids, attention_mask=mask, **kw)
    order = rng.permutation(ids.shape[0])
    pieces = [gradshap.token_attributions(model, ids[part], attention_mask=mask[part], row_ids=part, **kw)
              for part in np.array_split(order, 3)]
    joined = gradshap.Explanation.concat(pieces)
    np.testing.assert_allclose(joined.values.numpy(), whole.values.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(joined.base_values.numpy(), whole.base_values.numpy(), rtol=1e-12)


def test_bad_arguments(model, batch):
    ids, mask = batch
    with pytest.raises(ValueError, match="exactly one of `background`"):
        gradshap.token_attributions(model, ids, layer="emb", attention_mask=mask)
    with pytest.raises(TypeError, match="`input_ids` must be a 2-D integer"):
        gradshap.token_attributions(model, ids.double(), layer="emb", attention_mask=mask, baseline=PAD)
    with pytest.raises(ValueError, match=r"`attention_mask` has shape \(5, 5\)"):
        gradshap.token_attributions(model, ids, layer="emb", attention_mask=mask[:, :5], baseline=PAD)


def test_tiny_random_bert():
    """A randomly initialised BERT built from a config (no download), explained at its embeddings."""
    transformers = import_or_fail("transformers")  # skipped locally when absent; CI installs it
    config = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).double()
    ids = torch.randint(3, 30, (3, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:], ids[1, 5:] = 0, PAD

    def logit(out):
        return out.logits[:, 1]

    exp = gradshap.token_attributions(model, ids, layer="bert.embeddings", attention_mask=mask, baseline=PAD,
                                      target=logit, n_steps=32)
    values = exp.values.numpy()
    assert values.shape == (3, 8) and np.all(values[1, 5:] == 0.0)
    with torch.no_grad():
        f_x, f_0 = (logit(model.eval()(a, mask)).numpy() for a in (ids, torch.full_like(ids, PAD)))
    np.testing.assert_allclose(exp.output.numpy(), f_x, rtol=1e-12)
    np.testing.assert_allclose(exp.base_values.numpy(), f_0, rtol=1e-12)
    np.testing.assert_allclose(values.sum(axis=1), f_x - f_0, rtol=0, atol=1e-6 * np.max(np.abs(f_x - f_0)))


def test_rows_come_back_in_order_with_their_own_targets(model, batch):
    """Rows are explained by mask group (lengths 6, 4, 4, 3, 6 give three groups, the two
    full rows apart); results, the predicted class and per-row baselines return in row order."""
    ids, mask = batch
    baselines = torch.stack([torch.full((LENGTH,), t) for t in (PAD, 1, 2, 3, 4)])
    exp = gradshap.token_attributions(model, ids, layer="emb", attention_mask=mask, baseline=baselines,
                                      target="predicted", n_steps=48)
    f_x = run(model, ids, mask)
    predicted = f_x.argmax(axis=1)
    np.testing.assert_array_equal(np.asarray(exp.target), predicted)
    np.testing.assert_allclose(exp.output.numpy(), f_x[np.arange(5), predicted], rtol=1e-12)
    f_b = run(model, torch.where(mask == 1, baselines, ids), mask)[np.arange(5), predicted]
    np.testing.assert_allclose(exp.base_values.numpy(), f_b, rtol=1e-12)
    np.testing.assert_allclose(exp.values.numpy().sum(axis=1), f_x[np.arange(5), predicted] - f_b, rtol=0,
                               atol=1e-6 * np.max(np.abs(f_x)))
    with pytest.raises(ValueError, match=r"`baseline` has shape \(2, 6\)"):
        gradshap.token_attributions(model, ids, layer="emb", attention_mask=mask, baseline=baselines[:2])


def test_same_length_background(model, batch, rng):
    """`same_length=True` explains each row against the background sentences of its own
    mask: the same numbers as one call per length with only those sentences."""
    ids, mask = batch
    lengths = np.array([6, 4, 3, 4, 6, 3, 4])
    bg_mask = torch.from_numpy((np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int64))
    bg = torch.where(bg_mask == 1, torch.from_numpy(rng.integers(1, VOCAB, size=(7, LENGTH))), PAD)
    exp = gradshap.token_attributions(model, ids, layer="emb", attention_mask=mask, background=bg,
                                      background_mask=bg_mask, same_length=True, target=1, n_samples=30, seed=2)
    for length in (6, 4, 3):
        rows, of = np.flatnonzero(mask.sum(1).numpy() == length), np.flatnonzero(lengths == length)
        alone = gradshap.token_attributions(model, ids[rows], layer="emb", attention_mask=mask[rows],
                                            background=bg[of], background_mask=bg_mask[of], target=1,
                                            n_samples=30, seed=2, row_ids=rows)
        np.testing.assert_array_equal(exp.values.numpy()[rows], alone.values.numpy())
        np.testing.assert_array_equal(exp.base_values.numpy()[rows], alone.base_values.numpy())
    with pytest.raises(ValueError, match=r"no background sentence has the mask of row\(s\) 3 \(3 tokens\)"):
        gradshap.token_attributions(model, ids, layer="emb", attention_mask=mask, background=bg[:2],
                                    background_mask=bg_mask[:2], same_length=True, target=1, n_samples=4)
    with pytest.raises(ValueError, match="needs `background`, `background_mask`"):
        gradshap.token_attributions(model, ids, layer="emb", attention_mask=mask, background=bg, same_length=True)
