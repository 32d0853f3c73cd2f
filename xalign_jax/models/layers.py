"""Pure, jit-friendly building blocks shared by every family: norms, position schemes, attention, MLPs.

Numerics follow the HF implementations the parity tests compare against: norms and softmax in fp32, matmuls in
the compute dtype with fp32 accumulation, RoPE angles in fp32.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

MASKED = -1e30   # finite, so a fully masked (padding) query row gives a uniform softmax instead of NaN


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum_fp32_out(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """``einsum`` of compute-dtype operands with fp32 accumulation and output (logits, attention scores and
    outputs) whose backward ALSO runs in the operands' dtype.

    Plain autodiff of ``preferred_element_type=float32`` hands the fp32 cotangent to the transposed matmuls, which
    then run in fp32: the LM head's two backward matmuls, the largest of the step with a 250k vocabulary, ran at
    fp32 rather than bf16 speed. Here the cotangent is rounded to the operands' dtype first, the usual mixed
    precision contract (bf16 operands, fp32 accumulation). With fp32 operands this is exactly plain autodiff."""
    return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)


def _einsum_fp32_out_fwd(spec: str, x: jax.Array, y: jax.Array):
    return einsum_fp32_out(spec, x, y), (x, y)


def _einsum_fp32_out_bwd(spec: str, residuals: tuple[jax.Array, jax.Array], cotangent: jax.Array):
    x, y = residuals
    _, pullback = jax.vjp(functools.partial(jnp.einsum, spec), x, y)   # product in the operands' dtype
    return pullback(cotangent.astype(jnp.result_type(x, y)))


einsum_fp32_out.defvjp(_einsum_fp32_out_fwd, _einsum_fp32_out_bwd)


def dense(x: jax.Array, weight: jax.Array, in_dims: int = 1) -> jax.Array:
    """``x [..., *in] @ weight [*in, *out] -> [..., *out]`` as one 2-D product over the flattened tokens.

    Why not an einsum over [batch, time, ...]: the weight gradient then contracts two dimensions (batch and
    time), and XLA:CPU lays that product out with transposing copies of the [batch, time, features] operands. On
    a scan of 18 Gemma-3 MLPs (fwd + bwd, 512 tokens) that was 1.70 s against 1.13 s flattened (BENCHMARKS.md)."""
    inner = x.shape[x.ndim - in_dims:]
    assert weight.shape[:in_dims] == inner, (weight.shape, x.shape)
    size = math.prod(inner)
    rows, matrix = x.reshape(-1, size), weight.reshape(size, -1)
    if cpu_bf16_products(rows.dtype):
        out = product_fp32_out(rows, matrix).astype(rows.dtype)
    else:
        out = rows @ matrix
    return out.reshape(x.shape[:x.ndim - in_dims] + weight.shape[in_dims:])


def cpu_bf16_products(dtype: jnp.dtype) -> bool:
    """Whether products of ``dtype`` operands go through ``product_fp32_out``: bf16 on a CPU, where the programs
    that compute in bf16 compile under XLA's defaults (``xla_options.for_compute_dtype``). Accelerators keep their
    native bf16 matmuls."""
    return dtype == jnp.bfloat16 and jax.default_backend() == "cpu"


def as_fp32_rounded(logits: jax.Array) -> jax.Array:
    """fp32 logits for the softmax maths, still rounded to their own dtype. XLA may fold a product's bf16 result
    and the upcast after it into one fp32 product, which would silently drop the rounding that
    ``model.logits_dtype='bfloat16'`` asks for (it did in the CPU scorer, BENCHMARKS.md); ``reduce_precision`` is
    never folded away."""
    if logits.dtype == jnp.float32:
        return logits
    info = jnp.finfo(logits.dtype)
    return jax.lax.reduce_precision(logits.astype(jnp.float32), exponent_bits=info.nexp, mantissa_bits=info.nmant)


def row_major(x: jax.Array) -> jax.Array:
    """``x`` as an array of its own, in row-major layout: a transpose (``row_major(a.T)``) is then copied once
    rather than folded into the next product's dimension numbers, which would hand that product to YNNPACK in an
    orientation it runs bf16 in slowly or not at all (XLA then rewrites it as an fp32 product of upcast operands).
    The barrier keeps layout assignment from making the transpose a column-major view; the unit axis keeps it from
    carrying that layout through the barrier (a plain ``optimization_barrier(a.T)`` still reached the product as
    the fp32 rewrite, BENCHMARKS.md)."""
    return jax.lax.optimization_barrier(x[None])[0]


@jax.custom_vjp
def product_fp32_out(a: jax.Array, b: jax.Array) -> jax.Array:
    """bf16 ``a [M, K] @ b [K, N]`` accumulated in and returned as fp32, with a backward of the same kind.

    On a CPU, under XLA's defaults, YNNPACK multiplies bf16 operands into fp32 results at up to twice XLA:CPU's fp32
    rate when both operands are row-major and read as they lie: on a 2-core AMD EPYC with ``avx512_bf16``, the
    [4096, 640] x [640, 2048] product and its two backward products at 224-289 GFLOP/s, against 129-195 in fp32.
    It runs a product with a bf16 result at 135, and one whose operand is a transpose folded into the product (the
    backward as autodiff writes it) at 95-150 or as an fp32 product of upcast operands. So the backward's two
    products take copies of the transposed operands (``row_major``), and round the incoming cotangent to bf16 first
    (the usual mixed-precision contract, as ``einsum_fp32_out``); each gradient comes out rounded to its operand's
    dtype (BENCHMARKS.md)."""
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def _product_fp32_out_fwd(a: jax.Array, b: jax.Array):
    return product_fp32_out(a, b), (a, b)


def _product_fp32_out_bwd(residuals: tuple[jax.Array, jax.Array], cotangent: jax.Array):
    a, b = residuals
    cotangent = cotangent.astype(a.dtype)
    a_grad = jnp.matmul(cotangent, row_major(b.T), preferred_element_type=jnp.float32)
    b_grad = jnp.matmul(row_major(a.T), cotangent, preferred_element_type=jnp.float32)
    return a_grad.astype(a.dtype), b_grad.astype(b.dtype)


product_fp32_out.defvjp(_product_fp32_out_fwd, _product_fp32_out_bwd)


def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array | None, kind: str, eps: float) -> jax.Array:
    """LayerNorm / RMSNorm / Gemma's RMSNorm with (1 + w), statistics in fp32, result in ``x.dtype``."""
    x32 = x.astype(jnp.float32)
    if kind == "layernorm":
        centred = x32 - x32.mean(-1, keepdims=True)
        y = centred * jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + eps)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(x.dtype)
    y = x32 * jax.lax.rsqrt((x32 * x32).mean(-1, keepdims=True) + eps)
    if kind == "rmsnorm_plus_one":
        return (y * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
    if kind == "rmsnorm":   # Llama casts the normalised value back before the weight multiply
        return scale.astype(x.dtype) * y.astype(x.dtype)
    raise ValueError(f"unknown norm kind {kind!r}")


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """0-based positions of the real tokens, correct for left and right padding (padding gets 0 or the last)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope_inv_freq(head_dim: int, params: dict) -> tuple[float, ...]:
    """Inverse frequencies for HF ``rope_parameters`` (types default, linear, llama3), computed once in NumPy."""
    base = float(params.get("rope_theta", 10000.0))
    inv = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim)
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind == "linear":
        inv = inv / params["factor"]
    elif kind == "llama3":
        inv = _llama3_scaling(inv, params)
    elif kind != "default":
        raise ValueError(f"unsupported rope_type {kind!r} (supported: default, linear, llama3)")
    return tuple(float(f) for f in inv.astype(np.float32))


def _llama3_scaling(inv: np.ndarray, params: dict) -> np.ndarray:
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_len = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(positions: jax.Array, inv_freq: tuple[float, ...]) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [B, T, head_dim/2] in fp32."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """HF's rotate-half convention on x [B, T, heads, head_dim]."""
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], -1).astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """BLOOM's per-head slopes, including its rule for a head count that is not a power of two."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = base ** np.arange(1, closest + 1)
    if closest != num_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        extra = min(closest, num_heads - closest)
        slopes = np.concatenate([slopes, extra_base ** np.arange(1, 1 + 2 * extra, 2)])
    return slopes.astype(np.float32)


def alibi_bias(positions: jax.Array, num_heads: int) -> jax.Array:
    """[B, H, 1, S] additive bias slope_h * key_position (softmax makes it relative); positions from the mask."""
    slopes = jnp.asarray(alibi_slopes(num_heads))
    return slopes[None, :, None, None] * positions.astype(jnp.float32)[:, None, None, :]


def sinusoidal(positions: jax.Array, dim: int) -> jax.Array:
    """fairseq sinusoidal embeddings (sin and cos halves concatenated, not interleaved), [B, T, dim] fp32."""
    half = dim // 2
    freq = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
    angles = positions.astype(jnp.float32)[..., None] * freq
    table = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)
    return jnp.pad(table, [(0, 0), (0, 0), (0, dim % 2)])


def attention_mask(attention_mask_2d: jax.Array, positions: jax.Array, segment_ids: jax.Array | None,
                   branch_ids: jax.Array | None, window: int) -> jax.Array:
    """Boolean [B, 1, T, T]: causal, keys that are real tokens, same segment, the query's own branch or the trunk
    (branch 0), and (window > 0) a position distance below the window.

    Branches lay a prefix tree out in one segment: its trunk, then each continuation of it, every one attending to
    the trunk and to itself only. Their positions restart where the trunk ends, so the window compares positions:
    slots apart are not tokens apart there (elsewhere the two are the same)."""
    length = attention_mask_2d.shape[-1]
    allowed = (jnp.arange(length)[None, :] <= jnp.arange(length)[:, None])[None, None]
    allowed = allowed & (attention_mask_2d[:, None, None, :] > 0)
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    if branch_ids is not None:
        key_branch = branch_ids[:, None, None, :]
        allowed = allowed & ((key_branch == 0) | (key_branch == branch_ids[:, None, :, None]))
    if window:
        allowed = allowed & ((positions[:, None, :, None] - positions[:, None, None, :]) < window)
    return allowed


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, scale: float,
              bias: jax.Array | None = None, probs_dropout: float = 0.0,
              rng: jax.Array | None = None) -> jax.Array:
    """Grouped-query attention. q [B,T,H,d], k/v [B,S,KV,d], mask [B,1,T,S], bias [B,H,1|T,S] -> [B,T,H,d]."""
    batch, length, heads, dim = q.shape
    kv_heads = k.shape[2]
    grouped = q.reshape(batch, length, kv_heads, heads // kv_heads, dim)
    scores = einsum_fp32_out("btkgd,bskd->bkgts", grouped, k) * scale
    if bias is not None:
        scores = scores + bias.reshape(batch, kv_heads, heads // kv_heads, *bias.shape[2:])
    scores = jnp.where(mask[:, :, None], scores, MASKED)
    probs = dropout(jax.nn.softmax(scores, axis=-1), probs_dropout, rng).astype(v.dtype)
    out = einsum_fp32_out("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, length, heads, dim).astype(q.dtype)


def activation(kind: str, x: jax.Array) -> jax.Array:
    if kind in ("gelu_tanh", "geglu_tanh"):
        return jax.nn.gelu(x, approximate=True)
    if kind == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if kind == "swiglu":
        return jax.nn.silu(x)
    raise ValueError(f"unknown MLP kind {kind!r}")
