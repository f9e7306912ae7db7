"""Writes tests/golden/gguf/gguf_py_written.gguf with the `gguf` Python package (gguf-py, the
reference writer that llama.cpp's converters use), and its expected content as JSON beside it.

The Rust test `crates/worker-gguf/tests/gguf_py_golden.rs` reads the file, checks every value
against the JSON, and rewrites it with our writer byte for byte.

Run (from the repository root):
    python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf==0.19.0 numpy
    /tmp/gguf-venv/bin/python scripts/goldens/make_gguf_writer_golden.py
"""

import json
import pathlib

import gguf
import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "golden" / "gguf"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "gguf_py_written.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint8("test.u8", 250)
    w.add_int8("test.i8", -120)
    w.add_uint16("test.u16", 65000)
    w.add_int16("test.i16", -32000)
    w.add_uint32("llama.block_count", 2)
    w.add_int32("test.i32", -2_000_000_000)
    w.add_float32("test.f32", 0.1)
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float64("test.f64", 1e-300)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo ✓ 日本")
    w.add_array("test.arr_str", ["a", "", "ü"])
    w.add_array("test.arr_int", [1, 2, 3])
    w.add_array("test.arr_float", [0.5, -1.25])
    w.add_array("test.arr_bool", [True, False, True])
    rng = np.random.default_rng(7)
    f32 = rng.standard_normal((3, 32)).astype(np.float32)
    f16 = rng.standard_normal((2, 64)).astype(np.float16)
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("t.f32", f32)
    w.add_tensor("t.f16", f16)
    w.add_tensor("t.q8_0", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    expected = {
        "metadata": {
            "general.architecture": ["string", "llama"],
            "test.u8": ["uint8", 250],
            "test.i8": ["int8", -120],
            "test.u16": ["uint16", 65000],
            "test.i16": ["int16", -32000],
            "llama.block_count": ["uint32", 2],
            "test.i32": ["int32", -2_000_000_000],
            "test.f32": ["float32", float(np.float32(0.1))],
            "test.u64": ["uint64", 2**63 + 5],
            "test.i64": ["int64", -(2**62)],
            "test.f64": ["float64", 1e-300],
            "test.bool": ["bool", True],
            "test.string": ["string", "héllo ✓ 日本"],
            "test.arr_str": ["[string]", ["a", "", "ü"]],
            "test.arr_int": ["[int32]", [1, 2, 3]],
            "test.arr_float": ["[float32]", [0.5, -1.25]],
            "test.arr_bool": ["[bool]", [True, False, True]],
        },
        "tensors": [
            {"name": "t.f32", "type": "F32", "shape": [32, 3], "values": f32.flatten().tolist()},
            {"name": "t.f16", "type": "F16", "shape": [64, 2], "values": f16.astype(np.float32).flatten().tolist()},
            {
                "name": "t.q8_0",
                "type": "Q8_0",
                "shape": [64, 2],
                "values": gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0).flatten().tolist(),
            },
        ],
    }
    # Check our understanding with gguf-py's own reader before writing the expectation.
    r = gguf.GGUFReader(str(path))
    assert [t.name for t in r.tensors] == [t["name"] for t in expected["tensors"]]
    (OUT / "gguf_py_written.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
