"""A config's data for the loop: every dataset through tokenize -> batch, fixed rows or token
budgets, evaluation batches that follow the training batching, sentences to translate."""

from __future__ import annotations

import numpy as np
import pytest

from train.configs import default as default_config
from train.data.numbers import example_groups, number_to_words, number_words_vocabulary
from train.data.run_data import (
    BATCHING_MODES,
    EvalSplit,
    eval_bucket_lengths,
    evaluation_split,
    sentence_batches,
    training_data,
)

VOCABULARY = number_words_vocabulary()


def _pairs(numbers) -> list[dict[str, str]]:
    return [{"source": str(n), "target": number_to_words(n)} for n in numbers]


def _sources() -> dict[str, list[dict[str, str]]]:
    return {
        "train": _pairs(range(100, 400, 3)),
        "validation": _pairs([5, 123_456_789, 42]),  # the longest pair of all three splits
        "test": _pairs(range(7, 50, 7)),
    }


@pytest.fixture(autouse=True)
def _store_dir(tmp_path, monkeypatch):
    """Token stores in a temporary directory, not in the TFDS data directory."""
    monkeypatch.setattr(_config, "store_dir", str(tmp_path / "token_stores"), raising=False)


def _config(**overrides):
    config = default_config.get_config()
    config.update(batch_size=8, eval_batch_size=4, token_store_dir=_config.store_dir, **overrides)
    return config


def _decoded(batch, row) -> tuple[str, str]:
    return VOCABULARY.decode(batch["source"][row]), VOCABULARY.decode(batch["target"][row])


def test_fixed_rows_share_one_shape_across_splits() -> None:
    data = training_data(_config(), _sources(), VOCABULARY)
    longest = (10, 15)  # "123456789" + eos; its 14 words ("one hundred twenty three million
    # four hundred fifty six thousand seven hundred eighty nine") + eos
    assert data.train[0]["source"].shape == (8, longest[0])
    assert data.train[5]["target"].shape == (8, longest[1])
    for split in (data.validation, data.test):
        for batch in split.batches:
            assert batch["source"].shape == (4, longest[0])
            assert batch["target"].shape == (4, longest[1])
    # Evaluation batches are in data order, with the texts they index.
    first = data.validation.batches[0]
    assert first["example_index"].tolist() == [0, 1, 2, -1]
    assert _decoded(first, 1) == ("123456789", number_to_words(123_456_789))
    assert data.validation.references[1] == number_to_words(123_456_789)
    assert data.max_length == max(longest)
    assert "examples batches of 8 pairs padded to 10 source and 15 target tokens" in data.summary


@pytest.mark.parametrize("mode", BATCHING_MODES[1:])
def test_token_budgets_and_bucketed_evaluation(mode) -> None:
    config = _config(batching=mode, batch_tokens=64, max_length=16, eval_max_length=32)
    data = training_data(config, _sources(), VOCABULARY, row_multiple=2)
    assert all(len(data.train[s]["source"]) % 2 == 0 for s in range(5))  # splits over 2 devices
    # Evaluation: sorted by length into bucket shapes; example_index points back into the split.
    seen = {}
    for batch in data.test.batches:
        assert batch["source"].shape[1] in eval_bucket_lengths(32)
        for row, index in enumerate(batch["example_index"]):
            if index >= 0:
                seen[int(index)] = _decoded(batch, row)
    assert seen == {i: (s["source"], s["target"]) for i, s in enumerate(_sources()["test"])}


def test_training_pairs_over_max_length_are_dropped_and_counted() -> None:
    sources = _sources()
    sources["train"] = sources["train"] + _pairs([777_777_777])  # 15 target tokens with eos
    data = training_data(_config(batching="padded", max_length=14), sources, VOCABULARY)
    assert "(1 longer than 14 tokens dropped)" in data.summary


def test_first_examples_of_a_split() -> None:
    split = training_data(_config(), _sources(), VOCABULARY).test
    limited = split.first(5)
    kept = [int(i) for b in limited.batches for i in b["example_index"] if i >= 0]
    assert kept == [0, 1, 2, 3, 4] and len(limited.batches) == 2
    assert split.first(0) is split and isinstance(limited, EvalSplit)


def test_evaluation_splits_carry_the_groups_of_their_sources() -> None:
    data = training_data(_config(), _sources(), VOCABULARY)
    assert data.validation.groups == [
        ["digits_1", "below_1000"], ["digits_9"], ["digits_2", "below_1000"]
    ]  # fmt: skip
    assert data.test.groups == [example_groups(s) for s in data.test.sources]
    assert data.test.first(2).groups == data.test.groups  # indexed by example_index: whole
    decoding = evaluation_split(_config(), "validation", _sources()["validation"], VOCABULARY)
    assert decoding.groups == data.validation.groups
    # A dataset without example_groups: no groups.
    text = training_data(_config(dataset="parallel_text"), _sources(), VOCABULARY)
    assert text.validation.groups is None and text.test.groups is None


def test_evaluation_split_for_decoding_is_bucketed() -> None:
    split = evaluation_split(_config(), "test", _sources()["test"], VOCABULARY)
    assert split.name == "test" and split.sources[0] == "7"
    assert {b["source"].shape[1] for b in split.batches} <= set(eval_bucket_lengths(64))


def test_sentence_batches_skip_empty_lines_and_refuse_long_ones() -> None:
    batches = sentence_batches(["12", "", "3"], VOCABULARY, batch_size=4, limit=16)
    indices = [int(i) for b in batches for i in b["example_index"] if i >= 0]
    assert sorted(indices) == [0, 2]
    assert sentence_batches(["", ""], VOCABULARY, batch_size=4, limit=16) == []
    with pytest.raises(ValueError, match="line 2 is 8 tokens long .* max_len=5"):
        sentence_batches(["1", "1234567"], VOCABULARY, batch_size=4, limit=5)


def test_eval_bucket_lengths() -> None:
    assert eval_bucket_lengths(64) == [16, 32, 64]
    assert eval_bucket_lengths(100) == [16, 32, 64, 100]
    assert np.all(np.diff(eval_bucket_lengths(1024)) > 0)


@pytest.mark.parametrize("mode", BATCHING_MODES)
def test_training_data_gives_each_process_its_rows_from_one_store(mode) -> None:
    config = _config(batching=mode, batch_tokens=64, max_length=16, eval_max_length=32)
    logged: list[str] = []
    whole = training_data(config, _sources(), VOCABULARY, row_multiple=2, log=logged.append)
    parts = [
        training_data(
            config, _sources(), VOCABULARY, row_multiple=2, process_index=p, process_count=2,
            log=logged.append,
        )
        for p in range(2)
    ]  # fmt: skip
    assert logged[0].startswith("Token store built in") and len(logged) == 3
    assert (
        logged[1] == logged[2] == logged[0].replace(logged[0].split(": ")[0], "Token store reused")
    )
    for step in (0, 3):
        for key, value in whole.train[step].items():
            np.testing.assert_array_equal(
                np.concatenate([part.train[step][key] for part in parts]), value
            )
    assert len(parts[0].validation.batches) == len(whole.validation.batches)  # evaluation: whole
