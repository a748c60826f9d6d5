"""Divergence: when training has gone wrong enough to stop, and what must never be saved.

Two checks, both at moments the loop reads the device anyway (no extra sync in the hot loop):

    LossWatch.problem(summary)   at each log step: a non-finite loss or gradient norm, or a loss
                                 above `factor` times the lowest of the last `window` logged
                                 losses (config.divergence_factor; 0 = only the non-finite check)
    state_is_finite(state)       before each save: every float of the params and the optimizer
                                 state is finite (a NaN reaching Adam's moments poisons all later
                                 updates, so the optimizer state counts too)

A run that fails either stops with a `Diverged` report: the step, why, the last checkpoint that
was saved (never overwritten: nothing is saved after a divergence) and what to try. The recent
losses travel with each checkpoint (`LossWatch.recent`), so a resumed run compares its first
losses with the ones before the stop: a resume with too high a rate is caught at its first log.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

WINDOW = 10
"""Logged losses a new one is compared with."""


@dataclasses.dataclass
class LossWatch:
    """The recent logged training losses, and the rule that calls a new one a divergence."""

    factor: float  # 0: no ratio check
    recent: list[float] = dataclasses.field(default_factory=list)
    window: int = WINDOW

    def problem(self, summary: Mapping[str, float]) -> str | None:
        """Why the logged `summary` (loss, grad_norm) means divergence, or None (then its loss
        joins the recent ones)."""
        loss = summary["loss"]
        if not math.isfinite(loss):
            return f"the training loss is {loss}"
        grad_norm = summary.get("grad_norm")
        if grad_norm is not None and not math.isfinite(grad_norm):
            return f"the gradient norm is {grad_norm} (the loss is {loss:.4g})"
        if self.factor and self.recent:
            lowest = min(self.recent)
            if loss > self.factor * lowest:
                return (
                    f"the training loss {loss:.4g} is {loss / lowest:.1f} times the lowest of the "
                    f"last {len(self.recent)} logged ({lowest:.4g}; config.divergence_factor="
                    f"{self.factor:g})"
                )
        self.recent = [*self.recent, float(loss)][-self.window :]
        return None


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def state_is_finite(state: Any) -> bool:
    """Whether every float of `state.params` and `state.opt_state` is finite (one read-back)."""
    return bool(_all_finite((state.params, state.opt_state)))


@dataclasses.dataclass
class Diverged:
    """A stopped run's report: what the user sees, and what `python -m train` exits with."""

    step: int
    reason: str
    last_checkpoint: int | None
    best_checkpoint: int | None  # the lowest validation loss kept
    directory: str
    remedies: Sequence[str]

    EXIT_STATUS = 3

    def message(self) -> str:
        if self.last_checkpoint is None:
            kept = "no checkpoint was saved before it"
        else:
            kept = f"its last checkpoint, step {self.last_checkpoint}, is intact"
            if self.best_checkpoint not in (None, self.last_checkpoint):
                kept += f" (the best by validation loss: step {self.best_checkpoint})"
        return f"training diverged at step {self.step}: {self.reason}; {kept} in {self.directory}"

    def hint(self) -> str:
        resume = (
            f"add --config.allow_training_changes=True to resume from step "
            f"{self.last_checkpoint} with them"
            if self.last_checkpoint is not None
            else "run again"
        )
        return f"try {', or '.join(self.remedies)}; {resume} (or train in a new --workdir)"


def remedies(config: Any) -> list[str]:
    """What to try after a divergence of a run of `config`."""
    tips = [f"a lower --config.learning_rate_scale (now {config.learning_rate_scale:g})"]
    if not config.clip_norm:
        tips.append("--config.clip_norm=1.0")
    tips.append(f"a longer --config.warmup_steps (now {config.warmup_steps})")
    return tips
