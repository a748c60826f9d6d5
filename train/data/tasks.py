"""A training config's data, ready for the loop: vocabulary, training batches, evaluation batches.

    config.dataset = "number_words"   the built-in task (train.data.numbers), fixed 128-row batches
                   = "parallel_text"  your files: a directory of {split}.{language} files
                                      (config.data_path; e.g. ../shared/data/multi30k)
                   = "tfds"           a TFDS catalog translation dataset (config.tfds_name, e.g.
                                      "wmt14_translate/de-en"; downloads on first use)

Text datasets get a SentencePiece vocabulary shared by both languages, trained on the training
split's two sides on first use and stored in the workdir as `tokenizer.model` (a resumed or
evaluated run reads it back, so ids never change under a checkpoint), and token-budget batches
(`config.batching`: padded, bucketed or packed; see train.data.batching).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from train.data import batching, numbers, pipeline
from train.data.parallel_text import (
    catalog_translation_sources,
    prepare_parallel_text,
    split_data_sources,
)
from train.data.tokenizer import SentencePieceVocabulary

DATASETS = ("number_words", "parallel_text", "tfds")
TOKENIZERS = ("sentencepiece", "marian")
TOKENIZER_FILE = "tokenizer.model"
# An imported MarianMT model's tokenizer files (source.spm, target.spm, vocab.json) in a workdir.
MARIAN_TOKENIZER_DIR = "marian_tokenizer"
# Evaluation batches are padded to one of these lengths (few shapes: few compilations of the
# decoders, whose compile time dominates short evaluations).
EVAL_BUCKET_LENGTHS = (16, 32, 64, 128, 256, 512, 1024)


@dataclasses.dataclass
class EvalSplit:
    """An evaluation split: batches with "example_index", and the texts they index."""

    name: str
    batches: list[dict[str, np.ndarray]]
    sources: list[str]
    references: list[str]


@dataclasses.dataclass
class TaskData:
    vocabulary: Any
    train: Any  # random access: train[step] is the batch of that step
    validation: EvalSplit
    test: EvalSplit
    max_length: int  # the longest sequence (with eos) the batches hold
    summary: str  # one line per split, for the log


def data_dir(config: ml_collections.ConfigDict) -> str:
    return (
        config.data_dir
        or os.environ.get("TFDS_DATA_DIR")
        or os.path.expanduser("~/tensorflow_datasets")
    )


def _all(data_source: Sequence[Any]) -> list[Any]:
    return [e for _, examples in pipeline.read_in_chunks(data_source) for e in examples]


def eval_bucket_lengths(limit: int) -> list[int]:
    """The evaluation bucket lengths up to `limit` (the longest sentence accepted)."""
    return [length for length in EVAL_BUCKET_LENGTHS if length < limit] + [limit]


def text_sources(config: ml_collections.ConfigDict) -> dict[str, Sequence[Any]]:
    """{"train", "validation", "test": data source of {"source", "target"} pairs} for a text
    dataset (the config's split names mapped to these three roles)."""
    roles = {
        "train": config.train_split,
        "validation": config.validation_split,
        "test": config.test_split,
    }
    if config.dataset == "parallel_text":
        if not config.data_path:
            raise ValueError("config.dataset='parallel_text' needs config.data_path (a directory)")
        builder = prepare_parallel_text(
            config.data_path, config.source_language, config.target_language, data_dir(config)
        )
        sources = split_data_sources(builder)
    elif config.dataset == "tfds":
        if not config.tfds_name:
            raise ValueError(
                "config.dataset='tfds' needs config.tfds_name, e.g. 'wmt14_translate/de-en'"
            )
        sources = catalog_translation_sources(
            config.tfds_name,
            config.source_language,
            config.target_language,
            data_dir(config),
            splits=sorted(set(roles.values())),
        )
    else:
        raise ValueError(f"config.dataset must be one of {list(DATASETS)}, got {config.dataset!r}")
    missing = {role: split for role, split in roles.items() if split not in sources}
    if missing:
        raise ValueError(
            "the dataset has no split(s) "
            + ", ".join(f"{split!r} (config.{role}_split)" for role, split in missing.items())
            + f"; it has {sorted(sources)}"
        )
    return {role: sources[split] for role, split in roles.items()}


def load_vocabulary(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """The vocabulary a trained (or imported) run in `workdir` decodes with."""
    if config.dataset == "number_words":
        return numbers.number_words_vocabulary()
    if config.get("tokenizer", "sentencepiece") == "marian":
        from flax_transformer.interop.marian import MarianTokenizer

        return MarianTokenizer.from_directory(os.path.join(workdir, MARIAN_TOKENIZER_DIR))
    path = os.path.join(workdir, TOKENIZER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: the run's tokenizer is needed to evaluate it")
    return SentencePieceVocabulary.from_file(path)


def load_tokenizer(
    config: ml_collections.ConfigDict, workdir: str, train_source: Sequence[Any] | None
) -> Any:
    """The workdir's tokenizer; trained on both sides of `train_source` if there is none yet."""
    if config.get("tokenizer", "sentencepiece") == "marian":
        return load_vocabulary(config, workdir)
    path = os.path.join(workdir, TOKENIZER_FILE)
    if os.path.exists(path) or train_source is None:
        return SentencePieceVocabulary.load_or_train(
            path, [], vocab_size=config.tokenizer_vocab_size
        )
    count = len(train_source)
    limit = min(config.tokenizer_train_pairs or count, count)
    # An evenly spread subset when asked for one (deterministic); only those pairs are read.
    indices = np.unique(np.linspace(0, count - 1, limit).astype(np.int64))
    examples = [e for _, chunk in pipeline.read_in_chunks(train_source, indices) for e in chunk]
    texts = itertools.chain(
        (pipeline.text(e["source"]) for e in examples),
        (pipeline.text(e["target"]) for e in examples),
    )
    return SentencePieceVocabulary.load_or_train(
        path, list(texts), vocab_size=config.tokenizer_vocab_size
    )


def _eval_split(
    name: str,
    data_source: Sequence[Any],
    vocabulary: Any,
    *,
    batch_size: int,
    max_length: int,
) -> EvalSplit:
    examples = _all(data_source)
    tokenized = batching.tokenize_split(
        examples, vocabulary, max_length=max_length, drop_long=False
    )
    batches = batching.evaluation_batches(
        tokenized,
        batch_size=batch_size,
        bucket_lengths=eval_bucket_lengths(max_length),
        pad_id=vocabulary.pad_id,
        bos_id=vocabulary.bos_id,
    )
    return EvalSplit(
        name,
        batches,
        [pipeline.text(e["source"]) for e in examples],
        [pipeline.text(e["target"]) for e in examples],
    )


def _number_words(config: ml_collections.ConfigDict) -> TaskData:
    builder = numbers.prepare_number_words(data_dir(config))
    sources = {
        split: builder.as_data_source(split=split) for split in ("train", "validation", "test")
    }
    vocabulary = numbers.number_words_vocabulary()
    lengths = [pipeline.max_lengths(source, vocabulary) for source in sources.values()]
    source_len = max(length[0] for length in lengths)
    target_len = max(length[1] for length in lengths)
    train = pipeline.train_batches(
        sources["train"],
        vocabulary,
        batch_size=config.batch_size,
        source_len=source_len,
        target_len=target_len,
        seed=config.seed,
    )

    def evaluation(name: str) -> EvalSplit:
        batches = pipeline.eval_batches(
            sources[name],
            vocabulary,
            batch_size=config.eval_batch_size,
            source_len=source_len,
            target_len=target_len,
        )
        indexed = []
        for number in range(len(batches)):
            batch = dict(batches[number])
            rows = np.arange(config.eval_batch_size) + number * config.eval_batch_size
            batch["example_index"] = np.where(batch["example_mask"] == 1, rows, -1)
            indexed.append(batch)
        examples = _all(sources[name])
        return EvalSplit(
            name,
            indexed,
            [pipeline.text(e["source"]) for e in examples],
            [pipeline.text(e["target"]) for e in examples],
        )

    summary = ", ".join(f"{split} {len(source):,}" for split, source in sources.items())
    return TaskData(
        vocabulary,
        train,
        evaluation("validation"),
        evaluation("test"),
        max(source_len, target_len),
        f"number words: {summary} pairs; batches of {config.batch_size} pairs padded to "
        f"{source_len} source and {target_len} target tokens",
    )


def load_task(
    config: ml_collections.ConfigDict, workdir: str, *, row_multiple: int = 1
) -> TaskData:
    """Everything the training loop reads; see the module docstring."""
    if config.dataset == "number_words":
        return _number_words(config)
    sources = text_sources(config)
    vocabulary = load_tokenizer(config, workdir, sources["train"])
    train_split = batching.tokenize_split(
        sources["train"], vocabulary, max_length=config.max_length, drop_long=True
    )
    train = batching.make_train_batches(
        config.batching,
        train_split,
        batch_tokens=config.batch_tokens,
        max_length=config.max_length,
        pad_id=vocabulary.pad_id,
        bos_id=vocabulary.bos_id,
        seed=config.seed,
        row_multiple=row_multiple,
        pack_length=config.pack_length or None,
    )
    evaluation = {
        role: _eval_split(
            role,
            sources[role],
            vocabulary,
            batch_size=config.eval_batch_size,
            max_length=config.eval_max_length or config.model.max_len,
        )
        for role in ("validation", "test")
    }
    longest = max(
        config.max_length,
        *(max(b["source"].shape[1] for b in split.batches) for split in evaluation.values()),
    )
    summary = (
        f"{config.dataset} {config.source_language}->{config.target_language}: train "
        f"{len(train_split):,} pairs ({train_split.num_dropped:,} longer than "
        f"{config.max_length} tokens dropped), validation "
        f"{len(evaluation['validation'].sources):,}, test {len(evaluation['test'].sources):,}; "
        f"vocabulary {vocabulary.vocab_size:,} {config.get('tokenizer', 'sentencepiece')} ids; "
        f"{config.batching} batches of {config.batch_tokens:,} tokens, "
        f"{len(train):,} per epoch, shapes {train.shapes}"
    )
    return TaskData(
        vocabulary, train, evaluation["validation"], evaluation["test"], longest, summary
    )


def evaluation_split(
    config: ml_collections.ConfigDict, workdir: str, split: str
) -> tuple[Any, EvalSplit]:
    """(vocabulary, EvalSplit) of a trained run's "validation" or "test" split (the config's own
    split names, e.g. "test2016", work too). The vocabulary is the one in the workdir."""
    names = {config.validation_split: "validation", config.test_split: "test"}
    role = names.get(split, split)
    if role not in ("validation", "test"):
        raise ValueError(
            f"unknown split {split!r}: use 'validation' or 'test' (this run's are "
            f"{config.validation_split!r} and {config.test_split!r})"
        )
    if config.dataset == "number_words":
        task = _number_words(config)
        return task.vocabulary, getattr(task, role)
    vocabulary = load_vocabulary(config, workdir)
    source = text_sources(config)[role]
    evaluation = _eval_split(
        role,
        source,
        vocabulary,
        batch_size=config.eval_batch_size,
        max_length=config.eval_max_length or config.model.max_len,
    )
    return vocabulary, evaluation
