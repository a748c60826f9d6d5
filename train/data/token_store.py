"""A training split tokenized once, on disk, random access, shared by runs and processes.

    open_or_build(data_source, vocabulary, max_length=..., root=...) -> TokenStore

A split of millions of sentence pairs does not fit in memory as Python lists of arrays, and
encoding it at every start costs minutes. The store encodes it once, in worker processes, and
later runs, resumes, evaluations and the other processes of a multi-host run memory-map it.

Layout of a store, the directory `root/<fingerprint>/`:

    source_tokens.bin    int32 [total source tokens]: every kept pair's encode(source) + [eos]
    source_offsets.bin   int64 [num_pairs + 1]: pair i's source is tokens[offsets[i]:offsets[i+1]]
    target_tokens.bin    int32, target_offsets.bin int64: the same for encode_target(target) + [eos]
    lengths.bin          int32 [num_pairs, 2]: source and target length (with eos) of each pair
    example_index.bin    int64 [num_pairs]: each kept pair's index in the data source
    meta.json            num_pairs, num_dropped, the fingerprint's parts, the format version

Raw little-endian arrays (shapes and dtypes in meta.json), read with `np.memmap`: opening a store
reads no token, and the pages a batch touches are shared by every process on the machine.
Pairs with a side longer than `max_length` tokens (with eos) are left out and counted.

Fingerprint (the directory name): SHA-256 of the format version, `max_length`, the data
source's identity (`data_identity`) and the tokenizer's (`vocabulary_identity`). Identities:
  - a TFDS data source (parallel text files, the number-words task, a catalog dataset): its
    dataset's full name (name/config/version) and split. For `parallel_text` the config name
    ends with a SHA-256 of the files' content, so the same bytes anywhere find the same store and
    an edited file gets a new one; hashing content rather than path + size + mtime means a copy
    or a `touch` does not rebuild, and a same-size edit is never missed. A catalog dataset
    is identified by its name and version, as TFDS does.
  - any other sequence (lists in tests and notebooks): a SHA-256 of its texts (it is read once).
  - the tokenizer: a SHA-256 of its model bytes (SentencePiece), of both models and vocab.json
    (Marian), of its token list (words).
The same data and the same tokenizer therefore give the same store whichever run asks.

Concurrency: a store is written into a temporary directory `root/.tmp-<fingerprint>-<pid>-...`
and renamed to `root/<fingerprint>` in one `os.rename`, so a reader sees a complete store or
none. Two processes that build the same store at once both finish; the second rename fails
because the directory exists, and the loser deletes its copy and opens the winner's (the
contents are equal: encoding is deterministic). A temporary directory left by a killed build is
never read (readers look only at fingerprint names); later builds ignore it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from train.data.sources import DataSource, read_in_chunks, text
from train.data.vocabulary import Vocabulary, vocabulary_identity
from train.data.vocabulary import sha256_of as _sha256

FORMAT_VERSION = 1
_ARRAYS = {  # name -> dtype, trailing shape
    "source_tokens": (np.int32, ()),
    "source_offsets": (np.int64, ()),
    "target_tokens": (np.int32, ()),
    "target_offsets": (np.int64, ()),
    "lengths": (np.int32, (2,)),
    "example_index": (np.int64, ()),
}


# ---------------------------------------------------------------------------------------------
# Identities and the fingerprint
# ---------------------------------------------------------------------------------------------
def data_identity(data_source: DataSource) -> str:
    """A string that changes when the data source's content does (see the module docstring)."""
    inner = getattr(data_source, "data_source", None)  # catalog.TranslationPairs' view
    if inner is not None and hasattr(inner, "dataset_info"):
        languages = f"{data_source.source_language}->{data_source.target_language}"
        return f"{data_identity(inner)} {languages}"
    info = getattr(data_source, "dataset_info", None)
    if info is not None:
        return f"tfds:{info.full_name}:{data_source.split}:{len(data_source)}"
    texts = [
        part
        for _, examples in read_in_chunks(data_source)
        for example in examples
        for part in (text(example["source"]), text(example["target"]))
    ]
    return f"content:{len(data_source)}:{_sha256(*texts)}"


def fingerprint(data_source: DataSource, vocabulary: Vocabulary, max_length: int) -> str:
    """The store's name: 24 hex digits of the data's, the tokenizer's and the limit's identity."""
    return _sha256(
        f"v{FORMAT_VERSION}",
        f"max_length={max_length}",
        data_identity(data_source),
        vocabulary_identity(vocabulary),
    )[:24]


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
class TokenArrays(Sequence):
    """One side of a store: `arrays[i]` is pair i's int32 token ids (with eos), a view."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        self.tokens, self.offsets = tokens, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"pair {index} of {len(self)}")
        index %= len(self)
        return self.tokens[self.offsets[index] : self.offsets[index + 1]]


@dataclasses.dataclass(frozen=True)
class TokenStore:
    """A store opened for reading: the same interface as `batching.TokenizedSplit`.

    sources, targets: `TokenArrays`; lengths: int32 [num_pairs, 2]; example_index: int64
    [num_pairs]; all memory-mapped, read-only.
    """

    path: str
    sources: TokenArrays
    targets: TokenArrays
    lengths: np.ndarray
    example_index: np.ndarray
    num_dropped: int
    meta: dict

    def __len__(self) -> int:
        return len(self.example_index)

    @classmethod
    def open(cls, path: str | os.PathLike) -> TokenStore:
        path = os.fspath(path)
        try:
            with open(os.path.join(path, "meta.json"), encoding="utf-8") as file:
                meta = json.load(file)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} is not a token store (no meta.json)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}/meta.json is not valid JSON ({error})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path} has token store format {meta.get('format')}, not "
                             f"{FORMAT_VERSION}")  # fmt: skip
        arrays = {}
        for name, (dtype, tail) in _ARRAYS.items():
            shape = (meta["shapes"][name], *tail)
            file = os.path.join(path, f"{name}.bin")
            expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
            found = os.path.getsize(file) if os.path.exists(file) else None
            if found != expected and shape[0]:  # truncated, extended or missing: not this store
                raise ValueError(
                    f"{file} holds {found if found is not None else 'no'} bytes, not {expected}"
                )
            arrays[name] = (
                np.memmap(file, dtype=dtype, mode="r", shape=shape)
                if shape[0]
                else np.zeros(shape, dtype)  # np.memmap refuses empty files
            )
        return cls(
            path=path,
            sources=TokenArrays(arrays["source_tokens"], arrays["source_offsets"]),
            targets=TokenArrays(arrays["target_tokens"], arrays["target_offsets"]),
            lengths=arrays["lengths"],
            example_index=arrays["example_index"],
            num_dropped=int(meta["num_dropped"]),
            meta=meta,
        )


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------
_worker_vocabulary: Any = None


def _init_worker(vocabulary_state: bytes) -> None:
    global _worker_vocabulary
    _worker_vocabulary = pickle.loads(vocabulary_state)


def _encode_chunk(
    indices: list[int], pairs: list[tuple[str, str]], max_length: int, vocabulary: Any = None
) -> tuple[np.ndarray, ...]:
    """Encode a chunk: (kept indices, source tokens, target tokens, lengths [kept, 2])."""
    vocabulary = vocabulary or _worker_vocabulary
    eos = vocabulary.eos_id
    kept, sources, targets, lengths = [], [], [], []
    for index, (source_text, target_text) in zip(indices, pairs, strict=True):
        source = vocabulary.encode(source_text)
        target = vocabulary.encode_target(target_text)
        if max(len(source), len(target)) + 1 > max_length:
            continue
        kept.append(index)
        sources += source
        sources.append(eos)
        targets += target
        targets.append(eos)
        lengths.append((len(source) + 1, len(target) + 1))
    return (
        np.array(kept, np.int64),
        np.array(sources, np.int32),
        np.array(targets, np.int32),
        np.array(lengths, np.int32).reshape(-1, 2),
    )


def _chunks(data_source: DataSource, chunk_size: int) -> Iterator[tuple[list[int], list]]:
    for indices, examples in read_in_chunks(data_source, chunk_size=chunk_size):
        yield indices, [(text(e["source"]), text(e["target"])) for e in examples]


def _encoded(
    data_source: DataSource, vocabulary: Vocabulary, max_length: int, workers: int, chunk_size: int
) -> Iterator[tuple[np.ndarray, ...]]:
    """The encoded chunks in data order; at most 2 * workers chunks in flight (bounded memory)."""
    if workers <= 1:
        for indices, pairs in _chunks(data_source, chunk_size):
            yield _encode_chunk(indices, pairs, max_length, vocabulary)
        return
    # spawn, not fork: the parent may run JAX's threads, which fork can leave deadlocked.
    with concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(pickle.dumps(vocabulary),),
    ) as pool:
        pending: list[concurrent.futures.Future] = []
        for indices, pairs in _chunks(data_source, chunk_size):
            pending.append(pool.submit(_encode_chunk, indices, pairs, max_length))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _write(
    directory: str, data_source: DataSource, vocabulary: Vocabulary, max_length: int,
    workers: int, chunk_size: int, identity: dict,
) -> None:  # fmt: skip
    counts = dict.fromkeys(_ARRAYS, 0)
    offsets = {"source": 0, "target": 0}
    with contextlib.ExitStack() as stack:
        files = {
            name: stack.enter_context(open(os.path.join(directory, f"{name}.bin"), "wb"))
            for name in _ARRAYS
        }
        for side in offsets:
            np.zeros(1, np.int64).tofile(files[f"{side}_offsets"])
        for kept, sources, targets, lengths in _encoded(
            data_source, vocabulary, max_length, workers, chunk_size
        ):
            for side, tokens, column in (("source", sources, 0), ("target", targets, 1)):
                tokens.tofile(files[f"{side}_tokens"])
                ends = offsets[side] + np.cumsum(lengths[:, column], dtype=np.int64)
                ends.tofile(files[f"{side}_offsets"])
                offsets[side] = int(ends[-1]) if len(ends) else offsets[side]
                counts[f"{side}_tokens"] += len(tokens)
                counts[f"{side}_offsets"] += len(ends)
            lengths.tofile(files["lengths"])
            kept.astype(np.int64).tofile(files["example_index"])
            counts["lengths"] += len(lengths)
            counts["example_index"] += len(kept)
    counts["source_offsets"] += 1
    counts["target_offsets"] += 1
    num_pairs = counts["example_index"]
    meta = {
        "format": FORMAT_VERSION,
        "num_pairs": num_pairs,
        "num_dropped": len(data_source) - num_pairs,
        "max_length": max_length,
        "shapes": counts,
        **identity,
    }
    with open(os.path.join(directory, "meta.json"), "w", encoding="utf-8") as file:
        json.dump(meta, file, indent=2, sort_keys=True)


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def open_or_build(
    data_source: DataSource,
    vocabulary: Vocabulary,
    *,
    max_length: int,
    root: str | os.PathLike,
    workers: int = 0,
    chunk_size: int = 8192,
    log: Callable[[str], None] | None = print,
) -> TokenStore:
    """The store of `data_source` tokenized by `vocabulary` (pairs over `max_length` dropped) in
    `root`: opened if it exists, else built there first (see the module docstring).

    workers: encoding processes (0: one per CPU; 1: in this process). chunk_size: pairs per task.

    Raises:
      ValueError: `max_length` < 2, or no pair is short enough.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a token and eos), got {max_length}")
    root = os.fspath(root)
    name = fingerprint(data_source, vocabulary, max_length)
    path = os.path.join(root, name)
    if os.path.exists(os.path.join(path, "meta.json")):
        try:
            TokenStore.open(path)
        except ValueError as error:  # damaged (a disk that filled up, a file cut short): rebuild
            aside = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            os.replace(path, aside)
            if log:
                log(f"warning: token store {path} cannot be read ({error}); moved it to {aside}"
                    " and building it again")  # fmt: skip
    if not os.path.exists(os.path.join(path, "meta.json")):
        start = time.perf_counter()
        os.makedirs(root, exist_ok=True)
        workers = workers or default_workers()
        if len(data_source) <= chunk_size:  # one chunk: starting workers would cost more
            workers = 1
        temporary = tempfile.mkdtemp(prefix=f".tmp-{name}-{os.getpid()}-", dir=root)
        identity = {
            "data": data_identity(data_source),
            "tokenizer": vocabulary_identity(vocabulary),
        }
        try:
            _write(temporary, data_source, vocabulary, max_length, workers, chunk_size, identity)
            os.chmod(temporary, 0o755)  # mkdtemp's 0o700 would hide the store from other users
            try:
                os.rename(temporary, path)
                built = True
            except OSError:  # another process renamed its copy first: use that one
                if not os.path.exists(os.path.join(path, "meta.json")):
                    raise
                built = False
        finally:
            if os.path.exists(temporary):
                shutil.rmtree(temporary, ignore_errors=True)
        if log:
            log(
                f"Token store built in {time.perf_counter() - start:.1f} s ({workers} "
                f"process{'es' if workers > 1 else ''}): {path}"
                if built
                else f"Token store reused (built at the same time by another process): {path}"
            )
    elif log:
        log(f"Token store reused: {path}")
    store = TokenStore.open(path)
    if not len(store):
        raise ValueError(
            f"no example is at most {max_length} tokens long ({store.num_dropped} dropped): "
            "nothing to batch"
        )
    return store
