"""Masks against hand-worked cases. True = may attend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flax_transformer import masks

T, F = True, False


def test_padding_mask_hand_worked():
    tokens = np.array([[5, 6, 0], [7, 0, 0]])
    expected = np.array([[T, T, F], [T, F, F]])[:, None, None, :]
    mask = masks.padding_mask(tokens, pad_id=0)
    assert mask.shape == (2, 1, 1, 3) and mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(masks.padding_mask(tokens, pad_id=5)[0, 0, 0], [F, T, T])


def test_causal_mask_hand_worked():
    expected = np.array([[T, F, F], [T, T, F], [T, T, T]])
    mask = masks.causal_mask(3)
    assert mask.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(mask[0, 0], expected)


def test_segment_mask_hand_worked():
    # two packed examples (1, 2) and padding (0)
    segments = np.array([[1, 1, 2, 0]])
    expected = np.array(
        [
            [T, T, F, F],
            [T, T, F, F],
            [F, F, T, F],
            [F, F, F, T],
        ]
    )
    mask = masks.segment_mask(segments)
    assert mask.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(mask[0, 0], expected)
    cross = masks.segment_mask(np.array([[1, 2]]), np.array([[1, 1, 2]]))
    np.testing.assert_array_equal(cross[0, 0], [[T, T, F], [F, F, T]])


def test_combine_masks_is_logical_and_with_broadcasting():
    padding = masks.padding_mask(np.array([[4, 4, 0]]))
    combined = masks.combine_masks(padding, None, masks.causal_mask(3))
    expected = np.array([[T, F, F], [T, T, F], [T, T, F]])
    assert combined.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(combined[0, 0], expected)
    assert masks.combine_masks(None, None) is None


def test_model_masks_hand_worked():
    source = np.array([[3, 4, 0]])
    np.testing.assert_array_equal(masks.encoder_self_attention_mask(source)[0, 0], [[T, T, F]])
    np.testing.assert_array_equal(masks.decoder_self_attention_mask(2)[0, 0], [[T, F], [T, T]])
    np.testing.assert_array_equal(masks.cross_attention_mask(source)[0, 0], [[T, T, F]])
    # packed: target segments [1, 2], source segments [1, 1, 2] with no padding
    packed = masks.cross_attention_mask(
        np.array([[3, 4, 5]]),
        target_segment_ids=np.array([[1, 2]]),
        source_segment_ids=np.array([[1, 1, 2]]),
    )
    np.testing.assert_array_equal(packed[0, 0], [[T, T, F], [F, F, T]])
    packed_self = masks.decoder_self_attention_mask(3, np.array([[1, 1, 2]]))
    np.testing.assert_array_equal(packed_self[0, 0], [[T, F, F], [T, T, F], [F, F, T]])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: masks.padding_mask(np.zeros(3, int)), "batch, length"),
        (lambda: masks.causal_mask(0), "positive"),
        (lambda: masks.segment_mask(np.zeros((2, 3)), np.zeros((3, 3))), "batch size"),
        (lambda: masks.segment_mask(np.zeros(3)), "batch, length"),
        (lambda: masks.combine_masks(np.ones((1, 2), np.float32)), "boolean"),
        (lambda: masks.combine_masks(np.ones((2,), bool), np.ones((2, 2), bool)), "rank"),
        (
            lambda: masks.cross_attention_mask(
                np.ones((1, 2), int), target_segment_ids=np.ones((1, 2))
            ),
            "both",
        ),
    ],
)
def test_bad_mask_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@given(
    segments=st.lists(st.integers(0, 3), min_size=1, max_size=8),
    pad_positions=st.lists(st.booleans(), min_size=1, max_size=8),
)
def test_packed_encoder_mask_matches_its_definition(segments, pad_positions):
    length = min(len(segments), len(pad_positions))
    segment_ids = np.array([segments[:length]])
    tokens = np.where(np.array([pad_positions[:length]]), 0, 7)
    mask = np.asarray(masks.encoder_self_attention_mask(tokens, 0, segment_ids))[0, 0]
    for q in range(length):
        for k in range(length):
            allowed = tokens[0, k] != 0 and segment_ids[0, q] == segment_ids[0, k]
            assert mask[q, k] == allowed


@given(length=st.integers(1, 10), segments=st.lists(st.integers(1, 3), min_size=10, max_size=10))
def test_packed_decoder_mask_matches_its_definition(length, segments):
    segment_ids = np.array([sorted(segments)[:length]])
    mask = np.asarray(masks.decoder_self_attention_mask(length, segment_ids))
    assert mask.shape == (1, 1, length, length)
    for q in range(length):
        for k in range(length):
            assert mask[0, 0, q, k] == (k <= q and segment_ids[0, q] == segment_ids[0, k])
