"""Input data for training, read without TensorFlow.

numbers        the built-in number-words task (a TFDS builder) and its word vocabulary
parallel_text  your parallel text files and TFDS catalog translation datasets
tokenizer      a SentencePiece vocabulary shared by source and target
pipeline       fixed-shape batches of a fixed number of pairs (number words)
batching       token-budget batches: length filtering, buckets, packing (text datasets)
tasks          a training config's data, ready for the loop
"""

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
from train.data.parallel_text import (
    ParallelText,
    TranslationPairs,
    catalog_translation_sources,
    normalize_whitespace,
    prepare_parallel_text,
    split_data_sources,
)
from train.data.pipeline import (
    Vocabulary,
    encode_example,
    eval_batches,
    max_lengths,
    train_batches,
)
from train.data.tokenizer import SentencePieceVocabulary, texts_of_both_sides

__all__ = [
    "MAX_DIGITS",
    "SEED",
    "SPLIT_SIZES",
    "NumberWords",
    "ParallelText",
    "SentencePieceVocabulary",
    "TranslationPairs",
    "catalog_translation_sources",
    "normalize_whitespace",
    "prepare_parallel_text",
    "split_data_sources",
    "texts_of_both_sides",
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
