"""Vocabularies: text <-> token ids, one protocol for the three kinds a run can use.

    WordVocabulary           the number-words task's: digits and words (train.data.numbers)
    SentencePieceVocabulary  a SentencePiece model shared by both languages, as in the paper,
                             trained on the training split (train.data.tokenizer_training)
    MarianVocabulary         an imported MarianMT model's: source.spm, target.spm, vocab.json

Each offers `Vocabulary`: special ids, `vocab_size`, `encode` (source text), `encode_target`
(target text: the same as `encode` except for Marian, whose languages have separate
SentencePiece models), `decode` (target ids -> text), `pieces` (ids -> token strings) and
`word_indices` (ids -> the word each token belongs to, for word alignments). `bos_id` is the
decoder's start token.
`vocabulary_identity` names what decides the ids: runs store it to refuse another tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import sentencepiece as spm

PathLike = str | os.PathLike

# The values of config.tokenizer: how a text dataset's run tokenizes (number words bring their own).
TOKENIZERS = ("sentencepiece", "marian")
# An imported MarianMT model's tokenizer files.
MARIAN_TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json")


class Vocabulary(Protocol):
    """What batching, decoding and scoring need of a tokenizer."""

    pad_id: int
    bos_id: int  # the decoder's start token
    eos_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """Source text -> ids, without bos or eos."""
        ...

    def encode_target(self, text: str) -> list[int]:
        """Target text -> ids, without bos or eos."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Target ids -> text: special tokens dropped, stopping at eos."""
        ...

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The token string of each id (special ones by name: "</s>")."""
        ...

    def word_indices(self, ids: Iterable[int]) -> list[int]:
        """For each id, the index (from 0) of the word its token belongs to; -1 for a token of
        no word (pad, bos, eos, a language code). See `flax_transformer.alignment`."""
        ...


WORD_START = "\u2581"  # SentencePiece's "▁": the piece starts a new word (a space before it)


def piece_word_indices(pieces: Sequence[str], no_word: Iterable[bool]) -> list[int]:
    """Word index of each SentencePiece piece: a word starts at a piece beginning with "▁" (and
    at the first piece); pieces flagged in `no_word` get -1 and end the word before them."""
    indices, word, previous_was_word = [], -1, False
    for piece, skip in zip(pieces, no_word, strict=True):
        if skip:
            indices.append(-1)
            previous_was_word = False
            continue
        if not previous_was_word or piece.startswith(WORD_START):
            word += 1
        indices.append(word)
        previous_was_word = True
    return indices


# ---------------------------------------------------------------------------------------------
# Words and digits (the number-words task)
# ---------------------------------------------------------------------------------------------
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
"""Padding, beginning and end of sequence, unknown: ids 0, 1, 2, 3 (SentencePiece's too)."""

_TOKEN_PATTERN = re.compile(r"\d|[^\s\d]+")
"""A token is a single digit or a run of characters that are neither digits nor whitespace."""


class WordVocabulary:
    """A tokenizer whose tokens are single digits and whitespace-separated words.

    The number-words task's vocabulary (`train.data.numbers.number_words_vocabulary`).

    Args:
      tokens: the token strings, id = index; the first four must be `SPECIAL_TOKENS`.
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2
    unk_id = 3

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"the first tokens must be {SPECIAL_TOKENS}, got {tokens[:4]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("tokens must be distinct")
        for token in tokens[len(SPECIAL_TOKENS) :]:
            if _TOKEN_PATTERN.fullmatch(token) is None:
                raise ValueError(f"{token!r} is not a single digit or a word without digits")
        self.tokens = tokens
        self._id_of = {token: i for i, token in enumerate(tokens)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no bos/eos added); unknown tokens become `unk_id`."""
        return [self._id_of.get(token, self.unk_id) for token in _TOKEN_PATTERN.findall(text)]

    def encode_target(self, text: str) -> list[int]:
        """Target text -> ids: as `encode` (one vocabulary for both sides)."""
        return self.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`: stops at the first eos, skips pad and bos, joins words with spaces and
        consecutive digits without, so `decode(encode("40712")) == "40712"`. Ids outside the
        vocabulary (a model whose output layer is padded past `vocab_size`) read as "<unk>"."""
        pieces: list[str] = []
        for token_id in ids:
            token_id = int(token_id)  # accepts numpy and jax integers
            if token_id == self.eos_id:
                break
            if token_id in (self.pad_id, self.bos_id):
                continue
            in_vocabulary = 0 <= token_id < self.vocab_size
            pieces.append(self.tokens[token_id if in_vocabulary else self.unk_id])
        text = ""
        for piece in pieces:
            # Digits were one token each ("40712" -> 4 0 7 1 2): glue them back together.
            glue = "" if not text or (text[-1].isdigit() and piece.isdigit()) else " "
            text += glue + piece
        return text

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The token of each id ("<unk>" outside the vocabulary)."""
        return [self.tokens[i] if 0 <= i < self.vocab_size else "<unk>" for i in map(int, ids)]

    def word_indices(self, ids: Iterable[int]) -> list[int]:
        """Every token is its own word (each digit too: its place decides the words it
        becomes); pad, bos and eos are none (-1)."""
        specials = (self.pad_id, self.bos_id, self.eos_id)
        indices, word = [], 0
        for token_id in map(int, ids):
            indices.append(-1 if token_id in specials else word)
            word += token_id not in specials
        return indices

    def __repr__(self) -> str:
        return f"WordVocabulary(vocab_size={self.vocab_size})"


# ---------------------------------------------------------------------------------------------
# SentencePiece, shared by both languages
# ---------------------------------------------------------------------------------------------
class SentencePieceVocabulary:
    """A SentencePiece model with the special ids pad 0, bos 1, eos 2, unk 3.

    Train one with `train.data.tokenizer_training.train_sentencepiece`, read one with
    `from_file`; the constructor takes the serialized model (the bytes of a .model file).

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
                "it was not trained by train.data.tokenizer_training"
            )
        self._model = bytes(model)
        self._processor = processor

    # --- Creating, saving, loading ------------------------------------------------------------

    @classmethod
    def from_file(cls, path: PathLike) -> SentencePieceVocabulary:
        """Loads a .model file written by `save` (or by SentencePiece with the same special ids).

        Raises:
          OSError: if the file cannot be read (the error names it).
          ValueError: if it is not a SentencePiece model with ids pad 0, bos 1, eos 2, unk 3.
        """
        path = Path(path)
        return cls(path.read_bytes(), origin=str(path))

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

    def encode_target(self, text: str) -> list[int]:
        """Target text -> ids: as `encode` (one vocabulary for both sides)."""
        return self.encode(text)

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

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The piece of each id (ids outside the vocabulary read as unk's)."""
        size = self.vocab_size
        return [self.id_to_piece(i if 0 <= i < size else self.unk_id) for i in map(int, ids)]

    def word_indices(self, ids: Iterable[int]) -> list[int]:
        """Words start at pieces beginning with "▁"; pad, bos and eos belong to none."""
        ids = [int(i) for i in ids]
        specials = (self.pad_id, self.bos_id, self.eos_id)
        return piece_word_indices(self.pieces(ids), [i in specials for i in ids])

    # --- Python protocols ---------------------------------------------------------------------

    def __getstate__(self) -> dict[str, bytes]:  # pickled as the model bytes (grain workers)
        return {"model": self._model}

    def __setstate__(self, state: dict[str, bytes]) -> None:
        self.__init__(state["model"])

    def __repr__(self) -> str:
        return f"SentencePieceVocabulary(vocab_size={self.vocab_size})"


# ---------------------------------------------------------------------------------------------
# MarianMT's tokenizer: source.spm, target.spm, vocab.json
# ---------------------------------------------------------------------------------------------
_LANGUAGE_CODE = re.compile(r">>.+?<<")


class MarianVocabulary:
    """The MarianMT tokenizer from its own files, with sentencepiece and json only.

    As Hugging Face's `MarianTokenizer` (shared vocabulary): source text is cut into pieces by
    `source.spm`, pieces become ids through `vocab.json` (a piece it lacks is `<unk>`), and a
    leading language code such as `>>fra<<` (multilingual targets) is one token. Target text
    uses `target.spm`. `decode` maps ids back to pieces through `vocab.json`, drops the special
    tokens (`skip_special_tokens=True`) and joins the pieces with `target.spm`.

    `bos_id` is the decoder start token: the pad id, as in MarianMT.
    """

    def __init__(self, source_spm: bytes, target_spm: bytes, vocab: Mapping[str, int]):
        self.source_model = spm.SentencePieceProcessor(model_proto=source_spm)
        self.target_model = spm.SentencePieceProcessor(model_proto=target_spm)
        self.encoder = dict(vocab)
        self.decoder = {index: piece for piece, index in self.encoder.items()}
        for piece in ("<unk>", "</s>", "<pad>"):
            if piece not in self.encoder:
                raise ValueError(f"vocab.json has no {piece!r} entry")
        self.unk_id = self.encoder["<unk>"]
        self.eos_id = self.encoder["</s>"]
        self.pad_id = self.encoder["<pad>"]
        self.bos_id = self.pad_id  # the decoder's start token
        self.special_ids = {self.unk_id, self.eos_id, self.pad_id}
        self._special_pattern = re.compile("(</s>|<unk>|<pad>)")

    def __getstate__(self) -> dict[str, Any]:  # pickled as its files (token store workers)
        return {
            "source_spm": self.source_model.serialized_model_proto(),
            "target_spm": self.target_model.serialized_model_proto(),
            "vocab": self.encoder,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source_spm"], state["target_spm"], state["vocab"])

    @classmethod
    def from_directory(cls, directory: PathLike) -> MarianVocabulary:
        directory = Path(directory)
        missing = [name for name in MARIAN_TOKENIZER_FILES if not (directory / name).exists()]
        if missing:
            raise FileNotFoundError(f"{directory} lacks the Marian tokenizer file(s) {missing}")
        settings_path = directory / "tokenizer_config.json"
        if settings_path.exists():
            settings = json.loads(settings_path.read_text(encoding="utf-8"))
            if settings.get("separate_vocabs"):
                raise ValueError(
                    "tokenizer_config.json has separate_vocabs=True: separate source and target "
                    "vocabularies are not supported"
                )
        try:
            vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{directory / 'vocab.json'} is not valid JSON: {error}") from None
        return cls(
            (directory / "source.spm").read_bytes(), (directory / "target.spm").read_bytes(), vocab
        )

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _pieces(self, model: Any, text: str) -> list[str]:
        pieces: list[str] = []
        # Special tokens written in the text are tokens (as the reference's added tokens).
        for part in self._special_pattern.split(text):
            if part in ("</s>", "<unk>", "<pad>"):
                pieces.append(part)
                continue
            part = part.strip() if len(pieces) else part.rstrip()
            if not part:
                continue
            code = _LANGUAGE_CODE.match(part) if not pieces else None
            if code:
                pieces.append(code.group(0))
                part = part[code.end() :]
            pieces.extend(model.encode(part, out_type=str))
        return pieces

    def _ids(self, pieces: list[str]) -> list[int]:
        return [self.encoder.get(piece, self.unk_id) for piece in pieces]

    def encode(self, text: str) -> list[int]:
        """Source text -> ids (without the eos the model input ends with)."""
        return self._ids(self._pieces(self.source_model, text))

    def encode_target(self, text: str) -> list[int]:
        """Target text -> ids (labels), cut by target.spm."""
        return self._ids(self._pieces(self.target_model, text))

    def decode(self, ids: Any) -> str:
        """Ids -> target text, special tokens dropped."""
        pieces = [
            self.decoder.get(int(i), "<unk>")
            for i in np.asarray(ids).reshape(-1)
            if int(i) not in self.special_ids
        ]
        return self.target_model.decode_pieces(pieces).replace("\u2581", " ").strip()

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The vocab.json piece of each id ("<unk>" for an id it lacks)."""
        return [self.decoder.get(int(i), "<unk>") for i in ids]

    def word_indices(self, ids: Iterable[int]) -> list[int]:
        """Words start at pieces beginning with "▁"; pad, eos and a language code such as
        ">>fra<<" belong to none."""
        pieces = self.pieces(ids)
        no_word = [
            piece in ("</s>", "<pad>") or _LANGUAGE_CODE.fullmatch(piece) is not None
            for piece in pieces
        ]
        return piece_word_indices(pieces, no_word)

    def __repr__(self) -> str:
        return (
            f"MarianVocabulary(vocab_size={self.vocab_size}, pad={self.pad_id}, eos={self.eos_id})"
        )


# ---------------------------------------------------------------------------------------------
# Identity: what decides the ids
# ---------------------------------------------------------------------------------------------
def sha256_of(*parts: bytes | str) -> str:
    """SHA-256 hex digest of `parts`, each length-prefixed (no two sequences collide)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def vocabulary_identity(vocabulary: Vocabulary) -> str:
    """A string that changes when the tokenizer's ids would: its kind and a SHA-256 of its
    model (SentencePiece model bytes; Marian's two models and vocab.json; a word list)."""
    kind = type(vocabulary).__name__
    if hasattr(vocabulary, "model_bytes"):
        return f"{kind}:{sha256_of(vocabulary.model_bytes)}"
    if hasattr(vocabulary, "source_model"):  # Marian
        return f"{kind}:" + sha256_of(
            vocabulary.source_model.serialized_model_proto(),
            vocabulary.target_model.serialized_model_proto(),
            json.dumps(vocabulary.encoder, sort_keys=True),
        )
    if hasattr(vocabulary, "tokens"):
        return f"{kind}:{sha256_of(*vocabulary.tokens)}"
    return f"{kind}:{sha256_of(pickle.dumps(vocabulary))}"


# ---------------------------------------------------------------------------------------------
# Decoded rows and alignment units (train.translate, train.exported, train.serve)
# ---------------------------------------------------------------------------------------------
ALIGNMENT_UNITS = ("word", "piece")


def output_ids(row: Iterable[int], eos_id: int, pad_id: int) -> list[int]:
    """A decoded output row up to and including its first eos (the rest is padding); a row
    without eos loses only its padding."""
    ids = [int(t) for t in row]
    if eos_id in ids:
        return ids[: ids.index(eos_id) + 1]
    return [t for t in ids if t != pad_id]


def alignment_units(vocabulary: Vocabulary, ids: Sequence[int], units: str) -> list[int]:
    """The unit each token of `ids` is aligned as: its word (`word_indices`, units="word") or
    itself (its position, units="piece"); -1 for a token of no word (pad, bos, eos, ...).

    Raises:
      ValueError: for units other than "word" and "piece".
    """
    if units not in ALIGNMENT_UNITS:
        raise ValueError(f"alignment units must be one of {list(ALIGNMENT_UNITS)}, got {units!r}")
    words = vocabulary.word_indices(ids)
    if units == "piece":
        return [i if w >= 0 else -1 for i, w in enumerate(words)]
    return words


# ---------------------------------------------------------------------------------------------
# Files that rebuild a vocabulary (an exported translator's tokenizer: train.export)
# ---------------------------------------------------------------------------------------------
WORDS_FILE = "words.json"  # a WordVocabulary's tokens, id = index
SENTENCEPIECE_FILE = "tokenizer.model"


def write_vocabulary(vocabulary: Vocabulary, directory: PathLike) -> dict[str, Any]:
    """Write the files that rebuild `vocabulary` into `directory`: words.json (a
    WordVocabulary's tokens), tokenizer.model (SentencePiece) or source.spm, target.spm and
    vocab.json (Marian). Returns the record `read_vocabulary` takes: {"kind", "files",
    "identity"} (JSON)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(vocabulary, WordVocabulary):
        kind, files = "words", {WORDS_FILE: json.dumps(vocabulary.tokens).encode("utf-8")}
    elif isinstance(vocabulary, SentencePieceVocabulary):
        kind, files = "sentencepiece", {SENTENCEPIECE_FILE: vocabulary.model_bytes}
    elif isinstance(vocabulary, MarianVocabulary):
        state = vocabulary.__getstate__()
        kind = "marian"
        files = {
            "source.spm": state["source_spm"],
            "target.spm": state["target_spm"],
            "vocab.json": json.dumps(state["vocab"], ensure_ascii=False).encode("utf-8"),
        }
    else:
        raise TypeError(f"cannot write a {type(vocabulary).__name__} to files")
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return {"kind": kind, "files": sorted(files), "identity": vocabulary_identity(vocabulary)}


def read_vocabulary(directory: PathLike, record: Mapping[str, Any]) -> Vocabulary:
    """The vocabulary `write_vocabulary` wrote into `directory` (`record`: what it returned).

    Raises:
      FileNotFoundError: naming a missing file.
      ValueError: for an unknown kind, or files whose identity differs from the record's (they
        would give other ids than the model was trained with).
    """
    directory = Path(directory)
    kind = record.get("kind")
    for name in record.get("files", []):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory / name} is missing (the {kind} tokenizer)")
    if kind == "words":
        tokens = json.loads((directory / WORDS_FILE).read_text(encoding="utf-8"))
        vocabulary: Vocabulary = WordVocabulary(tokens)
    elif kind == "sentencepiece":
        vocabulary = SentencePieceVocabulary.from_file(directory / SENTENCEPIECE_FILE)
    elif kind == "marian":
        vocabulary = MarianVocabulary.from_directory(directory)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r} (words, sentencepiece or marian)")
    identity = vocabulary_identity(vocabulary)
    if identity != record.get("identity"):
        raise ValueError(
            f"the tokenizer files in {directory} are not the ones exported with the model "
            f"(identity {identity[:24]}..., expected {str(record.get('identity'))[:24]}...)"
        )
    return vocabulary
