"""Every config key with its default: the AFP reference hyper-parameters (AFP_SPEC §1.4) unless noted.

Files under ``configs/`` start from ``base_config()`` and override what their model needs; the command line
overrides any key with ``--config.a.b=value``. Where we deliberately differ from the reference, the key says so and
a ``reference`` value reproduces the reference behaviour.
"""
from __future__ import annotations

import os
import pathlib

import ml_collections

from xalign_jax import xla_options
from xalign_jax.evaluation.runner import default_eval_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = str(REPO_ROOT.parent / "shared" / "data")


def cache_root() -> pathlib.Path:
    """``$XALIGN_CACHE`` or ``~/.cache/xalign_jax``: converted models and compiled programs, kept across runs."""
    return pathlib.Path(os.environ.get("XALIGN_CACHE", pathlib.Path.home() / ".cache" / "xalign_jax"))


def model_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "source": "",              # fetch name | HF dir | .gguf | "random:<tokenizer source>" | "random" (hf_config)
        "hf_config": {},           # architecture for random init (a transformers config.json dict)
        "init_seed": 0,
        "dtype": "bfloat16",       # compute dtype; parameters and Adam moments stay fp32
        "param_dtype": "float32",
        "remat_policy": "none",    # none | full | dots | dots_no_batch ...
        "unroll_layers": False,    # True: blocks unrolled, no scan; a faster CPU step (bf16 most), slower compiles
        "attention_impl": "xla",   # xla | cudnn (GPU, RoPE/sinusoidal families)
        "logits_dtype": "float32",  # LM head output; bfloat16 (torch autocast's) halves the CE's GPU traffic
        "untie_lm_head": False,    # reference: True (it trains a separate head initialised from the embedding)
    })


def data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "train_file": "",          # AFP JSON lines; empty = build the default recipe into WORKDIR/data/
        "data_dir": DEFAULT_DATA_DIR,
        "recipe_languages": ("en", "zh", "sw"),
        "recipe_records": 6000,
        "synthetic_records": 0,     # >0: train on this many random-token examples (benchmarks only, data/synthetic.py)
        "skip_bad_records": False,  # True: malformed lines are counted and reported instead of stopping the run
        "seq_len": 512,             # CLM row length (reference clm_block_size 512)
        "clm_rows": 2,              # packed CLM rows per step (global)
        "cl_buckets": (32, 64, 128),  # contrastive sentence lengths (one compile per bucket used)
        "cl_pack_rows": (),         # () = one padded row per contrastive sentence. Else the sentences of each data
                                    # shard's part of a micro-batch share rows of the step's bucket length, as
                                    # segments, in the fewest of these row counts that hold them (one compile per
                                    # count used; 2 x its records when none does): data/sentence_packing.py
        "clm_len_buckets": (),      # shorter CLM row lengths a step may use (one compile per length used): rows
                                    # take the smallest that holds the step's fullest row, seq_len when none does;
                                    # segments packing then deals each step's examples evenly over the rows
        "packing": "segments",      # segments (no cross-example attention) | reference (no barrier, AFP_SPEC §1.3)
        "prompt_masking": "offsets",  # offsets (character offsets) | reference (token-prefix heuristic)
        "append_eos": True,         # EOS after every CLM example, supervised (the model learns to stop)
        "supervised_cap": 0,        # >0: at most this many supervised positions per group of supervised_group_rows
                                    # consecutive CLM rows, and the CE projects only those onto the vocabulary
                                    # (segments packing; 0 = every position). An example that would fit the
                                    # rows' tokens but not the cap waits for a later step: the first such wait
                                    # is logged, summary.json counts them (clm_examples_held_by_cap)
        "supervised_group_rows": 1,  # rows sharing one supervised_cap; must divide the rows of one data shard's
                                     # micro-batch (clm_rows / (data*fsdp*micro_batches))
        "head_slot_buckets": (),    # with a supervised_cap: fewer LM-head slots per group a step may use (one
                                    # compile per count used): the smallest that holds the step's most supervised
                                    # group, supervised_cap when none does
    })


def objective_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "pooler": "last-1",        # {last,avg,max}-k, k = hidden-state index (0 = embeddings), reference last-1
        "temperature": 0.05,
        "symmetric": True,         # reference: False (one direction, sent0 anchors)
        "mask_shared_sentences": True,   # pairs sharing a sentence (one English in en-zh and en-sw pairs) are not
                                         # each other's negatives; reference: False
        "cl_weight": 1.0,
        "clm_weight": 1.5,
        "clm_chunk_size": 128,     # sequence positions per CE chunk (bounds the live [rows, chunk, vocab] logits)
        "clm_logits_grad": "auto",   # how the CE head's gradient is formed (objectives.CHUNK_GRADS); auto: by backend
    })


def train_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "steps": 5000,
        "batch_size": 2,           # records per step, global (reference: 2 on one GPU)
        "micro_batches": 1,        # gradient accumulation inside the step; InfoNCE negatives come from each
                                   # micro-batch (batch_size / micro_batches pairs), the CLM token mean is exact
        "seed": 0,
        "lr": 1e-5,
        "warmup_steps": 150,       # ceil(0.03 * 5000)
        "schedule": "cosine",      # cosine | linear | constant | deepspeed (the reference's multi-GPU path: log
                                   # warmup, linear decay to 0; the single-GPU script's is cosine)
        "end_lr_ratio": 0.0,
        "weight_decay": 0.0,
        "optimizer": "adamw_torch",   # where Adam's eps goes (train_step.make_optimizer): adamw_torch (torch,
                                      # optax, the reference's DeepSpeed runs) | adamw_hf (its single-GPU script)
        "b1": 0.9, "b2": 0.999, "eps": 1e-8,
        "grad_clip": 1.0,
        "log_every": 10,
        "checkpoint_every": 2500,
        "keep_checkpoints": 1,
        "keep_best_checkpoints": 1,
        "eval_every": 0,           # dev-split evaluation cadence for best-checkpoint selection (0 = off)
        "peak_tflops": 0.0,        # per-device peak for MFU; 0 = from the device table
        # XLA options for an fp32 train step's compile on CPU only ({} = XLA's defaults): YNNPACK for reductions
        # only, matmuls by XLA's own library, which runs the vocabulary-major CE head's products (objectives.py)
        # 1.3x faster (BENCHMARKS.md). An XLA that does not know an option compiles without them, with a warning.
        # A bf16 step compiles under XLA's defaults, where YNNPACK takes its bf16 products (layers.product_fp32_out).
        "cpu_compiler_options": dict(xla_options.CPU_MATMULS_BY_XLA),
        "cpu_onednn_matmuls": True,   # + oneDNN's matmul custom call where this XLA's rewriter takes dots (jax 0.12:
                                      # 3-6% faster fp32 steps; xla_options.CPU_ONEDNN_MATMULS) and, with the
                                      # compilation cache on, where this jax can serialize the program (0.12.0.1: not)
    })


def mesh_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})   # -1: all remaining devices


def compilation_cache_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "dir": "auto",              # compiled programs kept across runs, per host instruction set and process
                                    # count (compile_cache.py); auto: cache_root()/xla; "" = off
        "min_compile_seconds": 0.1,  # programs that compile faster are not kept (the main job's scoring programs
                                     # take 0.17-1.1 s each on a CPU, its train step 5-7 s)
    })


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = model_config()
    config.data = data_config()
    config.objective = objective_config()
    config.train = train_config()
    config.mesh = mesh_config()
    config.eval = default_eval_config()
    config.compilation_cache = compilation_cache_config()
    return config
