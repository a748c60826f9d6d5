"""Training tokenizers: a SentencePiece vocabulary shared by source and target, trained in memory,
deterministically (and, for tests and demos, a MarianMT-style tokenizer's files).

One vocabulary serves both languages (it is trained on the text of both sides: see
`texts_of_both_sides`), as in "Attention Is All You Need", so that the model can share its
source and target embeddings (`train.data.vocabulary.SentencePieceVocabulary` reads it).

Ids: pad 0 ("<pad>"), bos 1 ("<s>"), eos 2 ("</s>"), unk 3 ("<unk>"), then the learned pieces.

Choices, and why:

- Deterministic training: the trainer runs on one thread (`num_threads=1`). With several threads
  the learned model depends on the thread count (measured with sentencepiece 0.2.3 on Multi30k:
  1 and 8 threads give different model bytes, each reproducible), so a model trained on a 16-core
  machine would differ from one trained on a laptop. Unigram training on all the input sentences
  (the default; no sampling) uses no random numbers, so there is no seed to set: the same text
  gives the same model bytes, run after run and process after process (the time it takes on
  Multi30k: README, "Translate real text").
- `byte_fallback=True`: a character that is not a piece is encoded as its UTF-8 bytes (256 byte
  pieces are part of the vocabulary), never as unk, so every text round-trips and the model can
  write characters it rarely saw. `character_coverage=1.0`: every character of the training text
  gets its own piece.
- No text normalisation by SentencePiece (`normalization_rule_name="identity"`; its default,
  NFKC, would turn e.g. "…" into "..." and the model could never write the reference's
  characters, which BLEU compares). SentencePiece still drops leading, trailing and repeated
  spaces. So `decode(encode(text)) == text` for every text that is whitespace-normalised
  (`train.data.parallel_text.normalize_whitespace`, which the datasets apply) and does not contain
  "▁" (U+2581, which SentencePiece uses for the space and decodes as one).
- The vocabulary size is exact (`hard_vocab_limit`): if the text cannot support `vocab_size`
  pieces, training raises a `ValueError` that says how many it can support, rather than quietly
  returning a smaller vocabulary (a model config may depend on the size).
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from train.data.sources import read_in_chunks, text
from train.data.vocabulary import SPECIAL_TOKENS, MarianVocabulary, SentencePieceVocabulary

PathLike = str | os.PathLike

MODEL_TYPES = ("unigram", "bpe")
"""The SentencePiece algorithms offered: "unigram" (the default; Kudo, 2018) and "bpe". Its other
two are left out because they break this class's promises: "char" ignores vocab_size (the
vocabulary is the text's characters), and "word" with byte fallback does not round-trip (with
sentencepiece 0.2.3, decode(encode("abc hg")) of a word model gave "▁abc hg")."""


def texts_of_both_sides(
    data_source: Sequence[Mapping[str, bytes | str]], chunk_size: int = 4096
) -> Iterator[str]:
    """Yields the source then the target text of every example, in order: the training text of a
    shared vocabulary. Reads `chunk_size` examples per call where the source offers
    `__getitems__` (one ArrayRecord read call per chunk)."""
    for _, examples in read_in_chunks(data_source, chunk_size=chunk_size):
        for example in examples:
            yield text(example["source"])
            yield text(example["target"])


def _training_error(message: str, vocab_size: int, sentence_count: int) -> ValueError:
    """A readable ValueError for a SentencePiece training failure (its messages are terse)."""
    if match := re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", message):
        return ValueError(
            f"the training text ({sentence_count} sentences) supports at most "
            f"{match.group(2)} pieces, fewer than vocab_size={vocab_size}: use a smaller "
            "vocab_size or more text"
        )
    if match := re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message):
        return ValueError(
            f"vocab_size={vocab_size} is too small for this text: it needs at least "
            f"{match.group(2)} pieces (the 4 special ids, 256 byte pieces with byte_fallback, "
            "and one piece per character of the text)"
        )
    return ValueError(f"SentencePiece could not train a {vocab_size}-piece vocabulary: {message}")


def train_sentencepiece(
    texts: Iterable[str | bytes],
    vocab_size: int = 8000,
    *,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    byte_fallback: bool = True,
) -> SentencePieceVocabulary:
    """Trains a vocabulary of exactly `vocab_size` ids on `texts`, in memory.

    Args:
      texts: training sentences, one per item (str, or UTF-8 bytes); for a shared vocabulary
        both sides of the training split: `texts_of_both_sides(data_source)`.
      vocab_size: number of ids, the 4 special ones and the 256 byte pieces included.
      model_type: one of `MODEL_TYPES`.
      character_coverage, byte_fallback: see the module docstring.

    Raises:
      ValueError: for an unknown model type, no text, or a `vocab_size` the text cannot
        support (the message says how many pieces it can).
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be an int above 4, got {vocab_size!r}")
    sentence_count = 0

    def sentences() -> Iterator[str]:
        nonlocal sentence_count
        for sentence in texts:
            sentence_count += 1
            yield text(sentence)

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            normalization_rule_name="identity",
            hard_vocab_limit=True,
            num_threads=1,  # deterministic: see the module docstring
            pad_id=SentencePieceVocabulary.pad_id,
            bos_id=SentencePieceVocabulary.bos_id,
            eos_id=SentencePieceVocabulary.eos_id,
            unk_id=SentencePieceVocabulary.unk_id,
            pad_piece=SPECIAL_TOKENS[0],
            bos_piece=SPECIAL_TOKENS[1],
            eos_piece=SPECIAL_TOKENS[2],
            unk_piece=SPECIAL_TOKENS[3],
            minloglevel=2,  # errors are raised; progress logs would flood stderr
        )
    except RuntimeError as error:
        if sentence_count == 0:
            raise ValueError("no training text: texts is empty") from None
        raise _training_error(str(error), vocab_size, sentence_count) from None
    return SentencePieceVocabulary(model.getvalue(), origin="the trained model")


def load_or_train_sentencepiece(
    path: PathLike,
    texts: Iterable[str | bytes],
    vocab_size: int = 8000,
    **train_options: Any,
) -> SentencePieceVocabulary:
    """The vocabulary saved at `path` if there is one, else one trained on `texts` and saved
    there: a run that resumes in the same work directory reuses its tokenizer.

    `texts` is only read when training (a generator costs nothing otherwise).
    `train_options` go to `train_sentencepiece`; they are not compared with those of a saved
    vocabulary, only its size is.

    Raises:
      ValueError: if the file at `path` is not a valid vocabulary, or has a different
        vocab_size than requested; and see `train_sentencepiece`.
    """
    path = Path(path)
    if path.exists():
        vocabulary = SentencePieceVocabulary.from_file(path)
        if vocabulary.vocab_size != vocab_size:
            raise ValueError(
                f"{path} holds a vocabulary of {vocabulary.vocab_size} ids, but "
                f"vocab_size={vocab_size} was requested: ask for {vocabulary.vocab_size}, "
                "or delete the file (and the checkpoints trained with it) to train anew"
            )
        return vocabulary
    vocabulary = train_sentencepiece(texts, vocab_size, **train_options)
    vocabulary.save(path)
    return vocabulary


def write_marian_tokenizer_files(
    directory: PathLike,
    source_texts: list[str],
    target_texts: list[str],
    *,
    vocab_size: int = 500,
) -> MarianVocabulary:
    """Train a MarianMT-style tokenizer on text and write its files (`source.spm`,
    `target.spm`, `vocab.json`) to `directory`: for tests, demos and small experiments.

    As opus-mt's: a unigram SentencePiece model per language with `</s>` = 0 and `<unk>` = 1,
    and one vocabulary, the union of both models' pieces, with `<pad>` last.
    """

    def train(texts: list[str]) -> bytes:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="unigram",
            character_coverage=1.0,
            num_threads=1,
            eos_id=0,
            unk_id=1,
            bos_id=-1,
            pad_id=-1,
            minloglevel=2,
        )
        return model.getvalue()

    models = {"source.spm": train(source_texts), "target.spm": train(target_texts)}
    pieces = {"</s>": 0, "<unk>": 1}
    for model in models.values():
        processor = spm.SentencePieceProcessor(model_proto=model)
        for index in range(processor.get_piece_size()):
            pieces.setdefault(processor.id_to_piece(index), len(pieces))
    pieces["<pad>"] = len(pieces)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        (directory / name).write_bytes(model)
    (directory / "vocab.json").write_text(json.dumps(pieces, ensure_ascii=False), encoding="utf-8")
    return MarianVocabulary(models["source.spm"], models["target.spm"], pieces)


def sample_indices(count: int, max_pairs: int) -> np.ndarray:
    """The indices of an evenly spread, deterministic sample of `max_pairs` of `count` pairs
    (all of them, in order, when `max_pairs` is 0 or at least `count`)."""
    limit = min(max_pairs or count, count)
    return np.unique(np.linspace(0, count - 1, limit).astype(np.int64))


def load_or_train_on_split(
    path: PathLike,
    train_source: Sequence[Mapping[str, bytes | str]],
    vocab_size: int,
    *,
    max_pairs: int = 0,
    log: Callable[[str], None] | None = print,
) -> SentencePieceVocabulary:
    """The vocabulary at `path`, or one trained on both sides of `train_source` and saved there.

    `max_pairs` > 0 trains on an evenly spread, deterministic subset of that many pairs
    (`sample_indices`; only those are read) when the split is larger; 0 reads every pair.
    `log` gets one line when a tokenizer is trained (on how many pairs, and how long it took).
    """
    if Path(path).exists():
        return load_or_train_sentencepiece(path, [], vocab_size)
    start = time.perf_counter()
    count = len(train_source)
    indices = sample_indices(count, max_pairs)
    examples = [e for _, chunk in read_in_chunks(train_source, indices) for e in chunk]
    texts = [text(e["source"]) for e in examples] + [text(e["target"]) for e in examples]
    vocabulary = load_or_train_sentencepiece(path, texts, vocab_size)
    if log:
        sample = (
            f"{len(indices):,} of {count:,} pairs, evenly spread"
            if len(indices) < count
            else f"all {count:,} pairs"
        )
        log(
            f"Tokenizer trained on {sample} ({vocab_size:,} pieces, "
            f"{time.perf_counter() - start:.0f} s): {path}"
        )
    return vocabulary
