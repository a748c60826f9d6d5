"""Scaled dot-product attention against a float64 NumPy reference written in the test."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flax_transformer.attention import (
    cached_dot_product_attention,
    fused_dot_product_attention,
    scaled_dot_product_attention,
)
from tests.numpy_reference import attention as np_attention

RTOL = 1e-5


def _qkv(rng, batch_shape, q_len=5, k_len=7, d_k=8, d_v=6):
    q = rng.standard_normal(batch_shape + (q_len, d_k)).astype(np.float32)
    k = rng.standard_normal(batch_shape + (k_len, d_k)).astype(np.float32)
    v = rng.standard_normal(batch_shape + (k_len, d_v)).astype(np.float32)
    return q, k, v


def _assert_close(actual, expected, rtol=RTOL):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected)
    scale = np.maximum(np.abs(expected), 1.0)  # relative, but not blown up near zero
    np.testing.assert_array_less(np.abs(actual - expected) / scale, rtol)


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 4)])
def test_matches_numpy_without_mask(rng, batch_shape):
    q, k, v = _qkv(rng, batch_shape)
    out, weights = scaled_dot_product_attention(q, k, v)
    ref_out, ref_weights = np_attention(q, k, v)
    assert out.shape == batch_shape + (5, 6) and weights.shape == batch_shape + (5, 7)
    _assert_close(out, ref_out)
    _assert_close(weights, ref_weights)


@pytest.mark.parametrize("mask_shape", [(2, 4, 5, 7), (2, 1, 5, 7), (2, 1, 1, 7), (5, 7)])
def test_matches_numpy_with_broadcast_masks(rng, mask_shape):
    q, k, v = _qkv(rng, (2, 4))
    mask = rng.random(mask_shape) < 0.6
    out, weights = scaled_dot_product_attention(q, k, v, jnp.asarray(mask))
    ref_out, ref_weights = np_attention(q, k, v, mask)
    _assert_close(out, ref_out)
    _assert_close(weights, ref_weights)
    full_mask = np.broadcast_to(mask, weights.shape)
    assert np.all(np.asarray(weights)[~full_mask] == 0.0)


def test_hand_worked_example():
    # q·k = [0, 2] -> / sqrt(2) -> softmax([0, sqrt 2]); weighted average of the two values.
    q = np.array([[1.0, 1.0]], np.float32)
    k = np.array([[1.0, -1.0], [1.0, 1.0]], np.float32)
    v = np.array([[10.0], [20.0]], np.float32)
    out, weights = scaled_dot_product_attention(q, k, v)
    w1 = np.exp(np.sqrt(2)) / (1 + np.exp(np.sqrt(2)))
    np.testing.assert_allclose(weights, [[1 - w1, w1]], rtol=1e-6)
    np.testing.assert_allclose(out, [[10 * (1 - w1) + 20 * w1]], rtol=1e-6)


def test_fully_masked_rows_are_zero_and_finite(rng):
    q, k, v = _qkv(rng, (2, 3))
    mask = np.ones((2, 3, 5, 7), bool)
    mask[0, :, 1] = False  # query 1 of example 0 sees nothing
    mask[1, 2] = False  # head 2 of example 1 sees nothing at all
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert np.isfinite(out).all() and np.isfinite(weights).all()
    assert np.all(np.asarray(out)[0, :, 1] == 0) and np.all(np.asarray(weights)[0, :, 1] == 0)
    assert np.all(np.asarray(out)[1, 2] == 0)
    np.testing.assert_allclose(np.asarray(weights)[0, :, 0].sum(-1), 1.0, rtol=1e-6)

    def loss(q, k, v):
        return jnp.sum(scaled_dot_product_attention(q, k, v, mask)[0] ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    assert all(np.isfinite(g).all() for g in grads)


def test_cached_attention_with_transposed_keys_matches_numpy(rng):
    """The decoding cache's layout: keys [..., d_k, k_len]. A query with no key gives zeros."""
    q, k, v = _qkv(rng, (2, 4))
    mask = rng.random((2, 1, 5, 7)) < 0.6
    mask[1, 0, 3] = False
    out, weights = cached_dot_product_attention(q, np.swapaxes(k, -1, -2), v, jnp.asarray(mask))
    ref_out, ref_weights = np_attention(q, k, v, mask)
    assert out.shape == (2, 4, 5, 6)
    assert weights.shape == (2, 4, 5, 7) and weights.dtype == jnp.float32
    _assert_close(out, ref_out)
    _assert_close(weights, ref_weights)
    assert np.all(np.asarray(out)[1, :, 3] == 0.0)
    assert np.all(np.asarray(weights)[1, :, 3] == 0.0)


def test_cached_attention_over_slots_matches_numpy_over_the_slots_side_by_side(rng):
    """Beam search's cache: keys [..., slots, d_k, k_len], values [..., slots, k_len, d_v].
    The reference attends over the three slots' keys side by side (slot-major): one softmax
    over all of them. A query with no key in any slot gives zeros."""
    slots = 3
    q = rng.standard_normal((2, 4, 5, 8)).astype(np.float32)
    k = rng.standard_normal((2, 4, slots, 7, 8)).astype(np.float32)
    v = rng.standard_normal((2, 4, slots, 7, 6)).astype(np.float32)
    mask = rng.random((2, 1, slots, 5, 7)) < 0.4
    mask[1, 0, :, 3] = False
    out, weights = cached_dot_product_attention(q, np.swapaxes(k, -1, -2), v, jnp.asarray(mask))
    side_by_side = lambda x: x.reshape(2, 4, slots * 7, x.shape[-1])  # noqa: E731
    flat_mask = np.swapaxes(mask, 2, 3).reshape(2, 1, 5, slots * 7)
    ref_out, ref_weights = np_attention(q, side_by_side(k), side_by_side(v), flat_mask)
    ref_weights = np.swapaxes(ref_weights.reshape(2, 4, 5, slots, 7), 2, 3)
    assert out.shape == (2, 4, 5, 6)
    assert weights.shape == (2, 4, slots, 5, 7) and weights.dtype == jnp.float32
    _assert_close(out, ref_out)
    _assert_close(weights, ref_weights)
    np.testing.assert_allclose(np.asarray(weights).sum(axis=(2, 4))[0], 1.0, rtol=1e-6)
    assert np.all(np.asarray(out)[1, :, 3] == 0.0)
    assert np.all(np.asarray(weights)[1, :, :, 3] == 0.0)


def test_vmapped_single_head_equals_per_head_loop_and_fused(rng):
    batch, heads, length, d_k = 2, 4, 6, 8
    q, k, v = _qkv(rng, (batch, heads), q_len=length, k_len=length, d_k=d_k, d_v=d_k)
    mask = rng.random((batch, 1, length, length)) < 0.7
    mask[1, 0, 3] = False  # a fully masked row
    batched, _ = scaled_dot_product_attention(q, k, v, mask)
    for b in range(batch):
        for h in range(heads):
            single, _ = scaled_dot_product_attention(q[b, h], k[b, h], v[b, h], mask[b, 0])
            np.testing.assert_allclose(batched[b, h], single, rtol=1e-6, atol=1e-7)
    # The fused path takes [batch, len, heads, d_k].
    to_fused = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731
    fused = fused_dot_product_attention(to_fused(q), to_fused(k), to_fused(v), mask)
    np.testing.assert_allclose(to_fused(np.asarray(fused)), batched, rtol=1e-5, atol=1e-6)


def test_attention_is_jittable_and_matches_eager(rng):
    q, k, v = _qkv(rng, (2,))
    mask = rng.random((2, 5, 7)) < 0.5
    eager = scaled_dot_product_attention(q, k, v, mask)[0]
    jitted = jax.jit(scaled_dot_product_attention)(q, k, v, mask)[0]
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-7)


def test_bfloat16_inputs_keep_float32_softmax(rng):
    q, k, v = (jnp.asarray(a, jnp.bfloat16) for a in _qkv(rng, (2,)))
    out, weights = scaled_dot_product_attention(q, k, v)
    assert out.dtype == jnp.bfloat16 and weights.dtype == jnp.float32
    ref_out, _ = np_attention(np.float32(q), np.float32(k), np.float32(v))
    np.testing.assert_allclose(np.float32(out), ref_out, atol=5e-2)


def test_dropout_zeroes_and_rescales_weights(rng):
    # With value = identity, the output is exactly the dropped-out weight matrix.
    length, rate = 64, 0.25
    q, k, _ = _qkv(rng, (4,), q_len=length, k_len=length, d_k=8)
    v = np.broadcast_to(np.eye(length, dtype=np.float32), (4, length, length))
    out, weights = scaled_dot_product_attention(
        q, k, v, dropout_rate=rate, dropout_rng=jax.random.key(1)
    )
    out, weights = np.asarray(out), np.asarray(weights)
    kept = out != 0
    np.testing.assert_allclose(out[kept], weights[kept] / (1 - rate), rtol=1e-5)  # 0.25 is exact
    assert abs((~kept).mean() - rate) < 0.02
    again, _ = scaled_dot_product_attention(
        q, k, v, dropout_rate=rate, dropout_rng=jax.random.key(1)
    )
    np.testing.assert_array_equal(out, again)  # same key, same mask
    other, _ = scaled_dot_product_attention(
        q, k, v, dropout_rate=rate, dropout_rng=jax.random.key(2)
    )
    assert not np.array_equal(out, other)
    no_rng, _ = scaled_dot_product_attention(q, k, v, dropout_rate=rate)
    np.testing.assert_allclose(no_rng, weights, rtol=1e-6)  # no key: inference, no dropout
    # Different heads/examples draw different masks (the key is not reused per vmapped head).
    assert not np.array_equal(out[0] != 0, out[1] != 0)


@pytest.mark.parametrize(
    ("shapes", "mask", "message"),
    [
        (((5,), (7, 8), (7, 6)), None, "query must have shape"),
        (((5, 4), (7, 8), (7, 6)), None, "same depth d_k"),
        (((5, 8), (7, 8), (6, 6)), None, "same length"),
        (((2, 5, 8), (3, 7, 8), (3, 7, 6)), None, "leading"),
        (((5, 8), (7, 8), (7, 6)), np.ones((5, 7), np.float32), "boolean"),
        (((5, 8), (7, 8), (7, 6)), np.ones((5, 6), bool), "does not broadcast"),
    ],
)
def test_bad_shapes_are_named(shapes, mask, message):
    q, k, v = (np.zeros(s, np.float32) for s in shapes)
    with pytest.raises(ValueError, match=message):
        scaled_dot_product_attention(q, k, v, mask)


def test_bad_dropout_rate():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="dropout_rate"):
        scaled_dot_product_attention(x, x, x, dropout_rate=1.0, dropout_rng=jax.random.key(0))


@given(
    q_len=st.integers(1, 6),
    k_len=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    density=st.floats(0.0, 1.0),
)
def test_weights_are_a_distribution_over_allowed_keys(q_len, k_len, seed, density):
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, (2,), q_len=q_len, k_len=k_len, d_k=4, d_v=3)
    mask = rng.random((2, q_len, k_len)) < density
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    weights = np.asarray(weights)
    assert np.isfinite(weights).all() and np.isfinite(np.asarray(out)).all()
    assert (weights >= 0).all() and np.all(weights[~mask] == 0)
    row_sums = weights.sum(-1)
    np.testing.assert_allclose(row_sums, mask.any(-1).astype(np.float32), atol=1e-5)
