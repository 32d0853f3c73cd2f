"""Train-step MFU on an accelerator: a fixed list of ``xalign_jax.bench`` runs, one process each, plus the chip's
measured bf16 matmul rate as the achievable ceiling, summarised in one table.

    python benchmarks/accelerator_suite.py --out DIR [--runs gemma3-cudnn,bloom-cudnn] [--steps 10] [--timeout 150]
                                           [--profile gemma3-cudnn[,...]]

``DIR/suite.json`` collects every run's bench report and the tail of its log, ``DIR/summary.md`` the table (two
files, whatever the number of runs). A run that fails or times out is recorded as such and the suite goes on, so
one broken kernel choice cannot cost the other measurements. The table gives MFU against the device table's
datasheet peak (the bench's figure) and against the matmul rate measured here. Each run named in ``--profile`` also
traces a few untimed steps (``bench --profile_dir``; the raw profile stays in the scratch directory) and adds
``DIR/profile_<run>.md``, its per-op device time from ``benchmarks/trace_summary.py``, and its Perfetto trace
``DIR/profile_<run>.perfetto_trace.json.gz`` when that is small.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import trace_summary  # noqa: E402

CONFIG = "configs/bench_gpu.py"
GEMMA3, BLOOM = f"--config={CONFIG}:gemma3-270m", f"--config={CONFIG}:bloom-560m"
CUDNN, XLA = "--config.model.attention_impl=cudnn", "--config.model.attention_impl=xla"
FULL_BATCH = ["--config.data.clm_rows=32", "--config.train.batch_size=96"]
HALF_BATCH = ["--config.data.clm_rows=16", "--config.train.batch_size=48"]
DOUBLE_BATCH = ["--config.data.clm_rows=64", "--config.train.batch_size=192"]
# only supervised positions reach the LM head: at most 1536 of each 4 rows' 2048 (synthetic answers are ~73%)
CAPPED = ["--config.data.supervised_cap=1536", "--config.data.supervised_group_rows=4"]
BF16_LOGITS = "--config.model.logits_dtype=bfloat16"   # half the CE's memory traffic; autocast's rounding
# the runs of BENCHMARKS.md's H200 table, run by default
MEASURED_RUNS: dict[str, list[str]] = {
    "gemma3-cudnn": [GEMMA3, CUDNN, *FULL_BATCH],
    "gemma3-cudnn-capped": [GEMMA3, CUDNN, *FULL_BATCH, *CAPPED],
    "gemma3-cudnn-bf16-logits": [GEMMA3, CUDNN, *FULL_BATCH, BF16_LOGITS],
    "gemma3-xla": [GEMMA3, XLA, *FULL_BATCH],
    "gemma3-cudnn-r64": [GEMMA3, CUDNN, *DOUBLE_BATCH],
    "bloom-cudnn": [BLOOM, CUDNN, *FULL_BATCH],
    "bloom-cudnn-bf16-logits": [BLOOM, CUDNN, *FULL_BATCH, BF16_LOGITS],
    "bloom-xla": [BLOOM, XLA, *FULL_BATCH],
    "bloom-cudnn-r16": [BLOOM, CUDNN, *HALF_BATCH],
}
EXTRA_RUNS: dict[str, list[str]] = {      # by name only
    "gemma3-cudnn-r16": [GEMMA3, CUDNN, *HALF_BATCH],
    "gemma3-cudnn-remat-dots": [GEMMA3, CUDNN, *FULL_BATCH, "--config.model.remat_policy=dots"],
    "gemma3-cudnn-unrolled": [GEMMA3, CUDNN, *FULL_BATCH, "--config.model.unroll_layers=True"],
    "bloom-cudnn-capped": [BLOOM, CUDNN, *FULL_BATCH, *CAPPED],
}
RUNS = {**MEASURED_RUNS, **EXTRA_RUNS}
DEFAULT_RUNS = list(MEASURED_RUNS)
MAX_TRACE_BYTES = 4 * 2**20      # a profiled run's Perfetto trace is copied to --out up to this size


def matmul_tflops(size: int = 8192, repeats: int = 20) -> float:
    """Measured bf16 matmul rate of device 0 on random data (the achievable ceiling of the step's matmuls)."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    a, b = (jax.random.normal(k, (size, size), jnp.bfloat16) for k in keys)
    product = jax.jit(lambda x, y: x @ y)
    product(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = product(a, b)
    out.block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def matmul_tflops_in_child(size: int) -> tuple[float, str]:
    """``matmul_tflops`` in its own process, with the device it reports. The suite's process never touches the
    accelerator: JAX reserves 75% of the device memory in the first process that uses it, and the bench runs,
    started after, would see only the rest (on a 141 GB H200 they ran out of memory at 36 GiB)."""
    code = ("import jax; from benchmarks.accelerator_suite import matmul_tflops; "
            f"print(f'jax {{jax.__version__}}, devices {{jax.devices()}}'); print(matmul_tflops({size}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    devices, rate = done.stdout.strip().splitlines()[-2:]
    return float(rate), devices


def run_one(name: str, args: list[str], scratch: pathlib.Path, steps: int, warmup: int, timeout: int) -> dict:
    """One bench process; its report (None when it failed) and the tail of its output."""
    report_path = scratch / f"{name}.json"
    command = [sys.executable, "-m", "xalign_jax.bench", *args, f"--steps={steps}", f"--warmup={warmup}",
               "--noload_memory", f"--workdir={scratch / name}", f"--out={report_path}"]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        status, log = ("ok" if done.returncode == 0 else f"exit {done.returncode}"), done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        status, log = f"timeout {timeout}s", _text(expired.stdout) + _text(expired.stderr)
    report = json.loads(report_path.read_text()) if status == "ok" and report_path.exists() else None
    return {"name": name, "status": status, "wall_s": time.perf_counter() - start, "report": report,
            "command": " ".join(command[1:]), "log_tail": log[-4000:], "error_tail": None if report else log[-1500:]}


def write_profile(name: str, profile_dir: pathlib.Path, steps: int, out: pathlib.Path) -> None:
    """``out/profile_<name>.md`` from the run's trace, and the Perfetto trace itself when small enough to bring back
    (the raw profile directory holds several large files and stays in the scratch directory)."""
    trace = trace_summary.find_trace(profile_dir)
    (out / f"profile_{name}.md").write_text(trace_summary.summarize(trace, steps) + "\n")
    perfetto = trace.with_name("perfetto_trace.json.gz")
    if perfetto.exists() and perfetto.stat().st_size <= MAX_TRACE_BYTES:
        shutil.copyfile(perfetto, out / f"profile_{name}.perfetto_trace.json.gz")


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def table(results: list[dict], measured_tflops: float) -> str:
    lines = [f"measured bf16 matmul ceiling: {measured_tflops:.0f} TFLOP/s",
             "| run | status | step ms (median [min, max]) | tokens/s | model TFLOP/s | MFU (datasheet) | MFU (measured "
             "matmul) | compile s | temp GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        report = result["report"]
        if report is None:
            lines.append(f"| {result['name']} | {result['status']} | | | | | | | |")
            continue
        jax_part = report["jax"]
        step = jax_part["step_s"]
        temp = jax_part["memory_analysis"].get("temp_size_in_bytes", 0) / 2**30
        lines.append(
            f"| {result['name']} | ok | {1e3 * step['median']:.1f} [{1e3 * step['min']:.1f}, {1e3 * step['max']:.1f}]"
            f" | {jax_part['tokens_per_s']:.0f} | {jax_part['model_tflops_per_s']:.1f} | {100 * jax_part['mfu']:.1f}% "
            f"| {100 * jax_part['model_tflops_per_s'] / measured_tflops:.1f}% | {jax_part['compile_s']:.1f} "
            f"| {temp:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS), help=f"comma-separated, from {', '.join(RUNS)}")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=150, help="seconds per run")
    parser.add_argument("--extra", default="", help="space-separated flags appended to every run")
    parser.add_argument("--profile", default="", help="comma-separated runs that also trace a few untimed steps")
    parser.add_argument("--matmul_size", type=int, default=8192, help="side of the square matmul timed for the ceiling")
    options = parser.parse_args()
    runs, profiled = options.runs.split(","), [name for name in options.profile.split(",") if name]
    unknown = [name for name in runs if name not in RUNS] + [name for name in profiled if name not in runs]
    if unknown:
        parser.error(f"unknown {unknown}: --runs takes names from {', '.join(RUNS)}, --profile names from --runs")
    options.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    measured, devices = matmul_tflops_in_child(options.matmul_size)
    print(devices, flush=True)
    print(f"bf16 matmul {options.matmul_size}^3: {measured:.0f} TFLOP/s", flush=True)
    results = []
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="accelerator_suite_"))
    for name in runs:
        profile_dir = scratch / f"profile_{name}"
        profile = [f"--profile_dir={profile_dir}"] if name in profiled else []
        result = run_one(name, RUNS[name] + options.extra.split() + profile, scratch, options.steps, options.warmup,
                         options.timeout)
        if profile and result["report"] and "steps" in result["report"].get("profile", {}):
            write_profile(name, profile_dir, result["report"]["profile"]["steps"], options.out)
        print(f"{name}: {result['status']} in {result['wall_s']:.0f}s", flush=True)
        if result["error_tail"]:
            print(result["error_tail"], flush=True)
        results.append(result)
        summary = table(results, measured)          # rewritten after every run: a killed suite keeps what it has
        (options.out / "summary.md").write_text(summary + "\n")
        (options.out / "suite.json").write_text(json.dumps({"matmul_tflops": measured, "runs": results}, indent=1))
    print(summary)


if __name__ == "__main__":
    main()
