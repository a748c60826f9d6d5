"""Greedy decoding against a plain Python loop over the full forward pass."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import random_tokens

import flax_transformer as ft
from flax_transformer.decoding import greedy_decode, strip_after_eos

CONFIG = ft.TransformerConfig.tiny(vocab_size=12, num_encoder_layers=1, num_decoder_layers=1)
BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def params():
    return ft.init_params(CONFIG, jax.random.key(3))


def python_loop_greedy(params, source: np.ndarray, max_length: int) -> list[list[int]]:
    """Grow each prefix one token at a time with the uncached forward pass; stop at eos."""
    outputs = []
    for row in source:
        prefix = [BOS]
        while len(prefix) <= max_length:
            logits = ft.forward(CONFIG, params, row[None], np.array([prefix], np.int32))
            token = int(np.argmax(logits[0, -1]))
            prefix.append(token)
            if token == EOS:
                break
        outputs.append(prefix[1:])
    return outputs


def test_greedy_decode_equals_the_python_loop(params, rng) -> None:
    # Bias the model towards eos on some rows only, so that rows finish at different steps.
    biased = jax.tree.map(np.array, params)
    biased["shared_embedding"]["embedding"][EOS] *= 3.0
    source = random_tokens(rng, 6, 7, CONFIG.vocab_size)
    max_length = 9
    for weights in (params, biased):
        expected = python_loop_greedy(weights, source, max_length)
        output = np.asarray(
            greedy_decode(CONFIG, weights, source, bos_id=BOS, eos_id=EOS, max_length=max_length)
        )
        assert output.shape == (6, max_length)
        for row, tokens in zip(output, expected, strict=True):
            np.testing.assert_array_equal(row[: len(tokens)], tokens)
            assert (row[len(tokens) :] == CONFIG.pad_id).all()  # pad after eos
    # `expected` is now the biased model's: its rows stop at different steps, early (eos) and
    # at max_length, so the loop's stopping rule was exercised both ways.
    assert any(tokens[-1] == EOS and len(tokens) < max_length for tokens in expected)
    assert any(len(tokens) == max_length and EOS not in tokens for tokens in expected)


def test_strip_after_eos() -> None:
    tokens = np.array([[5, 6, EOS, 7, 0], [5, 0, 6, 0, 0], [EOS, 0, 0, 0, 0]])
    assert strip_after_eos(tokens, EOS, 0) == [[5, 6], [5, 6], []]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bos_id": 12}, "bos_id=12 is outside the vocabulary"),
        ({"eos_id": -1}, "eos_id=-1 is outside the vocabulary"),
        ({"max_length": 0}, r"max_length must be in \[1, config.max_len=64\]"),
        ({"max_length": 65}, "max_length must be in"),
    ],
)
def test_greedy_decode_rejects_bad_arguments(params, kwargs, message) -> None:
    arguments = {"bos_id": BOS, "eos_id": EOS, "max_length": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        greedy_decode(CONFIG, params, np.ones((1, 3), np.int32), **arguments)
