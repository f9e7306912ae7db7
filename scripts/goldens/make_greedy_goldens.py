"""Greedy continuations of both fixture models by llama.cpp (through llama-cpp-python 0.3.36,
built from the sdist that `cargo xtask fetch` downloads), written to
tests/golden/greedy/<model>.json for `crates/worker-engine/tests/llama_cpp_goldens.rs`.

For every prompt it records llama.cpp's prompt token ids (special tokens parsed, BOS only when
the model asks for it, as llama.cpp's CLI and server do), then 64 greedy tokens (fewer if an
end-of-generation token comes first), and at each step the gap between the top two logits, so
the Rust test can tell a near-tie from a bug at the first difference.

Run (from the repository root, after `cargo xtask fetch`):
    python3 -m venv ~/.cache/llama-orch-worker/llama-venv
    ~/.cache/llama-orch-worker/llama-venv/bin/pip install cmake==4.4.5 ninja==1.13.2 \
        scikit-build-core==1.1.2 numpy typing-extensions diskcache jinja2
    CMAKE_ARGS="-DGGML_NATIVE=ON" ~/.cache/llama-orch-worker/llama-venv/bin/pip install \
        --no-build-isolation ~/.cache/llama-orch-worker/downloads/pypi/llama_cpp_python-0.3.36.tar.gz
    ~/.cache/llama-orch-worker/llama-venv/bin/python scripts/goldens/make_greedy_goldens.py
"""

import json
import os
import pathlib

import llama_cpp
import numpy as np
from llama_cpp import Llama

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = pathlib.Path(os.environ.get("WORKER_FIXTURES_DIR", pathlib.Path.home() / ".cache" / "llama-orch-worker"))
MODELS = ["SmolLM2-135M-Instruct.Q4_1.gguf", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"]
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
    for name in MODELS:
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
        for prompt in PROMPTS:
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


if __name__ == "__main__":
    main()
