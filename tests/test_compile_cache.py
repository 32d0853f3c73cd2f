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
import time
import zlib

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


def _age(path: pathlib.Path, seconds: float = 2 * compile_cache.SETTLE_SECONDS) -> pathlib.Path:
    """Dates ``path``'s modification ``seconds`` back (by default, long enough for the sweep to check it)."""
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))
    return path


def _entry(directory: pathlib.Path, name: str, payload: bytes, *, age_seconds: float = 3600.0) -> pathlib.Path:
    path = directory / f"{name}-cache"
    path.write_bytes(payload)
    return _age(path, age_seconds)


def test_truncated_entries_are_removed_once_settled_and_complete_ones_are_checked_once(tmp_path, monkeypatch):
    program = zlib.compress(os.urandom(1 << 16) * 40)          # several 1 MiB chunks to decompress
    complete = _entry(tmp_path, "jit_step-aaaa", program)
    truncated = _entry(tmp_path, "jit_step-bbbb", program[:len(program) // 2])
    empty = _entry(tmp_path, "jit_step-cccc", b"")
    being_written = _entry(tmp_path, "jit_step-dddd", program[:100], age_seconds=1.0)
    other = tmp_path / "notes.txt"
    other.write_bytes(program[:100])

    removed = compile_cache.remove_truncated_entries(tmp_path)

    assert sorted(removed) == [truncated.name, empty.name]
    assert not truncated.exists() and not empty.exists()
    assert complete.read_bytes() == program and being_written.exists() and other.exists()
    checked = []
    check = compile_cache._stream_is_complete
    monkeypatch.setattr(compile_cache, "_stream_is_complete", lambda path: checked.append(path.name) or check(path))
    assert compile_cache.remove_truncated_entries(tmp_path, settle_seconds=0.0) == [being_written.name]
    assert checked == [being_written.name]      # the complete entry was remembered, not decompressed again
    assert complete.exists()


def test_a_zstd_entry_is_left_alone_without_a_zstd_decoder(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)      # neither decoder importable
    monkeypatch.setitem(sys.modules, "compression", None)
    entry = _entry(tmp_path, "jit_step-eeee", b"\x28\xb5\x2f\xfd" + b"\x00" * 10)
    assert compile_cache.remove_truncated_entries(tmp_path) == [] and entry.exists()


def test_a_truncated_zstd_entry_is_removed(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    program = zstandard.ZstdCompressor().compress(os.urandom(1 << 16) * 40)
    complete = _entry(tmp_path, "jit_step-ffff", program)
    truncated = _entry(tmp_path, "jit_step-gggg", program[:-10])
    assert compile_cache.remove_truncated_entries(tmp_path) == [truncated.name] and complete.exists()


def test_a_run_after_one_stopped_mid_write_compiles_that_program_again_and_the_next_loads_it(tmp_path):
    """Without the sweep, jax warns on every later run, compiles again, and never rewrites the entry."""
    first = _run("auto", tmp_path)
    directory = pathlib.Path(first["directory"])
    (program,) = directory.glob("jit__lambda-*-cache")
    program.write_bytes(program.read_bytes()[:-64])
    _age(program)

    second, third = _run("auto", tmp_path), _run("auto", tmp_path)

    assert (second["loaded"], second["written"]) == (first["written"] - 1, 1)
    assert (third["loaded"], third["written"]) == (first["written"], 0)
    assert second["out"] == third["out"] == first["out"]


def test_an_entry_that_cannot_be_read_is_left_to_jax(tmp_path):
    unreadable = _entry(tmp_path, "jit_step-hhhh", b"")
    unreadable.unlink()
    unreadable.mkdir()          # open() fails with an OSError, as for an entry another run removed meanwhile
    _age(unreadable)
    assert compile_cache._stream_is_complete(unreadable) is None
    assert compile_cache.remove_truncated_entries(tmp_path) == [] and unreadable.exists()


def test_a_list_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    _entry(tmp_path, "jit_step-iiii", zlib.compress(b"program"))
    monkeypatch.setattr(compile_cache.os, "replace", lambda *_: (_ for _ in ()).throw(OSError("disk full")))
    assert compile_cache.remove_truncated_entries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jit_step-iiii-cache"]
