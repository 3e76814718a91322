"""Check that two gradshap source trees give the same numbers.

Runs the public API of both trees on small fixed models in every framework: numpy (an
analytic ``(f, grad_f)`` pair), torch, jax, tensorflow, and Keras on each of its three
backends, and compares every result field by field.

- ``GradientExplainer(model, background, batch_size=B)(x, target=T, n_samples=N,
  sampler=S, seed=3)`` for every sampler, N in (8, 12, 30, 50) (exhaustive: N >= 12,
  the background's rows), target 1 and [0, 2], batch_size None and 16. JAX, TensorFlow
  and Keras on those two compile per shape, so they run N in (8, 30) and target 1 at
  batch_size None, [0, 2] at 16. Plus smoothing (``stdevs=0.1``) and adaptive mode
  (``rtol=0.05, max_samples=32``);
- ``IntegratedGradients(model, baseline)(x, n_steps=M, method=meth)`` for every method,
  M in (1, 4, 7), with no baseline, one shared baseline row and one baseline per row;
- fewer of both on a two-input version of the model (``x = (x1, x2)``) and, for torch
  and JAX, on a small conv net over (1, 6, 6) inputs.

The model is a tanh/softplus MLP 6 -> 16 -> 3 with the same NumPy weights everywhere,
float64 (Keras: float32), with a background of 12 rows and x of 7. Each (tree, framework)
runs in its own worker process with ``PYTHONPATH=<src>`` first (the worker checks
``gradshap.__file__``), two workers at a time. It makes one explainer per model and
batch_size (IntegratedGradients: per baseline) and calls it for each case, as a user
would (compiled frameworks compile once per explainer and shape). It saves values,
stderr, base_values, output, delta and n_samples of every case as float64 in an .npz, or
the exception's type and message where the call raised.

The parent compares the old tree's results with the new one's: per field,
``max|new - old| / max(max|old|, 1e-30)`` must be at most 1e-9 (float64) or 2e-5 (Keras,
float32). delta, a residual far smaller than the outputs it is the difference of, is
measured on the scale of output and base_values. Where one tree raises, the other must
raise the same exception type.

    python benchmarks/same_numbers.py --old /work/old/src --new src [--out DIR]
        [--frameworks numpy,torch,...] [--jobs 2] [--timeout 900]

A tree up to a753be7 has its kept-draws cache emptied before each call (see the worker):
with it, Integrated Gradients with per-row baselines differ, and the old numbers are the
wrong ones (their completeness residual is large).

Exit status 0 when every case matches; 1 when any case differs, raised in one tree only
or is missing from one, or when a worker crashed or produced no cases.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

FRAMEWORKS = ("numpy", "torch", "jax", "tensorflow", "keras-tensorflow", "keras-jax", "keras-torch")
FIELDS = ("values", "stderr", "base_values", "output", "delta", "n_samples")
SAMPLERS = ("auto", "iid", "balanced", "lattice", "sobol", "exhaustive")
METHODS = ("gausslegendre", "midpoint", "trapezoid", "left", "right")
N_BACKGROUND, N_ROWS = 12, 7
COMPILED = ("jax", "tensorflow", "keras-tensorflow", "keras-jax")  # these run a smaller grid of n_samples


# ----------------------------------------------------------------------------- worker
def weights():
    rng = np.random.default_rng(0)
    mlp = dict(w1=rng.normal(size=(6, 16)) / 6**0.5, b1=rng.normal(size=16) * 0.1,
               w2=rng.normal(size=(16, 3)) / 4.0, b2=rng.normal(size=3) * 0.1)
    cnn = dict(k=rng.normal(size=(4, 1, 3, 3)) / 3.0, c=rng.normal(size=4) * 0.1,
               w=rng.normal(size=(64, 3)) / 8.0, b=rng.normal(size=3) * 0.1)
    return mlp, cnn


def data(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N_BACKGROUND, *shape)), rng.normal(size=(N_ROWS, *shape))


def build(fw):
    """name -> (model, to_framework, background, x) with NumPy data; and the explainers' kwargs."""
    m, c = weights()
    split = lambda a: (a[:, :4], a[:, 4:])  # noqa: E731  the two-input model's inputs
    bg, x = data((6,), 1)
    models = {}
    if fw == "numpy":
        def mlp(a):
            return np.logaddexp(0.0, np.tanh(a @ m["w1"] + m["b1"]) @ m["w2"] + m["b2"])

        def jac(a):  # (rows, 3, 6)
            h = np.tanh(a @ m["w1"] + m["b1"])
            sig = 1.0 / (1.0 + np.exp(-(h @ m["w2"] + m["b2"])))
            return sig[:, :, None] * np.einsum("mj,jk,ij->mki", 1.0 - h**2, m["w2"], m["w1"])

        conv = lambda a: a  # noqa: E731
        def two_jac(a, b):  # one Jacobian (rows, 3, features) per input
            j = jac(np.concatenate([a, b], 1))
            return j[..., :4], j[..., 4:]

        models.update(mlp=((mlp, jac), conv), two=((lambda a, b: mlp(np.concatenate([a, b], 1)), two_jac), conv))
    elif fw == "torch":
        import torch

        t = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
        net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3), torch.nn.Softplus())
        cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(64, 3),
                                  torch.nn.Softplus())
        with torch.no_grad():
            for layer, w, b in ((net[0], m["w1"].T, m["b1"]), (net[2], m["w2"].T, m["b2"]),
                                (cnn[0], c["k"], c["c"]), (cnn[3], c["w"].T, c["b"])):
                layer.weight.copy_(t(w)), layer.bias.copy_(t(b))

        class Two(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, a, b):
                return self.net(torch.cat([a, b], 1))

        models.update(mlp=(net.double(), t), two=(Two().double(), t), cnn=(cnn.double(), t))
    elif fw == "jax":
        import jax
        import jax.numpy as jnp

        mlp = lambda a: jax.nn.softplus(jnp.tanh(a @ m["w1"] + m["b1"]) @ m["w2"] + m["b2"])  # noqa: E731

        def cnn(a):
            h = jax.lax.conv_general_dilated(a, c["k"], (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
            h = jnp.tanh(h + c["c"][None, :, None, None])
            return jax.nn.softplus(h.reshape(h.shape[0], -1) @ c["w"] + c["b"])

        models.update(mlp=(mlp, jnp.asarray), two=(lambda a, b: mlp(jnp.concatenate([a, b], 1)), jnp.asarray),
                      cnn=(cnn, jnp.asarray))
    elif fw == "tensorflow":
        import tensorflow as tf

        class MLP(tf.Module):
            def __init__(self):
                super().__init__()
                self.v = {k: tf.Variable(v, dtype=tf.float64) for k, v in m.items()}

            def __call__(self, a, b=None):
                a = a if b is None else tf.concat([a, b], 1)
                return tf.nn.softplus(tf.tanh(a @ self.v["w1"] + self.v["b1"]) @ self.v["w2"] + self.v["b2"])

        t = lambda a: tf.constant(a, tf.float64)  # noqa: E731
        models.update(mlp=(MLP(), t), two=(MLP(), t))
    else:  # keras-<backend>; the backend is set by KERAS_BACKEND in the worker's environment
        import keras

        def dense(h):
            h = keras.layers.Dense(16, activation="tanh")(h)
            return keras.layers.Dense(3, activation="softplus")(h)

        i = keras.Input((6,))
        net = keras.Model(i, dense(i))
        i1, i2 = keras.Input((4,)), keras.Input((2,))
        two = keras.Model([i1, i2], dense(keras.layers.Concatenate()([i1, i2])))
        for model in (net, two):
            model.set_weights([m["w1"], m["b1"], m["w2"], m["b2"]])
        f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
        models.update(mlp=(net, f32), two=(two, f32))
    out = {"mlp": (*models["mlp"], bg, x), "two": (*models["two"], split(bg), split(x))}
    if "cnn" in models:
        out["cnn"] = (*models["cnn"], *data((1, 6, 6), 2))
    return out, ({"framework": "numpy"} if fw == "numpy" else {})


def case_list(fw, models):
    """(name, kind, model, batch_size, kwargs) of every case, in a fixed order."""
    cases = []

    def add(kind, model, batch=None, **kw):
        args = " ".join(f"{k}={v}" for k, v in kw.items())
        cases.append((f"{model} {kind} {args} batch={batch}", kind, model, batch, kw))

    # Compiled frameworks compile once per explainer and chunk shape (0.1-0.5 s each): they
    # run fewer n_samples, and target 1 at batch_size None, [0, 2] at 16 (not all four pairs).
    compiled = fw in COMPILED
    pairs = [(1, None), ([0, 2], 16)] if compiled else [(t, b) for t in (1, [0, 2]) for b in (None, 16)]
    for s in SAMPLERS:
        for n in (8, 30) if compiled else (8, 12, 30, 50):
            for target, batch in pairs:
                if not (s == "exhaustive" and n < N_BACKGROUND):  # exhaustive needs n >= background rows
                    add("GE", "mlp", batch, sampler=s, n_samples=n, target=target)
    for s in ("iid", "lattice", "sobol"):
        for target in (1, [0, 2]):
            add("GE", "mlp", None, sampler=s, n_samples=12, target=target, stdevs=0.1)
    for s in ("auto", "iid"):
        for target in (1, [0, 2]):
            add("GE", "mlp", None, sampler=s, n_samples=8, target=target, rtol=0.05, max_samples=32)
    for meth in METHODS:
        for steps in (1, 4, 7):
            for base in ("none", "shared", "per-row"):
                add("IG", "mlp", None, method=meth, n_steps=steps, baseline=base, target=[0, 2] if steps == 4 else 1)
    for other in [k for k in ("two", "cnn") if k in models]:
        for s in SAMPLERS:
            add("GE", other, None, sampler=s, n_samples=24, target=1)
        add("GE", other, None, sampler="auto", n_samples=12, target=[0, 2], stdevs=0.1)
        add("GE", other, None, sampler="iid", n_samples=8, target=1, rtol=0.05, max_samples=32)
        for meth in ("gausslegendre", "trapezoid"):
            for base in ("none", "per-row"):
                add("IG", other, None, method=meth, n_steps=4, baseline=base, target=[0, 2])
    return cases


def run_case(gradshap, models, fwkw, kind, key, batch, kw, explainers):
    """One call of the public API. Explainers are reused across cases, as a user would (and
    as compiled frameworks need: JAX and TensorFlow compile once per explainer and shape)."""
    model, conv, bg, x = models[key]
    many = isinstance(x, tuple)
    to = lambda a: tuple(conv(v) for v in a) if many else conv(a)  # noqa: E731
    rows = lambda a, s: tuple(v[s] for v in a) if many else a[s]  # noqa: E731
    if kind == "GE":
        if (key, batch) not in explainers:
            explainers[key, batch] = gradshap.GradientExplainer(model, to(bg), batch_size=batch, **fwkw)
        return explainers[key, batch](to(x), seed=3, **kw)
    kw = dict(kw)
    base = kw.pop("baseline")
    if (key, batch, base) not in explainers:
        b = {"none": None, "shared": lambda: to(rows(bg, 0)), "per-row": lambda: to(rows(bg, slice(0, N_ROWS)))}[base]
        explainers[key, batch, base] = gradshap.IntegratedGradients(model, b and b(), batch_size=batch, **fwkw)
    return explainers[key, batch, base](to(x), **kw)


def worker(fw, src, npz):
    import warnings

    warnings.simplefilter("ignore")
    import gradshap

    where = Path(gradshap.__file__).resolve()
    if Path(src).resolve() not in where.parents:
        sys.exit(f"gradshap was imported from {where}, not from {src}")
    models, fwkw = build(fw)
    saved, n_raised, explainers, cases = {}, 0, {}, case_list(fw, models)
    for name, kind, key, batch, kw in cases:
        # a753be7 and earlier kept their last draws in a module-level cache keyed on some
        # of the design's fields only: an Integrated Gradients call with one baseline per
        # row after one with a shared baseline got the shared one's draws (wrong values,
        # seen in delta). Emptied before each call, so that those cases compare the
        # method, not that bug.
        getattr(getattr(gradshap, "_engine", None), "_KEPT_DRAWS", {}).clear()
        try:
            exp = run_case(gradshap, models, fwkw, kind, key, batch, kw, explainers)
        except Exception as e:  # noqa: BLE001  recorded: the other tree must raise the same kind
            saved[f"{name}|error"] = np.array(f"{type(e).__name__}: {e}")
            n_raised += 1
            continue
        exp = exp.to_numpy() if hasattr(exp, "to_numpy") else exp
        for field in FIELDS:
            v = getattr(exp, field, None)
            for k, a in (enumerate(v) if isinstance(v, tuple) else [("", v)]):
                if a is not None:
                    saved[f"{name}|{field}{k}"] = np.asarray(a, dtype=np.float64)
    np.savez(npz, **saved)
    print(json.dumps({"file": str(where), "cases": len(cases), "raised": n_raised, "cpu": time.process_time()}))


# ----------------------------------------------------------------------------- parent
def launch(fw, src, npz, timeout):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
               JAX_ENABLE_X64="1", TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")
    if fw.startswith("keras-"):
        env["KERAS_BACKEND"] = fw.split("-", 1)[1]
    start = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, __file__, "--worker", fw, "--src", src, "--npz", str(npz)],
                           env=env, capture_output=True, text=True, cwd=npz.parent, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"worker {fw} on {src} ran past {timeout} s"
    info = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip() else None
    if info is None or not info["cases"] or not npz.exists():
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-8:])
        return None, f"worker {fw} on {src} failed (exit {p.returncode}):\n{tail}"
    info["wall"] = time.perf_counter() - start
    return info, None


def load(npz):
    """case -> {field: array} or {"error": "Type: message"}."""
    out = {}
    with np.load(npz) as f:
        for key in f.files:
            case, field = key.rsplit("|", 1)
            out.setdefault(case, {})[field] = f[key]
    return out


def largest(*arrays):
    return max(np.abs(a[np.isfinite(a)]).max(initial=0.0) for a in arrays)


def rel_err(old, new, scale):
    """max|new - old| / max(scale, 1e-30); equal infinities and NaNs in both count as equal."""
    if old.shape != new.shape:
        return np.inf
    differ = ~((old == new) | (np.isnan(old) & np.isnan(new)))
    if not differ.any():
        return 0.0
    a, b = old[differ], new[differ]
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return np.inf
    return float(np.abs(b - a).max() / max(scale, 1e-30))


def compare(old, new, tol):
    """(worst field, worst error, failure messages) over every case of one framework."""
    worst, failures = ("-", 0.0), []
    for case in sorted(old.keys() | new.keys()):
        a, b = old.get(case), new.get(case)
        if a is None or b is None:
            failures.append(f"{case}: missing in the {'old' if a is None else 'new'} tree")
            continue
        if "error" in a or "error" in b:
            ea, eb = (str(d["error"]) if "error" in d else "no error" for d in (a, b))
            if ea.split(":")[0] != eb.split(":")[0]:
                failures.append(f"{case}: old -> {ea[:120]} | new -> {eb[:120]}")
            continue
        if a.keys() != b.keys():
            failures.append(f"{case}: fields differ, old {sorted(a)} new {sorted(b)}")
        for field in sorted(a.keys() & b.keys()):
            # delta is a residual, sum(values) - (output - base_values), often far smaller than
            # either: its rounding is that of output and base_values, so it is measured on their scale.
            scale = largest(*(a[k] for k in ("delta", "output", "base_values") if k in a)) if field == "delta" \
                else largest(a[field])
            err = rel_err(a[field], b[field], scale)
            if err > worst[1]:
                worst = (field, err)
            if err > tol:
                failures.append(f"{case}: {field} rel. error {err:.3g}"
                                + (f" (shapes {a[field].shape} vs {b[field].shape})" if err == np.inf else ""))
    return worst, failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", help="src folder of the reference tree (holds gradshap/)")
    ap.add_argument("--new", help="src folder of the tree under test")
    ap.add_argument("--out", help="folder for the .npz files (default: a new temporary folder)")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated, of " + ", ".join(FRAMEWORKS))
    ap.add_argument("--jobs", type=int, default=2, help="workers run at once")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a worker may run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--npz", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.src, args.npz)
    if not (args.old and args.new):
        ap.error("--old and --new are required")
    frameworks = [f for f in args.frameworks.split(",") if f]
    if unknown := set(frameworks) - set(FRAMEWORKS):
        ap.error(f"unknown frameworks {sorted(unknown)}")
    out = Path(args.out or tempfile.mkdtemp(prefix="same_numbers_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    trees = {"old": str(Path(args.old).resolve()), "new": str(Path(args.new).resolve())}
    jobs = [(fw, tree) for fw in frameworks for tree in trees]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:  # old and new of one framework side by side
        run = lambda job: launch(job[0], trees[job[1]], out / f"{job[0]}.{job[1]}.npz", args.timeout)  # noqa: E731
        results = dict(zip(jobs, pool.map(run, jobs)))
    for tree, src in trees.items():
        files = {r[0]["file"] for (_, t), r in results.items() if t == tree and r[0]}
        print(f"{tree}: {src}  (gradshap imported from {', '.join(sorted(files)) or 'nowhere'})")
    print(f"npz: {out}\n")
    print(f"{'framework':<17} {'cases':>5} {'raised':>6}  {'worst field':<12} {'worst error':>11} {'failures':>8}"
          "  wall s old/new  cpu s old/new")
    bad, crashed = [], []
    for fw in frameworks:
        (io, eo), (inew, en) = results[(fw, "old")], results[(fw, "new")]
        if eo or en:
            crashed += [e for e in (eo, en) if e]
            print(f"{fw:<17} {'worker crashed':>40}")
            continue
        tol = 2e-5 if fw.startswith("keras") else 1e-9
        old, new = load(out / f"{fw}.old.npz"), load(out / f"{fw}.new.npz")
        (field, err), failures = compare(old, new, tol)
        raised = sum("error" in d for d in old.values())
        failed = len({msg.split(": ")[0] for msg in failures})
        print(f"{fw:<17} {len(old):>5} {raised:>6}  {field:<12} {err:>11.3g} {failed:>8}"
              f"  {io['wall']:>6.0f}/{inew['wall']:<6.0f}  {io['cpu']:>5.0f}/{inew['cpu']:<5.0f}")
        bad += [f"[{fw}] {msg}" for msg in failures]
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    for msg in crashed:
        print("\n" + msg)
    if bad:
        print(f"\n{len(bad)} failure(s), by case and field:")
        print("\n".join("  " + msg for msg in bad[:200]) + ("\n  ..." if len(bad) > 200 else ""))
    ok = not bad and not crashed
    print("\nSAME NUMBERS" if ok else "\nDIFFERENT (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
