"""train.huge_pages: when `python -m train...` re-executes itself with glibc's huge-page tunable.

The rules are tested on given process facts; the re-execution itself in subprocesses, as a user
starts a command (`train.huge_pages_status`, and `python -m train --helpshort`, whose arguments
must survive it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train import huge_pages

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
LINUX = dict(system="linux", libc=("glibc", "2.36"), thp_enabled="always [madvise] never\n")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([PYTHON, "-m", "train"], True),
        ([PYTHON, "-m", "train.translate", "--workdir=x"], True),
        ([PYTHON, "-mtrain.evaluate"], True),
        ([PYTHON, "-u", "-X", "dev", "-W", "ignore", "-m", "train"], True),
        ([PYTHON, "-Xdev", "-m", "train.serve"], True),
        ([PYTHON, "-m", "trainer"], False),
        ([PYTHON, "-m", "pytest", "-m", "train"], False),
        ([PYTHON, "script.py", "-m", "train"], False),
        ([PYTHON, "-c", "import train", "-m", "train"], False),
        ([PYTHON, "-m"], False),
        ([PYTHON], False),
    ],
)
def test_only_the_commands_count_as_started_as_a_command(argv, expected) -> None:
    assert huge_pages.started_as_command(argv) is expected


def test_the_kernel_mode_and_the_glibc_version_are_read() -> None:
    assert huge_pages.thp_mode("always [madvise] never\n") == "madvise"
    assert huge_pages.thp_mode("[always] madvise never") == "always"
    assert huge_pages.thp_mode("always madvise never") is None
    assert huge_pages.thp_mode(None) is None
    assert huge_pages.glibc_version(("glibc", "2.36")) == (2, 36)
    assert huge_pages.glibc_version(("glibc", "2.35.1")) == (2, 35, 1)
    assert huge_pages.glibc_version(("", "")) is None
    assert huge_pages.glibc_version(("musl", "1.2")) is None


def test_wanted_only_where_every_rule_holds() -> None:
    command = [PYTHON, "-m", "train"]
    wanted, why = huge_pages.huge_pages_wanted({}, command, **LINUX)
    assert wanted, why
    refusals = [
        ({huge_pages.OPT_OUT: "0"}, command, LINUX, "FLAX_TRANSFORMER_HUGE_PAGES=0"),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, command, LINUX, "already sets"),
        ({}, [PYTHON, "-m", "pytest"], LINUX, "not started as"),
        ({}, command, {**LINUX, "system": "darwin"}, "not Linux"),
        ({}, command, {**LINUX, "libc": ("glibc", "2.31")}, "glibc 2.31"),
        ({}, command, {**LINUX, "libc": ("", "")}, "unknown"),
        ({}, command, {**LINUX, "thp_enabled": "[always] madvise never"}, "always"),
        ({}, command, {**LINUX, "thp_enabled": "always madvise [never]"}, "never"),
        ({}, command, {**LINUX, "thp_enabled": None}, "None"),
    ]
    for environ, argv, facts, reason in refusals:
        wanted, why = huge_pages.huge_pages_wanted(environ, argv, **facts)
        assert not wanted and reason in why, (environ, argv, facts, why)
    # Another value of the opt-out, and other tunables, change nothing.
    environ = {huge_pages.OPT_OUT: "1", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert huge_pages.huge_pages_wanted(environ, command, **LINUX)[0]


def test_the_tunable_is_added_to_those_set_and_taken_out_of_them() -> None:
    assert huge_pages.with_tunable(None) == "glibc.malloc.hugetlb=1"
    assert huge_pages.with_tunable("") == "glibc.malloc.hugetlb=1"
    assert (
        huge_pages.with_tunable("glibc.malloc.arena_max=2")
        == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    )
    assert huge_pages.without_tunable(None) == ""
    assert huge_pages.without_tunable("glibc.malloc.hugetlb=1") == ""
    assert (
        huge_pages.without_tunable("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2")
        == "glibc.malloc.arena_max=2"
    )


def _run(args: list[str], **environ: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.OPT_OUT)}
    return subprocess.run(
        [PYTHON, *args],
        cwd=ROOT,
        env={**env, **environ},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_command_reports_what_the_rules_say_for_this_machine() -> None:
    wanted, why = huge_pages.available()
    result = _run(["-m", "train.huge_pages_status"])
    assert result.returncode == 0, result.stderr
    expected = "huge pages: on (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)" if wanted else why
    assert expected in result.stdout, (result.stdout, result.stderr)
    assert result.stderr == ""

    opted_out = _run(["-m", "train.huge_pages_status"], FLAX_TRANSFORMER_HUGE_PAGES="0")
    assert opted_out.stdout == "huge pages: off (FLAX_TRANSFORMER_HUGE_PAGES=0)\n"
    kept = _run(["-m", "train.huge_pages_status"], GLIBC_TUNABLES="glibc.malloc.arena_max=2")
    if wanted:
        assert "GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1" in kept.stdout


def test_re_executing_keeps_the_command_s_arguments() -> None:
    if not huge_pages.available()[0]:
        pytest.skip(f"no re-execution on this machine: {huge_pages.available()[1]}")
    # Without its arguments, `python -m train` would fail for want of --workdir.
    result = _run(["-m", "train", "--helpshort"])
    assert result.returncode == 0, result.stderr
    assert "--workdir" in result.stdout


def test_importing_the_package_elsewhere_re_executes_nothing() -> None:
    probe = "import os, train; print(os.getpid(), os.environ.get('GLIBC_TUNABLES'))"
    result = _run(["-c", f"import os; print(os.getpid()); {probe}"])
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.split("\n")[:2]
    assert after == f"{before} None"
