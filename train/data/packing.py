"""Sequence packing: several sentence pairs per row of one fixed length, with segment ids.

    pack_pairs      first fit of pairs into rows of `row_length` source and target tokens
    packed_batch    rows of pairs -> arrays with segment ids (1, 2, ... per pair, 0 for padding)
                    and positions counted from 0 in each pair
    PackedBatches   random-access, infinite training batches of packed rows

One shape, one compilation, almost no padding. The model's segment masks keep attention inside
each pair (`flax_transformer.masks.segment_mask`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from train.data.batching import (
    Batch,
    InfiniteBatches,
    TokenizedSplit,
    check_batch_tokens,
    epoch_rng,
    rows_for,
    shifted_right,
)


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


class PackedBatches(InfiniteBatches):
    """Several pairs per row of `length` tokens (see `pack_pairs`), `batch_tokens // length` rows.

    The number of batches per epoch depends on how well that epoch's shuffle packs, so finding
    the epoch of a step packs the epochs before it (the cost grows with the corpus and the
    epoch); the counts are remembered.
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
        open_rows: int = 16,
    ) -> None:
        check_batch_tokens(batch_tokens, row_multiple)
        self.split, self.length = split, length
        self.rows = rows_for(batch_tokens, length, row_multiple)
        self.pad_id, self.bos_id, self.seed, self.open_rows = pad_id, bos_id, seed, open_rows
        self._lengths = split.lengths
        if self._lengths.max() > length:
            raise ValueError(
                f"a pair is {self._lengths.max()} tokens long, longer than the packed row "
                f"length {length}"
            )
        self._epoch_sizes: list[int] = []  # batches in epoch 0, 1, ...

    @functools.lru_cache(maxsize=2)  # noqa: B019
    def _epoch_rows(self, epoch: int) -> list[list[int]]:
        order = epoch_rng(self.seed, epoch).permutation(len(self.split))
        return pack_pairs(self._lengths, order, self.length, self.open_rows)

    def _epoch_size(self, epoch: int) -> int:
        while len(self._epoch_sizes) <= epoch:
            rows = self._epoch_rows(len(self._epoch_sizes))
            self._epoch_sizes.append(-(-len(rows) // self.rows))
        return self._epoch_sizes[epoch]

    def __len__(self) -> int:
        """Batches in epoch 0 (later epochs differ by a batch or two)."""
        return self._epoch_size(0)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(self.rows, self.length)]

    def __getitem__(self, step: int) -> Batch:
        if step < 0:
            raise IndexError(f"step must be >= 0, got {step}")
        epoch, index = 0, int(step)
        while index >= self._epoch_size(epoch):
            index -= self._epoch_size(epoch)
            epoch += 1
        rows = self._epoch_rows(epoch)[index * self.rows : (index + 1) * self.rows]
        return packed_batch(self.split, rows, self.rows, self.length, self.pad_id, self.bos_id)
