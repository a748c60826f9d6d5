"""Positional encodings (paper section 3.5): the one place positions are encoded.

    PE(pos, 2i)   = sin(pos / 10000^(2i / d_model))
    PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))

The paper interleaves sines and cosines (even dimensions sin, odd dimensions cos): that is the
default layout, "interleaved". The Flax WMT example and tensor2tensor instead put every sine
first and every cosine second, with the same frequencies: layout "halves". Learned position
embeddings (the paper's Table 3, row E) live in `flax_transformer.layers.PositionEmbedding`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

LAYOUTS = ("interleaved", "halves")


def sinusoidal_encoding_at(
    positions: Array, d_model: int, *, layout: str = "interleaved", base: float = 10000.0
) -> Array:
    """The sinusoidal encoding of explicit position ids.

    Args:
      positions: integer (or float) positions of any shape, e.g. [batch, length] per-segment
        positions of packed sequences.
      d_model: encoding width.
      layout: "interleaved" (paper) or "halves" (sin block then cos block).
      base: the 10000 of the formula.

    Returns:
      float32 array of shape positions.shape + (d_model,).
    """
    if d_model <= 0:
        raise ValueError(f"d_model must be positive, got {d_model}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    positions = jnp.asarray(positions, dtype=jnp.float32)
    num_sin = (d_model + 1) // 2  # dimensions 0, 2, 4, ...
    num_cos = d_model // 2  # dimensions 1, 3, 5, ...
    # Frequency of pair i is 1 / base^(2i / d_model); the sin and the cos of a pair share it.
    two_i = 2.0 * np.arange(num_sin, dtype=np.float64)
    inverse_frequency = jnp.asarray(base ** (-two_i / d_model), dtype=jnp.float32)
    angles = positions[..., None] * inverse_frequency  # [..., num_sin]
    sines, cosines = jnp.sin(angles), jnp.cos(angles[..., :num_cos])
    if layout == "halves":
        return jnp.concatenate([sines, cosines], axis=-1)
    # interleaved: [sin_0, cos_0, sin_1, cos_1, ...]
    if num_cos < num_sin:  # odd d_model: one sine more than cosines
        cosines = jnp.concatenate([cosines, jnp.zeros_like(sines[..., :1])], axis=-1)
    interleaved = jnp.stack([sines, cosines], axis=-1).reshape(angles.shape[:-1] + (2 * num_sin,))
    return interleaved[..., :d_model]


def sinusoidal_position_encoding(
    length: int, d_model: int, *, layout: str = "interleaved", base: float = 10000.0
) -> Array:
    """The table of paper section 3.5 for positions 0..length-1: float32 [length, d_model]."""
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    return sinusoidal_encoding_at(jnp.arange(length), d_model, layout=layout, base=base)


def sinusoidal_table_float64(
    length: int, d_model: int, *, layout: str = "interleaved", base: float = 10000.0
) -> np.ndarray:
    """The same table in float64 NumPy, as other libraries compute and store it (MarianMT).

    `sinusoidal_position_encoding` rounds the angles to float32, so at position 511 the two
    differ by up to about 3e-5: nothing for a model, too much to recognise a stored table with
    a 1e-5 tolerance.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    frequencies = base ** (-2.0 * np.arange((d_model + 1) // 2) / d_model)
    angles = np.arange(length)[:, None] * frequencies[None, :]
    sines, cosines = np.sin(angles), np.cos(angles[:, : d_model // 2])
    if layout == "halves":
        return np.concatenate([sines, cosines], axis=1)
    table = np.zeros((length, d_model))
    table[:, 0::2], table[:, 1::2] = sines, cosines
    return table
