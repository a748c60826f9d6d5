"""The token store: tokens as a direct encode gives them, a fingerprint of data + tokenizer +
limit, reuse, atomic builds that tolerate leftovers and a concurrent builder."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest

from train.data import token_store
from train.data.vocabulary import WordVocabulary

EOS = 2


class CharVocabulary:
    """One id per character; the target side shifted by 50, so that encode_target is used."""

    pad_id, bos_id, eos_id = 0, 1, EOS

    def __init__(self, offset: int = 3) -> None:
        self.offset = offset

    def encode(self, text: str) -> list[int]:
        return [self.offset + (ord(c) % 40) for c in text]

    def encode_target(self, text: str) -> list[int]:
        return [50 + self.offset + (ord(c) % 40) for c in text]


def _pairs(count: int, seed: int = 0) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnop"))
    return [
        {
            "source": "".join(rng.choice(letters, size=rng.integers(1, 12))),
            "target": "".join(rng.choice(letters, size=rng.integers(1, 12))).encode(),
        }
        for _ in range(count)
    ]


def test_tokens_equal_a_direct_encode_across_workers_and_chunks(tmp_path) -> None:
    pairs = _pairs(300)
    vocabulary = CharVocabulary()
    logged: list[str] = []
    store = token_store.open_or_build(
        pairs, vocabulary, max_length=10, root=tmp_path, workers=2, chunk_size=37,
        log=logged.append,
    )  # fmt: skip
    expected = [
        (
            index,
            [*vocabulary.encode(pair["source"]), EOS],
            [*vocabulary.encode_target(pair["target"].decode()), EOS],
        )
        for index, pair in enumerate(pairs)
    ]
    kept = [e for e in expected if max(len(e[1]), len(e[2])) <= 10]
    assert 0 < len(kept) < len(pairs)  # some pairs are too long for 10 tokens
    assert len(store) == len(kept) and store.num_dropped == len(pairs) - len(kept)
    assert store.example_index.tolist() == [index for index, _, _ in kept]
    for i, (_, source, target) in enumerate(kept):
        assert store.sources[i].tolist() == source
        assert store.targets[i].tolist() == target
        assert store.lengths[i].tolist() == [len(source), len(target)]
    assert store.sources[-1].tolist() == kept[-1][1]
    assert isinstance(store.sources.tokens, np.memmap) and isinstance(store.lengths, np.memmap)
    assert store.sources.tokens.dtype == np.int32 and store.sources.offsets.dtype == np.int64
    assert len(logged) == 1 and logged[0].startswith("Token store built in")
    assert "(2 processes)" in logged[0]
    with pytest.raises(IndexError):
        store.sources[len(store)]


def test_the_store_is_reused_and_its_fingerprint_follows_data_tokenizer_and_limit(tmp_path) -> None:
    pairs, vocabulary = _pairs(50), CharVocabulary()
    logged: list[str] = []

    def build(data=pairs, vocab=vocabulary, max_length=10):
        return token_store.open_or_build(
            data, vocab, max_length=max_length, root=tmp_path, workers=1, log=logged.append
        )

    first = build()
    meta = os.path.join(first.path, "meta.json")
    written = os.stat(meta).st_mtime_ns
    again = build()
    assert again.path == first.path and logged[-1] == f"Token store reused: {first.path}"
    assert os.stat(meta).st_mtime_ns == written  # not rewritten
    edited = [dict(p) for p in pairs]
    edited[7]["source"] += "x"
    others = {
        "data": build(data=edited).path,
        "tokenizer": build(vocab=CharVocabulary(offset=4)).path,
        "limit": build(max_length=11).path,
    }
    assert len({first.path, *others.values()}) == 4, others
    assert len([name for name in os.listdir(tmp_path) if not name.startswith(".")]) == 4


def test_identities_of_tfds_sources_and_vocabularies() -> None:
    info = types.SimpleNamespace(full_name="parallel_text/en-de-0123456789abcdef/1.0.0")

    class TfdsLike(list):
        dataset_info, split = info, "train"

    identity = token_store.data_identity(TfdsLike([{"source": "a", "target": "b"}]))
    assert identity == "tfds:parallel_text/en-de-0123456789abcdef/1.0.0:train:1"
    words = WordVocabulary(["<pad>", "<s>", "</s>", "<unk>", "one", "two"])
    more = WordVocabulary(["<pad>", "<s>", "</s>", "<unk>", "one", "three"])
    assert token_store.vocabulary_identity(words) != token_store.vocabulary_identity(more)
    assert token_store.vocabulary_identity(words) == token_store.vocabulary_identity(
        WordVocabulary(words.tokens)
    )


def test_a_leftover_temporary_directory_is_ignored(tmp_path) -> None:
    pairs, vocabulary = _pairs(20), CharVocabulary()
    name = token_store.fingerprint(pairs, vocabulary, 12)
    leftover = tmp_path / f".tmp-{name}-99999-killed"
    leftover.mkdir(parents=True)
    (leftover / "source_tokens.bin").write_bytes(b"\x07" * 10)  # half written, no meta.json
    store = token_store.open_or_build(
        pairs, vocabulary, max_length=12, root=tmp_path, workers=1, log=None
    )
    assert store.path == str(tmp_path / name)
    assert store.sources[0].tolist() == [*vocabulary.encode(pairs[0]["source"]), EOS]


@pytest.mark.parametrize("damage", ["truncated tokens", "emptied meta.json"])
def test_a_damaged_store_is_moved_aside_and_built_again(tmp_path, damage) -> None:
    pairs, vocabulary = _pairs(20), CharVocabulary()
    built = token_store.open_or_build(
        pairs, vocabulary, max_length=12, root=tmp_path, workers=1, log=None
    )
    expected = [built.sources[i].tolist() for i in range(len(built))]
    if damage == "truncated tokens":
        with open(os.path.join(built.path, "target_tokens.bin"), "r+b") as file:
            file.truncate(8)
    else:
        with open(os.path.join(built.path, "meta.json"), "w"):
            pass
    with pytest.raises(ValueError):
        token_store.TokenStore.open(built.path)
    lines: list[str] = []
    again = token_store.open_or_build(
        pairs, vocabulary, max_length=12, root=tmp_path, workers=1, log=lines.append
    )
    assert [again.sources[i].tolist() for i in range(len(again))] == expected
    assert lines[0].startswith(f"warning: token store {built.path} cannot be read (")
    assert "moved it to" in lines[0] and lines[1].startswith("Token store built")
    aside = [name for name in os.listdir(tmp_path) if ".unreadable-" in name]
    assert len(aside) == 1  # kept for a look, not deleted


def test_a_concurrent_builder_that_loses_the_race_uses_the_winners_store(
    tmp_path, monkeypatch
) -> None:
    pairs, vocabulary = _pairs(20), CharVocabulary()
    winner = tmp_path / "winner"
    reference = token_store.open_or_build(
        pairs, vocabulary, max_length=12, root=winner, workers=1, log=None
    )
    rename = os.rename

    def lose_the_race(source, destination):
        # Another process finishes first: its complete store appears at the final name.
        rename(reference.path, destination)
        rename(source, destination)  # fails: the directory exists and is not empty

    monkeypatch.setattr(token_store.os, "rename", lose_the_race)
    logged: list[str] = []
    store = token_store.open_or_build(
        pairs, vocabulary, max_length=12, root=tmp_path, workers=1, log=logged.append
    )
    assert "built at the same time by another process" in logged[0]
    assert [name for name in os.listdir(tmp_path) if name.startswith(".tmp")] == []
    assert store.example_index.tolist() == list(range(20))
    with open(os.path.join(store.path, "meta.json")) as file:
        assert json.load(file)["num_pairs"] == 20


def test_nothing_short_enough_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="no example is at most 2 tokens long"):
        token_store.open_or_build(
            _pairs(5), CharVocabulary(), max_length=2, root=tmp_path, workers=1, log=None
        )
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        token_store.open_or_build(
            _pairs(5), CharVocabulary(), max_length=1, root=tmp_path, workers=1, log=None
        )
