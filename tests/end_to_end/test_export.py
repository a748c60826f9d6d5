"""`python -m train.export` and the runner `train.exported`: the exported translator gives the
in-process decoders' outputs token for token, runs without flax or the model code, refuses
inputs longer than its largest bucket, and its files deserialize and run on their own.

The model is tests/number_words_model.py's (trained once per session), saved as a run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from flax_transformer.decoding import AttentionSelection
from tests.number_words_model import CONFIG, VOCABULARY
from train.configs import default as default_config
from train.evaluation import DecodingOptions
from train.export import export_function, export_translator, translation_function
from train.exported import ExportedTranslator, function_file
from train.translate import AlignmentOptions, alignment_links, text_line, translate_lines_in_detail
from train.workdir import Workdir, load_run

REPOSITORY = Path(__file__).resolve().parents[2]
# Exported for sources of up to 16 tokens (one bucket: quick), on CPU and CUDA in one artifact.
MAX_SOURCE_LENGTH = 16
LINES = ["40712", "7", "", "999999", "123456", "1000000", "15", "80", "300001"]
SELECTION = AttentionSelection(layer=-1, head="mean")


@pytest.fixture(scope="module")
def run_dir(number_words_params, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A number-words workdir holding the trained model as checkpoint 600."""
    config = default_config.get_config()
    workdir = Workdir(tmp_path_factory.mktemp("export") / "run")
    with workdir.checkpointer() as checkpointer:
        run_config = workdir.run_config(config, CONFIG)
        checkpointer.save_params(600, number_words_params, config=run_config)
    workdir.write_config(config, CONFIG)
    return Path(workdir.path)


@pytest.fixture(scope="module")
def artifact(number_words_params, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "numbers"
    export_translator(
        CONFIG,
        number_words_params,
        VOCABULARY,
        out,
        platforms=("cpu", "cuda"),
        max_source_length=MAX_SOURCE_LENGTH,
        attention=SELECTION,
    )
    return out


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_exported_outputs_equal_the_in_process_decoders(run_dir, artifact, method) -> None:
    run = load_run(str(run_dir))
    expected = translate_lines_in_detail(
        run, VOCABULARY, LINES, DecodingOptions(method=method), 4, attention=SELECTION
    )
    translator = ExportedTranslator.load(artifact)
    assert translator.bucket_lengths == [MAX_SOURCE_LENGTH]
    got = translator.translate(LINES, method=method, batch_size=4)  # 3 batches, the last of 1
    assert [t.text for t in got] == [t.text for t in expected]
    assert sum(t.text == "" for t in got) == 1  # the empty line; the model translates the rest
    for line, ours, theirs in zip(LINES, got, expected, strict=True):
        assert ours.source_ids == theirs.source_ids, line
        assert ours.ids == theirs.ids, line
        if method == "beam":
            assert ours.score == pytest.approx(theirs.score, abs=1e-5), line
        else:
            assert ours.score is None and theirs.score is None
        if line:
            np.testing.assert_allclose(ours.attention, theirs.attention[:, 0, 0], atol=1e-6)
            options = AlignmentOptions()
            assert translator.alignment(ours) == alignment_links(
                theirs, VOCABULARY, CONFIG, options
            )


def test_a_source_longer_than_the_largest_bucket_is_refused(artifact) -> None:
    translator = ExportedTranslator.load(artifact)
    too_long = "1" * MAX_SOURCE_LENGTH  # + eos: one token too many
    with pytest.raises(ValueError, match=r"^line 2: 17 tokens long \(with eos\), longer than the"):
        translator.translate(["5", too_long])
    assert translator.translate(["1" * (MAX_SOURCE_LENGTH - 1)])[0].ids  # 16 tokens: fits


def test_an_export_for_other_platforms_or_formats_is_refused(artifact, tmp_path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    for change, message in [
        ({"platforms": ["cuda", "tpu"]}, r"was exported for \['cuda', 'tpu'\], not for this cpu"),
        ({"format_version": 0}, "holds an export of format 0, this runner reads format 1"),
    ]:
        copy = tmp_path / str(len(list(tmp_path.iterdir())))
        copy.mkdir()
        (copy / "manifest.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(ValueError, match=message):
            ExportedTranslator.load(copy)
    with pytest.raises(FileNotFoundError, match="is not an exported translator"):
        ExportedTranslator.load(tmp_path)


def test_a_function_file_round_trips_and_takes_any_batch(number_words_params, artifact) -> None:
    exported = jax.export.deserialize(
        bytearray((artifact / function_file("greedy", MAX_SOURCE_LENGTH)).read_bytes())
    )
    assert exported.platforms == ("cpu", "cuda")
    again = jax.export.deserialize(exported.serialize())  # this version's serialization
    function = translation_function(
        CONFIG,
        "greedy",
        bos_id=VOCABULARY.bos_id,
        eos_id=VOCABULARY.eos_id,
        beam_size=4,
        length_penalty=0.6,
        beam_stop="finished",
        attention=None,
    )
    direct = export_function(function, number_words_params, MAX_SOURCE_LENGTH, ["cpu"])
    source = np.zeros((3, MAX_SOURCE_LENGTH), np.int32)
    source[:, :3] = [[7, 8, VOCABULARY.eos_id], [9, VOCABULARY.eos_id, 0], [5, 6, 7]]
    reference = jax.jit(function)(number_words_params, source)["tokens"]
    for candidate in (exported, again, direct):
        tokens = candidate.call(number_words_params, source)["tokens"]
        np.testing.assert_array_equal(tokens, reference)
    one_row = exported.call(number_words_params, source[1:2])["tokens"]  # another batch size
    np.testing.assert_array_equal(one_row, reference[1:2])


def _run(*args: str, stdin: bytes = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        cwd=REPOSITORY,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
        timeout=600,
        check=False,
    )


# Runs train.exported with flax, optax, orbax and the model code unimportable.
_WITHOUT_FLAX = """
import importlib.abc, runpy, sys

BLOCKED = ("flax", "optax", "orbax", "flax_transformer.model", "flax_transformer.decoding")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{name} is blocked")

sys.meta_path.insert(0, Block())
sys.argv = ["train.exported", *sys.argv[1:]]
runpy.run_module("train.exported", run_name="__main__")
"""


def test_the_runner_translates_without_flax_or_the_model_code(run_dir, artifact) -> None:
    lines = ["40712", "", "1" * 20, "15"]
    done = _run(
        "-c",
        _WITHOUT_FLAX,
        f"--artifact={artifact}",
        "--alignments",
        "--decoding=greedy",
        "--compilation_cache=",
        stdin="".join(f"{line}\n" for line in lines).encode(),
    )
    assert done.returncode == 65, done.stderr.decode()  # one line skipped
    assert done.stderr.decode().splitlines() == [
        "line 3: 21 tokens long (with eos), longer than the exported translator's largest "
        "bucket (16 tokens); skipped",
        "1 of 4 lines skipped",
    ]
    run = load_run(str(run_dir))
    options = AlignmentOptions()
    kept = [line if index != 2 else "" for index, line in enumerate(lines)]
    expected = translate_lines_in_detail(
        run, VOCABULARY, kept, DecodingOptions(method="greedy"), 4, attention=SELECTION
    )
    expected_lines = [
        text_line(t, alignment_links(t, VOCABULARY, CONFIG, options)) if line else ""
        for line, t in zip(kept, expected, strict=True)
    ]
    expected_lines[1] = " ||| "  # an empty input line, as train.translate --alignments writes it
    assert done.stdout.decode().split("\n") == [*expected_lines, ""]


def test_the_export_command_writes_and_refuses_to_overwrite(run_dir, tmp_path) -> None:
    out = tmp_path / "exported"
    args = ("-m", "train.export", f"--workdir={run_dir}", f"--out={out}", "--methods=greedy")
    done = _run(*args, "--max_source_length=16", "--platforms=cpu")
    assert done.returncode == 0, done.stderr.decode()
    assert "exported 1 functions (greedy x buckets [16]) for cpu to" in done.stdout.decode()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "words"
    assert manifest["attention"] is None and manifest["platforms"] == ["cpu"]
    assert sorted(p.name for p in out.iterdir()) == [
        "functions",
        "manifest.json",
        "params.npz",
        "words.json",
    ]
    cases = [
        ((*args, "--max_source_length=16"), f"{out} is not empty (pass --force to replace it)"),
        (
            (*args, "--force", "--max_source_length=99"),
            "max_source_length must be in 1..32 (the model's max_len), got 99",
        ),
        (
            (*args, "--force", "--methods=sample"),
            "methods must be among ['greedy', 'beam'], got ['sample']",
        ),
        (
            (*args, "--force", "--alignments", "--alignment_layer=5"),
            "attention layer 5 is out of range: the model has 2 decoder layers",
        ),
    ]
    for case_args, message in cases:
        failed = _run(*case_args)
        assert failed.returncode == 1, (case_args, failed.stderr.decode())
        assert failed.stderr.decode().strip().splitlines()[-1].endswith(message), case_args
    assert (out / "manifest.json").exists()  # the refused exports left the first one intact
    alone = _run("-m", "train.exported", f"--artifact={out}", "--alignments", stdin=b"5\n")
    assert alone.returncode == 1
    assert alone.stderr.decode().strip().endswith(f"{out} was exported without --alignments")
