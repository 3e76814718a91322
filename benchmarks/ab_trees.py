"""Time two gradshap trees against each other in one process, calls interleaved.

Separate bench runs of the same code differ by 10-20% on a shared 2-core machine (their
floors too); calls of both trees alternated in one process see the same load. The old
tree's package is copied to a scratch folder as ``gradshap_old`` (its imports rewritten),
so that both import side by side; the new one is the ``gradshap`` on the path.

    python benchmarks/ab_trees.py --old ../old/src --framework torch --workload cnn [--reps 8]

``--framework tensorflow`` explains the Keras-built model (TensorFlow backend) as a plain
function of tensors, as bench's TensorFlow group does; ``keras`` uses ``KERAS_BACKEND``.

Prints the median time of each tree, their ratio, each tree's first call, and the largest
relative difference of their values (the same numbers to rounding, for the same seed).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads  # noqa: E402


def import_renamed(src: Path):
    """``src/gradshap`` imported as ``gradshap_old`` from a scratch copy."""
    where = Path(tempfile.mkdtemp(prefix="gradshap_old_"))
    shutil.copytree(src / "gradshap", where / "gradshap_old")
    for path in (where / "gradshap_old").rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\b(from|import) gradshap(\.|\b)", r"\1 gradshap_old\2", text)
        path.write_text(text.replace('"gradshap.backends.', '"gradshap_old.backends.'))
    sys.path.insert(0, str(where))
    import gradshap_old

    return gradshap_old


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, type=Path, help="the old tree's src folder")
    parser.add_argument("--framework", default="torch", choices=["torch", "jax", "tensorflow", "keras"])
    parser.add_argument("--workload", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--n-samples", type=int, default=200)
    args = parser.parse_args(argv)
    if args.framework == "tensorflow":
        os.environ["KERAS_BACKEND"] = "tensorflow"  # before Keras is imported
    old = import_renamed(args.old)
    import gradshap

    wl = workloads.get(args.workload)
    x, bg = wl.data(wl.n_rows)
    # TensorFlow: the Keras-built model (TF backend) as a plain function of tensors, as bench's group.
    model = wl.build("keras" if args.framework == "tensorflow" else args.framework)
    framework = None
    if args.framework == "tensorflow":
        keras_model, framework = model, "tensorflow"
        model = lambda a: keras_model(a, training=False)  # noqa: E731
    if args.framework == "torch":
        import torch

        x, bg = torch.tensor(x), torch.tensor(bg)
    elif args.framework == "jax":
        import jax.numpy as jnp

        x, bg = jnp.asarray(x), jnp.asarray(bg)
    else:
        import keras

        x, bg = (keras.ops.convert_to_tensor(workloads.to_layout(a, "NHWC")) for a in (x, bg))
    explainers = {"old": old.GradientExplainer(model, bg, framework=framework),
                  "new": gradshap.GradientExplainer(model, bg, framework=framework)}

    def call(name):
        exp = explainers[name](x, target=wl.target, n_samples=args.n_samples, seed=0)
        values = exp.to_numpy().values
        return np.asarray(values)

    first, results, times = {}, {}, {"old": [], "new": []}
    for name in explainers:
        t = time.perf_counter()
        results[name] = call(name)
        first[name] = time.perf_counter() - t
    for _ in range(args.reps):
        for name in explainers:
            t = time.perf_counter()
            call(name)
            times[name].append(time.perf_counter() - t)
    old_ms, new_ms = (1e3 * float(np.median(times[k])) for k in ("old", "new"))
    diff = float(np.max(np.abs(results["new"] - results["old"])) / np.max(np.abs(results["old"])))
    print(f"{args.framework} {args.workload}: old {old_ms:.1f} ms, new {new_ms:.1f} ms, new/old {new_ms / old_ms:.2f}; "
          f"first call old {first['old']:.2f} s, new {first['new']:.2f} s; values differ by {diff:.1e} (relative)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
