"""XGLM: embeddings * sqrt(d) + fairseq sinusoidal positions (offset 2), pre-LN, exact GELU, tied head, dropout."""
from __future__ import annotations

from xalign_jax.models.families import TensorMap, attention_maps, head_map, mlp_maps, norm_maps

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
POSITION_OFFSET = 2   # HF's XGLMSinusoidalPositionalEmbedding.offset (fairseq: padding_idx + 1)


def config_fields(hf: dict) -> dict:
    act = hf.get("activation_function", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"xglm: unsupported activation_function {act!r}; supported: {sorted(ACTIVATIONS)}")
    hidden, heads = hf["d_model"], hf["attention_heads"]
    return dict(vocab_size=hf["vocab_size"], hidden_size=hidden, num_layers=hf["num_layers"], num_heads=heads,
                num_kv_heads=heads, head_dim=hidden // heads, intermediate_size=hf["ffn_dim"], norm="layernorm",
                norm_eps=1e-5, mlp=ACTIVATIONS[act], positions="sinusoidal",
                tie_word_embeddings=hf.get("tie_word_embeddings", True), qkv_bias=True, out_bias=True,
                mlp_bias=True, embed_scale=hf.get("scale_embedding", True), position_offset=POSITION_OFFSET,
                dropout=hf.get("dropout", 0.0), attention_dropout=hf.get("attention_dropout", 0.0),
                activation_dropout=hf.get("activation_dropout", 0.0))


def tensor_map(cfg) -> list[TensorMap]:
    layer = "model.layers.{i}"
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
    return [TensorMap("embed", "model.embed_tokens.weight", "same"),
            *norm_maps("blocks.attn_norm", f"{layer}.self_attn_layer_norm", True),
            *attention_maps(f"{layer}.self_attn", names, True, True),
            *norm_maps("blocks.mlp_norm", f"{layer}.final_layer_norm", True),
            *mlp_maps(layer, {"up": "fc1", "down": "fc2"}, True),
            *norm_maps("final_norm", "model.layer_norm", True),
            *head_map(cfg)]
