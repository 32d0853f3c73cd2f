"""Deterministic, resumable training batches: this process's slice of every global step, then global jax Arrays.

Per step the iterator draws the next B records of an endless stream of epoch permutations (epoch e is shuffled by
``(seed, e)``; a step may span an epoch boundary, so no record is ever skipped). The records' contrastive pairs
fill ``sent0_*``/``sent1_*`` (right padded to the smallest bucket that fits the global batch, so shapes are static
per bucket; with ``data.cl_pack_rows`` they share rows of that bucket as segments, ``sentence_packing.py``), and
``sent_group`` numbers the step's pairs so that pairs sharing a sentence (the same English in an en-zh and an
en-sw pair) share a number: the contrastive loss does not use them as each other's negatives. Their
CLM examples join a carry queue which is packed into R rows of T tokens (``packing.py``); whatever does not fit
waits for the next step, so nothing is dropped. Shapes may follow the step's contents, one
compile per shape used: with ``data.clm_len_buckets`` the step's examples are dealt evenly over the rows and the
rows cut to the shortest bucket that holds them; with a ``data.supervised_cap``, ``clm_head_index`` lists each
group of rows' supervised positions for the LM head, in the fewest ``data.head_slot_buckets`` slots that hold them
(an example that the cap alone keeps out waits like any other, and ``held_by_cap`` counts it).
The queue cannot grow without bound: a configuration whose B records bring more tokens on average than R*T is
refused up front, and since first-fit packing leaves gaps that an average does not see, a queue that still outgrows
``MAX_QUEUED_STEPS`` steps of rows stops the run with an error (the examples in it would otherwise wait for ever).

Every process plans the whole global step from token counts alone (cheap and identical everywhere) and materialises
only the batch shards its devices hold (``sharding.local_batch_shards``), each a block of the step's records and
rows as laid out for the mesh (``micro_batch_layout``); ``to_global`` hands them to
``jax.make_array_from_process_local_data``. Processes whose devices share a shard (a ``tensor`` axis spanning
hosts) materialise the same rows, as replicas must. Plain numpy
with an explicit JSON state rather than grain: the carry queue is state that a grain ``MapDataset`` pipeline cannot
express without a custom iterator anyway, and with the whole corpus tokenized up front, batching is a handful of
numpy copies per step.
"""
from __future__ import annotations

import collections
import logging
from typing import Any, Sequence

import jax
import numpy as np

from xalign_jax.data import packing, sentence_packing
from xalign_jax.data.tokenize import TokenizedCorpus
from xalign_jax.sharding import batch_sharding, local_batch_shards

log = logging.getLogger(__name__)
STATE_VERSION = 1
MAX_QUEUED_STEPS = 8     # CLM tokens waiting in the carry queue, in steps' worth of rows (R * T), before an error
_COUNTERS_ADDED_LATER = ("held_by_cap", "row_break_targets")   # 0 in a state saved before they existed


def _check_divisible(batch_size: int, clm_rows: int, batch_shards: int, micro_batches: int) -> None:
    for key, value in (("train.batch_size", batch_size), ("data.clm_rows", clm_rows)):
        if value % (batch_shards * micro_batches):
            raise ValueError(f"config {key}: {value} is not divisible by data shards * train.micro_batches = "
                             f"{batch_shards} * {micro_batches}")


def _check_local_shards(local_shards: Sequence[int], batch_shards: int) -> tuple[int, ...]:
    shards = tuple(int(s) for s in local_shards)
    if not shards or list(shards) != sorted(set(shards)) or not 0 <= shards[0] <= shards[-1] < batch_shards:
        raise ValueError(f"local_shards {shards}: need distinct increasing shard indices in 0..{batch_shards - 1}")
    return shards


def _check_supervised_cap(counts: Sequence[int], batch_size: int, clm_rows: int, cap: int, group_rows: int,
                          mode: str) -> None:
    """Refuse a supervised cap (per group of ``group_rows`` rows) that some example alone exceeds or that cannot
    keep up on average; ``counts`` are the examples' supervised positions (0 for a record without a CLM example)."""
    if mode != "segments":
        raise ValueError(f"config data.supervised_cap: {cap} needs data.packing='segments' (got {mode!r}); "
                         "set it to 0 for reference packing")
    if max(counts) > cap:
        raise ValueError(f"config data.supervised_cap: {cap} is below the {max(counts)} supervised tokens of "
                         "one example (it could never be packed); raise it or shorten data.seq_len")
    groups = -(-clm_rows // group_rows)
    demand = sum(counts) / len(counts) * batch_size
    if demand > groups * cap:
        raise ValueError(f"config data.supervised_cap: {groups} groups of data.supervised_group_rows = {group_rows} "
                         f"rows x {cap} supervised positions cannot absorb the {demand:.0f} supervised tokens "
                         f"{batch_size} records bring per step on average")


def _check_capacity(corpus: TokenizedCorpus, batch_size: int, clm_rows: int, seq_len: int) -> None:
    """Refuse a step shape whose CLM rows cannot, on average, absorb the CLM tokens its records bring."""
    lengths = [len(e.clm_ids) for e in corpus.examples if e.clm_ids is not None]
    if not lengths:
        raise ValueError("the corpus has no CLM example left after truncation (see its report): nothing to train on")
    if max(lengths) > seq_len:
        raise ValueError(f"config data.seq_len: {seq_len} is shorter than a tokenized CLM example ({max(lengths)} "
                         "tokens); tokenize with the same data config")
    demand = sum(lengths) / len(corpus) * batch_size
    if demand > clm_rows * seq_len:
        need = int(np.ceil(demand / seq_len))
        raise ValueError(f"config data.clm_rows: {clm_rows} rows of {seq_len} tokens cannot absorb the {demand:.0f} "
                         f"CLM tokens {batch_size} records bring per step on average (the carry queue would grow "
                         f"without bound); use at least {need} rows or a smaller train.batch_size")


def micro_batch_layout(total: int, micro_batches: int, batch_shards: int) -> np.ndarray:
    """The order in which the step's ``total`` records (or rows) lie along the global batch axis: shard-major,
    data shard d holding its slice of every micro-batch (micro-batch m = the step's m-th contiguous block), so that
    ``train_step.split_micro`` gives every device a part of every micro-batch. The identity for one micro-batch
    or one shard."""
    per = total // (micro_batches * batch_shards)
    return np.arange(total).reshape(micro_batches, batch_shards, per).transpose(1, 0, 2).reshape(-1)


def ladder_to(buckets: Sequence[int], top: int) -> tuple[int, ...]:
    """A config's bucket ladder below ``top``, then ``top`` itself: the sizes a step may use, the last always
    enough (the ladder's sizes of ``top`` or more are never the smallest that fits)."""
    return tuple(int(b) for b in buckets if int(b) < top) + (int(top),)


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``length`` tokens."""
    for bucket in sorted(buckets):
        if length <= bucket:
            return int(bucket)
    raise ValueError(f"config data.cl_buckets: a {length}-token sentence exceeds the largest bucket {max(buckets)}; "
                     "tokenize with the same data config")


def sentence_groups(pairs: Sequence[tuple[bytes, bytes]]) -> np.ndarray:
    """int32 [n]: pairs that share a sentence, directly or through others, get the same number (the position of
    the first of them), every other pair its own position."""
    parent = list(range(len(pairs)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    first_holder: dict[bytes, int] = {}
    for i, sentences in enumerate(pairs):
        for sentence in sentences:
            j = first_holder.setdefault(sentence, i)
            a, b = sorted((root(i), root(j)))
            parent[b] = a
    return np.asarray([root(i) for i in range(len(pairs))], np.int32)


def pad_right(sequences: Sequence[np.ndarray], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) int32 [n, length], right padded."""
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for i, seq in enumerate(sequences):
        ids[i, :len(seq)] = seq
        mask[i, :len(seq)] = 1
    return ids, mask


class BatchIterator:
    """Endless iterator of this process's local batch slices; ``get_state``/``set_state`` make it resumable."""

    def __init__(self, corpus: TokenizedCorpus, data_cfg: Any, train_cfg: Any, *, seed: int,
                 batch_shards: int = 1, local_shards: Sequence[int] | None = None):
        self.corpus = corpus
        self.batch_size, self.rows = int(train_cfg.batch_size), int(data_cfg.clm_rows)
        self.seq_len = int(data_cfg.seq_len)
        self.buckets = tuple(int(b) for b in data_cfg.cl_buckets)
        self.row_lengths = ladder_to(data_cfg.clm_len_buckets, self.seq_len)
        self.mode = str(data_cfg.packing)
        if self.mode not in packing.PACKING_MODES:
            raise ValueError(f"config data.packing: {self.mode!r} is not one of {packing.PACKING_MODES}")
        self.micro_batches, self.batch_shards = int(train_cfg.micro_batches), int(batch_shards)
        _check_divisible(self.batch_size, self.rows, self.batch_shards, self.micro_batches)
        _check_capacity(corpus, self.batch_size, self.rows, self.seq_len)
        self.local_shards = _check_local_shards(
            range(self.batch_shards) if local_shards is None else local_shards, self.batch_shards)
        self.seed = int(seed)
        self._clm_ids = [e.clm_ids for e in corpus.examples]
        self._clm_labels = [e.clm_labels for e in corpus.examples]
        self._clm_lengths = [0 if ids is None else len(ids) for ids in self._clm_ids]
        self._clm_supervised = [0 if labels is None else int(labels[1:].sum()) for labels in self._clm_labels]
        self.supervised_cap, self.group_rows = int(data_cfg.supervised_cap), int(data_cfg.supervised_group_rows)
        self.head_slots = ladder_to(data_cfg.head_slot_buckets, self.supervised_cap)
        if self.supervised_cap:
            _check_supervised_cap(self._clm_supervised, self.batch_size, self.rows, self.supervised_cap,
                                  self.group_rows, self.mode)
        self._sent_lengths = [max(len(e.sent0_ids), len(e.sent1_ids)) for e in corpus.examples]
        sentences_per_block = 2 * self.batch_size // (self.batch_shards * self.micro_batches)
        self.cl_pack_rows = ladder_to(data_cfg.cl_pack_rows, sentences_per_block) if data_cfg.cl_pack_rows else ()
        self._sentence_keys = [(e.sent0_ids.tobytes(), e.sent1_ids.tobytes()) for e in corpus.examples]
        self._permutations: dict[int, np.ndarray] = {}
        self._corpus_digest: str | None = None
        self._state = {"epoch": 0, "cursor": 0, "step": 0, "queue": [], "tokens_seen": 0, "carried": 0,
                       "held_by_cap": 0, "row_break_targets": 0}
        log.info("batches: %d records and %d CLM rows of %d tokens per step (%s packing); %d records = %.1f steps "
                 "per epoch", self.batch_size, self.rows, self.seq_len, self.mode, len(corpus),
                 len(corpus) / self.batch_size)

    # ------------------------------------------------------------------------------------------------ state
    def _fingerprint(self) -> dict:
        """What a saved state must match; the supervised cap joins only when set, so that states saved without
        one (before the cap existed, or with it off) still resume."""
        supervised = ({"supervised_cap": self.supervised_cap, "supervised_group_rows": self.group_rows}
                      if self.supervised_cap else {})
        if self._corpus_digest is None:
            self._corpus_digest = self.corpus.digest()
        return {"version": STATE_VERSION, "records": len(self.corpus), "corpus_digest": self._corpus_digest,
                "seed": self.seed, "batch_size": self.batch_size, "clm_rows": self.rows, "seq_len": self.seq_len,
                "packing": self.mode, **supervised}

    def get_state(self) -> dict:
        """JSON-serialisable position: identical on every process (the global plan), so any process may save it."""
        return {**self._fingerprint(), **self._state, "queue": [list(item) for item in self._state["queue"]]}

    def set_state(self, state: dict) -> None:
        expected = self._fingerprint()
        if "corpus_digest" not in state:
            log.warning("the saved data state predates corpus digests: cannot check that it belongs to this corpus")
            expected.pop("corpus_digest")
        mismatched = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if mismatched:
            raise ValueError(f"data state does not belong to this corpus/config (saved, now): {mismatched}")
        self._state = {k: state.get(k, 0) if k in _COUNTERS_ADDED_LATER else state[k] for k in self._state}
        self._state["queue"] = [list(item) for item in state["queue"]]

    @property
    def tokens_seen(self) -> int:
        """Real (non-pad) tokens of all global batches so far, contrastive and CLM."""
        return self._state["tokens_seen"]

    @property
    def step(self) -> int:
        return self._state["step"]

    @property
    def carried(self) -> int:
        """How many times a CLM example had to wait for a later step (0 when every step's examples fit)."""
        return self._state["carried"]

    @property
    def held_by_cap(self) -> int:
        """How many of those waits ``data.supervised_cap`` caused: the example had token room this step, so it
        would have been packed without the cap (0: the cap never kept an example out of a step it would have
        joined)."""
        return self._state["held_by_cap"]

    @property
    def row_break_targets(self) -> int:
        """Supervised targets lost where ``reference`` packing continued an example in a new row (0 with
        ``segments`` packing, which never splits an example)."""
        return self._state["row_break_targets"]

    # ------------------------------------------------------------------------------------------------ batches
    def __iter__(self):
        return self

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.corpus))}
        return self._permutations[epoch]

    def _draw_records(self) -> list[int]:
        """The next B record indices of the endless epoch stream; advances epoch/cursor."""
        drawn: list[int] = []
        while len(drawn) < self.batch_size:
            order = self._permutation(self._state["epoch"])
            take = order[self._state["cursor"]:self._state["cursor"] + self.batch_size - len(drawn)]
            drawn.extend(int(i) for i in take)
            self._state["cursor"] += len(take)
            if self._state["cursor"] == len(order):
                self._state["epoch"] += 1
                self._state["cursor"] = 0
        return drawn

    def _local(self, total: int) -> np.ndarray:
        """The step's items of this process's batch shards, shard after shard, in ``micro_batch_layout`` order."""
        per_shard = total // self.batch_shards
        order = micro_batch_layout(total, self.micro_batches, self.batch_shards)
        return np.concatenate([order[s * per_shard:(s + 1) * per_shard] for s in self.local_shards])

    def __next__(self) -> dict[str, np.ndarray]:
        records = self._draw_records()
        queue = self._state["queue"] + [[i, 0] for i in records if self._clm_lengths[i]]
        plan, left = self._plan(queue)
        held = self._held_by_cap(queue, left)
        lost = packing.row_break_targets(plan, self._clm_labels) if self.mode == "reference" else 0
        length = pick_bucket(max(self._sent_lengths[i] for i in records), self.buckets)
        batch = self._contrastive(records, length)
        batch.update(packing.fill_rows([plan[i] for i in self._local(self.rows)], self._clm_ids, self._clm_labels,
                                       seq_len=pick_bucket(packing.row_length(plan), self.row_lengths),
                                       pad_id=self.corpus.pad_id, one_segment_per_row=self.mode == "reference"))
        if self.supervised_cap:
            batch["clm_head_index"] = packing.head_index(batch["clm_weights"], self.group_rows,
                                                         pick_bucket(self._most_supervised(plan), self.head_slots))
        self._advance(records, plan, left, held, lost)
        return batch

    def _plan(self, queue: packing.Pending) -> tuple[list[list[packing.Span]], packing.Pending]:
        if self.mode == "reference":
            return packing.plan_stream(queue, self._clm_lengths, self.rows, self.seq_len)
        supervised = {"supervised": self._clm_supervised, "supervised_cap": self.supervised_cap,
                      "group_rows": self.group_rows}
        plan, left = packing.plan_segments(queue, self._clm_lengths, self.rows, self.seq_len, **supervised)
        if len(self.row_lengths) > 1:
            plan = packing.balance_rows(plan, self.seq_len, **supervised)
        return plan, left

    def _held_by_cap(self, queue: packing.Pending, left: packing.Pending) -> int:
        """How many of the waiting examples would have been packed this step without the supervised cap (first
        fit once more, on token room alone; only on steps where something waits, so it costs little)."""
        if not (self.supervised_cap and left):
            return 0
        _, uncapped = packing.plan_segments(queue, self._clm_lengths, self.rows, self.seq_len)
        return (collections.Counter(map(tuple, left)) - collections.Counter(map(tuple, uncapped))).total()

    def _most_supervised(self, plan: list[list[packing.Span]]) -> int:
        """The supervised positions of the plan's fullest group of rows (every process sees the global plan, so
        every process picks the same number of LM-head slots)."""
        rows = [sum(self._clm_supervised[example] for example, _, _ in spans) for spans in plan]
        return max(sum(rows[g:g + self.group_rows]) for g in range(0, len(rows), self.group_rows))

    def _contrastive(self, records: list[int], length: int) -> dict[str, np.ndarray]:
        """This process's part of the step's ``records``: their sentences, padded or packed, and ``sent_group``."""
        local = self._local(self.batch_size)
        batch = {"sent_group": sentence_groups([self._sentence_keys[i] for i in records])[local]}
        if self.cl_pack_rows:
            batch.update(self._packed_sentences(records, length))
            return batch
        for name in ("sent0", "sent1"):
            sequences = [getattr(self.corpus.examples[records[i]], f"{name}_ids") for i in local]
            batch[f"{name}_ids"], batch[f"{name}_mask"] = pad_right(sequences, length, self.corpus.pad_id)
        return batch

    def _packed_sentences(self, records: list[int], length: int) -> dict[str, np.ndarray]:
        """Each block of records (a data shard's part of a micro-batch, ``micro_batch_layout``) packed into the
        same number of rows, the fewest of ``data.cl_pack_rows`` that hold every block's sentences (planned for the
        global step, so every process picks the same); this process's blocks, in layout order."""
        block_count = self.batch_shards * self.micro_batches
        blocks = np.arange(self.batch_size).reshape(block_count, -1)     # block m * shards + d: micro-batch m, shard d
        examples = self.corpus.examples
        sentences = [([examples[records[i]].sent0_ids for i in block], [examples[records[i]].sent1_ids for i in block])
                     for block in blocks]
        return sentence_packing.pack_blocks(sentences, length, self.cl_pack_rows, self.corpus.pad_id,
                                            keep=self._local(block_count))

    def _advance(self, records: list[int], plan: list[list[packing.Span]], left: packing.Pending,
                 held: int, lost: int) -> None:
        examples = self.corpus.examples
        sent_tokens = sum(len(examples[i].sent0_ids) + len(examples[i].sent1_ids) for i in records)
        clm_tokens = sum(stop - start for spans in plan for _, start, stop in spans)
        state = self._state
        if len(left) > 2 * self.batch_size and len(state["queue"]) <= 2 * self.batch_size:
            log.warning("step %d: %d CLM examples wait for later steps (data.clm_rows=%d may be tight)",
                        state["step"], len(left), self.rows)
        if held and not state["held_by_cap"]:
            log.warning("step %d: data.supervised_cap=%d holds %d CLM examples for a later step that would fit the "
                        "rows' tokens (no token is lost, but the batches are no longer the uncapped ones; the run "
                        "summary counts every such wait)", state["step"], self.supervised_cap, held)
        if lost and not state["row_break_targets"]:
            log.warning("step %d: reference packing continued %d supervised example(s) in a new row, whose first "
                        "target nothing predicts (as in the reference); the run summary counts every such target",
                        state["step"], lost)
        waiting = sum(self._clm_lengths[i] - start for i, start in left)
        if waiting > MAX_QUEUED_STEPS * self.rows * self.seq_len:
            cap = f", or a larger data.supervised_cap={self.supervised_cap}" if self.supervised_cap else ""
            raise RuntimeError(
                f"step {state['step']}: {len(left)} CLM examples ({waiting} tokens, more than {MAX_QUEUED_STEPS} "
                f"steps of data.clm_rows={self.rows} x data.seq_len={self.seq_len}) wait in the carry queue: once "
                f"packed (first fit leaves gaps), the rows cannot keep up with train.batch_size={self.batch_size} "
                f"records a step; use more data.clm_rows or a smaller train.batch_size{cap}")
        state.update(step=state["step"] + 1, queue=left, tokens_seen=state["tokens_seen"] + sent_tokens + clm_tokens,
                     carried=state["carried"] + len(left), held_by_cap=state["held_by_cap"] + held,
                     row_break_targets=state["row_break_targets"] + lost)


def contrastive_tokens(batch: dict[str, np.ndarray]) -> tuple[int, int, int]:
    """(real tokens, positions computed, row length) of a host batch's contrastive sentences, padded or packed."""
    if "sent_ids" in batch:
        return int((batch["sent_segment_ids"] > 0).sum()), batch["sent_ids"].size, batch["sent_ids"].shape[1]
    real = int(batch["sent0_mask"].sum() + batch["sent1_mask"].sum())
    return real, batch["sent0_ids"].size + batch["sent1_ids"].size, batch["sent0_ids"].shape[1]


def make_batches(corpus: TokenizedCorpus, data_cfg: Any, train_cfg: Any, *, seed: int, batch_shards: int = 1,
                 local_shards: Sequence[int] | None = None) -> BatchIterator:
    """The trainer's entry point: an endless, resumable iterator of this process's local batch slices, laid out
    for ``batch_shards`` data shards (the mesh's data x fsdp size), of which this process holds ``local_shards``
    (``sharding.local_batch_shards``; None: all of them)."""
    return BatchIterator(corpus, data_cfg, train_cfg, seed=seed, batch_shards=batch_shards, local_shards=local_shards)


def to_global(host_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """This process's batch shards -> global arrays sharded over ('data', 'fsdp') along the batch axis.

    The global shape is given, not inferred: JAX's inference assumes no two processes hold the same shard."""
    sharding, held = batch_sharding(mesh), len(local_batch_shards(mesh))
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    return {k: jax.make_array_from_process_local_data(sharding, v, (v.shape[0] // held * shards,) + v.shape[1:])
            for k, v in host_batch.items()}
