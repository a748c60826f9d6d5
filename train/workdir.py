"""A trained run, read back from its workdir: config, tokenizer, and parameters (optionally the
average of its last K checkpoints, as the paper does with the last 5; section 6.1).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from flax_transformer import TransformerConfig
from flax_transformer.training import create_train_state
from train.checkpoints import Checkpointer, abstract_like
from train.train import optimizer_from


@dataclasses.dataclass
class TrainedRun:
    config: ml_collections.ConfigDict  # the training config of the run
    model_config: TransformerConfig
    params: Any
    steps: list[int]  # the checkpoint step(s) the params come from

    def describe(self) -> str:
        if len(self.steps) == 1:
            return f"checkpoint {self.steps[0]}"
        return f"the average of checkpoints {', '.join(map(str, self.steps))}"


def read_run_config(workdir: str) -> tuple[ml_collections.ConfigDict, TransformerConfig]:
    path = os.path.join(workdir, "config.json")
    try:
        with open(path, encoding="utf-8") as file:
            saved = json.load(file)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: {workdir} is not a workdir of `python -m train`"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    return ml_collections.ConfigDict(saved["train"]), TransformerConfig.from_dict(saved["model"])


def average_params(trees: list[Any]) -> Any:
    """The element-wise mean of parameter trees of the same structure (accumulated in float32)."""
    if not trees:
        raise ValueError("no parameter trees to average")
    total = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32), trees[0])
    for tree in trees[1:]:
        total = jax.tree.map(lambda a, b: a + jnp.asarray(b, jnp.float32), total, tree)
    return jax.tree.map(lambda leaf: leaf / len(trees), total)


def load_run(workdir: str, *, step: int | None = None, average_last: int = 1) -> TrainedRun:
    """The run in `workdir` with the params of checkpoint `step` (default: the latest), or the
    average of the `average_last` checkpoints up to it.

    Raises:
      FileNotFoundError: no config or no checkpoint (or not `step`) in the workdir.
      ValueError: fewer than `average_last` checkpoints kept up to `step`.
      CheckpointMismatchError: the checkpoint's model differs from the workdir's config.json.
    """
    if average_last < 1:
        raise ValueError(f"average_last must be >= 1, got {average_last}")
    workdir = os.path.abspath(workdir)
    config, model_config = read_run_config(workdir)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    try:
        available = sorted(checkpointer.all_steps())
        if not available:
            raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}")
        last = available[-1] if step is None else step
        if last not in available:
            raise FileNotFoundError(
                f"no checkpoint of step {last} in {checkpointer.directory}; available: {available}"
            )
        steps = [s for s in available if s <= last][-average_last:]
        if len(steps) < average_last:
            raise ValueError(
                f"cannot average the last {average_last} checkpoints up to step {last}: "
                f"{checkpointer.directory} keeps only {steps} (config.keep_checkpoints="
                f"{config.keep_checkpoints})"
            )
        _, optimizer = optimizer_from(config, model_config)
        abstract_state = abstract_like(
            jax.eval_shape(lambda: create_train_state(model_config, optimizer, jax.random.key(0)))
        )
        trees = []
        for each in steps:
            checkpointer.check_model_config(model_config, each)
            trees.append(checkpointer.restore_params(abstract_state, each))
    finally:
        checkpointer.close()
    params = trees[0] if len(trees) == 1 else average_params(trees)
    return TrainedRun(config, model_config, params, steps)
