"""The built-in number-words dataset and its vocabulary, read without TensorFlow; and its batches
(fixed rows) through the common tokenize -> batch path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from train.data.batching import FixedRowsBatches, tokenize_split
from train.data.numbers import (
    HELD_OUT_PER_LENGTH,
    SPLIT_SIZES,
    TRAIN_REPEATS,
    VALIDATION_SHORT,
    NumberWords,
    digit_counts,
    example_groups,
    generate_examples,
    interleave,
    number_to_words,
    number_words_vocabulary,
    prepare_number_words,
    source_problem,
    split_numbers,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
# 9 digits + eos; 14 words ("seven hundred seventy seven million ... seventy seven") + eos.
SOURCE_LEN, TARGET_LEN = 10, 15


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tfds")
    prepare_number_words(path)  # a few seconds: prepared once for the whole module
    return path


@pytest.fixture(scope="module")
def builder(data_dir: Path) -> NumberWords:
    return prepare_number_words(data_dir)  # reuses the prepared files


@pytest.fixture(scope="module")
def vocabulary():
    return number_words_vocabulary()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- number_to_words --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number, words",
    [
        (0, "zero"),
        (7, "seven"),
        (10, "ten"),
        (13, "thirteen"),
        (20, "twenty"),
        (21, "twenty one"),
        (99, "ninety nine"),
        (100, "one hundred"),
        (101, "one hundred one"),
        (110, "one hundred ten"),
        (115, "one hundred fifteen"),
        (999, "nine hundred ninety nine"),
        (1000, "one thousand"),
        (1001, "one thousand one"),
        (1010, "one thousand ten"),
        (12345, "twelve thousand three hundred forty five"),
        (40712, "forty thousand seven hundred twelve"),
        (100000, "one hundred thousand"),
        (1000000, "one million"),
        (1000001, "one million one"),
        (20000300, "twenty million three hundred"),
        (
            999999999,
            "nine hundred ninety nine million nine hundred ninety nine thousand"
            " nine hundred ninety nine",
        ),
    ],
)
def test_number_to_words(number: int, words: str):
    assert number_to_words(number) == words


@pytest.mark.parametrize("number", [-1, 10**9])
def test_number_to_words_rejects_out_of_range(number: int):
    with pytest.raises(ValueError, match="0 <= n < 1_000_000_000"):
        number_to_words(number)


# --- vocabulary -------------------------------------------------------------------------------


def test_vocabulary_layout(vocabulary):
    tokens = vocabulary.tokens
    assert tokens[:4] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert (vocabulary.pad_id, vocabulary.bos_id, vocabulary.eos_id, vocabulary.unk_id) == (
        0,
        1,
        2,
        3,
    )
    assert tokens[4:14] == list("0123456789")
    assert tokens[14:16] == ["zero", "one"] and tokens[-3:] == ["hundred", "thousand", "million"]
    assert vocabulary.vocab_size == len(tokens) == 45


def test_vocabulary_round_trips_validation_and_train(builder, vocabulary):
    validation = builder.as_data_source(split="validation")
    train = builder.as_data_source(split="train")
    examples = [validation[i] for i in range(len(validation))]
    examples += [train[i] for i in range(0, len(train), len(train) // 300)]
    for example in examples:
        for text in map(_text, example.values()):
            ids = vocabulary.encode(text)
            assert vocabulary.unk_id not in ids, text
            assert vocabulary.decode(ids) == text


def test_vocabulary_unknown_tokens_and_decode_rules(vocabulary):
    forty, apples = vocabulary.encode("forty apples")
    assert vocabulary.tokens[forty] == "forty" and apples == vocabulary.unk_id
    assert vocabulary.encode("40712") == [vocabulary.tokens.index(d) for d in "40712"]
    # Stops at the first eos; skips pad and bos; digits glued, words spaced.
    ids = [vocabulary.bos_id, *vocabulary.encode("12 thousand"), vocabulary.eos_id]
    ids += vocabulary.encode("seven") + [vocabulary.pad_id]
    assert vocabulary.decode(ids) == "12 thousand"
    assert vocabulary.decode(np.array([vocabulary.pad_id, *vocabulary.encode("4 0")])) == "40"
    assert vocabulary.decode([vocabulary.vocab_size + 5]) == "<unk>"


# --- splits -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splits() -> dict[str, np.ndarray]:
    return split_numbers()


def _lengths(numbers) -> Counter:
    """{digit count: how many of `numbers`}, counted on the decimal strings."""
    return Counter(len(str(n)) for n in numbers.tolist())


LONG = range(4, 10)  # the held-out lengths


def test_split_sizes_are_the_documented_composition():
    # Hand-worked: 10 one-digit, 90 two-digit and 900 three-digit numbers.
    assert 10 * TRAIN_REPEATS[1] + 90 * TRAIN_REPEATS[2] + 900 * TRAIN_REPEATS[3] == 19_000
    assert sum(VALIDATION_SHORT.values()) + 6 * HELD_OUT_PER_LENGTH["validation"] == 1_000
    assert 1_000 + 6 * HELD_OUT_PER_LENGTH["test"] == 2_800
    assert SPLIT_SIZES == {"train": 200_000, "validation": 1_000, "test": 2_800}


def test_train_holds_every_number_below_1000_oversampled(splits):
    train = splits["train"]
    assert len(train) == SPLIT_SIZES["train"] and train.dtype == np.int64
    counts = Counter(train.tolist())
    for n in range(1000):
        assert counts[n] == TRAIN_REPEATS[len(str(n))], n
    long = [n for n in counts if n >= 1000]
    assert all(counts[n] == 1 for n in long)  # longer numbers are distinct
    assert len(long) == 200_000 - 19_000
    assert set(_lengths(np.array(long))) == set(LONG)
    # Shuffled: the 100 copies of 7 are spread over the split, not in one block.
    positions = np.flatnonzero(train == 7)
    assert positions.max() - positions.min() > 100_000 and np.diff(positions).mean() > 1_000


def test_held_out_numbers_are_disjoint_and_stratified_by_length(splits):
    train, validation, test = (splits[s] for s in ("train", "validation", "test"))
    assert len(validation) == SPLIT_SIZES["validation"] and len(test) == SPLIT_SIZES["test"]
    assert len(set(validation.tolist())) == len(validation)  # distinct within each split
    assert len(set(test.tolist())) == len(test)
    long_validation = {n for n in validation.tolist() if n >= 1000}
    long_test = {n for n in test.tolist() if n >= 1000}
    long_train = {n for n in train.tolist() if n >= 1000}
    assert not long_validation & long_train and not long_test & long_train
    assert not long_validation & long_test
    # Test holds every number below 1000; validation a sample of them.
    assert {n for n in test.tolist() if n < 1000} == set(range(1000))
    assert _lengths(test) == {1: 10, 2: 90, 3: 900, **{d: 300 for d in LONG}}
    assert _lengths(validation) == {1: 10, 2: 50, 3: 100, **{d: 140 for d in LONG}}


def _round_robin(lengths: Counter) -> list[int]:
    """The lengths one after another in turns, 1..9, each while it lasts (hand-rolled loops)."""
    order = []
    for turn in range(max(lengths.values())):
        for digits in range(1, 10):
            if lengths[digits] > turn:
                order.append(digits)
    return order


@pytest.mark.parametrize("split", ["validation", "test"])
def test_any_prefix_of_a_held_out_split_represents_every_length(splits, split):
    lengths = [len(str(n)) for n in splits[split].tolist()]
    assert lengths == _round_robin(Counter(lengths))
    assert lengths[:9] == list(range(1, 10))
    assert set(lengths[:50]) == set(range(1, 10))  # tests validate on the first 50
    for k in (1, 5, 10):
        assert Counter(lengths[: 9 * k]) == {d: k for d in range(1, 10)}


def test_interleave_takes_the_groups_in_turn():
    groups = [np.array([1, 2, 3]), np.array([10]), np.array([20, 21]), np.array([], np.int64)]
    assert interleave(groups).tolist() == [1, 10, 20, 2, 21, 3]
    assert interleave(groups).dtype == np.int64


def test_digit_counts_are_the_lengths_of_the_decimal_strings():
    numbers = np.array([0, 1, 9, 10, 99, 100, 999, 1000, 40712, 99_999_999, 100_000_000])
    numbers = np.concatenate([numbers, [999_999_999]])
    np.testing.assert_array_equal(digit_counts(numbers), [len(str(n)) for n in numbers])


def test_split_numbers_are_deterministic(splits):
    again = split_numbers()
    for split in splits:
        np.testing.assert_array_equal(splits[split], again[split])
    first = list(generate_examples(splits["validation"][:50]))
    assert first == list(generate_examples(again["validation"][:50]))
    number = int(splits["validation"][0])
    assert first[0] == (0, {"source": str(number), "target": number_to_words(number)})
    assert [key for key, _ in first] == list(range(50))  # keys are positions: train repeats
    other = split_numbers(seed=1)
    assert not np.array_equal(other["test"], splits["test"])
    assert sorted(other["test"][other["test"] < 1000]) == list(range(1000))


def test_split_numbers_with_fewer_digits():
    numbers = split_numbers(max_digits=6)
    assert len(numbers["train"]) == SPLIT_SIZES["train"]
    assert _lengths(numbers["test"]) == {1: 10, 2: 90, 3: 900, 4: 300, 5: 300, 6: 300}
    assert max(numbers["train"]) < 10**6
    with pytest.raises(ValueError, match="too few"):
        split_numbers(max_digits=5)  # 99,000 numbers of 4 or 5 digits: too few for train
    with pytest.raises(ValueError, match=r"max_digits must be in 4..9, got 3"):
        split_numbers(max_digits=3)


def test_prepared_splits_hold_the_generated_examples_in_order(data_dir, builder, splits):
    assert prepare_number_words(data_dir).info.splits["train"].num_examples == SPLIT_SIZES["train"]
    assert str(builder.info.version) == "2.0.0"
    for split, size in SPLIT_SIZES.items():
        assert builder.info.splits[split].num_examples == size
    for split in ("validation", "test"):
        source = builder.as_data_source(split=split)
        records = [source[i] for i in range(len(source))]
        assert [_text(r["source"]) for r in records] == [str(n) for n in splits[split]]
        assert all(_text(r["target"]) == number_to_words(int(r["source"])) for r in records)
    train = builder.as_data_source(split="train")
    positions = range(0, len(train), 997)
    assert [_text(train[i]["source"]) for i in positions] == [
        str(splits["train"][i]) for i in positions
    ]
    assert builder.info.supervised_keys == ("source", "target")


# --- inputs the task covers, and groups ---------------------------------------------------------


@pytest.mark.parametrize("text", ["0", "7", "10", "40712", "999999999", " 12 ", "100000000"])
def test_sources_the_task_covers(text: str):
    assert source_problem(text) is None


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "an empty line is not a number"),
        ("   ", "an empty line is not a number"),
        ("12a", "'12a' is not a number written in digits (0-9 only)"),
        ("twelve", "'twelve' is not a number written in digits (0-9 only)"),
        ("1,000", "'1,000' is not a number written in digits (0-9 only)"),
        ("1.5", "'1.5' is not a number written in digits (0-9 only)"),
        ("-", "'-' is not a number written in digits (0-9 only)"),
        ("\uff11\uff12", "'\uff11\uff12' is not a number written in digits (0-9 only)"),
        ("-5", "'-5' has a sign: the task covers numbers 0 to 999,999,999 written without one"),
        ("+5", "'+5' has a sign: the task covers numbers 0 to 999,999,999 written without one"),
        ("1 2", "'1 2' has spaces between its digits: write them together"),
        ("12\t000", "'12\\t000' has spaces between its digits: write them together"),
        ("0012", "'0012' has leading zeros: write it as '12'"),
        ("00", "'00' has leading zeros: write it as '0'"),
        ("1234567890", "'1234567890' has 10 digits; the task covers 1 to 9"),
        ("0001234567890", "'0001234567890' has 13 digits; the task covers 1 to 9"),
        ("x" * 50, "'" + "x" * 40 + "...' is not a number written in digits (0-9 only)"),
    ],
)
def test_sources_outside_the_task_get_a_reason(text: str, problem: str):
    assert source_problem(text) == problem


@pytest.mark.parametrize(
    "source, groups",
    [
        ("0", ["digits_1", "below_1000"]),
        ("7", ["digits_1", "below_1000"]),
        ("42", ["digits_2", "below_1000"]),
        ("999", ["digits_3", "below_1000"]),
        ("1000", ["digits_4"]),
        ("40712", ["digits_5"]),
        ("999999999", ["digits_9"]),
        ("0012", []),
        ("12a", []),
    ],
)
def test_example_groups(source: str, groups: list[str]):
    assert example_groups(source) == groups


def test_data_is_read_without_tensorflow(data_dir):
    script = textwrap.dedent(
        f"""
        import sys
        from train.data.batching import FixedRowsBatches, tokenize_split
        from train.data.numbers import number_words_vocabulary, prepare_number_words

        builder = prepare_number_words({str(data_dir)!r})
        vocabulary = number_words_vocabulary()
        split = tokenize_split(builder.as_data_source(split="test"), vocabulary, max_length=64)
        rows = FixedRowsBatches(
            split, batch_size=4, source_length={SOURCE_LEN}, target_length={TARGET_LEN},
            pad_id=0, bos_id=1, seed=0,
        )
        batches = rows.evaluation_batches(split, 4)
        assert batches[0]["source"].shape == (4, {SOURCE_LEN})
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# --- batches ----------------------------------------------------------------------------------


def _examples(numbers) -> list[dict[str, str]]:
    return [{"source": str(n), "target": number_to_words(n)} for n in numbers]


def _split(examples, vocabulary, max_length=64):
    return tokenize_split(examples, vocabulary, max_length=max_length, drop_long=False)


def _train_batches(examples, vocabulary, *, batch_size, source_len, target_len, seed):
    return FixedRowsBatches(
        _split(examples, vocabulary),
        batch_size=batch_size,
        source_length=source_len,
        target_length=target_len,
        pad_id=vocabulary.pad_id,
        bos_id=vocabulary.bos_id,
        seed=seed,
    )


def _eval_batches(examples, vocabulary, *, batch_size, source_len, target_len):
    rows = _train_batches(
        examples, vocabulary, batch_size=batch_size, source_len=source_len,
        target_len=target_len, seed=0,
    )  # fmt: skip
    return rows.evaluation_batches(_split(examples, vocabulary), batch_size)


def test_row_layout(vocabulary):
    batch = _eval_batches(
        [{"source": b"21", "target": b"twenty one"}], vocabulary, batch_size=1, source_len=4,
        target_len=5,
    )[0]  # fmt: skip
    twenty, one = vocabulary.encode("twenty one")
    two, one_digit = vocabulary.encode("21")
    pad, bos, eos = vocabulary.pad_id, vocabulary.bos_id, vocabulary.eos_id
    np.testing.assert_array_equal(batch["source"], [[two, one_digit, eos, pad]])
    np.testing.assert_array_equal(batch["decoder_input"], [[bos, twenty, one, pad, pad]])
    np.testing.assert_array_equal(batch["target"], [[twenty, one, eos, pad, pad]])
    assert all(batch[key].dtype == np.int32 for key in ("source", "decoder_input", "target"))


def test_rows_refuse_overlong_sequences(vocabulary):
    examples = [{"source": "40712", "target": "forty thousand seven hundred twelve"}]
    make = lambda source_len, target_len: _train_batches(  # noqa: E731
        examples, vocabulary, batch_size=1, source_len=source_len, target_len=target_len, seed=0
    )
    with pytest.raises(ValueError, match=r"a pair is \(6, 6\) tokens long.*\(5, 6\)"):
        make(5, 6)
    with pytest.raises(ValueError, match=r"a pair is \(6, 6\) tokens long.*\(6, 5\)"):
        make(6, 5)
    make(6, 6)  # exactly fits


def test_train_batches_shapes_and_shift(builder, vocabulary):
    batches = _train_batches(
        builder.as_data_source(split="validation"),
        vocabulary,
        batch_size=8,
        source_len=SOURCE_LEN,
        target_len=TARGET_LEN,
        seed=0,
    )
    batch = batches[3]
    assert {key: (array.shape, array.dtype) for key, array in batch.items()} == {
        "source": ((8, SOURCE_LEN), np.int32),
        "decoder_input": ((8, TARGET_LEN), np.int32),
        "target": ((8, TARGET_LEN), np.int32),
    }
    target, decoder_input = batch["target"], batch["decoder_input"]
    assert (decoder_input[:, 0] == vocabulary.bos_id).all()
    # decoder_input is target shifted right by one: bos first, and eos is not fed back.
    shifted = np.where(target[:, :-1] == vocabulary.eos_id, vocabulary.pad_id, target[:, :-1])
    np.testing.assert_array_equal(decoder_input[:, 1:], shifted)
    for name in ("source", "target"):
        lengths = (batch[name] != vocabulary.pad_id).sum(axis=1)
        assert (batch[name][np.arange(8), lengths - 1] == vocabulary.eos_id).all()
        assert ((batch[name] == vocabulary.eos_id).sum(axis=1) == 1).all()
    for source, target in zip(batch["source"], batch["target"], strict=True):
        number = int(vocabulary.decode(source))
        assert vocabulary.decode(target) == number_to_words(number)


def test_train_batches_are_a_function_of_step_and_cover_each_epoch(vocabulary):
    examples = _examples(range(1000, 1010))  # 10 examples, batches of 4: batches span epochs
    make = lambda seed: _train_batches(  # noqa: E731
        examples, vocabulary, batch_size=4, source_len=5, target_len=8, seed=seed
    )
    batches = make(seed=7)
    steps = range(10)  # 40 examples = 4 epochs
    for step in (0, 5, 9, 123_456):
        for key, array in batches[step].items():
            np.testing.assert_array_equal(array, make(seed=7)[step][key])
    stream = [vocabulary.decode(row) for step in steps for row in batches[step]["source"]]
    epochs = [stream[i : i + 10] for i in range(0, 40, 10)]
    for epoch in epochs:
        assert sorted(epoch) == [example["source"] for example in examples]
    assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled across epochs
    other_seed = [vocabulary.decode(row) for row in make(seed=8)[0]["source"]]
    assert other_seed != stream[:4]


def test_eval_batches_fill_the_last_batch(vocabulary):
    examples = _examples([5, 60, 700, 8000, 90000])
    batches = _eval_batches(examples, vocabulary, batch_size=2, source_len=6, target_len=5)
    assert len(batches) == 3
    in_order = [vocabulary.decode(row) for i in range(2) for row in batches[i]["source"]]
    assert in_order == ["5", "60", "700", "8000"]
    last = batches[2]
    np.testing.assert_array_equal(last["example_mask"], [1, 0])
    np.testing.assert_array_equal(last["example_index"], [4, -1])
    assert last["example_mask"].dtype == np.int32
    assert vocabulary.decode(last["source"][0]) == "90000"
    for key in ("source", "decoder_input", "target"):
        assert last[key].shape == batches[0][key].shape
        assert (last[key][1] == vocabulary.pad_id).all()
    assert [batch["example_mask"].sum() for batch in batches] == [2, 2, 1]  # iterable too


def test_batch_size_must_be_positive(vocabulary):
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        _train_batches(_examples([1]), vocabulary, batch_size=0, seed=0, source_len=4, target_len=4)


def test_longest_pairs_of_a_split(builder, vocabulary):
    assert tuple(_split(_examples([7, 40712, 777]), vocabulary).lengths.max(axis=0)) == (6, 6)
    # Test numbers reach 9 digits; the longest possible target is 14 words.
    lengths = _split(builder.as_data_source(split="test"), vocabulary).lengths.max(axis=0)
    assert lengths[0] == SOURCE_LEN and lengths[1] <= TARGET_LEN
