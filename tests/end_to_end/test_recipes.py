"""The paper's WMT14 recipes (train/configs/wmt14_base.py, wmt14_big.py): their values against the
paper, written out here by hand, and a whole run of the base recipe at tiny size on mocked TFDS
catalog data (no download): train, checkpoints, the average of the last checkpoints, beam search
on the test split, sacreBLEU with its signature."""

from __future__ import annotations

import random

import pytest
import tensorflow_datasets as tfds

from train.configs import wmt14_base, wmt14_big
from train.loop import train_and_evaluate
from train.metric_writers import read_metrics
from train.setup import check_config
from train.workdir import Workdir

# Vaswani et al. 2017: Table 3 (base and big), sections 5.1 (~25,000 source and target tokens per
# batch, a shared vocabulary of about 37,000 tokens), 5.3 (Adam, warm-up 4,000), 5.4 (dropout,
# label smoothing 0.1), 6.1 (100k / 300k steps, last 5 / 20 checkpoints averaged, beam 4, alpha
# 0.6, maximum output length input + 50).
PAPER = {
    "base": dict(d_model=512, num_heads=8, layers=6, d_ff=2048, dropout=0.1, steps=100_000,
                 averaged=5),
    "big": dict(d_model=1024, num_heads=16, layers=6, d_ff=4096, dropout=0.3, steps=300_000,
                averaged=20),
}  # fmt: skip


@pytest.mark.parametrize("name, recipe", [("base", wmt14_base), ("big", wmt14_big)])
def test_the_wmt14_recipes_are_the_papers(name, recipe) -> None:
    config, paper = recipe.get_config(), PAPER[name]
    check_config(config)
    model = config.model
    assert (model.d_model, model.num_heads, model.d_ff) == (
        paper["d_model"], paper["num_heads"], paper["d_ff"],
    )  # fmt: skip
    assert model.num_encoder_layers == model.num_decoder_layers == paper["layers"]
    assert model.dropout_rate == paper["dropout"] and model.attention_dropout_rate == 0.0
    assert model.norm_position == "post" and model.positional_encoding == "sinusoidal"
    assert model.share_embeddings and model.tie_output_embedding and model.scale_embeddings
    assert model.vocab_size == 0 and config.tokenizer_vocab_size == 37000  # shared vocabulary
    assert (config.dataset, config.tfds_name) == ("tfds", "wmt14_translate/de-en")
    assert (config.source_language, config.target_language) == ("en", "de")
    assert (config.validation_split, config.test_split) == ("validation", "test")
    assert config.batching == "bucketed" and config.batch_tokens == 25000
    assert (config.adam_b1, config.adam_b2, config.adam_eps) == (0.9, 0.98, 1e-9)
    assert config.warmup_steps == 4000 and config.learning_rate_scale == 1.0
    assert config.cooldown_fraction == 0.0 and config.weight_decay == 0.0
    assert config.label_smoothing == 0.1 and config.num_train_steps == paper["steps"]
    assert config.average_last == paper["averaged"] <= config.keep_checkpoints
    assert (config.test_decoding, config.beam_size, config.length_penalty) == ("beam", 4, 0.6)
    # Outputs up to input length + 50 (decoding's default limit) fit the positions for every
    # training-length input.
    assert config.max_length + 50 <= model.max_len


# Sentence pairs the mocked catalog serves: short German / English sentences from a few words,
# so that a tiny SentencePiece model and a few steps run in seconds.
_WORDS = {"haus": "house", "hund": "dog", "katze": "cat", "baum": "tree", "rot": "red",
          "gross": "big", "klein": "small", "der": "the", "ein": "a", "und": "and"}  # fmt: skip


def _mock_examples(split: str) -> list[dict[str, str]]:
    rng = random.Random(split)
    count = {"train": 200}.get(split, 12)
    examples = []
    for _ in range(count):
        words = rng.choices(list(_WORDS), k=rng.randint(2, 7))
        examples.append({"de": " ".join(words), "en": " ".join(_WORDS[w] for w in words)})
    return examples


def test_the_base_recipe_runs_end_to_end_on_mocked_wmt14(tmp_path, capsys) -> None:
    def as_data_source(builder, split, **kwargs):
        del builder, kwargs
        return _mock_examples(str(split))

    config = wmt14_base.get_config()
    config.model.update(d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                        d_ff=64, max_len=96)  # fmt: skip
    config.data_dir = str(tmp_path / "tfds")
    config.tokenizer_vocab_size = 290
    config.batch_tokens = 256
    config.max_length = 32
    config.num_train_steps = 6
    config.warmup_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 6
    config.log_every_steps = 3
    config.keep_checkpoints = 3
    config.average_last = 3
    config.validation_decoding = ""
    config.progress_bar = False
    with tfds.testing.mock_data(
        policy=tfds.testing.MockPolicy.USE_CODE, as_data_source_fn=as_data_source
    ):
        result = train_and_evaluate(config, str(tmp_path / "run"))
    assert result.step == 6 and not result.interrupted
    log = capsys.readouterr().out
    assert "beam search (beam 4, length penalty 0.6" in log
    assert "params: the average of checkpoints 2, 4, 6" in log
    assert "sacreBLEU signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" in log
    records = read_metrics(Workdir(tmp_path / "run").metrics_path)
    (test,) = [r for r in records if r["split"] == "test"]
    assert test["averaged_checkpoints"] == 3.0 and test["examples"] == 12.0
    assert test["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert 0.0 <= test["bleu"] <= 100.0


def test_averaging_more_checkpoints_than_a_run_keeps_is_refused() -> None:
    config = wmt14_base.get_config()
    config.keep_checkpoints = 4
    with pytest.raises(ValueError, match="average_last=5 averages more checkpoints than"):
        check_config(config)
    config = wmt14_base.get_config()
    config.num_train_steps = 3000  # saves at 1500 and 3000 only
    with pytest.raises(ValueError, match="a run of 3000 steps saves only 2 checkpoint"):
        check_config(config)
