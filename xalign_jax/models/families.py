"""Per-family recipes: how an HF config becomes a ``ModelConfig`` and how HF tensors map onto our parameters.

A recipe module provides ``config_fields(hf_config) -> dict`` and ``tensor_map(cfg) -> list[TensorMap]``. Tensor
kinds name the layout change between HF (``torch.nn.Linear`` weights are ``[out, in]``) and ours (``[in, ...out]``
with heads split out), so the same table drives loading and export.
"""
from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

FAMILIES = ("bloom", "xglm", "llama", "gemma3")


@dataclasses.dataclass(frozen=True)
class TensorMap:
    ours: str       # parameter name (``blocks.*`` are stacked over layers)
    hf: str         # HF tensor name; ``{i}`` is the layer index for block parameters
    kind: str       # same | matrix | in_heads | out_heads | head_bias | fused_{q,k,v} (BLOOM's interleaved QKV)


def get(family: str) -> ModuleType:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; supported: {FAMILIES}")
    return importlib.import_module(f"xalign_jax.models.{family}")


def norm_maps(ours: str, hf_prefix: str, with_bias: bool) -> list[TensorMap]:
    maps = [TensorMap(ours, f"{hf_prefix}.weight", "same")]
    return maps + ([TensorMap(ours + "_bias", f"{hf_prefix}.bias", "same")] if with_bias else [])


def attention_maps(prefix: str, names: dict[str, str], qkv_bias: bool, out_bias: bool) -> list[TensorMap]:
    """q/k/v/o projections stored as separate HF linears (every family except BLOOM)."""
    maps = []
    for ours in ("q", "k", "v"):
        maps.append(TensorMap(f"blocks.{ours}", f"{prefix}.{names[ours]}.weight", "in_heads"))
        if qkv_bias:
            maps.append(TensorMap(f"blocks.{ours}_bias", f"{prefix}.{names[ours]}.bias", "head_bias"))
    maps.append(TensorMap("blocks.o", f"{prefix}.{names['o']}.weight", "out_heads"))
    if out_bias:
        maps.append(TensorMap("blocks.o_bias", f"{prefix}.{names['o']}.bias", "same"))
    return maps


def mlp_maps(prefix: str, names: dict[str, str], bias: bool) -> list[TensorMap]:
    maps = []
    for ours, hf in names.items():
        maps.append(TensorMap(f"blocks.{ours}", f"{prefix}.{hf}.weight", "matrix"))
        if bias:
            maps.append(TensorMap(f"blocks.{ours}_bias", f"{prefix}.{hf}.bias", "same"))
    return maps


def head_map(cfg) -> list[TensorMap]:
    return [] if cfg.tie_word_embeddings else [TensorMap("lm_head", "lm_head.weight", "matrix")]


def rope_parameters(hf: dict, layer_type: str | None = None) -> dict:
    """RoPE settings from either config layout: transformers 5's ``rope_parameters`` (possibly per layer type) or
    the hub's older ``rope_theta`` / ``rope_scaling`` / ``rope_local_base_freq`` fields."""
    params = hf.get("rope_parameters")
    if params:
        return dict(params.get(layer_type, params) if layer_type in params else params)
    if layer_type == "sliding_attention":
        return {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 10000.0)}
    merged = dict(hf.get("rope_scaling") or {})
    merged["rope_theta"] = hf.get("rope_theta", 10000.0)
    return merged
