"""Checkpoints: the layout (params apart from the optimizer state), retention, exact restore,
imported and earlier-layout checkpoints, errors."""

from __future__ import annotations

import os

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import struct

from train.checkpoints import (
    Checkpointer,
    CheckpointMismatchError,
    UnreadableCheckpointError,
    abstract_like,
)


@struct.dataclass
class State:
    """What a TrainState holds, without the model (the checkpointer reads these fields)."""

    step: np.ndarray
    params: dict
    opt_state: object
    dropout_key: np.ndarray


def _state(scale: float = 1.0) -> State:
    params = {"w": np.arange(3.0, dtype=np.float32) * scale, "b": np.ones(2, np.float32)}
    opt_state = optax.adam(1e-3).init(params)
    return State(np.array(7, np.int32), params, opt_state, np.arange(2, dtype=np.uint32))


def _assert_same(a, b) -> None:
    for left, right in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(left), np.asarray(right))


def _save_earlier_layout(directory, step: int, state: State) -> None:
    """A checkpoint as written before params were stored apart: one `state` item."""
    with ocp.CheckpointManager(directory, item_names=("state", "config", "data")) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave({"model": {}}),
                data=ocp.args.JsonSave({"step": step, "seed": 0}),
            ),
        )
        manager.wait_until_finished()


def test_params_are_stored_apart_and_read_without_the_optimizer(tmp_path) -> None:
    state = _state(2.0)
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(3, state, config={"model": {}}, data_position={"step": 3, "seed": 0})
        checkpointer.wait()
        items = {name for name in os.listdir(tmp_path / "3") if (tmp_path / "3" / name).is_dir()}
        assert items == {"config", "data", "params", "train_state"}
        params = checkpointer.restore_params(abstract_like(state.params), 3)
        _assert_same(params, state.params)
        restored, position = checkpointer.restore(abstract_like(_state()), 3)
        _assert_same(restored, state)
        assert position == {"step": 3, "seed": 0}
        assert not checkpointer.holds_params_only(3)


def test_checkpoints_of_the_earlier_layout_still_load(tmp_path) -> None:
    """Before: one `state` item held the whole TrainState. Its params read with the model's
    shapes alone; resuming restores the whole state."""
    state = _state(3.0)
    _save_earlier_layout(tmp_path, 5, state)
    with Checkpointer(tmp_path) as checkpointer:
        _assert_same(checkpointer.restore_params(abstract_like(state.params), 5), state.params)
        restored, position = checkpointer.restore(abstract_like(_state()), 5)
        _assert_same(restored, state)
        assert position == {"step": 5, "seed": 0}
        assert not checkpointer.holds_params_only(5)


@struct.dataclass
class EmaState(State):
    """A TrainState of a run that keeps a moving average of its params."""

    ema_params: dict | None = None


def _ema_state(scale: float = 1.0) -> EmaState:
    state = _state(scale)
    ema = {name: value + 0.5 for name, value in state.params.items()}
    return EmaState(state.step, state.params, state.opt_state, state.dropout_key, ema)


def test_the_ema_is_an_item_of_its_own_read_by_default_for_evaluation(tmp_path) -> None:
    state = _ema_state(2.0)
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(3, state, config={"model": {}}, data_position={"step": 3, "seed": 0})
        checkpointer.wait()
        items = {name for name in os.listdir(tmp_path / "3") if (tmp_path / "3" / name).is_dir()}
        assert items == {"config", "data", "params", "train_state", "ema_params"}
        assert checkpointer.holds_ema(3)
        target = abstract_like(state.params)
        _assert_same(checkpointer.restore_params(target, 3), state.ema_params)
        _assert_same(checkpointer.restore_params(target, 3, raw=True), state.params)
        restored, _ = checkpointer.restore(abstract_like(_ema_state()), 3)
        _assert_same(restored, state)
        # EMA turned off when resuming: the rest of the state, the average left unread.
        restored, _ = checkpointer.restore(abstract_like(_state()), 3)
        _assert_same(restored, _state(2.0))


def test_an_ema_turned_on_when_resuming_starts_from_the_restored_params(tmp_path) -> None:
    state = _state(3.0)
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(4, state, config={"model": {}}, data_position={"step": 4, "seed": 0})
        checkpointer.wait()
        assert not checkpointer.holds_ema(4)
        _assert_same(checkpointer.restore_params(abstract_like(state.params), 4), state.params)
        restored, _ = checkpointer.restore(abstract_like(_ema_state()), 4)
        _assert_same(restored.ema_params, state.params)
        _assert_same(restored.params, state.params)
        # Copies: a donating train step may delete one without the other.
        assert restored.ema_params["w"] is not restored.params["w"]


def test_an_ema_turned_on_over_an_earlier_layout_checkpoint(tmp_path) -> None:
    state = _state(5.0)
    _save_earlier_layout(tmp_path, 2, state)
    with Checkpointer(tmp_path) as checkpointer:
        restored, _ = checkpointer.restore(abstract_like(_ema_state()), 2)
        _assert_same(restored.params, state.params)
        _assert_same(restored.ema_params, state.params)


def test_imported_params_only_checkpoints(tmp_path) -> None:
    params = _state(4.0).params
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save_params(0, params, config={"model": {}})
        assert checkpointer.holds_params_only(0)
        _assert_same(checkpointer.restore_params(abstract_like(params), 0), params)
        with pytest.raises(ValueError, match="holds imported parameters only"):
            checkpointer.restore(abstract_like(_state()), 0)
        with pytest.raises(FileExistsError, match="already has a checkpoint of step 0"):
            checkpointer.save_params(0, params, config={})


def test_checkpoints_keep_the_latest_k_plus_the_best(tmp_path) -> None:
    """keep=2: the two latest survive, plus the lowest validation loss; older ones go."""
    state = _state()
    losses = {1: 3.0, 2: 1.0, 3: 2.0, 4: None, 5: 2.5, 6: 2.2}
    with Checkpointer(tmp_path, keep=2) as checkpointer:
        for step, loss in losses.items():
            checkpointer.save(
                step,
                state,
                config={"model": {}},
                data_position={"step": step},
                metrics=None if loss is None else {"validation_loss": loss},
            )
            checkpointer.wait()
        assert checkpointer.all_steps() == [2, 5, 6]
        assert checkpointer.best_step() == 2
        restored, position = checkpointer.restore(state, step=2)
        np.testing.assert_array_equal(restored.params["w"], state.params["w"])
        assert position == {"step": 2}
        assert not checkpointer.save(6, state, config={}, data_position={})  # never overwritten
    # A resumed run (a new manager on the same directory) still knows which one is the best.
    with Checkpointer(tmp_path, keep=2) as checkpointer:
        for step in (7, 8):
            checkpointer.save(
                step,
                state,
                config={"model": {}},
                data_position={"step": step},
                metrics={"validation_loss": 5.0},
            )
            checkpointer.wait()
        assert checkpointer.all_steps() == [2, 7, 8]
        assert checkpointer.best_step() == 2


def test_restore_errors_name_the_directory(tmp_path) -> None:
    with (
        Checkpointer(tmp_path / "empty") as checkpointer,
        pytest.raises(FileNotFoundError, match="no checkpoint in .*empty"),
    ):
        checkpointer.read_config()


# ---------------------------------------------------------------------------------------------
# Unreadable checkpoints: set aside (never deleted), the newest readable one used
# ---------------------------------------------------------------------------------------------
def _largest_file(directory) -> str:
    files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
    return max(files, key=os.path.getsize)


def _truncate(path: str) -> None:
    with open(path, "r+b") as file:
        file.truncate(10)


def _overwrite(path: str) -> None:
    with open(path, "r+b") as file:
        file.write(b"\0" * 40)


def _empty(path: str) -> None:
    with open(path, "w"):
        pass


CORRUPTIONS = {  # what a full disk or a copy cut short leaves in a step directory
    "truncated array file": lambda step: _truncate(_largest_file(os.path.join(step, "params"))),
    "overwritten array bytes": lambda step: _overwrite(_largest_file(os.path.join(step, "params"))),
    "emptied config item": lambda step: _empty(os.path.join(step, "config", "metadata")),
    "missing manifest": lambda step: os.remove(os.path.join(step, "params", "manifest.ocdbt")),
}


def _saved_checkpoints(directory, steps) -> None:
    with Checkpointer(directory, keep=5) as checkpointer:
        for step in steps:
            checkpointer.save(
                step, _state(float(step)), config={"model": {}}, data_position={"step": step}
            )
        checkpointer.wait()


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_an_unreadable_latest_is_set_aside_and_the_previous_one_used(tmp_path, corruption) -> None:
    directory = tmp_path / "checkpoints"
    _saved_checkpoints(directory, [1, 2])
    CORRUPTIONS[corruption](os.path.join(directory, "2"))
    warnings: list[str] = []
    with Checkpointer(directory, set_aside_directory=tmp_path / "aside") as checkpointer:

        def read(step: int):
            checkpointer.read_config(step)
            return checkpointer.restore(_state(), step)

        step, (state, position) = checkpointer.newest_readable(
            read, warn=warnings.append, set_aside=checkpointer.set_aside
        )
        assert step == 1 and position == {"step": 1}
        np.testing.assert_array_equal(state.params["w"], _state(1.0).params["w"])
        assert checkpointer.all_steps() == [1]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: checkpoint 2 in ") and "cannot be read (" in warnings[0]
    assert f"moved it to {tmp_path / 'aside' / '2'}" in warnings[0]
    assert "\n" not in warnings[0]
    assert os.path.isdir(tmp_path / "aside" / "2")  # kept, not deleted
    with Checkpointer(directory) as checkpointer:
        assert checkpointer.all_steps() == [1]  # a later run no longer sees it


def test_without_set_aside_the_unreadable_one_stays_and_none_readable_is_an_error(tmp_path) -> None:
    directory = tmp_path / "checkpoints"
    _saved_checkpoints(directory, [1, 2])
    for step in ("1", "2"):
        CORRUPTIONS["emptied config item"](os.path.join(directory, step))
    warnings: list[str] = []
    with Checkpointer(directory) as checkpointer:
        expected = r"no checkpoint in .* can be read \(steps 2, 1\)"
        with pytest.raises(UnreadableCheckpointError, match=expected):
            checkpointer.newest_readable(checkpointer.read_config, warn=warnings.append)
        assert checkpointer.all_steps() == [1, 2]
    named = [warning.split(" in ")[0] for warning in warnings]
    assert named == ["warning: checkpoint 2", "warning: checkpoint 1"]


def test_a_mismatch_is_not_unreadable(tmp_path) -> None:
    _saved_checkpoints(tmp_path, [1])
    with Checkpointer(tmp_path) as checkpointer:

        def read(step: int):
            raise CheckpointMismatchError("another model")

        with pytest.raises(CheckpointMismatchError):
            checkpointer.newest_readable(read, warn=print, set_aside=checkpointer.set_aside)
        assert checkpointer.all_steps() == [1]
    with Checkpointer(tmp_path / "none") as checkpointer:
        assert checkpointer.newest_readable(checkpointer.read_config, warn=print) is None
