"""Logits and every hidden state of our models against transformers PyTorch, fp32, left and right padding; the AFP
loss and its gradients against the reference recipe's autograd."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from benchmarks import torch_reference
from tests import hlo
from tests.tiny_models import TINY_HF_CONFIGS, make_tiny_hf_model, reference_batch, step_batch
from xalign_jax import bench, config_defaults, models, objectives
from xalign_jax.models import layers
from xalign_jax.models.decoder import blocked_target_logprobs, lm_head_logits, vocabulary_blocks
from xalign_jax.models.hf_io import export_tensors
from xalign_jax.train_step import afp_losses

TOL = 1e-4
LENGTHS = [9, 5, 1, 7]


def padded_batch(vocab: int, side: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    width = max(LENGTHS)
    ids = np.zeros((len(LENGTHS), width), np.int32)
    mask = np.zeros_like(ids)
    for row, length in enumerate(LENGTHS):
        span = slice(0, length) if side == "right" else slice(width - length, width)
        ids[row, span] = rng.integers(4, vocab, length)
        mask[row, span] = 1
    return ids, mask


def torch_forward(model, ids, mask, family):
    kwargs = dict(attention_mask=torch.tensor(mask), output_hidden_states=True)
    if family != "bloom":   # HF builds arange positions; give it the mask-derived ones we use
        kwargs["position_ids"] = torch.tensor(np.asarray(layers.positions_from_mask(jnp.asarray(mask))))
    with torch.no_grad():
        out = model(torch.tensor(ids, dtype=torch.long), **kwargs)
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


@pytest.fixture(scope="module", params=sorted(TINY_HF_CONFIGS))
def pair(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    reference = make_tiny_hf_model(request.param, directory)
    return request.param, reference, models.from_pretrained(directory, dtype="float32")


@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_and_hidden_states_match_transformers(pair, side):
    name, reference, model = pair
    family = model.config.family
    ids, mask = padded_batch(model.config.vocab_size, side)
    ref_logits, ref_states = torch_forward(reference, ids, mask, family)
    out = model(jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True)
    real = mask.astype(bool)
    assert len(out.hidden_states) == len(ref_states) == model.config.num_layers + 1
    np.testing.assert_allclose(np.asarray(out.logits)[real], ref_logits[real], atol=TOL, rtol=0)
    for index, (ours, theirs) in enumerate(zip(out.hidden_states, ref_states)):
        np.testing.assert_allclose(np.asarray(ours)[real], theirs[real], atol=TOL, rtol=0,
                                   err_msg=f"{name} hidden state {index}")


def test_stopping_after_block_k_equals_hidden_state_k(pair):
    _, _, model = pair
    ids, mask = padded_batch(model.config.vocab_size, "left")
    full = model(jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True)
    for k in range(model.config.num_layers):
        partial = model(jnp.asarray(ids), jnp.asarray(mask), num_layers=k)
        assert partial.logits is None
        np.testing.assert_array_equal(np.asarray(partial.last_hidden_state), np.asarray(full.hidden_states[k]))


def test_packed_segments_equal_separate_sequences(pair):
    _, _, model = pair
    rng = np.random.default_rng(1)
    first, second = rng.integers(4, model.config.vocab_size, 6), rng.integers(4, model.config.vocab_size, 5)
    packed = np.concatenate([first, second])[None]
    segments = np.array([[1] * 6 + [2] * 5])
    positions = np.array([list(range(6)) + list(range(5))])
    out = model(jnp.asarray(packed), positions=jnp.asarray(positions), segment_ids=jnp.asarray(segments))
    alone = [model(jnp.asarray(seq[None])).logits[0] for seq in (first, second)]
    np.testing.assert_allclose(np.asarray(out.logits[0]), np.concatenate(alone), atol=1e-5, rtol=0)


def test_bf16_compute_stays_close_to_fp32(pair):
    name, _, model = pair
    ids, mask = padded_batch(model.config.vocab_size, "right")
    fp32 = model(jnp.asarray(ids), jnp.asarray(mask)).logits
    model.config = model.config.replace(dtype="bfloat16")
    try:
        bf16 = model(jnp.asarray(ids), jnp.asarray(mask)).logits
    finally:
        model.config = model.config.replace(dtype="float32")
    real = mask.astype(bool)
    assert bf16.dtype == jnp.float32
    assert np.abs(np.asarray(bf16)[real] - np.asarray(fp32)[real]).max() < 0.1, name


@pytest.mark.parametrize("unroll_layers", [False, True], ids=["scanned", "unrolled"])
def test_afp_loss_and_gradients_match_the_torch_reference(pair, unroll_layers):
    """The whole dual objective (contrastive pass stopped after block 1, chunked CE with in-forward gradients,
    tied or untied head) against the reference recipe's autograd on the same weights and batch, every parameter;
    with the blocks in a scan and unrolled."""
    name, reference, model = pair
    no_dropout = model.config.replace(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                      unroll_layers=unroll_layers)
    host = reference_batch(model.config.vocab_size)
    length = host["clm_ids"].shape[1]
    batch = step_batch(host)
    ocfg = config_defaults.objective_config()
    ocfg.update(pooler="last-1", symmetric=False, clm_chunk_size=5, mask_shared_sentences=False)  # the reference recipe
    graphdef, params = nnx.split(model)

    def loss_fn(state):   # the reference model is in eval mode: no dropout on our side either
        ours = nnx.merge(graphdef, state)
        ours.config = no_dropout
        cl, clm_sum, aux = afp_losses(ours, batch, jax.random.PRNGKey(0), ocfg)
        return cl + 1.5 * clm_sum / aux["clm_tokens"]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    reference.zero_grad()
    collated = bench.reference_collation(host, block_size=length)      # blocks = our rows: the same attention
    cl_ref, clm_ref = torch_reference.reference_losses(reference, torch_reference.to_torch_batch(collated), layer=1,
                                                       temperature=0.05)
    loss_ref = cl_ref + 1.5 * clm_ref
    loss_ref.backward()
    assert float(loss) == pytest.approx(loss_ref.item(), rel=1e-5)
    theirs = {key: param.grad.numpy() for key, param in reference.named_parameters()}
    ours = {key: thunk() for key, (_, thunk) in export_tensors(nnx.merge(graphdef, grads)).items()}
    assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))
    for key, grad in theirs.items():
        np.testing.assert_allclose(ours[key], grad, atol=2e-5, rtol=1e-3, err_msg=f"{name} {key}")


@pytest.mark.parametrize("logits_grad", sorted(objectives.CHUNK_GRADS))
def test_bf16_logits_round_the_head_output_and_keep_the_loss(logits_grad):
    """``logits_dtype='bfloat16'``: the head's product is rounded to bf16 (the reference's autocast logits); the
    chunked CE then gives the fp32-logit loss and gradients to bf16 rounding, whichever way the logits' gradient is
    formed (with the vocabulary-major layout XLA folded the bf16 output into an fp32 product until the CE enforced
    the rounding). An unknown dtype is refused."""
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(2, 16, 48)), jnp.float32)
    head = {"embed": jnp.asarray(0.3 * rng.normal(size=(256, 48)), jnp.float32)}
    targets = jnp.asarray(rng.integers(0, 256, (2, 16)), jnp.int32)
    weights = jnp.asarray(rng.integers(0, 2, (2, 16)), jnp.float32)
    results = {}
    for logits_dtype in ("float32", "bfloat16"):
        cfg = models.ModelConfig.from_hf(TINY_HF_CONFIGS["llama3"], dtype="bfloat16", logits_dtype=logits_dtype)
        logits_fn = functools.partial(lm_head_logits, cfg)
        assert logits_fn(head, hidden).dtype == jnp.dtype(logits_dtype)
        loss = lambda p, h: objectives.clm_loss(h, targets, weights, p, logits_fn, chunk_size=5,   # noqa: E731
                                                logits_grad=logits_grad)[0]
        results[logits_dtype] = jax.value_and_grad(loss, argnums=(0, 1))(head, hidden)
    (want, want_grads), (got, got_grads) = results["float32"], results["bfloat16"]
    assert float(got) == pytest.approx(float(want), rel=1e-3) and float(got) != float(want)
    for ours, reference in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        assert ours.dtype == reference.dtype
        error = np.linalg.norm(np.asarray(ours) - np.asarray(reference)) / np.linalg.norm(np.asarray(reference))
        assert 0 < error < 1e-2, error
    wrong = models.ModelConfig.from_hf(TINY_HF_CONFIGS["llama3"], logits_dtype="float16")
    with pytest.raises(ValueError, match="logits_dtype 'float16'"):
        lm_head_logits(wrong, head, hidden)


@pytest.mark.parametrize("logits_dtype", ["float32", "bfloat16"])
def test_cpu_bf16_head_multiplies_into_fp32_whatever_the_logits_dtype(logits_dtype):
    """bf16 compute on a CPU: the head's products are bf16 x bf16 dots with fp32 results for both logits dtypes,
    and bf16 logits are that product rounded afterwards. Checked for the train step's vocabulary-major head with
    its two backward products and for the scorer's token-major one. Asked for a bf16 result, XLA:CPU made them
    fp32 x fp32 products of upcast operands: the bloom bench step took 1.20-1.24 s instead of 0.75, a scorer block
    9x as long (BENCHMARKS.md)."""
    cfg = models.ModelConfig.from_hf(TINY_HF_CONFIGS["llama3"], logits_dtype=logits_dtype, dtype="bfloat16")
    head = models.init_model(cfg, seed=0, std=0.5).head()
    hidden = jnp.ones((7, cfg.hidden_size), jnp.float32)
    cotangent = jnp.ones((cfg.vocab_size, 7), logits_dtype)

    def forward_and_backward(head, hidden, cotangent):
        out, pullback = jax.vjp(functools.partial(lm_head_logits, cfg, vocab_major=True), head, hidden)
        return out, pullback(cotangent)

    vocab_major = jax.jit(forward_and_backward).lower(head, hidden, cotangent).compile().as_text()
    token_major = jax.jit(functools.partial(lm_head_logits, cfg)).lower(head, hidden).compile().as_text()
    for program, dots in ((vocab_major, 3), (token_major, 1)):
        types = set(hlo.dot_types(program))
        assert program.count(" dot(") == dots and types == {("f32", "bf16", "bf16")}, types
    logits = (forward_and_backward(head, hidden, cotangent)[0], lm_head_logits(cfg, head, hidden))
    assert logits[0].dtype == logits[1].dtype == jnp.dtype(logits_dtype)


@pytest.mark.parametrize("name, overrides", [("llama", {}), ("llama3", {}),
                                             ("gemma3", {"final_logit_softcapping": 3.0})])
@pytest.mark.parametrize("logits_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vocab_major_logits_are_the_transposed_logits(name, overrides, logits_dtype, dtype):
    """``vocab_major=True`` (the CPU step's CE layout) gives [V, N], the transpose of the usual logits, and the
    transposed gradients: an untied head, a tied one, and a soft-capped one, in both logits dtypes and both compute
    dtypes (bf16 compute with fp32 logits takes ``layers.product_fp32_out`` on CPU)."""
    cfg = models.ModelConfig.from_hf(dict(TINY_HF_CONFIGS[name], **overrides), logits_dtype=logits_dtype,
                                     dtype=dtype)
    assert cfg.tie_word_embeddings == (name != "llama") and bool(cfg.final_logit_softcap) == bool(overrides)
    head = models.init_model(cfg, seed=0, std=0.5).head()
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(7, cfg.hidden_size)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(7, cfg.vocab_size)), jnp.float32)
    want, want_pullback = jax.vjp(functools.partial(lm_head_logits, cfg), head, hidden)
    got, got_pullback = jax.vjp(functools.partial(lm_head_logits, cfg, vocab_major=True), head, hidden)
    assert got.shape == (cfg.vocab_size, 7) and got.dtype == want.dtype == jnp.dtype(logits_dtype)
    tolerance = 1e-5 if logits_dtype == "float32" else 1e-2
    np.testing.assert_allclose(np.asarray(got.T, np.float32), np.asarray(want, np.float32), rtol=tolerance,
                               atol=tolerance)
    gradients = zip(jax.tree.leaves(got_pullback(cotangent.T.astype(got.dtype))),
                    jax.tree.leaves(want_pullback(cotangent.astype(want.dtype))), strict=True)
    for ours, reference in gradients:
        ours, reference = np.asarray(ours, np.float32), np.asarray(reference, np.float32)
        error = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
        assert error < (1e-6 if logits_dtype == "float32" else 1e-2), error


@pytest.mark.parametrize("name, overrides", [("llama", {}), ("llama3", {}),
                                             ("gemma3", {"final_logit_softcapping": 3.0})])
@pytest.mark.parametrize("logits_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("vocab, vocab_block, blocks", [(251, 251, (1, 251)), (251, 64, (4, 63)), (256, 48, (8, 32))])
@pytest.mark.parametrize("token_major", [False, True], ids=["vocab_major", "token_major"])
def test_blocked_target_logprobs_are_the_log_softmax(name, overrides, logits_dtype, vocab, vocab_block, blocks,
                                                     token_major):
    """The scorer's CPU vocabulary call, block by block with a running log-sum-exp, gives log_softmax(logits)[target]
    (fp64 on the host): an untied, a tied and a soft-capped head, both logits dtypes, both block layouts (a scan of
    [block, N] products, unrolled [N, block] ones); one block, blocks that cannot tile the vocabulary (251 is
    prime: the last of 4 blocks of 63 overlaps the third), and blocks that tile it."""
    assert vocabulary_blocks(vocab, vocab_block) == blocks
    cfg = models.ModelConfig.from_hf(dict(TINY_HF_CONFIGS[name], vocab_size=vocab, **overrides),
                                     logits_dtype=logits_dtype)
    head = models.init_model(cfg, seed=0, std=0.5).head()
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(9, cfg.hidden_size)), jnp.float32)
    targets = jnp.asarray(np.r_[0, vocab - 1, 62, 63, 188, 189, rng.integers(0, vocab, 3)], jnp.int32)
    got = jax.jit(blocked_target_logprobs, static_argnums=(0, 4, 5))(cfg, head, hidden, targets, vocab_block,
                                                                      token_major)
    logits = np.asarray(lm_head_logits(cfg, head, hidden).astype(jnp.float32), np.float64)
    want = logits[np.arange(9), targets] - np.log(np.exp(logits).sum(-1))
    assert got.dtype == jnp.float32
    tolerance = 1e-5 if logits_dtype == "float32" else 2e-2    # jit may round bf16 logits at other points
    np.testing.assert_allclose(np.asarray(got), want, rtol=tolerance, atol=tolerance)


def test_cpu_bf16_scorer_rounds_bf16_logits():
    """bf16 compute with ``logits_dtype='bfloat16'``: the scorer's token-major vocabulary call does round the
    logits to bf16. Until the product was computed in fp32 and then rounded, XLA folded its bf16 result and the
    scorer's upcast into one fp32 product, and the bf16 setting gave the fp32 scores (to 2e-6 on Gemma-3's head)."""
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(9, TINY_HF_CONFIGS["llama3"]["hidden_size"])), jnp.float32)
    targets = jnp.asarray(rng.integers(0, TINY_HF_CONFIGS["llama3"]["vocab_size"], 9), jnp.int32)
    scores = {}
    for logits_dtype in ("float32", "bfloat16"):
        cfg = models.ModelConfig.from_hf(TINY_HF_CONFIGS["llama3"], logits_dtype=logits_dtype, dtype="bfloat16")
        head = models.init_model(cfg, seed=0, std=0.5).head()
        score = jax.jit(blocked_target_logprobs, static_argnums=(0, 4, 5))
        scores[logits_dtype] = np.asarray(score(cfg, head, hidden, targets, 64, True))
    difference = np.abs(scores["bfloat16"] - scores["float32"]).max()
    assert 1e-4 < difference < 5e-2, difference


def test_vocabulary_blocks_tile_real_vocabularies_exactly():
    assert [vocabulary_blocks(v, 16384) for v in (250880, 262144, 256008, 250002, 32000)] == [
        (16, 15680), (16, 16384), (24, 10667), (17, 14706), (2, 16000)]
    assert vocabulary_blocks(65537, 16384) == (5, 13108)    # prime: no tiling, the last block overlaps
    assert vocabulary_blocks(100, 16384) == (1, 100)


@pytest.mark.parametrize("slots", [6, 9])
def test_rows_continuing_a_cached_prefix_equal_whole_rows(pair, slots):
    """Prefix (6 tokens, in 6 or 9 slots) cached once, then rows of 1-5 own tokens, padded or packed as segments of
    one row: the same final hidden states as the whole rows, for every family (ALiBi key positions, sinusoidal
    offsets, Gemma's window of 4 < prefix)."""
    _assert_prefix_continuation_is_exact(pair[2], slots)


@pytest.mark.parametrize("cached", [False, True])
def test_a_prefix_tree_in_one_segment_equals_its_whole_rows(pair, cached):
    """A trunk and its three continuations as branches of one segment, after another segment (and after a cached
    prefix): every slot's state is its whole row's, also where Gemma's window of 4 reaches from the last branch back
    into the trunk, past the other branches' slots."""
    model, vocab = pair[2], pair[2].config.vocab_size
    rng = np.random.default_rng(3)
    prefix, trunk, other = (rng.integers(4, vocab, n) for n in (6, 5, 4))
    branches = [rng.integers(4, vocab, n) for n in (3, 1, 2)]
    head = prefix if cached else prefix[:0]
    whole_ids, whole_mask = _right_padded([np.concatenate([head, trunk, b]) for b in branches]
                                          + [np.concatenate([head, other])])
    whole = np.asarray(model(jnp.asarray(whole_ids), jnp.asarray(whole_mask)).last_hidden_state)
    cache = None
    if cached:
        first = model(jnp.asarray(prefix[None]), return_keys_values=True, compute_logits=False)
        cache = models.PrefixCache.from_row(first.keys_values, len(prefix))
    start, sizes = len(head), [len(b) for b in branches]
    tokens = np.concatenate([other, trunk, *branches])[None]
    segments = np.repeat([1, 2], [len(other), len(trunk) + sum(sizes)])[None]
    branch_ids = np.repeat([0, 0, 1, 2, 3], [len(other), len(trunk), *sizes])[None]
    positions = np.concatenate([np.arange(len(other)), np.arange(len(trunk)),
                                *(len(trunk) + np.arange(n) for n in sizes)])[None] + start
    out = model(jnp.asarray(tokens), positions=jnp.asarray(positions), segment_ids=jnp.asarray(segments),
                branch_ids=jnp.asarray(branch_ids), prefix=cache).last_hidden_state
    expected = np.concatenate([whole[3, start:start + len(other)], whole[0, start:start + len(trunk)],
                               *(whole[i, start + len(trunk):start + len(trunk) + n] for i, n in enumerate(sizes))])
    np.testing.assert_allclose(np.asarray(out)[0], expected, atol=1e-5, rtol=0)


def test_fused_attention_path_equals_xla_attention(pair):
    """``attention_impl='dot_product'`` (``jax.nn.dot_product_attention``, the call the cuDNN setting makes on a
    GPU) on the CPU: the same logits as the XLA attention, and the same prefix continuation."""
    _, _, model = pair
    ids, mask = padded_batch(model.config.vocab_size, "right")
    expected = model(jnp.asarray(ids), jnp.asarray(mask)).logits
    original = model.config
    model.config = original.replace(attention_impl="dot_product", attention_dropout=0.0)
    try:
        fused = model(jnp.asarray(ids), jnp.asarray(mask)).logits
        _assert_prefix_continuation_is_exact(model, 9)
    finally:
        model.config = original
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(fused)[real], np.asarray(expected)[real], atol=1e-5, rtol=0)


def _assert_prefix_continuation_is_exact(model, slots: int) -> None:
    rng = np.random.default_rng(2)
    vocab = model.config.vocab_size
    prefix = rng.integers(4, vocab, 6)
    suffixes = [rng.integers(4, vocab, n) for n in (5, 1, 3)]
    whole_ids, whole_mask = _right_padded([np.concatenate([prefix, s]) for s in suffixes])
    whole = model(jnp.asarray(whole_ids), jnp.asarray(whole_mask)).last_hidden_state
    prefix_ids, prefix_mask = _right_padded([prefix], width=slots)
    first = model(jnp.asarray(prefix_ids), jnp.asarray(prefix_mask), return_keys_values=True, compute_logits=False)
    cache = models.PrefixCache.from_row(first.keys_values, len(prefix))
    own_ids, own_mask = _right_padded(suffixes)
    continued = model(jnp.asarray(own_ids), jnp.asarray(own_mask), prefix=cache).last_hidden_state
    np.testing.assert_allclose(np.asarray(first.last_hidden_state)[0, :6], np.asarray(whole)[0, :6], atol=1e-5)
    for row, suffix in enumerate(suffixes):
        np.testing.assert_allclose(np.asarray(continued)[row, :len(suffix)],
                                   np.asarray(whole)[row, 6:6 + len(suffix)], atol=1e-5, rtol=0)
    packed = np.concatenate(suffixes)[None]                  # the three continuations as segments of one row
    segments = np.concatenate([np.full(len(s), i + 1) for i, s in enumerate(suffixes)])[None]
    positions = np.concatenate([6 + np.arange(len(s)) for s in suffixes])[None]
    out = model(jnp.asarray(packed), positions=jnp.asarray(positions), segment_ids=jnp.asarray(segments),
                prefix=cache).last_hidden_state
    expected = np.concatenate([np.asarray(whole)[row, 6:6 + len(s)] for row, s in enumerate(suffixes)])
    np.testing.assert_allclose(np.asarray(out)[0], expected, atol=1e-5, rtol=0)


def _right_padded(rows, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    width = width or max(len(r) for r in rows)
    ids, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return ids, mask
