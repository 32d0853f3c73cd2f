"""The JAX decoder with the real weights (Gemma-3-270M, SmolLM2-135M) against transformers' GGUF-loaded model.

Our model is loaded twice, from the .gguf file (GGUFSource) and from the fetched HF directory (safetensors), and
run in fp32 on one padded batch of the multilingual sentences of tests/test_gguf.py: right padding for the first
load, left padding for the second, so both padding sides are checked with real weights. The reference runs each
sentence unpadded. Valid positions must agree to 1e-3 max |Δ logits| with the same greedy tokens.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_gguf import LOGIT_TOLERANCE, assert_logits_match


def padded_batch(ids: list[list[int]], pad_id: int, left: bool) -> tuple[np.ndarray, np.ndarray]:
    length = max(map(len, ids))
    tokens = np.full((len(ids), length), pad_id, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for row, sequence in enumerate(ids):
        span = slice(length - len(sequence), length) if left else slice(0, len(sequence))
        tokens[row, span], mask[row, span] = sequence, 1
    return tokens, mask


def jax_logits(path, ids: list[list[int]], pad_id: int, left: bool) -> list[np.ndarray]:
    """Per-sentence logits [T, V] at the real positions of one padded fp32 batch, compiled as the trainer and the
    evaluator compile an fp32 model's programs (``xla_options.for_compute_dtype``). Under XLA's defaults, with jax
    0.12.0.1 on an AVX2 CPU, YNNPACK's products put SmolLM2's logits 1.9e-3 off (BENCHMARKS.md)."""
    import jax
    from flax import nnx

    from xalign_jax import models, xla_options
    model = models.from_pretrained(path, dtype="float32", param_dtype="float32")
    graphdef, state = nnx.split(model)
    options = xla_options.for_compute_dtype(xla_options.CPU_MATMULS_BY_XLA, jax.default_backend(), "float32")
    forward = jax.jit(lambda state, tokens, mask: nnx.merge(graphdef, state)(tokens, attention_mask=mask).logits,
                      compiler_options=options)
    tokens, mask = padded_batch(ids, pad_id, left)
    logits = np.asarray(forward(state, tokens, mask))
    return [logits[row][mask[row].astype(bool)] for row in range(len(ids))]


@pytest.mark.slow
@pytest.mark.parametrize("origin", ["gguf", "fetched_dir"])
def test_jax_logits_match_transformers_gguf_model(real, origin):
    ids, reference = real.reference()
    path, left = (real.gguf, False) if origin == "gguf" else (real.directory, True)
    pad_id = json.loads((real.directory / "config.json").read_text())["pad_token_id"]
    ours = jax_logits(path, ids, pad_id=pad_id, left=left)
    worst = assert_logits_match(ours, reference, LOGIT_TOLERANCE)
    print(f"{real.name} from {origin} ({'left' if left else 'right'} padding): max |Δ logits| = {worst:.2e}")
