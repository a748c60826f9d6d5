"""Sinusoidal positional encodings against the paper's formula (section 3.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flax_transformer import positional
from flax_transformer.positional import sinusoidal_encoding_at, sinusoidal_position_encoding
from tests.numpy_reference import positional_encoding as np_positional_encoding


@pytest.mark.parametrize("d_model", [8, 16, 7, 1])
@pytest.mark.parametrize("layout", ["interleaved", "halves"])
def test_matches_the_formula(d_model, layout):
    table = sinusoidal_position_encoding(50, d_model, layout=layout)
    assert table.shape == (50, d_model) and table.dtype == np.float32
    np.testing.assert_allclose(table, np_positional_encoding(50, d_model, layout), atol=2e-5)


def test_interleaving_hand_worked():
    table = np.asarray(sinusoidal_position_encoding(3, 4))
    np.testing.assert_allclose(table[0], [0, 1, 0, 1], atol=1e-7)  # sin 0, cos 0, sin 0, cos 0
    # position 2: dims (0, 1) use frequency 1, dims (2, 3) use frequency 1 / 10000^(2/4) = 1/100
    expected = [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]
    np.testing.assert_allclose(table[2], expected, rtol=1e-6)
    halves = np.asarray(sinusoidal_position_encoding(3, 4, layout="halves"))
    np.testing.assert_allclose(halves[2], np.array(expected)[[0, 2, 1, 3]], rtol=1e-6)


def test_explicit_positions_pick_rows_of_the_table():
    table = np.asarray(sinusoidal_position_encoding(10, 12))
    positions = np.array([[0, 1, 2, 0, 1], [3, 4, 5, 6, 7]])  # e.g. two packed segments
    encoded = sinusoidal_encoding_at(positions, 12)
    assert encoded.shape == (2, 5, 12)
    np.testing.assert_allclose(encoded, table[positions], atol=1e-6)


def test_fixed_offset_is_a_linear_map():
    # Paper 3.5: PE(pos + k) is a linear function of PE(pos), a rotation in each (sin, cos) pair.
    d_model, offset = 8, 3
    table = np.asarray(sinusoidal_position_encoding(40, d_model), np.float64)
    frequencies = 1 / 10000 ** (2 * np.arange(d_model // 2) / d_model)
    rotation = np.zeros((d_model, d_model))
    for i, w in enumerate(frequencies):
        c, s = math.cos(w * offset), math.sin(w * offset)
        # [sin(a+b), cos(a+b)] = [[c, s], [-s, c]] applied to [sin a, cos a]
        rotation[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = [[c, s], [-s, c]]
    np.testing.assert_allclose(table[:-offset] @ rotation.T, table[offset:], atol=1e-5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sinusoidal_position_encoding(0, 8), "length"),
        (lambda: sinusoidal_position_encoding(4, 0), "d_model"),
        (lambda: sinusoidal_position_encoding(4, 8, layout="blocks"), "layout"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("layout", ["interleaved", "halves"])
@pytest.mark.parametrize("d_model", [8, 9, 64])
def test_float64_table_is_the_formula(layout, d_model):
    length = 300
    table = positional.sinusoidal_table_float64(length, d_model, layout=layout)
    assert table.dtype == np.float64
    for pos in (0, 1, 17, 299):
        for i in range(d_model):
            pair = i // 2 if layout == "interleaved" else i % ((d_model + 1) // 2)
            is_sin = i % 2 == 0 if layout == "interleaved" else i < (d_model + 1) // 2
            angle = pos / 10000 ** (2 * pair / d_model)
            expected = math.sin(angle) if is_sin else math.cos(angle)
            assert table[pos, i] == pytest.approx(expected, abs=1e-12)
    # The float32 table used by the model differs only by float32 rounding of the angles.
    float32 = np.asarray(positional.sinusoidal_position_encoding(length, d_model, layout=layout))
    np.testing.assert_allclose(float32, table, atol=3e-5)
