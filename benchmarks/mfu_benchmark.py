"""MFU benchmark: training-step model FLOPs utilisation of base and big, and decode throughput.

    python benchmarks/mfu_benchmark.py                   # base and big, bf16, 400 x 64 tokens
    python benchmarks/mfu_benchmark.py --dtypes bfloat16 float32 --attention fused reference
    python benchmarks/mfu_benchmark.py --peer torch      # + PyTorch bf16 SDPA, same shapes
    taskset -c 1 python benchmarks/mfu_benchmark.py --sizes tiny --batch 8 --length 16 \
        --steps 2 --decode-batch 4 --decode-max-length 8 --peer torch     # CPU smoke run

Training: the library's train step (`DataParallel("single")`: Adam, label smoothing 0.1, the
preset's dropout) on random batches of `--batch` sentence pairs, `--length` source and target
tokens each, no padding (padding is work that the model FLOPs below would not count). The
default 400 x 64 = 25,600 target (and as many source) tokens is the paper's batch of about
25,000 of each (section 5.1); `--micro-batches k` accumulates k micro-batches per update if
one batch does not fit. Each (size, dtype, attention) is compiled once, run `--warmup` steps,
then timed over `--steps` steps.

Model FLOPs per step, counted analytically (matmuls only; embedding look-ups, softmax,
LayerNorm, dropout and the optimizer are not counted): with B rows, source length S, target
length T, d = d_model, f = d_ff, V = vocab, N_e and N_d layers, in multiply-accumulates (MACs)

    encoder layer   4 S d^2 (W^Q, W^K, W^V, W^O) + 2 S d f (FFN) + 2 S^2 d (Q K^T and A V)
    decoder layer   4 T d^2 + 2 T^2 d (self-attention) + 2 T d^2 + 2 S d^2 + 2 T S d (cross:
                    W^Q, W^O on the target, W^K, W^V on the encoder output) + 2 T d f (FFN)
    output          T d V (the logits, tied embedding)

    forward FLOPs   = 2 B [N_e (4 S d^2 + 2 S d f + 2 S^2 d)
                         + N_d (6 T d^2 + 2 S d^2 + 2 T d f + 2 T^2 d + 2 T S d) + T d V]
    training FLOPs  = 3 x forward (the backward pass computes two matmuls per forward matmul)

The causal self-attention is counted whole (T^2, not T^2 / 2): both kernels compute the masked
half. MFU = training FLOPs / step time / the device's peak. XLA's own count of the compiled step
(`compiled.cost_analysis()["flops"]`) is printed beside it: it also counts the elementwise work
and the optimizer, counts custom calls (cuDNN attention) as XLA's cost model sees them, and
counts a loop body once, so with `--micro-batches` k > 1 it covers one micro-batch.
Peaks are dense per-chip figures from `PEAK_TFLOPS`, keyed by `jax.devices()[0].device_kind`;
`--peak-tflops` overrides; elsewhere (a CPU) MFU is unmeasured.

Decoding: greedy and beam search (beam 4) of `--decode-size` with random weights on random
right-padded sources (as in decode_benchmark.py: eos is made unreachable, so every output runs
to `--decode-max-length`), in the first dtype and attention given: generated tokens per second.

`--peer torch`: the same model (post-LN encoder-decoder, tied embeddings, sinusoids, same
shapes, dropout and label smoothing, Adam), written below in PyTorch with
`torch.nn.functional.scaled_dot_product_attention` (causal self-attention as `is_causal=True`,
padding as a boolean key mask), float32 parameters under bfloat16 autocast, eager unless
`--torch-compile`; on CUDA if torch sees a GPU, else the CPU. Its MFU uses the same FLOPs and
peak. Prints markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

import flax_transformer as ft
from flax_transformer.attention import default_platform, fused_attention_implementation
from flax_transformer.config import DTYPES, PRESET_NAMES

BOS, EOS = 1, 2

# Dense (no sparsity) peak TFLOP/s per chip: (substring of device_kind, bfloat16/float16,
# float32), the first match wins. NVIDIA float32 is the TF32 tensor-core rate; on TPUs XLA runs
# float32 matmuls at default precision as bfloat16 passes, so their float32 peak is the bfloat16
# one. A device not listed has no known peak (pass --peak-tflops).
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0, 378.0),
    ("H100 80GB HBM3", 989.0, 494.5),  # H100 SXM
    ("H200", 989.0, 494.5),  # H200 and GH200: the H100 SXM's compute
    ("A100", 312.0, 156.0),
    ("TPU v4", 275.0, 275.0),
    ("TPU v5 lite", 197.0, 197.0),  # v5e
    ("TPU v5p", 459.0, 459.0),
    ("TPU v5", 459.0, 459.0),  # v5p reports "TPU v5"
    ("TPU v6 lite", 918.0, 918.0),  # v6e
)


def peak_tflops(device_kind: str, dtype: str, override: float | None) -> float | None:
    if override:
        return override
    for kind, low_precision, float32 in PEAK_TFLOPS:
        if kind in device_kind:
            return float32 if dtype == "float32" else low_precision
    return None


def training_flops(config: ft.TransformerConfig, batch: int, source_len: int, target_len: int):
    """Model FLOPs of one training step (see the module docstring)."""
    d, f, v = config.d_model, config.d_ff, config.vocab_size
    s, t = source_len, target_len
    encoder = config.num_encoder_layers * (4 * s * d * d + 2 * s * d * f + 2 * s * s * d)
    decoder = config.num_decoder_layers * (
        6 * t * d * d + 2 * s * d * d + 2 * t * d * f + 2 * t * t * d + 2 * t * s * d
    )
    forward = 2 * batch * (encoder + decoder + t * d * v)
    return 3 * forward


def random_pairs(config, batch, length, seed=0):
    """Unpadded random source, decoder input (bos + target[:-1]) and target, [batch, length]."""
    rng = np.random.default_rng(seed)
    source, target = rng.integers(3, config.vocab_size, size=(2, batch, length), dtype=np.int32)
    decoder_input = np.concatenate([np.full((batch, 1), BOS, np.int32), target[:, :-1]], axis=1)
    return {"source": source, "decoder_input": decoder_input, "target": target}


def _xla_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per program
        analysis = analysis[0] if analysis else None
    return None if not analysis or "flops" not in analysis else float(analysis["flops"])


def attention_kernel(config, batch, length):
    """What `attention_implementation="fused"` runs for these training shapes."""
    platform, capability = default_platform()
    shape = (batch, length, config.num_heads, config.head_dim)
    return fused_attention_implementation(
        platform,
        config.compute_dtype,
        shape,
        shape,
        (batch, 1, length, length),
        compute_capability=capability,
    )


def train_row(size, dtype, attention, args):
    config = ft.TransformerConfig.preset(size, dtype=dtype, attention_implementation=attention)
    if args.length > config.max_len:
        raise SystemExit(f"--length {args.length} exceeds {size}'s max_len {config.max_len}")
    parallel = ft.DataParallel("single", model_config=config, micro_batches=args.micro_batches)
    state = ft.create_train_state(config, ft.make_optimizer(1e-4), jax.random.key(0))
    params = ft.count_params(state.params)
    state = parallel.put_state(state)
    batch = parallel.put_batch(random_pairs(config, args.batch, args.length))
    start = time.perf_counter()
    compiled = parallel.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / args.steps
    if not np.isfinite(float(metrics["loss_sum"])):
        raise SystemExit(f"{size} {dtype} {attention}: the loss is not finite")
    kernel = attention
    if attention == "fused":
        kernel += f" ({attention_kernel(config, args.batch // args.micro_batches, args.length)})"
    return dict(
        model=size,
        params=params,
        dtype=dtype,
        attention=kernel,
        seconds=seconds,
        flops=training_flops(config, args.batch, args.length, args.length),
        xla_flops=_xla_flops(compiled),
        compile_s=compile_s,
    )


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------
def decode_rows(size, dtype, attention, args):
    config = ft.TransformerConfig.preset(size, dtype=dtype, attention_implementation=attention)
    params = jax.tree.map(np.array, ft.init_params(config, jax.random.key(0)))
    embedding = "shared_embedding" if config.share_embeddings else "target_embedding"
    params[embedding]["embedding"][EOS] = 0.0  # eos unreachable: fixed-length outputs
    rng = np.random.default_rng(0)
    length = args.decode_source_len
    source = rng.integers(3, config.vocab_size, size=(args.decode_batch, length)).astype(np.int32)
    lengths = rng.integers(length // 2, length + 1, size=args.decode_batch)
    source[np.arange(length)[None, :] >= lengths[:, None]] = config.pad_id
    common = dict(bos_id=BOS, eos_id=EOS, max_length=args.decode_max_length, check_inputs=False)
    methods = {
        "greedy": lambda params, source: ft.greedy_decode(config, params, source, **common),
        "beam 4": lambda params, source: ft.beam_search(
            config, params, source, beam_size=4, **common
        )[0][:, 0],
    }
    rows = []
    for name, function in methods.items():
        start = time.perf_counter()
        compiled = jax.jit(function).lower(params, source).compile()
        compile_s = time.perf_counter() - start
        jax.block_until_ready(compiled(params, source))
        start = time.perf_counter()
        for _ in range(args.decode_repeats):
            tokens = compiled(params, source)
        tokens = np.asarray(jax.block_until_ready(tokens))
        seconds = (time.perf_counter() - start) / args.decode_repeats
        generated = int((tokens != config.pad_id).sum())
        rows.append((name, seconds, generated / seconds, compile_s))
    return config, rows


# ---------------------------------------------------------------------------------------------
# The PyTorch peer
# ---------------------------------------------------------------------------------------------
def torch_row(size, args):
    """The train step of the same model in PyTorch, bfloat16 autocast over float32 parameters."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    config = ft.TransformerConfig.preset(size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    d, heads = config.d_model, config.num_heads

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value, self.output = (nn.Linear(d, d) for _ in range(4))

        def forward(self, x, memory, key_mask=None, is_causal=False):
            def split(h):  # [b, len, d] -> [b, heads, len, d_k]
                return h.unflatten(-1, (heads, d // heads)).transpose(1, 2)

            q, k, v = split(self.query(x)), split(self.key(memory)), split(self.value(memory))
            h = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=is_causal)
            return self.output(h.transpose(1, 2).flatten(-2))

    class Layer(nn.Module):
        def __init__(self, cross):
            super().__init__()
            self.self_attention, self.norms = Attention(), nn.ModuleList()
            self.cross_attention = Attention() if cross else None
            self.feed_forward = nn.Sequential(
                nn.Linear(d, config.d_ff), nn.ReLU(), nn.Linear(config.d_ff, d)
            )
            for _ in range(3 if cross else 2):
                self.norms.append(nn.LayerNorm(d, eps=config.layer_norm_epsilon))
            self.dropout = nn.Dropout(config.dropout_rate)

        def forward(self, x, self_mask, memory=None, memory_mask=None):
            # Post-LN, as in the paper and the library's default: LayerNorm(x + Dropout(f(x))).
            causal = memory is not None
            x = self.norms[0](
                x + self.dropout(self.self_attention(x, x, self_mask, is_causal=causal))
            )
            if causal:
                x = self.norms[1](x + self.dropout(self.cross_attention(x, memory, memory_mask)))
            return self.norms[-1](x + self.dropout(self.feed_forward(x)))

    class Transformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(config.vocab_size, d)
            table = np.asarray(ft.positional.sinusoidal_position_encoding(config.max_len, d))
            self.register_buffer("positions", torch.from_numpy(table.copy()))
            self.encoder = nn.ModuleList(Layer(False) for _ in range(config.num_encoder_layers))
            self.decoder = nn.ModuleList(Layer(True) for _ in range(config.num_decoder_layers))
            self.dropout = nn.Dropout(config.dropout_rate)

        def embed(self, tokens):
            x = self.embedding(tokens) * d**0.5 + self.positions[: tokens.shape[1]]
            return self.dropout(x)

        def forward(self, source, decoder_input):
            source_mask = (source != config.pad_id)[:, None, None, :]  # True = may attend
            x = self.embed(source)
            for layer in self.encoder:
                x = layer(x, source_mask)
            y = self.embed(decoder_input)
            for layer in self.decoder:
                y = layer(y, None, x, source_mask)  # causal self-attention: is_causal=True
            return y @ self.embedding.weight.T  # tied output projection

    model = Transformer().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    batch = {
        key: torch.from_numpy(value).long().to(device)
        for key, value in random_pairs(config, args.batch, args.length).items()
    }
    micro = args.batch // args.micro_batches

    def step():  # `run` is the model, or its torch.compile'd version
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, args.batch, micro):
            part = {key: value[start : start + micro] for key, value in batch.items()}
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                logits = run(part["source"], part["decoder_input"])
            loss = F.cross_entropy(
                logits.float().flatten(0, 1),
                part["target"].flatten(),
                ignore_index=config.pad_id,
                label_smoothing=0.1,
                reduction="sum",
            ) / (args.batch * args.length)
            loss.backward()
        optimizer.step()
        return loss

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    run = torch.compile(model) if args.torch_compile else model
    start = time.perf_counter()
    for _ in range(max(args.warmup, 1)):  # the first step compiles with --torch-compile
        loss = step()
    synchronize()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    if not np.isfinite(loss.item()):
        raise SystemExit(f"torch {size}: the loss is not finite")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    compiled = ", torch.compile" if args.torch_compile else ", eager"
    return dict(
        model=size,
        params=sum(p.numel() for p in model.parameters()),
        dtype="bfloat16 autocast",
        attention=f"torch {torch.__version__} SDPA on {name}{compiled}",
        seconds=seconds,
        flops=training_flops(config, args.batch, args.length, args.length),
        xla_flops=None,
        compile_s=compile_s,
    )


# ---------------------------------------------------------------------------------------------
def _print_train_table(rows, args, device_kind):
    print(
        "| model | params | dtype | attention | step ms | target tokens/s | model TFLOP/step "
        "| XLA TFLOP/step | TFLOP/s | MFU | compile s |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    unknown = set()
    for row in rows:
        achieved = row["flops"] / row["seconds"] / 1e12
        dtype = "float32" if row["dtype"] == "float32" else "bfloat16"
        peak = peak_tflops(device_kind, dtype, args.peak_tflops)
        if peak is None:
            unknown.add(dtype)
        mfu = "unmeasured" if peak is None else f"{achieved / peak:.1%}"
        xla = "-" if row["xla_flops"] is None else f"{row['xla_flops'] / 1e12:.4g}"
        print(
            f"| {row['model']} | {row['params']:,} | {row['dtype']} | "
            f"{row['attention']} | {row['seconds'] * 1e3:,.1f} | "
            f"{args.batch * args.length / row['seconds']:,.0f} | {row['flops'] / 1e12:.4g} | "
            f"{xla} | {achieved:.4g} | {mfu} | {row['compile_s']:.1f} |",
            flush=True,
        )
    for dtype in sorted(unknown):
        print(f"peak unknown for {device_kind!r} in {dtype}: MFU unmeasured (pass --peak-tflops)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["base", "big"], choices=PRESET_NAMES)
    parser.add_argument("--batch", type=int, default=400, help="sentence pairs per step")
    parser.add_argument("--length", type=int, default=64, help="source = target length")
    parser.add_argument("--micro-batches", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"], choices=list(DTYPES))
    parser.add_argument(
        "--attention", nargs="+", default=["fused", "reference"], choices=["fused", "reference"]
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="per-device peak")
    parser.add_argument(
        "--decode-size", default="base", help="preset to decode with; 'none' to skip"
    )
    parser.add_argument("--decode-batch", type=int, default=64)
    parser.add_argument("--decode-source-len", type=int, default=32)
    parser.add_argument("--decode-max-length", type=int, default=64)
    parser.add_argument("--decode-repeats", type=int, default=3)
    parser.add_argument("--peer", choices=["none", "torch"], default="none")
    parser.add_argument("--torch-compile", action="store_true")
    args = parser.parse_args()
    if args.decode_size not in (*PRESET_NAMES, "none"):
        parser.error(f"--decode-size must be one of {[*PRESET_NAMES, 'none']}")
    if args.batch % args.micro_batches:
        parser.error(f"--batch {args.batch} does not split into {args.micro_batches} micro-batches")

    device = jax.devices()[0]
    platform, capability = default_platform()
    if capability is not None:
        platform += f" {capability[0]}.{capability[1]}"
    print(
        f"jax {jax.__version__}, {device.platform} ({device.device_kind}; attention platform "
        f"{platform}); batch {args.batch} x "
        f"{args.length} source and target tokens ({args.batch * args.length:,} each), "
        f"{args.micro_batches} micro-batch(es); {args.steps} timed steps after {args.warmup}\n"
    )
    rows = [
        train_row(size, dtype, attention, args)
        for size in args.sizes
        for dtype in args.dtypes
        for attention in args.attention
    ]
    if args.peer == "torch":
        rows += [torch_row(size, args) for size in args.sizes]
    _print_train_table(rows, args, device.device_kind)

    if args.decode_size != "none":
        dtype, attention = args.dtypes[0], args.attention[0]
        config, decode = decode_rows(args.decode_size, dtype, attention, args)
        print(
            f"\ndecoding: {args.decode_size}, {dtype}, {attention} attention; {args.decode_batch}"
            f" sources of up to {args.decode_source_len} tokens, outputs of "
            f"{args.decode_max_length} (vocab {config.vocab_size}; beam: the best hypothesis's "
            "tokens)\n"
        )
        print("| method | ms / batch | tokens / s | compile s |")
        print("|---|---:|---:|---:|")
        for name, seconds, tokens_per_second, compile_s in decode:
            print(f"| {name} | {seconds * 1e3:,.1f} | {tokens_per_second:,.0f} | {compile_s:.1f} |")


if __name__ == "__main__":
    main()
