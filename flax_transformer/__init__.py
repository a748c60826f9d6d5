"""flax-transformer: the Transformer of *Attention Is All You Need* in JAX and Flax linen.

Pure functions (attention, masks, positional encodings), linen modules built on them, and
jitted functions for users who do not want to touch linen:

    import jax, jax.numpy as jnp
    import flax_transformer as ft

    config = ft.TransformerConfig.tiny()
    params = ft.init_params(config, jax.random.key(0))
    source = jnp.array([[5, 6, 7, 0]])            # 0 is padding
    decoder_input = jnp.array([[1, 8, 9]])        # start token, then the target shifted right
    logits = ft.forward(config, params, source, decoder_input)   # [1, 3, vocab_size]
    tokens, scores = ft.beam_search(config, params, source, bos_id=1, eos_id=2)  # section 6.1

The modules, from the bottom of the stack up (each imports only modules listed before it):

    positional   sinusoidal positional encodings (paper section 3.5)
    config       TransformerConfig: the hyperparameters, with the paper's presets (Table 3)
    masks        padding, causal and packing masks
    dropout      dropout (section 5.4) from 16-bit draws, two per threefry word
    attention    scaled dot-product attention (section 3.2.1)
    layers       multi-head attention, feed-forward, embeddings, encoder and decoder layers
    search       greedy, sampling and beam search over any step function (section 6.1)
    checks       host-side argument checks
    model        Encoder, Decoder, Transformer (Figure 1), DecodingCache, init_params
    decoding     the Transformer's jitted decoders: greedy_decode, beam_search, sample_decode
    alignment    word alignments from attention weights (host-side NumPy)
    training     loss (5.4), schedule and optimizer (5.3), train and eval steps
    parallel     DataParallel: the steps over several devices
    interop      other libraries' checkpoints: interop.marian (MarianMT)
    apply        jitted forward, encode, decoder_logits, attention_weights

Names that used to live here (`ft.causal_mask`, `ft.decode`, ...) still resolve for one release,
with a DeprecationWarning naming their new place.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562), so that a light module (`alignment`, `config`) or a program
# that only runs an exported translator (`train.exported`) does not import flax.
SUBMODULES = (
    "alignment",
    "apply",
    "attention",
    "checks",
    "config",
    "decoding",
    "dropout",
    "interop",
    "layers",
    "masks",
    "model",
    "parallel",
    "positional",
    "search",
    "training",
)
# Public name -> the module that defines it.
_PUBLIC_NAMES = {
    "attention_weights": "apply",
    "decoder_logits": "apply",
    "encode": "apply",
    "forward": "apply",
    "TransformerConfig": "config",
    "beam_search": "decoding",
    "greedy_decode": "decoding",
    "sample_decode": "decoding",
    "Transformer": "model",
    "count_params": "model",
    "init_params": "model",
    "DataParallel": "parallel",
    "TrainState": "training",
    "create_train_state": "training",
    "eval_step": "training",
    "make_optimizer": "training",
    "summarize_metrics": "training",
    "train_step": "training",
    "transformer_schedule": "training",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from flax_transformer import (  # noqa: F401
        alignment,
        apply,
        attention,
        checks,
        config,
        decoding,
        dropout,
        interop,
        layers,
        masks,
        model,
        parallel,
        positional,
        search,
        training,
    )
    from flax_transformer.apply import attention_weights, decoder_logits, encode, forward
    from flax_transformer.config import TransformerConfig
    from flax_transformer.decoding import beam_search, greedy_decode, sample_decode
    from flax_transformer.model import Transformer, count_params, init_params
    from flax_transformer.parallel import DataParallel
    from flax_transformer.training import (
        TrainState,
        create_train_state,
        eval_step,
        make_optimizer,
        summarize_metrics,
        train_step,
        transformer_schedule,
    )

__version__ = "0.1.0"

__all__ = [
    "DataParallel",
    "TrainState",
    "Transformer",
    "TransformerConfig",
    "attention_weights",
    "beam_search",
    "count_params",
    "create_train_state",
    "decoder_logits",
    "encode",
    "eval_step",
    "forward",
    "greedy_decode",
    "init_params",
    "make_optimizer",
    "sample_decode",
    "summarize_metrics",
    "train_step",
    "transformer_schedule",
]

# Old top-level name -> its place now ("module.name", or a name above). Kept for one release.
DEPRECATED_NAMES = {
    "decode": "decoder_logits",
    "check_tokens": "checks.check_tokens",
    "fused_dot_product_attention": "attention.fused_dot_product_attention",
    "scaled_dot_product_attention": "attention.scaled_dot_product_attention",
    "BeamState": "search.BeamState",
    "strip_after_eos": "search.strip_after_eos",
    "top_k_filter": "search.top_k_filter",
    "top_p_filter": "search.top_p_filter",
    "decode_step": "decoding.decode_step",
    "greedy_decode_uncached": "decoding.greedy_decode_uncached",
    "init_cache": "decoding.init_cache",
    "DecoderLayer": "layers.DecoderLayer",
    "EncoderLayer": "layers.EncoderLayer",
    "FeedForward": "layers.FeedForward",
    "KeyValue": "layers.KeyValue",
    "MultiHeadAttention": "layers.MultiHeadAttention",
    "PositionEmbedding": "layers.PositionEmbedding",
    "TokenEmbedding": "layers.TokenEmbedding",
    "causal_mask": "masks.causal_mask",
    "combine_masks": "masks.combine_masks",
    "cross_attention_mask": "masks.cross_attention_mask",
    "decoder_self_attention_mask": "masks.decoder_self_attention_mask",
    "decoder_step_mask": "masks.decoder_step_mask",
    "encoder_self_attention_mask": "masks.encoder_self_attention_mask",
    "padding_mask": "masks.padding_mask",
    "segment_mask": "masks.segment_mask",
    "Decoder": "model.Decoder",
    "DecodingCache": "model.DecodingCache",
    "Encoder": "model.Encoder",
    "stack_layer_params": "model.stack_layer_params",
    "unstack_layer_params": "model.unstack_layer_params",
    "sinusoidal_encoding_at": "positional.sinusoidal_encoding_at",
    "sinusoidal_position_encoding": "positional.sinusoidal_position_encoding",
    "with_cooldown": "training.with_cooldown",
    "marian": "interop.marian",
}


def __getattr__(name: str) -> Any:
    """The modules and public names, imported on first use; the deprecated names of
    `DEPRECATED_NAMES`, with a warning naming the new spelling."""
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _PUBLIC_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC_NAMES[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name not in DEPRECATED_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    new = DEPRECATED_NAMES[name]
    warnings.warn(
        f"flax_transformer.{name} is deprecated: use flax_transformer.{new}",
        DeprecationWarning,
        stacklevel=2,
    )
    module, _, attribute = new.rpartition(".")
    if not module:
        return __getattr__(attribute)
    return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)


def __dir__() -> list[str]:
    return sorted({*globals(), *SUBMODULES, *_PUBLIC_NAMES})
