"""Contrastive sentences packed several to a row (``data.cl_pack_rows``) instead of one padded row each.

The longest sentence of a step sets its bucket, so the padded layout computes mostly padding: the main job's
sentences fill 34% of their positions (520 real tokens of 1,536 a step, all in the 64-token bucket). Packed, the
sentences of one block of records (a data shard's part of one micro-batch) share rows of the bucket's length:
each sentence is a segment (attention stays within it, positions restart at 0), so its hidden states, and the
vector pooled from them, are the padded layout's. The block's record ``i`` finds its sentences through
``sent0_row[i]``/``sent0_segment[i]`` (and ``sent1_*``), rows counted within the block, so that the train step
gathers them shard by shard.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

PACKED_KEYS = ("sent_ids", "sent_positions", "sent_segment_ids")
INDEX_KEYS = ("sent0_row", "sent0_segment", "sent1_row", "sent1_segment")


def rows_needed(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """First fit, longest first: the sentences (by index into ``lengths``) of each row, fewest rows this greedy
    finds; ties keep the sentences' order, so every process plans the same rows."""
    rows: list[list[int]] = []
    room: list[int] = []
    for sentence in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, left in enumerate(room) if left >= lengths[sentence]), None)
        if row is None:
            rows.append([])
            room.append(row_length)
            row = len(rows) - 1
        rows[row].append(sentence)
        room[row] -= lengths[sentence]
    return rows


def pack_blocks(blocks: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]], row_length: int,
                row_counts: Sequence[int], pad_id: int, keep: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Each block's ``(sent0, sent1)`` sentences packed into the same number of rows, the fewest of
    ``row_counts`` (increasing, the last always enough) that hold every block's, so that the blocks stack into
    one array; the blocks ``keep`` (default all), concatenated in that order. Planned over all blocks, so every
    process that keeps only its own picks the same row count."""
    plans = [rows_needed([len(s) for s in (*sent0, *sent1)], row_length) for sent0, sent1 in blocks]
    need = max(len(plan) for plan in plans)
    rows = next(count for count in row_counts if count >= need)
    packed = [pack_block(*blocks[k], plans[k], rows, row_length, pad_id)
              for k in (range(len(blocks)) if keep is None else keep)]
    return {key: np.concatenate([block[key] for block in packed]) for key in packed[0]}


def pack_block(sent0: Sequence[np.ndarray], sent1: Sequence[np.ndarray], plan: list[list[int]], rows: int,
               row_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """One block's [rows, row_length] packed arrays and its records' [n] row/segment indices; ``plan`` lists each
    row's sentences (``rows_needed`` over ``sent0 + sent1``), rows past the plan stay padding."""
    sentences = list(sent0) + list(sent1)
    out = {"sent_ids": np.full((rows, row_length), pad_id, np.int32),
           "sent_positions": np.zeros((rows, row_length), np.int32),
           "sent_segment_ids": np.zeros((rows, row_length), np.int32)}
    row_of, segment_of = np.zeros(len(sentences), np.int32), np.zeros(len(sentences), np.int32)
    for r, members in enumerate(plan):
        offset = 0
        for number, sentence in enumerate(members, start=1):
            ids = sentences[sentence]
            out["sent_ids"][r, offset:offset + len(ids)] = ids
            out["sent_positions"][r, offset:offset + len(ids)] = np.arange(len(ids))
            out["sent_segment_ids"][r, offset:offset + len(ids)] = number
            row_of[sentence], segment_of[sentence] = r, number
            offset += len(ids)
    n = len(sent0)
    out.update(sent0_row=row_of[:n], sent0_segment=segment_of[:n], sent1_row=row_of[n:], sent1_segment=segment_of[n:])
    return out


def unpack(batch: dict[str, np.ndarray], blocks: int, pad_id: int) -> dict[str, np.ndarray]:
    """A packed host batch's sentences back as the padded layout (``sent0_ids``/``sent0_mask``/``sent1_*``, right
    padded to the row length), for the reference recipe's collation and for tests; ``blocks`` is the number of
    record blocks the batch holds (its data shards x micro-batches)."""
    rows_per_block = batch["sent_ids"].shape[0] // blocks
    records_per_block = batch["sent0_row"].shape[0] // blocks
    length = batch["sent_ids"].shape[1]
    out = {}
    for side in ("sent0", "sent1"):
        row = batch[f"{side}_row"] + np.arange(len(batch[f"{side}_row"])) // records_per_block * rows_per_block
        member = batch["sent_segment_ids"][row] == batch[f"{side}_segment"][:, None]
        ids, mask = np.full((len(row), length), pad_id, np.int32), np.zeros((len(row), length), np.int32)
        for i, (r, keep) in enumerate(zip(row, member)):
            tokens = batch["sent_ids"][r][keep]
            ids[i, :len(tokens)], mask[i, :len(tokens)] = tokens, 1
        out[f"{side}_ids"], out[f"{side}_mask"] = ids, mask
    return out
