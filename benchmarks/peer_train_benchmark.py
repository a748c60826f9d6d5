"""Training step, ours against eager PyTorch and the Flax WMT example's model. Prints a table.

    pip install -e '.[benchmarks]'                    # torch (CPU build), for the PyTorch rows
    git clone https://github.com/google/flax /tmp/flax  # the Flax WMT example, read at run time
    python benchmarks/peer_train_benchmark.py --flax-wmt /tmp/flax/examples/wmt/models.py
    python benchmarks/peer_train_benchmark.py --flax-repo /tmp/flax --sizes small --steps 10
    taskset -c 1 python benchmarks/peer_train_benchmark.py --flax-repo /tmp/flax   # one core
    python benchmarks/peer_train_benchmark.py --sizes small --huge-pages none

Three implementations of one encoder-decoder training step, float32, at two sizes:

    small  d_model 256, 3+3 layers, 4 heads, d_ff 1024, vocab 8,000, batch 64 x 32 tokens
    base   d_model 512, 6+6 layers, 8 heads, d_ff 2048, vocab 32,000, batch 32 x 64 tokens

(source and target both that long; `--batch` / `--length` override both sizes). The shapes are
those of our presets ("small", "base") with that vocabulary; the peers are built from them.
One random right-padded batch per size, made once by `train_benchmark.random_batch` (NumPy seed
0) and fed to every implementation: token ids in [4, vocab), lengths uniform in [L/2, L], pad 0,
decoder input = target shifted right with bos 1. Every step: forward in train mode (dropout 0.1
on embeddings + positions and on each sub-layer output, none on attention weights), label-
smoothed (0.1) cross-entropy averaged over the non-pad targets, backward, Adam (b1 0.9, b2
0.98, eps 1e-9) update. Source embedding = target embedding = output projection in all three.

- ours: `ft.DataParallel("single").train_step` (jitted, donated state) on
  `ft.create_train_state` with `ft.make_optimizer(ft.transformer_schedule(d_model, 4000))`.
  Post-LN, the paper's model. Run as `python -m train` runs it: compiled ahead of its first step,
  then the compiler's freed memory handed back (`train.heap.compile_before_running`).
- torch: `torch.nn.Transformer(..., dropout=0.1, batch_first=True)`, post-LN (norm_first=False)
  like ours, eager (no torch.compile), with a shared `nn.Embedding` scaled by sqrt(d_model),
  sinusoidal positions, the tied output projection, source / target key-padding masks and the
  causal mask, `F.cross_entropy(label_smoothing=0.1, ignore_index=0)` and `torch.optim.Adam`.
  Made to compute our model: the attention dropout and the dropout inside the feed-forward
  block are off, and the LayerNorm that nn.Transformer adds after each stack is removed.
  `torch.set_num_threads(cores this process may use)`. Only where torch imports.
- flax_wmt: the `Transformer` of the Flax WMT example (`examples/wmt/models.py` of
  google/flax, read at run time from `--flax-wmt FILE` or from `HEAD` of the git repository
  `--flax-repo DIR`; never copied into this repository) with share_embeddings and
  logits_via_embedding, attention_dropout_rate 0, one `num_layers` for both stacks, and a train
  step written here after the example's `train.py`: the model shifts the targets right itself
  (with 0 as bos), the loss is the example's (1 - eps on the target, eps / (V - 1) on each other
  token, less the smoothed distribution's entropy), jitted with the state donated, on one device
  (the example pmaps the same step), `optax.adam`. The model is the example's own, so it differs
  from ours by construction: pre-LN (LayerNorm before each sub-layer and after each stack), a
  dropout inside each feed-forward block, embeddings not scaled (the logits are divided by
  sqrt(d_model) instead), no biases in the attention projections.

Memory pages: `--huge-pages all` (the default) starts every worker with glibc's tunable
`glibc.malloc.hugetlb=1`, as `python -m train` starts itself (see `train.huge_pages`: large
blocks get 2 MiB pages, so the kernel does not fault and zero 4 KiB pages of every step's fresh
buffers); `ours` gives it to ours alone, as each is started by default (ours by its command,
the peers plainly); `none` to no one. The header says whether this machine honours it (Linux,
glibc >= 2.35, transparent huge pages in madvise mode).

The peers use a constant learning rate, ours its schedule: a few scalar operations per step.
Each (size, implementation, repeat) runs in its own process, repeats interleaved, so its peak
resident memory (ru_maxrss: framework, weights, optimizer state, compiled code) is that run's.
A run times its first step (for JAX that is tracing and compiling: the "first step" column),
one more warm-up step, then `--steps` steps one by one, each waited for (block_until_ready on
the new state; loss.item() in torch). A row gives the median over all timed steps of its
repeats (and each repeat's median), non-pad target tokens per second at that median, the
largest peak RSS of its repeats, and ours relative to that peer: speed = the peer's median step
/ ours, RSS = ours / the peer's. Asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMPLEMENTATIONS = ("ours", "torch", "flax_wmt")
SIZES = {  # preset, vocabulary, batch rows, tokens per source and per target
    "small": dict(preset="small", vocab_size=8000, batch=64, length=32),
    "base": dict(preset="base", vocab_size=32000, batch=32, length=64),
}
WARMUP_STEPS = 2  # the first is the "first step" column
PEER_LEARNING_RATE = 5e-4
WMT_MODELS_PATH = "examples/wmt/models.py"
TORCH_MISSING = "torch not installed (pip install -e '.[benchmarks]')"
FLAX_WMT_MISSING = (
    "Flax WMT model not given: git clone https://github.com/google/flax DIR, then pass "
    "--flax-repo DIR (or --flax-wmt DIR/examples/wmt/models.py)"
)


def available_cores() -> int:
    """The cores this process may run on (what `taskset` allows), else all of the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Workers: one (size, implementation, repeat) per process. Each runner returns a `step()` that
# runs one training step, waits for it and returns the step's loss. Frameworks are imported
# inside the runners so that a process holds only its own.
# ---------------------------------------------------------------------------------------------
def make_ours_step(shapes: dict, batch: dict[str, np.ndarray], wmt_models: str | None):
    import jax

    import flax_transformer as ft
    from train import heap

    config = ft.TransformerConfig.preset(shapes["preset"], vocab_size=shapes["vocab_size"])
    parallel = ft.DataParallel("single", model_config=config)
    optimizer = ft.make_optimizer(ft.transformer_schedule(config.d_model, 4000))
    state = parallel.put_state(ft.create_train_state(config, optimizer, jax.random.key(0)))
    device_batch = parallel.put_batch(batch)
    compiled = False

    def step() -> float:
        nonlocal state, compiled
        if not compiled:  # inside the first step's time, like the compile it is
            heap.compile_before_running(parallel.train_step, state, device_batch)
            compiled = True
        state, metrics = parallel.train_step(state, device_batch)
        jax.block_until_ready(state)
        return float(metrics["loss_sum"] / metrics["tokens"])

    return step


def sinusoids(length: int, d_model: int) -> np.ndarray:
    """The paper's positional encodings [length, d_model]: sin on even dimensions, cos on odd."""
    angles = np.arange(length)[:, None] / 10000.0 ** (np.arange(0, d_model, 2) / d_model)
    table = np.zeros((length, d_model), np.float32)
    table[:, 0::2], table[:, 1::2] = np.sin(angles), np.cos(angles)
    return table


def make_torch_step(shapes: dict, batch: dict[str, np.ndarray], wmt_models: str | None):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(available_cores())
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    d_model, pad_id = shapes["d_model"], shapes["pad_id"]

    class TorchTransformer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(shapes["vocab_size"], d_model)
            torch.nn.init.normal_(self.embedding.weight, std=d_model**-0.5)
            self.transformer = torch.nn.Transformer(
                d_model,
                shapes["num_heads"],
                shapes["num_encoder_layers"],
                shapes["num_decoder_layers"],
                shapes["d_ff"],
                dropout=shapes["dropout_rate"],
                batch_first=True,
            )
            # Our model (the paper's): no LayerNorm after a post-LN stack, no dropout on the
            # attention weights or inside the feed-forward block (only on sub-layer outputs).
            self.transformer.encoder.norm = None
            self.transformer.decoder.norm = None
            for layer in [*self.transformer.encoder.layers, *self.transformer.decoder.layers]:
                layer.dropout = torch.nn.Identity()
                for attention in (layer.self_attn, getattr(layer, "multihead_attn", None)):
                    if attention is not None:
                        attention.dropout = 0.0
            self.dropout = torch.nn.Dropout(shapes["dropout_rate"])
            positions = torch.from_numpy(sinusoids(shapes["max_len"], d_model))
            self.register_buffer("positions", positions, persistent=False)

        def embed(self, ids):
            scaled = self.embedding(ids) * math.sqrt(d_model)
            return self.dropout(scaled + self.positions[: ids.shape[1]])

        def forward(self, source, decoder_input):
            length = decoder_input.shape[1]
            causal = torch.ones(length, length, dtype=torch.bool, device=source.device).triu(1)
            hidden = self.transformer(
                self.embed(source),
                self.embed(decoder_input),
                tgt_mask=causal,
                src_key_padding_mask=source == pad_id,
                tgt_key_padding_mask=decoder_input == pad_id,
                memory_key_padding_mask=source == pad_id,
                tgt_is_causal=True,
            )
            return hidden @ self.embedding.weight.T  # the tied output projection

    model = TorchTransformer().to(device).train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=PEER_LEARNING_RATE, betas=(0.9, 0.98), eps=1e-9
    )
    source, decoder_input, target = (
        torch.from_numpy(batch[key]).long().to(device)
        for key in ("source", "decoder_input", "target")
    )

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        logits = model(source, decoder_input)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=pad_id,
            label_smoothing=0.1,
        )
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def load_module(path: str, name: str):
    """Import the Python file at `path` as module `name` (it is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def wmt_smoothed_loss_sum(logits, targets, weights, label_smoothing: float):
    """The WMT example's smoothed cross-entropy, summed over `weights` (logits [b, t, V]).

    The smoothed target puts 1 - eps on the target and eps / (V - 1) on every other token; the
    distribution's own entropy is subtracted, so that predicting it exactly scores 0.
    """
    import jax
    import jax.numpy as jnp

    vocab = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    off_target = label_smoothing / (vocab - 1)
    entropy = -(
        confidence * math.log(confidence) + (vocab - 1) * off_target * math.log(off_target + 1e-20)
    )
    smoothed = jax.nn.one_hot(targets, vocab) * (confidence - off_target) + off_target
    loss = -jnp.sum(smoothed * jax.nn.log_softmax(logits), axis=-1) - entropy
    return jnp.sum(loss * weights)


def make_flax_wmt_step(shapes: dict, batch: dict[str, np.ndarray], wmt_models: str | None):
    import jax
    import jax.numpy as jnp
    import optax
    from flax.training import train_state

    models = load_module(wmt_models, "flax_wmt_models")
    config = models.TransformerConfig(
        vocab_size=shapes["vocab_size"],
        output_vocab_size=shapes["vocab_size"],
        share_embeddings=True,
        logits_via_embedding=True,
        dtype=jnp.float32,
        emb_dim=shapes["d_model"],
        num_heads=shapes["num_heads"],
        num_layers=shapes["num_encoder_layers"],
        qkv_dim=shapes["d_model"],
        mlp_dim=shapes["d_ff"],
        max_len=shapes["max_len"],
        dropout_rate=shapes["dropout_rate"],
        attention_dropout_rate=0.0,
        deterministic=False,
        decode=False,
    )
    # The example feeds the targets, not a decoder input: its decoder shifts them right itself.
    source, target = jax.device_put(batch["source"]), jax.device_put(batch["target"])
    init_key, dropout_key = jax.random.split(jax.random.key(0))
    init_model = models.Transformer(config.replace(deterministic=True))  # init draws no dropout
    params = jax.jit(init_model.init)(init_key, source, target)["params"]
    tx = optax.adam(PEER_LEARNING_RATE, b1=0.9, b2=0.98, eps=1e-9)
    state = train_state.TrainState.create(
        apply_fn=models.Transformer(config).apply, params=params, tx=tx
    )

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, source, target, dropout_key):
        weights = (target > 0).astype(jnp.float32)
        key = jax.random.fold_in(dropout_key, state.step)

        def loss_fn(params):
            logits = state.apply_fn({"params": params}, source, target, rngs={"dropout": key})
            loss_sum = wmt_smoothed_loss_sum(logits, target, weights, label_smoothing=0.1)
            return loss_sum / jnp.sum(weights), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        correct = jnp.sum((jnp.argmax(logits, axis=-1) == target) * weights)  # as its metrics
        return state.apply_gradients(grads=grads), {"loss": loss, "correct": correct}

    def step() -> float:
        nonlocal state
        state, metrics = train_step(state, source, target, dropout_key)
        jax.block_until_ready(state)
        return float(metrics["loss"])

    return step


RUNNERS = {"ours": make_ours_step, "torch": make_torch_step, "flax_wmt": make_flax_wmt_step}


def worker(spec_file: str) -> None:
    """Run the (size, implementation) of `spec_file` in this process; print one JSON line."""
    spec = json.loads(Path(spec_file).read_text())
    with np.load(spec["batch_file"]) as arrays:
        batch = {key: arrays[key] for key in arrays.files}
    step = RUNNERS[spec["implementation"]](spec["shapes"], batch, spec["wmt_models"])
    start = time.perf_counter()
    first_loss = step()
    first_step_s = time.perf_counter() - start
    for _ in range(WARMUP_STEPS - 1):
        step()
    step_s = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        last_loss = step()
        step_s.append(time.perf_counter() - start)
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    result = dict(first_step_s=first_step_s, step_s=step_s, peak_rss_gib=peak_rss_gib)
    print(json.dumps({**result, "first_loss": first_loss, "last_loss": last_loss}))


# ---------------------------------------------------------------------------------------------
# The parent: batches, the peers' sources, one worker process per run, the table.
# ---------------------------------------------------------------------------------------------
def flax_wmt_models(args, scratch: Path) -> tuple[str | None, str]:
    """The path of the Flax WMT `models.py` to load (None if not given) and where it came from."""
    if args.flax_wmt is not None:
        if not args.flax_wmt.is_file():
            sys.exit(f"--flax-wmt {args.flax_wmt}: no such file")
        return str(args.flax_wmt), str(args.flax_wmt)
    if args.flax_repo is None:
        return None, "not given"
    git_dir = args.flax_repo / ".git" if (args.flax_repo / ".git").exists() else args.flax_repo
    git = ["git", f"--git-dir={git_dir}"]
    shown = subprocess.run([*git, "show", f"HEAD:{WMT_MODELS_PATH}"], capture_output=True)
    if shown.returncode != 0:
        message = (shown.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        sys.exit(f"--flax-repo {args.flax_repo}: cannot read HEAD:{WMT_MODELS_PATH}: {message}")
    commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True)
    path = scratch / "flax_wmt" / "models.py"
    path.parent.mkdir()
    path.write_bytes(shown.stdout)
    return str(path), f"google/flax {commit.stdout.decode().strip()}:{WMT_MODELS_PATH}"


def run_worker(spec: dict, scratch: Path, huge_pages: bool) -> dict | str:
    """One worker process, with glibc's huge-page tunable or without; its JSON result, or a
    one-line reason it failed."""
    from train.huge_pages import with_tunable, without_tunable

    name = f"{spec['size']}-{spec['implementation']}-{spec['repeat']}"
    spec_file = scratch / f"{name}.json"
    spec_file.write_text(json.dumps(spec))
    command = [sys.executable, __file__, "--worker", str(spec_file)]
    # This process's own setting is not the worker's: the tunable goes in, or out.
    tunables = without_tunable(os.environ.get("GLIBC_TUNABLES"))
    environ = {**os.environ, "GLIBC_TUNABLES": with_tunable(tunables) if huge_pages else tunables}
    output = subprocess.run(command, capture_output=True, text=True, check=False, env=environ)
    if output.returncode != 0:
        lines = [line for line in output.stderr.splitlines() if line.strip()] or ["no output"]
        return f"failed (exit {output.returncode}): {lines[-1][-200:]}"
    return json.loads(output.stdout.strip().splitlines()[-1])


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def rows_of_size(size: str, results: dict[str, list[dict] | str], tokens: float) -> list[str]:
    """The table rows of one size: `results` maps implementation -> repeats' results or reason."""
    summary = {}
    for implementation, runs in results.items():
        if isinstance(runs, list):
            steps = [s for run in runs for s in run["step_s"]]
            summary[implementation] = dict(
                first_step_s=statistics.median(run["first_step_s"] for run in runs),
                step_s=statistics.median(steps),
                repeat_ms=[statistics.median(run["step_s"]) * 1000 for run in runs],
                peak_rss_gib=max(run["peak_rss_gib"] for run in runs),
            )
    ours = summary.get("ours")
    rows = []
    for implementation, runs in results.items():
        if implementation not in summary:
            rows.append(f"| {size} | {implementation} | {runs} | | | | | | |")
            continue
        row = summary[implementation]
        speed = rss = "-"
        if ours is not None and implementation != "ours":
            speed = f"{row['step_s'] / ours['step_s']:.2f}x"
            rss = f"{ours['peak_rss_gib'] / row['peak_rss_gib']:.2f}"
        cells = [
            size,
            implementation,
            f"{row['first_step_s']:.1f}",
            f"{row['step_s'] * 1000:.1f}",
            ", ".join(f"{ms:.1f}" for ms in row["repeat_ms"]),
            f"{tokens / row['step_s']:,.0f}",
            f"{row['peak_rss_gib']:.2f}",
            speed,
            rss,
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS)
    parser.add_argument("--batch", type=int, help="rows per batch, for every size")
    parser.add_argument("--length", type=int, help="source and target tokens, for every size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per implementation")
    parser.add_argument("--flax-wmt", type=Path, help="a google/flax examples/wmt/models.py")
    parser.add_argument("--flax-repo", type=Path, help="a google/flax git checkout or git dir")
    parser.add_argument(
        "--huge-pages",
        choices=["all", "ours", "none"],
        default="all",
        help="which workers start with glibc.malloc.hugetlb=1 (see the docstring)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    for name in ("batch", "steps", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.length is not None and args.length < 2:
        parser.error(f"--length must be at least 2, got {args.length}")

    from train_benchmark import random_batch  # benchmarks/ is sys.path[0] for this script

    import flax_transformer as ft
    from train import huge_pages

    implementations = args.implementations or list(IMPLEMENTATIONS)
    honoured, why = huge_pages.available()
    torch_installed = importlib.util.find_spec("torch") is not None
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        wmt_models, wmt_source = flax_wmt_models(args, scratch)
        print(
            f"float32; {available_cores()} core(s) available; jax {version('jax')}, "
            f"flax {version('flax')}, torch {version('torch')}; Flax WMT model: {wmt_source}; "
            f"{WARMUP_STEPS} warm-up steps (the first is the first-step column), then "
            f"{args.steps} timed steps; {args.repeats} repeat(s), one process each; "
            f"huge pages (glibc.malloc.hugetlb=1): {args.huge_pages}"
            + ("" if honoured else f", which this machine ignores: {why}")
        )
        sizes = {}
        for size in args.sizes:
            setting = SIZES[size]
            config = ft.TransformerConfig.preset(
                setting["preset"], vocab_size=setting["vocab_size"]
            )
            if config.num_encoder_layers != config.num_decoder_layers:
                sys.exit(f"{size}: the Flax WMT model has one num_layers for both stacks")
            batch_rows = args.batch or setting["batch"]
            length = args.length or setting["length"]
            if length > config.max_len:
                sys.exit(f"--length {length} is longer than the {size} model's {config.max_len}")
            batch = random_batch(config, batch_rows, length, length)
            np.savez(scratch / f"{size}.npz", **batch)
            tokens = float((batch["target"] != config.pad_id).sum())
            shapes = {
                "preset": setting["preset"],
                **{
                    field: getattr(config, field)
                    for field in (
                        "vocab_size", "d_model", "num_heads", "num_encoder_layers",
                        "num_decoder_layers", "d_ff", "dropout_rate", "max_len", "pad_id",
                    )
                },
            }  # fmt: skip
            sizes[size] = shapes, tokens
            print(
                f"- {size}: d_model {config.d_model}, {config.num_encoder_layers}+"
                f"{config.num_decoder_layers} layers, {config.num_heads} heads, d_ff "
                f"{config.d_ff}, vocab {config.vocab_size:,}; batch {batch_rows} x {length} "
                f"tokens (source and target), {tokens:,.0f} non-pad target tokens"
            )
        print(
            "\n| size | implementation | first step (s) | step (ms, median) | per repeat (ms) | "
            "target tokens/s | peak RSS (GiB) | speed ours/peer | RSS ours/peer |"
        )
        print("|---|---|---|---|---|---|---|---|---|", flush=True)
        for size, (shapes, tokens) in sizes.items():
            results: dict[str, list[dict] | str] = {}
            runnable = []
            for implementation in implementations:
                if implementation == "torch" and not torch_installed:
                    results[implementation] = TORCH_MISSING
                elif implementation == "flax_wmt" and wmt_models is None:
                    results[implementation] = FLAX_WMT_MISSING
                else:
                    results[implementation] = []
                    runnable.append(implementation)
            for repeat in range(args.repeats):  # interleaved, so drift affects all alike
                for implementation in runnable:
                    if isinstance(results[implementation], str):
                        continue  # an earlier repeat failed
                    spec = dict(
                        size=size,
                        implementation=implementation,
                        repeat=repeat,
                        shapes=shapes,
                        batch_file=str(scratch / f"{size}.npz"),
                        wmt_models=wmt_models,
                        steps=args.steps,
                    )
                    with_huge_pages = args.huge_pages == "all" or (
                        args.huge_pages == "ours" and implementation == "ours"
                    )
                    result = run_worker(spec, scratch, with_huge_pages)
                    if isinstance(result, str):
                        results[implementation] = result
                    else:
                        results[implementation].append(result)
            print("\n".join(rows_of_size(size, results, tokens)), flush=True)


if __name__ == "__main__":
    main()
