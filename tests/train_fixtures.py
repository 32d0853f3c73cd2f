"""Small real pieces for trainer tests: a BPE tokenizer trained on the shared Alpaca data, and a tiny config.

The tokenizer is real (byte-level BPE with offsets, BOS/EOS/PAD), only small (1,024 tokens) so that a training
step with the full vocabulary takes milliseconds on a CPU.
"""
from __future__ import annotations

import json
import pathlib

import ml_collections

from xalign_jax.config_defaults import base_config

TINY_VOCAB = 1024


def train_tiny_tokenizer(data_dir: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    """Train a byte-level BPE on the clean Alpaca en/zh chunk and save it as an HF tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for lang in ("en", "zh"):
        for item in json.loads((data_dir / "alpaca_en_zh" / lang / f"alpaca_data-15323-18280.{lang}.json").read_text()):
            texts.extend(v for v in item.values() if v)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]),
    ])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out_dir)
    return out_dir


def tiny_train_config(tokenizer_dir: pathlib.Path, data_dir: pathlib.Path, **train) -> ml_collections.ConfigDict:
    """A 2-layer Llama-shaped model on the default recipe: a whole run takes seconds on 8 fake CPU devices."""
    config = base_config()
    config.model.source = f"random:{tokenizer_dir}"
    config.model.hf_config = {
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": True, "vocab_size": TINY_VOCAB,
        "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
    }
    config.model.dtype = "float32"
    config.data.data_dir = str(data_dir)
    config.data.recipe_records = 96
    config.data.seq_len = 64
    config.data.clm_rows = 8
    config.data.cl_buckets = (16, 32, 64)
    config.objective.pooler = "last-1"
    config.train.update(dict(steps=6, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=3))
    config.train.update(train)
    return config
