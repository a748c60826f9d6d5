"""A run's directory: the one place that knows its layout.

    config.json         the model config, the training config (paths absolute) and the
                        tokenizer's identity and size
    tokenizer.model     text datasets: the SentencePiece model, trained on first use
    marian_tokenizer/   an imported MarianMT model's source.spm, target.spm, vocab.json
    checkpoints/<step>/ orbax checkpoints (train.checkpoints)
    checkpoints_unreadable/<step>/  checkpoints a resume could not read, moved aside (kept)
    metrics.jsonl       one JSON object per log line; tensorboard/ the same as events
    translations/       what `python -m train.evaluate` writes

`load_run` reads a trained (or imported) run back: its configs, vocabulary and parameters,
optionally the average of its last K checkpoints, as the paper does with the last 5 (section
6.1). Reading parameters needs the model config alone, not the optimizer. An unreadable latest
checkpoint is skipped with a warning (the newest readable one is used); an unreadable
checkpoint that was asked for (--step, or one of those to average) is an error naming it.

The tokenizer is the run's for good: once a run has config.json or checkpoints, its tokenizer is
never trained again, and one whose identity (`vocabulary_identity`) differs from config.json's
record is refused (a tokenizer of other ids under the trained embeddings would translate
garbage without an error).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from flax_transformer import TransformerConfig
from flax_transformer.model import init_params
from train.checkpoints import Checkpointer, UnreadableCheckpointError, abstract_like
from train.data.sources import DataSource, dataset_of
from train.data.tokenizer_training import load_or_train_on_split
from train.data.vocabulary import (
    MarianVocabulary,
    SentencePieceVocabulary,
    Vocabulary,
    vocabulary_identity,
)


class TokenizerMismatchError(ValueError):
    """The workdir's tokenizer is not the one its run was trained with."""


def _short(identity: str) -> str:
    kind, _, digest = identity.rpartition(":")
    return f"{kind} sha256 {digest[:12]}..."


def tokenizer_record(vocabulary: Vocabulary) -> dict[str, Any]:
    """What config.json records of a run's tokenizer (checked whenever the run is read)."""
    return {"identity": vocabulary_identity(vocabulary), "vocab_size": vocabulary.vocab_size}


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
    unreadable_checkpoints_dir = property(lambda self: self._join("checkpoints_unreadable"))
    metrics_path = property(lambda self: self._join("metrics.jsonl"))
    tensorboard_dir = property(lambda self: self._join("tensorboard"))
    translations_dir = property(lambda self: self._join("translations"))

    def create(self) -> None:
        """Create the directory and make sure files can be written in it: a training run calls
        this before it prepares any data, so that a mistyped or read-only --workdir costs
        seconds. Raises OSError naming the workdir and the reason."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotADirectoryError(f"the workdir {self.path} is a file, not a directory")
        try:
            os.makedirs(self.path, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as error:
            reason = error.strerror or str(error)
            message = f"cannot write in the workdir ({reason})"
            raise OSError(error.errno, message, self.path) from None

    # --- config.json ------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether a run (trained or imported) was written here."""
        return os.path.exists(self.config_path) or os.path.exists(self.checkpoints_dir)

    def write_config(
        self,
        config: ml_collections.ConfigDict | dict,
        model: TransformerConfig,
        vocabulary: Vocabulary | None = None,
    ) -> dict:
        """Write config.json (atomically) and return what was written."""
        run_config = self.run_config(config, model, vocabulary)
        os.makedirs(self.path, exist_ok=True)
        temporary = self.config_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(run_config, file, indent=2, sort_keys=True)
        os.replace(temporary, self.config_path)
        return run_config

    @staticmethod
    def run_config(
        config: ml_collections.ConfigDict | dict,
        model: TransformerConfig,
        vocabulary: Vocabulary | None = None,
    ) -> dict:
        """What config.json and every checkpoint record: {"model": ..., "train": ...,
        "tokenizer": `tokenizer_record`} (no "tokenizer" without a vocabulary)."""
        train = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
        run_config = {"model": model.to_dict(), "train": train}
        if vocabulary is not None:
            run_config["tokenizer"] = tokenizer_record(vocabulary)
        return run_config

    def _saved(self) -> dict:
        try:
            with open(self.config_path, encoding="utf-8") as file:
                return json.load(file)
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.config_path} is not valid JSON: {error}") from None

    def read_config(self) -> tuple[ml_collections.ConfigDict, TransformerConfig]:
        """(training config, model config) of config.json."""
        if os.path.isfile(self.path):
            raise NotADirectoryError(f"{self.path} is a file, not a workdir of `python -m train`")
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"{self.path} does not exist: no run of `python -m train`")
        saved = self._saved()
        if not saved:
            raise FileNotFoundError(
                f"{self.config_path} is missing: {self.path} is not a workdir of `python -m train`"
            )
        if not isinstance(saved, dict) or "train" not in saved or "model" not in saved:
            raise ValueError(f"{self.config_path} is not a run's config (no 'train' and 'model')")
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
        SentencePiece model in tokenizer.model, trained on `train_source` only for a new run
        (no config.json, no checkpoint). Raises FileNotFoundError when the model is missing
        from a run that has one, TokenizerMismatchError when it differs from what config.json
        records."""
        vocabulary = self._stored_vocabulary(config)
        if vocabulary is None:
            recorded = self._saved().get("tokenizer")
            if train_source is None or recorded or self._has_checkpoints():
                described = (
                    f" (identity {_short(recorded['identity'])}, {recorded['vocab_size']} ids)"
                    if recorded
                    else ""
                )
                raise FileNotFoundError(
                    f"{self.tokenizer_path} is missing: the run in {self.path} was trained with "
                    f"it{described}; put the file back (a tokenizer trained again would give "
                    "other ids), or train in a new --workdir"
                )
            vocabulary = load_or_train_on_split(
                self.tokenizer_path,
                train_source,
                config.tokenizer_vocab_size,
                max_pairs=config.tokenizer_train_pairs,
            )
        self.check_tokenizer(vocabulary)
        return vocabulary

    def _stored_vocabulary(self, config: ml_collections.ConfigDict) -> Vocabulary | None:
        fixed = dataset_of(config).fixed_vocabulary
        if fixed is not None:
            return fixed()
        if config.get("tokenizer", "sentencepiece") == "marian":
            return MarianVocabulary.from_directory(self.marian_tokenizer_dir)
        if os.path.exists(self.tokenizer_path):
            return SentencePieceVocabulary.from_file(self.tokenizer_path)
        return None

    def _has_checkpoints(self) -> bool:
        directory = self.checkpoints_dir
        return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))

    def check_tokenizer(self, vocabulary: Vocabulary) -> None:
        """Raise TokenizerMismatchError unless `vocabulary` is the one config.json records (a
        config.json written before tokenizers were recorded accepts any)."""
        recorded = self._saved().get("tokenizer")
        if not recorded:
            return
        found = tokenizer_record(vocabulary)
        if found["identity"] != recorded["identity"]:
            raise TokenizerMismatchError(
                f"the tokenizer in {self.path} is not the one its run was trained with "
                f"(recorded: {recorded['vocab_size']} ids, identity {_short(recorded['identity'])}"
                f"; found: {found['vocab_size']} ids, identity {_short(found['identity'])}): "
                "put the run's own tokenizer back, or train in a new --workdir"
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
        return Checkpointer(
            self.checkpoints_dir, keep=keep, set_aside_directory=self.unreadable_checkpoints_dir
        )

    def translation_path(
        self, split: str, steps: list[int], method: str, *, ema: bool = False
    ) -> str:
        """Where `train.evaluate` writes a split's translations by the checkpoint(s) `steps`
        (`ema`: their parameter EMAs, so that their raw params' file is another)."""
        averaged = f"-average{len(steps)}" if len(steps) > 1 else ""
        kind = "-ema" if ema else ""
        return os.path.join(
            self.translations_dir, f"{split}-{steps[-1]}{averaged}{kind}-{method}.txt"
        )


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
    ema: bool = False  # the params are (the average of) the checkpoints' parameter EMAs

    def describe(self) -> str:
        if len(self.steps) == 1:
            return f"{'the parameter EMA of ' if self.ema else ''}checkpoint {self.steps[0]}"
        kind = "the parameter EMAs of " if self.ema else ""
        return f"the average of {kind}checkpoints {', '.join(map(str, self.steps))}"


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


def _warn_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_run(
    workdir: str | os.PathLike | Workdir,
    *,
    step: int | None = None,
    average_last: int = 1,
    raw: bool = False,
    warn: Callable[[str], None] = _warn_on_stderr,
) -> TrainedRun:
    """The run in `workdir` with the params of checkpoint `step` (default: the latest readable
    one; each newer unreadable one is reported through `warn`), or the average of the
    `average_last` checkpoints up to it. Of a run that keeps a parameter EMA
    (config.ema_decay), the checkpoints' EMAs unless `raw`; an average over checkpoints of
    which only some keep one (the EMA turned on mid-run) is of their raw params, said through
    `warn`.

    Raises:
      FileNotFoundError: no config or no checkpoint (or not `step`) in the workdir.
      ValueError: fewer than `average_last` checkpoints kept up to `step`.
      CheckpointMismatchError: the checkpoint's model differs from the workdir's config.json.
      UnreadableCheckpointError: `step` (or one to average) cannot be read, or none can.
    """
    if average_last < 1:
        raise ValueError(f"average_last must be >= 1, got {average_last}")
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    config, model_config = workdir.read_config()
    target = abstract_params(model_config)
    with workdir.checkpointer(keep=config.keep_checkpoints) as checkpointer:
        steps = _checkpoint_steps(checkpointer, step, average_last)
        # An average is of one kind: EMAs only where every averaged checkpoint keeps one (the
        # EMA may have been turned on mid-run), else every checkpoint's raw params.
        with_ema = [each for each in steps if checkpointer.holds_ema(each)]
        if not raw and len(steps) > 1 and 0 < len(with_ema) < len(steps):
            without = [each for each in steps if each not in with_ema]
            lacking = (
                f"checkpoint {without[0]} keeps"
                if len(without) == 1
                else f"checkpoints {', '.join(map(str, without))} keep"
            )
            warn(
                f"{lacking} no parameter EMA: averaging the raw params of checkpoints "
                f"{', '.join(map(str, steps))}"
            )
            raw = True

        def read(each: int) -> Any:
            checkpointer.check_model_config(model_config, each)
            return checkpointer.restore_params(target, each, raw=raw)

        if step is None and average_last == 1:
            newest, tree = checkpointer.newest_readable(read, warn=warn)
            steps, trees = [newest], [tree]
        else:
            trees = []
            for each in steps:
                try:
                    trees.append(checkpointer.read_or_raise(each, read))
                except UnreadableCheckpointError as error:
                    others = [s for s in checkpointer.all_steps() if s != each]
                    raise UnreadableCheckpointError(
                        f"{error}; the other checkpoints: {others or 'none'}"
                    ) from None
        ema = not raw and all(checkpointer.holds_ema(each) for each in steps)
    params = trees[0] if len(trees) == 1 else average_params(trees)
    return TrainedRun(workdir, config, model_config, params, steps, ema)
