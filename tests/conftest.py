"""Shared test set-up: small hypothesis budgets (each example may compile) and common helpers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "project",
    max_examples=25,
    deadline=None,  # the first example of a shape compiles; wall-clock deadlines would be flaky
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: CI failures reproduce locally
)
settings.load_profile("project")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
