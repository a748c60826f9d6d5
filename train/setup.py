"""A training config, checked once, turned into what the loop and the commands use.

    check_config        every field in range, every choice one of its allowed values, the
                        model config valid, the paths usable: before any data is read
    absolute_paths      the config's paths made absolute (config.json is read from anywhere)
    resume_changes      which training fields a resumed run may change, and the refusal
    model_config_from   config.model -> TransformerConfig (vocab_size 0: the vocabulary's)
    optimizer_from      the paper's schedule (with the cool-down) and Adam (section 5.3)
    decoding_options    config -> DecodingOptions for validation or test decoding
    checkpoint_steps    the steps a run saves checkpoints at
    device_count        how many devices config.parallel splits a batch over

Each list of allowed values is declared where it is implemented and imported here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from flax_transformer import TransformerConfig
from flax_transformer.parallel import MODES as PARALLEL_MODES
from flax_transformer.training import make_optimizer, transformer_schedule, with_cooldown
from train.data.run_data import BATCHING_MODES
from train.data.sources import DATASETS
from train.data.vocabulary import TOKENIZERS
from train.evaluation import DECODING_METHODS, DecodingOptions

_POSITIVE = (
    "batch_size",
    "eval_batch_size",
    "num_train_steps",
    "warmup_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "average_last",
    "batch_tokens",
    "max_length",
    "tokenizer_vocab_size",
    "beam_size",
    "micro_batches",
)
_NON_NEGATIVE = (
    "num_validation_examples",
    "num_samples",
    "weight_decay",
    "pack_length",
    "eval_max_length",
    "tokenizer_train_pairs",
    "token_store_workers",
    "clip_norm",
)
_FINITE = (  # floats that must be real numbers (a NaN passes every comparison's `not`)
    "learning_rate_scale",
    "adam_b1",
    "adam_b2",
    "adam_eps",
    "clip_norm",
    "weight_decay",
    "label_smoothing",
    "cooldown_fraction",
    "pack_fill",
    "length_penalty",
    "divergence_factor",
    "ema_decay",
)
# Paths of the config: made absolute once (`absolute_paths`), so that config.json names the same
# files from any directory.
PATH_FIELDS = ("data_dir", "data_path", "token_store_dir", "init_from")
# Training fields a resumed run may change freely (each change is logged): how often to log,
# evaluate and save, how to evaluate, where things live, how the same computation is spread over
# devices, and how long to train. Every other field decides what the run computes (data, batches,
# tokenizer, optimizer, schedule, seed): changing one on resume is refused with the diff unless
# config.allow_training_changes=True (then logged too).
RESUMABLE_CHANGES = (
    "num_train_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "average_last",
    "num_validation_examples",
    "num_samples",
    "validation_decoding",
    "test_decoding",
    "beam_size",
    "length_penalty",
    "beam_stop",
    "validation_split",
    "test_split",
    "eval_batch_size",
    "eval_max_length",
    "parallel",
    "micro_batches",
    "progress_bar",
    "data_dir",
    "token_store_dir",
    "token_store_workers",
    "init_from",
    "divergence_factor",
    "ema_decay",  # the average never feeds back into training
    "allow_training_changes",
)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the first training config field that is out of range.

    Cheap and free of data: the command calls it before anything is prepared, so that a typo
    costs seconds, not a dataset preparation. The model config is checked with a stand-in
    vocabulary size when config.model.vocab_size is 0 (the tokenizer's, known later).
    """
    for name in _FINITE:
        if not math.isfinite(config[name]):
            raise ValueError(f"config.{name} must be a finite number, got {config[name]}")
    for name in _POSITIVE:
        if not config[name] > 0:
            raise ValueError(f"config.{name} must be positive, got {config[name]}")
    for name in _NON_NEGATIVE:
        if not config[name] >= 0:
            raise ValueError(f"config.{name} must be >= 0, got {config[name]}")
    if not config.learning_rate_scale > 0:
        raise ValueError(
            f"config.learning_rate_scale must be positive, got {config.learning_rate_scale}"
        )
    for name in ("adam_b1", "adam_b2"):
        if not 0.0 <= config[name] < 1.0:
            raise ValueError(f"config.{name} must be in [0, 1), got {config[name]}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"config.ema_decay must be in [0, 1) (0: none), got {config.ema_decay}")
    if not config.adam_eps > 0:
        raise ValueError(f"config.adam_eps must be positive, got {config.adam_eps}")
    if not (config.divergence_factor == 0 or config.divergence_factor > 1):
        raise ValueError(
            "config.divergence_factor must be 0 (off) or > 1 (stop when the loss exceeds that "
            f"many times its recent lowest), got {config.divergence_factor}"
        )
    if not 0.0 <= config.cooldown_fraction <= 1.0:
        raise ValueError(
            f"config.cooldown_fraction must be in [0, 1], got {config.cooldown_fraction}"
        )
    if not 0.0 < config.pack_fill <= 1.0:
        raise ValueError(f"config.pack_fill must be in (0, 1], got {config.pack_fill}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing}")
    choices = {
        "dataset": tuple(DATASETS),
        "parallel": PARALLEL_MODES,
        "batching": BATCHING_MODES,
        "validation_decoding": ("", *DECODING_METHODS),
        "test_decoding": DECODING_METHODS,
        "tokenizer": TOKENIZERS,
    }
    for name, allowed in choices.items():
        if config[name] not in allowed:
            raise ValueError(f"config.{name} must be one of {list(allowed)}, got {config[name]!r}")
    decoding_options(config, config.test_decoding)  # raises for a bad beam setting
    _check_average_last(config)
    _check_model(config)
    _check_data_fields(config)
    _check_paths(config)


def _check_model(config: ml_collections.ConfigDict) -> None:
    fields = dict(config.model.to_dict())
    if fields.get("vocab_size", 0) < 0:
        raise ValueError(f"config.model.vocab_size must be >= 0, got {fields['vocab_size']}")
    # 0 = the tokenizer's size, unknown before the tokenizer exists: any valid size stands in.
    fields["vocab_size"] = fields.get("vocab_size") or max(fields.get("pad_id", 0) + 1, 64)
    try:
        TransformerConfig.from_dict(fields)
    except (TypeError, ValueError) as error:
        raise ValueError(str(error).replace("TransformerConfig.", "config.model.")) from None


def _check_data_fields(config: ml_collections.ConfigDict) -> None:
    if config.dataset == "tfds" and not config.tfds_name:
        raise ValueError(
            "config.dataset='tfds' needs config.tfds_name, e.g. 'wmt14_translate/de-en'"
        )
    if config.dataset == "parallel_text":
        if not config.data_path:
            raise ValueError("config.dataset='parallel_text' needs config.data_path (a directory)")
        for name in ("source_language", "target_language"):
            if not config[name]:
                raise ValueError(
                    f"config.dataset='parallel_text' needs config.{name} (the file suffix, "
                    "e.g. 'en' for train.en)"
                )


def _check_paths(config: ml_collections.ConfigDict) -> None:
    """Paths that must exist do; directories the run writes into are not regular files."""
    if config.dataset == "parallel_text" and not os.path.isdir(config.data_path):
        raise ValueError(f"config.data_path={config.data_path!r} is not a directory")
    if config.init_from and not os.path.isfile(os.path.join(config.init_from, "config.json")):
        raise ValueError(
            f"config.init_from={config.init_from!r} is not the workdir of a run (it has no "
            "config.json)"
        )
    for name in ("data_dir", "token_store_dir"):
        path = config[name]
        if path and os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"config.{name}={path!r} exists and is not a directory")


def absolute_paths(config: ml_collections.ConfigDict) -> None:
    """Make the config's paths (PATH_FIELDS) absolute, in place, against the current directory
    ("~" expanded), so that config.json and the checkpoints name the same files wherever the
    run is resumed, evaluated or translated from. Empty paths (defaults) stay empty."""
    for name in PATH_FIELDS:
        if config[name]:
            config[name] = os.path.abspath(os.path.expanduser(config[name]))


def resume_changes(
    saved: Mapping[str, Any], config: ml_collections.ConfigDict
) -> tuple[list[str], list[str]]:
    """(accepted, refused): the training fields that differ between a checkpoint's training
    config `saved` and this run's, each as "field: saved -> now". Fields of RESUMABLE_CHANGES
    are accepted; the others are refused unless config.allow_training_changes. Fields the
    checkpoint does not record (added to the project later) count as unchanged, and a relative
    path it records (written before paths were stored absolute) is taken from here."""
    current = config.to_dict()
    current.pop("model", None)  # the model config is checked on its own (never changeable)
    accepted, refused = [], []
    for name in sorted(current):
        if name not in saved:
            continue
        if name in PATH_FIELDS and saved[name] and not os.path.isabs(saved[name]):
            saved = {**saved, name: os.path.abspath(saved[name])}  # stored before paths were
        if saved[name] == current[name]:
            continue
        line = f"{name}: {saved[name]!r} -> {current[name]!r}"
        if name in RESUMABLE_CHANGES or config.allow_training_changes:
            accepted.append(line)
        else:
            refused.append(line)
    return accepted, refused


def checkpoint_steps(config: ml_collections.ConfigDict) -> list[int]:
    """The steps a run of `config` saves a checkpoint at, from the start: every
    checkpoint_every_steps, at every evaluation and at the end (not counting stop requests)."""
    last = config.num_train_steps
    every = {config.checkpoint_every_steps, config.eval_every_steps}
    return sorted({step for n in every for step in range(n, last + 1, n)} | {last})


def _check_average_last(config: ml_collections.ConfigDict) -> None:
    # Checked before training: averaging fails at the very end otherwise, hours later.
    if config.average_last > config.keep_checkpoints:
        raise ValueError(
            f"config.average_last={config.average_last} averages more checkpoints than "
            f"config.keep_checkpoints={config.keep_checkpoints} keeps"
        )
    saved = len(checkpoint_steps(config))
    if config.average_last > saved:
        raise ValueError(
            f"config.average_last={config.average_last}, but a run of "
            f"{config.num_train_steps} steps saves only {saved} checkpoint(s) (every "
            f"config.checkpoint_every_steps={config.checkpoint_every_steps}, each evaluation and "
            "the last step)"
        )


def model_config_from(config: ml_collections.ConfigDict, vocab_size: int) -> TransformerConfig:
    """The TransformerConfig of `config.model`; vocab_size 0 means "the vocabulary's"."""
    fields = dict(config.model.to_dict())
    if not fields.get("vocab_size"):
        fields["vocab_size"] = vocab_size
    elif fields["vocab_size"] < vocab_size:
        raise ValueError(
            f"config.model.vocab_size={fields['vocab_size']} is smaller than the tokenizer's "
            f"vocabulary ({vocab_size} ids); set it to 0 to use the tokenizer's size"
        )
    return TransformerConfig.from_dict(fields)


def optimizer_from(
    config: ml_collections.ConfigDict, model_config: TransformerConfig
) -> tuple[Any, Any]:
    """(learning-rate schedule, optax optimizer) of a training config."""
    schedule = with_cooldown(
        transformer_schedule(model_config.d_model, config.warmup_steps, config.learning_rate_scale),
        config.num_train_steps,
        round(config.cooldown_fraction * config.num_train_steps),
    )
    optimizer = make_optimizer(
        schedule,
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        clip_norm=config.clip_norm or None,
        weight_decay=config.weight_decay,
    )
    return schedule, optimizer


def decoding_options(config: ml_collections.ConfigDict, method: str) -> DecodingOptions:
    """Decoding by `method` with the config's beam settings; outputs up to source length + 50."""
    return DecodingOptions(
        method=method,
        beam_size=config.beam_size,
        length_penalty=config.length_penalty,
        beam_stop=config.beam_stop,
        max_length=None,
    )


def device_count(parallel: str) -> int:
    """The devices a batch is split over: known before any data is read."""
    return {"single": 1, "pmap": jax.local_device_count()}.get(parallel, jax.device_count())
