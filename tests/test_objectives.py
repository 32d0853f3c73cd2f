"""Objectives against independent re-computations: PyTorch for InfoNCE (the reference's own ops), NumPy loops for
pooling, a naive full-logits cross-entropy for the chunked CLM loss, and XLA's memory analysis for the chunking."""
from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from xalign_jax import objectives
from xalign_jax.data import packing


def _masks(lengths: list[int], width: int, side: str) -> np.ndarray:
    mask = np.zeros((len(lengths), width), np.int32)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, width - n:] = 1
    return mask


def _numpy_pool(hidden: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    out = []
    for h, m in zip(hidden, mask):
        tokens = h[m.astype(bool)]
        out.append({"last": tokens[-1], "avg": tokens.mean(0), "max": tokens.max(0)}[method])
    return np.stack(out)


@pytest.mark.parametrize("spec, expected", [("last-1", ("last", 1)), ("avg-0", ("avg", 0)), ("max-12", ("max", 12))])
def test_parse_pooler(spec, expected):
    assert objectives.parse_pooler(spec) == expected


@pytest.mark.parametrize("spec", ["last", "cls-1", "avg-", "avg--1", "avg-x", "avg_top2-1"])
def test_parse_pooler_rejects(spec):
    with pytest.raises(ValueError, match=f"pooler '{spec}'"):
        objectives.parse_pooler(spec)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("method", objectives.POOL_METHODS)
def test_pool_matches_numpy_loop(method, side):
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(5, 9, 6)).astype(np.float32) - 3.0   # all negative-ish: catches max-with-zero masking
    mask = _masks([9, 1, 4, 7, 2], 9, side)
    hidden[mask == 0] = 100.0                                      # pads must never leak into any pooling
    got = objectives.pool(jnp.asarray(hidden), jnp.asarray(mask), method)
    np.testing.assert_allclose(np.asarray(got), _numpy_pool(hidden, mask, method), rtol=1e-6, atol=1e-6)


def test_pool_of_an_empty_row_is_zero_not_nan():
    hidden = jnp.ones((2, 3, 4))
    mask = jnp.array([[1, 1, 0], [0, 0, 0]])
    for method in ("last", "avg", "max"):
        pooled = np.asarray(objectives.pool(hidden, mask, method))
        assert np.all(pooled[1] == 0.0) and np.all(pooled[0] == 1.0), method


def test_a_zero_sentence_vector_gives_a_finite_contrastive_gradient():
    """An empty row pools to zero (above); its cosine with anything is 0 and its gradient must stay finite."""
    z0 = jnp.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    z1 = jnp.array([[0.3, 0.1, -1.0], [1.0, -1.5, 0.5]])
    grads = jax.grad(lambda a, b: objectives.contrastive_loss(a, b, symmetric=True)[0], argnums=(0, 1))(z0, z1)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    assert np.abs(np.asarray(grads[1])).max() > 0


def _torch_reference_loss(z0: np.ndarray, z1: np.ndarray, temperature: float, symmetric: bool):
    """The reference's computation (AFP_SPEC §1.2 steps 3-5) in float64 torch: loss, grad z0, grad z1."""
    t0 = torch.tensor(z0, dtype=torch.float64, requires_grad=True)
    t1 = torch.tensor(z1, dtype=torch.float64, requires_grad=True)
    sim = torch.nn.CosineSimilarity(dim=-1)(t0.unsqueeze(1), t1.unsqueeze(0)) / temperature
    labels = torch.arange(sim.shape[0])
    loss = torch.nn.CrossEntropyLoss()(sim, labels)
    if symmetric:
        loss = (loss + torch.nn.CrossEntropyLoss()(sim.T, labels)) / 2
    loss.backward()
    return loss.item(), t0.grad.numpy(), t1.grad.numpy()


@pytest.mark.parametrize("symmetric", [False, True])
def test_contrastive_loss_and_grads_match_torch(symmetric):
    rng = np.random.default_rng(1)
    z0 = rng.normal(size=(8, 16)).astype(np.float32)
    z1 = (z0 + 0.7 * rng.normal(size=(8, 16))).astype(np.float32)
    fn = lambda a, b: objectives.contrastive_loss(a, b, temperature=0.05, symmetric=symmetric)[0]
    loss, (g0, g1) = jax.value_and_grad(fn, argnums=(0, 1))(jnp.asarray(z0), jnp.asarray(z1))
    ref_loss, ref_g0, ref_g1 = _torch_reference_loss(z0, z1, 0.05, symmetric)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g0), ref_g0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g1), ref_g1, rtol=1e-5, atol=1e-5)


def test_contrastive_metrics_are_exact():
    z0 = jnp.eye(4)
    z1 = jnp.eye(4)[jnp.array([0, 1, 3, 2])]   # rows 2 and 3 swapped: 2 of 4 anchors find their partner
    _, metrics = objectives.contrastive_loss(z0, z1, symmetric=False)
    assert float(metrics["accuracy"]) == 0.5
    assert float(metrics["positive_cosine"]) == pytest.approx(0.5)
    z1 = jnp.array([[1.0, 0, 0, 0], [1.0, 0.1, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    # z0 -> z1: every anchor finds its partner (z0[0] = z1[0] exactly); z1 -> z0: z1[1] is closer to z0[0] than
    # to z0[1], so 3 of 4. The symmetric accuracy is the mean of both directions.
    _, metrics = objectives.contrastive_loss(z0, z1, symmetric=True)
    assert float(metrics["accuracy"]) == pytest.approx((1.0 + 0.75) / 2)


@pytest.mark.parametrize("symmetric", [False, True])
def test_pairs_sharing_a_sentence_are_not_each_others_negatives(symmetric):
    """With groups, the loss is each anchor's cross-entropy over its positive and the pairs outside its group, a
    plain re-computation in numpy; gradients stay finite where the masked logits are -inf."""
    rng = np.random.default_rng(4)
    z0, z1 = (rng.normal(size=(6, 8)).astype(np.float32) for _ in range(2))
    groups = np.array([0, 1, 0, 3, 1, 0], np.int32)          # pairs 0, 2, 5 share a sentence; so do 1 and 4

    def plain(a, b):
        unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
        logits = unit(a) @ unit(b).T / 0.05
        losses = []
        for i in range(len(a)):
            kept = [j for j in range(len(a)) if j == i or groups[j] != groups[i]]
            row = logits[i, kept]
            losses.append(np.log(np.exp(row - row.max()).sum()) + row.max() - logits[i, i])
        return float(np.mean(losses))

    want = (plain(z0, z1) + plain(z1, z0)) / 2 if symmetric else plain(z0, z1)
    fn = lambda a, b: objectives.contrastive_loss(a, b, temperature=0.05, symmetric=symmetric,
                                                  groups=jnp.asarray(groups))[0]
    loss, grads = jax.value_and_grad(fn, argnums=(0, 1))(jnp.asarray(z0), jnp.asarray(z1))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(loss) < float(objectives.contrastive_loss(z0, z1, symmetric=symmetric)[0])
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_contrastive_loss_on_sharded_global_batch_sees_all_negatives_with_gradients():
    """Sharded over 8 devices inside jit, loss and gradients equal the single-array computation."""
    rng = np.random.default_rng(2)
    z0, z1 = (jnp.asarray(rng.normal(size=(16, 8)), jnp.float32) for _ in range(2))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    fn = jax.value_and_grad(lambda a, b: objectives.contrastive_loss(a, b, symmetric=True)[0], argnums=(0, 1))
    expected_loss, expected_grads = fn(z0, z1)
    loss, grads = jax.jit(fn)(jax.device_put(z0, sharding), jax.device_put(z1, sharding))
    np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-6)
    for got, want in zip(grads, expected_grads):
        assert got.sharding.is_equivalent_to(sharding, 2)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


def _clm_problem(rows=3, length=10, dim=8, vocab=37, seed=3):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(rows, length, dim)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(dim, vocab)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, size=(rows, length)), jnp.int32)
    weights = jnp.asarray(rng.integers(0, 2, size=(rows, length)), jnp.float32)
    return hidden, head, targets, weights


def _matmul(head, hidden, vocab_major=False):
    return (hidden @ head).T if vocab_major else hidden @ head


def _naive_clm(hidden, head, targets, weights):
    logp = jax.nn.log_softmax(hidden @ head, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * weights), jnp.sum(weights)


@pytest.mark.parametrize("logits_grad", sorted(objectives.CHUNK_GRADS))
@pytest.mark.parametrize("chunk_size", [1, 3, 5, 6, 10, 64])
def test_clm_loss_matches_full_logits_cross_entropy(chunk_size, logits_grad):
    hidden, head, targets, weights = _clm_problem()

    def chunked(h, w):
        return objectives.clm_loss(h, targets, weights, w, _matmul, chunk_size=chunk_size, logits_grad=logits_grad)

    got_sum, got_count = chunked(hidden, head)
    got_grads = jax.grad(lambda h, w: chunked(h, w)[0], argnums=(0, 1))(hidden, head)
    want_sum, want_count = _naive_clm(hidden, head, targets, weights)
    want_grads = jax.grad(lambda h, w: _naive_clm(h, w, targets, weights)[0], argnums=(0, 1))(hidden, head)
    assert float(got_count) == float(want_count) == float(weights.sum())
    np.testing.assert_allclose(float(got_sum), float(want_sum), rtol=1e-6)
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("logits_grad", sorted(objectives.CHUNK_GRADS))
def test_clm_loss_scale_scales_the_sum_and_its_gradients_not_the_count(logits_grad):
    """``scale`` (the train step's clm_weight / tokens) comes out of the fused CE already in the gradients: the
    same as scaling the plain sum, and no gradient flows into the scale itself."""
    hidden, head, targets, weights = _clm_problem()
    scale = jnp.float32(1.5 / 37.0)

    def scaled(h, w, s):
        return objectives.clm_loss(h, targets, weights, w, _matmul, chunk_size=5, logits_grad=logits_grad,
                                   scale=s)

    got_sum, got_count = scaled(hidden, head, scale)
    got_grads = jax.grad(lambda h, w, s: scaled(h, w, s)[0], argnums=(0, 1, 2))(hidden, head, scale)
    want_sum, want_count = _naive_clm(hidden, head, targets, weights)
    want_grads = jax.grad(lambda h, w: scale * _naive_clm(h, w, targets, weights)[0], argnums=(0, 1))(hidden, head)
    assert float(got_count) == float(want_count)
    np.testing.assert_allclose(float(got_sum), float(scale * want_sum), rtol=1e-6)
    for got, want in zip(got_grads[:2], want_grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)
    assert float(got_grads[2]) == 0.0


@pytest.mark.parametrize("group", [1, 2, 4])
def test_supervised_gather_gives_the_full_loss_and_gradients(group):
    """Per group of ``group`` consecutive rows, the pipeline's index of the supervised positions, with slots to
    spare (every position) or just enough: same loss and gradients as every position. An index missing the last
    position of each group: the gather reports, per group, the position it could not score, and the loss loses
    exactly those; an index with too few slots is refused where it is built."""
    hidden, head, targets, weights = _clm_problem(rows=4)
    host_weights = np.asarray(weights)
    most = int(host_weights.reshape(4 // group, -1).sum(axis=1).max())

    def loss(h, w, index):
        return objectives.clm_loss(h, targets, weights, w, _matmul, chunk_size=3, head_index=index,
                                   rows_per_group=group)

    want, want_count = loss(hidden, head, None)
    want_grads = jax.grad(lambda h, w: loss(h, w, None)[0], argnums=(0, 1))(hidden, head)
    for slots in (group * hidden.shape[1], most):
        index = jnp.asarray(packing.head_index(host_weights, group, slots))
        got, got_count = loss(hidden, head, index)
        assert float(got_count) == float(want_count)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
        got_grads = jax.grad(lambda h, w: loss(h, w, index)[0], argnums=(0, 1))(hidden, head)
        for g, w in zip(got_grads, want_grads):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
        assert int(objectives.supervised_overflow(weights, index, group)) == 0
    short = packing.head_index(host_weights, group, most)
    listed = (short >= 0).sum(axis=1)
    short[np.arange(len(short)), listed - 1] = -1                  # every group here has supervised positions
    assert listed.min() > 0 and int(objectives.supervised_overflow(weights, jnp.asarray(short), group)) == len(short)
    grouped = [objectives.group_rows(x, group) for x in (hidden, targets, weights)]
    kept = objectives.gather_supervised(*grouped, jnp.asarray(short))[2]
    assert int((np.asarray(kept) > 0).sum()) == int(host_weights.sum()) - len(short)
    with pytest.raises(ValueError, match=f"holds {most} supervised positions, more than its {most - 1} LM-head"):
        packing.head_index(host_weights, group, most - 1)


@pytest.mark.parametrize("logits_grad", sorted(objectives.CHUNK_GRADS))
def test_clm_loss_ignores_weight_zero_positions_even_with_invalid_targets(logits_grad):
    hidden, head, targets, weights = _clm_problem()
    poisoned = jnp.where(weights > 0, targets, -100)     # ids outside the vocabulary where nothing is supervised

    def loss(h, w, labels, grad_mode=logits_grad):
        return objectives.clm_loss(h, labels, weights, w, _matmul, chunk_size=4, logits_grad=grad_mode)[0]

    got, got_grads = jax.value_and_grad(loss, argnums=(0, 1))(hidden, head, poisoned)
    want, want_grads = jax.value_and_grad(loss, argnums=(0, 1))(hidden, head, targets)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    for ours, reference in zip(got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="logits_grad 'exact'"):
        jax.grad(loss)(hidden, head, targets, "exact")


def test_clm_loss_in_bf16_compute_keeps_fp32_softmax():
    hidden, head, targets, weights = _clm_problem(vocab=1000)
    got, _ = objectives.clm_loss(hidden.astype(jnp.bfloat16), targets, weights, head.astype(jnp.bfloat16),
                                 _matmul, chunk_size=4)
    want, _ = _naive_clm(hidden, head, targets, weights)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), float(want), rtol=2e-2)   # only bf16 rounding of the logits


def _largest_intermediate(jaxpr) -> int:
    """Element count of the largest value any equation produces, sub-jaxprs (scan bodies, remat) included."""
    largest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            largest = max(largest, int(np.prod(getattr(var.aval, "shape", ()))))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            largest = max(largest, _largest_intermediate(sub))
    return largest


@pytest.mark.parametrize("logits_grad", sorted(objectives.CHUNK_GRADS))
def test_chunked_clm_never_materialises_full_logits(logits_grad):
    rows, length, dim, vocab, chunk = 4, 256, 16, 32768, 16
    hidden = jnp.zeros((rows, length, dim), jnp.float32)
    head = jnp.zeros((dim, vocab), jnp.float32)
    targets = jnp.zeros((rows, length), jnp.int32)
    weights = jnp.ones((rows, length), jnp.float32)
    full_logits_bytes = rows * length * vocab * 4
    chunk_logits_bytes = rows * chunk * vocab * 4      # 1/16 of the full logits

    def loss_and_grads(loss_fn):
        return jax.jit(jax.grad(lambda h, w: loss_fn(h, w)[0], argnums=(0, 1)))

    chunked = loss_and_grads(lambda h, w: objectives.clm_loss(h, targets, weights, w, _matmul, chunk_size=chunk,
                                                              logits_grad=logits_grad))
    naive = loss_and_grads(lambda h, w: _naive_clm(h, w, targets, weights))
    largest = _largest_intermediate(jax.make_jaxpr(chunked)(hidden, head).jaxpr)
    assert largest <= rows * chunk * vocab
    chunked_temp = chunked.lower(hidden, head).compile().memory_analysis().temp_size_in_bytes
    naive_temp = naive.lower(hidden, head).compile().memory_analysis().temp_size_in_bytes
    assert naive_temp >= full_logits_bytes            # the check can fail: the naive version does hold them
    # one chunk at a time (its logits, their gradient and what the CPU backend does not fuse), in the forward pass
    # that also takes the gradient: a quarter of the full logits here
    assert chunked_temp <= 4 * chunk_logits_bytes, (chunked_temp, chunk_logits_bytes, full_logits_bytes)
