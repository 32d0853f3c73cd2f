"""The one decoder every family runs: embed -> scan(blocks) -> final norm -> (tied or untied) head.

Parameters live in a flat table (``param_specs``) with logical axis names; per-layer parameters are stacked on a
leading ``layers`` axis and the blocks run under ``jax.lax.scan`` + ``jax.checkpoint`` with a named remat policy,
so compile time stays flat in depth (``unroll_layers`` trades that for a faster CPU step, ``_run_blocks``).
``num_layers=k`` slices the stack so a contrastive pass that pools layer k runs only k blocks.
``prefix=PrefixCache`` continues rows after a shared prefix whose keys and values were computed once (the
evaluator's few-shot demonstrations). The module is a plain parameter container: ``nnx.split(model, nnx.Param)``
gives the trainable state and the forward is a pure function of it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from xalign_jax import sharding
from xalign_jax.models import layers
from xalign_jax.models.config import ModelConfig

REMAT_POLICIES: dict[str, Callable | None] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
}
BLOCK_PREFIX = "blocks."


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    axes: tuple[str, ...]          # logical axis names, one per dimension
    init: str                      # normal | zeros | ones


class DecoderOutput(NamedTuple):
    logits: jax.Array | None                    # [B, T, V] in cfg.logits_dtype (fp32 by default), None when
                                                # not asked for or stopped early
    hidden_states: tuple[jax.Array, ...] | None  # HF convention (see Decoder.__call__)
    last_hidden_state: jax.Array                 # final-normed output, or the residual after block k
    keys_values: tuple[jax.Array, jax.Array] | None = None   # per block [depth, B, T, KV, d] when asked for


class PrefixCache(NamedTuple):
    """The keys and values every block computed for one shared prompt prefix (e.g. few-shot demonstrations), so
    that rows continuing it run only their own tokens. ``P`` slots, of which the first ``length`` are real (the
    slot count is a bucket, so a task grid compiles a few shapes); keys are stored as attention uses them (normed,
    rotated)."""
    keys: jax.Array      # [depth, P, KV, d]
    values: jax.Array    # [depth, P, KV, d]
    length: jax.Array    # int32 scalar

    @classmethod
    def from_row(cls, keys_values: tuple[jax.Array, jax.Array], length: jax.Array) -> "PrefixCache":
        """Row 0 of a forward pass run with ``return_keys_values=True``."""
        keys, values = keys_values
        return cls(keys[:, 0], values[:, 0], jnp.asarray(length, jnp.int32))


def param_specs(cfg: ModelConfig) -> dict[str, ParamSpec]:
    """Every parameter of ``cfg``'s model: shape, logical axes and initialiser."""
    d, h, kv, hd, f, n = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size,
                          cfg.num_layers)
    norm_init = "zeros" if cfg.norm == "rmsnorm_plus_one" else "ones"
    specs = {"embed": ParamSpec((cfg.vocab_size, d), ("vocab", "embed"), "normal")}
    if cfg.embed_norm:
        specs.update(_norm_specs("embed_norm", (), d, cfg, norm_init))
    block = {
        "q": ParamSpec((d, h, hd), ("embed", "heads", "head_dim"), "normal"),
        "k": ParamSpec((d, kv, hd), ("embed", "kv_heads", "head_dim"), "normal"),
        "v": ParamSpec((d, kv, hd), ("embed", "kv_heads", "head_dim"), "normal"),
        "o": ParamSpec((h, hd, d), ("heads", "head_dim", "embed"), "normal"),
        "up": ParamSpec((d, f), ("embed", "mlp"), "normal"),
        "down": ParamSpec((f, d), ("mlp", "embed"), "normal"),
    }
    if cfg.gated_mlp:
        block["gate"] = ParamSpec((d, f), ("embed", "mlp"), "normal")
    if cfg.qkv_bias:
        block["q_bias"] = ParamSpec((h, hd), ("heads", "head_dim"), "zeros")
        block["k_bias"] = ParamSpec((kv, hd), ("kv_heads", "head_dim"), "zeros")
        block["v_bias"] = ParamSpec((kv, hd), ("kv_heads", "head_dim"), "zeros")
    if cfg.out_bias:
        block["o_bias"] = ParamSpec((d,), ("embed",), "zeros")
    if cfg.mlp_bias:
        if cfg.gated_mlp:
            block["gate_bias"] = ParamSpec((f,), ("mlp",), "zeros")
        block["up_bias"] = ParamSpec((f,), ("mlp",), "zeros")
        block["down_bias"] = ParamSpec((d,), ("embed",), "zeros")
    if cfg.qk_norm:
        block["q_norm"] = ParamSpec((hd,), ("head_dim",), norm_init)
        block["k_norm"] = ParamSpec((hd,), ("head_dim",), norm_init)
    names = ["attn_norm", "mlp_norm"] + (["post_attn_norm", "post_mlp_norm"] if cfg.sandwich_norms else [])
    for name in names:
        block.update(_norm_specs(name, (), d, cfg, norm_init))
    for name, spec in block.items():
        specs[BLOCK_PREFIX + name] = ParamSpec((n,) + spec.shape, ("layers",) + spec.axes, spec.init)
    specs.update(_norm_specs("final_norm", (), d, cfg, norm_init))
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = ParamSpec((d, cfg.vocab_size), ("embed", "vocab"), "normal")
    return specs


def _norm_specs(name: str, lead: tuple, d: int, cfg: ModelConfig, init: str) -> dict[str, ParamSpec]:
    specs = {name: ParamSpec(lead + (d,), ("norm",), init)}
    if cfg.norm == "layernorm":
        specs[name + "_bias"] = ParamSpec(lead + (d,), ("norm",), "zeros")
    return specs


def initial_value(spec: ParamSpec, key: jax.Array, dtype: jnp.dtype, std: float = 0.02) -> jax.Array:
    if spec.init == "normal":
        return (std * jax.random.normal(key, spec.shape, jnp.float32)).astype(dtype)
    return (jnp.ones if spec.init == "ones" else jnp.zeros)(spec.shape, dtype)


class _ParamGroup(nnx.Module):
    """A named group of parameters (the stacked blocks, or the top level)."""

    def __init__(self, arrays: Mapping[str, jax.Array], specs: Mapping[str, ParamSpec]):
        self.names = tuple(sorted(arrays))
        for name in self.names:
            setattr(self, name, nnx.Param(arrays[name], logical_axes=specs[name].axes))

    def values(self, dtype: jnp.dtype, skip: tuple[str, ...] = ()) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...].astype(dtype) for name in self.names if name not in skip}


class Decoder(nnx.Module):
    """A decoder-only LM; build it with ``init_model`` or ``from_pretrained``, not directly."""

    def __init__(self, config: ModelConfig, arrays: Mapping[str, jax.Array]):
        specs = param_specs(config)
        missing = sorted(set(specs) - set(arrays))
        if missing:
            raise ValueError(f"missing parameters for {config.family}: {missing}")
        self.config = config
        top = {k: v for k, v in arrays.items() if not k.startswith(BLOCK_PREFIX)}
        blocks = {k[len(BLOCK_PREFIX):]: v for k, v in arrays.items() if k.startswith(BLOCK_PREFIX)}
        self.top = _ParamGroup(top, specs)
        self.blocks = _ParamGroup(blocks, {k: specs[BLOCK_PREFIX + k] for k in blocks})

    def arrays(self) -> dict[str, jax.Array]:
        """Flat ``{name: array}`` in param dtype (the export and sharding view)."""
        out = {k: getattr(self.top, k)[...] for k in self.top.names}
        out.update({BLOCK_PREFIX + k: getattr(self.blocks, k)[...] for k in self.blocks.names})
        return out

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 branch_ids: jax.Array | None = None, output_hidden_states: bool = False,
                 num_layers: int | None = None, compute_logits: bool = True, dropout_rng: jax.Array | None = None,
                 prefix: PrefixCache | None = None, return_keys_values: bool = False) -> DecoderOutput:
        """Run the model.

        ``attention_mask`` [B,T] (1 real, 0 pad; left or right padding); ``positions`` default to the mask-derived
        ``cumsum(mask) - 1``; ``segment_ids`` make attention block-diagonal for packed rows (pass positions that
        restart per segment); ``branch_ids`` lay a prefix tree out in a segment: a trunk (0), then continuations
        (1, 2, ...) that each see the trunk and themselves, their positions continuing the trunk's (the scorer's
        candidates of one item, ``layers.attention_mask``). ``hidden_states`` follow HF: index 0 the embedding
        output, index i the residual after block i, the last index the final-norm output. ``num_layers=k`` stops
        after block k: ``last_hidden_state`` is then HF's ``hidden_states[k]`` and no logits are computed.

        ``prefix`` continues every (right-padded) row after a shared cached prefix: the rows hold only their own
        tokens, their positions start at ``prefix.length``, and every block attends to the prefix's keys first.
        Packed rows continue it too: each segment attends to the prefix and to itself (pass positions that restart
        at ``prefix.length`` per segment).
        ``return_keys_values`` returns each block's keys and values, from which ``PrefixCache.from_row`` makes one.
        """
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if positions is None:
            positions = layers.positions_from_mask(attention_mask)
            if prefix is not None:
                positions = positions + prefix.length
        depth = cfg.num_layers if num_layers is None else num_layers
        if not 0 <= depth <= cfg.num_layers:
            raise ValueError(f"num_layers={num_layers} outside [0, {cfg.num_layers}]")
        dtype = jnp.dtype(cfg.dtype)
        top = self.top.values(dtype, skip=("embed", "lm_head"))   # the head casts per chunk
        rng_embed, rng_blocks = jax.random.split(dropout_rng) if dropout_rng is not None else (None, None)
        embedded = _embed(cfg, top, self.top.embed[...], input_ids, positions, rng_embed)
        context = _attention_context(cfg, attention_mask, positions, segment_ids, branch_ids, prefix)
        blocks = jax.tree.map(lambda x: x[:depth], self.blocks.values(dtype))
        past = None if prefix is None else (prefix.keys[:depth].astype(dtype), prefix.values[:depth].astype(dtype))
        hidden, (per_block, keys_values) = _run_blocks(cfg, blocks, embedded, context, rng_blocks,
                                                       output_hidden_states, past, return_keys_values)
        stopped_early = depth < cfg.num_layers
        if not stopped_early:
            hidden = layers.normalize(hidden, top["final_norm"], top.get("final_norm_bias"), cfg.norm, cfg.norm_eps)
        states = None
        if output_hidden_states:   # HF: embeddings, residual after blocks 1..k-1, then the (normed) output
            states = (embedded,) + tuple(per_block[i] for i in range(depth - 1)) + ((hidden,) if depth else ())
        logits = self.logits(hidden) if compute_logits and not stopped_early else None
        return DecoderOutput(logits, states, hidden, keys_values)

    def head(self) -> dict[str, jax.Array]:
        """The vocabulary projection's parameters, in param dtype: ``lm_head_logits``'s ``head`` argument."""
        name, _ = head_layout(self.config)
        return {name: getattr(self.top, name)[...]}

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final-normed hidden [..., D] -> vocabulary logits in ``logits_dtype`` (the scorer calls this)."""
        return lm_head_logits(self.config, self.head(), hidden)

    def target_logprobs(self, hidden: jax.Array, targets: jax.Array, vocab_block: int,
                        token_major: bool = False) -> jax.Array:
        """Final-normed hidden [N, D] -> fp32 log p(targets [N]), at most ``vocab_block`` vocabulary rows at a
        time, in either layout (``blocked_target_logprobs``)."""
        return blocked_target_logprobs(self.config, self.head(), hidden, targets, vocab_block, token_major)


def head_layout(cfg: ModelConfig) -> tuple[str, str]:
    """(name, axes) of the vocabulary projection's weight in ``Decoder.head()``: the tied embedding [V, D] or the
    untied lm_head [D, V]."""
    return ("embed", "vd") if cfg.tie_word_embeddings else ("lm_head", "dv")


def lm_head_logits(cfg: ModelConfig, head: Mapping[str, jax.Array], hidden: jax.Array,
                   vocab_major: bool = False) -> jax.Array:
    """Hidden [..., D] -> logits [..., V] from ``Decoder.head()``: a pure function of the head's parameters, so
    that the chunked CE can differentiate it chunk by chunk (``objectives.clm_loss``). ``vocab_major=True`` takes
    hidden [N, D] and returns the transposed logits [V, N], the layout of the CPU step's CE (``objectives.
    _chunk_grads_vocab_major``: every product of its backward is then a plain one for the CPU's matmul library).

    The product always accumulates in fp32; ``cfg.logits_dtype`` is what it is rounded to. fp32 by default;
    ``bfloat16`` is what the reference's autocast runs produce, and on an accelerator it halves the bytes of the
    [tokens, 262k] logits that the CE's softmax passes read and write (the CE upcasts to fp32 inside those passes).
    A CPU computing in bf16 rounds an fp32 product instead: its matmul library has no fast bf16-result product."""
    dtype = jnp.dtype(cfg.dtype)
    name, weight_dims = head_layout(cfg)
    weight, hidden = head[name].astype(dtype), hidden.astype(dtype)
    if cfg.logits_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"model.logits_dtype {cfg.logits_dtype!r}: choose float32 or bfloat16")
    spec = f"{weight_dims},nd->vn" if vocab_major else f"...d,{weight_dims}->...v"
    operands = (weight, hidden) if vocab_major else (hidden, weight)
    if vocab_major and layers.cpu_bf16_products(dtype):
        out = _vocab_major_cpu_bf16_logits(weight, weight_dims, hidden).astype(cfg.logits_dtype)
    elif cfg.logits_dtype == "float32" or layers.cpu_bf16_products(dtype):
        # fp32 logits, or bf16 ones rounded from them on a CPU computing in bf16: asked for a bf16 result, XLA:CPU
        # multiplies upcast fp32 operands (a [256, 640] x [640, 16384] scorer block 9x slower, the bloom bench
        # step 1.20-1.24 s instead of 0.75, BENCHMARKS.md)
        out = layers.einsum_fp32_out(spec, *operands).astype(cfg.logits_dtype)
    else:
        out = jnp.einsum(spec, *operands, preferred_element_type=jnp.bfloat16)
    if cfg.final_logit_softcap:
        out = jnp.tanh(out / cfg.final_logit_softcap) * cfg.final_logit_softcap
    return out


def _vocab_major_cpu_bf16_logits(weight: jax.Array, weight_dims: str, hidden: jax.Array) -> jax.Array:
    """fp32 [V, N] logits of bf16 operands as ``layers.product_fp32_out`` of row-major [V, D] and [D, N] operands:
    the orientation in which YNNPACK runs the product and both of its backward products in bf16 at up to twice
    XLA:CPU's fp32 rate (the bloom bench step's CE head, forward and backward: 1.27 -> 1.02 s, BENCHMARKS.md)."""
    rows = weight if weight_dims == "vd" else layers.row_major(weight.T)
    return layers.product_fp32_out(rows, layers.row_major(hidden.T))


def blocked_target_logprobs(cfg: ModelConfig, head: Mapping[str, jax.Array], hidden: jax.Array,
                            targets: jax.Array, vocab_block: int, token_major: bool = False) -> jax.Array:
    """fp32 log p(targets [N] | hidden [N, D]) through the vocabulary in blocks of at most ``vocab_block`` rows
    (``vocabulary_blocks``), with a running log-sum-exp: one block of logits exists at a time, never [V, N].

    On a CPU the full [V, N] logits cost more than their product: written out and read back (134 MB for 128
    positions of a 262k vocabulary), they made the scorer's vocabulary call memory-bound; in 16 blocks the same
    call (128 positions, hidden 256, 250,880 rows) took 81-87 ms against 112-122 ms (BENCHMARKS.md). Each block's
    logits are ``lm_head_logits``'s, so dtype rounding and soft-capping are the same. By default the blocks are
    vocabulary-major [block, N] products in a scan, the layout XLA's own matmuls run fastest in fp32;
    ``token_major`` gives [N, block] products unrolled over static slices, the layout in which YNNPACK (XLA's
    defaults) multiplies bf16 at about twice that rate (a scan's dynamic slices would copy every block). When the
    blocks cannot tile the vocabulary, the last one starts early and masks the rows the one before it had."""
    name, weight_dims = head_layout(cfg)
    weight, axis = head[name], weight_dims.index("v")
    vocab = weight.shape[axis]
    count, block = vocabulary_blocks(vocab, vocab_block)
    vocab_axis = 1 if token_major else 0      # of each block's logits
    row_in_block = jnp.expand_dims(jnp.arange(block), 1 - vocab_axis)

    def step(carry, first_row):
        running_max, running_sum, target_logit = carry
        start = jnp.minimum(first_row, vocab - block)
        rows = jax.lax.dynamic_slice_in_dim(weight, start, block, axis)
        logits = layers.as_fp32_rounded(lm_head_logits(cfg, {name: rows}, hidden, vocab_major=not token_major))
        if count * block > vocab:
            logits = jnp.where(start + row_in_block >= first_row, logits, -jnp.inf)
        new_max = jnp.maximum(running_max, logits.max(axis=vocab_axis))
        spread = jnp.exp(logits - jnp.expand_dims(new_max, vocab_axis)).sum(axis=vocab_axis)
        running_sum = running_sum * jnp.exp(running_max - new_max) + spread
        local = targets - start
        index = jnp.expand_dims(jnp.clip(local, 0, block - 1), vocab_axis)
        picked = jnp.take_along_axis(logits, index, axis=vocab_axis).squeeze(vocab_axis)
        in_block = (targets >= first_row) & (local < block)
        return (new_max, running_sum, jnp.where(in_block, picked, target_logit)), None

    carry = (jnp.full(targets.shape, -jnp.inf), jnp.zeros(targets.shape), jnp.zeros(targets.shape))
    if token_major:
        for first_row in range(0, count * block, block):
            carry, _ = step(carry, first_row)
    else:
        carry, _ = jax.lax.scan(step, carry, jnp.arange(count) * block)
    running_max, running_sum, target_logit = carry
    return target_logit - (running_max + jnp.log(running_sum))


def vocabulary_blocks(vocab: int, max_rows: int) -> tuple[int, int]:
    """(count, rows) of vocabulary blocks of at most ``max_rows`` rows: the fewest equal blocks that tile the
    vocabulary exactly, if up to twice the fewest possible do (250,880 = 16 x 15,680, 262,144 = 16 x 16,384,
    256,008 = 24 x 10,667, 250,002 = 17 x 14,706); else the fewest possible, the last one overlapping."""
    fewest = -(-vocab // max_rows)
    count = next((count for count in range(fewest, 2 * fewest + 1) if vocab % count == 0), fewest)
    return count, -(-vocab // count)


def _embed(cfg: ModelConfig, top: dict, table: jax.Array, input_ids: jax.Array, positions: jax.Array,
           rng: jax.Array | None) -> jax.Array:
    dtype = jnp.dtype(cfg.dtype)
    hidden = jnp.take(table, input_ids, axis=0).astype(dtype)
    if cfg.embed_scale:   # HF's Gemma casts sqrt(d) to the weights' dtype (it matters in bf16): ours is the compute
                          # dtype, the same for a model run in one dtype; XGLM's float sqrt(1024) = 32 is exact
        hidden = hidden * jnp.asarray(cfg.hidden_size ** 0.5, dtype)
    if cfg.positions == "sinusoidal":
        hidden = hidden + layers.sinusoidal(positions + cfg.position_offset, cfg.hidden_size).astype(dtype)
    if cfg.embed_norm:
        hidden = layers.normalize(hidden, top["embed_norm"], top["embed_norm_bias"], cfg.norm, cfg.norm_eps)
    return layers.dropout(hidden, cfg.dropout, rng)


def _attention_context(cfg: ModelConfig, mask: jax.Array, positions: jax.Array, segment_ids: jax.Array | None,
                       branch_ids: jax.Array | None, prefix: PrefixCache | None) -> dict[str, jax.Array]:
    """Everything attention needs that does not depend on the layer's weights, computed once per call. With a
    prefix, keys are the prefix's slots (at positions 0..P-1) followed by the row's own tokens."""
    slots = None if prefix is None else jnp.arange(prefix.keys.shape[1])

    def mask_for(window: int) -> jax.Array:
        own = layers.attention_mask(mask, positions, segment_ids, branch_ids, window)
        if prefix is None:
            return own
        cached = (slots < prefix.length)[None, None, None, :]
        if window:
            cached = cached & ((positions[:, None, :, None] - slots) < window)
        return jnp.concatenate([jnp.broadcast_to(cached, own.shape[:3] + slots.shape), own], axis=-1)

    context = {"mask": mask_for(0)}
    if cfg.sliding_window and any(cfg.layer_is_sliding):
        context["local_mask"] = mask_for(cfg.sliding_window)
    if cfg.positions == "alibi":
        key_positions = positions
        if prefix is not None:
            key_positions = jnp.concatenate([jnp.broadcast_to(slots, (positions.shape[0],) + slots.shape), positions],
                                            axis=1)
        context["bias"] = layers.alibi_bias(key_positions, cfg.num_heads)
    if cfg.positions == "rope":
        context["rope"] = layers.rope_tables(positions, cfg.rope_inv_freq)
        if cfg.rope_local_inv_freq:
            context["local_rope"] = layers.rope_tables(positions, cfg.rope_local_inv_freq)
    return context


def _run_blocks(cfg: ModelConfig, blocks: dict, hidden: jax.Array, context: dict, rng: jax.Array | None,
                collect: bool, past: tuple[jax.Array, jax.Array] | None = None, return_keys_values: bool = False):
    """Scan the (already sliced) stacked blocks, each attending to its slice of ``past`` keys/values first.

    Returns the last residual and (per-block residuals when ``collect``, per-block (keys, values) when
    ``return_keys_values``), stacked on a leading depth axis.

    ``cfg.unroll_layers`` unrolls the scan: the same blocks, no loop. On a CPU a rolled loop costs a bf16 step
    dearly: XLA:CPU widens every bf16 dynamic-update-slice to fp32 over the WHOLE stacked buffer (each block's saved
    activations and weight gradients rewrite all the blocks' slices), and the backward's transposed bf16 copies of
    each block's weights, cut from the fp32 stack inside the loop, took 2-11 ms each against 0.8-1.7 ms outside it.
    Unrolled, the gemma3-270m bf16 bench step on an AMX Xeon went from 3.17 to 2.27 s and its compile from 12 to
    17 s; fp32 steps did not change (BENCHMARKS.md)."""
    depth = next(iter(blocks.values())).shape[0]
    sliding = jnp.asarray((cfg.layer_is_sliding or (False,) * cfg.num_layers)[:depth], bool)

    def body(h, xs):
        params, is_sliding, index, layer_past = xs
        layer_rng = None if rng is None else jax.random.fold_in(rng, index)
        h, keys_values = _block(cfg, params, h, context, is_sliding, layer_rng, layer_past)
        return h, (h if collect else None, keys_values if return_keys_values else None)

    if cfg.remat_policy != "none":
        if cfg.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"unknown remat_policy {cfg.remat_policy!r}; choose none or {sorted(REMAT_POLICIES)}")
        body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
    return jax.lax.scan(body, hidden, (blocks, sliding, jnp.arange(depth), past), unroll=bool(cfg.unroll_layers))


def _block(cfg: ModelConfig, p: dict, h: jax.Array, context: dict, is_sliding: jax.Array,
           rng: jax.Array | None, past: tuple[jax.Array, jax.Array] | None) -> tuple[jax.Array, tuple]:
    """One block; also returns its own (keys, values) for a prefix cache."""
    rngs = jax.random.split(rng, 4) if rng is not None else (None,) * 4
    x = layers.normalize(h, p["attn_norm"], p.get("attn_norm_bias"), cfg.norm, cfg.norm_eps)
    attn, keys_values = _self_attention(cfg, p, x, context, is_sliding, rngs[0], past)
    if cfg.sandwich_norms:
        attn = layers.normalize(attn, p["post_attn_norm"], None, cfg.norm, cfg.norm_eps)
    h = h + layers.dropout(attn, cfg.dropout, rngs[1])
    x = layers.normalize(h, p["mlp_norm"], p.get("mlp_norm_bias"), cfg.norm, cfg.norm_eps)
    mlp = _mlp(cfg, p, x, rngs[2])
    if cfg.sandwich_norms:
        mlp = layers.normalize(mlp, p["post_mlp_norm"], None, cfg.norm, cfg.norm_eps)
    return h + layers.dropout(mlp, cfg.dropout, rngs[3]), keys_values


def _project(x: jax.Array, weight: jax.Array, bias: jax.Array | None) -> jax.Array:
    out = layers.dense(x, weight)
    return out if bias is None else out + bias


def _self_attention(cfg: ModelConfig, p: dict, x: jax.Array, context: dict, is_sliding: jax.Array,
                    rng: jax.Array | None, past: tuple[jax.Array, jax.Array] | None) -> tuple[jax.Array, tuple]:
    q = _project(x, p["q"], p.get("q_bias"))
    k = _project(x, p["k"], p.get("k_bias"))
    v = _project(x, p["v"], p.get("v_bias"))
    if cfg.qk_norm:
        q = layers.normalize(q, p["q_norm"], None, cfg.norm, cfg.norm_eps)
        k = layers.normalize(k, p["k_norm"], None, cfg.norm, cfg.norm_eps)
    if "rope" in context:
        cos, sin = context["rope"]
        if "local_rope" in context:
            cos, sin = (jnp.where(is_sliding, local, full) for local, full in zip(context["local_rope"], (cos, sin)))
        q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
    keys_values = (k, v)
    if past is not None:   # [P, KV, d] shared by every row, in front of the row's own keys
        k, v = (jnp.concatenate([jnp.broadcast_to(cached, (x.shape[0],) + cached.shape), own], axis=1)
                for cached, own in zip(past, keys_values))
    mask = context["mask"]
    if "local_mask" in context:
        mask = jnp.where(is_sliding, context["local_mask"], mask)
    if cfg.attention_impl == "xla":
        out = layers.attention(q, k, v, mask, scale=cfg.scale, bias=context.get("bias"),
                               probs_dropout=cfg.attention_dropout, rng=rng)
    else:
        out = _fused_attention(cfg, q, k, v, mask, context.get("bias"))
    out = layers.dense(out, p["o"], in_dims=2)
    return (out if "o_bias" not in p else out + p["o_bias"]), keys_values


def _fused_attention(cfg: ModelConfig, q, k, v, mask, bias) -> jax.Array:
    """``jax.nn.dot_product_attention`` with the configured implementation (``cudnn`` on GPU, ``dot_product``
    = its XLA implementation, the same call path that CPU tests check)."""
    if cfg.attention_dropout:
        raise ValueError("attention_impl other than 'xla' does not support attention dropout")
    implementation = {"cudnn": "cudnn", "dot_product": "xla"}.get(cfg.attention_impl)
    if implementation is None:
        raise ValueError(f"unknown attention_impl {cfg.attention_impl!r}; choose xla, dot_product or cudnn")
    return jax.nn.dot_product_attention(q, k, v, bias=None if bias is None else bias.astype(q.dtype),
                                        mask=mask, scale=cfg.scale, implementation=implementation)


@functools.partial(jax.checkpoint, static_argnums=0)
def _activated(kind: str, gate: jax.Array | None, up: jax.Array) -> jax.Array:
    """The MLP's activation, ``act(gate) * up`` (gated) or ``act(up)``, rematerialised: its backward recomputes
    the elementwise chain from the one or two inputs instead of saving every intermediate of, say, tanh-GELU
    (six arrays of [tokens, d_ff] per layer, read back in a strided transposing pass). 8% of a Gemma-3 step on CPU."""
    return layers.activation(kind, up) if gate is None else layers.activation(kind, gate) * up


def _mlp(cfg: ModelConfig, p: dict, x: jax.Array, rng: jax.Array | None) -> jax.Array:
    up = layers.dense(x, p["up"]) + p.get("up_bias", 0)
    gate = layers.dense(x, p["gate"]) + p.get("gate_bias", 0) if cfg.gated_mlp else None
    inner = _activated(cfg.mlp, gate, up)
    inner = layers.dropout(inner, cfg.activation_dropout, rng)
    return layers.dense(inner, p["down"]) + p.get("down_bias", 0)


def init_model(config: ModelConfig, seed: int = 0, mesh: jax.sharding.Mesh | None = None,
               std: float = 0.02) -> Decoder:
    """A randomly initialised model (demo configs, tests), created directly in the mesh's parameter shardings."""
    return Decoder(config, _initialiser(config, std, mesh)(jax.random.PRNGKey(seed)))


@functools.lru_cache(maxsize=16)
def _initialiser(config: ModelConfig, std: float, mesh: jax.sharding.Mesh | None) -> Callable:
    """The compiled draw of every parameter, one per (config, std, mesh) and not one per model: each parameter's
    normal draw costs XLA:CPU about 0.2 s to compile, 2-3 s for a model, and tests build the same models often."""
    specs = param_specs(config)
    dtype = jnp.dtype(config.param_dtype)
    out_shardings = sharding.param_shardings(specs, mesh) if mesh is not None else None

    @functools.partial(jax.jit, out_shardings=out_shardings)
    def make(key):
        keys = dict(zip(specs, jax.random.split(key, len(specs))))
        return {name: initial_value(spec, keys[name], dtype, std) for name, spec in specs.items()}

    return make
