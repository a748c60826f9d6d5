"""Translation datasets of the TFDS catalog (`wmt14_translate/de-en`, `wmt17_translate/de-en`...)
as source/target pairs, prepared in ArrayRecord format and read without TensorFlow.

`catalog_translation_sources` prepares a catalog dataset and wraps each split in
`TranslationPairs`, which turns the catalog's `{language code: text}` examples into
`{"source": bytes, "target": bytes}` pairs. Reading needs no TensorFlow, but TFDS *preparing* the
WMT datasets does: it extracts their .tgz archives with `tf.io.gfile` (tensorflow_datasets/core/
download/extractor.py, `_copy` and `tf.compat.as_text` in `extract`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

PathLike = str | os.PathLike


def _as_bytes(text: bytes | str) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else text


class TranslationPairs:
    """A random-access view of a translation data source as `{"source", "target"}` examples.

    TFDS catalog translation datasets (`tfds.features.Translation`) store one text per language,
    keyed by language code: `{"de": b"...", "en": b"..."}`. This view reads such a data source and
    returns `{"source": bytes, "target": bytes}`, without copying it.

    Args:
      data_source: random-access sequence of `{language code: bytes or str}` dicts, e.g.
        `builder.as_data_source("train")` of `wmt14_translate/de-en`.
      source_language, target_language: the language codes to read as source and target.
    """

    def __init__(
        self, data_source: Sequence[Mapping[str, Any]], source_language: str, target_language: str
    ):
        self.data_source = data_source
        self.source_language = source_language
        self.target_language = target_language

    def _pair(self, example: Mapping[str, Any]) -> dict[str, bytes]:
        return {
            "source": _as_bytes(example[self.source_language]),
            "target": _as_bytes(example[self.target_language]),
        }

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, index: int) -> dict[str, bytes]:
        return self._pair(self.data_source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, bytes]]:
        """The examples at `indices`, in one batched read where the data source offers it."""
        read_many = getattr(self.data_source, "__getitems__", None)
        examples = read_many(list(indices)) if read_many else [self.data_source[i] for i in indices]
        return [self._pair(example) for example in examples]

    def __iter__(self) -> Iterator[dict[str, bytes]]:
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        return (
            f"TranslationPairs({self.source_language}->{self.target_language}, "
            f"{len(self)} examples of {self.data_source!r})"
        )


def _caused_by_missing_tensorflow(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and error.name == "tensorflow":
            return True
        error = error.__cause__ or error.__context__
    return False


def _catalog_builder(name: str, data_dir: PathLike) -> tfds.core.DatasetBuilder:
    # TFDS registers its catalog by importing every dataset module, in groups; it stops at the
    # first group that fails to import (with tfds 4.9.10, `nearest_neighbors` needs h5py), and
    # the translation group comes after it. Importing that group directly registers the
    # translation datasets whatever else is installed.
    with contextlib.suppress(ImportError):
        import tensorflow_datasets.translate  # noqa: F401
    try:
        return tfds.builder(name, data_dir=os.fspath(data_dir), file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"{name!r} is not a dataset of the TFDS catalog (expected e.g. "
            "'wmt14_translate/de-en' or 'wmt17_translate/de-en')"
        ) from None


def catalog_translation_sources(
    name: str,
    source_language: str,
    target_language: str,
    data_dir: PathLike,
    splits: Sequence[str] | None = None,
    download: bool = True,
) -> dict[str, TranslationPairs]:
    """{split: `TranslationPairs`} of a TFDS catalog translation dataset, prepared as ArrayRecord.

    Args:
      name: catalog name with its config, e.g. "wmt14_translate/de-en" (the config names the
        language pair; the pair is the same whichever side is the source).
      source_language, target_language: language codes of the dataset, e.g. "en" and "de".
      data_dir: TFDS data directory (downloads go to `data_dir/downloads`).
      splits: the splits to open (e.g. ["train", "validation", "test"]; TFDS slices such as
        "train[:1%]" work too); default all the splits of the prepared dataset.
      download: download and prepare the dataset if it is not prepared under `data_dir`
        (several GB for WMT, and it needs TensorFlow installed: see the module docstring).

    Raises:
      ValueError: for a name not in the catalog, a dataset without a `Translation` feature, a
        language not in the dataset, an unknown split, or an unprepared dataset with
        `download=False`.
      RuntimeError: when preparing fails because TensorFlow is not installed.
    """
    builder = _catalog_builder(name, data_dir)
    full_name = builder.info.full_name
    features = builder.info.features
    if not isinstance(features, tfds.features.Translation):
        raise ValueError(
            f"{full_name} is not a translation dataset of fixed languages: its features are "
            f"{type(features).__name__}, not tfds.features.Translation"
        )
    languages = list(features.languages)
    for role, code in (("source", source_language), ("target", target_language)):
        if code not in languages:
            raise ValueError(
                f"{role}_language {code!r} is not a language of {full_name}, which has {languages}"
            )
    if source_language == target_language:
        raise ValueError(f"source and target language are both {source_language!r}")

    if not builder.is_prepared():
        if not download:
            raise ValueError(
                f"{full_name} is not prepared under {data_dir}; pass download=True to download "
                "and prepare it"
            )
        try:
            builder.download_and_prepare()
        except Exception as error:
            if _caused_by_missing_tensorflow(error):
                raise RuntimeError(
                    f"preparing {full_name} needs TensorFlow: TFDS extracts the downloaded "
                    "archives with tf.io.gfile. Install tensorflow (e.g. tensorflow-cpu) and run "
                    "again; the downloads are kept, and reading the prepared dataset does not "
                    "need TensorFlow"
                ) from error
            raise
    file_format = builder.info.file_format
    if file_format is not None and file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise ValueError(
            f"{full_name} under {data_dir} was prepared as {file_format.value}, which has no "
            "random access; prepare it in another data_dir (it is then written as array_record)"
        )

    known_splits = list(builder.info.splits)
    if splits is None:
        if not known_splits:
            raise ValueError(f"{full_name} lists no splits; pass splits=[...]")
        splits = known_splits
    elif known_splits:  # unknown until prepared (and when TFDS is mocked in tests)
        for split in splits:
            if split.split("[")[0] not in known_splits:
                raise ValueError(
                    f"{full_name} has no split {split!r}; it has {sorted(known_splits)}"
                )
    return {
        split: TranslationPairs(
            builder.as_data_source(split=split), source_language, target_language
        )
        for split in splits
    }
