"""Every host-side check: the value it accepts and returns, and each error message."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_transformer import checks
from flax_transformer.config import TransformerConfig

CONFIG = TransformerConfig.tiny(vocab_size=12)  # max_len 64
GOOD = np.array([[5, 6, 7, 0]], np.int32)


def test_check_config():
    checks.check_config(CONFIG)
    with pytest.raises(TypeError, match="config must be a TransformerConfig, got dict"):
        checks.check_config({"d_model": 32})


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (GOOD[0], r"source_tokens must have shape \[batch, length\], got \(4,\)"),
        (GOOD[None], r"source_tokens must have shape \[batch, length\], got \(1, 1, 4\)"),
        (GOOD.astype(np.float32), "source_tokens must be integer token ids, got dtype float32"),
        (np.ones((1, 65), np.int32), "source_tokens has length 65, longer than config.max_len=64"),
        (np.zeros((0, 3), np.int32), r"source_tokens is empty: shape \(0, 3\)"),
        (np.zeros((2, 0), np.int32), r"source_tokens is empty: shape \(2, 0\)"),
        (
            np.array([[1, 2, 3], [4, 12, -1]]),
            r"source_tokens holds 2 id\(s\) outside the vocabulary \[0, 12\); "
            r"the first is 12 at \[1, 1\]",
        ),
    ],
)
def test_check_tokens_messages(tokens, message):
    with pytest.raises(ValueError, match=message):
        checks.check_tokens(CONFIG, tokens, "source_tokens")


def test_check_tokens_accepts_good_ids_and_checks_tracers_by_shape_only():
    checks.check_tokens(CONFIG, GOOD)
    checks.check_tokens(CONFIG, [[0, 11]])  # a nested list is read as an int array
    jax.jit(lambda t: checks.check_tokens(CONFIG, t) or t)(jnp.array([[99]]))  # values unread
    with pytest.raises(ValueError, match=r"tokens must have shape \[batch, length\]"):
        jax.jit(lambda t: checks.check_tokens(CONFIG, t) or t)(jnp.array([1]))
    with pytest.raises(ValueError, match=r"x must have shape \[batch, length\], got \(\)"):
        checks.check_token_shape(3, "x")


def test_check_token_pair():
    checks.check_token_pair(CONFIG, GOOD, np.array([[1, 8]]))
    with pytest.raises(ValueError, match="decoder_input_tokens holds 1 id"):
        checks.check_token_pair(CONFIG, GOOD, np.array([[1, 12]]))
    with pytest.raises(
        ValueError,
        match=r"source_tokens and decoder_input_tokens must have the same batch size, got "
        r"\(1, 4\) and \(2, 3\)",
    ):
        checks.check_token_pair(CONFIG, GOOD, np.ones((2, 3), np.int32))


def test_check_encoded():
    checks.check_encoded(CONFIG, np.zeros((1, 4, 32)), GOOD)
    with pytest.raises(
        ValueError,
        match=r"encoded must have shape \[batch, src_len, d_model\] = \(1, 4, 32\) to match "
        r"source_tokens, got \(1, 3, 32\)",
    ):
        checks.check_encoded(CONFIG, np.zeros((1, 3, 32)), GOOD)


def test_is_int():
    assert checks.is_int(3) and checks.is_int(np.int64(3))
    assert not checks.is_int(True) and not checks.is_int(3.0) and not checks.is_int("3")


def test_check_token_id():
    assert checks.check_token_id(CONFIG, "bos_id", np.int32(11)) == 11
    assert type(checks.check_token_id(CONFIG, "bos_id", np.int32(11))) is int
    for value in (2.0, True, None):
        with pytest.raises(ValueError, match=f"eos_id must be an int token id, got {value!r}"):
            checks.check_token_id(CONFIG, "eos_id", value)
    for value in (12, -1):
        with pytest.raises(
            ValueError, match=rf"bos_id={value} is outside the vocabulary \[0, 12\)"
        ):
            checks.check_token_id(CONFIG, "bos_id", value)


def test_max_length_resolution():
    # None: the padded source length + 50 (paper section 6.1), capped by config.max_len.
    assert checks.EXTRA_OUTPUT_LENGTH == 50
    assert checks.resolve_max_length(CONFIG, 3, None) == 53
    assert checks.resolve_max_length(CONFIG, 14, None) == 64
    assert checks.default_max_length(CONFIG, 14) == 64
    assert checks.resolve_max_length(CONFIG, 3, np.int64(64)) == 64
    assert checks.resolve_max_length(CONFIG, 3, 1) == 1
    for value in (0, 65):
        with pytest.raises(
            ValueError, match=rf"max_length must be in \[1, config.max_len=64\], got {value}"
        ):
            checks.resolve_max_length(CONFIG, 3, value)
    with pytest.raises(ValueError, match="max_length must be an int or None, got 4.5"):
        checks.resolve_max_length(CONFIG, 3, 4.5)


def test_check_cache_length():
    assert checks.check_cache_length(CONFIG, 64) == 64
    for value in (0, 65, 2.0):
        with pytest.raises(
            ValueError, match=rf"length must be an int in \[1, config.max_len=64\], got {value}"
        ):
            checks.check_cache_length(CONFIG, value)


def test_beam_checks():
    assert checks.check_beam_size(CONFIG, 4) == 4
    for value in (0, 2.0, True):
        with pytest.raises(ValueError, match=f"beam_size must be an int >= 1, got {value!r}"):
            checks.check_beam_size(CONFIG, value)
    with pytest.raises(ValueError, match="beam search needs a vocabulary of at least 2 tokens"):
        checks.check_beam_size(TransformerConfig.tiny(vocab_size=1), 1)
    assert checks.check_stop_rule("bound") == "bound"
    with pytest.raises(
        ValueError, match=r"stop must be one of \['finished', 'bound'\], got 'never'"
    ):
        checks.check_stop_rule("never")
    alpha = checks.check_length_penalty(0.6)
    assert alpha.dtype == jnp.float32 and float(alpha) == np.float32(0.6)
    assert checks.check_length_penalty(0) == 0
    for value in (-0.1, math.nan, math.inf, "0.6"):
        with pytest.raises(
            ValueError, match=r"length_penalty \(alpha\) must be a finite float >= 0, got"
        ):
            checks.check_length_penalty(value)


def test_sampling_checks():
    temperature = checks.check_temperature(0.7)
    assert temperature.dtype == jnp.float32 and float(temperature) == np.float32(0.7)
    for value in (0.0, -1.0, math.inf, math.nan, None):
        with pytest.raises(ValueError, match="temperature must be a positive finite float, got"):
            checks.check_temperature(value)
    assert checks.check_top_k(CONFIG, 0) == 0 and checks.check_top_k(CONFIG, 12) == 12
    for value in (-1, 13, 2.0):
        with pytest.raises(
            ValueError,
            match=rf"top_k must be an int in \[0, vocab_size=12\] \(0 = off\), got {value!r}",
        ):
            checks.check_top_k(CONFIG, value)
    assert checks.check_top_p(1) == 1.0 and type(checks.check_top_p(1)) is float
    for value in (0.0, 1.5, "0.9"):
        with pytest.raises(
            ValueError, match=rf"top_p must be a float in \(0, 1\] \(1 = off\), got {value!r}"
        ):
            checks.check_top_p(value)


def test_check_decoding_arguments_checks_by_name_in_order():
    checked = checks.check_decoding_arguments(
        CONFIG, GOOD, True, params="params", bos_id=np.int64(1), eos_id=2, max_length=None
    )
    assert checked == {
        "config": CONFIG,
        "source_tokens": GOOD,
        "params": "params",
        "bos_id": 1,
        "eos_id": 2,
        "max_length": 54,
    }
    # The source first, then bos_id, eos_id, max_length, then the search settings.
    with pytest.raises(ValueError, match="source_tokens holds"):
        checks.check_decoding_arguments(CONFIG, [[12]], True, bos_id=99)
    with pytest.raises(ValueError, match="bos_id=99"):
        checks.check_decoding_arguments(CONFIG, [[12]], False, bos_id=99, max_length=0)
    with pytest.raises(ValueError, match="max_length must be in"):
        checks.check_decoding_arguments(CONFIG, GOOD, True, max_length=0, beam_size=0)
    with pytest.raises(ValueError, match="beam_size must be"):
        checks.check_decoding_arguments(CONFIG, GOOD, True, beam_size=0, stop="x", top_p=2.0)
    with pytest.raises(ValueError, match="stop must be"):
        checks.check_decoding_arguments(CONFIG, GOOD, True, stop="x", length_penalty=-1.0)
    with pytest.raises(ValueError, match="temperature must be"):
        checks.check_decoding_arguments(CONFIG, GOOD, True, temperature=0.0, top_k=-1)
    with pytest.raises(ValueError, match=r"source_tokens must have shape \[batch, length\]"):
        checks.check_decoding_arguments(CONFIG, np.array([3, 4]), False)
    with pytest.raises(TypeError, match="config must be a TransformerConfig"):
        checks.check_decoding_arguments(None, GOOD, True)


def test_checked_jit_checks_on_the_host_then_runs_the_compiled_function():
    calls = []

    def check(config, x, scale, check_inputs):
        calls.append((config, scale, check_inputs))
        if check_inputs and np.any(np.asarray(x) < 0):
            raise ValueError("x must be >= 0")
        return {"config": config, "x": x, "scale": scale * 2}

    @checks.checked_jit(check, static_argnames=("scale",))
    def scaled(config, x, scale=1, *, check_inputs=True):
        """Docstring."""
        assert check_inputs is True  # never passed on: the default
        assert isinstance(scale, int) and isinstance(x, jax.core.Tracer)
        return x * scale + config.d_model

    assert scaled.__doc__ == "Docstring." and "check_inputs" in str(inspect.signature(scaled))
    np.testing.assert_array_equal(scaled(CONFIG, np.array([1, 2])), [34, 36])
    np.testing.assert_array_equal(scaled(CONFIG, np.array([-1]), 3, check_inputs=False), [26])
    assert calls == [(CONFIG, 1, True), (CONFIG, 3, False)]
    with pytest.raises(ValueError, match="x must be >= 0"):
        scaled(CONFIG, np.array([-1]))
    with pytest.raises(TypeError):
        scaled(CONFIG)  # the signature is enforced before the check runs
