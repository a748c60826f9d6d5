"""Default config: the small model on the built-in number-words task (no download).

Trains to >= 99% exact-match greedy decoding on the test split in under 10 minutes on 2 CPU
cores. Every field can be overridden: `python -m train --workdir=DIR --config.batch_size=64`.
"""

from __future__ import annotations

import ml_collections

from flax_transformer import TransformerConfig


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # The model: every TransformerConfig field (the small preset). vocab_size comes from the
    # dataset's vocabulary when left at 0.
    model = TransformerConfig.small().to_dict()
    model.update(vocab_size=0, max_len=64)
    config.model = ml_collections.ConfigDict(model)

    # Data: the built-in task, prepared locally by TFDS (array_record) on first use.
    config.dataset = "number_words"
    config.data_dir = ""  # "" = TFDS's default (~/tensorflow_datasets, or $TFDS_DATA_DIR)
    config.batch_size = 128  # global: split over the devices
    # Gradient accumulation: each update's batch (batch_size / batch_tokens, unchanged) is run
    # as this many micro-batches one after another: the same update, 1/k of the activation
    # memory (fairseq's --update-freq). Rows must divide by devices x micro_batches.
    config.micro_batches = 1
    config.eval_batch_size = 256

    # Text datasets ("parallel_text": a directory of {split}.{language} files in data_path;
    # "tfds": a catalog translation dataset such as "wmt14_translate/de-en"). See
    # train/configs/multi30k.py. Unused by number_words.
    config.data_path = ""
    config.tfds_name = ""
    config.source_language = ""
    config.target_language = ""
    config.train_split = "train"
    config.validation_split = "validation"
    config.test_split = "test"
    # "sentencepiece": shared by both languages, trained on the train split, kept in the workdir
    # as tokenizer.model. "marian": an imported MarianMT model's (python -m train.convert_marian).
    config.tokenizer = "sentencepiece"
    config.tokenizer_vocab_size = 8000
    # Pairs the tokenizer trains on: an evenly spread sample of this many when the training split
    # is larger (memory and time of SentencePiece grow with the text); 0 = every pair.
    config.tokenizer_train_pairs = 500_000
    # "examples": batch_size pairs per batch, rows padded to the data's longest pair (the built-in
    # task's). "padded", "bucketed" or "packed": about batch_tokens tokens per side per batch,
    # for text (see train/data/run_data.py).
    config.batching = "examples"
    config.batch_tokens = 4096
    config.max_length = 128  # training pairs with a longer side (with eos) are dropped
    config.pack_length = 0  # packed row length; 0 = max_length
    # Packed batches: each epoch is cut into one chunk per batch holding about pack_fill *
    # batch_tokens tokens on its longer side (train/data/packing.py); lower it if packing reports
    # a pair it cannot place.
    config.pack_fill = 0.92
    # The training split is tokenized once into a token store (train/data/token_store.py) kept
    # here; "" = token_stores/ in the TFDS data directory (data_dir), shared by every run on the
    # same data, tokenizer and max_length.
    config.token_store_dir = ""
    config.token_store_workers = 0  # processes that tokenize when building a store; 0 = 1 per CPU
    config.eval_max_length = 0  # longest evaluation sentence accepted; 0 = model.max_len

    # Optimisation (paper section 5.3 / 5.4, with a short warm-up for a short run).
    config.num_train_steps = 1500
    config.warmup_steps = 200
    # Linear decay to 0 over the last third of the steps (not in the paper; see
    # flax_transformer.training.with_cooldown). 0 = the paper's schedule only.
    config.cooldown_fraction = 1 / 3
    config.learning_rate_scale = 0.5  # multiplies the paper's schedule: peak 2.2e-3
    config.adam_b1 = 0.9
    config.adam_b2 = 0.98
    config.adam_eps = 1e-9
    config.clip_norm = 0.0  # 0 = no clipping
    config.weight_decay = 0.0
    config.label_smoothing = 0.1
    # An exponential moving average of the params, kept beside them and used for every
    # evaluation, the test and the saved model (not in the paper, which averages the last
    # checkpoints instead: average_last); 0 = none. E.g. 0.998 averages about the last 500 steps
    # once past its ramp: until step 4,490 the average spans about step / 9 steps
    # (flax_transformer.training, "Parameter EMA").
    config.ema_decay = 0.0
    config.seed = 0
    # Divergence: at each log step a non-finite loss or gradient norm stops the run (exit status
    # 3, nothing saved over the good checkpoints), and so does a loss above divergence_factor
    # times the lowest of the last 10 logged losses; 0 = only the non-finite check.
    config.divergence_factor = 3.0
    # Resuming: fields that decide what the run computes (data, batching, tokenizer, optimizer,
    # schedule, seed) must match the checkpoint's, or the resume is refused with the diff; True
    # accepts (and logs) the changes, e.g. a lower learning_rate_scale after a divergence. See
    # train/setup.py RESUMABLE_CHANGES for the fields that may always change.
    config.allow_training_changes = False
    # Fine-tuning: a workdir of `python -m train` or `python -m train.convert_marian` whose model
    # (config, latest params) and tokenizer a new run starts from; "" = random initialisation.
    config.init_from = ""

    # Devices: "mesh" (jit + NamedSharding: what JAX recommends), "pmap", or "single".
    config.parallel = "mesh"

    # Logging, evaluation, checkpoints.
    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.num_validation_examples = 1000  # 0 = the whole split
    config.num_samples = 3  # sample translations printed at each evaluation
    # Decoding for validation ("" = loss only) and for the final test evaluation. The paper:
    # beam search, beam 4, length penalty 0.6, outputs up to source length + 50 (section 6.1).
    config.validation_decoding = "greedy"
    config.test_decoding = "greedy"
    config.beam_size = 4
    config.length_penalty = 0.6
    config.beam_stop = "finished"  # or "bound" (see flax_transformer.decoding.beam_search)
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 3
    # The final test evaluation decodes with the average of the last K checkpoints' params (the
    # paper averages the last 5 for base models, 20 for big, section 6.1); 1 = the final params.
    config.average_last = 1
    config.progress_bar = True
    return config
