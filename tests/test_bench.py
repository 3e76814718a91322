"""`python benchmarks/bench.py --quick` as a smoke test, and the speed paths of the adapters.

No timing is asserted anywhere here: speed is measured by benchmarks/ only. What is
asserted is that the benchmark runs, writes its three outputs with a row per framework,
and that the speed paths (channels-last torch inputs, the compiled JAX chunk step, any
batch size) give the numbers the plain paths give. The bench's own timing logic (how many
rounds it runs) is tested on a fake clock.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import import_or_fail

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    import_or_fail("torch")
    import_or_fail("tqdm")
    import_or_fail("matplotlib")
    import bench

    out = tmp_path_factory.mktemp("bench")
    # Every installed framework group, as CI's smoke run; groups run side by side (~20 s).
    code = bench.main(["--quick", "--out", str(out), "--no-progress"])
    assert code == 0
    return out, json.loads((out / "bench.json").read_text())


def test_quick_bench_writes_json_markdown_and_png(quick_report):
    out, report = quick_report
    assert (out / "bench.md").read_text().count("| mlp |") >= 4
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["quick"] is True and report["n_samples"] == 16
    assert report["errors"] == {}
    # A row that cannot run here says why (a missing adapter, a framework not installed).
    for row in report["rows"]:
        assert "median_s" in row or row.get("skipped"), row


def test_quick_bench_rows_ran_and_agree(quick_report):
    _, report = quick_report
    rows = {(r["group"], r["row"]): r for r in report["rows"] if r["workload"] == "mlp"}
    for key in [("torch", "floor"), ("torch", "gradshap"), ("torch", "captum"), ("torch", "shap"),
                ("jax", "floor"), ("jax", "gradshap")]:
        assert key in rows, key
        assert "skipped" not in rows[key], rows[key].get("skipped")
        assert rows[key]["median_s"] > 0
        assert rows[key]["n_points"] == rows[key]["n_rows"] * 16
    # The same seed gives the same values in both frameworks, up to float32 rounding.
    assert rows[("jax", "gradshap")]["max_abs_diff_vs_torch"] < 1e-5
    assert rows[("torch", "gradshap")]["max_abs_diff_vs_torch"] == 0.0
    mem = rows[("torch", "gradshap")]["memory"]
    assert {"rss_rise_mib", "scaling"} <= set(mem)
    # Each gradshap row also timed a first call at one row fewer (recompiles show there).
    for key in [("torch", "gradshap"), ("jax", "gradshap")]:
        assert rows[key]["new_count_s"] > 0
    # The large-background and linear-model rows: timed against the same floor, over as
    # many points, with no memory row.
    for group in ("torch", "jax"):
        for name in ("gradshap-bigbg", "gradshap-linear"):
            row = rows[(group, name)]
            assert row["n_points"] == row["n_rows"] * 16
            assert row["x_floor"] == pytest.approx(row["median_s"] / rows[(group, "floor")]["median_s"])
            assert "memory" not in row
        assert rows[(group, "gradshap-bigbg")]["background_rows"] == 1000
        assert rows[(group, "gradshap-linear")]["linear_model"] is True
    # The by-hand rows make gradshap's draws (16 samples over 100 background rows, each
    # drawn at most once): the same estimate, up to float32 rounding, in every group that
    # ran (TensorFlow and Keras too, where installed).
    by_hand = [r for r in report["rows"] if r["row"] == "by-hand" and "median_s" in r]
    assert {"torch", "jax"} <= {r["group"] for r in by_hand}
    for row in by_hand:
        assert row["max_abs_diff_vs_gradshap"] < 1e-5, row
        assert row["x_floor"] == pytest.approx(row["median_s"] / rows[(row["group"], "floor")]["median_s"])
        assert "memory" not in row


@pytest.mark.parametrize("group_name", ["torch", "jax"])
@pytest.mark.parametrize("chunk", [48, 1000])
def test_by_hand_row_computes_gradshaps_estimate_on_the_cnn(group_name, chunk):
    """The by-hand runner (gather, interpolate, VJP, multiply, mean per row) on gradshap's
    draws at seed 0 gives gradshap's values: 16 samples over 64 background rows draw each
    row at most once, so gradshap's weights are the plain mean's. At 48 points per chunk,
    16 samples make chunks of 3 rows, and 5 rows pad the last chunk."""
    import_or_fail(group_name)
    import bench
    import workloads

    import gradshap

    group = bench.make_group(group_name)
    wl = workloads.get("cnn")
    case = bench.Case(wl, 5, 16)
    model = group.model(wl)
    got = group.numpy(group.by_hand_runner(model, case, chunk, "")())
    want = group.numpy(gradshap.GradientExplainer(model, group.array(case.bg))(
        group.array(case.x), target=wl.target, n_samples=16, seed=0).values)
    assert got.shape == want.shape == (5, 1, 28, 28)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_linear_workload_is_one_dense_layer_in_torch_and_jax(name):
    """``Workload.linear``: the inputs flattened, then ``x @ W.T + b``, with the workload's
    outputs, in each framework (Keras flattens images in its own order: shape only)."""
    import_or_fail("torch")
    import_or_fail("jax")
    import torch
    import workloads

    wl = workloads.get(name).linear()
    x, _ = wl.data(3)
    w = wl.weights()
    want = x.reshape(3, -1).astype(np.float64) @ w["1.weight"].T.astype(np.float64) + w["1.bias"]
    assert want.shape == (3, workloads.get(name).n_outputs)
    with torch.no_grad():
        got_torch = wl.build("torch")(torch.from_numpy(x)).numpy()
    got_jax = np.asarray(wl.build("jax")(x))
    np.testing.assert_allclose(got_torch, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_jax, want, rtol=1e-5, atol=1e-5)
    assert wl.large_background == 0 and wl.input_shape == workloads.get(name).input_shape


def test_floor_is_the_faster_of_the_sweeps_two_best_in_the_timed_rounds():
    import bench

    row = {"best": "1024", "times": [0.0138, 0.0139, 0.0153]}
    bench.settle_floor(row, "4096", [0.0104, 0.0110, 0.0200])
    assert row["best"] == "4096" and row["times"] == [0.0104, 0.0110, 0.0200]
    assert row["runner_up"] == {"best": "1024", "median_s": 0.0139}
    row = {"best": "4096", "times": [0.0104, 0.0105, 0.0106]}
    bench.settle_floor(row, "1024", [0.0138, 0.0139, 0.0100])
    assert row["best"] == "4096" and row["times"] == [0.0104, 0.0105, 0.0106]
    assert row["runner_up"] == {"best": "1024", "median_s": 0.0138}


class _FakeClock:
    """A clock that stands still except where a run moves it on (see :func:`_slowed`)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _slowed(row: Callable, clock: _FakeClock, seconds: float) -> Callable:
    """The bench row ``row`` whose runner takes ``seconds`` on ``clock`` per run (and
    still runs, so the row's checks and values are real)."""

    def make(group, model, case, opts):
        run, details = row(group, model, case, opts)

        def timed_run():
            clock.now += seconds
            return run()

        return timed_run, details

    return make


# Seconds per run on the fake clock: powers of two, so every sum is exact.
_RUN_SECONDS = {"floor": 0.25, "gradshap": 0.5, "gradshap-bigbg": 0.125, "gradshap-linear": 0.0625,
                "by-hand": 0.03125, "captum": 1.0}


@pytest.mark.parametrize(("rows", "min_time_s", "max_extra", "want"), [
    # gradshap-bigbg is the settling row with the least time per run (0.125 s): 8 runs make
    # its 1.0 s, exactly the minimum, so 6 further rounds after the 2 repeats and no 7th.
    # (The floor alone would stop at 4 runs, the longest row at 2; the riding rows at
    # 0.0625 s and 0.03125 s would ask for 16 and 32.)
    (tuple(_RUN_SECONDS), 1.0, None, 8),
    (tuple(_RUN_SECONDS), 1.01, None, 9),
    # At most MAX_EXTRA_ROUNDS further rounds.
    (tuple(_RUN_SECONDS), 100.0, 3, 5),
    # Without a minimum, nothing more runs.
    (tuple(_RUN_SECONDS), 0.0, None, 2),
    # Further rounds need the floor and a gradshap row to settle them: the linear-model and
    # by-hand rows only ride along.
    (("gradshap", "gradshap-bigbg", "captum"), 1.0, None, 2),
    (("floor", "gradshap-linear", "by-hand", "captum"), 1.0, None, 2),
    (("floor", "gradshap", "captum"), 1.0, None, 4),
])
def test_short_floor_and_gradshap_rows_get_further_rounds(tmp_path, monkeypatch, rows, min_time_s, max_extra, want):
    """Where runs are short, the floor and gradshap rows (and the large-background row) run
    further rounds, interleaved, until each has ``min_time_s`` of timed runs (at most
    MAX_EXTRA_ROUNDS); the linear-model and by-hand rows run in those rounds too, without
    setting how many there are; the other rows keep their repeats. Timed on a fake clock
    on which each row's run takes a set time, so the count of rounds is exact."""
    import_or_fail("torch")
    import bench

    clock = _FakeClock()
    for name, seconds in _RUN_SECONDS.items():
        monkeypatch.setitem(bench.ROWS, name, _slowed(bench.ROWS[name], clock, seconds))
    if max_extra is not None:
        monkeypatch.setattr(bench, "MAX_EXTRA_ROUNDS", max_extra)
    spec = {"group": "torch", "workloads": ["mlp"], "quick": True, "n_samples": 16, "repeats": 2,
            "rows": list(rows), "tmp": str(tmp_path), "memory_inline": False, "min_time_s": min_time_s}
    got = bench.worker_time(spec, clock=clock)["workloads"]["mlp"]["rows"]
    assert set(got) == set(rows)
    for name in rows:
        assert "skipped" not in got[name], got[name]["skipped"]
        runs = 2 if name == "captum" else want
        assert got[name]["times"] == [_RUN_SECONDS[name]] * runs, name
        assert got[name]["median_s"] == _RUN_SECONDS[name]


def test_bench_rejects_unknown_workload(capsys):
    import bench

    assert bench.main(["--workloads", "nope", "--no-progress"]) == 2
    assert "unknown workload 'nope'" in capsys.readouterr().err


def test_workload_weights_agree_across_frameworks():
    torch = import_or_fail("torch")
    jnp = import_or_fail("jax.numpy")
    import workloads

    for name in ("mlp", "cnn", "resnet"):
        wl = workloads.get(name)
        x, _ = wl.data(3)
        with torch.no_grad():
            out_torch = wl.build("torch")(torch.from_numpy(x)).numpy()
        out_jax = np.asarray(wl.build("jax")(jnp.asarray(x)))
        np.testing.assert_allclose(out_jax, out_torch, rtol=1e-4, atol=1e-4)


def _explain(model, x, bg, **kw):
    import gradshap

    return gradshap.GradientExplainer(model, bg, batch_size=kw.pop("batch_size", None))(x, seed=3, **kw)


def test_torch_channels_last_matches_contiguous():
    torch = import_or_fail("torch")
    import gradshap

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)
    ).double()
    x, bg = torch.randn(3, 3, 6, 6, dtype=torch.float64), torch.randn(5, 3, 6, 6, dtype=torch.float64)
    fast = gradshap.GradientExplainer(model, bg)
    assert fast.adapter._channels_last
    slow = gradshap.GradientExplainer(model, bg)
    slow.adapter._channels_last = False
    a, b = fast(x, target=1, n_samples=20, seed=3), slow(x, target=1, n_samples=20, seed=3)
    assert a.values.is_contiguous()
    torch.testing.assert_close(a.values, b.values, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.delta, b.delta, rtol=1e-10, atol=1e-12)


def test_torch_model_that_needs_contiguous_inputs_still_works():
    torch = import_or_fail("torch")
    import gradshap

    class ViewNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3)
            self.fc = torch.nn.Linear(2 * 4 * 4, 1)

        def forward(self, x):
            h = self.conv(x)
            return self.fc(h.view(h.shape[0], -1))  # .view fails on channels-last activations

    torch.manual_seed(1)
    model = ViewNet().double()
    x, bg = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(4, 3, 6, 6, dtype=torch.float64)
    explainer = gradshap.GradientExplainer(model, bg)
    exp = explainer(x, n_samples=16, seed=0)
    assert not explainer.adapter._channels_last
    # Completeness holds to rounding for this piecewise-linear model only in expectation;
    # the residual must still be what the reported values imply.
    out = model(x).detach()[:, 0]
    base = model(bg).detach()[:, 0].mean()
    torch.testing.assert_close(exp.delta, exp.values.sum(dim=(1, 2, 3)) - (out - base))


def test_jax_compiled_step_matches_numpy_reference():
    jax = import_or_fail("jax")
    jnp = jax.numpy
    import gradshap

    rng = np.random.default_rng(5)
    w1, w2 = rng.standard_normal((4, 6)), rng.standard_normal(6)

    def f_np(p):
        return np.tanh(p @ w1) @ w2

    def grad_np(p):
        return ((1 - np.tanh(p @ w1) ** 2) * w2) @ w1.T

    def f_jax(p):
        return jnp.tanh(p @ jnp.asarray(w1)) @ jnp.asarray(w2)

    x, bg = rng.standard_normal((7, 4)), rng.standard_normal((5, 4))
    kw = dict(n_samples=30, batch_size=64)  # several row blocks, the last one padded
    ref = gradshap.expected_gradients(lambda p: (f_np(p), grad_np(p)), x, bg, seed=3, **kw)
    got = _explain(f_jax, jnp.asarray(x), jnp.asarray(bg), **kw)
    np.testing.assert_allclose(np.asarray(got.values), ref.values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(got.stderr), ref.stderr, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.asarray(got.delta), ref.delta, rtol=1e-8, atol=1e-10)


def test_draws_do_not_depend_on_batch_size():
    import gradshap

    rng = np.random.default_rng(6)
    w = rng.standard_normal(3)
    x, bg = rng.standard_normal((40, 3)), rng.standard_normal((9, 3))

    def vg(p):
        return np.sin(p) @ w, np.cos(p) * w

    runs = [gradshap.expected_gradients(vg, x, bg, n_samples=50, seed=1, batch_size=b) for b in (50, 120, 4000)]
    for other in runs[1:]:
        np.testing.assert_allclose(other.values, runs[0].values, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(other.stderr, runs[0].stderr, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("argv, message", [
    (["--n-samples", "0"], "--n-samples must be a positive integer; got 0"),
    (["--n-samples", "-5"], "--n-samples must be a positive integer; got -5"),
    (["--repeats", "0"], "--repeats must be a positive integer"),
    (["--min-time", "-1"], "--min-time must be"),
])
def test_bench_refuses_bad_numbers_before_any_work(argv, message, tmp_path, capsys):
    import bench

    assert bench.main(["--quick", "--no-progress", "--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bench_refuses_an_out_below_a_file_before_any_work(tmp_path, capsys):
    import bench

    (tmp_path / "afile").write_text("")
    assert bench.main(["--quick", "--no-progress", "--out", str(tmp_path / "afile" / "sub")]) == 2
    assert "cannot write to --out" in capsys.readouterr().err


def test_bench_exits_1_and_names_the_job_when_a_worker_fails(tmp_path, monkeypatch, capsys):
    """A job whose worker dies fails: bench still writes its report, lists the job under
    ``errors`` (json and markdown), names it on stderr and exits 1. The worker
    here cannot even start Python: workers inherit the driver's environment, in which
    PYTHONHOME now names a folder that does not exist."""
    import_or_fail("matplotlib")
    import bench

    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "no-python-here"))
    out = tmp_path / "out"
    argv = ["--quick", "--no-progress", "--no-memory", "--groups", "torch", "--rows", "floor", "--out", str(out)]
    assert bench.main(argv) == 1
    assert "bench: 1 failure(s): job time torch" in capsys.readouterr().err
    report = json.loads((out / "bench.json").read_text())
    assert list(report["errors"]) == ["time torch"]
    assert report["errors"]["time torch"].startswith("worker exited with code 1: ")
    assert "No module named 'encodings'" in report["errors"]["time torch"]  # the cause, above the last lines
    assert report["rows"] == []
    assert "- time torch: worker exited with code 1" in (out / "bench.md").read_text()
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_row_that_raised_is_a_failure_and_a_stated_skip_is_not():
    """bench exits 1 on any failure (``failures`` is what main prints and counts): a job
    without a result, a timed row or a memory row that raised; not a row skipped for a
    stated reason (an anchor not installed)."""
    import bench

    def row(name, **extra):
        return {"workload": "mlp", "group": "torch", "row": name, **extra}

    report = {"errors": {}, "rows": [row("floor", median_s=0.1), row("shap", skipped="shap is not installed")]}
    assert bench.failures(report) == []
    report["rows"].append(row("gradshap", skipped="failed: ValueError: boom"))
    report["rows"].append(row("captum", median_s=0.2, memory={"skipped": "failed: MemoryError: "}))
    report["errors"]["time jax"] = "worker exited with code 1: ..."
    assert bench.failures(report) == [
        "job time jax",
        "row mlp torch gradshap: failed: ValueError: boom",
        "row mlp torch captum (memory): failed: MemoryError: ",
    ]

