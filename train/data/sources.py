"""The dataset registry: `config.dataset` -> random-access sources of sentence pairs, per split.

    "number_words"   the built-in task (train.data.numbers): digits -> English words, generated
                     locally, with its own fixed word vocabulary
    "parallel_text"  your files: a directory of {split}.{language} files (config.data_path;
                     e.g. ../shared/data/multi30k), see train.data.parallel_text
    "tfds"           a TFDS catalog translation dataset (config.tfds_name, e.g.
                     "wmt14_translate/de-en"; downloads on first use), see train.data.catalog

A data source is any random-access sequence of `{"source": ..., "target": ...}` examples whose
values are UTF-8 `bytes` (TFDS ArrayRecord files, read by `array_record` without TensorFlow) or
`str` (plain lists in tests). Every dataset is read through the same three roles, "train",
"validation" and "test", which `config.train_split`, `config.validation_split` and
`config.test_split` map to the dataset's own split names (Multi30k's "val", "test2016").

This is the only place that knows which datasets exist; everything downstream (tokenizing,
batching, evaluation) treats them alike. A dataset either has a fixed vocabulary (number words)
or is tokenized by the run's SentencePiece model, trained on its training split.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ml_collections

Example = Mapping[str, bytes | str]
DataSource = Sequence[Example]
ROLES = ("train", "validation", "test")


def text(value: bytes | str) -> str:
    """A text feature as str: TFDS data sources return bytes (UTF-8); lists in tests hold str."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _read(data_source: DataSource, indices: Sequence[int]) -> list[Example]:
    """The examples at `indices`, in one batched read when the source offers `__getitems__`.

    Why: an ArrayRecord read call costs time proportional to the number of records in the file,
    whatever the number of records it returns; reading many in one call amortises that cost.
    """
    indices = [int(index) for index in indices]
    read_many = getattr(data_source, "__getitems__", None)
    if read_many is not None:
        return list(read_many(indices))
    return [data_source[index] for index in indices]


def read_in_chunks(
    data_source: DataSource, indices: Sequence[int] | None = None, chunk_size: int = 4096
) -> Iterator[tuple[list[int], list[Example]]]:
    """Yields (indices, examples) for `indices` (default: the whole source, in order), reading
    `chunk_size` examples per call (see `_read`): the way to scan a split."""
    if indices is None:
        indices = range(len(data_source))
    indices = [int(index) for index in indices]
    for start in range(0, len(indices), chunk_size):
        chunk = indices[start : start + chunk_size]
        yield chunk, _read(data_source, chunk)


def read_texts(data_source: DataSource) -> tuple[list[str], list[str]]:
    """(sources, targets): every example's two texts, in order."""
    sources, targets = [], []
    for _, examples in read_in_chunks(data_source):
        for example in examples:
            sources.append(text(example["source"]))
            targets.append(text(example["target"]))
    return sources, targets


def data_dir(config: ml_collections.ConfigDict) -> str:
    """Where TFDS prepares datasets: config.data_dir, $TFDS_DATA_DIR or ~/tensorflow_datasets."""
    return (
        config.data_dir
        or os.environ.get("TFDS_DATA_DIR")
        or os.path.expanduser("~/tensorflow_datasets")
    )


# ---------------------------------------------------------------------------------------------
# The datasets
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Dataset:
    """One value of `config.dataset`.

    open_splits(config, split_names) -> {split name: data source}, preparing the data on first
    use. fixed_vocabulary() -> the dataset's own vocabulary, or None when the run trains a
    SentencePiece model on the training split.
    input_problem(line) -> why a `python -m train.translate` input line (whitespace-normalised,
    not empty) is outside the task, or None when it is fine; None: any text is.
    example_groups(source) -> the groups a source sentence belongs to (names of letters, digits
    and underscores, e.g. "digits_5"), for exact match per group (None: no groups).
    """

    name: str
    open_splits: Callable[[ml_collections.ConfigDict, list[str]], dict[str, DataSource]]
    fixed_vocabulary: Callable[[], Any] | None = None
    input_problem: Callable[[str], str | None] | None = None
    example_groups: Callable[[str], list[str]] | None = None


def _number_words(config: ml_collections.ConfigDict, splits: list[str]) -> dict[str, DataSource]:
    from train.data import numbers

    builder = numbers.prepare_number_words(data_dir(config))
    return {split: builder.as_data_source(split=split) for split in builder.info.splits}


def _parallel_text(config: ml_collections.ConfigDict, splits: list[str]) -> dict[str, DataSource]:
    from train.data import parallel_text

    if not config.data_path:
        raise ValueError("config.dataset='parallel_text' needs config.data_path (a directory)")
    builder = parallel_text.prepare_parallel_text(
        config.data_path, config.source_language, config.target_language, data_dir(config)
    )
    return parallel_text.split_data_sources(builder)


def _tfds_catalog(config: ml_collections.ConfigDict, splits: list[str]) -> dict[str, DataSource]:
    from train.data import catalog

    if not config.tfds_name:
        raise ValueError(
            "config.dataset='tfds' needs config.tfds_name, e.g. 'wmt14_translate/de-en'"
        )
    return catalog.catalog_translation_sources(
        config.tfds_name,
        config.source_language,
        config.target_language,
        data_dir(config),
        splits=splits,
    )


def _number_words_vocabulary() -> Any:
    from train.data import numbers

    return numbers.number_words_vocabulary()


def _number_words_input_problem(text: str) -> str | None:
    from train.data import numbers

    return numbers.source_problem(text)


def _number_words_groups(source: str) -> list[str]:
    from train.data import numbers

    return numbers.example_groups(source)


DATASETS = {
    "number_words": Dataset(
        "number_words",
        _number_words,
        _number_words_vocabulary,
        input_problem=_number_words_input_problem,
        example_groups=_number_words_groups,
    ),
    "parallel_text": Dataset("parallel_text", _parallel_text),
    "tfds": Dataset("tfds", _tfds_catalog),
}


def dataset_of(config: ml_collections.ConfigDict) -> Dataset:
    """The `Dataset` that `config.dataset` names."""
    if config.dataset not in DATASETS:
        raise ValueError(f"config.dataset must be one of {list(DATASETS)}, got {config.dataset!r}")
    return DATASETS[config.dataset]


def split_names(config: ml_collections.ConfigDict) -> dict[str, str]:
    """{role: the dataset's split name} for the three roles."""
    return {role: config[f"{role}_split"] for role in ROLES}


def role_of(config: ml_collections.ConfigDict, split: str) -> str:
    """ "validation" or "test" for a role or the dataset's own name of it (e.g. "test2016")."""
    names = {config.validation_split: "validation", config.test_split: "test"}
    role = names.get(split, split)
    if role not in ("validation", "test"):
        raise ValueError(
            f"unknown split {split!r}: use 'validation' or 'test' (this run's are "
            f"{config.validation_split!r} and {config.test_split!r})"
        )
    return role


def open_roles(
    config: ml_collections.ConfigDict, roles: Sequence[str] = ROLES
) -> dict[str, DataSource]:
    """{role: data source} of `roles` ("train", "validation", "test") for `config`'s dataset."""
    names = {role: split_names(config)[role] for role in roles}
    sources = dataset_of(config).open_splits(config, sorted(set(names.values())))
    missing = {role: split for role, split in names.items() if split not in sources}
    if missing:
        raise ValueError(
            "the dataset has no split(s) "
            + ", ".join(f"{split!r} (config.{role}_split)" for role, split in missing.items())
            + f"; it has {sorted(sources)}"
        )
    return {role: sources[split] for role, split in names.items()}
