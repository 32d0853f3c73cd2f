"""Tiny random transformers models with the structure of the real checkpoints, saved in HF layout.

Each entry scales a real config (named in the comment) down to a few layers and a small width while keeping what
makes the family different: BLOOM with a head count that is not a power of two (ALiBi's extra slopes), Llama-3 rope
scaling, GQA, every Llama bias, Mistral's window, Qwen2's QKV bias, Gemma 3's sliding/global interleave with a window
small enough to matter and a query scale that is not head_dim's.
Parameters are perturbed away from their initial values so that a norm or bias loaded into the wrong place shows.
"""
from __future__ import annotations

import pathlib

import numpy as np

TINY_HF_CONFIGS: dict[str, dict] = {
    # bigscience/bloom-560m: 24 layers, 1024 wide, 16 heads, vocab 250880
    "bloom": dict(model_type="bloom", vocab_size=256, hidden_size=48, n_layer=2, n_head=6,
                  layer_norm_epsilon=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=3),
    # facebook/xglm-564M: 24 layers, d 1024, 16 heads, ffn 4096, vocab 256008
    "xglm": dict(model_type="xglm", vocab_size=256, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                 max_position_embeddings=128, dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                 scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2),
    # meta-llama/Llama-2-7b-hf: untied head, MHA, rope 10000
    "llama": dict(model_type="llama", vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, intermediate_size=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  max_position_embeddings=128),
    # meta-llama/Llama-3.1-8B rope scaling with HuggingFaceTB/SmolLM2-135M's GQA and tied head
    "llama3": dict(model_type="llama", vocab_size=256, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                   num_key_value_heads=2, intermediate_size=64, rms_norm_eps=1e-5, tie_word_embeddings=True,
                   max_position_embeddings=128,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                   rope_theta=500000.0),
    # Llama layout with every bias (attention_bias, mlp_bias: the gated MLP's gate too)
    "llama_bias": dict(model_type="llama", vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=64, attention_bias=True, mlp_bias=True,
                       tie_word_embeddings=True, max_position_embeddings=128),
    # mistralai/Mistral-7B-v0.1: GQA, untied head, a sliding window on every layer (4096; 3 here, so it matters)
    "mistral": dict(model_type="mistral", vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=64, sliding_window=3, tie_word_embeddings=False,
                    max_position_embeddings=128),
    # Qwen/Qwen2-0.5B: QKV bias, GQA, tied head
    "qwen2": dict(model_type="qwen2", vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=True,
                  max_position_embeddings=128),
    # google/gemma-3-270m: 18 layers (5 sliding : 1 global), window 512, 4 heads / 1 kv head of 256, vocab 262144
    "gemma3": dict(model_type="gemma3_text", vocab_size=256, hidden_size=32, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=16, intermediate_size=64,
                   query_pre_attn_scalar=12, sliding_window=4, rope_theta=1000000.0, rope_local_base_freq=10000.0,
                   layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                   max_position_embeddings=128, pad_token_id=0, bos_token_id=2, eos_token_id=1),
}


def make_tiny_hf_model(name: str, out_dir: str | pathlib.Path, *, tokenizer=None, seed: int = 0, **overrides):
    """Build, perturb and save a tiny transformers ``*ForCausalLM``; returns the (fp32, eval-mode) torch model.

    With ``tokenizer`` the vocabulary matches it and the tokenizer is saved alongside (evaluator/trainer tests).
    """
    import torch
    import transformers

    hf = dict(TINY_HF_CONFIGS[name], **overrides)
    if tokenizer is not None:
        hf["vocab_size"] = len(tokenizer)
    config = transformers.AutoConfig.for_model(**hf)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.eval()
    out_dir = pathlib.Path(out_dir)
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return model


def reference_batch(vocab: int, seed: int = 0) -> dict:
    """A batch in the pipeline's layout: right-padded sentence pairs of different lengths and two CLM rows of
    one segment each with next-token targets (what ``bench.reference_collation`` lays out for the torch recipe)."""
    rng = np.random.default_rng(seed)
    batch = {}
    for name in ("sent0", "sent1"):
        lengths = np.array([3, 8, 5, 6])
        mask = (np.arange(8)[None, :] < lengths[:, None]).astype(np.int32)
        batch[f"{name}_ids"] = np.where(mask, rng.integers(4, vocab, (4, 8)), 3).astype(np.int32)
        batch[f"{name}_mask"] = mask
    ids = rng.integers(4, vocab, (2, 16)).astype(np.int32)
    batch["clm_ids"], batch["clm_segment_ids"] = ids, np.ones_like(ids)
    batch["clm_targets"] = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)
    weights = (rng.random((2, 16)) < 0.6).astype(np.float32)
    weights[:, -1] = 0.0                                      # a segment's last token predicts nothing
    batch["clm_weights"] = weights
    return batch


def step_batch(host: dict) -> dict:
    """A ``reference_batch`` as the train step takes it: device arrays, with each row's positions (its one
    segment id is already there)."""
    import jax.numpy as jnp
    rows, length = host["clm_ids"].shape
    return {**{k: jnp.asarray(v) for k, v in host.items()},
            "clm_positions": jnp.broadcast_to(jnp.arange(length), (rows, length))}
