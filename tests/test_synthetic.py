"""Synthetic benchmark data: the corpus has the promised shapes, and a model without tokenizer trains on it end to
end through the real packer and compiled step (what an accelerator machine without data runs)."""
from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from xalign_jax import bench, config_validation
from xalign_jax.config_defaults import base_config
from xalign_jax.data import pipeline, synthetic
from xalign_jax.model_source import load_model_and_tokenizer

VOCAB = 512
TINY_LLAMA = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": True, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}


def _synthetic_config():
    config = base_config()
    config.model.source = "random"
    config.model.hf_config = TINY_LLAMA
    config.model.dtype = "float32"
    config.data.synthetic_records = 64
    config.data.seq_len = 256
    config.data.clm_rows = 8
    config.data.cl_buckets = (64,)
    config.train.batch_size = 8
    config.train.steps, config.train.warmup_steps = 10, 1
    return config


def test_corpus_shapes_labels_and_ids():
    corpus = synthetic.synthetic_corpus(200, vocab_size=VOCAB, seq_len=128, max_sentence_len=32, seed=3)
    assert len(corpus) == 200 and corpus.report.clm_kept == 200
    for example in corpus.examples:
        assert len(example.clm_ids) == len(example.clm_labels) <= 128
        prompt = int(np.argmax(example.clm_labels))
        assert synthetic.PROMPT_TOKENS[0] <= prompt and example.clm_labels[prompt:].all()
        assert not example.clm_labels[:prompt].any()
        for ids in (example.clm_ids, example.sent0_ids, example.sent1_ids):
            assert ids.dtype == np.int32 and ids.min() >= synthetic.FIRST_ORDINARY_ID and ids.max() < VOCAB
        assert synthetic.SENTENCE_TOKENS[0] <= len(example.sent0_ids) <= 32
    assert corpus.report.supervised_tokens == sum(int(e.clm_labels.sum()) for e in corpus.examples)
    again = synthetic.synthetic_corpus(200, vocab_size=VOCAB, seq_len=128, max_sentence_len=32, seed=3)
    assert all(np.array_equal(a.clm_ids, b.clm_ids) for a, b in zip(corpus.examples, again.examples))


def test_corpus_rejects_nonsense():
    with pytest.raises(ValueError, match="data.synthetic_records"):
        synthetic.synthetic_corpus(0, vocab_size=VOCAB, seq_len=128, max_sentence_len=32)
    with pytest.raises(ValueError, match="vocabulary"):
        synthetic.synthetic_corpus(4, vocab_size=8, seq_len=128, max_sentence_len=32)


def test_random_source_needs_synthetic_data_no_evaluation_and_a_vocab_size():
    config = _synthetic_config()
    config_validation.validate(config, mode="train", num_devices=1)
    config.data.synthetic_records = 0
    with pytest.raises(config_validation.ConfigError, match="model.source: 'random' has no tokenizer"):
        config_validation.validate(config, mode="train", num_devices=1)
    config = _synthetic_config()
    config.eval.after_training = True
    with pytest.raises(config_validation.ConfigError, match="eval.after_training"):
        config_validation.validate(config, mode="train", num_devices=1)
    config = _synthetic_config()
    config.model.hf_config = {k: v for k, v in TINY_LLAMA.items() if k != "vocab_size"}
    with pytest.raises(ValueError, match="give vocab_size"):
        load_model_and_tokenizer(config.model, mesh=None)


def test_bench_runs_on_synthetic_data_without_tokenizer_or_data(tmp_path):
    report = bench.run_benchmark(_synthetic_config(), steps=2, warmup=1, workdir=tmp_path, measure_load=False)
    jax_part, batch = report["jax"], report["batch"]
    assert jax_part["compiles"] == 1 and all(math.isfinite(loss) for loss in jax_part["losses"])
    assert batch["clm_rows"] == 8 and batch["clm_lengths"] == [256]
    assert 0.5 * 8 * 256 < batch["clm_tokens_per_step"] <= 8 * 256      # 8 records of ~136 tokens fill half or more
    assert batch["contrastive_lengths"] == [64]


def test_an_out_of_memory_step_is_reported_with_the_compiled_memory_and_the_knobs(tmp_path, monkeypatch):
    """Device OOM (simulated: this CPU has room) ends the bench with the step's compiled memory, not a traceback."""
    def exhausted(trainer, host_batches, warmup):
        trainer.step_fn(trainer.state, pipeline.to_global(host_batches[0], trainer.mesh))   # compiles the step
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 31.86GiB")

    monkeypatch.setattr(bench, "prepare_jax_steps", exhausted)
    with pytest.raises(SystemExit) as exit_info:
        bench.run_benchmark(_synthetic_config(), steps=1, warmup=1, workdir=tmp_path, measure_load=False)
    message = str(exit_info.value)
    assert "ran out of device memory (RESOURCE_EXHAUSTED: Out of memory" in message
    assert "temp" in message and "argument" in message and "model.remat_policy" in message
