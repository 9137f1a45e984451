"""An independent NumPy forward pass of the Llama model, on the tensors as a GGUF file stores them.

It shares no code with ``model.py`` and takes the weights under their GGUF names (``blk.<i>.attn_q.weight``, ...)
in the file's layout: the q and k rows in llama.cpp's order, rotated as adjacent pairs ``(2i, 2i+1)`` the way
llama.cpp's ``rope`` does for Llama. The MindSpore model instead converts those rows back and rotates dimension ``i``
with ``i + head_dim/2``; the two agree only if the loader's conversion and both rotations are right. Everything is
computed in float64.

Optional key/value prefixes (prefix tuning, P-Tuning v2) and virtual-token embeddings (prompt tuning) enter as
in the model: prefixes are unrotated keys and values that every query attends, given in the model's head layout
(rotate-half order), and virtual tokens are prepended to the token embeddings, the text's logits returned.
"""
import numpy as np


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rotate_pairs(x, positions, theta):
    """Rotary embedding over adjacent pairs: ``(x[2i], x[2i+1])`` turns by ``position * theta^(-2i/d)``.

    x: (heads, seq, head_dim); positions: (seq,).
    """
    head_dim = x.shape[-1]
    frequencies = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions[:, None].astype(np.float64) * frequencies[None, :]
    cos, sin = np.cos(angles), np.sin(angles)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def to_pair_order(x):
    """Reorder the last axis from rotate-half order (``0..h-1, h..2h-1``) to pair order (``0, h, 1, h+1, ...``)."""
    half = x.shape[-1] // 2
    out = np.empty_like(x)
    out[..., 0::2] = x[..., :half]
    out[..., 1::2] = x[..., half:]
    return out


def softmax(scores):
    scores = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(scores)
    return exp / exp.sum(axis=-1, keepdims=True)


def forward(tensors, config, input_ids, prefixes=None, virtual_embeds=None):
    """Logits ``(seq, vocab)`` of one sequence.

    Args:
        tensors (dict): GGUF name -> float array, dequantized, ``(out, in)`` (``token_embd.weight``,
            ``output_norm.weight``, ``output.weight`` when untied, ``blk.<i>.*``).
        config: an object with ``num_layers, num_heads, num_kv_heads, rope_theta, rms_norm_eps``.
        input_ids (sequence of int): the tokens.
        prefixes (array, optional): ``(num_layers, 2, num_kv_heads, prefix_length, head_dim)`` keys (index 0) and
            values (index 1) in the model's rotate-half head layout.
        virtual_embeds (array, optional): ``(num_virtual_tokens, hidden)`` prepended to the token embeddings.
    """
    t = {name: np.asarray(value, np.float64) for name, value in tensors.items()}
    embedding = t["token_embd.weight"]
    x = embedding[np.asarray(input_ids)]
    num_virtual = 0
    if virtual_embeds is not None:
        num_virtual = len(virtual_embeds)
        x = np.concatenate([np.asarray(virtual_embeds, np.float64), x], axis=0)
    seq = x.shape[0]
    positions = np.arange(seq)
    heads, kv_heads = config.num_heads, config.num_kv_heads
    head_dim = x.shape[1] // heads
    causal = np.tril(np.ones((seq, seq), bool))
    for layer in range(config.num_layers):
        w = {name[len(f"blk.{layer}."):]: value for name, value in t.items() if name.startswith(f"blk.{layer}.")}
        h = rms_norm(x, w["attn_norm.weight"], config.rms_norm_eps)
        q = (h @ w["attn_q.weight"].T).reshape(seq, heads, head_dim).transpose(1, 0, 2)
        k = (h @ w["attn_k.weight"].T).reshape(seq, kv_heads, head_dim).transpose(1, 0, 2)
        v = (h @ w["attn_v.weight"].T).reshape(seq, kv_heads, head_dim).transpose(1, 0, 2)
        q = rotate_pairs(q, positions, config.rope_theta)
        k = rotate_pairs(k, positions, config.rope_theta)
        visible = causal
        if prefixes is not None:
            prefix_key = to_pair_order(np.asarray(prefixes[layer][0], np.float64))
            prefix_value = np.asarray(prefixes[layer][1], np.float64)
            k = np.concatenate([prefix_key, k], axis=1)
            v = np.concatenate([prefix_value, v], axis=1)
            visible = np.concatenate([np.ones((seq, prefix_key.shape[1]), bool), causal], axis=1)
        context = np.empty((heads, seq, head_dim))
        for head in range(heads):
            kv = head // (heads // kv_heads)
            scores = q[head] @ k[kv].T / np.sqrt(head_dim)
            context[head] = softmax(np.where(visible, scores, -np.inf)) @ v[kv]
        x = x + context.transpose(1, 0, 2).reshape(seq, -1) @ w["attn_output.weight"].T
        h = rms_norm(x, w["ffn_norm.weight"], config.rms_norm_eps)
        gate = h @ w["ffn_gate.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * (h @ w["ffn_up.weight"].T)) @ w["ffn_down.weight"].T
    x = rms_norm(x, t["output_norm.weight"], config.rms_norm_eps)
    head = t.get("output.weight", embedding)
    return (x @ head.T)[num_virtual:]
