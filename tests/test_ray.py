"""Ray Data: an actor pool explains a Dataset's rows; the records equal one call, also when
an actor dies mid-job and Ray restarts it. One local cluster (2 CPUs) for the module."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from analytic_models import network

import gradshap
from conftest import import_or_fail
from gradshap.distributed import explain_ray_dataset, from_records
from models import assert_same_rows

N_ROWS, N_FEATURES = 24, 5


@pytest.fixture(scope="module")
def ray():
    ray = import_or_fail("ray")
    import_or_fail("ray.data")
    with warnings.catch_warnings():
        # Ray starts its services with a preexec_fn, which runs JAX's fork hook where JAX
        # is imported; each child execs at once, so JAX's deadlock warning does not apply.
        warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                     [os.path.dirname(gradshap.__path__[0]), os.path.dirname(__file__)])}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


def _build():
    """What each actor runs once: the model and its explainer (here a small NumPy network)."""
    bg = np.random.default_rng(1).normal(size=(6, N_FEATURES))
    return gradshap.GradientExplainer(network(N_FEATURES, seed=4).pair, bg, framework="numpy")


def _dataset(ray, x, order):
    """Rows in a shuffled order, each with its id."""
    return ray.data.from_items([{"row_id": int(i), "x": x[i]} for i in order], override_num_blocks=4)


def _assert_equal(exp, whole):
    assert_same_rows(exp, whole)
    assert (exp.n_samples, exp.target) == (whole.n_samples, whole.target)


def test_actor_pool_records_equal_one_call(ray, rng, tmp_path):
    x = rng.normal(size=(N_ROWS, N_FEATURES))
    options = {"n_samples": 16, "sampler": "lattice", "stdevs": 0.1}
    records = explain_ray_dataset(_dataset(ray, x, rng.permutation(N_ROWS)), _build, concurrency=2, batch_size=5,
                                  num_cpus=1, **options).materialize()
    assert set(records.columns()) == {"row_id", "values", "stderr", "base_value", "output", "delta", "n_samples",
                                      "explained"}
    exp = from_records(records)
    assert isinstance(exp.seed, int)  # seed=None resolved once, on the driver
    _assert_equal(exp, _build()(x, seed=exp.seed, **options))
    # Records written to parquet and read back join into the same Explanation.
    records.write_parquet(str(tmp_path / "out"))
    again = from_records(ray.data.read_parquet(str(tmp_path / "out")))
    _assert_equal(again, exp)


def _build_dying(marker: str):
    """An explainer whose process exits on its second batch, once (the marker file says
    it happened): Ray must restart the actor and run the batch again."""

    def build():
        explainer, calls = _build(), []

        def explain(x, **options):
            calls.append(1)
            if len(calls) == 2 and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            return explainer(x, **options)

        return explain

    return build


def test_an_actor_killed_mid_job_leaves_the_result_unchanged(ray, rng, tmp_path):
    x = rng.normal(size=(N_ROWS, N_FEATURES))
    marker = str(tmp_path / "died")
    options = {"n_samples": 12, "seed": 8, "sampler": "sobol"}
    records = explain_ray_dataset(_dataset(ray, x, np.arange(N_ROWS)), _build_dying(marker), concurrency=1,
                                  batch_size=6, num_cpus=1, **options).materialize()
    assert os.path.exists(marker), "no actor died: the test did not test a restart"
    _assert_equal(from_records(records), _build()(x, **options))


def test_bad_datasets_and_arguments_are_refused(ray):
    ds = ray.data.from_items([{"row_id": 0, "x": np.zeros(N_FEATURES)}])
    with pytest.raises(ValueError, match=r"`dataset` has no column\(s\) 'pixels'; its columns are"):
        explain_ray_dataset(ds, _build, column="pixels")
    with pytest.raises(TypeError, match="row ids come from the column `id_column`='row_id'"):
        explain_ray_dataset(ds, _build, row_ids=[0])
    with pytest.raises(ValueError, match=r"`concurrency` must be a positive int or a pair \(min, max\) of them; got 0"):
        explain_ray_dataset(ds, _build, concurrency=0)
    with pytest.raises(TypeError, match="`dataset` must be a ray.data.Dataset; got numpy.ndarray"):
        explain_ray_dataset(np.zeros((2, 3)), _build)
