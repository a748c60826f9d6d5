"""Dropout (paper section 5.4) drawn from 16-bit random numbers: two entries per threefry word.

    keep_mask(key, rate, shape)   True where an entry is kept; P(keep) = keep_probability(rate)
    dropout(x, rate, key)         x * keep_mask / keep_probability(rate)
    Dropout(rate)                 the linen module: draws from the "dropout" RNG stream

Why not `flax.linen.Dropout`: it draws one 32-bit threefry word per entry (`jax.random.bernoulli`),
and on a CPU threefry is most of what dropout costs. One word here gives two 16-bit uniforms, its
low and its high half, for two entries of the last axis (entry j < ceil(d/2) takes the low half of
word j, entry ceil(d/2) + j its high half), so a mask costs half the threefry. The backward pass
also keeps 16 bits per entry instead of 32.

The price is resolution: an entry is dropped when its 16-bit draw is below round(rate * 2**16),
so the realised rate is a multiple of 2**-16 (0.1 becomes 0.1000061; 0.25 and 0.5 are exact).
Kept entries are scaled by 1 / keep_probability(rate), the realised keep probability, so
E[dropout(x)] = x up to the rounding of that scale in x's dtype (as with any inverted dropout in
bfloat16). The words come from `jax.random.bits` over an
array shaped like the mask, so with partitionable threefry (JAX's default) a sharded mask is the
single-device mask.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

RESOLUTION = 2**16  # the number of distinct values of one draw


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")


def drop_threshold(rate: float) -> int:
    """The 16-bit draws below this are dropped: round(rate * 2**16)."""
    _check_rate(rate)
    return round(rate * RESOLUTION)


def keep_probability(rate: float) -> float:
    """P(`keep_mask` keeps an entry): 1 - rate, rounded to a multiple of 2**-16."""
    return 1.0 - drop_threshold(rate) / RESOLUTION


def keep_mask(key: Array, rate: float, shape: tuple[int, ...]) -> Array:
    """A boolean mask of `shape` (at least one dimension), True with probability
    `keep_probability(rate)`, independently per entry."""
    if not shape:
        raise ValueError("keep_mask needs a shape with at least one dimension")
    width = shape[-1]
    words = jax.random.bits(key, (*shape[:-1], (width + 1) // 2), jnp.uint32)
    halves = jnp.concatenate([words & 0xFFFF, words >> 16], axis=-1)[..., :width]
    return halves >= drop_threshold(rate)


def dropout(x: Array, rate: float, key: Array) -> Array:
    """Inverted dropout: each entry of `x` is zeroed with probability ~`rate` (see the module
    docstring), and the kept ones are divided by `keep_probability(rate)`. Same shape and dtype."""
    if drop_threshold(rate) == 0:
        return x
    keep = keep_mask(key, rate, x.shape)
    scale = jnp.asarray(1.0 / keep_probability(rate), x.dtype)
    return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))


class Dropout(nn.Module):
    """`dropout` as a linen module: a fresh mask from the "dropout" RNG stream at every call;
    the identity when `deterministic`."""

    rate: float

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool) -> Array:
        if deterministic or drop_threshold(self.rate) == 0:
            return inputs
        return dropout(inputs, self.rate, self.make_rng("dropout"))
