"""flax-transformer: the Transformer of *Attention Is All You Need* in JAX and Flax linen.

Pure functions (attention, masks, positional encodings), linen modules built on them, and
jitted apply functions for users who do not want to touch linen:

    import jax, jax.numpy as jnp
    import flax_transformer as ft

    config = ft.TransformerConfig.tiny()
    params = ft.init_params(config, jax.random.key(0))
    source = jnp.array([[5, 6, 7, 0]])            # 0 is padding
    decoder_input = jnp.array([[1, 8, 9]])        # start token, then the target shifted right
    logits = ft.forward(config, params, source, decoder_input)   # [1, 3, vocab_size]
    tokens, scores = ft.beam_search(config, params, source, bos_id=1, eos_id=2)  # section 6.1
"""

from flax_transformer.api import (
    attention_weights,
    check_tokens,
    count_params,
    decode,
    encode,
    forward,
    init_params,
)
from flax_transformer.attention import fused_dot_product_attention, scaled_dot_product_attention
from flax_transformer.config import TransformerConfig
from flax_transformer.decoding import (
    BeamState,
    beam_search,
    decode_step,
    greedy_decode,
    greedy_decode_uncached,
    init_cache,
    sample_decode,
    strip_after_eos,
    top_k_filter,
    top_p_filter,
)
from flax_transformer.layers import (
    DecoderLayer,
    EncoderLayer,
    FeedForward,
    KeyValue,
    MultiHeadAttention,
    PositionEmbedding,
    TokenEmbedding,
)
from flax_transformer.masks import (
    causal_mask,
    combine_masks,
    cross_attention_mask,
    decoder_self_attention_mask,
    decoder_step_mask,
    encoder_self_attention_mask,
    padding_mask,
    segment_mask,
)
from flax_transformer.model import (
    Decoder,
    DecodingCache,
    Encoder,
    Transformer,
    stack_layer_params,
    unstack_layer_params,
)
from flax_transformer.parallel import DataParallel
from flax_transformer.positional import sinusoidal_encoding_at, sinusoidal_position_encoding
from flax_transformer.training import (
    TrainState,
    create_train_state,
    eval_step,
    make_optimizer,
    summarize_metrics,
    train_step,
    transformer_schedule,
    with_cooldown,
)

__version__ = "0.1.0"

__all__ = [
    "BeamState",
    "DataParallel",
    "DecodingCache",
    "KeyValue",
    "TrainState",
    "beam_search",
    "create_train_state",
    "decode_step",
    "decoder_step_mask",
    "eval_step",
    "greedy_decode",
    "greedy_decode_uncached",
    "init_cache",
    "sample_decode",
    "strip_after_eos",
    "top_k_filter",
    "top_p_filter",
    "make_optimizer",
    "summarize_metrics",
    "train_step",
    "transformer_schedule",
    "Decoder",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "FeedForward",
    "MultiHeadAttention",
    "PositionEmbedding",
    "TokenEmbedding",
    "Transformer",
    "TransformerConfig",
    "attention_weights",
    "causal_mask",
    "check_tokens",
    "combine_masks",
    "count_params",
    "cross_attention_mask",
    "decode",
    "decoder_self_attention_mask",
    "encode",
    "encoder_self_attention_mask",
    "forward",
    "fused_dot_product_attention",
    "init_params",
    "padding_mask",
    "scaled_dot_product_attention",
    "segment_mask",
    "sinusoidal_encoding_at",
    "sinusoidal_position_encoding",
    "stack_layer_params",
    "unstack_layer_params",
    "with_cooldown",
]
