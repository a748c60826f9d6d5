"""Jitted entry points for users who do not want to touch linen.

    params  = init_params(config, jax.random.key(0))             (from flax_transformer.model)
    logits  = forward(config, params, source_tokens, decoder_input_tokens)
    encoded = encode(config, params, source_tokens)
    logits  = decoder_logits(config, params, encoded, source_tokens, decoder_input_tokens)
    logits, maps = attention_weights(config, params, source_tokens, decoder_input_tokens)

`config` is a static argument (it is a frozen, hashable dataclass): each distinct config and
input shape compiles once. All functions run the model deterministically (no dropout).

Input checking (`flax_transformer.checks`): these wrappers check token ids on the host before
calling the compiled function (integer dtype, [batch, length], length <= config.max_len, every id
in [0, vocab_size)) and raise ValueError naming the problem. That check reads the tokens back to
the host; pass `check_inputs=False` to skip it in a hot loop. When these functions are called
inside your own `jax.jit` the tokens are tracers and cannot be checked: there an out-of-range id
embeds to NaN, so the logits turn NaN rather than silently reading another token's row.
"""

from __future__ import annotations

from typing import Any

import flax
import jax

from flax_transformer import checks
from flax_transformer.config import TransformerConfig
from flax_transformer.model import Params, Transformer

Array = jax.Array


def _check_model_inputs(
    config: Any,
    params: Params,
    source_tokens: Any,
    decoder_input_tokens: Any,
    check_inputs: bool,
    encoded: Any = None,
) -> None:
    """The check of every function here: the config always, the tokens if `check_inputs`."""
    checks.check_config(config)
    if check_inputs:
        checks.check_token_pair(config, source_tokens, decoder_input_tokens)
        if encoded is not None:
            checks.check_encoded(config, encoded, source_tokens)


def _check_source(config: Any, params: Params, source_tokens: Any, check_inputs: bool) -> None:
    checks.check_config(config)
    if check_inputs:
        checks.check_tokens(config, source_tokens, "source_tokens")


@checks.checked_jit(_check_model_inputs)
def forward(
    config: TransformerConfig,
    params: Params,
    source_tokens: Array,
    decoder_input_tokens: Array,
    *,
    check_inputs: bool = True,
) -> Array:
    """The full model (paper Figure 1): float32 logits [batch, tgt_len, vocab_size] (jitted)."""
    return Transformer(config).apply({"params": params}, source_tokens, decoder_input_tokens)


@checks.checked_jit(_check_source)
def encode(
    config: TransformerConfig, params: Params, source_tokens: Array, *, check_inputs: bool = True
) -> Array:
    """The encoder stack: [batch, src_len, d_model] in the compute dtype (jitted)."""
    return Transformer(config).apply({"params": params}, source_tokens, method=Transformer.encode)


@checks.checked_jit(_check_model_inputs)
def decoder_logits(
    config: TransformerConfig,
    params: Params,
    encoded: Array,
    source_tokens: Array,
    decoder_input_tokens: Array,
    *,
    check_inputs: bool = True,
) -> Array:
    """One pass of the decoder over a target prefix: float32 logits [batch, tgt_len, vocab].

    The logits at position t predict token t + 1. `encoded` is `encode(source_tokens)`;
    `source_tokens` supplies the cross-attention padding mask. To decode step by step with one
    compilation, keep `decoder_input_tokens` at a fixed length (padded on the right) and read
    `logits[:, t]`: the causal mask makes position t independent of everything after it.
    (Cached incremental decoding lives in `flax_transformer.decoding`.)
    """
    return Transformer(config).apply(
        {"params": params},
        encoded,
        source_tokens,
        decoder_input_tokens,
        method=Transformer.decode,
    )


@checks.checked_jit(_check_model_inputs)
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
    config = config.replace(attention_implementation="reference")
    logits, state = Transformer(config).apply(
        {"params": params}, source_tokens, decoder_input_tokens, mutable=["intermediates"]
    )
    flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
    maps = {}
    for path, value in flat.items():
        prefix = path.removesuffix("/attention_weights")
        maps[prefix] = value[0] if isinstance(value, tuple) else value
    return logits, maps
