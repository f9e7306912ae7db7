#!/usr/bin/env python3
"""The real Gemma-3-270M's next-token logits in float64, to judge a near-tie.

An independent forward pass (numpy float64 over gguf-py's dequantized weights; the gemma3
graph of `make_tiny_model_goldens.py`: embeddings times sqrt(d), RMS norms, q/k norms, neox
rope with the local layers' base, a 512-position window on five layers of six, GeGLU with
gelu-tanh, post-attention and post-MLP norms) prints the top five logits after a token-id
prompt. It decides which side of a greedy difference is right where llama.cpp's logits and
ours are both within their own rounding (about 1.2 apart on this model, logits_goldens.rs).

Measured (2026-12-06): after "The three primary colors are" + " red" "," (ids
2,818,1806,5905,7913,659,2604,236764), where the greedy goldens record llama.cpp's top-2 gap as
0.444, float64 gives " yellow" (3730) 29.3845 and " blue" (7070) 29.2179: a gap of 0.167.
Ours chose " blue" by 0.187 (f16 KV cache), " blue" by 0.210 (f32) and " yellow" by 0.059
(Q8_0): a near-tie that rounding decides.

Usage (about 45 s, 3 GB of memory):

    ~/.cache/llama-orch-worker/llama-venv/bin/python scripts/goldens/gemma3_f64_next_token.py \
        fixtures/models/gemma-3-270m-q4_k_m.gguf 2,818,1806,5905,7913,659,2604,236764
"""
import sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

path = sys.argv[1]
ids = [int(t) for t in sys.argv[2].split(",")]
r = GGUFReader(path)
T = {t.name: t for t in r.tensors}
def field(name, default=None):
    f = r.fields.get(name)
    if f is None:
        return default
    v = f.parts[f.data[0]]
    return v.tolist()[0] if hasattr(v, "tolist") else v
def w(name):
    t = T[name]
    a = dequantize(t.data, t.tensor_type).astype(np.float64)
    return a.reshape([int(x) for x in reversed(t.shape)])
d = int(field("gemma3.embedding_length"))
n_layer = int(field("gemma3.block_count"))
n_head = int(field("gemma3.attention.head_count"))
n_kv = int(field("gemma3.attention.head_count_kv"))
hd = int(field("gemma3.attention.key_length"))
eps = float(field("gemma3.attention.layer_norm_rms_epsilon"))
base = float(field("gemma3.rope.freq_base", 10000.0))
base_swa = float(field("gemma3.rope.freq_base_swa", 10000.0))
window = int(field("gemma3.attention.sliding_window"))
pattern = int(field("gemma3.attention.sliding_window_pattern", 6))
emb = w("token_embd.weight")
def rms(x, g):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g
def rope(x, pos, b):
    inv = b ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, bb = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([a * c - bb * s, a * s + bb * c], axis=-1)
def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
def attention(q, k, v, n, win):
    mask = np.triu(np.full((n, n), -np.inf), 1)
    if win is not None:
        mask += np.tril(np.full((n, n), -np.inf), -win)
    o = np.empty((n, n_head, hd))
    for h in range(n_head):
        kv = h // (n_head // n_kv)
        s = q[:, h, :] @ k[:, kv, :].T / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        o[:, h, :] = s @ v[:, kv, :]
    return o.reshape(n, n_head * hd)
n = len(ids)
pos = np.arange(n, dtype=np.float64)
x = emb[ids] * np.sqrt(d)
for i in range(n_layer):
    p = f"blk.{i}."
    local = i % pattern < pattern - 1
    b = base_swa if local else base
    h = rms(x, w(p + "attn_norm.weight"))
    q = rms((h @ w(p + "attn_q.weight").T).reshape(n, n_head, hd), w(p + "attn_q_norm.weight"))
    k = rms((h @ w(p + "attn_k.weight").T).reshape(n, n_kv, hd), w(p + "attn_k_norm.weight"))
    v = (h @ w(p + "attn_v.weight").T).reshape(n, n_kv, hd)
    o = attention(rope(q, pos, b), rope(k, pos, b), v, n, window if local else None)
    x = x + rms(o @ w(p + "attn_output.weight").T, w(p + "post_attention_norm.weight"))
    h = rms(x, w(p + "ffn_norm.weight"))
    g = gelu(h @ w(p + "ffn_gate.weight").T) * (h @ w(p + "ffn_up.weight").T)
    x = x + rms(g @ w(p + "ffn_down.weight").T, w(p + "post_ffw_norm.weight"))
logits = rms(x[-1:], w("output_norm.weight")) @ emb.T
top = np.argsort(-logits[0])[:5]
print([(int(t), round(float(logits[0][t]), 4)) for t in top])
