#!/usr/bin/env python3
"""Dequantization goldens for every tensor of the two fixture models, made by gguf-py.

The Rust test `crates/worker-gguf/tests/dequant_goldens.rs` dequantizes the same tensors with
`worker_gguf::dequantize` and compares them with what this script writes: gguf-py (PyPI
`gguf==0.19.0`, numpy dequantizers written independently of ggml's C code) is the reference.

For each tensor the golden holds its name, ggml type, element count, the sha256 of the f32
result as little-endian bytes (the bit-exact check), the f64 sum, sum of absolute values and
sum of squares (numpy's pairwise sums, so compared with a tolerance), and 16 sampled values at
deterministic indices stored as f32 bit patterns (so a mismatch can be measured in ulps).

Run it from the repository root (the models come from `cargo xtask fetch`):

    python3 scripts/goldens/make_dequant_goldens.py

It uses the fixture cache `$WORKER_FIXTURES_DIR` (default `~/.cache/llama-orch-worker`): models
from `models/`, and the virtual environment `venv/`, which it creates with `gguf==0.19.0` and
numpy when missing and then re-runs itself inside. Output: `tests/golden/dequant/<model>.json`.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

GGUF_VERSION = "0.19.0"
MODELS = [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
]
N_SAMPLES = 16


def fixtures_dir() -> Path:
    env = os.environ.get("WORKER_FIXTURES_DIR")
    return Path(env) if env else Path.home() / ".cache" / "llama-orch-worker"


def ensure_venv() -> None:
    """Re-executes this script in the fixture venv unless gguf==GGUF_VERSION is importable."""
    try:
        import gguf  # noqa: F401
        from importlib.metadata import version

        if version("gguf") == GGUF_VERSION:
            return
    except ImportError:
        pass
    venv = fixtures_dir() / "venv"
    python = venv / "bin" / "python"
    if os.environ.get("WORKER_GOLDENS_IN_VENV"):
        sys.exit(f"gguf=={GGUF_VERSION} is not importable from {python}")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"gguf=={GGUF_VERSION}", "numpy"],
        check=True,
    )
    os.environ["WORKER_GOLDENS_IN_VENV"] = "1"
    os.execv(str(python), [str(python), *sys.argv])


def sample_indices(n: int) -> list[int]:
    """First, last, and 14 indices spread over the tensor with a fixed odd stride."""
    if n <= N_SAMPLES:
        return list(range(n))
    idx = {0, n - 1}
    k = 1
    while len(idx) < N_SAMPLES:
        idx.add((k * 2654435761 + k * k * 40503) % n)
        k += 1
    return sorted(idx)


def main() -> None:
    ensure_venv()
    import numpy as np
    import gguf
    from gguf.quants import dequantize

    repo = Path(__file__).resolve().parents[2]
    out_dir = repo / "tests" / "golden" / "dequant"
    out_dir.mkdir(parents=True, exist_ok=True)
    for model in MODELS:
        path = fixtures_dir() / "models" / model
        if not path.exists():
            sys.exit(f"{path} is missing; run `cargo xtask fetch`")
        reader = gguf.GGUFReader(str(path))
        tensors = []
        for t in reader.tensors:
            values = dequantize(t.data, t.tensor_type)
            flat = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
            assert flat.size == int(t.n_elements), t.name
            as64 = flat.astype(np.float64)
            tensors.append(
                {
                    "name": t.name,
                    "type": t.tensor_type.name,
                    "n_elements": int(t.n_elements),
                    "sha256": hashlib.sha256(flat.tobytes()).hexdigest(),
                    "sum": float(np.sum(as64)),
                    "sum_abs": float(np.sum(np.abs(as64))),
                    "sum_sq": float(np.sum(as64 * as64)),
                    "samples": [
                        [i, f"{int(flat.view(np.uint32)[i]):08x}"] for i in sample_indices(flat.size)
                    ],
                }
            )
            print(f"{model}: {t.name} {t.tensor_type.name} {t.n_elements}", file=sys.stderr)
        golden = {
            "generator": "scripts/goldens/make_dequant_goldens.py",
            "reference": f"gguf=={gguf_version()} gguf.quants.dequantize, numpy=={np.__version__}",
            "model": model,
            "note": "sha256 is over the little-endian f32 bytes in file order; samples are "
            "[index, f32 bits as hex]; sums are numpy float64 pairwise sums",
            "tensors": tensors,
        }
        out = out_dir / (model.removesuffix(".gguf") + ".json")
        out.write_text(json.dumps(golden, indent=1) + "\n")
        print(f"wrote {out} ({out.stat().st_size} bytes, {len(tensors)} tensors)", file=sys.stderr)


def gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


if __name__ == "__main__":
    main()
