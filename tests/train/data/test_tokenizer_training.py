"""Training the shared SentencePiece vocabulary, and reading it back: ids, determinism, round
trips, files, errors.

The Multi30k tests read `$MULTI30K_DIR` (default: `shared/data/multi30k` beside the
repository) and skip when it is absent.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import pickle
import random
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import MULTI30K, REPO_ROOT
from train.data.batching import evaluation_batches, tokenize_split
from train.data.tokenizer_training import (
    load_or_train_on_split,
    load_or_train_sentencepiece,
    sample_indices,
    texts_of_both_sides,
    train_sentencepiece,
)
from train.data.vocabulary import SentencePieceVocabulary

SMALL_ALPHABET = "abcdefgh"
SMALL_VOCAB = 300  # 4 special ids + 256 byte pieces + 8 characters + 32 learned pieces


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _small_corpus(seed: int = 0, sentences: int = 400) -> list[str]:
    """Sentences of random words over SMALL_ALPHABET, the same for the same seed."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(SMALL_ALPHABET, k=rng.randint(1, 6))) for _ in range(500)]
    return [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(sentences)]


@pytest.fixture(scope="module")
def small_vocabulary() -> SentencePieceVocabulary:
    return train_sentencepiece(_small_corpus(), SMALL_VOCAB)


def _multi30k_lines(name: str, count: int) -> list[str]:
    if not MULTI30K.is_dir():
        pytest.skip(
            f"Multi30k not found at {MULTI30K} (set MULTI30K_DIR to the directory of train.en etc.)"
        )
    with open(MULTI30K / name, encoding="utf-8") as file:
        return [_normalised(line) for line in itertools.islice(file, count)]


@pytest.fixture(scope="module")
def multi30k_vocabulary() -> SentencePieceVocabulary:
    """Trained on both sides of the first 1000 pairs of train (0.2 s)."""
    english, german = _multi30k_lines("train.en", 1000), _multi30k_lines("train.de", 1000)
    pairs = [{"source": e.encode(), "target": g} for e, g in zip(english, german, strict=True)]
    return train_sentencepiece(texts_of_both_sides(pairs), 1000)


# --- Ids and pieces ---------------------------------------------------------------------------


def test_special_ids_byte_pieces_and_exact_size(small_vocabulary):
    vocabulary = small_vocabulary
    assert (vocabulary.pad_id, vocabulary.bos_id, vocabulary.eos_id, vocabulary.unk_id) == (
        0,
        1,
        2,
        3,
    )
    assert [vocabulary.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert [vocabulary.id_to_piece(4 + byte) for byte in (0, 0x41, 0xFF)] == [
        "<0x00>",
        "<0x41>",
        "<0xFF>",
    ]
    assert vocabulary.vocab_size == SMALL_VOCAB
    ids = vocabulary.encode("abc def")
    assert ids and all(isinstance(i, int) and 4 + 256 <= i < SMALL_VOCAB for i in ids)


def test_unseen_characters_fall_back_to_their_utf8_bytes(small_vocabulary):
    ids = small_vocabulary.encode("€")  # never in the training text: E2 82 AC
    assert [small_vocabulary.id_to_piece(i) for i in ids][-3:] == ["<0xE2>", "<0x82>", "<0xAC>"]
    assert small_vocabulary.unk_id not in ids
    assert small_vocabulary.decode(ids) == "€"


def test_decode_skips_pad_and_bos_and_stops_at_the_first_eos(small_vocabulary):
    vocabulary = small_vocabulary
    ab, cd = vocabulary.encode("ab"), vocabulary.encode("cd")
    ids = [vocabulary.bos_id, *ab, vocabulary.pad_id, *cd, vocabulary.eos_id, *ab, 0, 0]
    assert vocabulary.decode(ids) == "ab cd"  # each encoded text starts with a space piece
    assert vocabulary.decode(np.array([*ab, vocabulary.eos_id], dtype=np.int32)) == "ab"
    assert vocabulary.decode([]) == ""
    assert vocabulary.decode([SMALL_VOCAB + 7]) == " ⁇ "  # outside the vocabulary: unk


# --- Determinism --------------------------------------------------------------------------------


def test_training_is_deterministic_across_runs_and_processes(small_vocabulary):
    again = train_sentencepiece(_small_corpus(), SMALL_VOCAB)
    assert again.model_bytes == small_vocabulary.model_bytes
    other_text = train_sentencepiece(_small_corpus(seed=1), SMALL_VOCAB)
    assert other_text.model_bytes != small_vocabulary.model_bytes

    script = textwrap.dedent(
        f"""
        import hashlib, json, sys
        from train.data.tokenizer_training import train_sentencepiece

        model = train_sentencepiece(json.load(sys.stdin), {SMALL_VOCAB}).model_bytes
        print(hashlib.sha256(model).hexdigest())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        input=json.dumps(_small_corpus()),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert result.returncode == 0, result.stderr
    expected = hashlib.sha256(small_vocabulary.model_bytes).hexdigest()
    assert result.stdout.strip().splitlines()[-1] == expected


# --- Round trips ----------------------------------------------------------------------------------

# A small alphabet for the training text, and more for the round trips: characters never seen in
# training, tabs and newlines (whitespace, normalised away first), a combining accent.
ROUND_TRIP_ALPHABET = SMALL_ALPHABET + "xyzäßé€🙂\u0301.,?!-'\" \t\n"


@given(st.text(alphabet=ROUND_TRIP_ALPHABET, max_size=60))
def test_normalised_text_round_trips(small_vocabulary, text):
    text = _normalised(text)
    ids = small_vocabulary.encode(text)
    assert small_vocabulary.unk_id not in ids
    assert small_vocabulary.decode(ids) == text
    assert small_vocabulary.decode([small_vocabulary.bos_id, *ids, small_vocabulary.eos_id]) == text


@pytest.mark.parametrize("text", ["cafe\u0301", "wait…", "ﬁne", "ＡＢ", "½ m²"])
def test_text_is_not_unicode_normalised(small_vocabulary, text):
    # NFKC (SentencePiece's default normalisation) would change each of these; a model could
    # then never write the reference's characters.
    assert small_vocabulary.decode(small_vocabulary.encode(text)) == text


def test_multi30k_validation_lines_round_trip(multi30k_vocabulary):
    lines = _multi30k_lines("val.en", 300) + _multi30k_lines("val.de", 300)
    for line in lines:
        ids = multi30k_vocabulary.encode(line)
        assert multi30k_vocabulary.unk_id not in ids, line
        assert multi30k_vocabulary.decode(ids) == line
    # Subwords, not characters: fewer ids than half the characters.
    assert sum(len(multi30k_vocabulary.encode(line)) for line in lines) < sum(map(len, lines)) / 2


def test_vocabulary_works_in_the_input_pipeline(multi30k_vocabulary):
    examples = [
        {"source": b"A dog runs.", "target": "Ein Hund rennt."},
        {"source": "Two men.", "target": "Zwei Männer."},
    ]
    split = tokenize_split(examples, multi30k_vocabulary, max_length=16, drop_long=False)
    (batch,) = evaluation_batches(
        split, batch_size=2, bucket_lengths=[16], pad_id=0, bos_id=multi30k_vocabulary.bos_id
    )
    order = batch["example_index"]  # sorted by length
    assert [multi30k_vocabulary.decode(row) for row in batch["target"][np.argsort(order)]] == [
        "Ein Hund rennt.",
        "Zwei Männer.",
    ]
    assert (batch["decoder_input"][:, 0] == multi30k_vocabulary.bos_id).all()


def test_bpe_model_type():
    vocabulary = train_sentencepiece(_small_corpus(), 280, model_type="bpe")
    unigram = train_sentencepiece(_small_corpus(), 280)
    assert vocabulary.model_bytes != unigram.model_bytes
    assert vocabulary.vocab_size == 280
    assert vocabulary.decode(vocabulary.encode("abc hg zz€")) == "abc hg zz€"


def test_texts_of_both_sides_alternates_source_and_target_in_order():
    examples = [{"source": f"s{i}".encode(), "target": f"t{i}"} for i in range(5)]
    assert list(texts_of_both_sides(examples, chunk_size=2)) == [
        text for i in range(5) for text in (f"s{i}", f"t{i}")
    ]


# --- Files --------------------------------------------------------------------------------------


def test_save_load_and_pickle(small_vocabulary, tmp_path):
    path = tmp_path / "sub" / "vocab.model"
    small_vocabulary.save(path)
    assert path.read_bytes() == small_vocabulary.model_bytes
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    for loaded in (
        SentencePieceVocabulary.from_file(path),
        pickle.loads(pickle.dumps(small_vocabulary)),
    ):
        assert loaded.vocab_size == SMALL_VOCAB
        assert loaded.encode("abc de€") == small_vocabulary.encode("abc de€")


def _never_read():
    raise AssertionError("texts were read although a saved vocabulary exists")
    yield  # a generator: the error is raised only when it is iterated


def test_load_or_train_trains_once_then_reuses(tmp_path):
    path = tmp_path / "workdir" / "vocab.model"
    trained = load_or_train_sentencepiece(path, _small_corpus(), SMALL_VOCAB)
    assert path.read_bytes() == trained.model_bytes
    reused = load_or_train_sentencepiece(path, _never_read(), SMALL_VOCAB)
    assert reused.model_bytes == trained.model_bytes
    with pytest.raises(
        ValueError, match=r"vocab\.model holds a vocabulary of 300 ids, but vocab_size=400"
    ):
        load_or_train_sentencepiece(path, _never_read(), 400)


def _foreign_model() -> bytes:
    """A SentencePiece model with SentencePiece's default ids (unk 0, bos 1, eos 2, no pad)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_small_corpus()), model_writer=model, vocab_size=40, minloglevel=2
    )
    return model.getvalue()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a model", "is not a SentencePiece model"),
        (b"", "is not a SentencePiece model"),
        ("foreign", r"has the ids \(pad, bos, eos, unk\) = \(-1, 1, 2, 0\)"),
    ],
)
def test_invalid_model_files_are_rejected_with_their_path(tmp_path, content, message):
    path = tmp_path / "vocab.model"
    path.write_bytes(_foreign_model() if content == "foreign" else content)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} {message}"):
        SentencePieceVocabulary.from_file(path)
    with pytest.raises(ValueError, match=message):
        load_or_train_sentencepiece(path, _never_read(), SMALL_VOCAB)
    with pytest.raises(FileNotFoundError, match="absent.model"):
        SentencePieceVocabulary.from_file(tmp_path / "absent.model")


# --- Training errors ----------------------------------------------------------------------------


def test_training_errors_say_what_is_wrong():
    tiny = ["a small text", "another tiny line"] * 20
    with pytest.raises(
        ValueError, match=r"supports at most \d+ pieces, fewer than vocab_size=8000"
    ):
        train_sentencepiece(tiny, 8000)
    with pytest.raises(ValueError, match=r"vocab_size=100 is too small .* at least \d+ pieces"):
        train_sentencepiece(tiny, 100)
    with pytest.raises(ValueError, match="no training text"):
        train_sentencepiece([], 300)
    with pytest.raises(ValueError, match="model_type must be one of"):
        train_sentencepiece(tiny, 300, model_type="char")
    with pytest.raises(ValueError, match="vocab_size must be an int above 4"):
        train_sentencepiece(tiny, 4)


def test_load_or_train_on_split_reads_an_even_subset(tmp_path):
    pairs = [{"source": f"a{i % 7} b", "target": f"c{i % 5} d"} for i in range(40)]

    class Counting(list):
        read: list[int] = []

        def __getitems__(self, indices):
            self.read.extend(indices)
            return [self[i] for i in indices]

    source = Counting(pairs)
    logged: list[str] = []
    vocabulary = load_or_train_on_split(
        tmp_path / "t.model", source, 270, max_pairs=5, log=logged.append
    )
    assert source.read == [0, 9, 19, 29, 39]  # evenly spread, first and last included
    assert len(logged) == 1 and "trained on 5 of 40 pairs, evenly spread" in logged[0]
    assert vocabulary.vocab_size == 270 and (tmp_path / "t.model").exists()
    again = load_or_train_on_split(tmp_path / "t.model", Counting([]), 270)  # reused: nothing read
    assert again.model_bytes == vocabulary.model_bytes


def test_the_default_sample_bound_leaves_small_splits_whole() -> None:
    """The default config trains on at most 500,000 pairs, evenly spread: Multi30k's 29,000
    (every pair, in order, as before the bound) are unaffected."""
    from train.configs import default

    bound = default.get_config().tokenizer_train_pairs
    assert bound == 500_000
    np.testing.assert_array_equal(sample_indices(29_000, bound), np.arange(29_000))
    np.testing.assert_array_equal(sample_indices(10, 0), np.arange(10))
    sample = sample_indices(4_500_000, bound)
    assert len(sample) == bound and sample[0] == 0 and sample[-1] == 4_499_999
    gaps = np.diff(sample)
    assert gaps.min() >= 8 and gaps.max() <= 10  # 4.5M / 500k = 9: evenly spread
