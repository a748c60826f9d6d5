"""Parameter EMA on Multi30k: validation BLEU of the params and of their moving averages along
one training run of the README's recipe. Prints a table.

    python benchmarks/ema_benchmark.py --workdir=/tmp/ema_benchmark     # 1,000 of 2,500 steps
    python benchmarks/ema_benchmark.py --workdir=DIR --steps 2500 --every 500 --decays 0.999

Trains `train/configs/multi30k.py` (its data from $MULTI30K_DIR or ../shared/data/multi30k) with
its own schedule, and keeps one EMA per decay outside the train step (the recursion of
`flax_transformer.training`, ramp included), so every column comes from the same trajectory: the
params never depend on an average. Every `--every` steps it decodes the whole validation split
greedily with the params and with each average. The same numbers come from two runs of the
README's command with `--config.eval_every_steps=N`, with and without `--config.ema_decay=d`
(on the same machine: XLA's CPU code, and so the last digits, differ between CPUs). Training
minutes exclude the evaluations. Asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from flax_transformer.training import ema_update
from train import loop
from train.configs import multi30k
from train.data.prefetch import Prefetch
from train.setup import decoding_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a new directory (tokenizer, config)")
    parser.add_argument("--steps", type=int, default=1000, help="steps to train (of 2,500)")
    parser.add_argument("--every", type=int, default=250, help="steps between validations")
    parser.add_argument("--decays", nargs="+", type=float, default=[0.99, 0.999])
    args = parser.parse_args()

    config = multi30k.get_config()
    config.progress_bar = False
    config.eval_every_steps = config.checkpoint_every_steps = 10**9  # evaluated here instead
    run = loop.set_up_run(config, args.workdir)
    decays = tuple(args.decays)

    @jax.jit
    def update(averages, params, updates):
        return [
            ema_update(average, params, decay, updates)
            for decay, average in zip(decays, averages, strict=True)
        ]

    averages = [run.parallel.get_state(run.state.params) for _ in decays]
    options = decoding_options(config, "greedy")
    names = ["params"] + [f"EMA {decay}" for decay in decays]
    print(
        "| step | training minutes | "
        + " | ".join(f"{name} BLEU (loss)" for name in names)
        + " |\n|"
        + "---|" * (2 + len(names))
    )
    train_seconds = 0.0
    with Prefetch(run.data.train, 0, args.steps) as ahead:
        for step in range(args.steps):
            start = time.perf_counter()
            batch = run.parallel.put_batch(next(ahead))
            run.state, _ = run.parallel.train_step(run.state, batch)
            averages = update(averages, run.state.params, jnp.int32(step + 1))
            if (step + 1) % args.every and step + 1 != args.steps:
                train_seconds += time.perf_counter() - start
                continue
            jax.block_until_ready(averages)
            train_seconds += time.perf_counter() - start
            cells = []
            for params in [None, *averages]:
                summary, _ = loop.evaluate_split(run, run.data.validation, options, params=params)
                cells.append(f"{summary['bleu']:.2f} ({summary['loss']:.3f})")
            print(f"| {step + 1} | {train_seconds / 60:.1f} | " + " | ".join(cells) + " |")
    run.checkpointer.close()


if __name__ == "__main__":
    main()
