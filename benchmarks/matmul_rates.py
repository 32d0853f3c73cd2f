"""GFLOP/s of the CE head's three products on this machine, fp32 and bf16, XLA (the train step's compiler options
and XLA's defaults) against torch: whether bf16 compute can pay on a CPU at all.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/matmul_rates.py [--vocab 250880 --hidden 384 --positions 320]

The products are those of the vocabulary-major CE (objectives._chunk_grads_vocab_major): logits [V, N] = E [V, D]
h [N, D]^T, the head's gradient [V, D] = g [V, N] h, the hidden gradient [N, D] = g^T E; bf16 operands accumulate
in fp32. Each figure is the best of 4 timed calls after 2 warm-up calls.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from xalign_jax import xla_options

PRODUCTS = {"logits": ("vd,nd->vn", "E", "h"), "head grad": ("vn,nd->vd", "g", "h"),
            "hidden grad": ("vn,vd->nd", "g", "E")}


def best_seconds(call: Callable[[], object], sync: Callable[[object], object]) -> float:
    for _ in range(2):
        sync(call())
    times = []
    for _ in range(4):
        start = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - start)
    return min(times)


def xla_rate(spec: str, a: jax.Array, b: jax.Array, options: dict | None) -> float:
    product = jax.jit(lambda x, y: jnp.einsum(spec, x, y, preferred_element_type=jnp.float32))
    compiled = product.lower(a, b).compile(options)
    return best_seconds(lambda: compiled(a, b), jax.block_until_ready)


def torch_rate(spec: str, a: np.ndarray, b: np.ndarray, dtype: str) -> float:
    import torch
    x, y = (torch.from_numpy(v).to(getattr(torch, dtype)) for v in (a, b))
    return best_seconds(lambda: torch.einsum(spec, x, y), lambda out: out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=250880)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--positions", type=int, default=320)
    args = parser.parse_args()
    sizes = {"E": (args.vocab, args.hidden), "h": (args.positions, args.hidden), "g": (args.vocab, args.positions)}
    rng = np.random.default_rng(0)
    host = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in sizes.items()}
    flop = 2 * args.vocab * args.hidden * args.positions
    print(f"GFLOP/s of each product ({flop / 1e9:.1f} GFLOP), best of 4 calls")
    print("| product | dtype | XLA, train-step options | XLA defaults | torch |\n|---|---|---|---|---|")
    for name, (spec, left, right) in PRODUCTS.items():
        for dtype in ("float32", "bfloat16"):
            a, b = (jnp.asarray(host[k], dtype) for k in (left, right))
            seconds = (xla_rate(spec, a, b, dict(xla_options.CPU_MATMULS_BY_XLA)), xla_rate(spec, a, b, None),
                       torch_rate(spec, host[left], host[right], dtype))
            print(f"| {name} | {dtype} | " + " | ".join(f"{flop / s / 1e9:.3g}" for s in seconds) + " |", flush=True)


if __name__ == "__main__":
    main()
