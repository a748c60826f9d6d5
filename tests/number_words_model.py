"""A small model trained in-process on the number-words task ("40712" -> "forty thousand seven
hundred twelve"): 2+2 layers, 600 steps on numbers below 10^6, mostly right with greedy and beam
search. The session fixture `number_words_params` (tests/end_to_end/conftest.py) trains it
once for the tests that need a trained model (alignments, export)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax

import flax_transformer as ft
from tests.number_words_oracle import random_numbers
from train.data.numbers import number_to_words, number_words_vocabulary

VOCABULARY = number_words_vocabulary()
CONFIG = ft.TransformerConfig.tiny(
    vocab_size=VOCABULARY.vocab_size,
    d_model=64,
    num_heads=4,
    d_ff=256,
    num_encoder_layers=2,
    num_decoder_layers=2,
    dropout_rate=0.0,
    max_len=32,
)
STEPS, BATCH = 600, 64
SOURCE_LENGTH, TARGET_LENGTH = 8, 16  # 6 digits + eos; "nine hundred ninety nine thousand ..."


def make_batch(numbers: np.ndarray) -> dict[str, np.ndarray]:
    """A training batch of `numbers` and their words."""
    pad, bos, eos = VOCABULARY.pad_id, VOCABULARY.bos_id, VOCABULARY.eos_id
    source = np.full((len(numbers), SOURCE_LENGTH), pad, np.int32)
    target = np.full((len(numbers), TARGET_LENGTH), pad, np.int32)
    for row, number in enumerate(numbers):
        ids = [*VOCABULARY.encode(str(number)), eos]
        source[row, : len(ids)] = ids
        ids = [*VOCABULARY.encode(number_to_words(int(number))), eos]
        target[row, : len(ids)] = ids
    decoder_input = np.concatenate([np.full((len(numbers), 1), bos, np.int32), target[:, :-1]], 1)
    decoder_input[decoder_input == eos] = pad
    return {"source": source, "decoder_input": decoder_input, "target": target}


def train_params(config: ft.TransformerConfig = CONFIG, steps: int = STEPS, warmup: int = 50):
    """The parameters of a model of `config` after `steps` steps (deterministic): by default
    this module's model."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, warmup, steps, 1e-4)
    state = ft.create_train_state(config, ft.make_optimizer(schedule), jax.random.key(0))
    step = jax.jit(functools.partial(ft.train_step, label_smoothing=0.0))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        state, _ = step(state, make_batch(random_numbers(rng, BATCH)))
    return state.params
