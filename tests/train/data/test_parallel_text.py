"""Parallel text files as a TFDS ArrayRecord dataset.

Tests that use Multi30k read it from `$MULTI30K_DIR` (default: `shared/data/multi30k`
beside the repository, i.e. `../shared/data/multi30k`) and skip when it is absent; they copy small
slices of it to temporary files. The catalog tests run offline with `tfds.testing.mock_data`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from tests.helpers import MULTI30K, REPO_ROOT
from train.data.parallel_text import (
    ParallelText,
    discover_split_files,
    prepare_parallel_text,
    split_data_sources,
)

# Lines 7101..7400 of train: they include line 7366 of train.de (quoted, with a tab) and 7269
# (a double space). The first 100 lines of val and test2016.
MULTI30K_SLICES = {"train": (7100, 7400), "val": (0, 100), "test2016": (0, 100)}


def _write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def _raw_lines(path: Path) -> list[str]:
    return path.read_bytes().decode("utf-8").split("\n")[:-1]  # the files end with "\n"


@pytest.fixture(scope="module")
def multi30k_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of {split}.{en,de} files holding slices of Multi30k (never the repository)."""
    if not MULTI30K.is_dir():
        pytest.skip(
            f"Multi30k not found at {MULTI30K} (set MULTI30K_DIR to the directory of train.en etc.)"
        )
    directory = tmp_path_factory.mktemp("multi30k_slice")
    for split, (start, stop) in MULTI30K_SLICES.items():
        for language in ("en", "de"):
            lines = _raw_lines(MULTI30K / f"{split}.{language}")[start:stop]
            _write(directory / f"{split}.{language}", "".join(line + "\n" for line in lines))
    return directory


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def multi30k_builder(multi30k_slice: Path, data_dir: Path) -> ParallelText:
    return prepare_parallel_text(multi30k_slice, "en", "de", data_dir)


def _pairs(tmp_path: Path, source: bytes | str, target: bytes | str, name: str = "train"):
    """{name: (source file, target file)} written under tmp_path."""
    return {
        name: (_write(tmp_path / f"{name}.src", source), _write(tmp_path / f"{name}.tgt", target))
    }


# --- Finding the files ------------------------------------------------------------------------


def test_discover_split_files_of_the_multi30k_directory():
    if not MULTI30K.is_dir():
        pytest.skip(f"Multi30k not found at {MULTI30K}")
    assert discover_split_files(MULTI30K, "en", "de") == {
        split: (MULTI30K / f"{split}.en", MULTI30K / f"{split}.de")
        for split in ("test2016", "train", "val")
    }


def test_discover_split_files_ignores_other_languages_and_files(tmp_path):
    for name in ("train.en", "train.de", "dev.en", "dev.de", "train.fr", "README.md", "en"):
        _write(tmp_path / name, "a\n")
    found = discover_split_files(tmp_path, "en", "de")
    assert found == {
        "dev": (tmp_path / "dev.en", tmp_path / "dev.de"),
        "train": (tmp_path / "train.en", tmp_path / "train.de"),
    }
    assert discover_split_files(tmp_path, "de", "en")["dev"] == (
        tmp_path / "dev.de",
        tmp_path / "dev.en",
    )


@pytest.mark.parametrize(
    "names, message",
    [
        (["train.en", "train.de", "val.en"], r"val\.en has no partner val\.de"),
        (["train.en", "train.de", "test.de"], r"test\.de has no partner test\.en"),
        (["train.fr", "notes.txt"], r"holds no '\{split\}\.en' file .*notes\.txt, train\.fr"),
        (["test-2016.en", "test-2016.de"], r"split name 'test-2016' .*test-2016\.en"),
    ],
)
def test_discover_split_files_rejects_unknown_layouts(tmp_path, names, message):
    for name in names:
        _write(tmp_path / name, "a\n")
    with pytest.raises(ValueError, match=message):
        discover_split_files(tmp_path, "en", "de")


def test_discover_split_files_needs_a_directory_and_language_codes(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        discover_split_files(tmp_path / "absent", "en", "de")
    with pytest.raises(ValueError, match="source_language must be a code"):
        discover_split_files(tmp_path, "e n", "de")
    with pytest.raises(ValueError, match="both 'en'"):
        discover_split_files(tmp_path, "en", "en")


# --- Preparing and reading --------------------------------------------------------------------


def test_multi30k_slice_reads_back_as_normalised_pairs_in_line_order(
    multi30k_builder, multi30k_slice
):
    sources = split_data_sources(multi30k_builder)
    assert sorted(sources) == ["test2016", "train", "val"]
    for split, (start, stop) in MULTI30K_SLICES.items():
        english = _raw_lines(multi30k_slice / f"{split}.en")
        german = _raw_lines(multi30k_slice / f"{split}.de")
        assert len(sources[split]) == len(english) == len(german) == stop - start
        examples = sources[split].__getitems__(list(range(len(english))))
        for example, source, target in zip(examples, english, german, strict=True):
            assert isinstance(example["source"], bytes) and isinstance(example["target"], bytes)
            assert example["source"].decode() == re.sub(r"\s+", " ", source).strip()
            assert example["target"].decode() == re.sub(r"\s+", " ", target).strip()
    train = sources["train"]
    # Lines of train.de with a tab (7366), a double space (7269), a no-break space (7306).
    assert train[7366 - 7101]["target"].decode() == (
        '"Zwei männliche und eine weibliche Person spielen in einer Wasserfontäne."'
    )
    assert (
        train[7366 - 7101]["source"] == b"Two males and one female playing in a fountain of water."
    )
    assert train[7269 - 7101]["target"].decode() == (
        "Ein kleiner Junge im Pyjama wendet Auberginen auf dem Gasgrill."
    )
    assert train[7306 - 7101]["target"].decode().startswith("Ein etwa 6 Monate altes Kind mit")


def test_prepared_dataset_records_the_languages_and_files(multi30k_builder, multi30k_slice):
    info = multi30k_builder.info
    assert info.metadata["source_language"] == "en" and info.metadata["target_language"] == "de"
    assert info.metadata["split_files"]["val"] == [
        str((multi30k_slice / "val.en").resolve()),
        str((multi30k_slice / "val.de").resolve()),
    ]
    assert "en (source) -> de (target)" in info.description
    assert info.supervised_keys == ("source", "target")
    assert info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert multi30k_builder.builder_config.name.startswith("en-de-")


def test_same_contents_reuse_the_preparation_and_other_contents_do_not(
    multi30k_builder, multi30k_slice, data_dir, tmp_path
):
    train_file = next(Path(multi30k_builder.data_dir).glob("parallel_text-train.array_record*"))
    written_at = train_file.stat().st_mtime_ns

    # The same bytes elsewhere: found, not rewritten.
    copy = shutil.copytree(multi30k_slice, tmp_path / "copy")
    again = prepare_parallel_text(copy, "en", "de", data_dir)
    assert again.data_dir == multi30k_builder.data_dir
    assert train_file.stat().st_mtime_ns == written_at

    # One changed line: a new preparation, with the new line.
    german = _raw_lines(copy / "val.de")
    german[3] = "Ein ganz anderer Satz."
    _write(copy / "val.de", "".join(line + "\n" for line in german))
    changed = prepare_parallel_text(copy, "en", "de", data_dir)
    assert changed.data_dir != multi30k_builder.data_dir
    assert changed.as_data_source("val")[3]["target"] == b"Ein ganz anderer Satz."
    assert multi30k_builder.as_data_source("val")[3]["target"] != b"Ein ganz anderer Satz."

    # The other direction: its own preparation, sides swapped.
    reverse = prepare_parallel_text(multi30k_slice, "de", "en", data_dir)
    assert reverse.data_dir not in (multi30k_builder.data_dir, changed.data_dir)
    forward_example = multi30k_builder.as_data_source("test2016")[5]
    reverse_example = reverse.as_data_source("test2016")[5]
    assert reverse_example == {
        "source": forward_example["target"],
        "target": forward_example["source"],
    }


def test_explicit_files_crlf_bom_and_unusual_characters(tmp_path, data_dir):
    # CRLF endings, a BOM, U+2028 (a line break for str.splitlines, not here), no final newline.
    source = "\ufeffHello  world\r\nTwo\u2028lines? No, one.\r\n  last\tline "
    target = "Hallo Welt\nZwei Zeilen? Nein, eine.\nletzte Zeile"
    files = _pairs(tmp_path, source, target, name="mine")
    builder = prepare_parallel_text(files, "en", "de", data_dir)
    examples = split_data_sources(builder)["mine"]
    assert [example["source"].decode() for example in examples] == [
        "Hello world",
        "Two lines? No, one.",  # U+2028 is whitespace: one space
        "last line",
    ]
    assert examples[2]["target"] == b"letzte Zeile"


def _nothing_prepared(data_dir: Path) -> bool:
    return not list(data_dir.glob("parallel_text/*/*/*.array_record*"))


@pytest.mark.parametrize(
    "source, target, message",
    [
        ("a\nb\nc\n", "x\ny\n", r"train\.src has 3 lines but .*train\.tgt has 2"),
        ("", "x\n", r"source \(en\) file .*train\.src is empty"),
        ("a\nb\n", "x\n\n", r"train\.tgt, line 2: the line is empty"),
        ("a\n \t \nc\n", "x\ny\nz\n", r"train\.src, line 2: the line is empty"),
        ("a\nb\n", "x\ny", None),  # valid: the last line may lack its newline
        (b"a\nb\nc\xe4d\n", "x\ny\nz\n", r"train\.src, line 3: invalid UTF-8 at byte 1"),
        ("a\n", b"\xff\n", r"train\.tgt, line 1: invalid UTF-8 at byte 0"),
    ],
)
def test_bad_files_are_rejected_before_anything_is_written(tmp_path, source, target, message):
    data_dir = tmp_path / "tfds"
    files = _pairs(tmp_path, source, target)
    if message is None:
        prepare_parallel_text(files, "en", "de", data_dir)
        assert not _nothing_prepared(data_dir)
        return
    with pytest.raises(ValueError, match=message):
        prepare_parallel_text(files, "en", "de", data_dir)
    assert _nothing_prepared(data_dir)


def test_missing_files_and_malformed_mappings(tmp_path):
    present = _write(tmp_path / "a.en", "a\n")
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match=r"split 'train': the target \(de\) file .*b\.de does not"):
        prepare_parallel_text({"train": (present, tmp_path / "b.de")}, "en", "de", data_dir)
    with pytest.raises(ValueError, match=r"source \(en\) file .* is not a file"):
        prepare_parallel_text({"train": (tmp_path, present)}, "en", "de", data_dir)
    with pytest.raises(ValueError, match=r"expected \(source_file, target_file\)"):
        prepare_parallel_text({"train": (present,)}, "en", "de", data_dir)
    with pytest.raises(ValueError, match="split name 'dev set'"):
        prepare_parallel_text({"dev set": (present, present)}, "en", "de", data_dir)
    with pytest.raises(ValueError, match="non-empty mapping"):
        prepare_parallel_text({}, "en", "de", data_dir)
    assert not data_dir.exists()


def test_reading_the_prepared_text_never_imports_tensorflow(tmp_path):
    files = _pairs(tmp_path, "Hello world\nGood morning\n", "Hallo Welt\nGuten Morgen\n")
    files = {split: (str(source), str(target)) for split, (source, target) in files.items()}
    script = textwrap.dedent(
        f"""
        import sys
        from train.data.parallel_text import prepare_parallel_text, split_data_sources

        builder = prepare_parallel_text({files!r}, "en", "de", {str(tmp_path / "tfds")!r})
        train = split_data_sources(builder)["train"]
        assert train[1] == {{"source": b"Good morning", "target": b"Guten Morgen"}}, train[1]
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_unchanged_files_are_not_read_again(tmp_path, monkeypatch):
    from train.data import parallel_text

    corpus = tmp_path / "corpus"
    _write(corpus / "train.en", "a b\nc d\n")
    _write(corpus / "train.de", "e f\ng h\n")
    read: list[str] = []
    real = parallel_text._read_and_check

    def counting(path, split, role):
        read.append(path.name)
        return real(path, split, role)

    monkeypatch.setattr(parallel_text, "_read_and_check", counting)
    first = prepare_parallel_text(corpus, "en", "de", tmp_path / "tfds")
    assert sorted(read) == ["train.de", "train.en"]
    again = prepare_parallel_text(corpus, "en", "de", tmp_path / "tfds")
    assert (
        sorted(read) == ["train.de", "train.en"]
        and again.info.config_name == first.info.config_name
    )
    _write(corpus / "train.de", "e f\ng i\n")  # same size, new content
    edited = prepare_parallel_text(corpus, "en", "de", tmp_path / "tfds")
    assert read[2:] == ["train.de"] and edited.info.config_name != first.info.config_name


def test_a_split_larger_than_tfds_memory_buffer_is_prepared_without_tensorflow(
    tmp_path, monkeypatch
):
    """TFDS spills a split over its buffer (1 GB) to disk through TensorFlow; a 10-byte buffer
    stands in for a corpus of millions of lines."""
    from tensorflow_datasets.core import shuffle

    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 10)
    corpus = tmp_path / "corpus"
    _write(corpus / "train.en", "".join(f"line {i}\n" for i in range(50)))
    _write(corpus / "train.de", "".join(f"zeile {i}\n" for i in range(50)))
    builder = prepare_parallel_text(corpus, "en", "de", tmp_path / "tfds")
    train = split_data_sources(builder)["train"]
    assert len(train) == 50 and train[49]["target"] == b"zeile 49"
    assert shuffle.MAX_MEM_BUFFER_SIZE == 10  # restored
