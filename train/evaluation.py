"""Evaluation shared by training, `python -m train.evaluate` and `python -m train.translate`.

    DecodingOptions     how outputs are searched for (greedy, beam search or sampling)
    decode_batch        one batch of source ids -> output ids, beam scores, attention
    generate_tokens     one batch of source ids -> output ids
    translate_batches   source batches -> detokenized hypotheses
    score            hypotheses vs references -> corpus BLEU and chrF with sacrebleu (detokenized
                     text, sacrebleu's default 13a tokenization), with sacrebleu's signatures
    exact_match_by_group   exact match per group of examples (e.g. per digit count)
    evaluate         loss and token accuracy (teacher forcing) + decoding + scores over batches

Multi-process runs (train.distributed): every process feeds `eval_step` its own rows of each
batch (`rows`), and decodes every P-th batch (process p: batches p, p + P, ...; the sampling key
still follows the global batch index, so outputs do not depend on the process count). The
decoded sentences are gathered on process 0, which alone scores them.

BLEU is computed on detokenized text against the reference sentences as they are in the data
(whitespace-normalised only), the way sacrebleu intends: comparable to published sacreBLEU scores,
unlike BLEU over subword ids.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import sacrebleu

from flax_transformer import TransformerConfig, checks, decoding
from flax_transformer.search import BEAM_STOP_RULES, strip_after_eos
from flax_transformer.training import summarize_metrics
from train import distributed

DECODING_METHODS = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
    """How to turn the model's distributions into output sentences.

    `max_length` None: the paper's limit, source length + 50 (section 6.1), capped at the
    model's max_len. Beam search uses the GNMT length penalty ((5 + |Y|) / 6) ** length_penalty.
    """

    method: str = "beam"
    beam_size: int = 4
    length_penalty: float = 0.6
    beam_stop: str = "finished"  # one of BEAM_STOP_RULES: see flax_transformer.decoding.beam_search
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_length: int | None = None

    def __post_init__(self) -> None:
        """Checked once, when the options are made, with the library's own checks."""
        if self.method not in DECODING_METHODS:
            raise ValueError(
                f"decoding method must be one of {list(DECODING_METHODS)}, got {self.method!r}"
            )
        if not checks.is_int(self.beam_size) or self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        try:
            checks.check_stop_rule(self.beam_stop)
        except ValueError:
            raise ValueError(
                f"beam_stop must be one of {list(BEAM_STOP_RULES)}, got {self.beam_stop!r}"
            ) from None
        checks.check_length_penalty(self.length_penalty)
        checks.check_temperature(self.temperature)
        checks.check_top_p(self.top_p)

    def describe(self) -> str:
        if self.method == "beam":
            return (
                f"beam search (beam {self.beam_size}, length penalty {self.length_penalty}, "
                f"stop when {self.beam_stop})"
            )
        if self.method == "sample":
            return (
                f"sampling (temperature {self.temperature}, top-k {self.top_k or 'off'}, "
                f"top-p {self.top_p}, seed {self.seed})"
            )
        return "greedy"


@dataclasses.dataclass(frozen=True)
class DecodedBatch:
    """One batch's outputs, on the host.

    tokens     int32 [batch, length]: each row's output (the best hypothesis of beam search)
    scores     float32 [batch]: beam search's score of it (sum log p / length penalty); None
               for greedy decoding and sampling
    attention  float32 [batch, length, layers', heads', src_len]: the cross-attention that
               chose each output token (`flax_transformer.decoding`'s `attention`), or None
    """

    tokens: np.ndarray
    scores: np.ndarray | None = None
    attention: np.ndarray | None = None


def decode_batch(
    model_config: TransformerConfig,
    params: Any,
    source: np.ndarray,
    *,
    bos_id: int,
    eos_id: int,
    options: DecodingOptions,
    batch_index: int = 0,
    attention: decoding.AttentionSelection | None = None,
) -> DecodedBatch:
    """Decode one batch of source ids [batch, src_len] as `options` say. `batch_index` varies
    the sampling key from batch to batch; `attention` asks for the cross-attention."""
    common = dict(
        bos_id=bos_id,
        eos_id=eos_id,
        max_length=options.max_length,
        attention=attention,
        check_inputs=False,
    )
    model = (model_config, params, source)
    if options.method == "beam":
        beams = dict(beam_size=options.beam_size, length_penalty=options.length_penalty)
        tokens, scores, *weights = decoding.beam_search(
            *model, stop=options.beam_stop, **beams, **common
        )
        best = [np.asarray(weights[0][:, 0])] if weights else []
        return DecodedBatch(np.asarray(tokens[:, 0]), np.asarray(scores[:, 0]), *best)
    if options.method == "greedy":
        outputs = decoding.greedy_decode(*model, **common)
    else:
        rng = jax.random.fold_in(jax.random.key(options.seed), batch_index)
        filters = dict(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p)
        outputs = decoding.sample_decode(*model, rng, **filters, **common)
    if attention is None:
        return DecodedBatch(np.asarray(outputs))
    tokens, weights = outputs
    return DecodedBatch(np.asarray(tokens), attention=np.asarray(weights))


def generate_tokens(
    model_config: TransformerConfig,
    params: Any,
    source: np.ndarray,
    *,
    bos_id: int,
    eos_id: int,
    options: DecodingOptions,
    batch_index: int = 0,
) -> np.ndarray:
    """Output token ids [batch, length] for one batch of source ids (the best beam for beam
    search). `batch_index` varies the sampling key from batch to batch."""
    return decode_batch(
        model_config,
        params,
        source,
        bos_id=bos_id,
        eos_id=eos_id,
        options=options,
        batch_index=batch_index,
    ).tokens


def translate_batches(
    model_config: TransformerConfig,
    params: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    vocabulary: Any,
    options: DecodingOptions,
    *,
    batch_indices: Iterable[int] | None = None,
) -> dict[int, str]:
    """Detokenized output for every real row of `batches`, keyed by its "example_index".

    `batch_indices`: decode only these batches (positions in `batches`; default all)."""
    outputs: dict[int, str] = {}
    chosen = None if batch_indices is None else set(batch_indices)
    for batch_index, batch in enumerate(batches):
        if chosen is not None and batch_index not in chosen:
            continue
        tokens = generate_tokens(
            model_config,
            params,
            batch["source"],
            bos_id=vocabulary.bos_id,
            eos_id=vocabulary.eos_id,
            options=options,
            batch_index=batch_index,
        )
        rows = strip_after_eos(tokens, vocabulary.eos_id, vocabulary.pad_id)
        for row, index in enumerate(batch["example_index"]):
            if index >= 0:
                outputs[int(index)] = vocabulary.decode(rows[row])
    return outputs


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: they must pair up"
        )


def _matches(hypothesis: str, reference: str) -> bool:
    """Exact match: the detokenized output is the reference string, character for character."""
    return hypothesis == reference


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu defaults) and exact match; plus sacrebleu's signatures."""
    _check_pairs(hypotheses, references)
    bleu_metric, chrf_metric = sacrebleu.BLEU(), sacrebleu.CHRF()
    bleu = bleu_metric.corpus_score(list(hypotheses), [list(references)])
    chrf = chrf_metric.corpus_score(list(hypotheses), [list(references)])
    matches = sum(_matches(h, r) for h, r in zip(hypotheses, references, strict=True))
    return {
        "bleu": bleu.score,
        "chrf": chrf.score,
        "exact_match": matches / max(len(references), 1),
        "bleu_signature": str(bleu_metric.get_signature()),
        "chrf_signature": str(chrf_metric.get_signature()),
        "bleu_text": str(bleu),
    }


_GROUP_NAME = re.compile(r"[A-Za-z0-9_]+")


def _group_order(name: str) -> tuple[str, int]:
    """Sort key: by the name without its trailing number, then that number ("digits_2" before
    "digits_10")."""
    stem, number = re.fullmatch(r"(.*?)(\d*)", name).groups()
    return stem, int(number or -1)


def group_sizes(groups: Sequence[Sequence[str]]) -> dict[str, int]:
    """{group: how many examples are in it}, for per-example `groups`, in group order (names
    with their trailing numbers compared as numbers: digits_1, digits_2, ..., digits_10)."""
    sizes = Counter(group for example in groups for group in set(example))
    for group in sizes:
        if not _GROUP_NAME.fullmatch(group):
            raise ValueError(
                f"group names are metric keys: letters, digits and underscores only, got {group!r}"
            )
    return {group: sizes[group] for group in sorted(sizes, key=_group_order)}


def exact_match_by_group(
    hypotheses: Sequence[str], references: Sequence[str], groups: Sequence[Sequence[str]]
) -> dict[str, float]:
    """{group: exact match over the examples in that group} (as `score`'s exact match), in
    `group_sizes`' order; `groups[i]` are the groups of example i (any number, even none).
    Groups without examples are absent."""
    _check_pairs(hypotheses, references)
    if len(groups) != len(references):
        raise ValueError(f"{len(groups)} example groups for {len(references)} references")
    matches: Counter[str] = Counter()
    for hypothesis, reference, example in zip(hypotheses, references, groups, strict=True):
        if _matches(hypothesis, reference):
            matches.update(set(example))
    return {group: matches[group] / size for group, size in group_sizes(groups).items()}


def group_metrics(
    hypotheses: Sequence[str], references: Sequence[str], groups: Sequence[Sequence[str]]
) -> dict[str, float]:
    """The per-group metrics of `evaluate`: "exact_match_<group>" (`exact_match_by_group`) and
    "examples_<group>" (its number of examples, as a float like "examples"), per group."""
    metrics: dict[str, float] = {}
    sizes = group_sizes(groups)
    for group, value in exact_match_by_group(hypotheses, references, groups).items():
        metrics[f"exact_match_{group}"] = value
        metrics[f"examples_{group}"] = float(sizes[group])
    return metrics


def describe_groups(exact_matches: Mapping[str, float], sizes: Mapping[str, int]) -> str:
    """One line of per-group exact matches (`exact_match_by_group`) with the groups' sizes
    (`group_sizes`), e.g. "below_1000 99.90% (1000), digits_1 100.00% (10)"."""
    return ", ".join(
        f"{group} {value:.2%} ({sizes[group]})" for group, value in exact_matches.items()
    )


def evaluate(
    parallel: Any,
    state: Any,
    params: Any,
    batches: Sequence[Mapping[str, np.ndarray]],
    *,
    model_config: TransformerConfig,
    vocabulary: Any,
    references: Sequence[str],
    sources: Sequence[str],
    options: DecodingOptions | None,
    rows: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None,
    groups: Sequence[Sequence[str]] | None = None,
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Teacher-forced loss and token accuracy over `batches`; with `options`, also decode every
    example and score it against `references` (indexed by "example_index").

    `groups[i]`: the groups of example i (e.g. ["digits_2", "below_1000"]); with them, the
    metrics also hold "exact_match_<group>" and "examples_<group>" for every group among the
    decoded examples (`group_metrics`).

    `rows` maps a (global) batch to the rows this process feeds to `parallel.eval_step` (multi-
    process mesh: its share; default: all). Under several processes, decoding is split by batch
    and scored on process 0 (see the module doc); the other processes return the loss metrics
    only, and no examples.

    Returns (metrics, examples) where examples are (source, hypothesis, reference) in data order;
    with `options`, the metrics include sacreBLEU's "bleu_signature" (a string).
    Filler rows ("example_mask" 0) count for nothing.
    """
    rows = rows or (lambda batch: batch)
    sums = [
        parallel.eval_step(state, parallel.put_batch(_model_inputs(rows(b)), train=False))
        for b in batches
    ]
    summary = summarize_metrics(sums)
    examples: list[tuple[str, str, str]] = []
    if options is not None:
        index, count = jax.process_index(), jax.process_count()
        mine = translate_batches(
            model_config,
            params,
            batches,
            vocabulary,
            options,
            batch_indices=range(index, len(batches), count),
        )
        # JSON keys are strings: send (index, text) pairs.
        gathered = distributed.gather_to_main("decoded sentences", sorted(mine.items()))
        if gathered is None:
            return summary, examples
        outputs = {int(i): text for part in gathered for i, text in part}
        order = sorted(outputs)
        hypotheses = [outputs[i] for i in order]
        chosen_references = [references[i] for i in order]
        scores = score(hypotheses, chosen_references)
        summary.update(bleu=scores["bleu"], chrf=scores["chrf"], exact_match=scores["exact_match"])
        summary["bleu_signature"] = scores["bleu_signature"]
        summary["examples"] = float(len(order))
        if groups is not None:
            chosen_groups = [groups[i] for i in order]
            summary.update(group_metrics(hypotheses, chosen_references, chosen_groups))
        examples = [(sources[i], outputs[i], references[i]) for i in order]
    return summary, examples


def _model_inputs(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays a train/eval step takes (drops bookkeeping such as example_index)."""
    return {key: value for key, value in batch.items() if key not in ("example_index",)}


__all__ = [
    "DECODING_METHODS",
    "DecodingOptions",
    "DecodedBatch",
    "decode_batch",
    "generate_tokens",
    "translate_batches",
    "evaluate",
    "score",
    "exact_match_by_group",
    "group_metrics",
    "group_sizes",
    "describe_groups",
]
