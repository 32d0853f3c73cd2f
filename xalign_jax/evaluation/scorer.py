"""The jitted log-likelihood scorer: one compiled function per bucket length scores fixed-size batches of rows.

Both scoring rules come out of ONE forward pass per row, because both read the same tokens (the whole prompt
tokenized with the tokenizer's default special tokens):

* ``reference`` (AFP_SPEC §3.4): the sum of log p(x_t | x_<t) over every token but the first, i.e. the whole
  string's log-likelihood (demonstrations, query, candidate and any suffix). log vs log2 does not change the argmax.
* ``completion`` (lm-eval-harness ``loglikelihood``): the sum over the continuation tokens only. As lm-eval's
  ``_encode_pair`` does, the context's trailing whitespace moves to the continuation, the whole string is encoded,
  and the continuation is what follows the encoded context's length (a split at the token level).

Every distinct token prefix is scored once. A position's log-probability depends only on the tokens up to it
(causal attention), so the rows of one call form a prefix tree (``plan_scoring``): under the reference rule every
item of a (task, language, seed) carries the same demonstrations, an item's candidates share its premise, and
identical rows (the reference XNLI template's identical candidates) share everything. Each tree node is computed by
one row that contains it; a row runs through the model only up to its last such position, and a row that owns none
does not run. A row's score is the sum over its path, summed on the host in fp64: the same quantity as the plain
computation, up to float summation order. When the rows that run share a prefix (the demonstrations), it runs
once, and its keys and values are cached (``models.PrefixCache``): the rows then run only their own tokens,
attending to the cache.

Rows come in ``groups``, the candidates of one item. The forward pass runs a group's common tokens once: its rows go
into one segment as a prefix tree (``Decoder``'s ``branch_ids``), the shared tokens (the premise, the story) as its
trunk, then each row's own tokens as a branch that sees the trunk and itself; 1.3-1.8x fewer tokens run on the five
tasks than with one segment per row. With ``reference_scores="relative"`` the reference rule also leaves out the
terms all rows of a group share: the log-probabilities of the tokens before the group's first differing token are
the same in each of its rows, so they add the same to every candidate's score and cannot change which candidate
scores highest (AFP_SPEC §3.4); then 1.2-3.6x fewer positions reach the vocabulary (XStoryCloze's four-sentence
story the most), and with k-shot prompts none of the demonstrations' do.

Only owned positions reach the vocabulary projection (the dominant cost with 250k+ vocabularies): the model returns
final-normed hidden states (``compute_logits=False``), the owned positions of a call are gathered into one flat
list across its rows (no padding positions), and their logits + log-sum-exp are computed in fp32
``head_positions`` at a time (the remainder in a call of the next power of two), so full ``[B, T, V]`` fp32
logits never exist; on CPU a call goes through the vocabulary in blocks with a running log-sum-exp, so not even
its [V, positions] logits do. The groups' trees are packed as segments (block-diagonal attention, positions
restarting per tree) into calls of ``batch_rows`` rows (the last call: the power of two its rows need) of one
bucket length per ``score`` call, so the forward pass computes few padding tokens and a whole benchmark compiles a
handful of times; results stay on device until one ``device_get`` per ``score`` call.

``positions="continuation"`` serves the completion rules alone: only the continuation positions are needed, and
the reference score is NaN (not computed).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xalign_jax import xla_options
from xalign_jax.data import packing
from xalign_jax.evaluation.fewshot import Prompt
from xalign_jax.models import layers
from xalign_jax.models.decoder import PrefixCache

log = logging.getLogger(__name__)

BATCH_AXES = ("data", "fsdp")
DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048)
SCORE_POSITIONS = ("all", "continuation")   # what reaches the vocabulary: every token, or continuations only
REFERENCE_SCORES = ("absolute", "relative")  # whole-string sums, or without the terms a group's rows share
MIN_CACHED_PREFIX = 16                     # shorter shared prefixes are not worth a pass and a compile of their own


@dataclasses.dataclass(frozen=True)
class EncodedRow:
    ids: tuple[int, ...]   # the whole prompt, tokenizer's special tokens (encode_prompts may put an EOS first)
    start: int             # first continuation token (completion mode); reference mode scores from token 1
    continuation_chars: int


@dataclasses.dataclass(frozen=True)
class RowScores:
    """Per-row results, aligned with the rows given to ``Scorer.score``."""
    reference: np.ndarray     # sum log p over tokens 1..n-1; relative: from where the rows of its group differ
    completion: np.ndarray    # sum log p over the continuation tokens
    num_tokens: np.ndarray    # continuation token count
    num_chars: np.ndarray     # continuation character count


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt], *,
                   eos_before_empty_context: bool = False) -> list[EncodedRow]:
    """Tokenize every prompt once (no padding: the scorer lays rows out itself, so the tokenizer's padding side
    cannot change a score).

    A prompt whose context encodes to nothing (an XWinograd sentence that starts with the blank, under a tokenizer
    that adds no BOS: BLOOM, SmolLM2) leaves its continuation's first token with nothing to be predicted from.
    lm-eval then makes the context the end-of-text token; ``eos_before_empty_context`` does the same (for
    continuation-only scoring: the reference rule's whole-string sum must see the string as it is). Without it that
    token goes unscored in the completion rules, and a warning counts such rows."""
    contexts = [p.context.rstrip() for p in prompts]
    whole = tokenizer([p.text for p in prompts])["input_ids"]
    context_ids = tokenizer(contexts)["input_ids"]
    rows, unscored_first = [], 0
    for prompt, ids, ctx, ctx_text in zip(prompts, whole, context_ids, contexts):
        if not ctx and eos_before_empty_context:
            ids = [tokenizer.eos_token_id, *ids]
        if len(ids) < 2:
            raise ValueError(f"prompt {prompt.text!r} has {len(ids)} token(s); at least 2 are needed to score it")
        unscored_first += not ctx and not eos_before_empty_context
        rows.append(EncodedRow(tuple(ids), min(max(len(ctx), 1), len(ids)), len(prompt.text) - len(ctx_text)))
    if unscored_first:
        log.warning("%d of %d prompts have no context tokens: the completion rules leave their continuation's first "
                    "token unscored (eval.score_positions=continuation scores it after an EOS, as lm-eval does)",
                    unscored_first, len(prompts))
    return rows


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length; past the largest, the next multiple of the largest."""
    for bucket in sorted(buckets):
        if length <= bucket:
            return bucket
    top = max(buckets)
    return -(-length // top) * top


_COMPILES: dict[str, int] = {"count": 0}


def compile_count() -> int:
    """How many times a scoring function has been traced (= compiled) in this process."""
    return _COMPILES["count"]


def _prefix_pass(graphdef, params, ids: jax.Array, length: jax.Array) -> tuple[PrefixCache, jax.Array]:
    """One shared prefix [1, P] (its first ``length`` tokens real) -> its cache and [1, P, D] final hidden."""
    _COMPILES["count"] += 1
    mask = (jnp.arange(ids.shape[1]) < length).astype(jnp.int32)[None]
    out = nnx.merge(graphdef, params)(ids, mask, compute_logits=False, return_keys_values=True)
    return PrefixCache.from_row(out.keys_values, length), out.last_hidden_state


def _final_hidden(graphdef, params, ids: jax.Array, positions: jax.Array, segments: jax.Array, branches: jax.Array,
                  prefix: PrefixCache | None) -> jax.Array:
    """[B, L] packed prefix trees (segments > 0, each continuing ``prefix`` when given) -> [B, L, D] final-normed
    hidden states, no logits."""
    _COMPILES["count"] += 1
    model = nnx.merge(graphdef, params)
    return model(ids, (segments > 0).astype(jnp.int32), positions=positions, segment_ids=segments,
                 branch_ids=branches, compute_logits=False, prefix=prefix).last_hidden_state


def _position_logprob(graphdef, params, hidden: jax.Array, row: jax.Array, source: jax.Array,
                      target: jax.Array, vocab_block: int | None, token_major: bool) -> jax.Array:
    """[C] fp32 log p(target | the state at hidden[row, source]): only these C positions reach the vocabulary
    projection, as [C, V] fp32 logits, never [B, L, V]; with ``vocab_block``, in blocks of that many vocabulary
    rows, [vocab_block, C] or ``token_major`` [C, vocab_block] (``Decoder.target_logprobs``).

    On CPU an fp32 model's blocks are vocabulary-major, [block, C] = embedding rows @ hidden.T, with the matmuls
    by XLA's own library (``xla_options.CPU_MATMULS_BY_XLA``). 128 positions of a 250k vocabulary at hidden 256:
    112-122 ms as one [V, C] block, 81-87 ms in 16 blocks; earlier, 64 positions took 80.9 ms token-major under
    XLA's defaults and 69.9 ms vocabulary-major with the options (BENCHMARKS.md)."""
    _COMPILES["count"] += 1
    model = nnx.merge(graphdef, params)
    if vocab_block:
        return model.target_logprobs(hidden[row, source], target, vocab_block, token_major)
    logits = layers.as_fp32_rounded(model.logits(hidden[row, source]))
    picked = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


@dataclasses.dataclass(frozen=True)
class Programs:
    """The scorer's three jitted functions, compiled with one set of XLA options."""
    prefix: Callable[..., tuple[PrefixCache, jax.Array]]
    rows: Callable[..., jax.Array]
    vocabulary: Callable[..., jax.Array]


def programs(options: Mapping[str, object] | None = None) -> Programs:
    """``_prefix_pass``, ``_final_hidden`` and ``_position_logprob`` compiled with ``options`` (None: XLA's
    defaults); equal options give the same jitted functions (``xla_options.jit_with``)."""
    jit = functools.partial(xla_options.jit_with, options=options)
    return Programs(prefix=jit(_prefix_pass, static_argnames=("graphdef",)),
                    rows=jit(_final_hidden, static_argnames=("graphdef",)),
                    vocabulary=jit(_position_logprob, static_argnames=("graphdef", "vocab_block", "token_major")))


@dataclasses.dataclass(frozen=True)
class ScoringPlan:
    """Which distinct token positions the rows need, and which row computes each.

    A position's log-probability depends only on the tokens up to it (causal attention), so every distinct token
    prefix is one node of a prefix tree, computed once. ``row_nodes[r][i]`` is the node of row r's token i + 1;
    node n is the log-probability of token ``token[n]``, computed by row ``owner_row[n]`` at position
    ``owner_pos[n]``; ``-1`` marks nodes no row needs. Row r's scores need its tokens from ``first_scored[r]`` on
    (1 for the whole string)."""
    row_nodes: list[np.ndarray]
    owner_row: np.ndarray
    owner_pos: np.ndarray
    token: np.ndarray
    first_scored: np.ndarray


def plan_scoring(rows: Sequence[EncodedRow], continuation_only: bool,
                 groups: Sequence[int] | None = None) -> ScoringPlan:
    """The prefix tree of ``rows``: each needed node is owned by the first row that needs it.

    Under the reference rule every item of a (task, language, seed) shares the demonstrations, and an item's
    candidates share its premise; identical rows share everything. A row needs its tokens from
    ``first_scored_tokens`` on."""
    children: dict[tuple[int, int], int] = {}    # (parent node, token) -> node; parent -1 for the first token
    owners: dict[int, tuple[int, int]] = {}
    row_nodes = []
    first_scored = first_scored_tokens(rows, continuation_only, groups)
    for r, row in enumerate(rows):
        node = children.setdefault((-1, row.ids[0]), len(children))
        nodes = np.empty(len(row.ids) - 1, np.int64)
        for t in range(1, len(row.ids)):
            node = nodes[t - 1] = children.setdefault((node, row.ids[t]), len(children))
            if t >= first_scored[r]:
                owners.setdefault(node, (r, t))
        row_nodes.append(nodes)
    owner_row, owner_pos = np.full(len(children), -1, np.int64), np.zeros(len(children), np.int64)
    token = np.zeros(len(children), np.int32)
    for node, (r, t) in owners.items():
        owner_row[node], owner_pos[node], token[node] = r, t, rows[r].ids[t]
    return ScoringPlan(row_nodes, owner_row, owner_pos, token, first_scored)


def first_scored_tokens(rows: Sequence[EncodedRow], continuation_only: bool,
                        groups: Sequence[int] | None = None) -> np.ndarray:
    """Per row, the first token whose log-probability a score needs: the continuation's first for continuation-only
    scoring; else 1 (the whole string), or with ``groups`` the first token at which the rows of the row's group
    differ or the continuation's first, whichever comes first (the completion rules need every continuation
    token)."""
    starts = np.array([max(row.start, 1) for row in rows], np.int64)
    if continuation_only:
        return starts
    if groups is None:
        return np.ones(len(rows), np.int64)
    keys, members = _group_by(np.asarray(groups), np.arange(len(rows)))
    shared = {key: common_prefix_length([rows[r].ids for r in member]) for key, member in zip(keys, members)}
    return np.array([max(min(start, shared[int(group)]), 1) for start, group in zip(starts, groups)], np.int64)


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``sequences`` have in common."""
    first, common = sequences[0], len(sequences[0])
    for other in sequences[1:]:
        limit = min(common, len(other))
        common = next((i for i in range(limit) if other[i] != first[i]), limit)
    return common


@dataclasses.dataclass(frozen=True)
class PrefixTree:
    """One group's rows from the cut on, as one segment: the tokens ``[cut, trunk_end)`` they all share (the
    trunk), then each row's tokens from ``trunk_end`` to its ``end`` (its branch; empty when it ends in the
    trunk)."""
    trunk: Sequence[int]
    cut: int
    trunk_end: int
    ends: dict[int, int]     # row -> one past its last owned position

    @property
    def size(self) -> int:
        return len(self.trunk) + sum(end - self.trunk_end for end in self.ends.values())

    def slots(self, index: np.ndarray, offset: int, branch_start: int) -> np.ndarray:
        """Where a row's tokens ``index`` lie in a packed row whose trunk starts at ``offset`` and the row's branch
        at ``branch_start``."""
        return np.where(index < self.trunk_end, offset + index - self.cut, branch_start + index - self.trunk_end)


def prefix_trees(rows: Sequence[EncodedRow], ends: Mapping[int, int], cut: int,
                 groups: Sequence[int] | None) -> list[PrefixTree]:
    """The running rows (``ends``: row -> one past its last owned position) as one tree per group, or per row
    without groups. A trunk never reaches past the group's last owned position."""
    running = np.array(list(ends), np.int64)
    keys = running if groups is None else np.asarray(groups)[running]
    trees = []
    for group_rows in (member.tolist() for member in _group_by(keys, running)[1]):
        shared = common_prefix_length([rows[r].ids for r in group_rows])
        trunk_end = min(shared, max(ends[r] for r in group_rows))
        trees.append(PrefixTree(rows[group_rows[0]].ids[cut:trunk_end], cut, trunk_end,
                                {r: max(ends[r], trunk_end) for r in group_rows}))
    return trees


@dataclasses.dataclass(frozen=True)
class PackedTrees:
    """The [rows, length] arrays of one forward call: prefix trees packed as segments of its rows."""
    ids: np.ndarray
    positions: np.ndarray
    segments: np.ndarray    # 1, 2, ... per tree in a row; 0 padding
    branches: np.ndarray    # 0 trunk, 1, 2, ... each row's own tokens within its tree

    @classmethod
    def empty(cls, rows: int, length: int, pad_id: int) -> "PackedTrees":
        zeros = np.zeros((rows, length), np.int32)
        return cls(np.full_like(zeros, pad_id), zeros.copy(), zeros.copy(), zeros.copy())

    def place(self, tree: PrefixTree, rows: Sequence[EncodedRow], slot: int, offset: int,
              segment: int) -> dict[int, int]:
        """Writes ``tree`` into row ``slot`` from ``offset``; returns where each of its rows' branch starts."""
        self._write(slot, offset, tree.trunk, tree.cut, segment, 0)
        starts, start = {}, offset + len(tree.trunk)
        for branch, (r, end) in enumerate(tree.ends.items(), start=1):
            self._write(slot, start, rows[r].ids[tree.trunk_end:end], tree.trunk_end, segment, branch)
            starts[r], start = start, start + end - tree.trunk_end
        return starts

    def _write(self, slot: int, offset: int, tokens: Sequence[int], first_position: int, segment: int,
               branch: int) -> None:
        placed = slice(offset, offset + len(tokens))
        self.ids[slot, placed] = tokens
        self.positions[slot, placed] = first_position + np.arange(len(tokens))
        self.segments[slot, placed], self.branches[slot, placed] = segment, branch


class Scorer:
    """Scores ``EncodedRow``s with a fixed model graph; ``params`` can be swapped per call (trainer evaluation).

    ``batch_rows`` packed rows per forward call, of the ``buckets`` length that fits the longest row;
    ``head_positions`` positions per vocabulary call, whose fp32 logits on an accelerator are ``head_positions x
    vocab x 4`` bytes (256: 268 MB at a 262k vocabulary); a call's remaining positions go in one call of the next
    power of two (at least 16). On CPU a call goes through the vocabulary in blocks of at most ``cpu_vocab_block``
    rows (``Decoder.target_logprobs``): for an fp32 model vocabulary-major, and its forward passes and vocabulary
    calls compiled with ``cpu_compiler_options``; for a bf16 model token-major, and all under XLA's defaults, where
    YNNPACK multiplies bf16 operands into fp32 results at about twice XLA's fp32 rate (``layers.dense``;
    BENCHMARKS.md).
    ``reference_scores`` is ``absolute`` (whole-string sums) or ``relative`` (within the groups given to ``score``,
    the module docstring)."""

    def __init__(self, model: Any, *, batch_rows: int = 8, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 mesh: jax.sharding.Mesh | None = None, head_positions: int = 256, pad_id: int = 0,
                 positions: str = "all", reference_scores: str = "absolute",
                 cpu_compiler_options: Mapping[str, str] | None = xla_options.CPU_MATMULS_BY_XLA,
                 cpu_vocab_block: int = 16384):
        if positions not in SCORE_POSITIONS:
            raise ValueError(f"positions {positions!r}: expected one of {SCORE_POSITIONS}")
        if reference_scores not in REFERENCE_SCORES:
            raise ValueError(f"reference_scores {reference_scores!r}: expected one of {REFERENCE_SCORES}")
        self.continuation_only = positions == "continuation"
        self.relative = reference_scores == "relative"
        self.graphdef, self.params = nnx.split(model, nnx.Param)
        self.batch_rows, self.buckets, self.mesh = batch_rows, tuple(buckets), mesh
        self.head_positions, self.pad_id = head_positions, pad_id
        self.vocab_size = model.config.vocab_size
        self.shapes_seen: set[tuple[str, int, int]] = set()
        platform = jax.default_backend() if mesh is None else mesh.devices.flat[0].platform
        self._vocab_block = cpu_vocab_block if platform == "cpu" else None
        self._token_major = platform == "cpu" and jnp.dtype(model.config.dtype) == jnp.bfloat16
        self.programs = programs(xla_options.for_compute_dtype(cpu_compiler_options, platform, model.config.dtype))
        self._batch_devices = 1
        if mesh is not None:
            axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
            self._batch_devices = int(np.prod([mesh.shape[a] for a in axes]))
            if batch_rows % self._batch_devices:
                raise ValueError(f"batch_rows={batch_rows} must be a multiple of the {self._batch_devices} batch "
                                 "devices")
            self._sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))

    def score(self, rows: Sequence[EncodedRow], params=None, groups: Sequence[int] | None = None) -> RowScores:
        """Scores of every row, fetched from the device in one transfer.

        Every distinct token prefix is scored once (``plan_scoring``). When the rows that run share a prefix of at
        least ``MIN_CACHED_PREFIX`` tokens (the demonstrations), it runs once and is cached; the rows then run only
        their own tokens after it. ``groups`` (one id per row: its item) lets the rows of a group run their shared
        tokens once, as one prefix tree, and with ``reference_scores="relative"`` leave the terms they share out of
        their reference scores; without groups every row is its own.
        """
        params = self.params if params is None else params
        if groups is not None and len(groups) != len(rows):
            raise ValueError(f"groups: {len(groups)} group ids for {len(rows)} rows")
        plan = plan_scoring(rows, self.continuation_only, groups if self.relative else None)
        owned = plan.owner_row >= 0
        cut = cached_prefix_length(rows, plan)
        work, prefix = [], None
        if cut:
            prefix, hidden = self._prefix(params, rows[int(plan.owner_row[owned][0])].ids[:cut])
            nodes = np.flatnonzero(owned & (plan.owner_pos <= cut))    # none when only continuations are scored
            if len(nodes):
                work.append((nodes, self._heads(params, hidden, np.zeros_like(nodes), plan.owner_pos[nodes] - 1,
                                                plan.token[nodes])))
        for layout, slots, sources, nodes in self._batches(rows, plan, cut, groups):   # dispatched async
            hidden = self._forward(params, layout, prefix)
            work.append((nodes, self._heads(params, hidden, slots, sources, plan.token[nodes])))
        logprob = np.full(len(plan.owner_row), np.nan, np.float64)
        for (nodes, _), values in zip(work, jax.device_get([out for _, out in work])):
            logprob[nodes] = np.concatenate(values)[:len(nodes)]
        reference = np.array([logprob[nodes[first - 1:]].sum() for nodes, first in zip(plan.row_nodes,
                                                                                          plan.first_scored)])
        completion = np.array([logprob[nodes[max(r.start, 1) - 1:]].sum() for r, nodes in zip(rows, plan.row_nodes)])
        if self.continuation_only:
            reference[:] = np.nan
        return RowScores(reference, completion, np.array([len(r.ids) - r.start for r in rows]),
                         np.array([r.continuation_chars for r in rows]))

    def _batches(self, rows: Sequence[EncodedRow], plan: ScoringPlan, cut: int, groups: Sequence[int] | None):
        """The rows owning positions after ``cut``, from ``cut`` on, as one prefix tree per group
        (``prefix_trees``), packed as segments (first fit, largest first) into ``batch_rows`` rows per call of one
        bucket length, the largest tree's; each call with its nodes and their (packed row, index) places. Packing,
        not padding, keeps a call's forward work near its real tokens; first fit fills the rows in order, so only
        the last call has empty rows, and it runs only as many as ``_call_rows`` gives (one partly filled row of 16
        cost a whole call)."""
        owned = np.flatnonzero((plan.owner_row >= 0) & (plan.owner_pos > cut))
        nodes_of_row = dict(zip(*_group_by(plan.owner_row[owned], owned)))
        ends = {r: int(plan.owner_pos[nodes].max()) + 1 for r, nodes in nodes_of_row.items()}
        trees = sorted(prefix_trees(rows, ends, cut, groups), key=lambda tree: -tree.size)
        sizes = [tree.size for tree in trees]
        length = bucket_length(max(sizes, default=1), self.buckets)
        queue = [[i, 0] for i in range(len(trees))]
        while queue:
            layout, queue = packing.plan_segments(queue, sizes, self.batch_rows, length)
            layout = layout[:_call_rows(sum(map(bool, layout)), self.batch_rows, self._batch_devices)]
            packed = PackedTrees.empty(len(layout), length, self.pad_id)
            places = []
            for slot, spans in enumerate(layout):
                offset = 0
                for segment, (i, _, size) in enumerate(spans, start=1):
                    for r, branch_start in packed.place(trees[i], rows, slot, offset, segment).items():
                        nodes = nodes_of_row[r]   # each read from the state at its previous token
                        sources = trees[i].slots(plan.owner_pos[nodes] - 1, offset, branch_start)
                        places.append((np.full(len(nodes), slot), sources, nodes))
                    offset += size
            slots, sources, nodes = (np.concatenate(parts) for parts in zip(*places))
            yield packed, slots, sources, nodes

    def _mesh(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def _prefix(self, params, tokens: Sequence[int]) -> tuple[PrefixCache, jax.Array]:
        ids = np.full((1, bucket_length(len(tokens), self.buckets)), self.pad_id, np.int32)
        ids[0, :len(tokens)] = tokens
        self._log_shape("prefix", 1, ids.shape[1])
        with self._mesh():
            return self.programs.prefix(self.graphdef, params, ids, np.int32(len(tokens)))

    def _forward(self, params, packed: PackedTrees, prefix: PrefixCache | None) -> jax.Array:
        self._log_shape("rows", *packed.ids.shape)
        arrays = (packed.ids, packed.positions, packed.segments, packed.branches)
        with self._mesh():
            if self.mesh is not None:
                arrays = tuple(jax.device_put(x, self._sharding) for x in arrays)
            return self.programs.rows(self.graphdef, params, *arrays, prefix)

    def _heads(self, params, hidden: jax.Array, rows: np.ndarray, sources: np.ndarray, targets: np.ndarray) -> list:
        """Positions through the vocabulary ``head_positions`` at a time, the rest in one call of
        ``_remainder_size`` (padded with the state at (0, 0), whose results are dropped)."""
        full, rest = divmod(len(rows), self.head_positions)
        sizes = [self.head_positions] * full + ([_remainder_size(rest, self.head_positions)] if rest else [])
        padded = [np.zeros(sum(sizes), np.int32) for _ in range(3)]
        for array, values in zip(padded, (rows, sources, targets)):
            array[:len(values)] = values
        starts = np.cumsum([0] + sizes)
        for size in sizes:
            self._log_shape("vocabulary", size, self.vocab_size)
        with self._mesh():
            return [self.programs.vocabulary(self.graphdef, params, hidden, *(x[lo:hi] for x in padded),
                                            self._vocab_block, self._token_major)
                    for lo, hi in zip(starts[:-1], starts[1:])]

    def _log_shape(self, kind: str, rows: int, length: int) -> None:
        if (kind, rows, length) not in self.shapes_seen:
            self.shapes_seen.add((kind, rows, length))
            log.info("scorer: new %s shape %d x %d (%d compiled so far)", kind, rows, length, compile_count())


def _next_power_of_two(count: int) -> int:
    """The smallest power of two >= ``count`` (1 for 0): call sizes on a power-of-two grid compile few shapes."""
    return 1 << max(count - 1, 0).bit_length()


def _remainder_size(count: int, head_positions: int) -> int:
    """The call size for a call's last ``count`` positions: the next power of two, at least 16 and at most
    ``head_positions``. At most three more compiled shapes at 128 (16, 32, 64); padding the rest to a whole call
    wasted half a call on average, and the completion rules' calls send tens of positions."""
    return min(head_positions, max(16, _next_power_of_two(count)))


def _call_rows(used: int, batch_rows: int, devices: int) -> int:
    """Rows of a forward call whose first ``used`` rows hold segments: the next power of two, at least the batch
    devices' count and a multiple of it, at most ``batch_rows``. A call shape is compiled once per bucket length,
    so a full grid adds at most log2(batch_rows) row counts per length, each compiled once."""
    rows = -(-max(devices, _next_power_of_two(used)) // devices) * devices
    return min(batch_rows, rows)


def cached_prefix_length(rows: Sequence[EncodedRow], plan: ScoringPlan) -> int:
    """Tokens every row that runs starts with, when there are at least ``MIN_CACHED_PREFIX`` (else 0)."""
    running = np.unique(plan.owner_row[plan.owner_row >= 0])
    if len(running) < 2:
        return 0
    common = common_prefix_length([rows[r].ids for r in running])
    return common if common >= MIN_CACHED_PREFIX else 0


def _group_by(keys: np.ndarray, values: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
    """``values`` split by ``keys`` (stable): the distinct keys and each one's values."""
    order = np.argsort(keys, kind="stable")
    distinct, first = np.unique(keys[order], return_index=True)
    return [int(k) for k in distinct], np.split(values[order], first[1:])
