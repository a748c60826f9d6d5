"""The whole Transformer: against the NumPy reference, causality, padding, stacking, counts."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_transformer as ft
from flax_transformer import Transformer, TransformerConfig
from flax_transformer.layers import TokenEmbedding
from tests.helpers import random_tokens
from tests.numpy_reference import transformer_logits

TINY = TransformerConfig.tiny()


def _batch(rng, config=TINY, batch=3, src_len=7, tgt_len=5):
    source = random_tokens(rng, batch, src_len, config.vocab_size, config.pad_id)
    target = random_tokens(rng, batch, tgt_len, config.vocab_size, config.pad_id)
    return source, target


@pytest.fixture(scope="module")
def tiny_params():
    return ft.init_params(TINY, jax.random.key(0))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"norm_position": "pre"},
        {"tie_output_embedding": False, "share_embeddings": False},
        {"positional_encoding": "learned", "activation": "gelu"},
        {"sinusoid_layout": "halves", "scale_embeddings": False, "pad_id": 3},
    ],
    ids=["paper", "pre-ln", "untied", "learned-gelu", "halves-pad3"],
)
def test_logits_match_numpy_reference(rng, overrides):
    config = TINY.replace(**overrides)
    params = ft.init_params(config, jax.random.key(1))
    if config.positional_encoding == "learned":  # init is tiny (0.02); make positions matter
        for stack in ("encoder", "decoder"):
            table = params[stack]["position_embedding"]["embedding"]
            params[stack]["position_embedding"]["embedding"] = jax.random.normal(
                jax.random.key(2), table.shape
            )
    source, target = _batch(rng, config)
    logits = ft.forward(config, params, source, target)
    assert logits.shape == (3, 5, config.vocab_size) and logits.dtype == jnp.float32
    expected = transformer_logits(params, config.to_dict(), source, target)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_encode_then_decode_equals_forward(rng, tiny_params):
    source, target = _batch(rng)
    encoded = ft.encode(TINY, tiny_params, source)
    assert encoded.shape == (3, 7, TINY.d_model)
    np.testing.assert_allclose(
        ft.decoder_logits(TINY, tiny_params, encoded, source, target),
        ft.forward(TINY, tiny_params, source, target),
        rtol=1e-6,
        atol=1e-6,
    )


def test_jit_equals_no_jit(rng, tiny_params):
    source, target = _batch(rng)
    eager = Transformer(TINY).apply({"params": tiny_params}, source, target)
    np.testing.assert_allclose(ft.forward(TINY, tiny_params, source, target), eager, atol=1e-5)


def test_causality_by_perturbation(rng, tiny_params):
    source, target = _batch(rng, tgt_len=6)
    target[:, :] = np.maximum(target, 1)  # no padding, so every position is a real query
    logits = np.asarray(ft.forward(TINY, tiny_params, source, target))
    for i in range(target.shape[1] - 1):
        changed = target.copy()
        changed[:, i + 1 :] = rng.integers(1, TINY.vocab_size, size=changed[:, i + 1 :].shape)
        perturbed = np.asarray(ft.forward(TINY, tiny_params, source, changed))
        np.testing.assert_array_equal(perturbed[:, : i + 1], logits[:, : i + 1])
        assert not np.allclose(perturbed[:, i + 1 :], logits[:, i + 1 :])


def _decoder_logits_given_embedding_offset(params, source, target, offset):
    """Logits with `offset` added to the decoder's token embeddings (a differentiable input)."""

    def add_offset(next_fun, args, kwargs, context):
        output = next_fun(*args, **kwargs)
        is_target_lookup = (
            isinstance(context.module, TokenEmbedding)
            and context.method_name == "__call__"
            and args[0].shape == target.shape
        )
        return output + offset if is_target_lookup else output

    with nn.intercept_methods(add_offset):
        return Transformer(TINY).apply({"params": params}, source, target)


def test_causality_by_gradient(rng, tiny_params):
    source, target = _batch(rng, src_len=7, tgt_len=5)
    offset = jnp.zeros(target.shape + (TINY.d_model,))
    for i in range(target.shape[1]):
        grad = jax.grad(
            lambda o, i=i: _decoder_logits_given_embedding_offset(tiny_params, source, target, o)[
                :, i
            ].sum()
        )(offset)
        grad_norm = np.abs(np.asarray(grad)).sum(-1)  # [batch, tgt_len]
        assert np.all(grad_norm[:, i + 1 :] == 0.0), f"position {i} depends on later inputs"
        assert np.all(grad_norm[:, : i + 1] > 0.0)


def test_source_padding_never_changes_logits(rng, tiny_params):
    source, target = _batch(rng, src_len=7)
    logits = ft.forward(TINY, tiny_params, source, target)
    # 1. more padding on the right changes no logit
    longer = np.pad(source, ((0, 0), (0, 4)), constant_values=TINY.pad_id)
    np.testing.assert_allclose(
        ft.forward(TINY, tiny_params, longer, target), logits, rtol=1e-5, atol=1e-5
    )
    # 2. whatever the encoder output holds under the padding mask, the decoder ignores it
    encoded = np.asarray(ft.encode(TINY, tiny_params, source))
    garbage = encoded.copy()
    padding = source == TINY.pad_id
    garbage[padding] = 1e3 * rng.standard_normal(garbage[padding].shape)
    np.testing.assert_array_equal(
        ft.decoder_logits(TINY, tiny_params, garbage, source, target),
        ft.decoder_logits(TINY, tiny_params, encoded, source, target),
    )
    # 3. tokens under a fixed padding mask never reach a real position of the encoder
    model = Transformer(TINY)
    mask = ft.masks.encoder_self_attention_mask(source)
    changed = np.where(
        source == TINY.pad_id, rng.integers(1, TINY.vocab_size, source.shape), source
    )

    def run_encoder(tokens):
        return model.apply(
            {"params": tiny_params}, tokens, mask, method=lambda m, t, k: m.encoder(t, k)
        )

    real = source != TINY.pad_id
    np.testing.assert_array_equal(
        np.asarray(run_encoder(changed))[real], np.asarray(run_encoder(source))[real]
    )


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_scan_equals_unrolled_with_the_same_weights(rng, norm_position):
    config = TINY.replace(norm_position=norm_position, num_encoder_layers=3)
    scanned_config = config.replace(scan_layers=True)
    params = ft.init_params(config, jax.random.key(4))
    stacked = ft.model.stack_layer_params(params)
    assert stacked["encoder"]["layers"]["feed_forward"]["hidden"]["kernel"].shape[0] == 3
    assert jax.tree.structure(stacked) == jax.tree.structure(
        ft.init_params(scanned_config, jax.random.key(4))
    )
    source, target = _batch(rng, config)
    np.testing.assert_allclose(
        ft.forward(scanned_config, stacked, source, target),
        ft.forward(config, params, source, target),
        rtol=1e-5,
        atol=1e-5,
    )
    round_trip = ft.model.unstack_layer_params(stacked)
    chex.assert_trees_all_equal(round_trip, params)

    def loss(p, cfg):
        return Transformer(cfg).apply({"params": p}, source, target).sum()

    grads = jax.grad(loss)(params, config)
    scanned_grads = ft.model.unstack_layer_params(jax.grad(loss)(stacked, scanned_config))
    chex.assert_trees_all_close(scanned_grads, grads, rtol=1e-4, atol=1e-5)


def test_remat_and_fused_attention_give_the_same_logits(rng, tiny_params):
    source, target = _batch(rng)
    reference = ft.forward(TINY, tiny_params, source, target)
    for overrides in ({"remat": True}, {"attention_implementation": "fused"}):
        np.testing.assert_allclose(
            ft.forward(TINY.replace(**overrides), tiny_params, source, target),
            reference,
            rtol=1e-5,
            atol=1e-5,
        )
    scanned = TINY.replace(scan_layers=True, remat=True)
    np.testing.assert_allclose(
        ft.forward(scanned, ft.model.stack_layer_params(tiny_params), source, target),
        reference,
        rtol=1e-5,
        atol=1e-5,
    )


def _cross_entropy(logits, targets, pad_id):
    log_probs = jax.nn.log_softmax(logits)
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    weights = (targets != pad_id).astype(jnp.float32)
    return -(picked * weights).sum() / weights.sum()


@pytest.mark.parametrize("overrides", [{}, {"scan_layers": True, "remat": True}])
def test_training_gradients_are_finite_and_reproducible(rng, overrides):
    config = TINY.replace(attention_dropout_rate=0.1, **overrides)
    params = ft.init_params(config, jax.random.key(0))
    source, target = _batch(rng, config)
    source[1] = config.pad_id  # an all-padding source row: every cross-attention row is masked

    @jax.jit
    def grads(params, key):
        def loss(p):
            logits = Transformer(config).apply(
                {"params": p}, source, target, deterministic=False, rngs={"dropout": key}
            )
            return _cross_entropy(logits, target, config.pad_id)

        return jax.value_and_grad(loss)(params)

    value, grad = grads(params, jax.random.key(7))
    assert np.isfinite(value)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(grad))
    again_value, again_grad = grads(params, jax.random.key(7))
    assert value == again_value
    chex.assert_trees_all_equal(grad, again_grad)


def test_same_seed_same_numbers_different_seed_different(rng):
    a = ft.init_params(TINY, jax.random.key(11))
    b = ft.init_params(TINY, jax.random.key(11))
    c = ft.init_params(TINY, jax.random.key(12))
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(
        a["shared_embedding"]["embedding"], c["shared_embedding"]["embedding"]
    )
    source, target = _batch(rng)
    np.testing.assert_array_equal(
        ft.forward(TINY, a, source, target), ft.forward(TINY, b, source, target)
    )


def test_bfloat16_model_is_close_to_float32(rng, tiny_params):
    source, target = _batch(rng)
    config = TINY.replace(dtype="bfloat16")
    logits = ft.forward(config, tiny_params, source, target)
    assert logits.dtype == jnp.float32
    reference = ft.forward(TINY, tiny_params, source, target)
    assert np.abs(np.asarray(logits) - np.asarray(reference)).max() < 0.15
    assert (np.argmax(logits, -1) == np.argmax(reference, -1)).mean() > 0.9


def _paper_param_count(v, d, h, ff, n_enc, n_dec):
    """Counted from the paper's description (plus the usual biases), independently of the code."""
    attention = 4 * (d * d + d)  # W^Q, W^K, W^V, W^O and their biases
    ffn = d * ff + ff + ff * d + d
    norm = 2 * d
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    return v * d + n_enc * encoder_layer + n_dec * decoder_layer


@pytest.mark.parametrize(("preset", "low", "high"), [("base", 63e6, 65e6), ("big", 210e6, 216e6)])
def test_parameter_counts_match_the_paper(preset, low, high):
    config = TransformerConfig.preset(preset, vocab_size=37000)
    shapes = jax.eval_shape(lambda: ft.init_params(config, jax.random.key(0)))
    count = ft.count_params(shapes)
    assert low <= count <= high, count
    assert count == _paper_param_count(37000, config.d_model, config.num_heads, config.d_ff, 6, 6)


def test_tiny_parameter_tree_has_stable_names():
    shapes = jax.eval_shape(lambda: ft.init_params(TINY, jax.random.key(0)))
    assert set(shapes) == {"shared_embedding", "encoder", "decoder"}
    assert set(shapes["encoder"]) == {"layer_0", "layer_1"}
    assert set(shapes["encoder"]["layer_0"]["self_attention"]) == {
        "query",
        "key",
        "value",
        "output",
    }
    pre = jax.eval_shape(
        lambda: ft.init_params(TINY.replace(norm_position="pre"), jax.random.key(0))
    )
    assert "final_norm" in pre["encoder"] and "final_norm" in pre["decoder"]
    untied = TINY.replace(share_embeddings=False, tie_output_embedding=False)
    untied_shapes = jax.eval_shape(lambda: ft.init_params(untied, jax.random.key(0)))
    assert {"source_embedding", "target_embedding"} <= set(untied_shapes)
    assert untied_shapes["decoder"]["logits"]["kernel"].shape == (TINY.d_model, TINY.vocab_size)


def test_packed_sequences_equal_separate_examples(tiny_params):
    # Two examples packed in one row (segments 1 and 2, 0 = padding), positions restart per segment.
    source_a, source_b = [5, 6, 7], [8, 9]
    target_a, target_b = [1, 10], [1, 11, 12]
    packed_source = np.array([source_a + source_b + [0]], np.int32)
    source_segments = np.array([[1, 1, 1, 2, 2, 0]])
    source_positions = np.array([[0, 1, 2, 0, 1, 0]])
    packed_target = np.array([target_a + target_b + [0]], np.int32)
    target_segments = np.array([[1, 1, 2, 2, 2, 0]])
    target_positions = np.array([[0, 1, 0, 1, 2, 0]])
    packed = Transformer(TINY).apply(
        {"params": tiny_params},
        packed_source,
        packed_target,
        source_positions=source_positions,
        target_positions=target_positions,
        source_segment_ids=source_segments,
        target_segment_ids=target_segments,
    )
    alone_a = ft.forward(TINY, tiny_params, np.array([source_a]), np.array([target_a]))
    alone_b = ft.forward(TINY, tiny_params, np.array([source_b]), np.array([target_b]))
    np.testing.assert_allclose(packed[0, :2], alone_a[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[0, 2:5], alone_b[0], rtol=1e-5, atol=1e-5)


def test_attention_maps_of_a_scanned_model(rng, tiny_params):
    config = TINY.replace(scan_layers=True, attention_implementation="fused")
    source, target = _batch(rng)
    _, maps = ft.attention_weights(config, ft.model.stack_layer_params(tiny_params), source, target)
    _, unrolled_maps = ft.attention_weights(TINY, tiny_params, source, target)
    assert maps["decoder/layers/cross_attention"].shape == (2, 3, TINY.num_heads, 5, 7)
    np.testing.assert_allclose(
        maps["decoder/layers/cross_attention"][1],
        unrolled_maps["decoder/layer_1/cross_attention"],
        atol=1e-6,
    )
