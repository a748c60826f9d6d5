"""JAX's persistent compilation cache for the commands: start-up without recompiling.

Every command that compiles (`python -m train`, `train.evaluate`, `train.translate`) keeps the
programs XLA compiles in a directory, so a second run with the same model, shapes and JAX
version loads them instead of compiling again (the beam search of an opus-mt-sized model takes
tens of seconds to compile on a small CPU). The directory is, in this order: --compilation_cache
when given ("" turns the cache off), $JAX_COMPILATION_CACHE_DIR when set, else
$XDG_CACHE_HOME/flax_transformer/jax (~/.cache/flax_transformer/jax). Entries are keyed by the
program, the compiler options, the devices and the JAX version, so runs and workdirs share one
directory safely. JAX's own rule applies: the cache is trusted code, so never point it at a
directory that others can write to.
"""

from __future__ import annotations

import os

from absl import flags

COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache",
    None,
    "Directory of JAX's persistent compilation cache ('' turns it off; default: "
    "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/flax_transformer/jax).",
)


def default_directory() -> str:
    """$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME (or ~/.cache)/flax_transformer/jax."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "flax_transformer", "jax")


def enable(directory: str | None = None) -> str | None:
    """Turn the persistent cache on in `directory` (None: `default_directory`; "": off) before
    the first compilation; returns the directory used (None: off).

    Every program is cached, however quick to compile: start-up is many small compilations
    besides the decoder's, and a cached one costs a file read.
    """
    import jax

    if directory is None:
        directory = default_directory()
    if not directory:
        return None
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory


def enable_from_flags() -> str | None:
    """`enable` with --compilation_cache."""
    return enable(COMPILATION_CACHE.value)
