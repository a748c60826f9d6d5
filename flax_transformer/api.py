"""Jitted entry points for users who do not want to touch linen.

    params  = init_params(config, jax.random.key(0))
    logits  = forward(config, params, source_tokens, decoder_input_tokens)
    encoded = encode(config, params, source_tokens)
    logits  = decode(config, params, encoded, source_tokens, decoder_input_tokens)

`config` is a static argument (it is a frozen, hashable dataclass): each distinct config and
input shape compiles once. All functions run the model deterministically (no dropout).

Input checking: these wrappers check token ids on the host before calling the compiled function
(integer dtype, [batch, length], length <= config.max_len, every id in [0, vocab_size)) and raise
ValueError naming the problem. That check reads the tokens back to the host; pass
`check_inputs=False` to skip it in a hot loop. When these functions are called inside your own
`jax.jit` the tokens are tracers and cannot be checked: there an out-of-range id embeds to NaN,
so the logits turn NaN rather than silently reading another token's row.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from flax_transformer.config import TransformerConfig
from flax_transformer.model import Transformer

Array = jax.Array
Params = dict[str, Any]


def _check_config(config: Any) -> None:
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")


def check_tokens(config: TransformerConfig, tokens: Any, name: str = "tokens") -> None:
    """Raise ValueError if `tokens` are not valid int ids [batch, length] for `config`.

    Tracers (inside a user's jit) are shape-checked only; their values cannot be read.
    """
    shape, dtype = np.shape(tokens), getattr(tokens, "dtype", None)
    if dtype is None:
        dtype = np.asarray(tokens).dtype
    if len(shape) != 2:
        raise ValueError(f"{name} must have shape [batch, length], got {tuple(shape)}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} must be integer token ids, got dtype {dtype}")
    if shape[1] > config.max_len:
        raise ValueError(
            f"{name} has length {shape[1]}, longer than config.max_len={config.max_len}"
        )
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(shape)}")
    if isinstance(tokens, jax.core.Tracer):
        return
    values = np.asarray(tokens)
    bad = (values < 0) | (values >= config.vocab_size)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} holds {int(bad.sum())} id(s) outside the vocabulary [0, "
            f"{config.vocab_size}); the first is {int(values[row, column])} at [{row}, {column}]"
        )


def _check_pair(config: TransformerConfig, source_tokens: Any, decoder_input_tokens: Any) -> None:
    check_tokens(config, source_tokens, "source_tokens")
    check_tokens(config, decoder_input_tokens, "decoder_input_tokens")
    if np.shape(source_tokens)[0] != np.shape(decoder_input_tokens)[0]:
        raise ValueError(
            "source_tokens and decoder_input_tokens must have the same batch size, got "
            f"{np.shape(source_tokens)} and {np.shape(decoder_input_tokens)}"
        )


def init_params(config: TransformerConfig, rng: Array) -> Params:
    """Freshly initialised float32 parameters of `Transformer(config)`."""
    _check_config(config)
    return _init_params(config, rng)


@functools.partial(jax.jit, static_argnums=0)
def _init_params(config: TransformerConfig, rng: Array) -> Params:
    tokens = jnp.ones((1, 1), jnp.int32)
    return Transformer(config).init({"params": rng}, tokens, tokens)["params"]


@functools.partial(jax.jit, static_argnums=0)
def _forward(config: TransformerConfig, params: Params, source: Array, target: Array) -> Array:
    return Transformer(config).apply({"params": params}, source, target)


@functools.partial(jax.jit, static_argnums=0)
def _encode(config: TransformerConfig, params: Params, source: Array) -> Array:
    return Transformer(config).apply({"params": params}, source, method=Transformer.encode)


@functools.partial(jax.jit, static_argnums=0)
def _decode(
    config: TransformerConfig, params: Params, encoded: Array, source: Array, target: Array
) -> Array:
    return Transformer(config).apply(
        {"params": params}, encoded, source, target, method=Transformer.decode
    )


@functools.partial(jax.jit, static_argnums=0)
def _forward_with_attention(
    config: TransformerConfig, params: Params, source: Array, target: Array
) -> tuple[Array, Any]:
    logits, state = Transformer(config).apply(
        {"params": params}, source, target, mutable=["intermediates"]
    )
    return logits, state["intermediates"]


def forward(
    config: TransformerConfig,
    params: Params,
    source_tokens: Array,
    decoder_input_tokens: Array,
    *,
    check_inputs: bool = True,
) -> Array:
    """The full model: float32 logits [batch, tgt_len, vocab_size] (jitted, deterministic)."""
    _check_config(config)
    if check_inputs:
        _check_pair(config, source_tokens, decoder_input_tokens)
    return _forward(config, params, source_tokens, decoder_input_tokens)


def encode(
    config: TransformerConfig, params: Params, source_tokens: Array, *, check_inputs: bool = True
) -> Array:
    """The encoder stack: [batch, src_len, d_model] in the compute dtype (jitted)."""
    _check_config(config)
    if check_inputs:
        check_tokens(config, source_tokens, "source_tokens")
    return _encode(config, params, source_tokens)


def decode(
    config: TransformerConfig,
    params: Params,
    encoded: Array,
    source_tokens: Array,
    decoder_input_tokens: Array,
    *,
    check_inputs: bool = True,
) -> Array:
    """One pass of the decoder over a target prefix: float32 logits [batch, tgt_len, vocab].

    The logits at position t predict token t + 1. `source_tokens` supplies the cross-attention
    padding mask. To decode step by step with one compilation, keep `decoder_input_tokens` at a
    fixed length (padded on the right) and read `logits[:, t]`: the causal mask makes position t
    independent of everything after it. (Cached incremental decoding lives in decoding.py.)
    """
    _check_config(config)
    if check_inputs:
        _check_pair(config, source_tokens, decoder_input_tokens)
        expected = tuple(np.shape(source_tokens)) + (config.d_model,)
        if tuple(np.shape(encoded)) != expected:
            raise ValueError(
                f"encoded must have shape [batch, src_len, d_model] = {expected} to match "
                f"source_tokens, got {tuple(np.shape(encoded))}"
            )
    return _decode(config, params, encoded, source_tokens, decoder_input_tokens)


def attention_weights(
    config: TransformerConfig,
    params: Params,
    source_tokens: Array,
    decoder_input_tokens: Array,
    *,
    check_inputs: bool = True,
) -> tuple[Array, dict[str, Array]]:
    """Logits and every attention map, for plotting (jitted).

    Returns (logits, maps) where maps is keyed like "encoder/layer_0/self_attention" and
    "decoder/layer_1/cross_attention", each [batch, heads, q_len, k_len] float32 (with scanned
    layers the key is "encoder/layers/self_attention" with a leading layer axis). Uses the
    reference attention path even when config selects the fused one (the fused kernels do not
    expose the weights).
    """
    _check_config(config)
    if check_inputs:
        _check_pair(config, source_tokens, decoder_input_tokens)
    config = config.replace(attention_implementation="reference")
    logits, intermediates = _forward_with_attention(
        config, params, source_tokens, decoder_input_tokens
    )
    flat = flax.traverse_util.flatten_dict(intermediates, sep="/")
    maps = {}
    for path, value in flat.items():
        prefix = path.removesuffix("/attention_weights")
        maps[prefix] = value[0] if isinstance(value, tuple) else value
    return logits, maps


def count_params(params: Params) -> int:
    """The number of scalar parameters in a parameter tree."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)))
