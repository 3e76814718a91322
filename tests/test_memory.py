"""Memory: only the results grow with the rows (the README's promise), measured as the peak
resident memory of fresh processes, so that what one test leaves behind cannot blur another."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import gradshap
from conftest import import_or_fail

# One call on ``n`` rows after a warm-up call that compiles every chunk shape; prints the
# growth of the process's peak resident memory (VmHWM) over the call, and the results' size.
_PEAK_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np, gradshap

def peak_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

n, features = int(sys.argv[1]), 64
w = jnp.asarray(np.random.default_rng(0).normal(size=(features, 2)), jnp.float32)
x = jax.random.normal(jax.random.key(0), (n, features), jnp.float32)
explainer = gradshap.GradientExplainer(lambda p: jnp.tanh(p @ w), x[:50], batch_size=2048)
explainer(x[:8192], target=0, n_samples=8, seed=0)
before = peak_mib()
e = explainer(x, target=0, n_samples=8, seed=0)
e.values.block_until_ready()
print(json.dumps({"growth": peak_mib() - before, "result": (e.values.nbytes + e.stderr.nbytes) / 2**20}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak memory from /proc (Linux)")
def test_jax_peak_memory_grows_with_the_rows_as_the_results_do():
    """16k and 80k rows of 64 features (8 samples, 256 rows a chunk: results of 32 KiB a
    chunk, 8 and 40 MiB in all), each in its own process. The peak grew 2.5x as fast as
    the results when the chunks' results were kept as small arrays and then joined, and
    the finish step returned copies of the joined values and variances (4x on a 30-feature
    MLP at 512 rows a chunk); written into host arrays the results then share, 1.0x."""
    import_or_fail("jax")
    # One malloc arena: without it glibc gives each of XLA's threads its own, and a call's peak
    # takes a random jump of 10-18 MiB when one of them grows (the same at any row count).
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MALLOC_ARENA_MAX": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(gradshap.__path__[0]), os.environ.get("PYTHONPATH", "")])}
    runs = {n: subprocess.Popen([sys.executable, "-c", _PEAK_SCRIPT, str(n)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for n in (16384, 81920)}
    seen = {}
    for n, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        seen[n] = json.loads(out.strip().splitlines()[-1])
    small, large = seen[16384], seen[81920]
    assert large["result"] - small["result"] == pytest.approx(32.0)
    slope = (large["growth"] - small["growth"]) / (large["result"] - small["result"])
    assert slope <= 1.5, f"peak memory grew {slope:.2f}x as fast as the results: {seen}"
