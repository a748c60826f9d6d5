"""Small helpers shared by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def random_tokens(
    rng: np.random.Generator,
    batch: int,
    length: int,
    vocab: int,
    pad_id: int = 0,
    min_length: int = 1,
) -> np.ndarray:
    """int32 [batch, length] ids in [1, vocab) (avoiding pad), right-padded to random lengths."""
    ids = rng.integers(0, vocab - 1, size=(batch, length))
    ids = np.where(ids >= pad_id, ids + 1, ids)  # skip pad_id
    lengths = rng.integers(min_length, length + 1, size=batch)
    lengths[0] = length  # at least one row without padding
    ids[np.arange(length)[None, :] >= lengths[:, None]] = pad_id
    return ids.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Text for tokenizers: Multi30k where present, else generated sentences
# ---------------------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[1]
MULTI30K = Path(os.environ.get("MULTI30K_DIR", REPO_ROOT.parent / "shared" / "data" / "multi30k"))


def _generated_text(count: int, seed: int, words: list[str]) -> list[str]:
    rng = np.random.default_rng(seed)
    endings = [".", "!", "?", ", ja.", " …", "."]
    lines = []
    for _ in range(count):
        chosen = rng.choice(words, size=rng.integers(3, 14))
        line = " ".join(chosen) + endings[rng.integers(len(endings))]
        if rng.random() < 0.2:
            line = f"{rng.integers(1, 2000)} {line}"
        lines.append(line[0].upper() + line[1:])
    return lines


ENGLISH_WORDS = str.split(
    "a man woman dog girl boy two three people are is in on the with of street water "
    "playing riding wearing red blue shirt ball park bike snow café naïve group young old "
    "standing walking looking at near front large small black white"
)
GERMAN_WORDS = str.split(
    "ein eine mann frau hund mädchen junge zwei drei leute sind ist in auf der die das mit "
    "straße wasser spielt fährt trägt rotes blaues hemd ball park fahrrad schnee grüße "
    "älterer jüngere steht geht schaut vor große kleine schwarze weiße"
)


def marian_texts(split: str, count: int) -> tuple[list[str], list[str]]:
    """(English, German) lines: Multi30k's where present (the real thing), else generated."""
    if (MULTI30K / f"{split}.en").exists():
        english = (MULTI30K / f"{split}.en").read_text(encoding="utf-8").splitlines()[:count]
        german = (MULTI30K / f"{split}.de").read_text(encoding="utf-8").splitlines()[:count]
        return english, german
    seed = {"train": 0, "test2016": 1}[split]
    return _generated_text(count, seed, ENGLISH_WORDS), _generated_text(count, seed, GERMAN_WORDS)


def write_marian_tokenizer(directory: Path) -> Path:
    """A MarianMT-style tokenizer (source.spm, target.spm, vocab.json) trained on 3,000 pairs."""
    from train.data.tokenizer_training import write_marian_tokenizer_files

    english, german = marian_texts("train", 3000)
    write_marian_tokenizer_files(directory, english, german, vocab_size=300)
    return directory
