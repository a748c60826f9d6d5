"""A training config, checked once, turned into what the loop and the commands use.

    check_config        every field in range, every choice one of its allowed values
    model_config_from   config.model -> TransformerConfig (vocab_size 0: the vocabulary's)
    optimizer_from      the paper's schedule (with the cool-down) and Adam (section 5.3)
    decoding_options    config -> DecodingOptions for validation or test decoding
    checkpoint_steps    the steps a run saves checkpoints at
    device_count        how many devices config.parallel splits a batch over

Each list of allowed values is declared where it is implemented and imported here.
"""

from __future__ import annotations

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


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the first training config field that is out of range."""
    for name in _POSITIVE:
        if config[name] <= 0:
            raise ValueError(f"config.{name} must be positive, got {config[name]}")
    for name in _NON_NEGATIVE:
        if config[name] < 0:
            raise ValueError(f"config.{name} must be >= 0, got {config[name]}")
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
