"""The jitted log-likelihood scorer: one compiled function per bucket length scores fixed-size batches of rows.

Both scoring rules come out of ONE forward pass per row, because both read the same tokens (the whole prompt
tokenized with the tokenizer's default special tokens):

* ``reference`` (AFP_SPEC §3.4): the sum of log p(x_t | x_<t) over every token but the first, i.e. the whole
  string's log-likelihood (demonstrations, query, candidate and any suffix). log vs log2 does not change the argmax.
* ``completion`` (lm-eval-harness ``loglikelihood``): the sum over the continuation tokens only. As lm-eval's
  ``_encode_pair`` does, the context's trailing whitespace moves to the continuation, the whole string is encoded,
  and the continuation is what follows the encoded context's length (a split at the token level).

Only positions that are scored reach the vocabulary: the model returns final-normed hidden states
(``compute_logits=False``) and the logits + log-sum-exp are computed in fp32 one sequence chunk at a time, so full
``[B, T, V]`` fp32 logits never exist (262k-token vocabularies). Rows are right-padded into a few bucket lengths
with a fixed number of rows per call (pad rows fill the last call), so a whole benchmark compiles a handful of
times; results stay on device until one ``device_get`` per scoring call.

Shared prefix: under the reference rule every item of a (task, language, seed) carries the same demonstrations, so
all rows of one call start with the same tokens. Those tokens' log-probabilities depend only on the prefix (causal
attention), so they are computed once, from a row holding just the prefix, and added to every row; the other rows
send only their later positions through the vocabulary projection (the dominant cost with 250k+ vocabularies).
The sum is the same quantity as the plain computation (equal up to float summation order). The forward pass still
re-reads the prefix in every row: skipping it needs a KV-cache entry point in the model.
Identical rows (e.g. the reference XNLI template's identical candidates) are scored once.

``positions="continuation"`` serves the completion rules alone: each row sends only its continuation positions
through the vocabulary projection (often a third of the row), and the reference score is NaN (not computed).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xalign_jax.evaluation.fewshot import Prompt

log = logging.getLogger(__name__)

BATCH_AXES = ("data", "fsdp")
DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048)
SCORE_POSITIONS = ("all", "continuation")   # what reaches the vocabulary: every token, or continuations only


@dataclasses.dataclass(frozen=True)
class EncodedRow:
    ids: tuple[int, ...]   # the whole prompt with the tokenizer's default special tokens
    start: int             # first continuation token (completion mode); reference mode scores from token 1
    continuation_chars: int


@dataclasses.dataclass(frozen=True)
class RowScores:
    """Per-row results, aligned with the rows given to ``Scorer.score``."""
    reference: np.ndarray     # sum log p over tokens 1..n-1
    completion: np.ndarray    # sum log p over the continuation tokens
    num_tokens: np.ndarray    # continuation token count
    num_chars: np.ndarray     # continuation character count


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt]) -> list[EncodedRow]:
    """Tokenize every prompt once (no padding: the scorer lays rows out itself, so the tokenizer's padding side
    cannot change a score)."""
    contexts = [p.context.rstrip() for p in prompts]
    whole = tokenizer([p.text for p in prompts])["input_ids"]
    context_ids = tokenizer(contexts)["input_ids"]
    rows = []
    for prompt, ids, ctx, ctx_text in zip(prompts, whole, context_ids, contexts):
        if len(ids) < 2:
            raise ValueError(f"prompt {prompt.text!r} has {len(ids)} token(s); at least 2 are needed to score it")
        start = min(max(len(ctx), 1), len(ids))
        rows.append(EncodedRow(tuple(ids), start, len(prompt.text) - len(ctx_text)))
    return rows


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length; past the largest, the next multiple of the largest."""
    for bucket in sorted(buckets):
        if length <= bucket:
            return bucket
    top = max(buckets)
    return -(-length // top) * top


def _chunk_length(batch_rows: int, length: int, vocab: int, budget_bytes: int) -> int:
    """Largest power-of-two sequence chunk (dividing the bucket) whose fp32 logits fit the budget."""
    chunk = length
    while chunk > 1 and batch_rows * chunk * vocab * 4 > budget_bytes and chunk % 2 == 0:
        chunk //= 2
    return chunk


_COMPILES: dict[str, int] = {"count": 0}


def compile_count() -> int:
    """How many times the scoring function has been traced (= compiled) in this process."""
    return _COMPILES["count"]


@functools.partial(jax.jit, static_argnames=("graphdef", "scored", "chunk"))
def _score_batch(graphdef, params, ids: jax.Array, mask: jax.Array, first: jax.Array, start: jax.Array, *,
                 scored: int, chunk: int):
    """[B, L] rows -> ([B] log-lik of tokens >= ``first``, [B] log-lik of tokens >= ``start``), fp32.

    Only the ``scored`` positions from ``first - 1`` on reach the vocabulary projection (a row's shared prefix is
    scored once elsewhere), in chunks of ``chunk`` positions.
    """
    _COMPILES["count"] += 1
    model = nnx.merge(graphdef, params)
    hidden = model(ids, mask, compute_logits=False).last_hidden_state
    batch, length = ids.shape
    target_pos = first[:, None] + jnp.arange(scored)[None, :]            # token predicted at each scored slot
    valid = (target_pos < length) & jnp.take_along_axis(mask, jnp.minimum(target_pos, length - 1), axis=1).astype(bool)
    target_pos = jnp.minimum(target_pos, length - 1)
    source = jnp.take_along_axis(hidden, (target_pos - 1)[..., None], axis=1)     # [B, S, D]
    targets = jnp.take_along_axis(ids, target_pos, axis=1)
    chunks = scored // chunk

    def chunk_logprob(_, xs):
        h, t = xs                                          # [B, C, D], [B, C]
        logits = model.logits(h).astype(jnp.float32)
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return None, picked - jax.nn.logsumexp(logits, axis=-1)

    def split(x):
        return jnp.moveaxis(x.reshape((batch, chunks, chunk) + x.shape[2:]), 1, 0)

    _, logprob = jax.lax.scan(chunk_logprob, None, (split(source), split(targets)))
    logprob = jnp.moveaxis(logprob, 0, 1).reshape(batch, scored)
    reference = jnp.where(valid, logprob, 0.0).sum(axis=1)
    completion = jnp.where(valid & (target_pos >= start[:, None]), logprob, 0.0).sum(axis=1)
    return reference, completion


def shared_prefix_length(rows: Sequence[EncodedRow]) -> int:
    """Tokens every row starts with, capped so each row keeps its whole continuation and one scored token."""
    if len(rows) < 2:
        return 0
    first, common = rows[0].ids, len(rows[0].ids)
    for row in rows[1:]:
        limit = min(common, len(row.ids))
        common = next((i for i in range(limit) if row.ids[i] != first[i]), limit)
    return min(common, min(r.start for r in rows), min(len(r.ids) for r in rows) - 1)


def _vocab_size(graphdef, params) -> int:
    """Vocabulary size read from an abstract (shape-only) call of the model's logits."""
    def logits(p):
        return nnx.merge(graphdef, p)(jnp.zeros((1, 2), jnp.int32)).logits
    return int(jax.eval_shape(logits, params).shape[-1])


class Scorer:
    """Scores ``EncodedRow``s with a fixed model graph; ``params`` can be swapped per call (trainer evaluation)."""

    def __init__(self, model: Any, *, batch_rows: int = 8, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 mesh: jax.sharding.Mesh | None = None, logits_budget_bytes: int = 1 << 28, pad_id: int = 0,
                 positions: str = "all"):
        if positions not in SCORE_POSITIONS:
            raise ValueError(f"positions {positions!r}: expected one of {SCORE_POSITIONS}")
        self.continuation_only = positions == "continuation"
        self.graphdef, self.params = nnx.split(model, nnx.Param)
        self.vocab = _vocab_size(self.graphdef, self.params)
        self.batch_rows, self.buckets, self.mesh = batch_rows, tuple(buckets), mesh
        self.logits_budget_bytes, self.pad_id = logits_budget_bytes, pad_id
        self.shapes_seen: set[tuple[int, int, int]] = set()
        if mesh is not None:
            axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
            devices = int(np.prod([mesh.shape[a] for a in axes]))
            if batch_rows % devices:
                raise ValueError(f"batch_rows={batch_rows} must be a multiple of the {devices} batch devices")
            self._sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))

    def score(self, rows: Sequence[EncodedRow], params=None) -> RowScores:
        """Scores of every row, fetched from the device in one transfer.

        The tokens all rows share (the demonstrations, identical for every item under the reference rule) are
        scored once as a row of their own; every other row sends only its later positions through the vocabulary
        projection and adds that prefix score. Identical rows are computed once.
        """
        params = self.params if params is None else params
        if self.continuation_only:
            first = 1
            jobs = [(r.ids, max(r.start, 1), r.start) for r in rows]
        else:
            prefix = shared_prefix_length(rows)
            first = prefix if prefix >= 2 else 1
            jobs = [(r.ids, first, r.start) for r in rows] + ([(rows[0].ids[:prefix], 1, prefix)] if first > 1 else [])
        unique = list(dict.fromkeys(jobs))
        batches = self._batches(unique)
        outputs = [self._run(params, *batch[:5]) for batch in batches]   # dispatched asynchronously
        reference, completion = np.zeros(len(unique), np.float64), np.zeros(len(unique), np.float64)
        for (*_, members), (ref, comp) in zip(batches, jax.device_get(outputs)):
            reference[members] = ref[:len(members)]
            completion[members] = comp[:len(members)]
        index = {job: i for i, job in enumerate(unique)}
        order = np.array([index[job] for job in jobs[:len(rows)]], dtype=np.int64)
        prefix_score = reference[index[jobs[-1]]] if first > 1 else 0.0
        if self.continuation_only:
            reference[:] = np.nan
        return RowScores(reference[order] + prefix_score, completion[order],
                         np.array([len(r.ids) - r.start for r in rows]), np.array([r.continuation_chars for r in rows]))

    def _batches(self, unique: list[tuple[tuple[int, ...], int, int]]):
        """Jobs grouped by (length bucket, scored-positions bucket) as padded arrays of ``batch_rows`` rows."""
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i in sorted(range(len(unique)), key=lambda i: -len(unique[i][0])):
            tokens, first, _ = unique[i]
            shape = (bucket_length(len(tokens), self.buckets), bucket_length(len(tokens) - first, self.buckets))
            by_shape.setdefault(shape, []).append(i)
        batches = []
        for (length, scored), members in by_shape.items():
            for lo in range(0, len(members), self.batch_rows):
                group = members[lo:lo + self.batch_rows]
                ids = np.full((self.batch_rows, length), self.pad_id, np.int32)
                mask = np.zeros((self.batch_rows, length), np.int32)
                first, start = np.ones(self.batch_rows, np.int32), np.ones(self.batch_rows, np.int32)
                for row, i in enumerate(group):
                    tokens, first[row], start[row] = unique[i]
                    ids[row, :len(tokens)], mask[row, :len(tokens)] = tokens, 1
                batches.append((ids, mask, first, start, scored, np.array(group, dtype=np.int64)))
        return batches

    def _run(self, params, ids: np.ndarray, mask: np.ndarray, first: np.ndarray, start: np.ndarray, scored: int):
        shape = (self.batch_rows, ids.shape[1], scored)
        if shape not in self.shapes_seen:
            self.shapes_seen.add(shape)
            log.info("scorer: new shape rows=%d length=%d scored=%d (%d compiled so far)", *shape, compile_count())
        chunk = _chunk_length(self.batch_rows, scored, self.vocab, self.logits_budget_bytes)
        arrays = (ids, mask, first, start)
        if self.mesh is None:
            return _score_batch(self.graphdef, params, *arrays, scored=scored, chunk=chunk)
        with jax.set_mesh(self.mesh):
            arrays = tuple(jax.device_put(x, self._sharding) for x in arrays)
            return _score_batch(self.graphdef, params, *arrays, scored=scored, chunk=chunk)
