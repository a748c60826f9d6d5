"""Checkpoints with orbax: save every N steps and at the end, keep the last K plus the best.

A checkpoint is one orbax step directory `<workdir>/checkpoints/<step>/` with these items:

    params       the parameter tree alone: readable with the model config only (evaluation,
                 translation, fine-tuning need no optimizer)
    train_state  the rest of the TrainState: step, optimizer state, dropout key (resuming)
    ema_params   the moving average of the params, in runs that keep one (config.ema_decay):
                 what evaluation and translation read by default (`restore_params`)
    config       JSON: the model config (TransformerConfig fields) and the training config
    data         JSON: the input pipeline position. Batches are a pure function of (seed, step), so
                 the position is the number of batches consumed; resuming reads batch `step` next.

An imported model (`python -m train.convert_marian`) has `params` and `config` only: evaluation
and translation read it like any other; training cannot resume from it. Checkpoints written
before this layout hold one `state` item (the whole TrainState): they are still read, for
resuming too (`restore`), and their params are read without an optimizer (`restore_params`).

Together they make resumption exact: training N steps uninterrupted and training k steps, being
killed, then resuming to N give bit-identical parameters on CPU.

Saves are asynchronous (training continues while the files are written) and atomic (orbax writes
a temporary directory and renames it when complete), so a crash or SIGKILL mid-save leaves the
previous checkpoints intact; `close()` waits for pending saves before the process exits.
Retention: the latest `keep` checkpoints, plus the one with the lowest validation loss among
those saved with metrics. The loop never saves a state or a validation loss that is not finite
(train.divergence), so neither count can be taken by a NaN checkpoint.

A checkpoint that cannot be read (a truncated array file, a missing `_METADATA`, an emptied
config item: a disk that filled up or a copy cut short) is `unreadable`: resuming sets it aside
(`set_aside`: moved, never deleted, into the set-aside directory) and falls back to the newest
one that reads (`newest_readable`); evaluation and translation skip it with a warning.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from flax_transformer.config import TransformerConfig

BEST_METRIC = "validation_loss"
T = TypeVar("T")


class CheckpointMismatchError(ValueError):
    """The checkpoint in the workdir was written for a different model config."""


class UnreadableCheckpointError(ValueError):
    """A checkpoint's files cannot be read back (truncated, missing or emptied)."""


def _reason(error: BaseException) -> str:
    """A one-line summary of why orbax / tensorstore / json could not read a checkpoint: the
    first message in the exception's chain that names a status (TensorStore's "OUT_OF_RANGE:
    ...", under orbax's generic wrapper), else the error's own."""
    chain, seen = [], error
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    with_status = [e for e in chain if re.match(r"[A-Z_]{4,}: ", str(e).strip())]
    chosen = with_status[0] if with_status else error
    lines = [line.strip() for line in str(chosen).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = text if len(text) <= 240 else text[:237] + "..."
    return f"{type(chosen).__name__}: {text}" if text else type(chosen).__name__


def _is_resource_error(error: BaseException) -> bool:
    """Errors of the machine, not of the files: never a reason to set a checkpoint aside."""
    text = str(error)
    return isinstance(error, MemoryError) or any(
        marker in text for marker in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")
    )


def _describe_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    fields = sorted(set(saved) | set(current))
    lines = [
        f"  {field}: checkpoint has {saved.get(field, '<absent>')!r}, "
        f"this run has {current.get(field, '<absent>')!r}"
        for field in fields
        if saved.get(field) != current.get(field)
    ]
    return "\n".join(lines)


class Checkpointer:
    """The run's orbax CheckpointManager with the project's layout and retention policy."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        keep_best: bool = True,
        asynchronous: bool = True,
        set_aside_directory: str | os.PathLike | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (the latest is always kept), got {keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        # Outside `directory`: orbax would list (and its retention delete) what is inside.
        self.set_aside_directory = os.path.abspath(
            os.fspath(set_aside_directory or self.directory + "_unreadable")
        )
        self.keep = keep
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=keep)]
        if keep_best:
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics[BEST_METRIC],
                    # BestN keeps the end of the sorted list; reversed, that is the lowest loss.
                    reverse=True,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            # best_fn makes orbax write each checkpoint's metrics to disk, so that a resumed run
            # still knows which kept checkpoint is the best (otherwise it would be deleted).
            best_fn=(lambda metrics: metrics[BEST_METRIC]) if keep_best else None,
            best_mode="min",
            enable_async_checkpointing=asynchronous,
            create=True,
            cleanup_tmp_directories=True,  # half-written saves of a killed run
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("params", "train_state", "ema_params", "state", "config", "data"),
        )

    # ------------------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        *,
        config: Mapping[str, Any],
        data_position: Mapping[str, Any],
        metrics: Mapping[str, float] | None = None,
    ) -> bool:
        """Start saving (asynchronously); returns False if a checkpoint of `step` exists."""
        if step in self.manager.all_steps():
            return False
        items = {
            "params": ocp.args.StandardSave(state.params),
            "train_state": ocp.args.StandardSave(_optimizer_part(state)),
            "config": ocp.args.JsonSave(dict(config)),
            "data": ocp.args.JsonSave(dict(data_position)),
        }
        if getattr(state, "ema_params", None) is not None:
            items["ema_params"] = ocp.args.StandardSave(state.ema_params)
        return self.manager.save(
            step,
            args=ocp.args.Composite(**items),
            metrics=dict(metrics) if metrics is not None else None,
            force=True,
        )

    def save_params(self, step: int, params: Any, *, config: Mapping[str, Any]) -> None:
        """Save a parameter tree alone (an imported model), synchronously."""
        if step in self.manager.all_steps():
            raise FileExistsError(f"{self.directory} already has a checkpoint of step {step}")
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), config=ocp.args.JsonSave(dict(config))
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def _items(self, step: int) -> set[str]:
        step_directory = os.path.join(self.directory, str(step))
        return {name for name in os.listdir(step_directory) if not name.startswith("_")}

    def holds_params_only(self, step: int | None = None) -> bool:
        """Whether checkpoint `step` is an imported parameter tree (no training state)."""
        items = self._items(self._step_or_latest(step))
        return "params" in items and "train_state" not in items and "state" not in items

    def holds_ema(self, step: int | None = None) -> bool:
        """Whether checkpoint `step` keeps a moving average of the params (`ema_params`)."""
        return "ema_params" in self._items(self._step_or_latest(step))

    def restore_params(
        self, abstract_params: Any, step: int | None = None, *, raw: bool = False
    ) -> Any:
        """The params of checkpoint `step` (the latest by default), of any kind: its moving
        average of the params where it keeps one (`holds_ema`) unless `raw`.

        `abstract_params` gives their structure, shapes and dtypes: `jax.eval_shape` of
        `init_params(model_config, key)` (see `abstract_like`); no optimizer is needed.
        """
        step = self._step_or_latest(step)
        if "state" in self._items(step):  # the earlier layout: the whole TrainState in one item
            target = {"params": abstract_params}
            return self._restore_earlier_layout(step, target, partial=True)["state"]["params"]
        item = "params" if raw or not self.holds_ema(step) else "ema_params"
        restored = self.manager.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract_params)})
        )
        return restored[item]

    def read_config(self, step: int | None = None) -> dict[str, Any]:
        """The config JSON stored with a checkpoint (the latest by default)."""
        step = self._step_or_latest(step)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return dict(restored["config"])

    def check_model_config(self, model_config: TransformerConfig, step: int | None = None) -> None:
        """Raise CheckpointMismatchError if the checkpoint's model differs from `model_config`."""
        step = self._step_or_latest(step)
        saved = self.read_config(step).get("model")
        if saved is None:
            raise CheckpointMismatchError(
                f"checkpoint {step} in {self.directory} records no model config; "
                "it was not written by this project's trainer"
            )
        current = model_config.to_dict()
        if saved != current:
            raise CheckpointMismatchError(
                f"the checkpoint in {self.directory} (step {step}) is of a different model "
                "config than this run:\n"
                + _describe_differences(saved, current)
                + "\nUse a new --workdir, or run with the checkpoint's config."
            )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restore (state, data_position) of `step` (the latest by default).

        `abstract_state` gives the structure, shapes, dtypes and shardings to restore into
        (e.g. `jax.eval_shape` of the state constructor). A target with `ema_params` (a run
        that keeps an EMA) gets the checkpoint's, or, from a checkpoint without one (the EMA
        turned on when resuming), a copy of the restored params to start the average from; a
        target without reads the params only.
        """
        step = self._step_or_latest(step)
        if self.holds_params_only(step):
            raise CheckpointMismatchError(
                f"checkpoint {step} in {self.directory} holds imported parameters only (no "
                "optimizer state or data position): it can be evaluated and used to translate, "
                "not resumed; train in a new --workdir"
            )
        data = ocp.args.JsonRestore()
        ema_target = getattr(abstract_state, "ema_params", None)
        if "state" in self._items(step):  # the earlier layout, from before EMAs
            target = {"params": abstract_state.params, **_optimizer_part(abstract_state)}
            restored = self._restore_earlier_layout(step, target, partial=False)
            state = abstract_state.replace(**restored["state"])
            if ema_target is not None:
                state = state.replace(ema_params=_ema_or_copy(None, state.params))
            return state, dict(restored["data"])
        items = {
            "params": ocp.args.StandardRestore(abstract_state.params),
            "train_state": ocp.args.StandardRestore(_optimizer_part(abstract_state)),
            "data": data,
        }
        if ema_target is not None and self.holds_ema(step):
            items["ema_params"] = ocp.args.StandardRestore(ema_target)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        state = abstract_state.replace(params=restored["params"], **restored["train_state"])
        if ema_target is not None:
            ema = restored["ema_params"] if "ema_params" in items else None
            state = state.replace(ema_params=_ema_or_copy(ema, state.params))
        return state, dict(restored["data"])

    def _restore_earlier_layout(self, step: int, target: Any, *, partial: bool) -> Any:
        """Checkpoints of the earlier layout: one `state` item, the whole TrainState."""
        state = ocp.args.PyTreeRestore(
            target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=partial,
        )
        data = ocp.args.JsonRestore()
        return self.manager.restore(step, args=ocp.args.Composite(state=state, data=data))

    # ------------------------------------------------------------------------------------------
    # Unreadable checkpoints
    # ------------------------------------------------------------------------------------------
    def read_or_raise(self, step: int, read: Callable[[int], T]) -> T:
        """`read(step)`, with any failure to read the files raised as UnreadableCheckpointError
        naming the step (CheckpointMismatchError and errors of the machine pass unchanged)."""
        try:
            return read(step)
        except (CheckpointMismatchError, UnreadableCheckpointError):
            raise
        except Exception as error:
            if _is_resource_error(error):
                raise
            raise UnreadableCheckpointError(
                f"checkpoint {step} in {self.directory} cannot be read ({_reason(error)})"
            ) from error

    def set_aside(self, step: int) -> str:
        """Move checkpoint `step` out of the manager's sight, into the set-aside directory (a
        name that is free: never over an earlier one); returns where it went."""
        os.makedirs(self.set_aside_directory, exist_ok=True)
        target = os.path.join(self.set_aside_directory, str(step))
        if os.path.exists(target):
            target += time.strftime("-%Y%m%d-%H%M%S")
        shutil.move(os.path.join(self.directory, str(step)), target)
        self.manager.reload()
        return target

    def newest_readable(
        self,
        read: Callable[[int], T],
        *,
        warn: Callable[[str], None],
        set_aside: Callable[[int], str] | None = None,
        agree: Callable[[bool], bool] = lambda ok: ok,
    ) -> tuple[int, T] | None:
        """(step, read(step)) of the newest checkpoint that `read` can read; None if there is
        no checkpoint at all.

        Each newer checkpoint that cannot be read is reported through `warn` and, when
        `set_aside` is given (`self.set_aside`, or a multi-process wrapper of it), moved aside
        by it. If none can be read, raises UnreadableCheckpointError naming them. `agree(ok)`
        is True when every process read its copy (multi-process runs fall back together).
        """
        unreadable = []
        for step in sorted(self.all_steps(), reverse=True):
            error, value = None, None
            try:
                value = self.read_or_raise(step, read)
            except UnreadableCheckpointError as failure:
                error = failure
            if agree(error is None):
                return step, value
            message = str(error) if error else f"checkpoint {step} cannot be read by every process"
            if set_aside is not None:
                message += f"; moved it to {set_aside(step)}"
            warn(f"warning: {message}")
            unreadable.append(step)
        if unreadable:
            raise UnreadableCheckpointError(
                f"no checkpoint in {self.directory} can be read (steps "
                f"{', '.join(map(str, unreadable))})"
            )
        return None

    def best_step(self) -> int | None:
        """The kept step with the lowest validation loss (None if none was saved with one)."""
        scored = []
        for step in self.manager.all_steps():
            metrics = self.manager.metrics(step)
            if metrics and BEST_METRIC in metrics:
                scored.append((metrics[BEST_METRIC], step))
        return min(scored)[1] if scored else None

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _step_or_latest(self, step: int | None) -> int:
        if step is None:
            step = self.manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self.manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {self.directory}; "
                f"available: {sorted(self.manager.all_steps())}"
            )
        return step


def abstract_like(tree: Any) -> Any:
    """Shapes, dtypes and shardings of `tree` without its values (a restore target).

    Leaves without a sharding (e.g. from `jax.eval_shape`) get this process's first device:
    otherwise orbax would restore onto the sharding recorded at save time, which names
    devices this process may not have (a checkpoint of a multi-process run read on one host).
    """
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(value: Any) -> Any:
        struct = ocp.utils.to_shape_dtype_struct(value)
        if getattr(struct, "sharding", None) is None:
            struct = jax.ShapeDtypeStruct(struct.shape, struct.dtype, sharding=device)
        return struct

    return jax.tree.map(leaf, tree)


def _ema_or_copy(ema: Any, params: Any) -> Any:
    """The restored EMA, or where the checkpoint has none a copy of the restored params to
    start it from (a copy: a train step donates the state, and one buffer cannot be donated
    twice)."""
    return jax.tree.map(jnp.copy, params) if ema is None else ema


def _optimizer_part(state: Any) -> dict[str, Any]:
    """What a TrainState holds beside its params (apply_fn and tx are code, not data)."""
    return {"step": state.step, "opt_state": state.opt_state, "dropout_key": state.dropout_key}
