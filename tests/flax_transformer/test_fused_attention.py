"""The fused attention path: the cuDNN-or-XLA rule, and both branches against float64 NumPy.

No test needs a GPU. The rule is checked on a table worked out by hand from JAX's cuDNN
constraints (see `fused_attention_implementation`'s docstring). The XLA branch runs for real on
the CPU. The cuDNN branch is traced with the platform forced to "cuda" and
`jax.nn.dot_product_attention` replaced by a recorder, which checks the call's form and then
computes it with XLA, so the values it returns are those of the call cuDNN would receive.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_transformer as ft
from flax_transformer import attention, masks
from flax_transformer.attention import fused_attention_implementation, fused_dot_product_attention
from tests.numpy_reference import attention as np_attention

BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32
HOPPER, AMPERE = (9, 0), (8, 0)


def _q(b=2, n=32, h=8, d=64):
    """A [batch, length, heads, head_dim] shape: the base model's heads, 32 positions."""
    return (b, n, h, d)


# (platform, compute capability, dtype, query shape, key shape, mask shape, expected)
RULE_CASES = {
    "H100 bf16, no mask": ("cuda", HOPPER, BF16, _q(), _q(), None, "cudnn"),
    "A100 fp16, no mask": ("cuda", AMPERE, F16, _q(), _q(), None, "cudnn"),
    "float32 on a GPU": ("cuda", HOPPER, F32, _q(), _q(), None, "xla"),
    "cpu": ("cpu", None, BF16, _q(), _q(), None, "xla"),
    "tpu": ("tpu", None, BF16, _q(), _q(), None, "xla"),
    "rocm": ("rocm", None, BF16, _q(), _q(), None, "xla"),
    "cuda, capability unknown": ("cuda", None, BF16, _q(), _q(), None, "xla"),
    "T4 (7.5): before Ampere": ("cuda", (7, 5), BF16, _q(), _q(), None, "xla"),
    "head dim 8": ("cuda", AMPERE, BF16, _q(d=8), _q(d=8), None, "cudnn"),
    "head dim 128 on Ampere": ("cuda", AMPERE, BF16, _q(d=128), _q(d=128), None, "cudnn"),
    "head dim 256 on Ampere": ("cuda", AMPERE, BF16, _q(d=256), _q(d=256), None, "xla"),
    "head dim 256 on Hopper": ("cuda", HOPPER, BF16, _q(d=256), _q(d=256), None, "cudnn"),
    "head dim 264 on Hopper": ("cuda", HOPPER, BF16, _q(d=264), _q(d=264), None, "xla"),
    "head dim 60, not 8k": ("cuda", HOPPER, BF16, _q(d=60), _q(d=60), None, "xla"),
    "padding mask": ("cuda", HOPPER, BF16, _q(), _q(), (2, 1, 1, 32), "cudnn"),
    "causal mask": ("cuda", HOPPER, BF16, _q(), _q(), (1, 1, 32, 32), "cudnn"),
    "packed (segment) mask": ("cuda", HOPPER, BF16, _q(), _q(), (2, 1, 32, 32), "cudnn"),
    "cross 30 x 24": ("cuda", HOPPER, BF16, _q(n=30), _q(n=24), (2, 1, 1, 24), "cudnn"),
    "mask, odd q_len": ("cuda", HOPPER, BF16, _q(n=31), _q(), (2, 1, 1, 32), "xla"),
    "mask, odd k_len": ("cuda", HOPPER, BF16, _q(), _q(n=33), (2, 1, 1, 33), "xla"),
    "odd lengths, no mask": ("cuda", HOPPER, BF16, _q(n=31), _q(n=33), None, "cudnn"),
    "decoding step": ("cuda", HOPPER, BF16, _q(n=1), _q(n=64), (1, 1, 1, 64), "xla"),
    "grouped keys 8 / 2": ("cuda", HOPPER, BF16, _q(), _q(h=2), None, "cudnn"),
    "heads 8 / 3": ("cuda", HOPPER, BF16, _q(), _q(h=3), None, "xla"),
    "batch mismatch": ("cuda", HOPPER, BF16, _q(b=2), _q(b=3), None, "xla"),
    "rank 3": ("cuda", HOPPER, BF16, (32, 8, 64), (32, 8, 64), None, "xla"),
}


@pytest.mark.parametrize("case", RULE_CASES.values(), ids=RULE_CASES.keys())
def test_selection_rule(case):
    platform, capability, dtype, query_shape, key_shape, mask_shape, expected = case
    chosen = fused_attention_implementation(
        platform, dtype, query_shape, key_shape, mask_shape, compute_capability=capability
    )
    assert chosen == expected


def test_default_platform_on_this_machine():
    device = jax.devices()[0]
    platform, capability = attention.default_platform()
    if device.platform == "gpu":
        assert platform in ("cuda", "rocm") and (capability is None) == (platform == "rocm")
    else:
        assert (platform, capability) == (device.platform, None)


# --- Numbers: the model's layout [batch, len, heads, d_k] against the float64 reference ---------
def _qkv(rng, batch=2, q_len=6, k_len=8, heads=2, head_dim=8):
    q = rng.standard_normal((batch, q_len, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, k_len, heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((batch, k_len, heads, head_dim)).astype(np.float32)
    return q, k, v


def _reference(q, k, v, mask):
    """float64 NumPy attention in the fused layout: heads moved before length and back."""
    heads_first = lambda x: np.swapaxes(np.asarray(x, np.float64), 1, 2)  # noqa: E731
    out, _ = np_attention(heads_first(q), heads_first(k), heads_first(v), mask)
    return np.swapaxes(out, 1, 2)


def _masks(rng, batch, q_len, k_len):
    """The mask forms the model passes, and one with rows that see no key."""
    source = np.ones((batch, k_len), np.int32)
    source[0, k_len - 3 :] = 0  # right padding
    segments_q = np.array([[1] * (q_len // 2) + [2] * (q_len - q_len // 2)] * batch)
    segments_k = np.array([[1] * (k_len // 2) + [2] * (k_len - k_len // 2)] * batch)
    no_key = rng.random((batch, 1, q_len, k_len)) < 0.6
    no_key[0, 0, 1] = False
    no_key[1, 0, :, :] = False  # example 1 sees nothing at all
    return {
        "padding": np.asarray(masks.padding_mask(source)),
        "causal": np.asarray(masks.causal_mask(q_len)) if q_len == k_len else None,
        "packed": np.asarray(
            masks.combine_masks(
                masks.padding_mask(source), masks.segment_mask(segments_q, segments_k)
            )
        ),
        "rows with no key": no_key,
    }


@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal", "packed", "rows with no key"])
def test_xla_branch_matches_numpy(rng, mask_kind):
    q, k, v = _qkv(rng, q_len=8, k_len=8)
    mask = None if mask_kind == "none" else _masks(rng, 2, 8, 8)[mask_kind]
    out = fused_dot_product_attention(q, k, v, mask, implementation="xla")
    np.testing.assert_allclose(out, _reference(q, k, v, mask), rtol=1e-5, atol=1e-6)
    chosen = fused_dot_product_attention(q, k, v, mask)  # the CPU's choice is XLA
    np.testing.assert_array_equal(chosen, out)


def test_rows_with_no_key_are_zero_with_finite_gradients(rng):
    q, k, v = _qkv(rng)
    mask = _masks(rng, 2, 6, 8)["rows with no key"]
    out = fused_dot_product_attention(q, k, v, mask, implementation="xla")
    assert np.all(np.asarray(out)[1] == 0) and np.all(np.asarray(out)[0, 1] == 0)

    def loss(q, k, v):
        return jnp.sum(fused_dot_product_attention(q, k, v, mask, implementation="xla") ** 2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    assert all(np.isfinite(g).all() for g in grads)
    assert np.all(np.asarray(grads[0])[1] == 0)  # a zeroed row passes no gradient to its query


# --- The cuDNN branch, traced on the CPU --------------------------------------------------------
@pytest.fixture
def cuda_recorder(monkeypatch):
    """Pretend the default backend is an H100; record every jax.nn.dot_product_attention call
    and compute it with XLA (the original function, implementation="xla")."""
    original = jax.nn.dot_product_attention
    calls = []

    def recorder(query, key, value, bias=None, mask=None, **kwargs):
        calls.append(dict(kwargs, query=query, key=key, bias=bias, mask=mask))
        kwargs = dict(kwargs, implementation="xla")
        return original(query, key, value, bias, mask, **kwargs)

    monkeypatch.setattr(attention, "default_platform", lambda: ("cuda", HOPPER))
    monkeypatch.setattr(jax.nn, "dot_product_attention", recorder)
    return calls


@pytest.mark.parametrize(
    ("mask_kind", "q_len", "k_len"),
    [
        ("none", 8, 8),
        ("padding", 6, 8),
        ("causal", 8, 8),
        ("packed", 6, 8),
        ("rows with no key", 6, 8),
    ],
)
def test_cudnn_branch_call_and_values(rng, cuda_recorder, mask_kind, q_len, k_len):
    q, k, v = _qkv(rng, q_len=q_len, k_len=k_len)
    mask = None if mask_kind == "none" else _masks(rng, 2, q_len, k_len)[mask_kind]
    q16, k16, v16 = (jnp.asarray(x, BF16) for x in (q, k, v))
    # Under jit (the choice is made at trace time); a new function each time, so no cached trace.
    out = jax.jit(lambda *args: fused_dot_product_attention(*args))(q16, k16, v16, mask)
    (call,) = cuda_recorder
    assert call["implementation"] == "cudnn"
    assert call["bias"] is None and not call.get("is_causal", False)
    if mask is None:
        assert call["mask"] is None
    else:
        # Boolean, broadcast over the lengths (cuDNN's bias needs them), not over batch or heads.
        assert call["mask"].dtype == jnp.bool_
        assert call["mask"].shape == mask.shape[:2] + (q_len, k_len)
    assert out.dtype == BF16
    expected = _reference(*(np.float32(x) for x in (q16, k16, v16)), mask)
    np.testing.assert_allclose(np.float32(out), expected, atol=2e-2)
    if mask_kind == "rows with no key":
        assert np.all(np.float32(out)[1] == 0) and np.all(np.float32(out)[0, 1] == 0)


def test_cudnn_branch_is_not_taken_where_the_rule_says_xla(rng, cuda_recorder):
    q, k, v = _qkv(rng, q_len=7, k_len=8)
    mask = _masks(rng, 2, 7, 8)["padding"]
    fused_dot_product_attention(q, k, v, mask)  # float32
    fused_dot_product_attention(*(jnp.asarray(x, BF16) for x in (q, k, v)), mask)  # odd q_len
    fused_dot_product_attention(q, k, v, mask, implementation="xla")
    assert [call["implementation"] for call in cuda_recorder] == ["xla"] * 3


def test_model_in_bfloat16_routes_every_attention_to_cudnn(cuda_recorder):
    # tiny: head dim 32 / 4 = 8; even lengths. The encoder self-attention, decoder
    # self-attention and cross-attention go to cuDNN, and the logits are those of the reference
    # path (which never calls the fused kernels).
    config = ft.TransformerConfig.tiny(
        num_encoder_layers=1,
        num_decoder_layers=1,
        dtype="bfloat16",
        attention_implementation="fused",
    )
    params = ft.init_params(config, jax.random.key(0))
    source = np.array([[5, 6, 7, 8, 9, 10], [5, 6, 7, 0, 0, 0]], np.int32)
    target = np.array([[1, 8, 9, 10], [1, 11, 0, 0]], np.int32)
    cuda_recorder.clear()
    logits = jax.jit(ft.Transformer(config).apply)({"params": params}, source, target)
    assert [call["implementation"] for call in cuda_recorder] == ["cudnn"] * 3
    cuda_recorder.clear()
    reference_model = ft.Transformer(config.replace(attention_implementation="reference"))
    reference = jax.jit(reference_model.apply)({"params": params}, source, target)
    assert not cuda_recorder
    np.testing.assert_allclose(np.float32(logits), np.float32(reference), atol=5e-2)


@pytest.mark.parametrize(
    ("query_shape", "mask", "implementation", "message"),
    [
        ((6, 2, 8), None, None, "must have shape"),
        ((2, 6, 2, 8), np.ones((2, 1, 1, 8), np.float32), None, "boolean"),
        ((2, 6, 2, 8), np.ones((2, 1, 1, 7), bool), None, "does not broadcast"),
        ((2, 6, 2, 8), None, "flash", "implementation must be one of"),
    ],
)
def test_bad_arguments_are_named(query_shape, mask, implementation, message):
    q = np.zeros(query_shape, np.float32)
    kv = np.zeros(query_shape[:-3] + (8,) + query_shape[-2:], np.float32)
    with pytest.raises(ValueError, match=message):
        fused_dot_product_attention(q, kv, kv, mask, implementation=implementation)
