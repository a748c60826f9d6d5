"""TFDS catalog translation datasets as source/target pairs. The tests run offline: with
`tfds.testing.mock_data`, or a small catalog-style dataset prepared locally."""

from __future__ import annotations

from unittest import mock

import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.extractor import ExtractError
from tensorflow_datasets.testing.mocking import RandomFakeGenerator

from train.data.catalog import TranslationPairs, catalog_translation_sources

MOCK_POLICY = tfds.testing.MockPolicy.USE_CODE  # no metadata files: the builder code's features


@pytest.mark.parametrize("name", ["wmt14_translate/de-en", "wmt17_translate/de-en"])
def test_catalog_sources_read_translations_as_source_and_target(name, tmp_path):
    with tfds.testing.mock_data(num_examples=6, policy=MOCK_POLICY):
        sources = catalog_translation_sources(
            name, "en", "de", tmp_path, splits=["train", "validation", "test"]
        )
        raw = tfds.builder(name).as_data_source(split="validation")  # {"de": ..., "en": ...}
        assert sorted(raw[0]) == ["de", "en"]
        assert sorted(sources) == ["test", "train", "validation"]
        validation = sources["validation"]
        assert isinstance(validation, TranslationPairs) and len(validation) == 6
        for index in range(6):
            example = validation[index]
            assert example == {
                "source": raw[index]["en"].encode(),
                "target": raw[index]["de"].encode(),
            }
            assert example["source"] != example["target"]
        reverse = catalog_translation_sources(name, "de", "en", tmp_path, splits=["test"])
        assert reverse["test"][2] == {
            "source": sources["test"][2]["target"],
            "target": sources["test"][2]["source"],
        }


class TinyTranslation(tfds.core.GeneratorBasedBuilder):
    """A real (not mocked) catalog-style dataset with a `Translation` feature, prepared locally:
    defining the class registers it with TFDS as "tiny_translation"."""

    VERSION = tfds.core.Version("1.0.0")
    PAIRS = {
        "train": [("Ein Hund.", "A dog."), ("Zwei Männer.", "Two men."), ("Grün.", "Green.")],
        "test": [("Ja.", "Yes.")],
    }

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.Translation(languages=("de", "en")),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(pairs) for split, pairs in self.PAIRS.items()}

    def _generate_examples(self, pairs):
        for index, (german, english) in enumerate(pairs):
            yield index, {"de": german, "en": english}


def test_catalog_sources_of_a_real_prepared_translation_dataset(tmp_path):
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match="tiny_translation/1.0.0 is not prepared"):
        catalog_translation_sources("tiny_translation", "en", "de", data_dir, download=False)
    sources = catalog_translation_sources("tiny_translation", "en", "de", data_dir)
    assert sorted(sources) == ["test", "train"]  # all splits by default
    train = sources["train"]
    assert len(train) == 3
    assert train.__getitems__([2, 0]) == [
        {"source": b"Green.", "target": "Grün.".encode()},
        {"source": b"A dog.", "target": b"Ein Hund."},
    ]
    assert train[1] == {"source": b"Two men.", "target": "Zwei Männer.".encode()}
    # Prepared now: download=False reads it; split names are checked; slices work.
    sliced = catalog_translation_sources(
        "tiny_translation", "de", "en", data_dir, splits=["train[1:]"], download=False
    )
    assert list(sliced["train[1:]"]) == [
        {"source": "Zwei Männer.".encode(), "target": b"Two men."},
        {"source": "Grün.".encode(), "target": b"Green."},
    ]
    with pytest.raises(ValueError, match=r"has no split 'validation'; it has \['test', 'train'\]"):
        catalog_translation_sources("tiny_translation", "en", "de", data_dir, splits=["validation"])


class _CountingSource:
    """A stand-in for an ArrayRecord data source that counts its read calls."""

    def __init__(self, examples):
        self.examples = examples
        self.batched_reads: list[list[int]] = []

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]

    def __getitems__(self, indices):
        self.batched_reads.append(list(indices))
        return [self.examples[i] for i in indices]


def test_translation_pairs_read_batches_in_one_call(tmp_path):
    # tfds 4.9.10's mock data source cannot serve `__getitems__` (its mock is called without
    # `self`: "_getitems() missing 1 required positional argument: 'record_keys'"), so this
    # test mocks `as_data_source` with the examples that TFDS's own fake-example generator makes
    # for the builder's features, behind a source that counts its batched reads.
    made: list[_CountingSource] = []

    def as_data_source(builder, split, **kwargs):
        del split, kwargs
        generator = RandomFakeGenerator(builder.info.features, 5)
        made.append(_CountingSource([generator[i] for i in range(5)]))
        return made[-1]

    with tfds.testing.mock_data(policy=MOCK_POLICY, as_data_source_fn=as_data_source):
        train = catalog_translation_sources(
            "wmt14_translate/de-en", "de", "en", tmp_path, splits=["train"]
        )["train"]
    (counting,) = made
    batch = train.__getitems__([4, 0, 2])
    assert counting.batched_reads == [[4, 0, 2]]
    assert batch == [
        {
            "source": counting.examples[i]["de"].encode(),
            "target": counting.examples[i]["en"].encode(),
        }
        for i in (4, 0, 2)
    ]
    assert list(train) == [train[i] for i in range(5)]
    # Any random-access sequence of {language: text} dicts works, bytes or str.
    plain = TranslationPairs([{"fr": b"bonjour", "en": "hello"}], "en", "fr")
    assert plain.__getitems__([0]) == [{"source": b"hello", "target": b"bonjour"}]


def test_catalog_errors(tmp_path):
    with tfds.testing.mock_data(policy=MOCK_POLICY):
        with pytest.raises(ValueError, match="'wmt99_translate/de-en' is not a dataset of the"):
            catalog_translation_sources("wmt99_translate/de-en", "en", "de", tmp_path)
        with pytest.raises(ValueError, match=r"target_language 'fr' is not a language of .*de"):
            catalog_translation_sources("wmt14_translate/de-en", "en", "fr", tmp_path)
        with pytest.raises(ValueError, match="both 'en'"):
            catalog_translation_sources("wmt14_translate/de-en", "en", "en", tmp_path)
        with pytest.raises(ValueError, match="not a translation dataset"):
            catalog_translation_sources("mnist", "en", "de", tmp_path)
        with pytest.raises(ValueError, match="is not prepared under .*download=True"):
            catalog_translation_sources(
                "wmt14_translate/de-en", "en", "de", tmp_path, download=False
            )

        # What preparing WMT without TensorFlow raises (tfds extracts archives with tf.io.gfile).
        def extract_without_tensorflow(self, **kwargs):
            try:
                raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
            except ModuleNotFoundError as error:
                raise ExtractError("Error while extracting dev.tgz") from error

        with (
            mock.patch.object(
                tfds.core.DatasetBuilder, "download_and_prepare", extract_without_tensorflow
            ),
            pytest.raises(RuntimeError, match="needs TensorFlow"),
        ):
            catalog_translation_sources("wmt17_translate/de-en", "en", "de", tmp_path)
