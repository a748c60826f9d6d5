"""train.heap: compiling ahead fills the jit cache the next call uses, and the trim is glibc's."""

from __future__ import annotations

import logging
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import heap


def test_compiling_ahead_is_what_the_next_call_runs(caplog):
    calls = []

    def add_one(x):
        calls.append(x.shape)  # runs once per trace
        return x + 1

    step = jax.jit(add_one)
    x = jnp.arange(4.0)
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        heap.compile_before_running(step, x)
        compiled_ahead = [r for r in caplog.records if "compilation" in r.getMessage()]
        caplog.clear()
        np.testing.assert_array_equal(np.asarray(step(x)), [1.0, 2.0, 3.0, 4.0])
        compiled_by_the_call = [r for r in caplog.records if "compilation" in r.getMessage()]
    assert compiled_ahead and not compiled_by_the_call  # the call found the executable
    assert calls == [(4,)]  # and did not trace again


def test_compiling_ahead_donates_nothing():
    step = jax.jit(lambda x: x * 2, donate_argnums=0)
    x = jnp.ones(3)
    heap.compile_before_running(step, x)
    assert not x.is_deleted()
    np.testing.assert_array_equal(np.asarray(step(x)), [2.0, 2.0, 2.0])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)
def test_the_trim_is_glibcs_malloc_trim():
    assert heap.release_freed_memory() is True


def test_without_glibc_the_trim_does_nothing(monkeypatch):
    heap._malloc_trim.cache_clear()
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", ""))
    try:
        assert heap.release_freed_memory() is False
    finally:
        heap._malloc_trim.cache_clear()
