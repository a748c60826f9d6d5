"""Scaled dot-product attention (paper section 3.2.1): the one place for attention math.

    Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d_k)) V

`scaled_dot_product_attention` is written for one head of one example and lifted over any
leading (batch, head, ...) dimensions with `jax.vmap`. It is the readable reference path.
`fused_dot_product_attention` is the fast path: `jax.nn.dot_product_attention` with one of two
implementations, chosen at trace time by `fused_attention_implementation` from the platform, the
dtype and the shapes (static facts, so no host synchronisation): "cudnn" (cuDNN flash attention,
on a CUDA GPU for bfloat16/float16 inputs that meet cuDNN's shape rules) or "xla" (XLA's
lowering; everything else, CPU and TPU included). Both paths mask the same way and agree
numerically.

Masks are boolean with True = "may attend" (see `flax_transformer.masks`). Masked logits are set
to a large finite negative rather than -inf, and weights of masked keys are then set to exactly
zero, so a query row with nothing to attend to gets all-zero weights and a zero output, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.extend.backend
import jax.numpy as jnp
import numpy as np

from flax_transformer.dropout import keep_mask, keep_probability

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
        attended = jnp.where(keep, weights / keep_probability(rate), 0.0)
    output = jnp.einsum("qk,kd->qd", attended.astype(value.dtype), value)
    return output, weights


def cached_dot_product_attention(
    query: Array, transposed_key: Array, value: Array, mask: Array | None = None
) -> tuple[Array, Array]:
    """Attention over a decoding cache: the math of `scaled_dot_product_attention` (no dropout)
    for keys stored transposed, in one cache or in slots.

    query [..., q_len, d_k]. One cache that every query reads (cross-attention, greedy
    decoding): transposed_key [..., d_k, k_len] and value [..., k_len, d_v] with the query's
    leading (batch, head) dimensions. Slots (beam search, one per hypothesis: see
    `flax_transformer.model.DecodingCache`): one more axis before those two, transposed_key
    [..., slots, d_k, k_len] and value [..., slots, k_len, d_v], and every query attends over
    the keys of every slot, one softmax over slots x k_len keys. mask broadcastable to
    [..., (slots,) q_len, k_len]. Returns (output [..., q_len, d_v], weights float32 [...,
    (slots,) q_len, k_len]) as the reference path does (over the slots' keys side by side):
    fully masked rows give zeros; unused weights cost nothing under jit.
    """
    d_k = query.shape[-1]
    slotted = transposed_key.ndim == query.ndim + 1
    # Batched [q_len, d_k] x [d_k, k_len] and [q_len, k_len] x [k_len, d_v] products, one per
    # slot: XLA's CPU backend runs them without copying the cache, and faster than one product
    # over the slots' keys side by side (the layout beam search had before).
    if slotted:
        slots = transposed_key.shape[-3]
        query = jnp.broadcast_to(
            query[..., None, :, :], query.shape[:-2] + (slots,) + query.shape[-2:]
        )
    logits = jnp.einsum(
        "...qd,...dk->...qk", query, transposed_key, preferred_element_type=jnp.float32
    )
    logits = logits / math.sqrt(d_k)
    if mask is not None:
        logits = jnp.where(mask, logits, MASK_VALUE)
    weights = jax.nn.softmax(logits, axis=(-3, -1) if slotted else -1)
    if mask is not None:
        weights = jnp.where(mask, weights, 0.0)
    if not slotted:
        return jnp.einsum("...qk,...kd->...qd", weights.astype(value.dtype), value), weights
    per_slot = jnp.einsum(
        "...qk,...kd->...qd",
        weights.astype(value.dtype),
        value,
        preferred_element_type=jnp.float32,
    )
    return jnp.sum(per_slot, axis=-3).astype(value.dtype), weights


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
        _check_mask(mask, query.shape[:-1] + key.shape[-2:-1], "[..., q_len, k_len]")


def _check_mask(mask: Array, target: tuple[int, ...], layout: str) -> None:
    """A clear error unless `mask` is boolean and broadcasts to `target` (named `layout`)."""
    if mask.dtype != jnp.bool_:
        raise ValueError(
            f"mask must be boolean (True = may attend), got dtype {mask.dtype}; build it with "
            "flax_transformer.masks"
        )
    try:
        broadcast = jnp.broadcast_shapes(mask.shape, target)
    except ValueError:
        broadcast = None
    if broadcast != target:
        raise ValueError(f"mask of shape {mask.shape} does not broadcast to {layout} = {target}")


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
      dropout_rate: attention dropout on the weights (`flax_transformer.dropout`: rate in steps of
        2**-16), applied only when `dropout_rng` is given,
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
        keep = keep_mask(dropout_rng, dropout_rate, batch_shape + (q_len, k_len))

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


# ---------------------------------------------------------------------------------------------
# The fused path
# ---------------------------------------------------------------------------------------------
FUSED_IMPLEMENTATIONS = ("cudnn", "xla")
# What jax.nn.dot_product_attention(implementation="cudnn") accepts besides fp8 (which it only
# takes through another API). Query, key and value must share the dtype in every implementation.
CUDNN_DTYPES = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))
CUDNN_MIN_COMPUTE_CAPABILITY = (8, 0)  # cuDNN's fused attention (SDPA) needs Ampere or later
HOPPER = (9, 0)  # head dims up to 256 from here on, up to 128 before (JAX's rule)


def fused_attention_implementation(
    platform: str,
    dtype: Any,
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    mask_shape: Sequence[int] | None = None,
    *,
    compute_capability: tuple[int, int] | None = None,
) -> str:
    """Which kernel `fused_dot_product_attention` runs: "cudnn" or "xla". Pure; static facts only.

    The rules of `jax.nn.dot_product_attention(..., implementation="cudnn")` (jax 0.10:
    `check_layout` and `check_is_flash_attention` in jax/_src/cudnn/fused_attention_stablehlo.py),
    for the call that `fused_dot_product_attention` makes: query [batch, q_len, heads, d_k], key
    and value [batch, k_len, key_heads, d_k] (jax.nn requires value's shape and dtype to equal
    key's), and a boolean mask, which JAX turns into an additive bias of the query's dtype. It is
    "cudnn" when all of these hold, else "xla":

    - `platform` is "cuda" and `compute_capability` is at least 8.0 (Ampere).
    - `dtype` (of query, key and value) is bfloat16 or float16.
    - query and key have rank 4, the same batch and head dim, and heads a multiple of key_heads.
    - the head dim d_k is a multiple of 8 and at most 128, or 256 from compute capability 9.0
      (Hopper) on.
    - with a mask: q_len and k_len are even. The bias that a mask becomes must be shaped
      [batch|1, heads|1, q_len, k_len] (the caller broadcasts it), and cuDNN's backward pass
      with a bias needs even lengths; a trace cannot tell whether a backward pass will follow,
      so the rule asks for it always (incremental decoding, q_len 1, therefore runs on XLA).

    Args:
      platform: "cpu", "tpu", "cuda" (an NVIDIA GPU) or "rocm" (an AMD GPU), as
        `default_platform` names the default backend.
      dtype: the dtype of query, key and value.
      query_shape, key_shape: as above.
      mask_shape: the boolean mask's shape (broadcastable to [batch, heads, q_len, k_len]), or
        None for no mask.
      compute_capability: (major, minor) of the CUDA GPU; None = unknown, which gives "xla".
    """
    if platform != "cuda" or compute_capability is None:
        return "xla"
    if tuple(compute_capability) < CUDNN_MIN_COMPUTE_CAPABILITY:
        return "xla"
    if np.dtype(dtype) not in CUDNN_DTYPES:
        return "xla"
    if len(query_shape) != 4 or len(key_shape) != 4:
        return "xla"
    batch, q_len, heads, head_dim = query_shape
    key_batch, k_len, key_heads, key_head_dim = key_shape
    if batch != key_batch or head_dim != key_head_dim or heads % key_heads != 0:
        return "xla"
    max_head_dim = 256 if tuple(compute_capability) >= HOPPER else 128
    if head_dim % 8 != 0 or head_dim > max_head_dim:
        return "xla"
    if mask_shape is not None and (q_len % 2 != 0 or k_len % 2 != 0):
        return "xla"
    return "cudnn"


def default_platform() -> tuple[str, tuple[int, int] | None]:
    """(platform, compute capability) of the default backend, in the terms of
    `fused_attention_implementation`: ("cuda", (9, 0)) on an H100, ("cpu", None), ("tpu", None),
    ("rocm", None). Reads the device list only (no computation, no host synchronisation).
    """
    device = jax.devices()[0]
    if device.platform != "gpu":
        return device.platform, None
    # JAX itself tells CUDA from ROCm by the backend's platform version ("... cuda 12080").
    if "cuda" not in jax.extend.backend.get_backend().platform_version.lower():
        return "rocm", None
    major, minor = device.compute_capability.split(".")[:2]
    return "cuda", (int(major), int(minor))


def fused_dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None = None,
    *,
    implementation: str | None = None,
) -> Array:
    """The fast path: `jax.nn.dot_product_attention` with cuDNN flash attention or XLA.

    Takes the multi-head layout that the fused kernels use: query [batch, q_len, heads, d_k],
    key and value [batch, k_len, heads, d_k], mask broadcastable to [batch, heads, q_len, k_len].
    Returns [batch, q_len, heads, d_k]. No dropout and no weights: use the reference path for
    those. Fully masked query rows give zeros, as in the reference path.

    `implementation`: "cudnn", "xla", or None (default) for `fused_attention_implementation` on
    the default backend (`default_platform`), decided when the function is traced.

    On cuDNN the mask goes in as a boolean mask, which JAX turns into a bias, broadcast to
    [batch|1, heads|1, q_len, k_len] (cuDNN takes no bias broadcast over the lengths). cuDNN
    has faster forms, `is_causal=True` (it skips the masked half of the work) and
    `key_value_seq_lengths` (right padding as lengths, no bias to read), but a boolean array
    does not say at trace time that it is causal or right-padded (a pad id inside a sentence
    would break the lengths form), and masks are built in `flax_transformer.masks`, not here.
    The bias form is exact for every mask, packed (segment) masks included, and at the paper's
    sentence lengths its cost is small next to the projections. The kernel never sees a row
    without a key: such rows attend to every key and are zeroed after, on either kernel.
    """
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    for name, array in (("query", query), ("key", key), ("value", value)):
        if array.ndim != 4:
            raise ValueError(
                f"{name} must have shape [batch, length, heads, depth], got {array.shape}"
            )
    batch, q_len, heads, _ = query.shape
    k_len = key.shape[1]
    row_has_key = None
    if mask is not None:
        mask = jnp.asarray(mask)
        _check_mask(mask, (batch, heads, q_len, k_len), "[batch, heads, q_len, k_len]")
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        row_has_key = jnp.any(mask, axis=-1, keepdims=True)  # [batch|1, heads|1, q_len|1, 1]
        mask = jnp.logical_or(mask, jnp.logical_not(row_has_key))
    if implementation is None:
        platform, capability = default_platform()
        implementation = fused_attention_implementation(
            platform,
            query.dtype,
            query.shape,
            key.shape,
            None if mask is None else mask.shape,
            compute_capability=capability,
        )
    if implementation not in FUSED_IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {list(FUSED_IMPLEMENTATIONS)} or None, "
            f"got {implementation!r}"
        )
    if implementation == "cudnn" and mask is not None:
        mask = jnp.broadcast_to(mask, mask.shape[:2] + (q_len, k_len))
    output = jax.nn.dot_product_attention(
        query, key, value, mask=mask, implementation=implementation
    )
    if row_has_key is not None:
        # Rows that had no key attended to every key above; the reference gives them zeros.
        row_has_key = jnp.swapaxes(row_has_key[..., 0], -1, -2)[..., None]  # [b|1, q|1, h|1, 1]
        output = jnp.where(row_has_key, output, jnp.zeros((), output.dtype))
    return output
