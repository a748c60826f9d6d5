"""MarianMT import: flax_transformer.interop.marian. (Its tokenizer:
tests/train/data/test_vocabulary.py; the command line: tests/end_to_end/test_convert_marian.py.)

Without the reference stack: the new model options against NumPy float64 (SiLU, exact GELU, the
final-logits bias), config refusals naming the field, tensor checks, the decoders' pad ban.

With Hugging Face transformers and torch (`pytest -m reference`, after
`pip install -e '.[reference]'`; CI runs them as a separate step): logits of converted random
MarianMTModels and greedy generation, each against Hugging Face's own.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import flax_transformer as ft
from flax_transformer.interop import marian
from flax_transformer.interop.marian import UnsupportedCheckpointError

REPO_ROOT = Path(__file__).resolve().parents[3]
MULTI30K = Path(os.environ.get("MULTI30K_DIR", REPO_ROOT.parent / "shared" / "data" / "multi30k"))


# ---------------------------------------------------------------------------------------------
# Model options: checked against NumPy float64
# ---------------------------------------------------------------------------------------------
def test_silu_and_exact_gelu_match_their_formulas():
    x = np.linspace(-6, 6, 101)
    silu = x / (1 + np.exp(-x))
    gelu = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    for name, expected in (("silu", silu), ("swish", silu), ("gelu_exact", gelu)):
        actual = np.asarray(ft.config.ACTIVATIONS[name](x.astype(np.float32)))
        np.testing.assert_allclose(actual, expected, atol=2e-6, err_msg=name)
    # "gelu" stays JAX's tanh approximation: it differs from the exact form by up to ~5e-4.
    approximate = np.asarray(ft.config.ACTIVATIONS["gelu"](x.astype(np.float32)))
    assert 1e-4 < np.max(np.abs(approximate - gelu)) < 1e-3


def test_feed_forward_uses_the_configured_activation():
    config = ft.TransformerConfig.tiny(activation="silu")
    module = ft.layers.FeedForward(config)
    x = np.random.default_rng(0).normal(size=(2, 3, config.d_model)).astype(np.float32)
    params = module.init(jax.random.key(0), x)["params"]
    hidden = x.astype(np.float64) @ np.asarray(params["hidden"]["kernel"], np.float64)
    hidden += np.asarray(params["hidden"]["bias"], np.float64)
    hidden = hidden / (1 + np.exp(-hidden))
    expected = hidden @ np.asarray(params["output"]["kernel"], np.float64) + np.asarray(
        params["output"]["bias"], np.float64
    )
    np.testing.assert_allclose(module.apply({"params": params}, x), expected, atol=1e-5)


def test_final_logits_bias_is_added_to_the_tied_logits():
    config = ft.TransformerConfig.tiny(final_logits_bias=True)
    params = ft.init_params(config, jax.random.key(0))
    assert params["decoder"]["final_logits_bias"].shape == (config.vocab_size,)
    bias = np.random.default_rng(1).normal(size=config.vocab_size).astype(np.float32)
    params["decoder"]["final_logits_bias"] = bias
    without = {**params, "decoder": dict(params["decoder"])}
    del without["decoder"]["final_logits_bias"]
    source = np.array([[5, 6, 7, 0]], np.int32)
    target = np.array([[1, 8, 9]], np.int32)
    with_bias = ft.forward(config, params, source, target)
    plain = ft.forward(config.replace(final_logits_bias=False), without, source, target)
    np.testing.assert_allclose(with_bias - plain, np.broadcast_to(bias, plain.shape), atol=1e-5)


def test_final_logits_bias_needs_the_tied_output():
    with pytest.raises(ValueError, match="final_logits_bias=True needs tie_output_embedding"):
        ft.TransformerConfig.tiny(final_logits_bias=True, tie_output_embedding=False)


def test_decoders_never_write_the_pad_id():
    # The pad id's bias is huge: without the ban every step would choose it.
    config = ft.TransformerConfig.tiny(vocab_size=30, pad_id=29, final_logits_bias=True)
    params = ft.init_params(config, jax.random.key(0))
    bias = np.zeros(30, np.float32)
    bias[29] = 100.0
    params["decoder"]["final_logits_bias"] = bias
    source = np.array([[3, 4, 5, 29], [6, 7, 29, 29]], np.int32)
    greedy = np.asarray(ft.greedy_decode(config, params, source, bos_id=29, eos_id=2))
    beam, _ = ft.beam_search(config, params, source, bos_id=29, eos_id=2)
    sampled = ft.sample_decode(config, params, source, jax.random.key(0), bos_id=29, eos_id=2)
    limits = (source != 29).sum(axis=1) + 50  # each row's own output limit
    for tokens in (greedy, np.asarray(beam)[:, 0], np.asarray(sampled)):
        for row, limit in zip(tokens, limits, strict=True):
            generated = list(row[:limit])
            generated = generated[: generated.index(2) + 1] if 2 in generated else generated
            assert 29 not in generated
            assert all(token == 29 for token in row[len(generated) :])
    # Greedy is the argmax over every other token at each step: check it teacher-forced, with
    # one forward pass over [start, outputs...] (the causal mask makes position t see <= t).
    decoder_input = np.concatenate([np.full((2, 1), 29, np.int32), greedy[:, :-1]], axis=1)
    logits = np.array(ft.forward(config, params, source, decoder_input))
    logits[..., 29] = -np.inf
    for row, limit in enumerate(limits):
        output = list(greedy[row, :limit])
        length = output.index(2) + 1 if 2 in output else limit
        np.testing.assert_array_equal(greedy[row, :length], logits[row, :length].argmax(-1))


# ---------------------------------------------------------------------------------------------
# config.json: what is refused, naming the field
# ---------------------------------------------------------------------------------------------
def _marian_config(**changes) -> dict:
    values = {
        "model_type": "marian",
        "architectures": ["MarianMTModel"],
        "vocab_size": 50,
        "decoder_vocab_size": 50,
        "d_model": 16,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 32,
        "decoder_ffn_dim": 32,
        "activation_function": "swish",
        "max_position_embeddings": 64,
        "scale_embedding": True,
        "pad_token_id": 49,
        "eos_token_id": 0,
        "decoder_start_token_id": 49,
        "normalize_before": False,
        "static_position_embeddings": True,
    }
    values.update(changes)
    return values


def test_config_from_marian_maps_every_field():
    config = marian.config_from_marian(_marian_config(), final_logits_bias=True)
    assert config == ft.TransformerConfig(
        vocab_size=50,
        d_model=16,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        d_ff=32,
        dropout_rate=0.1,
        attention_dropout_rate=0.0,
        max_len=64,
        pad_id=49,
        activation="silu",
        layer_norm_epsilon=1e-5,
        sinusoid_layout="halves",
        scale_embeddings=True,
        final_logits_bias=True,
    )
    assert marian.special_ids(_marian_config()) == {
        "pad_id": 49,
        "eos_id": 0,
        "decoder_start_id": 49,
    }
    gelu = marian.config_from_marian(_marian_config(activation_function="gelu"))
    assert gelu.activation == "gelu_exact"  # Hugging Face's "gelu" is the erf form


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_type", "bart"),
        ("architectures", ["MarianModel"]),
        ("normalize_before", True),
        ("add_final_layer_norm", True),
        ("normalize_embedding", True),
        ("static_position_embeddings", False),
        ("add_bias_logits", True),
        ("share_encoder_decoder_embeddings", False),
        ("decoder_vocab_size", 60),
        ("decoder_attention_heads", 4),
        ("decoder_ffn_dim", 64),
        ("activation_function", "tanh"),
    ],
)
def test_unsupported_configs_are_refused_naming_the_field(field, value):
    with pytest.raises(UnsupportedCheckpointError, match=field):
        marian.config_from_marian(_marian_config(**{field: value}))


# ---------------------------------------------------------------------------------------------
# Weights: export/import, and what is refused
# ---------------------------------------------------------------------------------------------
def _random_marian_model(**overrides):
    values = dict(
        vocab_size=50,
        pad_id=49,
        activation="silu",
        layer_norm_epsilon=1e-5,
        sinusoid_layout="halves",
        final_logits_bias=True,
        max_len=64,
    )
    config = ft.TransformerConfig.tiny(**{**values, **overrides})
    params = ft.init_params(config, jax.random.key(0))
    if config.final_logits_bias:
        params["decoder"]["final_logits_bias"] = np.linspace(-1, 1, 50, dtype=np.float32)
    return config, params


def test_saved_checkpoints_load_back_exactly(tmp_path):
    config, params = _random_marian_model()
    marian.save_marian(tmp_path, config, params, eos_id=0)
    checkpoint = marian.load_marian(tmp_path)
    assert checkpoint.config == config
    assert (checkpoint.pad_id, checkpoint.eos_id, checkpoint.decoder_start_id) == (49, 0, 49)
    assert jax.tree.structure(checkpoint.params) == jax.tree.structure(params)
    for ours, loaded in zip(
        jax.tree.leaves(params), jax.tree.leaves(checkpoint.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(ours), loaded)


def test_loaded_weights_are_one_copy_that_the_cpu_device_shares(tmp_path):
    # A loaded model must not cost two copies of its weights: every leaf is aligned for XLA:CPU,
    # which then adopts it as a device buffer, and read-only, since the device array sees it.
    config, params = _random_marian_model()
    marian.save_marian(tmp_path, config, params, eos_id=0)
    leaves = jax.tree.leaves(marian.load_marian(tmp_path).params)
    assert len(leaves) == len(jax.tree.leaves(params))
    for leaf in leaves:
        assert isinstance(leaf, np.ndarray) and leaf.dtype == np.float32
        assert not leaf.flags.writeable
        on_device = jax.device_put(leaf, jax.devices("cpu")[0])
        assert on_device.unsafe_buffer_pointer() == leaf.ctypes.data


def _writeable_aligned_copy(array: np.ndarray) -> np.ndarray:
    buffer = np.empty(array.nbytes + 64, np.uint8)
    start = -buffer.ctypes.data % 64
    copy = buffer[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


def test_converting_leaves_the_callers_arrays_writeable():
    # Inputs already aligned for XLA:CPU are used as they are, through read-only views: the
    # caller's own arrays must stay writeable.
    config, params = _random_marian_model()
    weights = {
        name: _writeable_aligned_copy(array)
        for name, array in marian.marian_weights(params, config).items()
    }
    converted = marian.params_from_marian(weights, config)
    assert all(array.flags.writeable for array in weights.values())
    assert not any(leaf.flags.writeable for leaf in jax.tree.leaves(converted))
    embedding = converted["shared_embedding"]["embedding"]
    assert embedding.ctypes.data == weights["model.shared.weight"].ctypes.data  # not copied


def test_a_zero_final_logits_bias_is_left_out(tmp_path):
    config, params = _random_marian_model(final_logits_bias=False)
    marian.save_marian(tmp_path, config, params, eos_id=0)
    assert marian.load_marian(tmp_path).config.final_logits_bias is False


def test_unknown_missing_and_misshapen_tensors_are_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    config, params = _random_marian_model()
    marian.save_marian(tmp_path, config, params, eos_id=0)
    weights = load_file(str(tmp_path / "model.safetensors"))

    def load_with(changed):
        save_file(changed, str(tmp_path / "model.safetensors"))
        return marian.load_marian(tmp_path)

    extra = {**weights, "model.encoder.layernorm_embedding.weight": np.ones(32, np.float32)}
    with pytest.raises(UnsupportedCheckpointError, match="layernorm_embedding"):
        load_with(extra)
    missing = {k: v for k, v in weights.items() if k != "model.decoder.layers.1.fc2.bias"}
    with pytest.raises(UnsupportedCheckpointError, match="lacks the tensor.*layers.1.fc2.bias"):
        load_with(missing)
    misshapen = {**weights, "model.encoder.layers.0.fc1.weight": np.zeros((63, 32), np.float32)}
    with pytest.raises(UnsupportedCheckpointError, match=r"fc1.weight has shape \(63, 32\)"):
        load_with(misshapen)
    untied_copy = {**weights, "lm_head.weight": weights["model.shared.weight"] + 1}
    with pytest.raises(UnsupportedCheckpointError, match="lm_head.weight differs"):
        load_with(untied_copy)


def test_unreadable_checkpoint_directories_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        marian.load_marian(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        marian.load_marian(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_marian_config()))
    with pytest.raises(FileNotFoundError, match="none of"):
        marian.load_marian(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        marian.load_marian(tmp_path)


def test_export_refuses_models_marian_cannot_compute(tmp_path):
    config = ft.TransformerConfig.tiny()  # interleaved sinusoids, epsilon 1e-6
    params = ft.init_params(config, jax.random.key(0))
    with pytest.raises(ValueError, match="sinusoid_layout"):
        marian.save_marian(tmp_path, config, params, eos_id=2)


# ---------------------------------------------------------------------------------------------
# Against Hugging Face transformers (the reference): pytest -m reference
# ---------------------------------------------------------------------------------------------
HF_CONFIGS = {
    "swish-tied-bias": dict(
        d_model=32, heads=4, encoder_layers=2, decoder_layers=2, ffn=64,
        activation="swish", tied=True, bias=True, scale=True,
    ),
    "relu-untied-bias": dict(
        d_model=16, heads=2, encoder_layers=1, decoder_layers=3, ffn=48,
        activation="relu", tied=False, bias=True, scale=False,
    ),
    "gelu-tied-nobias": dict(
        d_model=64, heads=8, encoder_layers=3, decoder_layers=1, ffn=96,
        activation="gelu", tied=True, bias=False, scale=True,
    ),
    "gelu_new-untied-nobias-1head": dict(
        d_model=24, heads=1, encoder_layers=2, decoder_layers=2, ffn=40,
        activation="gelu_new", tied=False, bias=False, scale=True,
    ),
}  # fmt: skip
HF_VOCAB = 97
HF_PAD = HF_VOCAB - 1


def _hf_model(settings: dict, seed: int, init_std: float = 0.1):
    torch = pytest.importorskip(
        "torch", reason="the reference needs torch: pip install -e '.[reference]'"
    )
    transformers = pytest.importorskip(
        "transformers", reason="the reference needs transformers: pip install -e '.[reference]'"
    )
    torch.manual_seed(seed)
    config = transformers.MarianConfig(
        vocab_size=HF_VOCAB,
        decoder_vocab_size=HF_VOCAB,
        d_model=settings["d_model"],
        encoder_layers=settings["encoder_layers"],
        decoder_layers=settings["decoder_layers"],
        encoder_attention_heads=settings["heads"],
        decoder_attention_heads=settings["heads"],
        encoder_ffn_dim=settings["ffn"],
        decoder_ffn_dim=settings["ffn"],
        activation_function=settings["activation"],
        max_position_embeddings=64,
        pad_token_id=HF_PAD,
        decoder_start_token_id=HF_PAD,
        eos_token_id=0,
        forced_eos_token_id=0,
        scale_embedding=settings["scale"],
        tie_word_embeddings=settings["tied"],
        init_std=init_std,
    )
    model = transformers.MarianMTModel(config).eval()
    with torch.no_grad():
        # The reference initialises these to ones and zeros: randomise them, so that a wrong
        # mapping cannot hide behind constants.
        for name, parameter in model.named_parameters():
            if "layer_norm" in name:
                offset = 1.0 if name.endswith("weight") else 0.0
                parameter.copy_(offset + 0.3 * torch.randn_like(parameter))
        if settings["bias"]:
            model.final_logits_bias.copy_(0.5 * torch.randn_like(model.final_logits_bias))
        if not settings["tied"]:
            # Untied, transformers 5 gives the encoder and decoder embeddings of their own (a
            # model we refuse: see below); opus-mt's untied models share them, only the output
            # projection is separate.
            shared = model.model.shared.weight
            model.model.encoder.embed_tokens.weight.copy_(shared)
            model.model.decoder.embed_tokens.weight.copy_(shared)
    return torch, model


def _random_batch(rng: np.random.Generator, batch: int, length: int, lengths=None) -> np.ndarray:
    tokens = rng.integers(1, HF_PAD, size=(batch, length))
    lengths = rng.integers(1, length + 1, size=batch) if lengths is None else lengths
    for row, row_length in enumerate(lengths):
        tokens[row, row_length:] = HF_PAD
    return tokens.astype(np.int32)


@pytest.mark.reference
@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_logits_equal_hugging_face(name, tmp_path):
    settings = HF_CONFIGS[name]
    torch, model = _hf_model(settings, seed=len(name))
    model.save_pretrained(tmp_path)
    checkpoint = marian.load_marian(tmp_path)
    assert checkpoint.config.final_logits_bias == (settings["bias"] and settings["tied"])
    rng = np.random.default_rng(0)
    for batch, source_length, target_length in ((3, 7, 5), (4, 12, 9), (1, 5, 1)):
        source = _random_batch(rng, batch, source_length)
        target = _random_batch(rng, batch, target_length)
        target[:, 0] = HF_PAD  # decoding starts from the pad id
        with torch.no_grad():
            expected = model(
                input_ids=torch.tensor(source, dtype=torch.long),
                attention_mask=torch.tensor(source != HF_PAD, dtype=torch.long),
                decoder_input_ids=torch.tensor(target, dtype=torch.long),
            ).logits.numpy()
        actual = np.asarray(ft.forward(checkpoint.config, checkpoint.params, source, target))
        # Only positions that see real target tokens (HF's decoder mask is all ones, too).
        np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.reference
def test_separate_source_and_target_embeddings_are_refused(tmp_path):
    torch, model = _hf_model(HF_CONFIGS["relu-untied-bias"], seed=0)
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight.add_(1.0)
    model.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedCheckpointError, match="separate embeddings"):
        marian.load_marian(tmp_path)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["swish-tied-bias", "gelu_new-untied-nobias-1head"])
def test_greedy_decoding_equals_hugging_face_generate(name, tmp_path):
    # Large weights: logits that depend on the input, so that rows differ.
    torch, model = _hf_model(HF_CONFIGS[name], seed=7, init_std=1.0)
    model.save_pretrained(tmp_path)
    checkpoint = marian.load_marian(tmp_path)
    source = _random_batch(np.random.default_rng(1), 8, 11)
    max_new = 16

    def ours(eos_id: int) -> np.ndarray:
        return np.asarray(
            ft.greedy_decode(
                checkpoint.config,
                checkpoint.params,
                source,
                bos_id=checkpoint.decoder_start_id,
                eos_id=eos_id,
                max_length=max_new,
            )
        )

    # A random model hardly ever writes its eos. The eos id changes when decoding stops, not
    # the logits: take a token the model writes early in some rows, so rows end at different
    # steps (finished rows are padded) and others run to the limit.
    free = ours(checkpoint.eos_id)
    early = [int(t) for t in free[:, 1:4].reshape(-1) if t not in free[:, 0]]
    eos_id = max(set(early), key=early.count) if early else int(free[0, 2])
    actual = ours(eos_id)
    with torch.no_grad():
        generated = model.generate(
            input_ids=torch.tensor(source, dtype=torch.long),
            attention_mask=torch.tensor(source != HF_PAD, dtype=torch.long),
            num_beams=1,
            do_sample=False,
            max_new_tokens=max_new,
            eos_token_id=eos_id,
            forced_eos_token_id=eos_id,
            bad_words_ids=[[HF_PAD]],  # as opus-mt's generation_config.json
        ).numpy()[:, 1:]  # without the start token
    generated = np.pad(
        generated, ((0, 0), (0, max_new - generated.shape[1])), constant_values=HF_PAD
    )
    stopped_early = 0
    for expected, row in zip(generated, actual, strict=True):
        if expected[-1] == eos_id and eos_id not in expected[:-1]:
            # Hugging Face forces eos at the length limit; ours stops there without it.
            np.testing.assert_array_equal(row[:-1], expected[:-1])
        else:
            np.testing.assert_array_equal(row, expected)
            stopped_early += eos_id in row[:-1]
    assert stopped_early >= 1, actual


def test_pytorch_bin_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    config, params = _random_marian_model()
    marian.save_marian(tmp_path, config, params, eos_id=0)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match="only pytorch_model.bin, which needs torch"):
        marian.load_marian(tmp_path)


@pytest.mark.reference
def test_pytorch_bin_checkpoints_load_with_torch(tmp_path):
    torch, model = _hf_model(HF_CONFIGS["swish-tied-bias"], seed=3)
    model.save_pretrained(tmp_path / "safetensors")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((tmp_path / "safetensors" / "config.json").read_text())
    from_bin = marian.load_marian(tmp_path)
    from_safetensors = marian.load_marian(tmp_path / "safetensors")
    for a, b in zip(
        jax.tree.leaves(from_bin.params), jax.tree.leaves(from_safetensors.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_stored_sinusoid_tables_are_recognised_and_learned_ones_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    config, params = _random_marian_model(max_len=512)
    marian.save_marian(tmp_path, config, params, eos_id=0)
    weights = load_file(str(tmp_path / "model.safetensors"))
    # Hugging Face's MarianSinusoidalPositionalEmbedding.create_weight: float64, then float32.
    n, d = 512, config.d_model
    angles = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    table = np.concatenate([np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])], 1).astype(np.float32)
    for side in ("encoder", "decoder"):
        weights[f"model.{side}.embed_positions.weight"] = table
    save_file(weights, str(tmp_path / "model.safetensors"))
    assert marian.load_marian(tmp_path).config.max_len == 512
    learned = table + np.random.default_rng(0).normal(0, 1e-3, table.shape).astype(np.float32)
    weights["model.decoder.embed_positions.weight"] = learned
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsupportedCheckpointError, match="learned positions are not supported"):
        marian.load_marian(tmp_path)
