#!/usr/bin/env python3
"""Reference logits for the worker's model adapters, computed independently of the Rust code.

What it does: reads each fixture GGUF with gguf-py (PyPI `gguf==0.19.0`), dequantizes every
weight with gguf-py's own numpy dequantizers, and runs the transformer forward pass in plain
numpy (float64 arithmetic over the dequantized weights) for a few fixed token-id prompts. It
shares no code with the worker: the only thing both read is the GGUF file.

It writes small goldens to `tests/golden/logits/<model>.json`: per prompt and position, the
top-k token ids and logits, summary statistics (mean, std, logsumexp, argmax) and a strided
subsample of the logits. The Rust test `crates/worker-models/tests/logits_goldens.rs` compares
the worker's logits with them.

Usage (from the repository root):

    python3 scripts/goldens/make_logits_goldens.py            # both models
    python3 scripts/goldens/make_logits_goldens.py --model smollm2

It re-executes itself inside a venv with `gguf==0.19.0` and `numpy`: `$GOLDENS_VENV` if set,
else `~/.cache/llama-orch-worker/venv` (created with `python3 -m venv` and pip-installed when
missing). Models are found in `$WORKER_FIXTURES_DIR/models` (default
`~/.cache/llama-orch-worker/models`), fetched by `cargo xtask fetch`.

Conventions it follows from llama.cpp's GGUF conversion: the llama converter permutes the
q/k weights so that rope rotates adjacent pairs (x[2i], x[2i+1]) ("normal" rope); qwen2 is
converted unpermuted and rotates (x[i], x[i + d/2]) ("neox" rope). SmolLM2 has no
`output.weight`: its logits use `token_embd.weight` (tied embeddings).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

GGUF_VERSION = "0.19.0"
REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "tests" / "golden" / "logits"


def fixtures_dir() -> Path:
    d = os.environ.get("WORKER_FIXTURES_DIR")
    return Path(d) if d else Path.home() / ".cache" / "llama-orch-worker"


def ensure_venv() -> None:
    """Re-exec inside a venv that has gguf-py and numpy (created on first use)."""
    venv = Path(os.environ.get("GOLDENS_VENV", fixtures_dir() / "venv"))
    py = venv / "bin" / "python"
    if Path(sys.prefix).resolve() == venv.resolve():
        return
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    probe = subprocess.run(
        [str(py), "-c", f"import gguf, numpy, importlib.metadata as m; "
         f"assert m.version('gguf') == '{GGUF_VERSION}'"],
        capture_output=True,
    )
    if probe.returncode != 0:
        subprocess.check_call(
            [str(py), "-m", "pip", "install", f"gguf=={GGUF_VERSION}", "numpy"])
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen25": "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
}

# Prompts as vocabulary pieces (looked up exactly in the model's own token list, so no
# tokenizer is involved) or as raw ids.
PROMPT_PIECES = {
    "capital": ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"],
    "code": ["def", "Ġadd", "(", "a", ",", "Ġb", "):", "Ċ"],
}
RAW_PROMPTS = {
    "smollm2": {"ids": [1, 504, 3458, 282, 2114, 30, 7, 4462, 11, 260, 1730, 2]},
    "qwen25": {"ids": [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645]},
}
TOP_K = 10
N_SUBSAMPLE = 256


def main() -> None:
    ensure_venv()
    import numpy as np
    import gguf

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), action="append")
    args = ap.parse_args()

    def field(r, key, default=None):
        f = r.fields.get(key)
        if f is None:
            if default is None:
                raise KeyError(key)
            return default
        return f.contents()

    for name in args.model or sorted(MODELS):
        path = fixtures_dir() / "models" / MODELS[name]
        r = gguf.GGUFReader(str(path))
        arch = field(r, "general.architecture")
        tensors = {t.name: t for t in r.tensors}

        def w(tname):
            t = tensors[tname]
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            # gguf-py gives numpy shape = reversed ggml shape: (rows, row_len).
            shape = tuple(int(s) for s in reversed(t.shape))
            return np.asarray(a, dtype=np.float64).reshape(shape)

        n_layer = int(field(r, f"{arch}.block_count"))
        n_head = int(field(r, f"{arch}.attention.head_count"))
        n_kv = int(field(r, f"{arch}.attention.head_count_kv"))
        n_embd = int(field(r, f"{arch}.embedding_length"))
        hd = n_embd // n_head
        base = float(field(r, f"{arch}.rope.freq_base", 10000.0))
        eps = float(field(r, f"{arch}.attention.layer_norm_rms_epsilon"))
        vocab = [str(t) for t in field(r, "tokenizer.ggml.tokens")]
        index = {t: i for i, t in enumerate(vocab)}
        neox = arch == "qwen2"

        prompts = {}
        for pname, pieces in PROMPT_PIECES.items():
            prompts[pname] = [index[p] for p in pieces]
        prompts["raw"] = RAW_PROMPTS[name]["ids"]

        emb = w("token_embd.weight")
        out_w = w("output.weight") if "output.weight" in tensors else emb
        layers = []
        for i in range(n_layer):
            p = f"blk.{i}."
            L = {k: w(p + k + ".weight") for k in
                 ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                  "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]}
            for b in ["attn_q", "attn_k", "attn_v"]:
                if p + b + ".bias" in tensors:
                    L[b + "_b"] = w(p + b + ".bias")
            layers.append(L)
        out_norm = w("output_norm.weight")

        def rms(x, g):
            return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g

        def rope(x, pos):
            # x: (T, heads, hd)
            inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
            ang = pos[:, None] * inv[None, :]  # (T, hd/2)
            c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
            if neox:
                a, b = x[..., : hd // 2], x[..., hd // 2:]
                return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)
            a, b = x[..., 0::2], x[..., 1::2]
            y = np.empty_like(x)
            y[..., 0::2] = a * c - b * s
            y[..., 1::2] = a * s + b * c
            return y

        def forward(ids):
            T = len(ids)
            pos = np.arange(T, dtype=np.float64)
            x = emb[ids]
            mask = np.triu(np.full((T, T), -np.inf), 1)
            for L in layers:
                h = rms(x, L["attn_norm"])
                q = h @ L["attn_q"].T + L.get("attn_q_b", 0.0)
                k = h @ L["attn_k"].T + L.get("attn_k_b", 0.0)
                v = h @ L["attn_v"].T + L.get("attn_v_b", 0.0)
                q = rope(q.reshape(T, n_head, hd), pos)
                k = rope(k.reshape(T, n_kv, hd), pos)
                v = v.reshape(T, n_kv, hd)
                o = np.empty((T, n_head, hd))
                for hh in range(n_head):
                    kv = hh // (n_head // n_kv)
                    s = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(hd) + mask
                    s = np.exp(s - s.max(axis=-1, keepdims=True))
                    s /= s.sum(axis=-1, keepdims=True)
                    o[:, hh, :] = s @ v[:, kv, :]
                x = x + o.reshape(T, n_embd) @ L["attn_output"].T
                h = rms(x, L["ffn_norm"])
                g = h @ L["ffn_gate"].T
                u = h @ L["ffn_up"].T
                x = x + ((g / (1.0 + np.exp(-g))) * u) @ L["ffn_down"].T
            return rms(x, out_norm) @ out_w.T

        n_vocab = out_w.shape[0]
        stride = max(1, n_vocab // N_SUBSAMPLE)
        golden = {
            "generator": "scripts/goldens/make_logits_goldens.py (numpy float64 over "
                         f"gguf-py {GGUF_VERSION} dequantized weights)",
            "model": MODELS[name],
            "architecture": arch,
            "n_vocab": n_vocab,
            "subsample_stride": stride,
            "prompts": [],
        }
        for pname, ids in prompts.items():
            logits = forward(np.array(ids))
            positions = []
            for t in range(len(ids)):
                l = logits[t]
                top = np.argsort(-l)[:TOP_K]
                m = l.max()
                positions.append({
                    "top_ids": [int(i) for i in top],
                    "top_logits": [round(float(l[i]), 5) for i in top],
                    "mean": round(float(l.mean()), 6),
                    "std": round(float(l.std()), 6),
                    "logsumexp": round(float(m + np.log(np.exp(l - m).sum())), 6),
                    "subsample": [round(float(v), 4) for v in l[::stride][:N_SUBSAMPLE]],
                })
            golden["prompts"].append({"name": pname, "ids": [int(i) for i in ids],
                                      "positions": positions})
            nxt = int(positions[-1]["top_ids"][0])
            print(f"{name} {pname}: ids={ids} -> next {nxt} {vocab[nxt]!r}", flush=True)
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        out = OUT_DIR / f"{name}.json"
        out.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
        print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
