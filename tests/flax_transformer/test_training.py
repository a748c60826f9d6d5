"""Training: the smoothed loss, metrics, the schedule, the optimizer, the train state and steps.

Every number is checked against an independent float64 NumPy formulation written here (or the
NumPy Transformer of `numpy_reference`), or against a case worked out by hand in the comments.
The model is `TransformerConfig.tiny()` with one layer per stack; each jitted step compiles once
per optimizer and batch shape, so the module shares its states and batch through fixtures.
"""

from __future__ import annotations

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import flax_transformer as ft
from flax_transformer import Transformer, TransformerConfig
from flax_transformer.training import (
    batch_loss_sums,
    create_train_state,
    ema_decay_at,
    eval_step,
    evaluation_params,
    example_loss,
    make_optimizer,
    summarize_metrics,
    train_step,
    transformer_schedule,
    with_cooldown,
)
from tests.helpers import random_tokens
from tests.numpy_reference import transformer_logits

# tiny() with one layer per stack: the same code paths as two layers at half the compile time.
TINY = TransformerConfig.tiny(num_encoder_layers=1, num_decoder_layers=1)  # dropout 0.1
NO_DROPOUT = TINY.replace(dropout_rate=0.0)
START_ID = 1
SMOOTHING = 0.1
SGD_LR = 0.5
SUM_KEYS = ("loss_sum", "nll_sum", "correct", "tokens")

# Compiled once per module; a new optimizer, config or batch shape recompiles.
jit_train_step = jax.jit(train_step)
jit_eval_step = jax.jit(eval_step, static_argnames="config")
jit_batch_loss_sums = jax.jit(batch_loss_sums)
ADAM = make_optimizer(3e-3)  # one object, so every Adam state shares a compiled step


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------
def numpy_loss_sums(logits, targets, weights, label_smoothing):
    """Smoothed cross-entropy sums in float64: -sum_k q_k log p_k, q = (1-eps) onehot + eps/V."""
    logits = np.asarray(logits, np.float64)
    targets = np.asarray(targets)
    weights = np.asarray(weights, np.float64)
    vocab = logits.shape[-1]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    one_hot = np.eye(vocab)[targets]
    smoothed_targets = (1.0 - label_smoothing) * one_hot + label_smoothing / vocab
    loss = -(smoothed_targets * log_probs).sum(axis=-1)
    nll = -(one_hot * log_probs).sum(axis=-1)
    correct = (logits.argmax(axis=-1) == targets).astype(np.float64)
    return {
        "loss_sum": (loss * weights).sum(),
        "nll_sum": (nll * weights).sum(),
        "correct": (correct * weights).sum(),
        "tokens": weights.sum(),
    }


def paper_learning_rate(step, d_model, warmup):
    """Section 5.3, in float64, with the paper's 1-based step."""
    step = np.float64(step)
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def numpy_adam(
    params,
    grads_per_step,
    lr,
    *,
    b1=0.9,
    b2=0.98,
    eps=1e-9,
    weight_decay=0.0,
    decayed=(),
    clip_norm=None,
):
    """Adam with bias correction (Kingma & Ba, algorithm 1) in float64 on a flat dict.

    Optional: global-norm clipping of each gradient first, and AdamW's decoupled decay
    (p -= lr * wd * p, on the names in `decayed`).
    """
    params = {name: np.asarray(value, np.float64) for name, value in params.items()}
    m = {name: np.zeros_like(value) for name, value in params.items()}
    v = {name: np.zeros_like(value) for name, value in params.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        grads = {name: np.asarray(value, np.float64) for name, value in grads.items()}
        if clip_norm is not None:
            norm = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
            if norm > clip_norm:
                grads = {name: g * clip_norm / norm for name, g in grads.items()}
        for name, g in grads.items():
            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * g**2
            m_hat = m[name] / (1 - b1**t)
            v_hat = v[name] / (1 - b2**t)
            update = m_hat / (np.sqrt(v_hat) + eps)
            if name in decayed:
                update = update + weight_decay * params[name]
            params[name] = params[name] - lr * update
    return params


def run_optax(optimizer, params, grads_per_step):
    state = optimizer.init(params)
    for grads in grads_per_step:
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def independent_mean_loss(config, params, batch, dropout_key=None):
    """Mean smoothed cross-entropy per non-pad target token, written with optax's own pieces."""
    logits = Transformer(config).apply(
        {"params": params},
        batch["source"],
        batch["decoder_input"],
        deterministic=dropout_key is None,
        rngs=None if dropout_key is None else {"dropout": dropout_key},
    )
    labels = optax.smooth_labels(jax.nn.one_hot(batch["target"], config.vocab_size), SMOOTHING)
    per_token = optax.softmax_cross_entropy(logits, labels)
    counted = batch["target"] != config.pad_id
    return jnp.sum(jnp.where(counted, per_token, 0.0)) / jnp.sum(counted)


jit_independent_grad = jax.jit(
    jax.grad(lambda params, batch: independent_mean_loss(NO_DROPOUT, params, batch))
)
jit_independent_dropout_loss = jax.jit(
    lambda params, batch, key: independent_mean_loss(TINY, params, batch, key)
)


def make_batch(rng, batch=3, src_len=7, tgt_len=5, config=TINY):
    source = random_tokens(rng, batch, src_len, config.vocab_size, config.pad_id)
    target = random_tokens(rng, batch, tgt_len, config.vocab_size, config.pad_id)
    decoder_input = np.concatenate([np.full((batch, 1), START_ID), target[:, :-1]], axis=1)
    return {
        "source": source,
        "decoder_input": decoder_input.astype(np.int32),
        "target": target,
    }


def host(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.fixture(scope="module")
def batch():
    batch = make_batch(np.random.default_rng(0))
    assert (batch["target"] == 0).any() and (batch["target"] != 0).any()  # padding is exercised
    return batch


@pytest.fixture(scope="module")
def sgd_state():
    """Dropout off and plain SGD: the update is exactly -lr * gradient."""
    return create_train_state(NO_DROPOUT, optax.sgd(SGD_LR), jax.random.key(0))


@pytest.fixture(scope="module")
def adam_state():
    """Dropout on (rate 0.1) and the paper's Adam."""
    return create_train_state(TINY, ADAM, jax.random.key(1))


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------
def test_hand_worked_three_class_loss():
    # Logits ln(1, 2, 5) give p = (1/8, 2/8, 5/8); log p = (-2.0794415, -1.3862944, -0.4700036).
    # Cross-entropy against the uniform distribution: (2.0794415 + 1.3862944 + 0.4700036) / 3
    #   = 1.3119132.
    # Token 0, target 2 (the argmax, correct): nll = 0.4700036,
    #   smoothed = 0.9 * 0.4700036 + 0.1 * 1.3119132 = 0.5541946.
    # Token 1, target 0 (wrong): nll = 2.0794415, smoothed = 0.9 * 2.0794415 + 0.1 * 1.3119132
    #   = 2.0026887.
    # Token 2 is padding (weight 0): its huge loss must not count.
    # Sums: loss 2.5568833, nll 2.5494452, correct 1, tokens 2.
    logits = jnp.log(jnp.array([[1.0, 2.0, 5.0], [1.0, 2.0, 5.0], [1.0, 1.0, 1e30]]))
    targets = jnp.array([2, 0, 0])
    weights = jnp.array([1.0, 1.0, 0.0])
    sums = example_loss(logits, targets, weights, label_smoothing=0.1)
    np.testing.assert_allclose(sums["loss_sum"], 2.5568833, rtol=1e-6)
    np.testing.assert_allclose(sums["nll_sum"], 2.5494452, rtol=1e-6)
    assert float(sums["correct"]) == 1.0
    assert float(sums["tokens"]) == 2.0
    # Per token: loss 1.2784416, nll 1.2747226, perplexity exp(1.2747226) = 3.5777088.
    summary = summarize_metrics(sums)
    np.testing.assert_allclose(summary["loss"], 1.2784416, rtol=1e-6)
    np.testing.assert_allclose(summary["perplexity"], math.sqrt(8 / 5 * 8), rtol=1e-6)
    assert summary["accuracy"] == 0.5


def test_full_smoothing_is_the_uniform_cross_entropy_and_none_is_the_nll():
    # Two classes, logits (0, ln 3): p = (1/4, 3/4). Target 1.
    # epsilon 0: loss = nll = -ln(3/4) = 0.2876821.
    # epsilon 1: q = (1/2, 1/2), loss = (ln 4 + ln(4/3)) / 2 = 0.8369882, independent of the target.
    logits = jnp.array([[0.0, math.log(3.0)]])
    weights = jnp.ones(1)
    for target in (0, 1):
        full = example_loss(logits, jnp.array([target]), weights, label_smoothing=1.0)
        np.testing.assert_allclose(full["loss_sum"], 0.8369882, rtol=1e-6)
    none = example_loss(logits, jnp.array([1]), weights, label_smoothing=0.0)
    np.testing.assert_allclose(none["loss_sum"], 0.2876821, rtol=1e-6)
    np.testing.assert_allclose(none["nll_sum"], 0.2876821, rtol=1e-6)


@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from([(1, 1, 2), (3, 5, 7), (4, 6, 64)]),
    label_smoothing=st.sampled_from([0.0, 0.1, 0.5, 1.0]) | st.floats(0.0, 1.0),
    logit_scale=st.sampled_from([1.0, 40.0]),
)
def test_batch_loss_sums_match_numpy(seed, shape, label_smoothing, logit_scale):
    """Random logits (large ones test a stable log-softmax), random padding, a fully padded row."""
    rng = np.random.default_rng(seed)
    batch, length, vocab = shape
    logits = (logit_scale * rng.standard_normal(shape)).astype(np.float32)
    targets = rng.integers(0, vocab, size=(batch, length)).astype(np.int32)
    weights = (rng.random((batch, length)) < 0.7).astype(np.float32)
    if batch > 1:
        weights[-1] = 0.0  # a fully padded row
    targets[weights == 0] = 0  # padding positions hold the pad id
    got = jit_batch_loss_sums(logits, targets, weights, label_smoothing)
    expected = numpy_loss_sums(logits, targets, weights, label_smoothing)
    for key in ("loss_sum", "nll_sum"):
        np.testing.assert_allclose(got[key], expected[key], rtol=2e-5, atol=1e-4)
    assert float(got["correct"]) == expected["correct"]
    assert float(got["tokens"]) == expected["tokens"]
    if label_smoothing == 0.0:
        np.testing.assert_allclose(got["loss_sum"], got["nll_sum"], rtol=1e-6)


def test_a_target_tied_for_the_largest_logit_counts_as_correct():
    # Logits (0, 5, -1, 5): ids 1 and 3 share the largest logit, so either target is correct.
    logits = jnp.array([[0.0, 5.0, -1.0, 5.0]] * 4)
    sums = jax.vmap(example_loss, in_axes=(0, 0, 0))(
        logits[:, None], jnp.array([[1], [3], [0], [2]]), jnp.ones((4, 1))
    )
    np.testing.assert_array_equal(sums["correct"], [1.0, 1.0, 0.0, 0.0])


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_loss_gradients_match_numpy(rng, label_smoothing):
    """The hand-written gradient: d/d logits of (a * loss_sum + b * nll_sum) is, per token,
    w * (a (p - q) + b (p - onehot)) with q the smoothed targets, and d loss_sum / d epsilon
    is sum_t w (uniform cross-entropy - nll): all in float64 from the definitions."""
    logits = (4.0 * rng.standard_normal((3, 5, 11))).astype(np.float32)
    targets = rng.integers(0, 11, size=(3, 5)).astype(np.int32)
    weights = (rng.random((3, 5)) < 0.7).astype(np.float32)
    a, b = 0.75, -0.5  # a combination of both outputs: each one's cotangent is exercised

    def objective(logits, epsilon):
        sums = batch_loss_sums(logits, targets, weights, epsilon)
        return a * sums["loss_sum"] + b * sums["nll_sum"]

    d_logits, d_epsilon = jax.jit(jax.grad(objective, argnums=(0, 1)))(
        logits, jnp.float32(label_smoothing)
    )
    x = logits.astype(np.float64)
    probs = np.exp(x - x.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    one_hot = np.eye(11)[targets]
    smoothed_targets = (1.0 - label_smoothing) * one_hot + label_smoothing / 11
    w = weights[..., None].astype(np.float64)
    expected = w * (a * (probs - smoothed_targets) + b * (probs - one_hot))
    np.testing.assert_allclose(d_logits, expected, rtol=1e-5, atol=1e-6)
    log_probs = np.log(probs)
    uniform_minus_nll = -log_probs.mean(-1) + (one_hot * log_probs).sum(-1)
    np.testing.assert_allclose(d_epsilon, a * (weights * uniform_minus_nll).sum(), rtol=1e-5)


def test_a_fully_padded_batch_has_zero_sums_and_summarizes_without_dividing_by_zero(rng):
    logits = rng.standard_normal((2, 3, 5)).astype(np.float32)
    sums = batch_loss_sums(logits, np.zeros((2, 3), np.int32), np.zeros((2, 3)))
    for key in SUM_KEYS:
        assert float(sums[key]) == 0.0
    summary = summarize_metrics(sums)
    assert summary["loss"] == 0.0 and summary["tokens"] == 0.0 and summary["perplexity"] == 1.0


def test_batch_loss_sums_is_the_sum_of_per_example_losses(rng):
    logits = rng.standard_normal((4, 6, 11)).astype(np.float32)
    targets = rng.integers(0, 11, size=(4, 6)).astype(np.int32)
    weights = (rng.random((4, 6)) < 0.6).astype(np.float32)
    batched = batch_loss_sums(logits, targets, weights, 0.2)
    for key in SUM_KEYS:
        per_row = sum(
            float(example_loss(logits[i], targets[i], weights[i], 0.2)[key]) for i in range(4)
        )
        np.testing.assert_allclose(batched[key], per_row, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# summarize_metrics
# ---------------------------------------------------------------------------------------------
def test_summarize_adds_sums_exactly_and_averages_other_keys():
    first = {"loss_sum": 3.0, "nll_sum": 2.0, "correct": 1.0, "tokens": 4.0, "grad_norm": 1.0}
    second = {"loss_sum": 5.0, "nll_sum": 6.0, "correct": 3.0, "tokens": 4.0, "grad_norm": 3.0}
    # Totals: loss 8, nll 8, correct 4 over 8 tokens; grad_norm is averaged over the dicts.
    summary = summarize_metrics([first, second])
    assert summary == {
        "loss": 1.0,
        "nll": 1.0,
        "perplexity": pytest.approx(math.e),
        "accuracy": 0.5,
        "tokens": 8.0,
        "grad_norm": 2.0,
    }
    # A generator of device arrays works too.
    as_arrays = summarize_metrics(jax.tree.map(jnp.asarray, m) for m in (first, second))
    assert as_arrays == summary
    with pytest.raises(ValueError, match="at least one"):
        summarize_metrics([])


def test_summarizing_chunks_equals_summarizing_the_whole_batch(rng):
    logits = rng.standard_normal((6, 4, 9)).astype(np.float32)
    targets = rng.integers(0, 9, size=(6, 4)).astype(np.int32)
    weights = (rng.random((6, 4)) < 0.5).astype(np.float32)
    whole = summarize_metrics(batch_loss_sums(logits, targets, weights))
    chunks = [
        batch_loss_sums(logits[i:j], targets[i:j], weights[i:j])
        for i, j in ((0, 1), (1, 4), (4, 6))
    ]
    parts = summarize_metrics(chunks)
    assert parts.keys() == whole.keys()
    for key, value in whole.items():
        assert parts[key] == pytest.approx(value, rel=1e-6)
    expected = numpy_loss_sums(logits, targets, weights, SMOOTHING)
    assert parts["loss"] == pytest.approx(expected["loss_sum"] / expected["tokens"], rel=1e-5)
    assert parts["perplexity"] == pytest.approx(
        math.exp(expected["nll_sum"] / expected["tokens"]), rel=1e-5
    )
    assert parts["accuracy"] == pytest.approx(expected["correct"] / expected["tokens"])


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("d_model", "warmup"), [(512, 4000), (32, 10)])
def test_schedule_matches_the_paper_formula(d_model, warmup):
    schedule = transformer_schedule(d_model, warmup)
    for paper_step in (1, 2, warmup - 1, warmup, warmup + 1, 10 * warmup):
        count = paper_step - 1  # optax counts updates from 0
        np.testing.assert_allclose(
            schedule(count), paper_learning_rate(paper_step, d_model, warmup), rtol=1e-6
        )
    # The peak is at paper step == warmup (count warmup - 1): d_model^-0.5 * warmup^-0.5.
    rates = np.asarray(schedule(jnp.arange(3 * warmup)))
    assert int(np.argmax(rates)) == warmup - 1
    np.testing.assert_allclose(rates.max(), (d_model * warmup) ** -0.5, rtol=1e-6)
    assert np.all(np.diff(rates[:warmup]) > 0) and np.all(np.diff(rates[warmup - 1 :]) < 0)


def test_schedule_scale_multiplies_the_whole_curve():
    counts = jnp.array([0, 5, 99, 1000])
    base = np.asarray(transformer_schedule(64, 100)(counts))
    np.testing.assert_allclose(transformer_schedule(64, 100, scale=2.5)(counts), 2.5 * base)
    np.testing.assert_allclose(base[0], 64**-0.5 * 100**-1.5, rtol=1e-6)  # step 1, not 0


@pytest.mark.parametrize(("d_model", "warmup"), [(512, 0), (512, -4), (0, 4000), (-8, 10)])
def test_schedule_rejects_non_positive_arguments(d_model, warmup):
    with pytest.raises(ValueError, match="must be positive"):
        transformer_schedule(d_model, warmup)


def test_cooldown_ramps_the_schedule_linearly_to_zero():
    """Total 100 updates, cooldown 40: full rate up to update 60, then (100 - count) / 40."""
    cooled = with_cooldown(transformer_schedule(64, 10, scale=0.5), 100, 40)
    for count in (0, 9, 30, 60, 61, 80, 99, 100, 130):
        ramp = min(1.0, max(0.0, (100 - count) / 40))
        expected = 0.5 * paper_learning_rate(count + 1, 64, 10) * ramp
        np.testing.assert_allclose(float(cooled(count)), expected, rtol=1e-6, atol=1e-12)
    base = transformer_schedule(64, 10)
    assert with_cooldown(base, 100, 0) is base
    for bad in (-1, 101):
        with pytest.raises(ValueError, match="cooldown_steps must be in"):
            with_cooldown(base, 100, bad)


def test_adam_with_the_schedule_applies_the_step_one_rate_first():
    # With a constant gradient of 1 every bias-corrected Adam step is exactly -lr (up to eps), so
    # the k-th update reveals the learning rate optax fed it: the paper's rate at step k.
    optimizer = make_optimizer(transformer_schedule(32, 4))
    params = {"w": jnp.zeros(())}
    state = optimizer.init(params)
    for paper_step in range(1, 9):
        updates, state = optimizer.update({"w": jnp.ones(())}, state, params)
        np.testing.assert_allclose(updates["w"], -paper_learning_rate(paper_step, 32, 4), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------
def _flat_tree(rng):
    return {
        "kernel": rng.standard_normal((3, 4)).astype(np.float32),
        "bias": rng.standard_normal(4).astype(np.float32),
        "scale": (1.0 + 0.1 * rng.standard_normal(4)).astype(np.float32),
    }


def _gradients(rng, scales):
    """One gradient tree per step, with step-dependent magnitudes (so beta2 matters) and a leaf
    of ~1e-9 gradients (so epsilon matters)."""
    steps = []
    for scale in scales:
        grads = {name: scale * g for name, g in _flat_tree(rng).items()}
        grads["scale"] = (1e-9 * rng.standard_normal(4)).astype(np.float32)
        steps.append(grads)
    return steps


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"b1": 0.8, "b2": 0.9, "eps": 1e-6},
        {"weight_decay": 0.1},
        {"clip_norm": 1.0},
        {"clip_norm": 2.0, "weight_decay": 0.05},
    ],
    ids=["paper", "custom-betas", "adamw", "clipped", "clipped-adamw"],
)
def test_optimizer_matches_numpy_adam(rng, options):
    params = _flat_tree(rng)
    grads = _gradients(rng, scales=[1.0, 10.0, 0.1, 3.0])
    lr = 0.01
    got, _ = run_optax(make_optimizer(lr, **options), params, grads)
    expected = numpy_adam(params, grads, lr, decayed=("kernel",), **options)
    for name in params:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-7, err_msg=name)
    # The paper's betas and epsilon are the defaults: the library's default optimizer is not
    # optax's (0.9, 0.999, 1e-8).
    if not options:
        optax_defaults = numpy_adam(params, grads, lr, b2=0.999, eps=1e-8)
        assert not np.allclose(got["kernel"], optax_defaults["kernel"], rtol=1e-5, atol=1e-7)
        assert not np.allclose(got["scale"], optax_defaults["scale"], rtol=1e-5, atol=1e-7)


def test_clipping_rescales_a_large_gradient_to_the_clip_norm():
    clip = 1.0
    params = {"a": jnp.zeros(2), "b": jnp.zeros((1, 2))}
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[0.0, 4.0]])}  # global norm 5
    _, state = run_optax(make_optimizer(0.1, clip_norm=clip), params, [grads])
    # Adam's first moment after one step is (1 - b1) * (the gradient it saw) = 0.1 * g / 5.
    mu = optax.tree_utils.tree_get(state, "mu")
    np.testing.assert_allclose(mu["a"], [0.1 * 3.0 / 5.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(mu["b"], [[0.0, 0.1 * 4.0 / 5.0]], rtol=1e-6)
    np.testing.assert_allclose(optax.tree.norm(mu) / 0.1, clip, rtol=1e-6)
    # Below the clip norm the gradient passes untouched.
    small = jax.tree.map(lambda g: g / 50.0, grads)
    _, state = run_optax(make_optimizer(0.1, clip_norm=clip), params, [small])
    np.testing.assert_allclose(optax.tree_utils.tree_get(state, "mu")["a"], [0.1 * 0.06, 0.0])


def test_weight_decay_with_zero_gradient_shrinks_matrices_and_leaves_vectors(rng):
    params = _flat_tree(rng)
    lr, decay = 0.1, 0.01
    zero = jax.tree.map(np.zeros_like, params)
    got, _ = run_optax(make_optimizer(lr, weight_decay=decay), params, [zero])
    np.testing.assert_allclose(
        got["kernel"], params["kernel"] - lr * decay * params["kernel"], rtol=1e-6
    )
    np.testing.assert_array_equal(got["bias"], params["bias"])
    np.testing.assert_array_equal(got["scale"], params["scale"])


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
def test_weight_decay_spares_every_bias_and_layer_norm_scale_of_the_model(scan_layers):
    """AdamW's mask on the real parameter tree: kernels and embeddings decay; no bias or
    LayerNorm scale does, whatever its rank (attention biases are [heads, d_k]; scanned layers
    add a leading layer axis to every leaf)."""
    config = TransformerConfig.tiny(scan_layers=scan_layers)
    shapes = jax.eval_shape(lambda key: ft.init_params(config, key), jax.random.key(0))
    # Random values everywhere: initial biases are zeros, which decay would leave unchanged.
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
    lr, decay = 0.1, 0.01
    optimizer = make_optimizer(lr, weight_decay=decay)
    zero = jax.tree.map(np.zeros_like, params)
    got = jax.jit(lambda p, g: run_optax(optimizer, p, [g])[0])(params, zero)  # one compile
    wrongly_decayed, not_decayed = [], []
    for (path, before), after in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(got), strict=True
    ):
        name = jax.tree_util.keystr(path)
        before, after = np.asarray(before), np.asarray(after)
        if path[-1].key in ("bias", "scale"):
            if not np.array_equal(after, before):
                wrongly_decayed.append(f"{name} {before.shape}")
        else:
            assert path[-1].key in ("kernel", "embedding"), name
            if not np.allclose(after, before * (1 - lr * decay), rtol=1e-6, atol=0):
                not_decayed.append(name)
    assert not not_decayed, f"weights that did not decay: {not_decayed}"
    assert not wrongly_decayed, f"biases/scales that decayed: {wrongly_decayed}"


@pytest.mark.parametrize(
    "options", [{"clip_norm": 0.0}, {"clip_norm": -1.0}, {"weight_decay": -0.1}]
)
def test_optimizer_rejects_invalid_arguments(options):
    with pytest.raises(ValueError, match="clip_norm|weight_decay"):
        make_optimizer(1e-3, **options)


# ---------------------------------------------------------------------------------------------
# Train state
# ---------------------------------------------------------------------------------------------
def test_create_train_state_splits_the_key_as_documented(sgd_state):
    params_key, dropout_key = jax.random.split(jax.random.key(0))
    assert int(sgd_state.step) == 0
    assert sgd_state.dropout_key.dtype == jnp.uint32
    np.testing.assert_array_equal(sgd_state.dropout_key, jax.random.key_data(dropout_key))
    chex.assert_trees_all_equal(sgd_state.params, ft.init_params(NO_DROPOUT, params_key))
    # A legacy raw uint32 key gives the same state.
    legacy = create_train_state(NO_DROPOUT, optax.sgd(SGD_LR), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(legacy.dropout_key, sgd_state.dropout_key)
    chex.assert_trees_all_equal(legacy.params, sgd_state.params)


def test_ema_decay_ramps_as_tensorflows_and_stops_at_the_cap():
    """d_t = min(decay, (1 + t) / (10 + t)), worked by hand."""
    ramp = np.asarray(ema_decay_at(0.95, jnp.array([1, 8, 90, 190, 10_000])))
    np.testing.assert_allclose(ramp, [2 / 11, 0.5, 0.91, 0.95, 0.95], rtol=1e-6)


def test_the_ema_follows_the_recursion_and_never_feeds_back(sgd_state, batch):
    """Four SGD steps with an EMA: the params are bit-identical to those of a state without
    one, and the EMA is ema_t = ema_{t-1} + (1 - d_t) (params_t - ema_{t-1}) from the initial
    params, computed here in float64."""
    decay = 0.3  # low, so that the cap is reached within the steps (d_1 = 2/11, d_2 = 0.25)
    state = create_train_state(NO_DROPOUT, optax.sgd(SGD_LR), jax.random.key(0), ema_decay=decay)
    chex.assert_trees_all_equal(state.ema_params, sgd_state.params)
    plain, expected = sgd_state, jax.tree.map(np.float64, host(sgd_state.params))
    for t in range(1, 5):
        state, _ = jit_train_step(state, batch)
        plain, _ = jit_train_step(plain, batch)
        keep = min(decay, (1 + t) / (10 + t))
        expected = jax.tree.map(
            lambda ema, p, keep=keep: ema + (1 - keep) * (np.float64(p) - ema),
            expected,
            host(plain.params),
        )
    chex.assert_trees_all_equal(state.params, plain.params)
    moved = max(
        float(np.abs(np.float64(e) - np.float64(p)).max())
        for e, p in zip(jax.tree.leaves(expected), jax.tree.leaves(plain.params), strict=True)
    )
    assert moved > 1e-3  # the average lags the params: a copy of them would fail below
    chex.assert_trees_all_close(host(state.ema_params), expected, rtol=1e-5, atol=1e-7)
    assert evaluation_params(state) is state.ema_params
    assert evaluation_params(plain) is plain.params


def test_without_an_ema_the_state_is_the_plain_one(sgd_state):
    assert sgd_state.ema_params is None and sgd_state.ema_decay == 0.0
    with_ema = create_train_state(NO_DROPOUT, optax.sgd(SGD_LR), jax.random.key(0), ema_decay=0.5)
    params_leaves = len(jax.tree.leaves(sgd_state.params))
    assert len(jax.tree.leaves(with_ema)) == len(jax.tree.leaves(sgd_state)) + params_leaves


@pytest.mark.parametrize("decay", [1.0, -0.1, float("nan")])
def test_an_ema_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\) \(0: no EMA\), got"):
        create_train_state(NO_DROPOUT, optax.sgd(SGD_LR), jax.random.key(0), ema_decay=decay)


# ---------------------------------------------------------------------------------------------
# train_step and eval_step
# ---------------------------------------------------------------------------------------------
def _reference_sums(config, params, batch):
    logits = transformer_logits(
        host(params), config.to_dict(), batch["source"], batch["decoder_input"]
    )
    weights = batch["target"] != config.pad_id
    return numpy_loss_sums(logits, batch["target"], weights, SMOOTHING)


def _assert_sums_match_reference(sums, expected):
    for key in ("loss_sum", "nll_sum"):
        np.testing.assert_allclose(sums[key], expected[key], rtol=1e-4, err_msg=key)
    assert float(sums["correct"]) == expected["correct"]
    assert float(sums["tokens"]) == expected["tokens"]


def test_train_step_loss_matches_the_numpy_transformer(sgd_state, batch):
    new_state, metrics = jit_train_step(sgd_state, batch)
    assert int(new_state.step) == 1
    expected = _reference_sums(NO_DROPOUT, sgd_state.params, batch)
    _assert_sums_match_reference(metrics, expected)
    summary = summarize_metrics(metrics)
    assert summary["loss"] == pytest.approx(expected["loss_sum"] / expected["tokens"], rel=1e-4)


def test_train_step_applies_the_gradient_of_the_mean_loss_per_non_pad_token(sgd_state, batch):
    """With SGD the update is -lr * grad of sum(smoothed CE over non-pad tokens) / their count."""
    new_state, metrics = jit_train_step(sgd_state, batch)
    grads = host(jit_independent_grad(sgd_state.params, batch))
    update = jax.tree.map(
        lambda new, old: np.asarray(new) - np.asarray(old), new_state.params, sgd_state.params
    )
    largest = max(float(np.abs(SGD_LR * g).max()) for g in jax.tree.leaves(grads))
    assert largest > 1e-2  # a wrong normaliser (rows, or tokens incl. padding) would show
    chex.assert_trees_all_close(
        update, jax.tree.map(lambda g: -SGD_LR * g, grads), rtol=1e-4, atol=2e-6
    )
    norm = math.sqrt(sum(float((np.float64(g) ** 2).sum()) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-4)


def test_an_all_padding_row_does_not_change_the_update(sgd_state, batch):
    """A row of pad ids (source, decoder input and target) adds no loss, token or gradient."""
    padded = {
        key: np.concatenate([value, np.zeros_like(value[:1])]) for key, value in batch.items()
    }
    state, metrics = jit_train_step(sgd_state, batch)
    padded_state, padded_metrics = jit_train_step(sgd_state, padded)
    update = jax.tree.map(np.subtract, host(state.params), host(sgd_state.params))
    padded_update = jax.tree.map(np.subtract, host(padded_state.params), host(sgd_state.params))
    chex.assert_trees_all_close(padded_update, update, rtol=1e-5, atol=1e-7)
    for key in SUM_KEYS:
        np.testing.assert_allclose(padded_metrics[key], metrics[key], rtol=1e-6, err_msg=key)


def test_training_overfits_a_fixed_batch(adam_state, batch):
    """30 Adam steps on one small batch cut both the training and the eval loss clearly."""
    state, losses = adam_state, []
    for _ in range(30):
        state, metrics = jit_train_step(state, batch)
        losses.append(summarize_metrics(metrics)["loss"])
    assert int(state.step) == 30
    assert losses[-1] < 0.6 * losses[0], losses
    before = summarize_metrics(jit_eval_step(adam_state, batch, config=TINY))["loss"]
    after = summarize_metrics(jit_eval_step(state, batch, config=TINY))["loss"]
    assert after < 0.6 * before, (before, after)


def test_same_seed_and_batch_give_bit_identical_training(adam_state, batch):
    def run(seed):
        state = create_train_state(TINY, ADAM, jax.random.key(seed))
        # Every TrainState gets a new `Transformer(config).apply`, a static field that compares
        # unequal, so jit would recompile; share one (the same function) to keep the test fast.
        state = state.replace(apply_fn=adam_state.apply_fn)
        for _ in range(3):
            state, metrics = jit_train_step(state, batch)
        return host(state.params), host(metrics)

    params, metrics = run(1)
    again_params, again_metrics = run(1)
    chex.assert_trees_all_equal(params, again_params)
    chex.assert_trees_all_equal(metrics, again_metrics)
    other_params, _ = run(2)
    assert not np.array_equal(
        params["shared_embedding"]["embedding"], other_params["shared_embedding"]["embedding"]
    )


def test_dropout_mask_changes_with_the_step_and_eval_is_deterministic(adam_state, batch):
    at_step = {step: jit_train_step(adam_state.replace(step=step), batch)[1] for step in (0, 1)}
    assert float(at_step[0]["loss_sum"]) != float(at_step[1]["loss_sum"])
    repeat = jit_train_step(adam_state, batch)[1]
    assert float(repeat["loss_sum"]) == float(at_step[0]["loss_sum"])  # same step, same mask
    eval_0 = jit_eval_step(adam_state, batch, config=TINY)
    eval_1 = jit_eval_step(adam_state.replace(step=1), batch, config=TINY)
    chex.assert_trees_all_equal(host(eval_0), host(eval_1))
    assert float(eval_0["loss_sum"]) != float(at_step[0]["loss_sum"])  # dropout really is on


def test_step_dropout_key_is_the_state_key_folded_with_the_step(adam_state, batch):
    """Documented in TrainState: each step folds its step number into the stored key."""
    step = 5
    _, metrics = jit_train_step(adam_state.replace(step=step), batch)
    key = jax.random.fold_in(jax.random.wrap_key_data(adam_state.dropout_key), step)
    expected = jit_independent_dropout_loss(adam_state.params, batch, key)
    np.testing.assert_allclose(metrics["loss_sum"] / metrics["tokens"], expected, rtol=1e-5)


@pytest.mark.parametrize("pad_id", [0, 3])
def test_eval_step_matches_the_numpy_transformer(adam_state, pad_id):
    """Deterministic (no dropout although the config has 0.1); padding taken from the config."""
    config = TINY.replace(pad_id=pad_id)
    batch = make_batch(np.random.default_rng(5), config=config)
    assert (batch["target"] == pad_id).any()
    sums = jit_eval_step(adam_state, batch, config=config)
    _assert_sums_match_reference(sums, _reference_sums(config, adam_state.params, batch))
    from_params = jit_eval_step(adam_state.params, batch, config=config)
    chex.assert_trees_all_equal(host(from_params), host(sums))


# ---------------------------------------------------------------------------------------------
# Gradient accumulation (train_step(..., micro_batches=k))
# ---------------------------------------------------------------------------------------------
jit_accumulated_step = jax.jit(train_step, static_argnames="micro_batches")
# Row r's target holds TARGET_LENGTHS[r % 4] tokens. Strided micro-batches (rows j, j + k, ...)
# then hold very different token counts: k=2 -> 30 and 6, k=4 -> 18, 2, 12 and 4 (8 rows).
TARGET_LENGTHS = (9, 1, 6, 2)
ACCUM_ROWS = 8


def uneven_padding_batch(rng, rows=ACCUM_ROWS, src_len=7, config=NO_DROPOUT):
    tgt_len = max(TARGET_LENGTHS)
    target = rng.integers(1, config.vocab_size, size=(rows, tgt_len)).astype(np.int32)
    lengths = np.array([TARGET_LENGTHS[r % len(TARGET_LENGTHS)] for r in range(rows)])
    target[np.arange(tgt_len)[None, :] >= lengths[:, None]] = config.pad_id
    decoder_input = np.concatenate([np.full((rows, 1), START_ID), target[:, :-1]], axis=1)
    return {
        "source": random_tokens(rng, rows, src_len, config.vocab_size, config.pad_id),
        "decoder_input": decoder_input.astype(np.int32),
        "target": target,
    }


def independent_summed_loss(config, params, batch):
    """Smoothed cross-entropy summed (not averaged) over non-pad targets, from optax's pieces."""
    logits = Transformer(config).apply({"params": params}, batch["source"], batch["decoder_input"])
    labels = optax.smooth_labels(jax.nn.one_hot(batch["target"], config.vocab_size), SMOOTHING)
    per_token = optax.softmax_cross_entropy(logits, labels)
    return jnp.sum(jnp.where(batch["target"] != config.pad_id, per_token, 0.0))


jit_independent_summed_grad = jax.jit(
    jax.grad(lambda params, batch: independent_summed_loss(NO_DROPOUT, params, batch))
)


@pytest.fixture(scope="module")
def uneven_batch():
    return uneven_padding_batch(np.random.default_rng(11))


def _micro_batch_tokens(batch, k):
    return [int((batch["target"][j::k] != 0).sum()) for j in range(k)]


@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_step_equals_the_whole_batch_step(sgd_state, uneven_batch, k):
    """k micro-batches with very different padding: the same update and metric sums as one
    step on the whole batch (normalised once by the whole batch's tokens)."""
    tokens = _micro_batch_tokens(uneven_batch, k)
    assert max(tokens) >= 3 * min(tokens), tokens  # precondition: very different padding
    whole_state, whole = jit_train_step(sgd_state, uneven_batch)
    state, metrics = jit_accumulated_step(sgd_state, uneven_batch, micro_batches=k)
    assert int(state.step) == 1
    chex.assert_trees_all_close(host(state.params), host(whole_state.params), rtol=1e-5, atol=1e-7)
    for key in ("loss_sum", "nll_sum", "grad_norm"):
        np.testing.assert_allclose(metrics[key], whole[key], rtol=1e-5, err_msg=key)
    for key in ("correct", "tokens"):
        assert float(metrics[key]) == float(whole[key]), key
    assert float(metrics["tokens"]) == sum(tokens)


@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_gradient_is_the_sum_of_separate_micro_batch_gradients(
    sgd_state, uneven_batch, k
):
    """Reference: one jax.grad call per micro-batch (rows j::k, sliced in NumPy) of the summed
    loss written with optax's pieces, added in float64 and divided by all the batch's tokens.
    A per-micro-batch normalisation (the mean of the micro-batches' mean gradients) is far from
    it on this batch, so the comparison tells the two apart."""
    parts = [{key: value[j::k] for key, value in uneven_batch.items()} for j in range(k)]
    tokens = _micro_batch_tokens(uneven_batch, k)
    grads = [host(jit_independent_summed_grad(sgd_state.params, part)) for part in parts]
    expected = jax.tree.map(lambda *g: sum(np.float64(x) for x in g) / sum(tokens), *grads)
    per_micro_batch_means = jax.tree.map(
        lambda *g: np.mean([np.float64(x) / n for x, n in zip(g, tokens, strict=True)], 0), *grads
    )
    state, _ = jit_accumulated_step(sgd_state, uneven_batch, micro_batches=k)
    applied = jax.tree.map(
        lambda new, old: (np.float64(new) - np.float64(old)) / -SGD_LR,
        host(state.params),
        host(sgd_state.params),
    )
    chex.assert_trees_all_close(applied, expected, rtol=1e-4, atol=2e-6)
    wrong = jax.tree.leaves(per_micro_batch_means)
    assert any(
        not np.allclose(w, e, rtol=1e-2, atol=1e-4)
        for w, e in zip(wrong, jax.tree.leaves(expected), strict=True)
    )


def packed_batch():
    """Four rows of two packed examples each, segment lengths differing per row: a split that
    paired a row's tokens with another row's segment ids or positions would change the loss."""
    rng = np.random.default_rng(12)
    source_lengths = [(3, 4), (2, 2), (5, 1), (1, 3)]
    target_lengths = [(2, 5), (3, 1), (1, 4), (4, 2)]
    batch = {}
    for side, lengths, width in (("source", source_lengths, 8), ("target", target_lengths, 8)):
        tokens = np.zeros((4, width), np.int32)
        segments = np.zeros((4, width), np.int32)
        positions = np.zeros((4, width), np.int32)
        for row, (a, b) in enumerate(lengths):
            tokens[row, : a + b] = rng.integers(2, NO_DROPOUT.vocab_size, size=a + b)
            segments[row, :a], segments[row, a : a + b] = 1, 2
            positions[row, :a], positions[row, a : a + b] = np.arange(a), np.arange(b)
        batch[side] = tokens
        batch[f"{side}_segment_ids"] = segments
        batch[f"{side}_positions"] = positions
    # Each packed example's decoder input: the start token, then its own target shifted right.
    decoder_input = np.zeros_like(batch["target"])
    for row, (a, b) in enumerate(target_lengths):
        for start, length in ((0, a), (a, b)):
            decoder_input[row, start] = START_ID
            end = start + length
            decoder_input[row, start + 1 : end] = batch["target"][row, start : end - 1]
    batch["decoder_input"] = decoder_input
    return batch


def test_accumulation_splits_the_packing_keys_with_the_rows(sgd_state):
    batch = packed_batch()
    whole_state, whole = jit_train_step(sgd_state, batch)
    state, metrics = jit_accumulated_step(sgd_state, batch, micro_batches=2)
    chex.assert_trees_all_close(host(state.params), host(whole_state.params), rtol=1e-5, atol=1e-7)
    for key in SUM_KEYS:
        np.testing.assert_allclose(metrics[key], whole[key], rtol=1e-5, err_msg=key)
    # The packing keys matter: without them (one example per row) the loss is another.
    unpacked = {key: batch[key] for key in ("source", "decoder_input", "target")}
    _, plain = jit_accumulated_step(sgd_state, unpacked, micro_batches=2)
    assert abs(float(plain["loss_sum"]) - float(whole["loss_sum"])) > 1e-3


def test_each_micro_batch_draws_its_own_dropout_mask(adam_state, batch):
    """Two copies of one row, k=2: micro-batch j is copy j, with dropout key
    fold_in(fold_in(state key, step), j). The loss is the sum of the two losses under those keys,
    and they differ: the masks differ."""
    row = {key: np.repeat(value[:1], 2, axis=0) for key, value in batch.items()}
    step = 3
    _, metrics = jit_accumulated_step(adam_state.replace(step=step), row, micro_batches=2)
    step_key = jax.random.fold_in(jax.random.wrap_key_data(adam_state.dropout_key), step)
    one_row = {key: value[:1] for key, value in row.items()}
    tokens = float((one_row["target"] != TINY.pad_id).sum())
    losses = [
        tokens * float(jit_independent_dropout_loss(adam_state.params, one_row, key))
        for key in (jax.random.fold_in(step_key, 0), jax.random.fold_in(step_key, 1))
    ]
    assert abs(losses[0] - losses[1]) > 1e-3
    np.testing.assert_allclose(metrics["loss_sum"], sum(losses), rtol=1e-5)


def test_micro_batches_must_be_a_positive_int_dividing_the_rows(sgd_state, uneven_batch):
    message = (
        "the batch's 8 rows (per device under pmap) do not split into micro_batches=3; "
        "use a multiple of 3 rows"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        train_step(sgd_state, uneven_batch, micro_batches=3)
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="micro_batches must be a positive int, got"):
            train_step(sgd_state, uneven_batch, micro_batches=bad)
        with pytest.raises(ValueError, match="micro_batches must be a positive int, got"):
            ft.DataParallel("single", model_config=NO_DROPOUT, micro_batches=bad)


def test_put_batch_and_check_batch_size_name_the_micro_batches(uneven_batch):
    parallel = ft.DataParallel("single", model_config=NO_DROPOUT, micro_batches=3)
    message = (
        "batch_size 8 is not divisible by the 1 devices x 3 micro-batches; use a multiple of 3 "
        "(e.g. 9)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        parallel.put_batch(uneven_batch)
    with pytest.raises(ValueError, match=re.escape(message)):
        parallel.check_batch_size(8)
    # Evaluation batches are not split into micro-batches: any multiple of the devices.
    parallel.check_batch_size(8, train=False)
    assert parallel.put_batch(uneven_batch, train=False)["target"].shape == (8, 9)
    assert parallel.row_multiple() == 3 and parallel.row_multiple(train=False) == 1


# ---------------------------------------------------------------------------------------------
# bfloat16 compute
# ---------------------------------------------------------------------------------------------
BF16 = NO_DROPOUT.replace(dtype="bfloat16")


def recording(seen):
    """An optax transformation that passes updates through and records their dtypes (at trace
    time): what the optimizer is given, i.e. the gradients the step applies."""

    def update(updates, state, params=None):
        seen.append(jax.tree.map(lambda g: g.dtype, updates))
        return updates, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _float_dtypes(tree):
    return {
        leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)
    }


def test_bf16_step_keeps_params_gradients_and_optimizer_state_float32(sgd_state, batch):
    seen = []
    optimizer = optax.chain(recording(seen), make_optimizer(1e-3))
    state = create_train_state(BF16, optimizer, jax.random.key(0))
    # The parameters are those of the float32 state (same key): compare the losses below.
    chex.assert_trees_all_equal(host(state.params), host(sgd_state.params))
    new_state, metrics = jax.jit(train_step)(state, batch)
    assert seen and set(jax.tree.leaves(seen[-1])) == {jnp.dtype(jnp.float32)}
    assert _float_dtypes(new_state.params) == {jnp.dtype(jnp.float32)}
    assert _float_dtypes(new_state.opt_state) == {jnp.dtype(jnp.float32)}
    assert {np.asarray(value).dtype for value in metrics.values()} == {np.dtype(np.float32)}
    # bfloat16 really computes (the loss is not float32's to the bit) and stays close to it.
    _, f32 = jit_train_step(sgd_state, batch)
    assert float(metrics["loss_sum"]) != float(f32["loss_sum"])
    np.testing.assert_allclose(metrics["loss_sum"], f32["loss_sum"], rtol=2e-2)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_bf16_logits_and_attention_softmax_are_float32(batch, tied):
    """The logits are float32 values, not bfloat16 ones widened (which would round every logit
    to 8 significant bits before the loss); the attention weights (softmax) are float32."""
    config = BF16.replace(tie_output_embedding=tied)
    params = ft.init_params(config, jax.random.key(0))
    logits, variables = Transformer(config).apply(
        {"params": params}, batch["source"], batch["decoder_input"], mutable=["intermediates"]
    )
    assert logits.dtype == jnp.float32
    representable = np.asarray(logits) == np.asarray(logits.astype(jnp.bfloat16), np.float32)
    assert representable.mean() < 0.5
    weights = jax.tree.leaves(variables["intermediates"])
    assert weights and {w.dtype for w in weights} == {jnp.dtype(jnp.float32)}


def test_bf16_layer_norm_statistics_are_float32():
    """Inputs 100 + N(0, 1) over 512 features: E[x^2] ~ 1e4, where bfloat16's spacing is 64, so
    a bfloat16 mean and variance would be useless. The output (bfloat16) matches a float64
    layer norm of the same inputs to bfloat16 rounding."""
    from flax_transformer.layers import layer_norm

    rng = np.random.default_rng(0)
    x = jnp.asarray(100.0 + rng.standard_normal((4, 512)), jnp.bfloat16)
    norm = layer_norm(BF16)
    variables = norm.init(jax.random.key(0), x)
    y = norm.apply(variables, x)
    assert y.dtype == jnp.bfloat16
    assert _float_dtypes(variables) == {jnp.dtype(jnp.float32)}
    x64 = np.asarray(x, np.float64)
    mean, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
    expected = (x64 - mean) / np.sqrt(var + BF16.layer_norm_epsilon)
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, atol=3e-2, rtol=1e-2)
