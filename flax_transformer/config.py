"""Model configuration: one frozen dataclass, validated on construction.

Every module receives the whole `TransformerConfig` (as in the Flax WMT example) and reads the
fields it needs. The config is hashable, so it can be a static argument of `jax.jit`, and it
round-trips through JSON (`to_dict` / `from_dict`) so checkpoints can record it.

Presets (`TransformerConfig.tiny()`, `.small()`, `.base()`, `.big()`) follow Table 3 of
*Attention Is All You Need* for `base` and `big`; every preset accepts keyword overrides.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp

from flax_transformer.positional import LAYOUTS as SINUSOID_LAYOUTS

# Feed-forward activations by name (paper: ReLU, section 3.3). Defined here, beside the field
# that names them, so validation and the layers read one table. "gelu" is JAX's default, the tanh
# approximation (GPT-2, BERT); "gelu_exact" is the erf form (PyTorch's default, Hugging Face's
# "gelu"); "silu" = "swish" = x * sigmoid(x) (MarianMT's opus-mt models).
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
NORM_POSITIONS = ("post", "pre")
POSITIONAL_ENCODINGS = ("sinusoidal", "learned")
ATTENTION_IMPLEMENTATIONS = ("reference", "fused")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

_POSITIVE_INT_FIELDS = (
    "vocab_size",
    "d_model",
    "num_heads",
    "num_encoder_layers",
    "num_decoder_layers",
    "d_ff",
    "max_len",
)
_BOOL_FIELDS = (
    "share_embeddings",
    "tie_output_embedding",
    "scale_embeddings",
    "scan_layers",
    "remat",
    "final_logits_bias",
)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of the encoder-decoder Transformer.

    The defaults are the paper's base model (section 3 and Table 3). Fields that differ between the
    paper and popular implementations default to the paper and offer the variant:

    - `norm_position`: "post" (paper: LayerNorm(x + Sublayer(x))) or "pre"
      (x + Sublayer(LayerNorm(x)), with a final LayerNorm after each stack).
    - `sinusoid_layout`: "interleaved" (paper: sin on even dimensions, cos on odd ones) or
      "halves" (all sines then all cosines, as in the Flax WMT example and tensor2tensor).
    - `scale_embeddings`: multiply embeddings by sqrt(d_model) (paper section 3.4) or not.

    Options beyond the paper, for imported checkpoints (MarianMT, see
    `flax_transformer.interop.marian`): `activation` "silu"/"gelu_exact", `layer_norm_epsilon`
    (Marian: 1e-5), `final_logits_bias`.

    `dtype` "bfloat16" (or "float16") is mixed precision: the matmuls (attention projections,
    feed-forward, the output projection) take bfloat16 operands, and activations between layers
    (the residual stream, the LayerNorm outputs) are bfloat16. Float32 are: the parameters
    (cast to bfloat16 where a matmul reads them, so their gradients are float32 too) and hence
    the optimizer state and the update; the attention logits and softmax; the LayerNorm mean and
    variance (flax computes them, and the normalisation, in float32 and casts the output); the
    embeddings + positions before their cast; the output logits (accumulated in float32) and so
    the log-softmax, the loss and the metric sums. No loss scaling: bfloat16 has float32's
    exponent range (float16 does not, and may underflow small gradients).

    `attention_implementation` "reference" (the default) is the readable pure function, which
    also sows the attention weights (`apply.attention_weights` switches to it). "fused" is
    the fastest kernel available, chosen when the model is traced: cuDNN flash attention on a
    CUDA GPU (Ampere or later) where its rules allow, which asks for `dtype` "bfloat16" or
    "float16", a head dim d_model / num_heads that is a multiple of 8 and at most 128 (256 on
    Hopper), and even sequence lengths; else XLA's fused attention (CPU, TPU, float32, odd
    lengths, incremental decoding). See `attention.fused_attention_implementation`. It records no
    attention weights, and with attention dropout active (training with
    `attention_dropout_rate` > 0) the reference path runs instead. Parameters are the same for
    both, so a checkpoint loads under either.
    """

    vocab_size: int = 37000
    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    d_ff: int = 2048
    # Residual dropout (paper section 5.4): on each sub-layer output and on embeddings + positions.
    dropout_rate: float = 0.1
    # Dropout on attention weights. Not in the paper (it is in tensor2tensor); off by default.
    attention_dropout_rate: float = 0.0
    # Longest source or target sequence the model accepts (also the learned-position table size).
    max_len: int = 512
    pad_id: int = 0
    activation: str = "relu"
    norm_position: str = "post"
    layer_norm_epsilon: float = 1e-6
    positional_encoding: str = "sinusoidal"
    sinusoid_layout: str = "interleaved"
    # One embedding table for source and target tokens (paper section 3.4).
    share_embeddings: bool = True
    # Output projection = transposed target embedding (paper section 3.4); False adds a Dense.
    tie_output_embedding: bool = True
    scale_embeddings: bool = True
    # A learned bias added to the output logits (MarianMT, BART). Not in the paper: the tied
    # output projection has no bias there. The untied projection (a Dense) has its own bias.
    final_logits_bias: bool = False
    # Compute dtype; parameters are always float32, softmax and logits are float32 (see above).
    dtype: str = "float32"
    # "reference": the readable pure function; "fused": jax.nn.dot_product_attention, cuDNN flash
    # attention where allowed, else XLA (see above). "fused" uses "reference" for attention dropout.
    attention_implementation: str = "reference"
    # Stack layers with nn.scan: compile time independent of depth; params get a leading layer axis.
    scan_layers: bool = False
    # Rematerialise each layer's activations in the backward pass (less memory, more compute).
    remat: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------
    # Validation
    # ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the first field that breaks a rule."""
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"TransformerConfig.{name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"TransformerConfig.{name} must be positive, got {value}")
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"TransformerConfig.{name} must be a bool, got {value!r}")
        if self.d_model % self.num_heads != 0:
            raise ValueError(
                f"TransformerConfig.d_model ({self.d_model}) must be divisible by num_heads "
                f"({self.num_heads}) so that each head has d_k = d_model / num_heads"
            )
        for name in ("dropout_rate", "attention_dropout_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"TransformerConfig.{name} must be a float, got {value!r}")
            if not 0.0 <= value < 1.0:
                raise ValueError(f"TransformerConfig.{name} must be in [0, 1), got {value}")
        if isinstance(self.pad_id, bool) or not isinstance(self.pad_id, int):
            raise ValueError(f"TransformerConfig.pad_id must be an int, got {self.pad_id!r}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(
                f"TransformerConfig.pad_id ({self.pad_id}) must be inside the vocabulary "
                f"[0, vocab_size={self.vocab_size})"
            )
        epsilon = self.layer_norm_epsilon
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or epsilon <= 0:
            raise ValueError(
                f"TransformerConfig.layer_norm_epsilon must be a positive float, "
                f"got {self.layer_norm_epsilon!r}"
            )
        if self.final_logits_bias and not self.tie_output_embedding:
            raise ValueError(
                "TransformerConfig.final_logits_bias=True needs tie_output_embedding=True: the "
                "untied output projection is a Dense layer with its own bias"
            )
        choices = {
            "activation": tuple(ACTIVATIONS),
            "norm_position": NORM_POSITIONS,
            "positional_encoding": POSITIONAL_ENCODINGS,
            "sinusoid_layout": SINUSOID_LAYOUTS,
            "attention_implementation": ATTENTION_IMPLEMENTATIONS,
            "dtype": tuple(DTYPES),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"TransformerConfig.{name} must be one of {list(allowed)}, got {value!r}"
                )

    # ----------------------------------------------------------------------------------------
    # Derived values
    # ----------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """d_k = d_v = d_model / h (paper section 3.2.2)."""
        return self.d_model // self.num_heads

    @property
    def compute_dtype(self) -> Any:
        return DTYPES[self.dtype]

    def replace(self, **changes: Any) -> TransformerConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------------------
    # Serialisation (for checkpoints)
    # ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransformerConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig field(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> TransformerConfig:
        return cls.from_dict(json.loads(text))

    # ----------------------------------------------------------------------------------------
    # Presets
    # ----------------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides: Any) -> TransformerConfig:
        """About 45k parameters: for tests and quick experiments."""
        return cls.preset("tiny", **overrides)

    @classmethod
    def small(cls, **overrides: Any) -> TransformerConfig:
        """d_model 256, 4 heads, 3+3 layers, d_ff 1024: a size for training on a CPU."""
        return cls.preset("small", **overrides)

    @classmethod
    def base(cls, **overrides: Any) -> TransformerConfig:
        """The paper's base model (Table 3): d_model 512, 8 heads, 6+6 layers, d_ff 2048."""
        return cls.preset("base", **overrides)

    @classmethod
    def big(cls, **overrides: Any) -> TransformerConfig:
        """The paper's big model (Table 3): d_model 1024, 16 heads, d_ff 4096, dropout 0.3."""
        return cls.preset("big", **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TransformerConfig:
        """A preset by name: "tiny", "small", "base" or "big" (`PRESETS`), with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESET_NAMES)}")
        return cls(**{**PRESETS[name], **overrides})


# The presets: the fields that differ from the defaults (the paper's base model, Table 3).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=64, d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
        d_ff=64, dropout_rate=0.1, max_len=64,
    ),
    "small": dict(
        vocab_size=8000, d_model=256, num_heads=4, num_encoder_layers=3, num_decoder_layers=3,
        d_ff=1024, dropout_rate=0.1, max_len=256,
    ),
    "base": {},
    "big": dict(d_model=1024, num_heads=16, d_ff=4096, dropout_rate=0.3),
}  # fmt: skip
PRESET_NAMES = tuple(PRESETS)
