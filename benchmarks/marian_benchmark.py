"""MarianMT decoding, ours against Hugging Face: sentences/s and peak memory. Prints a table.

    pip install -e '.[reference]'       # torch (CPU build) and transformers, for the reference
    python benchmarks/marian_benchmark.py
    python benchmarks/marian_benchmark.py --sentences 256 --methods greedy beam4 --batch 32

One random-weight model of opus-mt-en-de's size (d_model 512, 6+6 layers, 8 heads, d_ff 2048,
vocabulary 58,101, SiLU, scaled embeddings), made with transformers' MarianMTModel, saved,
and converted with `flax_transformer.interop.marian.load_marian`: both sides compute with the same
weights. Sources: the first `--sentences` English sentences of Multi30k test2016 (--data),
tokenized with a Marian-style tokenizer trained on Multi30k train (7,000 pieces per language;
opus-mt's own tokenizer is not available offline), with eos appended, sorted by length and cut
into batches of `--batch`. So that both run the same number of steps, eos is unreachable (its
embedding row, which the tied output projection also uses, is zero) and every output runs to
`--max-new` tokens: this measures decoding speed, not translation.

Each (implementation, method) runs in its own process: its peak resident memory (ru_maxrss,
framework and weights included) is that row's. Ours: `ft.greedy_decode` / `ft.beam_search`
(jitted, key/value cache; sources padded to a few bucket lengths, compiled before timing: the
compile column). Hugging Face: `model.generate(num_beams=1 or 4, do_sample=False)` under
`torch.inference_mode()`, sources padded per batch. Both use every core of the machine, or the
GPU where there is one (then the last column is each framework's own peak GPU allocation).
Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MULTI30K_DIR", REPO_ROOT.parent / "shared/data/multi30k"))
OPUS_MT_EN_DE = dict(
    vocab_size=58101,
    d_model=512,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=8,
    decoder_attention_heads=8,
    encoder_ffn_dim=2048,
    decoder_ffn_dim=2048,
    activation_function="swish",
    max_position_embeddings=512,
    scale_embedding=True,
    pad_token_id=58100,
    decoder_start_token_id=58100,
    eos_token_id=0,
    forced_eos_token_id=0,
)
BUCKETS = (16, 32, 64, 128)


def make_model(directory: Path) -> None:
    """A random opus-mt-en-de-sized MarianMTModel in `directory`, eos unreachable."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    model = MarianMTModel(MarianConfig(**OPUS_MT_EN_DE)).eval()
    with torch.no_grad():
        model.model.shared.weight[OPUS_MT_EN_DE["eos_token_id"]] = 0.0
    model.save_pretrained(directory)


def make_sources(data: Path, directory: Path, count: int) -> list[list[int]]:
    from train.data.tokenizer_training import write_marian_tokenizer_files

    english = (data / "train.en").read_text(encoding="utf-8").splitlines()
    german = (data / "train.de").read_text(encoding="utf-8").splitlines()
    tokenizer = write_marian_tokenizer_files(directory, english, german, vocab_size=7000)
    test = (data / "test2016.en").read_text(encoding="utf-8").splitlines()[:count]
    return [[*tokenizer.encode(line), tokenizer.eos_id] for line in test]


def batches_of(sources: list[list[int]], batch: int) -> list[list[list[int]]]:
    ordered = sorted(sources, key=len)
    return [ordered[i : i + batch] for i in range(0, len(ordered), batch)]


def padded(rows: list[list[int]], length: int, pad_id: int) -> np.ndarray:
    array = np.full((len(rows), length), pad_id, np.int32)
    for i, row in enumerate(rows):
        array[i, : len(row)] = row
    return array


def run_ours(model_dir: str, sources: list[list[int]], method: str, args) -> dict:
    import jax

    import flax_transformer as ft
    from flax_transformer.interop.marian import load_marian

    checkpoint = load_marian(model_dir)
    config, params = checkpoint.config, jax.device_put(checkpoint.params)
    common = dict(
        bos_id=checkpoint.decoder_start_id,
        eos_id=checkpoint.eos_id,
        max_length=args.max_new,
        check_inputs=False,
    )

    device = jax.devices()[0]

    def decode(source):
        if method == "greedy":
            return ft.greedy_decode(config, params, source, **common)
        return ft.beam_search(config, params, source, beam_size=4, **common)[0]

    inputs = []
    for rows in batches_of(sources, args.batch):
        length = next(b for b in BUCKETS if b >= max(map(len, rows)))
        inputs.append(padded(rows, length, config.pad_id))
    start = time.perf_counter()
    for shape in sorted({(x.shape[0], x.shape[1]) for x in inputs}):  # compile every shape
        jax.block_until_ready(decode(np.full(shape, 5, np.int32)))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for source in inputs:
        jax.block_until_ready(decode(source))
    seconds = time.perf_counter() - start
    stats = device.memory_stats() if device.platform == "gpu" else None
    peak = stats["peak_bytes_in_use"] / 2**20 if stats else None
    return {"seconds": seconds, "compile_s": compile_s, "gpu_peak_mib": peak}


def run_hugging_face(model_dir: str, sources: list[list[int]], method: str, args) -> dict:
    import torch
    from transformers import MarianMTModel

    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = MarianMTModel.from_pretrained(model_dir).eval().to(device)
    pad = model.config.pad_token_id
    start = time.perf_counter()
    with torch.inference_mode():
        for rows in batches_of(sources, args.batch):
            source = torch.tensor(padded(rows, max(map(len, rows)), pad), dtype=torch.long)
            source = source.to(device)
            model.generate(
                input_ids=source,
                attention_mask=(source != pad).long(),
                num_beams=1 if method == "greedy" else 4,
                do_sample=False,
                max_new_tokens=args.max_new,
                min_new_tokens=args.max_new,
            )
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"seconds": seconds, "compile_s": 0.0, "gpu_peak_mib": peak}


def worker(args) -> None:
    """One (implementation, method) in this process; prints a JSON line."""
    sources = json.loads(Path(args.sources_file).read_text())
    run = run_ours if args.implementation == "ours" else run_hugging_face
    result = run(args.model_dir, sources, args.method, args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-new", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["greedy", "beam4"])
    parser.add_argument("--implementations", nargs="+", default=["ours", "hugging_face"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--implementation", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--sources-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not (args.data / "test2016.en").exists():
        sys.exit(f"Multi30k not found at {args.data}: pass --data DIR (or set MULTI30K_DIR)")

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        make_model(scratch / "model")
        sources = make_sources(args.data, scratch / "tokenizer", args.sentences)
        (scratch / "sources.json").write_text(json.dumps(sources))
        lengths = [len(s) for s in sources]
        print(
            f"{len(sources)} Multi30k test2016 sources, {np.mean(lengths):.1f} tokens on average "
            f"(max {max(lengths)}), batches of {args.batch}, {args.max_new} new tokens each; "
            f"{os.cpu_count()} CPU cores\n"
        )
        print(
            "| implementation | method | compile s | decode s | sentences/s | "
            "peak memory MiB (process) | peak GPU memory MiB |"
        )
        print("|---|---|---|---|---|---|---|")
        for method in args.methods:
            for implementation in args.implementations:
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    f"--implementation={implementation}",
                    f"--method={method}",
                    f"--model-dir={scratch / 'model'}",
                    f"--sources-file={scratch / 'sources.json'}",
                    f"--batch={args.batch}",
                    f"--max-new={args.max_new}",
                ]
                output = subprocess.run(command, capture_output=True, text=True, check=False)
                if output.returncode != 0:
                    print(f"| {implementation} | {method} | failed: {output.stderr[-300:]!r} |")
                    continue
                result = json.loads(output.stdout.strip().splitlines()[-1])
                gpu = result["gpu_peak_mib"]
                print(
                    f"| {implementation} | {method} | {result['compile_s']:.1f} | "
                    f"{result['seconds']:.1f} | {len(sources) / result['seconds']:.1f} | "
                    f"{result['peak_rss_mib']:,.0f} | "
                    f"{'-' if gpu is None else format(gpu, ',.0f')} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
