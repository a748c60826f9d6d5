"""Decoding: turning a trained model into output sequences.

`greedy_decode` picks the most likely next token at every step (paper section 6.1 uses beam
search; greedy is its beam-size-1 special case). It is one pure, jitted function:

    encode the source once
    buffer = [bos, pad, pad, ...]                       fixed length: compiles once
    while some sequence is unfinished and t < max_length:
        logits = decoder(buffer)[:, t]                  causal mask: position t sees <= t only
        buffer[:, t + 1] = argmax(logits), or pad once a sequence has emitted eos

This version re-runs the decoder over the whole fixed-length buffer at each step (no key/value
cache): simple and exact, O(length^2) work per sentence.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from flax_transformer.api import check_tokens
from flax_transformer.config import TransformerConfig
from flax_transformer.model import Transformer

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("config", "bos_id", "eos_id", "max_length"))
def _greedy_decode(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    *,
    bos_id: int,
    eos_id: int,
    max_length: int,
) -> Array:
    model = Transformer(config)
    batch = source_tokens.shape[0]
    encoded = model.apply({"params": params}, source_tokens, method=Transformer.encode)
    # Column 0 holds the start token; columns 1..max_length receive the output tokens.
    buffer = jnp.full((batch, max_length + 1), config.pad_id, jnp.int32).at[:, 0].set(bos_id)
    finished = jnp.zeros((batch,), bool)

    def not_done(state: tuple[Array, Array, Array]) -> Array:
        step, _, finished = state
        return (step < max_length) & ~jnp.all(finished)

    def decode_one(state: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        step, buffer, finished = state
        # The decoder sees only buffer[:, :max_length]; the causal mask hides columns > step.
        logits = model.apply(
            {"params": params},
            encoded,
            source_tokens,
            buffer[:, :max_length],
            method=Transformer.decode,
        )
        next_logits = jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False)
        next_token = jnp.argmax(next_logits, axis=-1).astype(jnp.int32)
        next_token = jnp.where(finished, config.pad_id, next_token)
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, next_token, step + 1, axis=1)
        return step + 1, buffer, finished | (next_token == eos_id)

    _, buffer, _ = jax.lax.while_loop(not_done, decode_one, (jnp.int32(0), buffer, finished))
    return buffer[:, 1:]


def greedy_decode(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    *,
    bos_id: int,
    eos_id: int,
    max_length: int,
    check_inputs: bool = True,
) -> Array:
    """Greedy output tokens int32 [batch, max_length] for source tokens [batch, src_len].

    Each row holds the generated tokens up to and including the first `eos_id`, then
    `config.pad_id`; a row without eos ran out of `max_length`. The decoder starts from `bos_id`
    (MarianMT-style models start from the pad id: pass that). Jitted; compiles once per config,
    batch shape and `max_length`.
    """
    if check_inputs:
        check_tokens(config, source_tokens, "source_tokens")
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
            if not 0 <= value < config.vocab_size:
                raise ValueError(
                    f"{name}={value} is outside the vocabulary [0, {config.vocab_size})"
                )
        if not 1 <= max_length <= config.max_len:
            raise ValueError(
                f"max_length must be in [1, config.max_len={config.max_len}], got {max_length}"
            )
    return _greedy_decode(
        config, params, source_tokens, bos_id=bos_id, eos_id=eos_id, max_length=max_length
    )


def strip_after_eos(tokens: Any, eos_id: int, pad_id: int) -> list[list[int]]:
    """Token rows -> Python lists ending before the first eos (pad ids dropped)."""
    rows = []
    for row in jax.device_get(tokens).tolist():
        if eos_id in row:
            row = row[: row.index(eos_id)]
        rows.append([token for token in row if token != pad_id])
    return rows
