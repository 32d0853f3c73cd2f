"""Packing tokenized CLM examples into fixed [rows, seq_len] arrays: planning (which tokens go where) and filling.

Planning works on lengths only, so every process can plan the GLOBAL step identically and cheaply, then fill only
its own rows. A plan row is a list of ``(example, start, stop)`` token spans.

Two modes (``data.packing``):
  * ``segments`` (default): whole examples placed first-fit in queue order; each example is its own segment (ids
    1..n per row, 0 = padding), positions restart at 0, attention never crosses segments, and the last token of a
    segment predicts nothing. Examples that fit no row this step stay in the queue for the next one. With a
    ``supervised_cap`` each group of ``group_rows`` consecutive rows also takes at most that many supervised
    (loss-carrying) positions in all, so that the loss can gather them into a static [rows / group_rows, cap]
    buffer and project only those onto the vocabulary. A group of several rows pools the rows' budgets: one long
    answer may fill most of a row while its neighbour holds prompts, which a per-row cap cannot exploit.
  * ``reference``: AFP_SPEC §1.3/§7.8, the reference's ``group_texts``: the queue is one token stream cut into rows;
    one segment per row, positions run across examples, an example may continue in the next row. Unlike the
    reference, the remainder that does not fill a row is not dropped: it carries over to the next step (the last
    row of a step is padded when the stream runs dry, which under causal attention equals the reference's shorter
    row). As in the reference, nothing predicts a row's first token: where an example continues into a new row,
    that token's target is lost (``row_break_targets`` counts them, the pipeline logs and sums them).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

PACKING_MODES = ("segments", "reference")
Span = tuple[int, int, int]          # (example index, first token, one past the last token)
Pending = list[list[int]]            # the carry queue: [example index, first token not yet packed]


def _group_supervised_room(rows: int, seq_len: int, supervised_cap: int, group_rows: int) -> list[int]:
    """Each group of ``group_rows`` rows' room for supervised positions: the cap, or every token when uncapped."""
    return [supervised_cap if supervised_cap else group_rows * seq_len] * -(-rows // group_rows)


def plan_segments(queue: Pending, lengths: Sequence[int], rows: int, seq_len: int, *,
                  supervised: Sequence[int] | None = None, supervised_cap: int = 0,
                  group_rows: int = 1) -> tuple[list[list[Span]], Pending]:
    """First-fit in queue order: each whole example goes to the first row with room for its tokens and, when
    ``supervised_cap`` is set, whose group (rows ``r`` with the same ``r // group_rows``) still has room for its
    supervised positions (``supervised[e]`` is example e's count); the rest stays queued."""
    plan: list[list[Span]] = [[] for _ in range(rows)]
    room = [seq_len] * rows
    supervised_room = _group_supervised_room(rows, seq_len, supervised_cap, group_rows)
    left: Pending = []
    for example, start in queue:
        size = lengths[example] - start
        weight = supervised[example] if supervised_cap else 0
        row = next((r for r in range(rows) if room[r] >= size and supervised_room[r // group_rows] >= weight), None)
        if row is None:
            left.append([example, start])
            continue
        plan[row].append((example, start, lengths[example]))
        room[row] -= size
        supervised_room[row // group_rows] -= weight
    return plan, left


def row_length(plan: Sequence[Sequence[Span]]) -> int:
    """Tokens in the plan's fullest row."""
    return max((sum(stop - start for _, start, stop in row) for row in plan), default=0)


def balance_rows(plan: Sequence[Sequence[Span]], seq_len: int, *,
                 supervised: Sequence[int] | None = None, supervised_cap: int = 0,
                 group_rows: int = 1) -> list[list[Span]]:
    """The same examples dealt anew over the plan's rows, longest first, each to the emptiest row that takes it
    (rows' tokens within ``seq_len``, groups' supervised positions within ``supervised_cap``), so that the longest
    row, which sets the step's row length (``data.clm_len_buckets``), is as short as this greedy deal makes it.

    First fit fills row 0 before row 1: 418 tokens in two rows of 256 become 256 + 162, which no row-length bucket
    below 256 holds; dealt, they become about 209 + 209. Which examples the step takes is first fit's choice, so the
    carry queue and the data a step trains on do not change; only their placement does (segments never attend to
    each other and their positions restart, so the loss is the same). Where the deal cannot place an example, or
    its longest row is not shorter, the plan comes back unchanged."""
    spans = sorted((span for row in plan for span in row), key=lambda s: (s[1] - s[2], s[0]))
    rows = len(plan)
    dealt: list[list[Span]] = [[] for _ in range(rows)]
    fill = [0] * rows
    supervised_room = _group_supervised_room(rows, seq_len, supervised_cap, group_rows)
    for example, start, stop in spans:
        weight = supervised[example] if supervised_cap else 0
        fits = [r for r in range(rows) if fill[r] + stop - start <= seq_len
                and supervised_room[r // group_rows] >= weight]
        if not fits:
            return [list(row) for row in plan]
        row = min(fits, key=lambda r: (fill[r], r))
        dealt[row].append((example, start, stop))
        fill[row] += stop - start
        supervised_room[row // group_rows] -= weight
    return dealt if max(fill, default=0) < row_length(plan) else [list(row) for row in plan]


def plan_stream(queue: Pending, lengths: Sequence[int], rows: int, seq_len: int) -> tuple[list[list[Span]], Pending]:
    """The reference's concatenation: fill rows in order from one stream; a split example's tail stays queued."""
    plan: list[list[Span]] = [[] for _ in range(rows)]
    row, room = 0, seq_len
    for position, (example, start) in enumerate(queue):
        while start < lengths[example]:
            if row == rows:
                return plan, [[example, start]] + [list(item) for item in queue[position + 1:]]
            take = min(room, lengths[example] - start)
            plan[row].append((example, start, start + take))
            start, room = start + take, room - take
            if room == 0:
                row, room = row + 1, seq_len
    return plan, []


def row_break_targets(plan: Sequence[Sequence[Span]], labels: Sequence[np.ndarray]) -> int:
    """Supervised tokens that open a row in the middle of their example (``plan_stream``): no token before them in
    their row predicts them, so their targets are lost, as in the reference's ``group_texts`` blocks."""
    return sum(1 for row in plan if row and row[0][1] > 0 and labels[row[0][0]][row[0][1]])


def fill_rows(plan: Sequence[Sequence[Span]], ids: Sequence[np.ndarray], labels: Sequence[np.ndarray], *,
              seq_len: int, pad_id: int, one_segment_per_row: bool) -> dict[str, np.ndarray]:
    """clm_ids/positions/segment_ids/targets/weights [rows, seq_len] for a plan (shifted targets within segments)."""
    rows = len(plan)
    out = {"clm_ids": np.full((rows, seq_len), pad_id, np.int32),
           "clm_positions": np.zeros((rows, seq_len), np.int32),
           "clm_segment_ids": np.zeros((rows, seq_len), np.int32),
           "clm_targets": np.full((rows, seq_len), pad_id, np.int32),
           "clm_weights": np.zeros((rows, seq_len), np.float32)}
    for r, spans in enumerate(plan):
        segments = _segments(spans, ids, labels, one_segment_per_row)
        offset = 0
        for number, (seg_ids, seg_labels) in enumerate(segments, start=1):
            end = offset + len(seg_ids)
            out["clm_ids"][r, offset:end] = seg_ids
            out["clm_positions"][r, offset:end] = np.arange(len(seg_ids))
            out["clm_segment_ids"][r, offset:end] = number
            out["clm_targets"][r, offset:end - 1] = seg_ids[1:]
            out["clm_weights"][r, offset:end - 1] = seg_labels[1:]
            offset = end
    return out


def head_index(weights: np.ndarray, group_rows: int, slots: int) -> np.ndarray:
    """[R, T] loss weights -> int32 [R / group_rows, slots]: each group's supervised positions (its rows laid end
    to end), in order, then -1 in the slots left over. The train step gathers the LM head's inputs at these
    positions (``objectives.gather_supervised``), so the number of slots, a shape, is chosen here per step."""
    grouped = weights.reshape(weights.shape[0] // group_rows, -1) > 0
    index = np.full((grouped.shape[0], slots), -1, np.int32)
    for group, supervised in enumerate(grouped):
        positions = np.flatnonzero(supervised)
        if len(positions) > slots:
            raise ValueError(f"group {group} of {group_rows} CLM rows holds {len(positions)} supervised positions, "
                             f"more than its {slots} LM-head slots")
        index[group, :len(positions)] = positions
    return index


def _segments(spans: Sequence[Span], ids, labels, one_segment_per_row: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    pieces = [(ids[e][a:b], labels[e][a:b]) for e, a, b in spans]
    if one_segment_per_row and pieces:
        return [(np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces]))]
    return pieces
