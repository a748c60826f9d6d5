"""A short tour: `python -m flax_transformer.demo`.

Builds the paper's presets and counts their parameters, runs the jitted model on a small
padded batch, and prints one cross-attention map. (Training and translating: `python -m train`,
see train/README.md.)
"""

from __future__ import annotations

import time

import jax
import numpy as np

import flax_transformer as ft

SHADES = " .:-=+*#%@"


def _shade(weights: np.ndarray) -> str:
    """One character per weight, darker for larger (relative to the row's largest)."""
    scaled = weights / max(float(weights.max()), 1e-9)
    return "".join(SHADES[min(int(w * len(SHADES)), len(SHADES) - 1)] for w in scaled)


def main() -> None:
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}\n")
    print("preset   d_model  heads  layers  d_ff   parameters (vocab 37000)")
    for name in ("small", "base", "big"):
        config = ft.TransformerConfig.preset(name, vocab_size=37000)
        shapes = jax.eval_shape(lambda c=config: ft.init_params(c, jax.random.key(0)))
        print(
            f"{name:<8} {config.d_model:>7}  {config.num_heads:>5}  "
            f"{config.num_encoder_layers}+{config.num_decoder_layers:<4}  {config.d_ff:>5}  "
            f"{ft.count_params(shapes) / 1e6:8.1f}M"
        )
    print("(the paper reports 65M for base and 213M for big)\n")

    config = ft.TransformerConfig.tiny()
    params = ft.init_params(config, jax.random.key(0))
    source = np.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]], np.int32)  # 0 = padding
    decoder_input = np.array([[1, 20, 21, 22], [1, 23, 24, 25]], np.int32)  # start token first

    start = time.perf_counter()
    logits = ft.forward(config, params, source, decoder_input).block_until_ready()
    first = time.perf_counter() - start
    start = time.perf_counter()
    logits = ft.forward(config, params, source, decoder_input).block_until_ready()
    second = time.perf_counter() - start
    print(f"tiny model: {ft.count_params(params):,} parameters")
    print(
        f"logits {logits.shape} {logits.dtype}: first call (compiles) {first * 1e3:.0f} ms, "
        f"second call {second * 1e3:.1f} ms"
    )

    _, maps = ft.attention_weights(config, params, source, decoder_input)
    cross = np.asarray(maps["decoder/layer_0/cross_attention"])[0, 0]  # example 0, head 0
    print("\ncross-attention, decoder layer 0, head 0 (rows: target positions; columns: source;")
    print("the last two source tokens are padding and get no weight):")
    print("      " + " ".join(f"{t:>2}" for t in source[0]))
    for token, row in zip(decoder_input[0], cross, strict=True):
        print(
            f"  {token:>2}  "
            + " ".join(f" {c}" for c in _shade(row))
            + "   "
            + " ".join(f"{w:.2f}" for w in row)
        )


if __name__ == "__main__":
    main()
