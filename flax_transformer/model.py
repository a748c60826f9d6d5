"""The encoder-decoder Transformer (paper section 3, Figure 1).

    source tokens -> Encoder: embed * sqrt(d_model) + positions, dropout, N x EncoderLayer
    decoder input -> Decoder: embed * sqrt(d_model) + positions, dropout, N x DecoderLayer
                     (each attending to the encoder output) -> logits via the tied embedding

`Transformer.encode` and `Transformer.decode` build every mask (from `flax_transformer.masks`);
the stacks and layers only receive them. Decoder input tokens are the target shifted right
(start token first); the caller does the shifting.

Stacks are unrolled by default (params `layer_0`, `layer_1`, ...); `config.scan_layers` runs them
with `nn.scan` (one set of params named `layers` with a leading layer axis, compile time
independent of depth). `stack_layer_params` and `unstack_layer_params` convert between the two.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_transformer import masks
from flax_transformer.config import TransformerConfig
from flax_transformer.layers import (
    DecoderLayer,
    EncoderLayer,
    PositionEmbedding,
    TokenEmbedding,
    dense_init,
    layer_norm,
)
from flax_transformer.positional import sinusoidal_encoding_at

Array = jax.Array


def _embed(
    config: TransformerConfig,
    embedding: TokenEmbedding,
    tokens: Array,
    positions: Array | None,
    deterministic: bool,
) -> Array:
    """Token embedding + positional encoding, then dropout (paper sections 3.4, 3.5, 5.4)."""
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
    x = embedding(tokens)
    if config.positional_encoding == "learned":
        x = x + PositionEmbedding(config, name="position_embedding")(positions)
    else:
        x = x + sinusoidal_encoding_at(positions, config.d_model, layout=config.sinusoid_layout)
    x = nn.Dropout(rate=config.dropout_rate)(x, deterministic=deterministic)
    return x.astype(config.compute_dtype)


def _run_layers(
    config: TransformerConfig,
    layer_cls: type[nn.Module],
    num_layers: int,
    x: Array,
    *args: Any,
) -> Array:
    """Apply num_layers copies of layer_cls to x; args (masks, memory, deterministic) broadcast.

    Called from a parent's compact method, so the layers become the parent's children.
    """
    if config.remat:
        # Count `self` as argument 0: the last argument, `deterministic`, is a Python bool.
        layer_cls = nn.remat(layer_cls, static_argnums=(len(args) + 1,))
    if config.scan_layers:

        def body(layer: nn.Module, carry: Array, *broadcast_args: Any) -> tuple[Array, None]:
            return layer(carry, *broadcast_args), None

        scanned = nn.scan(
            body,
            variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(args),
            length=num_layers,
        )
        x, _ = scanned(layer_cls(config, name="layers"), x, *args)
        return x
    for index in range(num_layers):
        x = layer_cls(config, name=f"layer_{index}")(x, *args)
    return x


class Encoder(nn.Module):
    """The encoder stack (paper section 3.1): N identical layers over the embedded source."""

    config: TransformerConfig
    embedding: TokenEmbedding

    @nn.compact
    def __call__(
        self,
        source_tokens: Array,
        mask: Array | None,
        positions: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        cfg = self.config
        x = _embed(cfg, self.embedding, source_tokens, positions, deterministic)
        x = _run_layers(cfg, EncoderLayer, cfg.num_encoder_layers, x, mask, deterministic)
        if cfg.norm_position == "pre":
            x = layer_norm(cfg, "final_norm")(x)
        return x


class Decoder(nn.Module):
    """The decoder stack (paper section 3.1) and the pre-softmax projection (3.4)."""

    config: TransformerConfig
    embedding: TokenEmbedding

    @nn.compact
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
        y = _embed(cfg, self.embedding, decoder_input_tokens, positions, deterministic)
        y = _run_layers(
            cfg,
            DecoderLayer,
            cfg.num_decoder_layers,
            y,
            encoded,
            self_attention_mask,
            cross_attention_mask,
            deterministic,
        )
        if cfg.norm_position == "pre":
            y = layer_norm(cfg, "final_norm")(y)
        if cfg.tie_output_embedding:
            return self.embedding.attend(y)
        logits = nn.Dense(
            cfg.vocab_size,
            dtype=cfg.compute_dtype,
            kernel_init=dense_init,
            name="logits",
        )(y)
        return logits.astype(jnp.float32)


class Transformer(nn.Module):
    """The Transformer of *Attention Is All You Need* (Figure 1).

    Methods (all take `deterministic=True` for inference; pass False and a "dropout" rng to train):
      encode(source_tokens) -> encoded [batch, src_len, d_model]
      decode(encoded, source_tokens, decoder_input_tokens) -> logits [batch, tgt_len, vocab]
      __call__(source_tokens, decoder_input_tokens) -> logits (encode then decode)

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


# ---------------------------------------------------------------------------------------------
# Converting parameters between unrolled (layer_0, layer_1, ...) and scanned (layers) stacks.
# ---------------------------------------------------------------------------------------------
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
