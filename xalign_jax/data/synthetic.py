"""Random-token AFP examples with realistic shapes: throughput benchmarks where neither data nor a tokenizer exists.

An accelerator machine that has to measure step time and MFU may hold no corpus and no tokenizer (nothing can be
downloaded there). ``data.synthetic_records = N`` then trains on N examples made here: each has two contrastive
sentences and one CLM example of a masked prompt followed by a supervised answer, with lengths drawn uniformly from
the ranges below. The batches still go through the real packer (segments, carry queue, supervised caps), so the
compiled step and its shapes are exactly those of a real run. The tokens are noise: never evaluate such a model.

Default ranges (tokens): prompt 8-64, answer 8-192 (about 70% of CLM tokens supervised), sentences 8-48. The
default AFP recipe is shorter on average (Alpaca answers) with a long tail; the benchmark report states the
measured tokens per step either way.
"""
from __future__ import annotations

import numpy as np

from xalign_jax.data.tokenize import TokenizedCorpus, TokenizedExample, TokenizeReport

PROMPT_TOKENS = (8, 64)
ANSWER_TOKENS = (8, 192)
SENTENCE_TOKENS = (8, 48)
FIRST_ORDINARY_ID = 16   # ids below this are left to special tokens (pad 0, eos 1, bos 2 in every family here)


def synthetic_corpus(num_records: int, *, vocab_size: int, seq_len: int, max_sentence_len: int, seed: int = 0,
                     pad_id: int = 0) -> TokenizedCorpus:
    """``num_records`` random examples; CLM examples longer than ``seq_len`` and sentences longer than
    ``max_sentence_len`` are cut to fit (the answer keeps at least one supervised token)."""
    if num_records <= 0:
        raise ValueError(f"config data.synthetic_records: must be positive, got {num_records}")
    if vocab_size <= FIRST_ORDINARY_ID:
        raise ValueError(f"synthetic data needs a vocabulary above {FIRST_ORDINARY_ID} ids, got {vocab_size}")
    rng = np.random.default_rng(seed)
    report = TokenizeReport(records=num_records)
    examples = [_example(rng, vocab_size, seq_len, max_sentence_len, report) for _ in range(num_records)]
    return TokenizedCorpus(examples, report, pad_id=pad_id)


def _tokens(rng: np.random.Generator, vocab_size: int, length: int) -> np.ndarray:
    return rng.integers(FIRST_ORDINARY_ID, vocab_size, size=length, dtype=np.int32)


def _length(rng: np.random.Generator, bounds: tuple[int, int], limit: int) -> int:
    return int(min(rng.integers(bounds[0], bounds[1] + 1), limit))


def _example(rng: np.random.Generator, vocab_size: int, seq_len: int, max_sentence_len: int,
             report: TokenizeReport) -> TokenizedExample:
    prompt = _length(rng, PROMPT_TOKENS, seq_len - 1)
    answer = _length(rng, ANSWER_TOKENS, seq_len - prompt)
    labels = np.arange(prompt + answer) >= prompt
    report.clm_kept += 1
    report.clm_tokens += prompt + answer
    report.supervised_tokens += answer
    sentences = [_tokens(rng, vocab_size, _length(rng, SENTENCE_TOKENS, max_sentence_len)) for _ in range(2)]
    return TokenizedExample(sentences[0], sentences[1], _tokens(rng, vocab_size, prompt + answer), labels)
