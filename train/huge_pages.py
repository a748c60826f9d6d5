"""Transparent huge pages for the commands' memory: `python -m train...` re-executes itself once,
at start-up, with glibc's tunable `glibc.malloc.hugetlb=1`.

Why: XLA:CPU allocates a step's temporaries afresh at every execution (a training step's logits
over the vocabulary and their gradient are hundreds of MB), and glibc's malloc serves every
block over 32 MiB with a fresh `mmap` and returns it with `munmap`. So at every step the kernel
faults those pages in and zeroes them one 4 KiB page at a time, which on a CPU costs a large
share of the step in system time. With the tunable, malloc asks the kernel for 2 MiB pages
(`madvise(MADV_HUGEPAGE)`): 512 times fewer faults. It changes no number, only speed. glibc
reads its tunables when a process starts, hence the re-execution; the README has the figures.

Keeping those blocks instead is not in glibc's tunables' reach: XLA allocates them on its worker
threads, whose arenas cannot grow past 64 MiB, so glibc maps them afresh whatever
`mmap_threshold` or `mmap_max` say. `arena_max=1` with `mmap_max=0` does keep them (no faults
after the first steps), but the one heap then fragments, and peak memory depends on the order in
which threads happen to allocate: it is not a default to ship (issue 17's note has the runs).

It applies when all of these hold (`huge_pages_wanted`):
  * the process was started as `python -m train` or `python -m train.<command>` (importing the
    `train` package from anywhere else, a test or a notebook, never re-executes anything);
  * Linux with glibc 2.35 or later (the first with the tunable);
  * the kernel's transparent huge pages are in `madvise` mode (with `always` every large mapping
    gets them already; with `never` there are none to ask for);
  * GLIBC_TUNABLES does not set `glibc.malloc.hugetlb` already (so it happens at most once, and
    a user's own setting wins);
  * FLAX_TRANSFORMER_HUGE_PAGES is not "0" (the opt-out).

The re-executed process is the same command: same interpreter, arguments, working directory and
process id (`os.execve`), its environment plus the tunable, which the command's own children
(data-loading workers) inherit. Nothing has been imported, read or printed by then. If the
re-execution fails the command goes on as it is.

`python -m train.huge_pages_status` says whether a command started here gets them, and why not.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

OPT_OUT = "FLAX_TRANSFORMER_HUGE_PAGES"  # "0": leave glibc's malloc as it is
TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIN_GLIBC = (2, 35)
# The interpreter's options whose value is the next argument (`python -X dev -m train`).
_OPTIONS_WITH_VALUE = ("-X", "-W", "--check-hash-based-pycs")


def started_as_command(argv: Sequence[str]) -> bool:
    """Whether `argv` (the interpreter's own, `sys.orig_argv`) runs `-m train` or
    `-m train.<module>`."""
    index = 1
    while index < len(argv):
        argument = argv[index]
        if argument == "-m":
            module = argv[index + 1] if index + 1 < len(argv) else ""
            return module == "train" or module.startswith("train.")
        if argument.startswith("-m"):
            return argument[2:] == "train" or argument[2:].startswith("train.")
        if argument in _OPTIONS_WITH_VALUE:
            index += 2
        elif argument.startswith("-") and argument not in ("-c", "-"):
            index += 1  # an interpreter option (-u, -O, -Xdev, ...)
        else:
            return False  # a script, -c or stdin: not one of the commands
    return False


def thp_mode(text: str | None) -> str | None:
    """The selected mode of the kernel's `enabled` file ("always [madvise] never" -> "madvise")."""
    if text is None:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def glibc_version(libc: tuple[str, str]) -> tuple[int, ...] | None:
    """`platform.libc_ver()` -> (2, 36), or None for another C library or an unknown version."""
    name, version = libc
    if name != "glibc":
        return None
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return None


def huge_pages_wanted(
    environ: Mapping[str, str],
    argv: Sequence[str],
    *,
    system: str,
    libc: tuple[str, str],
    thp_enabled: str | None,
) -> tuple[bool, str]:
    """(whether to re-execute with the tunable, why): the rules of the module docstring, on
    the given process facts (`sys.platform`, `platform.libc_ver()`, the text of the kernel's
    transparent-huge-page `enabled` file or None)."""
    if environ.get(OPT_OUT) == "0":
        return False, f"{OPT_OUT}=0"
    if TUNABLE in environ.get("GLIBC_TUNABLES", ""):
        return False, f"GLIBC_TUNABLES already sets {TUNABLE}: {environ['GLIBC_TUNABLES']}"
    if not started_as_command(argv):
        return False, "not started as `python -m train...`"
    if not system.startswith("linux"):
        return False, f"not Linux ({system})"
    version = glibc_version(libc)
    if version is None or version < MIN_GLIBC:
        found = " ".join(part for part in libc if part) or "unknown"
        return False, f"needs glibc >= 2.35 (this process has {found})"
    mode = thp_mode(thp_enabled)
    if mode != "madvise":
        why = "always: every large mapping gets them" if mode == "always" else f"{mode}"
        return False, f"the kernel's transparent huge pages are {why}"
    return True, f"glibc {'.'.join(map(str, version))}, transparent huge pages: madvise"


def with_tunable(tunables: str | None) -> str:
    """GLIBC_TUNABLES with `glibc.malloc.hugetlb=1` added to what it holds."""
    return ":".join(part for part in (tunables, f"{TUNABLE}=1") if part)


def without_tunable(tunables: str | None) -> str:
    """GLIBC_TUNABLES with any `glibc.malloc.hugetlb` setting taken out, the others kept."""
    return ":".join(part for part in (tunables or "").split(":") if part and TUNABLE not in part)


def _read_thp_mode_file() -> str | None:
    try:
        return THP_MODE_FILE.read_text()
    except OSError:
        return None


def decide(
    environ: Mapping[str, str] | None = None, argv: Sequence[str] | None = None
) -> tuple[bool, str]:
    """`huge_pages_wanted` for this process, or for a process started on this machine with
    the given environment and arguments."""
    return huge_pages_wanted(
        os.environ if environ is None else environ,
        getattr(sys, "orig_argv", sys.argv) if argv is None else argv,
        system=sys.platform,
        libc=platform.libc_ver(),
        thp_enabled=_read_thp_mode_file(),
    )


def available() -> tuple[bool, str]:
    """Whether the tunable gives huge pages on this machine (Linux, glibc, the kernel's mode),
    whatever this process's environment: (yes or no, why)."""
    return decide({}, [sys.executable, "-m", "train"])


def status() -> str:
    """This process's state in one line: `huge pages: on (...)` or `huge pages: off (why)`."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if f"{TUNABLE}=1" in tunables.split(":"):
        return f"huge pages: on (GLIBC_TUNABLES={tunables})"
    wanted, why = decide()
    return f"huge pages: off ({'re-executing with the tunable failed' if wanted else why})"


def reexec_if_wanted() -> None:
    """Replace this process by itself with the tunable set, where `decide` says so; else
    return. Call before anything else happens in the process."""
    wanted, _ = decide()
    if not wanted:
        return
    environ = dict(os.environ)
    environ["GLIBC_TUNABLES"] = with_tunable(environ.get("GLIBC_TUNABLES"))
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
    except OSError:
        return  # no worse off than without
