#!/usr/bin/env python3
"""Reference logits for the tiny random-weight phi3, gpt2, qwen3 and gemma3 models, from llama.cpp.

What it does:
1. Writes the tiny models with the worker's own GGUF writer
   (`cargo run -p worker-models --example write_tiny_models -- DIR`; the same bytes the Rust
   tests build in memory, from `crates/worker-models/tests/support/tiny_arch.rs`), on
   llama.cpp's real gpt-2, phi-3, qwen2 and llama-spm vocabularies. Or reads them from `--models-dir`.
2. Runs each through llama.cpp (llama-cpp-python 0.3.36, CPU, `logits_all=True`, f32 KV
   cache) on a few fixed token-id prompts.
3. Also runs an independent numpy float64 forward pass over gguf-py's dequantized weights
   and reports how far llama.cpp is from it (a check of the reference itself). With
   `--reference numpy` only the numpy goldens are written (no llama.cpp needed).

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
ARCHS = ["phi3", "gpt2", "qwen3", "gemma3"]
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
}
RAW_PROMPTS = {
    "gpt2": [50256, 0, 1, 50000, 31337, 42, 198, 50255],
    "phi3": [1, 32000, 32010, 0, 2, 31999, 12345, 13],
    "qwen3": [151643, 0, 1, 151000, 31337, 42, 198, 100000],
    "gemma3": [1, 0, 2, 31999, 12345, 13, 29871, 100, 7, 8, 9, 10],
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
    else:
        raise SystemExit(f"no numpy reference for {arch}")

    vocab = [str(t) for t in field("tokenizer.ggml.tokens")]
    return forward, vocab


def llama_cpp_logits(path: Path, prompts):
    """Logits of every position of each prompt from llama.cpp, f32 KV cache, 2 threads."""
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
    llm = llama_cpp.Llama(**kwargs)
    out = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[: len(ids)], dtype=np.float64))
    return out, llama_cpp.__version__


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
        numpy_generator = f"numpy float64 over gguf-py {GGUF_VERSION} dequantized weights"
        write_golden(f"{arch}-numpy", arch, sha, n_vocab, numpy_generator, None, prompts, ref_np)
        if args.reference == "llama.cpp":
            ref, version = llama_cpp_logits(path, list(prompts.values()))
            generator = (f"llama.cpp through llama-cpp-python {version} (CPU, 2 threads, "
                         "f32 KV cache, logits_all)")
            check = compare(np.concatenate(ref), np.concatenate(ref_np))
            print(f"{arch}: llama.cpp vs numpy float64: {check}", flush=True)
            write_golden(arch, arch, sha, n_vocab, generator, check, prompts, ref)


def write_golden(name, arch, sha, n_vocab, generator, check, prompts, ref) -> None:
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
        golden["prompts"].append({"name": pname, "ids": [int(i) for i in ids],
                                  "positions": positions})
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{name}.json"
    out.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)", flush=True)


if __name__ == "__main__":
    main()
