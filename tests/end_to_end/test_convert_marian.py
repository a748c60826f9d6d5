"""`python -m train.convert_marian` end to end: a MarianMT checkpoint -> a workdir that
`train.translate` and `train.evaluate` read and `--config.init_from` fine-tunes; the hub download
asks for the model and tokenizer files only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import flax_transformer as ft
from flax_transformer.interop import marian
from tests.helpers import REPO_ROOT, marian_texts, write_marian_tokenizer
from train.data.vocabulary import MarianVocabulary


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_marian_tokenizer(tmp_path_factory.mktemp("marian_tokenizer"))


# ---------------------------------------------------------------------------------------------
# The command line: convert -> translate -> evaluate
# ---------------------------------------------------------------------------------------------
def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )


@pytest.fixture(scope="module")
def converted_workdir(tmp_path_factory, tokenizer_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("convert")
    tokenizer = MarianVocabulary.from_directory(tokenizer_dir)
    config = ft.TransformerConfig.tiny(
        vocab_size=tokenizer.vocab_size,
        pad_id=tokenizer.pad_id,
        activation="silu",
        layer_norm_epsilon=1e-5,
        sinusoid_layout="halves",
        max_len=128,
    )
    checkpoint = root / "opus-mt-tiny"
    marian.save_marian(checkpoint, config, ft.init_params(config, jax.random.key(3)), eos_id=0)
    for name in ("source.spm", "target.spm", "vocab.json"):
        (checkpoint / name).write_bytes((tokenizer_dir / name).read_bytes())
    data = root / "data"  # a small parallel text directory for train.evaluate
    data.mkdir()
    english, german = marian_texts("test2016", 12)
    for split in ("train", "val", "test2016"):
        (data / f"{split}.en").write_text("\n".join(english) + "\n", encoding="utf-8")
        (data / f"{split}.de").write_text("\n".join(german) + "\n", encoding="utf-8")
    workdir = root / "workdir"
    result = _run(
        "train.convert_marian",
        f"--checkpoint={checkpoint}",
        f"--workdir={workdir}",
        f"--config.data_path={data}",
        f"--config.data_dir={root / 'tfds'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "converted" in result.stdout
    return checkpoint, workdir


def test_converted_workdir_translates_like_the_library(converted_workdir):
    checkpoint_dir, workdir = converted_workdir
    assert sorted(os.listdir(workdir / "marian_tokenizer")) == [
        "source.spm",
        "target.spm",
        "vocab.json",
    ]
    lines = ["A man rides a red bike.", "", "Two dogs play in the snow."]
    result = _run(
        "train.translate", f"--workdir={workdir}", "--decoding=greedy", stdin="\n".join(lines)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    translations = result.stdout.split("\n")[:-1]
    assert len(translations) == 3 and translations[1] == ""
    # The same with the library directly: eos appended, decoding starts from the pad id.
    checkpoint = marian.load_marian(checkpoint_dir)
    tokenizer = MarianVocabulary.from_directory(checkpoint_dir)
    for line, translation in zip(lines[::2], translations[::2], strict=True):
        source = np.array([[*tokenizer.encode(line), tokenizer.eos_id]], np.int32)
        tokens = ft.greedy_decode(
            checkpoint.config, checkpoint.params, source, bos_id=tokenizer.pad_id, eos_id=0
        )
        assert translation == tokenizer.decode(np.asarray(tokens)[0])


def test_converted_workdir_evaluates_and_refuses_to_resume(converted_workdir):
    _, workdir = converted_workdir
    result = _run("train.evaluate", f"--workdir={workdir}", "--split=test", "--decoding=greedy")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BLEU = " in result.stdout and "12 sentences" in result.stdout
    result = _run(
        "train",
        f"--workdir={workdir}",
        "--config=train/configs/multi30k.py",
        f"--config.data_path={workdir.parent / 'data'}",  # the fixture's, so the data is no issue
    )
    assert result.returncode != 0
    assert "holds imported parameters only" in result.stderr


def test_fine_tuning_starts_from_the_imported_model(converted_workdir, tmp_path):
    checkpoint_dir, imported = converted_workdir
    data = imported.parent / "data"
    finetuned = tmp_path / "finetuned"
    result = _run(
        "train",
        f"--workdir={finetuned}",
        "--config=train/configs/multi30k.py",
        f"--config.init_from={imported}",
        f"--config.data_path={data}",
        f"--config.data_dir={tmp_path / 'tfds'}",
        "--config.num_train_steps=2",
        "--config.warmup_steps=1",
        "--config.learning_rate_scale=1e-9",  # the step barely moves the params
        "--config.batch_tokens=128",
        "--config.eval_every_steps=2",
        "--config.num_validation_examples=4",
        "--config.test_decoding=greedy",
        "--config.progress_bar=False",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting from the params of" in result.stdout + result.stderr
    # The run took the imported model's tokenizer and config, and started from its params.
    assert (finetuned / "marian_tokenizer" / "vocab.json").exists()
    from train.workdir import load_run

    run, start = load_run(str(finetuned)), marian.load_marian(checkpoint_dir)
    assert run.config.tokenizer == "marian" and run.model_config == start.config
    differences = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), run.params, start.params
    )
    assert max(jax.tree.leaves(differences)) < 1e-4


def test_convert_refuses_an_existing_run(converted_workdir):
    checkpoint, workdir = converted_workdir
    result = _run("train.convert_marian", f"--checkpoint={checkpoint}", f"--workdir={workdir}")
    assert result.returncode != 0 and "already holds a run" in result.stderr


def test_hub_download_asks_for_the_model_and_tokenizer_files_only(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub", reason="pip install -e '.[hub]'")
    from train import convert_marian

    calls = []

    def fake_snapshot_download(name, allow_patterns):
        calls.append((name, allow_patterns))
        return "/somewhere"

    repository = ["config.json", "pytorch_model.bin", "tf_model.h5", "source.spm", "vocab.json"]
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda name: repository)
    assert convert_marian.download("Helsinki-NLP/opus-mt-en-de") == "/somewhere"
    name, patterns = calls[-1]
    assert name == "Helsinki-NLP/opus-mt-en-de"
    assert {"config.json", "pytorch_model.bin", "source.spm", "target.spm", "vocab.json"} <= set(
        patterns
    )
    assert not any(p.endswith((".h5", ".msgpack", ".ot")) for p in patterns)  # no TF/Flax/Rust
    repository.append("model.safetensors")  # then the PyTorch pickle is not downloaded too
    convert_marian.download("Helsinki-NLP/opus-mt-en-de")
    assert "model.safetensors" in calls[-1][1] and "pytorch_model.bin" not in calls[-1][1]
