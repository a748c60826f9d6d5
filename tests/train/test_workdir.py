"""The workdir: its layout, config.json, the vocabulary it holds, and runs read back."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

import flax_transformer as ft
from train.checkpoints import UnreadableCheckpointError
from train.configs import default as default_config
from train.data.vocabulary import SentencePieceVocabulary, WordVocabulary
from train.workdir import (
    TokenizerMismatchError,
    Workdir,
    abstract_params,
    average_params,
    load_run,
)


def test_layout_is_named_in_one_place(tmp_path) -> None:
    workdir = Workdir(tmp_path)
    assert workdir.path == str(tmp_path)
    names = {
        "config_path": "config.json",
        "tokenizer_path": "tokenizer.model",
        "marian_tokenizer_dir": "marian_tokenizer",
        "checkpoints_dir": "checkpoints",
        "unreadable_checkpoints_dir": "checkpoints_unreadable",
        "metrics_path": "metrics.jsonl",
        "tensorboard_dir": "tensorboard",
        "translations_dir": "translations",
    }
    for attribute, name in names.items():
        assert getattr(workdir, attribute) == os.path.join(tmp_path, name)
    assert workdir.translation_path("test", [7], "beam").endswith("translations/test-7-beam.txt")
    ema = workdir.translation_path("test", [7], "beam", ema=True)
    assert ema.endswith("translations/test-7-ema-beam.txt")
    averaged = workdir.translation_path("test", [5, 7], "greedy")
    assert averaged.endswith("translations/test-7-average2-greedy.txt")


def test_config_round_trip_and_imported_origin(tmp_path) -> None:
    workdir = Workdir(tmp_path / "run")
    assert not workdir.holds_run() and workdir.imported_from() is None
    config = default_config.get_config()
    model = ft.TransformerConfig.tiny()
    written = workdir.write_config(config, model)
    assert workdir.holds_run()
    assert json.loads(Path(workdir.config_path).read_text()) == written
    assert not os.path.exists(workdir.config_path + ".tmp")  # written atomically
    train_config, model_config = workdir.read_config()
    assert model_config == model and train_config.to_dict() == config.to_dict()
    workdir.write_config({**config.to_dict(), "imported_from": "hub:x"}, model)
    assert workdir.imported_from() == "hub:x"


def test_config_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        Workdir(tmp_path).read_config()
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        Workdir(tmp_path).read_config()


def test_vocabulary_of_each_kind(tmp_path) -> None:
    config = default_config.get_config()
    assert isinstance(Workdir(tmp_path).vocabulary(config), WordVocabulary)  # number words
    config.dataset = "parallel_text"
    with pytest.raises(FileNotFoundError, match="tokenizer.model is missing"):
        Workdir(tmp_path).vocabulary(config)
    words = ["ab", "ba", "abc", "cab", "bca", "cc"]
    pairs = [
        {"source": f"{words[i % 6]} {words[i % 5]}", "target": words[i % 4]} for i in range(60)
    ]
    config.tokenizer_vocab_size = 270
    trained = Workdir(tmp_path).vocabulary(config, pairs)
    assert isinstance(trained, SentencePieceVocabulary) and trained.vocab_size == 270
    again = Workdir(tmp_path).vocabulary(config)  # read back, never retrained
    assert again.model_bytes == trained.model_bytes
    copy = Workdir(tmp_path / "copy")
    copy.copy_tokenizer_from(Workdir(tmp_path), "sentencepiece")
    assert copy.vocabulary(config).model_bytes == trained.model_bytes
    config.tokenizer = "marian"
    with pytest.raises(FileNotFoundError, match="lacks the Marian tokenizer file"):
        Workdir(tmp_path).vocabulary(config)


def test_average_params_is_the_float64_mean() -> None:
    rng = np.random.default_rng(0)
    trees = [{"a": rng.normal(size=(3, 2)).astype(np.float32), "b": {"c": rng.normal(size=4)}}]
    trees += [jax.tree.map(lambda x: x + rng.normal(size=x.shape), trees[0]) for _ in range(2)]
    averaged = average_params(trees)
    expected = jax.tree.map(
        lambda *xs: np.mean(np.stack([np.asarray(x, np.float64) for x in xs]), 0), *trees
    )
    jax.tree.map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6), averaged, expected
    )
    with pytest.raises(ValueError, match="no parameter trees to average"):
        average_params([])


def test_abstract_params_are_the_model_shapes_without_values() -> None:
    config = ft.TransformerConfig.tiny()
    target = abstract_params(config)
    params = ft.init_params(config, jax.random.key(0))
    assert jax.tree.structure(target) == jax.tree.structure(params)
    for abstract, real in zip(jax.tree.leaves(target), jax.tree.leaves(params), strict=True):
        assert abstract.shape == real.shape and abstract.dtype == real.dtype


def test_load_run_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="average_last must be >= 1"):
        load_run(tmp_path, average_last=0)
    workdir = Workdir(tmp_path)
    workdir.write_config(
        ml_collections.ConfigDict({"keep_checkpoints": 3}), ft.TransformerConfig.tiny()
    )
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        load_run(tmp_path)


def _pairs() -> list[dict[str, str]]:
    words = ["ab", "ba", "abc", "cab", "bca", "cc"]
    return [{"source": f"{words[i % 6]} {words[i % 5]}", "target": words[i % 4]} for i in range(60)]


def test_the_tokenizer_is_recorded_and_never_retrained_or_swapped(tmp_path) -> None:
    config = default_config.get_config()
    config.dataset, config.tokenizer_vocab_size = "parallel_text", 270
    workdir = Workdir(tmp_path / "run")
    trained = workdir.vocabulary(config, _pairs())  # a new run: trained
    written = workdir.write_config(config, ft.TransformerConfig.tiny(), trained)
    assert written["tokenizer"] == {
        "identity": "SentencePieceVocabulary:"
        + __import__("hashlib")
        .sha256(len(trained.model_bytes).to_bytes(8, "little") + trained.model_bytes)
        .hexdigest(),
        "vocab_size": 270,
    }
    assert workdir.vocabulary(config, _pairs()).model_bytes == trained.model_bytes
    os.remove(workdir.tokenizer_path)
    with pytest.raises(
        FileNotFoundError,
        match=r"tokenizer.model is missing: the run in .* was "
        r"trained with it \(identity SentencePieceVocabulary sha256 [0-9a-f]{12}"
        r"\.\.\., 270 ids\); put the file back",
    ):
        workdir.vocabulary(config, _pairs())  # a train source at hand: still not retrained
    assert not os.path.exists(workdir.tokenizer_path)
    other = Workdir(tmp_path / "other")
    config.tokenizer_vocab_size = 268
    other.vocabulary(config, _pairs())
    os.replace(other.tokenizer_path, workdir.tokenizer_path)  # a tokenizer of another run
    with pytest.raises(TokenizerMismatchError, match=r"recorded: 270 ids.*found: 268 ids"):
        workdir.vocabulary(config)


def test_checkpoints_without_a_record_still_refuse_a_retrain(tmp_path) -> None:
    """Workdirs written before the record: checkpoints alone forbid training a tokenizer."""
    config = default_config.get_config()
    config.dataset = "parallel_text"
    workdir = Workdir(tmp_path)
    os.makedirs(os.path.join(workdir.checkpoints_dir, "500"))
    with pytest.raises(FileNotFoundError, match="tokenizer.model is missing"):
        workdir.vocabulary(config, _pairs())


def test_the_number_words_vocabulary_is_checked_too(tmp_path) -> None:
    config = default_config.get_config()
    workdir = Workdir(tmp_path)
    words = workdir.vocabulary(config)
    run_config = workdir.write_config(config, ft.TransformerConfig.tiny(), words)
    run_config["tokenizer"]["identity"] = "WordVocabulary:" + "0" * 64  # as if the code changed
    Path(workdir.config_path).write_text(json.dumps(run_config))
    with pytest.raises(TokenizerMismatchError, match="is not the one its run was trained with"):
        workdir.vocabulary(config)


def _trained_run(path, steps) -> Workdir:
    """A workdir with config.json and params-only checkpoints of a tiny model at `steps`."""
    workdir = Workdir(path)
    model = ft.TransformerConfig.tiny()
    workdir.write_config(ml_collections.ConfigDict({"keep_checkpoints": 5}), model)
    with workdir.checkpointer(keep=5) as checkpointer:
        for step in steps:
            params = ft.init_params(model, jax.random.key(step))
            checkpointer.save_params(step, params, config={"model": model.to_dict()})
    return workdir


def test_load_run_skips_an_unreadable_latest_with_a_warning(tmp_path) -> None:
    workdir = _trained_run(tmp_path, [1, 2])
    step_dir = os.path.join(workdir.checkpoints_dir, "2")
    with open(os.path.join(step_dir, "config", "metadata"), "w"):
        pass  # emptied: not JSON any more
    warnings: list[str] = []
    run = load_run(workdir, warn=warnings.append)
    assert run.steps == [1]
    expected = ft.init_params(ft.TransformerConfig.tiny(), jax.random.key(1))
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(warnings) == 1 and warnings[0].startswith("warning: checkpoint 2 in ")
    assert os.path.isdir(step_dir)  # evaluation and translation move nothing
    with pytest.raises(
        UnreadableCheckpointError,
        match=r"checkpoint 2 in .* cannot be read .*; "
        r"the other checkpoints: \[1\]",
    ):
        load_run(workdir, step=2)
    with pytest.raises(UnreadableCheckpointError, match="checkpoint 2 .* cannot be read"):
        load_run(workdir, average_last=2)


def test_create_refuses_a_file_and_an_unwritable_directory(tmp_path, monkeypatch) -> None:
    Workdir(tmp_path / "new" / "run").create()
    assert os.path.isdir(tmp_path / "new" / "run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="the workdir .*file is a file, not a directory"):
        Workdir(tmp_path / "file").create()
    with pytest.raises(OSError, match=r"cannot write in the workdir \(Not a directory\).*file/run"):
        Workdir(tmp_path / "file" / "run").create()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("train.workdir.tempfile.TemporaryFile", read_only)
    with pytest.raises(OSError, match=r"cannot write in the workdir \(Read-only file system\)"):
        Workdir(tmp_path / "new" / "run").create()
