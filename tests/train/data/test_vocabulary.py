"""One vocabulary protocol for the three kinds: words, SentencePiece, MarianMT's. Each kind's own
behaviour is tested where it is built (test_numbers, test_tokenizer_training, the Marian tests);
here: every kind offers the same interface with the same meaning."""

from __future__ import annotations

import pytest

from train.data.numbers import number_words_vocabulary
from train.data.tokenizer_training import train_sentencepiece, write_marian_tokenizer_files
from train.data.vocabulary import (
    MARIAN_TOKENIZER_FILES,
    TOKENIZERS,
    MarianVocabulary,
    SentencePieceVocabulary,
    Vocabulary,
    WordVocabulary,
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


def test_marian_starts_decoding_from_the_pad_id(vocabularies) -> None:
    marian = vocabularies["marian"]
    assert marian.bos_id == marian.pad_id
    # Targets are cut by target.spm, trained on the German side: its words round-trip.
    assert marian.decode(marian.encode_target("the hund x")) == "the hund x"


def test_declared_values() -> None:
    assert TOKENIZERS == ("sentencepiece", "marian")
    assert MARIAN_TOKENIZER_FILES == ("source.spm", "target.spm", "vocab.json")
    assert issubclass(WordVocabulary, object) and SentencePieceVocabulary.pad_id == 0
