"""Greedy continuations of the fixture models by llama.cpp (through llama-cpp-python 0.3.36,
built from the sdist that `cargo xtask fetch` downloads), written to
tests/golden/greedy/<model>.json for `crates/worker-engine/tests/llama_cpp_goldens.rs`.

For every prompt it records llama.cpp's prompt token ids (special tokens parsed, BOS only when
the model asks for it, as llama.cpp's CLI and server do), then 64 greedy tokens (fewer if an
end-of-generation token comes first), and at each step the gap between the top two logits, so
the Rust test can tell a near-tie from a bug at the first difference.

For Gemma-3-270M it also writes `tests/golden/logits/gemma3-llama-cpp.json`: llama.cpp's
logits at every position of its first prompts (top-10, summary statistics and a strided
subsample, the format of `crates/worker-models/tests/support/logits.rs`), with an f32 KV
cache as ours in that test.

And `tests/golden/tokenizer/gemma3-llama-cpp.json`: llama.cpp's token ids for a varied
corpus (every llama.cpp vocab test text, the prompts, and 400 generated strings mixing
scripts, digits, code, emoji and whitespace runs), tokenized as plain text (no BOS, special
tokens not parsed), for `crates/worker-tokenizer/tests/gemma3.rs`.

`--model NAME` (repeatable) limits the run to those fixture files.

Run (from the repository root, after `cargo xtask fetch`):
    python3 -m venv ~/.cache/llama-orch-worker/llama-venv
    ~/.cache/llama-orch-worker/llama-venv/bin/pip install cmake==4.4.5 ninja==1.13.2 \
        scikit-build-core==1.1.2 numpy typing-extensions diskcache jinja2
    CMAKE_ARGS="-DGGML_NATIVE=ON" ~/.cache/llama-orch-worker/llama-venv/bin/pip install \
        --no-build-isolation ~/.cache/llama-orch-worker/downloads/pypi/llama_cpp_python-0.3.36.tar.gz
    ~/.cache/llama-orch-worker/llama-venv/bin/python scripts/goldens/make_greedy_goldens.py
"""

import argparse
import json
import os
import pathlib

import llama_cpp
import numpy as np
from llama_cpp import Llama

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = pathlib.Path(os.environ.get("WORKER_FIXTURES_DIR", pathlib.Path.home() / ".cache" / "llama-orch-worker"))
MODELS = [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
    "gemma-3-270m-q4_k_m.gguf",
]
GEMMA3 = "gemma-3-270m-q4_k_m.gguf"
STEPS = 64
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    ",
    "The three primary colors are",
    "Water boils at a temperature of",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nName a fruit that is yellow.<|im_end|>\n<|im_start|>assistant\n",
    "import numpy as np\n\n# Compute the mean of a list\ndef mean(xs):",
    "The quick brown fox",
    "In 1969, the first humans landed on",
    "Translate to French: 'Good morning' ->",
    "1, 2, 3, 4, 5,",
]
# Gemma's own chat turns replace the ChatML ones.
GEMMA_CHAT = [
    "<start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nName a fruit that is yellow.<end_of_turn>\n<start_of_turn>model\n",
]
LOGIT_PROMPTS = 5
TOP_K = 10
N_SUBSAMPLE = 256


def prompts_for(name: str) -> list[str]:
    if name == GEMMA3:
        return [p for p in PROMPTS if "<|im_start|>" not in p] + GEMMA_CHAT
    return PROMPTS


def corpus() -> list[str]:
    texts = []
    for inp in sorted((FIXTURES / "vocab").glob("*.inp")):
        texts += inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    texts += PROMPTS + GEMMA_CHAT
    pieces = ["Hello", "world", "naïve", "café", "Äpfel", "нещо", "на", "Български", "日本語",
              "テキスト", "中文", "한국어", "العربية", "हिन्दी", "ελληνικά", "🦙", "🚀🔥", "👩‍💻",
              "def", "fn", "main()", "{", "}", "x += 1;", "<html>", "</div>", "http://a.b/c?d=e",
              "3.14159", "1,000,000", "2026-12-04", "'s", "don't", "I'm", "...", "!!", "--",
              "\t", "\n", "  ", "   ", "\r\n", "<start_of_turn>", "<b>", "▁", "ÿ", "\u00a0",
              "Wolfgang", "Amadeus", "supercalifragilistic", "A", "a", "0", "00", "000"]
    seps = [" ", "", "  ", "\n", "\t", " \n ", ", "]
    state = 12345
    def rnd(n):
        nonlocal state
        state = (state * 1103515245 + 12345) % (1 << 31)
        return state % n
    for _ in range(400):
        k = 1 + rnd(8)
        s = "".join(pieces[rnd(len(pieces))] + seps[rnd(len(seps))] for _ in range(k))
        texts.append(s)
    seen, out = set(), []
    for t in texts:
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def tokenizer_golden(llm: Llama, name: str) -> None:
    cases = [{"text": t, "ids": llm.tokenize(t.encode(), add_bos=False, special=False)}
             for t in corpus()]
    golden = {
        "generator": "scripts/goldens/make_greedy_goldens.py: llama.cpp's tokenizer through "
                     f"llama-cpp-python {llama_cpp.__version__} (no BOS, special tokens not parsed)",
        "model": name,
        "cases": cases,
    }
    out = ROOT / "tests" / "golden" / "tokenizer" / "gemma3-llama-cpp.json"
    out.write_text(json.dumps(golden, ensure_ascii=False) + "\n")
    print(f"wrote {out} ({len(cases)} texts)")


def logits_golden(name: str, prompts: list[list[int]]) -> None:
    """llama.cpp's logits at every position of `prompts`, f32 KV cache, one batch each."""
    llm = Llama(model_path=str(FIXTURES / "models" / name), n_ctx=256, n_batch=256,
                n_ubatch=256, n_threads=2, logits_all=True, type_k=0, type_v=0,
                verbose=False)
    n_vocab = llm.n_vocab()
    stride = max(1, n_vocab // N_SUBSAMPLE)
    golden = {
        "generator": "scripts/goldens/make_greedy_goldens.py: llama.cpp through llama-cpp-python "
                     f"{llama_cpp.__version__} (CPU, 2 threads, f32 KV cache, logits_all)",
        "model": name,
        "n_vocab": n_vocab,
        "subsample_stride": stride,
        "prompts": [],
    }
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        positions = []
        for l in np.array(llm.scores[: len(ids)], dtype=np.float64):
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
        golden["prompts"].append({"ids": [int(i) for i in ids], "positions": positions})
    out = ROOT / "tests" / "golden" / "logits" / "gemma3-llama-cpp.json"
    out.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def greedy(llm: Llama, prompt_ids: list[int], eog: set[int]) -> tuple[list[int], list[float]]:
    llm.reset()
    llm.eval(prompt_ids)
    ids, gaps = [], []
    for _ in range(STEPS):
        logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top2 = np.argsort(logits)[-2:]
        best = int(top2[1])
        gaps.append(float(logits[top2[1]] - logits[top2[0]]))
        ids.append(best)
        if best in eog:
            break
        llm.eval([best])
    return ids, gaps


def main() -> None:
    out_dir = ROOT / "tests" / "golden" / "greedy"
    out_dir.mkdir(parents=True, exist_ok=True)
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=MODELS, action="append")
    args = ap.parse_args()
    for name in args.model or MODELS:
        llm = Llama(
            model_path=str(FIXTURES / "models" / name),
            n_ctx=512,
            n_batch=512,
            n_threads=2,
            logits_all=True,
            verbose=False,
        )
        # End-of-generation tokens as llama.cpp classifies them.
        vocab = llm._model.vocab
        eog = {t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        cases = []
        for prompt in prompts_for(name):
            prompt_ids = llm.tokenize(prompt.encode(), add_bos=llm._model.add_bos_token(), special=True)
            ids, gaps = greedy(llm, prompt_ids, eog)
            cases.append({"prompt": prompt, "prompt_ids": prompt_ids, "ids": ids, "top2_gaps": [round(g, 4) for g in gaps]})
            print(f"{name}: {prompt[:30]!r}: {len(ids)} tokens, {llm.detokenize(ids)[:60]!r}")
        golden = {
            "generator": "llama-cpp-python 0.3.36 (vendored llama.cpp), CPU, greedy, prompt evaluated in one batch",
            "model": name,
            "eog_ids": sorted(eog),
            "cases": cases,
        }
        out = out_dir / (name.removesuffix(".gguf") + ".json")
        out.write_text(json.dumps(golden) + "\n")
        print(f"wrote {out}")
        if name == GEMMA3:
            tokenizer_golden(llm, name)
            del llm
            logits_golden(name, [c["prompt_ids"] for c in cases[:LOGIT_PROMPTS]])


if __name__ == "__main__":
    main()
