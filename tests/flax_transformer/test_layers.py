"""Linen layers against the float64 NumPy reference (tests/numpy_reference.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_transformer import masks
from flax_transformer.config import TransformerConfig
from flax_transformer.layers import (
    DecoderLayer,
    EncoderLayer,
    FeedForward,
    MultiHeadAttention,
    projection_dot_general,
    tied_output_logits,
)
from tests.numpy_reference import (
    as64,
    decoder_layer,
    encoder_layer,
    feed_forward,
    multi_head_attention,
)

CONFIG = TransformerConfig.tiny(d_model=16, num_heads=4, d_ff=24)
TOL = dict(rtol=1e-5, atol=1e-5)


def _inputs(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _cfg_dict(config):
    return config.to_dict()


def test_multi_head_attention_is_the_concatenation_of_heads(rng):
    x, memory = _inputs(rng, 2, 5, 16), _inputs(rng, 2, 7, 16)
    mask = np.asarray(masks.padding_mask(np.array([[1] * 7, [1] * 4 + [0] * 3])))
    module = MultiHeadAttention(CONFIG)
    params = module.init(jax.random.key(0), x, memory, mask)["params"]
    assert params["query"]["kernel"].shape == (16, 4, 4)  # [d_model, heads, d_k]
    out = module.apply({"params": params}, x, memory, mask)
    expected = multi_head_attention(
        as64(params), x, memory, np.broadcast_to(mask[:, 0], (2, 5, 7)), num_heads=4
    )
    np.testing.assert_allclose(out, expected, **TOL)


def test_fused_path_matches_reference_path(rng):
    x = _inputs(rng, 3, 6, 16)
    tokens = np.array([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0]])
    mask = np.asarray(masks.combine_masks(masks.padding_mask(tokens), masks.causal_mask(6)))
    reference = MultiHeadAttention(CONFIG)
    fused = MultiHeadAttention(CONFIG.replace(attention_implementation="fused"))
    params = reference.init(jax.random.key(1), x, x, mask)["params"]
    np.testing.assert_allclose(
        fused.apply({"params": params}, x, x, mask),
        reference.apply({"params": params}, x, x, mask),
        **TOL,
    )


def test_attention_weights_are_sown(rng):
    x = _inputs(rng, 2, 5, 16)
    module = MultiHeadAttention(CONFIG)
    params = module.init(jax.random.key(0), x, x, None)["params"]
    _, state = module.apply({"params": params}, x, x, None, mutable=["intermediates"])
    (weights,) = state["intermediates"]["attention_weights"]
    assert weights.shape == (2, 4, 5, 5)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)


def test_attention_dropout_needs_the_dropout_rng_and_changes_outputs(rng):
    config = CONFIG.replace(attention_dropout_rate=0.5, attention_implementation="fused")
    x = _inputs(rng, 2, 5, 16)
    module = MultiHeadAttention(config)
    params = module.init(jax.random.key(0), x, x, None)["params"]
    eval_out = module.apply({"params": params}, x, x, None)
    train_out = module.apply(
        {"params": params}, x, x, None, False, rngs={"dropout": jax.random.key(3)}
    )  # falls back to the reference path, which implements dropout
    assert np.isfinite(train_out).all() and not np.allclose(train_out, eval_out)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_feed_forward(rng, activation):
    config = CONFIG.replace(activation=activation)
    x = _inputs(rng, 2, 3, 16)
    module = FeedForward(config)
    params = module.init(jax.random.key(0), x)["params"]
    expected = feed_forward(as64(params), x, activation)
    np.testing.assert_allclose(module.apply({"params": params}, x), expected, **TOL)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_encoder_and_decoder_layers(rng, norm_position):
    config = CONFIG.replace(norm_position=norm_position)
    x, y = _inputs(rng, 2, 6, 16), _inputs(rng, 2, 4, 16)
    source = np.array([[3] * 6, [3] * 2 + [0] * 4])
    enc_mask = np.asarray(masks.encoder_self_attention_mask(source))
    dec_mask = np.asarray(masks.decoder_self_attention_mask(4))
    cross_mask = np.asarray(masks.cross_attention_mask(source))

    encoder = EncoderLayer(config)
    enc_params = encoder.init(jax.random.key(0), x, enc_mask)["params"]
    cfg = _cfg_dict(config)
    expected = encoder_layer(as64(enc_params), x, np.broadcast_to(enc_mask[:, 0], (2, 6, 6)), cfg)
    np.testing.assert_allclose(encoder.apply({"params": enc_params}, x, enc_mask), expected, **TOL)

    decoder = DecoderLayer(config)
    dec_params = decoder.init(jax.random.key(1), y, x, dec_mask, cross_mask)["params"]
    assert set(dec_params) == {
        "self_attention",
        "self_attention_norm",
        "cross_attention",
        "cross_attention_norm",
        "feed_forward",
        "feed_forward_norm",
    }
    expected = decoder_layer(
        as64(dec_params),
        y,
        x,
        np.broadcast_to(dec_mask[:, 0], (2, 4, 4)),
        np.broadcast_to(cross_mask[:, 0], (2, 4, 6)),
        cfg,
    )
    np.testing.assert_allclose(
        decoder.apply({"params": dec_params}, y, x, dec_mask, cross_mask), expected, **TOL
    )


def test_residual_dropout_is_active_only_in_training(rng):
    x = _inputs(rng, 2, 6, 16)
    layer = EncoderLayer(CONFIG.replace(dropout_rate=0.3))
    params = layer.init(jax.random.key(0), x, None)["params"]
    deterministic = layer.apply({"params": params}, x, None)
    again = layer.apply({"params": params}, x, None, True)
    np.testing.assert_array_equal(deterministic, again)
    train = lambda key: layer.apply(  # noqa: E731
        {"params": params}, x, None, False, rngs={"dropout": jax.random.key(key)}
    )
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), deterministic) and not np.allclose(train(1), train(2))
    with pytest.raises(Exception, match="dropout"):
        layer.apply({"params": params}, x, None, False)  # no dropout rng given


def test_bfloat16_compute_keeps_float32_params(rng):
    config = CONFIG.replace(dtype="bfloat16")
    x = jnp.asarray(_inputs(rng, 2, 6, 16))
    layer = EncoderLayer(config)
    params = layer.init(jax.random.key(0), x, None)["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    out = layer.apply({"params": params}, x, None)
    assert out.dtype == jnp.bfloat16
    full = EncoderLayer(CONFIG).apply({"params": params}, x, None)
    np.testing.assert_allclose(np.float32(out), full, atol=0.1)


def test_fused_path_in_bfloat16_matches_reference_path(rng):
    config = CONFIG.replace(dtype="bfloat16")
    x = jnp.asarray(_inputs(rng, 2, 6, 16))
    mask = masks.combine_masks(masks.padding_mask(np.array([[1] * 6, [1] * 2 + [0] * 4])))
    reference = MultiHeadAttention(config)
    params = reference.init(jax.random.key(0), x, x, mask)["params"]
    fused = MultiHeadAttention(config.replace(attention_implementation="fused"))
    out = fused.apply({"params": params}, x, x, mask)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.float32(out), np.float32(reference.apply({"params": params}, x, x, mask)), atol=3e-2
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tied_output_logits_and_their_gradients_match_numpy(rng, dtype):
    """logits = h Eᵀ; for the objective sum(c * logits): d h = c E and d E = cᵀ h (float64)."""
    hidden = rng.standard_normal((2, 3, 8)).astype(np.float32)
    embedding = rng.standard_normal((11, 8)).astype(np.float32)
    cotangent = rng.standard_normal((2, 3, 11)).astype(np.float32)

    def objective(h, e):
        logits = tied_output_logits(h.astype(dtype), e.astype(dtype))
        assert logits.dtype == jnp.float32
        return jnp.sum(cotangent * logits)

    logits = tied_output_logits(jnp.asarray(hidden, dtype), jnp.asarray(embedding, dtype))
    d_hidden, d_embedding = jax.jit(jax.grad(objective, argnums=(0, 1)))(hidden, embedding)
    h, e, c = (x.astype(np.float64) for x in (hidden, embedding, cotangent))
    tolerance = 1e-5 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(logits, h @ e.T, rtol=tolerance, atol=tolerance * 4)
    np.testing.assert_allclose(d_hidden, c @ e, rtol=tolerance, atol=tolerance * 4)
    expected_d_embedding = np.einsum("btv,btd->vd", c, h)
    np.testing.assert_allclose(
        d_embedding, expected_d_embedding, rtol=tolerance, atol=tolerance * 8
    )


@pytest.mark.parametrize(
    "input_shape, kernel_shape, k",
    [((2, 3, 5), (5, 4), 1), ((2, 3, 5), (5, 2, 3), 1), ((2, 3, 2, 3), (2, 3, 5), 2)],
)
def test_projection_dot_general_and_its_gradients_match_numpy(rng, input_shape, kernel_shape, k):
    """Dense, per-head (DenseGeneral to [h, d_k]) and output (from [h, d_k]) projections:
    y = x W over the trailing k axes; for sum(c * y), d x = c Wᵀ and d W = xᵀ c (float64)."""
    x = rng.standard_normal(input_shape).astype(np.float32)
    w = rng.standard_normal(kernel_shape).astype(np.float32)
    n = len(input_shape)
    dims = ((tuple(range(n - k, n)), tuple(range(k))), ((), ()))
    y = projection_dot_general(x, w, dims)
    x2, w2 = (
        x.reshape(-1, w.size // np.prod(kernel_shape[k:])),
        w.reshape(-1, np.prod(kernel_shape[k:])),
    )
    expected_y = (x2.astype(np.float64) @ w2).reshape(y.shape)
    np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5)
    c = rng.standard_normal(y.shape).astype(np.float32)
    d_x, d_w = jax.jit(
        jax.grad(lambda x, w: jnp.sum(c * projection_dot_general(x, w, dims)), argnums=(0, 1))
    )(x, w)
    c2 = c.reshape(x2.shape[0], -1).astype(np.float64)
    np.testing.assert_allclose(d_x, (c2 @ w2.T).reshape(x.shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_w, (x2.T @ c2).reshape(w.shape), rtol=1e-5, atol=1e-5)


def test_projection_dot_general_passes_other_contractions_to_lax():
    # A batched contraction (attention's q kᵀ) is not a projection: lax.dot_general's result.
    q, key = jnp.arange(24.0).reshape(2, 3, 4), jnp.arange(40.0).reshape(2, 5, 4)
    dims = (((2,), (2,)), ((0,), (0,)))
    np.testing.assert_array_equal(
        projection_dot_general(q, key, dims), np.einsum("bqd,bkd->bqk", q, key)
    )
