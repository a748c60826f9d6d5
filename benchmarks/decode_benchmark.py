"""Decoding benchmark: uncached greedy, cached greedy, beam search and sampling. Prints a table.

    python benchmarks/decode_benchmark.py                       # small preset, Multi30k-like shapes
    python benchmarks/decode_benchmark.py --max-length 0        # the paper's source length + 50
    python benchmarks/decode_benchmark.py --preset base --methods greedy beam --repeats 5
    python benchmarks/decode_benchmark.py --preset base --vocab-size 58101 --activation silu \
        --methods "greedy, cached" beam                          # opus-mt-en-de's size

Random weights of a preset (vocab 8000 for `small`; `--vocab-size` and `--activation` override
it) and random source batches shaped like Multi30k: `--batch` sentences of 16 to 32 tokens
(about 24), right-padded to 32. So that every method runs the same number of steps, eos is made
unreachable: its embedding row, which the tied output projection also uses, is set to zero, so
its logit is 0 while the argmax (and the beam) over thousands of random logits is far above
that. Every output then runs to `--max-length` (default
64; 0 means source length + 50). Each method is jitted with `lower().compile()` (the compile
column) and then timed over `--repeats` batches: milliseconds per batch, sentences/s and
generated tokens/s. Asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import flax_transformer as ft

BOS, EOS = 1, 2


def random_sources(config, batch, padded_len, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, config.vocab_size, size=(batch, padded_len)).astype(np.int32)
    lengths = rng.integers(padded_len // 2, padded_len + 1, size=batch)
    ids[np.arange(padded_len)[None, :] >= lengths[:, None]] = config.pad_id
    return ids


def unreachable_eos(config, params):
    """Host copies of `params` with eos's embedding row zero: fixed-length outputs."""
    params = jax.tree.map(np.array, params)
    embedding = "shared_embedding" if config.share_embeddings else "target_embedding"
    params[embedding]["embedding"][EOS] = 0.0
    return params


def decoders(config, max_length, beam_size):
    """Each method as a function of (params, source, rng) that returns output tokens."""
    common = dict(bos_id=BOS, eos_id=EOS, max_length=max_length, check_inputs=False)

    def beam(params, source, rng):
        tokens, _ = ft.beam_search(config, params, source, beam_size=beam_size, **common)
        return tokens[:, 0]

    return {
        "greedy, uncached": lambda params, source, rng: ft.decoding.greedy_decode_uncached(
            config, params, source, **common
        ),
        "greedy, cached": lambda params, source, rng: ft.greedy_decode(
            config, params, source, **common
        ),
        f"beam {beam_size}": beam,
        "sampling, top-k 40": lambda params, source, rng: ft.sample_decode(
            config, params, source, rng, top_k=40, **common
        ),
    }


def measure(function, params, source, repeats):
    rng = jax.random.key(0)
    start = time.perf_counter()
    compiled = jax.jit(function).lower(params, source, rng).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for repeat in range(repeats):
        tokens = compiled(params, source, jax.random.key(repeat))
    tokens = np.asarray(jax.block_until_ready(tokens))
    seconds = (time.perf_counter() - start) / repeats
    return compile_s, seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab-size", type=int, help="override the preset's vocabulary size")
    parser.add_argument("--activation", help="override the preset's feed-forward activation")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--source-len", type=int, default=32, help="padded source length")
    parser.add_argument("--max-length", type=int, default=64, help="0: source length + 50")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["greedy, uncached", "greedy, cached", "beam", "sampling"],
        help="prefixes of the method names",
    )
    args = parser.parse_args()

    overrides = {"vocab_size": args.vocab_size, "activation": args.activation}
    config = ft.TransformerConfig.preset(
        args.preset, **{name: value for name, value in overrides.items() if value is not None}
    )
    params = unreachable_eos(config, ft.init_params(config, jax.random.key(0)))
    source = random_sources(config, args.batch, args.source_len)
    max_length = args.max_length or None
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, {device.platform} ({device.device_kind}); preset {args.preset} "
        f"({ft.count_params(params) / 1e6:.1f}M params, vocab {config.vocab_size}); batch "
        f"{args.batch} sources of {int((source != 0).sum(1).mean())} tokens on average padded "
        f"to {args.source_len}; output length {args.max_length or 'source length + 50'}\n"
    )
    print("| method | ms / batch | sentences / s | tokens / s | compile s |")
    print("|---|---:|---:|---:|---:|")
    for name, function in decoders(config, max_length, args.beam_size).items():
        if not any(name.startswith(prefix) for prefix in args.methods):
            continue
        compile_s, seconds, tokens = measure(function, params, source, args.repeats)
        generated = int((tokens != config.pad_id).sum())
        print(
            f"| {name} | {seconds * 1e3:,.0f} | {args.batch / seconds:,.1f} | "
            f"{generated / seconds:,.0f} | {compile_s:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
