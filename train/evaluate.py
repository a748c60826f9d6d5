"""Score a trained run: `python -m train.evaluate --workdir=DIR [--split=test]`.

Decodes every source sentence of the split (beam search by default: beam 4, length penalty 0.6,
outputs up to source length + 50, as in the paper), writes the detokenized hypotheses to a file
(one per line, in the split's order), and prints corpus BLEU and chrF computed by sacrebleu on
detokenized text against the references, with sacrebleu's signatures.

  --split         validation or test (or the dataset's own name, e.g. test2016)
  --average_last  average the last K checkpoints (the paper averages 5)
  --output        hypotheses file (default: WORKDIR/translations/SPLIT-STEP-DECODING.txt,
                  SPLIT-STEP-averageK-DECODING.txt with --average_last=K, and -ema before
                  -DECODING when the params are a parameter EMA)
  --decoding      beam | greedy | sample, with --beam_size, --length_penalty, --temperature,
                  --top_k, --top_p, --seed, --max_length
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging

from train import cli, compilation_cache, inference_flags

_SPLIT = flags.DEFINE_string("split", "test", "validation or test (or the dataset's split name).")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the hypotheses.")
flags.adopt_module_key_flags(inference_flags)  # list them in --help
flags.adopt_module_key_flags(compilation_cache)  # --compilation_cache
flags.adopt_module_key_flags(cli)  # --debug


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow_datasets as tfds

    from train.data.run_data import evaluation_split
    from train.data.sources import open_roles, role_of
    from train.evaluation import (
        describe_groups,
        exact_match_by_group,
        group_sizes,
        score,
        translate_batches,
    )

    tfds.disable_progress_bar()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    compilation_cache.enable_from_flags()
    options = inference_flags.options()
    run = inference_flags.trained_run()
    run.config.eval_batch_size = inference_flags.BATCH_SIZE.value
    role = role_of(run.config, _SPLIT.value)
    vocabulary = run.workdir.vocabulary(run.config)
    source = open_roles(run.config, [role])[role]
    split = evaluation_split(run.config, role, source, vocabulary)
    start = time.perf_counter()
    outputs = translate_batches(run.model_config, run.params, split.batches, vocabulary, options)
    seconds = time.perf_counter() - start
    hypotheses = [outputs[index] for index in range(len(split.references))]
    scores = score(hypotheses, split.references)
    groups = split.groups or []  # per-example groups, e.g. digit counts (none: no groups)
    by_group = exact_match_by_group(hypotheses, split.references, groups) if groups else {}
    sizes = group_sizes(groups)

    output = _OUTPUT.value or run.workdir.translation_path(
        split.name, run.steps, options.method, ema=run.ema
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as file:
        file.writelines(f"{line}\n" for line in hypotheses)
    result = {
        "split": split.name,
        "sentences": len(hypotheses),
        "params": run.describe(),
        "decoding": options.describe(),
        "bleu": round(scores["bleu"], 2),
        "chrf": round(scores["chrf"], 2),
        "exact_match": round(scores["exact_match"], 4),
        "exact_match_by_group": {
            group: {"exact_match": round(value, 4), "examples": sizes[group]}
            for group, value in by_group.items()
        },
        "bleu_signature": scores["bleu_signature"],
        "chrf_signature": scores["chrf_signature"],
        "decode_seconds": round(seconds, 1),
        "hypotheses": output,
    }
    with open(os.path.splitext(output)[0] + ".json", "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)
    exact = [f"exact match = {scores['exact_match']:.2%}"]
    if by_group:
        exact.append(f"exact match by group: {describe_groups(by_group, sizes)}")
    lines = [
        f"{split.name}: {len(hypotheses)} sentences, {run.describe()}, {options.describe()}, "
        f"decoded in {seconds:.1f} s",
        f"BLEU = {scores['bleu']:.2f}   ({scores['bleu_text']})",
        f"chrF = {scores['chrf']:.2f}",
        *exact,
        f"signatures: {scores['bleu_signature']}  |  {scores['chrf_signature']}",
        f"hypotheses: {output}",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    cli.run(main)
