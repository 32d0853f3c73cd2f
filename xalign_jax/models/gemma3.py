"""Gemma 3 (text): sliding/global layers with their own RoPE bases, QK-norm, (1 + w) RMSNorm, sandwich norms,
embedding scale sqrt(d), gated tanh-GELU, ``query_pre_attn_scalar``, optional soft-capping, tied head."""
from __future__ import annotations

from xalign_jax.models import layers
from xalign_jax.models.families import TensorMap, attention_maps, head_map, mlp_maps, norm_maps, rope_parameters


def layer_types(hf: dict) -> list[str]:
    if hf.get("layer_types"):
        return list(hf["layer_types"])
    pattern = hf.get("sliding_window_pattern", 6)
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(hf["num_hidden_layers"])]


def config_fields(hf: dict) -> dict:
    act = hf.get("hidden_activation", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise ValueError(f"gemma3: unsupported hidden_activation {act!r}")
    if hf.get("use_bidirectional_attention"):
        raise ValueError("gemma3: use_bidirectional_attention=True (an encoder such as EmbeddingGemma) is not "
                         "supported: this is a causal decoder")
    if hf.get("attn_logit_softcapping"):
        raise ValueError("gemma3: attn_logit_softcapping is set, but transformers' Gemma 3 attention does not apply "
                         "it (no Gemma 3 checkpoint sets it); remove it from the config")
    head_dim = hf.get("head_dim", 256)
    types = layer_types(hf)
    return dict(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"], num_kv_heads=hf["num_key_value_heads"], head_dim=head_dim,
                intermediate_size=hf["intermediate_size"], norm="rmsnorm_plus_one",
                norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="geglu_tanh", positions="rope",
                rope_inv_freq=layers.rope_inv_freq(head_dim, rope_parameters(hf, "full_attention")),
                rope_local_inv_freq=layers.rope_inv_freq(head_dim, rope_parameters(hf, "sliding_attention")),
                sliding_window=hf.get("sliding_window") or 0,
                layer_is_sliding=tuple(t == "sliding_attention" for t in types),
                tie_word_embeddings=hf.get("tie_word_embeddings", True), qkv_bias=hf.get("attention_bias", False),
                out_bias=hf.get("attention_bias", False), embed_scale=True, qk_norm=True, sandwich_norms=True,
                query_scale=hf.get("query_pre_attn_scalar", head_dim) ** -0.5,
                final_logit_softcap=hf.get("final_logit_softcapping") or 0.0,
                attention_dropout=hf.get("attention_dropout", 0.0))


def tensor_map(cfg) -> list[TensorMap]:
    layer = "model.layers.{i}"
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
    return [TensorMap("embed", "model.embed_tokens.weight", "same"),
            *norm_maps("blocks.attn_norm", f"{layer}.input_layernorm", False),
            *attention_maps(f"{layer}.self_attn", names, cfg.qkv_bias, cfg.out_bias),
            *norm_maps("blocks.q_norm", f"{layer}.self_attn.q_norm", False),
            *norm_maps("blocks.k_norm", f"{layer}.self_attn.k_norm", False),
            *norm_maps("blocks.post_attn_norm", f"{layer}.post_attention_layernorm", False),
            *norm_maps("blocks.mlp_norm", f"{layer}.pre_feedforward_layernorm", False),
            *mlp_maps(f"{layer}.mlp", {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}, False),
            *norm_maps("blocks.post_mlp_norm", f"{layer}.post_feedforward_layernorm", False),
            *norm_maps("final_norm", "model.norm", False),
            *head_map(cfg)]
