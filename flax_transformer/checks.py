"""Host-side argument checks: a bad argument raises a clear error before anything compiles.

    check_config, check_tokens, check_token_pair, check_encoded    the model's inputs
    check_decoding_arguments                                        the decoders' other arguments
    check_micro_batches                                             gradient accumulation
    checked_jit                                                     a jitted function, checked

Token checks read the ids back to the host (integer dtype, [batch, length], length <=
config.max_len, every id in [0, vocab_size)); the jitted functions skip them with
`check_inputs=False`. Inside a user's `jax.jit` the tokens are tracers: only their shape and
dtype are checked, and an out-of-range id embeds to NaN instead (see `layers.TokenEmbedding`).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_transformer.config import TransformerConfig
from flax_transformer.search import BEAM_STOP_RULES

Array = jax.Array

# Paper section 6.1: the maximum output length is the input length + 50.
EXTRA_OUTPUT_LENGTH = 50


def is_int(value: Any) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_config(config: Any) -> None:
    """Raise TypeError unless `config` is a TransformerConfig."""
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")


def check_token_shape(tokens: Any, name: str = "tokens") -> None:
    """Raise ValueError unless `tokens` has two axes, [batch, length]."""
    shape = np.shape(tokens)
    if len(shape) != 2:
        raise ValueError(f"{name} must have shape [batch, length], got {tuple(shape)}")


def check_tokens(config: TransformerConfig, tokens: Any, name: str = "tokens") -> None:
    """Raise ValueError if `tokens` are not valid int ids [batch, length] for `config`.

    Tracers (inside a user's jit) are shape-checked only; their values cannot be read.
    """
    shape, dtype = np.shape(tokens), getattr(tokens, "dtype", None)
    if dtype is None:
        dtype = np.asarray(tokens).dtype
    check_token_shape(tokens, name)
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


def check_token_pair(
    config: TransformerConfig, source_tokens: Any, decoder_input_tokens: Any
) -> None:
    """Both token arrays valid for `config`, with the same batch size."""
    check_tokens(config, source_tokens, "source_tokens")
    check_tokens(config, decoder_input_tokens, "decoder_input_tokens")
    if np.shape(source_tokens)[0] != np.shape(decoder_input_tokens)[0]:
        raise ValueError(
            "source_tokens and decoder_input_tokens must have the same batch size, got "
            f"{np.shape(source_tokens)} and {np.shape(decoder_input_tokens)}"
        )


def check_encoded(config: TransformerConfig, encoded: Any, source_tokens: Any) -> None:
    """The encoder output of `source_tokens`: shape [batch, src_len, d_model]."""
    expected = tuple(np.shape(source_tokens)) + (config.d_model,)
    if tuple(np.shape(encoded)) != expected:
        raise ValueError(
            f"encoded must have shape [batch, src_len, d_model] = {expected} to match "
            f"source_tokens, got {tuple(np.shape(encoded))}"
        )


# ---------------------------------------------------------------------------------------------
# The decoders' arguments. Each check raises ValueError or returns the value the compiled
# decoder receives (Python ints for static ids, float32 for traced numbers).
# ---------------------------------------------------------------------------------------------
def check_token_id(config: TransformerConfig, name: str, value: Any) -> int:
    """A token id such as bos_id or eos_id: an int in [0, vocab_size)."""
    if not is_int(value):
        raise ValueError(f"{name} must be an int token id, got {value!r}")
    if not 0 <= value < config.vocab_size:
        raise ValueError(f"{name}={value} is outside the vocabulary [0, {config.vocab_size})")
    return int(value)


def default_max_length(config: TransformerConfig, source_length: int) -> int:
    """The buffer length used when `max_length` is None: min(source_length + 50, max_len)."""
    return min(source_length + EXTRA_OUTPUT_LENGTH, config.max_len)


def resolve_max_length(config: TransformerConfig, source_length: int, max_length: Any) -> int:
    """`max_length` checked, or the default for a padded source of `source_length` if None."""
    if max_length is None:
        return default_max_length(config, source_length)
    if not is_int(max_length):
        raise ValueError(f"max_length must be an int or None, got {max_length!r}")
    if not 1 <= max_length <= config.max_len:
        raise ValueError(
            f"max_length must be in [1, config.max_len={config.max_len}], got {max_length}"
        )
    return int(max_length)


def check_cache_length(config: TransformerConfig, length: Any) -> int:
    """The number of target positions of a decoding cache: an int in [1, max_len]."""
    if not is_int(length) or not 1 <= length <= config.max_len:
        raise ValueError(
            f"length must be an int in [1, config.max_len={config.max_len}], got {length!r}"
        )
    return int(length)


def check_beam_size(config: TransformerConfig, beam_size: Any) -> int:
    """An int >= 1; beam search also needs two tokens to choose from."""
    if not is_int(beam_size) or beam_size < 1:
        raise ValueError(f"beam_size must be an int >= 1, got {beam_size!r}")
    if config.vocab_size < 2:
        raise ValueError("beam search needs a vocabulary of at least 2 tokens")
    return int(beam_size)


def check_stop_rule(stop: Any) -> str:
    """One of `search.BEAM_STOP_RULES`."""
    if stop not in BEAM_STOP_RULES:
        raise ValueError(f"stop must be one of {list(BEAM_STOP_RULES)}, got {stop!r}")
    return stop


def check_length_penalty(length_penalty: Any) -> Array:
    """The GNMT alpha: a finite float >= 0."""
    if not isinstance(length_penalty, numbers.Real) or not (
        math.isfinite(length_penalty) and length_penalty >= 0
    ):
        raise ValueError(
            f"length_penalty (alpha) must be a finite float >= 0, got {length_penalty!r}"
        )
    return jnp.float32(length_penalty)


def check_temperature(temperature: Any) -> Array:
    """A positive finite float."""
    if not isinstance(temperature, numbers.Real) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a positive finite float, got {temperature!r}")
    return jnp.float32(temperature)


def check_top_k(config: TransformerConfig, top_k: Any) -> int:
    """An int in [0, vocab_size]; 0 turns top-k filtering off."""
    if not is_int(top_k) or not 0 <= top_k <= config.vocab_size:
        raise ValueError(
            f"top_k must be an int in [0, vocab_size={config.vocab_size}] (0 = off), got {top_k!r}"
        )
    return int(top_k)


def check_top_p(top_p: Any) -> float:
    """A float in (0, 1]; 1 turns nucleus filtering off."""
    if not isinstance(top_p, numbers.Real) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be a float in (0, 1] (1 = off), got {top_p!r}")
    return float(top_p)


def check_micro_batches(micro_batches: Any) -> int:
    """A positive int: the micro-batches of a gradient-accumulating train step."""
    if not is_int(micro_batches) or micro_batches < 1:
        raise ValueError(f"micro_batches must be a positive int, got {micro_batches!r}")
    return int(micro_batches)


# The check of each decoder argument other than the source, in the order they are checked:
# check(config, source_tokens, value) -> the value the compiled decoder receives.
_DECODING_CHECKS: dict[str, Callable[[TransformerConfig, Any, Any], Any]] = {
    "bos_id": lambda config, source, value: check_token_id(config, "bos_id", value),
    "eos_id": lambda config, source, value: check_token_id(config, "eos_id", value),
    "max_length": lambda config, source, value: resolve_max_length(
        config, np.shape(source)[1], value
    ),
    "length": lambda config, source, value: check_cache_length(config, value),
    "beam_size": lambda config, source, value: check_beam_size(config, value),
    "stop": lambda config, source, value: check_stop_rule(value),
    "length_penalty": lambda config, source, value: check_length_penalty(value),
    "temperature": lambda config, source, value: check_temperature(value),
    "top_k": lambda config, source, value: check_top_k(config, value),
    "top_p": lambda config, source, value: check_top_p(value),
    "attention": lambda config, source, value: check_attention(config, value),
}


def check_attention(config: TransformerConfig, attention: Any) -> Any:
    """None, or a `decoding.AttentionSelection`, which checks itself against the config (and
    comes back with its indices counted from 0)."""
    if attention is None:
        return None
    if not callable(getattr(attention, "resolved", None)):
        raise ValueError(
            "attention must be a flax_transformer.decoding.AttentionSelection or None, got "
            f"{attention!r}"
        )
    return attention.resolved(config)


def check_decoding_arguments(
    config: Any, source_tokens: Any, check_inputs: bool, **arguments: Any
) -> dict[str, Any]:
    """Check a decoder's arguments: the source, then those named in `_DECODING_CHECKS`.

    The source is checked fully when `check_inputs` is True, else only its shape. Returns all
    the arguments but `check_inputs` as the compiled decoder takes them (max_length resolved).
    """
    check_config(config)
    if check_inputs:
        check_tokens(config, source_tokens, "source_tokens")
    else:
        check_token_shape(source_tokens, "source_tokens")
    for name, check in _DECODING_CHECKS.items():
        if name in arguments:
            arguments[name] = check(config, source_tokens, arguments[name])
    return {"config": config, "source_tokens": source_tokens, **arguments}


def checked_jit(
    check: Callable[..., dict[str, Any] | None], static_argnames: tuple[str, ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: `jax.jit` of the function (config static), its arguments checked on the host.

    `check(**arguments)` receives every argument by name, defaults applied, raises for a bad
    one, and returns the arguments to call the compiled function with (None: unchanged).
    `check_inputs` is the check's alone: the compiled function never receives it. The
    decorated function keeps its signature and docstring.
    """

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        compiled = jax.jit(function, static_argnames=("config",) + static_argnames)
        signature = inspect.signature(function)

        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = check(**bound.arguments) or dict(bound.arguments)
            arguments.pop("check_inputs", None)
            return compiled(**arguments)

        return checked

    return decorate
