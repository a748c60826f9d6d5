"""The dataset registry: names, split roles, errors; reading sources in chunks."""

from __future__ import annotations

import pytest

from train.configs import default as default_config
from train.data.sources import (
    DATASETS,
    data_dir,
    dataset_of,
    open_roles,
    read_in_chunks,
    read_texts,
    role_of,
    split_names,
    text,
)


class _Counting(list):
    """A list data source that records its batched reads."""

    def __init__(self, items):
        super().__init__(items)
        self.calls: list[list[int]] = []

    def __getitems__(self, indices):
        self.calls.append(list(indices))
        return [self[i] for i in indices]


def test_the_registry_and_fixed_vocabularies() -> None:
    assert list(DATASETS) == ["number_words", "parallel_text", "tfds"]
    config = default_config.get_config()
    assert dataset_of(config).fixed_vocabulary().vocab_size == 45  # number words bring theirs
    # ...and say which inputs they cover and which groups a source is in.
    assert dataset_of(config).input_problem("12") is None
    assert dataset_of(config).input_problem("-5").startswith("'-5' has a sign")
    assert dataset_of(config).example_groups("12") == ["digits_2", "below_1000"]
    for name in ("parallel_text", "tfds"):
        config.dataset = name
        assert dataset_of(config).fixed_vocabulary is None  # the run trains SentencePiece
        assert dataset_of(config).input_problem is dataset_of(config).example_groups is None
    config.dataset = "wmt"
    with pytest.raises(ValueError, match="config.dataset must be one of"):
        dataset_of(config)


def test_roles_map_to_the_datasets_split_names() -> None:
    config = default_config.get_config()
    config.validation_split, config.test_split = "val", "test2016"
    assert split_names(config) == {"train": "train", "validation": "val", "test": "test2016"}
    assert role_of(config, "test2016") == "test" and role_of(config, "validation") == "validation"
    with pytest.raises(ValueError, match=r"unknown split 'train'.*'val' and 'test2016'"):
        role_of(config, "train")


def test_number_words_open_by_role(tmp_path) -> None:
    config = default_config.get_config()
    config.data_dir = str(tmp_path)
    sources = open_roles(config, ["validation", "test"])
    assert {role: len(source) for role, source in sources.items()} == {
        "validation": 1000,
        "test": 2800,  # numbers.SPLIT_SIZES
    }
    config.test_split = "test2017"
    with pytest.raises(ValueError, match=r"no split\(s\) 'test2017' \(config.test_split\)"):
        open_roles(config)


def test_text_sources_need_their_field(tmp_path) -> None:
    config = default_config.get_config()
    config.data_dir = str(tmp_path)
    config.dataset = "parallel_text"
    with pytest.raises(ValueError, match="needs config.data_path"):
        open_roles(config)
    config.dataset = "tfds"
    with pytest.raises(ValueError, match="needs config.tfds_name"):
        open_roles(config)


def test_reading_in_chunks_batches_the_reads() -> None:
    source = _Counting([{"source": f"s{i}", "target": f"t{i}".encode()} for i in range(10)])
    chunks = list(read_in_chunks(source, chunk_size=4))
    assert [indices for indices, _ in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert source.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # one read call per chunk
    assert [index for index, _ in read_in_chunks(source, [7, 2])] == [[7, 2]]
    sources, targets = read_texts(source)
    assert sources[3] == "s3" and targets[3] == "t3"  # bytes read as UTF-8 text
    assert text("é".encode()) == "é" and text("é") == "é"


def test_data_dir_precedence(monkeypatch) -> None:
    config = default_config.get_config()
    monkeypatch.setenv("TFDS_DATA_DIR", "/from/env")
    assert data_dir(config) == "/from/env"
    config.data_dir = "/from/config"
    assert data_dir(config) == "/from/config"
    monkeypatch.delenv("TFDS_DATA_DIR")
    config.data_dir = ""
    assert data_dir(config).endswith("tensorflow_datasets")
