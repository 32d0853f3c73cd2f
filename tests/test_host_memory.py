"""Freed host memory stays mapped on CPU-only runs: a repeated XLA:CPU call stops faulting its buffers in."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from xalign_jax import host_memory

# Three calls of a jitted function with a 128 MB temporary (a product's output, fed to another product), like a train
# step's; the minor page faults of the last call.
PROBE = """
import json, resource, sys
from xalign_jax import host_memory
applied = host_memory.keep_freed_memory_mapped() if sys.argv[1] == "keep" else False
import jax, jax.numpy as jnp
a, b, c = jnp.ones((8192, 16), jnp.float32), jnp.ones((16, 4096), jnp.float32), jnp.ones((4096, 1), jnp.float32)
step = jax.jit(lambda a, b: jnp.tanh(a @ b) @ c)
for _ in range(2):
    jax.block_until_ready(step(a, b))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
jax.block_until_ready(step(a, b))
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str) -> dict:
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_not_faulted_in_again():
    """Without the setting every call faults its 128 MB temporary in again (32,768 pages of 4 KB); with it, the
    pages the previous call freed are reused."""
    default, kept = _probe("default"), _probe("keep")
    assert kept["applied"] and not default["applied"]
    assert default["faults"] > 30_000
    assert kept["faults"] < default["faults"] / 10


@pytest.mark.parametrize("platforms, cpu_only", [("cpu", True), ("cuda", False), ("cpu,cuda", False), ("tpu", False)])
def test_only_cpu_only_runs_change_the_allocator(monkeypatch, platforms, cpu_only):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert host_memory.runs_on_cpu_only() is cpu_only
    if not cpu_only:
        assert host_memory.keep_freed_memory_mapped() is False
