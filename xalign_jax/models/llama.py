"""Llama (and Qwen2 / Mistral layouts): RoPE incl. llama3 scaling, RMSNorm, SwiGLU, GQA, optional biases,
Mistral's sliding window on every layer."""
from __future__ import annotations

from xalign_jax.models import layers
from xalign_jax.models.families import TensorMap, attention_maps, head_map, mlp_maps, norm_maps, rope_parameters


def config_fields(hf: dict) -> dict:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"llama: unsupported hidden_act {hf['hidden_act']!r} (only silu)")
    if hf.get("use_sliding_window"):
        raise ValueError("qwen2: use_sliding_window=True is not supported")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    qwen2 = hf["model_type"] == "qwen2"
    window = (hf.get("sliding_window") or 0) if hf["model_type"] == "mistral" else 0   # Qwen2's needs the flag
    return dict(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim,
                intermediate_size=hf["intermediate_size"], norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
                mlp="swiglu", positions="rope", rope_inv_freq=layers.rope_inv_freq(head_dim, rope_parameters(hf)),
                tie_word_embeddings=hf.get("tie_word_embeddings", False),
                qkv_bias=qwen2 or hf.get("attention_bias", False),
                out_bias=(not qwen2) and hf.get("attention_bias", False), mlp_bias=hf.get("mlp_bias", False),
                sliding_window=window, layer_is_sliding=(bool(window),) * hf["num_hidden_layers"],
                attention_dropout=hf.get("attention_dropout", 0.0))


def tensor_map(cfg) -> list[TensorMap]:
    layer = "model.layers.{i}"
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
    return [TensorMap("embed", "model.embed_tokens.weight", "same"),
            *norm_maps("blocks.attn_norm", f"{layer}.input_layernorm", False),
            *attention_maps(f"{layer}.self_attn", names, cfg.qkv_bias, cfg.out_bias),
            *norm_maps("blocks.mlp_norm", f"{layer}.post_attention_layernorm", False),
            *mlp_maps(f"{layer}.mlp", {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}, cfg.mlp_bias),
            *norm_maps("final_norm", "model.norm", False),
            *head_map(cfg)]
