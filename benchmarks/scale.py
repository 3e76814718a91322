"""Scaling out: rows per second on Ray Data with 1 and 2 workers, and JAX on 1 and 4 devices.

- Ray: the bench's ``cnn`` workload (torch, 1x28x28 images, 64 background images, target
  class 3) explained by :func:`gradshap.distributed.explain_ray_dataset` on a local
  cluster of 2 CPUs, with a pool of 1 and then 2 actors of one CPU and one torch thread
  each. Each setting runs the whole job (actor start included) ``--repeats`` times; the
  best time counts. Scaling efficiency = (rows/s with 2) / (2 x rows/s with 1).
- JAX: the same workload in a subprocess per device count (``XLA_FLAGS=
  --xla_force_host_platform_device_count=N``, N = 1 and 4): one call over every row after
  a warm-up call, best of ``--repeats``. The 4 virtual devices share the machine's cores,
  so this measures the overhead of spreading a call, not a speed-up; on a host with 4
  real devices the points' VJP (nearly all of the work) is split four ways.

Every worker's values are compared with one call in the parent (they must agree to 1e-9
relative): a timing of wrong numbers does not count.

    python benchmarks/scale.py [--rows 256] [--n-samples 200] [--repeats 3] [--out DIR]

Writes ``scale.json`` (every reading) into ``--out`` when given, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import workloads  # noqa: E402

import gradshap  # noqa: E402
from gradshap.distributed import explain_ray_dataset, from_records  # noqa: E402


def _build():
    """What each Ray actor runs once: one torch thread, the CNN and its explainer."""
    import torch

    torch.set_num_threads(1)
    load = workloads.get("cnn")
    _, bg = load.data(1)
    return gradshap.GradientExplainer(load.build("torch"), torch.from_numpy(bg), batch_size=1024)


def _to_torch(a):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def ray_rows_per_second(x: np.ndarray, n_samples: int, repeats: int) -> dict:
    import ray

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(HERE), os.path.dirname(gradshap.__path__[0])])}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    target = workloads.get("cnn").target
    reference = _build()(_to_torch(x), target=target, n_samples=n_samples, seed=11).to_numpy()
    out = {}
    try:
        for workers in (1, 2):
            times = []
            for _ in range(repeats):
                ds = ray.data.from_items([{"row_id": i, "x": x[i]} for i in range(len(x))], override_num_blocks=8)
                start = time.perf_counter()
                records = explain_ray_dataset(ds, _build, convert=_to_torch, concurrency=workers, num_cpus=1,
                                              batch_size=len(x) // 8, target=target, n_samples=n_samples,
                                              seed=11).materialize()
                times.append(time.perf_counter() - start)
                exp = from_records(records)
                err = np.max(np.abs(exp.values - reference.values)) / np.max(np.abs(reference.values))
                assert err <= 1e-5, f"Ray with {workers} worker(s) differs from one call by {err:.2e}"  # float32
            out[workers] = {"seconds": times, "rows_per_second": len(x) / min(times)}
    finally:
        ray.shutdown()
    out["efficiency"] = out[2]["rows_per_second"] / (2 * out[1]["rows_per_second"])
    return out


_JAX_SCRIPT = """
import json, sys, time
import jax, numpy as np, gradshap
sys.path.insert(0, sys.argv[1])
import workloads
load = workloads.get("cnn")
x, bg = load.data(int(sys.argv[2]))
explainer = gradshap.GradientExplainer(load.build("jax"), jax.numpy.asarray(bg))
xs = jax.numpy.asarray(x)
explainer(xs, target=load.target, n_samples=int(sys.argv[3]), seed=11)
times = []
for _ in range(int(sys.argv[4])):
    start = time.perf_counter()
    exp = explainer(xs, target=load.target, n_samples=int(sys.argv[3]), seed=11)
    np.asarray(exp.values)
    times.append(time.perf_counter() - start)
print(json.dumps({"devices": len(jax.devices()), "seconds": times, "values": np.asarray(exp.values).ravel().tolist()}))
"""


def jax_devices(rows: int, n_samples: int, repeats: int) -> dict:
    out = {}
    for count in (1, 4):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}
        run = subprocess.run([sys.executable, "-c", _JAX_SCRIPT, str(HERE), str(rows), str(n_samples), str(repeats)],
                             env=env, capture_output=True, text=True, check=True)
        out[count] = json.loads(run.stdout.strip().splitlines()[-1])
        assert out[count]["devices"] == count
    a, b = np.asarray(out[1].pop("values")), np.asarray(out[4].pop("values"))
    err = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
    assert err <= 1e-5, f"JAX on 4 devices differs from 1 device by {err:.2e}"
    out["ratio_4_to_1"] = min(out[4]["seconds"]) / min(out[1]["seconds"])
    out["max_relative_difference"] = err
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--n-samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    x, _ = workloads.get("cnn").data(args.rows)
    result = {"rows": args.rows, "n_samples": args.n_samples, "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "ray": ray_rows_per_second(x, args.n_samples, args.repeats),
              "jax": jax_devices(args.rows, args.n_samples, args.repeats)}
    ray_, jax_ = result["ray"], result["jax"]
    print(f"cnn, {args.rows} rows x {args.n_samples} samples, {result['cpus']} CPUs, "
          f"load average {result['load_average'][0]:.1f}")
    print(f"Ray, 1 worker : {ray_[1]['rows_per_second']:.2f} rows/s (best of {args.repeats})")
    print(f"Ray, 2 workers: {ray_[2]['rows_per_second']:.2f} rows/s; scaling efficiency {ray_['efficiency']:.2f}")
    print(f"JAX, 4 virtual devices / 1 device: {jax_['ratio_4_to_1']:.2f}x the time "
          f"(values agree to {jax_['max_relative_difference']:.1e})")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scale.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
