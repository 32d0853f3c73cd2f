"""BLOOM: word-embedding LayerNorm, fused per-head-interleaved QKV with bias, ALiBi, tanh-GELU MLP, tied head."""
from __future__ import annotations

from xalign_jax.models.families import TensorMap, head_map, mlp_maps, norm_maps


def config_fields(hf: dict) -> dict:
    if hf.get("apply_residual_connection_post_layernorm"):
        raise ValueError("bloom: apply_residual_connection_post_layernorm=True is not supported")
    if hf.get("hidden_dropout"):
        raise ValueError(f"bloom: hidden_dropout={hf['hidden_dropout']} is not supported (our residual dropout "
                         "would also drop the embedding, which BLOOM does not); the released models use 0.0")
    hidden = hf.get("hidden_size", hf.get("n_embed"))
    heads = hf["n_head"]
    return dict(vocab_size=hf["vocab_size"], hidden_size=hidden, num_layers=hf["n_layer"], num_heads=heads,
                num_kv_heads=heads, head_dim=hidden // heads, intermediate_size=4 * hidden, norm="layernorm",
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="gelu_tanh", positions="alibi",
                tie_word_embeddings=hf.get("tie_word_embeddings", True), qkv_bias=True, out_bias=True,
                mlp_bias=True, embed_norm=True, attention_dropout=hf.get("attention_dropout", 0.0))


def tensor_map(cfg) -> list[TensorMap]:
    layer = "transformer.h.{i}"
    qkv = f"{layer}.self_attention.query_key_value"
    maps = [TensorMap("embed", "transformer.word_embeddings.weight", "same"),
            *norm_maps("embed_norm", "transformer.word_embeddings_layernorm", True),
            *norm_maps("blocks.attn_norm", f"{layer}.input_layernorm", True)]
    for part in ("q", "k", "v"):
        maps += [TensorMap(f"blocks.{part}", f"{qkv}.weight", f"fused_{part}"),
                 TensorMap(f"blocks.{part}_bias", f"{qkv}.bias", f"fused_{part}")]
    maps += [TensorMap("blocks.o", f"{layer}.self_attention.dense.weight", "out_heads"),
             TensorMap("blocks.o_bias", f"{layer}.self_attention.dense.bias", "same"),
             *norm_maps("blocks.mlp_norm", f"{layer}.post_attention_layernorm", True),
             *mlp_maps(f"{layer}.mlp", {"up": "dense_h_to_4h", "down": "dense_4h_to_h"}, True),
             *norm_maps("final_norm", "transformer.ln_f", True)]
    return maps + head_map(cfg)
