"""The loop's pieces: refusals before any data is read, fine-tuning set-up, the log lines, the
stop request. (Whole runs, resume and Ctrl-C: tests/end_to_end/test_train_command.py.)"""

from __future__ import annotations

import os
import signal

import pytest

import flax_transformer as ft
from train.configs import default as default_config
from train.loop import _report, _start_from, _StopRequest, set_up_run
from train.workdir import Workdir


def test_an_imported_workdir_is_not_trained(tmp_path) -> None:
    config = default_config.get_config()
    Workdir(tmp_path).write_config(
        {**config.to_dict(), "imported_from": "hub:x"}, ft.TransformerConfig.tiny()
    )
    with pytest.raises(ValueError, match="holds imported parameters only \\(from hub:x\\)"):
        set_up_run(config, str(tmp_path))


def test_bad_config_is_refused_before_data_is_read(tmp_path) -> None:
    config = default_config.get_config()
    config.parallel = "threads"
    with pytest.raises(ValueError, match="config.parallel must be one of"):
        set_up_run(config, str(tmp_path / "never"))
    assert not os.path.exists(tmp_path / "never")


def test_micro_batches_reach_the_batches_and_the_train_step(tmp_path) -> None:
    """Token-budget batches get rows divisible by devices x micro_batches (4096 tokens of
    64-token rows: 64 rows, 63 with k=3), and the run's DataParallel accumulates over k."""
    config = default_config.get_config()
    config.update(parallel="single", batching="padded", max_length=64, micro_batches=3)
    run = set_up_run(config, str(tmp_path))
    assert run.parallel.micro_batches == 3
    assert run.data.train[0]["target"].shape[0] == 63
    config.update(batching="examples", batch_size=128)  # fixed rows: checked, not rounded
    message = "batch_size 128 is not divisible by the 1 devices x 3 micro-batches"
    with pytest.raises(ValueError, match=message):
        set_up_run(config, str(tmp_path / "examples"))


def test_fine_tuning_takes_the_source_model_and_tokenizer(tmp_path) -> None:
    source = Workdir(tmp_path / "source")
    text_config = default_config.get_config()
    text_config.dataset = "parallel_text"
    model = ft.TransformerConfig.tiny(vocab_size=300)
    source.write_config(text_config, model)
    (tmp_path / "source" / "tokenizer.model").write_bytes(b"model bytes")
    config = default_config.get_config()
    config.dataset = "parallel_text"
    config.init_from = source.path
    run = Workdir(tmp_path / "run")
    assert _start_from(config, run).path == source.path
    assert config.model.to_dict() == model.to_dict()
    assert (tmp_path / "run" / "tokenizer.model").read_bytes() == b"model bytes"
    config.init_from = run.path
    with pytest.raises(ValueError, match="is the run's own workdir"):
        _start_from(config, run)
    words = default_config.get_config()  # number words: its own vocabulary cannot take text's
    words.init_from = source.path
    with pytest.raises(ValueError, match="whose vocabulary does not fit"):
        _start_from(words, run)


def test_report_lines(capsys) -> None:
    summary = {"loss": 1.23456, "accuracy": 0.5, "bleu": 12.345, "chrf": 40.0,
               "exact_match": 0.25, "examples": 4.0}  # fmt: skip
    _report(9, "validation", summary, [("12", "twelve", "twelve")] * 3, samples=1)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "step 9: validation loss 1.2346, token accuracy 50.00%, BLEU 12.35, chrF 40.00, "
        "exact match 25.00% (4 examples)"
    )
    assert out[1:] == ["  12", "    -> twelve", "    reference: twelve"]


def test_sigterm_requests_a_stop() -> None:
    with _StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored
