"""Training: the loss, the learning-rate schedule, the optimizer, the train state and the steps.

    loss         cross-entropy against label-smoothed targets (paper section 5.4, epsilon 0.1),
                 padding excluded, normalised per non-pad target token; written for one example
                 and lifted over the batch with `jax.vmap`
    schedule     lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) (paper section 5.3)
    optimizer    Adam with beta1 0.9, beta2 0.98, epsilon 1e-9 (5.3); optional clipping, decay
    TrainState   params, optimizer state, step and the dropout key: everything a step changes;
                 optionally an exponential moving average of the params (`ema_decay`)
    train_step   one pure update; `eval_step` the same metrics without the update

A batch is a dict of int32 arrays: "source" [b, s], "decoder_input" [b, t] (start token then the
target shifted right) and "target" [b, t]; packed batches add "source_segment_ids",
"target_segment_ids", "source_positions" and "target_positions". Positions where "target" is the
pad id carry no loss.

Steps return metric *sums* over the batch ("loss_sum", "nll_sum", "correct", "tokens"), not means:
sums add up exactly across steps and devices, and `summarize_metrics` divides once at the end.

Data parallelism (`flax_transformer.parallel`) reuses these steps: with `axis_name` set (inside
`jax.pmap`) token counts and gradients are summed over devices, so every device applies the update
the single-device step would apply to the whole global batch.

Gradient accumulation (`train_step(..., micro_batches=k)`) keeps the batch of one update and
computes it as k strided micro-batches one after another inside the step (a `lax.scan`):
unnormalised gradients and metric sums are added up and divided once by the global batch's
non-pad target tokens, so the update is the whole batch's (to float32 summation order) and only
the activation memory shrinks, to one micro-batch's. fairseq's `--update-freq` does the same to
reach the paper's ~25k-token batches on few devices.

Parameter EMA (not in the paper, which averages the last checkpoints instead): with
`create_train_state(..., ema_decay=d)` every update also moves `ema_params` towards the new
params, ema <- ema + (1 - d_t) (params - ema), where d_t = min(d, (1 + t) / (10 + t)) after update
t (tf.train.ExponentialMovingAverage's ramp: early on, when the params move fast, the average
spans about t / 9 updates; later 1 / (1 - d)). The average starts at the initial params and
never feeds back into training; evaluate it instead of the params (`evaluation_params`).

Mixed precision: with `TransformerConfig.dtype` "bfloat16" the model computes in bfloat16 but
params, gradients, optimizer state, softmax, logits and the loss stay float32 (see the config's
docstring); nothing here changes with the dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from flax_transformer import checks
from flax_transformer.config import TransformerConfig
from flax_transformer.model import Transformer, init_params

Array = jax.Array
Batch = Mapping[str, Array]
Metrics = dict[str, Array]

# Batch keys that the model takes as keyword arguments when present (packed batches).
_PACKING_KEYS = ("source_positions", "target_positions", "source_segment_ids", "target_segment_ids")
# The batch keys every step reads, and the metric sums every step returns.
_MODEL_KEYS = ("source", "decoder_input", "target")
_SUM_KEYS = ("loss_sum", "nll_sum", "correct", "tokens")


# ---------------------------------------------------------------------------------------------
# Loss (paper section 5.4: label smoothing of value 0.1)
# ---------------------------------------------------------------------------------------------
@jax.custom_vjp
def token_cross_entropies(
    logits: Array, targets: Array, label_smoothing: Array | float
) -> tuple[Array, Array, Array]:
    """Per token: (smoothed cross-entropy, negative log-likelihood, whether the target's logit is
    the largest): logits [t, vocab] float32, targets [t] int -> float32 [t], float32 [t], bool [t].

    With lse = log sum_v exp(logits_v), the log-probabilities are logits - lse, so

        nll      = lse - logits[target]
        smoothed = (1 - epsilon) * nll + epsilon * (lse - mean_v logits_v)

    (the second term is the cross-entropy against the uniform distribution). Neither the
    log-probabilities nor a one-hot target are materialised, and the gradient is written by hand
    as one elementwise pass over the logits, softmax - target distribution, instead of the
    scatter that autodiff of the target lookup would give: the full-vocabulary loss is the
    largest elementwise computation of a training step.
    """
    return _token_cross_entropies_forward(logits, targets, label_smoothing)[0]


def _token_cross_entropies_forward(
    logits: Array, targets: Array, label_smoothing: Array | float
) -> tuple[tuple[Array, Array], tuple[Array, ...]]:
    label_smoothing = jnp.asarray(label_smoothing, jnp.float32)
    largest = jnp.max(logits, axis=-1, keepdims=True)
    lse = (largest + jnp.log(jnp.sum(jnp.exp(logits - largest), axis=-1, keepdims=True)))[:, 0]
    target_logits = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    nll = lse - target_logits
    uniform_cross_entropy = lse - jnp.mean(logits, axis=-1)
    smoothed = (1.0 - label_smoothing) * nll + label_smoothing * uniform_cross_entropy
    # Accuracy from the max the softmax needs anyway: an argmax would be one more pass over the
    # vocabulary, and one that XLA:CPU does not vectorise.
    is_top = target_logits >= largest[:, 0]
    residuals = (logits, targets, label_smoothing, lse, uniform_cross_entropy - nll)
    return (smoothed, nll, is_top), residuals


def _token_cross_entropies_backward(
    residuals: tuple[Array, ...], cotangents: tuple[Array, Array, Array]
) -> tuple[Array, None, Array]:
    logits, targets, label_smoothing, lse, uniform_minus_nll = residuals
    d_label_smoothing = jnp.sum(cotangents[0] * uniform_minus_nll)
    d_smoothed, d_nll = (c[:, None] for c in cotangents[:2])  # is_top has no gradient
    # d nll / d logits = softmax - one_hot(target); d (lse - mean) / d logits = softmax - 1/vocab.
    probs = jnp.exp(logits - lse[:, None])
    is_target = jnp.arange(logits.shape[-1]) == targets[:, None]
    target_weight = (1.0 - label_smoothing) * d_smoothed + d_nll
    d_logits = (
        (d_smoothed + d_nll) * probs
        - jnp.where(is_target, target_weight, 0.0)
        - (label_smoothing / logits.shape[-1]) * d_smoothed
    )
    return d_logits, None, d_label_smoothing


token_cross_entropies.defvjp(_token_cross_entropies_forward, _token_cross_entropies_backward)


def example_loss(
    logits: Array, targets: Array, weights: Array, label_smoothing: float = 0.1
) -> Metrics:
    """Loss sums for one example: logits [t, vocab], targets [t] int, weights [t] (1 = counted).

    The smoothed target distribution is (1 - epsilon) * one_hot(target) + epsilon / vocab
    (uniform over the whole vocabulary, as in Szegedy et al. 2016, which the paper cites).
    Returns the summed smoothed cross-entropy, the summed plain negative log-likelihood, the
    number of correctly predicted tokens (those whose logit is the largest; tied largest logits
    all count) and the number of counted tokens.
    """
    logits = logits.astype(jnp.float32)
    smoothed, nll, is_top = token_cross_entropies(logits, targets, label_smoothing)
    weights = weights.astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(smoothed * weights),
        "nll_sum": jnp.sum(nll * weights),
        "correct": jnp.sum(is_top.astype(jnp.float32) * weights),
        "tokens": jnp.sum(weights),
    }


def batch_loss_sums(
    logits: Array, targets: Array, weights: Array, label_smoothing: float = 0.1
) -> Metrics:
    """`example_loss` lifted over the batch with vmap, then summed over examples."""
    per_example = jax.vmap(example_loss, in_axes=(0, 0, 0, None))(
        logits, targets, weights, label_smoothing
    )
    return jax.tree.map(jnp.sum, per_example)


def target_weights(batch: Batch, pad_id: int) -> Array:
    """1.0 where a target token counts towards the loss (not padding), else 0.0."""
    return (batch["target"] != pad_id).astype(jnp.float32)


def summarize_metrics(metrics: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Metric sums (one dict, or many to add up) -> per-token means, on the host.

    Returns loss (smoothed cross-entropy per token), nll, perplexity = exp(nll), accuracy and the
    token count; any other keys (e.g. "grad_norm", "exact_match") are averaged over the dicts.
    """
    if isinstance(metrics, Mapping):
        metrics = [metrics]
    metrics = [jax.device_get(dict(m)) for m in metrics]
    if not metrics:
        raise ValueError("summarize_metrics needs at least one metrics dict")
    totals = {key: float(np.sum([np.sum(m[key]) for m in metrics])) for key in metrics[0]}
    tokens = max(totals.get("tokens", 0.0), 1.0)
    summary: dict[str, float] = {}
    if "loss_sum" in totals:
        summary["loss"] = totals["loss_sum"] / tokens
        summary["nll"] = totals["nll_sum"] / tokens
        summary["perplexity"] = float(np.exp(min(summary["nll"], 50.0)))
        summary["accuracy"] = totals["correct"] / tokens
        summary["tokens"] = totals["tokens"]
    sums = {"loss_sum", "nll_sum", "correct", "tokens"}
    for key in totals.keys() - sums:
        summary[key] = totals[key] / len(metrics)
    return summary


# ---------------------------------------------------------------------------------------------
# Learning rate and optimizer (paper section 5.3)
# ---------------------------------------------------------------------------------------------
def transformer_schedule(
    d_model: int, warmup_steps: int = 4000, scale: float = 1.0
) -> Callable[[Array], Array]:
    """The paper's schedule: scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).

    Linear warm-up for `warmup_steps`, then decay with the inverse square root of the step.
    Optax counts updates from 0; the paper counts steps from 1, so update n uses step n + 1
    (the first update does not get a learning rate of 0). `scale` multiplies the whole curve
    (1.0 is the paper).
    """
    if warmup_steps <= 0:
        raise ValueError(f"warmup_steps must be positive, got {warmup_steps}")
    if d_model <= 0:
        raise ValueError(f"d_model must be positive, got {d_model}")

    def schedule(count: Array) -> Array:
        step = jnp.asarray(count, jnp.float32) + 1.0
        return scale * d_model**-0.5 * jnp.minimum(step**-0.5, step * warmup_steps**-1.5)

    return schedule


def with_cooldown(
    schedule: Callable[[Array], Array], total_steps: int, cooldown_steps: int
) -> Callable[[Array], Array]:
    """`schedule`, multiplied by a linear ramp from 1 to 0 over the last `cooldown_steps` updates.

    Not in the paper (its rate decays only as step^-0.5). A short run ends far from a minimum
    with that rate's noise; cooling down to zero removes the noise (the paper instead averages
    the last checkpoints). `cooldown_steps=0` returns `schedule` unchanged.
    """
    if not 0 <= cooldown_steps <= total_steps:
        raise ValueError(
            f"cooldown_steps must be in [0, total_steps={total_steps}], got {cooldown_steps}"
        )
    if cooldown_steps == 0:
        return schedule

    def cooled(count: Array) -> Array:
        remaining = (total_steps - jnp.asarray(count, jnp.float32)) / cooldown_steps
        return schedule(count) * jnp.clip(remaining, 0.0, 1.0)

    return cooled


def _decay_mask(params: Any) -> Any:
    """Weight decay applies to kernels and embeddings, not to biases or LayerNorm scales.

    Decided by the parameter's name, not its rank: attention biases are [heads, d_k] and scanned
    stacks give every parameter a leading layer axis.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: getattr(path[-1], "key", None) not in ("bias", "scale"), params
    )


def make_optimizer(
    learning_rate: float | Callable[[Array], Array],
    *,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-9,
    clip_norm: float | None = None,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adam with the paper's hyperparameters; optional global-norm clipping and weight decay.

    With `weight_decay` > 0 this is AdamW (decoupled decay, matrices only).
    """
    if clip_norm is not None and clip_norm <= 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if weight_decay > 0:
        adam = optax.adamw(
            learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask
        )
    else:
        adam = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    if clip_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam)


# ---------------------------------------------------------------------------------------------
# Train state and steps
# ---------------------------------------------------------------------------------------------
def ema_decay_at(decay: float, updates: Array) -> Array:
    """The EMA's decay after `updates` updates (1, 2, ...): min(decay, (1 + t) / (10 + t))."""
    t = jnp.asarray(updates, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def ema_update(average: Any, params: Any, decay: float, updates: Array) -> Any:
    """The moving average `average` of params moved towards `params` after update `updates`:
    average + (1 - d) (params - average), d = `ema_decay_at(decay, updates)`."""
    keep = ema_decay_at(decay, updates)
    # Rather than keep * average + (1 - keep) * params: exact when the two are equal, and
    # without the cancellation of two large products.
    return jax.tree.map(lambda e, p: e + (1.0 - keep) * (p - e), average, params)


class TrainState(train_state.TrainState):
    """flax's TrainState (step, params, optimizer state; apply_fn and tx static) plus the key
    that dropout is drawn from. The key is raw uint32 key data so checkpoints can store it; each
    step folds in the step number (and the device index under pmap), so no key is ever reused.

    With `ema_decay` > 0 (static, like `tx`), `ema_params` is the exponential moving average of
    the params that `apply_gradients` keeps (see the module doc); otherwise it is None.
    """

    dropout_key: Array
    ema_params: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def apply_gradients(self, *, grads: Any, **kwargs: Any) -> TrainState:
        new = super().apply_gradients(grads=grads, **kwargs)
        if self.ema_params is None:
            return new
        ema = ema_update(self.ema_params, new.params, self.ema_decay, new.step)
        return new.replace(ema_params=ema)


def evaluation_params(state: TrainState) -> Any:
    """The params to evaluate and decode with: the EMA when the state keeps one, else the params."""
    return state.params if state.ema_params is None else state.ema_params


@functools.lru_cache(maxsize=32)
def _apply_fn(config: TransformerConfig) -> Callable[..., Any]:
    # One apply function per config: TrainState keeps it as a static field, and a new bound
    # method per state would make a jitted step recompile for every new or restored state.
    return Transformer(config).apply


def create_train_state(
    config: TransformerConfig,
    optimizer: optax.GradientTransformation,
    rng: Array,
    *,
    ema_decay: float = 0.0,
) -> TrainState:
    """Initialise params from `rng` and wrap them with `optimizer` into a TrainState; with
    `ema_decay` in (0, 1) the state also keeps an EMA of the params, starting at them."""
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (0: no EMA), got {ema_decay}")
    params_key, dropout_key = jax.random.split(rng)
    params = init_params(config, params_key)
    return TrainState.create(
        apply_fn=_apply_fn(config),
        params=params,
        tx=optimizer,
        dropout_key=jax.random.key_data(dropout_key),
        # A copy, not the same arrays: a step donates the state, and one buffer cannot be
        # donated twice.
        ema_params=jax.tree.map(jnp.copy, params) if ema_decay > 0 else None,
        ema_decay=float(ema_decay),
    )


def _model_kwargs(batch: Batch) -> dict[str, Array]:
    return {key: batch[key] for key in _PACKING_KEYS if key in batch}


def _step_dropout_key(state: TrainState, axis_name: str | None) -> Array:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    return key


def _check_micro_batches(micro_batches: int, rows: int) -> None:
    checks.check_micro_batches(micro_batches)
    if rows % micro_batches != 0:
        raise ValueError(
            f"the batch's {rows} rows (per device under pmap) do not split into "
            f"micro_batches={micro_batches}; use a multiple of {micro_batches} rows"
        )


def split_micro_batches(batch: Batch, micro_batches: int) -> dict[str, Array]:
    """Every array of `batch`, [R, ...] -> [micro_batches, R / micro_batches, ...], strided.

    Micro-batch j holds rows j, j + k, j + 2k, ... (k = micro_batches): the array is reshaped
    to [R / k, k, ...] and the micro-batch axis moved to the front. Strided rather than
    contiguous so that a batch sharded in contiguous row blocks over a mesh (R / devices rows
    per device, a multiple of k) keeps each device's rows on that device in every micro-batch:
    the reshape splits no device's block and the transpose is local, so no data moves.
    """
    rows = batch["target"].shape[0]
    _check_micro_batches(micro_batches, rows)
    return {
        key: jnp.swapaxes(
            value.reshape(rows // micro_batches, micro_batches, *value.shape[1:]), 0, 1
        )
        for key, value in batch.items()
    }


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    pad_id: int = 0,
    label_smoothing: float = 0.1,
    axis_name: str | None = None,
    micro_batches: int = 1,
) -> tuple[TrainState, Metrics]:
    """One optimizer update on `batch`; returns the new state and the batch's metric sums.

    The gradient is that of (summed smoothed loss) / (non-pad target tokens in the global batch).
    Under `jax.pmap(..., axis_name=axis_name)` the token count and the gradients are summed over
    devices (equivalently: averaged with pmean after scaling by the device count), which makes the
    update identical to the single-device update on the whole batch even when devices hold
    different numbers of tokens. Each device draws a different dropout mask.

    Gradient accumulation: `micro_batches` = k > 1 splits the batch's R rows (per device under
    pmap) into k strided micro-batches (`split_micro_batches`; R must divide by k) that a
    `jax.lax.scan` runs one after another, summing the *unnormalised* gradient of each
    micro-batch's summed smoothed loss and its metric sums; the sum is divided once by the
    non-pad target tokens of the whole global batch. The update is therefore the update of the
    whole batch (to float32 summation order) whatever the micro-batches' padding; only the peak
    memory changes, to the activations of one micro-batch. This is how fairseq's `--update-freq`
    reaches the paper's ~25k-token batches on few devices: keep the batch of one update and
    raise k until one micro-batch fits. Micro-batch j draws its dropout mask from the step's key
    folded with j. k = 1 is the plain step (no scan, the same numbers as without the argument).
    `grad_norm` is the norm of the final (accumulated, normalised, psummed) gradient.

    Precision: params, gradients, optimizer state, logits, softmax and loss are float32 whatever
    the model's compute dtype (`TransformerConfig.dtype`; see its docstring for bfloat16).
    Pure and free of host synchronisation: jit it (or pmap it) once.
    """
    rows = batch["target"].shape[0]
    _check_micro_batches(micro_batches, rows)
    weights = target_weights(batch, pad_id)
    tokens = jnp.sum(weights)
    if axis_name is not None:
        tokens = jax.lax.psum(tokens, axis_name)
    dropout_key = _step_dropout_key(state, axis_name)

    def summed_loss(params: Any, part: Batch, key: Array) -> tuple[Array, Metrics]:
        logits = state.apply_fn(
            {"params": params},
            part["source"],
            part["decoder_input"],
            deterministic=False,
            rngs={"dropout": key},
            **_model_kwargs(part),
        )
        sums = batch_loss_sums(
            logits, part["target"], target_weights(part, pad_id), label_smoothing
        )
        return sums["loss_sum"], sums

    if micro_batches == 1:
        # Today's step exactly: the gradient of the already normalised loss.
        def loss_fn(params: Any) -> tuple[Array, Metrics]:
            loss_sum, sums = summed_loss(params, batch, dropout_key)
            return loss_sum / jnp.maximum(tokens, 1.0), sums

        grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
    else:
        used = {key: batch[key] for key in (*_MODEL_KEYS, *_PACKING_KEYS) if key in batch}
        parts = split_micro_batches(used, micro_batches)
        grad_fn = jax.grad(summed_loss, has_aux=True)

        def accumulate(carry: Any, inputs: Any) -> tuple[Any, None]:
            grad_sum, sums_so_far = carry
            index, part = inputs
            grads, sums = grad_fn(state.params, part, jax.random.fold_in(dropout_key, index))
            return (
                jax.tree.map(jnp.add, grad_sum, grads),
                jax.tree.map(jnp.add, sums_so_far, sums),
            ), None

        zero_grads = jax.tree.map(jnp.zeros_like, state.params)
        zero_sums = {key: jnp.zeros((), jnp.float32) for key in _SUM_KEYS}
        (grad_sum, sums), _ = jax.lax.scan(
            accumulate, (zero_grads, zero_sums), (jnp.arange(micro_batches), parts)
        )
        grads = jax.tree.map(lambda g: g / jnp.maximum(tokens, 1.0), grad_sum)
    if axis_name is not None:
        grads = jax.lax.psum(grads, axis_name)
        sums = jax.lax.psum(sums, axis_name)
    new_state = state.apply_gradients(grads=grads)
    metrics = dict(sums, grad_norm=optax.tree_utils.tree_norm(grads))
    return new_state, metrics


def eval_step(
    state_or_params: TrainState | Any,
    batch: Batch,
    *,
    config: TransformerConfig,
    label_smoothing: float = 0.1,
    axis_name: str | None = None,
) -> Metrics:
    """Metric sums of the deterministic model on `batch` (no update)."""
    params = getattr(state_or_params, "params", state_or_params)
    logits = Transformer(config).apply(
        {"params": params},
        batch["source"],
        batch["decoder_input"],
        deterministic=True,
        **_model_kwargs(batch),
    )
    sums = batch_loss_sums(
        logits, batch["target"], target_weights(batch, config.pad_id), label_smoothing
    )
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums
