"""One vocabulary protocol for the three kinds: words, SentencePiece, MarianMT's. Each kind's own
behaviour is tested where it is built (test_numbers, test_tokenizer_training, the Marian tests);
here: every kind offers the same interface with the same meaning."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import marian_texts, write_marian_tokenizer
from train.data.numbers import number_words_vocabulary
from train.data.tokenizer_training import train_sentencepiece, write_marian_tokenizer_files
from train.data.vocabulary import (
    MARIAN_TOKENIZER_FILES,
    TOKENIZERS,
    MarianVocabulary,
    SentencePieceVocabulary,
    Vocabulary,
    WordVocabulary,
    alignment_units,
    output_ids,
    piece_word_indices,
    read_vocabulary,
    write_vocabulary,
)

TEXTS = [f"{a} {b} {c}" for a in ("the", "a", "one") for b in ("dog", "cat") for c in "xyz"] * 4


@pytest.fixture(scope="module")
def vocabularies(tmp_path_factory) -> dict[str, Vocabulary]:
    marian_dir = tmp_path_factory.mktemp("marian")
    german = [text.replace("dog", "hund").replace("cat", "katze") for text in TEXTS]
    write_marian_tokenizer_files(marian_dir, TEXTS, german, vocab_size=16)
    return {
        "words": number_words_vocabulary(),
        "sentencepiece": train_sentencepiece(TEXTS, 274),
        "marian": MarianVocabulary.from_directory(marian_dir),
    }


def test_every_kind_offers_the_protocol(vocabularies) -> None:
    for name, vocabulary in vocabularies.items():
        for attribute in ("pad_id", "bos_id", "eos_id", "vocab_size"):
            assert isinstance(getattr(vocabulary, attribute), int), (name, attribute)
        assert len({vocabulary.pad_id, vocabulary.eos_id}) == 2, name
        for method in ("encode", "encode_target", "decode"):
            assert callable(getattr(vocabulary, method)), (name, method)


def test_shared_vocabularies_encode_both_sides_alike(vocabularies) -> None:
    assert vocabularies["words"].encode_target("12 twelve") == vocabularies["words"].encode(
        "12 twelve"
    )
    sentencepiece = vocabularies["sentencepiece"]
    assert sentencepiece.encode_target("the dog x") == sentencepiece.encode("the dog x")


def test_decode_stops_at_eos_and_drops_special_ids(vocabularies) -> None:
    for name, vocabulary in vocabularies.items():
        text = "one" if name == "words" else "the dog x"
        ids = vocabulary.encode_target(text)
        specials = [vocabulary.bos_id, *ids, vocabulary.eos_id, *ids, vocabulary.pad_id]
        expected = text if name != "marian" else vocabulary.decode(ids)
        if name == "marian":  # Marian decodes every non-special id (as Hugging Face does)
            assert vocabulary.decode([vocabulary.pad_id, *ids, vocabulary.eos_id]) == expected
        else:
            assert vocabulary.decode(specials) == expected, name


def test_pieces_and_word_indices(vocabularies) -> None:
    """Token strings of ids, and the word each token belongs to: SentencePiece words start at
    "▁"; number words' tokens are words; special tokens belong to none."""
    words = vocabularies["words"]
    ids = [*words.encode("40712"), words.eos_id]
    assert words.pieces(ids) == ["4", "0", "7", "1", "2", "</s>"]
    assert words.word_indices([words.bos_id, *ids]) == [-1, 0, 1, 2, 3, 4, -1]
    for name in ("sentencepiece", "marian"):
        vocabulary = vocabularies[name]
        ids = [*vocabulary.encode("the dog x"), vocabulary.eos_id]
        pieces = vocabulary.pieces(ids)
        assert pieces[-1] == "</s>"
        assert "".join(pieces[:-1]).replace("\u2581", " ").strip() == "the dog x", name
        # A new word at each "▁" piece (and the first), numbered 0, 1, 2; eos none.
        expected, word = [], -1
        for i, piece in enumerate(pieces[:-1]):
            word += i == 0 or piece.startswith("\u2581")
            expected.append(word)
        assert vocabulary.word_indices(ids) == [*expected, -1], (name, pieces)
        assert max(expected) == 2, (name, pieces)


def test_piece_word_indices_by_hand() -> None:
    pieces = ["\u2581Ein", "\u2581Hund", "e", "<x>", "n", "\u2581.", "</s>"]
    no_word = [False, False, False, True, False, False, True]
    # A token of no word ends the word before it: "n" after "<x>" starts a new one.
    assert piece_word_indices(pieces, no_word) == [0, 1, 1, -1, 2, 3, -1]


def test_marian_word_indices_skip_language_codes(vocabularies) -> None:
    marian = vocabularies["marian"]
    state = marian.__getstate__()
    with_code = MarianVocabulary(
        state["source_spm"], state["target_spm"], {**state["vocab"], ">>deu<<": marian.vocab_size}
    )
    ids = [with_code.encoder[">>deu<<"], *with_code.encode("the dog"), with_code.eos_id]
    assert with_code.word_indices(ids)[0] == -1 and with_code.word_indices(ids)[-1] == -1
    assert with_code.word_indices(ids)[1] == 0


def test_marian_starts_decoding_from_the_pad_id(vocabularies) -> None:
    marian = vocabularies["marian"]
    assert marian.bos_id == marian.pad_id
    # Targets are cut by target.spm, trained on the German side: its words round-trip.
    assert marian.decode(marian.encode_target("the hund x")) == "the hund x"


def test_written_files_rebuild_each_kind(vocabularies, tmp_path) -> None:
    """An exported translator's tokenizer (train.export): the files give the same ids, text,
    pieces and words, and files that do not match the record are refused."""
    for name, vocabulary in vocabularies.items():
        directory = tmp_path / name
        record = write_vocabulary(vocabulary, directory)
        assert record["kind"] == name
        assert sorted(p.name for p in directory.iterdir()) == record["files"]
        again = read_vocabulary(directory, json.loads(json.dumps(record)))
        assert type(again) is type(vocabulary)
        for text in [*TEXTS[:5], "40712", "dog cat unseen"]:
            ids = vocabulary.encode(text)
            assert again.encode(text) == ids, (name, text)
            assert again.decode(ids) == vocabulary.decode(ids), (name, text)
            assert again.pieces(ids) == vocabulary.pieces(ids), (name, text)
            assert again.word_indices(ids) == vocabulary.word_indices(ids), (name, text)
    record = write_vocabulary(vocabularies["words"], tmp_path / "changed")
    (tmp_path / "changed" / "words.json").write_text(
        json.dumps(vocabularies["words"].tokens[:-1]), encoding="utf-8"
    )
    with pytest.raises(ValueError, match="are not the ones exported with the model"):
        read_vocabulary(tmp_path / "changed", record)
    (tmp_path / "changed" / "words.json").unlink()
    with pytest.raises(FileNotFoundError, match="words.json is missing"):
        read_vocabulary(tmp_path / "changed", record)


def test_output_ids_and_alignment_units_by_hand(vocabularies) -> None:
    assert output_ids([7, 8, 2, 0, 0], eos_id=2, pad_id=0) == [7, 8, 2]
    assert output_ids([7, 2, 9, 2], eos_id=2, pad_id=0) == [7, 2]  # the first eos ends it
    assert output_ids([7, 8, 0, 0], eos_id=2, pad_id=0) == [7, 8]  # no eos: padding dropped
    words = vocabularies["words"]
    ids = [*words.encode("forty 7"), words.eos_id]  # forty, 7, </s>
    assert alignment_units(words, ids, "word") == [0, 1, -1]
    sentencepiece = vocabularies["sentencepiece"]
    ids = [*sentencepiece.encode("the dog"), sentencepiece.eos_id]
    assert alignment_units(sentencepiece, ids, "piece") == [*range(len(ids) - 1), -1]
    assert alignment_units(sentencepiece, ids, "word") == sentencepiece.word_indices(ids)
    with pytest.raises(ValueError, match=r"alignment units must be one of \['word', 'piece'\]"):
        alignment_units(words, ids, "letter")


def test_declared_values() -> None:
    assert TOKENIZERS == ("sentencepiece", "marian")
    assert MARIAN_TOKENIZER_FILES == ("source.spm", "target.spm", "vocab.json")
    assert issubclass(WordVocabulary, object) and SentencePieceVocabulary.pad_id == 0


# ---------------------------------------------------------------------------------------------
# MarianVocabulary, on hand-made cases and against Hugging Face (pytest -m reference)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_marian_tokenizer(tmp_path_factory.mktemp("marian_tokenizer"))


def test_tokenizer_ids_and_round_trip(tokenizer_dir):
    tokenizer = MarianVocabulary.from_directory(tokenizer_dir)
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    assert (tokenizer.eos_id, tokenizer.unk_id) == (0, 1)
    assert tokenizer.pad_id == len(vocab) - 1 == tokenizer.bos_id  # decoding starts from pad
    english, german = marian_texts("test2016", 50)
    known = 0
    for line in german:
        ids = tokenizer.encode_target(line)
        if tokenizer.unk_id in ids:  # a character the small model never saw (as in Marian)
            continue
        known += 1
        # SentencePiece's default normalisation (NFKC, as in opus-mt's models): "…" -> "...".
        expected = unicodedata.normalize("NFKC", line)
        assert tokenizer.decode([*ids, tokenizer.eos_id, tokenizer.pad_id]) == expected
    assert known >= 40
    ids = tokenizer.encode(english[0])
    pieces = tokenizer.source_model.encode(english[0], out_type=str)
    assert ids == [vocab.get(piece, 1) for piece in pieces]
    # A language code is one token (unknown here: <unk>); special tokens in text are tokens.
    assert tokenizer.encode(">>deu<< a")[0] == tokenizer.unk_id
    assert tokenizer.encode("a </s> a") == [*tokenizer.encode("a"), 0, *tokenizer.encode("a")]
    assert tokenizer.decode([tokenizer.unk_id]) == ""  # special tokens are skipped


def test_tokenizer_files_are_checked(tmp_path, tokenizer_dir):
    with pytest.raises(FileNotFoundError, match="source.spm"):
        MarianVocabulary.from_directory(tmp_path)
    for name in ("source.spm", "target.spm", "vocab.json"):
        (tmp_path / name).write_bytes((tokenizer_dir / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"separate_vocabs": True}))
    with pytest.raises(ValueError, match="separate_vocabs"):
        MarianVocabulary.from_directory(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    with pytest.raises(ValueError, match="no '<unk>'"):
        MarianVocabulary.from_directory(tmp_path)


@pytest.mark.reference
def test_tokenizer_equals_hugging_face(tokenizer_dir):
    transformers = pytest.importorskip(
        "transformers", reason="the reference needs transformers: pip install -e '.[reference]'"
    )
    pytest.importorskip("sentencepiece")
    reference = transformers.MarianTokenizer(
        str(tokenizer_dir / "source.spm"),
        str(tokenizer_dir / "target.spm"),
        str(tokenizer_dir / "vocab.json"),
    )
    ours = MarianVocabulary.from_directory(tokenizer_dir)
    english, german = marian_texts("test2016", 300)
    extra = [">>deu<< A man.", "Hello </s> world <unk>", "  spaces   here  ", "ünïcödé ☃ ok"]
    for line in [*english, *extra]:
        assert ours.encode(line) + [ours.eos_id] == reference(line)["input_ids"], line
    for line in german:
        ids = reference(text_target=line)["input_ids"]
        assert ours.encode_target(line) + [ours.eos_id] == ids, line
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    rng = np.random.default_rng(0)
    for _ in range(200):  # any ids, unknown pieces and specials included
        ids = rng.integers(0, ours.vocab_size, size=rng.integers(1, 20)).tolist()
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True), ids
