"""Makes tests/golden/inspect/<model>.json from gguf-py's own view of the fixture models and of
the tiny gpt-oss model (written by `cargo run -p worker-models --example write_tiny_models`;
its golden records the sha256 of the bytes it describes):
`gguf-dump --json` (the package's script) for every metadata key, its type and scalar value,
and gguf-py's GGUFReader for array lengths/ends and each tensor's type, shape, data offset and
size. `crates/worker-gguf/../bin/worker-cli/tests/inspect_goldens.rs` checks that
`worker-cli inspect --json` agrees on all of it.

Run (from the repository root, after `cargo xtask fetch`):
    python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf==0.19.0 numpy
    /tmp/gguf-venv/bin/python scripts/goldens/make_inspect_goldens.py [FIXTURES_DIR]
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import gguf

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
    "gemma-3-270m-q4_k_m.gguf",
]
# Tiny random-weight models with no released file: MoE tensors of three dimensions, MXFP4.
TINY = ["tiny-gpt-oss.gguf"]
ENDS = 3  # elements kept from each end of an array


def plain(v):
    """numpy scalars and bytes to JSON values."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8")
    return v


def main() -> None:
    fixtures = pathlib.Path(
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get("WORKER_FIXTURES_DIR", pathlib.Path.home() / ".cache" / "llama-orch-worker")
    )
    out_dir = ROOT / "tests" / "golden" / "inspect"
    out_dir.mkdir(parents=True, exist_ok=True)
    dump = pathlib.Path(sys.executable).with_name("gguf-dump")
    tiny = tempfile.TemporaryDirectory()
    subprocess.check_call(["cargo", "run", "-q", "-p", "worker-models", "--example",
                           "write_tiny_models", "--", tiny.name], cwd=ROOT)
    paths = [fixtures / "models" / n for n in MODELS] + [pathlib.Path(tiny.name) / n for n in TINY]
    for path in paths:
        name = path.name
        dumped = json.loads(subprocess.check_output([str(dump), "--json", str(path)]))
        reader = gguf.GGUFReader(str(path))
        metadata = []
        for key, entry in dumped["metadata"].items():
            if key.startswith("GGUF."):
                continue  # header fields gguf-dump shows as pseudo-keys
            field = reader.fields[key]
            item = {"key": key, "type": entry["type"].lower()}
            if entry["type"] == "ARRAY":
                values = [plain(field.contents(i)) for i in range(len(field.data))]
                item["element_type"] = entry["array_types"][0].lower()
                item["count"] = len(values)
                item["head"] = values[:ENDS]
                item["tail"] = values[-ENDS:] if len(values) > ENDS else []
            else:
                item["value"] = entry["value"]
            metadata.append(item)
        tensors = [
            {
                "name": t.name,
                "type": t.tensor_type.name,
                "shape": [int(d) for d in t.shape],
                "offset": int(t.data_offset - reader.data_offset),
                "bytes": int(t.n_bytes),
            }
            for t in reader.tensors
        ]
        golden = {
            "version": dumped["metadata"]["GGUF.version"]["value"],
            "model_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "data_offset": int(reader.data_offset),
            "metadata": metadata,
            "tensors": tensors,
        }
        out = out_dir / (name.removesuffix(".gguf") + ".json")
        out.write_text(json.dumps(golden, ensure_ascii=False, indent=0) + "\n")
        print(f"{out}: {len(metadata)} keys, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
