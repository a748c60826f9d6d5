"""Multi-process training on CPU: 2 processes x 4 devices compute what 1 x 8 and 1 x 1 compute.

Every run is `python -m train` in subprocesses, as a user starts it, over localhost with a free
port. Each child gets 4 (or 8) virtual CPU devices from XLA_FLAGS; cross-process CPU
collectives are jax's default, gloo. One tiny model and one tiny text dataset (written here,
with its SentencePiece tokenizer trained by process 0 and read by process 1) for every run:

    single      1 process, parallel=single, M steps               (the reference)
    mesh8       1 process x 8 devices, M steps
    two         2 processes x 4 devices, N steps, then resumed to M in the same workdir

The losses in metrics.jsonl (train and validation, written by process 0 alone) and the final
parameters agree to float32 tolerance; the 2-process run resumed from the checkpoint both
processes wrote. Then the failure modes: a killed peer, disagreeing process counts, an
unreachable coordinator, pmap under several processes: each ends with a clear error within a
bounded time, with a nonzero status.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from train.data.numbers import number_to_words
from train.metric_writers import read_metrics
from train.workdir import load_run

ROOT = Path(__file__).resolve().parents[2]
N_STEPS, M_STEPS = 4, 8
RTOL, ATOL = 1e-5, 1e-6  # float32 with other summation orders (as tests/flax_transformer)
WAIT_S = 240  # bound on every subprocess wait

TINY = {
    "model.d_model": 32,
    "model.num_heads": 2,
    "model.num_encoder_layers": 1,
    "model.num_decoder_layers": 1,
    "model.d_ff": 64,
    "model.max_len": 64,
    "tokenizer_vocab_size": 300,
    "batching": "examples",  # the same batches whatever the device count
    "batch_size": 16,
    "eval_batch_size": 16,
    "max_length": 48,
    "warmup_steps": 4,
    "cooldown_fraction": 0.0,
    # Adam divides by sqrt(v) + eps: with the paper's eps=1e-9 float noise in a gradient that is
    # zero in exact arithmetic becomes a full step (see tests/flax_transformer/test_parallel.py);
    # a larger eps keeps the update close to linear in the gradient, so tolerances mean something.
    "adam_eps": 1e-3,
    "num_train_steps": M_STEPS,
    "log_every_steps": 2,
    "eval_every_steps": N_STEPS,
    "checkpoint_every_steps": N_STEPS,
    "num_validation_examples": 0,
    "validation_decoding": "",
    "test_decoding": "greedy",
    "num_samples": 1,
    "progress_bar": False,
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def child_env(devices: int) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        # No LLVM optimisation: faster compiles; every compared run uses the same flags.
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def text_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """{split}.en (digits) / {split}.de (number words) files and an empty TFDS dir."""
    base = tmp_path_factory.mktemp("multiprocess_data")
    text = base / "text"
    text.mkdir()
    rng = np.random.default_rng(0)
    for split, count in {"train": 400, "val": 32, "test2016": 32}.items():
        numbers = rng.integers(0, 10**5, size=count)
        (text / f"{split}.en").write_text("".join(f"{n}\n" for n in numbers))
        (text / f"{split}.de").write_text("".join(f"{number_to_words(int(n))}\n" for n in numbers))
    return {"data_path": str(text), "data_dir": str(base / "tfds")}


def command(workdir: Path, data: dict[str, str], *flags: str, **overrides: object) -> list[str]:
    values = {**TINY, **data, **overrides}
    return [
        sys.executable,
        "-m",
        "train",
        f"--workdir={workdir}",
        f"--config={ROOT / 'train' / 'configs' / 'multi30k.py'}",
        *flags,
        *(f"--config.{key}={value}" for key, value in values.items()),
    ]


def start(args: list[str], devices: int) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=child_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = WAIT_S) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"still running after {timeout}s:\n{output[-4000:]}") from None
    return process.returncode, output


def start_processes(
    workdir: Path,
    data: dict[str, str],
    count: int = 2,
    extra: dict[int, list[str]] | None = None,
    heartbeat: int = 30,
    **overrides: object,
) -> list[subprocess.Popen]:
    address = f"localhost:{free_port()}"
    processes = []
    for index in range(count):
        flags = [
            f"--coordinator_address={address}",
            f"--num_processes={count}",
            f"--process_id={index}",
            "--initialization_timeout=60",
            f"--heartbeat_timeout={heartbeat}",
            "--shutdown_timeout=30",
            *(extra or {}).get(index, []),
        ]
        processes.append(start(command(workdir, data, *flags, **overrides), devices=4))
    return processes


def run_processes(processes: list[subprocess.Popen]) -> list[str]:
    outputs = []
    for process in processes:
        returncode, output = finish(process)
        assert returncode == 0, output[-4000:]
        outputs.append(output)
    return outputs


def losses(workdir: Path) -> dict[tuple[str, int], float]:
    return {
        (record["split"], record["step"]): record["loss"]
        for record in read_metrics(workdir / "metrics.jsonl")
        if record["split"] in ("train", "validation")
    }


def assert_trees_close(left: dict, right: dict) -> None:
    left_leaves = jax.tree_util.tree_leaves_with_path(left)
    right_leaves = jax.tree_util.tree_leaves_with_path(right)
    assert [path for path, _ in left_leaves] == [path for path, _ in right_leaves]
    for (path, a), (_, b) in zip(left_leaves, right_leaves, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind in "fc":
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=str(path))
        else:
            np.testing.assert_array_equal(a, b, err_msg=str(path))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, text_data: dict[str, str]) -> dict:
    """The three runs of the module doc (the two 1-process runs side by side)."""
    base = tmp_path_factory.mktemp("multiprocess_runs")
    workdirs = {name: base / name for name in ("single", "mesh8", "two")}
    # The 2-process run first: it trains the tokenizer (process 0) that the others copy, so
    # every run tokenizes the same way.
    first = start_processes(workdirs["two"], text_data, num_train_steps=N_STEPS)
    first_outputs = run_processes(first)
    for name in ("single", "mesh8"):
        workdirs[name].mkdir()
        (workdirs[name] / "tokenizer.model").write_bytes(
            (workdirs["two"] / "tokenizer.model").read_bytes()
        )
    one = [
        start(command(workdirs["single"], text_data, parallel="single"), devices=1),
        start(command(workdirs["mesh8"], text_data, parallel="mesh"), devices=8),
    ]
    resumed = start_processes(workdirs["two"], text_data)
    return {
        "workdirs": workdirs,
        "first": first_outputs,
        "one": run_processes(one),
        "resumed": run_processes(resumed),
    }


# ---------------------------------------------------------------------------------------------
def test_two_processes_match_one_process_and_one_device(runs: dict) -> None:
    workdirs = runs["workdirs"]
    expected = losses(workdirs["single"])
    assert [key for key in expected if key[0] == "train"] == [
        ("train", step) for step in range(2, M_STEPS + 1, 2)
    ]
    for name in ("mesh8", "two"):
        got = losses(workdirs[name])
        assert sorted(got) == sorted(expected), name
        for key, value in expected.items():
            np.testing.assert_allclose(
                got[key], value, rtol=RTOL, atol=ATOL, err_msg=f"{name} {key}"
            )
        # Read back as `train.evaluate` reads it, on this process's one device: a checkpoint
        # written by 8 devices of 2 processes restores anywhere.
        assert_trees_close(load_run(workdirs["single"]).params, load_run(workdirs[name]).params)


def test_both_processes_resume_from_the_checkpoint_they_wrote(runs: dict) -> None:
    workdirs = runs["workdirs"]
    assert sorted(os.listdir(workdirs["two"] / "checkpoints")) >= [str(N_STEPS), str(M_STEPS)]
    # Process 0 logs, process 1 is quiet (no log lines, no metrics of its own).
    process0, process1 = runs["resumed"]
    assert f"Resuming from step {N_STEPS}" in process0
    assert "Resuming" not in process1 and "loss" not in process1
    # One metrics file, each step once: the first run's steps, then the resumed run's.
    records = read_metrics(workdirs["two"] / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == list(range(2, M_STEPS + 1, 2))
    tests = [r for r in records if r["split"] == "test"]
    assert [r["step"] for r in tests] == [N_STEPS, M_STEPS]
    assert tests[-1]["examples"] == 32  # every test sentence decoded, by one process or other
    single_test = [
        r for r in read_metrics(workdirs["single"] / "metrics.jsonl") if r["split"] == "test"
    ]
    np.testing.assert_allclose(tests[-1]["loss"], single_test[-1]["loss"], rtol=RTOL, atol=ATOL)


def test_a_killed_peer_stops_the_survivor(tmp_path: Path, text_data: dict[str, str]) -> None:
    processes = start_processes(
        tmp_path / "run", text_data, heartbeat=5, num_train_steps=100_000,
        checkpoint_every_steps=100_000,
        log_every_steps=1, eval_every_steps=100_000,
    )  # fmt: skip
    survivor, victim = processes
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + WAIT_S
    while not (metrics.exists() and metrics.read_text().strip()):  # training is under way
        assert survivor.poll() is None and victim.poll() is None, finish(survivor)[1][-3000:]
        assert time.monotonic() < deadline, "no step was logged in time"
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    returncode, output = finish(survivor, timeout=60)
    assert returncode != 0
    assert time.monotonic() - killed < 30  # --heartbeat_timeout=5 and then some
    assert "another task died" in output or "unhealthy" in output, output[-3000:]
    victim.wait()


def test_disagreeing_process_counts_are_named(tmp_path: Path, text_data) -> None:
    processes = start_processes(tmp_path / "run", text_data, extra={1: ["--num_processes=3"]})
    for process in processes:
        returncode, output = finish(process, timeout=90)
        assert returncode == 1, output[-3000:]
        assert "the processes disagree on the process count" in output, output[-3000:]


def test_an_unreachable_coordinator_is_an_error_in_bounded_time(tmp_path: Path, text_data) -> None:
    flags = [
        f"--coordinator_address=localhost:{free_port()}",  # nobody listens there
        "--num_processes=2",
        "--process_id=1",
        "--initialization_timeout=3",
    ]
    began = time.monotonic()
    returncode, output = finish(start(command(tmp_path, text_data, *flags), devices=4), 90)
    assert returncode == 1
    assert time.monotonic() - began < 60
    assert "could not join the multi-process run (localhost:" in output, output[-3000:]
    assert "within --initialization_timeout=3s" in output


def test_pmap_is_refused_under_several_processes(tmp_path: Path, text_data) -> None:
    for process in start_processes(tmp_path / "run", text_data, parallel="pmap"):
        returncode, output = finish(process, timeout=90)
        assert returncode == 1, output[-3000:]
        assert "use --config.parallel=mesh" in output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"num_processes": 2}, "needs --coordinator_address, --process_id too"),
        (
            {"coordinator_address": "host:1", "num_processes": 2, "process_id": 2},
            r"--process_id must be in \[0, 1\]",
        ),
        ({"coordinator_address": "nohost", "num_processes": 2, "process_id": 0}, "not HOST:PORT"),
    ],
)
def test_bad_distributed_flags_are_named(arguments: dict, message: str, monkeypatch) -> None:
    from train import distributed

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(distributed.DistributedSetupError, match=message):
        distributed.initialize_from_flags(**arguments)


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "needs --coordinator_address too"),
        ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' is not an integer"),
    ],
)
def test_the_environment_is_read_and_checked(environment: dict, message: str, monkeypatch) -> None:
    from train import distributed

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(distributed.DistributedSetupError, match=message):
        distributed.initialize_from_flags()


def test_one_process_joins_nothing(monkeypatch) -> None:
    from train import distributed

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "detected_cluster", lambda: None)  # CI under SLURM
    assert distributed.initialize_from_flags() is False
    assert distributed.initialize_from_flags(num_processes=1) is False
    assert not distributed.is_multiprocess() and distributed.is_main_process()
