"""Row ids: draws keyed by (seed, row id), so rows explained in pieces, in any order, give
the numbers of one call; ``Explanation.concat`` joins the pieces and checks they agree."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from analytic_models import network

import gradshap
from gradshap import Explanation
from models import ROW_FIELDS, assert_same_rows, mlp_weights

#: The samplers of DESIGN.md ("auto" is "lattice").
SAMPLERS = ("iid", "balanced", "lattice", "sobol", "exhaustive")


def _pieces(rng, n: int, k: int) -> list[np.ndarray]:
    """A random partition of ``range(n)`` into ``k`` non-empty pieces, each in random order,
    the pieces themselves in random order."""
    perm = rng.permutation(n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=k - 1, replace=False))
    return list(np.split(perm, cuts))


def _explain_in_pieces(call, x, pieces, take):
    return Explanation.concat([call(take(x, p), row_ids=p) for p in pieces])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_any_partition_and_order_equals_one_call(backend, sampler, rng):
    """A tanh MLP, two targets, smoothing noise for the random designs: 13 rows cut into
    three pieces at random, each piece shuffled, the pieces joined in a shuffled order."""
    weights = mlp_weights(rng)
    bg, x = rng.normal(size=(5, 6)), rng.normal(size=(13, 6))
    explainer = backend.explainer(backend.mlp(weights), backend.array(bg), batch_size=64)
    stdevs = 0.0 if sampler == "exhaustive" else 0.2
    options = {"target": [0, 2], "n_samples": 20, "sampler": sampler, "seed": 7, "stdevs": stdevs}
    whole = explainer(backend.array(x), **options)
    np.testing.assert_array_equal(whole.row_ids, np.arange(13))

    def call(part, row_ids):
        return explainer(part, row_ids=row_ids, **options)

    joined = _explain_in_pieces(call, x, _pieces(rng, 13, 3), lambda a, p: backend.array(a[p]))
    assert_same_rows(joined, whole, backend.host)


def test_ids_not_positions_key_the_draws(rng):
    """The same rows under other ids get other draws; the same ids at other positions the same."""
    model = network(4, seed=3)
    bg, x = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    base = gradshap.expected_gradients(model, x, bg, n_samples=9, seed=2)
    moved = gradshap.expected_gradients(model, x, bg, n_samples=9, seed=2, row_ids=np.arange(100, 105))
    assert np.max(np.abs(moved.values - base.values)) > 1e-3
    reversed_ = gradshap.expected_gradients(model, x[::-1], bg, n_samples=9, seed=2, row_ids=np.arange(5)[::-1])
    np.testing.assert_allclose(reversed_.values[::-1], base.values, rtol=1e-14)


def test_pieces_without_row_ids_do_not_join(rng):
    """Two calls on halves of the rows, both with the default ids 0.., reuse each other's
    draws: concat refuses them rather than return numbers no single call gives."""
    model = network(4, seed=3)
    bg, x = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    halves = [gradshap.expected_gradients(model, h, bg, n_samples=9, seed=2) for h in (x[:3], x[3:])]
    with pytest.raises(ValueError, match="`row_ids` must be distinct; repeated: 0, 1, 2"):
        Explanation.concat(halves)


def test_adaptive_rows_in_pieces_equal_one_call(rng):
    """Adaptive mode: each row's blocks and samples used do not depend on its companions."""
    model = network(5, seed=11)
    bg, x = rng.normal(size=(8, 5)), rng.normal(size=(11, 5)) * np.linspace(0.2, 3.0, 11)[:, None]
    options = {"n_samples": 16, "seed": 4, "rtol": 0.05, "max_samples": 16 * 64}
    whole = gradshap.expected_gradients(model, x, bg, batch_size=40, **options)
    assert len(set(whole.n_samples.tolist())) > 1  # the rows really stopped at different blocks
    pieces = _pieces(rng, 11, 3)
    joined = Explanation.concat([gradshap.expected_gradients(model, x[p], bg, batch_size=40, row_ids=p, **options)
                                 for p in pieces])
    np.testing.assert_array_equal(joined.n_samples, whole.n_samples)
    for name in ROW_FIELDS:
        np.testing.assert_allclose(getattr(joined, name), getattr(whole, name), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("per_row", [False, True])
def test_integrated_gradients_in_pieces_equal_one_call(backend, per_row, rng):
    weights = mlp_weights(rng)
    x, baselines = rng.normal(size=(9, 6)), rng.normal(size=(9, 6))
    model = backend.mlp(weights)

    def ig(rows):
        baseline = backend.array(baselines[rows]) if per_row else backend.array(baselines[0])
        return gradshap.IntegratedGradients(model, baseline, framework=backend.name)

    whole = ig(np.arange(9))(backend.array(x), target=1, n_steps=16)
    pieces = _pieces(rng, 9, 3)
    joined = Explanation.concat([ig(p)(backend.array(x[p]), target=1, n_steps=16, row_ids=p) for p in pieces])
    assert_same_rows(joined, whole, backend.host)


def test_per_row_targets_join_with_their_rows(rng):
    w = rng.normal(size=(4, 3))
    jac = lambda v: np.broadcast_to(w.T, (v.shape[0], 3, 4)).copy()  # noqa: E731
    explainer = gradshap.GradientExplainer((lambda v: np.tanh(v) @ w, lambda v: jac(v) * (1 - np.tanh(v)[:, None, :] ** 2)),
                                           rng.normal(size=(5, 4)), framework="numpy")
    x = rng.normal(size=(8, 4))
    whole = explainer(x, target="predicted", n_samples=10, seed=1)
    pieces = _pieces(rng, 8, 2)
    joined = Explanation.concat([explainer(x[p], target="predicted", n_samples=10, seed=1, row_ids=p) for p in pieces])
    np.testing.assert_array_equal(joined.target, whole.target)
    np.testing.assert_allclose(joined.values, whole.values, rtol=1e-12)


def test_seed_none_resolves_to_a_recorded_integer(rng):
    model = network(4, seed=3)
    bg, x = rng.normal(size=(6, 4)), rng.normal(size=(3, 4))
    first = gradshap.expected_gradients(model, x, bg, n_samples=9)
    assert isinstance(first.seed, int) and 0 <= first.seed < 2**63
    again = gradshap.expected_gradients(model, x, bg, n_samples=9, seed=first.seed)
    np.testing.assert_array_equal(again.values, first.values)
    other = gradshap.expected_gradients(model, x, bg, n_samples=9)
    assert other.seed != first.seed
    generator = np.random.default_rng(5)
    drawn = gradshap.expected_gradients(model, x, bg, n_samples=9, seed=generator)
    assert drawn.seed == int(np.random.default_rng(5).integers(0, 2**63, dtype=np.int64))
    np.testing.assert_array_equal(gradshap.expected_gradients(model, x, bg, n_samples=9, seed=drawn.seed).values,
                                  drawn.values)


def test_rows_and_masks_keep_their_ids_and_rejoin(rng):
    model = network(4, seed=3)
    exp = gradshap.expected_gradients(model, rng.normal(size=(7, 4)), rng.normal(size=(5, 4)), n_samples=6, seed=0,
                                      row_ids=np.arange(10, 17))
    mask = np.array([1, 0, 0, 1, 1, 0, 1], dtype=bool)
    assert exp[mask].row_ids.tolist() == [10, 13, 14, 16]
    joined = Explanation.concat([exp[~mask], exp[mask]])
    for name in (*ROW_FIELDS, "data", "row_ids"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(exp, name))


@pytest.mark.parametrize(("row_ids", "error", "match"), [
    ([0, 1], ValueError, r"`row_ids` must have shape \(3,\), one id per row of `x`; got shape \(2,\)"),
    ([[0, 1, 2]], ValueError, r"`row_ids` must have shape \(3,\).*got shape \(1, 3\)"),
    ([0.0, 1.0, 2.0], TypeError, "`row_ids` must hold integers .* got dtype float64"),
    ([True, False, True], TypeError, "`row_ids` must hold integers .* got dtype bool"),
    ([0, -1, 2], ValueError, r"`row_ids` must be non-negative and below 2\*\*63; got values -1..2"),
    (np.array([0, 2**63, 1], dtype=np.uint64), ValueError, "`row_ids` must be non-negative and below 2"),
    ([4, 9, 4], ValueError, "`row_ids` must be distinct .* repeated: 4"),
])
def test_bad_row_ids_name_the_argument(rng, row_ids, error, match):
    model = network(4, seed=3)
    with pytest.raises(error, match=match):
        gradshap.expected_gradients(model, rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), n_samples=4, seed=0,
                                    row_ids=row_ids)


def test_concat_refuses_pieces_explained_differently(rng):
    model = network(4, seed=3)
    bg, x = rng.normal(size=(6, 4)), rng.normal(size=(4, 4))

    def piece(rows, **options):
        kwargs = {"n_samples": 8, "seed": 1, "sampler": "lattice", **options}
        return gradshap.expected_gradients(model, x[rows], bg, row_ids=rows, **kwargs)

    head = piece(np.arange(2))
    for options, name in (({"seed": 2}, "seed=2"), ({"sampler": "iid"}, "sampler='iid'"),
                          ({"n_samples": 16}, "n_samples=16")):
        with pytest.raises(ValueError, match=f"`parts\\[1\\]` has {name} but `parts\\[0\\]` has"):
            Explanation.concat([head, piece(np.arange(2, 4), **options)])
    with pytest.raises(ValueError, match="`parts\\[1\\]` has target=1 but `parts\\[0\\]` has target=None"):
        Explanation.concat([head, dataclasses.replace(piece(np.arange(2, 4)), target=1)])
    with pytest.raises(ValueError, match="rows of shape"):
        Explanation.concat([head, dataclasses.replace(head, values=head.values[:, :2], row_ids=np.array([5, 6]))])
    with pytest.raises(ValueError, match="has no row_ids"):
        Explanation.concat([head, dataclasses.replace(head, row_ids=None)])
    with pytest.raises(TypeError, match="non-empty sequence of Explanations"):
        Explanation.concat([])


def test_records_round_trip_through_columns_rows_and_data_frames(rng):
    """One record per row (the Ray and Dask entry points' unit), as columns, as one mapping
    per row and as a pandas DataFrame, joins back into the call's Explanation."""
    import pandas as pd

    from gradshap.distributed import explain_rows, from_records

    model = network(4, seed=3)
    explainer = gradshap.GradientExplainer(model.pair, rng.normal(size=(5, 4)), framework="numpy")
    x = rng.normal(size=(6, 4))
    whole = explainer(x, n_samples=8, seed=2)
    pieces = [explain_rows(explainer, x[p], p, n_samples=8, seed=2) for p in (np.array([5, 1, 3]), np.array([0, 4, 2]))]
    columns = {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}
    rows = [{name: columns[name][i] for name in columns} for i in range(6)]
    frame = pd.DataFrame({name: list(a) if a.ndim > 1 else a for name, a in columns.items()})
    for records in (columns, rows, frame):
        exp = from_records(records)
        assert_same_rows(exp, whole)
        assert (exp.n_samples, exp.target, exp.data) == (8, None, None)
    other = explain_rows(explainer, x[:1], [9], n_samples=8, seed=3)
    mixed = {name: np.concatenate([columns[name], other[name]]) for name in columns}
    with pytest.raises(ValueError, match="`records` were explained in 2 different ways"):
        from_records(mixed)
    with pytest.raises(ValueError, match="`records` hold row id"):
        from_records({name: np.concatenate([columns[name], columns[name][:1]]) for name in columns})
