"""Decoding: turning a trained Transformer into output sequences (paper section 6.1).

    greedy_decode            the most likely next token at every step
    beam_search              beam search with the GNMT length penalty (paper: beam 4, alpha 0.6)
    sample_decode            ancestral sampling, with temperature, top-k and top-p filtering
    greedy_decode_uncached   the readable reference: re-runs the decoder over the whole prefix

Each runs a search of `flax_transformer.search` over the model's step function (`cached_step`,
or `uncached_step` for the reference), jitted with the config static, over a batch of source
sentences [batch, src_len] right-padded with `config.pad_id`. A row's result depends only on
that row (and, for sampling, the rng and the row's index): not on the other rows, nor on how
much padding the batch has. Output rows hold the generated tokens up to and including the first
`eos_id`, then `config.pad_id`; the start token `bos_id` is not part of the output, and the pad
id is never generated (`banned_id`; the start token may be the pad id, as in MarianMT).

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

Every array of the cache has the batch axis first, so `jax.tree.map` can select or reorder
sentences. A cache for beam search (`beam_size` > 1) holds every hypothesis of a sentence, rows
b * beam_size + k of `decode_step`; `DecodingCache.reorder_beams` moves hypotheses without
copying their keys and values.

Attention output. Every decoder also returns the encoder-decoder (cross-) attention of its
output tokens when given `attention=AttentionSelection(layer=..., head=...)`: for each output
position t, the weights over the source with which the decoder chose token t, from the chosen
layer(s) and head(s), float32 [batch, (beam,) max_length, layers', heads', src_len]. Beam search
carries them in its state and reorders them with the hypotheses, so each returned hypothesis
comes with its own attention. They equal the attention of a full forward pass over the output
(`flax_transformer.apply.attention_weights`); `flax_transformer.alignment` turns them into word
alignments.

Input checks (`flax_transformer.checks`): token ids are checked on the host when `check_inputs`
is True (it reads them back); the other arguments (bos/eos ids, max_length, beam and sampling
settings) are always checked.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from flax_transformer import checks, search
from flax_transformer.config import TransformerConfig
from flax_transformer.model import DecodingCache, Transformer, cross_attention_weights

# train/evaluation.py reads these here; they are declared in flax_transformer.search.
from flax_transformer.search import BEAM_STOP_RULES, strip_after_eos  # noqa: F401

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Which attention weights a decoder returns
# ---------------------------------------------------------------------------------------------
ATTENTION_REDUCTIONS = ("mean", "all")


@dataclasses.dataclass(frozen=True)
class AttentionSelection:
    """Which of the decoder's encoder-decoder attention weights a decoder returns.

    layer: a decoder layer's index (negative: from the last, -1 = the last), "mean" (the mean
        over the layers) or "all".
    head: a head's index (negative from the last), "mean" (the mean over the heads) or "all".

    The weights come as [..., layers', heads', src_len]: layers' is 1 unless layer="all" (then
    config.num_decoder_layers), heads' 1 unless head="all" (then config.num_heads). A static
    argument of the jitted decoders (frozen and hashable).
    """

    layer: int | str = -1
    head: int | str = "mean"

    def __post_init__(self) -> None:
        for name in ("layer", "head"):
            value = getattr(self, name)
            if not (checks.is_int(value) or value in ATTENTION_REDUCTIONS):
                raise ValueError(
                    f"attention {name} must be an index or one of {list(ATTENTION_REDUCTIONS)}, "
                    f"got {value!r}"
                )

    def resolved(self, config: TransformerConfig) -> AttentionSelection:
        """The same selection with indices counted from 0, checked against `config`."""
        sizes = {"layer": config.num_decoder_layers, "head": config.num_heads}
        values = {}
        for name, size in sizes.items():
            value = getattr(self, name)
            if checks.is_int(value):
                if not -size <= value < size:
                    raise ValueError(
                        f"attention {name} {value} is out of range: the model has {size} "
                        f"{'decoder layers' if name == 'layer' else 'heads'}"
                    )
                value = int(value) % size
            values[name] = value
        return AttentionSelection(**values)

    def select(self, weights: Array) -> Array:
        """weights [..., layers, heads, src_len] -> [..., layers', heads', src_len].

        Array methods and static slices only: a NumPy array stays on the host (no device
        round trip, no compilation per shape), a traced one stays in the trace.
        """
        for axis, choice in ((-3, self.layer), (-2, self.head)):
            if choice == "mean":
                weights = weights.mean(axis=axis, keepdims=True)
            elif choice != "all":
                index = [slice(None)] * weights.ndim
                index[axis] = slice(choice, choice + 1 or None)  # -1 -> the last one
                weights = weights[tuple(index)]
        return weights


# ---------------------------------------------------------------------------------------------
# The model as a step function of flax_transformer.search
# ---------------------------------------------------------------------------------------------
def output_length_limits(config: TransformerConfig, source_tokens: Array, max_length: int) -> Array:
    """Each row's longest output, int32 [batch]: min(max_length, non-pad source tokens + 50)."""
    source_lengths = jnp.sum(source_tokens != config.pad_id, axis=-1, dtype=jnp.int32)
    return jnp.minimum(max_length, source_lengths + checks.EXTRA_OUTPUT_LENGTH)


def banned_id(config: TransformerConfig, eos_id: int) -> int | None:
    """The token no decoder writes: the pad id, unless it is the eos id (then None).

    Padding only fills rows after eos. Models trained here hardly ever rank it first (it is never
    a target), but a model whose start token is the pad id (MarianMT) scores it highly; Hugging
    Face bans it the same way (opus-mt's `bad_words_ids=[[pad_id]]`).
    """
    return None if config.pad_id == eos_id else config.pad_id


def cached_step(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    length: int,
    beam_size: int = 1,
    attention: AttentionSelection | None = None,
) -> tuple[search.StepFunction, DecodingCache]:
    """(tokens_to_logits, its initial cache) for `Transformer.decode_step`, `length` positions
    and `beam_size` hypotheses per sentence (rows b * beam_size + k).

    The cache is the whole `DecodingCache`: its source part (the source tokens and each layer's
    cross-attention keys and values) is computed once and never changes; a step writes the
    self-attention part, and beam search moves hypotheses with `DecodingCache.reorder_beams`.
    With `attention`, the step function also returns each row's selected cross-attention
    weights [rows, layers', heads', src_len] as its record (`search`'s with_records).
    """
    model = Transformer(config)
    cache = model.apply(
        {"params": params}, source_tokens, length, beam_size, method=Transformer.init_cache
    )

    def tokens_to_logits(tokens: Array, cache: DecodingCache, step: Array) -> tuple[Any, ...]:
        if attention is None:
            return model.apply(
                {"params": params}, cache, tokens, step, method=Transformer.decode_step
            )
        (logits, cache), state = model.apply(
            {"params": params},
            cache,
            tokens,
            step,
            method=Transformer.decode_step,
            mutable=["intermediates"],
        )
        # [batch, layers, heads, beams, src_len]: a step's queries are a sentence's hypotheses.
        weights = cross_attention_weights(state["intermediates"])
        batch, layers, heads, beams, source_length = weights.shape
        rows = jnp.moveaxis(weights, 3, 1).reshape(batch * beams, layers, heads, source_length)
        return logits, cache, attention.select(rows)

    return tokens_to_logits, cache


def uncached_step(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    length: int,
    attention: AttentionSelection | None = None,
) -> tuple[search.StepFunction, Array]:
    """(tokens_to_logits, its initial cache) without a key/value cache: the readable reference.

    The "cache" is the decoder input buffer int32 [batch, length], all padding at first. Step t
    writes its input token at column t and runs the decoder over the whole fixed-length buffer
    (one compilation); the causal mask hides the columns after t, so logits[:, t] are those of
    the prefix. O(length^2) work per sentence, and no cache to get wrong. With `attention`, as
    in `cached_step` (the weights of query position t of the full pass).
    """
    if attention is not None:  # only the reference attention path records its weights
        config = config.replace(attention_implementation="reference")
    model = Transformer(config)
    encoded = model.apply({"params": params}, source_tokens, method=Transformer.encode)

    def tokens_to_logits(tokens: Array, buffer: Array, step: Array) -> tuple[Any, ...]:
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, tokens, step, axis=1)
        arguments = ({"params": params}, encoded, source_tokens, buffer)
        if attention is None:
            logits = model.apply(*arguments, method=Transformer.decode)
        else:
            logits, state = model.apply(
                *arguments, method=Transformer.decode, mutable=["intermediates"]
            )
            # [batch, layers, heads, length, src_len] -> query position `step`.
            weights = jax.lax.dynamic_index_in_dim(
                cross_attention_weights(state["intermediates"]), step, axis=3, keepdims=False
            )
        logits = jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False)
        if attention is None:
            return logits, buffer
        return logits, buffer, attention.select(weights)

    buffer = jnp.full((source_tokens.shape[0], length), config.pad_id, jnp.int32)
    return tokens_to_logits, buffer


def _search_settings(
    config: TransformerConfig,
    source_tokens: Array,
    bos_id: int,
    eos_id: int,
    max_length: int,
    attention: AttentionSelection | None = None,
) -> dict[str, Any]:
    """The keyword arguments every search takes, for this model and source."""
    return {
        "bos_id": bos_id,
        "eos_id": eos_id,
        "pad_id": config.pad_id,
        "max_length": max_length,
        "length_limits": output_length_limits(config, source_tokens, max_length),
        "banned_id": banned_id(config, eos_id),
        "with_records": attention is not None,
    }


# ---------------------------------------------------------------------------------------------
# Building blocks for your own loop: the cache and one decoder step
# ---------------------------------------------------------------------------------------------
@checks.checked_jit(checks.check_decoding_arguments, static_argnames=("length", "beam_size"))
def init_cache(
    config: TransformerConfig,
    params: Any,
    source_tokens: Array,
    length: int,
    *,
    beam_size: int = 1,
    check_inputs: bool = True,
) -> DecodingCache:
    """Encode `source_tokens` [batch, src_len] and start a cache of `length` target positions
    for `beam_size` hypotheses per sentence.

    The cross-attention keys and values of every decoder layer are computed here, once; the
    self-attention part starts empty. Jitted; see `decode_step` and the module docstring.
    """
    return Transformer(config).apply(
        {"params": params}, source_tokens, length, beam_size, method=Transformer.init_cache
    )


@functools.partial(jax.jit, static_argnames=("config",))
def decode_step(
    config: TransformerConfig, params: Any, cache: DecodingCache, tokens: Array, step: Array
) -> tuple[Array, DecodingCache]:
    """One cached decoder step: (float32 logits [rows, vocab], the cache with `step` added).

    `tokens` [rows] are the decoder inputs at target position `step` (the start token at step
    0, then the previous outputs), rows = batch * `cache.beams` (row b * beams + k: hypothesis k
    of sentence b); the logits predict position step + 1 and equal those of the full forward
    pass over each prefix. `step` may be traced; it must be < `cache.length`.
    """
    return Transformer(config).apply(
        {"params": params}, cache, tokens, step, method=Transformer.decode_step
    )


# ---------------------------------------------------------------------------------------------
# The decoders
# ---------------------------------------------------------------------------------------------
def _greedy_decoder(name: str, make_step: Callable[..., Any], doc: str) -> Callable[..., Array]:
    """The jitted greedy decoder over the step function `make_step` builds (one signature for
    the cached decoder and the uncached reference)."""

    @checks.checked_jit(
        checks.check_decoding_arguments,
        static_argnames=("bos_id", "eos_id", "max_length", "attention"),
    )
    def decode(
        config: TransformerConfig,
        params: Any,
        source_tokens: Array,
        *,
        bos_id: int,
        eos_id: int,
        max_length: int | None = None,
        attention: AttentionSelection | None = None,
        check_inputs: bool = True,
    ) -> Array | tuple[Array, Array]:
        settings = _search_settings(config, source_tokens, bos_id, eos_id, max_length, attention)
        step_function, cache = make_step(
            config, params, source_tokens, max_length, attention=attention
        )
        return search.greedy_search(step_function, cache, **settings)

    decode.__name__ = decode.__qualname__ = name
    decode.__doc__ = doc
    return decode


greedy_decode = _greedy_decoder(
    "greedy_decode",
    cached_step,
    """Greedy output tokens int32 [batch, max_length] for source tokens [batch, src_len].

The most likely token at every step, with the key/value cache. Each row holds its tokens up
to and including the first `eos_id`, then `config.pad_id`; a row without eos reached its
length limit (see the module docstring: max_length, by default padded source length + 50,
and the row's own source length + 50). The decoder starts from `bos_id` (MarianMT-style models
start from the pad id: pass that). With `attention` (an `AttentionSelection`) it returns
(tokens, attention float32 [batch, max_length, layers', heads', src_len]): position t holds the
cross-attention with which token t was chosen, zeros after the row's end (see the module
docstring). Jitted; compiles once per config, batch shape, max_length and attention selection.
""",
)
greedy_decode_uncached = _greedy_decoder(
    "greedy_decode_uncached",
    uncached_step,
    """`greedy_decode` without the cache: the readable reference path.

    encode the source once
    buffer = [pad, pad, pad, ...]                       fixed length: compiles once
    while some row is unfinished and t < max_length:
        buffer[:, t] = bos if t == 0 else the token chosen at t - 1 (pad once finished)
        logits = decoder(buffer)[:, t]                  causal mask: position t sees <= t only
        the token chosen at t = argmax(logits)

Re-runs the decoder over the whole fixed-length buffer at every step (`uncached_step`):
simple and exact, O(length^2) work per sentence. Same arguments and result as
`greedy_decode`.
""",
)


@checks.checked_jit(
    checks.check_decoding_arguments,
    static_argnames=("bos_id", "eos_id", "top_k", "top_p", "max_length", "attention"),
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
    attention: AttentionSelection | None = None,
    check_inputs: bool = True,
) -> Array | tuple[Array, Array]:
    """Sampled output tokens int32 [batch, max_length] (ancestral sampling).

    Each step samples from softmax(logits / temperature) restricted to the `top_k` most likely
    tokens (0: all) and then to the nucleus of probability `top_p` (1.0: all), renormalised.
    Row i at step t uses the key fold_in(fold_in(rng, t), i): the same rng gives the same
    output, and a row's samples do not depend on the other rows. Output layout, length limits,
    attention and jitting as in `greedy_decode`; temperature is traced, top_k and top_p are
    static.
    """
    settings = _search_settings(config, source_tokens, bos_id, eos_id, max_length, attention)
    return search.sample_search(
        *cached_step(config, params, source_tokens, max_length, attention=attention),
        rng,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        **settings,
    )


@checks.checked_jit(
    checks.check_decoding_arguments,
    static_argnames=("bos_id", "eos_id", "beam_size", "max_length", "stop", "attention"),
)
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
    attention: AttentionSelection | None = None,
    check_inputs: bool = True,
) -> tuple[Array, Array] | tuple[Array, Array, Array]:
    """Beam search (paper section 6.1: beam size 4, length penalty alpha = 0.6).

    Returns (tokens int32 [batch, beam_size, max_length], scores float32 [batch, beam_size]),
    best first. A hypothesis ends at eos or at its row's length limit (see the module
    docstring); one that reaches the limit without eos is kept like any other. Its score is
    sum log p / lp(Y) with the GNMT length penalty lp(Y) = ((5 + |Y|) / 6) ** length_penalty,
    |Y| counting eos. Each step extends every alive hypothesis by every token; of the
    `beam_size` best extensions, those that end (eos or the length limit) join the finished
    ones, of which the `beam_size` best are kept, and the alive beam is refilled with the
    `beam_size` best extensions that do not end. The loop stops when every row is done: at its
    length limit, or by the `stop` rule (`search.beam_search`):

    - "finished" (default): when all `beam_size` of the row's beams have finished, as in
      fairseq and Marian. Beam size 1 is then exactly greedy decoding.
    - "bound": when no alive hypothesis can still beat the worst kept finished one, whatever
      length it reaches (tensor2tensor, which the paper used, and the Flax WMT example).
    Slots left empty (only when fewer than beam_size distinct outputs exist) have score -inf
    and pad tokens. With `attention` (an `AttentionSelection`) it returns (tokens, scores,
    attention float32 [batch, beam_size, max_length, layers', heads', src_len]): each slot's
    hypothesis with the cross-attention that chose each of its tokens (zeros after its end and
    in empty slots). Jitted; length_penalty is traced, beam_size is static.
    """
    settings = _search_settings(config, source_tokens, bos_id, eos_id, max_length, attention)
    return search.beam_search(
        *cached_step(config, params, source_tokens, max_length, beam_size, attention),
        beam_size=beam_size,
        alpha=length_penalty,
        stop=stop,
        reorder_cache=DecodingCache.reorder_beams,
        **settings,
    )
