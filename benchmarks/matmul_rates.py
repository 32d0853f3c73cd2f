"""GFLOP/s of the CE head's three products on this machine, fp32 and bf16, in both layouts of the chunked CE,
under XLA's CPU option sets and in torch: which library runs which product fast, and whether bf16 can pay.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/matmul_rates.py [--vocab 250880 --hidden 384 --positions 320]
                                                               [--no-torch]

The products of one chunk of N positions (``objectives.CHUNK_GRADS``), E [V, D] the embedding, h [N, D] the
hidden states, g the logits' gradient; bf16 operands accumulate in fp32:
  * vocabulary-major (``vocab_major``, the CPU default; g is [V, N]): logits ``vd,nd->vn``, the head's gradient
    ``vn,nd->vd``, the hidden gradient ``vn,vd->nd``;
  * token-major (``by_hand`` / ``autodiff``; g is [N, V]): logits ``nd,vd->nv``, head ``nv,nd->vd``, hidden
    ``nv,vd->nd``.
XLA orients a dot as its operands come, so the einsum's operand order is the one timed. Option sets: the train
step's (``xla_options.CPU_MATMULS_BY_XLA``), XLA's defaults (YNNPACK takes the dots), and the train step's plus
oneDNN's matmul custom call (``CPU_ONEDNN_MATMULS``; jaxlibs whose rewriter does not take a dot run it as before).
An option set this XLA rejects prints ``-``. Each figure is the best of 4 timed calls after 2 warm-up calls.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from xalign_jax import xla_options

# name -> (einsum, left operand, right operand); "gT" is g laid out [N, V]
PRODUCTS = {
    "logits, vocab-major": ("vd,nd->vn", "E", "h"), "head grad, vocab-major": ("vn,nd->vd", "g", "h"),
    "hidden grad, vocab-major": ("vn,vd->nd", "g", "E"), "logits, token-major": ("nd,vd->nv", "h", "E"),
    "head grad, token-major": ("nv,nd->vd", "gT", "h"), "hidden grad, token-major": ("nv,vd->nd", "gT", "E"),
}
OPTION_SETS = {"train-step options": dict(xla_options.CPU_MATMULS_BY_XLA), "XLA defaults": None,
               "+ oneDNN matmuls": {**xla_options.CPU_MATMULS_BY_XLA, **xla_options.CPU_ONEDNN_MATMULS}}


def call_seconds(call: Callable[[], object], sync: Callable[[object], object], repeats: int) -> list[float]:
    """The wall seconds of ``repeats`` calls, each to ``sync`` of its result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - start)
    return times


def median_seconds(call: Callable[[], object], sync: Callable[[object], object], repeats: int) -> float:
    """The median of ``call_seconds`` (call once before: compiles)."""
    return float(np.median(call_seconds(call, sync, repeats)))


def best_seconds(call: Callable[[], object], sync: Callable[[object], object]) -> float:
    call_seconds(call, sync, 2)                      # warm-up (and compile)
    return min(call_seconds(call, sync, 4))


def xla_rate(spec: str, a: jax.Array, b: jax.Array, options: dict | None) -> float | None:
    """Seconds of one product under ``options``; None when this XLA rejects them."""
    if options is not None and xla_options.usable(options, "cpu") is None:
        return None
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
    parser.add_argument("--no-torch", dest="torch", action="store_false", help="XLA only (no torch installed)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    host = {"E": rng.standard_normal((args.vocab, args.hidden), dtype=np.float32),
            "h": rng.standard_normal((args.positions, args.hidden), dtype=np.float32),
            "g": rng.standard_normal((args.vocab, args.positions), dtype=np.float32)}
    host["gT"] = np.ascontiguousarray(host["g"].T)
    flop = 2 * args.vocab * args.hidden * args.positions
    columns = list(OPTION_SETS) + (["torch"] if args.torch else [])
    print(f"GFLOP/s of each product ({flop / 1e9:.1f} GFLOP), best of 4 calls; jax {jax.__version__}")
    print("| product | dtype | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns))
    for name, (spec, left, right) in PRODUCTS.items():
        for dtype in ("float32", "bfloat16"):
            a, b = (jnp.asarray(host[k], dtype) for k in (left, right))
            seconds = [xla_rate(spec, a, b, options) for options in OPTION_SETS.values()]
            if args.torch:
                seconds.append(torch_rate(spec, host[left], host[right], dtype))
            cells = ("-" if s is None else f"{flop / s / 1e9:.3g}" for s in seconds)
            print(f"| {name} | {dtype} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
