"""The Transformer's building blocks as linen modules (paper section 3).

    TokenEmbedding      embeddings scaled by sqrt(d_model), and the tied output projection (3.4)
    PositionEmbedding   learned positions (the paper's Table 3, row E); sinusoids are in positional
    MultiHeadAttention  h heads of scaled dot-product attention with W^Q, W^K, W^V, W^O (3.2.2)
    FeedForward         FFN(x) = max(0, x W1 + b1) W2 + b2 (3.3)
    EncoderLayer        self-attention and feed-forward sub-layers (3.1, Figure 1 left)
    DecoderLayer        masked self-attention, cross-attention, feed-forward (3.1, Figure 1 right)
    KeyValue            projected keys and values, the unit of the incremental-decoding cache

Each sub-layer is wrapped in a residual connection with dropout and LayerNorm (3.1, 5.4):
post-LN (paper, default) computes LayerNorm(x + Dropout(Sublayer(x))); pre-LN computes
x + Dropout(Sublayer(LayerNorm(x))). Parameter names are explicit and identical in both, so a
checkpoint's tree does not depend on the code's structure. Layers receive masks; they never build
them (see `flax_transformer.masks`).

Incremental decoding (`flax_transformer.decoding`) runs the decoder one target position at a time.
`DecoderLayer.cross_attention_key_value` projects the encoder output once per source sentence and
`DecoderLayer.decode_step` runs one position against a cache of the earlier positions' keys and
values; both reuse the parameters of `DecoderLayer.__call__`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from flax_transformer.attention import (
    cached_dot_product_attention,
    fused_dot_product_attention,
    scaled_dot_product_attention,
)
from flax_transformer.config import ACTIVATIONS, TransformerConfig
from flax_transformer.dropout import Dropout

Array = jax.Array

# Glorot/Xavier uniform for every projection, as in tensor2tensor and the Annotated Transformer.
dense_init = nn.initializers.xavier_uniform()


def projection_dot_general(
    inputs: Array,
    kernel: Array,
    dimension_numbers: tuple,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> Array:
    """The `dot_general` of every projection (`nn.Dense`, `nn.DenseGeneral`): `lax.dot_general`
    with the same result and gradients, its backward pass written out.

    A projection contracts the trailing k axes of `inputs` [..., *in] with the leading k axes of
    `kernel` [*in, *out]; any other contraction goes to `lax.dot_general` unchanged. With
    tokens = all leading axes of `inputs` flattened, the gradients are d inputs = d_out @ kernelᵀ
    and d kernel = (d_outᵀ @ inputs)ᵀ. Spelled that way, XLA:CPU runs the kernel gradient as one
    matrix product over [tokens, features] operands as they lie; autodiff's form of the same
    product makes it first copy the activations transposed, once per projection and step.
    """
    (input_axes, kernel_axes), (input_batch, kernel_batch) = dimension_numbers
    k = len(input_axes)
    is_projection = (
        not input_batch
        and not kernel_batch
        and tuple(input_axes) == tuple(range(inputs.ndim - k, inputs.ndim))
        and tuple(kernel_axes) == tuple(range(k))
    )
    if not is_projection or precision is not None:
        return jax.lax.dot_general(
            inputs, kernel, dimension_numbers, precision, preferred_element_type
        )
    return _projection(inputs, kernel, k, preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _projection(inputs: Array, kernel: Array, k: int, preferred_element_type: Any) -> Array:
    return jax.lax.dot_general(
        inputs,
        kernel,
        ((tuple(range(inputs.ndim - k, inputs.ndim)), tuple(range(k))), ((), ())),
        preferred_element_type=preferred_element_type,
    )


def _projection_forward(inputs, kernel, k, preferred_element_type):
    return _projection(inputs, kernel, k, preferred_element_type), (inputs, kernel)


def _projection_backward(k, preferred_element_type, residuals, d_out):
    inputs, kernel = residuals
    fan_in, fan_out = math.prod(kernel.shape[:k]), math.prod(kernel.shape[k:])
    tokens_inputs = inputs.reshape(-1, fan_in)
    tokens_d_out = d_out.reshape(-1, fan_out).astype(inputs.dtype)
    matrix = kernel.reshape(fan_in, fan_out)
    d_inputs = jnp.dot(tokens_d_out, matrix.T, preferred_element_type=preferred_element_type)
    d_kernel = jnp.dot(tokens_d_out.T, tokens_inputs, preferred_element_type=preferred_element_type)
    return (
        d_inputs.reshape(inputs.shape).astype(inputs.dtype),
        d_kernel.T.reshape(kernel.shape).astype(kernel.dtype),
    )


_projection.defvjp(_projection_forward, _projection_backward)


class TokenEmbedding(nn.Module):
    """Token embeddings, multiplied by sqrt(d_model) (paper section 3.4).

    `attend` is the pre-softmax linear transformation that shares this weight matrix.
    Ids outside [0, vocab_size) embed to NaN instead of silently reading another row; the
    public API checks ids on the host before they get here (`flax_transformer.api`).
    """

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        # stddev d_model^-1/2 makes the scaled embedding unit-variance (as in tensor2tensor).
        self.embedding = self.param(
            "embedding",
            nn.initializers.normal(stddev=cfg.d_model**-0.5),
            (cfg.vocab_size, cfg.d_model),
            jnp.float32,
        )

    def __call__(self, tokens: Array) -> Array:
        cfg = self.config
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"token ids must be integers, got dtype {tokens.dtype}")
        # Negative ids would wrap around in `take`; send them out of range so they fill with NaN.
        tokens = jnp.where(tokens < 0, cfg.vocab_size, tokens)
        embedded = jnp.take(self.embedding, tokens, axis=0, mode="fill", fill_value=jnp.nan)
        if cfg.scale_embeddings:
            embedded = embedded * jnp.sqrt(jnp.float32(cfg.d_model))
        return embedded

    def attend(self, hidden: Array) -> Array:
        """Logits = hidden @ embeddingᵀ, accumulated and returned in float32."""
        cfg = self.config
        return tied_output_logits(
            hidden.astype(cfg.compute_dtype), self.embedding.astype(cfg.compute_dtype)
        )


@jax.custom_vjp
def tied_output_logits(hidden: Array, embedding: Array) -> Array:
    """hidden [..., d_model] @ embedding [vocab, d_model]ᵀ -> float32 logits [..., vocab].

    The gradient is autodiff's, written out: d hidden = d_logits @ embedding and
    d embedding = (hiddenᵀ @ d_logits)ᵀ. Spelled this way, XLA:CPU contracts the [tokens, vocab]
    logits gradient where it lies instead of first writing it transposed, which is the largest
    copy of a training step (the vocabulary is the widest axis in the model).
    """
    return jnp.einsum("...d,vd->...v", hidden, embedding, preferred_element_type=jnp.float32)


def _tied_output_logits_forward(hidden: Array, embedding: Array) -> tuple[Array, tuple]:
    return tied_output_logits(hidden, embedding), (hidden, embedding)


def _tied_output_logits_backward(residuals: tuple, d_logits: Array) -> tuple[Array, Array]:
    hidden, embedding = residuals
    d_logits = d_logits.astype(hidden.dtype)
    d_hidden = jnp.einsum("...v,vd->...d", d_logits, embedding, preferred_element_type=jnp.float32)
    tokens_hidden = hidden.reshape(-1, hidden.shape[-1])
    tokens_d_logits = d_logits.reshape(-1, d_logits.shape[-1])
    d_embedding = jnp.dot(tokens_hidden.T, tokens_d_logits, preferred_element_type=jnp.float32).T
    return d_hidden.astype(hidden.dtype), d_embedding.astype(embedding.dtype)


tied_output_logits.defvjp(_tied_output_logits_forward, _tied_output_logits_backward)


class PositionEmbedding(nn.Module):
    """Learned position embeddings, one vector per position < max_len (Table 3, row E)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, positions: Array) -> Array:
        cfg = self.config
        table = self.param(
            "embedding", nn.initializers.normal(stddev=0.02), (cfg.max_len, cfg.d_model)
        )
        positions = jnp.where(positions < 0, cfg.max_len, positions)
        return jnp.take(table, positions, axis=0, mode="fill", fill_value=jnp.nan)


@struct.dataclass
class KeyValue:
    """The keys and values one attention layer attends over, each [batch, k_len, heads, d_k].

    Incremental decoding keeps these between steps (see `DecoderLayer.decode_step`).
    """

    key: Array
    value: Array


def to_cache_layout(key_value: KeyValue) -> KeyValue:
    """Keys and values [batch, len, heads, d_k] -> the layout of the decoding cache: keys
    transposed, [batch, heads, d_k, len], and values [batch, heads, len, d_k]
    (`MultiHeadAttention.attend_cache` reads them without copying). Beam search's
    self-attention cache adds a slot axis after heads (`DecoderLayer.decode_step`)."""
    return KeyValue(
        key=jnp.transpose(key_value.key, (0, 2, 3, 1)),
        value=jnp.transpose(key_value.value, (0, 2, 1, 3)),
    )


class MultiHeadAttention(nn.Module):
    """Multi-head attention (paper section 3.2.2).

        MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,
        head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),  d_k = d_v = d_model / h.

    Self-attention passes the same sequence as `inputs_q` and `inputs_kv`; cross-attention
    passes decoder states as `inputs_q` and the encoder output as `inputs_kv`. The call is two
    halves that incremental decoding uses separately: `project_key_value` (K W^K and V W^V, which
    depend on the attended sequence only, so they can be computed once and cached) and `attend`
    (the queries, the attention itself and W^O). On the reference path and over a decoding
    cache (`attend_cache`) the attention weights [batch, heads, q_len, k_len] are recorded with
    `sow("intermediates", "attention_weights", ...)`: apply with `mutable=["intermediates"]` to
    read them (otherwise recording is a no-op). The fused path records nothing.
    """

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config

        def per_head_projection() -> nn.DenseGeneral:  # [b, len, d_model] -> [b, len, h, d_k]
            return nn.DenseGeneral(
                features=(cfg.num_heads, cfg.head_dim),
                dtype=cfg.compute_dtype,
                kernel_init=dense_init,
                dot_general=projection_dot_general,
            )

        self.query = per_head_projection()
        self.key = per_head_projection()
        self.value = per_head_projection()
        # Concat(head_1, ..., head_h) W^O, as one contraction over (heads, d_k).
        self.output = nn.DenseGeneral(
            features=cfg.d_model,
            axis=(-2, -1),
            dtype=cfg.compute_dtype,
            kernel_init=dense_init,
            dot_general=projection_dot_general,
        )

    def __call__(
        self, inputs_q: Array, inputs_kv: Array, mask: Array | None, deterministic: bool = True
    ) -> Array:
        return self.attend(inputs_q, self.project_key_value(inputs_kv), mask, deterministic)

    def project_key_value(self, inputs_kv: Array) -> KeyValue:
        """K W^K and V W^V for every head: [batch, len, d_model] -> two [batch, len, h, d_k]."""
        return KeyValue(key=self.key(inputs_kv), value=self.value(inputs_kv))

    def attend(
        self,
        inputs_q: Array,
        key_value: KeyValue,
        mask: Array | None,
        deterministic: bool = True,
    ) -> Array:
        """Queries from `inputs_q` attend over projected keys and values -> [b, q, d_model]."""
        cfg = self.config
        query = self.query(inputs_q)
        key, value = key_value.key, key_value.value
        use_dropout = not deterministic and cfg.attention_dropout_rate > 0.0
        if cfg.attention_implementation == "fused" and not use_dropout:
            heads = fused_dot_product_attention(query, key, value, mask)
        else:
            # The pure function takes [..., len, d_k]: put heads before length.
            heads, weights = scaled_dot_product_attention(
                jnp.swapaxes(query, 1, 2),
                jnp.swapaxes(key, 1, 2),
                jnp.swapaxes(value, 1, 2),
                mask,
                dropout_rate=cfg.attention_dropout_rate,
                dropout_rng=self.make_rng("dropout") if use_dropout else None,
            )
            self.sow("intermediates", "attention_weights", weights)
            heads = jnp.swapaxes(heads, 1, 2)
        return self.output(heads)

    def attend_cache(self, inputs_q: Array, key_value: KeyValue, mask: Array | None) -> Array:
        """`attend` for incremental decoding (no dropout): inputs_q [b, q, d_model] attend over
        keys and values in the cache layout (`to_cache_layout`, or with slots: see
        `DecoderLayer.decode_step`) -> [b, q, d_model]. The recorded weights are [b, h, q,
        k_len], or [b, h, q, slots * k_len] slot by slot.

        Always `cached_dot_product_attention`, whatever `attention_implementation` is: a few
        queries against a cache leave nothing to fuse.
        """
        query = jnp.swapaxes(self.query(inputs_q), 1, 2)  # [b, h, q, d_k]
        heads, weights = cached_dot_product_attention(query, key_value.key, key_value.value, mask)
        if weights.ndim == 5:  # [b, h, slots, q, k_len] -> [b, h, q, slots * k_len]
            weights = jnp.swapaxes(weights, 2, 3)
            weights = weights.reshape(weights.shape[:3] + (-1,))
        self.sow("intermediates", "attention_weights", weights)
        return self.output(jnp.swapaxes(heads, 1, 2))


class FeedForward(nn.Module):
    """Position-wise feed-forward network (paper section 3.3): two linear maps, ReLU between.

    `config.activation` selects another function (GELU, SiLU) instead of ReLU.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        cfg = self.config
        dense = functools.partial(
            nn.Dense,
            dtype=cfg.compute_dtype,
            kernel_init=dense_init,
            dot_general=projection_dot_general,
        )
        hidden = ACTIVATIONS[cfg.activation](dense(cfg.d_ff, name="hidden")(inputs))
        return dense(cfg.d_model, name="output")(hidden)


def layer_norm(config: TransformerConfig, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_epsilon, dtype=config.compute_dtype, name=name)


# The residual connection around a sub-layer (paper sections 3.1 and 5.4):
#
#     post-LN (paper): LayerNorm(x + Dropout(Sublayer(x)))
#     pre-LN:          x + Dropout(Sublayer(LayerNorm(x)))
#
# `residual` wraps a whole sub-layer. It is the composition of two halves, which incremental
# decoding uses separately because it needs the sub-layer's input to fill its cache:
# `sublayer_input` (what the sub-layer reads) and `add_residual` (what the layer passes on).
def sublayer_input(config: TransformerConfig, norm: nn.LayerNorm, inputs: Array) -> Array:
    """What a sub-layer reads: LayerNorm(x) with pre-LN, x itself with post-LN."""
    return norm(inputs) if config.norm_position == "pre" else inputs


def add_residual(
    config: TransformerConfig,
    norm: nn.LayerNorm,
    inputs: Array,
    sublayer_output: Array,
    *,
    dropout: Dropout,
    deterministic: bool,
) -> Array:
    """x + Dropout(output), then LayerNorm with post-LN."""
    summed = inputs + dropout(sublayer_output, deterministic=deterministic)
    return norm(summed) if config.norm_position == "post" else summed


def residual(
    config: TransformerConfig,
    norm: nn.LayerNorm,
    inputs: Array,
    sublayer: Callable[[Array], Array],
    *,
    dropout: Dropout,
    deterministic: bool,
) -> Array:
    """The sub-layer wrapped in its residual connection (and LayerNorm, before or after)."""
    output = sublayer(sublayer_input(config, norm, inputs))
    return add_residual(config, norm, inputs, output, dropout=dropout, deterministic=deterministic)


class EncoderLayer(nn.Module):
    """One encoder layer (paper section 3.1): self-attention, then the feed-forward network."""

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        self.self_attention = MultiHeadAttention(cfg)
        self.self_attention_norm = layer_norm(cfg)
        self.feed_forward = FeedForward(cfg)
        self.feed_forward_norm = layer_norm(cfg)
        # One Dropout module for every sub-layer: each call draws a fresh mask.
        self.dropout = Dropout(rate=cfg.dropout_rate)

    def __call__(self, inputs: Array, mask: Array | None, deterministic: bool = True) -> Array:
        add_and_norm = functools.partial(
            residual, self.config, dropout=self.dropout, deterministic=deterministic
        )
        x = add_and_norm(
            self.self_attention_norm,
            inputs,
            lambda h: self.self_attention(h, h, mask, deterministic),
        )
        return add_and_norm(self.feed_forward_norm, x, self.feed_forward)


class DecoderLayer(nn.Module):
    """One decoder layer (paper section 3.1): masked self-attention, encoder-decoder attention
    over the encoder output, then the feed-forward network.

    `__call__` runs a whole target sequence at once (training, scoring). Incremental decoding
    computes the same thing one position at a time: `cross_attention_key_value` projects the
    encoder output once per source sentence, and `decode_step` runs one new position, adding
    its self-attention keys and values to a cache that holds those of the earlier positions.
    """

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        self.self_attention = MultiHeadAttention(cfg)
        self.self_attention_norm = layer_norm(cfg)
        self.cross_attention = MultiHeadAttention(cfg)
        self.cross_attention_norm = layer_norm(cfg)
        self.feed_forward = FeedForward(cfg)
        self.feed_forward_norm = layer_norm(cfg)
        # One Dropout module for every sub-layer: each call draws a fresh mask.
        self.dropout = Dropout(rate=cfg.dropout_rate)

    def __call__(
        self,
        inputs: Array,
        encoded: Array,
        self_attention_mask: Array | None,
        cross_attention_mask: Array | None,
        deterministic: bool = True,
    ) -> Array:
        add_and_norm = functools.partial(
            residual, self.config, dropout=self.dropout, deterministic=deterministic
        )
        x = add_and_norm(
            self.self_attention_norm,
            inputs,
            lambda h: self.self_attention(h, h, self_attention_mask, deterministic),
        )
        return self._attend_to_source_and_feed_forward(
            x, self.cross_attention_key_value(encoded), cross_attention_mask, deterministic
        )

    def cross_attention_key_value(self, encoded: Array) -> KeyValue:
        """The encoder output as cross-attention keys and values, [batch, src_len, h, d_k] each.

        They depend on the source sentence only: incremental decoding computes them once.
        """
        return self.cross_attention.project_key_value(encoded)

    def decode_step(
        self,
        inputs: Array,
        step: Array,
        self_attention_cache: KeyValue,
        cross_attention_key_value: KeyValue,
        self_attention_mask: Array,
        cross_attention_mask: Array | None,
    ) -> tuple[Array, KeyValue]:
        """One target position of each of a sentence's hypotheses through the layer, using the
        cache of the earlier positions. Every key/value argument is in the cache layout
        (`to_cache_layout`).

        Args:
          inputs: [batch, beams, d_model], the layer's input at target position `step` for
            each of a sentence's `beams` hypotheses (1 unless beam search).
          step: int32 scalar, that position.
          self_attention_cache: one slot of positions per hypothesis: keys [batch, heads,
            beams, d_k, cache_len], values [batch, heads, beams, cache_len, d_k]; with one
            beam, the one slot without its axis (`to_cache_layout`'s layout). Hypothesis k
            writes position `step` of slot k.
          cross_attention_key_value: `cross_attention_key_value` in the cache layout, one per
            sentence (its hypotheses share it).
          self_attention_mask: `masks.beam_step_mask`: [batch, 1, beams, beams, cache_len],
            True at [b, 0, j, k, t] where hypothesis k reads position t from slot j ([batch,
            1, 1, cache_len] with one beam).
          cross_attention_mask: the source padding mask, as in `__call__`.

        Returns:
          (outputs [batch, beams, d_model], the cache with position `step` written). A
          hypothesis's outputs equal position `step` of `__call__` over its prefix
          (deterministic: no dropout).
        """
        cfg = self.config
        add_and_norm = functools.partial(residual, cfg, dropout=self.dropout, deterministic=True)
        # The self-attention sub-layer, spelled out: the cache needs this position's keys and
        # values, which are projections of the sub-layer's input.
        h = sublayer_input(cfg, self.self_attention_norm, inputs)
        # Position `step` of every slot, hypothesis k's in slot k: [b, heads, beams, d_k], and
        # [b, heads, d_k] with one beam: a unit axis in the cache would make XLA copy it.
        new = self.self_attention.project_key_value(h)
        new_key, new_value = (jnp.swapaxes(x, 1, 2) for x in (new.key, new.value))
        if inputs.shape[1] == 1:
            new_key, new_value = new_key[:, :, 0], new_value[:, :, 0]
        cache = KeyValue(
            key=jax.lax.dynamic_update_index_in_dim(
                self_attention_cache.key,
                new_key.astype(self_attention_cache.key.dtype),
                step,
                axis=-1,
            ),
            value=jax.lax.dynamic_update_index_in_dim(
                self_attention_cache.value,
                new_value.astype(self_attention_cache.value.dtype),
                step,
                axis=-2,
            ),
        )
        attended = self.self_attention.attend_cache(h, cache, self_attention_mask)
        x = add_residual(
            cfg,
            self.self_attention_norm,
            inputs,
            attended,
            dropout=self.dropout,
            deterministic=True,
        )
        x = add_and_norm(
            self.cross_attention_norm,
            x,
            lambda h: self.cross_attention.attend_cache(
                h, cross_attention_key_value, cross_attention_mask
            ),
        )
        return add_and_norm(self.feed_forward_norm, x, self.feed_forward), cache

    def _attend_to_source_and_feed_forward(
        self,
        x: Array,
        cross_attention_key_value: KeyValue,
        cross_attention_mask: Array | None,
        deterministic: bool,
    ) -> Array:
        """The encoder-decoder attention and feed-forward sub-layers of `__call__`."""
        add_and_norm = functools.partial(
            residual, self.config, dropout=self.dropout, deterministic=deterministic
        )
        x = add_and_norm(
            self.cross_attention_norm,
            x,
            lambda h: self.cross_attention.attend(
                h, cross_attention_key_value, cross_attention_mask, deterministic
            ),
        )
        return add_and_norm(self.feed_forward_norm, x, self.feed_forward)
