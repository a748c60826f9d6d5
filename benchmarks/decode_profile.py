"""Where a decoding step's time goes: a `jax.profiler` trace of cached decoding, per XLA op.

    python benchmarks/decode_profile.py                      # opus-mt-en-de's size, greedy
    python benchmarks/decode_profile.py --method beam --batch 64 --top 30
    python benchmarks/decode_profile.py --preset small --vocab-size 8000 --activation relu

Random weights of a preset (default `base` with opus-mt-en-de's vocabulary of 58,101 and SiLU)
and random right-padded sources (see decode_benchmark.py, whose `random_sources` and
unreachable eos this uses, so that every step does the same work). The decoder (`greedy` or
`beam` search with beam 4) is compiled, timed once, then run once under
`jax.profiler.trace`. XLA:CPU records each op it runs inside the decoding loop; the table sums
each op's time over the run and divides by the steps: milliseconds per step, the share of
the traced time, the op's output shape and the JAX operation it came from (from the compiled
HLO's metadata: which layer and which part of it). On CPU, ops of the loop body run one after
another on the two-core thread pool; shares are of the sum over the listed ops and all others.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

import jax
from decode_benchmark import BOS, EOS, random_sources, unreachable_eos  # benchmarks/ is sys.path[0]

import flax_transformer as ft

# Events of the profiler's own machinery, not of an op.
NOT_AN_OP = re.compile(
    r"^(ThunkExecutor|SlinkyThreadPool|\$|PjitFunction|end: |Common|H2D|D2H|while$)"
)


def hlo_ops(text: str) -> dict[str, tuple[str, str]]:
    """Op name -> (output shape, the JAX op_name it came from), from compiled HLO text."""
    ops = {}
    for match in re.finditer(r"^\s*(?:ROOT )?%(\S+) = (\S+) [^\n]*", text, re.M):
        line = match.group(0)
        source = re.search(r'op_name="([^"]*)"', line)
        where = source.group(1) if source else ""
        # Keep the model's part of the path: from the decoder's module names on.
        where = re.sub(r"^.*?/while/body/", "", where)
        ops[match.group(1)] = (match.group(2).split("{")[0], where)
    return ops


def part_of_model(where: str) -> str:
    """An op's JAX origin with layer indices and the primitive dropped: the row of the second
    table ("layer_*.decode_step/feed_forward/hidden", "top_k", ...)."""
    where = re.sub(r"^.*?decoder\.decode_step/", "", where)
    where = re.sub(r"^(jit\([^)]*\)/)+", "", where)
    where = re.sub(r"layer_\d+", "layer_*", where)
    parts = where.split("/")
    return "/".join(parts[:-1]) if len(parts) > 1 else where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--vocab-size", type=int, default=58101)
    parser.add_argument("--activation", default="silu")
    parser.add_argument("--method", choices=["greedy", "beam"], default="greedy")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--source-len", type=int, default=32, help="padded source length")
    parser.add_argument("--steps", type=int, default=64, help="output length (max_length)")
    parser.add_argument("--top", type=int, default=25, help="ops to list")
    args = parser.parse_args()

    config = ft.TransformerConfig.preset(
        args.preset, vocab_size=args.vocab_size, activation=args.activation, dropout_rate=0.0
    )
    params = unreachable_eos(config, ft.init_params(config, jax.random.key(0)))
    source = random_sources(config, args.batch, args.source_len)
    common = dict(bos_id=BOS, eos_id=EOS, max_length=args.steps, check_inputs=False)

    @jax.jit
    def decode(params, source):
        if args.method == "greedy":
            return ft.greedy_decode(config, params, source, **common)
        return ft.beam_search(config, params, source, beam_size=4, **common)[0]

    compiled = decode.lower(params, source).compile()
    jax.block_until_ready(compiled(params, source))
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, source))
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            jax.block_until_ready(compiled(params, source))
        trace_file = next(Path(directory).rglob("*.trace.json.gz"))
        with gzip.open(trace_file) as trace:
            events = json.load(trace)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not NOT_AN_OP.match(event["name"]):
            total[event["name"]] += event.get("dur", 0) / 1000  # microseconds -> ms
    ops = hlo_ops(compiled.as_text())
    traced = sum(total.values())
    print(
        f"{args.method}, {args.preset} (vocab {config.vocab_size}, {args.activation}), batch "
        f"{args.batch}, {args.steps} steps: {1000 * seconds / args.steps:.1f} ms per step "
        f"untraced, {traced / args.steps:.1f} ms per step in traced ops\n"
    )
    print("| op | ms per step | share | output | from |\n|---|---|---|---|---|")
    for name, ms in total.most_common(args.top):
        shape, where = ops.get(name, ("", ""))
        print(f"| {name} | {ms / args.steps:.2f} | {ms / traced:.1%} | {shape} | {where[-90:]} |")
    rest = traced - sum(ms for _, ms in total.most_common(args.top))
    print(
        f"| all other ops ({len(total) - args.top}) | {rest / args.steps:.2f} | "
        f"{rest / traced:.1%} | | |"
    )
    parts = collections.Counter()
    for name, ms in total.items():
        parts[part_of_model(ops.get(name, ("", name))[1] or name)] += ms
    print("\n| part of the model (all layers) | ms per step | share |\n|---|---|---|")
    for part, ms in parts.most_common(args.top):
        print(f"| {part} | {ms / args.steps:.2f} | {ms / traced:.1%} |")


if __name__ == "__main__":
    main()
