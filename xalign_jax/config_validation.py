"""Config checks that run before anything is loaded or compiled, each failing with one line naming the key."""
from __future__ import annotations

import pathlib
import re
from typing import Any

import jax

from xalign_jax.objectives import CHUNK_GRADS

POOLER = re.compile(r"^(last|avg|max)-(\d+)$")


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with ``config <key>:``."""


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"config {key}: {message}")


def mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with one ``-1`` entry filled so that the product equals ``num_devices``."""
    sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.tensor)]
    names = ("mesh.data", "mesh.fsdp", "mesh.tensor")
    if sizes.count(-1) > 1:
        _fail("mesh", f"at most one of data/fsdp/tensor may be -1, got {sizes}")
    for name, size in zip(names, sizes):
        if size == 0 or size < -1:
            _fail(name, f"must be a positive size or -1, got {size}")
    known = 1
    for size in sizes:
        known *= size if size != -1 else 1
    if -1 in sizes:
        if num_devices % known:
            _fail("mesh", f"fixed axes {sizes} do not divide the {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if sizes[0] * sizes[1] * sizes[2] != num_devices:
        _fail("mesh", f"data*fsdp*tensor = {sizes[0] * sizes[1] * sizes[2]} but there are {num_devices} devices")
    return sizes[0], sizes[1], sizes[2]


def pool_layer(pooler: str) -> int:
    match = POOLER.match(pooler)
    if not match:
        _fail("objective.pooler", f"{pooler!r} is not <last|avg|max>-<layer>, e.g. 'last-1' or 'avg-12'")
    return int(match.group(2))


def _validate_supervised_groups(data_cfg: Any, batch_shards: int, micro_batches: int) -> None:
    """The CE gathers the supervised positions of each group of ``data.supervised_group_rows`` consecutive rows
    by a reshape of the micro-batch; a group that straddled two data shards or two micro-batches would need
    rows from another device (or another accumulation step), so it must divide the rows of one shard's micro-batch
    (``data.clm_rows`` is already known to be a multiple of ``batch_shards * micro_batches``)."""
    cap, group = int(data_cfg.supervised_cap), int(data_cfg.supervised_group_rows)
    if cap < 0:
        _fail("data.supervised_cap", f"must be 0 (off) or positive, got {cap}")
    if group < 1:
        _fail("data.supervised_group_rows", f"must be at least 1, got {group}")
    local_rows = data_cfg.clm_rows // (batch_shards * micro_batches)
    if cap and local_rows % group:
        _fail("data.supervised_group_rows", f"{group} does not divide the {local_rows} CLM rows of one data shard's "
                                            f"micro-batch (data.clm_rows / (data*fsdp*train.micro_batches) = "
                                            f"{data_cfg.clm_rows} / ({batch_shards}*{micro_batches})); a group of "
                                            "rows must not straddle a shard or a micro-batch")


def validate(config: Any, *, mode: str, num_devices: int | None = None) -> None:
    """Raise ``ConfigError`` for the first problem found; nothing heavy is imported or loaded."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    data, fsdp, _ = mesh_shape(config.mesh, num_devices)
    if not str(config.model.source):
        _fail("model.source", "empty: set a fetch name (gemma3-270m), an HF directory or a .gguf file")
    source = str(config.model.source).removeprefix("random:")
    if ("/" in source or source.endswith(".gguf")) and not pathlib.Path(source).expanduser().exists():
        _fail("model.source", f"{source} does not exist")
    for key in ("batch_rows", "head_positions", "cpu_vocab_block"):
        if int(config.eval[key]) < 1:
            _fail(f"eval.{key}", f"must be positive, got {config.eval[key]}")
    if float(config.compilation_cache.min_compile_seconds) < 0:
        _fail("compilation_cache.min_compile_seconds",
              f"must be 0 or positive, got {config.compilation_cache.min_compile_seconds}")
    if mode != "train":
        return
    batch_shards = data * fsdp
    train, data_cfg = config.train, config.data
    _validate_train_numbers(train)
    for key, value in (("train.batch_size", train.batch_size), ("data.clm_rows", data_cfg.clm_rows)):
        if value % (batch_shards * train.micro_batches):
            _fail(key, f"{value} is not divisible by data*fsdp*micro_batches = "
                       f"{batch_shards}*{train.micro_batches}")
    _validate_supervised_groups(data_cfg, batch_shards, train.micro_batches)
    if train.warmup_steps > train.steps:
        _fail("train.warmup_steps", f"{train.warmup_steps} exceeds train.steps = {train.steps}")
    _validate_data_source(config)
    if sorted(data_cfg.cl_buckets) != list(data_cfg.cl_buckets) or not data_cfg.cl_buckets:
        _fail("data.cl_buckets", f"must be a non-empty increasing tuple, got {data_cfg.cl_buckets}")
    _validate_ladder(data_cfg, "clm_len_buckets", "seq_len")
    _validate_ladder(data_cfg, "cl_pack_rows")
    _validate_ladder(data_cfg, "head_slot_buckets", "supervised_cap")
    pool_layer(config.objective.pooler)
    if config.objective.temperature <= 0:
        _fail("objective.temperature", f"must be positive, got {config.objective.temperature}")
    if config.objective.clm_logits_grad not in ("auto", *CHUNK_GRADS):
        _fail("objective.clm_logits_grad", f"{config.objective.clm_logits_grad!r}: choose auto or one of "
                                           f"{sorted(CHUNK_GRADS)}")
    if not config.objective.clm_weight and config.objective.cl_weight != 1.0:
        _fail("objective.cl_weight", f"{config.objective.cl_weight} would be ignored: without CLM "
                                     "(objective.clm_weight = 0) the loss is L_cl unweighted, as the reference's")


def _validate_ladder(data_cfg: Any, key: str, limit_key: str | None = None) -> None:
    """A bucket ladder: increasing positive sizes, within 1..``data[limit_key]`` when it has a limit (empty =
    off)."""
    ladder = list(data_cfg[key])
    limit = int(data_cfg[limit_key]) if limit_key else None
    if sorted(set(ladder)) != ladder or any(b < 1 or (limit is not None and b > limit) for b in ladder):
        within = f"within 1..data.{limit_key} = {limit}" if limit_key else "of at least 1"
        _fail(f"data.{key}", f"must be an increasing tuple of sizes {within}, got {data_cfg[key]}")


def _validate_train_numbers(train: Any) -> None:
    """Counts that are divisors or cadences must be positive; rates and thresholds must not flip a sign (a
    negative grad_clip would reverse every gradient, a negative warmup shift the schedule)."""
    for key in ("steps", "batch_size", "micro_batches", "log_every", "checkpoint_every"):
        if int(train[key]) < 1:
            _fail(f"train.{key}", f"must be positive, got {train[key]}")
    for key in ("warmup_steps", "eval_every", "lr", "grad_clip", "weight_decay"):
        if train[key] < 0:
            _fail(f"train.{key}", f"must be 0 or positive, got {train[key]}")
    if not 0 <= train.end_lr_ratio <= 1:
        _fail("train.end_lr_ratio", f"must be within [0, 1], got {train.end_lr_ratio}")
    if train.schedule == "deepspeed" and train.end_lr_ratio:
        _fail("train.end_lr_ratio", f"{train.end_lr_ratio}: the deepspeed schedule decays to 0, as the reference's")


def _validate_data_source(config: Any) -> None:
    """Real records (a file, or the shared corpora for the default recipe) unless the run is a synthetic benchmark;
    a model without tokenizer (``model.source='random'``) can only train on synthetic data and evaluate nothing."""
    data_cfg = config.data
    no_tokenizer = str(config.model.source) == "random"
    if data_cfg.synthetic_records:
        if data_cfg.synthetic_records < 0:
            _fail("data.synthetic_records", f"must be 0 (off) or positive, got {data_cfg.synthetic_records}")
    elif no_tokenizer:
        _fail("model.source", "'random' has no tokenizer, so it can train only on data.synthetic_records")
    elif data_cfg.train_file and not pathlib.Path(data_cfg.train_file).is_file():
        _fail("data.train_file", f"{data_cfg.train_file} is not a file")
    elif not data_cfg.train_file and not pathlib.Path(data_cfg.data_dir).is_dir():
        _fail("data.data_dir", f"{data_cfg.data_dir} is not a directory (needed to build the default training set)")
    if no_tokenizer:
        for key in ("before_training", "after_training"):
            if config.eval[key]:
                _fail(f"eval.{key}", "model.source 'random' has no tokenizer to evaluate with; set it False")
        if config.train.eval_every:
            _fail("train.eval_every", "model.source 'random' has no tokenizer to evaluate with; set it 0")


def validate_against_model(config: Any, num_layers: int) -> None:
    """Checks that need the model's depth (still before any compile)."""
    layer = pool_layer(config.objective.pooler)
    if layer > num_layers:
        _fail("objective.pooler", f"layer {layer} is beyond the model's {num_layers} blocks (0..{num_layers})")
