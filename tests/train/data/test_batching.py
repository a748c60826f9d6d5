"""Token-budget batching: filtering, buckets, packing; packed rows compute pairs separately."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import flax_transformer as ft
from train.data import batching, packing
from train.data.run_data import TOKEN_BUDGET_MODES, token_budget_batches

PAD, BOS, EOS = 0, 1, 2


class CharVocabulary:
    """One id per character (ids 3..): enough to make sentences of known lengths."""

    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def encode(self, text: str) -> list[int]:
        return [3 + (ord(c) % 40) for c in text]

    encode_target = encode


def random_split(
    rng: np.random.Generator, count: int, max_len: int = 30
) -> batching.TokenizedSplit:
    sources, targets = [], []
    for _ in range(count):
        s, t = rng.integers(1, max_len, size=2)
        sources.append(np.array([*rng.integers(3, 40, size=s), EOS], np.int32))
        targets.append(np.array([*rng.integers(3, 40, size=t), EOS], np.int32))
    return batching.TokenizedSplit(sources, targets, np.arange(count), 0)


def pairs_in(batch: dict[str, np.ndarray]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every (source, target) pair a batch holds, read back from rows or packed segments."""
    pairs = []
    for row in range(batch["source"].shape[0]):
        if "source_segment_ids" in batch:
            for segment in range(1, batch["source_segment_ids"][row].max() + 1):
                source = batch["source"][row][batch["source_segment_ids"][row] == segment]
                target = batch["target"][row][batch["target_segment_ids"][row] == segment]
                pairs.append((tuple(source), tuple(target)))
        else:
            source = batch["source"][row][batch["source"][row] != PAD]
            target = batch["target"][row][batch["target"][row] != PAD]
            if len(source):
                pairs.append((tuple(source), tuple(target)))
    return pairs


def test_tokenize_split_adds_eos_and_drops_long_pairs() -> None:
    data = [
        {"source": "abc", "target": "de"},
        {"source": "a" * 10, "target": "b"},  # 11 tokens with eos: too long for 8
        {"source": b"xy", "target": b"z"},
    ]
    split = batching.tokenize_split(data, CharVocabulary(), max_length=8)
    assert split.num_dropped == 1
    assert list(split.example_index) == [0, 2]
    assert split.sources[0].tolist() == [
        3 + ord("a") % 40,
        3 + ord("b") % 40,
        3 + ord("c") % 40,
        EOS,
    ]
    assert split.targets[1].tolist() == [3 + ord("z") % 40, EOS]
    with pytest.raises(ValueError, match=r"example 1 has a source of 11 tokens.*limit of 8"):
        batching.tokenize_split(data, CharVocabulary(), max_length=8, drop_long=False)
    with pytest.raises(ValueError, match="no example is at most 2 tokens"):
        batching.tokenize_split(data, CharVocabulary(), max_length=2)


def test_default_bucket_lengths() -> None:
    assert batching.default_bucket_lengths(64) == (8, 16, 24, 32, 40, 48, 56, 64)
    assert batching.default_bucket_lengths(100) == (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 100)
    assert batching.default_bucket_lengths(256)[-4:] == (160, 192, 224, 256)


@pytest.mark.parametrize("mode", TOKEN_BUDGET_MODES)
def test_every_epoch_visits_every_pair_once_with_static_shapes(mode: str) -> None:
    split = random_split(np.random.default_rng(0), 300)
    batches = token_budget_batches(
        mode, split, batch_tokens=256, max_length=32, pad_id=PAD, bos_id=BOS, seed=5, row_multiple=2
    )
    expected = sorted(
        (tuple(s), tuple(t)) for s, t in zip(split.sources, split.targets, strict=True)
    )
    step = 0
    for _epoch in range(2):
        # Packed epochs differ in length; find this epoch's end by counting pairs.
        seen = []
        while len(seen) < len(expected):
            batch = batches[step]
            rows, length = batch["source"].shape
            assert (rows, length) in batches.shapes
            assert rows % 2 == 0 and rows * length <= max(256, 2 * length)
            for key, value in batch.items():
                assert value.dtype == np.int32 and value.shape == (rows, length), key
            seen += pairs_in(batch)
            step += 1
        assert sorted(seen) == expected
    assert batches[3]["source"].tolist() == batches[3]["source"].tolist()
    again = token_budget_batches(
        mode, split, batch_tokens=256, max_length=32, pad_id=PAD, bos_id=BOS, seed=5, row_multiple=2
    )
    assert all(np.array_equal(again[s]["target"], batches[s]["target"]) for s in (0, 7, step))
    other_seed = token_budget_batches(
        mode, split, batch_tokens=256, max_length=32, pad_id=PAD, bos_id=BOS, seed=6, row_multiple=2
    )
    assert not np.array_equal(other_seed[0]["source"], batches[0]["source"])


def test_bucketed_batches_use_the_shortest_bucket_that_fits() -> None:
    split = random_split(np.random.default_rng(1), 200)
    batches = batching.BucketedBatches(
        split, batch_tokens=512, bucket_lengths=(8, 16, 32), pad_id=PAD, bos_id=BOS, seed=0
    )
    assert batches.shapes == [(64, 8), (32, 16), (16, 32)]
    for step in range(len(batches)):
        batch = batches[step]
        length = batch["source"].shape[1]
        longest = max(
            int((batch["source"] != PAD).sum(1).max()), int((batch["target"] != PAD).sum(1).max())
        )
        shorter = [b for b in (8, 16, 32) if b < length]
        assert longest <= length and (not shorter or longest > shorter[-1])


def test_packed_rows_hold_shifted_targets_segments_and_positions() -> None:
    split = batching.TokenizedSplit(
        sources=[np.array([5, 6, EOS]), np.array([7, EOS])],
        targets=[np.array([8, EOS]), np.array([9, 10, 11, EOS])],
        example_index=np.arange(2),
        num_dropped=0,
    )
    batch = packing.packed_batch(split, [[0, 1]], num_rows=2, length=8, pad_id=PAD, bos_id=BOS)
    assert batch["source"][0].tolist() == [5, 6, EOS, 7, EOS, PAD, PAD, PAD]
    assert batch["source_segment_ids"][0].tolist() == [1, 1, 1, 2, 2, 0, 0, 0]
    assert batch["source_positions"][0].tolist() == [0, 1, 2, 0, 1, 0, 0, 0]
    assert batch["target"][0].tolist() == [8, EOS, 9, 10, 11, EOS, PAD, PAD]
    assert batch["decoder_input"][0].tolist() == [BOS, 8, BOS, 9, 10, 11, PAD, PAD]
    assert batch["target_segment_ids"][0].tolist() == [1, 1, 2, 2, 2, 2, 0, 0]
    assert batch["target_positions"][0].tolist() == [0, 1, 0, 1, 2, 3, 0, 0]
    assert not batch["source"][1].any() and not batch["target_segment_ids"][1].any()  # filler


def test_pack_pairs_respects_both_sides_and_fills_rows() -> None:
    rng = np.random.default_rng(2)
    lengths = rng.integers(2, 20, size=(500, 2))
    rows = packing.pack_pairs(lengths, rng.permutation(500), row_length=40)
    assert sorted(i for row in rows for i in row) == list(range(500))
    for row in rows:
        assert lengths[row, 0].sum() <= 40 and lengths[row, 1].sum() <= 40
    fill = lengths.max(axis=1).sum() / (40 * len(rows))
    assert fill > 0.85, fill
    with pytest.raises(ValueError, match="does not fit a row of 10"):
        packing.pack_pairs(np.array([[11, 3]]), [0], row_length=10)


def test_packing_wastes_less_than_bucketing_and_padding() -> None:
    split = random_split(np.random.default_rng(3), 400)
    fractions = {}
    for mode in TOKEN_BUDGET_MODES:
        batches = token_budget_batches(
            mode, split, batch_tokens=512, max_length=32, pad_id=PAD, bos_id=BOS, seed=0
        )
        fractions[mode] = np.mean(
            [batching.padding_fraction(batches[s], PAD) for s in range(len(batches))]
        )
    assert fractions["packed"] < fractions["bucketed"] < fractions["padded"], fractions


def test_evaluation_batches_cover_the_split_in_length_order() -> None:
    split = random_split(np.random.default_rng(4), 50)
    batches = batching.evaluation_batches(
        split, batch_size=16, bucket_lengths=(16, 32), pad_id=PAD, bos_id=BOS
    )
    indices = np.concatenate([b["example_index"] for b in batches])
    assert sorted(indices[indices >= 0].tolist()) == list(range(50))
    assert (indices < 0).sum() == 4 * 16 - 50
    longest = split.lengths.max(axis=1)
    previous = 0
    for batch in batches:
        real = batch["example_index"][batch["example_index"] >= 0]
        assert longest[real].min() >= previous  # sorted by length
        previous = longest[real].max()
        assert batch["source"].shape == (16, 16 if previous <= 16 else 32)
        assert np.array_equal(batch["example_mask"], (batch["example_index"] >= 0).astype(np.int32))
        for row, index in enumerate(batch["example_index"]):
            if index >= 0:
                source = split.sources[index]
                assert batch["source"][row, : len(source)].tolist() == source.tolist()


def test_bad_arguments_are_named() -> None:
    split = random_split(np.random.default_rng(5), 10, max_len=30)
    common = dict(pad_id=PAD, bos_id=BOS, seed=0)
    with pytest.raises(ValueError, match="batching mode must be one of"):
        token_budget_batches("sorted", split, batch_tokens=64, max_length=32, **common)
    with pytest.raises(ValueError, match="batch_tokens must be positive"):
        token_budget_batches("packed", split, batch_tokens=0, max_length=32, **common)
    with pytest.raises(ValueError, match="longer than the packed row length 8"):
        packing.PackedBatches(split, batch_tokens=64, length=8, **common)
    with pytest.raises(ValueError, match="longer than the longest bucket"):
        batching.BucketedBatches(split, batch_tokens=64, bucket_lengths=(4, 8), **common)


def test_packed_rows_compute_each_pair_as_if_alone() -> None:
    """Attention never crosses a segment boundary: the logits of a packed row equal the logits of
    each of its pairs run through the model by itself (unpacked, unpadded)."""
    config = ft.TransformerConfig.tiny(vocab_size=40, dropout_rate=0.0)
    params = ft.init_params(config, jax.random.key(0))
    split = random_split(np.random.default_rng(6), 6, max_len=9)
    rows = [[0, 1, 2], [3, 4, 5]]
    batch = packing.packed_batch(split, rows, num_rows=2, length=32, pad_id=PAD, bos_id=BOS)
    model = ft.Transformer(config)
    packed_logits = model.apply(
        {"params": params},
        batch["source"],
        batch["decoder_input"],
        source_positions=batch["source_positions"],
        target_positions=batch["target_positions"],
        source_segment_ids=batch["source_segment_ids"],
        target_segment_ids=batch["target_segment_ids"],
    )
    for row, pairs in enumerate(rows):
        for segment, pair in enumerate(pairs, start=1):
            source = split.sources[pair][None]
            decoder_input = np.concatenate([[BOS], split.targets[pair][:-1]])[None]
            alone = ft.forward(config, params, source, decoder_input)[0]
            where = batch["target_segment_ids"][row] == segment
            np.testing.assert_allclose(packed_logits[row][where], alone, atol=2e-5, rtol=1e-5)
