"""Small helpers shared by the tests."""

from __future__ import annotations

import numpy as np


def random_tokens(
    rng: np.random.Generator,
    batch: int,
    length: int,
    vocab: int,
    pad_id: int = 0,
    min_length: int = 1,
) -> np.ndarray:
    """int32 [batch, length] ids in [1, vocab) (avoiding pad), right-padded to random lengths."""
    ids = rng.integers(0, vocab - 1, size=(batch, length))
    ids = np.where(ids >= pad_id, ids + 1, ids)  # skip pad_id
    lengths = rng.integers(min_length, length + 1, size=batch)
    lengths[0] = length  # at least one row without padding
    ids[np.arange(length)[None, :] >= lengths[:, None]] = pad_id
    return ids.astype(np.int32)
