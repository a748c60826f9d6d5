"""Divergence: the log-step rule (hand-worked cases), the finite-state check, the report."""

from __future__ import annotations

import math

import ml_collections
import numpy as np
import optax
import pytest
from flax import struct

from train.configs import default as default_config
from train.divergence import WINDOW, Diverged, LossWatch, remedies, state_is_finite


def test_non_finite_loss_or_gradient_norm_is_divergence() -> None:
    watch = LossWatch(factor=0.0)  # the ratio rule off: the non-finite check stays
    assert watch.problem({"loss": 2.0, "grad_norm": 1.0}) is None
    assert watch.problem({"loss": float("nan"), "grad_norm": 1.0}) == "the training loss is nan"
    assert watch.problem({"loss": math.inf}) == "the training loss is inf"
    assert watch.problem({"loss": 2.0, "grad_norm": math.inf}).startswith(
        "the gradient norm is inf"
    )
    assert watch.problem({"loss": 1e7, "grad_norm": 1.0}) is None  # no ratio rule
    assert watch.recent == [2.0, 1e7]  # only accepted losses are remembered


def test_a_loss_far_above_the_recent_lowest_is_divergence() -> None:
    watch = LossWatch(factor=3.0)
    for loss in (9.0, 5.0, 2.0, 2.5, 5.9):  # 5.9 < 3 x 2.0: a bump, not a divergence
        assert watch.problem({"loss": loss}) is None
    problem = watch.problem({"loss": 6.5})  # 6.5 > 3 x 2.0
    assert problem == (
        "the training loss 6.5 is 3.2 times the lowest of the last 5 logged (2; "
        "config.divergence_factor=3)"
    )
    assert watch.recent == [9.0, 5.0, 2.0, 2.5, 5.9]  # the diverged loss did not join


def test_the_window_forgets_old_losses() -> None:
    watch = LossWatch(factor=3.0, recent=[1.0])
    for _ in range(WINDOW):
        assert watch.problem({"loss": 2.9}) is None
    assert watch.recent == [2.9] * WINDOW  # 1.0 has left the window
    assert watch.problem({"loss": 8.0}) is None  # 8.0 < 3 x 2.9
    assert watch.problem({"loss": 40.0}) is not None


def test_a_resumed_watch_compares_with_the_checkpoint_losses() -> None:
    watch = LossWatch(factor=3.0, recent=[0.7, 0.69])  # data_position["recent_losses"]
    assert watch.problem({"loss": 5.0}).startswith("the training loss 5 is 7.2 times")


@struct.dataclass
class State:
    params: dict
    opt_state: object


def _state() -> State:
    params = {"w": np.ones((2, 3), np.float32), "n": np.arange(3, dtype=np.int32)}
    return State(params, optax.adam(1e-3).init(params))


def test_state_is_finite_looks_at_params_and_optimizer_state() -> None:
    state = _state()
    assert state_is_finite(state)
    w = state.params["w"].copy()
    w[1, 2] = np.nan
    assert not state_is_finite(state.replace(params={**state.params, "w": w}))
    mu = state.opt_state[0].mu
    bad_moment = {**mu, "w": np.full((2, 3), np.inf, np.float32)}
    poisoned = state.replace(
        opt_state=(state.opt_state[0]._replace(mu=bad_moment), *state.opt_state[1:])
    )
    assert not state_is_finite(poisoned)


def test_the_report_names_the_step_the_checkpoints_and_what_to_try() -> None:
    config = default_config.get_config()
    report = Diverged(
        step=400,
        reason="the training loss is nan",
        last_checkpoint=300,
        best_checkpoint=200,
        directory="/runs/x/checkpoints",
        remedies=remedies(config),
    )
    assert report.message() == (
        "training diverged at step 400: the training loss is nan; its last checkpoint, step "
        "300, is intact (the best by validation loss: step 200) in /runs/x/checkpoints"
    )
    assert report.hint() == (
        "try a lower --config.learning_rate_scale (now 0.5), or --config.clip_norm=1.0, or a "
        "longer --config.warmup_steps (now 200); add --config.allow_training_changes=True to "
        "resume from step 300 with them (or train in a new --workdir)"
    )
    config.clip_norm = 1.0
    assert not any("clip_norm" in tip for tip in remedies(config))
    none_saved = Diverged(4, "x", None, None, "/d", ["a"])
    assert "no checkpoint was saved before it" in none_saved.message()
    assert Diverged.EXIT_STATUS == 3


@pytest.mark.parametrize("factor", [0.5, 1.0, -2.0, float("nan")])
def test_a_divergence_factor_that_would_stop_every_run_is_refused(factor) -> None:
    from train.setup import check_config

    config = default_config.get_config()
    config.divergence_factor = factor
    with pytest.raises(ValueError, match="config.divergence_factor must be"):
        check_config(config)
    assert isinstance(config, ml_collections.ConfigDict)
