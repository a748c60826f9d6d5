"""Model benchmark: training-step throughput and compile time. Prints tables; asserts nothing.

    python benchmarks/model_benchmark.py                    # both tables, CPU-sized defaults
    python benchmarks/model_benchmark.py --skip-compile     # throughput only
    python benchmarks/model_benchmark.py --presets base --batch 64 --length 64 --dtype bfloat16

Throughput: forward + backward (value_and_grad of a padded cross-entropy, jitted, dropout on)
of each preset on random right-padded batches; tokens/s counts non-pad target tokens.
Compile time: lowering + XLA compilation of the same step for N encoder + N decoder layers of
the base width, unrolled and with nn.scan (and with remat).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import flax_transformer as ft


def _batch(config, batch, length, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, config.vocab_size, size=(3, batch, length)).astype(np.int32)
    lengths = rng.integers(length // 2, length + 1, size=(3, batch))
    tokens[np.arange(length)[None, None, :] >= lengths[..., None]] = config.pad_id
    return tokens[0], tokens[1], tokens[2]  # source, decoder input, target


def _train_step(config):
    model = ft.Transformer(config)

    def loss_fn(params, source, decoder_input, target, key):
        logits = model.apply(
            {"params": params}, source, decoder_input, deterministic=False, rngs={"dropout": key}
        )
        log_probs = jax.nn.log_softmax(logits)
        picked = jnp.take_along_axis(log_probs, target[..., None], axis=-1)[..., 0]
        weights = (target != config.pad_id).astype(jnp.float32)
        return -(picked * weights).sum() / weights.sum()

    return jax.jit(jax.value_and_grad(loss_fn))


def throughput(preset, attention, batch, length, steps, dtype):
    config = ft.TransformerConfig.preset(preset, dtype=dtype, attention_implementation=attention)
    params = ft.init_params(config, jax.random.key(0))
    source, decoder_input, target = _batch(config, batch, length)
    step = _train_step(config)
    key = jax.random.key(1)
    start = time.perf_counter()
    jax.block_until_ready(step(params, source, decoder_input, target, key))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        loss, grads = step(params, source, decoder_input, target, key)
    jax.block_until_ready(grads)
    seconds = (time.perf_counter() - start) / steps
    target_tokens = int((target != config.pad_id).sum())
    return dict(
        preset=preset,
        attention=attention,
        params=ft.count_params(params),
        shape=f"{batch}x{length}",
        step_ms=seconds * 1e3,
        tokens_s=target_tokens / seconds,
        compile_s=compile_s,
    )


def compile_time(num_layers, scan, remat, batch, length):
    config = ft.TransformerConfig.base(
        num_encoder_layers=num_layers,
        num_decoder_layers=num_layers,
        scan_layers=scan,
        remat=remat,
        vocab_size=8000,
    )
    params = jax.eval_shape(lambda: ft.init_params(config, jax.random.key(0)))
    source, decoder_input, target = _batch(config, batch, length)
    step = _train_step(config)
    start = time.perf_counter()
    lowered = step.lower(params, source, decoder_input, target, jax.random.key(1))
    lowered.compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument(
        "--attention", nargs="+", default=["reference", "fused"], choices=["reference", "fused"]
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 12, 24])
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()

    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, {device.platform} ({device.device_kind}), "
        f"{jax.device_count()} device(s), dtype {args.dtype}\n"
    )
    if not args.skip_throughput:
        print("Forward + backward (training step without the optimizer update)")
        header = ("preset", "attention", "params", "batch", "step ms", "tgt tok/s", "compile s")
        print("{:<7} {:<9} {:>8} {:>7} {:>9} {:>10} {:>10}".format(*header))
        for preset in args.presets:
            for attention in args.attention:
                row = throughput(preset, attention, args.batch, args.length, args.steps, args.dtype)
                print(
                    f"{row['preset']:<7} {row['attention']:<9} {row['params'] / 1e6:>7.1f}M "
                    f"{row['shape']:>7} {row['step_ms']:>9.1f} {row['tokens_s']:>10,.0f} "
                    f"{row['compile_s']:>10.1f}",
                    flush=True,
                )
        print()
    if not args.skip_compile:
        print("Compile time of the training step, base width, N encoder + N decoder layers (s)")
        print(f"{'N':>3} {'unrolled':>9} {'scan':>7} {'scan+remat':>11}")
        for num_layers in args.layers:
            unrolled = compile_time(num_layers, False, False, 8, 16)
            scanned = compile_time(num_layers, True, False, 8, 16)
            remat = compile_time(num_layers, True, True, 8, 16)
            print(f"{num_layers:>3} {unrolled:>9.1f} {scanned:>7.1f} {remat:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
