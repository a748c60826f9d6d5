"""Input data for training: the built-in number-words task and its TensorFlow-free pipeline."""

from train.data.numbers import (
    MAX_DIGITS,
    SEED,
    SPLIT_SIZES,
    NumberWords,
    WordVocabulary,
    generate_examples,
    number_to_words,
    number_words_vocabulary,
    prepare_number_words,
    split_numbers,
)
from train.data.pipeline import (
    Vocabulary,
    encode_example,
    eval_batches,
    max_lengths,
    train_batches,
)

__all__ = [
    "MAX_DIGITS",
    "SEED",
    "SPLIT_SIZES",
    "NumberWords",
    "Vocabulary",
    "WordVocabulary",
    "encode_example",
    "eval_batches",
    "generate_examples",
    "max_lengths",
    "number_to_words",
    "number_words_vocabulary",
    "prepare_number_words",
    "split_numbers",
    "train_batches",
]
