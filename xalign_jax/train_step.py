"""The AFP training step: both objectives, gradients and the optimizer update as ONE pure function.

``make_train_step`` returns ``step(state, batch) -> (state, metrics)``, to be jitted once with shardings and the
state donated. Per step:
  1. the contrastive pass runs sent0 and sent1 (padded one per row, or packed as segments: ``sentence_vectors``)
     through the embeddings and the first ``k`` blocks only (``k`` is the pooling layer), pools, and computes
     InfoNCE over the GLOBAL batch (the batch arrays are globally sharded, so ``z0 @ z1.T`` inside jit gives every
     device every negative, with gradients); with gradient accumulation the negatives are those of the
     micro-batch (``batch_size / micro_batches`` pairs), as in any accumulation;
  2. the CLM pass runs the packed rows through the whole decoder and computes the masked cross-entropy in sequence
     chunks, so the [rows, T, vocab] fp32 logits never exist;
  3. ``loss = cl_weight * L_cl + clm_weight * L_clm`` (``L_cl`` alone, unweighted, without CLM: AFP_SPEC §1.2.7),
     where ``L_clm`` is the mean over ALL supervised tokens of the step (micro-batches accumulate token sums, so
     accumulation is exact, not a mean of means).
Gradient accumulation scans over micro-batches inside the same compiled function.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from xalign_jax import objectives
from xalign_jax.models.decoder import lm_head_logits

Batch = dict[str, jax.Array]
TrainState = dict[str, Any]   # {"params": nnx.State, "opt_state": optax state, "step": int32[], "rng": uint32[2]}

CL_KEYS = ("sent0_ids", "sent0_mask", "sent1_ids", "sent1_mask")
CLM_KEYS = ("clm_ids", "clm_positions", "clm_segment_ids", "clm_targets", "clm_weights")


def deepspeed_warmup_decay(peak: float, warmup: int, total: int) -> optax.Schedule:
    """The reference's multi-GPU schedule (DeepSpeed ``WarmupDecayLR``, AFP_SPEC §1.4): logarithmic warmup,
    ``peak * log(i + 1) / log(warmup)``, then linear decay to 0 at ``total``, ``peak * (total - i) / (total -
    warmup)``. DeepSpeed's iteration i starts at -1 (learning rate 0) and advances after each update, so the update
    after ``count`` updates uses i = count - 1: the values the reference logs, 9.2804e-6 at step 500 for 1e-5."""
    def schedule(count: jax.Array) -> jax.Array:
        i = jnp.asarray(count, jnp.float32) - 1.0
        warm = jnp.log(jnp.maximum(i, 0.0) + 1.0) / jnp.log(float(max(warmup, 2)))
        decay = jnp.maximum(0.0, (total - i) / max(total - warmup, 1))
        return peak * jnp.where(i < 0, 0.0, jnp.where(i < warmup, warm, decay))
    return schedule


def learning_rate_schedule(tcfg: Any) -> optax.Schedule:
    """Linear warmup to ``lr`` then cosine or linear decay to ``lr * end_lr_ratio`` at ``steps``, or the
    reference's DeepSpeed schedule (``deepspeed_warmup_decay``)."""
    warmup = int(tcfg.warmup_steps)
    if tcfg.schedule == "deepspeed":
        return deepspeed_warmup_decay(tcfg.lr, warmup, int(tcfg.steps))
    decay_steps = max(int(tcfg.steps) - warmup, 1)
    end = tcfg.lr * tcfg.end_lr_ratio
    warm = optax.linear_schedule(0.0, tcfg.lr, max(warmup, 1))
    if tcfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(tcfg.lr, decay_steps, alpha=tcfg.end_lr_ratio)
    elif tcfg.schedule == "linear":
        decay = optax.linear_schedule(tcfg.lr, end, decay_steps)
    elif tcfg.schedule == "constant":
        decay = optax.constant_schedule(tcfg.lr)
    else:
        raise ValueError(f"config train.schedule: unknown schedule {tcfg.schedule!r} "
                         "(cosine | linear | constant | deepspeed)")
    return optax.join_schedules([warm, decay], [warmup]) if warmup else decay


def decay_mask(params: Any) -> Any:
    """Weight decay applies to every weight but norms and biases, embeddings (and so a tied head) included: the
    reference's HF Trainer grouping (its weight decay is 0.0, AFP_SPEC §1.4, so this matters only when set)."""
    def wants_decay(path, leaf) -> bool:
        name = "/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path).lower()
        return not any(tag in name for tag in ("norm", "bias", "scale")) and leaf.ndim >= 2
    return jax.tree_util.tree_map_with_path(wants_decay, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Global-norm clipping as one scalar factor, min(1, max_norm / norm), on every gradient, as
    ``torch.nn.utils.clip_grad_norm_`` does. ``optax.clip_by_global_norm``'s select(norm < max_norm, g,
    g / norm * max_norm) made XLA:CPU write the divided 250k-row embedding gradient out once more before the
    moment updates read it (31 ms of the bloom bench step); a scalar factor fuses into them (BENCHMARKS.md)."""
    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        factor = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
        return jax.tree.map(lambda g: (g * factor).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_adam_hf(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """Adam's direction as ``transformers.AdamW`` (``adamw_hf``, the reference's single-GPU optimizer, AFP_SPEC
    §1.4) computes it: sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps). Its eps is added before the bias
    correction, so it acts as eps / sqrt(1 - b2^t) next to optax's and torch's sqrt(v_hat): 32x larger at the first
    step, which damps entries whose gradients are within a few orders of eps. Same state as
    ``optax.scale_by_adam``, so a checkpoint restores under either placement."""
    def init(params: Any) -> optax.ScaleByAdamState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

    def update(updates: Any, state: optax.ScaleByAdamState, params: Any = None) -> tuple[Any, Any]:
        del params
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.nu)
        count = state.count + 1
        step_size = jnp.sqrt(1 - b2 ** count) / (1 - b1 ** count)
        direction = jax.tree.map(lambda m, v: step_size * m / (jnp.sqrt(v) + eps), mu, nu)
        return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


OPTIMIZERS = ("adamw_torch", "adamw_hf")


def make_optimizer(tcfg: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with global-norm clipping and the warmup/decay schedule; fp32 moments (params are fp32 masters).

    ``train.optimizer`` places Adam's eps: ``adamw_torch`` next to sqrt(v_hat) (torch.optim.AdamW, optax,
    DeepSpeed's Adam: the reference's multi-GPU runs), ``adamw_hf`` next to sqrt(v) (``scale_by_adam_hf``: its
    single-GPU runs). Weight decay is decoupled and uses the parameters before the step in both; transformers.AdamW
    decays the stepped ones, a difference of lr * weight_decay * step (the reference's weight decay is 0)."""
    if tcfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"config train.optimizer: unknown optimizer {tcfg.optimizer!r} ({' | '.join(OPTIMIZERS)})")
    schedule = learning_rate_schedule(tcfg)
    adam = (optax.scale_by_adam(b1=tcfg.b1, b2=tcfg.b2, eps=tcfg.eps) if tcfg.optimizer == "adamw_torch"
            else scale_by_adam_hf(tcfg.b1, tcfg.b2, tcfg.eps))
    tx = optax.chain(
        clip_by_global_norm(tcfg.grad_clip) if tcfg.grad_clip else optax.identity(),
        optax.chain(adam, optax.add_decayed_weights(tcfg.weight_decay, decay_mask),
                    optax.scale_by_learning_rate(schedule)),    # optax.adamw's chain, with its state layout
    )
    return tx, schedule


def split_micro(batch: Batch, num_micro: int, batch_shards: int = 1) -> Batch:
    """[N, ...] -> [num_micro, N / num_micro, ...] for every batch array, micro-batch m being the step's m-th
    contiguous block of records (rows), whatever the mesh.

    The pipeline lays the batch out shard-major (``pipeline.micro_batch_layout``): each of the ``batch_shards``
    data shards holds its slice of EVERY micro-batch, so this reshape moves no data between devices and every
    device works on every micro-batch. A plain [num_micro, N / num_micro] reshape of the contiguous layout put
    micro-batch m on 1 / num_micro of the devices: XLA gathered it there and the whole mesh computed it, so
    accumulation saved no memory and cost num_micro times the compute."""
    def split(v: jax.Array) -> jax.Array:
        per = v.shape[0] // (batch_shards * num_micro)
        v = v.reshape((batch_shards, num_micro, per) + v.shape[1:]).swapaxes(0, 1)
        return v.reshape((num_micro, batch_shards * per) + v.shape[3:])
    return {k: split(v) for k, v in batch.items()}


def sentence_vectors(model: nnx.Module, batch: Batch, rng: jax.Array, pooler: str,
                     batch_shards: int = 1) -> tuple[jax.Array, jax.Array]:
    """(z0, z1): the micro-batch's pooled sentence pairs, through the first ``k`` blocks only. Padded sentences
    (``sent0_ids``...) pool their own rows. Packed ones (``sent_ids``..., ``data.cl_pack_rows``) run as segments,
    then each sentence's row is gathered within its data shard's block of rows (the micro-batch's
    ``batch_shards`` blocks, ``split_micro``), so no device needs another's hidden states, and pooled over its
    segment alone: the vectors of the padded layout."""
    method, layer = objectives.parse_pooler(pooler)
    if "sent_ids" not in batch:
        ids = jnp.concatenate([batch["sent0_ids"], batch["sent1_ids"]], axis=0)
        mask = jnp.concatenate([batch["sent0_mask"], batch["sent1_mask"]], axis=0)
        hidden = model(ids, mask, num_layers=layer, compute_logits=False, dropout_rng=rng).last_hidden_state
        z0, z1 = jnp.split(objectives.pool(hidden, mask, method), 2, axis=0)
        return z0, z1
    segments = batch["sent_segment_ids"]
    hidden = model(batch["sent_ids"], (segments > 0).astype(jnp.int32), positions=batch["sent_positions"],
                   segment_ids=segments, num_layers=layer, compute_logits=False, dropout_rng=rng).last_hidden_state
    by_block = hidden.reshape((batch_shards, -1) + hidden.shape[1:])
    segments_by_block = segments.reshape((batch_shards, -1, segments.shape[1]))

    def side(name: str) -> jax.Array:
        rows = batch[f"{name}_row"].reshape(batch_shards, -1)
        picked = jnp.take_along_axis(by_block, rows[..., None, None], axis=1)
        member = jnp.take_along_axis(segments_by_block, rows[..., None], axis=1) == batch[f"{name}_segment"].reshape(
            batch_shards, -1)[..., None]
        return objectives.pool(picked.reshape((-1,) + picked.shape[2:]), member.reshape(-1, member.shape[-1]), method)

    return side("sent0"), side("sent1")


def afp_losses(model: nnx.Module, batch: Batch, rng: jax.Array, ocfg: Any, supervised_group_rows: int = 1,
               clm_scale: float | jax.Array = 1.0, batch_shards: int = 1) -> tuple[jax.Array, jax.Array, dict]:
    """(contrastive loss, CLM token-loss SUM x ``clm_scale``, aux metrics) for one micro-batch. When the batch has
    a ``clm_head_index`` (the pipeline's, under ``data.supervised_cap``) the CE sees only the supervised positions
    it lists per group of ``supervised_group_rows`` consecutive rows (a group lies within one shard of the
    micro-batch: ``config_validation`` checks the divisibility)."""
    cl_rng, clm_rng = jax.random.split(rng)
    z0, z1 = sentence_vectors(model, batch, cl_rng, ocfg.pooler, batch_shards)
    groups = batch.get("sent_group") if ocfg.mask_shared_sentences else None
    cl_loss, cl_metrics = objectives.contrastive_loss(z0, z1, temperature=ocfg.temperature,
                                                      symmetric=ocfg.symmetric, groups=groups)
    out = model(batch["clm_ids"], (batch["clm_segment_ids"] > 0).astype(jnp.int32),
                positions=batch["clm_positions"], segment_ids=batch["clm_segment_ids"],
                compute_logits=False, dropout_rng=clm_rng)
    hidden, targets, weights = out.last_hidden_state, batch["clm_targets"], batch["clm_weights"]
    head_index = batch.get("clm_head_index")
    clm_sum, clm_count = objectives.clm_loss(hidden, targets, weights, model.head(),
                                             functools.partial(lm_head_logits, model.config),
                                             chunk_size=ocfg.clm_chunk_size, head_index=head_index,
                                             rows_per_group=supervised_group_rows, scale=clm_scale,
                                             logits_grad=ocfg.clm_logits_grad)
    aux = {**cl_metrics, "clm_tokens": clm_count}
    if head_index is not None:
        aux["clm_unscored"] = objectives.supervised_overflow(weights, head_index, supervised_group_rows)
    return cl_loss, clm_sum, aux


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    ocfg: Any, num_micro: int, supervised_group_rows: int = 1,
                    batch_shards: int = 1) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """Build the pure step function; ``ocfg`` is the objective config, ``num_micro`` the accumulation count,
    ``batch_shards`` the mesh's data x fsdp size (the batch's layout, ``split_micro``), ``supervised_group_rows``
    the rows that share one group of LM-head slots in a batch's ``clm_head_index`` (``data.supervised_cap``)."""

    clm_weight = ocfg.clm_weight or 1.0    # a CE weight of 0 still reports the CE, and adds nothing to the loss
    cl_weight = ocfg.cl_weight if ocfg.clm_weight else 1.0     # without CLM the reference's loss is L_cl alone

    def micro_loss(params, micro_batch, rng, total_tokens):
        model = nnx.merge(graphdef, params)
        # The CE's sum comes out as its term of the loss (clm_weight x the global token mean), so that its
        # gradients need no further scaling (objectives.clm_loss's ``scale``).
        cl_loss, clm_term, aux = afp_losses(model, micro_batch, rng, ocfg, supervised_group_rows,
                                            clm_scale=clm_weight / total_tokens, batch_shards=batch_shards)
        loss = cl_weight * cl_loss / num_micro + (clm_term if ocfg.clm_weight else 0.0)
        return loss, {"cl_loss": cl_loss / num_micro, "clm_loss": clm_term / clm_weight, **aux}

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        rng, step_rng = jax.random.split(state["rng"])
        params = state["params"]
        total_tokens = jnp.maximum(batch["clm_weights"].sum(), 1.0)
        micro = split_micro(batch, num_micro, batch_shards)

        def accumulate(carry, xs):
            grads_acc, metrics_acc = carry
            index, micro_batch = xs
            (loss, aux), grads = grad_fn(params, micro_batch, jax.random.fold_in(step_rng, index), total_tokens)
            aux = {"loss": loss, **aux}
            return (jax.tree.map(jnp.add, grads_acc, grads), jax.tree.map(jnp.add, metrics_acc, aux)), None

        zero_grads = jax.tree.map(jnp.zeros_like, params)
        first = jax.tree.map(lambda v: v[0], micro)
        aux_shape = jax.eval_shape(lambda: micro_loss(params, first, step_rng, total_tokens))[1]
        zero_metrics = {"loss": jnp.zeros((), jnp.float32),
                        **jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)}
        (grads, sums), _ = jax.lax.scan(accumulate, (zero_grads, zero_metrics),
                                        (jnp.arange(num_micro), micro))
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        metrics = {
            "loss": sums["loss"], "cl_loss": sums["cl_loss"], "clm_loss": sums["clm_loss"],
            "cl_accuracy": sums["accuracy"] / num_micro, "cl_positive_cosine": sums["positive_cosine"] / num_micro,
            "clm_tokens": sums["clm_tokens"], "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state["step"]),
            **({"clm_unscored": sums["clm_unscored"]} if "clm_head_index" in batch else {}),
        }
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1, "rng": rng}
        return new_state, metrics

    return step
