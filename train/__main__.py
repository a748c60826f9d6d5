"""Train a Transformer translator: `python -m train --workdir=DIR [--config=FILE] [--config.X=V]`.

With no other flags this trains the small model (d_model 256, 4 heads, 3+3 layers) on the
built-in number-words task (digits -> English words, generated locally, no download) and
reports greedy exact-match on the test split.

  --workdir     where checkpoints, metrics.jsonl, tensorboard/ and config.json go; a workdir
                that already holds checkpoints resumes from the latest one
  --config      a config file whose get_config() returns an ml_collections.ConfigDict
                (default: train/configs/default.py; train/configs/multi30k.py trains an
                English -> German translator on a directory of {split}.{lang} text files)
  --config.X=V  override any config field, e.g. --config.num_train_steps=300
                --config.model.num_heads=8 --config.parallel=pmap

Ctrl-C saves a checkpoint and exits (status 130); running the same command resumes. A run that
diverges (a non-finite loss, or one far above its recent range: config.divergence_factor) stops
without saving over its checkpoints and exits with status 3. An error is one line on stderr and
status 1; --debug shows its traceback (train/cli.py has the rules).

Multi-process (multi-host) runs: start the same command on every process with
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; on SLURM, Open MPI and Cloud TPU
pods nothing: jax detects them). See train/README.md and train/distributed.py.
Afterwards: `python -m train.evaluate --workdir=DIR` (sacreBLEU and chrF of a split) and
`python -m train.translate --workdir=DIR` (translate stdin).
The config fields and their defaults are listed under --config below.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from train import cli
from train.configs import default as default_config

_DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(default_config.__file__), "default.py")


def _config_help() -> str:
    lines = [
        "Training config file (get_config() -> ConfigDict). Override fields with "
        "--config.FIELD=VALUE. Fields and defaults of train/configs/default.py:"
    ]
    flat = _flatten(default_config.get_config().to_dict())
    lines += [f"    {key} = {value!r}" for key, value in flat.items()]
    return "\n".join(lines)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_CONFIG = cli.define_config_file("config", _DEFAULT_CONFIG_PATH, _config_help(), lock_config=True)
flags.mark_flag_as_required("workdir")
flags.adopt_module_key_flags(cli)  # --debug in --help

# Multi-process runs (train.distributed); unset: one process, or what the environment says.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0's coordinator (multi-process runs)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0 .. N-1.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Seconds for every process to join before giving up."
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout",
    100,
    "Seconds of silence after which a process counts as dead and the others stop.",
)
_SHUTDOWN_TIMEOUT = flags.DEFINE_integer(
    "shutdown_timeout", 300, "Seconds the processes wait for each other at exit."
)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from train import distributed

    # Before anything touches the devices. A DistributedSetupError (a ValueError, one line) is
    # reported by cli.run, here and at the barriers of training (a peer missing, ...).
    distributed.initialize_from_flags(
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        initialization_timeout=_INIT_TIMEOUT.value,
        heartbeat_timeout=_HEARTBEAT_TIMEOUT.value,
        shutdown_timeout=_SHUTDOWN_TIMEOUT.value,
    )
    # Imported here so that --help answers without starting JAX.
    import tensorflow_datasets as tfds

    from train.loop import train_and_evaluate

    tfds.disable_progress_bar()  # one progress bar (training's) is enough on a terminal
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if result.diverged:
        print(f"error: {result.diverged.message()}", file=sys.stderr)
        print(f"hint: {result.diverged.hint()}", file=sys.stderr)
        return result.diverged.EXIT_STATUS
    return cli.STATUS_INTERRUPTED if result.interrupted else 0


if __name__ == "__main__":
    cli.run(main)
