"""Flags shared by `python -m train.evaluate`, `translate`, `serve` and `export`: which run and
checkpoint(s) to read (--workdir, --step, --average_last, --raw_params), and how to decode."""

from __future__ import annotations

from typing import Any

from absl import flags

from flax_transformer.search import BEAM_STOP_RULES
from train.evaluation import DECODING_METHODS, DecodingOptions

WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a run of `python -m train`.")
STEP = flags.DEFINE_integer("step", None, "Checkpoint step to use (default: the latest).")
AVERAGE_LAST = flags.DEFINE_integer(
    "average_last",
    1,
    "Average the parameters of the last K checkpoints up to --step (the paper averages the "
    "last 5; the run must have kept them: config.keep_checkpoints).",
)
RAW_PARAMS = flags.DEFINE_bool(
    "raw_params",
    False,
    "Of a run that keeps a parameter EMA (config.ema_decay), read the checkpoints' own params "
    "rather than their moving average (the default).",
)
DECODING = flags.DEFINE_enum(
    "decoding", "beam", list(DECODING_METHODS), "Decoding: beam search, greedy or sampling."
)
BEAM_SIZE = flags.DEFINE_integer("beam_size", 4, "Beam size (paper: 4).")
LENGTH_PENALTY = flags.DEFINE_float(
    "length_penalty", 0.6, "GNMT length penalty alpha of beam search (paper: 0.6)."
)
BEAM_STOP = flags.DEFINE_enum(
    "beam_stop",
    "finished",
    list(BEAM_STOP_RULES),
    "When a sentence's beam search ends: 'finished' (all beams have finished; beam size 1 is "
    "greedy) or 'bound' (no alive hypothesis can still win: tensor2tensor's rule, slower).",
)
TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
TOP_K = flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0 = all).")
TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: the smallest set of mass >= p.")
SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
MAX_LENGTH = flags.DEFINE_integer(
    "max_length", None, "Output length limit (default: source length + 50, as in the paper)."
)
BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Sentences decoded per batch.")
flags.mark_flag_as_required("workdir")


def trained_run() -> Any:
    """The run (`train.workdir.TrainedRun`) and params that --workdir, --step, --average_last
    and --raw_params name."""
    from train.workdir import load_run  # after flag parsing, as the commands import jax

    return load_run(
        WORKDIR.value, step=STEP.value, average_last=AVERAGE_LAST.value, raw=RAW_PARAMS.value
    )


def options() -> DecodingOptions:
    return DecodingOptions(
        method=DECODING.value,
        beam_size=BEAM_SIZE.value,
        length_penalty=LENGTH_PENALTY.value,
        beam_stop=BEAM_STOP.value,
        temperature=TEMPERATURE.value,
        top_k=TOP_K.value,
        top_p=TOP_P.value,
        seed=SEED.value,
        max_length=MAX_LENGTH.value,
    )
