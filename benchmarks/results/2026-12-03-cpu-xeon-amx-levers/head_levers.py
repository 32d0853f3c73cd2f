"""The CE head's levers tried on the AMX Xeon and not kept (BENCHMARKS.md, "Levers tried on the AMX Xeon"), bf16
operands with fp32 results under XLA's defaults, as the bf16 train step and scorer compile:

  1. a product with and without a reduction over its output (YNNPACK fuses the reduction; the logits are then
     never written out);
  2. the bloom bench step's head as it runs (``objectives._chunk_grads_vocab_major``) against a two-pass
     vocabulary-blocked head whose first pass is fused products and reductions;
  3. the hidden gradient's product per block in both orientations;
  4. the logits' gradient as an elementwise pass, under XLA's defaults and with YNNPACK's elementwise and dot
     fusions (``xla_cpu_experimental_ynn_fusion_type``);
  5. the scorer's vocabulary call (Gemma-3's head, 256 positions) as it runs (16 token-major blocks, a running
     log-sum-exp) against two fused passes over the vocabulary (the maximum, then the sum of exponentials).

    GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \
      PYTHONPATH=. python benchmarks/results/2026-12-03-cpu-xeon-amx-levers/head_levers.py
"""
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.matmul_rates import median_seconds
from xalign_jax import objectives
from xalign_jax.models import layers

F32, BF16 = jnp.float32, jnp.bfloat16
VOCAB, HIDDEN, SLOTS = 250880, 384, 320        # the bloom bench's head and supervised slots
RNG = np.random.default_rng(0)


def normal(*shape, dtype=BF16, scale=1.0):
    return jnp.asarray(RNG.normal(size=shape).astype(np.float32) * scale, dtype)


def timed(name: str, fn, *args, options: dict | None = None, gflop: float = 0.0, repeats: int = 9):
    compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
    out = jax.block_until_ready(compiled(*args))
    median = median_seconds(lambda: compiled(*args), jax.block_until_ready, repeats)
    rate = f", {gflop / median:5.0f} GFLOP/s" if gflop else ""
    print(f"  {name:62s} {median * 1e3:8.2f} ms{rate}", flush=True)
    return out


def product(a, b):
    return jnp.matmul(a, b, preferred_element_type=F32)


def products_and_reductions() -> None:
    print("1. [V, D] @ [D, N] products, bf16 operands, fp32 results (bloom head sizes but V)")
    hidden_t = normal(HIDDEN, SLOTS)
    for vocab in (16384, 65536, VOCAB):
        weight, gflop = normal(vocab, HIDDEN), 2 * vocab * HIDDEN * SLOTS / 1e9
        timed(f"V={vocab}: the product alone", product, weight, hidden_t, gflop=gflop)
        timed(f"V={vocab}: the product and its maximum over V", lambda a, b: product(a, b).max(0), weight, hidden_t,
              gflop=gflop)


def current_head(head, hidden, targets, weights):
    logits_fn = lambda p, h, vocab_major: layers.product_fp32_out(p["w"], layers.row_major(h.T))  # noqa: E731
    return objectives._chunk_grads_vocab_major(logits_fn, head, hidden[None], targets[None], weights[None])


def blocked_head(count: int, copy_rows_t: bool):
    """Two passes over ``count`` vocabulary blocks: the log-sum-exp from fused products and reductions, then each
    block's logits again for its gradients; the hidden gradient contracts the block's vocabulary rows as they lie
    or, with ``copy_rows_t``, takes a row-major copy of the block's W^T first (section 3)."""
    block = VOCAB // count

    def run(head, hidden, targets, weights):
        blocks = [head["w"][i * block:(i + 1) * block] for i in range(count)]
        hidden_t = layers.row_major(hidden.T)
        top = jnp.full((SLOTS,), -jnp.inf)
        for rows in blocks:
            top = jnp.maximum(top, product(rows, hidden_t).max(0))
        spread = sum(jnp.exp(product(rows, hidden_t) - top).sum(0) for rows in blocks)
        lse = top + jnp.log(spread)
        target_logit = jnp.einsum("nd,nd->n", head["w"][targets], hidden, preferred_element_type=F32)
        head_grads, hidden_grad = [], jnp.zeros((HIDDEN, SLOTS) if copy_rows_t else (SLOTS, HIDDEN), F32)
        for i, rows in enumerate(blocks):
            logits = product(rows, hidden_t)
            is_target = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 0) + i * block == targets
            grad = ((jnp.exp(logits - lse) - is_target) * weights).astype(BF16)
            head_grads.append(jnp.einsum("vn,nd->vd", grad, hidden, preferred_element_type=F32).astype(BF16))
            if copy_rows_t:
                hidden_grad = hidden_grad + product(layers.row_major(rows.T), grad)
            else:
                hidden_grad = hidden_grad + jnp.einsum("vn,vd->nd", grad, rows, preferred_element_type=F32)
        hidden_grad = hidden_grad.T if copy_rows_t else hidden_grad
        return jnp.sum(weights * (lse - target_logit)), {"w": jnp.concatenate(head_grads)}, hidden_grad.astype(BF16)
    return run


def ce_heads() -> None:
    print(f"2. the CE head, forward and backward, [{VOCAB}, {HIDDEN}] x {SLOTS} slots")
    head, hidden = {"w": normal(VOCAB, HIDDEN, scale=0.02)}, normal(SLOTS, HIDDEN)
    targets, weights = jnp.asarray(RNG.integers(0, VOCAB, SLOTS), jnp.int32), jnp.ones((SLOTS,), F32)
    reference = timed("as the step runs it (3 products, [V, N] fp32 logits)", current_head, head, hidden, targets,
                      weights)
    for count, copy_rows_t in ((16, False), (64, False), (8, True), (16, True), (32, True)):
        name = f"two passes, {count} vocabulary blocks{', W^T block copies' if copy_rows_t else ''}"
        out = timed(name, blocked_head(count, copy_rows_t), head, hidden, targets, weights)
        hidden_diff = jnp.abs(out[2].astype(F32) - reference[2].reshape(out[2].shape).astype(F32)).max()
        print(f"    loss rel. diff {float(abs(out[0] - reference[0]) / abs(reference[0])):.1e}, hidden gradient max "
              f"abs diff {float(hidden_diff):.1e}")


def hidden_gradient_orientations() -> None:
    block = VOCAB // 16
    print(f"3. the hidden gradient of one block of {block} vocabulary rows")
    grad, rows, gflop = normal(block, SLOTS), normal(block, HIDDEN), 2 * block * HIDDEN * SLOTS / 1e9
    timed("G [V, N] and W [V, D] as they lie (vn,vd->nd)",
          lambda g, w: jnp.einsum("vn,vd->nd", g, w, preferred_element_type=F32), grad, rows, gflop=gflop)
    timed("a row-major copy of W^T, then W^T @ G", lambda g, w: product(layers.row_major(w.T), g), grad, rows,
          gflop=gflop)


def gradient_passes() -> None:
    print(f"4. the logits' gradient over [{VOCAB}, {SLOTS}] fp32 logits, to bf16")
    logits, lse = normal(VOCAB, SLOTS, dtype=F32), jnp.ones((SLOTS,), F32)
    targets, weights, hidden = jnp.zeros((SLOTS,), jnp.int32), jnp.ones((SLOTS,), F32), normal(SLOTS, HIDDEN)

    def gradient(x, l, t, w):
        return ((jnp.exp(x - l) - (jax.lax.broadcasted_iota(jnp.int32, x.shape, 0) == t)) * w).astype(BF16)

    fusions = {"XLA's defaults": None,
               "+ YNNPACK elementwise": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE,"
                                        "LIBRARY_FUSION_TYPE_ELTWISE",
               "YNNPACK dot fusions": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    for name, kinds in fusions.items():
        options = kinds and {"xla_cpu_experimental_ynn_fusion_type": kinds}
        timed(f"{name}: exp(x - lse) to bf16", lambda x, l: jnp.exp(x - l).astype(BF16), logits, lse,
              options=options)
        timed(f"{name}: the gradient (one-hot, weights) to bf16", gradient, logits, lse, targets, weights,
              options=options)
        timed(f"{name}: the gradient, then G @ H", lambda *a: product(gradient(*a[:4]), a[4]), logits, lse, targets,
              weights, hidden, options=options)


def scorer_calls() -> None:
    vocab, width, positions, block = 262144, 640, 256, 16384
    print(f"5. the scorer's vocabulary call: Gemma-3's head [{vocab}, {width}], {positions} positions")
    weight, hidden = normal(vocab, width, scale=0.05), normal(positions, width)
    targets = jnp.asarray(RNG.integers(0, vocab, positions), jnp.int32)

    def running(w, h, t):      # as decoder.blocked_target_logprobs(token_major=True) runs it
        top, spread, picked = jnp.full((positions,), -jnp.inf), jnp.zeros((positions,)), jnp.zeros((positions,))
        for start in range(0, vocab, block):
            logits = jnp.einsum("nd,vd->nv", h, w[start:start + block], preferred_element_type=F32)
            new_top = jnp.maximum(top, logits.max(1))
            spread = spread * jnp.exp(top - new_top) + jnp.exp(logits - new_top[:, None]).sum(1)
            top, local = new_top, t - start
            at = jnp.take_along_axis(logits, jnp.clip(local, 0, block - 1)[:, None], 1)[:, 0]
            picked = jnp.where((local >= 0) & (local < block), at, picked)
        return picked - (top + jnp.log(spread))

    def two_passes(w, h, t):
        logits = lambda: jnp.einsum("nd,vd->nv", h, w, preferred_element_type=F32)  # noqa: E731
        top = logits().max(1)
        picked = jnp.einsum("nd,nd->n", h, w[t], preferred_element_type=F32)
        return picked - (top + jnp.log(jnp.exp(logits() - top[:, None]).sum(1)))

    reference = timed(f"{vocab // block} token-major blocks, a running log-sum-exp", running, weight, hidden, targets)
    out = timed("two fused passes over the vocabulary", two_passes, weight, hidden, targets)
    print(f"    max abs diff {float(jnp.abs(out - reference).max()):.1e}")


if __name__ == "__main__":
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
    products_and_reductions()
    ce_heads()
    hidden_gradient_orientations()
    gradient_passes()
    scorer_calls()
