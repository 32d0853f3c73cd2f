"""Accelerator benchmarks at the real model sizes: sequence 512, bf16, random weights, synthetic tokens.

    python -m xalign_jax.bench --config configs/bench_gpu.py:gemma3-270m --steps 10 --warmup 2 --noload_memory

Variants: ``gemma3-270m`` (google/gemma-3-270m: 268M parameters, 262,144 vocabulary) and ``bloom-560m``
(bigscience/bloom-560m: 559M parameters, 250,880 vocabulary), both with their real architecture
(``models/architectures.py``). Nothing is read from disk: ``model.source='random'`` needs no tokenizer and
``data.synthetic_records`` makes random-token examples of realistic lengths (``data/synthetic.py``) that go
through the real packer, so the compiled step is the production one. Per step: 96 records, i.e. 96 translation
pairs for the contrastive loss (bucket 64) and their CLM examples packed into 32 rows of 512 tokens (about 13k
CLM tokens, ~73% supervised), with cuDNN attention (faster than XLA's for both on an H200: BENCHMARKS.md). Override
with ``--config.data.clm_rows`` / ``--config.train.batch_size`` / ``--config.model.attention_impl``;
``benchmarks/accelerator_suite.py`` runs the measured variants.
"""
from xalign_jax.config_defaults import base_config
from xalign_jax.models.architectures import BLOOM_560M, GEMMA3_270M

# architecture, packed CLM rows, records per step, attention
VARIANTS = {"gemma3-270m": (GEMMA3_270M, 32, 96, "cudnn"), "bloom-560m": (BLOOM_560M, 32, 96, "cudnn")}


def get_config(variant: str = "gemma3-270m"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/bench_gpu.py: unknown variant {variant!r} ({' | '.join(VARIANTS)})")
    architecture, clm_rows, records, attention = VARIANTS[variant]
    config = base_config()
    config.model.source = "random"
    config.model.hf_config = architecture
    config.model.attention_impl = attention
    config.data.synthetic_records = 4096
    config.data.seq_len = 512
    config.data.clm_rows = clm_rows
    config.data.cl_buckets = (64,)
    config.train.batch_size = records
    config.train.steps = 1000          # only sets the learning-rate schedule; the benchmark runs --steps
    config.train.warmup_steps = 10
    config.train.log_every = 1000
    config.train.checkpoint_every = 100_000
    return config
