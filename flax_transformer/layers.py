"""The Transformer's building blocks as linen modules (paper section 3).

    TokenEmbedding      embeddings scaled by sqrt(d_model), and the tied output projection (3.4)
    PositionEmbedding   learned positions (the paper's Table 3, row E); sinusoids are in positional
    MultiHeadAttention  h heads of scaled dot-product attention with W^Q, W^K, W^V, W^O (3.2.2)
    FeedForward         FFN(x) = max(0, x W1 + b1) W2 + b2 (3.3)
    EncoderLayer        self-attention and feed-forward sub-layers (3.1, Figure 1 left)
    DecoderLayer        masked self-attention, cross-attention, feed-forward (3.1, Figure 1 right)

Each sub-layer is wrapped in a residual connection with dropout and LayerNorm (3.1, 5.4):
post-LN (paper, default) computes LayerNorm(x + Dropout(Sublayer(x))); pre-LN computes
x + Dropout(Sublayer(LayerNorm(x))). Parameter names are explicit and identical in both, so a
checkpoint's tree does not depend on the code's structure. Layers receive masks; they never build
them (see `flax_transformer.masks`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_transformer.attention import fused_dot_product_attention, scaled_dot_product_attention
from flax_transformer.config import ACTIVATIONS, TransformerConfig

Array = jax.Array

# Glorot/Xavier uniform for every projection, as in tensor2tensor and the Annotated Transformer.
dense_init = nn.initializers.xavier_uniform()


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
        embedding = self.embedding.astype(cfg.compute_dtype)
        return jnp.einsum(
            "...d,vd->...v",
            hidden.astype(cfg.compute_dtype),
            embedding,
            preferred_element_type=jnp.float32,
        )


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


class MultiHeadAttention(nn.Module):
    """Multi-head attention (paper section 3.2.2).

        MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,
        head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),  d_k = d_v = d_model / h.

    Self-attention passes the same sequence as `inputs_q` and `inputs_kv`; cross-attention
    passes decoder states as `inputs_q` and the encoder output as `inputs_kv`. On the
    reference path the attention weights [batch, heads, q_len, k_len] are recorded with
    `sow("intermediates", "attention_weights", ...)`: apply with `mutable=["intermediates"]`
    to read them. The fused path records nothing.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(
        self, inputs_q: Array, inputs_kv: Array, mask: Array | None, deterministic: bool = True
    ) -> Array:
        cfg = self.config

        def project(name: str, inputs: Array) -> Array:  # [b, len, d_model] -> [b, len, h, d_k]
            return nn.DenseGeneral(
                features=(cfg.num_heads, cfg.head_dim),
                dtype=cfg.compute_dtype,
                kernel_init=dense_init,
                name=name,
            )(inputs)

        query = project("query", inputs_q)
        key = project("key", inputs_kv)
        value = project("value", inputs_kv)

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
        # Concat(head_1, ..., head_h) W^O, as one contraction over (heads, d_k).
        return nn.DenseGeneral(
            features=cfg.d_model,
            axis=(-2, -1),
            dtype=cfg.compute_dtype,
            kernel_init=dense_init,
            name="output",
        )(heads)


class FeedForward(nn.Module):
    """Position-wise feed-forward network (paper section 3.3): two linear maps, ReLU between.

    `config.activation` selects GELU instead of ReLU.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        cfg = self.config
        dense = functools.partial(nn.Dense, dtype=cfg.compute_dtype, kernel_init=dense_init)
        hidden = ACTIVATIONS[cfg.activation](dense(cfg.d_ff, name="hidden")(inputs))
        return dense(cfg.d_model, name="output")(hidden)


def layer_norm(config: TransformerConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_epsilon, dtype=config.compute_dtype, name=name)


def residual(
    config: TransformerConfig,
    name: str,
    inputs: Array,
    sublayer: Callable[[Array], Array],
    deterministic: bool,
) -> Array:
    """The residual connection around a sub-layer (paper sections 3.1 and 5.4).

    post-LN: LayerNorm(x + Dropout(Sublayer(x)))    pre-LN: x + Dropout(Sublayer(LayerNorm(x)))
    The LayerNorm is named f"{name}_norm" in both cases.
    """
    norm = layer_norm(config, f"{name}_norm")
    dropout = nn.Dropout(rate=config.dropout_rate)
    if config.norm_position == "pre":
        return inputs + dropout(sublayer(norm(inputs)), deterministic=deterministic)
    return norm(inputs + dropout(sublayer(inputs), deterministic=deterministic))


class EncoderLayer(nn.Module):
    """One encoder layer (paper section 3.1): self-attention, then the feed-forward network."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, inputs: Array, mask: Array | None, deterministic: bool = True) -> Array:
        cfg = self.config
        add_and_norm = functools.partial(residual, cfg, deterministic=deterministic)
        attention = MultiHeadAttention(cfg, name="self_attention")
        x = add_and_norm("self_attention", inputs, lambda h: attention(h, h, mask, deterministic))
        return add_and_norm("feed_forward", x, FeedForward(cfg, name="feed_forward"))


class DecoderLayer(nn.Module):
    """One decoder layer (paper section 3.1): masked self-attention, encoder-decoder attention
    over the encoder output, then the feed-forward network."""

    config: TransformerConfig

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        encoded: Array,
        self_attention_mask: Array | None,
        cross_attention_mask: Array | None,
        deterministic: bool = True,
    ) -> Array:
        cfg = self.config
        add_and_norm = functools.partial(residual, cfg, deterministic=deterministic)
        self_attention = MultiHeadAttention(cfg, name="self_attention")
        cross_attention = MultiHeadAttention(cfg, name="cross_attention")
        x = add_and_norm(
            "self_attention",
            inputs,
            lambda h: self_attention(h, h, self_attention_mask, deterministic),
        )
        x = add_and_norm(
            "cross_attention",
            x,
            lambda h: cross_attention(h, encoded, cross_attention_mask, deterministic),
        )
        return add_and_norm("feed_forward", x, FeedForward(cfg, name="feed_forward"))
