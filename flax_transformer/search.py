"""Searching for output sequences, for any model that scores the next token (paper section 6.1).

    greedy_search    the most likely next token at every step
    sample_search    ancestral sampling, with temperature, top-k and top-p filtering
    beam_search      beam search with the GNMT length penalty (paper: beam 4, alpha 0.6)

Nothing here knows the Transformer: a search calls a step function

    tokens_to_logits(tokens int32 [rows], cache, step int32 scalar)
        -> (float32 logits [rows, vocab] of the token after `tokens`, the updated cache)

where `tokens` are the inputs at position `step` (the start token at step 0, then the previous
outputs) and `cache` is any pytree: the searches never look inside it. Beam search reorders it
when hypotheses change places: by default its leaves all have the rows axis first and it
reorders their rows; a cache that knows its beams reorders itself (`reorder_cache`).
`flax_transformer.decoding` builds this function from a Transformer and its parameters.

Records. With `with_records=True` the step function returns a third value, a pytree whose
leaves are [rows, ...] (the decoder's attention over the source, say), and every search also
returns, for each output position, the record of the step that chose that position's token:
greedy search and sampling [batch, max_length, ...], beam search [batch, beam, max_length, ...]
for the hypothesis in each slot, carried in the beam state and reordered with it. Positions
after a row's or hypothesis's end hold zeros.

Every search runs a batch of `batch` independent rows in one `jax.lax.while_loop` and stops once
every row is done. Row i ends at `eos_id` or after `length_limits[i]` tokens (at most
`max_length`, the static length of the output buffer); after its end a row holds `pad_id`. The
start token `bos_id` is not part of the output. `banned_id` (None: none) is a token no search
ever writes: greedy and sampling set its logit to -inf, beam search its log-probability (after
log_softmax, so the other tokens' probabilities are unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array
StepFunction = Callable[[Array, Any, Array], tuple[Array, Any]]

# When a sentence's beam search is over (see `beam_search`).
BEAM_STOP_RULES = ("finished", "bound")

NEG_INF = -jnp.inf


def ban_token(scores: Array, banned_id: int | None) -> Array:
    """Scores [..., vocab] with the banned id's set to -inf (None: unchanged)."""
    if banned_id is None:
        return scores
    return scores.at[..., banned_id].set(NEG_INF)


# The chunk of `largest_k`'s first pass on CPU: runs of adjacent tokens, summarised by their max.
TOP_K_CHUNK = 256


def _top_k_by_chunks(values: Array, k: int) -> tuple[Array, Array]:
    """`jax.lax.top_k` of values [..., n] in two passes (n >= 2 * k * TOP_K_CHUNK).

    The k largest values of a row lie in the k chunks with the largest maxima: a value in any
    other chunk has at least k larger ones (those chunks' maxima). So the first pass takes each
    chunk's max (a vectorised reduction; the last chunk may be shorter), the second runs top_k
    over the chosen chunks, in token order. Ties go to the lower index in both passes, so
    values and indices equal top_k's.
    """
    leading, n = values.shape[:-1], values.shape[-1]
    values = values.reshape(-1, n)
    chunks = -(-n // TOP_K_CHUNK)  # the last one padded with -inf
    # A windowed max over the row as it is: slicing off the tail first copies the row.
    maxima = jax.lax.reduce_window(
        values,
        NEG_INF,
        jax.lax.max,
        (1, TOP_K_CHUNK),
        (1, TOP_K_CHUNK),
        ((0, 0), (0, chunks * TOP_K_CHUNK - n)),
    )
    _, chosen = jax.lax.top_k(maxima, k)
    chosen = jnp.sort(chosen, axis=-1)  # token order, so that ties still go to the lower index
    candidate_ids = (chosen[:, :, None] * TOP_K_CHUNK + jnp.arange(TOP_K_CHUNK)).reshape(
        values.shape[0], -1
    )
    # Ids past the row's end (in the padded last chunk) come last and read -inf, so they are
    # never taken before a real token, not even one whose value is -inf.
    candidates = jnp.take_along_axis(
        values, candidate_ids, axis=-1, mode="fill", fill_value=NEG_INF
    )
    top_values, positions = jax.lax.top_k(candidates, k)
    indices = jnp.take_along_axis(candidate_ids, positions, axis=-1)
    return top_values.reshape(*leading, k), indices.reshape(*leading, k)


def largest_k(values: Array, k: int) -> tuple[Array, Array]:
    """`jax.lax.top_k` over the last axis of values [..., n]: (the k largest, best first;
    their int32 indices, [..., k]), ties to the lower index. `k` is a Python int <= n.

    Equal to `jax.lax.top_k`, value for value and index for index. On CPU a row much longer
    than k (a vocabulary) goes through `_top_k_by_chunks`: XLA's CPU top-k kernel compares
    every element in scalar code, a max over chunks is vectorised (see the README's figures).
    """
    if values.shape[-1] < 2 * k * TOP_K_CHUNK:
        return tuple(jax.lax.top_k(values, k))
    return jax.lax.platform_dependent(
        values,
        cpu=lambda values: _top_k_by_chunks(values, k),
        default=lambda values: tuple(jax.lax.top_k(values, k)),
    )


def repeat_rows(tree: Any, copies: int) -> Any:
    """Every leaf [rows, ...] -> [rows * copies, ...]: row r * copies + k is a copy of row r."""
    return jax.tree.map(lambda leaf: jnp.repeat(leaf, copies, axis=0), tree)


def _call_step(
    tokens_to_logits: StepFunction, tokens: Array, cache: Any, step: Array, with_records: bool
) -> tuple[Array, Any, Any]:
    """(logits, cache, record or None): one call of the step function."""
    outputs = tokens_to_logits(tokens, cache, step)
    if len(outputs) != 2 + with_records:
        raise ValueError(
            f"the step function returned {len(outputs)} values; with with_records={with_records} "
            f"it must return {2 + with_records}: (logits, cache{', record' * with_records})"
        )
    return outputs if with_records else (*outputs, None)


def _empty_records(
    tokens_to_logits: StepFunction, tokens: Array, cache: Any, leading: tuple[int, ...]
) -> Any:
    """Zeros of shape leading + leaf.shape[1:] for every leaf of the step function's record (its
    shapes from tracing one step, `jax.eval_shape`: nothing runs)."""
    _, _, record = jax.eval_shape(tokens_to_logits, tokens, cache, jnp.int32(0))
    return jax.tree.map(lambda leaf: jnp.zeros(leading + leaf.shape[1:], leaf.dtype), record)


def _where_rows(condition: Array, if_true: Any, if_false: Any) -> Any:
    """Leaf by leaf, where(condition, ...) with condition [d0, ..., dk] over the leading axes."""

    def select(true_leaf: Array, false_leaf: Array) -> Array:
        shape = condition.shape + (1,) * (true_leaf.ndim - condition.ndim)
        return jnp.where(condition.reshape(shape), true_leaf, false_leaf)

    return jax.tree.map(select, if_true, if_false)


# ---------------------------------------------------------------------------------------------
# Greedy search and sampling: one token per row and step
# ---------------------------------------------------------------------------------------------
def token_by_token(
    tokens_to_logits: StepFunction,
    cache: Any,
    choose_token: Callable[[Array, Array], Array],
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int,
    length_limits: Array,
    banned_id: int | None = None,
    with_records: bool = False,
) -> Array | tuple[Array, Any]:
    """The decoding loop of greedy search and sampling: output tokens int32 [batch, max_length]
    (with records: (tokens, records [batch, max_length, ...]), see the module docstring).

    choose_token(logits [batch, vocab], step) -> int32 [batch] picks each row's next token from
    the logits with `banned_id` removed. A finished row is fed and writes `pad_id`.
    """
    batch = length_limits.shape[0]
    outputs = jnp.full((batch, max_length), pad_id, jnp.int32)
    previous = jnp.full((batch,), bos_id, jnp.int32)
    finished = jnp.zeros((batch,), bool)
    records = None
    if with_records:
        records = _empty_records(tokens_to_logits, previous, cache, (batch, max_length))

    def not_done(state: tuple[Any, ...]) -> Array:
        step, _, _, finished, _, _ = state
        return (step < max_length) & ~jnp.all(finished)

    def one_token(state: tuple[Any, ...]) -> tuple[Any, ...]:
        step, previous, outputs, finished, cache, records = state
        logits, cache, record = _call_step(tokens_to_logits, previous, cache, step, with_records)
        token = choose_token(ban_token(logits, banned_id), step)
        token = jnp.where(finished, pad_id, token)
        outputs = jax.lax.dynamic_update_index_in_dim(outputs, token, step, axis=1)
        if with_records:
            record = _where_rows(finished, jax.tree.map(jnp.zeros_like, record), record)
            records = jax.tree.map(
                lambda buffer, row: jax.lax.dynamic_update_index_in_dim(buffer, row, step, 1),
                records,
                record,
            )
        finished = finished | (token == eos_id) | (step + 1 >= length_limits)
        return step + 1, token, outputs, finished, cache, records

    state = (jnp.int32(0), previous, outputs, finished, cache, records)
    _, _, outputs, _, _, records = jax.lax.while_loop(not_done, one_token, state)
    return (outputs, records) if with_records else outputs


def greedy_search(tokens_to_logits: StepFunction, cache: Any, **loop: Any) -> Array:
    """The most likely token at every step: int32 [batch, max_length].

    Keyword arguments as in `token_by_token` (bos_id, eos_id, pad_id, max_length,
    length_limits, banned_id, with_records).
    """

    def most_likely(logits: Array, step: Array) -> Array:
        # The first maximum, as argmax; `largest_k` finds it faster than argmax on CPU.
        return largest_k(logits, 1)[1][:, 0]

    return token_by_token(tokens_to_logits, cache, most_likely, **loop)


def top_k_filter(logits: Array, k: int) -> Array:
    """Keep the k largest logits of each row (and any tied with the k-th), set the rest to -inf.

    k = 0 leaves the logits unchanged. `k` is a Python int (it fixes a shape).
    """
    if k == 0:
        return logits
    # The k-th largest as the min of the top k: indexing [..., -1] instead stops XLA from using
    # its top-k kernel on CPU (it falls back to a full sort).
    kth_largest = jnp.min(largest_k(logits, k)[0], axis=-1, keepdims=True)
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


def sample_search(
    tokens_to_logits: StepFunction,
    cache: Any,
    rng: Array,
    *,
    temperature: Array | float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    **loop: Any,
) -> Array:
    """Ancestral sampling: int32 [batch, max_length].

    Each step samples from softmax(logits / temperature) restricted to the `top_k` most likely
    tokens (0: all) and then to the nucleus of probability `top_p` (1.0: all), renormalised.
    Row i at step t uses the key fold_in(fold_in(rng, t), i): the same rng gives the same
    output, and a row's samples do not depend on the other rows. top_k and top_p are Python
    numbers (they fix shapes); other keyword arguments as in `token_by_token`.
    """
    rows = jnp.arange(loop["length_limits"].shape[0])

    def sample(logits: Array, step: Array) -> Array:
        logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
        # One key per row and step, so that a row's samples do not depend on the batch size.
        step_key = jax.random.fold_in(rng, step)
        row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, rows)
        return jax.vmap(jax.random.categorical)(row_keys, logits).astype(jnp.int32)

    return token_by_token(tokens_to_logits, cache, sample, **loop)


# ---------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------
def gnmt_length_penalty(length: Array, alpha: Array) -> Array:
    """lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al., 2016); |Y| counts the output tokens, eos
    included. Beam search ranks finished hypotheses by sum log p / lp(Y)."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


# What `best_log_probs` aims a block of logits at on CPU: about half a core's L2 cache of float32.
BLOCK_BYTES = 512 * 1024


def block_rows(beam_size: int, vocab: int) -> int:
    """The rows_per_block `beam_step` gives `best_log_probs`: the largest divisor of beam_size
    above 1 whose block of float32 logits fits BLOCK_BYTES; else beam_size itself (a block of one
    row pays `lax.map`'s per-iteration cost once per row, more than a cache miss costs)."""
    fits = [
        d for d in range(2, beam_size + 1) if beam_size % d == 0 and d * vocab * 4 <= BLOCK_BYTES
    ]
    return max(fits, default=beam_size)


def best_log_probs(
    logits: Array, k: int, banned_id: int | None = None, rows_per_block: int = 1
) -> tuple[Array, Array]:
    """Each row's k most likely tokens but `banned_id`, with their log-probabilities: (float32
    [rows, n], int32 [rows, n]), most likely first, n = k (k + 1 with a banned id; at most vocab).

    The log-probabilities are those of `jax.nn.log_softmax` over the whole vocabulary, computed
    only for the chosen tokens: the [rows, vocab] array of them is never written. The banned id
    keeps its share of the normaliser but is never chosen: one more token is taken, and the
    banned one, if among them, gets -inf. Ties go to the lower token id; tokens whose logits
    differ but whose log-probabilities round to the same float32 rank by their logits.

    rows_per_block (a divisor of rows; beam search passes `block_rows`): on CPU the rows are
    taken that many at a time (`lax.map`), so that a block's logits stay in the processor's
    cache from the top-k to the normaliser; XLA's CPU backend also runs the exp and row sum of
    a whole [rows, vocab] array slower than of a few rows at a time. It changes no token; a
    log-probability at most by the rounding of its row's sum (XLA may sum one row in another order).
    """
    vocab = logits.shape[-1]
    n = min(k + (banned_id is not None), vocab)

    def block_log_probs(logits: Array) -> tuple[Array, Array]:
        top_logits, tokens = largest_k(logits, n)
        # log_softmax(x) = (x - max) - log(sum(exp(x - max))). The max is the first of the top
        # k, read with a reduction: a slice of top_k's output stops XLA's CPU backend from
        # using its top-k kernel (it falls back to sorting the whole row).
        row_max = jnp.max(top_logits, axis=-1, keepdims=True)
        log_normaliser = jnp.log(jnp.sum(jnp.exp(logits - row_max), -1, keepdims=True))
        return (top_logits - row_max) - log_normaliser, tokens

    def by_blocks(logits: Array) -> tuple[Array, Array]:
        blocks = logits.reshape(-1, rows_per_block, vocab)
        log_probs, tokens = jax.lax.map(block_log_probs, blocks)
        return log_probs.reshape(-1, n), tokens.reshape(-1, n)

    log_probs, tokens = jax.lax.platform_dependent(logits, cpu=by_blocks, default=block_log_probs)
    if banned_id is not None:
        log_probs = jnp.where(tokens == banned_id, NEG_INF, log_probs)
    return log_probs, tokens


@struct.dataclass
class BeamState:
    """The loop state of `beam_search`, for `batch` sentences with `beam` hypotheses each.

    step             int32 scalar: the tokens each alive hypothesis has produced
    alive_tokens     [batch, beam, max_length + 1]: the start token, then the outputs
    alive_log_probs  [batch, beam]: sum of log p of each alive hypothesis (-inf: none)
    cache            the step function's cache of the batch * beam rows (row b * beam + k: beam
                     k of sentence b)
    finished_tokens  [batch, beam, max_length + 1]: hypotheses that ended, best first
    finished_scores  [batch, beam]: their sum log p / lp(length) (-inf: empty slot)
    finished_flags   [batch, beam] bool: the slot holds a finished hypothesis
    alive_records, finished_records   None, or with records (see the module docstring) each
                     record leaf [batch, beam, max_length, ...] of the alive and finished
                     hypotheses: position t holds the record of the step that chose token t
    """

    step: Array
    alive_tokens: Array
    alive_log_probs: Array
    cache: Any
    finished_tokens: Array
    finished_scores: Array
    finished_flags: Array
    alive_records: Any = None
    finished_records: Any = None


def _gather_beams(values: Array, beam_indices: Array) -> Array:
    """values [batch, beam, ...], beam_indices [batch, n] -> [batch, n, ...]."""
    indices = beam_indices.reshape(beam_indices.shape + (1,) * (values.ndim - 2))
    return jnp.take_along_axis(values, indices, axis=1)


def reorder_rows(tree: Any, parents: Array) -> Any:
    """Beam search's default cache reordering: every leaf [batch * beam, ...], row b * beam + k
    of the result is row b * beam + parents[b, k] (parents int [batch, beam])."""
    beam_size = parents.shape[1]

    def reorder(rows: Array) -> Array:
        per_sentence = rows.reshape((-1, beam_size) + rows.shape[1:])
        return _gather_beams(per_sentence, parents).reshape(rows.shape)

    return jax.tree.map(reorder, tree)


def beam_init(
    cache: Any,
    *,
    batch: int,
    beam_size: int,
    bos_id: int,
    pad_id: int,
    max_length: int,
    repeat_cache: bool = True,
) -> BeamState:
    """The state before the first step: every beam of a sentence is the start token alone.

    `cache` has one row per sentence and each of its beams gets a copy (`repeat_rows`), or
    with `repeat_cache` False it already holds every beam. All beams start identical, so only
    beam 0 is alive (log p 0, the others -inf): otherwise the first step would fill the beam
    with copies of the same hypothesis.
    """
    start = jnp.full((batch, beam_size, max_length + 1), pad_id, jnp.int32)
    start = start.at[:, :, 0].set(bos_id)
    first_beam_only = jnp.where(jnp.arange(beam_size) == 0, 0.0, NEG_INF)
    return BeamState(
        step=jnp.int32(0),
        alive_tokens=start,
        alive_log_probs=jnp.broadcast_to(first_beam_only, (batch, beam_size)),
        cache=repeat_rows(cache, beam_size) if repeat_cache else cache,
        finished_tokens=start,
        finished_scores=jnp.full((batch, beam_size), NEG_INF),
        finished_flags=jnp.zeros((batch, beam_size), bool),
    )


def beam_done(state: BeamState, *, length_limits: Array, alpha: Array, stop: str) -> Array:
    """bool [batch]: the sentence's search is over (see `stop` in `beam_search`).

    Always when its hypotheses have reached the row's length limit or none is alive. Then
    "finished": every one of the row's beam finished slots holds a hypothesis.
    "bound": extending a hypothesis only lowers its log-probability (log p <= 0), so the best
    score an alive hypothesis can still reach is its log-probability divided by the largest
    length penalty it can reach; when that is below the worst kept finished score, no alive
    hypothesis can enter the finished ones any more.
    """
    reached_limit = state.step >= length_limits
    best_alive = jnp.max(state.alive_log_probs, axis=1)
    beam_finished = jnp.all(state.finished_flags, axis=1)
    if stop == "finished":
        return reached_limit | (best_alive == NEG_INF) | beam_finished
    largest_penalty = jnp.maximum(
        gnmt_length_penalty(state.step + 1, alpha), gnmt_length_penalty(length_limits, alpha)
    )
    worst_finished = jnp.min(state.finished_scores, axis=1)
    cannot_improve = beam_finished & (best_alive / largest_penalty < worst_finished)
    return reached_limit | (best_alive == NEG_INF) | cannot_improve


def beam_step(
    state: BeamState,
    tokens_to_logits: StepFunction,
    *,
    eos_id: int,
    length_limits: Array,
    alpha: Array,
    stop: str,
    banned_id: int | None = None,
    reorder_cache: Callable[[Any, Array], Any] = reorder_rows,
) -> BeamState:
    """One expansion: every alive hypothesis extended by every token, the best ones kept.

    Of the 2 * beam best extensions (best first), those of the first `beam` that end (eos, or
    the row's length limit) are finished, and the best `beam` of the kept finished hypotheses
    and the new ones are kept. The alive beam is refilled with the best `beam` extensions that
    do not end: at most one extension per beam ends in eos, so there are always enough; the
    cache follows them (`reorder_cache(cache, parents [batch, beam])`). A row that was already
    done (`beam_done`) keeps its finished hypotheses unchanged.
    """
    batch, beam_size = state.alive_log_probs.shape
    step = state.step
    with_records = state.alive_records is not None
    previous = jax.lax.dynamic_index_in_dim(state.alive_tokens, step, axis=2, keepdims=False)
    logits, cache, record = _call_step(
        tokens_to_logits, previous.reshape(-1), state.cache, step, with_records
    )
    # The 2 * beam best extensions of a sentence are among the 2 * beam best of each of its
    # hypotheses: only those get a log-probability and enter the sentence's top-k.
    log_probs, tokens = best_log_probs(
        logits, 2 * beam_size, banned_id, block_rows(beam_size, logits.shape[-1])
    )
    per_row = log_probs.shape[-1]
    candidates = state.alive_log_probs[:, :, None] + log_probs.reshape(batch, beam_size, per_row)

    top_log_probs, top_indices = jax.lax.top_k(candidates.reshape(batch, -1), 2 * beam_size)
    top_beams = top_indices // per_row
    top_tokens = jnp.take_along_axis(tokens.reshape(batch, -1), top_indices, axis=1)
    top_sequences = jax.lax.dynamic_update_index_in_dim(
        _gather_beams(state.alive_tokens, top_beams), top_tokens, step + 1, axis=2
    )
    length = step + 1
    exists = top_log_probs > NEG_INF
    ends = exists & ((top_tokens == eos_id) | (length >= length_limits[:, None]))
    in_beam = jnp.arange(2 * beam_size) < beam_size
    finishes = ends & in_beam

    # Alive: the best `beam` extensions that do not end.
    alive_log_probs, alive_picks = jax.lax.top_k(jnp.where(ends, NEG_INF, top_log_probs), beam_size)
    alive_tokens = _gather_beams(top_sequences, alive_picks)
    cache = reorder_cache(cache, jnp.take_along_axis(top_beams, alive_picks, axis=1))

    # Finished: the best `beam` of the kept finished hypotheses and the new ones.
    new_scores = jnp.where(finishes, top_log_probs / gnmt_length_penalty(length, alpha), NEG_INF)
    scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
    finished_scores, finished_picks = jax.lax.top_k(scores, beam_size)
    finished_tokens = _gather_beams(
        jnp.concatenate([state.finished_tokens, top_sequences], axis=1), finished_picks
    )
    finished_flags = jnp.take_along_axis(
        jnp.concatenate([state.finished_flags, finishes], axis=1), finished_picks, axis=1
    )
    # A done row keeps what it has (nothing better can come; this also holds under rounding).
    done = beam_done(state, length_limits=length_limits, alpha=alpha, stop=stop)
    alive_records = finished_records = None
    if with_records:
        # An extension's records: its parent's so far, then the parent's record of this step.
        def extend(buffer: Array, row_record: Array) -> Array:
            per_beam = row_record.reshape((batch, beam_size) + row_record.shape[1:])
            return jax.lax.dynamic_update_index_in_dim(
                _gather_beams(buffer, top_beams), _gather_beams(per_beam, top_beams), step, 2
            )

        top_records = jax.tree.map(extend, state.alive_records, record)
        alive_records = jax.tree.map(lambda r: _gather_beams(r, alive_picks), top_records)
        finished_records = jax.tree.map(
            lambda old, new: _gather_beams(jnp.concatenate([old, new], axis=1), finished_picks),
            state.finished_records,
            top_records,
        )
        finished_records = _where_rows(done, state.finished_records, finished_records)
    return BeamState(
        step=step + 1,
        alive_tokens=alive_tokens,
        alive_log_probs=alive_log_probs,
        cache=cache,
        finished_tokens=jnp.where(done[:, None, None], state.finished_tokens, finished_tokens),
        finished_scores=jnp.where(done[:, None], state.finished_scores, finished_scores),
        finished_flags=jnp.where(done[:, None], state.finished_flags, finished_flags),
        alive_records=alive_records,
        finished_records=finished_records,
    )


def beam_search(
    tokens_to_logits: StepFunction,
    cache: Any,
    *,
    beam_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int,
    length_limits: Array,
    alpha: Array | float,
    stop: str = "finished",
    banned_id: int | None = None,
    reorder_cache: Callable[[Any, Array], Any] | None = None,
    with_records: bool = False,
) -> tuple[Array, Array] | tuple[Array, Array, Any]:
    """Beam search: (tokens int32 [batch, beam_size, max_length], scores float32 [batch, beam]),
    with records also the records [batch, beam_size, max_length, ...] of each slot's hypothesis
    (see the module docstring).

    `tokens_to_logits` sees batch * beam_size rows, row b * beam_size + k: beam k of sentence
    b. By default `cache` has one row per sentence on every leaf: `beam_init` copies it for
    each beam and each step reorders every leaf's rows (`reorder_rows`). A cache that already
    holds every beam comes with `reorder_cache(cache, parents int32 [batch, beam_size]) ->
    cache`, in which beam k of sentence b continues beam parents[b, k]. Hypotheses are ranked
    best first by sum log p / lp(Y) with the GNMT length penalty lp(Y) = ((5 + |Y|) / 6) **
    alpha, |Y| counting eos; one that reaches its row's length limit without eos is kept like
    any other. `beam_step` expands, `beam_done` decides when a sentence is over: at its length
    limit, or by the `stop` rule:

    - "finished": when all `beam_size` of the row's beams have finished, as in fairseq and
      Marian. Beam size 1 is then exactly greedy search.
    - "bound": when no alive hypothesis can still beat the worst kept finished one, whatever
      length it reaches (tensor2tensor, which the paper used, and the Flax WMT example). It
      never stops before the best-scoring hypothesis the beam can reach is found, but with
      alpha > 0 it searches longer: a longer hypothesis might still score better. It can return
      a better-normalised hypothesis than "finished", never a worse one; with alpha 0 the two
      rules agree for beam size 1.
    Slots left empty (only when fewer than beam_size distinct outputs exist) have score -inf
    and `pad_id` tokens. beam_size, max_length and stop are Python values (they fix shapes).
    """
    state = beam_init(
        cache,
        batch=length_limits.shape[0],
        beam_size=beam_size,
        bos_id=bos_id,
        pad_id=pad_id,
        max_length=max_length,
        repeat_cache=reorder_cache is None,
    )
    if with_records:
        batch = length_limits.shape[0]
        first_tokens = state.alive_tokens[:, :, 0].reshape(-1)
        empty = _empty_records(
            tokens_to_logits, first_tokens, state.cache, (batch, beam_size, max_length)
        )
        state = state.replace(alive_records=empty, finished_records=empty)
    rules = {"length_limits": length_limits, "alpha": alpha, "stop": stop}
    settings = {"eos_id": eos_id, "banned_id": banned_id, "reorder_cache": reorder_cache}
    if reorder_cache is None:
        settings["reorder_cache"] = reorder_rows

    def not_done(state: BeamState) -> Array:
        return (state.step < max_length) & ~jnp.all(beam_done(state, **rules))

    def expand(state: BeamState) -> BeamState:
        return beam_step(state, tokens_to_logits, **settings, **rules)

    state = jax.lax.while_loop(not_done, expand, state)
    if with_records:
        return state.finished_tokens[:, :, 1:], state.finished_scores, state.finished_records
    return state.finished_tokens[:, :, 1:], state.finished_scores


def strip_after_eos(tokens: Any, eos_id: int, pad_id: int) -> list[list[int]]:
    """Token rows -> Python lists ending before the first eos (pad ids dropped). Host-side."""
    rows = []
    for row in jax.device_get(tokens).tolist():
        if eos_id in row:
            row = row[: row.index(eos_id)]
        rows.append([token for token in row if token != pad_id])
    return rows
