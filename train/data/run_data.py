"""A run's data, ready for the loop: training batches and evaluation splits of token ids.

    sources (train.data.sources) -> token store (training split, train.data.token_store) or
    tokenize_split (evaluation splits, in memory) -> batches of config.batching:
        "examples"   FixedRowsBatches: config.batch_size pairs per batch, one shape
        "padded"     PaddedBatches: about config.batch_tokens tokens per side, one shape
        "bucketed"   BucketedBatches: a few bucket shapes
        "packed"     PackedBatches: several pairs per row, one shape

Every dataset goes through the same path; only the vocabulary differs (the caller brings it:
see `train.workdir.Workdir.vocabulary`). Evaluation batches follow the training batching:
fixed rows in data order for "examples", else sorted by length into a few bucket shapes.

The training split is tokenized once into a token store in `token_store_root(config)` and
memory-mapped from there by every later run, resume and process with the same data, tokenizer
and config.max_length; the batches read only the pairs of the step asked for.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from train.data import batching, token_store
from train.data.packing import DEFAULT_FILL, PackedBatches
from train.data.sources import DataSource, data_dir, dataset_of, read_texts
from train.data.vocabulary import Vocabulary

# The values of config.batching: a fixed number of pairs per batch, or a token budget.
TOKEN_BUDGET_MODES = ("padded", "bucketed", "packed")
BATCHING_MODES = ("examples", *TOKEN_BUDGET_MODES)
# Evaluation batches are padded to one of these lengths (few shapes: few compilations of the
# decoders, whose compile time dominates short evaluations).
EVAL_BUCKET_LENGTHS = (16, 32, 64, 128, 256, 512, 1024)


def eval_bucket_lengths(limit: int) -> list[int]:
    """The evaluation bucket lengths up to `limit` (the longest sentence accepted)."""
    return [length for length in EVAL_BUCKET_LENGTHS if length < limit] + [limit]


@dataclasses.dataclass
class EvalSplit:
    """An evaluation split: batches with "example_index", and the texts they index.

    `groups[i]`: the groups of example i (the dataset's `example_groups` of its source, e.g.
    ["digits_2", "below_1000"]) for exact match per group; None for a dataset without groups.
    """

    name: str
    batches: list[dict[str, np.ndarray]]
    sources: list[str]
    references: list[str]
    groups: list[list[str]] | None = None

    def first(self, count: int) -> EvalSplit:
        """The split limited to its first `count` examples (0: all): the batches holding them,
        with the other rows' "example_index" set to -1 (not decoded, not scored). The texts and
        groups stay whole: "example_index" indexes them."""
        if not count:
            return self
        batches = []
        for batch in self.batches:
            index = batch["example_index"]
            if (index[index >= 0] < count).any():
                batches.append({**batch, "example_index": np.where(index < count, index, -1)})
        return dataclasses.replace(self, batches=batches)


@dataclasses.dataclass
class RunData:
    train: Any  # random access: train[step] is the batch of that step
    validation: EvalSplit
    test: EvalSplit
    max_length: int  # the longest sequence (with eos) the batches hold
    summary: str  # one line for the log


def _eval_limit(config: ml_collections.ConfigDict) -> int:
    return config.eval_max_length or config.model.max_len


def _tokenized_eval(
    config: ml_collections.ConfigDict, role: str, source: DataSource, vocabulary: Vocabulary
) -> batching.TokenizedSplit:
    # Evaluation data is never filtered: an over-long sentence is an error, not a dropped pair.
    limit = _eval_limit(config)
    try:
        return batching.tokenize_split(source, vocabulary, max_length=limit, drop_long=False)
    except ValueError as error:
        field = "config.eval_max_length" if config.eval_max_length else "config.model.max_len"
        raise ValueError(f"the {role} split: {error} ({field} is {limit})") from None


def token_budget_batches(
    mode: str,
    split: batching.TokenizedSplit | token_store.TokenStore,
    *,
    max_length: int,
    pack_length: int | None = None,
    pack_fill: float = DEFAULT_FILL,
    **batch_args: Any,
) -> batching.InfiniteBatches:
    """Training batches of about `batch_tokens` tokens per side, of `mode` (TOKEN_BUDGET_MODES).

    `batch_args` are the batchers' common arguments (batch_tokens, pad_id, bos_id, seed,
    row_multiple, process_index, process_count). Padded rows are `max_length` long, packed rows
    `pack_length` (default `max_length`), cut at `pack_fill` (train.data.packing); buckets are
    `batching.default_bucket_lengths(max_length)`.
    """
    if mode == "padded":
        return batching.PaddedBatches(split, max_length=max_length, **batch_args)
    if mode == "bucketed":
        lengths = batching.default_bucket_lengths(max_length)
        return batching.BucketedBatches(split, bucket_lengths=lengths, **batch_args)
    if mode == "packed":
        length = pack_length or max_length
        return PackedBatches(split, length=length, fill=pack_fill, **batch_args)
    raise ValueError(f"batching mode must be one of {list(TOKEN_BUDGET_MODES)}, got {mode!r}")


def _train_batches(
    config: ml_collections.ConfigDict,
    split: token_store.TokenStore,
    vocabulary: Vocabulary,
    *,
    row_multiple: int,
    row_lengths: tuple[int, int] | None,
    process_index: int,
    process_count: int,
) -> batching.InfiniteBatches:
    shard = dict(process_index=process_index, process_count=process_count)
    if config.batching == "examples":
        source_length, target_length = row_lengths
        return batching.FixedRowsBatches(
            split,
            batch_size=config.batch_size,
            source_length=source_length,
            target_length=target_length,
            pad_id=vocabulary.pad_id,
            bos_id=vocabulary.bos_id,
            seed=config.seed,
            **shard,
        )
    return token_budget_batches(
        config.batching,
        split,
        batch_tokens=config.batch_tokens,
        max_length=config.max_length,
        pad_id=vocabulary.pad_id,
        bos_id=vocabulary.bos_id,
        seed=config.seed,
        row_multiple=row_multiple,
        pack_length=config.pack_length or None,
        pack_fill=config.get("pack_fill", DEFAULT_FILL),
        **shard,
    )


def _eval_batches(
    config: ml_collections.ConfigDict,
    split: batching.TokenizedSplit,
    vocabulary: Vocabulary,
    train_batches: Any = None,
) -> list[dict[str, np.ndarray]]:
    """Fixed rows in data order, of the training batches' shape, after fixed-row training;
    else sorted by length into bucket shapes."""
    if isinstance(train_batches, batching.FixedRowsBatches):
        return train_batches.evaluation_batches(split, config.eval_batch_size)
    return batching.evaluation_batches(
        split,
        batch_size=config.eval_batch_size,
        bucket_lengths=eval_bucket_lengths(_eval_limit(config)),
        pad_id=vocabulary.pad_id,
        bos_id=vocabulary.bos_id,
    )


def _eval_split(
    config: ml_collections.ConfigDict,
    name: str,
    source: DataSource,
    batches: list[dict[str, np.ndarray]],
) -> EvalSplit:
    """The split's batches with its texts, and each example's groups when `config`'s dataset
    has `example_groups`."""
    sources, references = read_texts(source)
    example_groups = dataset_of(config).example_groups
    groups = None if example_groups is None else [example_groups(s) for s in sources]
    return EvalSplit(name, batches, sources, references, groups)


def token_store_root(config: ml_collections.ConfigDict) -> str:
    """Where training splits' token stores live: config.token_store_dir, else "token_stores" in
    the TFDS data directory (`sources.data_dir`), beside the prepared datasets, so that every run
    on the same data and tokenizer, whatever its workdir, finds the same store."""
    return config.get("token_store_dir") or os.path.join(data_dir(config), "token_stores")


def training_store(
    config: ml_collections.ConfigDict,
    source: DataSource,
    vocabulary: Vocabulary,
    log: Callable[[str], None] | None = print,
) -> token_store.TokenStore:
    """The training split's token store (built on first use; see train.data.token_store)."""
    return token_store.open_or_build(
        source,
        vocabulary,
        max_length=config.max_length,
        root=token_store_root(config),
        workers=config.get("token_store_workers", 0),
        log=log,
    )


def training_data(
    config: ml_collections.ConfigDict,
    sources: Mapping[str, DataSource],
    vocabulary: Vocabulary,
    *,
    row_multiple: int = 1,
    process_index: int = 0,
    process_count: int = 1,
    log: Callable[[str], None] | None = print,
) -> RunData:
    """Training batches and the validation and test splits of `sources` ({role: source}).

    The training batches are this process's share of each global batch (rows [p * R / P,
    (p + 1) * R / P) for process p of P); the evaluation splits are whole. `log` gets one line
    about the token store (built, with its time, or reused).
    """
    train = training_store(config, sources["train"], vocabulary, log=log)
    held_out = {
        role: _tokenized_eval(config, role, sources[role], vocabulary)
        for role in ("validation", "test")
    }
    row_lengths = None
    if config.batching == "examples":  # one shape for every split: the longest side of any pair
        lengths = np.concatenate([split.lengths for split in (train, *held_out.values())])
        row_lengths = tuple(int(n) for n in lengths.max(axis=0))
    train_batches = _train_batches(
        config, train, vocabulary, row_multiple=row_multiple, row_lengths=row_lengths,
        process_index=process_index, process_count=process_count,
    )  # fmt: skip
    evaluation = {
        role: _eval_split(
            config, role, sources[role], _eval_batches(config, split, vocabulary, train_batches)
        )
        for role, split in held_out.items()
    }
    longest = max(
        config.max_length if row_lengths is None else max(row_lengths),
        *(max(b["source"].shape[1] for b in split.batches) for split in evaluation.values()),
    )
    summary = (
        f"{config.dataset}: train {len(train):,} pairs ({train.num_dropped:,} longer than "
        f"{config.max_length} tokens dropped), validation "
        f"{len(evaluation['validation'].sources):,}, test {len(evaluation['test'].sources):,}; "
        f"vocabulary {vocabulary.vocab_size:,} ids; {config.batching} batches "
        + (
            f"of {config.batch_size} pairs padded to {row_lengths[0]} source and "
            f"{row_lengths[1]} target tokens"
            if row_lengths
            else f"of {config.batch_tokens:,} tokens, {len(train_batches):,} per epoch, shapes "
            f"{train_batches.shapes}"
        )
    )
    return RunData(train_batches, evaluation["validation"], evaluation["test"], longest, summary)


def evaluation_split(
    config: ml_collections.ConfigDict, role: str, source: DataSource, vocabulary: Vocabulary
) -> EvalSplit:
    """One split for decoding and scoring (`python -m train.evaluate`): sorted by length into
    bucket shapes, whatever the training batching (decoded outputs do not depend on the batch)."""
    split = _tokenized_eval(config, role, source, vocabulary)
    return _eval_split(config, role, source, _eval_batches(config, split, vocabulary))


def sentence_batches(
    lines: Sequence[str], vocabulary: Vocabulary, *, batch_size: int, limit: int
) -> list[dict[str, np.ndarray]]:
    """Source sentences to translate -> evaluation batches ("example_index" = line number from
    0); empty lines are left out; the last batch has as few rows as a power of two allows
    (`evaluation_batches`' fit_last_batch). Raises ValueError for a line longer than `limit`
    tokens."""
    sources, kept = [], []
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        ids = np.array([*vocabulary.encode(line), vocabulary.eos_id], np.int32)
        if len(ids) > limit:
            raise ValueError(
                f"line {number} is {len(ids)} tokens long (with eos), longer than the model's "
                f"max_len={limit}: {line[:100]!r}"
            )
        sources.append(ids)
        kept.append(number - 1)
    if not sources:
        return []
    eos_only = [np.array([vocabulary.eos_id], np.int32)] * len(sources)
    split = batching.TokenizedSplit(sources, eos_only, np.array(kept), 0)
    return batching.evaluation_batches(
        split,
        batch_size=batch_size,
        bucket_lengths=eval_bucket_lengths(limit),
        pad_id=vocabulary.pad_id,
        bos_id=vocabulary.bos_id,
        fit_last_batch=True,
    )
