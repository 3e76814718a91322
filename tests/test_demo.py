"""`gradshap demo` end to end on reduced sizes: the printed numbers, the saved explanation and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from gradshap import Explanation
from gradshap._demo import main
from conftest import import_or_fail
from test_plots import _assert_not_blank

Z95 = NormalDist().inv_cdf(0.975)
SMALL = ["--epochs", "3", "--n-samples", "24", "--background", "12", "--seed", "1", "--no-progress"]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])


def _check_report(folder: Path, expected_figures: set[str]) -> _Links:
    """Every figure is shown, every link and image resolves, every PNG written is shown, none is blank."""
    import matplotlib.image

    page = _Links()
    page.feed((folder / "index.html").read_text(encoding="utf-8"))
    assert expected_figures <= {Path(s).stem for s in page.images}, sorted(expected_figures - {Path(s).stem for s in page.images})
    for ref in page.images + page.links:
        assert not ref.startswith(("/", "http")) and (folder / ref).is_file(), ref
    assert {p.name for p in folder.glob("*.png")} == set(page.images)
    assert len(page.images) == len(set(page.images))
    for src in page.images:
        _assert_not_blank(matplotlib.image.imread(folder / src)[..., :3])
    assert {"explanation.npz", "summary.json"} <= set(page.links)
    return page


def _check_groups(exp: Explanation, labels: np.ndarray, summary: dict) -> None:
    """The printed group statistics equal NumPy's over the saved rows."""
    names = exp.feature_names
    values = np.asarray(exp.values, dtype=np.float64).reshape(len(exp), -1)
    for name, group in summary["groups"].items():
        rows = labels == name
        assert group["n"] == int(rows.sum())
        if "top_features" not in group:
            continue
        for item in group["top_features"]:
            v = values[rows, names.index(item["feature"])]
            assert item["mean"] == pytest.approx(v.mean(), rel=1e-6, abs=1e-9)
            if rows.sum() > 1:
                se = v.std(ddof=1) / np.sqrt(rows.sum())
                assert item["stderr"] == pytest.approx(se, rel=1e-6, abs=1e-12)
                assert item["high"] - item["mean"] == pytest.approx(Z95 * se, rel=1e-6, abs=1e-12)
                assert item["mean"] - item["low"] == pytest.approx(Z95 * se, rel=1e-6, abs=1e-12)


def _check_explanation(exp: Explanation, summary: dict) -> None:
    gap = np.asarray(exp.output, np.float64) - np.asarray(exp.base_values, np.float64)
    total = np.asarray(exp.values, np.float64).reshape(len(exp), -1).sum(axis=1)
    np.testing.assert_allclose(exp.delta, total - gap, atol=1e-4 * (1 + np.abs(gap).max()))
    assert summary["max_abs_delta"] == pytest.approx(np.abs(exp.delta).max(), rel=1e-6)
    assert summary["mean_abs_delta"] == pytest.approx(np.abs(exp.delta).mean(), rel=1e-6)
    assert exp.n_samples == summary["n_samples"] and exp.sampler == summary["sampler"] == "lattice"


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_tabular_demo(framework, tmp_path, capsys):
    import_or_fail(framework)
    out = tmp_path / "report"
    assert main(["--framework", framework, "--n-explain", "40", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    exp = Explanation.load(out / "explanation.npz")
    labels = np.asarray(summary["labels"])

    from gradshap._demo._tabular import load

    d = load(1)
    assert len(exp) == 40 and np.asarray(exp.values).shape == (40, 30)
    assert exp.feature_names == d["names"] and exp.target is None
    np.testing.assert_array_equal(exp.data, d["X_test_raw"][:40])  # shown in original units
    # the confusion groups agree with the truth: TP and FN are the malignant rows
    np.testing.assert_array_equal(np.isin(labels, ["TP", "FN"]), d["y_test"][:40] == 1)
    assert summary["counts"] == {g: int((labels == g).sum()) for g in ("TP", "TN", "FP", "FN")}
    # one output: one base value, the background's mean output
    assert np.ptp(exp.base_values) == 0 and summary["base_value"] == pytest.approx(float(exp.base_values[0]), rel=1e-6)
    _check_explanation(exp, summary)
    _check_groups(exp, labels, summary)
    # what was printed is what was saved
    assert f"test accuracy {summary['accuracy']:.3f}" in printed
    assert f"worst |delta| = {summary['max_abs_delta']:.3g}" in printed
    assert f"base value E[f(b)] = {summary['base_value']:+.4f}" in printed
    for g in ("TP", "TN", "FP", "FN"):
        assert f"\n{g}  n={summary['counts'][g]}" in printed
    top = summary["groups"]["TN"]["top_features"][0]
    assert f"{top['mean']:>+9.3f}   [{top['low']:+.3f}, {top['high']:+.3f}]" in printed
    assert f"report: {(out / 'index.html').resolve()}" in printed
    waterfalls = {f"waterfall_{g}" for g in ("TP", "TN", "FP", "FN") if summary["counts"][g]}
    _check_report(out, {"confusion", "groups", "group_TP", "group_TN", "group_FP", "group_FN", "importance",
                        "beeswarm", "base_value", "completeness", "convergence", "metrics"} | waterfalls)
    # the metrics section: every method scored on the same rows, exhaustive EG as the reference
    records = summary["metrics"]["records"]
    assert {r["method"] for r in records} == {"lattice", "iid", "sobol", "integrated gradients"}
    assert {r["name"] for r in records} == {"deletion_auc", "insertion_auc", "infidelity", "relative_l2", "calibration"}
    assert all(r["n"] == 40 and r["low"] <= r["mean"] <= r["high"] for r in records)
    error = {r["method"]: r["mean"] for r in records if r["name"] == "relative_l2"}
    assert error["lattice"] < error["iid"] < error["integrated gradients"]
    conv = summary["convergence"]
    assert conv["sizes"] == [3, 6, 12, 24, 48, 96] and conv["reference"] == 32 * 24


def test_image_demo_channel_first(tmp_path, capsys):
    import_or_fail("torch")
    out = tmp_path / "image"
    args = ["--demo", "image", "--n-explain", "30", "--out", str(out), *SMALL]
    args[args.index("--n-samples") + 1] = "16"
    assert main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    exp = Explanation.load(out / "explanation.npz")
    assert np.asarray(exp.values).shape == (30, 1, 8, 8) and exp.target.shape == (30,)
    # each row explains its predicted class, from that class's base value
    for c, base in summary["base_values"].items():
        np.testing.assert_allclose(exp.base_values[exp.target == int(c)], base, rtol=1e-6)
    labels = np.asarray(summary["labels"])
    np.testing.assert_array_equal(labels != "mistake", np.char.add("digit ", exp.target.astype(str)) == labels)
    _check_explanation(exp, summary)
    _check_groups(exp, labels, summary)
    expected = {"confusion", "class_means", "examples", "importance_map", "importance", "beeswarm", "waterfall",
                "base_value", "completeness", "convergence"}
    if summary["misclassified_explained"]:
        expected.add("mistakes")
    _check_report(out, expected)
    assert f"worst |delta| = {summary['max_abs_delta']:.3g}" in printed


def test_image_demo_jax_channel_last(capsys):
    import_or_fail("jax")
    args = ["--demo", "image", "--framework", "jax", "--n-explain", "12", "--no-report", *SMALL]
    args[args.index("--n-samples") + 1] = "8"
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "channel-last (N, 8, 8, 1)" in printed and "worst |delta| = " in printed and "report:" not in printed


def test_bad_options_are_refused(capsys):
    assert main(["--epochs", "0"]) == 2
    assert "--epochs must be a positive integer; got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["--framework", "mxnet"])
    assert stop.value.code == 2


def test_the_command_line_entry_point(tmp_path):
    import_or_fail("torch")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "gradshap.cli", "demo", "--no-report", "--epochs", "1", "--n-explain", "8",
           "--n-samples", "8", "--background", "8", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "gradshap demo: tabular, framework torch" in done.stdout and "worst |delta| = " in done.stdout
    assert not (tmp_path / "gradshap-report").exists()


def test_text_demo(tmp_path, capsys):
    import_or_fail("torch")
    out = tmp_path / "text"
    assert main(["--demo", "text", "--n-explain", "40", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    exp = Explanation.load(out / "explanation.npz")
    labels = np.asarray(summary["labels"])

    from gradshap._demo._text import MAX_LEN, VOCAB, load

    d = load(1)
    values, ids = np.asarray(exp.values), np.asarray(exp.data)
    assert values.shape == (40, MAX_LEN)
    np.testing.assert_array_equal(ids, d["ids_test"][:40])
    assert np.all(values[ids == 0] == 0.0)  # padding gets no attribution
    np.testing.assert_array_equal(np.isin(labels, ["TP", "FN"]), d["y_test"][:40] == 1)
    assert summary["counts"] == {g: int((labels == g).sum()) for g in ("TP", "TN", "FP", "FN")}
    _check_explanation(exp, summary)
    # the word table is the mean over each word's occurrences
    for item in summary["words"]:
        at = ids == VOCAB.index(item["word"])
        assert item["count"] == int(at.sum()) and item["mean"] == pytest.approx(values[at].mean(), rel=1e-6)
    assert f"test accuracy {summary['accuracy']:.3f}" in printed
    assert f"worst |delta| = {summary['max_abs_delta']:.3g}" in printed
    present = [g for g in ("TP", "TN", "FP", "FN") if summary["counts"][g]]
    _check_report(out, {"confusion", "completeness"} | {f"tokens_{g}" for g in present})
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('<div class="gradshap-text"') == len(present)


def test_text_demo_is_torch_only(capsys):
    assert main(["--demo", "text", "--framework", "jax", "--no-report"]) == 2
    assert "runs on PyTorch only" in capsys.readouterr().err
