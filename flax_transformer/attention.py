"""Scaled dot-product attention (paper section 3.2.1): the one place for attention math.

    Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d_k)) V

`scaled_dot_product_attention` is written for one head of one example and lifted over any
leading (batch, head, ...) dimensions with `jax.vmap`. It is the readable reference path.
`fused_dot_product_attention` is the fast path: `jax.nn.dot_product_attention`, with its default
implementation (None), which JAX lowers with XLA, also on GPU (no cuDNN call). cuDNN flash
attention needs `implementation="cudnn"` and its shape and dtype rules; not used yet. Both paths
mask the same way and agree numerically.

Masks are boolean with True = "may attend" (see `flax_transformer.masks`). Masked logits are set
to a large finite negative rather than -inf, and weights of masked keys are then set to exactly
zero, so a query row with nothing to attend to gets all-zero weights and a zero output, never NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

# Large and finite: softmax stays NaN-free even when a whole row is masked. Same choice as JAX's
# own attention kernels (-0.7 * float32 max leaves headroom for the max-subtraction in softmax).
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _attention_one_head(
    query: Array, key: Array, value: Array, mask: Array | None, keep: Array | None, rate: float
) -> tuple[Array, Array]:
    """softmax(q kᵀ / sqrt(d_k)) v for one head of one example.

    query [q_len, d_k], key [k_len, d_k], value [k_len, d_v], mask broadcastable to
    [q_len, k_len] (True = attend), keep: the dropout keep-mask [q_len, k_len] or None.
    """
    d_k = query.shape[-1]
    # Logits and softmax in float32 whatever the compute dtype (bfloat16 softmax loses mass).
    logits = jnp.einsum("qd,kd->qk", query, key, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(d_k)
    if mask is not None:
        logits = jnp.where(mask, logits, MASK_VALUE)
    weights = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        # Without this, a fully masked row would spread uniform weight over masked keys.
        weights = jnp.where(mask, weights, 0.0)
    attended = weights
    if keep is not None:
        attended = jnp.where(keep, weights / (1.0 - rate), 0.0)
    output = jnp.einsum("qk,kd->qd", attended.astype(value.dtype), value)
    return output, weights


def cached_dot_product_attention(
    query: Array, transposed_key: Array, value: Array, mask: Array | None = None
) -> Array:
    """Attention over a decoding cache: the math of `scaled_dot_product_attention` (no dropout,
    no weights) for keys stored transposed.

    query [..., q_len, d_k], transposed_key [..., d_k, k_len], value [..., k_len, d_v], the
    same leading (batch, head) dimensions; mask broadcastable to [..., q_len, k_len]. Returns
    [..., q_len, d_v]; fully masked rows give zeros. Incremental decoding keeps its keys in
    this layout: q Kᵀ is then a plain matrix product, which XLA's CPU backend runs without
    copying the cache (a [k_len, d_k] operand is transposed first when q_len > 1).
    """
    d_k = query.shape[-1]
    logits = jnp.einsum(
        "...qd,...dk->...qk", query, transposed_key, preferred_element_type=jnp.float32
    )
    logits = logits / math.sqrt(d_k)
    if mask is not None:
        logits = jnp.where(mask, logits, MASK_VALUE)
    weights = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        weights = jnp.where(mask, weights, 0.0)
    return jnp.einsum("...qk,...kd->...qd", weights.astype(value.dtype), value)


def _check_shapes(query: Array, key: Array, value: Array, mask: Array | None) -> None:
    for name, array in (("query", query), ("key", key), ("value", value)):
        if array.ndim < 2:
            raise ValueError(f"{name} must have shape [..., length, depth], got {array.shape}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key must have the same depth d_k, got query {query.shape} and key "
            f"{key.shape}"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key and value must have the same length, got key {key.shape} and value {value.shape}"
        )
    if not query.shape[:-2] == key.shape[:-2] == value.shape[:-2]:
        raise ValueError(
            "query, key and value must have the same leading (batch, head) dimensions, got "
            f"{query.shape}, {key.shape}, {value.shape}"
        )
    if mask is not None:
        if mask.dtype != jnp.bool_:
            raise ValueError(
                f"mask must be boolean (True = may attend), got dtype {mask.dtype}; build it with "
                "flax_transformer.masks"
            )
        target = query.shape[:-1] + key.shape[-2:-1]
        try:
            broadcast = jnp.broadcast_shapes(mask.shape, target)
        except ValueError:
            broadcast = None
        if broadcast != target:
            raise ValueError(
                f"mask of shape {mask.shape} does not broadcast to [..., q_len, k_len] = {target}"
            )


def scaled_dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None = None,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
) -> tuple[Array, Array]:
    """Scaled dot-product attention, paper section 3.2.1 (the reference path).

    Args:
      query: [..., q_len, d_k].
      key: [..., k_len, d_k], same leading dimensions as `query`.
      value: [..., k_len, d_v], same leading dimensions as `query`.
      mask: optional boolean array broadcastable to [..., q_len, k_len]; True = may attend.
      dropout_rate: attention dropout on the weights (applied only when `dropout_rng` is given,
        so passing no key means inference).
      dropout_rng: a JAX PRNG key for attention dropout.

    Returns:
      (output [..., q_len, d_v], weights [..., q_len, k_len]). `weights` are the softmax
      probabilities before dropout, float32; masked entries are exactly 0, and a query row
      with no key to attend to has all-zero weights and a zero output.
    """
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    if mask is not None:
        mask = jnp.asarray(mask)
    _check_shapes(query, key, value, mask)
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    batch_shape = query.shape[:-2]
    q_len, k_len = query.shape[-2], key.shape[-2]

    keep = None
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, batch_shape + (q_len, k_len))

    # Lift the one-head function over every leading dimension with vmap. A mask dimension of
    # size 1 is broadcast (in_axes=None) instead of being materialised at full size.
    mask_axes: list[int | None] = [None] * len(batch_shape)
    if mask is not None:
        mask = mask.reshape((1,) * (len(batch_shape) + 2 - mask.ndim) + mask.shape)
        mask_axes = [0 if size != 1 else None for size in mask.shape[:-2]]
        squeeze = tuple(i for i, axis in enumerate(mask_axes) if axis is None)
        mask = jnp.squeeze(mask, axis=squeeze)

    def one_head(q, k, v, m, kp):
        return _attention_one_head(q, k, v, m, kp, dropout_rate)

    lifted = one_head
    for mask_axis in reversed(mask_axes):
        keep_axis = None if keep is None else 0
        lifted = jax.vmap(lifted, in_axes=(0, 0, 0, mask_axis, keep_axis))
    return lifted(query, key, value, mask, keep)


def fused_dot_product_attention(
    query: Array, key: Array, value: Array, mask: Array | None = None
) -> Array:
    """The fast path: `jax.nn.dot_product_attention` (XLA's lowering; see the module docstring).

    Takes the multi-head layout that the fused kernels use: query [batch, q_len, heads, d_k],
    key and value [batch, k_len, heads, d_k], mask broadcastable to [batch, heads, q_len, k_len].
    Returns [batch, q_len, heads, d_k]. No dropout and no weights: use the reference path for
    those. Fully masked query rows give zeros, as in the reference path.
    """
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be boolean (True = may attend), got dtype {mask.dtype}")
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    output = jax.nn.dot_product_attention(query, key, value, mask=mask)
    if mask is not None:
        # The fused kernels spread a fully masked row uniformly; the reference gives zeros.
        row_has_key = jnp.any(mask, axis=-1)  # [batch|1, heads|1, q_len|1]
        row_has_key = jnp.swapaxes(row_has_key, -1, -2)[..., None]  # [b, q, h, 1]
        output = jnp.where(row_has_key, output, jnp.zeros((), output.dtype))
    return output
