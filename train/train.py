"""The training loop: data -> train_step (single device, pmap or mesh) -> metrics + checkpoints.

    for step in range(start, num_train_steps):
        batch = train_data[step]                    # a pure function of (seed, step)
        state, metrics = train_step(state, batch)   # compiled once, no host sync
        every log_every_steps:        summarise metrics (the only read-back), progress bar, JSONL
        every eval_every_steps:       validation loss, greedy exact-match, sample translations
        every checkpoint_every_steps: asynchronous orbax save (with the validation loss if any)
    at the end: save, then evaluate on the test split

A workdir that holds checkpoints resumes from the latest one (refused if its model config
differs). SIGINT (Ctrl-C) and SIGTERM stop the loop after the current step, save a checkpoint and
return; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from flax_transformer import TransformerConfig
from flax_transformer.parallel import DataParallel
from flax_transformer.training import (
    create_train_state,
    make_optimizer,
    summarize_metrics,
    transformer_schedule,
    with_cooldown,
)
from train.checkpoints import BEST_METRIC, Checkpointer, abstract_like
from train.data import batching
from train.data.tasks import DATASETS, TOKENIZERS, EvalSplit, load_task
from train.evaluation import DECODING_METHODS, DecodingOptions, evaluate
from train.metric_writers import MetricWriter

PARALLEL_MODES = ("single", "pmap", "mesh")
BATCHING_MODES = ("examples", *batching.BATCHING_MODES)


@dataclasses.dataclass
class TrainResult:
    """What a call to `train_and_evaluate` did."""

    step: int  # the step reached (number of updates applied)
    interrupted: bool  # stopped by SIGINT / SIGTERM before num_train_steps
    validation: dict[str, float]  # the last validation metrics
    test: dict[str, float]  # test-split metrics (empty when interrupted)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
def _check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the first training config field that is out of range."""
    positive = (
        "batch_size",
        "eval_batch_size",
        "num_train_steps",
        "warmup_steps",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "batch_tokens",
        "max_length",
        "tokenizer_vocab_size",
        "beam_size",
    )
    for name in positive:
        if config[name] <= 0:
            raise ValueError(f"config.{name} must be positive, got {config[name]}")
    non_negative = (
        "num_validation_examples",
        "num_samples",
        "weight_decay",
        "pack_length",
        "eval_max_length",
        "tokenizer_train_pairs",
    )
    for name in (*non_negative, "clip_norm"):
        if config[name] < 0:
            raise ValueError(f"config.{name} must be >= 0, got {config[name]}")
    if not 0.0 <= config.cooldown_fraction <= 1.0:
        raise ValueError(
            f"config.cooldown_fraction must be in [0, 1], got {config.cooldown_fraction}"
        )
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing}")
    choices = {
        "dataset": DATASETS,
        "parallel": PARALLEL_MODES,
        "batching": BATCHING_MODES,
        "validation_decoding": ("", *DECODING_METHODS),
        "test_decoding": DECODING_METHODS,
        "beam_stop": ("finished", "bound"),
        "tokenizer": TOKENIZERS,
    }
    for name, allowed in choices.items():
        if config[name] not in allowed:
            raise ValueError(f"config.{name} must be one of {list(allowed)}, got {config[name]!r}")
    if (config.dataset == "number_words") != (config.batching == "examples"):
        raise ValueError(
            f"config.batching={config.batching!r} does not go with config.dataset="
            f"{config.dataset!r}: the built-in number_words task uses 'examples' (batches of "
            "config.batch_size pairs), text datasets use 'padded', 'bucketed' or 'packed' "
            "(batches of config.batch_tokens tokens)"
        )


def optimizer_from(
    config: ml_collections.ConfigDict, model_config: TransformerConfig
) -> tuple[Any, Any]:
    """(learning-rate schedule, optax optimizer) of a training config."""
    schedule = with_cooldown(
        transformer_schedule(model_config.d_model, config.warmup_steps, config.learning_rate_scale),
        config.num_train_steps,
        round(config.cooldown_fraction * config.num_train_steps),
    )
    optimizer = make_optimizer(
        schedule,
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        clip_norm=config.clip_norm or None,
        weight_decay=config.weight_decay,
    )
    return schedule, optimizer


def decoding_options(config: ml_collections.ConfigDict, method: str) -> DecodingOptions:
    """Decoding as configured; the built-in task decodes up to its target length."""
    return DecodingOptions(
        method=method,
        beam_size=config.beam_size,
        length_penalty=config.length_penalty,
        beam_stop=config.beam_stop,
        max_length=None,
    )


def model_config_from(config: ml_collections.ConfigDict, vocab_size: int) -> TransformerConfig:
    """The TransformerConfig of `config.model`; vocab_size 0 means "the tokenizer's"."""
    fields = dict(config.model.to_dict())
    if not fields.get("vocab_size"):
        fields["vocab_size"] = vocab_size
    elif fields["vocab_size"] < vocab_size:
        raise ValueError(
            f"config.model.vocab_size={fields['vocab_size']} is smaller than the tokenizer's "
            f"vocabulary ({vocab_size} ids); set it to 0 to use the tokenizer's size"
        )
    return TransformerConfig.from_dict(fields)


# ---------------------------------------------------------------------------------------------
# Interruption: finish the step, save, return
# ---------------------------------------------------------------------------------------------
class _StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks between steps; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
            "(Ctrl-C again to abort without saving)"
        )

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def _refuse_imported_model(workdir: str) -> None:
    """A workdir of `python -m train.convert_marian` holds parameters only: nothing to resume."""
    try:
        with open(os.path.join(workdir, "config.json"), encoding="utf-8") as file:
            origin = json.load(file).get("train", {}).get("imported_from")
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if origin:
        raise ValueError(
            f"{workdir} holds imported parameters only (from {origin}), no training state: "
            "evaluate it or translate with it; train in a new --workdir"
        )


def _start_from(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """`config.init_from`: take its model config and tokenizer into `config` and `workdir`.

    The new run has the source run's model (`config.model` is replaced by it) and tokenizer
    (copied into `workdir`, so that the run, resumed or evaluated, needs nothing outside it).
    Returns the source workdir, whose params initialise the first step, or None.
    """
    if not config.init_from:
        return None
    from train.data.tasks import MARIAN_TOKENIZER_DIR, TOKENIZER_FILE
    from train.workdir import read_run_config

    source = os.path.abspath(config.init_from)
    if source == workdir:
        raise ValueError("config.init_from is the run's own workdir: give another one")
    source_config, source_model = read_run_config(source)
    if (source_config.dataset == "number_words") != (config.dataset == "number_words"):
        raise ValueError(
            f"config.init_from={source} was trained on {source_config.dataset!r}, whose "
            f"vocabulary does not fit config.dataset={config.dataset!r}"
        )
    tokenizer = source_config.get("tokenizer", "sentencepiece")
    if config.dataset != "number_words":
        name = MARIAN_TOKENIZER_DIR if tokenizer == "marian" else TOKENIZER_FILE
        if not os.path.exists(os.path.join(workdir, name)):
            copy = shutil.copytree if tokenizer == "marian" else shutil.copyfile
            copy(os.path.join(source, name), os.path.join(workdir, name))
    config.tokenizer = tokenizer
    config.model.update(source_model.to_dict())
    return source


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    """Train per `config` in `workdir` (resuming if it holds checkpoints), then test."""
    _check_config(config)
    workdir = os.path.abspath(workdir)
    _refuse_imported_model(workdir)
    os.makedirs(workdir, exist_ok=True)
    init_from = _start_from(config, workdir)

    # The device count is known before any data is read: batches split evenly over devices.
    num_devices = {"single": 1, "pmap": jax.local_device_count()}.get(
        config.parallel, jax.device_count()
    )
    task = load_task(config, workdir, row_multiple=num_devices)
    tqdm.write(task.summary)
    vocabulary = task.vocabulary
    model_config = model_config_from(config, vocabulary.vocab_size)
    if task.max_length > model_config.max_len:
        raise ValueError(
            f"the data needs sequences of {task.max_length} tokens but config.model.max_len is "
            f"{model_config.max_len}"
        )

    parallel = DataParallel(
        config.parallel,
        model_config=model_config,
        label_smoothing=config.label_smoothing,
    )
    parallel.check_batch_size(config.eval_batch_size)
    if config.dataset == "number_words":
        parallel.check_batch_size(config.batch_size)

    schedule, optimizer = optimizer_from(config, model_config)
    init_key = jax.random.key(config.seed)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    run_config = {"model": model_config.to_dict(), "train": config.to_dict()}
    if checkpointer.latest_step() is None:
        state = create_train_state(model_config, optimizer, init_key)
        start_step = 0
        if init_from:
            from train.workdir import load_run

            source = load_run(init_from)
            if source.model_config != model_config:
                raise ValueError(f"{init_from} holds a model of another config than this run")
            # Adam's state at step 0 does not depend on the parameter values: only swap them.
            state = state.replace(params=source.params)
            tqdm.write(f"Starting from the params of {init_from} ({source.describe()})")
    else:
        checkpointer.check_model_config(model_config)
        abstract_state = jax.eval_shape(
            lambda: create_train_state(model_config, optimizer, init_key)
        )
        state, position = checkpointer.restore(abstract_like(abstract_state))
        start_step = int(state.step)
        if position.get("seed") != config.seed:
            raise ValueError(
                f"the checkpoint's data order used seed {position.get('seed')}, this run "
                f"config.seed={config.seed}; resuming would not reproduce the run"
            )
        tqdm.write(f"Resuming from step {start_step} in {checkpointer.directory}")
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as file:
        json.dump(run_config, file, indent=2, sort_keys=True)

    train_data = task.train
    validation_options = (
        decoding_options(config, config.validation_decoding) if config.validation_decoding else None
    )

    writer = MetricWriter(workdir)
    state = parallel.put_state(state)
    validation: dict[str, float] = {}
    step = start_step

    def run_evaluation(
        split: EvalSplit, options: DecodingOptions | None, max_examples: int = 0
    ) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
        batches = split.batches
        if max_examples:  # the batches of the first max_examples examples; decode only those
            batches = [
                {
                    **b,
                    "example_index": np.where(
                        b["example_index"] < max_examples, b["example_index"], -1
                    ),
                }
                for b in batches
                if (b["example_index"][b["example_index"] >= 0] < max_examples).any()
            ]
        return evaluate(
            parallel,
            state,
            parallel.get_state(state).params,
            batches,
            model_config=model_config,
            vocabulary=vocabulary,
            references=split.references,
            sources=split.sources,
            options=options,
        )

    def report(step: int, name: str, summary: Mapping[str, float], examples: Any) -> None:
        line = (
            f"step {step}: {name} loss {summary['loss']:.4f}, token accuracy "
            f"{summary['accuracy']:.2%}"
        )
        if "bleu" in summary:
            line += (
                f", BLEU {summary['bleu']:.2f}, chrF {summary['chrf']:.2f}, exact match "
                f"{summary['exact_match']:.2%} ({int(summary['examples'])} examples)"
            )
        tqdm.write(line)
        for source, output, reference in examples[: config.num_samples]:
            tqdm.write(f"  {source}\n    -> {output}\n    reference: {reference}")

    def run_validation(step: int) -> dict[str, float]:
        summary, examples = run_evaluation(
            task.validation, validation_options, config.num_validation_examples
        )
        writer.write(step, "validation", summary)
        report(step, "validation", summary, examples)
        return summary

    def save(step: int, metrics: Mapping[str, float] | None) -> None:
        checkpointer.save(
            step,
            parallel.get_state(state),
            config=run_config,
            data_position={"step": step, "seed": config.seed},
            metrics={BEST_METRIC: metrics["loss"]} if metrics else None,
        )

    progress = tqdm(
        total=config.num_train_steps,
        initial=start_step,
        disable=not config.progress_bar,
        unit="step",
        dynamic_ncols=True,
    )
    pending: list[Any] = []
    interval_start = time.perf_counter()
    with _StopRequest() as stop, writer, checkpointer, progress:
        for step in range(start_step, config.num_train_steps):
            state, metrics = parallel.train_step(state, parallel.put_batch(train_data[step]))
            pending.append(metrics)
            progress.update(1)
            done = step + 1
            if done % config.log_every_steps == 0 or done == config.num_train_steps:
                summary = summarize_metrics(pending)  # the only read-back of the hot loop
                elapsed = time.perf_counter() - interval_start
                summary["target_tokens_per_second"] = summary["tokens"] / elapsed
                summary["learning_rate"] = float(schedule(step))
                writer.write(done, "train", summary)
                progress.set_postfix(
                    loss=f"{summary['loss']:.3f}",
                    tok_s=f"{summary['target_tokens_per_second']:,.0f}",
                    lr=f"{summary['learning_rate']:.2e}",
                )
                pending = []
                interval_start = time.perf_counter()
            step_metrics = None
            if done % config.eval_every_steps == 0 or done == config.num_train_steps:
                validation = step_metrics = run_validation(done)
                interval_start = time.perf_counter()
            if (
                done % config.checkpoint_every_steps == 0
                or done == config.num_train_steps
                or step_metrics is not None
                or stop.requested
            ):
                save(done, step_metrics)
            if stop.requested:
                step = done
                break
        else:
            step = config.num_train_steps
        checkpointer.wait()
        if stop.requested:
            tqdm.write(
                f"Stopped at step {step}; checkpoint saved in {checkpointer.directory}. "
                "Run the same command to resume."
            )
            return TrainResult(step, True, validation, {})
        options = decoding_options(config, config.test_decoding)
        tqdm.write(f"Evaluating on the test split with {options.describe()}")
        test, examples = run_evaluation(task.test, options)
        writer.write(step, "test", test)
    report(step, "test", test, examples)
    return TrainResult(step, False, validation, test)


__all__ = [
    "TrainResult",
    "decoding_options",
    "model_config_from",
    "optimizer_from",
    "train_and_evaluate",
]
