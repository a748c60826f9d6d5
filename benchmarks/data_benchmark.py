"""Data pipeline benchmark on a synthetic parallel corpus of N pairs. Prints a table per N.

    python benchmarks/data_benchmark.py --pairs=29000,1000000          # corpora under a temp dir
    python benchmarks/data_benchmark.py --pairs=4500000 --dir=/tmp/corpora --keep

For each N: writes {train,val,test2016}.{en,de} text files (sentence lengths lognormal around 24
words, at most 100, words drawn from a Zipf-distributed word list per language), then runs each
phase in a fresh subprocess of the Multi30k config (`train/configs/multi30k.py` with
data_path=the corpus, max_length and pack_length 128) so that its time and peak RSS are its own:

    prepare   one-time, a process each: TFDS preparation of the text files, tokenizer training
              (on a sample beyond config.tokenizer_train_pairs), the token store
    start     set-up to the first training batch with everything prepared (run_data.training_data
              with the evaluation splits, then batches[0])
    resume    the same, then batches[--resume-step]
    loader    batches/s and target (non-pad) tokens/s of the loader alone, no model: bucketed and
              packed at 4,096 and 25,000 tokens per side, from step --resume-step on

Peak RSS is the phase's own process (not the token store's encoding workers); the pages of the
memory-mapped store it read count in it, and are shown apart at the end of the phase. With
`--old=DIR` (a checkout of earlier code, e.g. `git archive main | tar -x -C DIR`), start and
resume also run on that code (same corpus and TFDS preparation) for a before/after comparison.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
SPLITS = {"val": 1000, "test2016": 1000}


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------
def _words(rng: np.random.Generator, count: int) -> np.ndarray:
    syllables = np.array([c + v for c in "bcdfghklmnprstvwz" for v in "aeiouy"])
    sizes = rng.integers(1, 4, size=count)
    picks = rng.integers(0, len(syllables), size=(count, 3))
    words = {"".join(syllables[picks[i, : sizes[i]]]) for i in range(count)}
    return np.array(sorted(words))


def write_corpus(directory: Path, pairs: int, seed: int = 0) -> None:
    """{train,val,test2016}.{en,de}: the target is the source's words through a second word
    list (a "translation" SentencePiece can learn), its length jittered by a word or two."""
    rng = np.random.default_rng(seed)
    vocabulary = {"en": _words(rng, 30_000), "de": _words(rng, 30_000)}
    size = min(len(vocabulary["en"]), len(vocabulary["de"]))
    ranks = np.arange(1, size + 1)
    zipf = (1 / ranks) / (1 / ranks).sum()
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in {"train": pairs, **SPLITS}.items():
        with open(directory / f"{split}.en", "w") as en, open(directory / f"{split}.de", "w") as de:
            for start in range(0, count, 100_000):
                n = min(100_000, count - start)
                longest = 100 if split == "train" else 50  # evaluation: within model.max_len
                lengths = np.clip(rng.lognormal(np.log(22), 0.45, size=n), 1, longest).astype(int)
                ids = rng.choice(size, size=lengths.sum(), p=zipf)
                jitter = rng.integers(-1, 3, size=n)
                lines_en, lines_de, offset = [], [], 0
                for length, extra in zip(lengths.tolist(), jitter.tolist(), strict=True):
                    sentence = ids[offset : offset + length]
                    offset += length
                    target = sentence[: max(1, min(100, length + extra))]
                    lines_en.append(" ".join(vocabulary["en"][sentence]))
                    lines_de.append(" ".join(vocabulary["de"][target]))
                en.write("\n".join(lines_en) + "\n")
                de.write("\n".join(lines_de) + "\n")


# ---------------------------------------------------------------------------------------------
# The phases (each in its own process)
# ---------------------------------------------------------------------------------------------
def _config(corpus: Path, work: Path):
    from train.configs import multi30k

    config = multi30k.get_config()
    config.max_length = config.pack_length = 128  # sentences of up to 100 words
    config.model.max_len = 256
    config.data_path = str(corpus)
    config.data_dir = str(work / "tfds")
    if "token_store_dir" in config:
        config.token_store_dir = str(work / "token_stores")
    return config


def _vocabulary(config, work: Path, train_source):
    from train.workdir import Workdir

    return Workdir(work / "run").vocabulary(config, train_source)


def _training_data(config, sources, vocabulary):
    from train.data.run_data import training_data

    try:
        return training_data(config, sources, vocabulary, log=None)
    except TypeError:  # the earlier code: no token store, no log
        return training_data(config, sources, vocabulary)


def phase(name: str, corpus: Path, work: Path, resume_step: int, loader_steps: int) -> dict:
    from train.data.sources import open_roles

    config = _config(corpus, work)
    result: dict = {}
    start = time.perf_counter()
    if name == "tfds":
        open_roles(config)
    elif name == "tokenizer":
        sources = open_roles(config, ["train"])
        mark = time.perf_counter()
        _vocabulary(config, work, sources["train"])
        result["train_s"] = time.perf_counter() - mark
    elif name == "store":
        from train.data.run_data import training_store

        sources = open_roles(config, ["train"])
        vocabulary = _vocabulary(config, work, sources["train"])
        mark = time.perf_counter()
        result["pairs"] = len(training_store(config, sources["train"], vocabulary, log=None))
        result["build_s"] = time.perf_counter() - mark
    elif name in ("start", "resume"):
        sources = open_roles(config)
        vocabulary = _vocabulary(config, work, sources["train"])
        data = _training_data(config, sources, vocabulary)
        data.train[resume_step if name == "resume" else 0]
        result["batches_per_epoch"] = len(data.train)
    elif name == "loader":
        from train.data.run_data import token_budget_batches, training_store

        sources = open_roles(config, ["train"])
        vocabulary = _vocabulary(config, work, sources["train"])
        store = training_store(config, sources["train"], vocabulary, log=None)
        for mode in ("bucketed", "packed"):
            for tokens in (4096, 25_000):
                batches = token_budget_batches(
                    mode, store, max_length=config.max_length, batch_tokens=tokens,
                    pad_id=vocabulary.pad_id, bos_id=vocabulary.bos_id, seed=0,
                )  # fmt: skip
                batches[resume_step]  # the epoch's permutation / packing, once per epoch
                mark, targets = time.perf_counter(), 0
                for step in range(resume_step, resume_step + loader_steps):
                    targets += int((batches[step]["target"] != vocabulary.pad_id).sum())
                seconds = time.perf_counter() - mark
                result[f"{mode}_{tokens}"] = (loader_steps / seconds, targets / seconds)
    result["seconds"] = time.perf_counter() - start
    result["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # The memory-mapped store's pages count in RSS but are file-backed (the page cache, shared
    # by every process reading the store, dropped under pressure): show them apart.
    status = Path("/proc/self/status")
    if status.exists():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        for key in ("RssAnon", "RssFile"):
            result[key] = int(fields[key].split()[0]) / 2**20
    return result


def _rss(result: dict) -> str:
    text = f"{result['rss_gb']:.2f} GB"
    if "RssAnon" in result:
        text += f" (at the end: {result['RssAnon']:.2f} anonymous, {result['RssFile']:.2f} file)"
    return text


def run_phase(name: str, corpus: Path, work: Path, args: argparse.Namespace, code: Path) -> dict:
    command = [
        sys.executable, __file__, "--phase", name, "--corpus", str(corpus), "--work", str(work),
        "--resume-step", str(args.resume_step), "--loader-steps", str(args.loader_steps),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(code), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=code)
    if done.returncode:
        raise RuntimeError(f"phase {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="29000,1000000")
    parser.add_argument("--dir", default="", help="where corpora go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and stores")
    parser.add_argument("--resume-step", type=int, default=200_000)
    parser.add_argument("--loader-steps", type=int, default=100)
    parser.add_argument("--old", default="", help="a checkout of earlier code to compare")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = phase(
            args.phase, Path(args.corpus), Path(args.work), args.resume_step, args.loader_steps
        )
        print(json.dumps(result))
        return
    root = Path(args.dir or tempfile.mkdtemp(prefix="data_benchmark-"))
    for pairs in (int(p) for p in args.pairs.split(",")):
        corpus, work = root / f"corpus-{pairs}", root / f"work-{pairs}"
        mark = time.perf_counter()
        if not (corpus / "train.de").exists():
            write_corpus(corpus, pairs)
        print(f"\n## {pairs:,} pairs (corpus written in {time.perf_counter() - mark:.0f} s)\n")
        print("| phase | time / throughput | peak RSS |\n|---|---|---|", flush=True)

        def row(*cells: str) -> None:
            print("| " + " | ".join(cells) + " |", flush=True)

        tfds = run_phase("tfds", corpus, work, args, REPOSITORY)
        row("prepare: TFDS (text files -> ArrayRecord)", f"{tfds['seconds']:.1f} s",
            f"{tfds['rss_gb']:.2f} GB")  # fmt: skip
        tokenizer = run_phase("tokenizer", corpus, work, args, REPOSITORY)
        row("prepare: tokenizer training", f"{tokenizer['train_s']:.1f} s",
            f"{tokenizer['rss_gb']:.2f} GB")  # fmt: skip
        store = run_phase("store", corpus, work, args, REPOSITORY)
        row(f"prepare: token store ({store['pairs']:,} pairs)", f"{store['build_s']:.1f} s",
            f"{store['rss_gb']:.2f} GB (the building process)")  # fmt: skip
        for name in ("start", "resume"):
            result = run_phase(name, corpus, work, args, REPOSITORY)
            label = "start-up to batch 0" if name == "start" else f"resume at {args.resume_step:,}"
            row(label, f"{result['seconds']:.1f} s", _rss(result))
            if args.old:
                old = run_phase(name, corpus, work, args, Path(args.old))
                row(f"{label} (before)", f"{old['seconds']:.1f} s", f"{old['rss_gb']:.2f} GB")
        loader = run_phase("loader", corpus, work, args, REPOSITORY)
        for key, value in loader.items():
            if not isinstance(value, list):
                continue
            (mode, budget), (per_second, tokens) = key.split("_"), value
            row(f"loader {mode} {int(budget):,} tokens",
                f"{per_second:.0f} batches/s, {tokens:,.0f} target tokens/s",
                _rss(loader))  # fmt: skip
    if not args.keep and not args.dir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
