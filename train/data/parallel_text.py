"""Your parallel text files as a TFDS ArrayRecord dataset that is read without TensorFlow.

One sentence per line, line i of the source file paired with line i of the target file:
`prepare_parallel_text` checks the files, writes them once as a TFDS dataset in ArrayRecord
format (`ParallelText`), and `split_data_sources` opens its splits, `{split: data source}`, whose
examples read as `{"source": bytes, "target": bytes}` (UTF-8). (The TFDS catalog's translation
datasets give the same thing: `train.data.catalog`.)

Text files are read as UTF-8 and split on "\\n" only (not on the other characters that
`str.splitlines` treats as line breaks, such as U+2028, which would silently shift the pairing).
Each line is stripped and its runs of whitespace (spaces, tabs, "\\r", no-break spaces...)
become one space: `normalize_whitespace`.

Every file is checked *before* anything is written, so a bad file never leaves a half-prepared
dataset. These raise `ValueError` naming the file (and the line where there is one): a missing
file, an empty file, invalid UTF-8, an empty (or whitespace-only) line on either side, and source
and target files of different line counts. Empty lines are an error rather than silently dropped:
a blank line on one side usually means the files are misaligned from there on, and dropping the
pair would hide that; clean the files, or remove such pairs on both sides, and prepare again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

PathLike = str | os.PathLike
SplitFiles = Mapping[str, tuple[PathLike, PathLike]]
"""{split name: (source file, target file)}."""

SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")
"""Accepted split names: TFDS puts them in file names ("parallel_text-train.array_record...")."""

LANGUAGE_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
"""Accepted language codes ("en", "de", "pt_BR"...): they end file names and name the dataset."""

_UTF8_BOM = b"\xef\xbb\xbf"


def normalize_whitespace(text: str) -> str:
    """`text` stripped, with every run of whitespace (tabs and newlines too) made one space."""
    return " ".join(text.split())


# --- Reading and checking the files -----------------------------------------------------------


def _check_language_codes(source_language: str, target_language: str) -> None:
    for role, code in (("source", source_language), ("target", target_language)):
        if not isinstance(code, str) or LANGUAGE_CODE.fullmatch(code) is None:
            raise ValueError(
                f"{role}_language must be a code such as 'en' (letters, digits, '_' or '-', "
                f"starting with a letter), got {code!r}"
            )
    if source_language == target_language:
        raise ValueError(f"source and target language are both {source_language!r}")


def _check_split_name(split: str, where: str) -> None:
    if not isinstance(split, str) or SPLIT_NAME.fullmatch(split) is None:
        raise ValueError(
            f"split name {split!r} ({where}) must be letters, digits and '_' only, "
            "since TFDS puts it in file names"
        )


def _numbered_lines(path: Path) -> Iterator[tuple[int, bytes, str]]:
    """Yields `(line number from 1, raw bytes, normalised text)` for each line of `path`.

    Raises:
      ValueError: naming the file and line, for invalid UTF-8 or a line that is empty after
        whitespace normalisation.
    """
    with path.open("rb") as file:  # binary mode splits on b"\n" only
        for number, raw in enumerate(file, start=1):
            line = raw[len(_UTF8_BOM) :] if number == 1 and raw.startswith(_UTF8_BOM) else raw
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: invalid UTF-8 at byte {error.start} of the line "
                    f"({line[error.start : error.end]!r}); the file must be UTF-8 text"
                ) from None
            text = normalize_whitespace(decoded)
            if not text:
                raise ValueError(
                    f"{path}, line {number}: the line is empty (or only whitespace); every line "
                    "must hold a sentence, paired with the same line of the other language's file"
                )
            yield number, raw, text


@dataclasses.dataclass(frozen=True)
class _FileSummary:
    line_count: int
    sha256: str


def _check_file(
    path: Path,
    split: str,
    role: str,
    checked_dir: Path | None = None,
    to_remember: list[tuple[Path, str]] | None = None,
) -> _FileSummary:
    """Reads all of `path` once: checks every line (see `_numbered_lines`) and hashes the bytes.

    With `checked_dir`, the summary of a file that passed is remembered there, keyed by its
    absolute path, size, modification time (ns) and inode: a later call on the unchanged file
    reads nothing, so that starting a run does not re-read a large corpus.
    Any write to the file changes its modification time, so an edited file is read again.
    The record to write is appended to `to_remember` (written by `_remember` once every file
    has passed: a bad file leaves nothing behind).
    """
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ValueError(f"split {split!r}: the {role} file {path} {what}")
    record = None
    if checked_dir is not None:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
        record = checked_dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
            if saved.get("key") == key:
                return _FileSummary(saved["line_count"], saved["sha256"])
        except (OSError, ValueError, KeyError):
            pass
    summary = _read_and_check(path, split, role)
    if record is not None and to_remember is not None:
        to_remember.append((record, json.dumps({"key": key, **dataclasses.asdict(summary)})))
    return summary


def _remember(records: list[tuple[Path, str]]) -> None:
    for record, content in records:
        record.parent.mkdir(parents=True, exist_ok=True)
        temporary = record.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(content, encoding="utf-8")
        os.replace(temporary, record)  # atomic: a reader sees a whole record or none


def _read_and_check(path: Path, split: str, role: str) -> _FileSummary:
    digest = hashlib.sha256()
    line_count = 0
    for _, raw, _ in _numbered_lines(path):
        digest.update(raw)
        line_count += 1
    if line_count == 0:
        raise ValueError(f"split {split!r}: the {role} file {path} is empty")
    return _FileSummary(line_count, digest.hexdigest())


def discover_split_files(
    directory: PathLike, source_language: str, target_language: str
) -> dict[str, tuple[Path, Path]]:
    """Finds the `{split}.{language}` file pairs in `directory` (the layout of Multi30k).

    A split is every name `X` for which `X.{source_language}` exists; `X.{target_language}` must
    exist too. Files of other languages and other files (README...) are ignored.

    Returns:
      {split: (source file, target file)}, splits sorted by name.

    Raises:
      ValueError: if `directory` is not a directory, holds no `*.{source_language}` file, a
        source file has no target partner (or a target file no source partner), or a split name
        is not letters, digits and '_'.
    """
    _check_language_codes(source_language, target_language)
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory of {{split}}.{{language}} files")
    names = {path.name for path in directory.iterdir() if path.is_file()}

    def splits_of(language: str) -> set[str]:
        suffix = f".{language}"
        return {name[: -len(suffix)] for name in names if name.endswith(suffix)} - {""}

    source_splits, target_splits = splits_of(source_language), splits_of(target_language)
    if not source_splits:
        raise ValueError(
            f"{directory} holds no '{{split}}.{source_language}' file (such as "
            f"train.{source_language}); it holds: {', '.join(sorted(names)) or 'nothing'}"
        )
    for split in sorted(source_splits ^ target_splits):
        present, missing = (
            (source_language, target_language)
            if split in source_splits
            else (target_language, source_language)
        )
        raise ValueError(
            f"{directory / f'{split}.{present}'} has no partner {split}.{missing} in {directory}"
        )
    for split in source_splits:
        _check_split_name(split, f"from the file {directory / f'{split}.{source_language}'}")
    return {
        split: (directory / f"{split}.{source_language}", directory / f"{split}.{target_language}")
        for split in sorted(source_splits)
    }


def _split_files(
    files_or_directory: SplitFiles | PathLike, source_language: str, target_language: str
) -> dict[str, tuple[Path, Path]]:
    if isinstance(files_or_directory, str | os.PathLike):
        return discover_split_files(files_or_directory, source_language, target_language)
    if not isinstance(files_or_directory, Mapping) or not files_or_directory:
        raise ValueError(
            "expected a directory of {split}.{language} files or a non-empty mapping "
            f"{{split: (source_file, target_file)}}, got {files_or_directory!r}"
        )
    split_files = {}
    for split, pair in files_or_directory.items():
        _check_split_name(split, "a key of the files mapping")
        if isinstance(pair, str | os.PathLike) or len(pair) != 2:
            raise ValueError(f"split {split!r}: expected (source_file, target_file), got {pair!r}")
        split_files[split] = (Path(pair[0]), Path(pair[1]))
    return split_files


# --- The TFDS builder -------------------------------------------------------------------------

_FORMAT_VERSION = 1
"""Part of the fingerprint: bump it when the way lines become examples changes."""


@dataclasses.dataclass(eq=False, repr=False)
class ParallelTextConfig(tfds.core.BuilderConfig):
    """The files of one `ParallelText` dataset. Its name ends with a fingerprint of their content.

    Attributes:
      source_language, target_language: language codes, e.g. "en" and "de".
      split_files: {split: (source file, target file)} as absolute paths.
      sha256: {split: (SHA-256 of the source file, SHA-256 of the target file)}.
    """

    source_language: str = ""
    target_language: str = ""
    split_files: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    sha256: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:  # short: TFDS logs it each time the builder is created
        return f"ParallelTextConfig(name={self.name!r})"


def _fingerprint(
    source_language: str, target_language: str, sha256: Mapping[str, tuple[str, str]]
) -> str:
    """16 hex digits that change whenever the languages, split names or file contents change."""
    identity = {
        "format": _FORMAT_VERSION,
        "languages": [source_language, target_language],
        "sha256": {split: list(hashes) for split, hashes in sorted(sha256.items())},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class ParallelText(tfds.core.GeneratorBasedBuilder):
    """A user's parallel text: line i of the source file translates to line i of the target file.

    Built with a `ParallelTextConfig` (see `prepare_parallel_text`), whose name is
    "{source}-{target}-{fingerprint}": the dataset is stored under
    `data_dir/parallel_text/{config name}/1.0.0/`, so different files never share a preparation,
    and the same files (the same bytes, wherever they are) find the first one.

    Examples keep the order of the lines (`as_data_source(split)[i]` is line i + 1), so outputs
    and scores can be matched with the files; training shuffles on its own.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Sentence pairs from parallel text files, whitespace-normalised."}

    def _info(self) -> tfds.core.DatasetInfo:
        config: ParallelTextConfig = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=config.description,
            features=tfds.features.FeaturesDict(
                {"source": tfds.features.Text(), "target": tfds.features.Text()}
            ),
            supervised_keys=("source", "target"),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(
                source_language=config.source_language,
                target_language=config.target_language,
                split_files={split: list(files) for split, files in config.split_files.items()},
                sha256={split: list(hashes) for split, hashes in config.sha256.items()},
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # the files are local
        return {
            split: self._generate_examples(Path(source), Path(target))
            for split, (source, target) in self.builder_config.split_files.items()
        }

    def _generate_examples(self, source_path: Path, target_path: Path):
        pairs = zip(_numbered_lines(source_path), _numbered_lines(target_path), strict=True)
        for (number, _, source), (_, _, target) in pairs:
            yield number, {"source": source, "target": target}


def prepare_parallel_text(
    files_or_directory: SplitFiles | PathLike,
    source_language: str,
    target_language: str,
    data_dir: PathLike,
) -> ParallelText:
    """Checks the files, writes them (once) as ArrayRecord files under `data_dir`: the builder.

    Args:
      files_or_directory: {split: (source_file, target_file)}, or a directory of
        `{split}.{language}` files (see `discover_split_files`).
      source_language, target_language: language codes, e.g. "en" and "de"; with a directory,
        the file name suffixes.
      data_dir: TFDS data directory; the dataset goes to
        `data_dir/parallel_text/{source}-{target}-{fingerprint}/1.0.0/`.

    Every file is read (and hashed) to find its preparation, once: the result is remembered in
    `data_dir/parallel_text/checked_files/` for the file's path, size, modification time and
    inode (see `_check_file`). A second call with the same file contents reuses the first
    preparation. Use `split_data_sources` to read it.

    Raises:
      ValueError: naming the file and line, for the problems listed in the module docstring.
    """
    _check_language_codes(source_language, target_language)
    split_files = _split_files(files_or_directory, source_language, target_language)
    sha256, lines = {}, {}
    remember: tuple[Path, list] = (Path(data_dir) / "parallel_text" / "checked_files", [])
    for split, (source_path, target_path) in split_files.items():
        source = _check_file(source_path, split, f"source ({source_language})", *remember)
        target = _check_file(target_path, split, f"target ({target_language})", *remember)
        if source.line_count != target.line_count:
            raise ValueError(
                f"split {split!r}: {source_path} has {source.line_count} lines but "
                f"{target_path} has {target.line_count}; line i of one is the translation of "
                "line i of the other, so the counts must match"
            )
        sha256[split] = (source.sha256, target.sha256)
        lines[split] = source.line_count
    _remember(remember[1])
    absolute = {
        split: (str(source.resolve()), str(target.resolve()))
        for split, (source, target) in split_files.items()
    }
    listing = "\n".join(f"  {split}: {s} | {t}" for split, (s, t) in absolute.items())
    config = ParallelTextConfig(
        name=f"{source_language}-{target_language}-"
        f"{_fingerprint(source_language, target_language, sha256)}",
        version=ParallelText.VERSION,
        description=(
            f"Parallel text, {source_language} (source) -> {target_language} (target), one "
            f"whitespace-normalised sentence pair per line. Prepared from:\n{listing}"
        ),
        source_language=source_language,
        target_language=target_language,
        split_files=absolute,
        sha256=sha256,
    )
    builder = ParallelText(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
    if not builder.is_prepared():
        # TFDS sorts a split's examples by key in memory up to MAX_MEM_BUFFER_SIZE (1 GB) and
        # beyond it spills to temporary files through TensorFlow, which is not installed: keep
        # the whole split in memory instead (a one-time cost of about twice the files' size).
        largest = max(
            sum(Path(f).stat().st_size for f in absolute[split]) + 256 * lines[split]
            for split in absolute
        )  # the text, and a generous bound on each record's key and framing
        buffer = max(tfds_shuffle.MAX_MEM_BUFFER_SIZE, 2 * largest)
        previous, tfds_shuffle.MAX_MEM_BUFFER_SIZE = tfds_shuffle.MAX_MEM_BUFFER_SIZE, buffer
        try:
            builder.download_and_prepare()
        finally:
            tfds_shuffle.MAX_MEM_BUFFER_SIZE = previous
    return builder


def split_data_sources(builder: tfds.core.DatasetBuilder) -> dict[str, Sequence[Any]]:
    """{split: `builder.as_data_source(split)`} for every split of a prepared builder."""
    return {split: builder.as_data_source(split=split) for split in builder.info.splits}
