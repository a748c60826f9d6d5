"""Batches for translation: tokenize, then length buckets, fixed rows or (train.data.packing)
sequence packing.

Sentences vary in length (Multi30k: 3 to 70 SentencePiece tokens), so batches of a fixed number
of sentences padded to the longest one waste most of their compute on padding, and batches padded
to each batch's own longest sentence give a new shape, hence a new compilation, at almost every
step. The paper batches "by approximate sequence length", about 25,000 source and 25,000 target
tokens per batch (section 5.1). Here:

    tokenize_split      encode every pair of a (small) split in memory: source + [eos],
                        target + [eos]; drop (and count) the pairs longer than the length limit.
                        Training splits go to an on-disk store instead (train.data.token_store),
                        which the batchers read the same way
    BucketedBatches     each pair goes to the shortest bucket length >= its longer side; a batch of
                        bucket length L has batch_tokens // L rows; every shape is one of a small
                        fixed set, so the train step compiles once per bucket
    PaddedBatches       the naive baseline: a fixed number of rows, all padded to the longest pair
    FixedRowsBatches    `batch_size` pairs per batch padded to fixed source and target lengths
                        (the built-in number-words task)
    PackedBatches       several pairs per row of one fixed length (train.data.packing)

All are random-access and infinite: `batches[step]` is a pure function of (data, seed, step), so
resuming needs only the step number. Pairs are reshuffled every epoch and every epoch visits
every kept pair exactly once; the last, partial batch of an epoch (or of a bucket) is completed
with all-pad filler rows, which carry no loss.

Lazy: a batcher holds the per-pair lengths and, for the one or two epochs in use, per-pair index
arrays (a few bytes per pair); `batches[step]` reads only that step's pairs. Every epoch has the
same number of batches (`len(batches)`), so finding a step's epoch is a division and resuming at
any step costs what starting costs.

Processes: a batcher built with `process_index=p, process_count=P` returns from `batches[step]`
rows [p * R / P, (p + 1) * R / P) of the global batch of R rows (R must be a multiple of P),
building only those: concatenating the P processes' batches gives the global batch.

A batch is a dict of int32 arrays [rows, length], right-padded with the pad id:

    "source"         encode(source) + [eos]
    "decoder_input"  [bos] + encode(target): the target shifted right by one
    "target"         encode(target) + [eos]; the loss is taken where target != pad

plus "source_segment_ids", "target_segment_ids", "source_positions", "target_positions" for
packed batches, and "example_index" / "example_mask" for evaluation batches.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from train.data.sources import DataSource, read_in_chunks, text
from train.data.vocabulary import Vocabulary

Batch = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Tokenizing and filtering
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TokenizedSplit:
    """Every kept pair of a split as token ids, each side ending with eos, in memory.

    `example_index[i]` is the position of pair i in the original data source (for references).
    `train.data.token_store.TokenStore` offers the same attributes, read from disk; the batchers
    accept either ("a split").
    """

    sources: list[np.ndarray]
    targets: list[np.ndarray]
    example_index: np.ndarray
    num_dropped: int  # pairs longer than the limit (0 when nothing was filtered)

    def __len__(self) -> int:
        return len(self.sources)

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """int32 [num_pairs, 2]: source and target length (with eos)."""
        lengths = [[len(s), len(t)] for s, t in zip(self.sources, self.targets, strict=True)]
        return np.array(lengths, np.int32).reshape(-1, 2)


def tokenize_split(
    data_source: DataSource,
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
                [*vocabulary.encode_target(text(example["target"])), vocabulary.eos_id]
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


def check_batch_tokens(batch_tokens: int, row_multiple: int) -> None:
    if batch_tokens <= 0:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    if row_multiple <= 0:
        raise ValueError(f"row_multiple must be positive, got {row_multiple}")


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def check_process(process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, process_count) and process_count >= 1, got "
            f"process_index={process_index}, process_count={process_count}"
        )


def process_rows(rows: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[first, end) of this process's rows of a global batch of `rows` rows."""
    if rows % process_count:
        raise ValueError(
            f"a batch of {rows} rows does not split over {process_count} processes: make the "
            "row multiple (the global device count) a multiple of the process count"
        )
    share = rows // process_count
    return process_index * share, (process_index + 1) * share


def process_share(batch: Batch, process_index: int, process_count: int) -> Batch:
    """This process's rows (`process_rows`) of every array of a whole global host batch: for
    evaluation batches, which are small and built whole on every process (training batchers
    build only their share)."""
    check_process(process_index, process_count)
    first, end = process_rows(len(batch["target"]), process_index, process_count)
    return {key: value[first:end] for key, value in batch.items()}


def _pad_rows(rows: list[np.ndarray], num_rows: int, length: int, pad_id: int) -> np.ndarray:
    batch = np.full((num_rows, length), pad_id, np.int32)
    for index, row in enumerate(rows):
        batch[index, : len(row)] = row
    return batch


def shifted_right(target: np.ndarray, bos_id: int) -> np.ndarray:
    """[bos] + target without its final eos: the target shifted right by one."""
    return np.concatenate([[bos_id], target[:-1]]).astype(np.int32)


def unpacked_batch(
    split: TokenizedSplit,
    indices: Sequence[int],
    num_rows: int,
    length: int,
    pad_id: int,
    bos_id: int,
    target_length: int | None = None,
) -> Batch:
    """Pairs `indices` as one row each: "source" padded to [num_rows, length], "decoder_input"
    and "target" to [num_rows, target_length] (default `length`), with all-pad filler rows."""
    target_length = target_length or length
    targets = [split.targets[i] for i in indices]
    return {
        "source": _pad_rows([split.sources[i] for i in indices], num_rows, length, pad_id),
        "decoder_input": _pad_rows(
            [shifted_right(t, bos_id) for t in targets], num_rows, target_length, pad_id
        ),
        "target": _pad_rows(targets, num_rows, target_length, pad_id),
    }


class InfiniteBatches:
    """Random access over an endless sequence of epochs of batches (see the module docstring).

    Subclasses set `process_index`, `process_count` and implement `__len__`, `shapes` and
    `_batch(epoch, index)` (this process's rows of batch `index` of `epoch`).
    """

    process_index: int = 0
    process_count: int = 1

    def __len__(self) -> int:
        """Batches per epoch, the same every epoch."""
        raise NotImplementedError

    def _batch(self, epoch: int, index: int) -> Batch:
        raise NotImplementedError

    def __getitem__(self, step: int) -> Batch:
        if step < 0:
            raise IndexError(f"step must be >= 0, got {step}")
        epoch, index = divmod(int(step), len(self))
        return self._batch(epoch, index)

    def _rows(self, rows: int) -> tuple[int, int]:
        return process_rows(rows, self.process_index, self.process_count)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Every (rows, length) a batch can have: the number of compilations of a train step."""
        raise NotImplementedError


class FixedRowsBatches(InfiniteBatches):
    """`batch_size` pairs per batch, every row padded to the same source and target lengths.

    One shape, like `PaddedBatches`, but counted in pairs rather than tokens: the batching of
    the built-in number-words task (config.batching="examples"), whose sentences are short and
    alike. The order is grain's: the pair indices shuffled anew each epoch (epoch `e` with
    `seed + e`, grain's `MapDataset.shuffle`), batches cut from the endless stream of epochs (a
    batch may span an epoch boundary; no pair is dropped). grain's shuffle is itself lazy, so
    `batches[step]` costs the same at every step.
    """

    def __init__(
        self,
        split: TokenizedSplit,
        *,
        batch_size: int,
        source_length: int,
        target_length: int,
        pad_id: int,
        bos_id: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        check_process(process_index, process_count)
        longest_source, longest_target = np.asarray(split.lengths).max(axis=0)
        if longest_source > source_length or longest_target > target_length:
            raise ValueError(
                f"a pair is ({longest_source}, {longest_target}) tokens long, longer than the "
                f"rows ({source_length}, {target_length})"
            )
        self.split, self.batch_size = split, batch_size
        self.source_length, self.target_length = source_length, target_length
        self.pad_id, self.bos_id = pad_id, bos_id
        self.process_index, self.process_count = process_index, process_count
        self._first, self._end = self._rows(batch_size)
        # Shuffle before repeat: grain derives each epoch's permutation from the index (epoch =
        # index // len), so repeating a shuffled finite dataset reshuffles every epoch.
        indices = grain.MapDataset.range(len(split)).shuffle(seed=seed).repeat()
        self._indices = indices.batch(batch_size, drop_remainder=True)

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(self.batch_size, max(self.source_length, self.target_length))]

    def _padded(self, split: TokenizedSplit, indices: Sequence[int], num_rows: int) -> Batch:
        return unpacked_batch(
            split, indices, num_rows, self.source_length, self.pad_id, self.bos_id,
            target_length=self.target_length,
        )  # fmt: skip

    def __getitem__(self, step: int) -> Batch:
        if step < 0:
            raise IndexError(f"step must be >= 0, got {step}")
        indices = self._indices[int(step)][self._first : self._end]
        return self._padded(self.split, indices, self._end - self._first)

    def evaluation_batches(self, split: TokenizedSplit, batch_size: int) -> list[Batch]:
        """Every pair of `split` once, in order, in batches of `batch_size` rows of this shape
        (one compilation); the last batch is completed with filler rows. With "example_index"
        and "example_mask" as in `evaluation_batches`."""
        order = np.arange(len(split))
        chunks = np.array_split(order, np.arange(batch_size, len(order), batch_size))
        return [_indexed(self._padded(split, chunk, batch_size), split, chunk) for chunk in chunks]


class BucketedBatches(InfiniteBatches):
    """Pairs grouped by length: a batch holds pairs of one bucket, padded to its length.

    Epoch e: with `epoch_rng(seed, e)`, each bucket's pairs are permuted and cut into batches of
    the bucket's rows, then the batches of all buckets are permuted (consecutive steps see
    different lengths). Only the permutations are kept (4 bytes per pair), for 2 epochs.
    """

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
        process_index: int = 0,
        process_count: int = 1,
    ) -> None:
        check_batch_tokens(batch_tokens, row_multiple)
        check_process(process_index, process_count)
        bucket_lengths = sorted(set(int(length) for length in bucket_lengths))
        longest = np.asarray(split.lengths).max(axis=1)
        if longest.max() > bucket_lengths[-1]:
            raise ValueError(
                f"a pair is {longest.max()} tokens long, longer than the longest bucket "
                f"({bucket_lengths[-1]})"
            )
        bucket_of = np.searchsorted(bucket_lengths, longest, side="left")
        self.split = split
        self.pad_id, self.bos_id, self.seed = pad_id, bos_id, seed
        self.process_index, self.process_count = process_index, process_count
        self.buckets = []  # (length, rows, pair indices) of each non-empty bucket
        for bucket, length in enumerate(bucket_lengths):
            members = np.flatnonzero(bucket_of == bucket).astype(np.int32)
            if len(members):
                rows = rows_for(batch_tokens, length, row_multiple)
                self._rows(rows)  # raises if the rows do not split over the processes
                self.buckets.append((length, rows, members))
        self._num_batches = sum(-(-len(m) // rows) for _, rows, m in self.buckets)

    def __len__(self) -> int:
        return self._num_batches

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Every (rows, length) of a global batch: the number of compilations of a train step."""
        return [(rows, length) for length, rows, _ in self.buckets]

    @functools.lru_cache(maxsize=2)  # noqa: B019
    def _epoch(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """(each bucket's permuted pairs, [batches, 2] (bucket, first position) in step order)."""
        rng = epoch_rng(self.seed, epoch)
        shuffled, table = [], []
        for bucket, (_, rows, members) in enumerate(self.buckets):
            shuffled.append(rng.permutation(members))
            table += [(bucket, start) for start in range(0, len(members), rows)]
        # The same draws, in the same order, as when every batch was built up front.
        return shuffled, np.array(table, np.int64)[rng.permutation(len(table))]

    def _batch(self, epoch: int, index: int) -> Batch:
        shuffled, table = self._epoch(epoch)
        bucket, start = (int(value) for value in table[index])
        length, rows, _ = self.buckets[bucket]
        first, end = self._rows(rows)
        chunk = shuffled[bucket][start : start + rows][first:end]
        return unpacked_batch(self.split, chunk, end - first, length, self.pad_id, self.bos_id)


class PaddedBatches(BucketedBatches):
    """The baseline: one bucket, `max_length`: `batch_tokens // max_length` rows, every row padded
    to `max_length`, the pairs of a batch drawn from the whole shuffled epoch."""

    def __init__(self, split: TokenizedSplit, *, max_length: int, **batch_args: Any) -> None:
        longest = int(np.asarray(split.lengths).max())
        if longest > max_length:
            raise ValueError(
                f"a pair is {longest} tokens long, longer than max_length {max_length}"
            )
        super().__init__(split, bucket_lengths=[max_length], **batch_args)
        ((self.length, self.rows, _),) = self.buckets

    @functools.lru_cache(maxsize=2)  # noqa: B019
    def _order(self, epoch: int) -> np.ndarray:
        return epoch_rng(self.seed, epoch).permutation(len(self.split)).astype(np.int32)

    def _batch(self, epoch: int, index: int) -> Batch:
        first, end = self._rows(self.rows)
        chunk = self._order(epoch)[index * self.rows : (index + 1) * self.rows][first:end]
        return unpacked_batch(self.split, chunk, end - first, self.length, self.pad_id, self.bos_id)


def _indexed(batch: Batch, split: TokenizedSplit, chunk: np.ndarray) -> Batch:
    """`batch` with "example_index" (the pair's index in the data source, -1 for filler rows)
    and "example_mask" (1 for real rows)."""
    batch["example_index"] = np.full(len(batch["source"]), -1, np.int64)
    batch["example_index"][: len(chunk)] = split.example_index[chunk]
    batch["example_mask"] = (batch["example_index"] >= 0).astype(np.int32)
    return batch


def evaluation_batches(
    split: TokenizedSplit,
    *,
    batch_size: int,
    bucket_lengths: Sequence[int],
    pad_id: int,
    bos_id: int,
    fit_last_batch: bool = False,
) -> list[Batch]:
    """Every pair of `split` once, sorted by length into batches of `batch_size` rows padded to a
    bucket length (decoding stops when a batch's longest output ends, so similar lengths decode
    faster; and there is one compilation per bucket). Each batch has "example_index" [rows]: the
    pair's index in the original data source, -1 for filler rows ("example_mask" 0).

    `fit_last_batch`: the last batch has only the smallest power of two of rows (at most
    `batch_size`) that holds its pairs, so that translating one sentence decodes one row, not
    `batch_size` (at the cost of one compilation per such row count).
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
        rows = batch_size
        if fit_last_batch and start + batch_size >= len(order):
            rows = min(batch_size, 1 << (len(chunk) - 1).bit_length())
        batch = unpacked_batch(split, chunk, rows, length, pad_id, bos_id)
        batches.append(_indexed(batch, split, chunk))
    return batches


def padding_fraction(batch: Batch, pad_id: int) -> float:
    """Fraction of the batch's source and target slots that are padding."""
    slots = batch["source"].size + batch["target"].size
    padding = np.sum(batch["source"] == pad_id) + np.sum(batch["target"] == pad_id)
    return float(padding / slots)
