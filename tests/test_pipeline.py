"""Packing by hand, and the batch pipeline on real tokenized Alpaca: counts, determinism, resume, multi-host slices."""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from tests.test_tokenize import alpaca_records, data_cfg, xlmr_tokenizer
from xalign_jax import sharding
from xalign_jax.data import packing, pipeline, sentence_packing, tokenize

PAD = 0


def hand_examples():
    """Three examples: ids are 10*example + position, labels mark the 'answer' tokens."""
    ids = [np.array([10, 11, 12], np.int32), np.array([20, 21, 22, 23], np.int32), np.array([30, 31], np.int32)]
    labels = [np.array([0, 1, 1], bool), np.array([0, 0, 1, 1], bool), np.array([1, 1], bool)]
    return ids, labels


def test_segment_packing_by_hand():
    ids, labels = hand_examples()
    plan, left = packing.plan_segments([[0, 0], [1, 0], [2, 0]], [3, 4, 2], rows=2, seq_len=6)
    assert plan == [[(0, 0, 3), (2, 0, 2)], [(1, 0, 4)]] and left == []   # first fit: example 2 back-fills row 0
    rows = packing.fill_rows(plan, ids, labels, seq_len=6, pad_id=PAD, one_segment_per_row=False)
    np.testing.assert_array_equal(rows["clm_ids"], [[10, 11, 12, 30, 31, 0], [20, 21, 22, 23, 0, 0]])
    np.testing.assert_array_equal(rows["clm_segment_ids"], [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(rows["clm_positions"], [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]])
    np.testing.assert_array_equal(rows["clm_targets"], [[11, 12, 0, 31, 0, 0], [21, 22, 23, 0, 0, 0]])
    np.testing.assert_array_equal(rows["clm_weights"], [[1, 1, 0, 1, 0, 0], [0, 1, 1, 0, 0, 0]])


def test_segment_packing_carries_what_does_not_fit():
    plan, left = packing.plan_segments([[0, 0], [1, 0], [2, 0]], [3, 4, 2], rows=1, seq_len=6)
    assert plan == [[(0, 0, 3), (2, 0, 2)]] and left == [[1, 0]]


def test_segment_packing_respects_a_supervised_cap_per_row():
    """Supervised counts 2, 2, 1 (labels[1:]); cap 3 per row: the third joins the first, or waits on one row."""
    ids, labels = hand_examples()
    counts = [int(x[1:].sum()) for x in labels]
    assert counts == [2, 2, 1]
    plan, left = packing.plan_segments([[0, 0], [1, 0], [2, 0]], [3, 4, 2], rows=2, seq_len=9, supervised=counts,
                                       supervised_cap=3)
    assert plan == [[(0, 0, 3), (2, 0, 2)], [(1, 0, 4)]] and left == []
    plan, left = packing.plan_segments([[0, 0], [1, 0], [2, 0]], [3, 4, 2], rows=1, seq_len=9, supervised=counts,
                                       supervised_cap=3)
    assert plan == [[(0, 0, 3), (2, 0, 2)]] and left == [[1, 0]]       # tokens would fit; supervision would not
    rows = packing.fill_rows(plan, ids, labels, seq_len=9, pad_id=PAD, one_segment_per_row=False)
    assert rows["clm_weights"].sum(axis=1).max() <= 3


def test_segment_packing_shares_the_supervised_cap_within_a_group_of_rows():
    """Cap 3 per group of 2 rows (counts 2, 2, 1): example 1 has token room in row 0 or 1 but not supervised room
    in their group, so it goes to the next group (row 2), or waits when there is none; token room stays per row."""
    queue, lengths, counts = [[0, 0], [1, 0], [2, 0]], [3, 4, 2], [2, 2, 1]
    plan, left = packing.plan_segments(queue, lengths, rows=4, seq_len=9, supervised=counts, supervised_cap=3,
                                       group_rows=2)
    assert plan == [[(0, 0, 3), (2, 0, 2)], [], [(1, 0, 4)], []] and left == []
    plan, left = packing.plan_segments(queue, lengths, rows=2, seq_len=9, supervised=counts, supervised_cap=3,
                                       group_rows=2)
    assert plan == [[(0, 0, 3), (2, 0, 2)], []] and left == [[1, 0]]     # deferred, not dropped
    plan, left = packing.plan_segments(queue, lengths, rows=2, seq_len=5, supervised=counts, supervised_cap=5,
                                       group_rows=2)
    assert plan == [[(0, 0, 3), (2, 0, 2)], [(1, 0, 4)]] and left == []  # one budget, each row its own tokens


def test_reference_stream_packing_by_hand():
    """One stream, one segment per row, positions across examples, the tail carried (the reference drops it)."""
    ids, labels = hand_examples()
    plan, left = packing.plan_stream([[0, 0], [1, 0], [2, 0]], [3, 4, 2], rows=1, seq_len=5)
    assert plan == [[(0, 0, 3), (1, 0, 2)]] and left == [[1, 2], [2, 0]]
    rows = packing.fill_rows(plan, ids, labels, seq_len=5, pad_id=PAD, one_segment_per_row=True)
    np.testing.assert_array_equal(rows["clm_ids"], [[10, 11, 12, 20, 21]])
    np.testing.assert_array_equal(rows["clm_segment_ids"], [[1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(rows["clm_positions"], [[0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(rows["clm_targets"], [[11, 12, 20, 21, 0]])
    np.testing.assert_array_equal(rows["clm_weights"], [[1, 1, 0, 0, 0]])
    assert packing.row_break_targets(plan, labels) == 0
    plan, left = packing.plan_stream(left, [3, 4, 2], rows=2, seq_len=3)     # next step: the tail, then padding
    assert plan == [[(1, 2, 4), (2, 0, 1)], [(2, 1, 2)]] and left == []
    rows = packing.fill_rows(plan, ids, labels, seq_len=3, pad_id=PAD, one_segment_per_row=True)
    np.testing.assert_array_equal(rows["clm_ids"], [[22, 23, 30], [31, 0, 0]])
    np.testing.assert_array_equal(rows["clm_segment_ids"], [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(rows["clm_weights"], [[1, 1, 0], [0, 0, 0]])     # 22 and 31 open their rows:
    assert packing.row_break_targets(plan, labels) == 2                           # nothing predicts them


def test_balance_rows_deals_a_steps_examples_evenly_by_hand():
    """Lengths 5, 4, 3, 2 in two rows of 9: first fit makes rows of 9 and 5; dealt longest first to the emptier
    row they make 7 and 7. A deal that a supervised cap would break, or that is no shorter, leaves the plan alone."""
    lengths = [5, 4, 3, 2]
    plan, left = packing.plan_segments([[0, 0], [1, 0], [2, 0], [3, 0]], lengths, rows=2, seq_len=9)
    assert plan == [[(0, 0, 5), (1, 0, 4)], [(2, 0, 3), (3, 0, 2)]] and left == []
    dealt = packing.balance_rows(plan, 9)
    assert dealt == [[(0, 0, 5), (3, 0, 2)], [(1, 0, 4), (2, 0, 3)]] and packing.row_length(dealt) == 7
    counts = [4, 0, 3, 0]     # cap 4 per row: examples 0 and 2 must not share a row, and the deal keeps them apart
    capped = packing.balance_rows(plan, 9, supervised=counts, supervised_cap=4)
    assert capped == dealt
    counts = [4, 4, 0, 0]     # first fit put 0 and 1 together under a group cap of 8 over both rows; fine dealt too
    assert packing.balance_rows(plan, 9, supervised=counts, supervised_cap=8, group_rows=2) == dealt
    counts = [4, 0, 0, 4]     # cap 4 per row: 3 cannot join 0, and row 1 has no token room left for it
    assert packing.balance_rows(plan, 9, supervised=counts, supervised_cap=4) == plan
    even = [[(0, 0, 5)], [(1, 0, 4)]]
    assert packing.balance_rows(even, 9) == even


@pytest.fixture(scope="module")
def corpus(shared_data):
    records = alpaca_records(shared_data, 300)
    return tokenize.tokenize_corpus(records, xlmr_tokenizer(), data_cfg(seq_len=128, cl_buckets=(16, 32, 64)))


def cfgs(packing_mode="segments", batch_size=8, clm_rows=8, micro_batches=1):
    data = data_cfg(seq_len=128, clm_rows=clm_rows, cl_buckets=(16, 32, 64), packing=packing_mode)
    train = ml_collections.ConfigDict(dict(batch_size=batch_size, micro_batches=micro_batches))
    return data, train


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def placed_spans(batch):
    """(row, segment) -> ids of every packed segment in a batch."""
    out = {}
    for r, (ids, seg) in enumerate(zip(batch["clm_ids"], batch["clm_segment_ids"])):
        for s in np.unique(seg[seg > 0]):
            out[(r, int(s))] = ids[seg == s]
    return out


@pytest.mark.parametrize("mode", ["segments", "reference"])
def test_batch_contract_shapes_and_dtypes(corpus, mode):
    data, train = cfgs(mode)
    batch = next(pipeline.make_batches(corpus, data, train, seed=0))
    length = batch["sent0_ids"].shape[1]
    assert length in (16, 32, 64)
    for name in ("sent0_ids", "sent0_mask", "sent1_ids", "sent1_mask"):
        assert batch[name].shape == (8, length) and batch[name].dtype == np.int32
    for name in ("clm_ids", "clm_positions", "clm_segment_ids", "clm_targets"):
        assert batch[name].shape == (8, 128) and batch[name].dtype == np.int32
    assert batch["clm_weights"].dtype == np.float32
    assert (batch["sent0_mask"].sum(1) > 0).all() and (batch["sent0_mask"][:, 0] == 1).all()   # right padded


def longest_answer(corpus) -> int:
    return max(int(e.clm_labels[1:].sum()) for e in corpus.examples if e.clm_labels is not None)


@pytest.mark.parametrize("group_rows", [None, 2])
def test_every_clm_example_is_packed_whole_exactly_once(corpus, group_rows):
    """Segments mode: each drawn record's CLM example appears once, unbroken, in some step; counts add up. Also
    under a supervised cap per group of rows (``group_rows``), which defers examples but never drops one."""
    data, train = cfgs(batch_size=16, clm_rows=12)       # tight rows: examples must be carried to later steps
    if group_rows:
        data.supervised_cap, data.supervised_group_rows = 3 * longest_answer(corpus) // 2, group_rows
    iterator = pipeline.make_batches(corpus, data, train, seed=3)
    seen = collections.Counter()
    steps = 40
    for _ in range(steps):
        batch = next(iterator)
        for ids in placed_spans(batch).values():
            seen[tuple(ids)] += 1
    state = iterator.get_state()
    assert iterator.carried > 0
    order = np.concatenate([np.random.default_rng([3, e]).permutation(len(corpus)) for e in range(state["epoch"] + 1)])
    drawn = collections.Counter(int(i) for i in order[:steps * 16] if corpus.examples[i].clm_ids is not None)
    waiting = collections.Counter(i for i, _ in state["queue"])    # a record drawn in two epochs may wait once
    placed = drawn - waiting
    want = collections.Counter()
    for i, times in placed.items():
        want[tuple(corpus.examples[i].clm_ids)] += times
    assert seen == want
    assert sum(seen.values()) + waiting.total() == drawn.total()


@pytest.mark.parametrize("group_rows", [1, 2, 4])
def test_supervised_cap_holds_on_every_group_and_nothing_is_lost(corpus, group_rows):
    """Real Alpaca examples under a tight cap per group of rows: no group ever exceeds it, every packed example keeps
    all of its supervised positions (the per-example weight sums match the tokenizer's labels), and with groups
    the shared budget binds, so examples wait in the queue (the accounting test above checks that they return)."""
    data, train = cfgs(batch_size=8, clm_rows=8)
    cap = longest_answer(corpus) * max(1, group_rows // 2)
    data.supervised_cap, data.supervised_group_rows = cap, group_rows
    iterator = pipeline.make_batches(corpus, data, train, seed=0)
    supervised = {tuple(e.clm_ids): int(e.clm_labels[1:].sum()) for e in corpus.examples if e.clm_ids is not None}
    for batch in take(iterator, 20):
        assert batch["clm_weights"].reshape(8 // group_rows, -1).sum(axis=1).max() <= cap
        for (row, segment), ids in placed_spans(batch).items():
            in_segment = batch["clm_segment_ids"][row] == segment
            assert batch["clm_weights"][row][in_segment].sum() == supervised[tuple(ids)]
    if group_rows > 1:       # a per-row cap of the longest answer barely binds on this data; a shared one does
        assert iterator.carried > 0


def test_only_the_waits_the_cap_causes_count_as_held_by_it(corpus, caplog):
    """Tight rows make examples wait with or without a cap. A cap that no row reaches holds nothing back: its
    batches carry the uncapped ones' examples. A binding cap (a pair of rows sharing one and a half longest
    answers) holds examples back, warns once, and counts every such wait. A state saved before the count existed
    still resumes."""
    data, train = cfgs(batch_size=16, clm_rows=12)
    uncapped = take(pipeline.make_batches(corpus, data, train, seed=3), 40)
    data.supervised_cap, data.supervised_group_rows = data.seq_len, 1
    loose = pipeline.make_batches(corpus, data, train, seed=3)
    for plain, capped in zip(uncapped, take(loose, 40)):
        np.testing.assert_array_equal(plain["clm_ids"], capped["clm_ids"])
    assert loose.carried > 0 and loose.held_by_cap == 0
    data.supervised_cap, data.supervised_group_rows = 3 * longest_answer(corpus) // 2, 2
    tight = pipeline.make_batches(corpus, data, train, seed=3)
    with caplog.at_level("WARNING", logger=pipeline.__name__):
        take(tight, 20)
    assert 0 < tight.held_by_cap <= tight.carried
    assert sum("data.supervised_cap" in r.getMessage() for r in caplog.records) == 1
    saved = tight.get_state()
    del saved["held_by_cap"], saved["row_break_targets"]
    resumed = pipeline.make_batches(corpus, data, train, seed=3)
    resumed.set_state(saved)
    assert resumed.held_by_cap == resumed.row_break_targets == 0 and resumed.carried == tight.carried


@pytest.mark.parametrize("batch_shards, micro_batches", [(1, 1), (2, 2)])
def test_packed_sentences_unpack_to_the_padded_ones(corpus, batch_shards, micro_batches):
    """``data.cl_pack_rows``: each block of records (a data shard's part of a micro-batch) packs its sentences into
    the same, fewest, number of rows of the step's bucket; unpacked, they are the padded layout's arrays, on every
    process's slice. Some steps need fewer rows than sentences, and every segment is one sentence, positions
    0..n-1."""
    data, train = cfgs(batch_size=32, clm_rows=24, micro_batches=micro_batches)
    padded = take(pipeline.make_batches(corpus, data, train, seed=4, batch_shards=batch_shards), 5)
    data.cl_pack_rows = (2, 4, 8, 12, 16, 20, 24)
    blocks, saved = batch_shards * micro_batches, 0
    for shards in [None] + [(s,) for s in range(batch_shards) if batch_shards > 1]:
        held = blocks // batch_shards * (len(shards) if shards else batch_shards)
        packed = take(pipeline.make_batches(corpus, data, train, seed=4, batch_shards=batch_shards,
                                            local_shards=shards), 5)
        for plain, ours in zip(padded, packed):
            local = np.concatenate([np.arange(len(plain["sent_group"])).reshape(batch_shards, -1)[s]
                                    for s in (shards or range(batch_shards))])
            unpacked = sentence_packing.unpack(ours, held, corpus.pad_id)
            for key in ("sent0_ids", "sent0_mask", "sent1_ids", "sent1_mask"):
                np.testing.assert_array_equal(unpacked[key], plain[key][local], err_msg=key)
            np.testing.assert_array_equal(ours["sent_group"], plain["sent_group"][local])
            assert pipeline.contrastive_tokens(ours)[0] == unpacked["sent0_mask"].sum() + unpacked["sent1_mask"].sum()
            assert ours["sent_ids"].shape[0] // held in data.cl_pack_rows + (2 * 32 // blocks,)
            assert ours["sent_ids"].shape[0] % held == 0 and ours["sent_ids"].shape[0] <= 2 * len(local)
            saved += 2 * len(local) - ours["sent_ids"].shape[0]
            segments, positions = ours["sent_segment_ids"], ours["sent_positions"]
            starts = (segments > 0) & (np.diff(segments, axis=1, prepend=0) != 0)
            assert (positions[starts] == 0).all() and (positions[segments == 0] == 0).all()
            assert starts.sum() == 2 * len(local)
    assert saved > 0


def test_rows_needed_packs_longest_first_within_the_row_length():
    assert sentence_packing.rows_needed([5, 9, 3, 7, 2], 10) == [[1], [3, 2], [0, 4]]
    assert sentence_packing.rows_needed([10, 10], 10) == [[0], [1]]


def test_head_slot_buckets_list_every_supervised_position(corpus):
    """Under a cap per group of 2 rows, ``clm_head_index`` lists each group's supervised positions in order, then
    -1; with ``head_slot_buckets`` its slots are the smallest bucket holding the step's most supervised group, and
    the rest of the batch is what it is without buckets; some steps do use fewer slots than the cap."""
    data, train = cfgs(batch_size=8, clm_rows=8)
    cap = 2 * longest_answer(corpus)
    data.supervised_cap, data.supervised_group_rows = cap, 2
    plain = pipeline.make_batches(corpus, data, train, seed=6)
    data.head_slot_buckets = (cap // 2, 3 * cap // 4)
    bucketed = pipeline.make_batches(corpus, data, train, seed=6)
    slots = collections.Counter()
    for _ in range(20):
        ours, theirs = next(bucketed), next(plain)
        assert theirs["clm_head_index"].shape == (4, cap)
        for key in theirs.keys() - {"clm_head_index"}:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
        index = ours["clm_head_index"]
        supervised = ours["clm_weights"].reshape(4, -1) > 0
        assert index.shape[1] == min(b for b in (cap // 2, 3 * cap // 4, cap) if supervised.sum(axis=1).max() <= b)
        slots[index.shape[1]] += 1
        for group, listed in zip(supervised, index):
            count = int(group.sum())
            np.testing.assert_array_equal(listed[:count], np.flatnonzero(group))
            assert (listed[count:] == -1).all()
    assert slots[cap] < 20, slots


def test_a_supervised_cap_that_cannot_work_is_refused(corpus):
    data, train = cfgs(batch_size=8, clm_rows=8)
    longest = longest_answer(corpus)
    data.supervised_cap = longest - 1
    with pytest.raises(ValueError, match=f"data.supervised_cap: {longest - 1} is below the {longest} supervised"):
        pipeline.make_batches(corpus, data, train, seed=0)
    data.supervised_cap, data.supervised_group_rows = longest, 8    # one budget for the 8 rows of a step
    with pytest.raises(ValueError, match="data.supervised_cap: 1 groups of data.supervised_group_rows = 8 rows"):
        pipeline.make_batches(corpus, data, train, seed=0)
    data.supervised_group_rows, data.packing = 1, "reference"
    with pytest.raises(ValueError, match="needs data.packing='segments'"):
        pipeline.make_batches(corpus, data, train, seed=0)


def test_reference_mode_streams_every_token_once(corpus, caplog):
    data, train = cfgs("reference", batch_size=8, clm_rows=5)
    iterator = pipeline.make_batches(corpus, data, train, seed=1)
    with caplog.at_level("WARNING", logger=pipeline.__name__):
        batches = take(iterator, 10)
    assert sum("whose first target nothing predicts" in r.getMessage() for r in caplog.records) == 1
    stream = np.concatenate([b["clm_ids"][b["clm_segment_ids"] > 0] for b in batches])
    order = np.random.default_rng([1, 0]).permutation(len(corpus))[:80]
    expected = np.concatenate([corpus.examples[i].clm_ids for i in order if corpus.examples[i].clm_ids is not None])
    pending = sum(corpus.examples[i].clm_ids.size - start for i, start in iterator.get_state()["queue"])
    np.testing.assert_array_equal(stream, expected[:expected.size - pending])
    positions = batches[0]["clm_positions"][0]
    np.testing.assert_array_equal(positions, np.arange(128))      # positions run across examples
    # every supervised token of the stream is a target, but those opening a row: the ones mid-example are counted
    labels = np.concatenate([corpus.examples[i].clm_labels for i in order if corpus.examples[i].clm_ids is not None])
    first = np.concatenate([np.arange(corpus.examples[i].clm_ids.size) == 0 for i in order
                            if corpus.examples[i].clm_ids is not None])
    row_sizes = [n for b in batches for n in (b["clm_segment_ids"] > 0).sum(axis=1) if n]
    opening = np.cumsum([0] + row_sizes[:-1])
    assert sum(b["clm_weights"].sum() for b in batches) == labels[:stream.size].sum() - labels[opening].sum()
    assert iterator.row_break_targets == (labels[opening] & ~first[opening]).sum() > 0


def test_row_length_buckets_trim_the_rows_and_keep_every_step_s_examples(shared_data):
    """With ``clm_len_buckets`` each step's rows take the smallest length holding its fullest (dealt) row; every
    step packs the same examples as without buckets, with their tokens, weights and positions, and the carry
    queue evolves identically; some steps do use a shorter length."""
    data = data_cfg(seq_len=256, clm_rows=4, cl_buckets=(16, 32, 64))
    corpus = tokenize.tokenize_corpus(alpaca_records(shared_data, 300), xlmr_tokenizer(), data)
    train = ml_collections.ConfigDict(dict(batch_size=8, micro_batches=1))
    plain = pipeline.make_batches(corpus, data, train, seed=4)
    data.clm_len_buckets = (128, 192)
    bucketed = pipeline.make_batches(corpus, data, train, seed=4)
    lengths = collections.Counter()
    for _ in range(20):
        ours, theirs = next(bucketed), next(plain)
        length = ours["clm_ids"].shape[1]
        lengths[length] += 1
        fullest = int((ours["clm_segment_ids"] > 0).sum(axis=1).max())
        assert length == min(b for b in (128, 192, 256) if fullest <= b)
        assert ours["clm_weights"].sum() == theirs["clm_weights"].sum()
        assert sorted(map(tuple, placed_spans(ours).values())) == sorted(map(tuple, placed_spans(theirs).values()))
        for row, segment in placed_spans(ours):
            in_segment = ours["clm_segment_ids"][row] == segment
            np.testing.assert_array_equal(ours["clm_positions"][row][in_segment], np.arange(in_segment.sum()))
        assert bucketed.get_state()["queue"] == plain.get_state()["queue"]
    assert lengths[128] + lengths[192] >= 5, lengths


def test_epochs_visit_every_record_once_across_step_boundaries(corpus):
    data, train = cfgs(batch_size=8)                      # 300 records: epochs end in the middle of a step
    batches = take(pipeline.make_batches(corpus, data, train, seed=5), 75)     # 600 records = two epochs
    seen = [tuple(ids[mask == 1]) for b in batches for ids, mask in zip(b["sent0_ids"], b["sent0_mask"])]
    every = collections.Counter(tuple(e.sent0_ids) for e in corpus.examples)
    assert collections.Counter(seen[:300]) == every and collections.Counter(seen[300:]) == every
    assert seen[:300] != seen[300:]                       # epoch 1 is reshuffled


@pytest.mark.parametrize("mode", ["segments", "reference"])
def test_deterministic_and_resume_gives_identical_batches(corpus, mode):
    data, train = cfgs(mode, batch_size=16, clm_rows=12)
    straight = take(pipeline.make_batches(corpus, data, train, seed=7), 30)
    assert_batches_equal(straight, take(pipeline.make_batches(corpus, data, train, seed=7), 30))
    first = pipeline.make_batches(corpus, data, train, seed=7)
    head = take(first, 10)
    while not first.get_state()["queue"]:                  # resume with examples waiting in the carry queue
        head.append(next(first))
    saved = json.loads(json.dumps(first.get_state()))        # through JSON, as the checkpoint stores it
    resumed = pipeline.make_batches(corpus, data, train, seed=7)
    resumed.set_state(saved)
    assert_batches_equal(straight, head + take(resumed, 30 - len(head)))
    assert resumed.tokens_seen == pipeline.make_batches(corpus, data, train, seed=7).tokens_seen + sum(
        int(b["sent0_mask"].sum() + b["sent1_mask"].sum() + (b["clm_segment_ids"] > 0).sum()) for b in straight)
    other = take(pipeline.make_batches(corpus, data, train, seed=8), 1)[0]
    assert not np.array_equal(other["clm_ids"], straight[0]["clm_ids"])


def test_state_from_another_config_is_refused(corpus):
    data, train = cfgs()
    state = pipeline.make_batches(corpus, data, train, seed=0).get_state()
    with pytest.raises(ValueError, match="seed"):
        pipeline.make_batches(corpus, data, train, seed=1).set_state(state)


@pytest.mark.parametrize("mode", ["segments", "reference"])
def test_process_slices_union_is_the_global_batch(corpus, mode):
    data, train = cfgs(mode, batch_size=16, clm_rows=12)
    whole = take(pipeline.make_batches(corpus, data, train, seed=2, batch_shards=2), 6)
    parts = [take(pipeline.make_batches(corpus, data, train, seed=2, batch_shards=2, local_shards=(p,)), 6)
             for p in range(2)]
    for step, batch in enumerate(whole):
        for key in batch:
            joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
            np.testing.assert_array_equal(joined, batch[key], err_msg=f"step {step} {key}")


def test_divisibility_and_capacity_errors_name_the_key(corpus):
    data, train = cfgs(batch_size=6, clm_rows=8)
    with pytest.raises(ValueError, match="train.batch_size: 6 is not divisible by data shards"):
        pipeline.make_batches(corpus, data, train, seed=0, batch_shards=4)
    with pytest.raises(ValueError, match=r"local_shards \(1, 1\)"):
        pipeline.make_batches(corpus, cfgs(batch_size=8, clm_rows=8)[0], train, seed=0, batch_shards=2,
                              local_shards=(1, 1))
    data, train = cfgs(batch_size=8, clm_rows=6, micro_batches=4)
    with pytest.raises(ValueError, match="data.clm_rows: 6"):
        pipeline.make_batches(corpus, data, train, seed=0)
    data, train = cfgs(batch_size=64, clm_rows=2)
    with pytest.raises(ValueError, match="data.clm_rows: 2 rows of 128 tokens cannot absorb"):
        pipeline.make_batches(corpus, data, train, seed=0)


def test_to_global_places_the_batch_on_the_mesh(corpus):
    data, train = cfgs(batch_size=8, clm_rows=8)
    batch = next(pipeline.make_batches(corpus, data, train, seed=0))
    mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    arrays = pipeline.to_global(batch, mesh)
    for key, value in batch.items():
        assert arrays[key].shape == value.shape
        assert len(arrays[key].sharding.device_set) == 8
        assert arrays[key].addressable_shards[0].data.shape[0] == value.shape[0] // 8
        np.testing.assert_array_equal(np.asarray(arrays[key]), value)


def synthetic_corpus(records: int = 64, seed: int = 0) -> tokenize.TokenizedCorpus:
    """Random ids of random lengths: enough to exercise slicing without loading a tokenizer in every process."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(records):
        ids = rng.integers(3, 1000, size=rng.integers(8, 60)).astype(np.int32)
        labels = np.arange(len(ids)) >= len(ids) // 2
        sent0, sent1 = (rng.integers(3, 1000, size=rng.integers(2, 30)).astype(np.int32) for _ in range(2))
        examples.append(tokenize.TokenizedExample(sent0, sent1, ids, labels))
    return tokenize.TokenizedCorpus(examples, tokenize.TokenizeReport(records=records), pad_id=0)


def two_process_worker(process_id: int, port: int, mesh_shape: tuple[int, int, int]) -> None:
    """One of two real JAX processes (4 CPU devices each): every addressable shard of the global batch built from
    this process's batch shards must equal the same rows of the single-process global batch. Under a (1, 1, 8)
    mesh the one batch shard spans both processes, which must then feed it the same rows."""
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    mesh = jax.make_mesh(mesh_shape, ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    corpus = synthetic_corpus()
    data, train = cfgs(batch_size=16, clm_rows=16)
    data.seq_len, data.cl_buckets = 64, (16, 32)
    shards = mesh_shape[0] * mesh_shape[1]
    local = pipeline.make_batches(corpus, data, train, seed=4, batch_shards=shards,
                                  local_shards=sharding.local_batch_shards(mesh))
    whole = pipeline.make_batches(corpus, data, train, seed=4, batch_shards=shards)
    checked = 0
    for _ in range(5):
        expected, arrays = next(whole), pipeline.to_global(next(local), mesh)
        for key, array in arrays.items():
            assert array.shape == expected[key].shape, key
            for shard in array.addressable_shards:
                np.testing.assert_array_equal(np.asarray(shard.data), expected[key][shard.index], err_msg=key)
                checked += 1
    print(f"process {process_id}: {checked} shards match")
    jax.distributed.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", ["4,2,1", "1,1,8"])
def test_two_real_processes_assemble_the_global_batch(tmp_path, mesh_shape):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    workers = [subprocess.Popen([sys.executable, __file__, str(i), str(port), mesh_shape], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    for i, (worker, output) in enumerate(zip(workers, outputs)):
        assert worker.returncode == 0, output[-3000:]
        assert f"process {i}: {5 * 10 * 4} shards match" in output    # 5 steps x 10 arrays x 4 local devices


if __name__ == "__main__":
    two_process_worker(int(sys.argv[1]), int(sys.argv[2]), tuple(int(n) for n in sys.argv[3].split(",")))


def test_a_carry_queue_that_packing_cannot_drain_stops_the_run():
    """60-token examples, 4 a step, 3 rows of 100: the average (240 <= 300) passes, but first fit packs one
    example a row, so the queue grows by one a step; the run stops with an error instead of starving it."""
    examples = [tokenize.TokenizedExample(np.arange(3, 10, dtype=np.int32), np.arange(3, 10, dtype=np.int32),
                                          np.arange(3, 63, dtype=np.int32), np.arange(60) >= 30) for _ in range(400)]
    corpus = tokenize.TokenizedCorpus(examples, tokenize.TokenizeReport(records=400), pad_id=PAD)
    data = data_cfg(seq_len=100, clm_rows=3, cl_buckets=(16,))
    train = ml_collections.ConfigDict(dict(batch_size=4, micro_batches=1))
    batches = pipeline.make_batches(corpus, data, train, seed=0)
    limit = pipeline.MAX_QUEUED_STEPS * 3 * 100 // 60        # examples the queue may hold
    take(batches, limit)
    assert len(batches.get_state()["queue"]) == limit
    with pytest.raises(RuntimeError, match=r"CLM examples \(2460 tokens, more than 8 steps of data.clm_rows=3 x "
                                           r"data.seq_len=100\) wait in the carry queue"):
        take(batches, 2)


def test_state_from_another_corpus_of_the_same_size_is_refused(corpus):
    data, train = cfgs()
    state = pipeline.make_batches(corpus, data, train, seed=0).get_state()
    shuffled = tokenize.TokenizedCorpus(corpus.examples[1:] + corpus.examples[:1], corpus.report, corpus.pad_id)
    with pytest.raises(ValueError, match="corpus_digest"):
        pipeline.make_batches(shuffled, data, train, seed=0).set_state(state)
    del state["corpus_digest"]                                # a state saved before digests: resumes, with a warning
    pipeline.make_batches(corpus, data, train, seed=0).set_state(state)


def test_pairs_sharing_a_sentence_share_a_group():
    """Directly or through a chain: (a, b), (e, a) and (b, x) are one group; (f, g) and (g, h) another."""
    pairs = [(b"a", b"b"), (b"c", b"d"), (b"e", b"a"), (b"f", b"g"), (b"g", b"h"), (b"b", b"x"), (b"y", b"z")]
    np.testing.assert_array_equal(pipeline.sentence_groups(pairs), [0, 1, 0, 3, 3, 0, 6])


def test_each_batch_groups_its_pairs_that_share_a_sentence():
    """Four copies of one English sentence among 32 records: whenever a step draws two of them, they share a
    group, and no other pairs do."""
    corpus = synthetic_corpus(records=32)
    shared = corpus.examples[0].sent0_ids
    for i in (9, 17, 25):
        corpus.examples[i] = dataclasses.replace(corpus.examples[i], sent0_ids=shared)
    data, train = cfgs(batch_size=8, clm_rows=8)
    data.seq_len, data.cl_buckets = 64, (16, 32)
    grouped = 0
    for batch in take(pipeline.make_batches(corpus, data, train, seed=5), 8):
        holds_shared = (batch["sent0_mask"].sum(1) == len(shared)) & np.all(
            batch["sent0_ids"][:, :len(shared)] == shared, axis=1)
        expected = np.where(holds_shared, np.argmax(holds_shared), np.arange(8))
        np.testing.assert_array_equal(batch["sent_group"], expected)
        grouped += int(holds_shared.sum() > 1)
    assert grouped > 0
