"""bfloat16 vs float32 training: the same run in both compute dtypes, loss curves side by side.

    python benchmarks/bf16_benchmark.py                      # default config, 300 steps
    python benchmarks/bf16_benchmark.py --steps 100 --every 10 --batch-size 64

The default training run (train/configs/default.py: the small preset on the built-in
number-words task, the paper's schedule and Adam, label smoothing 0.1, dropout 0.1), shortened
to `--steps` updates (warm-up and cool-down scaled with it, and the paper's schedule scaled so
that its peak rate stays the default run's 2.2e-3: a shorter warm-up alone would raise the peak
as warmup^-0.5), trained twice from the same seed on
the same batches: `config.model.dtype` "float32" and "bfloat16". Real data and the real loop
pieces (`train.data`, `train.setup`, `DataParallel`) rather than a synthetic task, so the curves
are those of the run a user trains. Prints the training loss (mean over each window of `--every`
steps) of both, the largest and the final absolute and relative gap between them, and the
steps/s of each. On a CPU bfloat16 is emulated (slower than float32): the point is that the
curves track, not the speed. Asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np

from flax_transformer.parallel import DataParallel
from flax_transformer.training import create_train_state, summarize_metrics
from train.configs import default
from train.data.run_data import training_data
from train.data.sources import open_roles
from train.setup import check_config, model_config_from, optimizer_from
from train.workdir import Workdir


def train_curve(config, data, vocab_size, dtype, every):
    """Train `config.num_train_steps` steps in `dtype`; returns (window losses, steps/s)."""
    config = config.copy_and_resolve_references()
    config.model.dtype = dtype
    model_config = model_config_from(config, vocab_size)
    _, optimizer = optimizer_from(config, model_config)
    parallel = DataParallel("single", model_config=model_config)
    state = parallel.put_state(
        create_train_state(model_config, optimizer, jax.random.key(config.seed))
    )
    # The first step compiles: time the rest.
    state, metrics = parallel.train_step(state, parallel.put_batch(data.train[0]))
    pending, losses = [metrics], []
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for step in range(1, config.num_train_steps):
        state, metrics = parallel.train_step(state, parallel.put_batch(data.train[step]))
        pending.append(metrics)
        if (step + 1) % every == 0:
            losses.append(summarize_metrics(pending)["loss"])
            pending = []
    jax.block_until_ready(metrics)
    steps_per_second = (config.num_train_steps - 1) / (time.perf_counter() - start)
    return np.array(losses), steps_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--learning-rate-scale",
        type=float,
        default=0.0,
        help="config.learning_rate_scale; 0 = the default run's peak rate",
    )
    args = parser.parse_args()

    config = default.get_config()
    default_warmup = config.warmup_steps
    config.num_train_steps = args.steps
    # The default's proportions: warm-up over the first 2/15 of the steps. The peak rate,
    # scale * (d_model * warmup)^-0.5, is kept unless --learning-rate-scale says otherwise.
    config.warmup_steps = max(
        1, round(args.steps * default_warmup / default.get_config().num_train_steps)
    )
    config.learning_rate_scale = args.learning_rate_scale or (
        config.learning_rate_scale * (config.warmup_steps / default_warmup) ** 0.5
    )
    config.batch_size = args.batch_size
    check_config(config)
    sources = open_roles(config)
    with tempfile.TemporaryDirectory() as workdir:
        vocabulary = Workdir(workdir).vocabulary(config, sources["train"])
    data = training_data(config, sources, vocabulary, row_multiple=1)

    curves, speeds = {}, {}
    for dtype in ("float32", "bfloat16"):
        curves[dtype], speeds[dtype] = train_curve(
            config, data, vocabulary.vocab_size, dtype, args.every
        )
    f32, bf16 = curves["float32"], curves["bfloat16"]
    gap = np.abs(bf16 - f32)
    relative = gap / f32
    print(
        f"default config (small preset, number_words), {args.steps} steps, batch "
        f"{args.batch_size}, warm-up {config.warmup_steps}, peak learning rate "
        f"{config.learning_rate_scale * (config.model.d_model * config.warmup_steps) ** -0.5:.2e}, "
        f"{jax.devices()[0].platform}, "
        f"jax {jax.__version__}; loss = mean training loss of the last {args.every} steps"
    )
    print("| step | float32 loss | bfloat16 loss | abs gap | rel gap |")
    print("|---|---|---|---|---|")
    for i, (a, b) in enumerate(zip(f32, bf16, strict=True)):
        step = (i + 1) * args.every
        print(f"| {step} | {a:.4f} | {b:.4f} | {gap[i]:.4f} | {relative[i]:.2%} |")
    worst = int(np.argmax(gap))
    print(
        f"max abs gap {gap.max():.4f} (step {(worst + 1) * args.every}), max rel gap "
        f"{relative.max():.2%}; final abs gap {gap[-1]:.4f}, final rel gap {relative[-1]:.2%}"
    )
    print(
        f"steps/s: float32 {speeds['float32']:.2f}, bfloat16 {speeds['bfloat16']:.2f} "
        "(after compilation)"
    )


if __name__ == "__main__":
    main()
