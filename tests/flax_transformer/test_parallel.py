"""Data parallelism: the pmap and mesh steps compute what the single-device step computes.

The main check needs 8 devices. On a CPU, JAX provides them only when
`XLA_FLAGS=--xla_force_host_platform_device_count=8` is set before it starts, so this file also
runs as a script (`PYTHONPATH=. python tests/flax_transformer/test_parallel.py OUT.npz` from the
repository root, which must be on the path for `tests.helpers`): the module-scoped fixture starts it
in a subprocess with that flag, the script runs every 8-device computation in one process (JAX
start-up and each compilation cost seconds) and saves the numbers, and the tests compare them.
The reference is always the single-device step on the same global batch.

The tests that need no second device run in this process, on the default single CPU device.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax_transformer import training
from flax_transformer.config import TransformerConfig
from flax_transformer.model import Transformer
from flax_transformer.parallel import DataParallel
from tests.helpers import random_tokens

ROOT = Path(__file__).resolve().parents[2]
NUM_DEVICES = 8
GLOBAL_BATCH = 16
TRAIN_STEPS = 3
BOS_ID = 1
MODES = ("single", "mesh", "pmap")

TINY = TransformerConfig.tiny(dropout_rate=0.0)
DROPOUT = TINY.replace(dropout_rate=0.1, attention_dropout_rate=0.1)

# float32 with different summation orders (per-device partial sums, then an all-reduce).
RTOL, ATOL = 1e-5, 1e-6
# Gradient accumulation: 32 rows = 4 per device, so k=4 leaves one row per device per micro-batch.
ACCUM_BATCH = 32
MICRO_BATCHES = (2, 4)
# Row r's target holds TARGET_LENGTHS[r % 4] tokens, minus 2 on odd devices' (odd r // 4) longer
# rows: every micro-batch holds another number of tokens, and so does every device.
TARGET_LENGTHS = (9, 1, 6, 2)
COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")


def sgd_with_momentum() -> optax.GradientTransformation:
    """The optimizer of the comparisons: it has state (the momentum), and its update is linear
    in the gradient. Adam (the paper's optimizer) divides by sqrt(second moment) + 1e-9, which
    turns float noise in a gradient that is zero in exact arithmetic (the attention key biases:
    softmax ignores a shift that is the same for every key) into steps of the full learning
    rate, so two correct paths differ there by ~lr per step: no tolerance would be meaningful.
    """
    return optax.sgd(learning_rate=0.05, momentum=0.9)


def translation_batch(rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    """A batch whose rows are padded to different lengths, so that the devices' shards of it
    hold different numbers of target tokens (what global token normalisation is about)."""
    source = random_tokens(rng, batch_size, 10, TINY.vocab_size)
    target = random_tokens(rng, batch_size, 9, TINY.vocab_size)
    decoder_input = np.concatenate([np.full((batch_size, 1), BOS_ID, np.int32), target[:, :-1]], 1)
    return {"source": source, "decoder_input": decoder_input, "target": target}


def accumulation_batch(rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    """A batch whose strided micro-batches (rows j, j + k, ...) hold very different numbers of
    padding tokens (see TARGET_LENGTHS): what normalising once by the whole batch is about."""
    batch = translation_batch(rng, batch_size)
    rows = np.arange(batch_size)
    lengths = np.array([TARGET_LENGTHS[r % 4] for r in rows])
    lengths = np.where(((rows // 4) % 2 == 1) & (lengths > 2), lengths - 2, lengths)
    target = rng.integers(BOS_ID + 1, TINY.vocab_size, size=(batch_size, 9)).astype(np.int32)
    target[np.arange(9)[None, :] >= lengths[:, None]] = TINY.pad_id
    decoder_input = np.concatenate([np.full((batch_size, 1), BOS_ID), target[:, :-1]], 1)
    return {**batch, "target": target, "decoder_input": decoder_input.astype(np.int32)}


def collective_placement(hlo_text: str) -> dict[str, int]:
    """Collectives of a compiled (SPMD-partitioned) HLO module: how many of each kind in the
    entry computation ("entry/all-reduce") and in any other computation ("nested/..."): a while
    loop's body (a scan) is another computation, so a collective run per micro-batch is nested."""
    counts = {f"{where}/{kind}": 0 for where in ("entry", "nested") for kind in COLLECTIVES}
    where = "nested"
    for line in hlo_text.splitlines():
        if line.endswith("{") and not line.startswith(" "):  # a computation's header
            where = "entry" if line.startswith("ENTRY") else "nested"
        for kind in COLLECTIVES:
            if re.search(rf"\b{kind}(-start)?\(", line) and " = " in line:
                counts[f"{where}/{kind}"] += 1
    return counts


def eval_batch(rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    """An eval batch as the data pipeline makes it: the last rows are filler (all-pad target,
    "example_mask" 0) so that the final, partial batch keeps the compiled shape."""
    batch = translation_batch(rng, batch_size)
    example_mask = np.ones(batch_size, np.int32)
    example_mask[-3:] = 0
    batch["target"][-3:] = TINY.pad_id
    batch["example_mask"] = example_mask
    return batch


def initial_state(config: TransformerConfig = TINY) -> training.TrainState:
    return training.create_train_state(config, sgd_with_momentum(), jax.random.key(0))


def with_model(state: training.TrainState, config: TransformerConfig) -> training.TrainState:
    """The same parameters driven by a model with other (dropout) settings: the parameter shapes
    do not depend on dropout, and this saves compiling the initialisation again."""
    return state.replace(apply_fn=Transformer(config).apply)


def flat_leaves(tree: Any, prefix: str) -> dict[str, np.ndarray]:
    """Host copies of a pytree's leaves, keyed by prefix + path ("train/mesh/state/params/...")."""
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
    return {
        f"{prefix}/{jax.tree_util.keystr(path, simple=True, separator='/')}": np.asarray(leaf)
        for path, leaf in leaves
    }


def run_train_steps(
    parallel: DataParallel, state: training.TrainState, batch: Mapping[str, np.ndarray], steps: int
) -> tuple[training.TrainState, dict[str, np.ndarray]]:
    """`steps` updates on the same batch; returns the plain final state and metrics [steps]."""
    placed = parallel.put_state(state)
    history: list[dict[str, Any]] = []
    for _ in range(steps):
        placed, metrics = parallel.train_step(placed, parallel.put_batch(batch))
        history.append(metrics)
    history = jax.device_get(history)
    stacked = {key: np.array([m[key] for m in history]) for key in history[0]}
    return parallel.get_state(placed), stacked


def error_message(action: Callable[[], Any]) -> str:
    """The message of the ValueError that `action` raises ("" if it raises none)."""
    try:
        action()
    except ValueError as error:
        return str(error)
    return ""


def section(results: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays under `prefix/`, keyed by the rest of their name."""
    start = prefix + "/"
    return {key[len(start) :]: value for key, value in results.items() if key.startswith(start)}


def assert_trees_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Same names, same shapes (a pmap metric with a device axis would fail here) and values
    equal to float32 tolerance."""
    assert actual.keys() == expected.keys()
    for key in expected:
        assert np.shape(actual[key]) == np.shape(expected[key]), key
        np.testing.assert_allclose(actual[key], expected[key], rtol=RTOL, atol=ATOL, err_msg=key)


# ---------------------------------------------------------------------------------------------
# The 8-device script (runs in the subprocess)
# ---------------------------------------------------------------------------------------------
def count_compilations() -> Callable[[], int]:
    """Start counting XLA compilations; the returned function reads the count so far."""
    events: list[str] = []

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    return lambda: len(events)


def eight_device_results() -> dict[str, np.ndarray]:
    """Every 8-device computation of this file, as named arrays (see the tests for each)."""
    assert jax.device_count() == NUM_DEVICES, jax.devices()
    rng = np.random.default_rng(0)
    batch = translation_batch(rng, GLOBAL_BATCH)
    evaluation = eval_batch(rng, GLOBAL_BATCH)
    state = initial_state()
    compilations = count_compilations()
    results: dict[str, np.ndarray] = {
        "batch/target": batch["target"],
        "threefry_partitionable": np.array(jax.config.jax_threefry_partitionable),
    }

    parallels = {mode: DataParallel(mode, model_config=TINY) for mode in MODES}
    for mode, parallel in parallels.items():
        eval_sums = parallel.eval_step(parallel.put_state(state), parallel.put_batch(evaluation))
        results.update(flat_leaves(eval_sums, f"eval/{mode}"))

        placed = parallel.put_state(state)
        placed, metrics = parallel.train_step(placed, parallel.put_batch(batch))
        history = [metrics]
        compiled_before = compilations()
        for _ in range(TRAIN_STEPS - 1):
            placed, metrics = parallel.train_step(placed, parallel.put_batch(batch))
            history.append(metrics)
        results[f"recompilations/{mode}"] = np.array(compilations() - compiled_before)
        results[f"summary/{mode}/loss"] = np.array(training.summarize_metrics(history)["loss"])
        history = jax.device_get(history)
        for key in history[0]:
            results[f"train/{mode}/metrics/{key}"] = np.array([m[key] for m in history])
        results.update(flat_leaves(parallel.get_state(placed), f"train/{mode}/state"))

        results[f"errors/{mode}/batch_of_10"] = np.array(
            error_message(lambda p=parallel: p.put_batch(translation_batch(rng, 10)))
        )

    # Dropout on the mesh draws the single-device masks (partitionable threefry).
    dropout_state = with_model(state, DROPOUT)
    for mode in ("single", "mesh"):
        parallel = DataParallel(mode, model_config=DROPOUT)
        final, metrics = run_train_steps(parallel, dropout_state, batch, 1)
        results.update(flat_leaves(metrics, f"dropout/{mode}/metrics"))
        results.update(flat_leaves(final, f"dropout/{mode}/state"))

    # pmap: the same rows on device 0, then on device 1, every other device holding only padding
    # (no loss): one step's loss is then the loss of those rows under that device's mask.
    rows_per_device = GLOBAL_BATCH // NUM_DEVICES
    pmap_runs = {
        "dropout": (DataParallel("pmap", model_config=DROPOUT), dropout_state),
        "no_dropout": (parallels["pmap"], state),
    }
    for device in (0, 1):
        rows = {
            key: np.tile(value[:rows_per_device], (NUM_DEVICES, 1)) for key, value in batch.items()
        }
        target = rows["target"].reshape(NUM_DEVICES, rows_per_device, -1)
        target[np.arange(NUM_DEVICES) != device] = TINY.pad_id
        for name, (parallel, start) in pmap_runs.items():
            _, metrics = run_train_steps(parallel, start, rows, 1)
            results[f"pmap_rows_on_device/{name}/{device}"] = metrics["loss_sum"][0]
    results.update(accumulation_results(rng, state))
    return results


def accumulation_results(rng: np.random.Generator, state: Any) -> dict[str, np.ndarray]:
    """micro_batches k in MICRO_BATCHES in every mode, against the un-accumulated single-device
    step on the same batch; the collectives of the compiled mesh step; the row-count errors."""
    batch = accumulation_batch(rng, ACCUM_BATCH)
    results: dict[str, np.ndarray] = {"accumulation/batch/target": batch["target"]}
    final, metrics = run_train_steps(DataParallel("single", model_config=TINY), state, batch, 2)
    results.update(flat_leaves((final, metrics), "accumulation/reference"))
    for mode in MODES:
        for k in MICRO_BATCHES:
            parallel = DataParallel(mode, model_config=TINY, micro_batches=k)
            final, metrics = run_train_steps(parallel, state, batch, 2)
            results.update(flat_leaves((final, metrics), f"accumulation/{mode}/{k}"))
            results[f"accumulation/errors/{mode}/{k}"] = np.array(
                error_message(lambda p=parallel: p.put_batch(translation_batch(rng, 24)))
            )
    # The compiled mesh step (after SPMD partitioning), with and without accumulation.
    for k in (1, 4):
        parallel = DataParallel("mesh", model_config=TINY, micro_batches=k)
        lowered = parallel.train_step.lower(parallel.put_state(state), parallel.put_batch(batch))
        for name, count in collective_placement(lowered.compile().as_text()).items():
            results[f"accumulation/collectives/{k}/{name}"] = np.array(count)
    return results


# ---------------------------------------------------------------------------------------------
# Tests on the default single device (in this process)
# ---------------------------------------------------------------------------------------------
def reference_first_update(
    state: training.TrainState, batch: Mapping[str, np.ndarray], learning_rate: float
) -> Any:
    """Params after one SGD step, from `jax.grad` of the loss written out here: smoothed
    cross-entropy summed over non-pad targets / their number. (Momentum starts at zero, so the
    first momentum step is a plain SGD step.)"""

    def mean_loss(params: Any) -> jax.Array:
        logits = Transformer(TINY).apply(
            {"params": params}, batch["source"], batch["decoder_input"]
        )
        weights = (batch["target"] != TINY.pad_id).astype(jnp.float32)
        sums = training.batch_loss_sums(logits, batch["target"], weights, 0.1)
        return sums["loss_sum"] / jnp.sum(weights)

    grads = jax.jit(jax.grad(mean_loss))(state.params)
    return jax.tree.map(lambda p, g: p - learning_rate * g, state.params, grads)


@pytest.fixture(scope="module")
def one_device_batch() -> dict[str, np.ndarray]:
    return translation_batch(np.random.default_rng(1), 4)


@pytest.fixture(scope="module")
def one_device_state() -> training.TrainState:
    """One initial state for every in-process run (put_state copies it, steps never touch it);
    a new one would carry a new optimizer object, a static field, and so compile again."""
    return initial_state()


@pytest.fixture(scope="module")
def one_device_parallels() -> dict[str, DataParallel]:
    return {mode: DataParallel(mode, model_config=TINY) for mode in MODES}


@pytest.fixture(scope="module")
def one_device_runs(
    one_device_parallels: dict[str, DataParallel],
    one_device_state: training.TrainState,
    one_device_batch: dict[str, np.ndarray],
) -> dict[str, tuple[training.TrainState, dict[str, np.ndarray]]]:
    """One step in each mode on the default device: (final state, metrics) by mode."""
    return {
        mode: run_train_steps(parallel, one_device_state, one_device_batch, 1)
        for mode, parallel in one_device_parallels.items()
    }


def test_single_device_step_matches_jax_grad(
    one_device_runs: dict[str, Any],
    one_device_state: training.TrainState,
    one_device_batch: dict[str, np.ndarray],
) -> None:
    final, _ = one_device_runs["single"]
    expected = reference_first_update(one_device_state, one_device_batch, learning_rate=0.05)
    assert_trees_close(flat_leaves(final.params, "params"), flat_leaves(expected, "params"))


@pytest.mark.parametrize("mode", ["mesh", "pmap"])
def test_one_device_paths_match_single(one_device_runs: dict[str, Any], mode: str) -> None:
    """The laptop case: pmap and mesh on one device are the single-device step."""
    assert jax.device_count() == 1
    actual, expected = one_device_runs[mode], one_device_runs["single"]
    assert_trees_close(flat_leaves(actual, "run"), flat_leaves(expected, "run"))


@pytest.mark.parametrize("mode", MODES)
def test_donation_never_deletes_a_state_the_caller_holds(
    one_device_parallels: dict[str, DataParallel],
    one_device_state: training.TrainState,
    one_device_batch: dict[str, np.ndarray],
    mode: str,
) -> None:
    """train_step donates (reuses) the buffers of the placed state it is given. The state
    passed to put_state and the copies from get_state must stay readable after steps."""
    parallel = one_device_parallels[mode]
    first_placed = parallel.put_state(one_device_state)
    snapshot = parallel.get_state(first_placed)
    placed = first_placed
    for _ in range(2):
        placed, _ = parallel.train_step(placed, parallel.put_batch(one_device_batch))
    assert jax.tree.leaves(first_placed.params)[0].is_deleted()  # donation is active
    expected = flat_leaves(one_device_state, "state")
    assert_trees_close(flat_leaves(snapshot, "state"), expected)
    assert_trees_close(
        flat_leaves(parallel.get_state(parallel.put_state(snapshot)), "state"), expected
    )


def test_put_batch_checks_the_batch() -> None:
    parallel = DataParallel("none", model_config=TINY)
    assert (parallel.mode, parallel.num_devices) == ("single", 1)
    batch = translation_batch(np.random.default_rng(2), 4)
    uneven = {**batch, "target": batch["target"][:3]}
    expected = re.escape("same leading (batch) dimension, got decoder_input (4, 9), ")
    with pytest.raises(ValueError, match=expected + r".*target \(3, 9\)"):
        parallel.put_batch(uneven)
    with pytest.raises(ValueError, match="the batch has no target"):
        parallel.put_batch({k: v for k, v in batch.items() if k != "target"})
    with pytest.raises(ValueError, match="unknown data-parallel mode 'shard'"):
        DataParallel("shard", model_config=TINY)


# ---------------------------------------------------------------------------------------------
# Tests on 8 devices
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def eight_device_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Start the 8-device script (see the module docstring) when this module's first test
    starts: it compiles on a second core while the in-process tests, which come first in this
    file, compile on the first. Its XLA skips LLVM optimisation: faster compilation, and every
    path it compares runs with the same flags."""
    directory = tmp_path_factory.mktemp("parallel")
    output, log_path = directory / "results.npz", directory / "log.txt"
    flags = (
        f"--xla_force_host_platform_device_count={NUM_DEVICES} --xla_backend_optimization_level=0"
    )
    # The repository root first on the path: `tests.helpers`, and this checkout's packages.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, __file__, str(output)], env=env, stdout=log, stderr=log
        )
    yield process, output
    if process.poll() is None:  # no 8-device test ran (deselected): stop it
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def eight_devices(
    eight_device_run: tuple[subprocess.Popen[bytes], Path],
) -> dict[str, np.ndarray]:
    """The arrays that `eight_device_results` computed in the subprocess with 8 CPU devices."""
    process, output = eight_device_run
    returncode = process.wait(timeout=600)
    log = output.with_name("log.txt").read_text(errors="replace")
    assert returncode == 0, log[-5000:]
    with np.load(output) as saved:
        return dict(saved)


def test_devices_hold_different_token_counts(eight_devices: dict[str, np.ndarray]) -> None:
    """Precondition of the comparisons: an average of per-device means would be wrong here."""
    shards = eight_devices["batch/target"].reshape(NUM_DEVICES, -1)
    tokens_per_device = (shards != TINY.pad_id).sum(axis=1)
    assert len(set(tokens_per_device.tolist())) > 1


@pytest.mark.parametrize("mode", ["mesh", "pmap"])
def test_train_steps_match_the_single_device_step(
    eight_devices: dict[str, np.ndarray], mode: str
) -> None:
    """Three steps: the metric sums of each step and the final state (params, momentum, step)."""
    reference = section(eight_devices, "train/single")
    assert_trees_close(section(eight_devices, f"train/{mode}"), reference)


@pytest.mark.parametrize("mode", ["mesh", "pmap"])
def test_eval_steps_match_the_single_device_step(
    eight_devices: dict[str, np.ndarray], mode: str
) -> None:
    reference = section(eight_devices, "eval/single")
    assert set(reference) == {"loss_sum", "nll_sum", "correct", "tokens"}
    assert_trees_close(section(eight_devices, f"eval/{mode}"), reference)


@pytest.mark.parametrize("mode", MODES)
def test_steps_compile_once(eight_devices: dict[str, np.ndarray], mode: str) -> None:
    assert eight_devices[f"recompilations/{mode}"] == 0


def test_mesh_dropout_draws_the_single_device_masks(eight_devices: dict[str, np.ndarray]) -> None:
    """jax's threefry is partitionable: random bits do not depend on the sharding."""
    assert eight_devices["threefry_partitionable"], "set jax_threefry_partitionable=True"
    reference = section(eight_devices, "dropout/single")
    assert_trees_close(section(eight_devices, "dropout/mesh"), reference)
    # ... and dropout did act: the first step's loss differs from the loss without dropout.
    without_dropout = eight_devices["train/single/metrics/loss_sum"][0]
    assert abs(reference["metrics/loss_sum"][0] - without_dropout) > 1e-3


def test_pmap_devices_draw_different_dropout_masks(eight_devices: dict[str, np.ndarray]) -> None:
    """The same rows give another loss on device 1 than on device 0, and only with dropout."""
    on_device = section(eight_devices, "pmap_rows_on_device/dropout")
    without = section(eight_devices, "pmap_rows_on_device/no_dropout")
    assert without["0"] == without["1"]
    assert abs(on_device["0"] - on_device["1"]) > 1e-3


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("mesh", "batch_size 10 is not divisible by the 8 devices; use a multiple of 8 (e.g. 16)"),
        ("pmap", "batch_size 10 is not divisible by the 8 devices; use a multiple of 8 (e.g. 16)"),
        ("single", ""),  # one device takes any batch size
    ],
)
def test_batch_size_must_divide_by_the_devices(
    eight_devices: dict[str, np.ndarray], mode: str, expected: str
) -> None:
    assert str(eight_devices[f"errors/{mode}/batch_of_10"]) == expected


@pytest.mark.parametrize("mode", ["mesh", "pmap"])
def test_summarize_metrics_takes_the_metrics_as_returned(
    eight_devices: dict[str, np.ndarray], mode: str
) -> None:
    """No device axis to remove first: under pmap the step returns one copy of the sums."""
    expected = eight_devices["summary/single/loss"]
    np.testing.assert_allclose(eight_devices[f"summary/{mode}/loss"], expected, rtol=RTOL)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation on 8 devices
# ---------------------------------------------------------------------------------------------
def test_accumulation_batch_has_uneven_micro_batches_and_devices(
    eight_devices: dict[str, np.ndarray],
) -> None:
    """Precondition: per-micro-batch or per-device normalisation would be wrong on this batch."""
    counted = eight_devices["accumulation/batch/target"] != TINY.pad_id
    per_device = counted.reshape(NUM_DEVICES, -1).sum(axis=1)
    assert len(set(per_device.tolist())) > 1
    for k in MICRO_BATCHES:
        per_micro_batch = [int(counted[j::k].sum()) for j in range(k)]
        assert max(per_micro_batch) >= 3 * min(per_micro_batch), per_micro_batch


@pytest.mark.parametrize("k", MICRO_BATCHES)
@pytest.mark.parametrize("mode", MODES)
def test_accumulated_steps_match_the_whole_batch_step(
    eight_devices: dict[str, np.ndarray], mode: str, k: int
) -> None:
    """Two updates with k micro-batches (per device under pmap and mesh): the params, momentum,
    step and metric sums of two un-accumulated single-device updates on the same batch."""
    reference = section(eight_devices, "accumulation/reference")
    assert_trees_close(section(eight_devices, f"accumulation/{mode}/{k}"), reference)


@pytest.mark.parametrize("mode", ["mesh", "pmap"])
@pytest.mark.parametrize("k", MICRO_BATCHES)
def test_accumulation_needs_rows_divisible_by_devices_times_micro_batches(
    eight_devices: dict[str, np.ndarray], mode: str, k: int
) -> None:
    expected = (
        f"batch_size 24 is not divisible by the 8 devices x {k} micro-batches; use a multiple "
        f"of {8 * k} (e.g. 32)"
    )
    assert str(eight_devices[f"accumulation/errors/{mode}/{k}"]) == expected


@pytest.mark.parametrize("k", MICRO_BATCHES)
def test_single_device_accumulation_takes_any_multiple_of_k(
    eight_devices: dict[str, np.ndarray], k: int
) -> None:
    assert str(eight_devices[f"accumulation/errors/single/{k}"]) == ""  # 24 rows = 24/k x k


def test_mesh_accumulation_adds_no_collective(eight_devices: dict[str, np.ndarray]) -> None:
    """The compiled mesh step with k=4 communicates what the step without accumulation does:
    all-reduces only, all after the scan (none in its body, which would run once per
    micro-batch), and the strided split moves no rows (no all-to-all, all-gather, permute)."""
    plain = section(eight_devices, "accumulation/collectives/1")
    accumulated = section(eight_devices, "accumulation/collectives/4")
    assert plain["entry/all-reduce"] >= 1
    assert accumulated == plain
    assert all(count == 0 for name, count in accumulated.items() if name != "entry/all-reduce")


if __name__ == "__main__":
    np.savez(Path(sys.argv[1]), **eight_device_results())
