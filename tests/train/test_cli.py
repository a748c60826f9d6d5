"""train.cli: one-line errors, hints and exit statuses of the commands' shared entry point.

The classification (`describe`, `io_failure`, `one_line`) is tested on synthetic exceptions; a
full disk or a read-only file system is an OSError raised in-process (as root, permissions
cannot make one). The entry point itself runs a tiny absl command in a subprocess, as a user
would: it starts in a fraction of a second (no JAX).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_collections
import pytest

from train import cli

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------
def test_one_line_joins_lines_and_keeps_a_traceback_s_last_line() -> None:
    diff = "the checkpoint differs from this run:\n  d_model: 32 vs 64\n  num_heads: 2 vs 4\n"
    assert (
        cli.one_line(diff)
        == "the checkpoint differs from this run: d_model: 32 vs 64; num_heads: 2 vs 4"
    )
    embedded = (
        "Error whilst parsing config file:\n\nTraceback (most recent call last):\n"
        '  File "c.py", line 2, in get_config\nValueError: boom'
    )
    assert cli.one_line(embedded) == "Error whilst parsing config file: ValueError: boom"
    cut = cli.one_line("x" * 50, limit=20)
    assert len(cut) == 20 and cut.endswith("…")


def _raised(error: BaseException, cause: BaseException | None = None) -> BaseException:
    """`error` as raised (with a traceback), from `cause` when given."""
    try:
        if cause is None:
            raise error
        raise error from cause
    except BaseException as raised:
        return raised


LOCK = "/w/checkpoints/2.orbax-checkpoint-tmp/params.orbax-checkpoint-tmp/_sharding.__lock"
TENSORSTORE_DISK_FULL = (
    'RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/2.orbax-checkpoint-tmp/params'
    f'.orbax-checkpoint-tmp/_sharding": Failed writing: "{LOCK}": Failed to write 5759 bytes to '
    "file 19: No space left on device [os_error_code='28']"
)


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl"),
            "no space left on device while writing /w/metrics.jsonl",
            None,
        ),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device", None),
        (
            ValueError(TENSORSTORE_DISK_FULL),
            f"no space left on device while writing {LOCK}",
            "RESOURCE_EXHAUSTED: Failed to write 5759 bytes to file 19: No space left on device "
            "[os_error_code='28']",
        ),
        (
            OSError(errno.EDQUOT, "Disk quota exceeded", "/w/config.json"),
            "disk quota exceeded while writing /w/config.json",
            None,
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/w/tokenizer.model"),
            "permission denied: /w/tokenizer.model",
            None,
        ),
        (
            RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB."),
            "out of memory on the device",
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB.",
        ),
        (
            ValueError(
                'OUT_OF_RANGE: Error reading "embedding/0.0" in OCDBT database at local file '
                '"/w/checkpoints/4/params/": Requested byte range [1, 9) is not valid for value '
                'of size 5 [tensorstore_spec=\'{"driver": "zarr"}\']'
            ),
            "the checkpoint /w/checkpoints/4/params/ is damaged",
            "OUT_OF_RANGE: Requested byte range [1, 9) is not valid for value of size 5",
        ),
    ],
)
def test_io_failures_are_named_plainly(error: BaseException, kind: str, reason: str | None) -> None:
    failure = cli.io_failure(error)
    assert failure is not None and (failure.kind, failure.reason) == (kind, reason)
    assert failure.hint


def test_io_failures_are_found_in_the_chain() -> None:
    # orbax wraps TensorStore's error in a bare Exception (`raise Exception(...) from error`).
    wrapped = _raised(
        Exception("Encountered error while reading array index"), ValueError(TENSORSTORE_DISK_FULL)
    )
    assert cli.io_failure(wrapped).kind == f"no space left on device while writing {LOCK}"
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/w/config.json")
        except OSError:
            raise RuntimeError("saving failed")  # noqa: B904 (the context is the point)
    except RuntimeError as error:  # raised while handling the OSError: its context
        during = error
    assert cli.io_failure(during).kind == "read-only file system while writing /w/config.json"
    report = cli.describe(during)
    assert report.message == "read-only file system while writing /w/config.json"
    assert "read-only" in report.hint


@pytest.mark.parametrize(
    "error",
    [
        ValueError("config.batch_tokens must be positive"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/w/config.json"),
        RuntimeError("Event loop is closed"),
    ],
)
def test_other_errors_are_not_io_failures(error: BaseException) -> None:
    assert cli.io_failure(error) is None


# ---------------------------------------------------------------------------------------------
# Expected errors and bugs
# ---------------------------------------------------------------------------------------------
def _config_key_error() -> BaseException:
    try:
        ml_collections.ConfigDict({"batch_size": 1}).batch_sise  # noqa: B018
    except AttributeError as error:
        return error
    raise AssertionError("ConfigDict accepted an unknown field")


def test_expected_errors_print_their_message_alone() -> None:
    from train.distributed import DistributedSetupError

    cases = [
        (ValueError("the model says no:\n  a: 1\n  b: 2"), "the model says no: a: 1; b: 2"),
        (
            DistributedSetupError("--num_processes must be >= 1, got 0"),
            "--num_processes must be >= 1, got 0",
        ),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/w/x"),
            "/w/x: No such file or directory",
        ),
        (
            FileNotFoundError("/w/config.json is missing: /w is not a workdir"),
            "/w/config.json is missing: /w is not a workdir",
        ),
        (
            ImportError("--hub needs huggingface_hub (pip install huggingface_hub)"),
            "--hub needs huggingface_hub (pip install huggingface_hub)",
        ),
        (
            RuntimeError("UNAVAILABLE: the coordinator is gone"),
            "UNAVAILABLE: the coordinator is gone",
        ),
        (
            _raised(Exception("Encountered error"), ValueError("DATA_LOSS: bad bytes")),
            "DATA_LOSS: bad bytes",
        ),
    ]
    for error, message in cases:
        assert cli.describe(error) == cli.Report(message), error
    report = cli.describe(_config_key_error())
    assert report.hint is None
    assert report.message.startswith("the config has no field 'batch_sise'")
    assert 'Did you mean "batch_size"' in report.message


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (TypeError("unsupported operand type(s)"), "TypeError: unsupported operand type(s)"),
        (KeyError("params"), "KeyError: params"),  # outside ml_collections: our own dict
        (AssertionError(), "AssertionError"),
        (RuntimeError("Event loop is closed"), "RuntimeError: Event loop is closed"),
    ],
)
def test_unexpected_errors_are_called_bugs(error: BaseException, message: str) -> None:
    assert cli.describe(_raised(error)) == cli.Report(message, cli.BUG_HINT)


def test_a_bug_while_handling_an_expected_error_is_still_a_bug() -> None:
    try:
        try:
            raise ValueError("bad data")
        except ValueError:
            raise TypeError("the handler itself is broken")  # noqa: B904
    except TypeError as error:
        assert error.__context__ is not None
        report = cli.describe(error)
    assert report == cli.Report("TypeError: the handler itself is broken", cli.BUG_HINT)


# ---------------------------------------------------------------------------------------------
# The entry point, in a subprocess
# ---------------------------------------------------------------------------------------------
COMMAND = textwrap.dedent(
    '''\
    """A tiny command for the tests of train.cli."""
    import asyncio
    import atexit
    import errno
    import os
    import sys

    from absl import app, flags

    from train import cli

    MODE = flags.DEFINE_string("mode", "ok", "What main does.")
    CONFIG = cli.define_config_file(
        "config", os.path.join(os.path.dirname(__file__), "config.py"), "A config file."
    )
    flags.adopt_module_key_flags(cli)  # --debug in --help, as the commands do
    KEEP = []


    def main(argv):
        atexit.register(lambda: print("atexit ran", file=sys.stderr, flush=True))
        mode = MODE.value
        if mode == "ok":
            print(f"main ran with batch_size {CONFIG.value.batch_size}")
            return None
        if mode == "status":
            return 3
        if mode == "value":
            raise ValueError("the config says no:\\n  field a: 1\\n  field b: 2")
        if mode == "bug":
            raise TypeError("unsupported operand")
        if mode == "usage":
            raise app.UsageError("give exactly one of --a and --b")
        if mode == "interrupt":
            raise KeyboardInterrupt
        if mode == "pipe":  # more than a pipe holds: the reader goes away first
            for _ in range(100_000):
                print("y" * 99)
            return 0
        if mode == "disk_full":
            raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl")
        if mode == "noise":  # fails after a background task failed unnoticed
            loop = asyncio.new_event_loop()

            async def fail():
                raise ValueError("a task nobody waited for")

            KEEP.append(loop.create_task(fail()))  # its error is logged at interpreter exit
            loop.run_until_complete(asyncio.sleep(0.01))
            raise ValueError("the real error")
        raise AssertionError(mode)


    if __name__ == "__main__":
        cli.run(main)
    '''
)
CONFIG = textwrap.dedent(
    """\
    import ml_collections

    def get_config():
        return ml_collections.ConfigDict({"batch_size": 16, "model": {"num_heads": 4}})
    """
)


@pytest.fixture(scope="module")
def command(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("command")
    (directory / "config.py").write_text(CONFIG)
    (directory / "bad_config.py").write_text("def get_config(:\n")
    script = directory / "command.py"
    script.write_text(COMMAND)
    return script


def run_command(script: Path, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=script.parent,
    )


@pytest.mark.parametrize(
    ("mode", "status", "lines"),
    [
        ("value", 1, ["error: the config says no: field a: 1; field b: 2"]),
        ("bug", 1, ["error: TypeError: unsupported operand", f"hint: {cli.BUG_HINT}"]),
        ("usage", 1, ["error: give exactly one of --a and --b", f"hint: {cli.FLAGS_HINT}"]),
        (
            "disk_full",
            1,
            [
                "error: no space left on device while writing /runs/x/metrics.jsonl",
                "hint: free some space on that disk (or use another one) and run the command again",
            ],
        ),
        ("interrupt", 130, ["interrupted"]),
        ("status", 3, []),
        # The failed background task would log its traceback at interpreter exit (see --debug).
        ("noise", 1, ["error: the real error"]),
    ],
)
def test_errors_are_one_line_with_the_status(
    command: Path, mode: str, status: int, lines: list[str]
) -> None:
    done = run_command(command, f"--mode={mode}")
    assert done.returncode == status, done.stderr
    # The error line, then what the atexit handlers print: they still run.
    assert done.stderr.splitlines() == [*lines, "atexit ran"], done.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(command: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(command), "--mode=pipe"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout.read(10) == b"y" * 10
    process.stdout.close()  # as `| head -c 10` does
    _, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr) == (cli.STATUS_BROKEN_PIPE, b"atexit ran\n")


def test_debug_shows_the_tracebacks(command: Path) -> None:
    done = run_command(command, "--mode=value", "--debug")
    assert done.returncode == 1
    assert "Traceback (most recent call last):" in done.stderr
    assert "ValueError: the config says no:\n  field a: 1" in done.stderr
    noisy = run_command(command, "--mode=noise", "--debug")
    assert noisy.returncode == 1
    assert "Task exception was never retrieved" in noisy.stderr
    assert "ValueError: a task nobody waited for" in noisy.stderr


def test_main_s_status_is_kept(command: Path) -> None:
    done = run_command(command, "--mode=ok", "--config.batch_size=32")
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "main ran with batch_size 32\n",
        "atexit ran\n",
    )


@pytest.mark.parametrize("flag", ["--help", "-h", "--helpshort", "--helpfull"])
def test_help_exits_0(command: Path, flag: str) -> None:
    done = run_command(command, flag)
    assert done.returncode == 0, done.stderr
    assert "--mode" in done.stdout and "--[no]debug" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nonexistent=1"], "error: Unknown command line flag 'nonexistent'"),
        (["--config.batch_size=many"], "error: flag --config.batch_size=many: "),
        (
            ["--config.batch_sise=32"],
            "error: --config.batch_sise=32: the config has no field 'batch_sise'; Did you mean "
            '"batch_size" instead of "batch_sise"?',
        ),
        (
            ["--config.model.num_head=2"],
            "error: --config.model.num_head=2: the config has no field 'num_head'",
        ),
        (
            ["--config=missing.py"],
            "error: cannot load --config=missing.py: [Errno 2] No such file or directory: "
            "'missing.py'",
        ),
        (
            ["--config=bad_config.py"],
            "error: cannot load --config=bad_config.py: SyntaxError: invalid syntax",
        ),
    ],
)
def test_flag_errors_are_one_line(command: Path, args: list[str], message: str) -> None:
    done = run_command(command, *args)
    assert done.returncode == 1
    error, hint = done.stderr.splitlines()
    assert error.startswith(message), done.stderr
    assert hint == f"hint: {cli.FLAGS_HINT}"


def test_debug_shows_the_traceback_of_a_config_flag_too(command: Path) -> None:
    done = run_command(command, "--config.batch_sise=32", "--debug")
    assert done.returncode == 1
    assert "Traceback (most recent call last):" in done.stderr
