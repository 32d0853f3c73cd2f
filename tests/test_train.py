"""The trainer end to end on a tiny model: losses fall, resume is bitwise exact, meshes agree, errors are exact."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.train_fixtures import tiny_train_config, train_tiny_tokenizer
from xalign_jax import checkpoint as ckpt_lib
from xalign_jax import config_defaults, config_validation, train, training_data, xla_options


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, shared_data):
    return train_tiny_tokenizer(shared_data, tmp_path_factory.mktemp("tok"))


def _params(trainer) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(trainer.state["params"]))]


def _run(config, workdir, **run_kwargs):
    trainer = train.Trainer(config, workdir)
    try:
        summary = trainer.run(**run_kwargs)
        return trainer, summary
    finally:
        trainer.close()


def test_demo_run_decreases_both_losses(tokenizer_dir, shared_data, tmp_path):
    config = tiny_train_config(tokenizer_dir, shared_data, steps=30, checkpoint_every=100, log_every=1, lr=1e-2)
    _, summary = _run(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert last["train/clm_loss"] < first["train/clm_loss"] - 0.5
    assert last["train/cl_loss"] < first["train/cl_loss"]
    assert summary["steps"] == 30 and summary["compiles"] <= len(config.data.cl_buckets)
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 30
    assert summary["clm_targets_lost_at_row_breaks"] == 0         # segments packing never splits an example
    for key in ("train/tokens_per_s", "train/mfu", "train/grad_norm", "train/lr", "train/cl_accuracy"):
        assert np.isfinite(last[key]), key


def test_resume_is_bitwise_identical(tokenizer_dir, shared_data, tmp_path):
    config = tiny_train_config(tokenizer_dir, shared_data, steps=6, checkpoint_every=3)
    straight, _ = _run(config, tmp_path / "straight")
    first_half, summary = _run(config, tmp_path / "resumed", stop_after=3)
    assert summary["steps"] == 3
    resumed, summary = _run(config, tmp_path / "resumed")
    assert summary["steps_this_run"] == 3 and summary["steps"] == 6
    _, again = _run(config, tmp_path / "resumed")        # nothing left: the finished run's summary is kept
    assert again["steps_this_run"] == 0 and again["final"] == summary["final"] and again["final"]["loss"] is not None
    for a, b in zip(_params(straight), _params(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restore_onto_a_different_mesh(tokenizer_dir, shared_data, tmp_path):
    config = tiny_train_config(tokenizer_dir, shared_data, steps=3, checkpoint_every=3)
    saved, _ = _run(config, tmp_path)
    other = tiny_train_config(tokenizer_dir, shared_data, steps=3, checkpoint_every=3)
    other.mesh.update(dict(data=2, fsdp=2, tensor=2))
    restored = train.Trainer(other, tmp_path)
    try:
        assert restored.step == 3
        for a, b in zip(_params(saved), _params(restored), strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        restored.close()


def test_best_step_is_the_highest_kept_score_not_the_latest(tmp_path):
    checkpointer = ckpt_lib.Checkpointer(tmp_path, keep=1, keep_best=1)
    try:
        for step, score in ((1, 5.0), (2, 1.0), (3, 0.0), (4, None)):
            checkpointer.save(step, {"w": jnp.full((2,), float(step))}, {"pos": step}, {"step": step},
                              selection_score=score)
            checkpointer.wait()
        assert checkpointer.all_steps() == [1, 4] and checkpointer.best_step() == 1
    finally:
        checkpointer.close()


def test_a_score_that_is_not_finite_never_becomes_the_best(tmp_path):
    """A diverged loss gives NaN; ranked, it sorted as the best and the real best checkpoint was deleted."""
    checkpointer = ckpt_lib.Checkpointer(tmp_path, keep=1, keep_best=1)
    try:
        for step, score in ((1, -2.0), (2, -1.5), (3, float("nan"))):
            checkpointer.save(step, {"w": jnp.full((2,), float(step))}, {"pos": step}, {"step": step},
                              selection_score=score)
            checkpointer.wait()
        assert checkpointer.all_steps() == [2, 3] and checkpointer.best_step() == 2
    finally:
        checkpointer.close()


def test_checkpoints_are_scored_by_their_own_step_and_throughput_skips_saves(tokenizer_dir, shared_data, tmp_path):
    """A checkpoint step is logged before its save, so its score is its own loss; the save's seconds stay out of
    every row's throughput; a finished run started again saves nothing twice."""
    config = tiny_train_config(tokenizer_dir, shared_data, steps=6, checkpoint_every=2, log_every=3,
                               keep_checkpoints=3)
    _run(config, tmp_path)
    rows = {row["step"]: row for row in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in row}
    assert sorted(rows) == [2, 3, 4, 6]
    checkpointer = ckpt_lib.Checkpointer(tmp_path / "checkpoints")
    try:
        assert checkpointer.all_steps() == [2, 4, 6]
        for step in (2, 4, 6):
            metrics = checkpointer.restore_meta(step)["metrics"]
            assert metrics["step"] == step and metrics["loss"] == pytest.approx(rows[step]["train/loss"])
        assert checkpointer.best_step() == min((2, 4, 6), key=lambda s: rows[s]["train/loss"])
    finally:
        checkpointer.close()
    step_times = [row["train/step_time_s"] for row in rows.values()]
    assert min(step_times) > 0 and max(step_times) < 100 * min(step_times), step_times
    _, summary = _run(config, tmp_path)
    assert summary["steps"] == 6 and summary["steps_this_run"] == 0


def test_with_dev_evaluations_the_best_checkpoint_is_the_best_dev_score(tokenizer_dir, shared_data, tmp_path):
    """Dev evaluations at steps 2, 4 and 6 score 0.3, 0.9, 0.5 (a stand-in evaluator: this tests the selection,
    not the scoring): the step-4 checkpoint is kept and selected, though it is neither the latest nor the lowest
    loss's."""
    scores = {2: 0.3, 4: 0.9, 6: 0.5}
    config = tiny_train_config(tokenizer_dir, shared_data, steps=6, checkpoint_every=2, eval_every=2,
                               keep_checkpoints=1, keep_best_checkpoints=1)
    ready_when_called = []

    def evaluator(model, tokenizer, params):
        # the steps before an evaluation have run when its pause starts (their time is the throughput window's)
        ready_when_called.append(all(leaf.is_ready() for leaf in jax.tree.leaves(params)))
        return {"avg_zero": scores[int(jax.device_get(trainer.state["step"]))]}

    trainer = train.Trainer(config, tmp_path, evaluator=evaluator)
    try:
        summary = trainer.run()
        assert ready_when_called == [True, True, True]
        assert trainer.checkpointer.all_steps() == [4, 6] and summary["best_checkpoint_step"] == 4
        best = trainer.best_params()
        restored = trainer.checkpointer.restore(4, ckpt_lib.abstract_like(trainer.state))[0]["params"]
        for a, b in zip(jax.tree.leaves(best), jax.tree.leaves(restored), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    finally:
        trainer.close()


def test_sigterm_writes_a_final_checkpoint_and_exits_cleanly(tokenizer_dir, shared_data, tmp_path):
    config = tiny_train_config(tokenizer_dir, shared_data, steps=200, checkpoint_every=1000)
    trainer = train.Trainer(config, tmp_path)
    timer = threading.Timer(0.1, lambda: os.kill(os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        summary = trainer.run()
    finally:
        timer.cancel()
        trainer.close()
    assert summary["preempted"] and 0 < summary["steps"] < 200
    assert summary["latest_checkpoint_step"] == summary["steps"]


def test_malformed_record_stops_before_training_with_file_line_field(tokenizer_dir, shared_data, tmp_path):
    good = {"sent0": "Hello.", "sent1": "你好。", "clm_text": "Say hi. Answer in Chinese: 你好", "clm_prompt_len": 27}
    bad = dict(good, clm_prompt_len="27")
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (good, good, bad)) + "\n")
    config = tiny_train_config(tokenizer_dir, shared_data)
    config.data.train_file = str(path)
    from xalign_jax.data.records import RecordError
    with pytest.raises(RecordError) as error:
        train.Trainer(config, tmp_path / "work")
    assert str(error.value).startswith(f"{path}:3: clm_prompt_len: ")


def test_a_workdir_recipe_built_from_other_settings_is_refused(tokenizer_dir, shared_data, tmp_path):
    """The default recipe is built into the workdir once, with its settings beside it; asking for other settings
    in the same workdir must not silently train on the old records."""
    config = tiny_train_config(tokenizer_dir, shared_data)
    path = training_data.training_file(config, tmp_path)
    built = path.read_bytes()
    assert json.loads(path.with_suffix(".recipe.json").read_text())["data.recipe_records"] == 96
    assert training_data.training_file(config, tmp_path) == path and path.read_bytes() == built
    config.train.seed = 1
    with pytest.raises(ValueError, match=r"train\.jsonl was built from other recipe settings \(built, now\): "
                                         r"\{'train\.seed': \(0, 1\)\}"):
        training_data.training_file(config, tmp_path)


def test_config_errors_name_the_key(tokenizer_dir, shared_data):
    config = tiny_train_config(tokenizer_dir, shared_data, batch_size=6)
    with pytest.raises(config_validation.ConfigError, match=r"^config train.batch_size: 6 is not divisible"):
        config_validation.validate(config, mode="train", num_devices=8)
    config = tiny_train_config(tokenizer_dir, shared_data)
    config.mesh.update(dict(data=3, fsdp=1, tensor=1))
    with pytest.raises(config_validation.ConfigError, match=r"^config mesh: data\*fsdp\*tensor = 3"):
        config_validation.validate(config, mode="train", num_devices=8)
    config = tiny_train_config(tokenizer_dir, shared_data)
    config.data.cl_pack_rows = (4, 2)
    with pytest.raises(config_validation.ConfigError, match=r"^config data.cl_pack_rows: must be an increasing"):
        config_validation.validate(config, mode="train", num_devices=8)
    config = tiny_train_config(tokenizer_dir, shared_data)
    with pytest.raises(config_validation.ConfigError, match=r"^config objective.pooler: layer 5 is beyond"):
        config.objective.pooler = "last-5"
        config_validation.validate_against_model(config, num_layers=2)


def _first_losses(config, workdir, steps: int = 2) -> list[dict]:
    config.train.steps = steps
    _run(config, workdir)
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_sharded_mesh_gives_the_same_steps(tokenizer_dir, shared_data, tmp_path):
    """(data=8) vs (data=2, fsdp=2, tensor=2) on the same global batches: same losses, grad norms, updates."""
    sharded = tiny_train_config(tokenizer_dir, shared_data, checkpoint_every=100)
    sharded.mesh.update(dict(data=2, fsdp=2, tensor=2))
    reference = _first_losses(tiny_train_config(tokenizer_dir, shared_data, checkpoint_every=100), tmp_path / "a")
    for ours, theirs in zip(_first_losses(sharded, tmp_path / "b"), reference, strict=True):
        for key in ("train/loss", "train/cl_loss", "train/clm_loss", "train/grad_norm"):
            np.testing.assert_allclose(ours[key], theirs[key], rtol=2e-5, err_msg=key)


def test_gradient_accumulation_keeps_the_exact_token_mean(tokenizer_dir, shared_data, tmp_path):
    """2 micro-batches: the CLM loss is the token mean over the whole step (not a mean of micro-batch means).
    The contrastive loss legitimately differs: each micro-batch draws negatives from its own records."""
    configs = [tiny_train_config(tokenizer_dir, shared_data, checkpoint_every=100, batch_size=16, micro_batches=m)
               for m in (1, 2)]
    for config in configs:
        config.data.clm_rows = 16
    reference = _first_losses(configs[0], tmp_path / "a", 1)
    ours = _first_losses(configs[1], tmp_path / "b", 1)
    np.testing.assert_allclose(ours[0]["train/clm_loss"], reference[0]["train/clm_loss"], rtol=2e-5)


def test_accumulation_gives_the_same_steps_on_any_mesh(tokenizer_dir, shared_data, tmp_path):
    """2 micro-batches on 8 data shards and on (data=2, fsdp=2, tensor=2): the shard-major layout gives every
    device a part of each micro-batch, and each micro-batch is still the same block of records (the contrastive
    loss, whose negatives are the micro-batch's, matches too)."""
    configs = [tiny_train_config(tokenizer_dir, shared_data, checkpoint_every=100, batch_size=16, micro_batches=2)
               for _ in range(2)]
    configs[1].mesh.update(dict(data=2, fsdp=2, tensor=2))
    for config in configs:
        config.data.clm_rows = 16
    reference = _first_losses(configs[0], tmp_path / "a")
    for ours, theirs in zip(_first_losses(configs[1], tmp_path / "b"), reference, strict=True):
        for key in ("train/loss", "train/cl_loss", "train/clm_loss", "train/grad_norm"):
            np.testing.assert_allclose(ours[key], theirs[key], rtol=2e-5, err_msg=key)


@pytest.mark.parametrize("mesh, micro_batches", [({}, 1), (dict(data=2, fsdp=2, tensor=2), 2)])
def test_packed_contrastive_sentences_give_the_same_steps(tokenizer_dir, shared_data, tmp_path, caplog, mesh,
                                                          micro_batches):
    """data.cl_pack_rows: the sentences of each data shard's part of a micro-batch share rows as segments and are
    pooled from their own segments: the same losses and gradient norms as one padded row per sentence, on 8 data
    shards and on (data=2, fsdp=2, tensor=2) with 2 micro-batches."""
    configs = [tiny_train_config(tokenizer_dir, shared_data, checkpoint_every=100, batch_size=32,
                                 micro_batches=micro_batches) for _ in range(2)]
    for config in configs:
        config.mesh.update(mesh)
        config.data.clm_rows = 32
        config.data.cl_buckets = (128,)     # this tokenizer's sentences: median 37 tokens, 58% above 32
    configs[1].data.cl_pack_rows = (2, 3, 4, 6)
    reference = _first_losses(configs[0], tmp_path / "a")
    with caplog.at_level(logging.INFO, logger="xalign_jax.train"):
        packed = _first_losses(configs[1], tmp_path / "b")
    rows = {int(n) for n in re.findall(r"'sent_ids': \((\d+), \d+\)", caplog.text)}
    assert rows and max(rows) < 2 * 32, caplog.text[-2000:]         # fewer rows than the 64 sentences
    for ours, theirs in zip(packed, reference, strict=True):
        for key in ("train/loss", "train/cl_loss", "train/clm_loss", "train/grad_norm", "train/cl_accuracy"):
            np.testing.assert_allclose(ours[key], theirs[key], rtol=2e-5, err_msg=key)


@pytest.mark.parametrize("slot_ladder", [(), (48, 64, 96)])
def test_supervised_only_cross_entropy_gives_the_same_steps(tokenizer_dir, shared_data, tmp_path, slot_ladder):
    """data.supervised_cap = 2 x seq_len per group of 2 rows (a cap that never binds, so the packing is identical),
    on a mesh with 2 rows per data shard: gathering each group's supervised positions before the LM head changes
    no loss, and every supervised token was scored; also with fewer head slots per step (``head_slot_buckets``)."""
    gathered = tiny_train_config(tokenizer_dir, shared_data, checkpoint_every=100)
    gathered.mesh.update(dict(data=2, fsdp=2, tensor=2))
    gathered.data.supervised_cap, gathered.data.supervised_group_rows = 2 * gathered.data.seq_len, 2
    gathered.data.head_slot_buckets = slot_ladder
    reference = _first_losses(tiny_train_config(tokenizer_dir, shared_data, checkpoint_every=100), tmp_path / "a")
    for ours, theirs in zip(_first_losses(gathered, tmp_path / "b"), reference, strict=True):
        assert ours["train/clm_unscored"] == 0
        for key in ("train/loss", "train/clm_loss", "train/grad_norm"):
            np.testing.assert_allclose(ours[key], theirs[key], rtol=2e-5, err_msg=key)


def test_row_length_buckets_give_the_same_steps(tokenizer_dir, shared_data, tmp_path, caplog):
    """data.clm_len_buckets: each step's rows are cut to the smallest length that holds them (its examples dealt
    evenly over the rows), a compile per length used; the steps train on the same examples, so the same losses."""
    config = tiny_train_config(tokenizer_dir, shared_data, checkpoint_every=100, batch_size=16)
    config.data.seq_len = 512      # 8 rows for ~2,400 tokens: two examples a row, dealt to ~300 tokens each
    reference = _first_losses(config, tmp_path / "a", 3)
    config.data.clm_len_buckets = (256, 384)
    with caplog.at_level(logging.INFO, logger="xalign_jax.train"):
        bucketed = _first_losses(config, tmp_path / "b", 3)
    row_lengths = {int(length) for length in re.findall(r"'clm_ids': \(8, (\d+)\)", caplog.text)}
    assert row_lengths and min(row_lengths) < 512, caplog.text[-2000:]
    for ours, theirs in zip(bucketed, reference, strict=True):
        for key in ("train/loss", "train/cl_loss", "train/clm_loss", "train/grad_norm"):
            np.testing.assert_allclose(ours[key], theirs[key], rtol=2e-5, err_msg=key)


def _matmul_step(state, batch):
    return state + batch["x"] @ batch["y"], {"corner": state[0, 0]}


def _compiled_matmul_step(options, size: int = 64) -> jax.stages.Compiled:
    steps = train.CompiledSteps(_matmul_step, None, None, options)
    x, y = (jnp.asarray(np.random.default_rng(i).normal(size=(size, size)), jnp.float32) for i in (0, 1))
    state, _ = steps(jnp.ones((size, size)), {"x": x, "y": y})
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    # fp32 rounding, in any summation order, stays within a few eps of the sum of |terms| (a wrong product is O(1))
    bound = 8 * np.finfo(np.float32).eps * (1 + np.abs(x64) @ np.abs(y64))
    assert np.all(np.abs(np.asarray(state, np.float64) - (1 + x64 @ y64)) <= bound)
    assert steps.num_compiles == 1
    return next(iter(steps._compiled.values()))


def test_the_cpu_compiler_options_reach_xla_and_route_matmuls_off_ynnpack(caplog):
    """The default ``train.cpu_compiler_options`` are understood by this XLA (no warning) and change the program:
    XLA's default sends the product through a YNNPACK fusion, the options keep it a plain dot."""
    defaults = config_defaults.train_config().cpu_compiler_options.to_dict()
    with caplog.at_level(logging.WARNING, logger=xla_options.log.name):
        usable = xla_options.usable(defaults, "cpu")
    assert usable == defaults and not caplog.records
    ours = _compiled_matmul_step(usable).as_text()
    assert "__ynn_fusion" in _compiled_matmul_step(None).as_text()
    assert "__ynn_fusion" not in ours and " dot(" in ours


def test_onednn_matmuls_are_added_where_this_xla_makes_a_product_the_custom_call_and_can_keep_it(monkeypatch):
    """``with_onednn_matmuls`` adds oneDNN's matmul options exactly where a product compiled with them becomes the
    custom call (jax 0.12: yes; 0.10.2 accepts the options and keeps the dot) and, while a persistent compilation
    cache is on (as in these tests), where that program can be serialized (jax 0.12.0.1: not); the product stays
    right."""
    base = config_defaults.train_config().cpu_compiler_options.to_dict()
    merged = {**base, **xla_options.CPU_ONEDNN_MATMULS}
    compiled = _compiled_matmul_step(merged, size=256) if xla_options.usable(merged, "cpu") else None
    takes = compiled is not None and xla_options.ONEDNN_MATMUL_TARGET in compiled.as_text()
    assert xla_options.compilation_cache_on()
    keeps = takes and xla_options.serialization_error(compiled) is None
    assert xla_options.with_onednn_matmuls(base, "cpu") == (merged if keeps else base)
    monkeypatch.setattr(xla_options, "compilation_cache_on", lambda: False)
    assert xla_options.with_onednn_matmuls(base, "cpu") == (merged if takes else base)
    assert xla_options.with_onednn_matmuls(base, "gpu") == base


def test_an_fp32_train_steps_program_can_be_kept_in_the_compilation_cache():
    """The options an fp32 CPU step compiles with (``for_compute_dtype``, oneDNN's matmuls asked for, as the
    trainer's defaults do) give a program jax can serialize: with jax 0.12.0.1's oneDNN matmuls it could not, and
    every run compiled its train step again (the cache write failed with std::bad_alloc)."""
    base = config_defaults.train_config().cpu_compiler_options.to_dict()
    options = xla_options.for_compute_dtype(base, "cpu", "float32", onednn_matmuls=True)
    assert xla_options.serialization_error(_compiled_matmul_step(options, size=256)) is None


def test_onednn_matmuls_that_cannot_be_kept_are_left_out_with_a_warning_while_the_cache_is_on(monkeypatch, caplog):
    """The decision itself, with this jax's probe replaced by jax 0.12.0.1's answer (the custom call, and a failing
    serializer): left out with a warning while the cache is on, added when it is off."""
    base = config_defaults.train_config().cpu_compiler_options.to_dict()
    monkeypatch.setattr(xla_options, "onednn_probe", lambda options: (True, "MemoryError: std::bad_alloc"))
    with caplog.at_level(logging.WARNING, logger=xla_options.log.name):
        assert xla_options.with_onednn_matmuls(base, "cpu") == base
    assert "std::bad_alloc" in caplog.text and "compilation_cache.dir=''" in caplog.text
    monkeypatch.setattr(xla_options, "compilation_cache_on", lambda: False)
    assert xla_options.with_onednn_matmuls(base, "cpu") == {**base, **xla_options.CPU_ONEDNN_MATMULS}


def test_rejected_compiler_options_fall_back_to_the_defaults_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger=xla_options.log.name):
        assert xla_options.usable({"xla_cpu_no_such_option": "1"}, "cpu") is None
    assert "rejected" in caplog.text and "xla_cpu_no_such_option" in caplog.text


def test_compiler_options_apply_on_cpu_only():
    assert xla_options.usable(dict(xla_options.CPU_MATMULS_BY_XLA), "gpu") is None
    assert xla_options.usable({}, "cpu") is None


def test_bf16_programs_compile_under_xlas_defaults_and_fp32_ones_with_the_options():
    """``for_compute_dtype``: a bf16 program gets XLA's defaults (YNNPACK takes its bf16 products), an fp32 one the
    configured options (plus oneDNN's matmuls where they take dots, if asked); off the CPU, the defaults."""
    base = config_defaults.train_config().cpu_compiler_options.to_dict()
    assert xla_options.for_compute_dtype(base, "cpu", "bfloat16", onednn_matmuls=True) is None
    assert xla_options.for_compute_dtype(base, "cpu", "float32") == base
    assert (xla_options.for_compute_dtype(base, "cpu", "float32", onednn_matmuls=True)
            == xla_options.with_onednn_matmuls(base, "cpu"))
    assert xla_options.for_compute_dtype(base, "gpu", "float32", onednn_matmuls=True) is None
