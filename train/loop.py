"""The training loop: data -> train_step (single device, pmap or mesh) -> metrics + checkpoints.

    run = set_up_run(config, workdir)   # data, model, optimizer, state (fresh, resumed or
                                        # fine-tuned), checkpointer
    for step in range(start, num_train_steps):
        batch = train_data[step]                    # a pure function of (seed, step)
        state, metrics = train_step(state, batch)   # compiled once, no host sync
        every log_every_steps:        summarise metrics (the only read-back), progress bar, JSONL
        every eval_every_steps:       validation loss, greedy exact-match, sample translations
        every checkpoint_every_steps: asynchronous orbax save (with the validation loss if any)
    at the end: save, then evaluate on the test split (with the average of the last
                config.average_last checkpoints' params when it is > 1, as the paper does)

A workdir that holds checkpoints resumes from the newest readable one (an unreadable newer one
is moved aside with a warning); refused if its model config differs, or if a training field
that decides what the run computes differs (train.setup.resume_changes; others are logged).
SIGINT (Ctrl-C) and SIGTERM stop the loop after the current step, save a checkpoint and
return; a second Ctrl-C aborts at once.

Divergence (train.divergence): at each log step a non-finite loss or gradient norm, or a loss
far above its recent range, stops the run; before each evaluation and save the state is checked
finite. A diverged run saves nothing more (the checkpoints before it stay: a NaN is never
latest or best) and returns with `TrainResult.diverged` set; `python -m train` exits 3.

Multi-process runs (`train.distributed`, "mesh" only): the mesh spans every device of every
process; each process builds and feeds only its rows of each global training batch (the
batchers' process_index/process_count) and of each evaluation batch (`_local_rows`). Process
0 alone prepares the data, trains or writes the tokenizer and builds the token store (the
others wait, then read them), writes config.json, metrics.jsonl and TensorBoard, prints the log
lines and the progress bar, and scores decoded outputs; every process saves each checkpoint
together with the others (global arrays replicated over the mesh), and all must agree on the
step they resume from. A stop is a SIGTERM to any one process: jax's preemption service (which
owns SIGTERM then) makes every process stop after the same step and save; SIGINT aborts without
saving.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from flax_transformer import TransformerConfig
from flax_transformer.parallel import DataParallel
from flax_transformer.training import create_train_state, evaluation_params, summarize_metrics
from train import distributed, heap
from train.checkpoints import BEST_METRIC, Checkpointer, abstract_like
from train.data.batching import process_share
from train.data.prefetch import Prefetch
from train.data.run_data import EvalSplit, RunData, training_data, training_store
from train.data.sources import dataset_of, open_roles
from train.divergence import Diverged, LossWatch, remedies, state_is_finite
from train.evaluation import DecodingOptions, describe_groups, evaluate
from train.metric_writers import MetricWriter
from train.setup import (
    absolute_paths,
    check_config,
    decoding_options,
    device_count,
    model_config_from,
    optimizer_from,
    resume_changes,
)
from train.workdir import Workdir, load_run


@dataclasses.dataclass
class TrainResult:
    """What a call to `train_and_evaluate` did."""

    step: int  # the step reached (number of updates applied)
    interrupted: bool  # stopped by SIGINT / SIGTERM before num_train_steps
    validation: dict[str, float]  # the last validation metrics
    test: dict[str, float]  # test-split metrics (empty when interrupted or diverged)
    diverged: Diverged | None = None  # why and where training stopped, if it diverged


@dataclasses.dataclass
class Run:
    """Everything a training run is made of, set up by `set_up_run`."""

    config: ml_collections.ConfigDict
    workdir: Workdir
    model_config: TransformerConfig
    data: RunData
    vocabulary: Any
    parallel: DataParallel
    schedule: Any
    state: Any  # the TrainState, placed on the devices
    start_step: int
    run_config: dict  # what config.json and every checkpoint record
    checkpointer: Checkpointer
    recent_losses: list[float]  # the logged losses before start_step (divergence check)


# ---------------------------------------------------------------------------------------------
# Multi-process helpers
# ---------------------------------------------------------------------------------------------
def _log(message: str) -> None:
    """A log line, printed by process 0 only."""
    if distributed.is_main_process():
        tqdm.write(message)


def _local_rows(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's rows of a whole evaluation batch (see `batching.process_share`)."""
    return process_share(batch, jax.process_index(), jax.process_count())


class _NoWriter:
    """The MetricWriter of processes other than 0: writes nothing."""

    def write(self, step: int, prefix: str, metrics: Mapping[str, float]) -> None:
        pass

    def __enter__(self) -> _NoWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        pass


def _checkpoint_state(run: Run) -> Any:
    """The state as orbax saves it. One process: one plain copy (`get_state`). Several: a copy
    of the global arrays, replicated over the global mesh, which every process passes to
    orbax together (orbax writes each replicated array once and syncs the processes); a
    per-process single-device copy would look to orbax like P different arrays."""
    if distributed.is_multiprocess():
        return jax.tree.map(jnp.copy, run.state)  # owns its buffers: train_step donates state
    return run.parallel.get_state(run.state)


# ---------------------------------------------------------------------------------------------
# Setting up: fresh, resumed, or fine-tuned from another run
# ---------------------------------------------------------------------------------------------
def _start_from(config: ml_collections.ConfigDict, workdir: Workdir) -> Workdir | None:
    """`config.init_from`: take its model config and tokenizer into `config` and `workdir`.

    The new run has the source run's model (`config.model` is replaced by it) and tokenizer
    (copied into `workdir`, so that the run, resumed or evaluated, needs nothing outside it).
    Returns the source workdir, whose params initialise the first step, or None.
    """
    if not config.init_from:
        return None
    source = Workdir(config.init_from)
    if source.path == workdir.path:
        raise ValueError("config.init_from is the run's own workdir: give another one")
    source_config, source_model = source.read_config()
    own_vocabulary = dataset_of(config).fixed_vocabulary
    if own_vocabulary != dataset_of(source_config).fixed_vocabulary:
        raise ValueError(
            f"config.init_from={source.path} was trained on {source_config.dataset!r}, whose "
            f"vocabulary does not fit config.dataset={config.dataset!r}"
        )
    config.tokenizer = source_config.get("tokenizer", "sentencepiece")
    if own_vocabulary is None and distributed.is_main_process():  # the others read it later
        workdir.copy_tokenizer_from(source, config.tokenizer)
    config.model.update(source_model.to_dict())
    return source


def _initial_state(
    config: ml_collections.ConfigDict,
    model_config: TransformerConfig,
    optimizer: Any,
    checkpointer: Checkpointer,
    init_from: Workdir | None,
    sharding: Any = None,
) -> Any:
    """(state, recent logged losses): a fresh TrainState (with `init_from`'s params), or the
    newest readable checkpoint's (restored with `sharding` on every array when given: the
    global mesh's replicated sharding in a multi-process run, where each process restores its
    devices' copies)."""

    def fresh() -> Any:
        return create_train_state(
            model_config, optimizer, jax.random.key(config.seed), ema_decay=config.ema_decay
        )

    if checkpointer.latest_step() is None:
        state = fresh()
        if init_from:
            source = load_run(init_from)
            if source.model_config != model_config:
                raise ValueError(f"{init_from.path} holds a model of another config than this run")
            # Adam's state at step 0 does not depend on the parameter values: only swap them.
            state = state.replace(params=source.params)
            if state.ema_params is not None:  # the average starts at the params it starts from
                state = state.replace(ema_params=jax.tree.map(jnp.copy, source.params))
            _log(f"Starting from the params of {init_from.path} ({source.describe()})")
        return state, []
    target = abstract_like(jax.eval_shape(fresh))
    if sharding is not None:
        target = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), target
        )

    def read(step: int) -> tuple[Any, dict, dict]:
        checkpointer.check_model_config(model_config, step)
        saved = checkpointer.read_config(step)
        state, position = checkpointer.restore(target, step)
        return state, position, saved

    step, (state, position, saved) = checkpointer.newest_readable(
        read,
        warn=_log,
        set_aside=lambda step: _set_aside(checkpointer, step),
        agree=lambda ok: distributed.all_true("checkpoint read", ok),
    )
    if position.get("seed") != config.seed:
        raise ValueError(
            f"the checkpoint's data order used seed {position.get('seed')}, this run "
            f"config.seed={config.seed}; resuming would not reproduce the run"
        )
    accepted, refused = resume_changes(saved.get("train", {}), config)
    if refused:
        raise ValueError(
            f"resuming from step {step} in {checkpointer.directory} with training fields that "
            f"differ from the checkpoint's: {'; '.join(refused)} (add "
            "--config.allow_training_changes=True to accept them, or train in a new --workdir)"
        )
    _log(f"Resuming from step {int(state.step)} in {checkpointer.directory}")
    if config.ema_decay and not checkpointer.holds_ema(step):
        _log(f"  the checkpoint keeps no parameter EMA: it starts from the params of step {step}")
    for line in accepted:
        _log(f"  changed since the checkpoint: {line}")
    return state, list(position.get("recent_losses", []))


def _set_aside(checkpointer: Checkpointer, step: int) -> str:
    """Process 0 moves an unreadable checkpoint aside while the others wait; all reload."""
    distributed.barrier("setting an unreadable checkpoint aside")
    target = checkpointer.set_aside(step) if distributed.is_main_process() else ""
    distributed.barrier("unreadable checkpoint set aside")
    if not distributed.is_main_process():
        checkpointer.manager.reload()
    return target


def set_up_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Check the config, read the data, build the model and its state; see the module doc."""
    absolute_paths(config)
    check_config(config)
    workdir = Workdir(workdir)
    workdir.create()
    if origin := workdir.imported_from():  # convert_marian's workdirs hold params only
        raise ValueError(
            f"{workdir.path} holds imported parameters only (from {origin}), no training state: "
            "evaluate it or translate with it; train in a new --workdir"
        )
    multiprocess = distributed.is_multiprocess()
    if multiprocess and config.parallel != "mesh":
        raise distributed.DistributedSetupError(
            f"config.parallel={config.parallel!r} runs on one process only; this run has "
            f"{jax.process_count()} processes: use --config.parallel=mesh"
        )
    init_from = _start_from(config, workdir)
    num_devices = device_count(config.parallel)  # batches split evenly over the devices
    # Process 0 prepares the data (TFDS writes it under config.data_dir, maybe shared), trains
    # the tokenizer and builds the token store; the others wait, then read what it wrote.
    if distributed.is_main_process():
        sources = open_roles(config)
        vocabulary = workdir.vocabulary(config, sources["train"])
        training_store(config, sources["train"], vocabulary, log=_log)
    distributed.barrier("data, tokenizer and token store")
    if not distributed.is_main_process():
        sources = open_roles(config)
        vocabulary = workdir.vocabulary(config, sources["train"])
    data = training_data(
        config,
        sources,
        vocabulary,
        row_multiple=num_devices * config.micro_batches,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        log=None,  # the store's line was logged above
    )
    _log(data.summary)
    model_config = model_config_from(config, vocabulary.vocab_size)
    if data.max_length > model_config.max_len:
        raise ValueError(
            f"the data needs sequences of {data.max_length} tokens but config.model.max_len is "
            f"{model_config.max_len}"
        )
    parallel = DataParallel(
        config.parallel,
        model_config=model_config,
        label_smoothing=config.label_smoothing,
        micro_batches=config.micro_batches,
    )
    parallel.check_batch_size(config.eval_batch_size, train=False)
    if config.batching == "examples":
        parallel.check_batch_size(config.batch_size)
    schedule, optimizer = optimizer_from(config, model_config)
    checkpointer = workdir.checkpointer(keep=config.keep_checkpoints)
    try:
        # Every process must restore the same checkpoint (a shared filesystem shows them the same).
        distributed.agree("checkpoint to resume from", checkpointer.latest_step())
        sharding = NamedSharding(parallel.mesh, P()) if multiprocess else None
        state, recent_losses = _initial_state(
            config, model_config, optimizer, checkpointer, init_from, sharding
        )
        if distributed.is_main_process():
            run_config = workdir.write_config(config, model_config, vocabulary)
        else:
            run_config = Workdir.run_config(config, model_config, vocabulary)
    except BaseException:
        checkpointer.close()  # no orbax thread left running into the interpreter's exit
        raise
    return Run(
        config=config,
        workdir=workdir,
        model_config=model_config,
        data=data,
        vocabulary=vocabulary,
        parallel=parallel,
        schedule=schedule,
        state=parallel.put_state(state),
        start_step=int(state.step),
        run_config=run_config,
        checkpointer=checkpointer,
        recent_losses=recent_losses,
    )


# ---------------------------------------------------------------------------------------------
# Evaluating a split, and the log lines
# ---------------------------------------------------------------------------------------------
def evaluate_split(
    run: Run,
    split: EvalSplit,
    options: DecodingOptions | None,
    max_examples: int = 0,
    params: Any = None,
) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
    """Loss and accuracy over `split`; with `options`, BLEU, chrF and exact match of decoding
    its first `max_examples` examples (0: all). With the run's current params (their moving
    average where the run keeps one), or `params`."""
    split = split.first(max_examples)
    if params is None:
        placed = evaluation_params(run.state)
        params = run.parallel.get_state(placed)
    else:
        placed = run.parallel.put_state(params)
    rows = _local_rows if distributed.is_multiprocess() else None
    return evaluate(
        run.parallel,
        placed,
        params,
        split.batches,
        model_config=run.model_config,
        vocabulary=run.vocabulary,
        references=split.references,
        sources=split.sources,
        options=options,
        rows=rows,
        groups=split.groups,
    )


def _report(
    step: int, name: str, summary: Mapping[str, float], examples: Any, samples: int
) -> None:
    line = (
        f"step {step}: {name} loss {summary['loss']:.4f}, token accuracy {summary['accuracy']:.2%}"
    )
    if "bleu" in summary:
        line += (
            f", BLEU {summary['bleu']:.2f}, chrF {summary['chrf']:.2f}, exact match "
            f"{summary['exact_match']:.2%} ({int(summary['examples'])} examples)"
        )
    tqdm.write(line)
    prefix = "exact_match_"
    by_group = {key[len(prefix) :]: v for key, v in summary.items() if key.startswith(prefix)}
    if by_group:
        sizes = {group: int(summary[f"examples_{group}"]) for group in by_group}
        tqdm.write(f"  exact match by group: {describe_groups(by_group, sizes)}")
    for source, output, reference in examples[:samples]:
        tqdm.write(f"  {source}\n    -> {output}\n    reference: {reference}")


class _StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks between steps; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        if distributed.is_multiprocess():
            # A flag set on one process only would stop it alone, and the others would wait for
            # it forever: jax's preemption service owns SIGTERM and agrees on a step to stop at
            # (`_preempted`); SIGINT keeps Python's default (abort without saving).
            return self
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


def _preempted(step: int) -> bool:
    """Multi-process: whether every process has reached the step to stop at after a SIGTERM
    (jax's preemption sync point; call it at every step on every process)."""
    return distributed.is_multiprocess() and multihost_utils.reached_preemption_sync_point(step)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def train(run: Run, writer: MetricWriter) -> tuple[int, bool, dict[str, float], Diverged | None]:
    """Train `run` to config.num_train_steps (or a stop request, or a divergence); returns
    (step reached, interrupted, the last validation metrics, the divergence or None). Every
    checkpoint is on disk when it returns."""
    config, parallel = run.config, run.parallel
    validation_options = (
        decoding_options(config, config.validation_decoding) if config.validation_decoding else None
    )
    progress = tqdm(
        total=config.num_train_steps, initial=run.start_step,
        disable=not (config.progress_bar and distributed.is_main_process()),
        unit="step", dynamic_ncols=True,
    )  # fmt: skip
    validation: dict[str, float] = {}
    pending: list[Any] = []
    watch = LossWatch(config.divergence_factor, run.recent_losses)
    problem: str | None = None
    interval_start, step = time.perf_counter(), run.start_step
    ahead = Prefetch(run.data.train, run.start_step, config.num_train_steps)  # next batches
    compiled: set[tuple] = set()  # the batch shapes train_step has been compiled for
    with _StopRequest() as stop, progress, ahead:
        for step in range(run.start_step, config.num_train_steps):
            batch = parallel.put_batch(next(ahead))  # this process's rows of the global batch
            if (shapes := tuple((key, batch[key].shape) for key in sorted(batch))) not in compiled:
                # Compiling first lets the compiler's freed memory go before the step's own.
                heap.compile_before_running(parallel.train_step, run.state, batch)
                compiled.add(shapes)
            run.state, metrics = parallel.train_step(run.state, batch)
            pending.append(metrics)
            progress.update(1)
            done, last = step + 1, step + 1 == config.num_train_steps
            if done % config.log_every_steps == 0 or last:
                summary = summarize_metrics(pending)  # the only read-back of the hot loop
                summary["target_tokens_per_second"] = summary["tokens"] / (
                    time.perf_counter() - interval_start
                )
                summary["learning_rate"] = float(run.schedule(step))
                writer.write(done, "train", summary)
                progress.set_postfix(
                    loss=f"{summary['loss']:.3f}",
                    tok_s=f"{summary['target_tokens_per_second']:,.0f}",
                    lr=f"{summary['learning_rate']:.2e}",
                )
                pending, interval_start = [], time.perf_counter()
                if problem := watch.problem(summary):
                    break
            if _preempted(done):
                stop.requested = True
            evaluating = done % config.eval_every_steps == 0 or last
            saving = done % config.checkpoint_every_steps == 0 or last or evaluating
            if (evaluating or saving or stop.requested) and not state_is_finite(run.state):
                # Between log steps: caught before it is evaluated or saved.
                problem = "the parameters or the optimizer state hold NaN or infinity"
                break
            step_metrics = None
            if evaluating:
                validation = step_metrics = _validate(run, writer, done, validation_options)
                heap.release_freed_memory()  # what compiling the evaluation freed
                interval_start = time.perf_counter()
                if not np.isfinite(step_metrics["loss"]):
                    problem = f"the validation loss is {step_metrics['loss']}"
                    break
            if saving or stop.requested:
                run.checkpointer.save(
                    done,
                    _checkpoint_state(run),
                    config=run.run_config,
                    data_position={
                        "step": done,
                        "seed": config.seed,
                        "recent_losses": watch.recent,
                    },
                    metrics={BEST_METRIC: step_metrics["loss"]} if step_metrics else None,
                )
            if stop.requested:
                step = done
                break
        else:
            step = config.num_train_steps
        run.checkpointer.wait()
    if problem is None:
        return step, stop.requested, validation, None
    diverged = Diverged(
        step=step + 1,
        reason=problem,
        last_checkpoint=run.checkpointer.latest_step(),
        best_checkpoint=run.checkpointer.best_step(),
        directory=run.checkpointer.directory,
        remedies=remedies(config),
    )
    return step + 1, False, validation, diverged


def _validate(
    run: Run, writer: MetricWriter, step: int, options: DecodingOptions | None
) -> dict[str, float]:
    summary, examples = evaluate_split(
        run, run.data.validation, options, run.config.num_validation_examples
    )
    writer.write(step, "validation", summary)
    if distributed.is_main_process():
        _report(step, "validation", summary, examples, run.config.num_samples)
    return summary


def _test_params(run: Run) -> tuple[Any, str]:
    """(params for the test evaluation, their description): None (the final params, or their
    moving average) or the average of the last config.average_last checkpoints."""
    final = "the final params' moving average" if run.config.ema_decay else "the final params"
    if run.config.average_last == 1:
        return None, final
    try:
        averaged = load_run(run.workdir, average_last=run.config.average_last)
    except ValueError as error:  # checkpoints deleted meanwhile: still report a test score
        _log(f"Not averaging checkpoints ({error}); testing {final}")
        return None, final
    return averaged.params, f"params: {averaged.describe()}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    """Train per `config` in `workdir` (resuming if it holds checkpoints), then test."""
    run = set_up_run(config, workdir)
    writer: Any = (
        MetricWriter(run.workdir.metrics_path, run.workdir.tensorboard_dir)
        if distributed.is_main_process()
        else _NoWriter()
    )
    with writer, run.checkpointer:
        step, interrupted, validation, diverged = train(run, writer)
        if diverged:
            _log(f"Stopped at step {step}: training diverged ({diverged.reason})")
            return TrainResult(step, False, validation, {}, diverged)
        if interrupted:
            _log(
                f"Stopped at step {step}; checkpoint saved in {run.checkpointer.directory}. "
                "Run the same command to resume."
            )
            return TrainResult(step, True, validation, {})
        options = decoding_options(config, config.test_decoding)
        params, described = _test_params(run)
        _log(f"Evaluating on the test split with {options.describe()}, {described}")
        test, examples = evaluate_split(run, run.data.test, options, params=params)
        if params is not None:
            test["averaged_checkpoints"] = float(config.average_last)
        writer.write(step, "test", test)
    if distributed.is_main_process():
        _report(step, "test", test, examples, config.num_samples)
        _log(f"sacreBLEU signature: {test['bleu_signature']}")
    # Process 0 scores alone: the others wait here, not in jax's shutdown (shorter timeout).
    distributed.barrier("finished")
    return TrainResult(step, False, validation, test)
