"""Training-step benchmark: the full optimizer step in each data-parallel mode. Prints a table.

    python benchmarks/train_benchmark.py                          # the default run's shapes
    python benchmarks/train_benchmark.py --preset base --batch 64 --source-len 32 --target-len 32
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/train_benchmark.py
    python benchmarks/train_benchmark.py --modes mesh --ema-decays 0 0.999   # what an EMA costs

Measures `DataParallel(mode).train_step` (forward, backward, psum where needed, Adam update,
donated state) on random right-padded batches: compile time, milliseconds per step and non-pad
target tokens per second. On one CPU the modes should agree; with several (real) devices they
show the data-parallel scaling. With `--ema-decays`, each mode also with a parameter EMA of
each decay (config.ema_decay; 0 = none). Asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import flax_transformer as ft


def random_batch(config, batch, source_len, target_len, seed=0):
    rng = np.random.default_rng(seed)

    def tokens(length):
        ids = rng.integers(4, config.vocab_size, size=(batch, length)).astype(np.int32)
        lengths = rng.integers(length // 2, length + 1, size=batch)
        ids[np.arange(length)[None, :] >= lengths[:, None]] = config.pad_id
        return ids

    target = tokens(target_len)
    decoder_input = np.concatenate([np.ones((batch, 1), np.int32), target[:, :-1]], axis=1)
    return {"source": tokens(source_len), "decoder_input": decoder_input, "target": target}


def measure(mode, config, batch, steps, ema_decay=0.0):
    parallel = ft.DataParallel(mode, model_config=config)
    optimizer = ft.make_optimizer(ft.transformer_schedule(config.d_model, 4000))
    state = ft.create_train_state(config, optimizer, jax.random.key(0), ema_decay=ema_decay)
    state = parallel.put_state(state)
    device_batch = parallel.put_batch(batch)
    start = time.perf_counter()
    state, metrics = parallel.train_step(state, device_batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = parallel.train_step(state, device_batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / steps
    tokens = float((batch["target"] != config.pad_id).sum())
    return compile_s, step_s, tokens / step_s, parallel.num_devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab-size", type=int, default=45)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--source-len", type=int, default=10)
    parser.add_argument("--target-len", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=["single", "mesh", "pmap"])
    parser.add_argument("--ema-decays", nargs="+", type=float, default=[0.0])
    args = parser.parse_args()

    config = ft.TransformerConfig.preset(args.preset, vocab_size=args.vocab_size)
    batch = random_batch(config, args.batch, args.source_len, args.target_len)
    print(
        f"{args.preset} preset, vocab {args.vocab_size}, batch {args.batch} x "
        f"({args.source_len} source, {args.target_len} target), {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), jax {jax.__version__}"
    )
    print("| mode | devices | parameter EMA | compile (s) | step (ms) | target tokens/s |")
    print("|---|---|---|---|---|---|")
    for mode in args.modes:
        for decay in args.ema_decays:
            compile_s, step_s, tokens_per_s, devices = measure(
                mode, config, batch, args.steps, decay
            )
            row = [mode, devices, decay or "none", f"{compile_s:.1f}", f"{step_s * 1000:.0f}"]
            row.append(f"{tokens_per_s:,.0f}")
            print("| " + " | ".join(str(cell) for cell in row) + " |")


if __name__ == "__main__":
    main()
