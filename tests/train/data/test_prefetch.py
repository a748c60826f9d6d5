"""The prefetcher yields exactly batches[start:stop], raises the batcher's errors where they
belong, and stops its thread when the consumer stops early."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from train.data.prefetch import Prefetch


class Steps:
    """batches[step] = {"x": [step, step**2]}; records the steps asked for; fails at `fail_at`."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.asked: list[int] = []
        self.fail_at = fail_at

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        self.asked.append(step)
        if step == self.fail_at:
            raise KeyError(f"no batch {step}")
        return {"x": np.array([step, step * step])}


def test_yields_the_same_sequence_as_direct_indexing() -> None:
    with Prefetch(Steps(), 5, 12, depth=3) as ahead:
        got = [batch["x"].tolist() for batch in ahead]
    assert got == [[s, s * s] for s in range(5, 12)]
    assert list(Prefetch(Steps(), 3, 3)) == []


def test_an_error_is_raised_where_its_batch_would_be() -> None:
    ahead = Prefetch(Steps(fail_at=4), 2, 10)
    assert next(ahead)["x"][0] == 2 and next(ahead)["x"][0] == 3
    with pytest.raises(KeyError, match="no batch 4"):
        next(ahead)
    with pytest.raises(StopIteration):
        next(ahead)
    ahead.close()


def test_stopping_early_ends_the_thread_without_reading_far_ahead() -> None:
    steps = Steps()
    before = threading.active_count()
    with Prefetch(steps, 0, 10**9, depth=2) as ahead:
        for _ in range(3):
            next(ahead)
    assert threading.active_count() == before
    # 3 consumed, at most 2 queued and 1 in the thread's hands.
    assert steps.asked == list(range(len(steps.asked))) and len(steps.asked) <= 6


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Prefetch(Steps(), 0, 1, depth=0)
    with pytest.raises(ValueError, match="need 0 <= start <= stop"):
        Prefetch(Steps(), 5, 4)
