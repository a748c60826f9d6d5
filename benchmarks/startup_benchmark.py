"""Start-up of `python -m train.translate`: one sentence, the first and the second invocation
on the same workdir with JAX's persistent compilation cache, and without the cache; then the
same for the run exported by `python -m train.export` and translated by `python -m
train.exported` (no flax, no model code, no tracing). Prints two tables.

The workdirs hold untrained models of the number-words task (its fixed vocabulary, so nothing
is downloaded or trained): `small` (d_model 256, 3+3 layers, the default config's model),
`multi30k` (the same with the Multi30k recipe's 8,000-id output layer and max_len 128) and
`opus-mt` (opus-mt-en-de's shape: d_model 512, 6+6 layers, 8 heads, d_ff 2048, SiLU, an output
layer of 58,101 ids). Untrained weights write the longest output (source length + 50 tokens),
the worst case for the decoder. Each invocation is a fresh process: wall time from start to
exit, imports, checkpoint restore and the translation included. Asserts nothing.

    python benchmarks/startup_benchmark.py [--models small opus-mt] [--decoding beam greedy]

The export holds the measured method alone, for CPU and CUDA, with every source-length bucket.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "small": {},
    # The Multi30k recipe's model (train/configs/multi30k.py): the small one, 8k SentencePiece ids.
    "multi30k": dict(vocab_size=8000, max_len=128),
    "opus-mt": dict(
        d_model=512,
        num_heads=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        d_ff=2048,
        activation="silu",
        vocab_size=58101,
    ),
}


def make_workdir(path: Path, model: str) -> None:
    import jax

    from flax_transformer.model import init_params
    from train.configs import default as default_config
    from train.data.numbers import number_words_vocabulary
    from train.setup import model_config_from
    from train.workdir import Workdir

    config = default_config.get_config()
    config.model.update(**MODELS[model])
    model_config = model_config_from(config, number_words_vocabulary().vocab_size)
    params = init_params(model_config, jax.random.key(0))
    workdir = Workdir(str(path))
    with workdir.checkpointer() as checkpointer:
        checkpointer.save_params(0, params, config=workdir.run_config(config, model_config))
    workdir.write_config(config, model_config)


def _seconds(*args: str, stdin: bytes = b"") -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], input=stdin, capture_output=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr.decode("utf-8", "replace"))
    return seconds


def translate_seconds(workdir: Path, cache: str, decoding: str) -> float:
    flags = (f"--workdir={workdir}", f"--compilation_cache={cache}", f"--decoding={decoding}")
    return _seconds("-m", "train.translate", *flags, stdin=b"40712\n")


def exported_seconds(artifact: Path, cache: str, decoding: str) -> float:
    flags = (f"--artifact={artifact}", f"--compilation_cache={cache}", f"--decoding={decoding}")
    return _seconds("-m", "train.exported", *flags, stdin=b"40712\n")


def _size_mib(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--decoding", nargs="+", choices=["beam", "greedy"], default=["beam"])
    args = parser.parse_args()
    print(f"CPU cores: {len(os.sched_getaffinity(0))}\n")
    in_process, exported = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for model in args.models:
            workdir = Path(scratch) / model
            make_workdir(workdir, model)
            for decoding in args.decoding:
                cache = str(Path(scratch) / f"cache-{model}-{decoding}")
                uncached = translate_seconds(workdir, "", decoding)
                first = translate_seconds(workdir, cache, decoding)
                second = translate_seconds(workdir, cache, decoding)
                in_process.append(
                    f"| {model} | {decoding} | {uncached:.1f} | {first:.1f} | {second:.1f} |"
                )
                artifact = Path(scratch) / f"exported-{model}-{decoding}"
                export = _seconds(
                    "-m", "train.export", f"--workdir={workdir}", f"--out={artifact}",
                    f"--methods={decoding}", f"--compilation_cache={cache}",
                )  # fmt: skip
                functions = _size_mib(artifact / "functions")
                params = _size_mib(artifact) - functions
                cache = str(Path(scratch) / f"cache-exported-{model}-{decoding}")
                uncached = exported_seconds(artifact, "", decoding)
                first = exported_seconds(artifact, cache, decoding)
                second = exported_seconds(artifact, cache, decoding)
                exported.append(
                    f"| {model} | {decoding} | {export:.1f} | {functions:.1f} | {params:.1f} | "
                    f"{uncached:.1f} | {first:.1f} | {second:.1f} |"
                )
    print("python -m train.translate, one sentence:\n")
    print("| model | decoding | no cache (s) | first, empty cache (s) | second, cached (s) |")
    print("|---|---|---|---|---|")
    print("\n".join(in_process))
    print("\npython -m train.export, then python -m train.exported, one sentence:\n")
    print(
        "| model | decoding | export (s) | functions (MiB) | weights + tokenizer (MiB) | "
        "no cache (s) | first, empty cache (s) | second, cached (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(exported))


if __name__ == "__main__":
    main()
