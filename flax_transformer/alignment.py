"""Word alignments from attention weights (host-side NumPy; no model code).

    word_attention    piece-level weights [tgt, src] -> word-level [tgt_words, src_words]
    hard_alignment    each target word linked to the source word it attends to most
    pharaoh           links -> "0-0 1-2 ..." (source-target), the format of fast_align, fairseq
                      (--print-alignment) and Marian (--alignment)
    alignment_scores  precision, recall and alignment error rate against reference links

The weights are a decoder's encoder-decoder attention for one output: row t is the distribution
over source tokens with which the decoder chose output token t (`flax_transformer.decoding`'s
`attention=`, or `flax_transformer.apply.attention_weights` over a given target). Which layer and
heads to read is the caller's choice. On the number-words task the last decoder layer's weights
averaged over the heads align well (tests/end_to_end/test_alignments.py); Garg et al. (2019,
"Jointly Learning to Align and Translate with Transformer Models") found the penultimate
layer's, averaged over the heads, the best single choice in a 6-layer translation model trained
without alignment supervision.

Word indices. Tokens map to words through `source_words` and `target_words`: one int per token,
the index (from 0, in order) of the word it belongs to, or -1 for a token that belongs to no word
(eos, padding, language codes): its row or column is left out. A word's attention is the sum over
its source pieces (the mass its pieces receive) and the mean over its target pieces (each piece
of a target word was chosen with its own distribution). Without word indices every token is its
own word.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

Link = tuple[int, int]  # (source word, target word)


def _word_matrix(indices: Sequence[int], length: int, name: str) -> np.ndarray:
    """[words, length] float64: row w is 1 at the tokens of word w (indices -1: no word)."""
    indices = np.asarray(indices, np.int64)
    if indices.shape != (length,):
        raise ValueError(f"{name} has {indices.size} entries but the weights have {length} tokens")
    if np.any(indices < -1):
        raise ValueError(f"{name} holds {indices.min()}: word indices are >= 0, or -1 for none")
    words = int(indices.max()) + 1 if indices.size else 0
    matrix = np.zeros((words, length))
    kept = indices >= 0
    matrix[indices[kept], np.flatnonzero(kept)] = 1.0
    return matrix


def word_attention(
    weights: np.ndarray,
    source_words: Sequence[int] | None = None,
    target_words: Sequence[int] | None = None,
) -> np.ndarray:
    """Piece-level attention [tgt_len, src_len] -> word-level [tgt_words, src_words] (float64):
    summed over each source word's pieces, averaged over each target word's pieces."""
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 2:
        raise ValueError(f"weights must be [tgt_len, src_len], got shape {weights.shape}")
    tgt_len, src_len = weights.shape
    source = _word_matrix(
        range(src_len) if source_words is None else source_words, src_len, "source_words"
    )
    target = _word_matrix(
        range(tgt_len) if target_words is None else target_words, tgt_len, "target_words"
    )
    pieces_per_word = np.maximum(target.sum(axis=1, keepdims=True), 1.0)
    return (target / pieces_per_word) @ weights @ source.T


def hard_alignment(
    weights: np.ndarray,
    source_words: Sequence[int] | None = None,
    target_words: Sequence[int] | None = None,
) -> list[Link]:
    """Links (source word, target word), one per target word: the source word with the most of
    its attention (`word_attention`; ties to the first), sorted by target then source word.

    As fairseq's `--print-alignment` (argmax per target token): every target word gets exactly
    one link, so precision and recall are both bounded by how well one source word explains it.
    A target word whose attention is all zero (nothing to attend to) gets no link.
    """
    words = word_attention(weights, source_words, target_words)
    if words.shape[1] == 0:
        return []
    best = np.argmax(words, axis=1)
    has_mass = words.max(axis=1, initial=0.0) > 0.0
    return [(int(best[t]), t) for t in range(words.shape[0]) if has_mass[t]]


def pharaoh(links: Iterable[Link]) -> str:
    """Links (source, target) -> "s-t s-t ..." in the order given (the Pharaoh format)."""
    return " ".join(f"{source}-{target}" for source, target in links)


def alignment_scores(
    predicted: Iterable[Link], sure: Iterable[Link], possible: Iterable[Link] | None = None
) -> dict[str, float]:
    """Precision, recall and alignment error rate (Och and Ney, 2003) of `predicted` links
    against reference `sure` links and `possible` ones (sure links are possible too; None: the
    sure ones only). Over one sentence or, concatenated with sentence numbers in the links'
    place (e.g. (sentence, source, target) tuples), over a corpus.

        precision = |A & P| / |A|,  recall = |A & S| / |S|,
        AER = 1 - (|A & S| + |A & P|) / (|A| + |S|)

    An empty set gives 1.0 for the ratio it would divide (nothing to be wrong about).
    """
    predicted, sure = set(predicted), set(sure)
    possible = sure | (set(possible) if possible is not None else set())
    right_possible = len(predicted & possible)
    right_sure = len(predicted & sure)
    precision = right_possible / len(predicted) if predicted else 1.0
    recall = right_sure / len(sure) if sure else 1.0
    total = len(predicted) + len(sure)
    error_rate = 1.0 - (right_sure + right_possible) / total if total else 0.0
    return {"precision": precision, "recall": recall, "alignment_error_rate": error_rate}
