"""Logits and every hidden state of our models against transformers PyTorch, fp32, left and right padding."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.tiny_models import TINY_HF_CONFIGS, make_tiny_hf_model
from xalign_jax import models
from xalign_jax.models import layers

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
