"""The model-agnostic searches over a toy step function whose outputs are known in closed form,
beam search's pieces on hand-worked states, and the filters against NumPy.

The toy model: p(next token | step, previous token, first output token), a table. The step
function reads the first output token from its cache, so beam search finds the right sequences
only if it reorders the cache rows with the hypotheses.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_transformer import search
from tests.numpy_reference import softmax, top_k_filter, top_p_filter

PAD, BOS, EOS, A, B = 0, 1, 2, 3, 4
VOCAB, MAX_LENGTH = 5, 3


def next_token_probs(step: int, previous: int, first_output: int) -> dict[int, float]:
    """The toy model. Greedy search takes A first (0.5 > 0.4), then A, A: p = 0.5 * 0.4 * 0.45 =
    0.09. The best sequence starts with B: B, A, eos has p = 0.4 * 0.9 * 0.9 = 0.324."""
    if step == 0:
        return {A: 0.5, B: 0.4, EOS: 0.1}
    if step == 1:
        return {A: 0.4, B: 0.35, EOS: 0.25} if previous == A else {A: 0.9, B: 0.05, EOS: 0.05}
    return {EOS: 0.9, A: 0.05, B: 0.05} if first_output == B else {A: 0.45, EOS: 0.3, B: 0.25}


PROBS = np.zeros((MAX_LENGTH, VOCAB, VOCAB, VOCAB))  # [step, previous, first output, next]
for _step, _previous, _first in itertools.product(range(MAX_LENGTH), range(VOCAB), range(VOCAB)):
    for _token, _p in next_token_probs(_step, _previous, _first).items():
        PROBS[_step, _previous, _first, _token] = _p
with np.errstate(divide="ignore"):
    LOG_PROBS = jnp.asarray(np.log(PROBS), jnp.float32)  # -inf: a token the model never writes
# Every output the toy model can produce: up to eos, or MAX_LENGTH tokens without it.
EVERY_OUTPUT = [
    list(prefix) + [EOS]
    for n in range(MAX_LENGTH)
    for prefix in itertools.product((A, B), repeat=n)
] + [list(prefix) for prefix in itertools.product((A, B), repeat=MAX_LENGTH)]


def toy_step(tokens, cache, step):
    """tokens_to_logits of the toy model. cache = (history [rows, MAX_LENGTH]: the tokens fed so
    far, marker [rows]: a row label the step leaves alone)."""
    history, marker = cache
    history = jax.lax.dynamic_update_index_in_dim(history, tokens, step, axis=1)
    return LOG_PROBS[step, tokens, history[:, 1]], (history, marker)


def toy_cache(rows: int):
    return jnp.full((rows, MAX_LENGTH), PAD, jnp.int32), 10 * jnp.arange(1, rows + 1)


def sequence_prob(tokens: list[int]) -> float:
    """p(tokens) in float64, multiplied out of `next_token_probs`."""
    p, previous = 1.0, BOS
    for step, token in enumerate(tokens):
        p *= next_token_probs(step, previous, tokens[0] if step > 0 else PAD).get(token, 0.0)
        previous = token
    return p


def gnmt(length: int, alpha: float) -> float:
    return ((5 + length) / 6) ** alpha


SETTINGS = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD, "max_length": MAX_LENGTH}


# ---------------------------------------------------------------------------------------------
# Greedy search and sampling
# ---------------------------------------------------------------------------------------------
def test_greedy_search_takes_the_locally_best_token() -> None:
    limits = jnp.array([3, 1, 2])
    tokens = search.greedy_search(toy_step, toy_cache(3), length_limits=limits, **SETTINGS)
    np.testing.assert_array_equal(tokens, [[A, A, A], [A, PAD, PAD], [A, A, PAD]])
    # A row ends at eos: with A as the end token, every row stops after its first token.
    tokens = search.greedy_search(
        toy_step, toy_cache(3), length_limits=limits, **{**SETTINGS, "eos_id": A}
    )
    np.testing.assert_array_equal(tokens, [[A, PAD, PAD]] * 3)


def test_greedy_search_never_writes_the_banned_token() -> None:
    # Without A, greedy takes B (0.4 > 0.1) first, and never A (0.9 after B).
    tokens = search.greedy_search(
        toy_step, toy_cache(1), length_limits=jnp.array([3]), banned_id=A, **SETTINGS
    )
    assert tokens[0, 0] == B and A not in np.asarray(tokens).tolist()[0]


def test_beam_search_bans_after_log_softmax() -> None:
    """The banned token's probability stays in the normaliser: the other tokens' scores are their
    log-probabilities under the full softmax (0.4 and 0.1 after banning A), not renormalised."""
    tokens, scores = search.beam_search(
        toy_step,
        toy_cache(1),
        beam_size=2,
        length_limits=jnp.array([1]),
        alpha=0.0,
        banned_id=A,
        **SETTINGS,
    )
    np.testing.assert_array_equal(tokens[0, :, 0], [B, EOS])
    np.testing.assert_allclose(scores[0], [math.log(0.4), math.log(0.1)], rtol=1e-6)


def test_sample_search_draws_whole_sequences_with_the_model_probabilities() -> None:
    """8000 rows: the frequency of each output sequence against its closed-form probability."""
    rows = 8000
    tokens = search.sample_search(
        toy_step,
        toy_cache(rows),
        jax.random.key(0),
        length_limits=jnp.full((rows,), MAX_LENGTH),
        **SETTINGS,
    )
    counts: dict[tuple[int, ...], int] = {}
    for row in np.asarray(tokens).tolist():
        key = tuple(row[: row.index(EOS) + 1] if EOS in row else row)
        counts[key] = counts.get(key, 0) + 1
    expected = {tuple(output): sequence_prob(output) for output in EVERY_OUTPUT}
    assert math.isclose(sum(expected.values()), 1.0)  # every possible output is listed
    assert set(counts) <= set(expected)
    for output, p in expected.items():
        frequency = counts.get(output, 0) / rows
        assert abs(frequency - p) <= 5 * math.sqrt(p * (1 - p) / rows) + 1e-3, (output, p)


def test_sample_search_row_keys_and_filters() -> None:
    rows = 4000
    limits = jnp.full((rows,), 1)
    first = {}
    for name, options in {
        "plain": {},
        "temperature": {"temperature": 0.5},
        "top_k": {"top_k": 2},
        "top_p": {"top_p": 0.55},
    }.items():
        tokens = search.sample_search(
            toy_step,
            toy_cache(rows),
            jax.random.key(1),
            length_limits=limits,
            **options,
            **SETTINGS,
        )
        first[name] = np.bincount(np.asarray(tokens)[:, 0], minlength=VOCAB) / rows
    p = PROBS[0, BOS, PAD]
    tempered = p**2 / (p**2).sum()  # softmax(log p / 0.5)
    expected = {
        "plain": p,
        "temperature": tempered,
        "top_k": np.array([0, 0, 0, 0.5, 0.4]) / 0.9,  # A and B
        "top_p": np.array([0, 0, 0, 0.5, 0.4]) / 0.9,  # A alone holds 0.5 < 0.55: A and B
    }
    for name, frequencies in first.items():
        tolerance = 5 * np.sqrt(expected[name] * (1 - expected[name]) / rows) + 1e-3
        assert (np.abs(frequencies - expected[name]) <= tolerance).all(), name
    # Row i at step 0 draws with the key fold_in(fold_in(rng, 0), i), whatever the batch.
    rng = jax.random.key(7)
    tokens = search.sample_search(
        toy_step, toy_cache(5), rng, length_limits=jnp.full((5,), 1), **SETTINGS
    )
    for row in range(5):
        key = jax.random.fold_in(jax.random.fold_in(rng, 0), row)
        assert tokens[row, 0] == jax.random.categorical(key, LOG_PROBS[0, BOS, PAD])


def test_sampling_without_randomness_is_greedy_search() -> None:
    limits = jnp.full((4,), MAX_LENGTH)
    for options in ({"temperature": 1e-6}, {"top_k": 1}, {"top_p": 1e-6}):
        tokens = search.sample_search(
            toy_step, toy_cache(4), jax.random.key(0), length_limits=limits, **options, **SETTINGS
        )
        np.testing.assert_array_equal(tokens, [[A, A, A]] * 4, err_msg=str(options))


# ---------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stop", search.BEAM_STOP_RULES)
@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_search_finds_the_sequence_greedy_search_misses(stop, alpha) -> None:
    """Beam 2 keeps B after the first step (B, A: 0.36 beats A, A: 0.2) and finds B, A, eos."""
    best = max(EVERY_OUTPUT, key=lambda o: math.log(sequence_prob(o)) / gnmt(len(o), alpha))
    assert best == [B, A, EOS]  # the premise, by brute force
    tokens, scores = search.beam_search(
        toy_step,
        toy_cache(1),
        beam_size=2,
        length_limits=jnp.array([MAX_LENGTH]),
        alpha=alpha,
        stop=stop,
        **SETTINGS,
    )
    np.testing.assert_array_equal(tokens, [[[B, A, EOS], [A, A, A]]])
    expected = [
        math.log(0.4 * 0.9 * 0.9) / gnmt(3, alpha),
        math.log(0.5 * 0.4 * 0.45) / gnmt(3, alpha),
    ]
    np.testing.assert_allclose(scores[0], expected, rtol=1e-6)


def test_beam_search_with_a_cache_that_reorders_itself() -> None:
    """`reorder_cache`: the toy model's cache kept per sentence, [batch, beam, ...], and given
    for every beam; the search must find the same sequences as with the row cache."""
    beam = 2

    def per_sentence_step(tokens, cache, step):
        history, marker = cache
        logits, (history, marker) = toy_step(
            tokens, (history.reshape(-1, MAX_LENGTH), marker.reshape(-1)), step
        )
        return logits, (history.reshape(-1, beam, MAX_LENGTH), marker.reshape(-1, beam))

    def reorder(cache, parents):
        return jax.tree.map(lambda leaf: search._gather_beams(leaf, parents), cache)

    history, marker = toy_cache(beam)
    tokens, scores = search.beam_search(
        per_sentence_step,
        (history[None], marker[None]),
        beam_size=beam,
        length_limits=jnp.array([MAX_LENGTH]),
        alpha=0.0,
        reorder_cache=reorder,
        **SETTINGS,
    )
    np.testing.assert_array_equal(tokens, [[[B, A, EOS], [A, A, A]]])
    np.testing.assert_allclose(scores[0], np.log([0.4 * 0.9 * 0.9, 0.5 * 0.4 * 0.45]), rtol=1e-6)


def test_beam_init() -> None:
    cache = (jnp.array([[5], [6]]), jnp.array([10, 20]))
    state = search.beam_init(cache, batch=2, beam_size=3, bos_id=BOS, pad_id=PAD, max_length=2)
    assert state.step == 0
    start = [[BOS, PAD, PAD]] * 3
    np.testing.assert_array_equal(state.alive_tokens, [start, start])
    np.testing.assert_array_equal(state.finished_tokens, [start, start])
    np.testing.assert_array_equal(state.alive_log_probs, [[0, -np.inf, -np.inf]] * 2)
    np.testing.assert_array_equal(state.finished_scores, np.full((2, 3), -np.inf))
    np.testing.assert_array_equal(state.finished_flags, np.zeros((2, 3), bool))
    np.testing.assert_array_equal(state.cache[0], [[5], [5], [5], [6], [6], [6]])
    np.testing.assert_array_equal(state.cache[1], [10, 10, 10, 20, 20, 20])


def hand_state_after_step_0() -> search.BeamState:
    """One sentence, beam 2, after the first step: A (p 0.5) and B (p 0.4) alive."""
    return search.BeamState(
        step=jnp.int32(1),
        alive_tokens=jnp.array([[[BOS, A, PAD, PAD], [BOS, B, PAD, PAD]]]),
        alive_log_probs=jnp.log(jnp.array([[0.5, 0.4]])),
        cache=(jnp.full((2, MAX_LENGTH), PAD, jnp.int32).at[:, 0].set(BOS), jnp.array([10, 20])),
        finished_tokens=jnp.array([[[BOS, PAD, PAD, PAD]] * 2]),
        finished_scores=jnp.full((1, 2), -jnp.inf),
        finished_flags=jnp.zeros((1, 2), bool),
    )


def test_beam_step_by_hand() -> None:
    rules = {"length_limits": jnp.array([MAX_LENGTH]), "alpha": 0.6, "stop": "finished"}
    # Step 1. Extensions: B A 0.36, A A 0.2, A B 0.175, A eos 0.125 (the fourth: not in the
    # beam, so not finished). Alive: B A (from beam 1) and A A (from beam 0): the cache rows swap.
    state = search.beam_step(hand_state_after_step_0(), toy_step, eos_id=EOS, **rules)
    assert state.step == 2
    np.testing.assert_array_equal(state.alive_tokens, [[[BOS, B, A, PAD], [BOS, A, A, PAD]]])
    np.testing.assert_allclose(state.alive_log_probs, np.log([[0.36, 0.2]]), rtol=1e-6)
    np.testing.assert_array_equal(state.cache[1], [20, 10])
    np.testing.assert_array_equal(state.cache[0][:, 1], [B, A])  # the first outputs, fed at step 1
    np.testing.assert_array_equal(state.finished_flags, [[False, False]])
    np.testing.assert_array_equal(state.finished_scores, [[-np.inf, -np.inf]])
    assert not search.beam_done(state, **rules)[0]
    # Step 2 reaches the length limit: every extension ends; the two best of the beam finish.
    state = search.beam_step(state, toy_step, eos_id=EOS, **rules)
    np.testing.assert_array_equal(state.finished_tokens, [[[BOS, B, A, EOS], [BOS, A, A, A]]])
    np.testing.assert_array_equal(state.finished_flags, [[True, True]])
    expected = np.log([0.4 * 0.9 * 0.9, 0.5 * 0.4 * 0.45]) / gnmt(3, 0.6)
    np.testing.assert_allclose(state.finished_scores[0], expected, rtol=1e-6)
    assert search.beam_done(state, **rules)[0]


def test_a_done_row_keeps_its_finished_hypotheses() -> None:
    state = hand_state_after_step_0().replace(
        finished_scores=jnp.array([[-5.0, -6.0]]), finished_flags=jnp.ones((1, 2), bool)
    )
    rules = {"length_limits": jnp.array([2]), "alpha": 0.0, "stop": "finished"}
    assert search.beam_done(state, **rules)[0]
    # Its extensions B A (log 0.36) and A A (log 0.2) would beat both kept scores: not taken.
    after = search.beam_step(state, toy_step, eos_id=EOS, **rules)
    np.testing.assert_array_equal(after.finished_scores, [[-5.0, -6.0]])
    np.testing.assert_array_equal(after.finished_tokens, state.finished_tokens)


def test_beam_done_by_hand() -> None:
    """Four rows at step 2 with limit 3, alpha 0.6; best alive log p = log 0.225."""
    flags = jnp.array([[True, False], [True, True], [True, True], [True, True]])
    worst_finished = [-1.0, -1.0, -1.0, -1.5]
    state = search.BeamState(
        step=jnp.int32(2),
        alive_tokens=jnp.zeros((4, 2, 4), jnp.int32),
        alive_log_probs=jnp.array([[math.log(0.225), -5.0]] * 3 + [[-jnp.inf, -jnp.inf]]),
        cache=(),
        finished_tokens=jnp.zeros((4, 2, 4), jnp.int32),
        finished_scores=jnp.array([[-0.5, w] for w in worst_finished]),
        finished_flags=flags,
    )
    limits = jnp.array([3, 3, 3, 3])
    finished = search.beam_done(state, length_limits=limits, alpha=0.6, stop="finished")
    np.testing.assert_array_equal(finished, [False, True, True, True])  # row 3: none alive
    # "bound": the best an alive hypothesis can reach is log 0.225 / lp(3) = -1.2551...
    bound = math.log(0.225) / gnmt(3, 0.6)
    assert -1.5 < bound < -1.0
    state = state.replace(alive_log_probs=state.alive_log_probs.at[3].set([math.log(0.225), -5.0]))
    by_bound = search.beam_done(state, length_limits=limits, alpha=0.6, stop="bound")
    # Row 0: a slot is empty. Rows 1, 2: the bound is below the worst kept score -1.0. Row 3:
    # -1.2551 could still beat -1.5.
    np.testing.assert_array_equal(by_bound, [False, True, True, False])
    # Any rule: a row at its length limit is done.
    at_limit = search.beam_done(
        state, length_limits=jnp.array([2, 3, 3, 2]), alpha=0.6, stop="bound"
    )
    np.testing.assert_array_equal(at_limit, [True, True, True, True])


def test_gnmt_length_penalty_by_hand() -> None:
    np.testing.assert_allclose(search.gnmt_length_penalty(1, 0.6), 1.0)
    np.testing.assert_allclose(search.gnmt_length_penalty(7, 0.5), math.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(search.gnmt_length_penalty(13, 0.0), 1.0)


def test_repeat_rows() -> None:
    tree = {"a": jnp.array([[1, 2], [3, 4]]), "b": jnp.array([5, 6])}
    repeated = search.repeat_rows(tree, 2)
    np.testing.assert_array_equal(repeated["a"], [[1, 2], [1, 2], [3, 4], [3, 4]])
    np.testing.assert_array_equal(repeated["b"], [5, 5, 6, 6])


# ---------------------------------------------------------------------------------------------
# Filters and the host-side clean-up
# ---------------------------------------------------------------------------------------------
def test_top_k_filter_matches_numpy() -> None:
    logits = np.random.default_rng(3).standard_normal((5, 12)).astype(np.float32)
    for k in (1, 3, 12):
        np.testing.assert_array_equal(search.top_k_filter(logits, k), top_k_filter(logits, k))
    np.testing.assert_array_equal(search.top_k_filter(logits, 0), logits)  # 0 = off
    tied = np.array([[1.0, 3.0, 2.0, 3.0, 2.0]], np.float32)
    np.testing.assert_array_equal(search.top_k_filter(tied, 3), [[-np.inf, 3.0, 2.0, 3.0, 2.0]])


def test_top_p_filter_matches_numpy() -> None:
    logits = np.random.default_rng(4).standard_normal((5, 12)).astype(np.float32) * 2
    probs = softmax(logits.astype(np.float64))
    for p in (1e-6, 0.3, 0.75, 0.95):
        # The premise: no token sits at the boundary, where float32 rounding could decide.
        cumulative = np.cumsum(-np.sort(-probs, axis=-1), axis=-1)
        assert np.abs(cumulative - p).min() > 1e-4
        np.testing.assert_array_equal(search.top_p_filter(logits, p), top_p_filter(logits, p))
    np.testing.assert_array_equal(search.top_p_filter(logits, 1.0), logits)  # 1 = off
    assert (np.isfinite(np.asarray(search.top_p_filter(logits, 1e-6))).sum(axis=-1) == 1).all()


def test_best_log_probs_match_numpy_log_softmax() -> None:
    logits = np.random.default_rng(5).standard_normal((4, 9)).astype(np.float32) * 3
    logits[0, [3, 7]] = logits[0].max() + 1.0  # a tie for the first place
    log_softmax = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    for banned in (None, int(np.argmax(logits[1])), 8):
        log_probs, tokens = map(np.asarray, search.best_log_probs(logits, 3, banned))
        assert log_probs.shape == tokens.shape == (4, 3 if banned is None else 4)
        for row in range(4):
            order = [t for t in np.argsort(-log_softmax[row], kind="stable") if t != banned][:3]
            finite = np.isfinite(log_probs[row])
            assert finite.sum() >= 3 and (tokens[row][~finite] == banned).all()
            np.testing.assert_array_equal(tokens[row][finite][:3], order)
            np.testing.assert_allclose(
                log_probs[row][finite][:3], log_softmax[row, order], rtol=1e-6
            )
    assert list(tokens[0, :2]) == [3, 7]  # the tie: the lower id first
    # A vocabulary smaller than k: every token.
    log_probs, tokens = search.best_log_probs(logits[:, :2], 3)
    assert tokens.shape == (4, 2) and set(np.asarray(tokens[0]).tolist()) == {0, 1}


def numpy_top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: a stable sort of each row, largest first (ties: the lower index first)."""
    order = np.argsort(-values, axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(values, order, axis=-1), order


def large_k_cases() -> list[np.ndarray]:
    """Rows long enough for the two-pass path on CPU (n >= 2 * k * TOP_K_CHUNK for k <= 5)."""
    rng = np.random.default_rng(7)
    n = 10 * search.TOP_K_CHUNK + 77  # a tail of 77 tokens after the last whole chunk
    distinct = rng.standard_normal((6, n)).astype(np.float32)
    last_whole = 10 * search.TOP_K_CHUNK
    distinct[0, n - 1] = 100.0  # the best token in the tail
    distinct[1, last_whole - 1], distinct[1, last_whole] = 50.0, 49.0  # across the boundary
    distinct[2, :] = -np.inf  # a row of banned tokens but three
    distinct[2, [5, 900, n - 2]] = [1.0, 3.0, 2.0]
    ties = rng.integers(0, 3, (6, n)).astype(np.float32)  # thousands of ties for every place
    ties[3, :] = 0.0
    ties[4, ::1000] = 2.0  # ties spread over chunks
    return [distinct, ties]


@pytest.mark.parametrize("k", [1, 2, 5])
def test_largest_k_equals_a_stable_sort_on_long_rows(k) -> None:
    for values in large_k_cases():
        expected_values, expected_indices = numpy_top_k(values, k)
        for function in (search.largest_k, search._top_k_by_chunks):
            top_values, indices = map(np.asarray, jax.jit(function, static_argnums=1)(values, k))
            assert indices.dtype == np.int32
            np.testing.assert_array_equal(indices, expected_indices)
            np.testing.assert_array_equal(top_values, expected_values)


def test_largest_k_keeps_any_leading_axes() -> None:
    values = large_k_cases()[0]
    expected_values, expected_indices = numpy_top_k(values, 3)
    for shape in ((2, 3), ()):
        rows = values[: int(np.prod(shape))].reshape(*shape, -1)
        top_values, indices = map(np.asarray, search.largest_k(rows, 3))
        assert indices.shape == (*shape, 3)
        np.testing.assert_array_equal(
            indices.reshape(-1, 3), expected_indices[: len(indices.reshape(-1, 3))]
        )
        np.testing.assert_array_equal(
            top_values.reshape(-1, 3), expected_values[: len(indices.reshape(-1, 3))]
        )


def test_largest_k_on_short_rows_is_top_k() -> None:
    values = np.random.default_rng(8).integers(0, 4, (3, 40)).astype(np.float32)
    top_values, indices = map(np.asarray, search.largest_k(values, 6))
    expected_values, expected_indices = numpy_top_k(values, 6)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(top_values, expected_values)


def test_best_log_probs_in_blocks_match_numpy_on_a_large_vocabulary() -> None:
    """The beam search call: blocks of 4 rows (a sentence's beams), k = 8 and a banned id, a
    vocabulary long enough for the two-pass top-k, against log_softmax in float64."""
    rng = np.random.default_rng(9)
    logits = (rng.standard_normal((8, 5000)) * 3).astype(np.float32)
    banned = int(np.argmax(logits[5]))
    log_softmax = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    log_probs, tokens = map(np.asarray, search.best_log_probs(logits, 8, banned, 4))
    assert log_probs.shape == tokens.shape == (8, 9)
    for row in range(8):
        order = [t for t in np.argsort(-log_softmax[row], kind="stable") if t != banned][:8]
        finite = np.isfinite(log_probs[row])
        np.testing.assert_array_equal(tokens[row][finite][:8], order)
        np.testing.assert_allclose(log_probs[row][finite][:8], log_softmax[row, order], rtol=1e-5)
    assert not np.isfinite(log_probs[5]).all() and tokens[5, 0] == banned


@pytest.mark.parametrize("rows_per_block", [1, 2, 8])
def test_best_log_probs_do_not_depend_on_the_block(rows_per_block) -> None:
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((8, 3000)) * 3).astype(np.float32)
    by_row = jax.tree.map(np.asarray, search.best_log_probs(logits, 8, 0, rows_per_block))
    whole = jax.tree.map(np.asarray, search.best_log_probs(logits, 8, 0, 4))
    np.testing.assert_array_equal(by_row[1], whole[1])  # the same tokens
    np.testing.assert_allclose(by_row[0], whole[0], rtol=1e-6)  # the row sums' rounding


def test_block_rows_is_the_largest_divisor_of_the_beam_that_fits_half_an_l2() -> None:
    assert search.BLOCK_BYTES == 512 * 1024
    assert search.block_rows(4, 58101) == 2  # 4 rows are 908 KiB, 2 rows 454 KiB
    assert search.block_rows(4, 8000) == 4
    assert search.block_rows(6, 58101) == 2
    assert search.block_rows(8, 16384) == 8 and search.block_rows(8, 16385) == 4
    assert search.block_rows(5, 58101) == 5  # only 1 fits: the whole beam instead
    assert search.block_rows(4, 200_000) == 4
    assert search.block_rows(1, 8000) == 1


def test_the_fast_paths_export_with_a_symbolic_batch() -> None:
    """jax.export (train.export) lowers the searches with a symbolic batch: the chunks' and the
    blocks' reshapes must not need its value."""
    (sentences,) = jax.export.symbolic_shape("b")
    rng = np.random.default_rng(10)
    logits = rng.standard_normal((12, 5000)).astype(np.float32)

    def beam_and_greedy_picks(logits):
        return search.best_log_probs(logits, 8, 0, 4), search.largest_k(logits, 1)

    exported = jax.export.export(jax.jit(beam_and_greedy_picks))(
        jax.ShapeDtypeStruct((4 * sentences, 5000), jnp.float32)
    )
    for rows in (4, 12):
        got = jax.tree.map(np.asarray, exported.call(logits[:rows]))
        want = jax.tree.map(np.asarray, beam_and_greedy_picks(logits[:rows]))
        jax.tree.map(np.testing.assert_array_equal, got, want)


def test_strip_after_eos() -> None:
    tokens = np.array([[5, 6, EOS, 7, 0], [5, 0, 6, 0, 0], [EOS, 0, 0, 0, 0]])
    assert search.strip_after_eos(tokens, EOS, 0) == [[5, 6], [5, 6], []]


def test_the_readme_search_example_runs_and_scores_its_hypotheses():
    """The README's example of beam search over your own step function (a bigram model): each
    returned hypothesis carries its GNMT-normalised log-probability, recomputed here in float64
    from the bigram table, best first and all distinct."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "search." in b]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    tokens, scores = np.asarray(namespace["tokens"]), np.asarray(namespace["scores"])
    log_probs = np.asarray(namespace["log_probs"], np.float64)
    assert tokens.shape == (3, 4, 8) and scores.shape == (3, 4)
    for sentence in range(3):
        hypotheses = []
        for k, row in enumerate(tokens[sentence].tolist()):
            sequence = row[: row.index(2) + 1] if 2 in row else row  # to eos, or all 8
            previous, total = 1, 0.0  # from the start token
            for token in sequence:
                total += log_probs[previous, token]
                previous = token
            expected = total / ((5 + len(sequence)) / 6) ** 0.6
            assert scores[sentence, k] == pytest.approx(expected, abs=1e-4)
            hypotheses.append(tuple(sequence))
        assert len(set(hypotheses)) == 4
        assert np.all(np.diff(scores[sentence]) <= 0)  # best first
