"""Token-budget batches for translation: length filtering, length buckets and sequence packing.

Sentences vary in length (Multi30k: 3 to 70 SentencePiece tokens), so batches of a fixed number
of sentences padded to the longest one waste most of their compute on padding, and batches padded
to each batch's own longest sentence give a new shape, hence a new compilation, at almost every
step. The paper batches "by approximate sequence length", about 25,000 source and 25,000 target
tokens per batch (section 5.1). Here:

    tokenize_split      encode every pair once: source + [eos], target + [eos]; drop (and count)
                        the pairs longer than the length limit
    BucketedBatches     each pair goes to the shortest bucket length >= its longer side; a batch of
                        bucket length L has batch_tokens // L rows; every shape is one of a small
                        fixed set, so the train step compiles once per bucket
    PackedBatches       several pairs per row of one fixed length, with segment ids (1, 2, ... per
                        pair, 0 for padding) and positions counted from 0 in each pair: one shape,
                        one compilation, almost no padding. The model's segment masks keep
                        attention inside each pair (`flax_transformer.masks.segment_mask`).
    PaddedBatches       the naive baseline: a fixed number of rows, all padded to the longest pair

All three are random-access and infinite: `batches[step]` is a pure function of (data, seed, step),
so resuming needs only the step number. Pairs are reshuffled every epoch (epoch `e` is shuffled with
the seed sequence [seed, e]) and every epoch visits every kept pair exactly once; the last, partial
batch of an epoch (or of a bucket) is completed with all-pad filler rows, which carry no loss.

A batch is a dict of int32 arrays with the keys of `train.data.pipeline` ("source",
"decoder_input", "target"), plus "source_segment_ids", "target_segment_ids", "source_positions",
"target_positions" for packed batches.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from train.data.pipeline import Example, Vocabulary, encode_target, read_in_chunks, text

Batch = dict[str, np.ndarray]
BATCHING_MODES = ("padded", "bucketed", "packed")


# ---------------------------------------------------------------------------------------------
# Tokenizing and filtering
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TokenizedSplit:
    """Every kept pair of a split as token ids, each side ending with eos.

    `example_index[i]` is the position of pair i in the original data source (for references).
    """

    sources: list[np.ndarray]
    targets: list[np.ndarray]
    example_index: np.ndarray
    num_dropped: int  # pairs longer than the limit (0 when nothing was filtered)

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def lengths(self) -> np.ndarray:
        """[num_pairs, 2]: source and target length (with eos)."""
        return np.array([[len(s), len(t)] for s, t in zip(self.sources, self.targets, strict=True)])


def tokenize_split(
    data_source: Sequence[Example],
    vocabulary: Vocabulary,
    *,
    max_length: int,
    drop_long: bool = True,
    chunk_size: int = 4096,
) -> TokenizedSplit:
    """Encode every pair of `data_source`; pairs with a side longer than `max_length` tokens
    (with eos) are dropped and counted if `drop_long`, else they raise ValueError.

    Drop long pairs from training data (the model's positions and the batch shapes have a limit);
    never from evaluation data, where dropping would flatter the score.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a token and eos), got {max_length}")
    sources, targets, kept = [], [], []
    dropped = 0
    for indices, examples in read_in_chunks(data_source, chunk_size=chunk_size):
        for index, example in zip(indices, examples, strict=True):
            source = np.array([*vocabulary.encode(text(example["source"])), vocabulary.eos_id])
            target = np.array(
                [*encode_target(vocabulary, text(example["target"])), vocabulary.eos_id]
            )
            longest = max(len(source), len(target))
            if longest > max_length:
                if drop_long:
                    dropped += 1
                    continue
                side = "source" if len(source) > max_length else "target"
                raise ValueError(
                    f"example {index} has a {side} of {longest} tokens (with eos), longer than "
                    f"the limit of {max_length}: {text(example[side])[:200]!r}"
                )
            sources.append(source.astype(np.int32))
            targets.append(target.astype(np.int32))
            kept.append(index)
    if not sources:
        raise ValueError(
            f"no example is at most {max_length} tokens long ({dropped} dropped): nothing to batch"
        )
    return TokenizedSplit(sources, targets, np.array(kept, np.int64), dropped)


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------
def default_bucket_lengths(max_length: int, min_length: int = 8) -> tuple[int, ...]:
    """Bucket lengths up to `max_length`: steps of 8 up to 64, of 16 up to 128, then of 32.

    Padding waste stays under about 1/8 of a row while the number of shapes (compilations) stays
    small: 12 lengths cover 1..128, 16 cover 1..256.
    """
    lengths, length = [], min_length
    while length < max_length:
        lengths.append(length)
        length += 8 if length < 64 else 16 if length < 128 else 32
    lengths.append(max_length)
    return tuple(lengths)


def rows_for(batch_tokens: int, length: int, row_multiple: int = 1) -> int:
    """Rows of a batch of `length`-token rows within `batch_tokens`, a multiple of row_multiple
    (the device count, so that every batch splits evenly), at least row_multiple."""
    rows = (batch_tokens // length) // row_multiple * row_multiple
    return max(rows, row_multiple)


def _check_common(batch_tokens: int, row_multiple: int) -> None:
    if batch_tokens <= 0:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    if row_multiple <= 0:
        raise ValueError(f"row_multiple must be positive, got {row_multiple}")


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def _pad_rows(rows: list[np.ndarray], num_rows: int, length: int, pad_id: int) -> np.ndarray:
    batch = np.full((num_rows, length), pad_id, np.int32)
    for index, row in enumerate(rows):
        batch[index, : len(row)] = row
    return batch


def _decoder_input(target: np.ndarray, bos_id: int) -> np.ndarray:
    """[bos] + target without its final eos: the target shifted right by one."""
    return np.concatenate([[bos_id], target[:-1]]).astype(np.int32)


def _unpacked_batch(
    split: TokenizedSplit,
    indices: Sequence[int],
    num_rows: int,
    length: int,
    pad_id: int,
    bos_id: int,
) -> Batch:
    """Pairs `indices` as one row each, padded to [num_rows, length] with filler rows."""
    targets = [split.targets[i] for i in indices]
    return {
        "source": _pad_rows([split.sources[i] for i in indices], num_rows, length, pad_id),
        "decoder_input": _pad_rows(
            [_decoder_input(t, bos_id) for t in targets], num_rows, length, pad_id
        ),
        "target": _pad_rows(targets, num_rows, length, pad_id),
    }


class _InfiniteBatches:
    """Random access over an endless sequence of epochs of batches (see the module docstring)."""

    def __len__(self) -> int:
        """Batches per epoch (for bucketed and padded batches, the same every epoch)."""
        raise NotImplementedError

    def _epoch_batches(self, epoch: int) -> list[Batch]:
        raise NotImplementedError

    def __getitem__(self, step: int) -> Batch:
        if step < 0:
            raise IndexError(f"step must be >= 0, got {step}")
        epoch, index = divmod(int(step), len(self))
        return self._epoch_batches(epoch)[index]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Every (rows, length) a batch can have: the number of compilations of a train step."""
        raise NotImplementedError


class PaddedBatches(_InfiniteBatches):
    """The baseline: `batch_tokens // max_length` rows, every row padded to `max_length`."""

    def __init__(
        self,
        split: TokenizedSplit,
        *,
        batch_tokens: int,
        max_length: int,
        pad_id: int,
        bos_id: int,
        seed: int,
        row_multiple: int = 1,
    ) -> None:
        _check_common(batch_tokens, row_multiple)
        longest = int(split.lengths.max())
        if longest > max_length:
            raise ValueError(
                f"a pair is {longest} tokens long, longer than max_length {max_length}"
            )
        self.split, self.length = split, max_length
        self.rows = rows_for(batch_tokens, max_length, row_multiple)
        self.pad_id, self.bos_id, self.seed = pad_id, bos_id, seed
        self._num_batches = -(-len(split) // self.rows)

    def __len__(self) -> int:
        return self._num_batches

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(self.rows, self.length)]

    @functools.lru_cache(maxsize=2)  # noqa: B019 (two epochs live at a time; objects are few)
    def _epoch_batches(self, epoch: int) -> list[Batch]:
        order = _epoch_rng(self.seed, epoch).permutation(len(self.split))
        return [
            _unpacked_batch(self.split, chunk, self.rows, self.length, self.pad_id, self.bos_id)
            for chunk in np.array_split(order, np.arange(self.rows, len(order), self.rows))
        ]


class BucketedBatches(_InfiniteBatches):
    """Pairs grouped by length: a batch holds pairs of one bucket, padded to its length."""

    def __init__(
        self,
        split: TokenizedSplit,
        *,
        batch_tokens: int,
        bucket_lengths: Sequence[int],
        pad_id: int,
        bos_id: int,
        seed: int,
        row_multiple: int = 1,
    ) -> None:
        _check_common(batch_tokens, row_multiple)
        bucket_lengths = sorted(set(int(length) for length in bucket_lengths))
        longest = split.lengths.max(axis=1)
        if longest.max() > bucket_lengths[-1]:
            raise ValueError(
                f"a pair is {longest.max()} tokens long, longer than the longest bucket "
                f"({bucket_lengths[-1]})"
            )
        bucket_of = np.array([bisect.bisect_left(bucket_lengths, n) for n in longest])
        self.split = split
        self.pad_id, self.bos_id, self.seed = pad_id, bos_id, seed
        self.buckets = []  # (length, rows, pair indices) of each non-empty bucket
        for bucket, length in enumerate(bucket_lengths):
            members = np.flatnonzero(bucket_of == bucket)
            if len(members):
                rows = rows_for(batch_tokens, length, row_multiple)
                self.buckets.append((length, rows, members))
        self._num_batches = sum(-(-len(m) // rows) for _, rows, m in self.buckets)

    def __len__(self) -> int:
        return self._num_batches

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(rows, length) for length, rows, _ in self.buckets]

    @functools.lru_cache(maxsize=2)  # noqa: B019
    def _epoch_batches(self, epoch: int) -> list[Batch]:
        rng = _epoch_rng(self.seed, epoch)
        batches = []
        for length, rows, members in self.buckets:
            shuffled = rng.permutation(members)
            for start in range(0, len(shuffled), rows):
                chunk = shuffled[start : start + rows]
                batches.append(
                    _unpacked_batch(self.split, chunk, rows, length, self.pad_id, self.bos_id)
                )
        # Interleave the buckets: consecutive steps see different lengths.
        return [batches[i] for i in rng.permutation(len(batches))]


def pack_pairs(
    lengths: np.ndarray, order: Sequence[int], row_length: int, open_rows: int = 16
) -> list[list[int]]:
    """Pack pairs into rows of `row_length` source and `row_length` target tokens.

    First fit over the `open_rows` most recently opened rows, in the given (shuffled) order: a
    pair goes to the first open row with room for both its sides, else it opens a new row (and
    the oldest open row is closed when more than `open_rows` are open). Returns the pair indices
    of each row. Linear time; rows end up about 95-99% full for sentence-length data.
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
        decoder_input = _packed_row([_decoder_input(t, bos_id) for t in targets], length, pad_id)
        batch["source"][row], batch["source_segment_ids"][row], batch["source_positions"][row] = (
            source
        )
        batch["target"][row], batch["target_segment_ids"][row], batch["target_positions"][row] = (
            target
        )
        batch["decoder_input"][row] = decoder_input[0]
    return batch


class PackedBatches(_InfiniteBatches):
    """Several pairs per row of `length` tokens (see `pack_pairs`), `batch_tokens // length` rows.

    The number of batches per epoch depends on how well that epoch's shuffle packs, so finding
    the epoch of a step packs the epochs before it (a few hundred milliseconds each for
    Multi30k); the counts are remembered.
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
        _check_common(batch_tokens, row_multiple)
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
        order = _epoch_rng(self.seed, epoch).permutation(len(self.split))
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


def make_train_batches(
    mode: str,
    split: TokenizedSplit,
    *,
    batch_tokens: int,
    max_length: int,
    pad_id: int,
    bos_id: int,
    seed: int,
    row_multiple: int = 1,
    bucket_lengths: Sequence[int] | None = None,
    pack_length: int | None = None,
) -> _InfiniteBatches:
    """Training batches of `mode` ("padded", "bucketed" or "packed"); see the module docstring.

    `pack_length` (packed rows) defaults to `max_length`; `bucket_lengths` to
    `default_bucket_lengths(max_length)`.
    """
    common = dict(pad_id=pad_id, bos_id=bos_id, seed=seed, row_multiple=row_multiple)
    if mode == "padded":
        return PaddedBatches(split, batch_tokens=batch_tokens, max_length=max_length, **common)
    if mode == "bucketed":
        lengths = bucket_lengths or default_bucket_lengths(max_length)
        return BucketedBatches(split, batch_tokens=batch_tokens, bucket_lengths=lengths, **common)
    if mode == "packed":
        return PackedBatches(
            split, batch_tokens=batch_tokens, length=pack_length or max_length, **common
        )
    raise ValueError(f"batching mode must be one of {list(BATCHING_MODES)}, got {mode!r}")


def evaluation_batches(
    split: TokenizedSplit,
    *,
    batch_size: int,
    bucket_lengths: Sequence[int],
    pad_id: int,
    bos_id: int,
) -> list[Batch]:
    """Every pair of `split` once, sorted by length into batches of `batch_size` rows padded to a
    bucket length (decoding stops when a batch's longest output ends, so similar lengths decode
    faster; and there is one compilation per bucket). Each batch has "example_index" [rows]: the
    pair's index in the original data source, -1 for filler rows ("example_mask" 0).
    """
    bucket_lengths = sorted(set(bucket_lengths))
    longest = split.lengths.max(axis=1)
    if longest.max() > bucket_lengths[-1]:
        raise ValueError(
            f"a pair is {longest.max()} tokens long, longer than the longest bucket "
            f"({bucket_lengths[-1]})"
        )
    order = np.argsort(longest, kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        length = bucket_lengths[bisect.bisect_left(bucket_lengths, int(longest[chunk].max()))]
        batch = _unpacked_batch(split, chunk, batch_size, length, pad_id, bos_id)
        batch["example_index"] = np.full(batch_size, -1, np.int64)
        batch["example_index"][: len(chunk)] = split.example_index[chunk]
        batch["example_mask"] = (batch["example_index"] >= 0).astype(np.int32)
        batches.append(batch)
    return batches


def padding_fraction(batch: Batch, pad_id: int) -> float:
    """Fraction of the batch's source and target slots that are padding."""
    slots = batch["source"].size + batch["target"].size
    padding = np.sum(batch["source"] == pad_id) + np.sum(batch["target"] == pad_id)
    return float(padding / slots)
