"""TransformerConfig: presets, serialisation and every validation rule."""

from __future__ import annotations

import dataclasses

import pytest

from flax_transformer import TransformerConfig


def test_base_and_big_presets_follow_table_3():
    base = TransformerConfig.base()
    assert (base.d_model, base.num_heads, base.d_ff, base.dropout_rate) == (512, 8, 2048, 0.1)
    assert (base.num_encoder_layers, base.num_decoder_layers, base.head_dim) == (6, 6, 64)
    assert base.norm_position == "post" and base.sinusoid_layout == "interleaved"
    assert base.scale_embeddings and base.share_embeddings and base.tie_output_embedding
    big = TransformerConfig.big()
    assert (big.d_model, big.num_heads, big.d_ff, big.dropout_rate) == (1024, 16, 4096, 0.3)
    assert TransformerConfig.preset("small", vocab_size=100).vocab_size == 100


def test_config_is_frozen_hashable_and_round_trips_json():
    config = TransformerConfig.tiny(norm_position="pre", dtype="bfloat16")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_model = 8  # type: ignore[misc]
    assert hash(config) == hash(TransformerConfig.tiny(norm_position="pre", dtype="bfloat16"))
    assert TransformerConfig.from_json(config.to_json()) == config
    assert config.replace(d_model=64).d_model == 64


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vocab_size": 0}, "vocab_size must be positive"),
        ({"d_model": -4}, "d_model must be positive"),
        ({"num_heads": 0}, "num_heads must be positive"),
        ({"num_encoder_layers": 0}, "num_encoder_layers must be positive"),
        ({"num_decoder_layers": 0}, "num_decoder_layers must be positive"),
        ({"d_ff": 0}, "d_ff must be positive"),
        ({"max_len": 0}, "max_len must be positive"),
        ({"d_model": 32.0}, "d_model must be an int"),
        ({"num_heads": True}, "num_heads must be an int"),
        ({"d_model": 30, "num_heads": 4}, r"d_model \(30\) must be divisible by num_heads \(4\)"),
        ({"dropout_rate": 1.0}, r"dropout_rate must be in \[0, 1\)"),
        ({"dropout_rate": -0.1}, r"dropout_rate must be in \[0, 1\)"),
        ({"dropout_rate": "0.1"}, "dropout_rate must be a float"),
        ({"attention_dropout_rate": 1.5}, r"attention_dropout_rate must be in \[0, 1\)"),
        ({"pad_id": 64}, r"pad_id \(64\) must be inside the vocabulary"),
        ({"pad_id": -1}, "pad_id"),
        ({"pad_id": 1.0}, "pad_id must be an int"),
        ({"layer_norm_epsilon": 0.0}, "layer_norm_epsilon must be a positive float"),
        ({"activation": "tanh"}, "activation must be one of"),
        ({"norm_position": "middle"}, "norm_position must be one of"),
        ({"positional_encoding": "rotary"}, "positional_encoding must be one of"),
        ({"sinusoid_layout": "blocks"}, "sinusoid_layout must be one of"),
        ({"attention_implementation": "flash"}, "attention_implementation must be one of"),
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"share_embeddings": 1}, "share_embeddings must be a bool"),
        ({"tie_output_embedding": "yes"}, "tie_output_embedding must be a bool"),
        ({"scale_embeddings": None}, "scale_embeddings must be a bool"),
        ({"scan_layers": 0}, "scan_layers must be a bool"),
        ({"remat": "no"}, "remat must be a bool"),
    ],
)
def test_validation_names_field_and_rule(overrides, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig.tiny(**overrides)


def test_unknown_fields_and_presets_are_refused():
    with pytest.raises(ValueError, match="unknown TransformerConfig field.*d_modle"):
        TransformerConfig.from_dict({"d_modle": 4})
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        TransformerConfig.preset("huge")
