"""The training config, checked once: allowed values, ranges, the model config, the paper's
schedule and Adam (against the formula of section 5.3 in float64), decoding options."""

from __future__ import annotations

import math

import pytest

from flax_transformer import TransformerConfig
from train.configs import default as default_config
from train.configs import multi30k
from train.setup import (
    check_config,
    checkpoint_steps,
    decoding_options,
    device_count,
    model_config_from,
    optimizer_from,
)


def test_the_shipped_configs_pass() -> None:
    check_config(default_config.get_config())
    check_config(multi30k.get_config())


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "dataset",
            "wmt",
            r"config.dataset must be one of \['number_words', 'parallel_text', 'tfds'\]",
        ),
        ("parallel", "tpu", r"config.parallel must be one of \['single', 'pmap', 'mesh'\]"),
        ("batching", "sorted", r"config.batching must be one of \['examples', 'padded'"),
        ("test_decoding", "", "config.test_decoding must be one of"),
        ("validation_decoding", "nucleus", "config.validation_decoding must be one of"),
        ("tokenizer", "bpe", r"config.tokenizer must be one of \['sentencepiece', 'marian'\]"),
        ("beam_stop", "early", "beam_stop must be one of"),
        ("batch_size", 0, "config.batch_size must be positive, got 0"),
        ("micro_batches", 0, "config.micro_batches must be positive, got 0"),
        ("micro_batches", -2, "config.micro_batches must be positive, got -2"),
        ("clip_norm", -1.0, "config.clip_norm must be >= 0"),
        ("cooldown_fraction", 1.5, r"config.cooldown_fraction must be in \[0, 1\]"),
        ("label_smoothing", 1.0, r"config.label_smoothing must be in \[0, 1\)"),
        ("average_last", 0, "config.average_last must be positive, got 0"),
        (
            "average_last",
            4,
            "config.average_last=4 averages more checkpoints than config.keep_checkpoints=3 keeps",
        ),
    ],
)
def test_every_bad_field_is_named(field, value, message) -> None:
    config = default_config.get_config()
    config[field] = value
    with pytest.raises(ValueError, match=message):
        check_config(config)


def test_model_config_takes_the_vocabulary_size_when_zero() -> None:
    config = default_config.get_config()
    assert model_config_from(config, 45).vocab_size == 45
    config.model.vocab_size = 64  # larger than the vocabulary: allowed (padded output layer)
    assert model_config_from(config, 45) == TransformerConfig.from_dict(config.model.to_dict())
    config.model.vocab_size = 40
    with pytest.raises(ValueError, match="config.model.vocab_size=40 is smaller than"):
        model_config_from(config, 45)


def test_schedule_is_the_papers_with_a_linear_cooldown() -> None:
    """lrate = scale * d^-0.5 * min(step^-0.5, step * warmup^-1.5), section 5.3, times a linear
    decay to 0 over the last cooldown_fraction of the steps; optax counts from 0 (step + 1)."""
    config = default_config.get_config()  # d 256, warm-up 200, scale 0.5, 1500 steps, 1/3 cool
    schedule, _ = optimizer_from(config, model_config_from(config, 45))
    cooldown = round(config.num_train_steps / 3)
    for count in (0, 1, 199, 200, 999, 1000, 1200, 1499):
        step = count + 1
        paper = 0.5 * 256**-0.5 * min(step**-0.5, step * 200**-1.5)
        remaining = config.num_train_steps - count
        factor = min(1.0, remaining / cooldown)
        assert float(schedule(count)) == pytest.approx(paper * factor, rel=1e-5), count
    assert math.isclose(float(schedule(config.num_train_steps)), 0.0, abs_tol=1e-12)


def test_decoding_options_follow_the_config() -> None:
    config = default_config.get_config()
    options = decoding_options(config, "beam")
    assert (options.method, options.beam_size, options.length_penalty, options.beam_stop) == (
        "beam", 4, 0.6, "finished"
    )  # fmt: skip
    assert options.max_length is None  # the paper's source length + 50
    assert device_count("single") == 1 and device_count("mesh") >= 1


def test_checkpoint_steps_are_every_interval_each_evaluation_and_the_last() -> None:
    config = default_config.get_config()
    config.num_train_steps, config.checkpoint_every_steps, config.eval_every_steps = 10, 4, 5
    assert checkpoint_steps(config) == [4, 5, 8, 10]
    config.num_train_steps = 3  # shorter than both intervals: the last step only
    assert checkpoint_steps(config) == [3]
