"""Translate text with a trained run: `python -m train.translate --workdir=DIR`.

Reads sentences, one per line, from stdin (or --input), translates them in batches of similar
length (beam search by default: beam 4, length penalty 0.6, as in the paper) and writes one
translation per line, in the input's order, to stdout (or --output). Empty input lines give
empty output lines. Options as for `python -m train.evaluate`: --decoding greedy|beam|sample,
--beam_size, --length_penalty, --temperature, --top_k, --top_p, --seed, --average_last, --step.

    echo "A man is riding a bike." | python -m train.translate --workdir=runs/multi30k
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags, logging

from train import decoding_flags

_INPUT = flags.DEFINE_string("input", "-", "Input file, one sentence per line ('-': stdin).")
_OUTPUT = flags.DEFINE_string("output", "-", "Output file ('-': stdout).")
flags.adopt_module_key_flags(decoding_flags)  # list them in --help


def translate_lines(run, vocabulary, lines: list[str], options, batch_size: int) -> list[str]:
    """Translations of `lines` (whitespace-normalised first), in order; "" for empty lines."""
    from train.data.batching import TokenizedSplit, evaluation_batches
    from train.data.parallel_text import normalize_whitespace
    from train.data.tasks import eval_bucket_lengths
    from train.evaluation import decode_batches

    limit = run.model_config.max_len
    sources, kept = [], []
    for number, line in enumerate(lines, start=1):
        text = normalize_whitespace(line)
        if not text:
            continue
        ids = np.array([*vocabulary.encode(text), vocabulary.eos_id], np.int32)
        if len(ids) > limit:
            raise ValueError(
                f"line {number} is {len(ids)} tokens long (with eos), longer than the model's "
                f"max_len={limit}: {text[:100]!r}"
            )
        sources.append(ids)
        kept.append(number - 1)
    if not sources:
        return [""] * len(lines)
    eos_only = [np.array([vocabulary.eos_id], np.int32)] * len(sources)
    split = TokenizedSplit(sources, eos_only, np.array(kept), 0)
    batches = evaluation_batches(
        split,
        batch_size=batch_size,
        bucket_lengths=eval_bucket_lengths(limit),
        pad_id=vocabulary.pad_id,
        bos_id=vocabulary.bos_id,
    )
    outputs = decode_batches(run.model_config, run.params, batches, vocabulary, options)
    return [outputs.get(index, "") for index in range(len(lines))]


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import os

    from train.data.tasks import load_vocabulary
    from train.workdir import load_run

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    workdir = os.path.abspath(decoding_flags.WORKDIR.value)
    run = load_run(
        workdir, step=decoding_flags.STEP.value, average_last=decoding_flags.AVERAGE_LAST.value
    )
    vocabulary = load_vocabulary(run.config, workdir)
    if _INPUT.value == "-":
        lines = sys.stdin.read().split("\n")
    else:
        with open(_INPUT.value, encoding="utf-8") as file:
            lines = file.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    translations = translate_lines(
        run, vocabulary, lines, decoding_flags.options(), decoding_flags.BATCH_SIZE.value
    )
    text = "".join(f"{line}\n" for line in translations)
    if _OUTPUT.value == "-":
        sys.stdout.write(text)
    else:
        with open(_OUTPUT.value, "w", encoding="utf-8") as file:
            file.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
