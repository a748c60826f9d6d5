"""The commands' errors as a user sees them: one line on stderr (and a hint), a non-zero status,
no traceback; --help answers with status 0; train.translate skips the input lines it cannot
translate, line by line, instead of failing on the whole input.

Each case is a subprocess (`python -m train...`, about 2 s); translation uses a workdir holding
an untrained tiny number-words model, written in a second instead of trained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from flax_transformer.model import init_params
from train.configs import default as default_config
from train.data.numbers import number_words_vocabulary
from train.setup import model_config_from
from train.workdir import Workdir

COMMANDS = ("train", "train.evaluate", "train.translate", "train.convert_marian", "train.serve")


def run_module(module: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """`python -m module args` with `stdin`; stdout as bytes, stderr as text."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        input=stdin,
        capture_output=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    done.stderr = done.stderr.decode("utf-8", "replace")
    return done


def assert_one_line_error(done: subprocess.CompletedProcess, message: str) -> None:
    """The last lines of stderr are `error: {message}...` and at most a hint; no traceback."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(f"error: {message}"), done.stderr
    after = lines[lines.index(errors[0]) + 1 :]
    assert after == [] or (len(after) == 1 and after[0].startswith("hint: ")), done.stderr


def test_every_command_answers_help_with_status_0() -> None:
    for module in COMMANDS:
        done = run_module(module, "--help")
        assert done.returncode == 0, (module, done.stderr)
        assert b"--workdir" in done.stdout and b"--[no]debug" in done.stdout, module


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config.adam_b1=oops"], "flag --config.adam_b1=oops: could not convert string"),
        (["--config.batch_sise=64"], "--config.batch_sise=64: the config has no field"),
        (["--config=nonexistent.py"], "cannot load --config=nonexistent.py: [Errno 2] No such"),
    ],
)
def test_bad_config_flags_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = run_module("train", f"--workdir={tmp_path / 'run'}", *args)
    assert_one_line_error(done, message)
    assert not (tmp_path / "run").exists()


def test_bad_workdirs_are_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (
            ("train.evaluate", "--workdir=/nonexistent"),
            "/nonexistent does not exist: no run of `python -m train`",
        ),
        (("train.translate", f"--workdir={empty}"), f"{empty}/config.json is missing"),
        (("train.translate", f"--workdir={a_file}"), f"{a_file} is a file, not a workdir"),
        (
            ("train", f"--workdir={a_file}/run"),
            f"{a_file}/run: cannot write in the workdir (Not a directory)",
        ),
        (("train", f"--workdir={a_file}"), f"the workdir {a_file} is a file, not a directory"),
        (
            ("train.translate", f"--workdir={empty}", f"--input={tmp_path / 'missing.txt'}"),
            f"{tmp_path / 'missing.txt'}: No such file or directory",
        ),
        (
            ("train.convert_marian", f"--workdir={tmp_path / 'imported'}"),
            "give exactly one of --checkpoint=DIR and --hub=NAME",
        ),
    ]
    for (module, *args), message in cases:
        assert_one_line_error(run_module(module, *args), message)


# ---------------------------------------------------------------------------------------------
# train.translate's input, line by line
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A number-words workdir whose checkpoint 0 holds a tiny untrained model: as good as a
    trained one for checking which line gets which output."""
    config = default_config.get_config()
    config.model.update(d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1)
    config.model.d_ff = 64
    model_config = model_config_from(config, number_words_vocabulary().vocab_size)
    params = init_params(model_config, jax.random.key(0))
    workdir = Workdir(tmp_path_factory.mktemp("untrained") / "run")
    with workdir.checkpointer() as checkpointer:
        checkpointer.save_params(0, params, config=workdir.run_config(config, model_config))
    workdir.write_config(config, model_config)
    return Path(workdir.path)


def test_translate_skips_undecodable_and_binary_lines(untrained_workdir: Path) -> None:
    flags = (f"--workdir={untrained_workdir}", "--decoding=greedy")
    text = b"123\n\xff\xfe\n\n4\x005\n4567\n"
    done = run_module("train.translate", *flags, stdin=text)
    assert done.returncode == 65, done.stderr
    assert done.stderr.splitlines()[-3:] == [
        "line 2: not UTF-8 (byte 1 is 0xff: invalid start byte); skipped",
        "line 4: contains the control character U+0000 at character 2 (binary input?); skipped",
        "2 of 5 lines skipped",
    ]
    alone = run_module("train.translate", *flags, stdin=b"123\n4567\n")
    assert alone.returncode == 0, alone.stderr
    first, last = alone.stdout.decode("utf-8").split("\n")[:2]
    assert done.stdout.decode("utf-8").split("\n") == [first, "", "", "", last, ""]


def test_translate_applies_the_dataset_s_check_and_the_length_limit(
    untrained_workdir: Path,
) -> None:
    # The number-words task's own check belongs to the data layer; a stand-in here.
    driver = (
        "import dataclasses, runpy, sys\n"
        "from train.data import sources\n"
        "def digits_only(line):\n"
        "    return None if line.isdigit() else f'{line!r} is not a number written in digits'\n"
        "sources.DATASETS['number_words'] = dataclasses.replace(\n"
        "    sources.DATASETS['number_words'], input_problem=digits_only)\n"
        f"sys.argv = ['translate', '--workdir={untrained_workdir}', '--decoding=greedy']\n"
        "runpy.run_module('train.translate', run_name='__main__')\n"
    )
    text = b"12\n 12a \n" + b"1" * 80 + b"\n7\r\n"  # the CR of a Windows line end is whitespace
    done = subprocess.run(
        [sys.executable, "-c", driver],
        input=text,
        capture_output=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 65, stderr
    assert stderr.splitlines()[-3:] == [
        "line 2: '12a' is not a number written in digits; skipped",
        "line 3: 81 tokens long (with eos), longer than the model's max_len=64; skipped",
        "2 of 4 lines skipped",
    ]
    assert len(done.stdout.decode("utf-8").split("\n")) == 5  # four lines and the last newline


def test_translate_writes_json_lines_with_errors_for_skipped_lines(untrained_workdir) -> None:
    flags = (f"--workdir={untrained_workdir}", "--decoding=greedy", "--output_format=jsonl")
    done = run_module("train.translate", *flags, "--alignments", stdin=b"123\n\xff\n\n45\n")
    assert done.returncode == 65, done.stderr
    records = [json.loads(line) for line in done.stdout.decode("utf-8").splitlines()]
    assert [record["line"] for record in records] == [1, 2, 3, 4]
    assert records[1] == {"line": 2, "error": "not UTF-8 (byte 1 is 0xff: invalid start byte)"}
    assert records[2]["translation"] == "" and records[2]["tokens"] == []
    for record in (records[0], records[3]):
        assert record["source_tokens"] == [*record["source"], "</s>"]  # digits, then eos
        assert record["score"] is None  # greedy decoding has no beam score
        # Every link is (source digit, target word) within the sentence, one per target word.
        links = [tuple(map(int, link.split("-"))) for link in record["alignment"].split()]
        words = [t for t in record["tokens"] if t not in ("<s>", "</s>", "<pad>")]
        assert sorted(t for _, t in links) == list(range(len(words)))
        assert all(0 <= s < len(record["source"]) for s, _ in links)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--alignments", "--alignment_layer=1"], "attention layer 1 is out of range: the model"),
        (["--alignments", "--alignment_head=first"], "--alignment_head must be an index or 'mean'"),
        (["--attention=all"], "--attention needs --output_format=jsonl"),
    ],
)
def test_bad_alignment_flags_are_one_line(untrained_workdir, args, message) -> None:
    done = run_module("train.translate", f"--workdir={untrained_workdir}", *args, stdin=b"12\n")
    assert_one_line_error(done, message)


# ---------------------------------------------------------------------------------------------
# Start-up without recompiling: JAX's persistent compilation cache
# ---------------------------------------------------------------------------------------------
COUNT_CACHE_EVENTS = (
    "import collections, json, runpy, sys\n"
    "import jax.monitoring\n"
    "counts = collections.Counter()\n"
    "def listen(event, **kwargs):\n"
    "    if event.startswith('/jax/compilation_cache/cache_'):\n"
    "        counts[event.rsplit('/', 1)[1]] += 1\n"
    "jax.monitoring.register_event_listener(listen)\n"
    "sys.argv = ['translate', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('train.translate', run_name='__main__')\n"
    "finally:\n"
    "    print(json.dumps(counts), file=sys.stderr)\n"
)


def translate_counting_cache_events(*args: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", COUNT_CACHE_EVENTS, *args],
        input=b"123\n45\n",
        capture_output=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, stderr
    return json.loads(stderr.splitlines()[-1])


def test_a_second_translate_loads_its_programs_from_the_cache(untrained_workdir, tmp_path):
    cache = tmp_path / "cache"
    args = (f"--workdir={untrained_workdir}", f"--compilation_cache={cache}", "--beam_size=2")
    first = translate_counting_cache_events(*args)
    assert first.get("cache_misses", 0) > 0 and first.get("cache_hits", 0) == 0, first
    assert any(cache.iterdir())
    second = translate_counting_cache_events(*args)
    assert second.get("cache_hits", 0) == first["cache_misses"], (first, second)
    assert second.get("cache_misses", 0) == 0, second
    off = translate_counting_cache_events(
        f"--workdir={untrained_workdir}", "--compilation_cache=", "--beam_size=2"
    )
    assert off.get("cache_hits", 0) == off.get("cache_misses", 0) == 0, off
