"""Batching benchmark on Multi30k: padded vs bucketed vs packed batches. Prints a table.

    python benchmarks/batching_benchmark.py                       # ../shared/data/multi30k
    python benchmarks/batching_benchmark.py --data /path/to/multi30k --batch-tokens 8192

For each batching mode of `train.data.batching` at the same token budget: the number of shapes
(compilations of the train step), batches per epoch, the padding fraction of an epoch's source and
target slots, the compile time of every shape, milliseconds per step and non-pad target tokens per
second of the full optimizer step (small model, shared 8k SentencePiece vocabulary trained on the
training text). Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

import flax_transformer as ft
from train.data import batching
from train.data.parallel_text import prepare_parallel_text, split_data_sources
from train.data.run_data import TOKEN_BUDGET_MODES, token_budget_batches
from train.data.tokenizer_training import texts_of_both_sides, train_sentencepiece

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MULTI30K_DIR", str(DEFAULT_DATA)))
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()
    tfds.disable_progress_bar()
    logging.set_verbosity(logging.ERROR)

    with tempfile.TemporaryDirectory() as data_dir:
        builder = prepare_parallel_text(args.data, "en", "de", data_dir)
        train = split_data_sources(builder)["train"]
        vocabulary = train_sentencepiece(texts_of_both_sides(train), args.vocab_size)
        split = batching.tokenize_split(train, vocabulary, max_length=args.max_length)
    config = ft.TransformerConfig.small(vocab_size=vocabulary.vocab_size, max_len=args.max_length)
    parallel = ft.DataParallel("single", model_config=config)
    optimizer = ft.make_optimizer(ft.transformer_schedule(config.d_model, 4000))
    print(
        f"Multi30k train: {len(split):,} pairs; small model; {args.batch_tokens:,}-token batches; "
        f"{jax.devices()[0].platform.upper()} x{jax.device_count()}\n"
    )
    print(
        "| batching | shapes | batches/epoch | padding | compile (s) | step (ms) "
        "| target tokens/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode in TOKEN_BUDGET_MODES:
        batches = token_budget_batches(
            mode,
            split,
            batch_tokens=args.batch_tokens,
            max_length=args.max_length,
            pad_id=vocabulary.pad_id,
            bos_id=vocabulary.bos_id,
            seed=0,
        )
        epoch = [batches[step] for step in range(len(batches))]
        padding = np.mean([batching.padding_fraction(batch, vocabulary.pad_id) for batch in epoch])
        state = parallel.put_state(ft.create_train_state(config, optimizer, jax.random.key(0)))
        compile_start = time.perf_counter()
        compiled = set()
        for batch in epoch:  # one step per shape: compile everything before timing
            if batch["source"].shape not in compiled:
                state, metrics = parallel.train_step(state, parallel.put_batch(batch))
                compiled.add(batch["source"].shape)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - compile_start
        timed = epoch[: args.steps]
        start = time.perf_counter()
        for batch in timed:
            state, metrics = parallel.train_step(state, parallel.put_batch(batch))
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - start
        tokens = sum(int((batch["target"] != vocabulary.pad_id).sum()) for batch in timed)
        print(
            f"| {mode} | {len(batches.shapes)} | {len(batches)} | {padding:.1%} | {compile_s:.1f} "
            f"| {1000 * seconds / len(timed):.0f} | {tokens / seconds:,.0f} |"
        )


if __name__ == "__main__":
    main()
