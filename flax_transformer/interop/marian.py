"""Pretrained translators: MarianMT (opus-mt) checkpoints in this library's Transformer.

The opus-mt models of the Hugging Face hub (Helsinki-NLP/opus-mt-*, over a thousand language
pairs, trained with Marian NMT) are the paper's post-LN encoder-decoder with small differences,
each an option of `TransformerConfig`:

    sinusoid_layout="halves"     all sines, then all cosines (the paper's frequencies)
    activation="silu"            opus-mt's feed-forward activation ("swish")
    layer_norm_epsilon=1e-5      PyTorch's LayerNorm default
    final_logits_bias=True       a bias on the tied output logits (kept only when non-zero)
    the decoder starts from the pad id (the decoders take the start token as `bos_id`)

    checkpoint = load_marian("opus-mt-en-de")          # a directory: config.json, weights
    source = ...  # token ids of its tokenizer (source.spm, target.spm, vocab.json; read by
                  # train.data.vocabulary.MarianVocabulary), + eos, right-padded with pad_id
    tokens = ft.greedy_decode(checkpoint.config, checkpoint.params, source,
                              bos_id=checkpoint.decoder_start_id, eos_id=checkpoint.eos_id)

Nothing here imports torch or transformers: `config.json` is JSON, the weights are read with the
`safetensors` NumPy API (`pytorch_model.bin` needs torch, used only if installed), read into
memory rather than mapped, and each tensor is freed as it is converted, into a read-only array
that `jax.device_put` adopts on the CPU: the loaded model holds its weights once. A checkpoint
that uses a feature this Transformer does not have (pre-LN with extra norms, separate
source/target vocabularies, an embedding LayerNorm, learned positions, ...) is refused with
`UnsupportedCheckpointError` naming the field: never a silently different model.
`python -m train.convert_marian` writes a converted checkpoint, with its tokenizer, as a workdir
that `train.translate` and `train.evaluate` read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from flax_transformer.config import TransformerConfig
from flax_transformer.model import init_params
from flax_transformer.positional import sinusoidal_table_float64

PathLike = str | os.PathLike

# Hugging Face's activation names -> ours. HF's "gelu" is the exact (erf) form.
ACTIVATION_NAMES = {
    "relu": "relu",
    "swish": "silu",
    "silu": "silu",
    "gelu": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
}
# config.json fields of BART-style models that MarianMT ignores or that change the architecture:
# {field: (value that our model implements, what another value would mean)}.
_ARCHITECTURE_FIELDS = {
    "normalize_before": (False, "pre-LN blocks"),
    "add_final_layer_norm": (False, "a final LayerNorm after each stack"),
    "normalize_embedding": (False, "a LayerNorm on the embeddings (layernorm_embedding)"),
    "layernorm_embedding": (False, "a LayerNorm on the embeddings"),
    "static_position_embeddings": (True, "learned position embeddings"),
    "add_bias_logits": (False, "a second output bias"),
    "share_encoder_decoder_embeddings": (True, "separate source and target embeddings"),
    "is_decoder": (False, "a decoder-only model"),
    "is_encoder_decoder": (True, "not an encoder-decoder"),
}
# Fields that matter only for training (dropout variants we do not have): logged, not refused.
_TRAINING_ONLY_FIELDS = ("activation_dropout", "encoder_layerdrop", "decoder_layerdrop")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

_log = logging.getLogger(__name__)


class UnsupportedCheckpointError(ValueError):
    """The checkpoint is not a MarianMT model this Transformer computes exactly."""


@dataclasses.dataclass(frozen=True)
class MarianCheckpoint:
    """A converted MarianMT model: our config and parameters, and its special token ids."""

    config: TransformerConfig
    params: Any
    pad_id: int
    eos_id: int
    decoder_start_id: int  # Marian starts decoding from the pad id
    source: str  # where it was read from, for messages


# ---------------------------------------------------------------------------------------------
# config.json -> TransformerConfig
# ---------------------------------------------------------------------------------------------
def _refuse(field: str, value: Any, why: str) -> UnsupportedCheckpointError:
    return UnsupportedCheckpointError(
        f"config.json has {field}={value!r}: {why}, which this Transformer does not implement"
    )


def config_from_marian(
    hf_config: Mapping[str, Any], *, final_logits_bias: bool = False
) -> TransformerConfig:
    """Our `TransformerConfig` for a MarianMT `config.json` (as a dict); refuses what differs."""
    model_type = hf_config.get("model_type")
    if model_type != "marian":
        raise UnsupportedCheckpointError(
            f"config.json has model_type={model_type!r}; only MarianMT ('marian') is supported"
        )
    architectures = hf_config.get("architectures") or ["MarianMTModel"]
    if any(name != "MarianMTModel" for name in architectures):
        raise UnsupportedCheckpointError(
            f"config.json has architectures={architectures!r}; only MarianMTModel (with its "
            "output layer) can translate"
        )
    for field, (supported, meaning) in _ARCHITECTURE_FIELDS.items():
        if field in hf_config and hf_config[field] is not None and hf_config[field] != supported:
            raise _refuse(field, hf_config[field], meaning)
    vocab_size = hf_config.get("vocab_size", 58101)
    decoder_vocab_size = hf_config.get("decoder_vocab_size") or vocab_size
    if decoder_vocab_size != vocab_size:
        raise _refuse(
            "decoder_vocab_size",
            decoder_vocab_size,
            f"a target vocabulary separate from the source's ({vocab_size})",
        )
    pairs = (
        ("encoder_attention_heads", "decoder_attention_heads", "different head counts"),
        ("encoder_ffn_dim", "decoder_ffn_dim", "different feed-forward sizes"),
    )
    for encoder_field, decoder_field, meaning in pairs:
        if hf_config.get(encoder_field) != hf_config.get(decoder_field):
            raise _refuse(
                decoder_field,
                hf_config.get(decoder_field),
                f"{meaning} in the encoder ({encoder_field}={hf_config.get(encoder_field)!r}) "
                "and decoder",
            )
    activation = hf_config.get("activation_function", "gelu")
    if activation not in ACTIVATION_NAMES:
        raise _refuse(
            "activation_function", activation, f"an activation other than {list(ACTIVATION_NAMES)}"
        )
    for field in _TRAINING_ONLY_FIELDS:
        if hf_config.get(field):
            _log.warning(
                "config.json has %s=%r: a training-time option this Transformer lacks; "
                "inference is unaffected",
                field,
                hf_config[field],
            )
    pad_id = hf_config.get("pad_token_id")
    if pad_id is None:
        raise UnsupportedCheckpointError("config.json has no pad_token_id")
    return TransformerConfig(
        vocab_size=vocab_size,
        d_model=hf_config["d_model"],
        num_heads=hf_config["encoder_attention_heads"],
        num_encoder_layers=hf_config["encoder_layers"],
        num_decoder_layers=hf_config["decoder_layers"],
        d_ff=hf_config["encoder_ffn_dim"],
        dropout_rate=float(hf_config.get("dropout", 0.1)),
        attention_dropout_rate=float(hf_config.get("attention_dropout", 0.0)),
        max_len=hf_config.get("max_position_embeddings", 1024),
        pad_id=pad_id,
        activation=ACTIVATION_NAMES[activation],
        norm_position="post",
        layer_norm_epsilon=1e-5,
        positional_encoding="sinusoidal",
        sinusoid_layout="halves",
        share_embeddings=True,
        tie_output_embedding=bool(hf_config.get("tie_word_embeddings", True)),
        scale_embeddings=bool(hf_config.get("scale_embedding", False)),
        final_logits_bias=final_logits_bias,
    )


def special_ids(hf_config: Mapping[str, Any]) -> dict[str, int]:
    """pad, eos and decoder start ids of a MarianMT config.json (start defaults to pad)."""
    eos_id = hf_config.get("eos_token_id", 0)
    if isinstance(eos_id, list):
        if len(eos_id) != 1:
            raise _refuse("eos_token_id", eos_id, "several end tokens")
        eos_id = eos_id[0]
    pad_id = hf_config["pad_token_id"]
    start = hf_config.get("decoder_start_token_id")
    return {
        "pad_id": pad_id,
        "eos_id": eos_id,
        "decoder_start_id": pad_id if start is None else start,
    }


# ---------------------------------------------------------------------------------------------
# Weights: read, then map onto our parameter tree
# ---------------------------------------------------------------------------------------------
def read_weights(directory: PathLike) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as float32 NumPy arrays, by their Hugging Face names.

    Reads `model.safetensors` (or the shards its `.index.json` lists) with the safetensors NumPy
    API and its `pread` backend, which copies each tensor out of the file without also mapping
    the file into this process; `pytorch_model.bin` only if torch is installed (a clear error
    otherwise).
    """
    directory = Path(directory)
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.exists() or index.exists():
        from safetensors.numpy import load_file

        files = (
            [single]
            if single.exists()
            else sorted(
                {directory / name for name in json.loads(index.read_text())["weight_map"].values()}
            )
        )
        weights: dict[str, np.ndarray] = {}
        for path in files:
            try:
                weights.update(load_file(str(path), backend="pread"))
            except Exception as error:  # safetensors raises its own error types
                raise ValueError(f"cannot read {path}: {error}") from error
    elif (directory / "pytorch_model.bin").exists():
        try:
            import torch
        except ImportError:
            raise ImportError(
                f"{directory} has only pytorch_model.bin, which needs torch to read: "
                "pip install torch, or convert it to model.safetensors"
            ) from None
        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        weights = {name: tensor.float().numpy() for name, tensor in state.items()}
    else:
        raise FileNotFoundError(
            f"{directory} has none of {list(WEIGHT_FILES)}: not a Hugging Face checkpoint"
        )
    return {name: np.asarray(array, np.float32) for name, array in weights.items()}


# XLA:CPU adopts a host array as a device buffer without copying it when its data is aligned to
# this many bytes; NumPy aligns only to 16.
_CPU_BUFFER_ALIGNMENT = 64


def _parameter(tensor: np.ndarray) -> np.ndarray:
    """`tensor` as a read-only, C-contiguous float32 array aligned for XLA:CPU.

    `jax.device_put` on the CPU then shares its memory instead of copying it, so a loaded model
    costs one copy of its weights; read-only because the device array would see any change. An
    input that is already so laid out comes back as a read-only view of it (its own flags are
    left alone).
    """
    tensor = np.asarray(tensor, np.float32)
    if tensor.flags.c_contiguous and tensor.ctypes.data % _CPU_BUFFER_ALIGNMENT == 0:
        tensor = tensor.view()
    else:
        buffer = np.empty(tensor.nbytes + _CPU_BUFFER_ALIGNMENT, np.uint8)
        start = -buffer.ctypes.data % _CPU_BUFFER_ALIGNMENT
        aligned = buffer[start : start + tensor.nbytes].view(np.float32).reshape(tensor.shape)
        aligned[...] = tensor
        tensor = aligned
    tensor.flags.writeable = False
    return tensor


def _take(weights: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Remove and return tensor `name`, which must have `shape`: a clear error otherwise."""
    try:
        tensor = weights.pop(name)
    except KeyError:
        raise UnsupportedCheckpointError(
            f"the checkpoint lacks the tensor {name!r} that a MarianMTModel of its config.json has"
        ) from None
    if tuple(tensor.shape) != tuple(shape):
        raise UnsupportedCheckpointError(
            f"{name} has shape {tuple(tensor.shape)}; config.json implies {tuple(shape)}"
        )
    return tensor


def _attention(weights: dict[str, np.ndarray], prefix: str, config: TransformerConfig) -> dict:
    """q/k/v/out_proj (torch Linear: weight [out, in]) -> our per-head DenseGeneral kernels."""
    d_model, heads, head_dim = config.d_model, config.num_heads, config.head_dim

    def projection(name: str) -> dict[str, np.ndarray]:
        weight = _take(weights, f"{prefix}.{name}.weight", (d_model, d_model))
        bias = _take(weights, f"{prefix}.{name}.bias", (d_model,))
        return {
            "kernel": _parameter(weight.T.reshape(d_model, heads, head_dim)),
            "bias": _parameter(bias.reshape(heads, head_dim)),
        }

    out_weight = _take(weights, f"{prefix}.out_proj.weight", (d_model, d_model))
    return {
        "query": projection("q_proj"),
        "key": projection("k_proj"),
        "value": projection("v_proj"),
        "output": {
            "kernel": _parameter(out_weight.T.reshape(heads, head_dim, d_model)),
            "bias": _parameter(_take(weights, f"{prefix}.out_proj.bias", (d_model,))),
        },
    }


def _layer_norm(weights: dict[str, np.ndarray], prefix: str, d_model: int) -> dict:
    return {
        "scale": _parameter(_take(weights, f"{prefix}.weight", (d_model,))),
        "bias": _parameter(_take(weights, f"{prefix}.bias", (d_model,))),
    }


def _feed_forward(weights: dict[str, np.ndarray], prefix: str, config: TransformerConfig) -> dict:
    d_model, d_ff = config.d_model, config.d_ff
    return {
        "hidden": {
            "kernel": _parameter(_take(weights, f"{prefix}.fc1.weight", (d_ff, d_model)).T),
            "bias": _parameter(_take(weights, f"{prefix}.fc1.bias", (d_ff,))),
        },
        "output": {
            "kernel": _parameter(_take(weights, f"{prefix}.fc2.weight", (d_model, d_ff)).T),
            "bias": _parameter(_take(weights, f"{prefix}.fc2.bias", (d_model,))),
        },
    }


def params_from_marian(weights: Mapping[str, np.ndarray], config: TransformerConfig) -> Any:
    """Our parameter tree (unrolled layers) from MarianMTModel tensors.

    Every tensor must be used (an unknown one means an architecture we do not implement) and
    every parameter filled with its exact shape. Copies of tied tensors (the encoder's and
    decoder's token embeddings, the output projection) must equal the shared embedding, and
    stored sinusoid tables must equal ours. The leaves are read-only NumPy arrays aligned so that
    `jax.device_put` on the CPU shares their memory; some may share memory with `weights`' own
    arrays (change those and the params change).
    """
    return _convert_weights(dict(weights), config)


def _convert_weights(weights: dict[str, np.ndarray], config: TransformerConfig) -> Any:
    """`params_from_marian`, emptying `weights` as it goes: each tensor is removed as it is
    converted, so a model is never held twice (when nothing else refers to its tensors)."""
    d_model, vocab_size = config.d_model, config.vocab_size
    shared = weights.pop("model.shared.weight", None)
    if shared is None:
        shared = weights.get("model.encoder.embed_tokens.weight")
    if shared is None:
        raise UnsupportedCheckpointError("the checkpoint has no model.shared.weight embedding")
    if tuple(shared.shape) != (vocab_size, d_model):
        raise UnsupportedCheckpointError(
            f"model.shared.weight has shape {tuple(shared.shape)}; config.json implies "
            f"{(vocab_size, d_model)}"
        )
    tied_copies = ["model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"]
    if config.tie_output_embedding:
        tied_copies.append("lm_head.weight")
    for name in tied_copies:
        copy = weights.pop(name, None)
        if copy is not None and not np.array_equal(copy, shared):
            raise UnsupportedCheckpointError(
                f"{name} differs from model.shared.weight: separate embeddings are not supported"
            )
    # Compared in float64: our float32 table differs from it by up to ~3e-5 at position 511.
    table = sinusoidal_table_float64(config.max_len, d_model, layout="halves")
    for side in ("encoder", "decoder"):
        stored = weights.pop(f"model.{side}.embed_positions.weight", None)
        if stored is not None and (
            stored.shape != table.shape or not np.allclose(stored, table, atol=1e-5)
        ):
            raise UnsupportedCheckpointError(
                f"model.{side}.embed_positions.weight is not the sinusoid table of "
                f"max_position_embeddings={config.max_len}: learned positions are not supported"
            )

    params: dict[str, Any] = {
        "shared_embedding": {"embedding": _parameter(shared)},
        "encoder": {},
        "decoder": {},
    }
    for i in range(config.num_encoder_layers):
        prefix = f"model.encoder.layers.{i}"
        params["encoder"][f"layer_{i}"] = {
            "self_attention": _attention(weights, f"{prefix}.self_attn", config),
            "self_attention_norm": _layer_norm(weights, f"{prefix}.self_attn_layer_norm", d_model),
            "feed_forward": _feed_forward(weights, prefix, config),
            "feed_forward_norm": _layer_norm(weights, f"{prefix}.final_layer_norm", d_model),
        }
    for i in range(config.num_decoder_layers):
        prefix = f"model.decoder.layers.{i}"
        params["decoder"][f"layer_{i}"] = {
            "self_attention": _attention(weights, f"{prefix}.self_attn", config),
            "self_attention_norm": _layer_norm(weights, f"{prefix}.self_attn_layer_norm", d_model),
            "cross_attention": _attention(weights, f"{prefix}.encoder_attn", config),
            "cross_attention_norm": _layer_norm(
                weights, f"{prefix}.encoder_attn_layer_norm", d_model
            ),
            "feed_forward": _feed_forward(weights, prefix, config),
            "feed_forward_norm": _layer_norm(weights, f"{prefix}.final_layer_norm", d_model),
        }
    bias = np.zeros((vocab_size,), np.float32)
    if "final_logits_bias" in weights:
        bias = _take(weights, "final_logits_bias", (1, vocab_size)).reshape(-1)
    if not config.tie_output_embedding:
        kernel = _take(weights, "lm_head.weight", (vocab_size, d_model)).T
        params["decoder"]["logits"] = {"kernel": _parameter(kernel), "bias": _parameter(bias)}
    elif config.final_logits_bias:
        params["decoder"]["final_logits_bias"] = _parameter(bias)
    elif np.any(bias):
        raise ValueError("the checkpoint has a non-zero final_logits_bias: set final_logits_bias")
    if weights:
        raise UnsupportedCheckpointError(
            "the checkpoint has tensors this Transformer has no place for (an architecture it "
            f"does not implement): {sorted(weights)[:8]}{' ...' if len(weights) > 8 else ''}"
        )
    _check_against_init(params, config)
    return params


def _check_against_init(params: Any, config: TransformerConfig) -> None:
    """The tree has exactly our model's parameter names and shapes (no weights allocated)."""
    expected = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    ours = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    theirs = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    if ours.keys() != theirs.keys():
        missing = sorted(map(jax.tree_util.keystr, ours.keys() - theirs.keys()))
        extra = sorted(map(jax.tree_util.keystr, theirs.keys() - ours.keys()))
        raise UnsupportedCheckpointError(
            f"the converted tree does not match the model: missing {missing[:5]}, extra {extra[:5]}"
        )
    for path, leaf in ours.items():
        if tuple(theirs[path].shape) != tuple(leaf.shape):
            raise UnsupportedCheckpointError(
                f"{jax.tree_util.keystr(path)}: the checkpoint's tensor has shape "
                f"{tuple(theirs[path].shape)}, the model expects {tuple(leaf.shape)}"
            )


def load_marian(directory: PathLike) -> MarianCheckpoint:
    """A MarianMT checkpoint directory (config.json + weights) as our config and params."""
    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{config_path} is missing: not a Hugging Face checkpoint directory"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from None
    config_from_marian(hf_config)  # refuse unsupported configs before reading the weights
    weights = read_weights(directory)
    bias = weights.get("final_logits_bias")
    has_bias = bias is not None and bool(np.any(bias))
    tied = bool(hf_config.get("tie_word_embeddings", True))
    config = config_from_marian(hf_config, final_logits_bias=has_bias and tied)
    params = _convert_weights(weights, config)
    ids = special_ids(hf_config)
    for name, value in ids.items():
        if not 0 <= value < config.vocab_size:
            raise UnsupportedCheckpointError(
                f"config.json's {name} {value} is outside the vocabulary [0, {config.vocab_size})"
            )
    return MarianCheckpoint(config, params, source=str(directory), **ids)


# ---------------------------------------------------------------------------------------------
# The way back: our params -> a MarianMT checkpoint directory (config.json + model.safetensors)
# ---------------------------------------------------------------------------------------------
def marian_config(config: TransformerConfig, *, eos_id: int, decoder_start_id: int) -> dict:
    """The MarianMT config.json of a model in the Marian layout (see `check_marian_layout`)."""
    check_marian_layout(config)
    activation = {"relu": "relu", "silu": "swish", "swish": "swish", "gelu_exact": "gelu"}
    return {
        "model_type": "marian",
        "architectures": ["MarianMTModel"],
        "vocab_size": config.vocab_size,
        "decoder_vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "encoder_layers": config.num_encoder_layers,
        "decoder_layers": config.num_decoder_layers,
        "encoder_attention_heads": config.num_heads,
        "decoder_attention_heads": config.num_heads,
        "encoder_ffn_dim": config.d_ff,
        "decoder_ffn_dim": config.d_ff,
        "activation_function": activation.get(config.activation, "gelu_new"),
        "max_position_embeddings": config.max_len,
        "scale_embedding": config.scale_embeddings,
        "dropout": config.dropout_rate,
        "attention_dropout": config.attention_dropout_rate,
        "activation_dropout": 0.0,
        "pad_token_id": config.pad_id,
        "eos_token_id": eos_id,
        "forced_eos_token_id": eos_id,
        "decoder_start_token_id": decoder_start_id,
        "share_encoder_decoder_embeddings": True,
        "tie_word_embeddings": config.tie_output_embedding,
        "static_position_embeddings": True,
    }


def check_marian_layout(config: TransformerConfig) -> None:
    """Raise ValueError unless `config` is a model MarianMT computes (to export it)."""
    required = {
        "norm_position": "post",
        "positional_encoding": "sinusoidal",
        "sinusoid_layout": "halves",
        "share_embeddings": True,
        "layer_norm_epsilon": 1e-5,
        "scan_layers": False,
    }
    for field, value in required.items():
        if getattr(config, field) != value:
            actual = getattr(config, field)
            raise ValueError(f"MarianMT needs TransformerConfig.{field}={value!r}, got {actual!r}")
    if config.activation == "gelu":
        raise ValueError("MarianMT has no tanh-approximated GELU: use 'gelu_exact'")


def marian_weights(params: Any, config: TransformerConfig) -> dict[str, np.ndarray]:
    """Our params -> MarianMTModel tensors by Hugging Face name (the inverse of
    `params_from_marian`), float32."""
    check_marian_layout(config)
    params = jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), params)
    weights = {"model.shared.weight": params["shared_embedding"]["embedding"]}

    def attention(prefix: str, tree: Mapping[str, Any]) -> None:
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            kernel = tree[ours]["kernel"]
            weights[f"{prefix}.{theirs}.weight"] = kernel.reshape(kernel.shape[0], -1).T
            weights[f"{prefix}.{theirs}.bias"] = tree[ours]["bias"].reshape(-1)
        kernel = tree["output"]["kernel"]
        weights[f"{prefix}.out_proj.weight"] = kernel.reshape(-1, kernel.shape[-1]).T
        weights[f"{prefix}.out_proj.bias"] = tree["output"]["bias"]

    def norm(prefix: str, tree: Mapping[str, Any]) -> None:
        weights[f"{prefix}.weight"], weights[f"{prefix}.bias"] = tree["scale"], tree["bias"]

    def feed_forward(prefix: str, tree: Mapping[str, Any]) -> None:
        for ours, theirs in (("hidden", "fc1"), ("output", "fc2")):
            weights[f"{prefix}.{theirs}.weight"] = tree[ours]["kernel"].T
            weights[f"{prefix}.{theirs}.bias"] = tree[ours]["bias"]

    for i in range(config.num_encoder_layers):
        layer, prefix = params["encoder"][f"layer_{i}"], f"model.encoder.layers.{i}"
        attention(f"{prefix}.self_attn", layer["self_attention"])
        norm(f"{prefix}.self_attn_layer_norm", layer["self_attention_norm"])
        feed_forward(prefix, layer["feed_forward"])
        norm(f"{prefix}.final_layer_norm", layer["feed_forward_norm"])
    for i in range(config.num_decoder_layers):
        layer, prefix = params["decoder"][f"layer_{i}"], f"model.decoder.layers.{i}"
        attention(f"{prefix}.self_attn", layer["self_attention"])
        norm(f"{prefix}.self_attn_layer_norm", layer["self_attention_norm"])
        attention(f"{prefix}.encoder_attn", layer["cross_attention"])
        norm(f"{prefix}.encoder_attn_layer_norm", layer["cross_attention_norm"])
        feed_forward(prefix, layer["feed_forward"])
        norm(f"{prefix}.final_layer_norm", layer["feed_forward_norm"])
    bias = np.zeros((config.vocab_size,), np.float32)
    if not config.tie_output_embedding:
        weights["lm_head.weight"] = params["decoder"]["logits"]["kernel"].T
        bias = params["decoder"]["logits"]["bias"]
    elif config.final_logits_bias:
        bias = params["decoder"]["final_logits_bias"]
    weights["final_logits_bias"] = bias.reshape(1, -1)
    return {name: np.ascontiguousarray(array) for name, array in weights.items()}


def save_marian(
    directory: PathLike,
    config: TransformerConfig,
    params: Any,
    *,
    eos_id: int,
    decoder_start_id: int | None = None,
) -> None:
    """Write `config.json` and `model.safetensors` that Hugging Face's MarianMTModel (and
    `load_marian`) read. The start token defaults to the pad id, as in MarianMT."""
    from safetensors.numpy import save_file

    start = config.pad_id if decoder_start_id is None else decoder_start_id
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf_config = marian_config(config, eos_id=eos_id, decoder_start_id=start)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2), encoding="utf-8")
    save_file(marian_weights(params, config), str(directory / "model.safetensors"))
