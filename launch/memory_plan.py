"""Per-device HBM for AFP training of the 7B configs, derived from the model shapes and the sharding rules.

``python launch/memory_plan.py`` prints the table in launch/README.md. Every term is written out below so the
numbers can be checked by hand; the compiled step's own ``memory_analysis()`` (logged by the trainer before step 1)
is the final word on a real slice.

Per device, with P_dev = parameters held by the device under the project's sharding rules (FSDP on ``embed``,
tensor parallelism on heads / MLP / vocabulary, non-divisible dimensions replicated):

  state        P_dev * 4 B (fp32 master weights) + P_dev * 8 B (fp32 Adam moments m and v)
  gradients    P_dev * 8 B: the fp32 micro-batch gradient and the fp32 accumulator the step scans with
  gathered     one block's weights all-gathered in bf16, twice (this block and the next one prefetched), plus the
               embedding / LM-head table gathered in bf16 for the chunked CE and its full fp32 gradient before the
               reduce-scatter (the CE loops over chunks, so the table stays gathered during the loss)
  activations  per layer, the bytes the remat policy keeps for the backward pass, times layers, times the tokens of
               one micro-batch on the device
  working set  one block re-computed in the backward pass: its matmul outputs and gradients in bf16 plus the
               [heads, T, T] attention scores and probabilities (XLA attention materialises them), and the live
               [rows, chunk, vocab] fp32 logits of the CE (logits, softmax and their gradient)

The contrastive pass runs only the first k blocks (``last-1`` pooling: one block) on sentences of <= 128 tokens, so
it is small beside the CLM rows; it is counted as activations of k layers on its tokens.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Mapping

if __package__ in (None, ""):        # run as a script: make the package importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jax.sharding import AbstractMesh  # noqa: E402

from xalign_jax import sharding  # noqa: E402
from xalign_jax.models import decoder  # noqa: E402
from xalign_jax.models.config import ModelConfig  # noqa: E402

GIB = 2 ** 30
BF16, FP32 = 2, 4
USABLE_FRACTION = 0.9      # head-room for XLA's own buffers, fragmentation and the runtime

# AFP_SPEC §6.1 (hub config.json values)
HF_CONFIGS: dict[str, dict] = {
    "bloom-7b1": {"model_type": "bloom", "n_layer": 30, "hidden_size": 4096, "n_head": 32, "vocab_size": 250880,
                  "layer_norm_epsilon": 1e-5},
    "xglm-7.5b": {"model_type": "xglm", "num_layers": 32, "d_model": 4096, "attention_heads": 32, "ffn_dim": 16384,
                  "vocab_size": 256008, "activation_function": "gelu", "scale_embedding": True},
}


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str
    devices: int
    hosts: int
    hbm_gib: float          # per device


SLICES: dict[str, Slice] = {
    "v4-32": Slice("v4-32", devices=16, hosts=4, hbm_gib=32.0),          # 16 chips (v4 counts 2 cores/chip)
    "v5e-64": Slice("v5e-64", devices=64, hosts=16, hbm_gib=16.0),       # v5litepod-64: 4 chips per host
    "2x8-h100": Slice("2x8-h100", devices=16, hosts=2, hbm_gib=80e9 / GIB),
}

# bytes kept per token per layer for the backward pass, by remat policy (d = hidden, f = MLP width, h = heads,
# t = sequence length): "full" keeps the block input; "dots_no_batch" also the weight matmul outputs
# (q, k, v, attention output, MLP up, MLP down); "dots" also the batched attention matmuls ([h, t] scores per
# token); "none" everything, including norms, activations and fp32 scores/probabilities.
REMAT_BYTES_PER_TOKEN = {
    "full": lambda d, f, h, t: BF16 * d,
    "dots_no_batch": lambda d, f, h, t: BF16 * (d + 5 * d + f),
    "dots": lambda d, f, h, t: BF16 * (d + 5 * d + f + h * t),
    "none": lambda d, f, h, t: BF16 * (12 * d + 3 * f) + (FP32 + BF16) * h * t,
}


@dataclasses.dataclass(frozen=True)
class Run:
    """What one training step puts on each device."""
    model: str
    slice: str
    mesh: tuple[int, int, int]        # (data, fsdp, tensor)
    rows_per_device: int              # packed CLM rows of one micro-batch on one device
    seq_len: int = 512
    remat_policy: str = "full"
    cl_sentences_per_device: int = 8  # sent0 + sent1 of the records one device holds
    cl_len: int = 128
    cl_layers: int = 1
    clm_chunk: int = 128


def model_config(name: str) -> ModelConfig:
    if name not in HF_CONFIGS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(HF_CONFIGS)}")
    return ModelConfig.from_hf(HF_CONFIGS[name])


def total_params(cfg: ModelConfig) -> int:
    return sum(math.prod(spec.shape) for spec in decoder.param_specs(cfg).values())


def params_per_device(cfg: ModelConfig, mesh: tuple[int, int, int]) -> float:
    """Parameters one device holds: every tensor divided by the mesh axes its rule shards it over."""
    abstract = AbstractMesh(mesh, sharding.MESH_AXES)
    held = 0.0
    for spec in decoder.param_specs(cfg).values():
        partition = sharding.logical_spec(spec.axes, spec.shape, abstract)
        ways = 1
        for entry in partition:
            for axis in (entry,) if isinstance(entry, str) else (entry or ()):
                ways *= abstract.shape[axis]
        held += math.prod(spec.shape) / ways
    return held


def breakdown(run: Run, cfg: ModelConfig | None = None) -> dict[str, float]:
    """GiB per device for each term of the module docstring (``cfg`` overrides the model named by the run)."""
    cfg = cfg or model_config(run.model)
    d, f, h, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_layers, cfg.vocab_size
    tensor = run.mesh[2]
    p_dev = params_per_device(cfg, run.mesh)
    embed = vocab * d
    block = (total_params(cfg) - embed * (1 if cfg.tie_word_embeddings else 2)) / layers
    tokens = run.rows_per_device * run.seq_len
    cl_tokens = run.cl_sentences_per_device * run.cl_len
    keep = REMAT_BYTES_PER_TOKEN[run.remat_policy]
    working_block = (tokens * (BF16 * 2 * (8 * d + 2 * f) / tensor)
                     + run.rows_per_device * (h / tensor) * run.seq_len ** 2 * 2 * (FP32 + BF16))
    return {
        "state": p_dev * (FP32 + 2 * FP32) / GIB,
        "gradients": p_dev * 2 * FP32 / GIB,
        "gathered": (2 * block * BF16 / tensor + embed * (BF16 + FP32) / tensor) / GIB,
        "activations": (layers * tokens * keep(d, f, h, run.seq_len)
                        + run.cl_layers * cl_tokens * keep(d, f, h, run.cl_len)) / GIB,
        "working": (working_block + 3 * FP32 * run.rows_per_device * run.clm_chunk * vocab / tensor) / GIB,
    }


def fits(run: Run) -> bool:
    return sum(breakdown(run).values()) <= USABLE_FRACTION * SLICES[run.slice].hbm_gib


ROWS_SEARCH_LIMIT = 64


def max_rows_per_device(run: Run, limit: int = ROWS_SEARCH_LIMIT) -> int:
    """The most CLM rows per device and micro-batch that fit, up to ``limit`` (0: not even one)."""
    best = 0
    for rows in range(1, limit + 1):
        if not fits(dataclasses.replace(run, rows_per_device=rows)):
            break
        best = rows
    return best


# The plans in launch/README.md: FSDP over every device; tensor parallelism where the gathered vocabulary table
# crowds a 16 GiB v5e chip; on GPUs also FSDP within a node and data parallelism across nodes.
PLANS: tuple[Run, ...] = (
    Run("bloom-7b1", "v4-32", (1, 16, 1), rows_per_device=2),
    Run("xglm-7.5b", "v4-32", (1, 16, 1), rows_per_device=2),
    Run("bloom-7b1", "v5e-64", (1, 64, 1), rows_per_device=1),
    Run("xglm-7.5b", "v5e-64", (1, 64, 1), rows_per_device=1),
    Run("bloom-7b1", "v5e-64", (1, 16, 4), rows_per_device=4),
    Run("xglm-7.5b", "v5e-64", (1, 16, 4), rows_per_device=4),
    Run("bloom-7b1", "2x8-h100", (1, 16, 1), rows_per_device=4),
    Run("xglm-7.5b", "2x8-h100", (1, 16, 1), rows_per_device=4),
    Run("xglm-7.5b", "2x8-h100", (1, 16, 1), rows_per_device=2, seq_len=1024),
    Run("xglm-7.5b", "2x8-h100", (2, 8, 1), rows_per_device=4),
)


def table(plans: tuple[Run, ...] = PLANS) -> str:
    """A Markdown table: the breakdown of each plan, its total against usable HBM, and the most rows that fit."""
    head = ("| model | slice | mesh (data, fsdp, tensor) | rows/device x seq | state | grads | gathered | "
            "activations | working | total GiB | usable GiB | max rows/device |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run in plans:
        parts = breakdown(run)
        usable = USABLE_FRACTION * SLICES[run.slice].hbm_gib
        most = max_rows_per_device(run)
        lines.append(
            f"| {run.model} | {run.slice} | {run.mesh} | {run.rows_per_device} x {run.seq_len} | "
            + " | ".join(f"{parts[k]:.1f}" for k in ("state", "gradients", "gathered", "activations", "working"))
            + f" | {sum(parts.values()):.1f} | {usable:.1f} | {most}{'+' if most == ROWS_SEARCH_LIMIT else ''} |")
    return "\n".join(lines)


def parameter_summary(names: Mapping[str, dict] = HF_CONFIGS) -> str:
    return "\n".join(f"{name}: {total_params(model_config(name)):,} parameters" for name in names)


if __name__ == "__main__":
    print(parameter_summary())
    print()
    print(table())
