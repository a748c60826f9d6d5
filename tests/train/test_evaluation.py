"""Evaluation: sacrebleu scores, decoding options, and translating batches (against the
library's decoders run directly, and the vocabulary's detokenization)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import sacrebleu

import flax_transformer as ft
from train.evaluation import (
    DecodingOptions,
    describe_groups,
    evaluate,
    exact_match_by_group,
    generate_tokens,
    group_metrics,
    group_sizes,
    score,
    translate_batches,
)


def test_score_matches_sacrebleu_and_counts_exact_matches() -> None:
    hypotheses = ["Ein Mann fährt Fahrrad .", "Zwei Hunde spielen im Schnee."]
    references = ["Ein Mann fährt ein Fahrrad.", "Zwei Hunde spielen im Schnee."]
    scores = score(hypotheses, references)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    assert scores["exact_match"] == 0.5
    assert score(references, references)["bleu"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        score(hypotheses, references[:1])


def test_decoding_options_are_checked() -> None:
    with pytest.raises(ValueError, match="decoding method must be one of"):
        DecodingOptions(method="nucleus")
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        DecodingOptions(beam_size=0)
    with pytest.raises(ValueError, match="beam_stop must be one of"):
        DecodingOptions(beam_stop="early")


class _Digits:
    """Ids 3.. are the digits 0..9; decode writes them and stops at eos."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def decode(self, ids) -> str:
        out = []
        for token in ids:
            if int(token) == self.eos_id:
                break
            out.append(str(int(token) - 3))
        return "".join(out)


@pytest.fixture(scope="module")
def model():
    config = ft.TransformerConfig.tiny(vocab_size=13, max_len=24)
    return config, ft.init_params(config, jax.random.key(3))


def _batch(rng) -> dict[str, np.ndarray]:
    source = rng.integers(3, 13, size=(4, 6)).astype(np.int32)
    source[1, 3:] = 0
    target = np.full((4, 5), 2, np.int32)
    source[2], target[2] = 0, 0  # a filler row: all padding
    return {
        "source": source,
        "decoder_input": np.where(target == 0, 0, 1).astype(np.int32),
        "target": target,
        "example_index": np.array([7, 3, -1, 5]),
        "example_mask": np.array([1, 1, 0, 1], np.int32),
    }


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_translate_batches_decodes_each_real_row_with_the_library(model, rng, method) -> None:
    config, params = model
    batch = _batch(rng)
    options = DecodingOptions(method=method, beam_size=2, max_length=8, top_k=3, seed=4)
    common = dict(bos_id=1, eos_id=2, max_length=8)
    if method == "greedy":
        expected = ft.greedy_decode(config, params, batch["source"], **common)
    elif method == "beam":
        expected = ft.beam_search(config, params, batch["source"], beam_size=2, **common)[0][:, 0]
    else:  # batch 0 of the evaluation: the key is fold_in(key(seed), 0)
        key = jax.random.fold_in(jax.random.key(4), 0)
        expected = ft.sample_decode(config, params, batch["source"], key, top_k=3, **common)
    tokens = generate_tokens(config, params, batch["source"], bos_id=1, eos_id=2, options=options)
    np.testing.assert_array_equal(tokens, np.asarray(expected))
    outputs = translate_batches(config, params, [batch], _Digits(), options)
    assert sorted(outputs) == [3, 5, 7]  # the filler row (-1) is left out
    for row, index in ((0, 7), (1, 3), (3, 5)):
        assert outputs[index] == _Digits().decode(np.asarray(expected)[row])


def _placed(config, params):
    """A single-device DataParallel and a train state holding `params`, placed on it."""
    parallel = ft.DataParallel("single", model_config=config)
    optimizer = ft.make_optimizer(ft.transformer_schedule(config.d_model, 10))
    state = parallel.put_state(ft.create_train_state(config, optimizer, jax.random.key(0)))
    return parallel, state.replace(params=params)


def test_evaluate_sums_loss_over_real_rows_and_scores_decoded_text(model, rng) -> None:
    config, params = model
    parallel, state = _placed(config, params)
    batch = _batch(rng)
    references = ["x"] * 8
    options = DecodingOptions(method="greedy", max_length=8)
    summary, examples = evaluate(
        parallel, state, params, [batch], model_config=config, vocabulary=_Digits(),
        references=references, sources=[str(i) for i in range(8)], options=options,
    )  # fmt: skip
    arrays = {k: batch[k] for k in ("source", "decoder_input", "target")}
    eval_sums = ft.eval_step(state, arrays, config=config)
    assert summary["tokens"] == 15  # 3 real rows of 5 targets; the filler row counts nothing
    assert summary["loss"] == pytest.approx(float(eval_sums["loss_sum"]) / 15)
    assert summary["examples"] == 3.0
    assert [source for source, _, _ in examples] == ["3", "5", "7"]  # in data order
    assert summary["exact_match"] == 0.0


def test_exact_match_by_group_by_hand() -> None:
    hypotheses = ["seven", "twelve", "forty", "one hundred", "ten thousand"]
    references = ["seven", "eleven", "forty", "one hundred", "ten thousand one"]
    groups = [
        ["digits_1", "below_1000"],
        ["digits_2", "below_1000"],
        ["digits_2", "below_1000"],
        ["digits_3", "below_1000", "below_1000"],  # a repeated group counts once
        ["digits_10"],
    ]
    # below_1000: 3 of 4 right; digits_2: 1 of 2; digits_10 sorts after digits_3.
    expected = {"below_1000": 0.75, "digits_1": 1.0, "digits_2": 0.5, "digits_3": 1.0,
                "digits_10": 0.0}  # fmt: skip
    by_group = exact_match_by_group(hypotheses, references, groups)
    assert by_group == expected and list(by_group) == list(expected)
    sizes = group_sizes(groups)
    assert sizes == {"below_1000": 4, "digits_1": 1, "digits_2": 2, "digits_3": 1, "digits_10": 1}
    assert describe_groups(by_group, sizes) == (
        "below_1000 75.00% (4), digits_1 100.00% (1), digits_2 50.00% (2), "
        "digits_3 100.00% (1), digits_10 0.00% (1)"
    )
    metrics = group_metrics(hypotheses, references, groups)
    assert metrics["exact_match_digits_2"] == 0.5 and metrics["examples_digits_2"] == 2.0
    assert len(metrics) == 10
    # The same definition as score's exact match: over one group holding everything, equal.
    everything = exact_match_by_group(hypotheses, references, [["all"]] * 5)["all"]
    assert everything == score(hypotheses, references)["exact_match"] == 0.6
    assert exact_match_by_group(["a"], ["a"], [[]]) == {}  # an example may have no group


def test_exact_match_by_group_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="2 example groups for 1 references"):
        exact_match_by_group(["a"], ["a"], [["x"], ["y"]])
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        exact_match_by_group(["a", "b"], ["a"], [["x"]])
    with pytest.raises(ValueError, match="letters, digits and underscores only, got 'digits-1'"):
        exact_match_by_group(["a"], ["a"], [["digits-1"]])


def test_evaluate_reports_exact_match_per_group_of_the_decoded_examples(model, rng) -> None:
    config, params = model
    parallel, state = _placed(config, params)
    batch = _batch(rng)  # decodes examples 7, 3 and 5
    options = DecodingOptions(method="greedy", max_length=8)
    outputs = translate_batches(config, params, [batch], _Digits(), options)
    references = ["x"] * 8
    references[5] = outputs[5]  # the one right answer
    groups = [["odd"] if i % 2 else ["even"] for i in range(8)]
    groups[3] = ["odd", "three"]
    summary, _ = evaluate(
        parallel, state, params, [batch], model_config=config, vocabulary=_Digits(),
        references=references, sources=[str(i) for i in range(8)], options=options,
        groups=groups,
    )  # fmt: skip
    assert summary["exact_match"] == pytest.approx(1 / 3)
    # Only decoded examples count: "even" has none of them (0, 2, 4, 6 are not decoded).
    assert {k: v for k, v in summary.items() if k.startswith(("exact_match_", "examples_"))} == {
        "exact_match_odd": pytest.approx(1 / 3),
        "examples_odd": 3.0,
        "exact_match_three": 0.0,
        "examples_three": 1.0,
    }
    without, _ = evaluate(
        parallel, state, params, [batch], model_config=config, vocabulary=_Digits(),
        references=references, sources=[str(i) for i in range(8)], options=options,
    )  # fmt: skip
    assert not any(key.startswith("exact_match_") for key in without)
