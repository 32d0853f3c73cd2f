"""Load and save models in the HF layout (config.json + safetensors) or from a ``.gguf`` file.

Loading streams: each parameter is created with ``jax.make_array_from_callback`` straight into its sharding, and
the callback reads only the HF tensors it needs into aligned anonymous buffers, so host memory holds at most one
parameter's worth of converted data beyond the placed arrays. On a CPU device the placed array adopts that buffer
instead of copying it, so the peak stays near the parameter bytes. Only safetensors are read: pickled ``.bin`` checkpoints can run
arbitrary code and are refused.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Any, Protocol

import jax
import numpy as np

from xalign_jax.models import families
from xalign_jax.models.config import ModelConfig
from xalign_jax.models.decoder import BLOCK_PREFIX, Decoder, ParamSpec, param_specs
from xalign_jax.models.families import TensorMap
from xalign_jax.models.safetensors_io import (SHARD_BYTES, SafetensorsFile, aligned_empty, is_aligned, plan_shards,
                                              write_file)

log = logging.getLogger(__name__)
INDEX_FILE = "model.safetensors.index.json"


class TensorSource(Protocol):
    """HF-named tensors in HF layout, read on demand (safetensors directory or GGUF file)."""

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str) -> np.ndarray: ...


class SafetensorsDir:
    """The tensors of an HF model directory: ``model.safetensors`` or shards listed in the index file."""

    def __init__(self, directory: pathlib.Path):
        self.directory = pathlib.Path(directory)
        index = self.directory / INDEX_FILE
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.directory.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(_no_safetensors_message(self.directory))
        missing = [f for f in files if not (self.directory / f).exists()]
        if missing:
            raise FileNotFoundError(f"{self.directory}: shard file(s) {missing} listed in {INDEX_FILE} are missing")
        self._file_of: dict[str, SafetensorsFile] = {}
        for name in files:
            opened = SafetensorsFile(self.directory / name)
            for tensor in opened.names():
                if tensor in self._file_of:     # a stray copy in the directory must not replace weights silently
                    raise ValueError(f"{self.directory}: tensor {tensor} is in both {self._file_of[tensor].path.name} "
                                     f"and {name}; keep one file (or an index, {INDEX_FILE}, that says which)")
                self._file_of[tensor] = opened

    def names(self) -> list[str]:
        return list(self._file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file(name).shape(name)

    def read(self, name: str) -> np.ndarray:
        return self._file(name).read(name)

    def _file(self, name: str) -> SafetensorsFile:
        if name not in self._file_of:
            raise KeyError(f"{self.directory}: tensor {name} not found in the checkpoint")
        return self._file_of[name]


def _no_safetensors_message(directory: pathlib.Path) -> str:
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
        return (f"{directory}: only pickled PyTorch weights (*.bin) found. xalign-jax reads safetensors only "
                "(unpickling can execute code); convert once with transformers: "
                "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
    return f"{directory}: no *.safetensors files and no {INDEX_FILE}"


# ------------------------------------------------------------------------------------------ layout conversions
def expected_hf_shape(kind: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The HF shape a tensor of ``kind`` must have to become our (per-layer) shape ``ours``."""
    if kind == "same":
        return ours
    if kind == "matrix":
        return ours[::-1]
    if kind == "in_heads":
        return (ours[1] * ours[2], ours[0])
    if kind == "out_heads":
        return (ours[2], ours[0] * ours[1])
    if kind == "head_bias":
        return (ours[0] * ours[1],)
    if kind.startswith("fused_"):
        return (3 * ours[1] * ours[2], ours[0]) if len(ours) == 3 else (3 * ours[0] * ours[1],)
    raise ValueError(f"unknown tensor kind {kind!r}")


def to_ours(kind: str, hf: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    if kind in ("same", "head_bias"):
        return hf.reshape(ours)
    if kind == "matrix":
        return hf.T
    if kind == "in_heads":
        return hf.reshape(ours[1], ours[2], ours[0]).transpose(2, 0, 1)
    if kind == "out_heads":
        return hf.reshape(ours[2], ours[0], ours[1]).transpose(1, 2, 0)
    part = "qkv".index(kind[-1])   # BLOOM: rows are [head, (q|k|v), head_dim]
    if len(ours) == 3:
        return hf.reshape(ours[1], 3, ours[2], ours[0])[:, part].transpose(2, 0, 1)
    return hf.reshape(ours[0], 3, ours[1])[:, part]


def to_hf(kind: str, ours: np.ndarray) -> np.ndarray:
    if kind == "same":
        return ours
    if kind == "head_bias":
        return ours.reshape(-1)
    if kind == "matrix":
        return ours.T
    if kind == "in_heads":
        return ours.transpose(1, 2, 0).reshape(-1, ours.shape[0])
    if kind == "out_heads":
        return ours.transpose(2, 0, 1).reshape(ours.shape[2], -1)
    raise ValueError(f"tensor kind {kind!r} needs its partners to export (see fuse_to_hf)")


def fuse_to_hf(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BLOOM's interleaved QKV from our separate q, k, v (weights [D,H,d] or biases [H,d])."""
    if q.ndim == 3:
        return np.stack([q, k, v], axis=1).transpose(2, 1, 3, 0).reshape(-1, q.shape[0])
    return np.stack([q, k, v], axis=1).reshape(-1)


# ------------------------------------------------------------------------------------------ loading
def _check_shape(source: TensorSource, name: str, kind: str, ours: tuple[int, ...]) -> None:
    expected = expected_hf_shape(kind, ours)
    got = tuple(source.shape(name))
    if got != expected:
        raise ValueError(f"tensor {name}: expected {expected} got {got}")


def _host_value(source: TensorSource, tmap: TensorMap, spec: ParamSpec, dtype: np.dtype) -> np.ndarray:
    """The whole parameter in our layout, in an aligned contiguous buffer a CPU device adopts without a copy;
    block parameters are filled layer by layer into one buffer."""
    if not tmap.ours.startswith(BLOCK_PREFIX):
        return _aligned(to_ours(tmap.kind, source.read(tmap.hf), spec.shape), dtype)
    stacked = aligned_empty(spec.shape, dtype)
    for layer in range(spec.shape[0]):
        stacked[layer] = to_ours(tmap.kind, source.read(tmap.hf.format(i=layer)), spec.shape[1:])
    return stacked


def _aligned(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``value`` as-is when it already is an aligned contiguous ``dtype`` array (a "same" tensor read straight
    from safetensors), else one conversion copy into a fresh aligned buffer."""
    if value.dtype == dtype and is_aligned(value):
        return value
    out = aligned_empty(value.shape, dtype)
    out[...] = value
    return out


def _names_in_checkpoint(maps: list[TensorMap], available: set[str]) -> list[TensorMap]:
    """``maps`` with the causal-LM class's base-model prefix (``transformer.``, ``model.``) dropped when the
    checkpoint was saved from the base model class without it, as bigscience's BLOOM checkpoints are
    (``word_embeddings.weight``, ``h.0...``); transformers loads both layouts, and so do we."""
    prefix = maps[0].hf.split(".", 1)[0] + "."
    if any(name.startswith(prefix) for name in available):
        return maps
    return [dataclasses.replace(m, hf=m.hf[len(prefix):]) if m.hf.startswith(prefix) else m for m in maps]


def _warn_unused(available: set[str], maps: list[TensorMap], num_layers: int) -> None:
    """Log the checkpoint's tensors that no parameter reads, as transformers does: weights the config does not
    describe (biases of a config that says it has none) would otherwise be dropped without a word. Rotary
    frequency buffers and a tied model's saved ``lm_head.weight`` are expected."""
    used = {m.hf.format(i=i) for m in maps for i in range(num_layers)}
    unused = sorted(name for name in available - used
                    if not name.endswith("rotary_emb.inv_freq") and not name.endswith("lm_head.weight"))
    if unused:
        log.warning("%d checkpoint tensors are not used by this config (does config.json describe the weights?): "
                    "%s", len(unused), ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else ""))


def load_arrays(cfg: ModelConfig, source: TensorSource, mesh: jax.sharding.Mesh | None,
                maps: list[TensorMap]) -> dict[str, jax.Array]:
    """Every parameter of ``cfg`` read from ``source`` and placed into its mesh sharding (one device if none)."""
    from xalign_jax import sharding
    specs = param_specs(cfg)
    available = set(source.names())
    maps = _names_in_checkpoint(maps, available)
    _warn_unused(available, maps, cfg.num_layers)
    for tmap in maps:
        spec = specs[tmap.ours]
        per_layer = spec.shape[1:] if tmap.ours.startswith(BLOCK_PREFIX) else spec.shape
        names = [tmap.hf.format(i=i) for i in range(cfg.num_layers)] if "{i}" in tmap.hf else [tmap.hf]
        for name in names:
            if name not in available:
                raise KeyError(f"tensor {name} (for {tmap.ours}) is missing from the checkpoint")
            _check_shape(source, name, tmap.kind, per_layer)
    shardings = (sharding.param_shardings(specs, mesh) if mesh is not None else
                 {name: jax.sharding.SingleDeviceSharding(jax.devices()[0]) for name in specs})
    dtype = np.dtype(cfg.param_dtype)
    # One host tensor at a time: each is dropped as soon as its device array exists (peak = the largest tensor).
    return {tmap.ours: _on_device(_host_value(source, tmap, specs[tmap.ours], dtype), shardings[tmap.ours])
            for tmap in maps}


def _on_device(host: np.ndarray, array_sharding: jax.sharding.Sharding) -> jax.Array:
    """``host`` placed with ``array_sharding``; each device copies only its own shard of it."""
    return jax.make_array_from_callback(host.shape, array_sharding, lambda index: host[index])


def _open(path: pathlib.Path) -> tuple[TensorSource, dict]:
    if path.suffix == ".gguf":
        from xalign_jax.models import gguf_io
        source = gguf_io.GGUFSource(path)
        return source, source.hf_config()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: expected an HF model directory (config.json + *.safetensors) or a .gguf")
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path}: no config.json")
    return SafetensorsDir(path), json.loads(config_file.read_text())


def from_pretrained(path: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None, untie_lm_head: bool = False,
                    **options: Any) -> Decoder:
    """A model from an HF directory or a ``.gguf`` file; ``options``: dtype, param_dtype, remat_policy,
    unroll_layers, attention_impl, logits_dtype. ``untie_lm_head`` gives a tied model its own head initialised from
    the embedding (the AFP reference trains one)."""
    path = pathlib.Path(path)
    source, hf_config = _open(path)
    cfg = ModelConfig.from_hf(hf_config, **options)
    recipe = families.get(cfg.family)
    maps = recipe.tensor_map(cfg)
    if untie_lm_head and cfg.tie_word_embeddings:
        cfg = cfg.replace(tie_word_embeddings=False, hf_config={**hf_config, "tie_word_embeddings": False})
        embed = next(m for m in maps if m.ours == "embed")
        maps = maps + [TensorMap("lm_head", embed.hf, "matrix")]
    log.info("loading %s (%s, %d layers) from %s", cfg.family, hf_config.get("model_type"), cfg.num_layers, path)
    return Decoder(cfg, load_arrays(cfg, source, mesh, maps))


# ------------------------------------------------------------------------------------------ saving
def _gather(array: jax.Array) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))


def export_tensors(model: Decoder) -> dict[str, tuple[list[TensorMap], Any]]:
    """HF name -> (the maps that produce it, a thunk giving its value): computed lazily, one tensor at a time."""
    cfg = model.config
    arrays = model.arrays()
    grouped: dict[str, list[TensorMap]] = {}
    for tmap in families.get(cfg.family).tensor_map(cfg):
        layers = range(cfg.num_layers) if "{i}" in tmap.hf else [None]
        for layer in layers:
            grouped.setdefault(tmap.hf.format(i=layer), []).append((tmap, layer))

    def value(entries):
        def get(tmap, layer):
            array = arrays[tmap.ours] if layer is None else arrays[tmap.ours][layer]
            return _gather(array).astype(np.float32)
        if len(entries) == 1:
            return to_hf(entries[0][0].kind, get(*entries[0]))
        by_part = {tmap.kind[-1]: get(tmap, layer) for tmap, layer in entries}
        return fuse_to_hf(by_part["q"], by_part["k"], by_part["v"])

    return {name: (entries, lambda entries=entries: value(entries)) for name, entries in grouped.items()}


def save_pretrained(model: Decoder, out_dir: str | os.PathLike, max_shard_bytes: int = SHARD_BYTES) -> pathlib.Path:
    """Write config.json + safetensors (sharded with an index above 2 GiB) that transformers loads; process 0
    writes, every process takes part in gathering sharded parameters."""
    out = pathlib.Path(out_dir)
    tensors = export_tensors(model)
    sizes = {name: 4 * int(np.prod(_hf_shape(entries, model))) for name, (entries, _) in tensors.items()}
    shards = plan_shards(sizes, max_shard_bytes)
    is_main = jax.process_index() == 0
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for number, names in enumerate(shards, 1):
        file = "model.safetensors" if len(shards) == 1 else f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        values = {name: tensors[name][1]() for name in names}
        if is_main:
            write_file(values, out / file, metadata={"format": "pt"})
        weight_map.update({name: file for name in names})
    if is_main:
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
            (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
        (out / "config.json").write_text(json.dumps(model.config.hf_config, indent=2, sort_keys=True))
    return out


def _hf_shape(entries, model: Decoder) -> tuple[int, ...]:
    specs = param_specs(model.config)
    tmap, layer = entries[0]
    shape = specs[tmap.ours].shape[1:] if layer is not None else specs[tmap.ours].shape
    return expected_hf_shape(tmap.kind, shape)


def load_tokenizer(path: str | os.PathLike):
    """The transformers tokenizer stored with the model (HF directory) or inside the ``.gguf`` file."""
    path = pathlib.Path(path)
    if path.suffix == ".gguf":
        from xalign_jax.models import gguf_io
        return gguf_io.load_tokenizer(path)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))

