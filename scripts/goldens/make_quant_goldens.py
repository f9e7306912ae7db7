#!/usr/bin/env python3
"""Block-format goldens made by gguf-py for types the fixture models do not contain.

`crates/worker-gguf/tests/quant_goldens.rs` checks `worker_gguf::quantize` and
`worker_gguf::dequantize` against these files, in both directions.

For every type gguf-py 0.19.0 can quantize (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4,
TQ1_0, TQ2_0) the golden holds seeded f32 input, gguf-py's bytes, and gguf-py's dequantization
of those bytes. The input mixes Gaussian blocks of different scales with edge cases: an
all-zero block, a constant block, a single outlier, and a tie between +max and -max.

For types gguf-py can dequantize but not quantize (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL,
IQ4_XS) the golden holds seeded random block bytes, with the f16 scale fields overwritten by
finite values of sensible size, and gguf-py's dequantization of them. The IQ1/IQ2/IQ3 grid
formats are left out: this crate has no dequantizer for them.

Everything is stored as hex of little-endian bytes (f32 values too), so nothing is lost to
decimal formatting. Run from the repository root:

    python3 scripts/goldens/make_quant_goldens.py

It re-runs itself in the fixture venv (`$WORKER_FIXTURES_DIR/venv`, default
`~/.cache/llama-orch-worker/venv`), creating it with `gguf==0.19.0` and numpy when missing.
Output: `tests/golden/quants/<TYPE>.json`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

GGUF_VERSION = "0.19.0"
SEED = 20240601

# Types gguf-py can quantize: number of blocks of input.
QUANTIZABLE = {
    "F16": 64,
    "BF16": 64,
    "Q4_0": 8,
    "Q4_1": 8,
    "Q5_0": 8,
    "Q5_1": 8,
    "Q8_0": 8,
    "MXFP4": 8,
    "TQ1_0": 2,
    "TQ2_0": 2,
}

# Dequantize-only types: number of blocks, and byte offsets of their f16 scale fields.
DEQUANT_ONLY = {
    "Q2_K": (3, [80, 82]),
    "Q3_K": (3, [108]),
    "Q4_K": (3, [0, 2]),
    "Q5_K": (3, [0, 2]),
    "Q6_K": (3, [208]),
    "IQ4_NL": (8, [0]),
    "IQ4_XS": (3, [0]),
}


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


def make_input(np, rng, block: int, n_blocks: int):
    """Gaussian blocks of varied scale, then edge-case blocks in place of the last ones."""
    scales = 10.0 ** rng.uniform(-3, 1, size=(n_blocks, 1))
    x = (rng.standard_normal((n_blocks, block)) * scales).astype(np.float32)
    if n_blocks >= 4:
        x[-1] = 0.0  # all zero: scale 0 must not divide by zero
        x[-2] = np.float32(0.37)  # constant block
        x[-3] = rng.standard_normal(block).astype(np.float32) * np.float32(0.01)
        x[-3, block // 3] = np.float32(-5.5)  # one outlier, negative
        x[-4] = rng.standard_normal(block).astype(np.float32) * np.float32(0.1)
        x[-4, 1] = np.float32(2.0)  # +max and -max tie: the first one wins
        x[-4, block - 2] = np.float32(-2.0)
    return x.reshape(-1)


def main() -> None:
    ensure_venv()
    import numpy as np
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize
    from importlib.metadata import version

    repo = Path(__file__).resolve().parents[2]
    out_dir = repo / "tests" / "golden" / "quants"
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    reference = f"gguf=={version('gguf')} gguf.quants, numpy=={np.__version__}"

    def write(name: str, golden: dict) -> None:
        golden = {"generator": "scripts/goldens/make_quant_goldens.py", "reference": reference, **golden}
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(golden, indent=1) + "\n")
        print(f"wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)

    for name, n_blocks in QUANTIZABLE.items():
        qtype = T[name]
        block, _ = GGML_QUANT_SIZES[qtype]
        x = make_input(np, rng, max(block, 32), n_blocks * block // max(block, 32))
        if name == "F16":
            # Beyond the f16 range and below its subnormals: overflow to inf, flush to zero.
            x[:4] = np.array([70000.0, -1e6, 1e-8, -3e-8], dtype=np.float32)
        q = np.ascontiguousarray(quantize(x.reshape(1, -1), qtype)).view(np.uint8).reshape(-1)
        y = np.ascontiguousarray(dequantize(q.reshape(1, -1), qtype), dtype="<f4").reshape(-1)
        write(
            name,
            {
                "type": name,
                "mode": "quantize",
                "n_elements": int(x.size),
                "input_f32": x.astype("<f4").tobytes().hex(),
                "bytes": q.tobytes().hex(),
                "dequant_f32": y.tobytes().hex(),
            },
        )

    for name, (n_blocks, f16_offsets) in DEQUANT_ONLY.items():
        qtype = T[name]
        block, type_size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
        for off in f16_offsets:
            mag = 10.0 ** rng.uniform(-4, -1, size=n_blocks)
            sign = rng.choice([-1.0, 1.0], size=n_blocks)
            raw[:, off : off + 2] = (mag * sign).astype("<f2").view(np.uint8).reshape(n_blocks, 2)
        q = raw.reshape(-1)
        y = np.ascontiguousarray(dequantize(q.reshape(1, -1), qtype), dtype="<f4").reshape(-1)
        write(
            name,
            {
                "type": name,
                "mode": "dequantize",
                "n_elements": int(n_blocks * block),
                "bytes": q.tobytes().hex(),
                "dequant_f32": y.tobytes().hex(),
            },
        )


if __name__ == "__main__":
    main()
