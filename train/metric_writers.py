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
    """Writes the metrics of a step under a prefix ("train", "validation", "test").

    Numbers go to both files (as floats); strings (e.g. sacreBLEU's signature) to the JSONL only.
    """

    def __init__(self, jsonl_path: str | os.PathLike, tensorboard_dir: str | os.PathLike) -> None:
        self.jsonl_path = os.fspath(jsonl_path)
        os.makedirs(os.path.dirname(os.path.abspath(self.jsonl_path)), exist_ok=True)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        self._tensorboard = SummaryWriter(os.fspath(tensorboard_dir))

    def write(self, step: int, prefix: str, metrics: Mapping[str, float]) -> None:
        values = {
            key: value if isinstance(value, str) else float(value) for key, value in metrics.items()
        }
        record = {"step": int(step), "split": prefix, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            if not isinstance(value, str):
                self._tensorboard.add_scalar(f"{prefix}/{key}", value, global_step=int(step))
        self._tensorboard.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._tensorboard.close()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_metrics(jsonl_path: str | os.PathLike) -> list[dict]:
    """All records of a `metrics.jsonl` file (`Workdir.metrics_path`; for notebooks and tests)."""
    with open(jsonl_path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
