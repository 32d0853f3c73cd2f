"""Every shipped config and variant passes the pre-flight checks on the device counts it is meant for."""
from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO_ROOT
from xalign_jax import config_validation

# (config file, variant or None, device counts it must run on: the CPU, the 8-device test mesh, the launch meshes)
CASES = [
    ("demo.py", None, (1, 8)),
    ("gemma3.py", "270m", (1, 2)),
    ("gemma3.py", "270m-sweep", (1, 2)),
    ("gemma3.py", "270m-long", (1, 2)),
    ("gemma3.py", "270m-full", (1, 8)),
    ("bloom.py", "560m", (1, 8)),
    ("bloom.py", "7b1", (16, 32)),
    ("xglm.py", "564m", (1, 2)),
    ("xglm.py", "7.5b", (16, 32)),
    ("llama.py", "smollm2-135m", (1, 8)),
    ("llama.py", "7b", (16, 32)),
    ("bench_bloom.py", None, (1,)),
    ("bench_gpu.py", "gemma3-270m", (1, 8)),
    ("bench_gpu.py", "bloom-560m", (1, 8)),
]


def load_config(name: str, variant: str | None):
    spec = importlib.util.spec_from_file_location(f"config_{name[:-3]}", REPO_ROOT / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


@pytest.mark.parametrize("name,variant,device_counts", CASES)
def test_shipped_config_validates(name, variant, device_counts, tmp_path):
    config = load_config(name, variant)
    if "/" in str(config.model.source):      # weights the user points at: stand in an existing directory
        config.model.source = str(tmp_path)
    for devices in device_counts:
        config_validation.validate(config, mode="train", num_devices=devices)


def test_a_clm_row_count_the_mesh_cannot_split_is_refused():
    config = load_config("demo.py", None)
    config.data.clm_rows = 4
    with pytest.raises(config_validation.ConfigError, match="config data.clm_rows: 4 is not divisible"):
        config_validation.validate(config, mode="train", num_devices=8)


def test_a_supervised_group_that_would_straddle_shards_or_micro_batches_is_refused():
    """8 rows: 2 devices x 2 micro-batches leave 2 rows per shard's micro-batch (groups of 2 fit, 4 do not)."""
    config = load_config("demo.py", None)
    config.data.supervised_cap, config.data.supervised_group_rows = 64, 2
    config.train.micro_batches = 2
    config_validation.validate(config, mode="train", num_devices=2)
    config.data.supervised_group_rows = 4
    with pytest.raises(config_validation.ConfigError,
                       match=r"config data.supervised_group_rows: 4 does not divide the 2 CLM rows .* 8 / \(2\*2\)"):
        config_validation.validate(config, mode="train", num_devices=2)
    config_validation.validate(config, mode="train", num_devices=1)       # 4 rows per micro-batch on one device
    config.data.supervised_cap = 0                                        # no cap: the group is unused
    config_validation.validate(config, mode="train", num_devices=2)
    config.data.supervised_group_rows = 0
    with pytest.raises(config_validation.ConfigError, match="config data.supervised_group_rows: must be at least 1"):
        config_validation.validate(config, mode="train", num_devices=2)


def test_bucket_ladders_must_increase_within_their_limit():
    """Row lengths within 1..seq_len and LM-head slots within 1..supervised_cap (none at all without a cap)."""
    config = load_config("demo.py", None)
    config.data.clm_len_buckets = (64, config.data.seq_len)
    config_validation.validate(config, mode="train", num_devices=8)
    for ladder in ((96, 64), (0, 64), (64, config.data.seq_len + 1)):
        config.data.clm_len_buckets = ladder
        with pytest.raises(config_validation.ConfigError, match=r"config data.clm_len_buckets: must be an increasing"):
            config_validation.validate(config, mode="train", num_devices=8)
    config.data.clm_len_buckets = ()
    config.data.head_slot_buckets = (32,)
    with pytest.raises(config_validation.ConfigError, match=r"data.head_slot_buckets: .*1..data.supervised_cap = 0,"):
        config_validation.validate(config, mode="train", num_devices=8)
    config.data.supervised_cap = 64
    config_validation.validate(config, mode="train", num_devices=8)


@pytest.mark.parametrize("key", ["batch_rows", "head_positions", "cpu_vocab_block"])
def test_an_evaluator_size_below_one_is_refused_in_every_mode(key):
    config = load_config("demo.py", None)
    config.eval[key] = 0
    for mode in ("train", "eval"):
        with pytest.raises(config_validation.ConfigError, match=f"config eval.{key}: must be positive, got 0"):
            config_validation.validate(config, mode=mode, num_devices=1)


def test_a_negative_compile_time_threshold_is_refused_in_every_mode():
    config = load_config("demo.py", None)
    config.compilation_cache.min_compile_seconds = -1.0
    for mode in ("train", "eval"):
        with pytest.raises(config_validation.ConfigError,
                           match="config compilation_cache.min_compile_seconds: must be 0 or positive, got -1.0"):
            config_validation.validate(config, mode=mode, num_devices=1)


@pytest.mark.parametrize("key,value,message", [
    ("micro_batches", 0, "must be positive, got 0"), ("log_every", 0, "must be positive, got 0"),
    ("checkpoint_every", 0, "must be positive, got 0"), ("batch_size", 0, "must be positive, got 0"),
    ("steps", 0, "must be positive, got 0"), ("grad_clip", -1.0, "must be 0 or positive, got -1.0"),
    ("warmup_steps", -5, "must be 0 or positive, got -5"), ("lr", -1e-5, "must be 0 or positive, got -1e-05"),
    ("end_lr_ratio", 1.5, r"must be within \[0, 1\], got 1.5"),
])
def test_train_numbers_that_cannot_work_are_refused_before_anything_loads(key, value, message):
    config = load_config("demo.py", None)
    config.train[key] = value
    with pytest.raises(config_validation.ConfigError, match=f"^config train.{key}: {message}$"):
        config_validation.validate(config, mode="train", num_devices=1)


def test_the_deepspeed_schedule_refuses_a_final_learning_rate():
    config = load_config("demo.py", None)
    config.train.update(schedule="deepspeed", end_lr_ratio=0.1)
    with pytest.raises(config_validation.ConfigError, match="^config train.end_lr_ratio: 0.1: the deepspeed schedule"):
        config_validation.validate(config, mode="train", num_devices=1)
    config.train.end_lr_ratio = 0.0
    config_validation.validate(config, mode="train", num_devices=1)


def test_a_contrastive_weight_without_clm_is_refused():
    """Without CLM the reference's loss is L_cl unweighted (AFP_SPEC §1.2.7): a cl_weight there would be ignored."""
    config = load_config("demo.py", None)
    config.objective.update(clm_weight=0.0, cl_weight=2.0)
    with pytest.raises(config_validation.ConfigError, match="^config objective.cl_weight: 2.0 would be ignored"):
        config_validation.validate(config, mode="train", num_devices=1)
    config.objective.cl_weight = 1.0
    config_validation.validate(config, mode="train", num_devices=1)


def test_an_unknown_ce_gradient_layout_is_refused_before_anything_compiles():
    config = load_config("demo.py", None)
    config.objective.clm_logits_grad = "vocab-major"
    with pytest.raises(config_validation.ConfigError,
                       match=r"^config objective.clm_logits_grad: 'vocab-major': choose auto or one of"):
        config_validation.validate(config, mode="train", num_devices=1)
    config.objective.clm_logits_grad = "vocab_major"
    config_validation.validate(config, mode="train", num_devices=1)
