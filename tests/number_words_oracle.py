"""The number-words task's alignment, known by construction, written out independently of
`train.data.numbers.number_to_words` (tests/end_to_end/test_alignments.py checks that the two
spell every number alike). Used by that test and by benchmarks/alignment_benchmark.py; imports
nothing but NumPy."""

from __future__ import annotations

import numpy as np

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def oracle(number: int) -> tuple[list[str], set[tuple[int, int]], set[tuple[int, int]]]:
    """(words, sure links, possible links) of `number`; links are (digit position, word index).

    Sure: a digit word and the digit it names ("seven" <- 7 of 40712), "hundred" and its
    hundreds digit. Possible (besides the sure ones): a teen word and both its digits
    ("twelve" <- 1 and 2), a scale word ("thousand") and every digit of its group.
    """
    digits = [int(d) for d in str(number)]
    words: list[str] = []
    sure: set[tuple[int, int]] = set()
    possible: set[tuple[int, int]] = set()

    def say(word: str, sure_digits=(), possible_digits=()) -> None:
        words.append(word)
        sure.update((digit, len(words) - 1) for digit in sure_digits)
        possible.update((digit, len(words) - 1) for digit in possible_digits)

    if number == 0:
        say("zero", [0])
        return words, sure, possible
    # Groups of three digits from the right: (first position, positions) per group, left first.
    count = len(digits)
    groups = []
    for end in range(count, 0, -3):
        groups.append(list(range(max(0, end - 3), end)))
    groups.reverse()
    scales = {0: None, 1: "thousand", 2: "million"}
    for rank, positions in zip(range(len(groups) - 1, -1, -1), groups, strict=True):
        padded = [None] * (3 - len(positions)) + positions  # hundreds, tens, ones positions
        value = [0 if p is None else digits[p] for p in padded]
        if value == [0, 0, 0]:
            continue
        hundreds, tens, ones = padded
        if value[0]:
            say(ONES[value[0]], [hundreds])
            say("hundred", [hundreds])
        if value[1] >= 2:
            say(TENS[value[1]], [tens])
            if value[2]:
                say(ONES[value[2]], [ones])
        elif value[1] == 1:
            say(TEENS[value[2]], possible_digits=[tens, ones])
        elif value[2]:
            say(ONES[value[2]], [ones])
        if scales[rank]:
            say(scales[rank], possible_digits=positions)
    return words, sure, possible


def random_numbers(rng: np.random.Generator, count: int) -> np.ndarray:
    """Numbers with 1 to 6 digits, each digit count equally likely."""
    digits = rng.integers(1, 7, size=count)
    return rng.integers(np.where(digits == 1, 0, 10 ** (digits - 1)), 10**digits)
