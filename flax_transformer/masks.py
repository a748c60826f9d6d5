"""Attention masks (paper sections 3.1 and 3.2.3): the one place masks are built.

Every mask is boolean with True = "this query may attend to this key", shaped to broadcast
against attention logits of shape [batch, heads, q_len, k_len]:

    padding_mask(tokens)                   [batch, 1, 1, len]      keys that are not padding
    causal_mask(length)                    [1, 1, len, len]        key position <= query position
    segment_mask(q_segments, k_segments)   [batch, 1, q_len, k_len] same packed segment
    combine_masks(*masks)                  logical AND of the given masks (None is skipped)

and the three masks the model uses, built from those:

    encoder_self_attention_mask   padding (+ segments)
    decoder_self_attention_mask   causal, the "look-ahead" mask (+ segments)
    cross_attention_mask          source padding (+ target/source segments)
    decoder_step_mask             incremental decoding: the cached positions <= the current step
    beam_step_mask                the same for hypotheses that read their positions from slots

Padding masks act on keys only: a padding query row computes something, but it is never read
(the loss ignores padding positions), and key-only masks broadcast instead of materialising a
[len, len] array. The decoder self-attention mask is causal only: with right-padded targets
the causal mask already hides every padding key from every real query, and it stays correct when
the start token equals the pad id (as in MarianMT).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def padding_mask(tokens: Array, pad_id: int = 0) -> Array:
    """[batch, len] token ids -> [batch, 1, 1, len], True where the key is a real token."""
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape [batch, length], got {tokens.shape}")
    return (tokens != pad_id)[:, None, None, :]


def causal_mask(length: int) -> Array:
    """[1, 1, length, length]: query i may attend to keys 0..i (the look-ahead mask, 3.2.3)."""
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    positions = jnp.arange(length)
    return (positions[None, :] <= positions[:, None])[None, None]


def segment_mask(query_segment_ids: Array, key_segment_ids: Array | None = None) -> Array:
    """Packed sequences: [batch, q_len] and [batch, k_len] segment ids -> [batch, 1, q, k].

    True where query and key belong to the same segment, so attention never crosses from one
    packed example into another. Without `key_segment_ids`, keys are the queries (self-attention).
    """
    query_segment_ids = jnp.asarray(query_segment_ids)
    key_segment_ids = query_segment_ids if key_segment_ids is None else jnp.asarray(key_segment_ids)
    if query_segment_ids.ndim != 2 or key_segment_ids.ndim != 2:
        raise ValueError(
            "segment ids must have shape [batch, length], got "
            f"{query_segment_ids.shape} and {key_segment_ids.shape}"
        )
    if query_segment_ids.shape[0] != key_segment_ids.shape[0]:
        raise ValueError(
            "query and key segment ids must have the same batch size, got "
            f"{query_segment_ids.shape} and {key_segment_ids.shape}"
        )
    return (query_segment_ids[:, :, None] == key_segment_ids[:, None, :])[:, None]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of boolean masks, broadcasting them; None entries are skipped.

    Returns None when every mask is None (attention then sees every key).
    """
    present = [jnp.asarray(mask) for mask in masks if mask is not None]
    if not present:
        return None
    for mask in present:
        if mask.dtype != jnp.bool_:
            raise ValueError(f"masks must be boolean, got dtype {mask.dtype}")
    ndim = {mask.ndim for mask in present}
    if len(ndim) != 1:
        raise ValueError(f"masks must have the same rank, got shapes {[m.shape for m in present]}")
    combined = present[0]
    for mask in present[1:]:
        combined = jnp.logical_and(combined, mask)
    return combined


def encoder_self_attention_mask(
    source_tokens: Array, pad_id: int = 0, segment_ids: Array | None = None
) -> Array:
    """Encoder self-attention: every real source token, within its own segment if packed."""
    segments = None if segment_ids is None else segment_mask(segment_ids)
    return combine_masks(padding_mask(source_tokens, pad_id), segments)


def decoder_self_attention_mask(length: int, segment_ids: Array | None = None) -> Array:
    """Decoder self-attention: causal (3.2.3), within the query's segment if packed."""
    segments = None if segment_ids is None else segment_mask(segment_ids)
    return combine_masks(causal_mask(length), segments)


def cross_attention_mask(
    source_tokens: Array,
    pad_id: int = 0,
    target_segment_ids: Array | None = None,
    source_segment_ids: Array | None = None,
) -> Array:
    """Encoder-decoder attention: target queries see real source tokens of their own segment."""
    if (target_segment_ids is None) != (source_segment_ids is None):
        raise ValueError("give both target_segment_ids and source_segment_ids, or neither")
    segments = None
    if target_segment_ids is not None:
        segments = segment_mask(target_segment_ids, source_segment_ids)
    return combine_masks(padding_mask(source_tokens, pad_id), segments)


def decoder_step_mask(step: Array | int, length: int) -> Array:
    """Incremental decoding: [1, 1, 1, length], True for cached key positions <= `step`.

    Row `step` of `causal_mask(length)`: the one query, at position `step`, sees itself and the
    positions before it; the cache's later positions are still empty. `step` may be traced.
    """
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    return (jnp.arange(length) <= step)[None, None, None, :]


def beam_step_mask(slots: Array, step: Array | int) -> Array:
    """Incremental decoding of `beams` hypotheses per sentence over a cache of `beams` slots:
    int32 slots [batch, beams, length] -> [batch, 1, beams (slot j), beams (hypothesis k),
    length], the mask layout of `flax_transformer.attention.cached_dot_product_attention` with
    slots.

    Hypothesis k (query k) may attend to position t of slot j when t <= `step` and
    slots[b, k, t] == j: the slot that holds its position t. With one beam the cache has no
    slot axis, and neither has the mask: [batch, 1, 1, length], `decoder_step_mask` for every
    row. `step` may be traced.
    """
    slots = jnp.asarray(slots)
    if slots.ndim != 3:
        raise ValueError(f"slots must have shape [batch, beams, length], got {slots.shape}")
    beams, length = slots.shape[1:]
    in_slot = slots[:, None] == jnp.arange(beams)[:, None, None]  # [batch, j, k, t]
    mask = (in_slot & (jnp.arange(length) <= step))[:, None]
    return mask[:, :, 0] if beams == 1 else mask
