"""Word alignments from attention: hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from flax_transformer.alignment import (
    alignment_scores,
    hard_alignment,
    pharaoh,
    word_attention,
)

# Three target pieces over four source pieces (the last source piece is eos).
WEIGHTS = np.array(
    [
        [0.1, 0.6, 0.2, 0.1],
        [0.5, 0.1, 0.3, 0.1],
        [0.2, 0.2, 0.5, 0.1],
    ]
)


def test_token_level_alignment_is_the_argmax_of_each_row() -> None:
    assert hard_alignment(WEIGHTS) == [(1, 0), (0, 1), (2, 2)]
    assert pharaoh(hard_alignment(WEIGHTS)) == "1-0 0-1 2-2"


def test_words_sum_source_pieces_and_average_target_pieces() -> None:
    """Source pieces 0 and 1 form word 0, piece 2 word 1, eos none; target pieces 0 and 1 form
    word 0, piece 2 word 1. Worked by hand:
    target word 0 = mean of rows 0 and 1 = [0.3, 0.35, 0.25, 0.1] -> source words [0.65, 0.25]
    target word 1 = row 2 -> source words [0.4, 0.5]."""
    words = word_attention(WEIGHTS, source_words=[0, 0, 1, -1], target_words=[0, 0, 1])
    np.testing.assert_allclose(words, [[0.65, 0.25], [0.4, 0.5]])
    assert hard_alignment(WEIGHTS, [0, 0, 1, -1], [0, 0, 1]) == [(0, 0), (1, 1)]


def test_summing_pieces_can_change_the_winner() -> None:
    """The most attended piece is in word 1, but word 0's two pieces together get more."""
    weights = np.array([[0.3, 0.3, 0.4]])
    assert hard_alignment(weights) == [(2, 0)]
    assert hard_alignment(weights, source_words=[0, 0, 1]) == [(0, 0)]


def test_tokens_of_no_word_are_never_linked() -> None:
    """eos (-1) on either side: its column adds to no word, its row gets no link; a row with
    no attention at all (nothing to attend to) gets no link either."""
    weights = np.array([[0.2, 0.1, 0.7], [0.0, 0.0, 0.0], [0.4, 0.5, 0.1]])
    assert hard_alignment(weights, [0, 1, -1], [0, 1, -1]) == [(0, 0)]
    assert hard_alignment(weights, [0, 1, -1], [0, 1, 2]) == [(0, 0), (1, 2)]


def test_ties_go_to_the_first_source_word() -> None:
    assert hard_alignment(np.array([[0.5, 0.5]])) == [(0, 0)]


def test_bad_word_indices_are_refused() -> None:
    with pytest.raises(ValueError, match="source_words has 2 entries but the weights have 4"):
        word_attention(WEIGHTS, source_words=[0, 1])
    with pytest.raises(ValueError, match="target_words holds -3"):
        word_attention(WEIGHTS, target_words=[0, -3, 1])
    with pytest.raises(ValueError, match=r"weights must be \[tgt_len, src_len\]"):
        word_attention(WEIGHTS[None])


def test_alignment_scores_by_hand() -> None:
    """Och and Ney (2003): A = 3 links, S = 2 sure, P = S + 1 possible.
    |A & S| = 1, |A & P| = 2: precision 2/3, recall 1/2, AER = 1 - (1 + 2) / (3 + 2) = 0.4."""
    predicted = [(0, 0), (1, 1), (2, 2)]
    scores = alignment_scores(predicted, sure=[(0, 0), (2, 1)], possible=[(1, 1)])
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(1 / 2)
    assert scores["alignment_error_rate"] == pytest.approx(0.4)
    perfect = alignment_scores(predicted, sure=predicted)
    assert perfect == {"precision": 1.0, "recall": 1.0, "alignment_error_rate": 0.0}
