"""A run's directory: the one place that knows its layout.

    config.json         the model config and the training config of the run
    tokenizer.model     text datasets: the SentencePiece model, trained on first use
    marian_tokenizer/   an imported MarianMT model's source.spm, target.spm, vocab.json
    checkpoints/<step>/ orbax checkpoints (train.checkpoints)
    metrics.jsonl       one JSON object per log line; tensorboard/ the same as events
    translations/       what `python -m train.evaluate` writes

`load_run` reads a trained (or imported) run back: its configs, vocabulary and parameters,
optionally the average of its last K checkpoints, as the paper does with the last 5 (section
6.1). Reading parameters needs the model config alone, not the optimizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from flax_transformer import TransformerConfig
from flax_transformer.model import init_params
from train.checkpoints import Checkpointer, abstract_like
from train.data.sources import DataSource, dataset_of
from train.data.tokenizer_training import load_or_train_on_split
from train.data.vocabulary import MarianVocabulary, SentencePieceVocabulary, Vocabulary


class Workdir:
    """The paths of a run in `path`, and reading and writing what is stored there."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.path.abspath(os.fspath(path))

    def __repr__(self) -> str:
        return f"Workdir({self.path!r})"

    def _join(self, name: str) -> str:
        return os.path.join(self.path, name)

    config_path = property(lambda self: self._join("config.json"))
    tokenizer_path = property(lambda self: self._join("tokenizer.model"))
    marian_tokenizer_dir = property(lambda self: self._join("marian_tokenizer"))
    checkpoints_dir = property(lambda self: self._join("checkpoints"))
    metrics_path = property(lambda self: self._join("metrics.jsonl"))
    tensorboard_dir = property(lambda self: self._join("tensorboard"))
    translations_dir = property(lambda self: self._join("translations"))

    # --- config.json ------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether a run (trained or imported) was written here."""
        return os.path.exists(self.config_path) or os.path.exists(self.checkpoints_dir)

    def write_config(
        self, config: ml_collections.ConfigDict | dict, model: TransformerConfig
    ) -> dict:
        """Write config.json (atomically) and return what was written."""
        run_config = self.run_config(config, model)
        os.makedirs(self.path, exist_ok=True)
        temporary = self.config_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(run_config, file, indent=2, sort_keys=True)
        os.replace(temporary, self.config_path)
        return run_config

    @staticmethod
    def run_config(config: ml_collections.ConfigDict | dict, model: TransformerConfig) -> dict:
        """What config.json and every checkpoint record: {"model": ..., "train": ...}."""
        train = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
        return {"model": model.to_dict(), "train": train}

    def read_config(self) -> tuple[ml_collections.ConfigDict, TransformerConfig]:
        """(training config, model config) of config.json."""
        try:
            with open(self.config_path, encoding="utf-8") as file:
                saved = json.load(file)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.config_path} is missing: {self.path} is not a workdir of `python -m train`"
            ) from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.config_path} is not valid JSON: {error}") from None
        return ml_collections.ConfigDict(saved["train"]), TransformerConfig.from_dict(
            saved["model"]
        )

    def imported_from(self) -> str | None:
        """Where an imported model came from (`python -m train.convert_marian`), else None."""
        try:
            with open(self.config_path, encoding="utf-8") as file:
                return json.load(file).get("train", {}).get("imported_from") or None
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    # --- the vocabulary -----------------------------------------------------------------------
    def vocabulary(
        self, config: ml_collections.ConfigDict, train_source: DataSource | None = None
    ) -> Vocabulary:
        """The run's vocabulary: the dataset's own, the imported Marian tokenizer, or the
        SentencePiece model in tokenizer.model (trained on `train_source` if there is none yet;
        without a `train_source` a missing model is an error)."""
        fixed = dataset_of(config).fixed_vocabulary
        if fixed is not None:
            return fixed()
        if config.get("tokenizer", "sentencepiece") == "marian":
            return MarianVocabulary.from_directory(self.marian_tokenizer_dir)
        if train_source is None:
            if not os.path.exists(self.tokenizer_path):
                raise FileNotFoundError(
                    f"{self.tokenizer_path} is missing: the run's tokenizer is needed to "
                    "evaluate it"
                )
            return SentencePieceVocabulary.from_file(self.tokenizer_path)
        return load_or_train_on_split(
            self.tokenizer_path,
            train_source,
            config.tokenizer_vocab_size,
            max_pairs=config.tokenizer_train_pairs,
        )

    def copy_tokenizer_from(self, source: Workdir, tokenizer: str) -> None:
        """Copy `source`'s tokenizer files here (fine-tuning), unless this run has them."""
        if tokenizer == "marian":
            if not os.path.exists(self.marian_tokenizer_dir):
                shutil.copytree(source.marian_tokenizer_dir, self.marian_tokenizer_dir)
        elif os.path.exists(source.tokenizer_path) and not os.path.exists(self.tokenizer_path):
            os.makedirs(self.path, exist_ok=True)
            shutil.copyfile(source.tokenizer_path, self.tokenizer_path)

    # --- checkpoints and outputs --------------------------------------------------------------
    def checkpointer(self, keep: int = 3) -> Checkpointer:
        return Checkpointer(self.checkpoints_dir, keep=keep)

    def translation_path(self, split: str, steps: list[int], method: str) -> str:
        averaged = f"-average{len(steps)}" if len(steps) > 1 else ""
        return os.path.join(self.translations_dir, f"{split}-{steps[-1]}{averaged}-{method}.txt")


# ---------------------------------------------------------------------------------------------
# A trained run, read back
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainedRun:
    workdir: Workdir
    config: ml_collections.ConfigDict  # the training config of the run
    model_config: TransformerConfig
    params: Any
    steps: list[int]  # the checkpoint step(s) the params come from

    def describe(self) -> str:
        if len(self.steps) == 1:
            return f"checkpoint {self.steps[0]}"
        return f"the average of checkpoints {', '.join(map(str, self.steps))}"


def average_params(trees: list[Any]) -> Any:
    """The element-wise mean of parameter trees of the same structure (accumulated in float32)."""
    if not trees:
        raise ValueError("no parameter trees to average")
    total = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32), trees[0])
    for tree in trees[1:]:
        total = jax.tree.map(lambda a, b: a + jnp.asarray(b, jnp.float32), total, tree)
    return jax.tree.map(lambda leaf: leaf / len(trees), total)


def abstract_params(model_config: TransformerConfig) -> Any:
    """The restore target of a model's params: shapes and dtypes, no values."""
    return abstract_like(jax.eval_shape(lambda: init_params(model_config, jax.random.key(0))))


def _checkpoint_steps(checkpointer: Checkpointer, step: int | None, average_last: int) -> list[int]:
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
            f"{checkpointer.keep})"
        )
    return steps


def load_run(
    workdir: str | os.PathLike | Workdir, *, step: int | None = None, average_last: int = 1
) -> TrainedRun:
    """The run in `workdir` with the params of checkpoint `step` (default: the latest), or the
    average of the `average_last` checkpoints up to it.

    Raises:
      FileNotFoundError: no config or no checkpoint (or not `step`) in the workdir.
      ValueError: fewer than `average_last` checkpoints kept up to `step`.
      CheckpointMismatchError: the checkpoint's model differs from the workdir's config.json.
    """
    if average_last < 1:
        raise ValueError(f"average_last must be >= 1, got {average_last}")
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    config, model_config = workdir.read_config()
    target = abstract_params(model_config)
    with workdir.checkpointer(keep=config.keep_checkpoints) as checkpointer:
        steps = _checkpoint_steps(checkpointer, step, average_last)
        trees = []
        for each in steps:
            checkpointer.check_model_config(model_config, each)
            trees.append(checkpointer.restore_params(target, each))
    params = trees[0] if len(trees) == 1 else average_params(trees)
    return TrainedRun(workdir, config, model_config, params, steps)
