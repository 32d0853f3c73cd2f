"""The two AFP objectives as pure, jit-friendly functions (AFP_SPEC §1.2).

* ``pool``: one vector per sentence from a hidden-state layer ("last" non-pad token, masked "avg" or "max").
* ``contrastive_loss``: InfoNCE over the GLOBAL batch. Inside jit the inputs are globally sharded arrays, so the plain
  ``z0 @ z1.T`` below gives every device every negative WITH gradients (XLA inserts the gathers); the reference's
  non-differentiable all-gather, which scales the contrastive gradient by 1/world_size, is not reproduced (§7.3).
* ``clm_loss``: next-token cross-entropy computed chunk by chunk over the sequence, so the fp32 logits of the whole
  batch ([rows, T, vocab], gigabytes with a 262k vocabulary) never exist, not even as saved residuals for backward;
  each chunk's gradient is taken while its logits exist, so the head's matmul never runs twice.

Similarities, log-sum-exps and losses run in fp32 whatever the compute dtype, as the reference does under autocast.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from xalign_jax.models import layers

POOL_METHODS = ("last", "avg", "max")
COSINE_EPS = 1e-8   # torch.nn.CosineSimilarity's default: each norm is clamped to at least eps


def parse_pooler(spec: str) -> tuple[str, int]:
    """``"last-1"`` -> ``("last", 1)``: pooling method and hidden-state index (HF convention, 0 = embeddings).

    The layer is always explicit: with ``k`` known the contrastive pass runs only the first ``k`` blocks.
    """
    method, sep, layer = spec.partition("-")
    if method not in POOL_METHODS or not sep or not layer.isdigit():
        raise ValueError(f"pooler {spec!r}: expected '<method>-<layer>' with method in {POOL_METHODS} and layer a "
                         "non-negative integer hidden-state index (0 = embeddings), e.g. 'last-1' or 'avg-12'")
    return method, int(layer)


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index of the true last non-pad token of each row; right OR left padding (fixes the reference bug §7.1)."""
    length = mask.shape[-1]
    reversed_first = jnp.argmax(jnp.flip(mask.astype(bool), axis=-1), axis=-1)
    return (length - 1 - reversed_first).astype(jnp.int32)


def pool(hidden: jax.Array, mask: jax.Array, method: str) -> jax.Array:
    """[N, T, D] hidden states and [N, T] mask (1 = token) -> [N, D] float32 sentence vectors.

    Special tokens count as tokens (as in the reference). A row without any token yields zeros, never NaN/-inf.
    """
    valid = mask.astype(bool)
    hidden = hidden.astype(jnp.float32)
    if method == "last":
        index = last_token_index(valid)
        picked = jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]
        return jnp.where(valid.any(axis=1, keepdims=True), picked, 0.0)
    if method == "avg":
        count = jnp.maximum(valid.sum(axis=1, keepdims=True), 1).astype(jnp.float32)
        return jnp.where(valid[..., None], hidden, 0.0).sum(axis=1) / count
    if method == "max":   # masked with -inf, not multiplied by 0 (the reference's max_embed bug, §7.17)
        pooled = jnp.where(valid[..., None], hidden, -jnp.inf).max(axis=1)
        return jnp.where(valid.any(axis=1, keepdims=True), pooled, 0.0)
    raise ValueError(f"pooling method {method!r}: expected one of {POOL_METHODS}")


def _unit(z: jax.Array) -> jax.Array:
    """z / max(|z|, eps), torch's cosine clamp, with the clamp under the square root: the norm's own gradient at a
    zero vector (what an empty row pools to) is 0/0, which made the whole loss's gradient NaN."""
    squared = jnp.sum(z * z, axis=-1, keepdims=True)
    return z / jnp.sqrt(jnp.maximum(squared, COSINE_EPS ** 2))


def _infonce(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy, top-1 accuracy) of rows whose positive is on the diagonal."""
    positives = jnp.diagonal(logits)
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - positives)
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == jnp.arange(logits.shape[0])).astype(jnp.float32))
    return loss, accuracy


def contrastive_loss(z0: jax.Array, z1: jax.Array, *, temperature: float = 0.05, symmetric: bool = False,
                     groups: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """InfoNCE between translation pairs: row i of ``z0`` must pick row i of ``z1`` among all B rows of ``z1``.

    ``symmetric=False`` is the reference (sent0 anchors only); ``symmetric=True`` averages it with the z1 -> z0
    direction. With ``groups`` ([B] ints), pairs of one group are not each other's negatives: a pair sharing a
    sentence with the anchor's holds the anchor's own sentence or its translation, so pushing it away would fight
    the positive (the reference has no such mask). Metrics: top-1 in-batch accuracy (mean over the directions in
    the loss) and mean positive cosine. The similarity matmul runs at full fp32 precision (TPUs would otherwise
    use bf16 passes for it).
    """
    cosine = jnp.matmul(_unit(z0.astype(jnp.float32)), _unit(z1.astype(jnp.float32)).T,
                        precision=jax.lax.Precision.HIGHEST)
    logits = cosine / temperature
    if groups is not None:
        shared = (groups[:, None] == groups[None, :]) & ~jnp.eye(groups.shape[0], dtype=bool)
        logits = jnp.where(shared, -jnp.inf, logits)
    loss, accuracy = _infonce(logits)
    if symmetric:
        loss_back, accuracy_back = _infonce(logits.T)
        loss, accuracy = (loss + loss_back) / 2, (accuracy + accuracy_back) / 2
    return loss, {"accuracy": accuracy, "positive_cosine": jnp.mean(jnp.diagonal(cosine))}


# (head parameters, [..., D] hidden) -> [..., V] logits; with ``vocab_major=True``: (head, [N, D]) -> [V, N]
LogitsFn = Callable[..., jax.Array]


def _nll_terms(logits: jax.Array, targets: jax.Array, weights: jax.Array,
               axis: int = -1) -> tuple[jax.Array, jax.Array]:
    """(weighted NLL sum, log-sum-exp with ``axis`` kept) of fp32 ``logits`` whose vocabulary lies on ``axis``;
    weight-0 positions (any target id) contribute 0."""
    lse = jax.nn.logsumexp(logits, axis=axis, keepdims=True)
    target_logit = jnp.take_along_axis(logits, jnp.expand_dims(targets, axis), axis=axis)
    weights = jnp.expand_dims(weights, axis)
    return jnp.sum(jnp.where(weights > 0, (lse - target_logit) * weights, 0.0)), lse


def _chunk_nll_sum(logits_fn: LogitsFn, head: Any, hidden: jax.Array, targets: jax.Array,
                   weights: jax.Array) -> jax.Array:
    """Weighted sum of -log p(target) over one [R, C] chunk; logits in the compute dtype, softmax maths in fp32."""
    return _nll_terms(layers.as_fp32_rounded(logits_fn(head, hidden)), targets, weights)[0]


def _chunk_grads_by_autodiff(logits_fn: LogitsFn, head: Any, hidden: jax.Array, targets: jax.Array,
                             weights: jax.Array) -> tuple[jax.Array, Any, jax.Array]:
    """``_chunk_nll_sum`` and its gradients for the head and the hidden chunk, by ``jax.vjp``."""
    loss, pullback = jax.vjp(lambda p, h: _chunk_nll_sum(logits_fn, p, h, targets, weights), head, hidden)
    return (loss, *pullback(jnp.ones((), jnp.float32)))


def _grads_through_logits(logits_fn: LogitsFn, head: Any, hidden: jax.Array, targets: jax.Array,
                          weights: jax.Array, axis: int) -> tuple[jax.Array, Any, jax.Array]:
    """NLL sum and gradients with the logits' gradient written out, ``(softmax - onehot(target)) * weight`` (the
    one-hot an iota comparison, the vocabulary on ``axis`` of ``logits_fn``'s output); only the head's own
    backward (``logits_fn``'s pullback) is autodiff."""
    raw_logits, pullback = jax.vjp(logits_fn, head, hidden)
    logits = layers.as_fp32_rounded(raw_logits)
    loss, lse = _nll_terms(logits, targets, weights, axis)
    targets, weights = jnp.expand_dims(targets, axis), jnp.expand_dims(weights, axis)
    is_target = jax.lax.broadcasted_iota(jnp.int32, logits.shape, axis % logits.ndim) == targets
    logits_grad = (jnp.exp(logits - lse) - is_target) * jnp.where(weights > 0, weights, 0.0)
    head_grad, hidden_grad = pullback(logits_grad.astype(raw_logits.dtype))
    return loss, head_grad, hidden_grad


def _chunk_grads_by_hand(logits_fn: LogitsFn, head: Any, hidden: jax.Array, targets: jax.Array,
                         weights: jax.Array) -> tuple[jax.Array, Any, jax.Array]:
    """``_chunk_grads_by_autodiff`` with the logits' gradient written out (``_grads_through_logits``). Autodiff
    transposes the target gather into a scatter into a zero [R, C, V] array, which on a GPU kept the softmax
    gradient and its cast to the compute dtype in separate fp32 passes over the step's largest tensor."""
    return _grads_through_logits(logits_fn, head, hidden, targets, weights, axis=-1)


def _chunk_grads_vocab_major(logits_fn: LogitsFn, head: Any, hidden: jax.Array, targets: jax.Array,
                             weights: jax.Array) -> tuple[jax.Array, Any, jax.Array]:
    """``_chunk_grads_by_hand`` on logits laid out [V, R * C]: the head's gradient is then logits_grad @ hidden,
    a plain product, where the token-major layout needs logits_grad transposed, a copy of the largest tensor.
    With the train step's CPU compiler options (``train.cpu_compiler_options``: matmuls by XLA's own library, not
    YNNPACK, which ran two of these [250880 x 384 x 320] products 1.6-1.7x slower) the three head products run at
    185-210 GFLOP/s on the 2-core CPU: the head alone went from 1.25 to 0.95 s and the bloom bench step from 1.74 to
    1.47 s against the token-major autodiff CE under XLA's defaults (BENCHMARKS.md). A bf16 step on CPU compiles
    under XLA's defaults, and its three head products run as bf16 ones in YNNPACK (``decoder.lm_head_logits``)."""
    grads_of_flat = functools.partial(_grads_through_logits, functools.partial(logits_fn, vocab_major=True),
                                      axis=0)
    loss, head_grad, hidden_grad = grads_of_flat(head, hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1),
                                                 weights.reshape(-1))
    return loss, head_grad, hidden_grad.reshape(hidden.shape)


# Measured (BENCHMARKS.md): by hand, the gemma3-270m step on an H200 went from 114.7 to 109.0 ms; on the 2-core CPU
# the bloom bench step took 2.07-2.09 s by autodiff, 2.19-2.20 s by hand and, with the vocabulary-major layout and
# the CPU compiler options, 1.47 s. "auto" takes the fastest for the backend.
CHUNK_GRADS = {"autodiff": _chunk_grads_by_autodiff, "by_hand": _chunk_grads_by_hand,
               "vocab_major": _chunk_grads_vocab_major}


def chunk_grads_layout(logits_grad: str) -> str:
    """The ``CHUNK_GRADS`` name ``logits_grad`` stands for on this backend ("auto": the fastest measured)."""
    if logits_grad == "auto":
        logits_grad = "vocab_major" if jax.default_backend() == "cpu" else "by_hand"
    if logits_grad not in CHUNK_GRADS:
        raise ValueError(f"logits_grad {logits_grad!r}: choose auto or one of {sorted(CHUNK_GRADS)}")
    return logits_grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunked_nll_sum(logits_fn: LogitsFn, logits_grad: str, head: Any, hidden: jax.Array, targets: jax.Array,
                     weights: jax.Array) -> jax.Array:
    """Sum of ``_chunk_nll_sum`` over [num_chunks, R, C, ...] chunks, one chunk's logits alive at a time.

    Differentiated, the forward pass already computes each chunk's gradients while its logits exist (the fused
    linear cross-entropy of Liger-Kernel / Cut Cross-Entropy): backward then only scales them by the incoming
    cotangent. Rematerialising the chunk instead would run the vocabulary projection, the largest matmul of the
    step with a 250k vocabulary, a second time: four head matmuls per chunk instead of three.
    """
    def body(total, chunk):
        return total + _chunk_nll_sum(logits_fn, head, *chunk), None

    return jax.lax.scan(body, jnp.zeros((), jnp.float32), (hidden, targets, weights))[0]


def _chunked_nll_sum_fwd(logits_fn: LogitsFn, logits_grad: str, head: Any, hidden: jax.Array, targets: jax.Array,
                         weights: jax.Array):
    chunk_grads = CHUNK_GRADS[chunk_grads_layout(logits_grad)]

    def body(carry, chunk):
        total, head_grad = carry
        chunk_hidden, chunk_targets, chunk_weights = chunk
        loss, chunk_head_grad, hidden_grad = chunk_grads(logits_fn, head, chunk_hidden, chunk_targets, chunk_weights)
        return (total + loss, jax.tree.map(jnp.add, head_grad, chunk_head_grad)), hidden_grad

    zero_head = jax.tree.map(jnp.zeros_like, head)
    (total, head_grad), hidden_grad = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zero_head),
                                                   (hidden, targets, weights))
    return total, (head_grad, hidden_grad)


def _chunked_nll_sum_bwd(logits_fn: LogitsFn, logits_grad: str, residuals: tuple[Any, jax.Array],
                         cotangent: jax.Array):
    head_grad, hidden_grad = residuals
    scale = lambda g: (g * cotangent).astype(g.dtype)   # noqa: E731
    return jax.tree.map(scale, head_grad), scale(hidden_grad), None, None


_chunked_nll_sum.defvjp(_chunked_nll_sum_fwd, _chunked_nll_sum_bwd)


def _to_chunks(x: jax.Array, chunk: int, num_chunks: int) -> jax.Array:
    """[R, T, ...] -> [num_chunks, R, chunk, ...], zero-padding T up to num_chunks * chunk."""
    pad = num_chunks * chunk - x.shape[1]
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((x.shape[0], num_chunks, chunk) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def group_rows(x: jax.Array, rows: int) -> jax.Array:
    """[R, T, ...] -> [R / rows, rows * T, ...]: each group of ``rows`` consecutive rows becomes one row, so that
    the supervised cap and the gather apply per group (the packer fills groups the same way)."""
    return x.reshape((x.shape[0] // rows, rows * x.shape[1]) + x.shape[2:])


def gather_supervised(hidden: jax.Array, targets: jax.Array, weights: jax.Array,
                      index: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Grouped rows [G, S, ...] at ``index`` [G, K] (positions within the group; -1 marks an empty slot, which
    gets weight 0): ([G, K, D] hidden, [G, K] targets, [G, K] weights)."""
    filled = index >= 0
    at = jnp.where(filled, index, 0)
    return (jnp.take_along_axis(hidden, at[..., None], axis=1), jnp.take_along_axis(targets, at, axis=1),
            jnp.where(filled, jnp.take_along_axis(weights, at, axis=1), 0))


def supervised_overflow(weights: jax.Array, index: jax.Array, rows_per_group: int = 1) -> jax.Array:
    """How many supervised positions ``clm_loss(..., head_index=index, rows_per_group=...)`` leaves unscored: those
    of each group of rows that ``index`` does not list (the pipeline lists them all)."""
    supervised = group_rows(weights, rows_per_group) > 0
    listed = jnp.take_along_axis(supervised, jnp.maximum(index, 0), axis=1) & (index >= 0)
    return jnp.sum(supervised) - jnp.sum(listed)


def clm_loss(hidden: jax.Array, targets: jax.Array, weights: jax.Array, head: Any, logits_fn: LogitsFn, *,
             chunk_size: int, head_index: jax.Array | None = None, rows_per_group: int = 1,
             logits_grad: str = "auto", scale: float | jax.Array = 1.0) -> tuple[jax.Array, jax.Array]:
    """(``scale`` x the sum of weighted token NLL, sum of weights) of next-token prediction, in sequence chunks.

    ``targets[r, t]`` is the token to predict AT position t (already shifted by the packer) and ``weights`` are 0/1.
    Returning the sum and the count lets the caller take the exact token mean over the global batch and over
    gradient-accumulation micro-batches. ``logits_fn(head, h)`` is the vocabulary projection and ``head`` its
    parameters (a pytree), explicit so that the gradient can be taken chunk by chunk in the forward pass: one
    chunk's [R, C, V] logits exist at a time, and backward keeps only the [R, T, D] hidden gradient and the head's
    gradient (``_chunked_nll_sum``); ``logits_grad`` picks how the logits' gradient is formed (``CHUNK_GRADS``;
    "auto" by backend). The chunks are balanced (as few as ``chunk_size`` allows, equal in length), so a length just
    above ``chunk_size`` is not padded to twice its size.

    ``head_index`` ([R / rows_per_group, K], ``packing.head_index``) first gathers the supervised positions of each
    group of ``rows_per_group`` consecutive rows into K slots: only those reach the vocabulary projection, which
    dominates the step with 250k+ vocabularies. The count returned is always the sum of ALL weights, so a
    position the index left out would lower the loss visibly rather than vanish; ``supervised_overflow`` reports
    that number for the metrics.

    ``scale`` (no gradient) multiplies the token weights inside the fused CE, so the gradients come out scaled.
    A caller that scales the sum anyway (the train step: ``clm_weight`` / the global token count) then hands it a
    cotangent of 1; scaling the sum outside made XLA:CPU multiply the head's whole [V, D] gradient by the
    cotangent, one more pass over the step's largest gradient (BENCHMARKS.md).
    """
    count = jnp.sum(weights.astype(jnp.float32))
    if head_index is not None:
        grouped = (group_rows(x, rows_per_group) for x in (hidden, targets, weights))
        hidden, targets, weights = gather_supervised(*grouped, head_index)
    length = hidden.shape[1]
    num_chunks = -(-length // max(1, int(chunk_size)))
    chunk = -(-length // num_chunks)
    loss_sum = _chunked_nll_sum(logits_fn, logits_grad, head, _to_chunks(hidden, chunk, num_chunks),
                                _to_chunks(targets, chunk, num_chunks),
                                _to_chunks(weights.astype(jnp.float32) * jax.lax.stop_gradient(scale), chunk,
                                           num_chunks))
    return loss_sum, count
