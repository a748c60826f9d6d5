"""The training entry point: a tiny end-to-end run, refusals, and fault injection: SIGKILL at
random moments and during saves (exact resume), Ctrl-C, a run driven to NaN, an unreadable
checkpoint.

The built-in dataset is prepared once per module in a temporary TFDS data_dir. The resume and
interrupt tests run `python -m train` in subprocesses, as a user does.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from train.checkpoints import Checkpointer, CheckpointMismatchError
from train.configs import default as default_config
from train.data.numbers import SPLIT_SIZES, number_words_vocabulary, prepare_number_words
from train.metric_writers import read_metrics

# A tiny model and short intervals: every test here trains for seconds.
TINY_OVERRIDES = {
    "model.d_model": 32,
    "model.num_heads": 4,
    "model.num_encoder_layers": 1,
    "model.num_decoder_layers": 1,
    "model.d_ff": 64,
    "batch_size": 16,
    "eval_batch_size": 200,
    "warmup_steps": 10,
    "cooldown_fraction": 0.0,
    "num_train_steps": 12,
    "log_every_steps": 4,
    "eval_every_steps": 6,
    "checkpoint_every_steps": 6,
    "num_validation_examples": 50,
    "num_samples": 1,
    "parallel": "single",
    "progress_bar": False,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("tfds")
    prepare_number_words(directory)
    return str(directory)


def tiny_config(data_dir: str, **overrides: object):
    config = default_config.get_config()
    for key, value in {**TINY_OVERRIDES, "data_dir": data_dir, **overrides}.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def command_line(workdir: str, data_dir: str, **overrides: object) -> list[str]:
    values = {**TINY_OVERRIDES, "data_dir": data_dir, **overrides}
    return [sys.executable, "-m", "train", f"--workdir={workdir}"] + [
        f"--config.{key}={value}" for key, value in values.items()
    ]


def restored_state(workdir: str, step: int) -> dict:
    """The raw saved arrays of a checkpoint (params and the rest of the train state), read
    without a target (numpy)."""
    path = os.path.join(workdir, "checkpoints", str(step))
    with ocp.StandardCheckpointer() as checkpointer:
        return {
            item: checkpointer.restore(os.path.join(path, item))
            for item in ("params", "train_state")
        }


def assert_trees_identical(left: dict, right: dict) -> None:
    left_leaves = jax.tree_util.tree_leaves_with_path(left)
    right_leaves = jax.tree_util.tree_leaves_with_path(right)
    assert [path for path, _ in left_leaves] == [path for path, _ in right_leaves]
    for (path, a), (_, b) in zip(left_leaves, right_leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def wait_for_checkpoint(workdir: str, process: subprocess.Popen, timeout: float = 120) -> int:
    """Poll until a finished checkpoint exists in workdir (orbax renames it when complete)."""
    directory = os.path.join(workdir, "checkpoints")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isdir(directory):
            steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
            if steps:
                return max(steps)
        if process.poll() is not None:
            raise AssertionError(f"training exited early:\n{process.stdout.read()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("no checkpoint appeared in time")


# ---------------------------------------------------------------------------------------------
def test_tiny_run_writes_metrics_checkpoints_and_learns(data_dir: str, tmp_path) -> None:
    from train.loop import train_and_evaluate

    config = tiny_config(data_dir, num_train_steps=60, eval_every_steps=30)
    result = train_and_evaluate(config, str(tmp_path))
    assert not result.interrupted and result.step == 60
    records = read_metrics(tmp_path / "metrics.jsonl")
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == list(range(4, 61, 4))
    assert train_records[-1]["loss"] < train_records[0]["loss"]  # it learns something
    assert {"loss", "nll", "accuracy", "learning_rate", "target_tokens_per_second"} <= set(
        train_records[-1]
    )
    validation = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in validation] == [30, 60]
    assert validation[-1]["examples"] == 50
    assert result.test["examples"] == SPLIT_SIZES["test"]
    assert 0.0 <= result.test["exact_match"] <= 1.0
    # Exact match per digit count and over 0..999: test holds every number below 1000.
    assert result.test["examples_below_1000"] == 1000 and result.test["examples_digits_9"] == 300
    assert 0.0 <= validation[-1]["exact_match_digits_1"] <= 1.0
    assert os.listdir(tmp_path / "tensorboard")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["d_model"] == 32
    assert saved["model"]["vocab_size"] == number_words_vocabulary().vocab_size
    with Checkpointer(tmp_path / "checkpoints") as checkpointer:
        assert checkpointer.latest_step() == 60
        assert checkpointer.read_config()["model"] == saved["model"]


def test_resuming_with_another_model_config_is_refused(data_dir: str, tmp_path) -> None:
    from train.loop import train_and_evaluate

    train_and_evaluate(tiny_config(data_dir, num_train_steps=6), str(tmp_path))
    expected = r"d_model: checkpoint has 32, this run has 16"
    with pytest.raises(CheckpointMismatchError, match=expected):
        train_and_evaluate(
            tiny_config(data_dir, num_train_steps=12, **{"model.d_model": 16}), str(tmp_path)
        )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "config.batch_size must be positive"),
        ("parallel", "threads", "config.parallel must be one of"),
        ("label_smoothing", 1.0, r"config.label_smoothing must be in \[0, 1\)"),
        ("cooldown_fraction", 1.5, r"config.cooldown_fraction must be in \[0, 1\]"),
        ("model.num_heads", 5, "d_model .* must be divisible by num_heads"),
        ("model.max_len", 8, "config.model.max_len is 8"),
    ],
)
def test_bad_config_values_are_named(data_dir: str, tmp_path, field, value, message) -> None:
    from train.loop import train_and_evaluate

    with pytest.raises(ValueError, match=message):
        train_and_evaluate(tiny_config(data_dir, **{field: value}), str(tmp_path))


def _kill_during_a_save(workdir: str, process: subprocess.Popen, timeout: float = 120) -> bool:
    """SIGKILL `process` while orbax writes a checkpoint (its temporary directory exists);
    False if the process finished first."""
    directory = os.path.join(workdir, "checkpoints")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if os.path.isdir(directory) and any("tmp" in name for name in os.listdir(directory)):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.002)
    return False


def test_sigkill_at_random_moments_and_during_saves_resumes_bit_identically(
    data_dir: str, tmp_path
) -> None:
    """Fault injection: a run SIGKILLed again and again (during checkpoint saves, and at random
    moments: start-up, restore, training) ends with the parameters and optimizer state of an
    uninterrupted run, bit for bit, on CPU."""
    total = 40
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    quick = {"eval_every_steps": 1000, "checkpoint_every_steps": 4, "num_train_steps": total}
    subprocess.run(command_line(straight, data_dir, **quick), check=True, capture_output=True)
    rng = random.Random(16)
    during_saves = 0
    for attempt in range(3):  # killed during a save, at a random moment, during a save
        process = subprocess.Popen(
            command_line(interrupted, data_dir, **quick),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if attempt % 2 == 0:
            during_saves += _kill_during_a_save(interrupted, process)
        else:
            time.sleep(rng.uniform(1.0, 8.0))
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert during_saves >= 1
    resumed = subprocess.run(
        command_line(interrupted, data_dir, **quick), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with Checkpointer(os.path.join(interrupted, "checkpoints")) as checkpointer:
        assert checkpointer.latest_step() == total
    assert_trees_identical(restored_state(straight, total), restored_state(interrupted, total))


@pytest.fixture(scope="module")
def finished_run(data_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny run of 12 steps: checkpoints 6 and 12, each saved with its validation loss."""
    from train.loop import train_and_evaluate

    workdir = str(tmp_path_factory.mktemp("finished"))
    train_and_evaluate(tiny_config(data_dir), workdir)
    return workdir


def test_a_run_driven_to_nan_stops_with_status_3_and_keeps_its_checkpoints(
    data_dir: str, finished_run: str, tmp_path
) -> None:
    workdir = str(tmp_path / "run")
    shutil.copytree(finished_run, workdir)
    with Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
        steps, best = checkpointer.all_steps(), checkpointer.best_step()
    absurd = {
        "num_train_steps": 200,
        "learning_rate_scale": 1e9,
        "allow_training_changes": True,
        "divergence_factor": 0.0,  # only the non-finite check: the loss must become NaN
        "log_every_steps": 1,
        "checkpoint_every_steps": 1,  # a save would follow every step: none may hold a NaN
    }
    result = subprocess.run(
        command_line(workdir, data_dir, **absurd), capture_output=True, text=True
    )
    assert result.returncode == 3, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert len(errors) == 2 and "Traceback" not in result.stderr
    assert re.match(
        r"error: training diverged at step \d+: the (training loss|gradient norm) is (nan|inf)",
        errors[0],
    ), errors
    assert errors[1].startswith("hint: try a lower --config.learning_rate_scale")
    with Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
        assert checkpointer.best_step() == best  # the best finite one is kept
        kept = checkpointer.all_steps()
    assert set(steps) <= set(kept)
    for step in kept:
        for leaf in jax.tree.leaves(restored_state(workdir, step)):
            assert np.all(np.isfinite(np.asarray(leaf, np.float64))), step


def test_an_unreadable_latest_checkpoint_is_set_aside_and_the_run_resumes_exactly(
    data_dir: str, finished_run: str, tmp_path, capsys
) -> None:
    from train.loop import train_and_evaluate

    workdir = str(tmp_path / "run")
    shutil.copytree(finished_run, workdir)
    with open(os.path.join(workdir, "checkpoints", "12", "config", "metadata"), "w"):
        pass  # emptied, as a full disk leaves a file
    result = train_and_evaluate(tiny_config(data_dir), workdir)  # resumes from step 6
    assert result.step == 12 and not result.diverged
    output = capsys.readouterr().out
    warning = [line for line in output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "checkpoint 12 in " in warning[0], output
    assert "cannot be read (JSONDecodeError" in warning[0]
    assert os.path.isdir(os.path.join(workdir, "checkpoints_unreadable", "12"))  # kept
    assert "Resuming from step 6" in output
    assert_trees_identical(restored_state(finished_run, 12), restored_state(workdir, 12))


def saved_ema(workdir: str, step: int) -> dict:
    """The moving average of the params saved with a checkpoint (numpy)."""
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.join(workdir, "checkpoints", str(step), "ema_params"))


def validation_losses(workdir: str) -> list[float]:
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    return [r["loss"] for r in records if r["split"] == "validation"]


def test_a_parameter_ema_is_evaluated_saved_and_resumed_exactly(
    data_dir: str, finished_run: str, tmp_path, capsys
) -> None:
    from train.loop import train_and_evaluate
    from train.workdir import load_run

    with_ema = str(tmp_path / "ema")
    train_and_evaluate(tiny_config(data_dir, ema_decay=0.9), with_ema)
    # The average never feeds back: params and optimizer state are those of the run without.
    assert_trees_identical(restored_state(finished_run, 12), restored_state(with_ema, 12))
    # What is evaluated is the average: the same params, other validation losses.
    plain_losses, ema_losses = validation_losses(finished_run), validation_losses(with_ema)
    assert len(ema_losses) == len(plain_losses) == 2
    differ = [a != b for a, b in zip(plain_losses, ema_losses, strict=True)]
    assert all(differ), (plain_losses, ema_losses)
    run = load_run(with_ema)
    assert run.ema and run.describe() == "the parameter EMA of checkpoint 12"
    assert_trees_identical(run.params, saved_ema(with_ema, 12))
    averaged = load_run(with_ema, average_last=2)
    assert averaged.describe() == "the average of the parameter EMAs of checkpoints 6, 12"
    raw = load_run(with_ema, raw=True)
    assert not raw.ema and raw.describe() == "checkpoint 12"
    assert_trees_identical(raw.params, restored_state(finished_run, 12)["params"])

    resumed = str(tmp_path / "resumed")
    shutil.copytree(with_ema, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "12"))
    train_and_evaluate(tiny_config(data_dir, ema_decay=0.9), resumed)  # from step 6
    assert_trees_identical(saved_ema(with_ema, 12), saved_ema(resumed, 12))

    late = str(tmp_path / "late")  # the average turned on when resuming a run without one
    shutil.copytree(finished_run, late)
    shutil.rmtree(os.path.join(late, "checkpoints", "12"))
    capsys.readouterr()
    train_and_evaluate(tiny_config(data_dir, ema_decay=0.9), late)
    output = capsys.readouterr().out
    assert "changed since the checkpoint: ema_decay: 0.0 -> 0.9" in output, output
    assert "the checkpoint keeps no parameter EMA: it starts from the params of step 6" in output
    assert_trees_identical(restored_state(finished_run, 12), restored_state(late, 12))
    assert load_run(late).ema
    # Checkpoint 6 keeps no EMA and 12 does: an average of the two is of their raw params.
    warnings: list[str] = []
    mixed = load_run(late, average_last=2, warn=warnings.append)
    assert warnings == [
        "checkpoint 6 keeps no parameter EMA: averaging the raw params of checkpoints 6, 12"
    ]
    assert not mixed.ema and mixed.describe() == "the average of checkpoints 6, 12"
    raw_6, raw_12 = (restored_state(late, step)["params"] for step in (6, 12))
    expected = jax.tree.map(
        lambda a, b: (np.asarray(a, np.float64) + np.asarray(b, np.float64)) / 2, raw_6, raw_12
    )
    jax.tree.map(
        lambda got, want: np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7),
        mixed.params,
        expected,
    )


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(data_dir: str, tmp_path) -> None:
    workdir = str(tmp_path)
    process = subprocess.Popen(
        command_line(workdir, data_dir, num_train_steps=100_000, checkpoint_every_steps=10),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first_checkpoint = wait_for_checkpoint(workdir, process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "Traceback" not in output
    match = [line for line in output.splitlines() if line.startswith("Stopped at step")]
    assert match, output
    stopped_at = int(match[0].split()[3].rstrip(";"))
    with Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
        assert checkpointer.latest_step() == stopped_at >= first_checkpoint


def test_help_lists_the_flags_and_config_fields() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "train", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for expected in ("--workdir", "--config.X=V", "num_train_steps = 1500", "model.d_model = 256"):
        assert expected in result.stdout
