"""Metric writers (JSONL + TensorBoard), the progress line, and the FLOPs/MFU arithmetic.

FLOPs formula (per training step, dense matmuls only; attention as PaLM counts it, over the whole row):
  * a token through ``n`` transformer blocks costs ``2 * P_blocks(n)`` FLOPs forward, where ``P_blocks(n)`` is the
    number of matmul parameters in those blocks, plus ``4 * n * T * d_attn`` for attention scores and values
    (``T`` the row length, ``d_attn = heads * head_dim``: the scores are computed for every pair and masked, so
    neither causal masking nor a sliding window is discounted, as MaxText does);
  * the LM head adds ``2 * d * V`` per SUPERVISED CLM token (only those carry loss; projecting the prompt tokens
    too is work the model does not need, so it does not count as model FLOPs); embedding lookups are free;
  * backward costs twice the forward, so training multiplies everything by 3.
CLM rows run all ``L`` blocks plus the head; contrastive sentences run only the ``k`` blocks up to the pooled layer.
MFU = achieved model FLOP/s / (peak FLOP/s per device x this process's devices): tokens and FLOPs are counted from
this process's share of the global batch, so with several processes both are the logging process's own. The peak
comes from the config when given, else from ``PEAK_TFLOPS`` by device kind, else on CPUs from /proc/cpuinfo (cores x
clock x fp32 FLOP/cycle: 64 with AVX-512, 32 with AVX2 FMA, 16 otherwise, i.e. two FMA units per core). That clock
is the nominal one: a virtual machine may run its cores faster (BENCHMARKS.md measured 2.9-3.0 GHz on a VM that
reports 2.3), so CPU MFU is indicative only; set ``train.peak_tflops`` when the real peak is known.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import sys
import time
from typing import Any, Mapping

import jax

log = logging.getLogger(__name__)

# Dense bf16 peak TFLOP/s per device (vendor figures, no sparsity), matched as a substring of the device kind in
# this order: the PCIe/NVL variants, L40(S) and the v5 lite (v5e) before the names they contain. A v5p reports
# its kind as "TPU v5".
PEAK_TFLOPS = {
    "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200 NVL": 835.0, "H100": 989.0, "H200": 989.0,
    "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0,
    "TPU v6 lite": 918.0, "TPU v6e": 918.0,
}
CPU_FLOPS_PER_CYCLE = (("avx512f", 64), ("fma", 32))   # fp32, two FMA units per core; else 16 (SSE)
DEFAULT_CPU_HZ = 2.0e9


def cpu_flops_per_core(cpuinfo: str | None = None) -> float:
    """Nominal fp32 peak of one core from /proc/cpuinfo (ISA flags and clock); 2 GHz x 32 where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            return DEFAULT_CPU_HZ * 32
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    per_cycle = next((n for flag, n in CPU_FLOPS_PER_CYCLE if flag in flags), 16)
    mhz = next((float(line.split(":", 1)[1]) for line in cpuinfo.splitlines() if line.startswith("cpu MHz")), None)
    return (mhz * 1e6 if mhz else DEFAULT_CPU_HZ) * per_cycle


def peak_flops_per_device(override_tflops: float | None = None) -> float:
    """Peak FLOP/s of one local device: the override, the table entry for its kind, or the nominal CPU figure."""
    if override_tflops:
        return override_tflops * 1e12
    kind = jax.local_devices()[0].device_kind
    for name, tflops in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return tflops * 1e12
    if jax.default_backend() == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return cores * cpu_flops_per_core() / max(jax.local_device_count(), 1)
    log.warning("unknown device kind %r: MFU will be reported as 0; set the peak TFLOP/s in the config", kind)
    return float("inf")


@dataclasses.dataclass(frozen=True)
class ModelFlops:
    """Per-token forward FLOPs pieces of a decoder, from its shapes."""
    block_params: int          # matmul parameters of ONE block
    num_layers: int
    attn_dim: int              # heads * head_dim
    head_flops: int            # 2 * d * V

    @classmethod
    def from_config(cls, cfg: Any) -> "ModelFlops":
        d, h, kv, hd, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        mlp = (3 if cfg.gated_mlp else 2) * d * f
        return cls(block_params=attn + mlp, num_layers=cfg.num_layers, attn_dim=h * hd,
                   head_flops=2 * d * cfg.vocab_size)

    def forward_per_token(self, seq_len: int, layers: int | None = None, with_head: bool = True) -> float:
        n = self.num_layers if layers is None else layers
        return n * (2 * self.block_params + 4 * seq_len * self.attn_dim) + (self.head_flops if with_head else 0)

    def train_step_flops(self, *, clm_tokens: int, clm_seq: int, cl_tokens: int, cl_seq: int, cl_layers: int,
                         head_tokens: int | None = None) -> float:
        """Training FLOPs (3x forward) of one AFP step: CLM rows through the full model, CL sentences through k blocks.
        ``head_tokens``: the CLM tokens that need the LM head (the supervised ones; default all CLM tokens)."""
        head_tokens = clm_tokens if head_tokens is None else head_tokens
        clm = clm_tokens * self.forward_per_token(clm_seq, with_head=False) + head_tokens * self.head_flops
        cl = cl_tokens * self.forward_per_token(cl_seq, layers=cl_layers, with_head=False)
        return 3.0 * (clm + cl)

    def reference_step_flops(self, *, clm_tokens: int, clm_seq: int, cl_tokens: int, cl_seq: int,
                             cl_layers: int) -> float:
        """FLOPs of the reference recipe's step (``benchmarks/torch_reference.py``): every CLM token through all
        blocks and the head, forward and backward; every contrastive token forward through all L blocks (the
        reference pools layer k of a full pass) and backward through the first k."""
        clm = 3.0 * clm_tokens * self.forward_per_token(clm_seq)
        full, pooled = (self.forward_per_token(cl_seq, layers=n, with_head=False) for n in (None, cl_layers))
        return clm + cl_tokens * (full + 2.0 * pooled)


class MetricWriter:
    """Writes scalars to ``WORKDIR/metrics.jsonl`` and TensorBoard; a no-op on non-zero processes."""

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:  # TensorBoard is optional; JSONL is the record of truth.
            log.warning("tensorboardX not installed: TensorBoard logging disabled")

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{prefix + k: _plain(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()


def _plain(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


class Progress:
    """A one-line progress report with rate and ETA (a line per call; readable in logs and terminals alike)."""

    def __init__(self, total_steps: int, start_step: int = 0, stream=sys.stderr):
        self.total = total_steps
        self.start_step = start_step
        self.start_time = time.perf_counter()
        self.stream = stream

    def line(self, step: int, fields: Mapping[str, str]) -> str:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.start_time
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        pct = 100.0 * step / max(self.total, 1)
        body = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"[{step:>6d}/{self.total} {pct:5.1f}% eta {_fmt_seconds(eta)}] {body}"

    def report(self, step: int, fields: Mapping[str, str]) -> None:
        print(self.line(step, fields), file=self.stream, flush=True)


def _fmt_seconds(seconds: float) -> str:
    if seconds != seconds:  # NaN before the first step completes
        return "--:--"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{sec:02d}" if hours else f"{minutes:02d}:{sec:02d}"
