"""The built-in synthetic translation task: numbers written as digits, translated into words.

Source "40712" -> target "forty thousand seven hundred twelve" (American English, no "and",
no hyphens). The task is small and synthetic, yet it needs what a translation model needs: every
output word depends on a digit picked by its position counted from the *end* of the number, so
the decoder must attend to the right source position (cross-attention); teens, tens and zeros
change which words appear, so words depend on neighbouring digits too; and the output is longer
than the input and not aligned with it position by position.

This module holds

- `number_to_words`: the ground-truth translation;
- `split_numbers` and `generate_examples`: the deterministic train/validation/test splits;
- `NumberWords`: a TFDS builder that writes the splits as ArrayRecord files (no download);
- `prepare_number_words`: builds (once) and returns that builder;
- `number_words_vocabulary`: the task's fixed word-level vocabulary
  (`train.data.vocabulary.WordVocabulary`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

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

SPLIT_SIZES = {"train": 200_000, "validation": 1_000, "test": 2_000}
"""Examples per split."""

MIN_HELD_OUT = 100
"""Validation and test numbers are >= this, so that all the (few) 1- and 2-digit numbers can be
in train: a model cannot be expected to say "thirteen" if it never saw it."""


def _draw_numbers(rng: np.random.Generator, count: int, max_digits: int) -> np.ndarray:
    """Draws `count` numbers (with repeats): digit count uniform in 1..max_digits, then the number
    uniform among those with exactly that many digits (0..9 for one digit)."""
    digits = rng.integers(1, max_digits + 1, size=count)
    low = np.where(digits == 1, 0, 10 ** (digits - 1))
    return rng.integers(low, 10**digits)


def split_numbers(seed: int = SEED, max_digits: int = MAX_DIGITS) -> dict[str, np.ndarray]:
    """The numbers of each split (int64 arrays of `SPLIT_SIZES`), deterministic in `seed`.

    All numbers are distinct, so validation and test are disjoint from train and from each other.
    Numbers are drawn in batches and kept in order of first appearance; the first eligible ones
    (>= `MIN_HELD_OUT`) become validation, then test, and all the others train. Drawing distinct
    numbers saturates the short lengths (there are only 10 one-digit numbers), so train holds every
    number below 1000 that was drawn, and longer numbers make up the bulk of it.
    """
    if not 1 <= max_digits <= MAX_DIGITS:
        raise ValueError(f"max_digits must be in 1..{MAX_DIGITS}, got {max_digits}")
    held_out_size = SPLIT_SIZES["validation"] + SPLIT_SIZES["test"]
    total = sum(SPLIT_SIZES.values())
    if 10**max_digits - MIN_HELD_OUT < total:
        raise ValueError(f"{max_digits}-digit numbers are too few for {total} distinct examples")
    rng = np.random.default_rng(seed)
    distinct = np.empty(0, dtype=np.int64)
    while True:
        # Vectorised draw-and-deduplicate: np.unique sorts, so recover the order of first
        # appearance through the indices (they make the splits independent of np.unique's sort).
        drawn = np.concatenate([distinct, _draw_numbers(rng, total, max_digits)])
        _, first_index = np.unique(drawn, return_index=True)
        distinct = drawn[np.sort(first_index)]
        eligible = distinct >= MIN_HELD_OUT
        if len(distinct) >= total and eligible.sum() >= held_out_size:
            break
    held_out_positions = np.flatnonzero(eligible)[:held_out_size]
    is_train = np.ones(len(distinct), dtype=bool)
    is_train[held_out_positions] = False
    held_out = distinct[held_out_positions]
    return {
        "train": distinct[is_train][: SPLIT_SIZES["train"]],
        "validation": held_out[: SPLIT_SIZES["validation"]],
        "test": held_out[SPLIT_SIZES["validation"] :],
    }


def generate_examples(numbers: Iterable[int]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yields `(key, {"source": digits, "target": words})` for each number; the key is the number
    (unique within and across splits)."""
    for n in numbers:
        n = int(n)
        yield n, {"source": str(n), "target": number_to_words(n)}


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

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 200k train, 1k validation, 2k test numbers."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {"source": tfds.features.Text(), "target": tfds.features.Text()}
            ),
            supervised_keys=("source", "target"),
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
