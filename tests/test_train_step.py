"""The compiled step's loss, metrics and update against a plain recomputation: the losses of ``afp_losses``
combined by hand, their gradient by ``jax.grad``, and optax's own clipping and AdamW."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests.tiny_models import TINY_HF_CONFIGS, reference_batch, step_batch
from xalign_jax import config_defaults, models, sharding, train, train_step
from xalign_jax.data import pipeline, sentence_packing


def _tree(seed: int, scale: float) -> dict:
    rng = np.random.default_rng(seed)
    return {"a": jnp.asarray(scale * rng.normal(size=(5, 3)), jnp.float32),
            "b": {"c": jnp.asarray(scale * rng.normal(size=(7,)), jnp.float32)}}


@pytest.mark.parametrize("scale", [0.0, 0.01, 1.0, 30.0])
def test_clipping_by_a_scalar_factor_is_optax_clipping(scale):
    """min(1, max_norm / norm) x g (torch's clip_grad_norm_) against optax's select(norm < max, g, g / norm * max):
    identical below the threshold and for zero gradients, equal to float rounding above it."""
    grads = _tree(0, scale)
    ours, _ = train_step.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    theirs, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=0)
    if float(optax.tree.norm(grads)) < 1.0:
        assert all(np.array_equal(g, w) for g, w in zip(jax.tree.leaves(ours), jax.tree.leaves(grads)))
    else:
        assert float(optax.tree.norm(ours)) == pytest.approx(1.0, rel=1e-6)


def hf_adamw_steps(params: dict, grads: list[dict], lr: float, b1: float, b2: float, eps: float) -> dict:
    """transformers 4.28.1's ``AdamW.step`` (the reference's adamw_hf, weight decay 0), transcribed in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m, v = ({k: np.zeros_like(x) for k, x in p.items()} for _ in range(2))
    for t, g in enumerate(grads, start=1):
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] * g[k]
            denom = np.sqrt(v[k]) + eps
            p[k] = p[k] - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m[k] / denom
    return p


def test_adamw_hf_is_transformers_adamw_and_adamw_torch_is_not():
    """Gradients from 1e-9 to 1: where |g| is within a few orders of eps the two placements of eps differ (by up
    to 3x at the first step); ``adamw_hf`` follows transformers' AdamW there, ``adamw_torch`` does not."""
    rng = np.random.default_rng(0)
    params = {"w": np.zeros((4, 10), np.float32)}      # at 0 the moves of 1e-8 lr are not lost to rounding
    magnitudes = np.logspace(-9, 0, 10)
    grads = [{"w": (magnitudes * rng.choice([-1.0, 1.0], size=(4, 10)) * (1 + 0.1 * t)).astype(np.float32)}
             for t in range(3)]
    tcfg = config_defaults.train_config()
    tcfg.update(lr=1e-3, warmup_steps=0, schedule="constant", grad_clip=0.0)
    want = hf_adamw_steps(params, grads, tcfg.lr, tcfg.b1, tcfg.b2, tcfg.eps)["w"] - params["w"]

    def moved(optimizer: str) -> np.ndarray:
        tcfg.optimizer = optimizer
        tx, _ = train_step.make_optimizer(tcfg)
        state, p = tx.init(params), {k: jnp.asarray(v) for k, v in params.items()}
        for g in grads:
            updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, p)
            p = optax.apply_updates(p, updates)
        return np.asarray(p["w"], np.float64) - params["w"]

    np.testing.assert_allclose(moved("adamw_hf"), want, rtol=1e-3, atol=1e-9)
    assert np.abs(moved("adamw_torch") - want).max() > 0.5 * tcfg.lr
    tcfg.optimizer = "adam"
    with pytest.raises(ValueError, match="train.optimizer: unknown optimizer 'adam'"):
        train_step.make_optimizer(tcfg)


@pytest.mark.parametrize("clm_weight, cl_weight", [(1.5, 1.0), (0.0, 1.0), (1.5, 2.0)])
def test_the_step_is_the_weighted_loss_and_an_optax_adamw_update(clm_weight, cl_weight):
    """One step of ``make_train_step`` (the CE's sum scaled inside the fused CE, clipping by a scalar factor) gives
    the loss cl + clm_weight x token-mean CE, both losses as metrics, and the parameters optax's clip + AdamW give
    from ``jax.grad`` of that loss; a CE weight of 0 still reports the CE and leaves it out of the update."""
    cfg = models.ModelConfig.from_hf(TINY_HF_CONFIGS["llama3"], dropout=0.0)
    graphdef, params = nnx.split(models.init_model(cfg, seed=0, std=0.2), nnx.Param)
    batch = step_batch(reference_batch(cfg.vocab_size))
    ocfg = config_defaults.objective_config()
    ocfg.update(clm_weight=clm_weight, cl_weight=cl_weight, clm_chunk_size=5)
    tcfg = config_defaults.train_config()
    tcfg.update(lr=1e-2, warmup_steps=0, grad_clip=0.5)
    tx, schedule = train_step.make_optimizer(tcfg)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0), "rng": jax.random.PRNGKey(1)}
    new_state, metrics = jax.jit(train_step.make_train_step(graphdef, tx, schedule, ocfg, 1))(state, batch)

    _, step_rng = jax.random.split(state["rng"])

    def plain_loss(p):
        model = nnx.merge(graphdef, p)
        cl, clm_sum, aux = train_step.afp_losses(model, batch, jax.random.fold_in(step_rng, 0), ocfg)
        clm_mean = clm_sum / jnp.maximum(batch["clm_weights"].sum(), 1.0)
        return ocfg.cl_weight * cl + clm_weight * clm_mean, (cl, clm_mean)

    (loss, (cl, clm_mean)), grads = jax.value_and_grad(plain_loss, has_aux=True)(params)
    plain_tx = optax.chain(optax.clip_by_global_norm(0.5),
                           optax.adamw(schedule, b1=tcfg.b1, b2=tcfg.b2, eps=tcfg.eps, weight_decay=tcfg.weight_decay,
                                       mask=train_step.decay_mask))
    updates, _ = plain_tx.update(grads, plain_tx.init(params), params)
    want = optax.apply_updates(params, updates)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
    assert float(metrics["cl_loss"]) == pytest.approx(float(cl), rel=1e-6)
    assert float(metrics["clm_loss"]) == pytest.approx(float(clm_mean), rel=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-5)
    # Adam's first update is lr * g / (|g| + eps) for the clipped gradient g: where |g| is within a few orders of
    # eps, the float rounding of g (the fused CE sums in another order) moves it by a fraction of lr. Those
    # entries are held to Adam's bound; the others (over 90%), zero gradients included, to 1e-3 lr.
    clip = min(1.0, 0.5 / float(optax.tree.norm(grads)))
    moved, held, entries = 0, 0, 0
    for got, before, expected, grad in zip(*(jax.tree.leaves(t) for t in (new_state["params"], params, want, grads))):
        got, expected = np.asarray(got), np.asarray(expected)
        conditioned = (np.abs(np.asarray(grad)) * clip > 100 * tcfg.eps) | (np.asarray(grad) == 0)
        np.testing.assert_allclose(got[conditioned], expected[conditioned], rtol=1e-5, atol=1e-3 * tcfg.lr)
        assert np.abs(got - expected).max() <= tcfg.lr
        moved += int(not np.array_equal(got, np.asarray(before)))
        held, entries = held + int(conditioned.sum()), entries + conditioned.size
    assert moved > 0
    assert held > 0.9 * entries


def _packed_pairs(blocks: int, per_block: int, vocab: int, row_length: int = 16) -> tuple[dict, dict]:
    """Random sentence pairs (2..row_length tokens) padded one per row, and the same packed into rows per block of
    ``per_block`` records, as ``sentence_packing`` lays them out (every block the same row count)."""
    rng = np.random.default_rng(0)
    pairs = [[rng.integers(3, vocab, rng.integers(2, row_length + 1)) for _ in range(2)]
             for _ in range(blocks * per_block)]
    padded = {}
    for side in (0, 1):
        padded[f"sent{side}_ids"], padded[f"sent{side}_mask"] = pipeline.pad_right([p[side] for p in pairs],
                                                                                   row_length, 0)
    by_block = [pairs[b * per_block:(b + 1) * per_block] for b in range(blocks)]
    packed = sentence_packing.pack_blocks([([p[0] for p in block], [p[1] for p in block]) for block in by_block],
                                          row_length, range(1, 2 * per_block + 1), 0)
    assert packed["sent_ids"].shape[0] < blocks * 2 * per_block          # the test packs something
    return padded, packed


@pytest.mark.parametrize("family, pooler", [("llama3", "last-1"), ("bloom", "avg-2"), ("gemma3", "max-1")])
def test_packed_sentences_pool_to_the_padded_ones_vectors(family, pooler):
    """Sentences packed as segments (``data.cl_pack_rows``), gathered per block of rows: each pair's vectors and
    their gradients are those of one padded row per sentence, for RoPE, ALiBi and Gemma-3 attention and every
    pooling method; with 2 blocks the gather stays within each block."""
    cfg = models.ModelConfig.from_hf(TINY_HF_CONFIGS[family], dropout=0.0)
    graphdef, params = nnx.split(models.init_model(cfg, seed=0, std=0.2), nnx.Param)
    padded, packed = _packed_pairs(blocks=2, per_block=6, vocab=cfg.vocab_size)

    def vectors(p, batch, shards):
        return jnp.concatenate(train_step.sentence_vectors(nnx.merge(graphdef, p), batch, None, pooler, shards))

    def agreement(p, batch, shards):      # a scalar of every vector, for the gradients
        z = vectors(p, batch, shards)
        return jnp.sum(z[:12] * z[12:])

    np.testing.assert_allclose(np.asarray(vectors(params, packed, 2)), np.asarray(vectors(params, padded, 1)),
                               rtol=1e-5, atol=1e-5)
    got, want = (jax.grad(agreement)(params, batch, shards) for batch, shards in ((packed, 2), (padded, 1)))
    scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want))     # fp32 rounding of the largest gradient
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6 * scale)


def test_the_ce_gradient_layout_is_the_configs_and_every_layout_gives_one_step():
    """``objective.clm_logits_grad`` reaches the step's CE (an unknown name fails when the step is traced), and
    each layout of ``objectives.CHUNK_GRADS`` gives the same loss and gradient norm."""
    cfg = models.ModelConfig.from_hf(TINY_HF_CONFIGS["llama3"], dropout=0.0)
    graphdef, params = nnx.split(models.init_model(cfg, seed=0, std=0.2), nnx.Param)
    batch = step_batch(reference_batch(cfg.vocab_size))
    tx, schedule = train_step.make_optimizer(config_defaults.train_config())
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0), "rng": jax.random.PRNGKey(1)}
    metrics = {}
    for layout in ("autodiff", "by_hand", "vocab_major", "no such layout"):
        ocfg = config_defaults.objective_config()
        ocfg.update(clm_chunk_size=5, clm_logits_grad=layout)
        step = jax.jit(train_step.make_train_step(graphdef, tx, schedule, ocfg, 1))
        if layout == "no such layout":
            with pytest.raises(ValueError, match="logits_grad 'no such layout'"):
                step(state, batch)
        else:
            metrics[layout] = jax.device_get(step(state, batch)[1])
    for layout in ("by_hand", "vocab_major"):
        for key in ("loss", "clm_loss", "grad_norm"):
            assert float(metrics[layout][key]) == pytest.approx(float(metrics["autodiff"][key]), rel=1e-5), key


def test_the_shard_major_layout_splits_into_the_steps_contiguous_micro_batches():
    """Whatever the number of data shards, micro-batch m is the step's m-th contiguous block of records."""
    records = np.arange(48)
    for shards in (1, 2, 4, 8):
        laid_out = {"x": jnp.asarray(records[pipeline.micro_batch_layout(48, 3, shards)])}
        micro = np.asarray(train_step.split_micro(laid_out, 3, shards)["x"])
        np.testing.assert_array_equal(micro, records.reshape(3, 16))


def _step_temp_bytes(num_micro: int) -> int:
    """Temporary memory per device of the compiled step on the 8-device data-parallel mesh."""
    cfg = models.ModelConfig.from_hf(TINY_HF_CONFIGS["llama3"])
    mesh = sharding.make_mesh(8, 1, 1)
    graphdef, params = nnx.split(models.init_model(cfg, seed=0, mesh=mesh), nnx.Param)
    tcfg, ocfg = config_defaults.train_config(), config_defaults.objective_config()
    ocfg.clm_chunk_size = 64
    tx, schedule = train_step.make_optimizer(tcfg)
    state = train.init_train_state(params, tx, mesh, 0)
    rows, length, sentences = 32, 64, 32
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding) for name, shape, dtype in (
        ("sent0_ids", (sentences, 16), jnp.int32), ("sent0_mask", (sentences, 16), jnp.int32),
        ("sent1_ids", (sentences, 16), jnp.int32), ("sent1_mask", (sentences, 16), jnp.int32),
        ("clm_ids", (rows, length), jnp.int32), ("clm_positions", (rows, length), jnp.int32),
        ("clm_segment_ids", (rows, length), jnp.int32), ("clm_targets", (rows, length), jnp.int32),
        ("clm_weights", (rows, length), jnp.float32))}
    step = train_step.make_train_step(graphdef, tx, schedule, ocfg, num_micro, batch_shards=8)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    compiled = jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                       out_shardings=(state_shardings, None), donate_argnums=0).lower(state, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_accumulation_on_a_data_parallel_mesh_shrinks_each_devices_activations():
    """4 micro-batches on 8 data shards: every device runs a quarter of its rows at a time (the contiguous split
    left each micro-batch on 2 devices, gathered, and the temporaries as large as without accumulation)."""
    assert _step_temp_bytes(4) < 0.6 * _step_temp_bytes(1)


def test_schedules_give_the_learning_rates_the_reference_logged():
    """AFP_SPEC §1.4 [LOG]: cosine, peak 5e-5, 150 warmup steps of 5000: 4.936e-5 at step 500; DeepSpeed's
    WarmupDecayLR (the multi-GPU script), peak 1e-5: 9.2804e-6 at step 500 and 8.2495e-6 at step 1000."""
    tcfg = config_defaults.train_config()
    tcfg.update(lr=5e-5, warmup_steps=150, steps=5000, schedule="cosine")
    cosine = train_step.learning_rate_schedule(tcfg)
    assert float(cosine(0)) == 0.0 and float(cosine(500)) == pytest.approx(4.936e-5, abs=5e-9)
    tcfg.update(lr=1e-5, schedule="deepspeed")
    deepspeed = train_step.learning_rate_schedule(tcfg)
    assert float(deepspeed(500)) == pytest.approx(9.2804e-6, abs=5e-11)
    assert float(deepspeed(1000)) == pytest.approx(8.2495e-6, abs=5e-11)
    assert float(deepspeed(0)) == float(deepspeed(1)) == 0.0                  # DeepSpeed's iterations -1 and 0
    assert float(deepspeed(76)) == pytest.approx(1e-5 * np.log(76) / np.log(150), rel=1e-6)   # log warmup
    assert float(deepspeed(151)) == pytest.approx(1e-5, rel=1e-6) and float(deepspeed(5001)) == 0.0


def test_weight_decay_follows_the_reference_grouping():
    """HF Trainer's grouping (the reference's): every weight decays but norms and biases; embeddings included."""
    cfg = models.ModelConfig.from_hf(TINY_HF_CONFIGS["bloom"], dropout=0.0)
    _, params = nnx.split(models.init_model(cfg, seed=0), nnx.Param)
    mask = jax.tree_util.tree_leaves_with_path(train_step.decay_mask(params))
    decayed = {".".join(str(p.key) for p in path[:2]) for path, wants in mask if wants}
    assert decayed == {"top.embed"} | {f"blocks.{name}" for name in ("q", "k", "v", "o", "up", "down")}


def test_the_step_masks_pairs_of_one_group_unless_told_not_to():
    """``sent_group`` from the pipeline reaches the InfoNCE: pairs 0 and 2 in one group lower the loss (one
    negative fewer for each), and ``mask_shared_sentences=False`` (the reference) ignores the groups."""
    cfg = models.ModelConfig.from_hf(TINY_HF_CONFIGS["llama3"], dropout=0.0)
    model = models.init_model(cfg, seed=0, std=0.2)
    batch = step_batch(reference_batch(cfg.vocab_size))
    ocfg = config_defaults.objective_config()

    def cl_loss(groups, mask):
        ocfg.mask_shared_sentences = mask
        grouped = {**batch, "sent_group": jnp.asarray(groups, jnp.int32)}
        return float(train_step.afp_losses(model, grouped, jax.random.PRNGKey(0), ocfg)[0])

    apart = cl_loss([0, 1, 2, 3], True)
    assert cl_loss([0, 1, 0, 3], True) < apart
    assert cl_loss([0, 1, 0, 3], False) == apart


def test_a_bf16_models_loss_gradient_on_cpu_is_the_fp32_ones_to_rounding():
    """bf16 compute on CPU (every product through ``layers.product_fp32_out``, whose backward multiplies copies of
    the transposed operands; compiled under XLA's defaults, as the trainer compiles a bf16 step) gives the fp32
    model's AFP loss and its gradient for the fp32 master weights to bf16 rounding, leaf by leaf."""
    fp32 = models.ModelConfig.from_hf(TINY_HF_CONFIGS["llama3"], dropout=0.0, dtype="float32")
    graphdef, params = nnx.split(models.init_model(fp32, seed=0, std=0.2), nnx.Param)
    bf16_graphdef, _ = nnx.split(models.init_model(fp32.replace(dtype="bfloat16"), seed=0, std=0.2), nnx.Param)
    batch = step_batch(reference_batch(fp32.vocab_size))
    ocfg = config_defaults.objective_config()
    ocfg.update(clm_chunk_size=5)

    def loss_and_grads(graph):
        def loss(p):
            cl, clm_sum, _ = train_step.afp_losses(nnx.merge(graph, p), batch, jax.random.PRNGKey(0), ocfg)
            return cl + ocfg.clm_weight * clm_sum / batch["clm_weights"].sum()
        return jax.jit(jax.value_and_grad(loss))(params)

    (want, want_grads), (got, got_grads) = loss_and_grads(graphdef), loss_and_grads(bf16_graphdef)
    assert float(got) == pytest.approx(float(want), rel=1e-2) and float(got) != float(want)
    for (path, ours), reference in zip(jax.tree_util.tree_leaves_with_path(got_grads),
                                       jax.tree.leaves(want_grads), strict=True):
        assert ours.dtype == jnp.float32
        ours, reference = np.asarray(ours), np.asarray(reference)
        error = np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), 1e-12)
        assert error < 5e-2, (jax.tree_util.keystr(path), error)
