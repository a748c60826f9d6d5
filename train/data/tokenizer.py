"""A SentencePiece vocabulary shared by source and target, trained in memory, deterministically.

`SentencePieceVocabulary` offers what the input pipeline and decoding need (`pad_id`, `bos_id`,
`eos_id`, `unk_id`, `vocab_size`, `encode`, `decode`), like `WordVocabulary` of the number-words
task. One vocabulary serves both languages (it is trained on the text of both sides: see
`texts_of_both_sides`), as in "Attention Is All You Need", so that the model can share its
source and target embeddings.

Ids: pad 0 ("<pad>"), bos 1 ("<s>"), eos 2 ("</s>"), unk 3 ("<unk>"), then the learned pieces.

Choices, and why:

- Deterministic training: the trainer runs on one thread (`num_threads=1`). With several threads
  the learned model depends on the thread count (measured with sentencepiece 0.2.3 on Multi30k:
  1 and 8 threads give different model bytes, each reproducible), so a model trained on a 16-core
  machine would differ from one trained on a laptop. Unigram training on all the input sentences
  (the default; no sampling) uses no random numbers, so there is no seed to set: the same text
  gives the same model bytes, run after run and process after process. It costs little: about 2 s
  for the 58k sentences of Multi30k train (both sides) and vocab_size 8000.
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
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from train.data.pipeline import read_in_chunks, text

PathLike = str | os.PathLike

MODEL_TYPES = ("unigram", "bpe")
"""The SentencePiece algorithms offered: "unigram" (the default; Kudo, 2018) and "bpe". Its other
two are left out because they break this class's promises: "char" ignores vocab_size (the
vocabulary is the text's characters), and "word" with byte fallback does not round-trip (with
sentencepiece 0.2.3, decode(encode("abc hg")) of a word model gave "▁abc hg")."""

SPECIAL_PIECES = ("<pad>", "<s>", "</s>", "<unk>")
"""Pieces of ids 0, 1, 2, 3: padding, beginning and end of sequence, unknown."""


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


class SentencePieceVocabulary:
    """A SentencePiece model with the special ids pad 0, bos 1, eos 2, unk 3.

    Create one with `train`, `from_file` (or its alias `load`) or `load_or_train`; the
    constructor takes the serialized model (the bytes of a .model file).

    Args:
      model: the serialized SentencePiece model.
      origin: where the bytes come from, for error messages (e.g. the file path).

    Raises:
      ValueError: if `model` is not a SentencePiece model, or its special ids are not
        0, 1, 2, 3.
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2
    unk_id = 3

    def __init__(self, model: bytes, origin: str = "the model bytes"):
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model)
        except RuntimeError as error:
            raise ValueError(f"{origin} is not a SentencePiece model ({error})") from None
        special_ids = (processor.pad_id(), processor.bos_id(), processor.eos_id())
        special_ids += (processor.unk_id(),)
        if special_ids != (self.pad_id, self.bos_id, self.eos_id, self.unk_id):
            raise ValueError(
                f"{origin} has the ids (pad, bos, eos, unk) = {special_ids}, not (0, 1, 2, 3): "
                "it was not trained by SentencePieceVocabulary.train"
            )
        self._model = bytes(model)
        self._processor = processor

    # --- Creating, saving, loading ------------------------------------------------------------

    @classmethod
    def train(
        cls,
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
        if not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_PIECES):
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
                pad_id=cls.pad_id,
                bos_id=cls.bos_id,
                eos_id=cls.eos_id,
                unk_id=cls.unk_id,
                pad_piece=SPECIAL_PIECES[0],
                bos_piece=SPECIAL_PIECES[1],
                eos_piece=SPECIAL_PIECES[2],
                unk_piece=SPECIAL_PIECES[3],
                minloglevel=2,  # errors are raised; progress logs would flood stderr
            )
        except RuntimeError as error:
            if sentence_count == 0:
                raise ValueError("no training text: texts is empty") from None
            raise _training_error(str(error), vocab_size, sentence_count) from None
        return cls(model.getvalue(), origin="the trained model")

    @classmethod
    def from_file(cls, path: PathLike) -> SentencePieceVocabulary:
        """Loads a .model file written by `save` (or by SentencePiece with the same special ids).

        Raises:
          OSError: if the file cannot be read (the error names it).
          ValueError: if it is not a SentencePiece model with ids pad 0, bos 1, eos 2, unk 3.
        """
        path = Path(path)
        return cls(path.read_bytes(), origin=str(path))

    load = from_file

    @classmethod
    def load_or_train(
        cls,
        path: PathLike,
        texts: Iterable[str | bytes],
        vocab_size: int = 8000,
        **train_options: Any,
    ) -> SentencePieceVocabulary:
        """The vocabulary saved at `path` if there is one, else one trained on `texts` and saved
        there: a run that resumes in the same work directory reuses its tokenizer.

        `texts` is only read when training (a generator costs nothing otherwise).
        `train_options` go to `train`; they are not compared with those of a saved vocabulary,
        only its size is.

        Raises:
          ValueError: if the file at `path` is not a valid vocabulary, or has a different
            vocab_size than requested; and see `train`.
        """
        path = Path(path)
        if path.exists():
            vocabulary = cls.from_file(path)
            if vocabulary.vocab_size != vocab_size:
                raise ValueError(
                    f"{path} holds a vocabulary of {vocabulary.vocab_size} ids, but "
                    f"vocab_size={vocab_size} was requested: ask for {vocabulary.vocab_size}, "
                    "or delete the file (and the checkpoints trained with it) to train anew"
                )
            return vocabulary
        vocabulary = cls.train(texts, vocab_size, **train_options)
        vocabulary.save(path)
        return vocabulary

    def save(self, path: PathLike) -> None:
        """Writes the .model file (creating its directory). The write is atomic (a temporary file
        renamed into place), so an interrupted run never leaves a truncated model behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", delete=False
        ) as temporary:
            temporary.write(self._model)
        os.replace(temporary.name, path)

    @property
    def model_bytes(self) -> bytes:
        """The serialized model: the content of the .model file."""
        return self._model

    # --- Encoding and decoding ----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, the special ones and byte pieces included."""
        return self._processor.vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos or eos."""
        return self._processor.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`: stops at the first eos (what follows it is padding or what the model
        wrote after finishing), skips pad and bos. Ids outside the vocabulary (an output layer
        padded past `vocab_size`) read as unk, which SentencePiece writes " ⁇ ". Accepts numpy
        and jax integer arrays."""
        kept = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id == self.eos_id:
                break
            if token_id in (self.pad_id, self.bos_id):
                continue
            kept.append(token_id if 0 <= token_id < self.vocab_size else self.unk_id)
        return self._processor.decode(kept)

    def id_to_piece(self, token_id: int) -> str:
        """The piece of `token_id`, e.g. "▁the" (▁ marks a preceding space) or "<0xC3>"."""
        return self._processor.id_to_piece(int(token_id))

    # --- Python protocols ---------------------------------------------------------------------

    def __getstate__(self) -> dict[str, bytes]:  # pickled as the model bytes (grain workers)
        return {"model": self._model}

    def __setstate__(self, state: dict[str, bytes]) -> None:
        self.__init__(state["model"])

    def __repr__(self) -> str:
        return f"SentencePieceVocabulary(vocab_size={self.vocab_size})"
