"""The commands' shared entry point: `cli.run(main)` in place of `sys.exit(app.run(main))`;
and `decode_lines`, how train.translate and train.exported read their input's lines.

Every command (`python -m train`, `train.evaluate`, `train.translate`, `train.convert_marian`,
`train.export`, `train.exported`, `train.serve`)
reports a failure as ONE line on stderr, sometimes followed by one hint line, and exits with a
non-zero status:

    error: /runs/x/config.json is missing: /runs/x is not a workdir of `python -m train`
    error: no space left on device while writing /runs/x/checkpoints/4.orbax-checkpoint-tmp/...
    hint: free some space on that disk (or use another one) and run the command again

No traceback, unless the command runs with --debug: then exceptions propagate as they would
without this module (absl prints them, --pdb_post_mortem works), and so do the tracebacks that
background threads and libraries print or log.

The rules:
  * Flag errors (an unknown flag, a bad value, a missing required flag, a --config file that
    does not load, a --config.X override that names no field or has the wrong type) and
    `app.UsageError` from main (stray arguments, conflicting flags): `error: <message>` and
    `hint: pass --helpshort or --helpfull to see help on flags`; status 1 as absl's, or the
    UsageError's exitcode.
  * --help, -h (rewritten to --help), -?, --helpshort, --helpfull, --helpxml: absl's help on
    stdout, status 0 (absl exits 1 after help).
  * An exception escaping main is reported by `describe` (see there): one line; the message is
    flattened (`one_line`). Expected errors (`is_expected`: ValueError, OSError, ImportError,
    MemoryError and their subclasses, the project's own errors among them, a config field that
    does not exist, an XLA/TensorStore status of an environmental kind) print their message;
    anything else is taken for a bug: `error: <Type>: <message>` and
    `hint: this looks like a bug; run again with --debug for the traceback and report it`.
    I/O failures (a full disk, a quota, a read-only file system, a permission, a damaged
    checkpoint, device memory) are recognised anywhere in the exception's chain and named
    plainly, with a hint. Status 1.
  * KeyboardInterrupt that main does not handle: `interrupted`, status 130.
  * A broken pipe while stdout is a pipe (`python -m train.translate ... | head -1`: its reader
    went away): nothing, status 141 (128 + SIGPIPE, what a shell reports for a process that a
    broken pipe killed).
  * Otherwise main's return value is the status (None: 0), e.g. 130 after Ctrl-C was handled
    by training, 65 from train.translate when it skipped input lines.

Quiet failures: without --debug, log records that carry a traceback (orbax logs each failing
background thread's exception before re-raising it in the main thread) are written as their
message line alone, and "unraisable" exceptions (TensorStore's callbacks into an asyncio loop
that orbax already closed, "RuntimeError: Event loop is closed", dozens of them after a failed
checkpoint read) are dropped. After the error line the process ends with `os._exit`, once the
atexit handlers have run and stdout and stderr are flushed: orbax's and TensorStore's daemon
threads, still running when a command fails, would otherwise print a second wave of tracebacks
during interpreter shutdown ("ImportError: sys.meta_path is None"); none of them is ours to
stop. The commands close their own files and checkpoint managers (`with` blocks) before the
exception reaches this module, so skipping the interpreter's teardown loses nothing written.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import logging as std_logging
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from absl import app, flags, logging

STATUS_ERROR = 1
STATUS_INTERRUPTED = 130
STATUS_BROKEN_PIPE = 141

FLAGS_HINT = "pass --helpshort or --helpfull to see help on flags"
BUG_HINT = "this looks like a bug; run again with --debug for the traceback and report it"
_MAX_MESSAGE = 1000  # characters of an error line; a TensorStore spec runs to 3,000

DEBUG = flags.DEFINE_boolean(
    "debug",
    False,
    "Show the traceback of an error (and of what background threads report) instead of a "
    "one-line message.",
)

# Errors of config_flags.DEFINE_config_file: it parses the default config file and the
# --config.X overrides when the flag is defined (at import), before absl can report anything.
_definition_errors: list[tuple[str, BaseException]] = []
_config_flags: list[str] = []


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Report:
    """What the user sees: `error: {message}` and, if there is one, `hint: {hint}`."""

    message: str
    hint: str | None = None

    def lines(self) -> list[str]:
        return [f"error: {self.message}"] + ([f"hint: {self.hint}"] if self.hint else [])


def one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    """`text` as one line: its non-empty lines stripped and joined with "; " (with " " after a
    line that ends in ":", which introduces what follows, e.g. a config diff), an embedded
    traceback replaced by its last line, cut to `limit` characters."""
    lines = [line.strip() for line in text.strip().splitlines()]
    lines = [line for line in lines if line]
    if "Traceback (most recent call last):" in lines:
        start = lines.index("Traceback (most recent call last):")
        lines = lines[:start] + lines[-1:]
    flat = ""
    for line in lines:
        flat += line if not flat else (" " if flat.endswith(":") else "; ") + line
    if len(flat) > limit:
        flat = flat[: limit - 1].rstrip() + "…"
    return flat


def _text(error: BaseException) -> str:
    """The message of an exception as its author wrote it: an OSError as "path: strerror", a
    KeyError's key unquoted, an AttributeError wrapping a KeyError (ml_collections) unwrapped."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        target = f"{error.filename} -> {error.filename2}" if error.filename2 else error.filename
        return f"{target}: {error.strerror}"
    if isinstance(error, OSError) and error.strerror and len(error.args) == 2:
        return error.strerror  # OSError(errno.ENOSPC, "No space left on device")
    value: object = error
    while isinstance(value, (KeyError, AttributeError)) and len(value.args) == 1:
        value = value.args[0]  # str(KeyError("x")) is "'x'", with quotes
    return str(value)


def _chain(error: BaseException, *, implicit: bool) -> Iterator[BaseException]:
    """`error`, then what it was raised from (`raise ... from cause`), outermost first; with
    `implicit`, also what it was raised while handling (`__context__`, unless suppressed)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif implicit and not current.__suppress_context__:
            current = current.__context__
        else:
            current = None


def _raised_in(error: BaseException, package: str) -> bool:
    """Whether the innermost frame of `error`'s traceback is in module `package` or below."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    module = traceback.tb_frame.f_globals.get("__name__", "")
    return module == package or module.startswith(package + ".")


# Status codes (absl::Status, as XLA and TensorStore spell them at the start of a message) that
# say something about the machine or the files, not about the program.
_ENVIRONMENT_STATUS = re.compile(
    r"\b(RESOURCE_EXHAUSTED|DATA_LOSS|OUT_OF_RANGE|UNAVAILABLE|DEADLINE_EXCEEDED|"
    r"PERMISSION_DENIED|NOT_FOUND):"
)


def _is_config_error(error: BaseException) -> bool:
    """A config field that does not exist or a value of the wrong type: ml_collections raises
    KeyError, AttributeError or TypeError from its own code."""
    return isinstance(error, (KeyError, AttributeError, TypeError)) and _raised_in(
        error, "ml_collections"
    )


def is_expected(error: BaseException) -> bool:
    """Whether `error` reports a problem of the input, the files, the machine or the setup
    rather than of the program, decided by its class: ValueError (bad config, bad data, the
    project's DistributedSetupError and CheckpointMismatchError), OSError (files, the network),
    ImportError (a missing optional package), MemoryError, absl's flag and usage errors; a
    KeyError/AttributeError/TypeError raised inside ml_collections (a config field); a
    RuntimeError whose message starts with an environmental XLA/TensorStore status code
    (RESOURCE_EXHAUSTED, DATA_LOSS, ...). Anything else (TypeError, IndexError, an assertion,
    ...) is taken for a bug."""
    if isinstance(error, (ValueError, OSError, ImportError, MemoryError, flags.Error, app.Error)):
        return True
    if _is_config_error(error):
        return True
    return isinstance(error, RuntimeError) and bool(_ENVIRONMENT_STATUS.search(str(error)))


# ---------------------------------------------------------------------------------------------
# I/O failures
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class IOFailure:
    """An I/O failure found in an exception's chain: `kind` names it plainly ("no space left on
    device", ...); `path` is the file it names, when known; `reason` the original message (one
    line) where it says more than `kind`."""

    kind: str
    path: str | None
    reason: str | None
    hint: str


_DISK_FULL_HINT = "free some space on that disk (or use another one) and run the command again"
_QUOTA_HINT = "your disk quota is used up: free some space (or use another disk) and run again"
_READ_ONLY_HINT = "that file system is mounted read-only: choose a writable --workdir (or --output)"
_PERMISSION_HINT = "check that path's permissions, or choose another --workdir (or --output)"
_DAMAGED_HINT = (
    "the checkpoint was cut short (a full disk, an interrupted copy?): training and the "
    "latest-checkpoint default of evaluate and translate fall back to the newest readable one "
    "by themselves; with --step or --average_last, choose other steps"
)
_DEVICE_MEMORY_HINT = (
    "use smaller batches (--config.batch_size or --config.batch_tokens, or more "
    "--config.micro_batches; --batch_size for train.evaluate and train.translate) or a "
    "smaller model"
)

# (errno, the kind's words, what the message says, "while writing"?, hint)
_IO_KINDS = [
    (errno.ENOSPC, "no space left on device", "No space left on device", True, _DISK_FULL_HINT),
    (errno.EDQUOT, "disk quota exceeded", "Disk quota exceeded", True, _QUOTA_HINT),
    (errno.EROFS, "read-only file system", "Read-only file system", True, _READ_ONLY_HINT),
    (errno.EACCES, "permission denied", "Permission denied", False, _PERMISSION_HINT),
    (errno.EPERM, "operation not permitted", "Operation not permitted", False, _PERMISSION_HINT),
]
# TensorStore names the file as `local file "PATH"`; its OS errors end in [os_error_code='28'].
_QUOTED_PATH = re.compile(r"""(?:local file|Failed writing:|Failed reading:)\s*"([^"]+)\"""")
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def _short_reason(text: str) -> str:
    """A TensorStore/XLA message cut to its status code and its last clause (the paths before
    it are in the report already): 'RESOURCE_EXHAUSTED: Error writing local file "...":
    Failed writing: "...": Failed to write 12 bytes to file 15: No space left on device' ->
    'RESOURCE_EXHAUSTED: Failed to write 12 bytes to file 15: No space left on device'."""
    text = re.split(r" \[(?:tensorstore_spec|source locations)", one_line(text, 10_000))[0]
    status = _ENVIRONMENT_STATUS.match(text)
    if status and '": ' in text:
        text = f"{status.group(1)}: {text.rsplit(chr(34) + ': ', 1)[1]}"
    return one_line(text, 200)


def _path_in(error: BaseException) -> str | None:
    if isinstance(error, OSError) and error.filename is not None:
        return os.fsdecode(error.filename)
    paths = _QUOTED_PATH.findall(str(error))
    return paths[-1] if paths else None  # the innermost: the file itself, not its database


def io_failure(error: BaseException) -> IOFailure | None:
    """The I/O failure behind `error`, if any exception in its chain (causes and contexts) is
    one: an OSError with errno ENOSPC, EDQUOT, EROFS, EACCES or EPERM, or any exception whose
    text says so (orbax and TensorStore wrap OS errors in ValueError or RuntimeError, e.g.
    "RESOURCE_EXHAUSTED: Error writing local file ...: No space left on device
    [os_error_code='28']"); a TensorStore read of a damaged checkpoint (DATA_LOSS, OUT_OF_RANGE
    in an OCDBT database); an XLA allocation that does not fit the device (RESOURCE_EXHAUSTED:
    Out of memory)."""
    chain = list(_chain(error, implicit=True))
    for number, kind, words, writing, hint in _IO_KINDS:
        for each in chain:
            text = str(each)
            codes = {int(code) for code in _OS_ERROR_CODE.findall(text)}
            if (
                (isinstance(each, OSError) and each.errno == number)
                or number in codes
                or words.lower() in text.lower()
            ):
                path = next((p for p in map(_path_in, chain) if p), None)
                if path and writing:
                    kind = f"{kind} while writing {path}"
                elif path:
                    kind = f"{kind}: {path}"
                plain = isinstance(each, OSError) and len(each.args) <= 2
                return IOFailure(kind, path, None if plain else _short_reason(text), hint)
    for each in chain:
        text = str(each)
        if re.search(r"\b(DATA_LOSS|OUT_OF_RANGE):", text) and "OCDBT" in text:
            if " cannot be read (" in str(error):  # train.checkpoints named the step already
                return IOFailure(one_line(str(error)), None, None, _DAMAGED_HINT)
            path = _path_in(each)
            where = f" {path}" if path else ""
            return IOFailure(
                f"the checkpoint{where} is damaged", path, _short_reason(text), _DAMAGED_HINT
            )
        if "RESOURCE_EXHAUSTED:" in text and "memory" in text.lower():
            return IOFailure(
                "out of memory on the device", None, _short_reason(text), _DEVICE_MEMORY_HINT
            )
    return None


def describe(error: BaseException) -> Report:
    """The one-line report of an exception that escaped a command's main (the module doc's
    rules): an I/O failure in its chain is named first; else the outermost expected exception
    of its chain of explicit causes (orbax wraps a TensorStore ValueError in a bare Exception)
    gives the message; else it is a bug and its type is named."""
    if isinstance(error, MemoryError):
        return Report("out of memory (host RAM)", "use smaller batches or a smaller model")
    failure = io_failure(error)
    if failure is not None:
        message = failure.kind + (f" ({failure.reason})" if failure.reason else "")
        return Report(one_line(message), failure.hint)
    for each in _chain(error, implicit=False):
        if is_expected(each):
            message = one_line(_text(each)) or type(each).__name__
            if isinstance(each, (KeyError, AttributeError)) and _is_config_error(each):
                message = f"the config has no field {message}"  # ml_collections: "'name'"
            return Report(message)
    message = one_line(_text(error))
    return Report(
        f"{type(error).__name__}: {message}" if message else type(error).__name__, BUG_HINT
    )


def _flush(stream: Any) -> None:
    with contextlib.suppress(OSError, ValueError):  # closed, or a broken pipe
        stream.flush()


def _print(lines: list[str]) -> None:
    _flush(sys.stdout)  # what the command printed comes first
    sys.stderr.write("".join(f"{line}\n" for line in lines))
    _flush(sys.stderr)


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------
def define_config_file(name: str, default: str, help_string: str, **kwargs: Any) -> Any:
    """`ml_collections.config_flags.DEFINE_config_file`, whose errors `run` reports as a flag
    error: without --config=FILE on the command line, ml_collections loads the default file and
    applies the --config.X overrides right here, at import, where an unknown field would end
    the import with a traceback. Returns the flag holder (None after such an error: `run` then
    reports it and never calls main)."""
    from ml_collections import config_flags

    _config_flags.append(name)
    try:
        return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
    except Exception as error:  # reported by run(), after --debug is known
        _definition_errors.append((name, error))
        return None


def _modules_of(error: BaseException) -> set[str]:
    """The modules of the frames of `error`'s traceback."""
    modules, traceback = set(), error.__traceback__
    while traceback is not None:
        modules.add(traceback.tb_frame.f_globals.get("__name__", ""))
        traceback = traceback.tb_next
    return modules


def _config_argument(name: str, argv: list[str]) -> str:
    """ "--config=FILE" as given in `argv`, or "--config" (the default file)."""
    for position, arg in enumerate(argv):
        found = re.match(rf"--?{re.escape(name)}=(.*)", arg)
        if found:
            return f"--{name}={found.group(1)}"
        if arg in (f"-{name}", f"--{name}") and position + 1 < len(argv):
            return f"--{name}={argv[position + 1]}"
    return f"--{name}"


def _config_flag_problem(name: str, error: BaseException, argv: list[str]) -> str:
    """The message of config flag `name` that failed to load its file or to apply an override:
    "--config.batch_sise=3: the config has no field 'batch_sise'; Did you mean ...",
    "cannot load --config=FILE: [Errno 2] No such file or directory: 'FILE'",
    "cannot load --config=FILE: SyntaxError: invalid syntax (FILE, line 1)"."""
    detail = one_line(_text(error))
    if isinstance(error, (KeyError, AttributeError)) and _is_config_error(error):
        if "ml_collections.config_flags.config_path" in _modules_of(error):  # an override's
            field = detail.split(";")[0].strip("'\"")
            pattern = rf"--?(no)?{re.escape(name)}\.([\w.]*\.)?{re.escape(field)}(=|$)"
            given = [arg for arg in argv if re.match(pattern, arg)]
            override = given[-1] if given else f"--{name}.{field}"
            return f"{override}: the config has no field {detail}"
        detail = f"the config has no field {detail}"  # the config file's own code reads one
    elif str(error).startswith("Failed loading config file"):
        detail = one_line(str(error).strip().splitlines()[-1])  # the attempt's OS error
    elif not isinstance(error, (OSError, ValueError, flags.Error)):
        detail = f"{type(error).__name__}: {detail}"  # a Python error of the config file
    return f"cannot load {_config_argument(name, argv)}: {detail}"


def _debug_requested(argv: list[str]) -> bool:
    """--debug, read from `argv` alone (for errors found before absl parses the flags)."""
    probe = flags.FlagValues()
    flags.DEFINE_boolean("debug", False, "", flag_values=probe)
    try:
        probe(argv, known_only=True)
    except flags.Error:
        return False
    return probe.debug


def _flag_error(message: str) -> NoReturn:
    _print(Report(message, FLAGS_HINT).lines())
    sys.exit(STATUS_ERROR)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flags parser, with one-line errors, help that exits 0, and -h meaning --help."""
    if _definition_errors:
        name, error = _definition_errors[0]
        if _debug_requested(argv):
            raise error
        _flag_error(_config_flag_problem(name, error, argv))
    if "-h" in argv[1:] and "h" not in flags.FLAGS:
        stop = argv.index("--") if "--" in argv else len(argv)
        argv = [("--help" if arg == "-h" and i < stop else arg) for i, arg in enumerate(argv)]
    try:
        remaining = flags.FLAGS(argv)
    except SystemExit as exit_:
        # absl's help flags print the help, then exit 1: asking for help is not an error.
        raise SystemExit(0 if exit_.code == 1 else exit_.code) from None
    except flags.Error as error:
        message = str(error)
        named = [n for n in _config_flags if message.startswith(f"flag --{n}=")]
        if named and "Error whilst parsing config file" in message:  # ValueError or TypeError
            last = one_line(message.strip().splitlines()[-1])  # the traceback's last line
            _flag_error(f"cannot load {_config_argument(named[0], argv)}: {last}")
        _flag_error(one_line(message))
    except Exception as error:  # a --config file that raises on import (SyntaxError, ...)
        if _debug_requested(argv):
            raise
        # Only config flags parse with code that raises other than flags.Error.
        named = [n for n in _config_flags if any(re.match(rf"--?{n}(=|$)", a) for a in argv)]
        if not named:
            _flag_error(describe(error).message)
        _flag_error(_config_flag_problem(named[0], error, argv))
    # ml_collections defers a config file that cannot be read until its first use.
    for name in _config_flags:
        try:
            flags.FLAGS[name].value.get("")
        except OSError as error:
            if flags.FLAGS.debug:
                raise
            cause = error.__cause__ or error
            _flag_error(_config_flag_problem(name, cause, argv))
        except Exception:
            pass  # get() of an object that is not a ConfigDict: its command will see
    return remaining


# ---------------------------------------------------------------------------------------------
# Quiet failures (without --debug)
# ---------------------------------------------------------------------------------------------
class _OneLineRecords(std_logging.Filter):
    """Writes a log record that carries a traceback as its message line alone."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.exc_info or record.exc_text or record.stack_info:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def _quiet_thread_failure(hook_args: Any) -> None:
    if issubclass(hook_args.exc_type, SystemExit):
        return
    thread = hook_args.thread.name if hook_args.thread is not None else "a thread"
    text = one_line(str(hook_args.exc_value), 300)
    sys.stderr.write(f"warning: {thread} stopped: {hook_args.exc_type.__name__}: {text}\n")


def _install_quiet_hooks() -> None:
    logging.get_absl_handler().addFilter(_OneLineRecords())
    sys.unraisablehook = lambda unraisable: None
    threading.excepthook = _quiet_thread_failure


def _end(status: int) -> NoReturn:
    """Exit with `status` after an error was reported, without the interpreter's teardown (see
    the module doc): the atexit handlers run first, as on a normal exit."""
    try:
        atexit._run_exitfuncs()
    finally:
        _flush(sys.stdout)
        _flush(sys.stderr)
        os._exit(status)


def _stdout_is_a_pipe() -> bool:
    """Whether stdout is a pipe: a broken pipe there means its reader went away (`| head`)."""
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    except (OSError, ValueError):
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------
def _guarded(main: Callable[[list[str]], int | None]) -> Callable[[list[str]], int | None]:
    def guarded_main(argv: list[str]) -> int | None:
        debug = DEBUG.value
        if not debug:
            _install_quiet_hooks()
        try:
            return main(argv)
        except app.UsageError as error:  # absl would print the whole help before it
            _print(Report(one_line(str(error)), FLAGS_HINT).lines())
            _end(error.exitcode)
        except SystemExit:
            raise
        except KeyboardInterrupt:
            if debug:
                raise
            _print(["interrupted"])
            _end(STATUS_INTERRUPTED)
        except BaseException as error:
            if isinstance(error, BrokenPipeError) and _stdout_is_a_pipe():
                _silence_stdout()
                _end(STATUS_BROKEN_PIPE)
            if debug:
                raise
            _print(describe(error).lines())
            _end(STATUS_ERROR)

    return guarded_main


def run(main: Callable[[list[str]], int | None]) -> NoReturn:
    """Run a command's `main(argv)` under absl (`app.run`) with the rules of the module doc;
    exits with main's return value (None: 0), or the status of the error."""
    try:
        app.run(_guarded(main), flags_parser=_parse_flags)
    except KeyboardInterrupt:  # while absl parsed the flags, or with --debug
        if flags.FLAGS.is_parsed() and DEBUG.value:
            raise
        _print(["interrupted"])
        sys.exit(STATUS_INTERRUPTED)
    sys.exit(0)  # app.run always exits; this is for the type checker


# ---------------------------------------------------------------------------------------------
# Input text, as train.translate and train.exported read it
# ---------------------------------------------------------------------------------------------
BYTE_ORDER_MARK = b"\xef\xbb\xbf"


def decode_lines(data: bytes) -> tuple[list[str], dict[int, str]]:
    """(lines, problems) of raw input: `data` cut at b"\\n" (the newline ending the last line
    ends it, a leading UTF-8 byte order mark is dropped), each line decoded as strict UTF-8.
    A line that does not decode is "" in `lines` and `problems` maps its index (from 0) to why:
    "not UTF-8 (byte 5 is 0xff: invalid start byte)", bytes counted from 1 within the line."""
    data = data.removeprefix(BYTE_ORDER_MARK)
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the newline that ends the last line
    lines, problems = [], {}
    for index, raw in enumerate(raw_lines):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            lines.append("")
            problems[index] = (
                f"not UTF-8 (byte {error.start + 1} is 0x{raw[error.start]:02x}: {error.reason})"
            )
    return lines, problems
