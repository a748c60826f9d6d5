"""Sequence packing: several sentence pairs per row of one fixed length, with segment ids.

    pack_pairs      first fit of pairs into rows of `row_length` source and target tokens, in
                    one pass over an order (the packing of the whole epoch once used)
    pack_epoch      an epoch cut into one chunk per batch by a cumulative token count, each
                    chunk packed into the batch's rows: first fit decreasing, vectorised
    packed_batch    rows of pairs -> arrays with segment ids (1, 2, ... per pair, 0 for padding)
                    and positions counted from 0 in each pair
    PackedBatches   random-access, infinite training batches of packed rows

One shape, one compilation, little padding. The model's segment masks keep attention inside
each pair (`flax_transformer.masks.segment_mask`).

Why chunks: packing the whole shuffled epoch in one pass makes the number of batches depend on
the shuffle, so finding the epoch of a step meant packing every earlier epoch. Cutting the epoch
into chunks by a cumulative count fixes the count: with a budget B = floor(fill * rows * length)
tokens per side per batch, pair i of the shuffled epoch goes to chunk (end_i - 1) // B, where
end_i = max(source tokens, target tokens) of pairs 0..i (each side counted with eos). end_i is
non-decreasing and ends at max(total source, total target) tokens, so there are
ceil(max(total source, total target) / B) chunks, every one non-empty (no pair is longer than
B), whatever the shuffle: `len(batches)` is known from the lengths alone, and step s is batch
s % len of epoch s // len. A chunk holds about B tokens on its longer side, so with fill < 1 it
nearly always fits its batch's rows; a pair that does not (first fit decreasing found no row)
goes to the first row, from the next batch on (cyclically), of the same epoch with room for it,
so every epoch still holds every pair once. Only when no row of the epoch has room does packing
raise ValueError (lower the fill).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from train.data.batching import (
    Batch,
    InfiniteBatches,
    TokenizedSplit,
    check_batch_tokens,
    check_process,
    epoch_rng,
    rows_for,
    shifted_right,
)

DEFAULT_FILL = 0.92
"""Of a batch's rows * length slots, the cost a chunk is cut at (see the module docstring)."""


def pack_pairs(
    lengths: np.ndarray, order: Sequence[int], row_length: int, open_rows: int = 16
) -> list[list[int]]:
    """Pack pairs into rows of `row_length` source and `row_length` target tokens.

    First fit over the `open_rows` most recently opened rows, in the given (shuffled) order: a
    pair goes to the first open row with room for both its sides, else it opens a new row (and
    the oldest open row is closed when more than `open_rows` are open). Returns the pair indices
    of each row. Linear time; rows end up nearly full for sentence-length data (the padding
    per mode: benchmarks/batching_benchmark.py).
    """
    rows: list[list[int]] = []
    room: list[list[int]] = []  # [source room, target room] of each open row
    open_ids: list[int] = []  # indices into rows of the open rows
    for pair in order:
        source_len, target_len = int(lengths[pair, 0]), int(lengths[pair, 1])
        if source_len > row_length or target_len > row_length:
            raise ValueError(
                f"pair {pair} ({source_len}, {target_len} tokens) does not fit a row of "
                f"{row_length}"
            )
        for slot, row_id in enumerate(open_ids):
            if room[slot][0] >= source_len and room[slot][1] >= target_len:
                rows[row_id].append(pair)
                room[slot][0] -= source_len
                room[slot][1] -= target_len
                break
        else:
            rows.append([pair])
            open_ids.append(len(rows) - 1)
            room.append([row_length - source_len, row_length - target_len])
            if len(open_ids) > open_rows:
                open_ids.pop(0)
                room.pop(0)
    return rows


def _packed_row(
    sequences: list[np.ndarray], length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate `sequences` into one row: (tokens, segment ids from 1, positions from 0)."""
    tokens = np.full(length, pad_id, np.int32)
    segments = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    offset = 0
    for segment, sequence in enumerate(sequences, start=1):
        end = offset + len(sequence)
        tokens[offset:end] = sequence
        segments[offset:end] = segment
        positions[offset:end] = np.arange(len(sequence))
        offset = end
    return tokens, segments, positions


def packed_batch(
    split: TokenizedSplit,
    rows: list[list[int]],
    num_rows: int,
    length: int,
    pad_id: int,
    bos_id: int,
) -> Batch:
    """Rows of pair indices -> a packed batch [num_rows, length] (filler rows are all padding)."""
    keys = (
        "source",
        "source_segment_ids",
        "source_positions",
        "decoder_input",
        "target",
        "target_segment_ids",
        "target_positions",
    )
    batch = {key: np.zeros((num_rows, length), np.int32) for key in keys}
    for key in ("source", "decoder_input", "target"):
        batch[key][:] = pad_id
    for row, pairs in enumerate(rows):
        targets = [split.targets[i] for i in pairs]
        source = _packed_row([split.sources[i] for i in pairs], length, pad_id)
        target = _packed_row(targets, length, pad_id)
        decoder_input = _packed_row([shifted_right(t, bos_id) for t in targets], length, pad_id)
        batch["source"][row], batch["source_segment_ids"][row], batch["source_positions"][row] = (
            source
        )
        batch["target"][row], batch["target_segment_ids"][row], batch["target_positions"][row] = (
            target
        )
        batch["decoder_input"][row] = decoder_input[0]
    return batch


class EpochPacking(NamedTuple):
    """An epoch's packing. Batch b's pairs are pairs[starts[b]:starts[b + 1]], sorted by row
    (rows[...] the row within the batch of each), in their order within the row."""

    pairs: np.ndarray  # int32 [num_pairs]
    rows: np.ndarray  # int32 [num_pairs]
    starts: np.ndarray  # int64 [num_batches + 1]
    moved: int  # pairs that did not fit their own chunk's rows and went to a later batch


def chunk_of(sides: np.ndarray, budget: int) -> np.ndarray:
    """The chunk of each pair of an ordered epoch ([pairs, 2] lengths): (the larger side's
    cumulative token count, up to and including the pair, - 1) // budget."""
    ends = np.cumsum(sides, axis=0, dtype=np.int64).max(axis=1)
    return (ends - 1) // budget


def chunk_count(lengths: np.ndarray, budget: int) -> int:
    """Chunks (batches) per epoch: ceil(max(total source, total target tokens) / budget)."""
    return -(-int(np.asarray(lengths).sum(axis=0, dtype=np.int64).max()) // budget)


def pack_epoch(
    lengths: np.ndarray, order: np.ndarray, *, rows: int, length: int, budget: int
) -> EpochPacking:
    """Pack the pairs of `order` (an epoch) into ceil(cost / budget) batches of `rows` rows of
    `length` source and target tokens (see the module docstring). `lengths`: [pairs, 2].

    Per chunk, first fit decreasing: pairs by decreasing cost (ties in epoch order), each to the
    first row with room for both sides. Vectorised over the chunks: one numpy pass per rank.
    """
    order = np.asarray(order, np.int64)
    sides = np.asarray(lengths)[order].astype(np.int32)  # [n, 2] in epoch order
    cost = sides.max(axis=1)
    if cost.max() > length:
        raise ValueError(f"a pair is {cost.max()} tokens long, longer than the row length {length}")
    chunk = chunk_of(sides, budget)
    num_chunks = int(chunk[-1]) + 1
    # Decreasing cost within each chunk; lexsort is stable, so ties keep the epoch order.
    by_rank = np.lexsort((-cost, chunk))
    starts = np.searchsorted(chunk, np.arange(num_chunks + 1))
    rank = np.arange(len(order)) - starts[chunk[by_rank]]
    sizes = np.diff(starts)
    room = np.full((num_chunks, rows, 2), length, np.int32)
    row_of = np.full(len(order), -1, np.int32)  # by epoch position
    for position in range(int(sizes.max())):
        active = np.flatnonzero(sizes > position)
        items = by_rank[starts[active] + position]  # epoch positions of this rank's pairs
        need = sides[items]  # [active, 2]
        fits = (room[active] >= need[:, None, :]).all(axis=2)  # [active, rows]
        first = fits.argmax(axis=1)
        placed = fits[np.arange(len(active)), first]
        room[active[placed], first[placed]] -= need[placed]
        row_of[items[placed]] = first[placed]
    sequence = np.empty(len(order), np.int64)
    sequence[by_rank] = rank
    batch_of = chunk.copy()
    flat_room = room.reshape(-1, 2)
    for item in np.flatnonzero(row_of < 0):  # rare: a chunk that did not fit its rows
        fits = (flat_room >= sides[item]).all(axis=1)
        start = (int(chunk[item]) + 1) % num_chunks * rows  # from the next batch on
        fits = np.roll(fits, -start)
        if not fits.any():
            raise ValueError(
                f"packing: no row of the epoch has room for a pair of {tuple(sides[item])} "
                f"tokens; use a lower fill than {budget / (rows * length):.2f}"
            )
        slot = (int(fits.argmax()) + start) % len(flat_room)
        flat_room[slot] -= sides[item]
        batch_of[item], row_of[item] = divmod(slot, rows)
        sequence[item] = len(order)  # after the row's own pairs
    final = np.lexsort((sequence, row_of, batch_of))
    return EpochPacking(
        pairs=order[final].astype(np.int32),
        rows=row_of[final],
        starts=np.searchsorted(batch_of[final], np.arange(num_chunks + 1)),
        moved=int((batch_of != chunk).sum()),
    )


def calibrated_fill(
    lengths: np.ndarray, *, rows: int, length: int, fill: float, seed: int, batches: int = 64
) -> float:
    """`fill`, lowered in steps of 0.02 until a random sample of about `batches` batches' worth
    of pairs packs with no pair moved (see the module docstring): long pairs in short rows
    (few pairs per row) leave more room unused, and a chunk must fit its rows."""
    lengths = np.asarray(lengths)
    mean = max(float(lengths.max(axis=1).mean()), 1.0)
    count = min(len(lengths), int(batches * rows * length / mean) + 1)
    sample = np.random.default_rng([seed, 2**32 - 1]).permutation(len(lengths))[:count]
    while fill > 0.1:
        budget = max(int(fill * rows * length), length)
        try:
            if pack_epoch(lengths, sample, rows=rows, length=length, budget=budget).moved == 0:
                return fill
        except ValueError:  # no room at all in the sample
            pass
        fill = round(fill - 0.02, 2)
    return fill


class PackedBatches(InfiniteBatches):
    """Several pairs per row of `length` tokens, `batch_tokens // length` rows per batch: each
    epoch cut into one chunk of the shuffled pairs per batch (see the module docstring).

    `len(batches)` = ceil(max(source tokens, target tokens) / budget), budget =
    floor(fill * rows * length): the same every epoch. `fill` is the one asked for, or lower
    where a sample of the data does not pack at it (`calibrated_fill`); `self.fill` is the one
    used. Holds the lengths and, for 2 epochs, their packing (about 16 bytes per pair).
    """

    def __init__(
        self,
        split: TokenizedSplit,
        *,
        batch_tokens: int,
        length: int,
        pad_id: int,
        bos_id: int,
        seed: int,
        row_multiple: int = 1,
        fill: float = DEFAULT_FILL,
        process_index: int = 0,
        process_count: int = 1,
    ) -> None:
        check_batch_tokens(batch_tokens, row_multiple)
        check_process(process_index, process_count)
        if not 0 < fill <= 1:
            raise ValueError(f"the packing fill must be in (0, 1], got {fill}")
        self.split, self.length = split, length
        self.rows = rows_for(batch_tokens, length, row_multiple)
        self.pad_id, self.bos_id, self.seed = pad_id, bos_id, seed
        self.process_index, self.process_count = process_index, process_count
        self._first, self._end = self._rows(self.rows)
        self._lengths = np.asarray(split.lengths)
        longest = int(self._lengths.max())
        if longest > length:
            raise ValueError(
                f"a pair is {longest} tokens long, longer than the packed row length {length}"
            )
        self.fill = calibrated_fill(
            self._lengths, rows=self.rows, length=length, fill=fill, seed=seed
        )
        self.budget = max(int(self.fill * self.rows * length), length)
        self._num_batches = chunk_count(self._lengths, self.budget)

    def __len__(self) -> int:
        return self._num_batches

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(self.rows, self.length)]

    @functools.lru_cache(maxsize=2)  # noqa: B019
    def _epoch(self, epoch: int) -> EpochPacking:
        order = epoch_rng(self.seed, epoch).permutation(len(self.split))
        return pack_epoch(
            self._lengths, order, rows=self.rows, length=self.length, budget=self.budget
        )

    def _batch(self, epoch: int, index: int) -> Batch:
        packing = self._epoch(epoch)
        span = slice(packing.starts[index], packing.starts[index + 1])
        pairs, rows = packing.pairs[span], packing.rows[span]
        mine = (rows >= self._first) & (rows < self._end)
        grouped: list[list[int]] = [[] for _ in range(self._end - self._first)]
        for pair, row in zip(pairs[mine].tolist(), rows[mine].tolist(), strict=True):
            grouped[row - self._first].append(pair)
        return packed_batch(
            self.split, grouped, self._end - self._first, self.length, self.pad_id, self.bos_id
        )
