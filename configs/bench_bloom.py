"""Benchmark configs: random-initialised models with REAL vocabularies, small enough for a 2-core CPU.

Variants (``configs/bench_bloom.py:<variant>``):
  * ``bloom`` (default): BLOOM-shaped (ALiBi, embedding LayerNorm, tied head), hidden 384, 4 layers, 8 heads and
    BLOOM's full 250,880-row vocabulary: 103M parameters, 96M of them in the embedding. The tokenizer is XLM-R's
    (250,002 ids, all below 250,880) because BLOOM's own is not available offline; the ids only feed the timing.
  * ``gemma3``: the exact google/gemma-3-270m architecture (18 layers, 262,144 vocabulary, 268M parameters) with
    random weights and the real Gemma-3 tokenizer.
The batch mirrors the reference's shape at a CPU-sized scale: 6 records per step, 2 packed CLM rows of 256
tokens, one contrastive bucket of 64 (one compile), the reference's last-1 pooling and one-directional InfoNCE. The CE
projects only the supervised positions, at most 320 for the two rows (``data.supervised_cap``), in one chunk (the
[320, vocab] fp32 logits; with the cap off, one chunk per row: [2, 256, vocab], 0.5 GB; see BENCHMARKS.md).
"""
from xalign_jax.config_defaults import base_config
from xalign_jax.models.architectures import GEMMA3_270M

BLOOM_HF_CONFIG = {
    "model_type": "bloom", "vocab_size": 250880, "hidden_size": 384, "n_layer": 4, "n_head": 8,
    "layer_norm_epsilon": 1e-5, "hidden_dropout": 0.0, "attention_dropout": 0.0,
    "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": True,
}


def get_config(variant: str = "bloom"):
    config = base_config()
    if variant == "bloom":
        from xalign_jax.bench import xlmr_tokenizer_dir
        config.model.source = f"random:{xlmr_tokenizer_dir()}"
        config.model.hf_config = BLOOM_HF_CONFIG
    elif variant == "gemma3":
        config.model.source = "random:gemma3-270m"
        config.model.hf_config = GEMMA3_270M
    else:
        raise ValueError(f"configs/bench_bloom.py: unknown variant {variant!r} (bloom | gemma3)")
    config.data.recipe_records = 400
    config.data.seq_len = 256
    config.data.clm_rows = 2
    # The CE projects only the supervised positions, up to 320 for the 2 rows together (one group); a per-row cap
    # could not go below the 243-244 supervised tokens of the longest single answer. On this data the records bring
    # ~270-276 supervised tokens per step on average and the first steps the bench draws hold at most 295, so its
    # batches (and losses) are the uncapped ones; over 2000 steps the queue stays bounded (at most 18 examples).
    config.data.supervised_cap = 320
    config.data.supervised_group_rows = 2
    # Fixed shapes: one compile. --config.data.head_slot_buckets='(256,288)' alone: 9.7% (bloom) / 5.6% (gemma3)
    # fewer executed FLOPs over 300 steps with three compiles (BENCHMARKS.md "The LM-head slot ladder alone").
    # All three ladders (BENCHMARKS.md "Shapes that follow each step"),
    # --config.data.clm_len_buckets='(128,160,192,224)' --config.data.head_slot_buckets='(192,224,256,288)'
    # --config.data.cl_buckets='(16,32,48,64)': about 10% fewer, but 32-36 compiles in 300 steps.
    config.data.cl_buckets = (64,)
    # The blocks unrolled, no scan: on a CPU a scanned bf16 step rewrites its whole stacked activations and gradients
    # at every block (decoder._run_blocks). bf16 steps on an AMX Xeon: gemma3 3.17 -> 2.27 s, bloom 0.95 -> 0.78 s;
    # fp32 steps unchanged; gemma3's compile twice as long (BENCHMARKS.md "The blocks unrolled").
    config.model.unroll_layers = True
    config.objective.pooler = "last-1"
    config.objective.symmetric = False
    config.objective.mask_shared_sentences = False   # the reference recipe: every other pair is a negative
    config.objective.clm_chunk_size = 320   # one CE chunk per group (or row): 2.4x faster on CPU than 128
    config.train.batch_size = 6
    config.train.steps = 1000          # only sets the learning-rate schedule; the benchmark runs --steps
    config.train.warmup_steps = 10
    config.train.lr = 1e-5
    config.train.log_every = 1000
    config.train.checkpoint_every = 100_000
    return config
