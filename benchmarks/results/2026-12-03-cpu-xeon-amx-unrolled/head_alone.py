"""The bloom bench step's CE head alone (bf16 operands, fp32 logits, vocabulary-major, forward and backward), timed
as the step runs it (``objectives._chunk_grads_vocab_major`` over ``layers.product_fp32_out``) and as a two-pass
vocabulary-blocked variant (a running log-sum-exp, then each block's logits again for its gradients: four products,
one block of logits alive at a time), plus the head's three products one by one.

    GLIBC_TUNABLES=... PYTHONPATH=. python benchmarks/results/2026-12-03-cpu-xeon-amx-unrolled/head_alone.py
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from xalign_jax import objectives
from xalign_jax.models import layers

VOCAB, HIDDEN, SLOTS = 250880, 384, 320     # the bloom bench: real vocabulary, hidden 384, 320 supervised slots
PRODUCT_GFLOP = 2 * VOCAB * HIDDEN * SLOTS / 1e9


def timed(name: str, fn, *args, repeats: int = 7, products: int = 3):
    compiled = jax.jit(fn)
    out = jax.block_until_ready(compiled(*args))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        seconds.append(time.perf_counter() - start)
    median = float(np.median(seconds))
    print(f"{name:58s} median {median * 1e3:6.1f} ms (min {min(seconds) * 1e3:6.1f}), "
          f"{products * PRODUCT_GFLOP / median:5.0f} GFLOP/s over {products} products", flush=True)
    return out


def current_head(head, hidden, targets, weights):
    logits_fn = lambda p, h, vocab_major: layers.product_fp32_out(p["w"], layers.row_major(h.T))  # noqa: E731
    return objectives._chunk_grads_vocab_major(logits_fn, head, hidden[None], targets[None], weights[None])


def blocked_head(count: int):
    block = VOCAB // count

    def run(head, hidden, targets, weights):
        hidden_t = layers.row_major(hidden.T)
        blocks = [head["w"][i * block:(i + 1) * block] for i in range(count)]
        running_max, running_sum = jnp.full((SLOTS,), -jnp.inf), jnp.zeros((SLOTS,))
        target_logit = jnp.zeros((SLOTS,))
        for i, rows in enumerate(blocks):
            logits = jnp.matmul(rows, hidden_t, preferred_element_type=jnp.float32)
            new_max = jnp.maximum(running_max, logits.max(0))
            running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.exp(logits - new_max).sum(0)
            running_max = new_max
            local = targets - i * block
            picked = jnp.take_along_axis(logits, jnp.clip(local, 0, block - 1)[None], 0)[0]
            target_logit = jnp.where((local >= 0) & (local < block), picked, target_logit)
        lse = running_max + jnp.log(running_sum)
        head_grads, hidden_grad = [], jnp.zeros((HIDDEN, SLOTS), jnp.float32)
        for i, rows in enumerate(blocks):
            logits = jnp.matmul(rows, hidden_t, preferred_element_type=jnp.float32)
            is_target = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 0) + i * block == targets
            grad = ((jnp.exp(logits - lse) - is_target) * weights).astype(jnp.bfloat16)
            head_grads.append(jnp.matmul(grad, hidden, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
            hidden_grad = hidden_grad + jnp.matmul(layers.row_major(rows.T), grad, preferred_element_type=jnp.float32)
        loss = jnp.sum(weights * (lse - target_logit))
        return loss, {"w": jnp.concatenate(head_grads)}, hidden_grad.T.astype(jnp.bfloat16)
    return run


def main() -> None:
    rng = np.random.default_rng(0)
    bf16 = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(np.float32), jnp.bfloat16)  # noqa: E731
    head, hidden = {"w": bf16(VOCAB, HIDDEN) * 0.02}, bf16(SLOTS, HIDDEN)
    targets, weights = jnp.asarray(rng.integers(0, VOCAB, SLOTS), jnp.int32), jnp.ones((SLOTS,), jnp.float32)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; head [{VOCAB}, {HIDDEN}], {SLOTS} slots")
    reference = timed("current head (3 products, [V, N] fp32 logits)", current_head, head, hidden, targets, weights)
    for count in (16, 64):
        out = timed(f"two-pass, {count} vocabulary blocks (4 products)", blocked_head(count), head, hidden,
                    targets, weights, products=4)
        print(f"    loss rel. diff {float(abs(out[0] - reference[0]) / abs(reference[0])):.1e}, head grad max diff "
              f"{float(jnp.abs(out[1]['w'].astype(jnp.float32) - reference[1]['w'].astype(jnp.float32)).max()):.1e}")
    product = lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32)  # noqa: E731
    weight, weight_t, grad = head["w"], bf16(HIDDEN, VOCAB), bf16(VOCAB, SLOTS)
    timed("forward W [V, D] @ H^T [D, N]", product, weight, bf16(HIDDEN, SLOTS), products=1)
    timed("head gradient G [V, N] @ H [N, D], rounded to bf16", lambda a, b: product(a, b).astype(jnp.bfloat16),
          grad, hidden, products=1)
    timed("hidden gradient W^T [D, V] @ G [V, N]", product, weight_t, grad, products=1)
    timed("the row-major copy of W^T", lambda w: layers.row_major(w.T), weight, products=0)


if __name__ == "__main__":
    main()
