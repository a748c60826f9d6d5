"""Evaluation: sacrebleu scores, decoding options, and translating batches (against the
library's decoders run directly, and the vocabulary's detokenization)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import sacrebleu

import flax_transformer as ft
from train.evaluation import DecodingOptions, evaluate, generate_tokens, score, translate_batches


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


def test_evaluate_sums_loss_over_real_rows_and_scores_decoded_text(model, rng) -> None:
    config, params = model
    parallel = ft.DataParallel("single", model_config=config)
    optimizer = ft.make_optimizer(ft.transformer_schedule(config.d_model, 10))
    state = parallel.put_state(ft.create_train_state(config, optimizer, jax.random.key(0)))
    state = state.replace(params=params)
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
