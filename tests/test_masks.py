"""Masks against hand-worked cases. True = may attend."""

from __future__ import annotations

import numpy as np
import pytest

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
