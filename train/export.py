"""Export a trained run as a translator that runs without the model code:
`python -m train.export --workdir=DIR --out=OUT`.

OUT is a directory that `train.exported` (jax, NumPy and sentencepiece only: no flax, no model
code) loads and translates with:

    manifest.json            what the artifact holds: special ids, buckets, methods, decoding
                             settings, platforms, the JAX version that wrote it
    functions/beam_16.jax    one serialized `jax.export.Exported` (StableHLO) per decoding
    functions/greedy_16.jax  method and source-length bucket: (params, source int32 [batch, L])
    ...                      -> {"tokens" int32 [batch, T], "scores" float32 [batch] (beam),
                             "attention" float32 [batch, T, 1, 1, L] (with --alignments)}
    params.npz               the weights, keys "encoder/layer_0/...": the functions' first input
    words.json | tokenizer.model | source.spm, target.spm, vocab.json    the tokenizer

Each function is the whole decoder of `flax_transformer.decoding` (greedy_decode, or
beam_search's best hypothesis) over a batch of any size (a symbolic batch dimension) of
sources padded to one bucket length L, the lengths `train.translate` pads to
(`train.data.run_data.eval_bucket_lengths`, up to the model's max_len or --max_source_length);
T = min(L + 50, max_len) as in-process (paper section 6.1). Decoding settings are fixed at
export: --beam_size, --length_penalty, --beam_stop (inference flags), and with --alignments the
cross-attention of --alignment_layer / --alignment_head (default the last layer's heads' mean,
as `train.translate --alignments`). Every function is lowered for each of --platforms (default
cpu, cuda and tpu; rocm too, where wanted) into one artifact: the same files run on any of them.
Lowering needs no such device: a CPU machine exports for all of them.

    python -m train.export --workdir=runs/numbers --out=exported/numbers
    echo 40712 | python -m train.exported --artifact=exported/numbers
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from flax_transformer import decoding
from flax_transformer.config import TransformerConfig
from flax_transformer.decoding import AttentionSelection
from train import alignment_flags, cli, inference_flags
from train.alignment_flags import parse_index_or_mean
from train.data.run_data import eval_bucket_lengths
from train.data.vocabulary import Vocabulary, write_vocabulary
from train.exported import FORMAT_VERSION, FUNCTIONS_DIRECTORY, MANIFEST, PARAMS, function_file

EXPORT_METHODS = ("greedy", "beam")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")

_OUT = flags.DEFINE_string("out", None, "Directory to write the exported translator to.")
_METHODS = flags.DEFINE_list(
    "methods", list(EXPORT_METHODS), "Decoding methods to export (greedy, beam)."
)
_PLATFORMS = flags.DEFINE_list(
    "platforms", list(DEFAULT_PLATFORMS), f"Platforms to lower for, any of {list(PLATFORMS)}."
)
_MAX_SOURCE_LENGTH = flags.DEFINE_integer(
    "max_source_length",
    None,
    "Longest source (tokens, with eos) the translator accepts: the largest bucket (default: "
    "the model's max_len).",
)
_FORCE = flags.DEFINE_bool("force", False, "Replace --out when it already holds an export.")
flags.adopt_module_key_flags(inference_flags)
flags.adopt_module_key_flags(alignment_flags)
flags.adopt_module_key_flags(cli)


def translation_function(
    config: TransformerConfig,
    method: str,
    *,
    bos_id: int,
    eos_id: int,
    beam_size: int,
    length_penalty: float,
    beam_stop: str,
    attention: AttentionSelection | None,
):
    """(params, source int32 [batch, L]) -> {"tokens", "scores" (beam), "attention" (with
    `attention`)}: `method`'s decoder with these settings, as train.translate runs it."""
    common = dict(bos_id=bos_id, eos_id=eos_id, attention=attention, check_inputs=False)

    def translate(params: Any, source: jax.Array) -> dict[str, jax.Array]:
        if method == "beam":
            tokens, scores, *weights = decoding.beam_search(
                config,
                params,
                source,
                beam_size=beam_size,
                length_penalty=length_penalty,
                stop=beam_stop,
                **common,
            )
            outputs = {"tokens": tokens[:, 0], "scores": scores[:, 0]}
            if weights:
                outputs["attention"] = weights[0][:, 0]
            return outputs
        result = decoding.greedy_decode(config, params, source, **common)
        if attention is None:
            return {"tokens": result}
        tokens, weights = result
        return {"tokens": tokens, "attention": weights}

    translate.__name__ = f"{method}_translate"
    return translate


def export_function(
    function, params: Any, length: int, platforms: Sequence[str]
) -> jax.export.Exported:
    """`function` (params, source) exported for sources [batch, `length`], batch symbolic."""
    (batch,) = jax.export.symbolic_shape("batch")
    params_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    source_spec = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    return jax.export.export(jax.jit(function), platforms=tuple(platforms))(
        params_spec, source_spec
    )


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {"encoder/layer_0/...": array}, what `train.exported` reads."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        key = "/".join(str(getattr(entry, "key", entry)) for entry in path)
        flat[key] = np.asarray(leaf)
    return flat


def export_translator(
    config: TransformerConfig,
    params: Any,
    vocabulary: Vocabulary,
    out: str | os.PathLike,
    *,
    methods: Sequence[str] = EXPORT_METHODS,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    max_source_length: int | None = None,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    beam_stop: str = "finished",
    attention: AttentionSelection | None = None,
    source: str = "",
    force: bool = False,
) -> dict[str, Any]:
    """Write the exported translator (see the module docstring) to the directory `out`;
    returns its manifest. The directory is written beside `out` and renamed into place, so an
    interrupted export never leaves a partial one. `attention` (resolved against `config`): the
    cross-attention to export with each output, for alignments.

    Raises:
      ValueError: for an unknown method or platform, a max_source_length outside 1..max_len,
        an attention selection that does not name one layer (or "mean") and one head (or
        "mean"), or an `out` that already holds files (unless `force`).
    """
    unknown = sorted(set(methods) - set(EXPORT_METHODS))
    if unknown or not methods:
        raise ValueError(f"methods must be among {list(EXPORT_METHODS)}, got {list(methods)}")
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown or not platforms:
        raise ValueError(f"platforms must be among {list(PLATFORMS)}, got {list(platforms)}")
    limit = config.max_len if max_source_length is None else max_source_length
    if not 1 <= limit <= config.max_len:
        raise ValueError(
            f"max_source_length must be in 1..{config.max_len} (the model's max_len), got {limit}"
        )
    if attention is not None:
        attention = attention.resolved(config)
        if "all" in (attention.layer, attention.head):
            raise ValueError("the exported attention must be one layer (or 'mean') and one head")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} is not empty (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    lengths = eval_bucket_lengths(limit)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        tokenizer = write_vocabulary(vocabulary, staging)
        (staging / FUNCTIONS_DIRECTORY).mkdir()
        functions = []
        for method in methods:
            function = translation_function(
                config,
                method,
                bos_id=vocabulary.bos_id,
                eos_id=vocabulary.eos_id,
                beam_size=beam_size,
                length_penalty=length_penalty,
                beam_stop=beam_stop,
                attention=attention,
            )
            for length in lengths:
                exported = export_function(function, params, length, platforms)
                name = function_file(method, length)
                (staging / name).write_bytes(exported.serialize())
                functions.append({"method": method, "source_length": length, "file": name})
                logging.info("exported %s for sources of %d tokens", method, length)
        np.savez(staging / PARAMS, **flatten_params(params))
        manifest = {
            "format_version": FORMAT_VERSION,
            "exported_from": source,
            "jax_version": jax.__version__,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "platforms": list(platforms),
            "methods": list(methods),
            "bucket_lengths": lengths,
            "functions": functions,
            "ids": {
                "pad": config.pad_id,
                "bos": vocabulary.bos_id,
                "eos": vocabulary.eos_id,
            },
            "model": {
                "max_len": config.max_len,
                "num_decoder_layers": config.num_decoder_layers,
                "num_heads": config.num_heads,
                "vocab_size": config.vocab_size,
            },
            "decoding": {
                "beam_size": beam_size,
                "length_penalty": length_penalty,
                "beam_stop": beam_stop,
            },
            "attention": None
            if attention is None
            else {"layer": attention.layer, "head": attention.head},
            "tokenizer": tokenizer,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's directory is private
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _OUT.value:
        raise app.UsageError("--out is required: the directory to write the translator to")
    options = inference_flags.options()
    attention = None
    if alignment_flags.ALIGNMENTS.value:
        attention = AttentionSelection(
            layer=parse_index_or_mean(alignment_flags.ALIGNMENT_LAYER.value, "alignment_layer"),
            head=parse_index_or_mean(alignment_flags.ALIGNMENT_HEAD.value, "alignment_head"),
        )
    run = inference_flags.trained_run()
    start = time.perf_counter()
    manifest = export_translator(
        run.model_config,
        run.params,
        run.workdir.vocabulary(run.config),
        _OUT.value,
        methods=_METHODS.value,
        platforms=_PLATFORMS.value,
        max_source_length=_MAX_SOURCE_LENGTH.value,
        beam_size=options.beam_size,
        length_penalty=options.length_penalty,
        beam_stop=options.beam_stop,
        attention=attention,
        source=f"{inference_flags.WORKDIR.value} ({run.describe()})",
        force=_FORCE.value,
    )
    size = sum(f.stat().st_size for f in Path(_OUT.value).rglob("*") if f.is_file())
    print(
        f"exported {len(manifest['functions'])} functions ({', '.join(manifest['methods'])} x "
        f"buckets {manifest['bucket_lengths']}) for {', '.join(manifest['platforms'])} to "
        f"{_OUT.value}: {size / 2**20:.1f} MiB in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
