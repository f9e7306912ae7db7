#!/usr/bin/env python3
"""Reference logits for the tiny random-weight phi3, gpt2, qwen3, gemma3 and gpt-oss models, from llama.cpp.

What it does:
1. Writes the tiny models with the worker's own GGUF writer
   (`cargo run -p worker-models --example write_tiny_models -- DIR`; the same bytes the Rust
   tests build in memory, from `crates/worker-models/tests/support/tiny_arch.rs`), on
   llama.cpp's real gpt-2, phi-3, qwen2 and llama-spm vocabularies and gpt-oss's o200k.
   Or reads them from `--models-dir`.
2. Runs each through llama.cpp (llama-cpp-python 0.3.36, CPU, `logits_all=True`, f32 KV
   cache) on a few fixed token-id prompts.
3. Also runs an independent numpy float64 forward pass over gguf-py's dequantized weights
   and reports how far llama.cpp is from it (a check of the reference itself). With
   `--reference numpy` only the numpy goldens are written (no llama.cpp needed).
4. gpt-oss: records the experts each layer's router chose for every token, in llama.cpp
   (read through its eval callback: the `ffn_moe_topk-N` tensors, with the gap between the
   last chosen and the first unchosen router logit from `ffn_moe_probs-N`) and in
   the numpy reference, and writes llama.cpp's token ids for a varied corpus on the tiny
   model's o200k vocabulary (`tests/golden/tokenizer/gptoss-llama-cpp.json`: no BOS, special
   tokens not parsed; the corpus of `make_greedy_goldens.py`).

It writes `tests/golden/tiny/<arch>.json` (llama.cpp) and `<arch>-numpy.json` (numpy): the
sha256 of the model bytes, and per prompt and position the top-k token ids and logits, summary statistics and a strided subsample of the
logits. `crates/worker-models/tests/tiny_arch.rs` compares the worker's logits with
them.

Usage (from the repository root):

    python3 scripts/goldens/make_tiny_model_goldens.py
    python3 scripts/goldens/make_tiny_model_goldens.py --arch gpt2 --reference numpy

It re-executes itself inside the venv that has llama-cpp-python: `$LLAMA_VENV` if set, else
`~/.cache/llama-orch-worker/llama-venv` (with `--reference numpy`: `$GOLDENS_VENV`, else
`~/.cache/llama-orch-worker/venv`), and pip-installs `gguf==0.19.0` and `numpy` there when
missing. Vocabularies come from `$WORKER_FIXTURES_DIR/vocab` (`cargo xtask fetch`).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

GGUF_VERSION = "0.19.0"
LLAMA_CPP_VERSION = "0.3.36"
REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "tests" / "golden" / "tiny"
ARCHS = ["phi3", "gpt2", "qwen3", "gemma3", "gpt-oss"]
TOP_K = 10
N_SUBSAMPLE = 256

# Prompts as vocabulary pieces (looked up in the model's own token list: no tokenizer is
# involved), and raw ids.
PROMPT_PIECES = {
    "gpt2": ["Hello", "Ġworld", ",", "Ġthis", "Ġis", "Ġa", "Ġtest", "."],
    "phi3": ["<s>", "▁Hello", "▁world", ",", "▁this", "▁is", "▁a", "▁test", "."],
    "qwen3": ["<|im_start|>", "user", "Ċ", "Hello", "Ġworld", ",", "Ġthis", "Ġis", "Ġa",
              "Ġtest", "."],
    "gemma3": ["<s>", "▁Hello", "▁world", ",", "▁this", "▁is", "▁a", "▁test", "."],
    "gpt-oss": ["<|start|>", "user", "<|message|>", "Hello", "Ġworld", ",", "Ġthis", "Ġis",
                "Ġa", "Ġtest", ".", "<|end|>", "<|start|>", "assistant"],
}
RAW_PROMPTS = {
    "gpt2": [50256, 0, 1, 50000, 31337, 42, 198, 50255],
    "phi3": [1, 32000, 32010, 0, 2, 31999, 12345, 13],
    "qwen3": [151643, 0, 1, 151000, 31337, 42, 198, 100000],
    "gemma3": [1, 0, 2, 31999, 12345, 13, 29871, 100, 7, 8, 9, 10],
    # Including the harmony specials, an id of the [PAD] rows and the last row.
    "gpt-oss": [199998, 0, 1, 200005, 31337, 42, 198, 200018, 201000, 201087],
}
N_LONG = 24


def fixtures_dir() -> Path:
    d = os.environ.get("WORKER_FIXTURES_DIR")
    return Path(d) if d else Path.home() / ".cache" / "llama-orch-worker"


def ensure_venv(reference: str) -> None:
    """Re-exec inside the venv that has the reference (and gguf-py, numpy)."""
    if reference == "llama.cpp":
        venv = Path(os.environ.get("LLAMA_VENV", fixtures_dir() / "llama-venv"))
    else:
        venv = Path(os.environ.get("GOLDENS_VENV", fixtures_dir() / "venv"))
    py = venv / "bin" / "python"
    if Path(sys.prefix).resolve() == venv.resolve():
        return
    if not py.exists():
        if reference == "llama.cpp":
            sys.exit(f"{py} is missing: install llama-cpp-python=={LLAMA_CPP_VERSION} there "
                     "(or use --reference numpy)")
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


def write_models(out: Path) -> None:
    subprocess.check_call(
        ["cargo", "run", "-q", "-p", "worker-models", "--example", "write_tiny_models", "--",
         str(out)], cwd=REPO)


def numpy_forward(path: Path):
    """A float64 numpy forward pass over gguf-py's dequantized weights: returns f(ids)."""
    import numpy as np
    import gguf

    r = gguf.GGUFReader(str(path))

    def field(key, default=None):
        f = r.fields.get(key)
        if f is None:
            if default is None:
                raise KeyError(key)
            return default
        return f.contents()

    arch = field("general.architecture")
    tensors = {t.name: t for t in r.tensors}

    def w(name):
        t = tensors[name]
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(s) for s in reversed(t.shape))
        return np.asarray(a, dtype=np.float64).reshape(shape)

    n_layer = int(field(f"{arch}.block_count"))
    n_head = int(field(f"{arch}.attention.head_count"))
    n_kv = int(field(f"{arch}.attention.head_count_kv", n_head))
    d = int(field(f"{arch}.embedding_length"))
    ff = int(field(f"{arch}.feed_forward_length"))
    hd = int(field(f"{arch}.attention.key_length", d // n_head))
    emb = w("token_embd.weight")
    out_w = w("output.weight") if "output.weight" in tensors else emb

    def attention(q, k, v, T, window=None):
        mask = np.triu(np.full((T, T), -np.inf), 1)
        if window is not None:
            # Row p attends to p - window + 1 ..= p (llama.cpp's standard sliding window).
            mask += np.tril(np.full((T, T), -np.inf), -window)
        o = np.empty((T, n_head, hd))
        for h in range(n_head):
            kv = h // (n_head // n_kv)
            s = q[:, h, :] @ k[:, kv, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            o[:, h, :] = s @ v[:, kv, :]
        return o.reshape(T, n_head * hd)

    def split_qkv(qkv, T):
        q = qkv[:, :d].reshape(T, n_head, hd)
        k = qkv[:, d:d + n_kv * hd].reshape(T, n_kv, hd)
        v = qkv[:, d + n_kv * hd:].reshape(T, n_kv, hd)
        return q, k, v

    def rms_with(eps):
        return lambda x, g: x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g

    def rope_neox_with(n_rot):
        """Rotates the halves of the first n_rot dims of each head (ggml "neox")."""
        def rope(x, pos, base):
            inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
            ang = pos[:, None] * inv[None, :]
            c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
            a, b = x[..., : n_rot // 2], x[..., n_rot // 2: n_rot]
            return np.concatenate([a * c - b * s, a * s + b * c, x[..., n_rot:]], axis=-1)
        return rope

    def gelu(x):
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))

    if arch == "phi3":
        eps = float(field("phi3.attention.layer_norm_rms_epsilon"))
        n_rot = int(field("phi3.rope.dimension_count", hd))
        base = float(field("phi3.rope.freq_base", 10000.0))

        rms, rope = rms_with(eps), rope_neox_with(n_rot)

        def rope_neox(x, pos):
            return rope(x, pos, base)

        def forward(ids):
            T = len(ids)
            pos = np.arange(T, dtype=np.float64)
            x = emb[ids]
            for i in range(n_layer):
                p = f"blk.{i}."
                h = rms(x, w(p + "attn_norm.weight"))
                q, k, v = split_qkv(h @ w(p + "attn_qkv.weight").T, T)
                o = attention(rope_neox(q, pos), rope_neox(k, pos), v, T)
                x = x + o @ w(p + "attn_output.weight").T
                h = rms(x, w(p + "ffn_norm.weight"))
                gu = h @ w(p + "ffn_up.weight").T
                g, u = gu[:, :ff], gu[:, ff:]
                x = x + ((g / (1.0 + np.exp(-g))) * u) @ w(p + "ffn_down.weight").T
            return rms(x, w("output_norm.weight")) @ out_w.T

    elif arch == "gpt2":
        eps = float(field("gpt2.attention.layer_norm_epsilon"))
        pos_emb = w("position_embd.weight")

        def ln(x, prefix):
            mu = x.mean(axis=-1, keepdims=True)
            var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
            return (x - mu) / np.sqrt(var + eps) * w(prefix + ".weight") + w(prefix + ".bias")

        def lin(x, prefix):
            return x @ w(prefix + ".weight").T + w(prefix + ".bias")

        def forward(ids):
            T = len(ids)
            x = emb[ids] + pos_emb[np.arange(T)]
            for i in range(n_layer):
                p = f"blk.{i}."
                q, k, v = split_qkv(lin(ln(x, p + "attn_norm"), p + "attn_qkv"), T)
                x = x + lin(attention(q, k, v, T), p + "attn_output")
                h = gelu(lin(ln(x, p + "ffn_norm"), p + "ffn_up"))
                x = x + lin(h, p + "ffn_down")
            return ln(x, "output_norm") @ out_w.T
    elif arch == "qwen3":
        eps = float(field("qwen3.attention.layer_norm_rms_epsilon"))
        base = float(field("qwen3.rope.freq_base", 10000.0))
        n_rot = hd

        rms, rope = rms_with(eps), rope_neox_with(n_rot)

        def rope_neox(x, pos):
            return rope(x, pos, base)

        def forward(ids):
            T = len(ids)
            pos = np.arange(T, dtype=np.float64)
            x = emb[ids]
            for i in range(n_layer):
                p = f"blk.{i}."
                h = rms(x, w(p + "attn_norm.weight"))
                # q/k: an RMS norm over each head, then rope (llama.cpp's qwen3 graph).
                q = rms((h @ w(p + "attn_q.weight").T).reshape(T, n_head, hd),
                        w(p + "attn_q_norm.weight"))
                k = rms((h @ w(p + "attn_k.weight").T).reshape(T, n_kv, hd),
                        w(p + "attn_k_norm.weight"))
                v = (h @ w(p + "attn_v.weight").T).reshape(T, n_kv, hd)
                o = attention(rope_neox(q, pos), rope_neox(k, pos), v, T)
                x = x + o @ w(p + "attn_output.weight").T
                h = rms(x, w(p + "ffn_norm.weight"))
                g = h @ w(p + "ffn_gate.weight").T
                u = h @ w(p + "ffn_up.weight").T
                x = x + ((g / (1.0 + np.exp(-g))) * u) @ w(p + "ffn_down.weight").T
            return rms(x, w("output_norm.weight")) @ out_w.T
    elif arch == "gemma3":
        eps = float(field("gemma3.attention.layer_norm_rms_epsilon"))
        base = float(field("gemma3.rope.freq_base", 10000.0))
        base_swa = float(field("gemma3.rope.freq_base_swa", 10000.0))
        window = int(field("gemma3.attention.sliding_window"))
        pattern = int(field("gemma3.attention.sliding_window_pattern", 6))
        n_rot = hd

        rms, rope_neox = rms_with(eps), rope_neox_with(n_rot)

        def forward(ids):
            T = len(ids)
            pos = np.arange(T, dtype=np.float64)
            x = emb[ids] * np.sqrt(d)
            for i in range(n_layer):
                p = f"blk.{i}."
                local = i % pattern < pattern - 1
                b = base_swa if local else base
                h = rms(x, w(p + "attn_norm.weight"))
                q = rms((h @ w(p + "attn_q.weight").T).reshape(T, n_head, hd),
                        w(p + "attn_q_norm.weight"))
                k = rms((h @ w(p + "attn_k.weight").T).reshape(T, n_kv, hd),
                        w(p + "attn_k_norm.weight"))
                v = (h @ w(p + "attn_v.weight").T).reshape(T, n_kv, hd)
                o = attention(rope_neox(q, pos, b), rope_neox(k, pos, b), v, T,
                              window if local else None)
                x = x + rms(o @ w(p + "attn_output.weight").T, w(p + "post_attention_norm.weight"))
                h = rms(x, w(p + "ffn_norm.weight"))
                g = gelu(h @ w(p + "ffn_gate.weight").T) * (h @ w(p + "ffn_up.weight").T)
                x = x + rms(g @ w(p + "ffn_down.weight").T, w(p + "post_ffw_norm.weight"))
            return rms(x, w("output_norm.weight")) @ out_w.T
    elif arch == "gpt-oss":
        eps = float(field("gpt-oss.attention.layer_norm_rms_epsilon"))
        base = float(field("gpt-oss.rope.freq_base"))
        window = int(field("gpt-oss.attention.sliding_window"))
        n_exp = int(field("gpt-oss.expert_count"))
        used = int(field("gpt-oss.expert_used_count"))
        factor = float(field("gpt-oss.rope.scaling.factor"))
        orig = int(field("gpt-oss.rope.scaling.original_context_length"))
        beta_fast = float(field("gpt-oss.rope.scaling.yarn_beta_fast", 32.0))
        beta_slow = float(field("gpt-oss.rope.scaling.yarn_beta_slow", 1.0))
        n_rot = hd
        rms = rms_with(eps)

        def yarn_cos_sin(pos):
            """ggml's rope_yarn (ggml-cpu ops.cpp) in float64, ext_factor 1: every pair's
            angle mixes interpolation (positions / factor) and extrapolation along a ramp
            between the correction dims of beta_fast and beta_slow turns over the original
            context; cosines and sines times 1 + 0.1 ln(factor)."""
            def corr_dim(turns):
                return n_rot * np.log(orig / (turns * 2 * np.pi)) / (2 * np.log(base))
            low = max(0.0, np.floor(corr_dim(beta_fast)))
            high = min(n_rot - 1.0, np.ceil(corr_dim(beta_slow)))
            i = np.arange(n_rot // 2, dtype=np.float64)
            extrap = pos[:, None] * base ** (-2.0 * i / n_rot)[None, :]
            interp = extrap / factor
            ramp = 1.0 - np.clip((i - low) / max(0.001, high - low), 0.0, 1.0)
            theta = interp * (1.0 - ramp) + extrap * ramp
            mscale = 1.0 + 0.1 * np.log(factor)
            return np.cos(theta)[:, None, :] * mscale, np.sin(theta)[:, None, :] * mscale

        def rope(x, c, s):
            a, b = x[..., : n_rot // 2], x[..., n_rot // 2: n_rot]
            return np.concatenate([a * c - b * s, a * s + b * c, x[..., n_rot:]], axis=-1)

        def attention_sinks(q, k, v, T, sinks, win):
            """Softmax over each head's scores and its sink logit (the sink adds to the
            denominator only); `win` keys back when set."""
            mask = np.triu(np.full((T, T), -np.inf), 1)
            if win is not None:
                mask += np.tril(np.full((T, T), -np.inf), -win)
            o = np.empty((T, n_head, hd))
            for h in range(n_head):
                kv = h // (n_head // n_kv)
                s = q[:, h, :] @ k[:, kv, :].T / np.sqrt(n_rot) + mask
                m = np.maximum(s.max(axis=-1, keepdims=True), sinks[h])
                e = np.exp(s - m)
                o[:, h, :] = (e @ v[:, kv, :]) / (e.sum(axis=-1, keepdims=True)
                                                  + np.exp(sinks[h] - m))
            return o.reshape(T, n_head * hd)

        def swiglu_oai(g, u, alpha=1.702, limit=7.0):
            g = np.minimum(g, limit)
            u = np.clip(u, -limit, limit)
            return g / (1.0 + np.exp(-alpha * g)) * (u + 1.0)

        routing = []

        def forward(ids):
            T = len(ids)
            pos = np.arange(T, dtype=np.float64)
            c, s = yarn_cos_sin(pos)
            x = emb[ids]
            chosen = []
            for i in range(n_layer):
                p = f"blk.{i}."
                sliding = i % 2 == 0
                h = rms(x, w(p + "attn_norm.weight"))
                q = (h @ w(p + "attn_q.weight").T + w(p + "attn_q.bias")).reshape(T, n_head, hd)
                k = (h @ w(p + "attn_k.weight").T + w(p + "attn_k.bias")).reshape(T, n_kv, hd)
                v = (h @ w(p + "attn_v.weight").T + w(p + "attn_v.bias")).reshape(T, n_kv, hd)
                o = attention_sinks(rope(q, c, s), rope(k, c, s), v, T,
                                    w(p + "attn_sinks.weight"), window if sliding else None)
                x = x + o @ w(p + "attn_output.weight").T + w(p + "attn_output.bias")
                h = rms(x, w(p + "post_attention_norm.weight"))
                logits = h @ w(p + "ffn_gate_inp.weight").T + w(p + "ffn_gate_inp.bias")
                top = np.argsort(-logits, axis=-1, kind="stable")[:, :used]
                chosen.append(top.tolist())
                gate, up, down = (w(p + f"ffn_{n}_exps.weight") for n in ("gate", "up", "down"))
                bg, bu, bd = (w(p + f"ffn_{n}_exps.bias") for n in ("gate", "up", "down"))
                out = np.zeros_like(x)
                for t in range(T):
                    sel = top[t]
                    wts = np.exp(logits[t, sel] - logits[t, sel].max())
                    wts /= wts.sum()
                    for e, we in zip(sel, wts):
                        a = swiglu_oai(gate[e] @ h[t] + bg[e], up[e] @ h[t] + bu[e])
                        out[t] += we * (down[e] @ a + bd[e])
                x = x + out
            routing.append(chosen)
            return rms(x, w("output_norm.weight")) @ out_w.T

        forward.routing = routing
    else:
        raise SystemExit(f"no numpy reference for {arch}")

    vocab = [str(t) for t in field("tokenizer.ggml.tokens")]
    return forward, vocab


def llama_cpp_logits(path: Path, prompts, routing=None):
    """Logits of every position of each prompt from llama.cpp, f32 KV cache, 2 threads; with
    a `RoutingCallback`, also its routing of each prompt."""
    import inspect
    import numpy as np
    import llama_cpp

    kwargs = dict(model_path=str(path), logits_all=True, n_ctx=256, n_batch=64,
                  n_ubatch=64, n_threads=2, n_threads_batch=2, seed=0, verbose=False)
    params = inspect.signature(llama_cpp.Llama.__init__).parameters
    # An f32 KV cache (GGML_TYPE_F32 = 0), as ours: llama.cpp's default f16 cache would add
    # its own rounding to the comparison.
    for k in ("type_k", "type_v"):
        if k in params:
            kwargs[k] = 0
    if routing is not None:
        routing.install()
    llm = llama_cpp.Llama(**kwargs)
    if routing is not None:
        routing.uninstall()
        routing.take()
    out, routes = [], []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[: len(ids)], dtype=np.float64))
        if routing is not None:
            routes.append(routing.take())
    return out, routes, llama_cpp.__version__


def tokenizer_golden(path: Path) -> None:
    """llama.cpp's ids for the corpus of make_greedy_goldens.py on the model's vocabulary."""
    import llama_cpp
    from make_greedy_goldens import corpus

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    cases = [{"text": t, "ids": llm.tokenize(t.encode(), add_bos=False, special=False)}
             for t in corpus()]
    # Harmony markup, tokenized with and without special-token parsing.
    harmony = ["<|channel|>final<|message|>Hi<|end|><|return|>",
               "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant",
               " to=functions.get_weather<|channel|>commentary json<|message|>{}<|call|>",
               "<|startoftext|><|endoftext|><|constrain|>json<|reserved_200000|>"]
    special = [{"text": t,
                "plain": llm.tokenize(t.encode(), add_bos=False, special=False),
                "parsed": llm.tokenize(t.encode(), add_bos=False, special=True)}
               for t in harmony]
    vocab = llm._model.vocab
    golden = {
        "generator": "scripts/goldens/make_tiny_model_goldens.py: llama.cpp's tokenizer through "
                     f"llama-cpp-python {llama_cpp.__version__} on the tiny gpt-oss model's "
                     "o200k vocabulary (no BOS, special tokens not parsed)",
        "add_bos": bool(llm._model.add_bos_token()),
        "eog": [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        "special": special,
        "cases": cases,
    }
    out = REPO / "tests" / "golden" / "tokenizer" / "gptoss-llama-cpp.json"
    out.write_text(json.dumps(golden, ensure_ascii=False) + "\n")
    print(f"wrote {out} ({len(cases)} texts)", flush=True)


class RoutingCallback:
    """llama.cpp's eval callback (`cb_eval` of the context parameters), collecting per layer
    the experts its router chose (`ffn_moe_topk-N`: [used, tokens] int32) and the gap
    between the last chosen and the first unchosen router logit (`ffn_moe_probs-N`: with
    gpt-oss's softmax-of-the-chosen gating, the biased logits themselves, renamed).
    llama-cpp-python's `Llama` builds its context from `llama_context_default_params()` of
    its low-level module `llama_cpp.llama_cpp`, so `install` wraps that function to set the
    callback."""

    def __init__(self, used):
        import ctypes
        import llama_cpp.llama_cpp as llama_cpp
        import numpy as np

        class Tensor(ctypes.Structure):
            # ggml.h's struct ggml_tensor, up to its name.
            _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p),
                        ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
                        ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                        ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10),
                        ("view_src", ctypes.c_void_p), ("view_offs", ctypes.c_size_t),
                        ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]

        self.used = used
        self.experts = {}
        self.margins = {}

        def callback(t, ask, _user):
            tensor = ctypes.cast(t, ctypes.POINTER(Tensor)).contents
            name = tensor.name.decode()
            wanted = name.startswith("ffn_moe_topk-") or (
                name.startswith("ffn_moe_probs-") and "(" not in name)
            if ask:
                return wanted
            if wanted:
                layer = int(name.rsplit("-", 1)[1])
                n0, n1 = tensor.ne[0], tensor.ne[1]
                kind = ctypes.c_int32 if name.startswith("ffn_moe_topk") else ctypes.c_float
                rows = []
                for j in range(n1):
                    addr = tensor.data + j * tensor.nb[1]
                    rows.append([kind.from_address(addr + i * tensor.nb[0]).value for i in range(n0)])
                if kind is ctypes.c_int32:
                    self.experts[layer] = rows
                else:
                    self.margins[layer] = [float(np.sort(r)[::-1][self.used - 1]
                                                 - np.sort(r)[::-1][self.used]) for r in rows]
            return True

        self.c_callback = llama_cpp.ggml_backend_sched_eval_callback(callback)
        defaults = llama_cpp.llama_context_default_params

        def with_callback():
            params = defaults()
            params.cb_eval = self.c_callback
            return params

        self.install = lambda: setattr(llama_cpp, "llama_context_default_params", with_callback)
        self.uninstall = lambda: setattr(llama_cpp, "llama_context_default_params", defaults)

    def take(self):
        """[layer][position] -> experts, and the margins alike, of the last evaluation."""
        n = len(self.experts)
        out = ([self.experts[i] for i in range(n)], [self.margins[i] for i in range(n)])
        self.experts, self.margins = {}, {}
        return out


def compare(a, b):
    import numpy as np
    max_abs = float(np.abs(a - b).max())
    cos = min(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))) for x, y in zip(a, b))
    top1 = int((a.argmax(axis=-1) == b.argmax(axis=-1)).sum())
    return {"max_abs": round(max_abs, 6), "min_cos": round(cos, 8), "top1_agree": top1,
            "positions": int(a.shape[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=ARCHS, action="append")
    ap.add_argument("--reference", choices=["llama.cpp", "numpy"], default="llama.cpp")
    ap.add_argument("--models-dir", type=Path,
                    help="read tiny-<arch>.gguf from here instead of writing them")
    args = ap.parse_args()
    ensure_venv(args.reference)
    import numpy as np

    tmp = None
    models = args.models_dir
    if models is None:
        tmp = tempfile.TemporaryDirectory()
        models = Path(tmp.name)
        write_models(models)

    for arch in args.arch or ARCHS:
        path = models / f"tiny-{arch}.gguf"
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        forward, vocab = numpy_forward(path)
        index = {t: i for i, t in enumerate(vocab)}
        n_vocab = len(vocab)
        prompts = {
            "pieces": [index[p] for p in PROMPT_PIECES[arch]],
            "raw": RAW_PROMPTS[arch],
            "long": [(i * 7919 + 13) % n_vocab for i in range(N_LONG)],
        }
        ref_np = [forward(np.array(ids)) for ids in prompts.values()]
        np_routes = getattr(forward, "routing", None)
        numpy_generator = f"numpy float64 over gguf-py {GGUF_VERSION} dequantized weights"
        write_golden(f"{arch}-numpy", arch, sha, n_vocab, numpy_generator, None, prompts, ref_np,
                     np_routes and [(r, None) for r in np_routes])
        if args.reference == "llama.cpp":
            used = np_routes and len(np_routes[0][0][0])
            routing = RoutingCallback(used) if np_routes else None
            ref, routes, version = llama_cpp_logits(path, list(prompts.values()), routing)
            generator = (f"llama.cpp through llama-cpp-python {version} (CPU, 2 threads, "
                         "f32 KV cache, logits_all)")
            check = compare(np.concatenate(ref), np.concatenate(ref_np))
            if np_routes:
                same = sum(sorted(a) == sorted(b)
                           for (lc, _), nr in zip(routes, np_routes)
                           for la, na in zip(lc, nr) for a, b in zip(la, na))
                total = sum(len(l) for nr in np_routes for l in nr)
                check["routing_agree"] = f"{same}/{total}"
                check["min_routing_margin"] = round(min(
                    m for _, ms in routes for layer in ms for m in layer), 6)
            print(f"{arch}: llama.cpp vs numpy float64: {check}", flush=True)
            write_golden(arch, arch, sha, n_vocab, generator, check, prompts, ref,
                         routes or None)
            if arch == "gpt-oss":
                tokenizer_golden(path)


def write_golden(name, arch, sha, n_vocab, generator, check, prompts, ref, routes=None) -> None:
    """The golden file; with `routes` (per prompt: ([layer][position] experts, margins or
    None)), each prompt also records its routing."""
    import numpy as np
    stride = max(1, n_vocab // N_SUBSAMPLE)
    golden = {
        "generator": f"scripts/goldens/make_tiny_model_goldens.py: {generator}",
        "architecture": arch,
        "model_sha256": sha,
        "n_vocab": n_vocab,
        "subsample_stride": stride,
        "reference_vs_numpy_float64": check,
        "prompts": [],
    }
    for (pname, ids), logits in zip(prompts.items(), ref):
        positions = []
        for l in logits:
            top = np.argsort(-l, kind="stable")[:TOP_K]
            m = l.max()
            positions.append({
                "top_ids": [int(i) for i in top],
                "top_logits": [round(float(l[i]), 5) for i in top],
                "mean": round(float(l.mean()), 6),
                "std": round(float(l.std()), 6),
                "logsumexp": round(float(m + np.log(np.exp(l - m).sum())), 6),
                "subsample": [round(float(v), 4) for v in l[::stride][:N_SUBSAMPLE]],
            })
        entry = {"name": pname, "ids": [int(i) for i in ids], "positions": positions}
        if routes:
            experts, margins = routes[len(golden["prompts"])]
            entry["experts"] = [[[int(e) for e in pos] for pos in layer] for layer in experts]
            if margins is not None:
                entry["routing_margins"] = [[round(m, 5) for m in layer] for layer in margins]
        golden["prompts"].append(entry)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{name}.json"
    out.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)", flush=True)


if __name__ == "__main__":
    main()
