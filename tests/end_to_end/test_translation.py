"""Translation end to end on a Multi30k slice: train, then `train.evaluate`, `train.translate`.

A tiny model trains for a few steps on 400 pairs written to temporary {split}.{lang} files: the
first lines of ../shared/data/multi30k when it is there, otherwise synthetic pairs (digits ->
English number words, written as "en" and "de" files) so that the plumbing is tested everywhere.
The scores are near zero; these tests check the tokenizer kept in the workdir, packed batches,
validation BLEU, the commands' outputs, checkpoint averaging, and the errors a user can run into.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import sacrebleu

from train.configs import multi30k
from train.data.numbers import number_to_words
from train.loop import train_and_evaluate
from train.workdir import Workdir, average_params, load_run

TOKENIZER_FILE = "tokenizer.model"  # the layout users see (README), written out on purpose

DATA = Path(os.environ.get("MULTI30K_DIR", str(multi30k.DEFAULT_DATA)))
HAVE_MULTI30K = (DATA / "train.en").exists()

TINY = {
    "model.d_model": 32,
    "model.num_heads": 2,
    "model.num_encoder_layers": 1,
    "model.num_decoder_layers": 1,
    "model.d_ff": 64,
    "model.max_len": 96,
    "tokenizer_vocab_size": 500,
    "batch_tokens": 512,
    "max_length": 48,
    "pack_length": 48,
    "eval_batch_size": 32,
    "warmup_steps": 5,
    "num_train_steps": 6,
    "log_every_steps": 3,
    "eval_every_steps": 3,
    "checkpoint_every_steps": 2,
    "keep_checkpoints": 3,
    "num_samples": 1,
    "parallel": "single",
    "progress_bar": False,
    "test_decoding": "greedy",
}


def write_text_files(directory: Path, counts: dict[str, int]) -> None:
    """{split}.en / {split}.de files: Multi30k's first lines, or synthetic pairs without it."""
    rng = np.random.default_rng(0)
    for split, count in counts.items():
        if HAVE_MULTI30K:
            for language in ("en", "de"):
                lines = (DATA / f"{split}.{language}").read_text(encoding="utf-8").splitlines()
                (directory / f"{split}.{language}").write_text("\n".join(lines[:count]) + "\n")
        else:
            numbers = rng.integers(0, 10**6, size=count)
            (directory / f"{split}.en").write_text("".join(f"{n}\n" for n in numbers))
            words = "".join(f"{number_to_words(int(n))}\n" for n in numbers)
            (directory / f"{split}.de").write_text(words)


def tiny_config(text_dir: Path, tfds_dir: Path, **overrides: object):
    config = multi30k.get_config()
    values = {**TINY, "data_path": str(text_dir), "data_dir": str(tfds_dir), **overrides}
    for key, value in values.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("translation")
    data_path = base / "text"
    data_path.mkdir()
    write_text_files(data_path, {"train": 400, "val": 40, "test2016": 30})
    config = tiny_config(data_path, base / "tfds")
    workdir = base / "run"
    result = train_and_evaluate(config, str(workdir))
    return config, workdir, result


def test_training_reports_validation_and_test_bleu(trained) -> None:
    _, workdir, result = trained
    assert result.step == 6 and not result.interrupted
    for summary in (result.validation, result.test):
        assert 0.0 <= summary["bleu"] <= 100.0 and 0.0 <= summary["chrf"] <= 100.0
        assert np.isfinite(summary["loss"])
    assert result.test["examples"] == 30.0 and result.validation["examples"] == 40.0
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["split"] == "validation"] == [3, 6]
    assert (workdir / TOKENIZER_FILE).exists()


def test_resume_reuses_the_workdir_tokenizer(trained, tmp_path: Path) -> None:
    config, original, _ = trained
    workdir = tmp_path / "copy"  # a copy: the other tests read the original's checkpoints
    shutil.copytree(original, workdir)
    before = (workdir / TOKENIZER_FILE).read_bytes()
    config = config.copy_and_resolve_references()
    config.num_train_steps = 8
    result = train_and_evaluate(config, str(workdir))
    assert result.step == 8
    assert (workdir / TOKENIZER_FILE).read_bytes() == before


def run_module(module: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def test_evaluate_command_writes_hypotheses_and_prints_sacrebleu(trained, tmp_path: Path) -> None:
    _, workdir, _ = trained
    output = tmp_path / "hyp.txt"
    done = run_module(
        "train.evaluate",
        f"--workdir={workdir}",
        "--split=test2016",
        "--decoding=greedy",
        "--average_last=2",
        f"--output={output}",
    )
    assert done.returncode == 0, done.stderr
    assert "BLEU = " in done.stdout and "chrF = " in done.stdout
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in done.stdout
    assert "the average of the parameter EMAs of checkpoints" in done.stdout  # the recipe keeps one
    hypotheses = output.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(hypotheses) == 30
    references = (workdir.parent / "text" / "test2016.de").read_text().splitlines()
    expected = sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert f"BLEU = {expected:.2f}" in done.stdout
    scores = json.loads(output.with_suffix(".json").read_text())
    assert scores["sentences"] == 30 and scores["params"].startswith("the average")


def test_translate_command_keeps_line_order_and_empty_lines(trained) -> None:
    _, workdir, _ = trained
    text = "A man is riding a bike.\n\nTwo dogs play in the snow.\n"
    done = run_module("train.translate", f"--workdir={workdir}", "--beam_size=2", stdin=text)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    greedy = run_module("train.translate", f"--workdir={workdir}", "--decoding=greedy", stdin=text)
    sample = run_module(
        "train.translate", f"--workdir={workdir}", "--decoding=sample", "--top_k=5", stdin=text
    )
    assert greedy.returncode == 0 and sample.returncode == 0, greedy.stderr + sample.stderr
    assert len(greedy.stdout.split("\n")) == 4


def test_translate_refuses_a_missing_workdir(tmp_path: Path) -> None:
    done = run_module("train.translate", f"--workdir={tmp_path / 'nothing'}", stdin="Hello\n")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: {tmp_path / 'nothing'} does not exist: no run of `python -m train`"
    ]


def test_checkpoint_averaging_is_the_mean_of_the_checkpoints(trained) -> None:
    _, workdir, _ = trained
    runs = [load_run(str(workdir), step=step) for step in (4, 6)]
    averaged = load_run(str(workdir), step=6, average_last=2)
    assert averaged.steps == [4, 6]
    expected = jax.tree.map(
        lambda a, b: (np.asarray(a, np.float64) + np.asarray(b, np.float64)) / 2,
        runs[0].params,
        runs[1].params,
    )
    jax.tree.map(
        lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7),
        averaged.params,
        expected,
    )
    with pytest.raises(ValueError, match="cannot average the last 9 checkpoints"):
        load_run(str(workdir), average_last=9)
    with pytest.raises(ValueError, match="no parameter trees"):
        average_params([])


def test_config_errors_name_the_field(trained, tmp_path: Path) -> None:
    config, workdir, _ = trained
    text = workdir.parent / "text"
    cases = [
        ({"batching": "sorted"}, "config.batching must be one of"),
        ({"data_path": ""}, "needs config.data_path"),
        ({"test_split": "test2017"}, r"no split\(s\) 'test2017' \(config.test_split\)"),
        ({"validation_decoding": "nucleus"}, "config.validation_decoding must be one of"),
        ({"batch_tokens": 0}, "config.batch_tokens must be positive"),
    ]
    for overrides, message in cases:
        bad = tiny_config(text, workdir.parent / "tfds", **overrides)
        with pytest.raises(ValueError, match=message):
            train_and_evaluate(bad, str(tmp_path / "run"))


def test_evaluate_needs_the_workdir_tokenizer(trained, tmp_path: Path) -> None:
    _, workdir, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    (copy / TOKENIZER_FILE).unlink()
    done = run_module("train.evaluate", f"--workdir={copy}", "--decoding=greedy")
    assert done.returncode != 0 and "tokenizer.model is missing" in done.stderr


def test_commands_list_their_decoding_flags_in_help() -> None:
    for module in ("train.evaluate", "train.translate"):
        done = run_module(module, "--help")
        for flag in ("--workdir", "--decoding", "--beam_size", "--beam_stop", "--average_last"):
            assert flag in done.stdout + done.stderr, (module, flag)


def test_tokenizer_subset_reads_only_an_evenly_spread_subset(tmp_path: Path) -> None:
    class CountingSource(list):
        """A list data source that records which examples were read."""

        read: list[int] = []

        def __getitems__(self, indices):
            self.read.extend(int(i) for i in indices)
            return [self[int(i)] for i in indices]

    pairs = [{"source": str(n), "target": number_to_words(n)} for n in range(1000, 401000, 1000)]
    source = CountingSource(pairs)
    config = tiny_config(tmp_path, tmp_path, tokenizer_train_pairs=100, tokenizer_vocab_size=320)
    vocabulary = Workdir(tmp_path).vocabulary(config, source)
    assert vocabulary.vocab_size == 320 and (tmp_path / TOKENIZER_FILE).exists()
    assert len(source.read) == 100 and source.read[0] == 0 and source.read[-1] == 399
    assert sorted(set(source.read)) == source.read  # each read once, in order


def test_translate_prints_word_alignments_and_attention(trained) -> None:
    """Text output: "translation ||| s-t ..." with word indices. JSON lines: the tokens, the
    beam score, every layer's and head's attention, and an alignment that is the argmax of the
    heads' mean over each target word's pieces, summed over each source word's pieces."""
    from flax_transformer.alignment import hard_alignment
    from train.data.vocabulary import SentencePieceVocabulary

    _, workdir, _ = trained
    text = "A man is riding a bike.\nTwo dogs play in the snow.\n"
    done = run_module("train.translate", f"--workdir={workdir}", "--alignments", stdin=text)
    assert done.returncode == 0, done.stderr
    plain = run_module("train.translate", f"--workdir={workdir}", stdin=text)
    lines = done.stdout.splitlines()
    assert [line.split(" ||| ")[0] for line in lines] == plain.stdout.splitlines()
    jsonl = run_module(
        "train.translate",
        f"--workdir={workdir}",
        "--alignments",
        "--output_format=jsonl",
        "--attention=all",
        stdin=text,
    )
    assert jsonl.returncode == 0, jsonl.stderr
    vocabulary = SentencePieceVocabulary.from_file(workdir / TOKENIZER_FILE)
    for line, record in zip(lines, map(json.loads, jsonl.stdout.splitlines()), strict=True):
        translation, links = line.split(" ||| ")
        assert record["translation"] == translation and record["alignment"] == links
        assert isinstance(record["score"], float)
        source_ids = [*vocabulary.encode(record["source"]), vocabulary.eos_id]
        assert record["source_tokens"] == vocabulary.pieces(source_ids)
        weights = np.array(record["attention"]["weights"])  # [layers, heads, tokens, source]
        assert record["attention"]["layers"] == [0] and record["attention"]["heads"] == [0, 1]
        assert weights.shape == (1, 2, len(record["tokens"]), len(record["source_tokens"]))
        np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-4)
        ids = vocabulary.encode(translation) if record["tokens"] else []
        target_ids = [vocabulary._processor.piece_to_id(p) for p in record["tokens"]]
        assert vocabulary.decode(target_ids) == translation, ids
        expected = hard_alignment(
            weights[0].mean(axis=0),
            vocabulary.word_indices(source_ids),
            vocabulary.word_indices(target_ids),
        )
        assert links == " ".join(f"{s}-{t}" for s, t in expected)
        target_words = max(vocabulary.word_indices(target_ids), default=-1) + 1
        assert [t for _, t in expected] == list(range(target_words))
