"""How well each decoder layer's and head's cross-attention aligns, on a run of the built-in
number-words task (whose alignment is known by construction: the oracle of
tests/number_words_oracle.py). Prints precision, recall and alignment error rate (Och
and Ney, 2003) of the hard alignments (`flax_transformer.alignment.hard_alignment`) for every
layer, the mean of the layers, and every head and the heads' mean, over greedy outputs that are
right (a wrong output has no oracle alignment). Asserts nothing.

    python benchmarks/alignment_benchmark.py --workdir=runs/numbers [--numbers 256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the oracle lives in tests/


def main() -> None:
    import flax_transformer as ft
    from flax_transformer.alignment import alignment_scores, hard_alignment
    from flax_transformer.decoding import AttentionSelection
    from tests.number_words_oracle import oracle, random_numbers
    from train.workdir import load_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a run of the number-words task")
    parser.add_argument("--numbers", type=int, default=256, help="random numbers of 1-6 digits")
    args = parser.parse_args()

    run = load_run(args.workdir)
    vocabulary = run.workdir.vocabulary(run.config)
    config = run.model_config
    numbers = random_numbers(np.random.default_rng(5), args.numbers)
    sources = [[*vocabulary.encode(str(n)), vocabulary.eos_id] for n in numbers]
    source = np.full((len(numbers), max(map(len, sources))), vocabulary.pad_id, np.int32)
    for row, ids in enumerate(sources):
        source[row, : len(ids)] = ids
    tokens, attention = ft.greedy_decode(
        config,
        run.params,
        source,
        bos_id=vocabulary.bos_id,
        eos_id=vocabulary.eos_id,
        attention=AttentionSelection(layer="all", head="all"),
    )
    tokens, attention = np.asarray(tokens), np.asarray(attention)
    outputs = []
    for row in tokens.tolist():
        outputs.append(row[: row.index(vocabulary.eos_id)] if vocabulary.eos_id in row else row)
    right = [
        r for r, n in enumerate(numbers) if vocabulary.decode(outputs[r]) == " ".join(oracle(n)[0])
    ]
    print(
        f"{args.workdir}: {config.num_decoder_layers} decoder layers, {config.num_heads} heads; "
        f"{len(right)} of {len(numbers)} greedy outputs right\n"
    )
    print("| layer | head | precision | recall | AER |")
    print("|---|---|---|---|---|")
    for layer in [*range(config.num_decoder_layers), "mean"]:
        for head in ["mean", *range(config.num_heads)]:
            predicted, sure, possible = set(), set(), set()
            for r in right:
                _, row_sure, row_possible = oracle(int(numbers[r]))
                weights = attention[r, : len(outputs[r])]
                weights = weights.mean(axis=1) if layer == "mean" else weights[:, layer]
                weights = weights.mean(axis=1) if head == "mean" else weights[:, head]
                links = hard_alignment(
                    weights[:, : len(sources[r])],
                    vocabulary.word_indices(sources[r]),
                    vocabulary.word_indices(outputs[r]),
                )
                predicted |= {(r, s, t) for s, t in links}
                sure |= {(r, s, t) for s, t in row_sure}
                possible |= {(r, s, t) for s, t in row_possible}
            scores = alignment_scores(predicted, sure, possible)
            print(
                f"| {layer} | {head} | {scores['precision']:.3f} | {scores['recall']:.3f} | "
                f"{scores['alignment_error_rate']:.3f} |"
            )


if __name__ == "__main__":
    main()
