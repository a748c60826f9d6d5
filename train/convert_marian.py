"""Import a MarianMT (opus-mt) checkpoint as a workdir: `python -m train.convert_marian`.

    python -m train.convert_marian --checkpoint=DIR --workdir=runs/opus-mt-en-de
    python -m train.convert_marian --hub=Helsinki-NLP/opus-mt-en-de --workdir=runs/opus-mt-en-de
    echo "A man is riding a bike." | python -m train.translate --workdir=runs/opus-mt-en-de
    python -m train.evaluate --workdir=runs/opus-mt-en-de --split=test

--checkpoint is a Hugging Face MarianMTModel directory (config.json, model.safetensors or
pytorch_model.bin, and the tokenizer's source.spm, target.spm, vocab.json); --hub downloads one
with `huggingface_hub` (pip install huggingface_hub; needs internet). Neither torch nor
transformers is needed. The workdir gets:

    config.json           our TransformerConfig and a training config (--config, default
                          train/configs/multi30k.py: the data `train.evaluate` scores on)
    checkpoints/0/        the parameters (orbax), read by train.translate and train.evaluate
    marian_tokenizer/     the tokenizer's files

A checkpoint whose architecture differs from ours (pre-LN, separate vocabularies, an embedding
LayerNorm, ...) is refused with an error naming the config field.
"""

from __future__ import annotations

import os
import shutil
import time

from absl import app, flags, logging

from train import cli

_CONFIG_PATH = os.path.join(os.path.dirname(__file__), "configs", "multi30k.py")

# What --hub downloads: the model and its tokenizer, nothing else (no TF/Flax/Rust weights;
# pytorch_model.bin only when the repository has no safetensors).
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "pytorch_model.bin",
    "source.spm",
    "target.spm",
    "vocab.json",
    "tokenizer_config.json",
]


def download(name: str) -> str:
    """The local directory of hub model `name` (downloaded, or from the hub cache)."""
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError(
            "--hub needs huggingface_hub (pip install huggingface_hub), or download the model "
            "yourself and pass --checkpoint=DIR"
        ) from None
    patterns = HUB_FILES
    if any(path.endswith(".safetensors") for path in huggingface_hub.list_repo_files(name)):
        patterns = [pattern for pattern in HUB_FILES if pattern != "pytorch_model.bin"]
    return huggingface_hub.snapshot_download(name, allow_patterns=patterns)


def convert(checkpoint_dir: str, workdir: str, train_config, origin: str) -> dict:
    """Write `workdir` from a MarianMT directory; returns a summary."""
    import jax

    from flax_transformer.interop.marian import load_marian
    from flax_transformer.model import count_params
    from train.data.vocabulary import MARIAN_TOKENIZER_FILES, MarianVocabulary
    from train.workdir import Workdir

    workdir = Workdir(workdir)
    if workdir.holds_run():
        raise FileExistsError(f"{workdir.path} already holds a run: choose a new --workdir")
    start = time.perf_counter()
    # The tokenizer first: it is cheap to check, and a workdir without it cannot translate.
    tokenizer = MarianVocabulary.from_directory(checkpoint_dir)
    checkpoint = load_marian(checkpoint_dir)
    model_config = checkpoint.config
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"vocab.json has {tokenizer.vocab_size} entries, more than the model's vocab_size "
            f"{model_config.vocab_size}"
        )
    for name in ("pad_id", "eos_id"):
        if getattr(tokenizer, name) != getattr(checkpoint, name):
            raise ValueError(
                f"the tokenizer's {name} ({getattr(tokenizer, name)}) differs from config.json's "
                f"({getattr(checkpoint, name)})"
            )
    if checkpoint.decoder_start_id != tokenizer.bos_id:
        raise ValueError(
            f"config.json's decoder_start_token_id ({checkpoint.decoder_start_id}) is not the pad "
            f"id ({tokenizer.pad_id}) the Marian tokenizer starts decoding from"
        )

    train_config.tokenizer = "marian"
    train_config.model = model_config.to_dict()
    train = {**train_config.to_dict(), "imported_from": origin}
    run_config = {"model": model_config.to_dict(), "train": train}
    os.makedirs(workdir.marian_tokenizer_dir, exist_ok=True)
    for name in (*MARIAN_TOKENIZER_FILES, "tokenizer_config.json"):
        if os.path.exists(os.path.join(checkpoint_dir, name)):
            target = os.path.join(workdir.marian_tokenizer_dir, name)
            shutil.copyfile(os.path.join(checkpoint_dir, name), target)
    params = jax.device_put(checkpoint.params)  # on the CPU, shares the loaded arrays
    with workdir.checkpointer(keep=train_config.keep_checkpoints) as checkpointer:
        checkpointer.save_params(0, params, config=run_config)
    workdir.write_config(train, model_config)  # last: a workdir with config.json is complete
    return {
        "origin": origin,
        "workdir": workdir.path,
        "parameters": count_params(params),
        "vocab_size": model_config.vocab_size,
        "config": model_config,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if (_CHECKPOINT.value is None) == (_HUB.value is None):
        raise app.UsageError("give exactly one of --checkpoint=DIR and --hub=NAME")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if _HUB.value:
        checkpoint_dir, origin = download(_HUB.value), f"hub:{_HUB.value}"
    else:
        checkpoint_dir = os.path.abspath(_CHECKPOINT.value)
        origin = checkpoint_dir
    summary = convert(checkpoint_dir, _WORKDIR.value, _CONFIG.value, origin)
    config = summary["config"]
    print(
        f"converted {summary['origin']} -> {summary['workdir']} in {summary['seconds']:.1f} s: "
        f"{summary['parameters']:,} parameters, d_model {config.d_model}, {config.num_heads} "
        f"heads, {config.num_encoder_layers}+{config.num_decoder_layers} layers, vocabulary "
        f"{summary['vocab_size']:,}, activation {config.activation}, final logits bias "
        f"{config.final_logits_bias}\n"
        f"translate: echo 'A man is riding a bike.' | python -m train.translate "
        f"--workdir={summary['workdir']}"
    )
    return 0


def define_flags() -> None:
    """The command's flags, defined only when it runs: a program that imports this module for
    `download` may define --workdir itself (train.inference_flags does)."""
    global _CHECKPOINT, _HUB, _WORKDIR, _CONFIG
    _CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A MarianMTModel directory.")
    _HUB = flags.DEFINE_string(
        "hub", None, "A Hugging Face hub name, e.g. Helsinki-NLP/opus-mt-en-de (downloads it)."
    )
    _WORKDIR = flags.DEFINE_string("workdir", None, "The workdir to create (must not hold a run).")
    _CONFIG = cli.define_config_file(
        "config",
        _CONFIG_PATH,
        "Training config stored with the model: its data is what `train.evaluate` scores "
        "(default train/configs/multi30k.py, English -> German Multi30k; override fields with "
        "--config.data_path=DIR --config.source_language=.. --config.target_language=..).",
        lock_config=False,
    )
    flags.mark_flag_as_required("workdir")
    flags.adopt_module_key_flags(cli)  # --debug in --help


if __name__ == "__main__":
    define_flags()
    cli.run(main)
