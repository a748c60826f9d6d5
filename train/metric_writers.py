"""Metrics to disk: one JSON object per line (`metrics.jsonl`) and TensorBoard event files.

TensorBoard events are written with tensorboardX, which needs no TensorFlow. View them with
`tensorboard --logdir WORKDIR/tensorboard` (TensorBoard itself is not a dependency).
A resumed run appends to the same files; TensorBoard shows the steps on one curve.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes scalar metrics of a step under a prefix ("train", "validation", "test")."""

    def __init__(self, workdir: str | os.PathLike) -> None:
        workdir = os.fspath(workdir)
        os.makedirs(workdir, exist_ok=True)
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, prefix: str, metrics: Mapping[str, float]) -> None:
        values = {key: float(value) for key, value in metrics.items()}
        record = {"step": int(step), "split": prefix, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            self._tensorboard.add_scalar(f"{prefix}/{key}", value, global_step=int(step))
        self._tensorboard.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._tensorboard.close()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """All records of `metrics.jsonl` in a workdir (for notebooks and tests)."""
    path = os.path.join(os.fspath(workdir), "metrics.jsonl")
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
