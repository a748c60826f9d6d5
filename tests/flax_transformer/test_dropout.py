"""Dropout from 16-bit draws: the mask against a hand-built one from the same threefry words, and
its statistics against the binomial distribution."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_transformer.dropout import (
    Dropout,
    drop_threshold,
    dropout,
    keep_mask,
    keep_probability,
)


def test_keep_probability_is_the_rate_rounded_to_sixteen_bits():
    assert drop_threshold(0.1) == 6554 and keep_probability(0.1) == 1 - 6554 / 65536
    assert abs(keep_probability(0.1) - 0.9) < 2**-17
    assert keep_probability(0.25) == 0.75 and keep_probability(0.5) == 0.5  # exact
    assert keep_probability(0.0) == 1.0
    for rate in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
            keep_probability(rate)


@pytest.mark.parametrize("width", [6, 7])  # even and odd last axis
def test_mask_is_built_from_the_low_and_high_halves_of_one_word_per_two_entries(width):
    key, rate = jax.random.key(3), 0.3
    mask = np.asarray(keep_mask(key, rate, (4, width)))
    words = np.asarray(jax.random.bits(key, (4, (width + 1) // 2), jnp.uint32)).astype(np.int64)
    halves = np.concatenate([words % 65536, words // 65536], axis=-1)[:, :width]
    np.testing.assert_array_equal(mask, halves >= round(0.3 * 65536))


def test_dropout_zeroes_or_scales_each_entry():
    x = np.arange(1, 2 * 3 * 10 + 1, dtype=np.float32).reshape(2, 3, 10)
    out = np.asarray(dropout(jnp.asarray(x), 0.4, jax.random.key(0)))
    kept = out != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_allclose(out[kept], x[kept] / keep_probability(0.4), rtol=1e-6)
    assert dropout(jnp.asarray(x), 0.4, jax.random.key(0)).dtype == jnp.float32
    bf16 = dropout(jnp.asarray(x, jnp.bfloat16), 0.4, jax.random.key(0))
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(bf16) != 0, kept)  # same key, same mask
    np.testing.assert_array_equal(np.asarray(dropout(jnp.asarray(x), 0.0, jax.random.key(0))), x)


def test_drop_frequency_and_mean_match_the_binomial():
    rate, shape = 0.1, (256, 1000)
    n = shape[0] * shape[1]
    mask = np.asarray(keep_mask(jax.random.key(7), rate, shape))
    p = keep_probability(rate)
    sd = np.sqrt(n * p * (1 - p))
    assert abs(mask.sum() - n * p) < 5 * sd
    # Low and high halves of the same words are independent: their joint keep rate is p**2.
    half = shape[1] // 2
    both = (mask[:, :half] & mask[:, half:]).sum()
    m = shape[0] * half
    assert abs(both - m * p * p) < 5 * np.sqrt(m * p * p * (1 - p * p))
    # Per column (the last axis, where words are split), each frequency is binomial too.
    columns = mask.mean(axis=0)
    assert np.all(np.abs(columns - p) < 5 * np.sqrt(p * (1 - p) / shape[0]))
    # E[dropout(x)] = x: the mean of many draws of a constant.
    out = np.asarray(dropout(jnp.full(shape, 2.0), rate, jax.random.key(8)), np.float64)
    assert abs(out.mean() - 2.0) < 5 * 2.0 * np.sqrt((1 - p) / p / n)


def test_module_draws_a_fresh_mask_per_call_and_is_the_identity_when_deterministic():
    x = jnp.ones((4, 64))

    class Twice(nn.Module):
        rate: float

        @nn.compact
        def __call__(self, inputs, deterministic):
            drop = Dropout(self.rate)  # one module called twice, as a layer calls its own
            return drop(inputs, deterministic), drop(inputs, deterministic)

    first, second = Twice(rate=0.5).apply({}, x, False, rngs={"dropout": jax.random.key(0)})
    assert not np.array_equal(np.asarray(first), np.asarray(second))
    again, _ = Twice(rate=0.5).apply({}, x, False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    same = Dropout(rate=0.5).apply({}, x, True)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))


def test_a_mask_needs_a_dimension():
    with pytest.raises(ValueError, match="at least one dimension"):
        keep_mask(jax.random.key(0), 0.1, ())
