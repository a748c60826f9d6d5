"""The encoder-decoder Transformer (paper section 3, Figure 1).

    source tokens -> Encoder: embed * sqrt(d_model) + positions, dropout, N x EncoderLayer
    decoder input -> Decoder: embed * sqrt(d_model) + positions, dropout, N x DecoderLayer
                     (each attending to the encoder output) -> logits via the tied embedding

`Transformer.encode` and `Transformer.decode` build every mask (from `flax_transformer.masks`);
the stacks and layers only receive them. Decoder input tokens are the target shifted right
(start token first); the caller does the shifting.

Incremental decoding (`flax_transformer.decoding`) uses `Transformer.init_cache`, which encodes
the source and projects it for every decoder layer's cross-attention once, and
`Transformer.decode_step`, which runs one target position against a `DecodingCache` of the
earlier positions' keys and values.

Stacks are unrolled by default (params `layer_0`, `layer_1`, ...); `config.scan_layers` runs them
with `nn.scan` (one set of params named `layers` with a leading layer axis, compile time
independent of depth). `stack_layer_params` and `unstack_layer_params` convert between the two;
`init_params` makes a parameter tree (jitted, config static) and `count_params` counts it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from flax_transformer import checks, masks
from flax_transformer.config import TransformerConfig
from flax_transformer.dropout import Dropout
from flax_transformer.layers import (
    DecoderLayer,
    EncoderLayer,
    KeyValue,
    PositionEmbedding,
    TokenEmbedding,
    dense_init,
    layer_norm,
    projection_dot_general,
    to_cache_layout,
)
from flax_transformer.positional import sinusoidal_encoding_at

Array = jax.Array
Params = dict[str, Any]
# One KeyValue per decoder layer: a tuple for unrolled stacks, one stacked KeyValue when scanned.
LayerKeyValues = KeyValue | tuple[KeyValue, ...]


def _embed(
    config: TransformerConfig,
    embedding: TokenEmbedding,
    position_embedding: PositionEmbedding | None,
    dropout: Dropout,
    tokens: Array,
    positions: Array | None,
    deterministic: bool,
) -> Array:
    """Token embedding + positional encoding, then dropout (paper sections 3.4, 3.5, 5.4).

    `position_embedding` is the learned table, or None for the sinusoids of section 3.5.
    """
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
    x = embedding(tokens)
    if position_embedding is not None:
        x = x + position_embedding(positions)
    else:
        x = x + sinusoidal_encoding_at(positions, config.d_model, layout=config.sinusoid_layout)
    x = dropout(x, deterministic=deterministic)
    return x.astype(config.compute_dtype)


def _layer_stack(
    config: TransformerConfig, layer_cls: type[nn.Module], num_layers: int
) -> nn.Module | list[nn.Module]:
    """The N layers of a stack, created in its setup; `_run_layers` runs them.

    Unrolled: modules `layer_0` ... `layer_{N-1}`. Scanned: one module `layers`, which `nn.scan`
    gives parameters with a leading layer axis.
    """
    if config.remat:
        # `deterministic` is a Python bool: remat must treat it as static. Argument 0 is `self`.
        arguments = list(inspect.signature(layer_cls.__call__).parameters)
        layer_cls = nn.remat(layer_cls, static_argnums=(arguments.index("deterministic"),))
    if config.scan_layers:
        return layer_cls(config, name="layers")
    return [layer_cls(config, name=f"layer_{index}") for index in range(num_layers)]


def _run_layers(
    config: TransformerConfig,
    layers: nn.Module | list[nn.Module],
    num_layers: int,
    apply_layer: Callable[..., tuple[Array, Any]],
    carry: Array,
    *,
    per_layer: tuple[Any, ...] = (),
    shared: tuple[Any, ...] = (),
) -> tuple[Array, Any]:
    """Thread `carry` through the layers of a stack, first to last.

    `apply_layer(layer, carry, *layer_inputs, *shared) -> (carry, layer_output)`: `shared`
    arguments go to every layer; each of the `per_layer` arguments holds one entry per layer.
    Per-layer arguments and outputs are laid out like the parameters: for unrolled stacks a
    tuple with one entry per layer, for scanned stacks one pytree stacked on axis 1 (after
    batch). Scanned stacks use `nn.scan`: the compiled program holds one layer whatever the depth.
    """
    if config.scan_layers:
        scanned = nn.scan(
            apply_layer,
            variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(1,) * len(per_layer) + (nn.broadcast,) * len(shared),
            out_axes=1,
            length=num_layers,
        )
        return scanned(layers, carry, *per_layer, *shared)
    outputs = []
    for index, layer in enumerate(layers):
        layer_inputs = [entries[index] for entries in per_layer]
        carry, output = apply_layer(layer, carry, *layer_inputs, *shared)
        outputs.append(output)
    return carry, tuple(outputs)


class _Stack(nn.Module):
    """What the encoder and decoder stacks share (paper section 3.1): their input embedding
    (token embedding + positional encoding, then dropout: sections 3.4, 3.5, 5.4), their
    `num_layers` layers of `layer_class` (both set by the subclass), and with pre-LN a final
    LayerNorm."""

    config: TransformerConfig
    embedding: TokenEmbedding

    def setup(self) -> None:
        cfg = self.config
        if cfg.positional_encoding == "learned":
            self.position_embedding = PositionEmbedding(cfg)
        self.dropout = Dropout(rate=cfg.dropout_rate)
        self.layers = _layer_stack(cfg, self.layer_class, self.num_layers)
        if cfg.norm_position == "pre":
            self.final_norm = layer_norm(cfg)

    def _embed(self, tokens: Array, positions: Array | None, deterministic: bool) -> Array:
        cfg = self.config
        learned = self.position_embedding if cfg.positional_encoding == "learned" else None
        return _embed(cfg, self.embedding, learned, self.dropout, tokens, positions, deterministic)


class Encoder(_Stack):
    """The encoder stack (paper section 3.1): N identical layers over the embedded source."""

    layer_class = EncoderLayer  # a class attribute, not a field

    @property
    def num_layers(self) -> int:
        return self.config.num_encoder_layers

    def __call__(
        self,
        source_tokens: Array,
        mask: Array | None,
        positions: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        cfg = self.config
        x = self._embed(source_tokens, positions, deterministic)

        def apply_layer(layer, x, mask):
            return layer(x, mask, deterministic), None

        x, _ = _run_layers(cfg, self.layers, self.num_layers, apply_layer, x, shared=(mask,))
        if cfg.norm_position == "pre":
            x = self.final_norm(x)
        return x


class Decoder(_Stack):
    """The decoder stack (paper section 3.1) and the pre-softmax projection (3.4).

    `__call__` runs a whole target sequence. Incremental decoding uses the same parameters through
    `cross_attention_key_values` (once per source) and `decode_step` (once per target position).
    """

    layer_class = DecoderLayer

    @property
    def num_layers(self) -> int:
        return self.config.num_decoder_layers

    def setup(self) -> None:
        super().setup()
        cfg = self.config
        if not cfg.tie_output_embedding:
            # Accumulate and return the logits in float32 (as the tied `attend` does): a bfloat16
            # output would round every logit to 8 significant bits before the softmax and loss.
            self.logits = nn.Dense(
                cfg.vocab_size,
                dtype=cfg.compute_dtype,
                kernel_init=dense_init,
                dot_general=functools.partial(
                    projection_dot_general, preferred_element_type=jnp.float32
                ),
            )
        if cfg.final_logits_bias:
            self.final_logits_bias = self.param(
                "final_logits_bias", nn.initializers.zeros_init(), (cfg.vocab_size,), jnp.float32
            )

    def __call__(
        self,
        encoded: Array,
        decoder_input_tokens: Array,
        self_attention_mask: Array | None,
        cross_attention_mask: Array | None,
        positions: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        cfg = self.config
        y = self._embed(decoder_input_tokens, positions, deterministic)

        def apply_layer(layer, y, encoded, self_attention_mask, cross_attention_mask):
            return layer(y, encoded, self_attention_mask, cross_attention_mask, deterministic), None

        y, _ = _run_layers(
            cfg,
            self.layers,
            self.num_layers,
            apply_layer,
            y,
            shared=(encoded, self_attention_mask, cross_attention_mask),
        )
        return self._output_logits(y)

    def cross_attention_key_values(self, encoded: Array) -> LayerKeyValues:
        """Every layer's cross-attention keys and values, laid out as in `DecodingCache`."""
        cfg = self.config

        def apply_layer(layer, encoded):
            return encoded, to_cache_layout(layer.cross_attention_key_value(encoded))

        _, key_values = _run_layers(cfg, self.layers, self.num_layers, apply_layer, encoded)
        return key_values

    def decode_step(
        self,
        tokens: Array,
        step: Array,
        self_attention_cache: LayerKeyValues,
        cross_attention_key_values: LayerKeyValues,
        self_attention_mask: Array,
        cross_attention_mask: Array | None,
    ) -> tuple[Array, LayerKeyValues]:
        """Decoder input tokens [batch, beams] at position `step`, one per hypothesis ->
        (logits [batch, beams, vocab], self-attention cache).

        The caches hold every layer's keys and values, laid out as in `DecodingCache`; the
        masks are those of `DecoderLayer.decode_step`.
        """
        cfg = self.config
        positions = jnp.full(tokens.shape, step)
        y = self._embed(tokens, positions, deterministic=True)

        def apply_layer(
            layer,
            y,
            self_attention_cache,
            cross_attention_key_value,
            step,
            self_attention_mask,
            cross_attention_mask,
        ):
            return layer.decode_step(
                y,
                step,
                self_attention_cache,
                cross_attention_key_value,
                self_attention_mask,
                cross_attention_mask,
            )

        y, self_attention_cache = _run_layers(
            cfg,
            self.layers,
            self.num_layers,
            apply_layer,
            y,
            per_layer=(self_attention_cache, cross_attention_key_values),
            shared=(step, self_attention_mask, cross_attention_mask),
        )
        return self._output_logits(y), self_attention_cache

    def _output_logits(self, y: Array) -> Array:
        """The final LayerNorm (pre-LN only), then the pre-softmax linear map (3.4), in float32."""
        cfg = self.config
        if cfg.norm_position == "pre":
            y = self.final_norm(y)
        if not cfg.tie_output_embedding:
            return self.logits(y).astype(jnp.float32)
        logits = self.embedding.attend(y)
        if cfg.final_logits_bias:
            logits = logits + self.final_logits_bias
        return logits


@struct.dataclass
class DecodingCache:
    """What incremental decoding keeps between steps (`Transformer.init_cache` makes one), for
    `batch` source sentences with `beams` hypotheses each (1 unless beam search). A step's
    rows are the hypotheses: row b * beams + k is hypothesis k of sentence b.

        source_tokens     [batch, src_len]: the cross-attention padding mask is built from them
        cross_attention   each decoder layer's keys and values of the encoder output, computed
                          once per source and shared by its hypotheses: keys transposed
                          [batch, heads, d_k, src_len], values [batch, heads, src_len, d_k]
        self_attention    each decoder layer's self-attention keys and values in `beams` slots,
                          keys [batch, heads, beams, d_k, length], values [batch, heads, beams,
                          length, d_k]: step t writes position t of hypothesis k into slot k.
                          With one beam there is no slot axis: keys [batch, heads, d_k,
                          length], values [batch, heads, length, d_k] (XLA would copy an
                          array with a unit axis at every step)
        slots             int32 [batch, beams, length]: hypothesis k reads position t from slot
                          slots[b, k, t] (all k at first; `reorder_beams` changes it)

    So beam search never copies keys or values when hypotheses change places: it reorders the
    small slot table (`reorder_beams`). Keys are stored transposed, and each slot's positions
    side by side, so that attention over the cache reads them without copying, one slot at a
    time (`flax_transformer.attention.cached_dot_product_attention`).
    The per-layer entries are laid out like the parameters: a tuple of `KeyValue`s, one per
    layer, or with `scan_layers` one `KeyValue` whose arrays have a layer axis after batch.
    Every array has the batch axis first, so `jax.tree.map` can select or reorder sentences.
    """

    source_tokens: Array
    cross_attention: LayerKeyValues
    self_attention: LayerKeyValues
    slots: Array

    @property
    def length(self) -> int:
        """The number of target positions the cache holds."""
        return self.slots.shape[2]

    @property
    def beams(self) -> int:
        """The number of hypotheses per sentence."""
        return self.slots.shape[1]

    def reorder_beams(self, parents: Array) -> DecodingCache:
        """Hypothesis k of sentence b continues hypothesis parents[b, k] (int [batch, beams]).

        Only the slot table moves: hypothesis k's positions so far are where its parent's are.
        No key or value is copied or overwritten: hypothesis k writes its next position into
        slot k, where no hypothesis has written that position before.
        """
        slots = jnp.take_along_axis(self.slots, parents[:, :, None], axis=1)
        return self.replace(slots=slots)


class Transformer(nn.Module):
    """The Transformer of *Attention Is All You Need* (Figure 1).

    Methods (all take `deterministic=True` for inference; pass False and a "dropout" rng to train):
      encode(source_tokens) -> encoded [batch, src_len, d_model]
      decode(encoded, source_tokens, decoder_input_tokens) -> logits [batch, tgt_len, vocab]
      __call__(source_tokens, decoder_input_tokens) -> logits (encode then decode)
      init_cache(source_tokens, length, beams=1) -> DecodingCache (incremental decoding, see
                 decoding.py)
      decode_step(cache, tokens, step) -> (logits [batch * beams, vocab], cache)

    Tokens are int [batch, length], padded with `config.pad_id` on the right. Packed batches
    pass per-token `*_positions` (position within its segment) and `*_segment_ids` (1, 2, ... per
    packed example, 0 for padding). Logits are float32 whatever `config.dtype` is.
    """

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        if cfg.share_embeddings:
            self.shared_embedding = TokenEmbedding(cfg)
            source_embedding = target_embedding = self.shared_embedding
        else:
            self.source_embedding = source_embedding = TokenEmbedding(cfg)
            self.target_embedding = target_embedding = TokenEmbedding(cfg)
        self.encoder = Encoder(cfg, embedding=source_embedding)
        self.decoder = Decoder(cfg, embedding=target_embedding)

    def encode(
        self,
        source_tokens: Array,
        *,
        source_positions: Array | None = None,
        source_segment_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        mask = masks.encoder_self_attention_mask(
            source_tokens, self.config.pad_id, source_segment_ids
        )
        return self.encoder(source_tokens, mask, source_positions, deterministic)

    def decode(
        self,
        encoded: Array,
        source_tokens: Array,
        decoder_input_tokens: Array,
        *,
        target_positions: Array | None = None,
        target_segment_ids: Array | None = None,
        source_segment_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        cfg = self.config
        self_mask = masks.decoder_self_attention_mask(
            decoder_input_tokens.shape[-1], target_segment_ids
        )
        cross_mask = masks.cross_attention_mask(
            source_tokens, cfg.pad_id, target_segment_ids, source_segment_ids
        )
        return self.decoder(
            encoded, decoder_input_tokens, self_mask, cross_mask, target_positions, deterministic
        )

    def init_cache(self, source_tokens: Array, length: int, beams: int = 1) -> DecodingCache:
        """Start incremental decoding: encode the source once, project it for every decoder
        layer's cross-attention once, and allocate an empty self-attention cache of `length`
        target positions (the longest output the decoding loop will produce) for `beams`
        hypotheses per sentence."""
        cfg = self.config
        encoded = self.encode(source_tokens)
        batch, layers = source_tokens.shape[0], cfg.num_decoder_layers
        slot_axis = (beams,) if beams > 1 else ()
        keys = (cfg.num_heads, *slot_axis, cfg.head_dim, length)
        values = (cfg.num_heads, *slot_axis, length, cfg.head_dim)
        if cfg.scan_layers:
            self_attention = KeyValue(
                key=jnp.zeros((batch, layers) + keys, cfg.compute_dtype),
                value=jnp.zeros((batch, layers) + values, cfg.compute_dtype),
            )
        else:
            empty = KeyValue(
                key=jnp.zeros((batch,) + keys, cfg.compute_dtype),
                value=jnp.zeros((batch,) + values, cfg.compute_dtype),
            )
            self_attention = (empty,) * layers
        return DecodingCache(
            source_tokens=source_tokens,
            cross_attention=self.decoder.cross_attention_key_values(encoded),
            self_attention=self_attention,
            slots=jnp.zeros((batch, beams, length), jnp.int32),
        )

    def decode_step(
        self, cache: DecodingCache, tokens: Array, step: Array
    ) -> tuple[Array, DecodingCache]:
        """One step of incremental decoding.

        `tokens` [batch * beams] are the decoder input tokens at target position `step` of
        each hypothesis (row b * beams + k: hypothesis k of sentence b; the start token at
        step 0, then the previous outputs). Returns the float32 logits [batch * beams, vocab]
        of the next token, equal to `decode(...)[:, step]` over each hypothesis's prefix, and
        the cache with position `step` added. Deterministic (no dropout).
        """
        cfg = self.config
        batch, beams = cache.slots.shape[:2]
        # Each hypothesis writes position `step` into its own slot.
        own_slot = jnp.broadcast_to(jnp.arange(beams, dtype=jnp.int32), (batch, beams))
        slots = jax.lax.dynamic_update_index_in_dim(cache.slots, own_slot, step, axis=2)
        logits, self_attention = self.decoder.decode_step(
            tokens.reshape(batch, beams),
            step,
            cache.self_attention,
            cache.cross_attention,
            masks.beam_step_mask(slots, step),
            masks.cross_attention_mask(cache.source_tokens, cfg.pad_id),
        )
        logits = logits.reshape(batch * beams, -1)
        return logits, cache.replace(self_attention=self_attention, slots=slots)

    def __call__(
        self,
        source_tokens: Array,
        decoder_input_tokens: Array,
        *,
        source_positions: Array | None = None,
        target_positions: Array | None = None,
        source_segment_ids: Array | None = None,
        target_segment_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        encoded = self.encode(
            source_tokens,
            source_positions=source_positions,
            source_segment_ids=source_segment_ids,
            deterministic=deterministic,
        )
        return self.decode(
            encoded,
            source_tokens,
            decoder_input_tokens,
            target_positions=target_positions,
            target_segment_ids=target_segment_ids,
            source_segment_ids=source_segment_ids,
            deterministic=deterministic,
        )


def cross_attention_weights(intermediates: dict[str, Any]) -> Array:
    """The decoder's encoder-decoder attention weights from an apply with
    `mutable=["intermediates"]` (of `Transformer.__call__`, `decode` or `decode_step`): float32
    [batch, layers, heads, q_len, src_len], layers first to last.

    q_len is the target length of a full pass; in `decode_step` the query axis holds the
    `beams` hypotheses of each sentence (its batch axis the sentences). Each layer's
    `cross_attention` records its weights (`MultiHeadAttention`; on the reference path or over
    the cache: a fused full pass records none, and then this raises KeyError).
    """
    decoder = intermediates["decoder"]
    if "layers" in decoder:  # nn.scan stacks what its layer records on a leading layer axis
        (weights,) = decoder["layers"]["cross_attention"]["attention_weights"]
        return jnp.moveaxis(weights, 0, 1)
    layers = [decoder[name]["cross_attention"] for name in _stack_names(decoder)]
    return jnp.stack([layer["attention_weights"][0] for layer in layers], axis=1)


# ---------------------------------------------------------------------------------------------
# Parameters: initialising, counting, and converting between unrolled (layer_0, layer_1, ...)
# and scanned (layers) stacks.
# ---------------------------------------------------------------------------------------------
@checks.checked_jit(lambda config, rng: checks.check_config(config))
def init_params(config: TransformerConfig, rng: Array) -> Params:
    """Freshly initialised float32 parameters of `Transformer(config)` (jitted)."""
    tokens = jnp.ones((1, 1), jnp.int32)
    return Transformer(config).init({"params": rng}, tokens, tokens)["params"]


def count_params(params: Params) -> int:
    """The number of scalar parameters in a parameter tree."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)))


def _stack_names(tree: dict[str, Any]) -> list[str]:
    names = [name for name in tree if name.startswith("layer_")]
    return sorted(names, key=lambda name: int(name.removeprefix("layer_")))


def stack_layer_params(params: dict[str, Any]) -> dict[str, Any]:
    """Params of an unrolled model -> params of the same model with `scan_layers=True`."""
    params = dict(params)
    for stack in ("encoder", "decoder"):
        tree = dict(params[stack])
        names = _stack_names(tree)
        layers = [tree.pop(name) for name in names]
        tree["layers"] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *layers)
        params[stack] = tree
    return params


def unstack_layer_params(params: dict[str, Any]) -> dict[str, Any]:
    """Params of a model with `scan_layers=True` -> params of the unrolled model."""
    params = dict(params)
    for stack in ("encoder", "decoder"):
        tree = dict(params[stack])
        stacked = tree.pop("layers")
        num_layers = jax.tree.leaves(stacked)[0].shape[0]
        for index in range(num_layers):
            tree[f"layer_{index}"] = jax.tree.map(lambda leaf, i=index: leaf[i], stacked)
        params[stack] = tree
    return params
