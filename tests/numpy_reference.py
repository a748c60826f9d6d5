"""An independent float64 NumPy Transformer, written from the paper, for checking the library.

Nothing here imports flax_transformer: the tests feed this code the library's parameters (a
nested dict of arrays) and compare outputs. Attention is computed one head at a time and the
heads are concatenated, as written in paper section 3.2.2.
"""

from __future__ import annotations

import math

import numpy as np


def as64(tree):
    if isinstance(tree, dict):
        return {key: as64(value) for key, value in tree.items()}
    return np.asarray(tree, dtype=np.float64)


def positional_encoding(length: int, d_model: int, layout: str = "interleaved") -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...), element by element."""
    table = np.zeros((length, d_model))
    num_sin = (d_model + 1) // 2
    for pos in range(length):
        for j in range(d_model):
            if layout == "interleaved":
                i, use_sin = j // 2, j % 2 == 0
            else:  # halves: sines of every frequency, then cosines of every frequency
                i, use_sin = (j, True) if j < num_sin else (j - num_sin, False)
            angle = pos / 10000 ** (2 * i / d_model)
            table[pos, j] = math.sin(angle) if use_sin else math.cos(angle)
    return table


def masked_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over allowed entries only; a row with no allowed entry is all zeros."""
    mask = np.broadcast_to(mask, logits.shape)
    shifted = np.where(mask, logits, -np.inf)
    row_max = shifted.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    exps = np.where(mask, np.exp(np.where(mask, logits, 0.0) - row_max), 0.0)
    total = exps.sum(axis=-1, keepdims=True)
    return np.divide(exps, total, out=np.zeros_like(exps), where=total > 0)


def attention(q, k, v, mask=None):
    """softmax(q kᵀ / sqrt(d_k)) v in float64; q [..., q, d], k [..., k, d], v [..., k, dv]."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if mask is None:
        mask = np.ones(logits.shape, bool)
    weights = masked_softmax(logits, np.asarray(mask, bool))
    return weights @ v, weights


def layer_norm(x, params, epsilon):
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * params["scale"] + params["bias"]


def multi_head_attention(params, inputs_q, inputs_kv, mask, num_heads, weights_out=None):
    """Concat(head_1..head_h) W^O with head_i = Attention(x W_i^Q, m W_i^K, m W_i^V).

    mask: [batch, q_len, k_len] bool. `weights_out`: a list that receives the weights
    [batch, heads, q_len, k_len].
    """
    heads, weights = [], []
    for h in range(num_heads):
        q = inputs_q @ params["query"]["kernel"][:, h, :] + params["query"]["bias"][h]
        k = inputs_kv @ params["key"]["kernel"][:, h, :] + params["key"]["bias"][h]
        v = inputs_kv @ params["value"]["kernel"][:, h, :] + params["value"]["bias"][h]
        out, head_weights = attention(q, k, v, mask)
        heads.append(out)
        weights.append(head_weights)
    if weights_out is not None:
        weights_out.append(np.stack(weights, axis=1))
    concat = np.concatenate(heads, axis=-1)
    w_o = params["output"]["kernel"]
    w_o = w_o.reshape(w_o.shape[0] * w_o.shape[1], w_o.shape[2])
    return concat @ w_o + params["output"]["bias"]


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def feed_forward(params, x, activation="relu"):
    hidden = x @ params["hidden"]["kernel"] + params["hidden"]["bias"]
    hidden = np.maximum(hidden, 0.0) if activation == "relu" else gelu_tanh(hidden)
    return hidden @ params["output"]["kernel"] + params["output"]["bias"]


def _sublayer(x, fn, norm_params, norm_position, epsilon):
    if norm_position == "pre":
        return x + fn(layer_norm(x, norm_params, epsilon))
    return layer_norm(x + fn(x), norm_params, epsilon)


def encoder_layer(p, x, mask, cfg):
    eps, pos = cfg["layer_norm_epsilon"], cfg["norm_position"]
    x = _sublayer(
        x,
        lambda h: multi_head_attention(p["self_attention"], h, h, mask, cfg["num_heads"]),
        p["self_attention_norm"],
        pos,
        eps,
    )
    return _sublayer(
        x,
        lambda h: feed_forward(p["feed_forward"], h, cfg["activation"]),
        p["feed_forward_norm"],
        pos,
        eps,
    )


def decoder_layer(p, y, encoded, self_mask, cross_mask, cfg, cross_weights_out=None):
    eps, pos = cfg["layer_norm_epsilon"], cfg["norm_position"]
    y = _sublayer(
        y,
        lambda h: multi_head_attention(p["self_attention"], h, h, self_mask, cfg["num_heads"]),
        p["self_attention_norm"],
        pos,
        eps,
    )
    y = _sublayer(
        y,
        lambda h: multi_head_attention(
            p["cross_attention"], h, encoded, cross_mask, cfg["num_heads"], cross_weights_out
        ),
        p["cross_attention_norm"],
        pos,
        eps,
    )
    return _sublayer(
        y,
        lambda h: feed_forward(p["feed_forward"], h, cfg["activation"]),
        p["feed_forward_norm"],
        pos,
        eps,
    )


def _embed(table, tokens, positions_table, cfg, learned=None):
    x = table[tokens]
    if cfg["scale_embeddings"]:
        x = x * math.sqrt(cfg["d_model"])
    length = tokens.shape[1]
    return x + (learned[:length] if learned is not None else positions_table[:length])


def transformer_logits(params, cfg, source, decoder_input, cross_attention=None):
    """Logits [batch, tgt_len, vocab] of the whole model in float64.

    cfg: a dict of TransformerConfig fields. Masks are built here from the tokens: encoder keys
    that are not padding; causal decoder self-attention; cross-attention to non-pad source.
    `cross_attention`: a list that receives each decoder layer's encoder-decoder attention
    weights [batch, heads, tgt_len, src_len], first layer first.
    """
    p = as64(params)
    source, decoder_input = np.asarray(source), np.asarray(decoder_input)
    src_len, tgt_len = source.shape[1], decoder_input.shape[1]
    if cfg["share_embeddings"]:
        source_table = target_table = p["shared_embedding"]["embedding"]
    else:
        source_table = p["source_embedding"]["embedding"]
        target_table = p["target_embedding"]["embedding"]
    learned = cfg["positional_encoding"] == "learned"
    table = positional_encoding(max(src_len, tgt_len), cfg["d_model"], cfg["sinusoid_layout"])

    source_real = source != cfg["pad_id"]  # [batch, src_len]
    encoder_mask = np.repeat(source_real[:, None, :], src_len, axis=1)
    causal = np.tril(np.ones((tgt_len, tgt_len), bool))
    decoder_mask = np.broadcast_to(causal, (source.shape[0], tgt_len, tgt_len))
    cross_mask = np.repeat(source_real[:, None, :], tgt_len, axis=1)

    enc = p["encoder"]
    x = _embed(
        source_table,
        source,
        table,
        cfg,
        enc["position_embedding"]["embedding"] if learned else None,
    )
    for i in range(cfg["num_encoder_layers"]):
        x = encoder_layer(enc[f"layer_{i}"], x, encoder_mask, cfg)
    if cfg["norm_position"] == "pre":
        x = layer_norm(x, enc["final_norm"], cfg["layer_norm_epsilon"])

    dec = p["decoder"]
    y = _embed(
        target_table,
        decoder_input,
        table,
        cfg,
        dec["position_embedding"]["embedding"] if learned else None,
    )
    for i in range(cfg["num_decoder_layers"]):
        y = decoder_layer(dec[f"layer_{i}"], y, x, decoder_mask, cross_mask, cfg, cross_attention)
    if cfg["norm_position"] == "pre":
        y = layer_norm(y, dec["final_norm"], cfg["layer_norm_epsilon"])
    if cfg["tie_output_embedding"]:
        return y @ target_table.T
    return y @ dec["logits"]["kernel"] + dec["logits"]["bias"]


# ---------------------------------------------------------------------------------------------
# Sampling filters, by their definitions
# ---------------------------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    exps = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exps / exps.sum(axis=-1, keepdims=True)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep a logit when fewer than k logits of its row are larger."""
    larger = (logits[..., None, :] > logits[..., :, None]).sum(axis=-1)
    return np.where(larger < k, logits, -np.inf)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep a token when the tokens strictly more likely than it hold less than p of the mass."""
    probs = softmax(logits)
    more_likely = probs[..., None, :] > probs[..., :, None]
    mass_before = (more_likely * probs[..., None, :]).sum(axis=-1)
    return np.where(mass_before < p, logits, -np.inf)
