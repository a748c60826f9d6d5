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

from absl import app, flags, logging

from train import inference_flags

_INPUT = flags.DEFINE_string("input", "-", "Input file, one sentence per line ('-': stdin).")
_OUTPUT = flags.DEFINE_string("output", "-", "Output file ('-': stdout).")
flags.adopt_module_key_flags(inference_flags)  # list them in --help


def translate_lines(run, vocabulary, lines: list[str], options, batch_size: int) -> list[str]:
    """Translations of `lines` (whitespace-normalised first), in order; "" for empty lines."""
    from train.data.parallel_text import normalize_whitespace
    from train.data.run_data import sentence_batches
    from train.evaluation import translate_batches

    texts = [normalize_whitespace(line) for line in lines]
    batches = sentence_batches(
        texts, vocabulary, batch_size=batch_size, limit=run.model_config.max_len
    )
    outputs = translate_batches(run.model_config, run.params, batches, vocabulary, options)
    return [outputs.get(index, "") for index in range(len(lines))]


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from train.workdir import load_run

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    run = load_run(
        inference_flags.WORKDIR.value,
        step=inference_flags.STEP.value,
        average_last=inference_flags.AVERAGE_LAST.value,
    )
    vocabulary = run.workdir.vocabulary(run.config)
    if _INPUT.value == "-":
        lines = sys.stdin.read().split("\n")
    else:
        with open(_INPUT.value, encoding="utf-8") as file:
            lines = file.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    translations = translate_lines(
        run, vocabulary, lines, inference_flags.options(), inference_flags.BATCH_SIZE.value
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
