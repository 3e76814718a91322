"""The package installs and runs the way the README says.

Fast checks: every install hint names an extra that holds the package; ``import gradshap``
imports no framework and no matplotlib, while ``gradshap.plots`` works after it; the
licence is the MIT licence the metadata declares; the docs do not copy the README.

Packaging checks (marker ``packaging``, run by CI, about a minute on an idle 2-core
machine, two on a loaded one): ``python -m build`` makes an sdist that carries the docs
and benchmarks, and a wheel that holds the package, ``py.typed`` and the metadata; a
fresh virtual environment (no system site-packages) installs the wheel with only the
extras the README names for the quickstart and the demo (``[torch,demo]``), then runs the
README's torch quickstart, every command ``gradshap --help`` advertises, and
``gradshap demo``.
"""

from __future__ import annotations

import ast
import email
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import venv
import zipfile

import pytest
from readme import ROOT, python_blocks

SRC = ROOT / "src" / "gradshap"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: Import names whose distribution on PyPI has another name.
DISTRIBUTIONS = {"sklearn": "scikit-learn"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def extra_packages(extra: str) -> set[str]:
    """The distributions ``pip install gradshap[extra]`` brings (self-references expanded)."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    if extra not in extras:
        return set()
    found = set()
    for requirement in extras[extra]:
        inner = re.fullmatch(r"gradshap\[(.*)\]", requirement.replace(" ", ""))
        if inner:
            for other in inner.group(1).split(","):
                found |= extra_packages(other)
        else:
            found.add(_name(requirement))
    return found


def install_hints() -> list[tuple[str, str, str]]:
    """``(where, module, extra)`` for every ``require(module[, extra])`` call in the package,
    the extra being the one its error message names."""
    from gradshap.backends import _EXTRAS

    hints = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require"):
                continue
            args = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if not args:
                continue
            module = args[0]
            extra = args[1] if len(args) > 1 else _EXTRAS.get(module.split(".")[0], module)
            hints.append((f"{path.relative_to(ROOT)}:{node.lineno}", module, extra))
    return hints


def test_every_install_hint_names_an_extra_that_holds_the_package():
    hints = install_hints()
    assert len(hints) > 20  # the scan finds the calls
    wrong = [
        f"{where}: require({module!r}) says gradshap[{extra}], which brings {sorted(extra_packages(extra))}"
        for where, module, extra in hints
        if DISTRIBUTIONS.get(module.split(".")[0], module.split(".")[0]) not in extra_packages(extra)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_default_hint_of_every_module_holds_it():
    from gradshap.backends import _EXTRAS

    for module, extra in _EXTRAS.items():
        assert DISTRIBUTIONS.get(module, module) in extra_packages(extra), (module, extra)


@pytest.mark.parametrize(("extra", "packages"), [
    ("jax", {"jax", "flax", "optax"}),  # the JAX demo and Flax NNX models
    ("demo", {"scikit-learn", "matplotlib", "tqdm"}),
    ("shap", {"shap"}),  # Explanation.to_shap()
    ("bench", {"captum", "shap", "matplotlib"}),
    ("docs", {"sphinx", "myst-nb", "furo"}),
])
def test_extras_deliver_what_their_names_say(extra, packages):
    assert packages <= extra_packages(extra), sorted(extra_packages(extra))


def test_the_missing_package_error_names_the_extra(monkeypatch):
    import gradshap.backends as backends

    monkeypatch.setitem(sys.modules, "shap", None)  # import shap now raises ImportError
    with pytest.raises(ImportError, match=re.escape("pip install gradshap[shap]")):
        backends.require("shap")


_FRESH_IMPORT = textwrap.dedent("""
    import sys
    import numpy as np
    import gradshap
    heavy = {"torch", "jax", "tensorflow", "keras", "flax", "equinox", "matplotlib", "shap", "captum", "sklearn"}
    loaded = sorted(heavy & {m.split(".")[0] for m in sys.modules})
    assert not loaded, f"import gradshap imported {loaded}"
    assert "plots" in dir(gradshap)
    import matplotlib
    matplotlib.use("Agg")
    f = lambda x: x @ np.array([1.0, -2.0, 0.5])
    grad = lambda x: np.broadcast_to(np.array([1.0, -2.0, 0.5]), x.shape)
    background = np.random.default_rng(0).normal(size=(20, 3))
    exp = gradshap.GradientExplainer((f, grad), background, framework="numpy")(background[:4], seed=0)
    ax = gradshap.plots.bar(exp)
    print(type(ax).__name__, len(ax.patches))
""")


def test_import_is_light_and_plots_load_on_first_use():
    pytest.importorskip("matplotlib")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", _FRESH_IMPORT], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    kind, patches = done.stdout.split()
    assert kind == "Axes" and int(patches) >= 3  # a bar per feature


def test_an_unknown_attribute_still_raises():
    import gradshap

    with pytest.raises(AttributeError, match="no attribute 'plotz'"):
        gradshap.plotz  # noqa: B018


def test_the_licence_is_the_mit_licence_declared():
    assert PYPROJECT["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    assert any(c.startswith("Programming Language :: Python :: 3") for c in PYPROJECT["project"]["classifiers"])
    assert (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").startswith("# Changelog")


def _paragraphs(text: str) -> set[str]:
    return {" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if len(" ".join(p.split())) > 160}


def test_no_docs_page_copies_a_readme_paragraph():
    readme = _paragraphs((ROOT / "README.md").read_text(encoding="utf-8"))
    copies = {path.name: sorted(_paragraphs(path.read_text(encoding="utf-8")) & readme)
              for path in sorted((ROOT / "docs").rglob("*.md")) if "_build" not in path.parts}
    assert not {k: v for k, v in copies.items() if v}, copies


# ------------------------------------------------------------------ built and installed

@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return wheel, sdist


@pytest.mark.packaging
def test_the_wheel_holds_the_package_py_typed_and_metadata(dist):
    wheel, _ = dist
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(meta_name))
    modules = {str(p.relative_to(SRC.parent)).replace(os.sep, "/") for p in SRC.rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "gradshap/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("Classifier")
    assert set(meta.get_all("Provides-Extra")) >= {"torch", "jax", "tensorflow", "keras", "plots", "demo", "shap", "bench"}
    assert "gradshap = gradshap.cli:main" in zipfile.ZipFile(wheel).read(
        meta_name.replace("METADATA", "entry_points.txt")).decode()


@pytest.mark.packaging
def test_the_sdist_carries_the_docs_and_benchmarks_the_readme_links(dist):
    _, sdist = dist
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    linked = set(re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)\)", (ROOT / "README.md").read_text(encoding="utf-8")))
    missing = [link for link in linked
               if not any(n == link.rstrip("/") or n.startswith(link.rstrip("/") + "/") for n in names)]
    assert linked and not missing, missing
    expected = {"LICENSE", "CHANGELOG.md", "benchmarks/bench.py", "benchmarks/RESULTS.md", "docs/conf.py",
                *(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))}
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith("docs/_build/") for n in names)


@pytest.fixture(scope="module")
def fresh_venv(dist, tmp_path_factory):
    """A new virtual environment with the wheel and ``[torch,demo]`` installed (pip takes
    torch 2.13.0 from the local wheel folder; the pins keep every version CI's)."""
    wheel, _ = dist
    where = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(where)
    python = where / "bin" / "python"
    cmd = [str(python), "-m", "pip", "install", "-q", "--no-compile", "-c", str(ROOT / "backends" / "constraints.txt"),
           "-c", str(ROOT / "backends" / "torch.txt"), f"{wheel}[torch,demo]"]
    done = _run(cmd, cwd=where, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return where


def _run(args, cwd, timeout=300):
    """``args`` as a user runs them: without this checkout on PYTHONPATH (pip would take its
    ``src/gradshap.egg-info`` as gradshap already installed) and with JAX at its defaults."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAX_ENABLE_X64")}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.packaging
def test_a_fresh_venv_runs_the_torch_quickstart(fresh_venv, tmp_path):
    (quickstart,) = [b for b in python_blocks() if b.needs == ("torch",)][:1]
    code = quickstart.code + "\nimport gradshap as g; print(g.__file__)\n"
    done = _run([str(fresh_venv / "bin" / "python"), "-c", code], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith(str(fresh_venv))  # the installed wheel, not this checkout


@pytest.mark.packaging
def test_every_advertised_command_runs_from_the_wheel(fresh_venv, tmp_path):
    gradshap = str(fresh_venv / "bin" / "gradshap")
    usage = _run([gradshap, "--help"], cwd=tmp_path)
    assert usage.returncode == 0
    commands = re.findall(r"^  (\w+) ", usage.stdout, re.M)
    assert "demo" in commands
    for command in commands:
        done = _run([gradshap, command, "--help"], cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr[-2000:])


@pytest.mark.packaging
def test_gradshap_demo_runs_from_the_wheel(fresh_venv, tmp_path):
    args = [str(fresh_venv / "bin" / "gradshap"), "demo", "--epochs", "2", "--n-explain", "20",
            "--n-samples", "32", "--out", str(tmp_path / "report"), "--no-progress"]
    done = _run(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TP" in done.stdout and (tmp_path / "report" / "index.html").is_file()
