"""The architecture fields of real models' ``config.json``, for random-weight benchmarks and tests.

Benchmarks must run the exact shapes of the models users train (vocabulary included: it dominates the step), on
machines that cannot download anything. The values are copied from the hub's config.json of each model.
"""
from __future__ import annotations

BLOOM_560M = {   # bigscience/bloom-560m
    "model_type": "bloom", "vocab_size": 250880, "hidden_size": 1024, "n_layer": 24, "n_head": 16,
    "layer_norm_epsilon": 1e-5, "hidden_dropout": 0.0, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "tie_word_embeddings": True,
}

GEMMA3_270M = {   # google/gemma-3-270m
    "model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048,
    "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
    "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768, "sliding_window": 512, "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "attention_dropout": 0.0, "tie_word_embeddings": True, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
}
