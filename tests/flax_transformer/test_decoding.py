"""The Transformer's decoders against independent references: a plain Python loop over the
uncached forward pass, brute-force enumeration of every output, float64 NumPy scores and NumPy
filters. (The searches themselves, on a toy step function: test_search.py.)"""

from __future__ import annotations

import itertools
import re

import jax
import numpy as np
import pytest

import flax_transformer as ft
from flax_transformer import masks
from flax_transformer.decoding import (
    AttentionSelection,
    banned_id,
    beam_search,
    cached_step,
    decode_step,
    greedy_decode,
    greedy_decode_uncached,
    init_cache,
    output_length_limits,
    sample_decode,
    uncached_step,
)
from tests.helpers import random_tokens
from tests.numpy_reference import softmax, top_k_filter, top_p_filter, transformer_logits

CONFIG = ft.TransformerConfig.tiny(vocab_size=12, num_encoder_layers=1, num_decoder_layers=1)
BOS, EOS = 1, 2
MAX_LENGTH = 9  # most tests decode the `source` fixture to this length: one compilation each


@pytest.fixture(scope="module")
def params():
    return ft.init_params(CONFIG, jax.random.key(3))


@pytest.fixture(scope="module")
def eos_biased_params(params):
    """The model pushed towards eos: its rows finish at different steps, some before the limit."""
    biased = jax.tree.map(np.array, params)
    biased["shared_embedding"]["embedding"][EOS] *= 3.0
    return biased


@pytest.fixture(scope="module")
def source():
    """Six right-padded source rows of different lengths (row 0 unpadded)."""
    return random_tokens(np.random.default_rng(0), 6, 7, CONFIG.vocab_size)


def hypothesis(row, limit: int) -> list[int]:
    """An output row as the hypothesis it encodes: up to and including eos, else `limit` tokens."""
    row = [int(token) for token in row]
    return row[: row.index(EOS) + 1] if EOS in row[:limit] else row[:limit]


def row_limits(source: np.ndarray, max_length: int) -> list[int]:
    """min(max_length, own non-pad source length + 50), written out for the tests."""
    return [min(max_length, int((row != CONFIG.pad_id).sum()) + 50) for row in source]


def numpy_log_prob(config, params, source_row, tokens: list[int]) -> float:
    """sum log p(tokens | source) in float64 with the independent NumPy Transformer."""
    decoder_input = np.array([[BOS] + tokens[:-1]])
    logits = transformer_logits(params, config.to_dict(), source_row[None], decoder_input)[0]
    top = logits.max(axis=-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
    return float(sum(log_probs[i, token] for i, token in enumerate(tokens)))


def gnmt(length: int, alpha: float) -> float:
    return ((5 + length) / 6) ** alpha


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------
def test_decoder_step_mask_is_a_row_of_the_causal_mask() -> None:
    causal = np.asarray(masks.causal_mask(6))
    for step in range(6):
        step_mask = np.asarray(masks.decoder_step_mask(step, 6))
        assert step_mask.shape == (1, 1, 1, 6)
        np.testing.assert_array_equal(step_mask[0, 0, 0], causal[0, 0, step])


def test_beam_step_mask_by_hand() -> None:
    """Two hypotheses, three positions in each of two slots. Hypothesis 0 reads position 0 from
    slot 1, positions 1 and 2 from slot 0; hypothesis 1 all from slot 1."""
    T, F = True, False
    slots = np.array([[[1, 0, 0], [1, 1, 1]]])
    mask = np.asarray(masks.beam_step_mask(slots, 1))  # positions 0 and 1 are visible
    assert mask.shape == (1, 1, 2, 2, 3)  # [batch, 1, slot j, hypothesis k, position t]
    np.testing.assert_array_equal(mask[0, 0, 0], [[F, T, F], [F, F, F]])  # slot 0
    np.testing.assert_array_equal(mask[0, 0, 1], [[T, F, F], [T, T, F]])  # slot 1
    # One beam: every position in slot 0, and the mask is decoder_step_mask's.
    for step in range(4):
        one_beam = masks.beam_step_mask(np.zeros((2, 1, 4), np.int32), step)
        assert one_beam.shape == (2, 1, 1, 4)  # no slot axis
        np.testing.assert_array_equal(one_beam[0], masks.decoder_step_mask(step, 4)[0])
        np.testing.assert_array_equal(one_beam[1], one_beam[0])


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # unrolled, post-LN, sinusoidal, tied output, reference attention
        {"scan_layers": True, "norm_position": "pre", "positional_encoding": "learned"},
        {"share_embeddings": False, "tie_output_embedding": False, "sinusoid_layout": "halves"},
        {"attention_implementation": "fused", "scan_layers": True},
    ],
)
def test_cached_steps_equal_the_full_forward_pass_on_the_prefix(overrides) -> None:
    config = ft.TransformerConfig.tiny(vocab_size=16, **overrides)
    params = ft.init_params(config, jax.random.key(1))
    rng = np.random.default_rng(1)
    source = random_tokens(rng, 3, 6, config.vocab_size)  # padded rows
    target = rng.integers(1, config.vocab_size, size=(3, 3)).astype(np.int32)
    cache = init_cache(config, params, source, 6)
    # Laid out like the parameters: one KeyValue per layer, or one with a layer axis after batch.
    heads, d_k = config.num_heads, config.head_dim
    keys, values = (heads, d_k, 6), (heads, 6, d_k)  # one slot of 6 positions, keys transposed
    if config.scan_layers:
        assert cache.self_attention.key.shape == (3, 2) + keys
        assert cache.self_attention.value.shape == (3, 2) + values
        assert cache.cross_attention.key.shape == (3, 2, heads, d_k, 6)
    else:
        assert [kv.key.shape for kv in cache.self_attention] == [(3,) + keys] * 2
        assert [kv.value.shape for kv in cache.self_attention] == [(3,) + values] * 2
        assert [kv.value.shape for kv in cache.cross_attention] == [(3, heads, 6, d_k)] * 2
    assert cache.slots.shape == (3, 1, 6) and (cache.length, cache.beams) == (6, 1)
    for step in range(target.shape[1]):
        logits, cache = decode_step(config, params, cache, target[:, step], step)
        full = ft.forward(config, params, source, target[:, : step + 1])
        np.testing.assert_allclose(logits, full[:, step], rtol=1e-5, atol=1e-5)


def test_decode_step_reads_the_source_only_through_the_cache(params, source) -> None:
    """The cross-attention keys and values are computed once, by init_cache: decode_step runs
    neither the encoder nor the cross-attention key/value projections, so poisoning those
    parameters with NaN changes nothing."""
    cache = init_cache(CONFIG, params, source, MAX_LENGTH)
    poisoned = jax.tree.map(np.array, params)
    poisoned["encoder"] = jax.tree.map(lambda leaf: np.full_like(leaf, np.nan), params["encoder"])
    for projection in ("key", "value"):
        poisoned["decoder"]["layer_0"]["cross_attention"][projection] = jax.tree.map(
            lambda leaf: np.full_like(leaf, np.nan),
            params["decoder"]["layer_0"]["cross_attention"][projection],
        )
    tokens = np.full((len(source),), BOS, np.int32)
    for step in range(2):
        expected, _ = decode_step(CONFIG, params, cache, tokens, step)
        got, cache = decode_step(CONFIG, poisoned, cache, tokens, step)
        np.testing.assert_array_equal(got, expected)
        tokens = np.asarray(np.argmax(got, axis=-1), np.int32)


# ---------------------------------------------------------------------------------------------
# The adapter: the model as a step function of flax_transformer.search
# ---------------------------------------------------------------------------------------------
def test_output_length_limits_by_hand() -> None:
    source = np.array([[5, 6, 0, 0], [5, 6, 7, 8]], np.int32)  # 2 and 4 tokens: 52 and 54
    np.testing.assert_array_equal(output_length_limits(CONFIG, source, 53), [52, 53])
    np.testing.assert_array_equal(output_length_limits(CONFIG, source, 9), [9, 9])


def test_the_pad_id_is_banned_unless_it_is_the_eos_id() -> None:
    assert banned_id(CONFIG, eos_id=EOS) == CONFIG.pad_id == 0
    assert banned_id(CONFIG.replace(pad_id=EOS), eos_id=EOS) is None


@pytest.mark.parametrize("beam_size", [1, 3])
def test_step_functions_give_the_forward_pass_logits(params, source, beam_size) -> None:
    """Both step functions, fed a teacher-forced target, against the full forward pass; the
    cached one with `beam_size` hypotheses per sentence, each fed its own target."""
    rng = np.random.default_rng(5)
    rows = len(source) * beam_size
    target = rng.integers(1, CONFIG.vocab_size, size=(rows, 3)).astype(np.int32)
    sentence = np.repeat(np.arange(len(source)), beam_size)  # the sentence of each row
    full = np.asarray(ft.forward(CONFIG, params, source[sentence], target))
    step, cache = cached_step(CONFIG, params, source, 4, beam_size)
    assert jax.tree.structure(cache) == jax.tree.structure(
        init_cache(CONFIG, params, source, 4, beam_size=beam_size)
    )
    assert cache.beams == beam_size and cache.source_tokens.shape == source.shape
    reference_step, buffer = uncached_step(CONFIG, params, source, 4)
    np.testing.assert_array_equal(buffer, np.full((len(source), 4), CONFIG.pad_id))
    for t in range(target.shape[1]):
        logits, cache = step(jax.numpy.asarray(target[:, t]), cache, t)
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-5, atol=1e-5)
        logits, buffer = reference_step(jax.numpy.asarray(target[::beam_size, t]), buffer, t)
        np.testing.assert_allclose(logits, full[::beam_size, t], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(buffer[:, :3], target[::beam_size])  # the inputs fed


@pytest.mark.parametrize("scanned", [False, True])
def test_reordered_beams_continue_their_parents_prefixes(params, source, scanned) -> None:
    """Three hypotheses per sentence fed different tokens, then reordered (one dropped, one
    duplicated) at every step: each row's logits equal the full forward pass over the prefix
    its hypothesis has after the reorderings, and no key or value moves (only the slot table)."""
    config = CONFIG.replace(scan_layers=scanned)
    if scanned:
        params = ft.model.stack_layer_params(params)
    beam_size, steps = 3, 4
    rng = np.random.default_rng(6)
    step, cache = cached_step(config, params, source, steps, beam_size)
    prefixes = [[] for _ in range(len(source) * beam_size)]  # what each row's hypothesis read
    for t in range(steps):
        tokens = rng.integers(1, CONFIG.vocab_size, size=len(prefixes)).astype(np.int32)
        prefixes = [prefix + [int(token)] for prefix, token in zip(prefixes, tokens, strict=True)]
        logits, cache = step(jax.numpy.asarray(tokens), cache, t)
        for row, prefix in enumerate(prefixes):
            full = ft.forward(config, params, source[row // beam_size][None], np.array([prefix]))
            np.testing.assert_allclose(logits[row], full[0, -1], rtol=1e-5, atol=1e-5)
        parents = np.stack([rng.permutation(beam_size) for _ in source])
        parents[:, 0] = parents[:, 1]  # hypothesis 0 continues the same parent as hypothesis 1
        written = cache.self_attention
        cache = cache.reorder_beams(jax.numpy.asarray(parents))
        assert cache.self_attention is written
        prefixes = [
            prefixes[(row // beam_size) * beam_size + parents[row // beam_size, row % beam_size]]
            for row in range(len(prefixes))
        ]


# ---------------------------------------------------------------------------------------------
# Greedy decoding
# ---------------------------------------------------------------------------------------------
def python_loop_greedy(params, source: np.ndarray, max_length: int) -> list[list[int]]:
    """Grow each prefix one token at a time with the uncached forward pass; stop at eos."""
    outputs = []
    for row in source:
        prefix = [BOS]
        while len(prefix) <= max_length:
            logits = ft.forward(CONFIG, params, row[None], np.array([prefix], np.int32))
            token = int(np.argmax(logits[0, -1]))
            prefix.append(token)
            if token == EOS:
                break
        outputs.append(prefix[1:])
    return outputs


def test_greedy_decode_equals_the_python_loop(params, eos_biased_params, source) -> None:
    max_length = MAX_LENGTH
    for weights in (params, eos_biased_params):
        expected = python_loop_greedy(weights, source, max_length)
        output = np.asarray(
            greedy_decode(CONFIG, weights, source, bos_id=BOS, eos_id=EOS, max_length=max_length)
        )
        assert output.shape == (6, max_length)
        for row, tokens in zip(output, expected, strict=True):
            np.testing.assert_array_equal(row[: len(tokens)], tokens)
            assert (row[len(tokens) :] == CONFIG.pad_id).all()  # pad after eos
    # `expected` is now the biased model's: its rows stop at different steps, early (eos) and
    # at max_length, so the loop's stopping rule was exercised both ways.
    assert any(tokens[-1] == EOS and len(tokens) < max_length for tokens in expected)
    assert any(len(tokens) == max_length and EOS not in tokens for tokens in expected)


@pytest.mark.parametrize("scanned", [False, True])
def test_cached_greedy_equals_uncached_greedy(eos_biased_params, source, scanned) -> None:
    config, weights = CONFIG, eos_biased_params
    if scanned:
        config = CONFIG.replace(scan_layers=True, attention_implementation="fused")
        weights = ft.model.stack_layer_params(weights)
    for max_length in (None, MAX_LENGTH):
        cached = greedy_decode(
            config, weights, source, bos_id=BOS, eos_id=EOS, max_length=max_length
        )
        uncached = greedy_decode_uncached(
            config, weights, source, bos_id=BOS, eos_id=EOS, max_length=max_length
        )
        np.testing.assert_array_equal(cached, uncached)
    assert (np.asarray(cached) == EOS).any()


def test_rows_stop_at_their_source_length_plus_50(params) -> None:
    # EOS pushed away, so that every row runs to its length limit.
    no_eos = jax.tree.map(np.array, params)
    no_eos["shared_embedding"]["embedding"][EOS] *= -3.0
    source = np.zeros((2, 10), np.int32)
    source[0, :3] = [4, 5, 6]  # 3 tokens: at most 53 outputs
    source[1, :] = 7  # 10 tokens: at most 60 outputs
    for max_length, buffer, limits in ((None, 60, (53, 60)), (55, 55, (53, 55))):
        for decode in (greedy_decode, greedy_decode_uncached):
            output = np.asarray(
                decode(CONFIG, no_eos, source, bos_id=BOS, eos_id=EOS, max_length=max_length)
            )
            assert output.shape == (2, buffer)
            assert not (output == EOS).any()  # the premise: no row stopped at eos
            for row, limit in zip(output, limits, strict=True):
                assert (row[limit:] == CONFIG.pad_id).all()
                assert row[limit - 1] != CONFIG.pad_id
    # The default buffer is capped by config.max_len (64 < 10 + 50 + 20 padding columns).
    padded = np.pad(source, ((0, 0), (0, 20)))
    output = np.asarray(greedy_decode(CONFIG, no_eos, padded, bos_id=BOS, eos_id=EOS))
    assert output.shape == (2, CONFIG.max_len)
    unpadded = greedy_decode(CONFIG, no_eos, source, bos_id=BOS, eos_id=EOS)
    np.testing.assert_array_equal(output[:, :60], unpadded)
    assert (output[:, 60:] == CONFIG.pad_id).all()


def test_results_do_not_depend_on_other_rows_or_padding(eos_biased_params, source) -> None:
    rng = np.random.default_rng(7)
    other_rows = source.copy()
    other_rows[1:] = random_tokens(rng, 5, 7, CONFIG.vocab_size)
    more_padding = np.pad(source, ((0, 0), (0, 5)))
    key = jax.random.key(0)
    decoders = {
        "greedy": lambda s: greedy_decode(
            CONFIG, eos_biased_params, s, bos_id=BOS, eos_id=EOS, max_length=MAX_LENGTH
        ),
        "beam": lambda s: beam_search(
            CONFIG, eos_biased_params, s, bos_id=BOS, eos_id=EOS, max_length=MAX_LENGTH
        ),
        "sample": lambda s: sample_decode(
            CONFIG, eos_biased_params, s, key, bos_id=BOS, eos_id=EOS, max_length=MAX_LENGTH
        ),
    }
    for name, decode in decoders.items():
        base = jax.tree.map(np.asarray, decode(source))
        changed = jax.tree.map(np.asarray, decode(other_rows))
        padded = jax.tree.map(np.asarray, decode(more_padding))
        for expected, got in zip(jax.tree.leaves(base), jax.tree.leaves(changed), strict=True):
            np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, err_msg=name)
        for expected, got in zip(jax.tree.leaves(base), jax.tree.leaves(padded), strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stop", ["finished", "bound"])
def test_beam_size_one_is_greedy(params, eos_biased_params, source, stop) -> None:
    """Beam size 1 follows the greedy path: only the best extension can finish.

    With stop="finished" (the default) the row ends as soon as that one beam has finished, so
    beam size 1 is greedy decoding exactly, for any alpha. With stop="bound" and alpha = 0, a
    finished score is a log-probability, which extending the alive runner-up can only lower, so
    the search also stops where greedy decoding stops; with alpha > 0 it may keep searching and
    find a better-normalised hypothesis: never a worse one.
    """
    max_length = MAX_LENGTH
    limits = row_limits(source, max_length)
    same_as_greedy = 0
    for weights in (params, eos_biased_params):
        greedy = np.asarray(
            greedy_decode(CONFIG, weights, source, bos_id=BOS, eos_id=EOS, max_length=max_length)
        )
        for alpha in (0.0, 0.6):
            tokens, scores = beam_search(
                CONFIG,
                weights,
                source,
                bos_id=BOS,
                eos_id=EOS,
                beam_size=1,
                length_penalty=alpha,
                max_length=max_length,
                stop=stop,
            )
            assert tokens.shape == (6, 1, max_length) and scores.shape == (6, 1)
            for row in range(len(source)):
                greedy_tokens = hypothesis(greedy[row], limits[row])
                greedy_score = numpy_log_prob(CONFIG, weights, source[row], greedy_tokens) / gnmt(
                    len(greedy_tokens), alpha
                )
                exact = stop == "finished" or alpha == 0.0
                if exact or np.array_equal(tokens[row, 0], greedy[row]):
                    np.testing.assert_array_equal(tokens[row, 0], greedy[row])
                    np.testing.assert_allclose(scores[row, 0], greedy_score, rtol=1e-5)
                    same_as_greedy += alpha > 0
                else:
                    assert scores[row, 0] > greedy_score - 1e-5
    assert same_as_greedy  # the alpha > 0 comparison was exercised


@pytest.mark.parametrize("stop", ["finished", "bound"])
def test_beam_search_finds_the_brute_force_best(stop) -> None:
    """Every output of length <= 3 over a vocabulary of 5, scored in float64, against beam search.

    Beam size 20 = (V - 1)^(L - 2) * V makes the search exhaustive. At a step d < L - 1 (0-based)
    the alive prefixes are all (V - 1)^d prefixes without eos, so their (V - 1)^d * V <= 20
    extensions all lie within the beam: each one that ends in eos is finished, and each of the
    (V - 1)^(d + 1) <= 20 others stays alive. At the last step every extension ends (the length
    limit) with the same length penalty, so the beam, the 20 best by log-probability, holds the
    best one. Nothing that could win is ever pruned, and with stop="finished" the search cannot
    end early either: only 1 + 4 hypotheses end before the last step, fewer than 20. (The pad id
    is never written, so the candidates use the other 4 tokens: every count above only shrinks.)
    """
    config = ft.TransformerConfig.tiny(vocab_size=5, num_encoder_layers=1, num_decoder_layers=1)
    weights = ft.init_params(config, jax.random.key(3))
    source = random_tokens(np.random.default_rng(2), 3, 5, config.vocab_size)
    vocab, max_length, alpha = config.vocab_size, 3, 0.6
    tokens, scores = beam_search(
        config,
        weights,
        source,
        bos_id=BOS,
        eos_id=EOS,
        beam_size=(vocab - 1) ** (max_length - 2) * vocab,
        length_penalty=alpha,
        max_length=max_length,
        stop=stop,
    )
    # Every output the decoders may write: padding is never one.
    non_eos = [token for token in range(vocab) if token not in (EOS, config.pad_id)]
    winners = []
    for row in range(len(source)):
        candidates = [
            list(prefix) + [EOS]
            for n in range(max_length)
            for prefix in itertools.product(non_eos, repeat=n)
        ]
        candidates += [list(prefix) for prefix in itertools.product(non_eos, repeat=max_length)]
        scored = [
            (numpy_log_prob(config, weights, source[row], c) / gnmt(len(c), alpha), c)
            for c in candidates
        ]
        best_score, best = max(scored)
        winners.append(best)
        assert hypothesis(tokens[row, 0], max_length) == best
        np.testing.assert_allclose(scores[row, 0], best_score, rtol=1e-5)
        assert np.all(np.diff(np.asarray(scores[row])) <= 0)
    # The seed was picked so that some winners end at eos and others at the length limit.
    assert {best[-1] == EOS for best in winners} == {True, False}


@pytest.mark.parametrize(
    ("stop", "max_length", "endings"),
    [
        ("bound", MAX_LENGTH, {"eos", "limit"}),
        ("finished", MAX_LENGTH, None),
        ("finished", 3, None),
    ],
)
def test_beam_search_scores_are_correct_and_sorted(
    eos_biased_params, source, stop, max_length, endings
) -> None:
    alpha = 0.6
    tokens, scores = beam_search(
        CONFIG,
        eos_biased_params,
        source,
        bos_id=BOS,
        eos_id=EOS,
        beam_size=4,
        length_penalty=alpha,
        max_length=max_length,
        stop=stop,
    )
    tokens, scores = np.asarray(tokens), np.asarray(scores)
    assert tokens.shape == (6, 4, max_length) and tokens.dtype == np.int32
    assert scores.shape == (6, 4) and scores.dtype == np.float32
    limits = row_limits(source, max_length)
    kinds = set()
    for row in range(len(source)):
        assert np.all(np.diff(scores[row]) <= 0)  # best first
        found = [hypothesis(tokens[row, k], limits[row]) for k in range(4)]
        assert len({tuple(h) for h in found}) == 4  # four different hypotheses
        for k, tokens_k in enumerate(found):
            expected = numpy_log_prob(CONFIG, eos_biased_params, source[row], tokens_k)
            expected /= gnmt(len(tokens_k), alpha)
            np.testing.assert_allclose(scores[row, k], expected, rtol=1e-5, atol=1e-5)
            assert (tokens[row, k, len(tokens_k) :] == CONFIG.pad_id).all()
            kinds.add("eos" if tokens_k[-1] == EOS else "limit")
    # Hypotheses end at eos or at the length limit (kept, not lost); with the bound rule and
    # the full length, both occur.
    assert kinds and (endings is None or kinds == endings)
    if max_length == 3:
        assert "limit" in kinds


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
def test_sampling_without_randomness_is_greedy(eos_biased_params, source) -> None:
    greedy = greedy_decode(
        CONFIG, eos_biased_params, source, bos_id=BOS, eos_id=EOS, max_length=MAX_LENGTH
    )
    for settings in ({"temperature": 1e-6}, {"top_k": 1}, {"top_p": 1e-6}):
        sampled = sample_decode(
            CONFIG,
            eos_biased_params,
            source,
            jax.random.key(0),
            bos_id=BOS,
            eos_id=EOS,
            max_length=MAX_LENGTH,
            **settings,
        )
        np.testing.assert_array_equal(sampled, greedy, err_msg=str(settings))


def test_sampling_is_reproducible_and_ends_rows_at_eos(eos_biased_params, source) -> None:
    def sample(seed):
        return np.asarray(
            sample_decode(
                CONFIG,
                eos_biased_params,
                source,
                jax.random.key(seed),
                bos_id=BOS,
                eos_id=EOS,
                max_length=MAX_LENGTH,
            )
        )

    first, again, other = sample(1), sample(1), sample(2)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    for row in np.concatenate([first, other]):
        if EOS in row.tolist():
            assert (row[row.tolist().index(EOS) + 1 :] == CONFIG.pad_id).all()
    assert any(EOS in row.tolist() for row in first)  # some rows did stop early


@pytest.mark.parametrize(
    "settings",
    [{"temperature": 0.7}, {"top_k": 3}, {"temperature": 1.5, "top_k": 8, "top_p": 0.6}],
)
def test_first_token_frequencies_match_the_filtered_softmax(params, settings) -> None:
    """4000 rows of one source sentence: the first sampled tokens are 4000 independent draws."""
    rows = 4000
    source = np.repeat(np.array([[4, 5, 6, 7, 0]], np.int32), rows, axis=0)
    logits = np.asarray(ft.forward(CONFIG, params, source[:1], np.array([[BOS]])), np.float64)
    logits = logits[0, 0] / settings.get("temperature", 1.0)
    logits[CONFIG.pad_id] = -np.inf  # the decoders never write padding
    top_k = settings.get("top_k", 0) or CONFIG.vocab_size  # 0 = off: keep all
    logits = top_p_filter(top_k_filter(logits, top_k), settings.get("top_p", 1.0))
    expected = softmax(logits)
    sampled = sample_decode(
        CONFIG, params, source, jax.random.key(3), bos_id=BOS, eos_id=EOS, max_length=1, **settings
    )
    frequencies = np.bincount(np.asarray(sampled)[:, 0], minlength=CONFIG.vocab_size) / rows
    assert (frequencies[expected == 0] == 0).all()  # filtered tokens are never drawn
    tolerance = 5 * np.sqrt(expected * (1 - expected) / rows) + 1e-3
    assert (np.abs(frequencies - expected) <= tolerance).all(), (frequencies, expected)


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------
GOOD_SOURCE = np.ones((1, 3), np.int32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bos_id": 12}, "bos_id=12 is outside the vocabulary"),
        ({"eos_id": -1}, "eos_id=-1 is outside the vocabulary"),
        ({"eos_id": 2.0}, "eos_id must be an int token id"),
        ({"max_length": 0}, r"max_length must be in \[1, config.max_len=64\]"),
        ({"max_length": 65}, "max_length must be in"),
        ({"max_length": 4.5}, "max_length must be an int or None"),
    ],
)
@pytest.mark.parametrize("decode", [greedy_decode, greedy_decode_uncached, beam_search])
def test_decoders_reject_bad_arguments(params, decode, kwargs, message) -> None:
    arguments = {"bos_id": BOS, "eos_id": EOS, "max_length": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        decode(CONFIG, params, GOOD_SOURCE, **arguments)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beam_size": 0}, "beam_size must be an int >= 1"),
        ({"beam_size": 2.0}, "beam_size must be an int >= 1"),
        ({"length_penalty": -0.1}, r"length_penalty \(alpha\) must be a finite float >= 0"),
        ({"length_penalty": float("nan")}, "length_penalty"),
        ({"stop": "never"}, r"stop must be one of \['finished', 'bound'\]"),
    ],
)
def test_beam_search_rejects_bad_arguments(params, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        beam_search(CONFIG, params, GOOD_SOURCE, bos_id=BOS, eos_id=EOS, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be a positive finite float"),
        ({"temperature": -1.0}, "temperature must be a positive finite float"),
        ({"top_k": -1}, r"top_k must be an int in \[0, vocab_size=12\]"),
        ({"top_k": 13}, "top_k must be an int in"),
        ({"top_p": 0.0}, r"top_p must be a float in \(0, 1\]"),
        ({"top_p": 1.5}, "top_p must be a float in"),
        ({"bos_id": 99}, "bos_id=99 is outside the vocabulary"),
    ],
)
def test_sample_decode_rejects_bad_arguments(params, kwargs, message) -> None:
    arguments = {"bos_id": BOS, "eos_id": EOS, **kwargs}
    with pytest.raises(ValueError, match=message):
        sample_decode(CONFIG, params, GOOD_SOURCE, jax.random.key(0), **arguments)


def test_source_tokens_and_cache_length_are_checked(params) -> None:
    with pytest.raises(ValueError, match="source_tokens holds 1 id.* the first is 12"):
        greedy_decode(CONFIG, params, np.array([[3, 12]]), bos_id=BOS, eos_id=EOS)
    with pytest.raises(ValueError, match=r"source_tokens must have shape \[batch, length\]"):
        beam_search(CONFIG, params, np.array([3, 4]), bos_id=BOS, eos_id=EOS, check_inputs=False)
    with pytest.raises(ValueError, match=r"length must be an int in \[1, config.max_len=64\]"):
        init_cache(CONFIG, params, GOOD_SOURCE, 0)


# ---------------------------------------------------------------------------------------------
# Attention output
# ---------------------------------------------------------------------------------------------
ATTENTION_CONFIG = CONFIG.replace(num_decoder_layers=2)
ALL = AttentionSelection(layer="all", head="all")


@pytest.fixture(scope="module")
def attention_params():
    params = jax.tree.map(np.array, ft.init_params(ATTENTION_CONFIG, jax.random.key(8)))
    params["shared_embedding"]["embedding"][EOS] *= 2.5  # rows end at different steps
    return params


def numpy_cross_attention(params, source_row, tokens: list[int]) -> np.ndarray:
    """Every decoder layer's cross-attention [len(tokens), layers, heads, src_len] in float64
    (the independent NumPy Transformer, teacher-forced on `tokens`)."""
    weights: list[np.ndarray] = []
    decoder_input = np.array([[BOS] + tokens[:-1]])
    transformer_logits(params, ATTENTION_CONFIG.to_dict(), source_row[None], decoder_input, weights)
    return np.stack(weights, axis=1)[0].transpose(2, 0, 1, 3)  # [tgt, layers, heads, src]


def assert_attention_of_hypothesis(attention, params, source_row, row, limit) -> None:
    """The decoder's attention for one output row: the NumPy forward pass's on its tokens at
    each of its positions, zeros after its end."""
    tokens = hypothesis(row, limit)
    expected = numpy_cross_attention(params, source_row, tokens)
    np.testing.assert_allclose(attention[: len(tokens)], expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(attention[len(tokens) :]) == 0.0)


@pytest.mark.parametrize("scanned", [False, True])
@pytest.mark.parametrize("decoder", ["cached", "uncached"])
def test_greedy_attention_is_the_forward_pass_attention_on_the_output(
    attention_params, source, scanned, decoder
) -> None:
    """Cached and uncached greedy decoding return, for every output token, the cross-attention
    of the full forward pass over the chosen tokens (every layer and head); padding columns 0."""
    config, params = ATTENTION_CONFIG.replace(scan_layers=scanned), attention_params
    if scanned:
        params = ft.model.stack_layer_params(params)
    decode = greedy_decode if decoder == "cached" else greedy_decode_uncached
    args = dict(bos_id=BOS, eos_id=EOS, max_length=MAX_LENGTH, attention=ALL)
    tokens, attention = decode(config, params, source, **args)
    assert attention.shape == (len(source), MAX_LENGTH, 2, CONFIG.num_heads, source.shape[1])
    np.testing.assert_array_equal(
        tokens, decode(config, params, source, **{**args, "attention": None})
    )
    lengths = [len(hypothesis(row, MAX_LENGTH)) for row in np.asarray(tokens)]
    assert min(lengths) < MAX_LENGTH  # some rows end early: the zeros after the end are tested
    for b, row in enumerate(np.asarray(tokens)):
        assert_attention_of_hypothesis(attention[b], attention_params, source[b], row, MAX_LENGTH)


def test_attention_columns_of_source_padding_are_zero(attention_params, source) -> None:
    _, attention = greedy_decode(
        ATTENTION_CONFIG,
        attention_params,
        source,
        bos_id=BOS,
        eos_id=EOS,
        max_length=MAX_LENGTH,
        attention=ALL,
    )
    padding = np.asarray(source) == CONFIG.pad_id  # [batch, src_len]
    assert padding.any()
    assert np.all(np.asarray(attention).transpose(0, 4, 1, 2, 3)[padding] == 0.0)


@pytest.mark.parametrize("scanned", [False, True])
def test_beam_attention_follows_each_hypothesis(attention_params, source, scanned) -> None:
    """Every finished hypothesis of beam search comes with the attention of the forward pass
    over its own tokens: rows reordered between steps carry their hypothesis's attention."""
    config, params = ATTENTION_CONFIG.replace(scan_layers=scanned), attention_params
    if scanned:
        params = ft.model.stack_layer_params(params)
    args = dict(bos_id=BOS, eos_id=EOS, beam_size=3, max_length=MAX_LENGTH)
    tokens, scores, attention = beam_search(config, params, source, **args, attention=ALL)
    plain_tokens, plain_scores = beam_search(config, params, source, **args)
    np.testing.assert_array_equal(tokens, plain_tokens)
    np.testing.assert_array_equal(scores, plain_scores)
    assert attention.shape == (len(source), 3, MAX_LENGTH, 2, CONFIG.num_heads, source.shape[1])
    # The beams of a sentence differ in their tokens before their last one: what they attended
    # with differs too, so a hypothesis carrying another's attention would fail below.
    for b in range(len(source)):
        for k in range(3):
            assert np.isfinite(scores[b, k])
            assert_attention_of_hypothesis(
                attention[b, k], attention_params, source[b], np.asarray(tokens[b, k]), MAX_LENGTH
            )


def test_attention_selection_picks_layers_and_heads(attention_params, source) -> None:
    """Indices (negative from the end) pick a layer or head, "mean" averages, "all" keeps; the
    selection is the same slice or mean of the full weights."""
    args = dict(bos_id=BOS, eos_id=EOS, max_length=MAX_LENGTH)
    _, full = greedy_decode(ATTENTION_CONFIG, attention_params, source, **args, attention=ALL)
    full = np.asarray(full)
    cases = {
        AttentionSelection(layer=-1, head="mean"): full[:, :, 1:].mean(axis=3, keepdims=True),
        AttentionSelection(layer=0, head=1): full[:, :, :1, 1:2],
        AttentionSelection(layer="mean", head="all"): full.mean(axis=2, keepdims=True),
        AttentionSelection(layer="all", head=-1): full[:, :, :, -1:],
    }
    for selection, expected in cases.items():
        _, attention = greedy_decode(
            ATTENTION_CONFIG, attention_params, source, **args, attention=selection
        )
        np.testing.assert_allclose(attention, expected, rtol=1e-6, atol=1e-7)
    # On a NumPy array the selection stays on the host; unresolved negative indices count from
    # the end.
    on_host = AttentionSelection(layer=-1, head=-2).select(full)
    assert isinstance(on_host, np.ndarray)
    np.testing.assert_array_equal(on_host, full[:, :, 1:2, -2:-1])
    # Each selected row is a distribution over the source (or all zero after the row's end).
    _, mean = greedy_decode(
        ATTENTION_CONFIG, attention_params, source, **args, attention=AttentionSelection()
    )
    sums = np.asarray(mean).sum(axis=-1)
    assert np.all(np.isclose(sums, 1.0, atol=1e-5) | (sums == 0.0))


@pytest.mark.parametrize(
    "selection, message",
    [
        (dict(layer=2), "attention layer 2 is out of range: the model has 2 decoder layers"),
        (dict(head=-5), f"attention head -5 is out of range: the model has {CONFIG.num_heads}"),
        (dict(head="max"), "attention head must be an index or one of ['mean', 'all']"),
        ("all", "attention must be a flax_transformer.decoding.AttentionSelection or None"),
    ],
)
def test_bad_attention_selections_are_refused(attention_params, source, selection, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        greedy_decode(
            ATTENTION_CONFIG,
            attention_params,
            source,
            bos_id=BOS,
            eos_id=EOS,
            attention=selection if isinstance(selection, str) else AttentionSelection(**selection),
        )
