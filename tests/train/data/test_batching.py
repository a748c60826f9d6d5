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
    epochs = []
    for epoch in range(3):  # every epoch is steps [epoch * len, (epoch + 1) * len)
        seen = []
        for step in range(epoch * len(batches), (epoch + 1) * len(batches)):
            batch = batches[step]
            rows, length = batch["source"].shape
            assert (rows, length) in batches.shapes
            assert rows % 2 == 0 and rows * length <= max(256, 2 * length)
            for key, value in batch.items():
                assert value.dtype == np.int32 and value.shape == (rows, length), key
            seen += pairs_in(batch)
        assert sorted(seen) == expected
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled
    again = token_budget_batches(
        mode, split, batch_tokens=256, max_length=32, pad_id=PAD, bos_id=BOS, seed=5, row_multiple=2
    )
    last = 3 * len(batches) - 1
    for step in (last, 0, 7):  # a fresh object (a resumed run), in any order
        for key in batches[step]:
            assert np.array_equal(again[step][key], batches[step][key]), (step, key)
    other_seed = token_budget_batches(
        mode, split, batch_tokens=256, max_length=32, pad_id=PAD, bos_id=BOS, seed=6, row_multiple=2
    )
    assert not np.array_equal(other_seed[0]["source"], batches[0]["source"])


@pytest.mark.parametrize("mode", TOKEN_BUDGET_MODES)
@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_concatenate_to_the_global_batch(mode: str, process_count: int) -> None:
    split = random_split(np.random.default_rng(7), 200)
    common = dict(batch_tokens=256, max_length=32, pad_id=PAD, bos_id=BOS, seed=3, row_multiple=4)
    whole = token_budget_batches(mode, split, **common)
    shards = [
        token_budget_batches(mode, split, process_index=p, process_count=process_count, **common)
        for p in range(process_count)
    ]
    assert all(len(shard) == len(whole) for shard in shards)
    for step in (0, 1, len(whole) - 1, len(whole) + 2):
        parts = [shard[step] for shard in shards]
        for key, value in whole[step].items():
            assert all(len(part[key]) == len(value) // process_count for part in parts)
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), value)
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        token_budget_batches(mode, split, process_index=0, process_count=3, **common)
    with pytest.raises(ValueError, match="process_index must be in"):
        token_budget_batches(mode, split, process_index=2, process_count=2, **common)


def test_fixed_rows_shards_concatenate_to_the_global_batch() -> None:
    split = random_split(np.random.default_rng(8), 50)
    common = dict(batch_size=8, source_length=32, target_length=32, pad_id=PAD, bos_id=BOS, seed=1)
    whole = batching.FixedRowsBatches(split, **common)
    shards = [batching.FixedRowsBatches(split, process_index=p, process_count=2, **common)
              for p in range(2)]  # fmt: skip
    for step in (0, 6, 13):
        for key, value in whole[step].items():
            np.testing.assert_array_equal(np.concatenate([s[step][key] for s in shards]), value)


@pytest.mark.parametrize("mode", TOKEN_BUDGET_MODES)
def test_a_late_step_shuffles_and_packs_only_its_own_epoch(mode: str, monkeypatch) -> None:
    """Resuming at step 10**6 costs what starting costs: only that step's epoch is drawn (and
    packed), never the epochs before it."""
    split = random_split(np.random.default_rng(9), 120)
    drawn: list[int] = []
    module = packing if mode == "packed" else batching
    real = module.epoch_rng

    def counting(seed: int, epoch: int) -> np.random.Generator:
        drawn.append(epoch)
        return real(seed, epoch)

    monkeypatch.setattr(module, "epoch_rng", counting)
    packed = []
    if mode == "packed":
        real_pack = packing.pack_epoch
        monkeypatch.setattr(
            packing, "pack_epoch", lambda *a, **k: packed.append(len(a[1])) or real_pack(*a, **k)
        )
    common = dict(batch_tokens=128, max_length=32, pad_id=PAD, bos_id=BOS, seed=0)
    batches = token_budget_batches(mode, split, **common)
    packed.clear()  # construction packs a sample to check the fill (not an epoch)
    step = 10**6
    batch = batches[step]
    assert drawn == [step // len(batches)]
    assert packed == ([len(split)] if mode == "packed" else [])
    batches[step + 1]  # the same epoch: nothing drawn again
    assert len(drawn) == 1 or (step + 1) // len(batches) != step // len(batches)
    fresh = token_budget_batches(mode, split, **common)
    assert all(np.array_equal(fresh[step][k], v) for k, v in batch.items())


def test_pack_epoch_cuts_chunks_by_the_longer_side_and_fills_rows_first_fit_decreasing() -> None:
    # Written out by hand: rows of 8 tokens, 2 rows per batch, a budget of 12 tokens per side.
    lengths = np.array([[3, 1], [1, 5], [4, 4], [2, 2], [6, 1], [1, 1], [2, 7]])
    order = np.arange(7)
    # Cumulative (source, target): (3,1) (4,6) (8,10) (10,12) (16,13) (17,14) (19,21); the
    # larger side 3 6 10 12 16 17 21 -> chunks (end - 1) // 12 = 0 0 0 0 1 1 1.
    np.testing.assert_array_equal(packing.chunk_of(lengths[order], 12), [0, 0, 0, 0, 1, 1, 1])
    assert packing.chunk_count(lengths, 12) == 2  # ceil(max(19, 21) / 12)
    result = packing.pack_epoch(lengths, order, rows=2, length=8, budget=12)
    # Chunk 0 by decreasing max side (ties in order): 1 (5), 2 (4), 0 (3), 3 (2).
    # Pair 1 -> row 0 (room 7/3); pair 2 -> row 1 (4/4); pair 0 -> row 0 (4/2); pair 3 needs
    # (2, 2): row 0 has target room 2 -> row 0 (2/0).
    # Chunk 1: pair 6 (7) -> row 0 (6/1), pair 4 (6) -> row 0? target room 1 >= 1, source 6 >= 6:
    # row 0 (0/0); pair 5 -> row 1 (7/7).
    assert result.starts.tolist() == [0, 4, 7] and result.moved == 0
    assert result.pairs.tolist() == [1, 0, 3, 2, 6, 4, 5]
    assert result.rows.tolist() == [0, 0, 0, 1, 0, 0, 1]


def test_a_pair_that_does_not_fit_its_chunk_moves_to_a_later_batch() -> None:
    # One row of 4 tokens per batch. Budget 4: ends 1, 4, 6 -> chunks 0 0 1; chunk 0 packs by
    # decreasing length (pair 1 first) and both fit.
    lengths = np.array([[1, 1], [3, 3], [2, 2]])
    result = packing.pack_epoch(lengths, np.arange(3), rows=1, length=4, budget=4)
    assert result.pairs.tolist() == [1, 0, 2] and result.moved == 0
    # Budget 5: ends 3, 5, 6 -> chunks 0 0 1. Pairs 0 (3 tokens) and 1 (2) cannot share a row
    # of 4, so pair 1 goes to batch 1, after that batch's own pair 2 (1 token).
    lengths = np.array([[3, 3], [2, 2], [1, 1]])
    result = packing.pack_epoch(lengths, np.arange(3), rows=1, length=4, budget=5)
    assert result.moved == 1
    assert result.starts.tolist() == [0, 1, 3] and result.pairs.tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match="no row of the epoch has room"):
        packing.pack_epoch(np.array([[3, 3], [3, 3]]), np.arange(2), rows=1, length=4, budget=6)


def test_chunked_packing_fills_rows_about_as_well_as_one_pass_over_the_epoch() -> None:
    rng = np.random.default_rng(10)
    lengths = rng.integers(3, 30, size=(20_000, 1)) + rng.integers(-2, 3, size=(20_000, 2))
    order = rng.permutation(20_000)
    rows, length = 64, 64
    one_pass = -(-len(packing.pack_pairs(lengths, order, length)) // rows)
    chunked = packing.PackedBatches(
        batching.TokenizedSplit([np.zeros(n) for n in lengths[:, 0]],
                                [np.zeros(n) for n in lengths[:, 1]], np.arange(20_000), 0),
        batch_tokens=rows * length, length=length, pad_id=PAD, bos_id=BOS, seed=0,
    )  # fmt: skip
    assert chunked.fill == 0.92  # the default holds for these lengths
    # The fixed count costs a few batches: the fill leaves room for chunks to fit their rows.
    assert len(chunked) <= 1.06 * one_pass, (len(chunked), one_pass)
    fill = lengths.sum(axis=0).max() / (len(chunked) * rows * length)
    assert fill > 0.9, fill


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


@pytest.mark.parametrize("pairs, rows", [(50, [16, 16, 16, 2]), (1, [1]), (3, [4]), (16, [16])])
def test_a_fitted_last_batch_has_the_fewest_power_of_two_rows(pairs, rows) -> None:
    """Translating a few sentences decodes a few rows: 50 pairs in batches of 16 are 16, 16, 16
    and 2 rows (2 pairs left); 3 pairs fit in 4 rows."""
    split = random_split(np.random.default_rng(4), pairs)
    batches = batching.evaluation_batches(
        split, batch_size=16, bucket_lengths=(32,), pad_id=PAD, bos_id=BOS, fit_last_batch=True
    )
    assert [len(batch["source"]) for batch in batches] == rows
    indices = np.concatenate([b["example_index"] for b in batches])
    assert sorted(indices[indices >= 0].tolist()) == list(range(pairs))


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
    with pytest.raises(ValueError, match="packing fill must be in"):
        packing.PackedBatches(split, batch_tokens=64, length=32, fill=1.5, **common)


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


def test_process_share_splits_a_global_batch() -> None:
    batch = {"source": np.arange(16).reshape(8, 2), "target": np.arange(8)}
    parts = [batching.process_share(batch, index, 4) for index in range(4)]
    np.testing.assert_array_equal(np.concatenate([p["target"] for p in parts]), batch["target"])
    np.testing.assert_array_equal(parts[1]["source"], batch["source"][2:4])
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        batching.process_share(batch, 0, 3)
