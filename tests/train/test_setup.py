"""The training config, checked once: allowed values, ranges, the model config, the paper's
schedule and Adam (against the formula of section 5.3 in float64), decoding options."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from flax_transformer import TransformerConfig
from train.configs import default as default_config
from train.configs import multi30k
from train.setup import (
    RESUMABLE_CHANGES,
    absolute_paths,
    check_config,
    checkpoint_steps,
    decoding_options,
    device_count,
    model_config_from,
    optimizer_from,
    resume_changes,
)


def test_the_shipped_configs_pass(tmp_path) -> None:
    check_config(default_config.get_config())
    config = multi30k.get_config()
    if not Path(config.data_path).is_dir():  # the check needs a directory, not the data
        config.data_path = str(tmp_path)
    check_config(config)


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
        ("ema_decay", 1.0, r"config.ema_decay must be in \[0, 1\) \(0: none\), got 1.0"),
        ("ema_decay", -0.5, r"config.ema_decay must be in \[0, 1\)"),
        ("ema_decay", float("nan"), "config.ema_decay must be a finite number"),
        ("average_last", 0, "config.average_last must be positive, got 0"),
        (
            "average_last",
            4,
            "config.average_last=4 averages more checkpoints than config.keep_checkpoints=3 keeps",
        ),
        ("adam_b1", 1.5, r"config.adam_b1 must be in \[0, 1\), got 1.5"),
        ("adam_b2", 1.0, r"config.adam_b2 must be in \[0, 1\), got 1.0"),
        ("adam_b1", -0.1, r"config.adam_b1 must be in \[0, 1\)"),
        ("adam_eps", 0.0, "config.adam_eps must be positive, got 0.0"),
        ("learning_rate_scale", -1.0, "config.learning_rate_scale must be positive, got -1.0"),
        ("learning_rate_scale", 0.0, "config.learning_rate_scale must be positive"),
        ("learning_rate_scale", float("nan"), "config.learning_rate_scale must be a finite number"),
        ("weight_decay", float("inf"), "config.weight_decay must be a finite number"),
        ("weight_decay", -0.1, "config.weight_decay must be >= 0"),
        ("warmup_steps", -5, "config.warmup_steps must be positive, got -5"),
        ("pack_fill", 0.0, r"config.pack_fill must be in \(0, 1\]"),
        ("num_train_steps", 0, "config.num_train_steps must be positive, got 0"),
        ("model.dropout_rate", 1.0, r"config.model.dropout_rate must be in \[0, 1\), got 1.0"),
        ("model.num_heads", 3, r"config.model.d_model \(256\) must be divisible by num_heads"),
        ("model.d_ff", 0, "config.model.d_ff must be positive, got 0"),
        ("model.dtype", "float8", "config.model.dtype must be one of"),
        ("model.vocab_size", -1, "config.model.vocab_size must be >= 0, got -1"),
        ("init_from", "/nonexistent/run", "config.init_from='/nonexistent/run' is not the workdir"),
    ],
)
def test_every_bad_field_is_named(field, value, message) -> None:
    config = default_config.get_config()
    node, *path = config, *field.split(".")
    for name in path[:-1]:
        node = node[name]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=message):
        check_config(config)


def test_data_fields_and_paths_are_checked_before_any_data(tmp_path) -> None:
    config = default_config.get_config()
    config.dataset = "parallel_text"
    with pytest.raises(ValueError, match="needs config.data_path"):
        check_config(config)
    config.data_path = str(tmp_path / "missing")
    config.source_language, config.target_language = "en", "de"
    with pytest.raises(ValueError, match="config.data_path=.*missing' is not a directory"):
        check_config(config)
    config.data_path = str(tmp_path)
    config.target_language = ""
    with pytest.raises(ValueError, match="needs config.target_language"):
        check_config(config)
    config.target_language = "de"
    check_config(config)
    (tmp_path / "file").write_text("x")
    config.data_dir = str(tmp_path / "file")
    with pytest.raises(ValueError, match="config.data_dir=.*file' exists and is not a directory"):
        check_config(config)
    config = default_config.get_config()
    config.dataset = "tfds"
    with pytest.raises(ValueError, match="needs config.tfds_name"):
        check_config(config)


def test_paths_are_made_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = default_config.get_config()
    config.data_path, config.init_from, config.data_dir = "data/multi30k", "../run", ""
    absolute_paths(config)
    assert config.data_path == str(tmp_path / "data" / "multi30k")
    assert config.init_from == str(tmp_path.parent / "run")
    assert config.data_dir == ""  # the default (TFDS's own) stays the default
    config.token_store_dir = "~/stores"
    absolute_paths(config)
    assert config.token_store_dir == os.path.expanduser("~/stores")


def test_resume_refuses_changes_of_what_the_run_computes_and_accepts_the_rest() -> None:
    saved = default_config.get_config().to_dict()
    config = default_config.get_config()
    config.num_train_steps, config.eval_every_steps = 3000, 250  # always allowed
    config.model.d_model = 512  # the model is checked elsewhere (never changeable)
    assert resume_changes(saved, config) == (
        ["eval_every_steps: 500 -> 250", "num_train_steps: 1500 -> 3000"],
        [],
    )
    config.learning_rate_scale, config.batch_size = 2.0, 64
    accepted, refused = resume_changes(saved, config)
    assert refused == ["batch_size: 128 -> 64", "learning_rate_scale: 0.5 -> 2.0"]
    config.allow_training_changes = True
    accepted, refused = resume_changes(saved, config)
    assert refused == [] and "learning_rate_scale: 0.5 -> 2.0" in accepted
    older = {key: value for key, value in saved.items() if key != "divergence_factor"}
    config = default_config.get_config()
    config.divergence_factor = 5.0
    assert resume_changes(older, config) == ([], [])  # a field the checkpoint predates
    config = default_config.get_config()
    config.data_path = os.path.abspath("data")
    assert resume_changes({**saved, "data_path": "data"}, config) == ([], [])  # as stored before
    assert resume_changes({**saved, "data_path": "other"}, config)[1] == [
        f"data_path: '{os.path.abspath('other')}' -> '{os.path.abspath('data')}'"
    ]


def test_every_resumable_field_exists() -> None:
    fields = default_config.get_config()
    assert all(name in fields for name in RESUMABLE_CHANGES)


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
