"""The built-in synthetic translation task: numbers written as digits, translated into words.

Source "40712" -> target "forty thousand seven hundred twelve" (American English, no "and",
no hyphens). The task is small and synthetic, yet it needs what a translation model needs: every
output word depends on a digit picked by its position counted from the *end* of the number, so
the decoder must attend to the right source position (cross-attention); teens, tens and zeros
change which words appear, so words depend on neighbouring digits too; and the output is longer
than the input and not aligned with it position by position.

This module holds

- `number_to_words`: the ground-truth translation;
- `split_numbers` and `generate_examples`: the deterministic train/validation/test splits
  (every number below 1,000 in train, oversampled, and in test; longer numbers held out);
- `source_problem`: why a text is not a source the task covers (for `train.translate`);
- `example_groups`: a source's groups ("digits_5", "below_1000") for per-group exact match;
- `NumberWords`: a TFDS builder that writes the splits as ArrayRecord files (no download);
- `prepare_number_words`: builds (once) and returns that builder;
- `number_words_vocabulary`: the task's fixed word-level vocabulary
  (`train.data.vocabulary.WordVocabulary`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from train.data.vocabulary import SPECIAL_TOKENS, WordVocabulary

# --- The task -------------------------------------------------------------------------------

ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
)  # fmt: skip
"""Words for 0..19 (index = value)."""

TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
"""Words for 20, 30, ..., 90 (index = value // 10 - 2)."""

# Powers of a thousand, largest first, with the word that names each group of three digits.
SCALES = ((1_000_000, "million"), (1_000, "thousand"))

LIMIT = 10**9
"""`number_to_words` handles 0 <= n < LIMIT."""


def _below_thousand(n: int) -> list[str]:
    """Words for 1 <= n < 1000 ("zero" is never spoken inside a larger number)."""
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(TENS[tens - 2])
        if ones:
            words.append(ONES[ones])
    elif rest:  # 1..19 each have their own word
        words.append(ONES[rest])
    return words


def number_to_words(n: int) -> str:
    """Returns `n` written in American English words, without "and" and without hyphens.

    The number is read in groups of three digits (millions, thousands, the rest); each non-zero
    group is spoken as "<hundreds> hundred <tens> <ones>" followed by its scale word.

    >>> number_to_words(40712)
    'forty thousand seven hundred twelve'
    >>> number_to_words(1005)
    'one thousand five'

    Args:
      n: an integer with 0 <= n < 10**9.

    Raises:
      ValueError: if `n` is outside that range.
    """
    if not 0 <= n < LIMIT:
        raise ValueError(f"number_to_words handles 0 <= n < {LIMIT:_}, got {n}")
    if n == 0:
        return "zero"
    words: list[str] = []
    for scale, scale_word in SCALES:
        group, n = divmod(n, scale)
        if group:
            words += [*_below_thousand(group), scale_word]
    if n:
        words += _below_thousand(n)
    return " ".join(words)


# --- The splits -----------------------------------------------------------------------------

MAX_DIGITS = 9
"""Longest source number, in digits (number_to_words handles up to 9)."""

SEED = 20_170_612  # the date "Attention Is All You Need" appeared on arXiv
"""Seed of `np.random.default_rng` that draws the numbers of every split."""

SHORT_LIMIT = 1000
"""Numbers below this (0..999: 1 to 3 digits) are too few to hold out (there are ten of one
digit), and a user types them first, so each must be translated right: train holds every one of
them, oversampled (`TRAIN_REPEATS`), and test holds every one too, so that its score covers every
length. Only numbers of 4 or more digits are held out of train."""

SHORT_DIGITS = len(str(SHORT_LIMIT - 1))  # 3: longer numbers are drawn, and held out

TRAIN_REPEATS = {1: 100, 2: 100, 3: 10}
"""Copies of each number of 1, 2 and 3 digits in train: 10 * 100 + 90 * 100 + 900 * 10 = 19,000
pairs of the 200,000. The default run (1,500 steps of 128 pairs: 192,000 pairs, about one epoch)
thus sees each 1- and 2-digit number about 96 times and each 3-digit number about 10 times (and
3-digit groups inside every longer number), where drawing numbers uniformly would show each
short number about once."""

VALIDATION_SHORT = {1: 10, 2: 50, 3: 100}
"""Numbers of 1, 2 and 3 digits in validation: all ten of one digit, a random sample of the
others. Train holds them too (see `SHORT_LIMIT`)."""

HELD_OUT_PER_LENGTH = {"validation": 140, "test": 300}
"""Held-out numbers of each length of 4 to 9 digits per split: never in train, nor in the other
split."""

SPLIT_SIZES = {"train": 200_000, "validation": 1_000, "test": 2_800}
"""Examples per split (with `max_digits=MAX_DIGITS`): train 19,000 short pairs (`TRAIN_REPEATS`) +
181,000 distinct numbers of 4..9 digits; validation 160 short (`VALIDATION_SHORT`) + 6 * 140
held-out; test all 1,000 numbers below `SHORT_LIMIT` + 6 * 300 held-out."""


def _length_range(digits: int) -> tuple[int, int]:
    """[low, high): the numbers written with exactly `digits` digits (0..9 for one digit)."""
    return (0 if digits == 1 else 10 ** (digits - 1)), 10**digits


def digit_counts(numbers: np.ndarray) -> np.ndarray:
    """The number of digits of each non-negative number (1 for 0), as `len(str(n))`."""
    powers = 10 ** np.arange(1, MAX_DIGITS + 1, dtype=np.int64)  # 10, 100, ..., 10**9
    return np.searchsorted(powers, np.asarray(numbers, dtype=np.int64), side="right") + 1


def _draw_numbers(
    rng: np.random.Generator, count: int, min_digits: int, max_digits: int
) -> np.ndarray:
    """Draws `count` numbers (with repeats): digit count uniform in min_digits..max_digits, then
    the number uniform among those with exactly that many digits."""
    digits = rng.integers(min_digits, max_digits + 1, size=count)
    low = np.where(digits == 1, 0, 10 ** (digits - 1))
    return rng.integers(low, 10**digits)


def _distinct_long_numbers(
    rng: np.random.Generator, count: int, per_length: int, max_digits: int
) -> np.ndarray:
    """At least `count` distinct numbers of 4..max_digits digits, at least `per_length` of each
    length, in order of first appearance among uniform draws (`_draw_numbers`)."""
    distinct = np.empty(0, dtype=np.int64)
    lengths = np.arange(SHORT_DIGITS + 1, max_digits + 1)
    while True:
        # Vectorised draw-and-deduplicate: np.unique sorts, so recover the order of first
        # appearance through the indices (they make the splits independent of np.unique's sort).
        drawn = np.concatenate([distinct, _draw_numbers(rng, count, SHORT_DIGITS + 1, max_digits)])
        _, first_index = np.unique(drawn, return_index=True)
        distinct = drawn[np.sort(first_index)]
        per_length_drawn = np.bincount(digit_counts(distinct), minlength=max_digits + 1)[lengths]
        if len(distinct) >= count and (per_length_drawn >= per_length).all():
            return distinct


def interleave(groups: Sequence[np.ndarray]) -> np.ndarray:
    """The groups' elements taken in turn: the first of each group (in group order), then the
    second of each, ...; a group drops out once it runs out.

    >>> interleave([np.array([1, 2, 3]), np.array([10]), np.array([20, 21])]).tolist()
    [1, 10, 20, 2, 21, 3]
    """
    rank = np.concatenate([np.arange(len(group)) for group in groups])
    group = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)])
    order = np.lexsort((group, rank))  # by rank, then group
    return np.concatenate(groups).astype(np.int64)[order]


def split_numbers(seed: int = SEED, max_digits: int = MAX_DIGITS) -> dict[str, np.ndarray]:
    """The numbers of each split (int64 arrays of `SPLIT_SIZES`), deterministic in `seed`.

    - train: every number below `SHORT_LIMIT`, `TRAIN_REPEATS` times each, and distinct numbers
      of 4..`max_digits` digits (digit count uniform, then the number uniform; the 9,000 numbers
      of 4 digits run out, so longer ones make up the rest) filling it to `SPLIT_SIZES["train"]`;
      in random order, so that the copies of a number are spread over the split.
    - validation: `VALIDATION_SHORT` numbers of 1, 2 and 3 digits (also in train) and
      `HELD_OUT_PER_LENGTH["validation"]` numbers of each length from 4 to `max_digits` digits.
    - test: every number below `SHORT_LIMIT` (also in train: they are too few to hold out, and
      each must be right) and `HELD_OUT_PER_LENGTH["test"]` numbers of each length from 4 to
      `max_digits` digits.

    Numbers of 4 or more digits in validation and test are held out: in neither train nor the
    other split. Validation and test are ordered by digit count in turn (`interleave`: 1, 2, ...,
    9, 1, 2, ...; a length drops out when its numbers run out; each length's numbers in random
    order), so that any prefix represents every length: for k up to 10 (there are ten 1-digit
    numbers), the first 9 * k examples hold k numbers of each length 1 to 9; later, each turn
    skips the lengths that have run out. (The loop validates on a prefix,
    config.num_validation_examples, and tests read the first few.)

    With `max_digits` below `MAX_DIGITS`, validation and test lack the longer lengths (and are
    smaller than `SPLIT_SIZES`); train still has `SPLIT_SIZES["train"]` pairs.
    """
    if not SHORT_DIGITS < max_digits <= MAX_DIGITS:
        raise ValueError(
            f"max_digits must be in {SHORT_DIGITS + 1}..{MAX_DIGITS}, got {max_digits}"
        )
    rng = np.random.default_rng(seed)
    short = {d: np.arange(*_length_range(d), dtype=np.int64) for d in range(1, SHORT_DIGITS + 1)}
    train_short = np.concatenate([np.repeat(short[d], TRAIN_REPEATS[d]) for d in short])
    train_long_size = SPLIT_SIZES["train"] - len(train_short)
    per_length = sum(HELD_OUT_PER_LENGTH.values())
    lengths = range(SHORT_DIGITS + 1, max_digits + 1)
    needed = train_long_size + per_length * len(lengths)
    if 10**max_digits - SHORT_LIMIT < needed:
        raise ValueError(f"numbers of 4 to {max_digits} digits are too few for {needed} distinct")

    distinct = _distinct_long_numbers(rng, needed, per_length, max_digits)
    counts = digit_counts(distinct)
    is_train = np.ones(len(distinct), dtype=bool)
    held_out: dict[str, list[np.ndarray]] = {split: [] for split in HELD_OUT_PER_LENGTH}
    for digits in lengths:
        # The first of each length to appear are held out, split by split.
        positions = np.flatnonzero(counts == digits)[:per_length]
        is_train[positions] = False
        start = 0
        for split, size in HELD_OUT_PER_LENGTH.items():
            held_out[split].append(distinct[positions[start : start + size]])
            start += size
    train_long = distinct[is_train][:train_long_size]

    validation_short = [
        rng.choice(short[d], size=VALIDATION_SHORT[d], replace=False) for d in short
    ]
    test_short = [rng.permutation(short[d]) for d in short]
    return {
        "train": rng.permutation(np.concatenate([train_short, train_long])),
        "validation": interleave(validation_short + held_out["validation"]),
        "test": interleave(test_short + held_out["test"]),
    }


def generate_examples(numbers: Iterable[int]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yields `(key, {"source": digits, "target": words})` for each number; the key is the
    example's position (train repeats numbers, and the builder stores examples in key order)."""
    for position, n in enumerate(numbers):
        n = int(n)
        yield position, {"source": str(n), "target": number_to_words(n)}


# --- Sources the task covers, and groups for scores -----------------------------------------

_DIGITS = re.compile(r"[0-9]+")


def _quoted(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def source_problem(text: str) -> str | None:
    """None when `text` is a source the task covers, else a short reason why not.

    The task covers the numbers 0 to 999,999,999 written as digits 0-9: 1 to `MAX_DIGITS` digits,
    without sign, separators, spaces between digits or leading zeros ("0" itself is covered).
    Whitespace around the number is ignored (the tokenizer ignores it too).

    >>> source_problem("40712") is None
    True
    >>> source_problem("0012")
    "'0012' has leading zeros: write it as '12'"
    """
    number = text.strip()
    quoted = _quoted(number)
    if not number:
        return "an empty line is not a number"
    if number[0] in "+-" and _DIGITS.fullmatch(number[1:]):
        return (
            f"{quoted} has a sign: the task covers numbers 0 to {LIMIT - 1:,} written without one"
        )
    if not _DIGITS.fullmatch(number):
        if _DIGITS.fullmatch("".join(number.split())):
            return f"{quoted} has spaces between its digits: write them together"
        return f"{quoted} is not a number written in digits (0-9 only)"
    significant = number.lstrip("0") or "0"
    if len(significant) > MAX_DIGITS:
        return f"{quoted} has {len(number)} digits; the task covers 1 to {MAX_DIGITS}"
    if significant != number:
        return f"{quoted} has leading zeros: write it as {significant!r}"
    return None


GROUP_BELOW_SHORT_LIMIT = f"below_{SHORT_LIMIT}"
"""The group of every source below `SHORT_LIMIT` (0..999), across lengths 1 to 3."""


def example_groups(source: str) -> list[str]:
    """The groups of a source for per-group exact match: "digits_<n>" for a number of n digits,
    and also `GROUP_BELOW_SHORT_LIMIT` ("below_1000") for 0..999; [] for a source the task does
    not cover (`source_problem`).

    >>> example_groups("7"), example_groups("40712")
    (['digits_1', 'below_1000'], ['digits_5'])
    """
    if source_problem(source) is not None:
        return []
    number = source.strip()
    groups = [f"digits_{len(number)}"]
    if int(number) < SHORT_LIMIT:
        groups.append(GROUP_BELOW_SHORT_LIMIT)
    return groups


# --- The TFDS builder -----------------------------------------------------------------------

_DESCRIPTION = __doc__.split("\n\nThis module holds")[0]


class NumberWords(tfds.core.GeneratorBasedBuilder):
    """Numbers written as digits ("40712") translated into English words.

    Target: "forty thousand seven hundred twelve". Each output word depends on a digit chosen by its
    position relative to the end of the number, and teens, tens and zeros change the words, so the
    decoder needs cross-attention over the source; the output is longer than the input and not
    aligned with it position by position. Generated locally, deterministically: nothing is
    downloaded.
    """

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: 200k train, 1k validation, 2k test numbers.",
        "2.0.0": (
            "Every number 0..999 in train, oversampled (100 copies of each 1- and 2-digit number,"
            " 10 of each 3-digit one), and in test (all 1,000) and validation (a sample of 160);"
            " validation and test hold out 140 and 300 numbers of each length of 4 to 9 digits,"
            " ordered by length in turn; examples stored in generation order."
        ),
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {"source": tfds.features.Text(), "target": tfds.features.Text()}
            ),
            supervised_keys=("source", "target"),
            # Store examples in key (= generation) order, not TFDS's hash order: the held-out
            # splits' order makes every prefix represent every length (see split_numbers).
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # the data is generated, not downloaded
        numbers = split_numbers()
        return {split: self._generate_examples(numbers[split]) for split in SPLIT_SIZES}

    def _generate_examples(self, numbers: np.ndarray):
        return generate_examples(numbers)


def prepare_number_words(data_dir: str | os.PathLike) -> NumberWords:
    """Writes the dataset as ArrayRecord files under `data_dir` (once) and returns its builder.

    A second call with the same `data_dir` finds the prepared files and reuses them. ArrayRecord
    gives random access (`builder.as_data_source(split)`), which the input pipeline uses instead of
    TensorFlow. TFDS shows progress bars while it writes; `tfds.disable_progress_bar()` hides them
    but is global, so it is left to the caller.
    """
    builder = NumberWords(data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder


# --- The vocabulary -------------------------------------------------------------------------


def number_words_vocabulary() -> WordVocabulary:
    """The fixed vocabulary of the task: the 4 specials, the 10 digits, then every word that
    `number_to_words` produces (zero..nineteen, twenty..ninety, hundred, thousand, million)."""
    digits = [str(d) for d in range(10)]
    scale_words = [word for _, word in reversed(SCALES)]  # thousand, million
    return WordVocabulary([*SPECIAL_TOKENS, *digits, *ONES, *TENS, "hundred", *scale_words])
