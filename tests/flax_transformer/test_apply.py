"""The jitted apply functions: input checks with clear errors, NaN for unchecked bad ids, the
attention maps for plotting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_transformer as ft

TINY = ft.TransformerConfig.tiny()


@pytest.fixture(scope="module")
def params():
    return ft.init_params(TINY, jax.random.key(0))


GOOD = np.array([[5, 6, 7, 0]], np.int32)


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        (
            np.array([[5, 64, 0]]),
            GOOD,
            r"source_tokens holds 1 id\(s\) outside the vocabulary "
            r"\[0, 64\); the first is 64 at \[0, 1\]",
        ),
        (GOOD, np.array([[1, -3]]), "decoder_input_tokens holds .* the first is -3"),
        (GOOD.astype(np.float32), GOOD, "source_tokens must be integer token ids"),
        (GOOD[0], GOOD, r"source_tokens must have shape \[batch, length\]"),
        (np.ones((1, 65), np.int32), GOOD, "length 65, longer than config.max_len=64"),
        (GOOD, np.ones((2, 3), np.int32), "same batch size"),
        (np.zeros((1, 0), np.int32), GOOD, "empty"),
    ],
)
def test_bad_tokens_raise_a_clear_error(params, source, target, message):
    with pytest.raises(ValueError, match=message):
        ft.forward(TINY, params, source, target)


def test_encode_and_decoder_logits_check_their_inputs(params):
    with pytest.raises(ValueError, match="source_tokens holds"):
        ft.encode(TINY, params, np.array([[99]]))
    encoded = ft.encode(TINY, params, GOOD)
    with pytest.raises(ValueError, match=r"encoded must have shape \[batch, src_len, d_model\]"):
        ft.decoder_logits(TINY, params, encoded[:, :2], GOOD, GOOD)
    with pytest.raises(TypeError, match="TransformerConfig"):
        ft.forward({"d_model": 32}, params, GOOD, GOOD)


def test_unchecked_out_of_range_ids_give_nan_not_garbage(params):
    bad = np.array([[5, 64, 0]], np.int32)
    logits = ft.forward(TINY, params, bad, GOOD, check_inputs=False)
    assert np.isnan(logits).all()  # the bad source id poisons every target position
    inside_jit = jax.jit(lambda s, t: ft.forward(TINY, params, s, t))(GOOD, jnp.array([[1, -1]]))
    # NaN times a zero attention weight is still NaN: a bad id anywhere poisons the whole row.
    assert np.isnan(inside_jit[0]).all()


def test_attention_weights_for_plotting(params):
    source = np.array([[5, 6, 7, 0]], np.int32)
    decoder_input = np.array([[1, 8, 9]], np.int32)
    logits, maps = ft.attention_weights(TINY, params, source, decoder_input)
    np.testing.assert_allclose(logits, ft.forward(TINY, params, source, decoder_input), atol=1e-6)
    assert set(maps) == {
        "encoder/layer_0/self_attention",
        "encoder/layer_1/self_attention",
        "decoder/layer_0/self_attention",
        "decoder/layer_0/cross_attention",
        "decoder/layer_1/self_attention",
        "decoder/layer_1/cross_attention",
    }
    cross = np.asarray(maps["decoder/layer_0/cross_attention"])
    assert cross.shape == (1, TINY.num_heads, 3, 4)
    np.testing.assert_array_equal(cross[..., 3], 0.0)  # the padding source token gets no weight
    np.testing.assert_allclose(cross.sum(-1), 1.0, rtol=1e-6)
    self_attention = np.asarray(maps["decoder/layer_0/self_attention"])
    assert np.all(np.triu(self_attention[0, 0], k=1) == 0.0)  # causal
