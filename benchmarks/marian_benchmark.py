"""MarianMT decoding, ours against CTranslate2 and Hugging Face: sentences/s and peak memory.

    pip install -e '.[benchmarks]'   # torch (CPU build) and transformers; ctranslate2
    python benchmarks/marian_benchmark.py
    python benchmarks/marian_benchmark.py --implementations ours ctranslate2 --methods beam4
    python benchmarks/marian_benchmark.py --implementations ours ctranslate2 --repeats 3

One random-weight model of opus-mt-en-de's size (d_model 512, 6+6 layers, 8 heads, d_ff 2048,
vocabulary 58,101, SiLU, scaled embeddings), made with transformers' MarianMTModel, saved,
and converted with `flax_transformer.interop.marian.load_marian` and with CTranslate2's
`TransformersConverter` (float32): every implementation computes with the same weights.
Sources: the first `--sentences` (greedy, default 256) or `--beam-sentences` (beam4, default
128) English sentences of Multi30k test2016 (--data), tokenized with a Marian-style tokenizer
trained on Multi30k train (7,000 pieces per language; opus-mt's own tokenizer is not available
offline), with eos appended, sorted by length and cut into batches of `--batch` (default 64).
So that all run the same number of steps, eos is unreachable (its embedding row, which the tied
output projection also uses, is zero): this measures decoding speed, not translation. Ours
stops each row at min(--max-new, source length + 50) (the paper's rule, see
`flax_transformer.decoding`), so a batch runs to its longest row's limit; the others are told
to generate exactly that many tokens per batch (min = max length), the same work. Under the
tables: the fraction of output positions where each implementation's tokens equal ours, and,
since random weights give outputs that repeat a few tokens, the largest difference between our
and CTranslate2's log-probabilities of varied targets: both show they compute the same model.

Each (implementation, method) runs in its own process: its peak resident memory (VmHWM,
framework and weights included) is that row's, and beside it the peak once the model is loaded
(on the device, for ours) and before anything is compiled or decoded. Ours:
`ft.greedy_decode` / `ft.beam_search` (key/value cache; sources padded to a few bucket lengths,
each shape compiled ahead of time with `jit(...).lower(...).compile()` before timing: the
compile column; with --warm-cache a second
row loads them from JAX's persistent compilation cache, filled by an unmeasured run, as
`train.translate` does by default: XLA's compiler then adds nothing to the peak). CTranslate2:
`Translator.translate_batch(beam_size=1 or 4)` on the token strings of the converted vocabulary
(id i is its i-th token), once with each of its CPU backends on this machine: `CT2_USE_MKL=1`
(Intel MKL, which CTranslate2 uses unasked only on Intel CPUs) and `CT2_USE_MKL=0` (its
default elsewhere: oneDNN and its own kernels); `--ct2-mkl` picks one. Which is faster varies
from run to run on an AMD CPU, so ours is compared with the faster one of each method.
Hugging Face: `model.generate(num_beams=1 or 4,
do_sample=False)` under `torch.inference_mode()`, sources padded per batch. All use every core
this process may run on (`taskset` narrows them), or the GPU where there is one (then the last
column is each framework's own peak GPU allocation; CTranslate2 reports none). Without
ctranslate2 installed, its rows say so. With `--repeats N` each row runs N times, the rows of
a method taking turns so that a slow spell of the machine hits them alike, and the tables give
the medians (decode s with its range). Asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
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
EXTRA_OUTPUT_LENGTH = 50  # the paper's source length + 50 (flax_transformer.checks)
IMPLEMENTATIONS = ("ours", "ctranslate2", "hugging_face")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


CT2_BACKENDS = {"1": "ctranslate2 (MKL)", "0": "ctranslate2 (no MKL)"}


def import_ctranslate2():
    """ctranslate2, with CT2_USE_MKL=1 unless the environment sets it (read at import)."""
    os.environ.setdefault("CT2_USE_MKL", "1")
    import ctranslate2

    return ctranslate2


def make_model(directory: Path) -> None:
    """A random opus-mt-en-de-sized MarianMTModel in `directory`, eos unreachable."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    model = MarianMTModel(MarianConfig(**OPUS_MT_EN_DE)).eval()
    with torch.no_grad():
        model.model.shared.weight[OPUS_MT_EN_DE["eos_token_id"]] = 0.0
        # The decoder starts from the pad id; its row is zero in opus-mt, and CTranslate2
        # starts from a zero embedding instead.
        model.model.shared.weight[OPUS_MT_EN_DE["pad_token_id"]] = 0.0
    model.save_pretrained(directory)


def make_sources(data: Path, directory: Path, count: int) -> list[list[int]]:
    from train.data.tokenizer_training import write_marian_tokenizer_files

    english = (data / "train.en").read_text(encoding="utf-8").splitlines()
    german = (data / "train.de").read_text(encoding="utf-8").splitlines()
    tokenizer = write_marian_tokenizer_files(directory, english, german, vocab_size=7000)
    test = (data / "test2016.en").read_text(encoding="utf-8").splitlines()[:count]
    return [[*tokenizer.encode(line), tokenizer.eos_id] for line in test]


def convert_for_ctranslate2(model_dir: Path, tokenizer_dir: Path, out_dir: Path) -> None:
    """CTranslate2's float32 conversion of the model in `model_dir`, written to `out_dir`.

    The converter takes the vocabulary from the model directory's tokenizer, so the tokenizer's
    files go there first, its vocabulary filled with unused pieces up to the model's ids and
    `<pad>` last, as in opus-mt (the converter drops that one). Checked: token i of the
    converted vocabulary is id i.
    """
    ctranslate2 = import_ctranslate2()
    pieces = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    vocabulary = sorted((piece for piece in pieces if piece != "<pad>"), key=pieces.get)
    size = OPUS_MT_EN_DE["vocab_size"] - 1
    vocabulary += [f"<unused{i}>" for i in range(size - len(vocabulary))]
    vocab = {piece: i for i, piece in enumerate([*vocabulary, "<pad>"])}
    for name in ("source.spm", "target.spm"):
        shutil.copy(tokenizer_dir / name, model_dir / name)
    (model_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with warnings.catch_warnings():  # the Marian tokenizer recommends sacremoses: not used here
        warnings.simplefilter("ignore")
        converter = ctranslate2.converters.TransformersConverter(str(model_dir))
        converter.convert(str(out_dir), quantization=None)
    converted = json.loads((out_dir / "shared_vocabulary.json").read_text(encoding="utf-8"))
    if converted != vocabulary:
        sys.exit("CTranslate2's converted vocabulary is not the model's ids in order")


def batches_of(sources: list[list[int]], batch: int) -> list[list[list[int]]]:
    ordered = sorted(sources, key=len)
    return [ordered[i : i + batch] for i in range(0, len(ordered), batch)]


def decoding_steps(rows: list[list[int]], max_new: int) -> int:
    """The steps ours runs on this batch: its longest row's limit, min(max_new, length + 50)."""
    return min(max_new, max(map(len, rows)) + EXTRA_OUTPUT_LENGTH)


def padded(rows: list[list[int]], length: int, pad_id: int) -> np.ndarray:
    array = np.full((len(rows), length), pad_id, np.int32)
    for i, row in enumerate(rows):
        array[i, : len(row)] = row
    return array


def run_ours(sources: list[list[int]], method: str, args) -> dict:
    import jax

    import flax_transformer as ft
    from flax_transformer.interop.marian import load_marian

    if args.compilation_cache:
        from train import compilation_cache

        compilation_cache.enable(args.compilation_cache)
    checkpoint = load_marian(args.model_dir)
    config, params = checkpoint.config, jax.block_until_ready(jax.device_put(checkpoint.params))
    load_peak = peak_rss_mib()
    common = dict(
        bos_id=checkpoint.decoder_start_id,
        eos_id=checkpoint.eos_id,
        max_length=args.max_new,
        check_inputs=False,
    )
    del checkpoint  # its host copy of the weights would count in this row's peak memory

    device = jax.devices()[0]

    @jax.jit
    def decode(params, source):
        if method == "greedy":
            return ft.greedy_decode(config, params, source, **common)
        return ft.beam_search(config, params, source, beam_size=4, **common)[0][:, 0]

    inputs = []
    for rows in batches_of(sources, args.batch):
        length = next(b for b in BUCKETS if b >= max(map(len, rows)))
        inputs.append(padded(rows, length, config.pad_id))
    start = time.perf_counter()  # compile every shape ahead of time: XLA's work alone
    compiled = {
        shape: decode.lower(params, jax.ShapeDtypeStruct(shape, np.int32)).compile()
        for shape in sorted({x.shape for x in inputs})
    }
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    outputs = [jax.block_until_ready(compiled[x.shape](params, x)) for x in inputs]
    seconds = time.perf_counter() - start
    stats = device.memory_stats() if device.platform == "gpu" else None
    peak = stats["peak_bytes_in_use"] / 2**20 if stats else None
    # The pad id is never generated: it only fills a row after its limit.
    tokens = [[t for t in row if t != config.pad_id] for out in outputs for row in out.tolist()]
    return {
        "seconds": seconds,
        "compile_s": compile_s,
        "gpu_peak_mib": peak,
        "load_peak_mib": load_peak,
        "tokens": tokens,
    }


def run_ctranslate2(sources: list[list[int]], method: str, args) -> dict:
    ctranslate2 = import_ctranslate2()
    vocabulary = json.loads((Path(args.ct2_dir) / "shared_vocabulary.json").read_text())
    index = {token: i for i, token in enumerate(vocabulary)}
    translator = ctranslate2.Translator(
        args.ct2_dir,
        device="cuda" if ctranslate2.get_cuda_device_count() else "cpu",
        compute_type="float32",
        intra_threads=CORES,
        inter_threads=1,
    )
    load_peak = peak_rss_mib()
    batches = batches_of(sources, args.batch)
    inputs = [[[vocabulary[i] for i in row] for row in rows] for rows in batches]
    options = dict(beam_size=1 if method == "greedy" else 4, max_batch_size=args.batch)
    options["return_scores"] = False
    translator.translate_batch(inputs[0][:1], max_decoding_length=2, **options)  # warm-up
    start = time.perf_counter()
    outputs = []
    for rows, strings in zip(batches, inputs, strict=True):
        steps = decoding_steps(rows, args.max_new)
        options.update(max_decoding_length=steps, min_decoding_length=steps)
        outputs.extend(translator.translate_batch(strings, **options))
    seconds = time.perf_counter() - start
    tokens = [[index[token] for token in output.hypotheses[0]] for output in outputs]
    return {
        "seconds": seconds,
        "compile_s": None,
        "gpu_peak_mib": None,
        "load_peak_mib": load_peak,
        "tokens": tokens,
    }


def run_hugging_face(sources: list[list[int]], method: str, args) -> dict:
    import torch
    from transformers import MarianMTModel

    torch.set_num_threads(CORES)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = MarianMTModel.from_pretrained(args.model_dir).eval().to(device)
    load_peak = peak_rss_mib()
    pad = model.config.pad_token_id
    outputs = []
    start = time.perf_counter()
    with torch.inference_mode():
        for rows in batches_of(sources, args.batch):
            source = torch.tensor(padded(rows, max(map(len, rows)), pad), dtype=torch.long)
            source = source.to(device)
            steps = decoding_steps(rows, args.max_new)
            output = model.generate(
                input_ids=source,
                attention_mask=(source != pad).long(),
                num_beams=1 if method == "greedy" else 4,
                do_sample=False,
                max_new_tokens=steps,
                min_new_tokens=steps,
                forced_eos_token_id=None,  # the config's forces eos as the last token
            )
            outputs.append(output[:, 1:])  # without the decoder start token
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    tokens = [row for output in outputs for row in output.tolist()]
    return {
        "seconds": seconds,
        "compile_s": None,
        "gpu_peak_mib": peak,
        "load_peak_mib": load_peak,
        "tokens": tokens,
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM where there is /proc. Not Linux's ru_maxrss,
    which a process started by `subprocess` (vfork and exec) inherits from its parent."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def worker(args) -> None:
    """One (implementation, method) in this process; prints a JSON line."""
    sources = json.loads(Path(args.sources_file).read_text())[: args.sentences]
    run = {"ours": run_ours, "ctranslate2": run_ctranslate2, "hugging_face": run_hugging_face}
    result = run[args.implementation](sources, args.method, args)
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> str:
    """How many of our output positions hold the same token in theirs (rows in one order)."""
    same = 0
    for our_row, their_row in zip(ours, theirs, strict=True):
        same += sum(a == b for a, b in zip(our_row, their_row, strict=False))
    total, their_total = sum(map(len, ours)), sum(map(len, theirs))
    distinct = len({token for row in ours for token in row})
    return (
        f"{same / total:.1%} of our {total:,} output tokens identical "
        f"(theirs: {their_total:,} tokens; ours has {distinct:,} distinct)"
    )


def log_prob_difference(model_dir: Path, ct2_dir: Path, sources: list[list[int]]) -> str:
    """The largest difference between our and CTranslate2's teacher-forced log-probabilities
    of the tokens of a few targets (each source's next sentence, eos included): random weights
    give greedy outputs that repeat a few tokens, these are varied ones."""
    import flax_transformer as ft
    from flax_transformer.interop.marian import load_marian

    pairs = list(zip(sources[:8], sources[1:9], strict=False))
    checkpoint = load_marian(model_dir)
    config, pad = checkpoint.config, checkpoint.config.pad_id
    decoder_input = [[checkpoint.decoder_start_id, *target[:-1]] for _, target in pairs]
    logits = ft.forward(
        config,
        checkpoint.params,
        padded([source for source, _ in pairs], max(map(len, sources[:8])), pad),
        padded(decoder_input, max(map(len, decoder_input)), pad),
    )
    logits = np.delete(np.asarray(logits, np.float64), pad, axis=-1)  # CT2 has no pad token
    ours = logits - np.log(np.exp(logits).sum(-1, keepdims=True))

    vocabulary = json.loads((ct2_dir / "shared_vocabulary.json").read_text(encoding="utf-8"))
    ctranslate2 = import_ctranslate2()
    translator = ctranslate2.Translator(str(ct2_dir), compute_type="float32", intra_threads=CORES)
    strings = [[[vocabulary[i] for i in row] for row in pair] for pair in pairs]
    scored = translator.score_batch(
        [source for source, _ in strings], [target[:-1] for _, target in strings]
    )
    differences = [
        abs(ours[row, position, token] - log_prob)
        for row, ((_, target), result) in enumerate(zip(pairs, scored, strict=True))
        for position, (token, log_prob) in enumerate(zip(target, result.log_probs, strict=True))
    ]
    return (
        f"largest |difference| of teacher-forced log-probabilities, ours and CT2: "
        f"{max(differences):.1e} over {len(differences)} tokens"
    )


def run_worker(args, scratch: Path, implementation, method, counts, cached, mkl) -> dict | str:
    """One measured run of a row in a fresh process: its result, or the end of its stderr."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        f"--implementation={implementation}",
        f"--method={method}",
        f"--model-dir={scratch / 'model'}",
        f"--ct2-dir={scratch / 'ct2'}",
        f"--sources-file={scratch / 'sources.json'}",
        f"--sentences={counts[method]}",
        f"--batch={args.batch}",
        f"--max-new={args.max_new}",
    ]
    if cached:  # a first, unmeasured run fills the cache; the measured one loads from it
        command.append(f"--compilation-cache={scratch / f'jax-cache-{method}'}")
        subprocess.run(command, capture_output=True, check=False)
    environment = None if mkl is None else {**os.environ, "CT2_USE_MKL": mkl}
    output = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if output.returncode != 0:
        return output.stderr[-300:]
    return json.loads(output.stdout.strip().splitlines()[-1])


def median_result(runs: list[dict]) -> dict:
    """The first run's outputs, with the medians over all runs of its times and peak memory."""
    result = dict(runs[0])
    for key in ("seconds", "peak_rss_mib", "load_peak_mib", "compile_s", "gpu_peak_mib"):
        values = [run[key] for run in runs if run[key] is not None]
        result[key] = float(np.median(values)) if values else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sentences", type=int, default=256, help="for greedy")
    parser.add_argument("--beam-sentences", type=int, default=128, help="for beam4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-new", type=int, default=64)
    parser.add_argument(
        "--methods", nargs="+", choices=["greedy", "beam4"], default=["greedy", "beam4"]
    )
    parser.add_argument(
        "--implementations", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS)
    )
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="add a row for ours with a warm persistent compilation cache (as train.translate "
        "runs by default): one unmeasured run fills the cache, the next is measured",
    )
    parser.add_argument(
        "--ct2-mkl",
        choices=["1", "0", "both"],
        default="both",
        help="CTranslate2's CT2_USE_MKL: a row for each value by default",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every row this many times, the rows of a method taking turns, and report "
        "medians (with the range of decode times): single runs move by about 10%% here",
    )
    parser.add_argument("--compilation-cache", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--implementation", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--ct2-dir", help=argparse.SUPPRESS)
    parser.add_argument("--sources-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    if args.worker:
        worker(args)
        return
    if not (args.data / "test2016.en").exists():
        sys.exit(f"Multi30k not found at {args.data}: pass --data DIR (or set MULTI30K_DIR)")
    if importlib.util.find_spec("transformers") is None:
        sys.exit("the model is made with transformers: pip install -e '.[benchmarks]'")
    missing = {}  # transformers makes the model, so only CTranslate2 can be missing
    if "ctranslate2" in args.implementations and importlib.util.find_spec("ctranslate2") is None:
        missing["ctranslate2"] = "ctranslate2 not installed (pip install -e '.[benchmarks]')"
    counts = {"greedy": args.sentences, "beam4": args.beam_sentences}

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        make_model(scratch / "model")
        count = max(counts[method] for method in args.methods)
        sources = make_sources(args.data, scratch / "tokenizer", count)
        (scratch / "sources.json").write_text(json.dumps(sources))
        if "ctranslate2" in args.implementations and "ctranslate2" not in missing:
            convert_for_ctranslate2(scratch / "model", scratch / "tokenizer", scratch / "ct2")
        lengths = [len(s) for s in sources]
        print(
            f"Multi30k test2016 sources ({', '.join(f'{counts[m]} for {m}' for m in args.methods)})"
            f", {np.mean(lengths):.1f} tokens on average (max {max(lengths)}), batches of "
            f"{args.batch}, up to {args.max_new} new tokens each; CPU cores: {CORES}\n"
        )
        print(
            "| implementation | method | compile s | decode s | sentences/s | "
            "peak memory MiB (process) | peak MiB once loaded | peak GPU memory MiB |"
        )
        print("|---|---|---|---|---|---|---|---|")
        results = {}
        # (implementation, warm compilation cache, CT2_USE_MKL)
        rows = []
        for implementation in args.implementations:
            if implementation == "ctranslate2":
                mkl = ["1", "0"] if args.ct2_mkl == "both" else [args.ct2_mkl]
                rows += [(implementation, False, value) for value in mkl]
            else:
                warm = [False, True] if implementation == "ours" and args.warm_cache else [False]
                rows += [(implementation, cached, None) for cached in warm]
        for method in args.methods:
            runs: dict[str, list[dict]] = {}
            failures: dict[str, str] = {}
            for _ in range(args.repeats):  # the rows take turns: slow spells hit them alike
                for implementation, cached, mkl in rows:
                    name = f"{implementation} (warm cache)" if cached else implementation
                    name = CT2_BACKENDS[mkl] if mkl is not None else name
                    if implementation in missing:
                        failures[name] = missing[implementation]
                        continue
                    if name in failures:
                        continue
                    result = run_worker(args, scratch, implementation, method, counts, cached, mkl)
                    if isinstance(result, str):  # the row is reported failed, not half-measured
                        failures[name] = f"failed: {result!r}"
                        runs.pop(name, None)
                        continue
                    runs.setdefault(name, []).append(result)
            for name, message in failures.items():
                print(f"| {name} | {method} | {message} |")
            for name, repeated in runs.items():
                result = median_result(repeated)
                result["sentences_per_s"] = min(counts[method], len(sources)) / result["seconds"]
                results[name, method] = result
                compile_s, gpu = result["compile_s"], result["gpu_peak_mib"]
                seconds = f"{result['seconds']:.1f}"
                if len(repeated) > 1:
                    times = [run["seconds"] for run in repeated]
                    seconds += f" ({min(times):.1f}-{max(times):.1f})"
                print(
                    f"| {name} | {method} | "
                    f"{'-' if compile_s is None else format(compile_s, '.1f')} | "
                    f"{seconds} | {result['sentences_per_s']:.1f} | "
                    f"{result['peak_rss_mib']:,.0f} | {result['load_peak_mib']:,.0f} | "
                    f"{'-' if gpu is None else format(gpu, ',.0f')} |",
                    flush=True,
                )
        for method in args.methods:  # the faster CTranslate2 backend of each method
            backends = [results[n, method] for n in CT2_BACKENDS.values() if (n, method) in results]
            if backends:
                results["ctranslate2", method] = max(backends, key=lambda r: r["sentences_per_s"])
        if ("ours", "greedy") in results and ("ctranslate2", "greedy") in results:
            log_prob_check = log_prob_difference(scratch / "model", scratch / "ct2", sources)
        else:
            log_prob_check = None

    both = [m for m in args.methods if ("ours", m) in results and ("ctranslate2", m) in results]
    if both:
        print("\nCT2: the faster of its rows for each method.")
        print("\n| method | ours / CT2 speed | ours / CT2 peak memory |\n|---|---|---|")
        for method in both:
            ours, ct2 = results["ours", method], results["ctranslate2", method]
            print(
                f"| {method} | {ours['sentences_per_s'] / ct2['sentences_per_s']:.2f}x | "
                f"{ours['peak_rss_mib'] / ct2['peak_rss_mib']:.2f}x |"
            )
    warm = [m for m in both if ("ours (warm cache)", m) in results]
    if warm:
        print("\n| method | ours (warm cache) / CT2 speed | ours (warm cache) / CT2 peak memory |")
        print("|---|---|---|")
        for method in warm:
            ours, ct2 = results["ours (warm cache)", method], results["ctranslate2", method]
            print(
                f"| {method} | {ours['sentences_per_s'] / ct2['sentences_per_s']:.2f}x | "
                f"{ours['peak_rss_mib'] / ct2['peak_rss_mib']:.2f}x |"
            )
    print()
    for (implementation, method), theirs in results.items():
        if implementation in CT2_BACKENDS.values() or implementation == "hugging_face":
            if ("ours", method) not in results:
                continue
            same = agreement(results["ours", method]["tokens"], theirs["tokens"])
            print(f"{method}, {implementation} against ours: {same}")
    if log_prob_check:
        print(log_prob_check)


if __name__ == "__main__":
    main()
