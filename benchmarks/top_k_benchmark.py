"""The top-k of decoding over a vocabulary: `jax.lax.top_k` against `search.largest_k`, and
beam search's `best_log_probs`, on random float32 logits.

    python benchmarks/top_k_benchmark.py                    # opus-mt-en-de's vocabulary, 58,101
    python benchmarks/top_k_benchmark.py --vocab-size 8000

Each call is jitted, run once to compile, then timed `--repeats` times; the table prints the
median in milliseconds. Rows of 64 are greedy decoding at batch 64 (k = 1) and a beam's
candidates (k = 9: 2 x beam 4, plus the banned id); 256 rows are beam 4 at batch 64, where
`best_log_probs` takes one sentence's 4 beams at a time as beam search does. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from flax_transformer import search


def median_ms(function, *arguments, repeats: int) -> float:
    jax.block_until_ready(function(*arguments))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*arguments))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=58101)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    logits = jax.random.normal(jax.random.PRNGKey(0), (256, args.vocab_size))
    cases = [
        ("lax.top_k", 64, 1, jax.jit(lambda x: jax.lax.top_k(x, 1))),
        ("largest_k", 64, 1, jax.jit(lambda x: search.largest_k(x, 1))),
        ("lax.top_k", 64, 9, jax.jit(lambda x: jax.lax.top_k(x, 9))),
        ("largest_k", 64, 9, jax.jit(lambda x: search.largest_k(x, 9))),
        ("lax.top_k", 256, 9, jax.jit(lambda x: jax.lax.top_k(x, 9))),
        ("largest_k", 256, 9, jax.jit(lambda x: search.largest_k(x, 9))),
        (
            "best_log_probs, blocks of 4 rows",
            256,
            9,
            jax.jit(lambda x: search.best_log_probs(x, 8, 0, 4)),
        ),
    ]
    print(f"{jax.default_backend()}, vocabulary {args.vocab_size:,}, median of {args.repeats}\n")
    print("| call | rows | k | ms |")
    print("|---|---|---|---|")
    for name, rows, k, function in cases:
        ms = median_ms(function, logits[:rows], repeats=args.repeats)
        print(f"| {name} | {rows} | {k} | {ms:.2f} |")


if __name__ == "__main__":
    main()
