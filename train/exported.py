"""Translate with an exported translator (`python -m train.export`): jax, NumPy and
sentencepiece only, no flax and no model code.

    from train.exported import ExportedTranslator

    translator = ExportedTranslator.load("exported/numbers")
    [result] = translator.translate(["40712"], method="beam")
    result.text, result.score            # "forty thousand seven hundred twelve", -0.03
    translator.alignment(result)         # [(0, 0), (0, 1), ...] with an artifact exported
                                         # with --alignments: (source word, target word)

    echo 40712 | python -m train.exported --artifact=exported/numbers [--decoding=greedy]

The artifact's functions are deserialized with `jax.export.deserialize` and called on the
weights of params.npz. Lines are tokenized with the exported tokenizer, sorted by length into
the artifact's source-length buckets and decoded in batches of at most `batch_size` rows
(powers of two: a compilation per bucket and row count, kept by JAX's persistent compilation
cache when `compilation_cache` names a directory). A line longer than the largest bucket is
refused with a message naming it; empty lines translate to "". The outputs equal those of
`train.translate` on the run it was exported from, token for token.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

from flax_transformer import alignment  # NumPy only: no flax
from train import alignment_flags, cli, compilation_cache
from train.data.vocabulary import Vocabulary, alignment_units, output_ids, read_vocabulary

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARAMS = "params.npz"
FUNCTIONS_DIRECTORY = "functions"


def function_file(method: str, source_length: int) -> str:
    """The artifact's file of one method and bucket, relative to the artifact directory."""
    return f"{FUNCTIONS_DIRECTORY}/{method}_{source_length}.jax"


@dataclasses.dataclass(frozen=True)
class ExportedTranslation:
    """One line's translation by an exported translator.

    source_ids  the source ids the model read (eos included)
    ids         the output ids (eos included when the model wrote it)
    score       beam search's score (sum log p / length penalty); None for greedy
    attention   float32 [len(ids), len(source_ids)]: the exported cross-attention that chose
                each output token (the artifact's layer and head), None without it
    """

    text: str
    source_ids: list[int]
    ids: list[int]
    score: float | None = None
    attention: np.ndarray | None = None


def unflatten_params(flat: Any) -> dict[str, Any]:
    """{"encoder/layer_0/kernel": array} -> nested dicts (train.export's `flatten_params`)."""
    params: dict[str, Any] = {}
    for key in flat.files if hasattr(flat, "files") else flat:
        *parents, name = key.split("/")
        node = params
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = flat[key]
    return params


class ExportedTranslator:
    """An exported translator, loaded: `translate` lines, `alignment` of a translation.

    Raises (load):
      FileNotFoundError: for a directory that is not an export (no manifest.json) or lacks
        one of its files.
      ValueError: for an export of another format version, or one not lowered for this
        platform.
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        params: Any,
        functions: dict[tuple[str, int], jax.export.Exported],
        vocabulary: Vocabulary,
    ) -> None:
        self.manifest = manifest
        self.params = params
        self.functions = functions
        self.vocabulary = vocabulary
        self.bucket_lengths: list[int] = list(manifest["bucket_lengths"])
        self.methods: list[str] = list(manifest["methods"])
        self.eos_id, self.pad_id = manifest["ids"]["eos"], manifest["ids"]["pad"]
        self._calls: dict[tuple[str, int], Any] = {}

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ExportedTranslator:
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(
                f"{directory} is not an exported translator (no {MANIFEST}; write one with "
                "python -m train.export)"
            )
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{directory} holds an export of format {manifest.get('format_version')}, this "
                f"runner reads format {FORMAT_VERSION}: export it again"
            )
        platform = jax.default_backend()  # "gpu" for CUDA and ROCm, which jax.export names
        names = {"gpu": ("cuda", "rocm")}.get(platform, (platform,))
        if not set(names) & set(manifest["platforms"]):
            raise ValueError(
                f"{directory} was exported for {manifest['platforms']}, not for this {platform} "
                "backend: export it again with --platforms including it"
            )
        functions = {}
        for entry in manifest["functions"]:
            path = directory / entry["file"]
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing from the export")
            key = (entry["method"], int(entry["source_length"]))
            functions[key] = jax.export.deserialize(bytearray(path.read_bytes()))
        if not (directory / PARAMS).exists():
            raise FileNotFoundError(f"{directory / PARAMS} is missing from the export")
        with np.load(directory / PARAMS) as flat:
            params = jax.device_put(unflatten_params(flat))
        vocabulary = read_vocabulary(directory, manifest["tokenizer"])
        return cls(manifest, params, functions, vocabulary)

    @property
    def max_source_tokens(self) -> int:
        """The longest source accepted, in tokens with eos: the largest bucket."""
        return self.bucket_lengths[-1]

    def source_ids(self, line: str) -> list[int]:
        """The ids the model reads for `line` (whitespace-normalised), eos included; [] for an
        empty line."""
        text = " ".join(line.split())
        return [*self.vocabulary.encode(text), self.vocabulary.eos_id] if text else []

    def length_problem(self, line: str) -> str:
        """Why `line` is too long to translate (call it for a line that is)."""
        return (
            f"{len(self.source_ids(line))} tokens long (with eos), longer than the exported "
            f"translator's largest bucket ({self.max_source_tokens} tokens)"
        )

    def _call(self, method: str, length: int, source: np.ndarray) -> dict[str, np.ndarray]:
        key = (method, length)
        if key not in self._calls:
            self._calls[key] = jax.jit(self.functions[key].call)
        outputs = self._calls[key](self.params, source)
        return {name: np.asarray(value) for name, value in outputs.items()}

    def translate(
        self, lines: Sequence[str], *, method: str | None = None, batch_size: int = 64
    ) -> list[ExportedTranslation]:
        """The translations of `lines`, in order (method: "beam" or "greedy", default the first
        exported, beam when both are).

        Raises:
          ValueError: for a method not exported, a batch_size below 1, or a line longer than
            the largest bucket (naming the first such line).
        """
        method = method or ("beam" if "beam" in self.methods else self.methods[0])
        if method not in self.methods:
            raise ValueError(f"method {method!r} was not exported (the export has {self.methods})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sources = [self.source_ids(line) for line in lines]
        for number, (line, ids) in enumerate(zip(lines, sources, strict=True), start=1):
            if len(ids) > self.max_source_tokens:
                raise ValueError(f"line {number}: {self.length_problem(line)}")
        order = sorted((i for i, ids in enumerate(sources) if ids), key=lambda i: len(sources[i]))
        results: dict[int, ExportedTranslation] = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            length = next(n for n in self.bucket_lengths if n >= len(sources[chunk[-1]]))
            rows = min(batch_size, 1 << (len(chunk) - 1).bit_length())
            source = np.full((rows, length), self.pad_id, np.int32)
            for row, index in enumerate(chunk):
                source[row, : len(sources[index])] = sources[index]
            outputs = self._call(method, length, source)
            for row, index in enumerate(chunk):
                ids = output_ids(outputs["tokens"][row], self.eos_id, self.pad_id)
                attention = None
                if "attention" in outputs:
                    attention = outputs["attention"][row, : len(ids), 0, 0, : len(sources[index])]
                score = float(outputs["scores"][row]) if "scores" in outputs else None
                results[index] = ExportedTranslation(
                    self.vocabulary.decode(ids), sources[index], ids, score, attention
                )
        empty = ExportedTranslation(text="", source_ids=[], ids=[])
        return [results.get(index, empty) for index in range(len(lines))]

    def alignment(
        self, translation: ExportedTranslation, units: str = "word"
    ) -> list[tuple[int, int]]:
        """The hard alignment (source, target) of a translation, words (units="word") or
        tokens ("piece"), from the exported attention (`flax_transformer.alignment`).

        Raises:
          ValueError: when the artifact was exported without --alignments.
        """
        if self.manifest.get("attention") is None:
            raise ValueError("this translator was exported without --alignments")
        if not translation.ids:
            return []
        source = alignment_units(self.vocabulary, translation.source_ids, units)
        target = alignment_units(self.vocabulary, translation.ids, units)
        return alignment.hard_alignment(translation.attention, source, target)


# ---------------------------------------------------------------------------------------------
# python -m train.exported
# ---------------------------------------------------------------------------------------------
def define_flags() -> None:
    """The command's flags (defined only when it runs: `train.export` imports this module)."""
    global _ARTIFACT, _DECODING, _BATCH_SIZE
    _ARTIFACT = flags.DEFINE_string(
        "artifact", None, "Directory written by python -m train.export."
    )
    _DECODING = flags.DEFINE_enum(
        "decoding", None, ["beam", "greedy"], "Decoding method (default: beam when exported)."
    )
    _BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Sentences decoded per batch.")
    flags.adopt_module_key_flags(alignment_flags)  # --alignments, --alignment_units
    flags.adopt_module_key_flags(compilation_cache)
    flags.adopt_module_key_flags(cli)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _ARTIFACT.value:
        raise app.UsageError("--artifact is required: a directory written by train.export")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    compilation_cache.enable_from_flags()
    translator = ExportedTranslator.load(_ARTIFACT.value)
    if alignment_flags.ALIGNMENTS.value and translator.manifest.get("attention") is None:
        raise ValueError(f"{_ARTIFACT.value} was exported without --alignments")
    lines, problems = cli.decode_lines(sys.stdin.buffer.read())
    for index, line in enumerate(lines):
        if len(translator.source_ids(line)) > translator.max_source_tokens:
            lines[index], problems[index] = "", translator.length_problem(line)
    for index, problem in sorted(problems.items()):
        print(f"line {index + 1}: {problem}; skipped", file=sys.stderr)
    method, batch_size = _DECODING.value, _BATCH_SIZE.value
    translations = translator.translate(lines, method=method, batch_size=batch_size)
    output = []
    for index, translation in enumerate(translations):
        text = translation.text
        if alignment_flags.ALIGNMENTS.value and index not in problems:
            links = translator.alignment(translation, alignment_flags.ALIGNMENT_UNITS.value)
            text = f"{text} ||| {alignment.pharaoh(links)}"
        output.append(f"{text}\n")
    sys.stdout.buffer.write("".join(output).encode("utf-8"))
    sys.stdout.buffer.flush()
    if problems:
        print(f"{len(problems)} of {len(lines)} lines skipped", file=sys.stderr)
        return 65  # EX_DATAERR, as train.translate
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
