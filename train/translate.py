"""Translate text with a trained run: `python -m train.translate --workdir=DIR`.

Reads sentences, one per line, from stdin (or --input), translates them in batches of similar
length (beam search by default: beam 4, length penalty 0.6, as in the paper) and writes one
translation per line, in the input's order, to stdout (or --output). Empty input lines give
empty output lines. Options as for `python -m train.evaluate`: --decoding greedy|beam|sample,
--beam_size, --length_penalty, --temperature, --top_k, --top_p, --seed, --average_last, --step.

    echo "A man is riding a bike." | python -m train.translate --workdir=runs/multi30k

The input is bytes, cut into lines at each newline (a CR before it, as in Windows files, is
whitespace, and a UTF-8 byte order mark at the start is dropped); the output is UTF-8. A line
that cannot be translated is reported on stderr and skipped: it gets an EMPTY output line, so
that output line i still belongs to input line i, and every other line is translated:

    line 2: not UTF-8 (byte 1 is 0xff: invalid start byte); skipped
    line 4: contains the control character U+0000 at character 1 (binary input?); skipped
    line 7: 140 tokens long (with eos), longer than the model's max_len=128; skipped
    line 9: '12a' is not a number written in digits; skipped   (the dataset's own check)
    3 of 12 lines skipped

A line is skipped when it is not UTF-8, holds a control character other than whitespace (NUL,
ESC, ...: binary data, which SentencePiece would take byte by byte), is longer than the model's
max_len in tokens, or fails the check of the run's dataset (`Dataset.input_problem`).
Exit status: 0 when every line was translated, 65 (EX_DATAERR) when lines were skipped (the
output is complete otherwise), 1 for an error (bad workdir, unreadable input, ...: no output).
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from train import cli, inference_flags

STATUS_LINES_SKIPPED = 65  # sysexits' EX_DATAERR: the input data was incorrect

_INPUT = flags.DEFINE_string("input", "-", "Input file, one sentence per line ('-': stdin).")
_OUTPUT = flags.DEFINE_string("output", "-", "Output file ('-': stdout).")
flags.adopt_module_key_flags(inference_flags)  # list them in --help
flags.adopt_module_key_flags(cli)  # --debug

_BYTE_ORDER_MARK = b"\xef\xbb\xbf"


def decode_lines(data: bytes) -> tuple[list[str], dict[int, str]]:
    """(lines, problems) of raw input: `data` cut at b"\\n" (the newline ending the last line
    ends it, a leading UTF-8 byte order mark is dropped), each line decoded as strict UTF-8.
    A line that does not decode is "" in `lines` and `problems` maps its index (from 0) to why:
    "not UTF-8 (byte 5 is 0xff: invalid start byte)", bytes counted from 1 within the line."""
    data = data.removeprefix(_BYTE_ORDER_MARK)
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


def _character_problem(line: str) -> str | None:
    for position, character in enumerate(line, start=1):
        category = unicodedata.category(character)
        if category == "Cc" and not character.isspace():
            return (
                f"contains the control character U+{ord(character):04X} at character "
                f"{position} (binary input?)"
            )
        if category == "Cs":  # only from Python callers: decoding bytes never yields one
            return f"contains the lone surrogate U+{ord(character):04X} at character {position}"
    return None


def line_problems(
    lines: Sequence[str],
    vocabulary,
    *,
    limit: int,
    input_problem: Callable[[str], str | None] | None = None,
) -> dict[int, str]:
    """{index (from 0): why line `index` cannot be translated} for the lines that cannot: a
    control character other than whitespace, `input_problem`'s verdict (the dataset's check,
    given the whitespace-normalised line), or more than `limit` tokens with eos. Empty lines
    (after normalisation) are fine: they translate to ""."""
    from train.data.parallel_text import normalize_whitespace

    problems = {}
    for index, line in enumerate(lines):
        problem = _character_problem(line)
        text = normalize_whitespace(line)
        if problem is None and text and input_problem is not None:
            problem = input_problem(text)
        if problem is None and text:
            length = len(vocabulary.encode(text)) + 1
            if length > limit:
                problem = (
                    f"{length} tokens long (with eos), longer than the model's max_len={limit}"
                )
        if problem is not None:
            problems[index] = problem
    return problems


def run_line_problems(run, vocabulary, lines: Sequence[str]) -> dict[int, str]:
    """`line_problems` with the run's limits: the model's max_len and its dataset's check."""
    from train.data.sources import dataset_of

    return line_problems(
        lines,
        vocabulary,
        limit=run.model_config.max_len,
        input_problem=dataset_of(run.config).input_problem,
    )


def translate_lines(run, vocabulary, lines: list[str], options, batch_size: int) -> list[str]:
    """Translations of `lines` (whitespace-normalised first), in order; "" for empty lines.

    Raises:
      ValueError: naming the first line that `run_line_problems` refuses (main skips those
        lines beforehand).
    """
    from train.data.parallel_text import normalize_whitespace
    from train.data.run_data import sentence_batches
    from train.evaluation import translate_batches

    problems = run_line_problems(run, vocabulary, lines)
    if problems:
        index = min(problems)
        raise ValueError(f"line {index + 1}: {problems[index]}")
    texts = [normalize_whitespace(line) for line in lines]
    batches = sentence_batches(
        texts, vocabulary, batch_size=batch_size, limit=run.model_config.max_len
    )
    outputs = translate_batches(run.model_config, run.params, batches, vocabulary, options)
    return [outputs.get(index, "") for index in range(len(lines))]


def _write_all(stream, data: bytes) -> None:
    """Write all of `data`: a buffered write that fails midway (a full disk, a closed pipe)
    returns the bytes written so far instead of raising; the next write raises."""
    view = memoryview(data)
    while view:
        view = view[stream.write(view) :]


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from train.workdir import load_run

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if _INPUT.value == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(_INPUT.value, "rb") as file:
            data = file.read()
    lines, problems = decode_lines(data)  # before loading the run: reading is quick
    run = load_run(
        inference_flags.WORKDIR.value,
        step=inference_flags.STEP.value,
        average_last=inference_flags.AVERAGE_LAST.value,
    )
    vocabulary = run.workdir.vocabulary(run.config)
    problems.update(run_line_problems(run, vocabulary, lines))
    for index in sorted(problems):
        print(f"line {index + 1}: {problems[index]}; skipped", file=sys.stderr)
    valid = ["" if index in problems else line for index, line in enumerate(lines)]
    translations = translate_lines(
        run, vocabulary, valid, inference_flags.options(), inference_flags.BATCH_SIZE.value
    )
    text = "".join(f"{line}\n" for line in translations).encode("utf-8")
    if _OUTPUT.value == "-":
        _write_all(sys.stdout.buffer, text)
        sys.stdout.buffer.flush()
    else:
        with open(_OUTPUT.value, "wb") as file:
            _write_all(file, text)
    if problems:
        print(f"{len(problems)} of {len(lines)} lines skipped", file=sys.stderr)
        return STATUS_LINES_SKIPPED
    return 0


if __name__ == "__main__":
    cli.run(main)
