"""The paper's base model on WMT 2014 English -> German (Vaswani et al. 2017, sections 5 and 6.1).

    python -m train --workdir=runs/wmt14_base --config=train/configs/wmt14_base.py

What follows the paper:
  data        WMT14 en-de from the TFDS catalog (`wmt14_translate/de-en`: 4.5M training pairs;
              newstest2013 for validation, newstest2014 for the test), a shared vocabulary of
              37,000 pieces (the paper: byte-pair encoding; here SentencePiece unigram)
  batches     pairs batched by approximate length ("bucketed"), about 25,000 source and 25,000
              target tokens per update, over all devices (section 5.1)
  model       the base preset: d_model 512, 8 heads, 6 + 6 layers, d_ff 2048, dropout 0.1,
              label smoothing 0.1, shared embeddings (Table 3)
  optimizer   Adam (0.9, 0.98, 1e-9), lrate = d_model^-0.5 * min(step^-0.5, step * 4000^-1.5),
              100,000 steps (section 5.3)
  test        the average of the last 5 checkpoints, beam search with beam 4, length penalty
              0.6, outputs up to input length + 50 (section 6.1); sacreBLEU on newstest2014
              (signature in the log and in metrics.jsonl)

The paper wrote a checkpoint every 10 minutes (about 1,400 of its base steps on 8 P100s); this
recipe writes one every 1,500 steps. Its 27.3 BLEU is tokenized BLEU (multi-bleu.perl on
tokenized, compound-split text); sacreBLEU of the detokenized output, what this reports, runs
lower for the same translations (Post 2018, "A Call for Clarity in Reporting BLEU Scores").

Fewer than 8 accelerators: keep the update's 25,000 tokens and split it, e.g. on one GPU
`--config.micro_batches=8` (eight micro-batches of ~3,100 tokens accumulated in one step: the same
update, an eighth of the activation memory). bfloat16 compute on GPU/TPU:
`--config.model.dtype=bfloat16` (float32 params, optimizer state, softmax and loss). Your own
files instead of the catalog: `--config.dataset=parallel_text --config.data_path=DIR` with
{split}.{en,de} files and the split names set.

Preparing WMT14 from the catalog downloads ~1.4 GB and needs TensorFlow installed for TFDS's
archive extraction (`pip install tensorflow-cpu`); reading it afterwards does not.
"""

from __future__ import annotations

import ml_collections

from flax_transformer import TransformerConfig
from train.configs import default


def model_fields(preset: str) -> ml_collections.ConfigDict:
    """config.model of a recipe: the preset, the vocabulary's size, room for input + 50."""
    fields = TransformerConfig.preset(preset).to_dict()
    fields.update(vocab_size=0, max_len=512)  # 0: the tokenizer's size, known at the start
    return ml_collections.ConfigDict(fields)


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = model_fields("base")

    config.dataset = "tfds"
    config.tfds_name = "wmt14_translate/de-en"
    config.source_language = "en"
    config.target_language = "de"
    config.train_split = "train"
    config.validation_split = "validation"  # newstest2013
    config.test_split = "test"  # newstest2014
    config.tokenizer = "sentencepiece"
    config.tokenizer_vocab_size = 37000

    config.batching = "bucketed"
    config.batch_tokens = 25000  # per side, per update, over all devices
    config.max_length = 256  # training pairs with a longer side (with eos) are dropped
    config.eval_max_length = 0  # every newstest sentence is accepted (up to model.max_len)
    config.eval_batch_size = 64

    config.num_train_steps = 100_000
    config.warmup_steps = 4000
    config.learning_rate_scale = 1.0  # the paper's schedule exactly
    config.cooldown_fraction = 0.0
    config.label_smoothing = 0.1

    config.log_every_steps = 100
    config.eval_every_steps = 5000
    config.num_validation_examples = 500  # greedy, for a quick BLEU curve; the test uses beam
    config.validation_decoding = "greedy"
    config.test_decoding = "beam"
    config.beam_size = 4
    config.length_penalty = 0.6
    config.checkpoint_every_steps = 1500
    config.keep_checkpoints = 5
    config.average_last = 5
    return config
