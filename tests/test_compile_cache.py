"""The persistent compilation cache: a second process loads what the first compiled, and computes the same.

Enabling the cache changes process-wide jax state, so each run is a fresh interpreter. The train step's use of it
(a resumed run loading the step that another run compiled) is checked in ``test_multiprocess.py``.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from xalign_jax import compile_cache

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

_PROGRAM = """
import json, sys
import jax, jax.numpy as jnp, ml_collections
from xalign_jax import compile_cache
cache_cfg = ml_collections.ConfigDict({"dir": sys.argv[1], "min_compile_seconds": 0.0})
directory = compile_cache.enable(cache_cfg)
assert compile_cache.enable(cache_cfg) == directory      # a second call changes nothing, counts nothing twice
x = jnp.arange(64.0).reshape(8, 8)
compiled = jax.jit(lambda a: jnp.tanh(a @ a.T).sum(axis=0)).lower(x).compile()
print(json.dumps({"directory": directory, "out": compiled(x).tolist(), **compile_cache.stats()}))
"""


def _run(cache_dir: str, cache_root: pathlib.Path) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XALIGN_CACHE=str(cache_root))
    done = subprocess.run([sys.executable, "-c", _PROGRAM, cache_dir], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_second_process_loads_the_first_ones_executable(tmp_path):
    first, second = _run("auto", tmp_path), _run("auto", tmp_path)
    assert first["loaded"] == 0 and first["written"] >= 1        # the program, and arange's and reshape's
    assert (second["loaded"], second["written"]) == (first["written"], 0)
    assert second["out"] == first["out"]
    directory = pathlib.Path(first["directory"])    # auto: under $XALIGN_CACHE, per host and process count
    assert directory == tmp_path / "xla" / f"{compile_cache.host_fingerprint()}-1proc"
    assert len([p for p in directory.iterdir() if p.name.startswith("jit_")]) == first["written"]


def test_an_empty_directory_turns_the_cache_off(tmp_path):
    run = _run("", tmp_path)
    assert run["directory"] is None and (run["loaded"], run["written"]) == (0, 0)
    assert not (tmp_path / "xla").exists()
    assert compile_cache.enable(ml_collections.ConfigDict({"dir": "", "min_compile_seconds": 1.0})) is None


def test_hosts_with_other_instruction_sets_get_other_directories(tmp_path):
    def fingerprint_of(flags: str) -> str:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        return compile_cache.host_fingerprint(cpuinfo)

    with_amx = fingerprint_of("fpu avx512f amx_tile")
    assert with_amx != fingerprint_of("fpu avx512f")
    assert with_amx == fingerprint_of("amx_tile fpu avx512f")         # the flags' order does not matter
    assert with_amx.startswith(f"{os.uname().machine}-") and len(with_amx.rsplit("-", 1)[1]) == 12
    assert compile_cache.host_fingerprint() == compile_cache.host_fingerprint()


def test_an_unwritable_directory_is_a_clear_error_before_anything_compiles(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="config compilation_cache.dir: cannot create .*a_file"):
        compile_cache.enable(ml_collections.ConfigDict({"dir": str(blocker), "min_compile_seconds": 1.0}))
