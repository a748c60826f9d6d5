"""Metric writers: metrics.jsonl records and TensorBoard events, appended on resume."""

from __future__ import annotations

import os

from train.metric_writers import MetricWriter, read_metrics


def test_records_are_written_and_appended(tmp_path) -> None:
    jsonl, events = tmp_path / "run" / "metrics.jsonl", tmp_path / "run" / "tensorboard"
    with MetricWriter(jsonl, events) as writer:
        writer.write(10, "train", {"loss": 2.5, "accuracy": 0.25})
    with MetricWriter(jsonl, events) as writer:  # a resumed run appends
        writer.write(20, "validation", {"loss": 1.5})
    records = read_metrics(jsonl)
    assert [(r["step"], r["split"], r["loss"]) for r in records] == [
        (10, "train", 2.5),
        (20, "validation", 1.5),
    ]
    assert records[0]["accuracy"] == 0.25 and isinstance(records[0]["time"], float)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(events))


def test_strings_go_to_the_jsonl_only(tmp_path) -> None:
    jsonl, events = tmp_path / "metrics.jsonl", tmp_path / "tensorboard"
    with MetricWriter(jsonl, events) as writer:
        writer.write(5, "test", {"bleu": 30, "bleu_signature": "nrefs:1|tok:13a"})
    (record,) = read_metrics(jsonl)
    assert record["bleu"] == 30.0 and isinstance(record["bleu"], float)
    assert record["bleu_signature"] == "nrefs:1|tok:13a"
