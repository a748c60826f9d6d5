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

Alignments and attention. `--alignments` adds hard word alignments in the Pharaoh format
("source-target" word indices from 0, as fast_align, fairseq's --print-alignment and Marian's
--alignment write them) after " ||| " on each line:

    ein Mann fährt Fahrrad . ||| 0-0 1-1 3-2 3-3 4-4

Each target word is linked to the source word it attends to most (`flax_transformer.alignment`)
in the decoder's encoder-decoder attention with which it was chosen: by default the last
decoder layer's, averaged over the heads: on the number-words task, whose alignment is known,
it aligns far better than the first layer (the README has the figures); Garg et al. (2019)
found the penultimate layer best in 6-layer translation models (--alignment_layer=-2).
--alignment_layer and --alignment_head choose another (an index, negative from the last, or
"mean").
--alignment_units=piece links tokens instead of words (words: SentencePiece pieces merged at
"▁"; the number-words task's tokens are words). eos and padding are never linked.

`--output_format=jsonl` writes one JSON object per input line instead: {"line", "source",
"translation", "source_tokens", "tokens", "score" (beam search's, else null), "alignment" (with
--alignments), "attention" (with --attention=selected or all: {"layers", "heads", "weights"
[layers][heads][tokens][source_tokens]}, rows and columns those of "tokens" and
"source_tokens", eos included)}. A skipped line gives {"line", "error"}.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags, logging

from flax_transformer import alignment, checks
from flax_transformer.decoding import AttentionSelection
from train import alignment_flags, cli, compilation_cache, inference_flags
from train.alignment_flags import parse_index_or_mean
from train.data.vocabulary import ALIGNMENT_UNITS, alignment_units, output_ids

STATUS_LINES_SKIPPED = 65  # sysexits' EX_DATAERR: the input data was incorrect

_INPUT = flags.DEFINE_string("input", "-", "Input file, one sentence per line ('-': stdin).")
_OUTPUT = flags.DEFINE_string("output", "-", "Output file ('-': stdout).")
_OUTPUT_FORMAT = flags.DEFINE_enum(
    "output_format", "text", ["text", "jsonl"], "One translation per line, or one JSON object."
)
_ATTENTION = flags.DEFINE_enum(
    "attention",
    "none",
    ["none", "selected", "all"],
    "With --output_format=jsonl: add the cross-attention matrix of the alignment layer and "
    "head ('selected') or of every layer and head ('all').",
)
flags.adopt_module_key_flags(inference_flags)  # list them in --help
flags.adopt_module_key_flags(alignment_flags)  # --alignments, --alignment_layer, ...
flags.adopt_module_key_flags(compilation_cache)  # --compilation_cache
flags.adopt_module_key_flags(cli)  # --debug


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


@dataclasses.dataclass(frozen=True)
class Translation:
    """One line's translation.

    source_ids  the source token ids the model read (eos included)
    ids         the output ids (eos included when the model wrote it)
    score       beam search's score (sum log p / length penalty); None for greedy and sampling
    attention   float32 [len(ids), layers', heads', len(source_ids)]: the cross-attention that
                chose each output token, or None when not asked for
    """

    text: str
    source_ids: list[int]
    ids: list[int]
    score: float | None = None
    attention: np.ndarray | None = None


def translate_lines_in_detail(
    run,
    vocabulary,
    lines: list[str],
    options,
    batch_size: int,
    *,
    attention: AttentionSelection | None = None,
    first_batch_index: int = 0,
) -> list[Translation]:
    """`translate_lines` with each line's tokens, score and (with `attention`) cross-attention.

    `first_batch_index`: the batch index (which varies the sampling key) of the first batch: a
    caller that translates its lines in parts gives each part the number of batches before it,
    so that no two parts sample with the same key.

    Raises:
      ValueError: naming the first line that `run_line_problems` refuses.
    """
    from train.data.parallel_text import normalize_whitespace
    from train.data.run_data import sentence_batches
    from train.evaluation import decode_batch

    problems = run_line_problems(run, vocabulary, lines)
    if problems:
        index = min(problems)
        raise ValueError(f"line {index + 1}: {problems[index]}")
    texts = [normalize_whitespace(line) for line in lines]
    batches = sentence_batches(
        texts, vocabulary, batch_size=batch_size, limit=run.model_config.max_len
    )
    translations = {}
    for batch_index, batch in enumerate(batches):
        decoded = decode_batch(
            run.model_config,
            run.params,
            batch["source"],
            bos_id=vocabulary.bos_id,
            eos_id=vocabulary.eos_id,
            options=options,
            batch_index=first_batch_index + batch_index,
            attention=attention,
        )
        for row, index in enumerate(batch["example_index"]):
            if index < 0:
                continue
            source_ids = [int(t) for t in batch["source"][row] if t != vocabulary.pad_id]
            ids = output_ids(decoded.tokens[row], vocabulary.eos_id, vocabulary.pad_id)
            weights = None
            if decoded.attention is not None:
                weights = decoded.attention[row, : len(ids), ..., : len(source_ids)]
            translations[int(index)] = Translation(
                text=vocabulary.decode(ids),
                source_ids=source_ids,
                ids=ids,
                score=None if decoded.scores is None else float(decoded.scores[row]),
                attention=weights,
            )
    empty = Translation(text="", source_ids=[], ids=[])
    return [translations.get(index, empty) for index in range(len(lines))]


def translate_lines(run, vocabulary, lines: list[str], options, batch_size: int) -> list[str]:
    """Translations of `lines` (whitespace-normalised first), in order; "" for empty lines.

    Raises:
      ValueError: naming the first line that `run_line_problems` refuses (main skips those
        lines beforehand).
    """
    translations = translate_lines_in_detail(run, vocabulary, lines, options, batch_size)
    return [translation.text for translation in translations]


# ---------------------------------------------------------------------------------------------
# Alignments and the output formats
# ---------------------------------------------------------------------------------------------
ATTENTION_OUTPUTS = ("none", "selected", "all")


@dataclasses.dataclass(frozen=True)
class AlignmentOptions:
    """What to align and which attention to write (see the module docstring).

    layer: a decoder layer index (negative from the last) or "mean"; head: an index or "mean";
    units: "word" or "piece"; attention: the matrix a JSON line carries, "none", "selected"
    (the layer and head that align) or "all".
    """

    layer: int | str = -1
    head: int | str = "mean"
    units: str = "word"
    attention: str = "none"

    def __post_init__(self) -> None:
        for name in ("layer", "head"):
            value = getattr(self, name)
            if not (checks.is_int(value) or value == "mean"):
                raise ValueError(f"alignment {name} must be an index or 'mean', got {value!r}")
        if self.units not in ALIGNMENT_UNITS:
            raise ValueError(
                f"alignment units must be one of {list(ALIGNMENT_UNITS)}, got {self.units!r}"
            )
        if self.attention not in ATTENTION_OUTPUTS:
            raise ValueError(
                f"attention must be one of {list(ATTENTION_OUTPUTS)}, got {self.attention!r}"
            )

    def selection(self, config) -> AttentionSelection:
        """The attention that aligns, checked against the model."""
        return AttentionSelection(layer=self.layer, head=self.head).resolved(config)

    def decoded_selection(self, config) -> AttentionSelection:
        """The attention to decode with: everything for attention="all", else the aligning."""
        if self.attention == "all":
            return AttentionSelection(layer="all", head="all")
        return self.selection(config)


def alignment_links(
    translation: Translation, vocabulary, config, options: AlignmentOptions
) -> list[tuple[int, int]]:
    """The translation's hard alignment (source, target) in `options.units` (it must have
    been decoded with `options.decoded_selection`)."""
    if not translation.ids:
        return []
    weights = np.asarray(translation.attention)
    if options.attention == "all":
        weights = np.asarray(options.selection(config).select(weights))
    weights = weights[:, 0, 0, :]  # one layer (or their mean), one head (or their mean)
    source = alignment_units(vocabulary, translation.source_ids, options.units)
    target = alignment_units(vocabulary, translation.ids, options.units)
    return alignment.hard_alignment(weights, source, target)


def text_line(translation: Translation, links: list[tuple[int, int]] | None) -> str:
    """The text output format: the translation, then " ||| " and the links (Marian's layout)."""
    if links is None:
        return translation.text
    return f"{translation.text} ||| {alignment.pharaoh(links)}"


def json_line(
    number: int,
    source: str,
    translation: Translation,
    vocabulary,
    config,
    links: list[tuple[int, int]] | None,
    options: AlignmentOptions | None,
) -> dict[str, Any]:
    """The JSON object of one translated line (see the module docstring)."""
    record: dict[str, Any] = {
        "line": number,
        "source": source,
        "translation": translation.text,
        "source_tokens": vocabulary.pieces(translation.source_ids),
        "tokens": vocabulary.pieces(translation.ids),
        "score": translation.score,
    }
    if links is not None:
        record["alignment"] = alignment.pharaoh(links)
    if options is not None and options.attention != "none" and translation.ids:
        weights = np.asarray(translation.attention)
        selection = AttentionSelection(layer="all", head="all")
        if options.attention == "selected":
            selection = options.selection(config)
        layers = _selected_indices(selection.layer, config.num_decoder_layers)
        heads = _selected_indices(selection.head, config.num_heads)
        record["attention"] = {
            "layers": layers,
            "heads": heads,
            # [tokens, layers, heads, source] -> [layers][heads][tokens][source]
            "weights": np.round(weights.transpose(1, 2, 0, 3), 6).tolist(),
        }
    return record


def _selected_indices(choice: int | str, size: int) -> list[int] | str:
    if choice == "all":
        return list(range(size))
    return "mean" if choice == "mean" else [int(choice)]


def _write_all(stream, data: bytes) -> None:
    """Write all of `data`: a buffered write that fails midway (a full disk, a closed pipe)
    returns the bytes written so far instead of raising; the next write raises."""
    view = memoryview(data)
    while view:
        view = view[stream.write(view) :]


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if _INPUT.value == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(_INPUT.value, "rb") as file:
            data = file.read()
    lines, problems = cli.decode_lines(data)  # before loading the run: reading is quick
    alignment_options = None
    if alignment_flags.ALIGNMENTS.value or _ATTENTION.value != "none":
        if _ATTENTION.value != "none" and _OUTPUT_FORMAT.value != "jsonl":
            raise ValueError("--attention needs --output_format=jsonl")
        alignment_options = AlignmentOptions(
            layer=parse_index_or_mean(alignment_flags.ALIGNMENT_LAYER.value, "alignment_layer"),
            head=parse_index_or_mean(alignment_flags.ALIGNMENT_HEAD.value, "alignment_head"),
            units=alignment_flags.ALIGNMENT_UNITS.value,
            attention=_ATTENTION.value,
        )
    compilation_cache.enable_from_flags()
    run = inference_flags.trained_run()
    config = run.model_config
    selection = None
    if alignment_options is not None:
        alignment_options.selection(config)  # a bad layer or head fails before decoding
        selection = alignment_options.decoded_selection(config)
    vocabulary = run.workdir.vocabulary(run.config)
    problems.update(run_line_problems(run, vocabulary, lines))
    for index in sorted(problems):
        print(f"line {index + 1}: {problems[index]}; skipped", file=sys.stderr)
    valid = ["" if index in problems else line for index, line in enumerate(lines)]
    translations = translate_lines_in_detail(
        run,
        vocabulary,
        valid,
        inference_flags.options(),
        inference_flags.BATCH_SIZE.value,
        attention=selection,
    )
    output_lines = []
    for index, translation in enumerate(translations):
        links = None
        if alignment_flags.ALIGNMENTS.value and index not in problems:
            links = alignment_links(translation, vocabulary, config, alignment_options)
        if _OUTPUT_FORMAT.value == "text":
            output_lines.append("" if index in problems else text_line(translation, links))
            continue
        if index in problems:
            record = {"line": index + 1, "error": problems[index]}
        else:
            record = json_line(
                index + 1, lines[index], translation, vocabulary, config, links, alignment_options
            )
        output_lines.append(json.dumps(record, ensure_ascii=False))
    text = "".join(f"{line}\n" for line in output_lines).encode("utf-8")
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
