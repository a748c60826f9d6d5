"""Decoding: turning a trained model into output sequences (paper section 6.1).

    greedy_decode            the most likely next token at every step
    beam_search              beam search with the GNMT length penalty (paper: beam 4, alpha 0.6)
    sample_decode            ancestral sampling, with temperature, top-k and top-p filtering
    greedy_decode_uncached   the readable reference: re-runs the decoder over the whole prefix

Each is one pure function, jitted with the config static, over a batch of source sentences
[batch, src_len] right-padded with `config.pad_id`. A row's result depends only on that row (and,
for sampling, the rng and the row's index): not on the other rows, nor on how much padding the
batch has. Output rows hold the generated tokens up to and including the first `eos_id`, then
`config.pad_id`; the start token `bos_id` is not part of the output, and the pad id is never
generated (`never_pad`; the start token may be the pad id, as in MarianMT).

Output length. Paper section 6.1: "We set the maximum output length during inference to input
length + 50, but terminate early when possible." Buffers have a static length `max_length`, by
default min(padded source length + 50, config.max_len). Each row also has its own limit,
min(max_length, its own number of non-pad source tokens + 50): a row that produces that many
tokens without eos is finished there. So an explicit `max_length` caps every row, and the +50
rule always applies on top of it.

Incremental decoding. The decoder's output at position t depends only on positions <= t, so
decoding needs each layer's self-attention keys and values of the earlier positions, not a new
pass over the prefix: `init_cache` encodes the source, projects it once for every decoder layer's
cross-attention, and allocates an empty self-attention cache (`DecodingCache`); `decode_step` runs
one position and adds its keys and values to the cache. A step costs O(length) instead of
O(length^2). The two are public, for writing your own loop:

    cache = init_cache(config, params, source_tokens, length)
    tokens = jnp.full((batch,), bos_id)
    for step in range(length):
        logits, cache = decode_step(config, params, cache, tokens, step)   # [batch, vocab]
        tokens = jnp.argmax(logits, axis=-1)                               # position step + 1

Every array of the cache has the batch axis first, so `jax.tree.map` can select or reorder rows.

Input checks: token ids are checked on the host when `check_inputs` is True (it reads them back);
the other arguments (bos/eos ids, max_length, beam and sampling settings) are always checked.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from flax_transformer.api import check_tokens
from flax_transformer.config import TransformerConfig
from flax_transformer.model import DecodingCache, Transformer

Array = jax.Array

# Paper section 6.1: the maximum output length is the input length + 50.
EXTRA_OUTPUT_LENGTH = 50
# When a sentence's beam search is over (see `beam_search`).
BEAM_STOP_RULES = ("finished", "bound")

NEG_INF = -jnp.inf


# ---------------------------------------------------------------------------------------------
# Output lengths and argument checks
# ---------------------------------------------------------------------------------------------
def default_max_length(config: TransformerConfig, source_length: int) -> int:
    """The buffer length used when `max_length` is None: min(source_length + 50, max_len)."""
    return min(source_length + EXTRA_OUTPUT_LENGTH, config.max_len)


def output_length_limits(config: TransformerConfig, source_tokens: Array, max_length: int) -> Array:
    """Each row's longest output, int32 [batch]: min(max_length, non-pad source tokens + 50)."""
    source_lengths = jnp.sum(source_tokens != config.pad_id, axis=-1, dtype=jnp.int32)
    return jnp.minimum(max_length, source_lengths + EXTRA_OUTPUT_LENGTH)


def never_pad(config: TransformerConfig, scores: Array, eos_id: int) -> Array:
    """Scores [..., vocab] with the pad id's set to -inf: no decoder ever writes padding.

    Padding only fills rows after eos. Models trained here hardly ever rank it first (it is never
    a target), but a model whose start token is the pad id (MarianMT) scores it highly; Hugging
    Face bans it the same way (opus-mt's `bad_words_ids=[[pad_id]]`). A config whose pad id is
    the eos id keeps it.
    """
    if config.pad_id == eos_id:
        return scores
    return scores.at[..., config.pad_id].set(NEG_INF)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_decoding_arguments(
    config: TransformerConfig,
    source_tokens: Any,
    bos_id: Any,
    eos_id: Any,
    max_length: Any,
    check_inputs: bool,
) -> int:
    """Raise ValueError for a bad argument; return the buffer length (resolving None)."""
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    if check_inputs:
        check_tokens(config, source_tokens, "source_tokens")
    elif len(np.shape(source_tokens)) != 2:
        raise ValueError(
            f"source_tokens must have shape [batch, length], got {tuple(np.shape(source_tokens))}"
        )
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        if not _is_int(value):
            raise ValueError(f"{name} must be an int token id, got {value!r}")
        if not 0 <= value < config.vocab_size:
            raise ValueError(f"{name}={value} is outside the vocabulary [0, {config.vocab_size})")
    if max_length is None:
        return default_max_length(config, np.shape(source_tokens)[1])
    if not _is_int(max_length):
        raise ValueError(f"max_length must be an int or None, got {max_length!r}")
    if not 1 <= max_length <= config.max_len:
        raise ValueError(
            f"max_length must be in [1, config.max_len={config.max_len}], got {max_length}"
        )
    return int(max_length)


# ---------------------------------------------------------------------------------------------
# Building blocks: the cache and one decoder step
# ---------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("config", "length"))
def _init_cache(
    config: TransformerConfig, params: Any, source_tokens: Array, length: int
) -> DecodingCache:
    return Transformer(config).apply(
        {"params": params}, source_tokens, length, method=Transformer.init_cache
    )


def init_cache(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    length: int,
    *,
    check_inputs: bool = True,
) -> DecodingCache:
    """Encode `source_tokens` [batch, src_len] and start a cache of `length` target positions.

    The cross-attention keys and values of every decoder layer are computed here, once; the
    self-attention part starts empty. Jitted; see `decode_step` and the module docstring.
    """
    if check_inputs:
        check_tokens(config, source_tokens, "source_tokens")
    if not _is_int(length) or not 1 <= length <= config.max_len:
        raise ValueError(
            f"length must be an int in [1, config.max_len={config.max_len}], got {length!r}"
        )
    return _init_cache(config, params, source_tokens, int(length))


@functools.partial(jax.jit, static_argnames=("config",))
def decode_step(
    config: TransformerConfig, params: Any, cache: DecodingCache, tokens: Array, step: Array
) -> tuple[Array, DecodingCache]:
    """One cached decoder step: (float32 logits [batch, vocab], the cache with `step` added).

    `tokens` [batch] are the decoder inputs at target position `step` (the start token at step
    0, then the previous outputs); the logits predict position step + 1 and equal those of the
    full forward pass over the prefix. `step` may be traced; it must be < `cache.length`.
    """
    return Transformer(config).apply(
        {"params": params}, cache, tokens, step, method=Transformer.decode_step
    )


# ---------------------------------------------------------------------------------------------
# Greedy decoding and sampling: one token per row and step
# ---------------------------------------------------------------------------------------------
def _generate(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    choose_token: Callable[[Array, Array], Array],
    *,
    bos_id: int,
    eos_id: int,
    max_length: int,
) -> Array:
    """The cached decoding loop of greedy decoding and sampling.

    choose_token(logits [batch, vocab], step) -> int32 [batch] picks each row's next token.
    The loop stops early once every row is finished (eos or its length limit).
    """
    model = Transformer(config)
    batch = source_tokens.shape[0]
    limits = output_length_limits(config, source_tokens, max_length)
    cache = model.apply(
        {"params": params}, source_tokens, max_length, method=Transformer.init_cache
    )
    outputs = jnp.full((batch, max_length), config.pad_id, jnp.int32)
    previous = jnp.full((batch,), bos_id, jnp.int32)
    finished = jnp.zeros((batch,), bool)

    def not_done(state: tuple[Any, ...]) -> Array:
        step, _, _, finished, _ = state
        return (step < max_length) & ~jnp.all(finished)

    def decode_one(state: tuple[Any, ...]) -> tuple[Any, ...]:
        step, previous, outputs, finished, cache = state
        logits, cache = model.apply(
            {"params": params}, cache, previous, step, method=Transformer.decode_step
        )
        token = choose_token(never_pad(config, logits, eos_id), step)
        token = jnp.where(finished, config.pad_id, token)
        outputs = jax.lax.dynamic_update_index_in_dim(outputs, token, step, axis=1)
        finished = finished | (token == eos_id) | (step + 1 >= limits)
        return step + 1, token, outputs, finished, cache

    state = (jnp.int32(0), previous, outputs, finished, cache)
    _, _, outputs, _, _ = jax.lax.while_loop(not_done, decode_one, state)
    return outputs


@functools.partial(jax.jit, static_argnames=("config", "bos_id", "eos_id", "max_length"))
def _greedy_decode(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    *,
    bos_id: int,
    eos_id: int,
    max_length: int,
) -> Array:
    def most_likely(logits: Array, step: Array) -> Array:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return _generate(
        config,
        params,
        source_tokens,
        most_likely,
        bos_id=bos_id,
        eos_id=eos_id,
        max_length=max_length,
    )


def greedy_decode(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    *,
    bos_id: int,
    eos_id: int,
    max_length: int | None = None,
    check_inputs: bool = True,
) -> Array:
    """Greedy output tokens int32 [batch, max_length] for source tokens [batch, src_len].

    The most likely token at every step, with the key/value cache. Each row holds its tokens up
    to and including the first `eos_id`, then `config.pad_id`; a row without eos reached its
    length limit (see the module docstring: max_length, by default padded source length + 50,
    and the row's own source length + 50). The decoder starts from `bos_id` (MarianMT-style models
    start from the pad id: pass that). Jitted; compiles once per config, batch shape and
    max_length.
    """
    max_length = _check_decoding_arguments(
        config, source_tokens, bos_id, eos_id, max_length, check_inputs
    )
    return _greedy_decode(
        config, params, source_tokens, bos_id=int(bos_id), eos_id=int(eos_id), max_length=max_length
    )


@functools.partial(jax.jit, static_argnames=("config", "bos_id", "eos_id", "max_length"))
def _greedy_decode_uncached(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    *,
    bos_id: int,
    eos_id: int,
    max_length: int,
) -> Array:
    model = Transformer(config)
    batch = source_tokens.shape[0]
    limits = output_length_limits(config, source_tokens, max_length)
    encoded = model.apply({"params": params}, source_tokens, method=Transformer.encode)
    # Column 0 holds the start token; columns 1..max_length receive the output tokens.
    buffer = jnp.full((batch, max_length + 1), config.pad_id, jnp.int32).at[:, 0].set(bos_id)
    finished = jnp.zeros((batch,), bool)

    def not_done(state: tuple[Array, Array, Array]) -> Array:
        step, _, finished = state
        return (step < max_length) & ~jnp.all(finished)

    def decode_one(state: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        step, buffer, finished = state
        # The decoder sees only buffer[:, :max_length]; the causal mask hides columns > step.
        logits = model.apply(
            {"params": params},
            encoded,
            source_tokens,
            buffer[:, :max_length],
            method=Transformer.decode,
        )
        next_logits = jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False)
        next_token = jnp.argmax(never_pad(config, next_logits, eos_id), axis=-1).astype(jnp.int32)
        next_token = jnp.where(finished, config.pad_id, next_token)
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, next_token, step + 1, axis=1)
        finished = finished | (next_token == eos_id) | (step + 1 >= limits)
        return step + 1, buffer, finished

    _, buffer, _ = jax.lax.while_loop(not_done, decode_one, (jnp.int32(0), buffer, finished))
    return buffer[:, 1:]


def greedy_decode_uncached(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    *,
    bos_id: int,
    eos_id: int,
    max_length: int | None = None,
    check_inputs: bool = True,
) -> Array:
    """`greedy_decode` without the cache: the readable reference path.

        encode the source once
        buffer = [bos, pad, pad, ...]                       fixed length: compiles once
        while some row is unfinished and t < max_length:
            logits = decoder(buffer)[:, t]                  causal mask: position t sees <= t only
            buffer[:, t + 1] = argmax(logits), or pad once the row has finished

    Re-runs the decoder over the whole fixed-length buffer at every step: simple and exact,
    O(length^2) work per sentence. Same arguments and result as `greedy_decode`.
    """
    max_length = _check_decoding_arguments(
        config, source_tokens, bos_id, eos_id, max_length, check_inputs
    )
    return _greedy_decode_uncached(
        config, params, source_tokens, bos_id=int(bos_id), eos_id=int(eos_id), max_length=max_length
    )


def top_k_filter(logits: Array, k: int) -> Array:
    """Keep the k largest logits of each row (and any tied with the k-th), set the rest to -inf.

    k = 0 leaves the logits unchanged. `k` is a Python int (it fixes a shape).
    """
    if k == 0:
        return logits
    # The k-th largest as the min of the top k: indexing [..., -1] instead stops XLA from using
    # its fast top-k kernel on CPU (it falls back to a full sort, about 50 times slower).
    kth_largest = jnp.min(jax.lax.top_k(logits, k)[0], axis=-1, keepdims=True)
    return jnp.where(logits >= kth_largest, logits, NEG_INF)


def top_p_filter(logits: Array, p: float) -> Array:
    """Nucleus filtering (Holtzman et al., 2020): keep the most likely tokens of each row whose
    probabilities first sum to at least p (at least one token, and any tied with the last kept
    one); set the rest to -inf. p = 1 leaves the logits unchanged.

    A token is kept when the tokens strictly more likely than it hold less than p of the mass.
    """
    if p >= 1.0:
        return logits
    descending = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(descending, axis=-1)
    # Exclusive cumulative sum: the mass of the tokens before each one in descending order.
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = mass_before < p
    smallest_kept = jnp.min(jnp.where(kept, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= smallest_kept, logits, NEG_INF)


@functools.partial(
    jax.jit, static_argnames=("config", "bos_id", "eos_id", "top_k", "top_p", "max_length")
)
def _sample_decode(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    rng: Array,
    temperature: Array,
    *,
    bos_id: int,
    eos_id: int,
    top_k: int,
    top_p: float,
    max_length: int,
) -> Array:
    rows = jnp.arange(source_tokens.shape[0])

    def sample(logits: Array, step: Array) -> Array:
        logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
        # One key per row and step, so that a row's samples do not depend on the batch size.
        step_key = jax.random.fold_in(rng, step)
        row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, rows)
        return jax.vmap(jax.random.categorical)(row_keys, logits).astype(jnp.int32)

    return _generate(
        config,
        params,
        source_tokens,
        sample,
        bos_id=bos_id,
        eos_id=eos_id,
        max_length=max_length,
    )


def sample_decode(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    rng: Array,
    *,
    bos_id: int,
    eos_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_length: int | None = None,
    check_inputs: bool = True,
) -> Array:
    """Sampled output tokens int32 [batch, max_length] (ancestral sampling).

    Each step samples from softmax(logits / temperature) restricted to the `top_k` most likely
    tokens (0: all) and then to the nucleus of probability `top_p` (1.0: all), renormalised.
    Row i at step t uses the key fold_in(fold_in(rng, t), i): the same rng gives the same
    output, and a row's samples do not depend on the other rows. Output layout, length limits
    and jitting as in `greedy_decode`; temperature is traced, top_k and top_p are static.
    """
    max_length = _check_decoding_arguments(
        config, source_tokens, bos_id, eos_id, max_length, check_inputs
    )
    if not isinstance(temperature, numbers.Real) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a positive finite float, got {temperature!r}")
    if not _is_int(top_k) or not 0 <= top_k <= config.vocab_size:
        raise ValueError(
            f"top_k must be an int in [0, vocab_size={config.vocab_size}] (0 = off), got {top_k!r}"
        )
    if not isinstance(top_p, numbers.Real) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be a float in (0, 1] (1 = off), got {top_p!r}")
    return _sample_decode(
        config,
        params,
        source_tokens,
        rng,
        jnp.float32(temperature),
        bos_id=int(bos_id),
        eos_id=int(eos_id),
        top_k=int(top_k),
        top_p=float(top_p),
        max_length=max_length,
    )


# ---------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------
def gnmt_length_penalty(length: Array, alpha: Array) -> Array:
    """lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al., 2016); |Y| counts the output tokens, eos
    included. Beam search ranks finished hypotheses by sum log p / lp(Y)."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


@struct.dataclass
class BeamState:
    """The loop state of `beam_search`, for `batch` sentences with `beam` hypotheses each.

    step             int32 scalar: the tokens each alive hypothesis has produced
    alive_tokens     [batch, beam, max_length + 1]: the start token, then the outputs
    alive_log_probs  [batch, beam]: sum of log p of each alive hypothesis (-inf: none)
    cache            DecodingCache with batch * beam rows (row b * beam + k: beam k of b)
    finished_tokens  [batch, beam, max_length + 1]: hypotheses that ended, best first
    finished_scores  [batch, beam]: their sum log p / lp(length) (-inf: empty slot)
    finished_flags   [batch, beam] bool: the slot holds a finished hypothesis
    """

    step: Array
    alive_tokens: Array
    alive_log_probs: Array
    cache: DecodingCache
    finished_tokens: Array
    finished_scores: Array
    finished_flags: Array


def _gather_beams(values: Array, beam_indices: Array) -> Array:
    """values [batch, beam, ...], beam_indices [batch, n] -> [batch, n, ...]."""
    indices = beam_indices.reshape(beam_indices.shape + (1,) * (values.ndim - 2))
    return jnp.take_along_axis(values, indices, axis=1)


def _reorder_cache(cache: DecodingCache, beam_indices: Array, beam_size: int) -> DecodingCache:
    """Row b * beam + k of the new cache continues beam beam_indices[b, k] of sentence b.

    Only the self-attention part differs between the beams of a sentence: the source tokens and
    the cross-attention keys and values are the same for all of them.
    """

    def reorder(rows: Array) -> Array:
        per_sentence = rows.reshape((-1, beam_size) + rows.shape[1:])
        return _gather_beams(per_sentence, beam_indices).reshape(rows.shape)

    return cache.replace(self_attention=jax.tree.map(reorder, cache.self_attention))


@functools.partial(
    jax.jit, static_argnames=("config", "bos_id", "eos_id", "beam_size", "max_length", "stop")
)
def _beam_search(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    alpha: Array,
    *,
    bos_id: int,
    eos_id: int,
    beam_size: int,
    max_length: int,
    stop: str,
) -> tuple[Array, Array]:
    model = Transformer(config)
    batch, vocab = source_tokens.shape[0], config.vocab_size
    limits = output_length_limits(config, source_tokens, max_length)  # [batch]

    # Encode each sentence once, then give each of its beams a copy of the cache.
    cache = model.apply(
        {"params": params}, source_tokens, max_length, method=Transformer.init_cache
    )
    cache = jax.tree.map(lambda rows: jnp.repeat(rows, beam_size, axis=0), cache)
    start = jnp.full((batch, beam_size, max_length + 1), config.pad_id, jnp.int32)
    start = start.at[:, :, 0].set(bos_id)
    # All beams start identical: only beam 0 may expand at step 0, or the beam would be filled
    # with copies of the same hypothesis.
    first_beam_only = jnp.where(jnp.arange(beam_size) == 0, 0.0, NEG_INF)
    state = BeamState(
        step=jnp.int32(0),
        alive_tokens=start,
        alive_log_probs=jnp.broadcast_to(first_beam_only, (batch, beam_size)),
        cache=cache,
        finished_tokens=start,
        finished_scores=jnp.full((batch, beam_size), NEG_INF),
        finished_flags=jnp.zeros((batch, beam_size), bool),
    )

    def rows_done(state: BeamState) -> Array:
        """[batch]: the row's search is over (see `stop` in `beam_search`).

        "finished": every one of the row's beam_size finished slots holds a hypothesis.
        "bound": extending a hypothesis only lowers its log-probability (log p <= 0), so the best
        score an alive hypothesis can still reach is its log-probability divided by the largest
        length penalty it can reach; when that is below the worst kept finished score, no alive
        hypothesis can enter the finished ones any more.
        """
        reached_limit = state.step >= limits
        best_alive = jnp.max(state.alive_log_probs, axis=1)
        beam_finished = jnp.all(state.finished_flags, axis=1)
        if stop == "finished":
            return reached_limit | (best_alive == NEG_INF) | beam_finished
        largest_penalty = jnp.maximum(
            gnmt_length_penalty(state.step + 1, alpha), gnmt_length_penalty(limits, alpha)
        )
        worst_finished = jnp.min(state.finished_scores, axis=1)
        cannot_improve = beam_finished & (best_alive / largest_penalty < worst_finished)
        return reached_limit | (best_alive == NEG_INF) | cannot_improve

    def not_done(state: BeamState) -> Array:
        return (state.step < max_length) & ~jnp.all(rows_done(state))

    def expand(state: BeamState) -> BeamState:
        step = state.step
        previous = jax.lax.dynamic_index_in_dim(state.alive_tokens, step, axis=2, keepdims=False)
        logits, cache = model.apply(
            {"params": params},
            state.cache,
            previous.reshape(-1),
            step,
            method=Transformer.decode_step,
        )
        # Banned after normalising, as Hugging Face does (the others' probabilities unchanged).
        log_probs = never_pad(config, jax.nn.log_softmax(logits), eos_id)
        log_probs = log_probs.reshape(batch, beam_size, vocab)
        candidates = (state.alive_log_probs[:, :, None] + log_probs).reshape(batch, -1)

        # The 2 * beam best extensions, best first. The first `beam` of them are the new beam:
        # those that end are finished. The alive beam is refilled with the best that do not end;
        # at most one extension per beam ends in eos, so there are always `beam` of them.
        top_log_probs, top_indices = jax.lax.top_k(candidates, 2 * beam_size)
        top_beams, top_tokens = top_indices // vocab, top_indices % vocab
        top_sequences = jax.lax.dynamic_update_index_in_dim(
            _gather_beams(state.alive_tokens, top_beams), top_tokens, step + 1, axis=2
        )
        length = step + 1
        exists = top_log_probs > NEG_INF
        ends = exists & ((top_tokens == eos_id) | (length >= limits[:, None]))
        in_beam = jnp.arange(2 * beam_size) < beam_size
        finishes = ends & in_beam

        # Alive: the best `beam` extensions that do not end.
        alive_log_probs, alive_picks = jax.lax.top_k(
            jnp.where(ends, NEG_INF, top_log_probs), beam_size
        )
        alive_tokens = _gather_beams(top_sequences, alive_picks)
        cache = _reorder_cache(
            cache, jnp.take_along_axis(top_beams, alive_picks, axis=1), beam_size
        )

        # Finished: the best `beam` of the kept finished hypotheses and the new ones.
        new_scores = jnp.where(
            finishes, top_log_probs / gnmt_length_penalty(length, alpha), NEG_INF
        )
        scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
        finished_scores, finished_picks = jax.lax.top_k(scores, beam_size)
        finished_tokens = _gather_beams(
            jnp.concatenate([state.finished_tokens, top_sequences], axis=1), finished_picks
        )
        finished_flags = jnp.take_along_axis(
            jnp.concatenate([state.finished_flags, finishes], axis=1), finished_picks, axis=1
        )
        # A done row keeps what it has (nothing better can come; this also holds under rounding).
        done = rows_done(state)
        return BeamState(
            step=step + 1,
            alive_tokens=alive_tokens,
            alive_log_probs=alive_log_probs,
            cache=cache,
            finished_tokens=jnp.where(done[:, None, None], state.finished_tokens, finished_tokens),
            finished_scores=jnp.where(done[:, None], state.finished_scores, finished_scores),
            finished_flags=jnp.where(done[:, None], state.finished_flags, finished_flags),
        )

    state = jax.lax.while_loop(not_done, expand, state)
    return state.finished_tokens[:, :, 1:], state.finished_scores


def beam_search(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    *,
    bos_id: int,
    eos_id: int,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    max_length: int | None = None,
    stop: str = "finished",
    check_inputs: bool = True,
) -> tuple[Array, Array]:
    """Beam search (paper section 6.1: beam size 4, length penalty alpha = 0.6).

    Returns (tokens int32 [batch, beam_size, max_length], scores float32 [batch, beam_size]),
    best first. A hypothesis ends at eos or at its row's length limit (see the module
    docstring); one that reaches the limit without eos is kept like any other. Its score is
    sum log p / lp(Y) with the GNMT length penalty lp(Y) = ((5 + |Y|) / 6) ** length_penalty,
    |Y| counting eos. Each step extends every alive hypothesis by every token; of the
    `beam_size` best extensions, those that end (eos or the length limit) join the finished
    ones, of which the `beam_size` best are kept, and the alive beam is refilled with the
    `beam_size` best extensions that do not end. The loop stops when every row is done: at its
    length limit, or by the `stop` rule:

    - "finished" (default): when all `beam_size` of the row's beams have finished, as in
      fairseq and Marian. Beam size 1 is then exactly greedy decoding.
    - "bound": when no alive hypothesis can still beat the worst kept finished one, whatever
      length it reaches (tensor2tensor, which the paper used, and the Flax WMT example). It
      never stops before the best-scoring hypothesis the beam can reach is found, but with
      alpha > 0 it searches longer: a longer hypothesis might still score better. It can return
      a better-normalised hypothesis than "finished", never a worse one; with alpha 0 the two
      rules agree for beam size 1.
    Slots left empty (only when fewer than beam_size distinct outputs exist) have score -inf
    and pad tokens. Jitted; length_penalty is traced, beam_size is static.
    """
    max_length = _check_decoding_arguments(
        config, source_tokens, bos_id, eos_id, max_length, check_inputs
    )
    if not _is_int(beam_size) or beam_size < 1:
        raise ValueError(f"beam_size must be an int >= 1, got {beam_size!r}")
    if config.vocab_size < 2:
        raise ValueError("beam search needs a vocabulary of at least 2 tokens")
    if stop not in BEAM_STOP_RULES:
        raise ValueError(f"stop must be one of {list(BEAM_STOP_RULES)}, got {stop!r}")
    if not isinstance(length_penalty, numbers.Real) or not (
        math.isfinite(length_penalty) and length_penalty >= 0
    ):
        raise ValueError(
            f"length_penalty (alpha) must be a finite float >= 0, got {length_penalty!r}"
        )
    return _beam_search(
        config,
        params,
        source_tokens,
        jnp.float32(length_penalty),
        bos_id=int(bos_id),
        eos_id=int(eos_id),
        beam_size=int(beam_size),
        max_length=max_length,
        stop=stop,
    )


def strip_after_eos(tokens: Any, eos_id: int, pad_id: int) -> list[list[int]]:
    """Token rows -> Python lists ending before the first eos (pad ids dropped)."""
    rows = []
    for row in jax.device_get(tokens).tolist():
        if eos_id in row:
            row = row[: row.index(eos_id)]
        rows.append([token for token in row if token != pad_id])
    return rows
