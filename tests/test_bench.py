"""The benchmark harness on a tiny config (fields present and self-consistent) and the PyTorch reference recipe
(its pieces against NumPy and transformers' own loss; it trains)."""
from __future__ import annotations

import json
import math
import mmap
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from benchmarks import torch_reference
from tests.tiny_models import TINY_HF_CONFIGS, reference_batch
from tests.train_fixtures import tiny_train_config, train_tiny_tokenizer
from xalign_jax import bench, metrics, train


@pytest.fixture(scope="module")
def report(tmp_path_factory, shared_data):
    tokenizer_dir = train_tiny_tokenizer(shared_data, tmp_path_factory.mktemp("tok"))
    config = tiny_train_config(tokenizer_dir, shared_data)
    config.data.cl_buckets = (64,)
    return bench.run_benchmark(config, steps=2, warmup=1, workdir=tmp_path_factory.mktemp("bench"),
                               torch_precisions=("float32", "bf16_autocast"))


def test_jax_timings_are_positive_and_every_shape_compiles_once(report):
    jax_part = report["jax"]
    step = jax_part["step_s"]
    assert len(step["all"]) == 2
    assert 0 < step["min"] <= step["median"] <= step["max"]
    assert jax_part["compiles"] == len(report["batch"]["clm_lengths"]) and jax_part["compile_s"] > 0
    assert all(math.isfinite(loss) for loss in jax_part["losses"])
    assert 0 < jax_part["mfu"] < 1
    assert jax_part["model_tflops_per_s"] == pytest.approx(
        report["batch"]["flops_per_step"] / step["median"] / 1e12)


def test_every_row_length_compiles_before_the_timed_steps(shared_data, tmp_path_factory):
    """With a row-length ladder the bench's batches need several shapes; each compiles once, before any timing."""
    tokenizer_dir = train_tiny_tokenizer(shared_data, tmp_path_factory.mktemp("tok"))
    config = tiny_train_config(tokenizer_dir, shared_data)
    config.data.seq_len = 512      # 8 rows of 512, a 16-token ladder: the dealt rows need a few lengths
    config.data.clm_len_buckets = tuple(range(64, 512, 16))
    trainer = train.Trainer(config, tmp_path_factory.mktemp("ladder"))
    host_batches, _ = bench.draw_batches(trainer, 3)
    lengths = {b["clm_ids"].shape[1] for b in host_batches}
    assert len(lengths) >= 2, lengths
    timed_step = bench.prepare_jax_steps(trainer, host_batches, warmup=1)
    assert trainer.step_fn.num_compiles == len(lengths)
    assert all(math.isfinite(timed_step(index)["loss"]) for index in range(2))
    assert trainer.step_fn.num_compiles == len(lengths)


def test_packed_sentences_reach_the_reference_as_the_padded_ones(shared_data, tmp_path_factory):
    """Under ``data.cl_pack_rows`` the bench unpacks the sentences for the reference's collation: the reference gets
    the padded batches' layout and FLOPs, while our executed FLOPs count the fewer packed rows."""
    tokenizer_dir = train_tiny_tokenizer(shared_data, tmp_path_factory.mktemp("tok"))
    config = tiny_train_config(tokenizer_dir, shared_data)
    config.data.cl_buckets = (256,)            # long rows, so that the sentences of a block share them
    batches = {}
    for pack_rows in ((), (1,)):
        config.data.cl_pack_rows = pack_rows
        trainer = train.Trainer(config, tmp_path_factory.mktemp("packing"))
        batches[pack_rows] = [(b, bench.executed_step_flops(b, trainer)) for b in bench.draw_batches(trainer, 3)[0]]
        packed = [bench.padded_sentences(b, trainer) for b, _ in batches[pack_rows]]
        trainer.close()
    for (plain, (ours_plain, theirs_plain)), (packed_batch, (ours, theirs)), unpacked in zip(
            batches[()], batches[(1,)], packed, strict=True):
        assert packed_batch["sent_ids"].shape[0] < 2 * plain["sent0_ids"].shape[0]
        want, got = bench.reference_collation(plain), bench.reference_collation(unpacked)
        assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
        assert theirs == theirs_plain and ours < ours_plain


def test_tokens_per_second_is_tokens_per_step_over_the_median_step(report):
    batch, jax_part = report["batch"], report["jax"]
    assert batch["tokens_per_step"] == pytest.approx(
        batch["clm_tokens_per_step"] + batch["contrastive_tokens_per_step"])
    assert 0 < batch["clm_tokens_per_step"] <= batch["clm_rows"] * max(batch["clm_lengths"])
    assert 0 < batch["contrastive_tokens_per_step"] <= 2 * batch["records"] * max(batch["contrastive_lengths"])
    assert jax_part["tokens_per_s"] == pytest.approx(batch["tokens_per_step"] / jax_part["step_s"]["median"])


def test_the_two_sides_take_turns():
    """Each side times a turn of consecutive steps, then the other: a drifting machine load falls on both alike."""
    calls = []

    def timer(name):
        def timed_step(index):
            calls.append((name, index))
            return {"seconds": 0.5 + index, "loss": float(index)}
        return timed_step

    runs = bench.time_alternating({"jax": timer("jax"), "torch": timer("torch")}, steps=3, turn=1)
    assert calls == [("jax", 0), ("torch", 0), ("jax", 1), ("torch", 1), ("jax", 2), ("torch", 2)]
    assert runs["torch"] == {"seconds": [0.5, 1.5, 2.5], "loss": [0.0, 1.0, 2.0]}
    calls.clear()
    runs = bench.time_alternating({"jax": timer("jax"), "torch": timer("torch")}, steps=5, turn=2)
    assert calls == [("jax", 0), ("jax", 1), ("torch", 0), ("torch", 1), ("jax", 2), ("jax", 3), ("torch", 2),
                     ("torch", 3), ("jax", 4), ("torch", 4)]
    assert runs["jax"]["seconds"] == [0.5, 1.5, 2.5, 3.5, 4.5]
    with pytest.raises(ValueError, match="steps_per_turn must be >= 1"):
        bench.time_alternating({"jax": timer("jax")}, steps=2, turn=0)


def test_a_measured_step_counts_its_page_faults():
    """A step that writes 64 MiB of freshly mapped memory takes a fault per page: at least 32 (2 MiB pages)."""
    def step() -> float:
        with mmap.mmap(-1, 64 << 20) as fresh:
            pages = np.frombuffer(fresh, dtype=np.uint8)
            pages[:] = 1
            total = float(pages[::4096].sum())
            del pages
        return total

    record = bench.measured_step(step)
    assert record["loss"] == (64 << 20) / 4096 and record["seconds"] > 0
    assert record["minor_faults"] >= 32 and record["involuntary_switches"] >= 0


def test_the_peak_rss_covers_the_timed_steps(shared_data, tmp_path_factory, monkeypatch):
    """Memory a timed step takes counts in the report's peak RSS: a heap that grows during the timed steps (as it
    did by 1.16 GiB in one timed step of the bloom bench, BENCHMARKS.md) is part of what the step costs."""
    tokenizer_dir = train_tiny_tokenizer(shared_data, tmp_path_factory.mktemp("tok"))
    config = tiny_train_config(tokenizer_dir, shared_data)
    timed, seen = bench.time_alternating, {}

    def time_then_hold_a_gib(*args, **kwargs):
        runs = timed(*args, **kwargs)
        seen["peak before"] = bench.peak_rss_bytes()
        buffer = np.ones(1 << 28, np.float32)              # 1 GiB, every page touched
        seen["rss"] = bench.memory_status()["rss"]
        del buffer
        return runs

    monkeypatch.setattr(bench, "time_alternating", time_then_hold_a_gib)
    report = bench.run_benchmark(config, steps=1, warmup=1, workdir=tmp_path_factory.mktemp("peak"),
                                 measure_load=False)
    assert seen["rss"] > seen["peak before"] + (512 << 20)
    # the kernel's peak mark may trail the current RSS by a few of each thread's cached page counts
    assert report["jax"]["peak_rss_bytes"] >= seen["rss"] - (64 << 20)


def test_memory_figures_cover_the_train_state(report):
    param_bytes = 4 * report["model"]["parameters"]          # fp32 parameters
    memory = report["jax"]["memory_analysis"]
    assert memory["argument_size_in_bytes"] >= 3 * param_bytes   # parameters + both Adam moments
    assert report["jax"]["peak_rss_bytes"] > param_bytes
    load = report["checkpoint_load"]
    assert load["param_bytes"] == param_bytes
    assert load["peak_rss_growth_bytes"] > 0 and load["ratio"] == pytest.approx(
        load["peak_rss_growth_bytes"] / param_bytes)


def test_torch_reference_runs_on_the_same_batches_in_both_precisions(report):
    """Each precision is its own timed model; the speed-up is read against the faster of the two."""
    assert set(report["torch"]) == {"float32", "bf16_autocast"}
    for precision, torch_part in report["torch"].items():
        assert len(torch_part["step_s"]["all"]) == 2 and torch_part["step_s"]["min"] > 0
        assert all(math.isfinite(loss) for loss in torch_part["losses"])
        assert torch_part["threads"]["OMP_WAIT_POLICY"] == "PASSIVE"
        assert report["torch_over_jax_step_time"][precision] == pytest.approx(
            torch_part["step_s"]["median"] / report["jax"]["step_s"]["median"])
    assert report["torch"]["bf16_autocast"]["precision"] == "bf16 autocast"
    assert all(part["peak_rss_bytes"] > 0 for part in report["torch"].values())   # each its own process's
    assert all(len(part["minor_faults"]) == len(part["involuntary_switches"]) == 2 for part in report["torch"].values())
    fastest = min(report["torch"], key=lambda p: report["torch"][p]["step_s"]["median"])
    assert report["torch_baseline"] == fastest
    assert report["speed_up"] == min(report["torch_over_jax_step_time"].values())
    assert f"faster precision ({fastest}): {report['speed_up']:.2f}x" in bench.format_report(report)


@pytest.mark.skipif(not pathlib.Path("/proc/cpuinfo").exists(), reason="reads /proc/cpuinfo")
def test_the_report_names_the_cpu_and_its_flags_of_note(report):
    cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
    machine = report["machine"]
    assert machine["cpu_model"] and machine["cpu_model"] in cpuinfo
    flags = next(line for line in cpuinfo.splitlines() if line.startswith("flags")).split(":", 1)[1].split()
    assert machine["cpu_flags"] == [flag for flag in bench.CPU_FLAGS_OF_NOTE if flag in flags]


def test_an_unknown_torch_precision_is_refused(tmp_path):
    with pytest.raises(ValueError, match="float16.*choose from"):
        bench.run_benchmark(None, steps=1, warmup=1, workdir=tmp_path, torch_precisions=("float16",))


def test_work_ratio_counts_what_each_side_computes(report):
    """The reference runs every position through the head and every contrastive token through all blocks; we skip
    the blocks after the pooled layer, so our executed FLOPs are smaller, and the printed ratio is theirs / ours."""
    batch = report["batch"]
    assert 0 < batch["executed_flops_per_step"] < batch["reference_executed_flops_per_step"]
    assert batch["flops_per_step"] <= batch["executed_flops_per_step"]          # real tokens <= computed positions
    ratio = batch["reference_executed_flops_per_step"] / batch["executed_flops_per_step"]
    assert f"work ratio (reference / our executed FLOPs, the speed-up at equal matmul rates): {ratio:.2f}x" in \
        bench.format_report(report)


def test_reference_step_flops_by_hand():
    flops = metrics.ModelFlops(block_params=10, num_layers=4, attn_dim=2, head_flops=100)
    per_block = 2 * 10 + 4 * 8 * 2                                      # sequence 8
    expected = 3 * 5 * (4 * per_block + 100) + 6 * (4 * per_block + 2 * 3 * per_block)
    assert flops.reference_step_flops(clm_tokens=5, clm_seq=8, cl_tokens=6, cl_seq=8, cl_layers=3) == expected


# ------------------------------------------------------------------------------------------------- torch reference
def test_last_token_pool_and_info_nce_match_numpy():
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(4, 6, 5)).astype(np.float32)
    mask = (np.arange(6)[None, :] < np.array([2, 6, 1, 4])[:, None]).astype(np.int64)
    pooled = torch_reference.last_token_pool(torch.from_numpy(hidden), torch.from_numpy(mask)).numpy()
    np.testing.assert_array_equal(pooled, hidden[np.arange(4), [1, 5, 0, 3]])
    z0, z1 = pooled[:2].astype(np.float64), pooled[2:].astype(np.float64)
    cos = (z0 / np.linalg.norm(z0, axis=1, keepdims=True)) @ (z1 / np.linalg.norm(z1, axis=1, keepdims=True)).T
    logits = cos / 0.05
    expected = np.mean(np.log(np.exp(logits).sum(axis=1)) - np.diag(logits))
    got = torch_reference.info_nce(torch.from_numpy(pooled[:2]), torch.from_numpy(pooled[2:]), 0.05).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_clm_loss_equals_transformers_own_shifted_loss():
    """The reference's explicit shift gives the loss transformers computes from the same labels."""
    hf_config = TINY_HF_CONFIGS["bloom"]
    model = torch_reference.build_model(hf_config).eval()
    batch = torch_reference.to_torch_batch(bench.reference_collation(reference_batch(hf_config["vocab_size"])))
    with torch.no_grad():
        _, clm = torch_reference.reference_losses(model, batch, layer=1, temperature=0.05)
        expected = model(input_ids=batch["clm_ids"], labels=batch["clm_labels"]).loss
    assert clm.item() == pytest.approx(expected.item(), rel=1e-5)


def test_reference_step_trains():
    hf_config = TINY_HF_CONFIGS["bloom"]
    model = torch_reference.build_model(hf_config)
    optimizer = torch_reference.make_optimizer(model, lr=1e-3)
    batch = torch_reference.to_torch_batch(bench.reference_collation(reference_batch(hf_config["vocab_size"])))
    losses = [torch_reference.reference_step(model, optimizer, batch) for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[2] < losses[1] < losses[0]


def test_the_reference_process_takes_the_steps_the_reference_takes_here(tmp_path):
    """``serve`` in a process of its own (the bench's ``ReferenceProcess``): after the warm-up step, each index read
    on stdin runs that timed batch, and its losses are the ones the same recipe gives in this process."""
    hf_config = TINY_HF_CONFIGS["bloom"]
    batches = [bench.reference_collation(reference_batch(hf_config["vocab_size"], seed)) for seed in range(3)]
    options = {"layer": 1, "temperature": 0.05, "cl_weight": 1.0, "clm_weight": 1.5, "grad_clip": 1.0,
               "bf16_autocast": False}
    torch_reference.write_worker_input(tmp_path / "input.npz", batches, {
        "hf_config": hf_config, "seed": 3, "lr": 1e-3, "warmup": 1, "step_options": options})
    done = subprocess.run([sys.executable, "-m", "benchmarks.torch_reference", str(tmp_path / "input.npz")],
                          input="0\n1\n", capture_output=True, text=True, check=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    ready, *steps, end = [json.loads(line) for line in done.stdout.splitlines()]
    assert ready["ready"] and ready["threads"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert len(steps) == 2 and all(step["seconds"] > 0 and step["minor_faults"] >= 0 for step in steps)
    assert end["peak_rss_bytes"] > 0
    model = torch_reference.build_model(hf_config, seed=3)
    timed_step = torch_reference.prepare_steps(model, torch_reference.make_optimizer(model, lr=1e-3), batches,
                                               warmup=1, **options)
    assert [step["loss"] for step in steps] == pytest.approx([timed_step(i)["loss"] for i in range(2)], rel=1e-6)


def test_a_worker_that_ends_without_replying_is_a_clear_error(tmp_path):
    (tmp_path / "ends.py").write_text('import json, sys\nprint(json.dumps({"ready": True}), flush=True)\nsys.exit(3)\n')
    worker = bench.JsonLinesWorker([str(tmp_path / "ends.py")], "the test worker")
    assert worker.ready == {"ready": True}
    with pytest.raises(RuntimeError, match=r"the test worker ended \(3\) without a reply"):
        worker.request("0")


def test_reference_collation_is_the_reference_collators_layout():
    """Sentences cut to the batch's longest; the CLM segments' real tokens as one stream, labelled where our step
    supervises the prediction, cut into whole blocks (the rest dropped) or kept whole when shorter than a block."""
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    ids = np.array([[10, 11, 12, 13, 0, 0], [20, 21, 22, 0, 0, 0]])       # row 0: two segments; row 1: one
    segments = np.array([[1, 1, 2, 2, 0, 0], [1, 1, 1, 0, 0, 0]])
    weights = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]], np.float32)   # 10->11 and 21->22 supervised
    batch = {"sent0_ids": mask * 7, "sent0_mask": mask, "sent1_ids": mask[::-1] * 8, "sent1_mask": mask[::-1],
             "clm_ids": ids, "clm_segment_ids": segments, "clm_weights": weights}
    whole = bench.reference_collation(batch, block_size=8)
    assert whole["sent0_ids"].shape == whole["sent1_mask"].shape == (2, 3)
    np.testing.assert_array_equal(whole["clm_ids"], [[10, 11, 12, 13, 20, 21, 22]])
    np.testing.assert_array_equal(whole["clm_labels"], [[-100, 11, -100, -100, -100, -100, 22]])
    blocks = bench.reference_collation(batch, block_size=3)
    np.testing.assert_array_equal(blocks["clm_ids"], [[10, 11, 12], [13, 20, 21]])       # 22 dropped
    np.testing.assert_array_equal(blocks["clm_labels"], [[-100, 11, -100], [-100, -100, 21]])   # none: last token


def test_cpu_peak_follows_the_instruction_set_and_clock():
    from xalign_jax import metrics
    line = "cpu MHz\t\t: 2300.000\nflags\t\t: fpu sse2 avx avx2 fma {}\n"
    assert metrics.cpu_flops_per_core(line.format("avx512f avx512_bf16")) == pytest.approx(2.3e9 * 64)
    assert metrics.cpu_flops_per_core(line.format("")) == pytest.approx(2.3e9 * 32)
    assert metrics.cpu_flops_per_core("flags\t: sse2\n") == pytest.approx(2.0e9 * 16)


@pytest.mark.parametrize("kind,tflops", [
    ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 NVL", 835), ("NVIDIA H200 NVL", 835),
    ("NVIDIA H200", 989), ("NVIDIA L40S", 362), ("NVIDIA L40", 181), ("NVIDIA L4", 121), ("TPU v5 lite", 197),
    ("TPU v5", 459)])
def test_accelerator_peak_is_the_entry_of_the_devices_own_variant(monkeypatch, kind, tflops):
    monkeypatch.setattr(metrics.jax, "local_devices", lambda: [types.SimpleNamespace(device_kind=kind)])
    assert metrics.peak_flops_per_device() == tflops * 1e12
