"""The alignment flags of `train.translate` and `train.export`: --alignments, --alignment_units,
--alignment_layer, --alignment_head (see train/translate.py's docstring)."""

from __future__ import annotations

from absl import flags

from train.data.vocabulary import ALIGNMENT_UNITS

ALIGNMENTS = flags.DEFINE_bool(
    "alignments", False, "Add hard word alignments (Pharaoh format: source-target indices)."
)
ALIGNMENT_UNITS = flags.DEFINE_enum(
    "alignment_units", "word", list(ALIGNMENT_UNITS), "Align words (pieces merged) or tokens."
)
ALIGNMENT_LAYER = flags.DEFINE_string(
    "alignment_layer",
    "-1",
    "Decoder layer whose cross-attention aligns: an index (negative from the last) or 'mean' "
    "(default: the last; Garg et al. 2019 prefer the penultimate, -2, in 6-layer models).",
)
ALIGNMENT_HEAD = flags.DEFINE_string(
    "alignment_head", "mean", "Attention head that aligns: an index or 'mean'."
)


def parse_index_or_mean(value: str, name: str) -> int | str:
    """A flag's value as an index or "mean"."""
    if value == "mean":
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--{name} must be an index or 'mean', got {value!r}") from None
