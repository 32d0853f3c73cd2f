"""The products behind layers.product_fp32_out, timed alone on this CPU (the record of BENCHMARKS.md's table).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python benchmarks/results/2026-12-02-cpu-epyc-bf16-step/product_orientations.py

For the MLP's [4096, 640] x [640, 2048] and the bloom bench's CE head ([250880, 384] x [384, 320]): each product of
the forward and backward in fp32 under the fp32 train step's options, and in bf16 (fp32 results) under XLA's
defaults, with the transposed operand as autodiff writes it (folded into the product) and as a row-major copy
(``layers.row_major``); then the whole forward + backward of each through ``layers.product_fp32_out`` against fp32.
Best of 4 calls after one warm-up call.
"""
import time

import jax
import jax.numpy as jnp

from xalign_jax import xla_options
from xalign_jax.models import layers

STEP_OPTIONS = dict(xla_options.CPU_MATMULS_BY_XLA)


def best_ms(fn, args, options=None) -> float:
    compiled = jax.jit(fn).lower(*args).compile(options or {})
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(4):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def report(name: str, ms: float, flops: float) -> None:
    print(f"{name:58s} {ms:8.1f} ms {flops / ms / 1e6:6.0f} GFLOP/s", flush=True)


def fp32_out(a, b):
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def products(m: int, k: int, n: int, label: str) -> None:
    """a [m, k] @ b [k, n] and its two backward products, g [m, n] the cotangent."""
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    a, b, g = (jax.random.normal(key, shape) for key, shape in zip(keys, ((m, k), (k, n), (m, n))))
    a16, b16, g16 = (x.astype(jnp.bfloat16) for x in (a, b, g))
    flops = 2 * m * k * n
    cases = [("a @ b", lambda x, y, c: x @ y, fp32_out, lambda x, y, c: fp32_out(x, y)),
             ("g @ b.T", lambda x, y, c: c @ y.T, lambda x, y, c: fp32_out(c, y.T),
              lambda x, y, c: fp32_out(c, layers.row_major(y.T))),
             ("a.T @ g", lambda x, y, c: x.T @ c, lambda x, y, c: fp32_out(x.T, c),
              lambda x, y, c: fp32_out(layers.row_major(x.T), c))]
    for name, fp32, folded, copied in cases:
        report(f"{label} {name}: fp32, step options", best_ms(fp32, (a, b, g), STEP_OPTIONS), flops)
        if name == "a @ b":
            report(f"{label} {name}: bf16 -> fp32, defaults", best_ms(folded, (a16, b16)), flops)
            continue
        report(f"{label} {name}: bf16 -> fp32, defaults, transpose folded", best_ms(folded, (a16, b16, g16)), flops)
        report(f"{label} {name}: bf16 -> fp32, defaults, row-major copy", best_ms(copied, (a16, b16, g16)), flops)

    def whole(product, x, y, c):
        out, pullback = jax.vjp(product, x, y)
        return out, *pullback(c)

    report(f"{label} forward + backward: fp32, step options",
           best_ms(lambda x, y, c: whole(jnp.matmul, x, y, c), (a, b, g), STEP_OPTIONS), 3 * flops)
    report(f"{label} forward + backward: product_fp32_out, defaults",
           best_ms(lambda x, y, c: whole(layers.product_fp32_out, x, y, c), (a16, b16, g), None), 3 * flops)


if __name__ == "__main__":
    products(4096, 640, 2048, "MLP")
    products(250880, 384, 320, "CE head [V, D] @ [D, N]")
