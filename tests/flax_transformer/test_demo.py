"""The one-minute tour runs."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_demo_runs():
    result = subprocess.run(
        [sys.executable, "-m", "flax_transformer.demo"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "logits" in result.stdout
