#!/usr/bin/env bash
# Prepares gpu-bin/ for scripts/gpu-check.sh on the development machine: release builds of
# worker-orcd and worker-cli (stripped, so they travel within the device call's size limit)
# and the descriptions of the fixtures (SmolLM2, Qwen2.5, and Gemma 3 for the experimental
# `models` path: metadata and tensor table, no tensor data) that
# `worker-cli synth` expands into random-weight copies on the device. Then, on the device:
#
#   run(command="scripts/gpu-check.sh", carry=["gpu-bin"])
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_BIN:-gpu-bin}
MODELS=${WORKER_FIXTURES_DIR:-$HOME/.cache/llama-orch-worker}/models
cargo build --release --config profile.release.debug=0 -p worker-orcd -p worker-cli
mkdir -p "$OUT"
cp target/release/worker-orcd target/release/worker-cli "$OUT/"
strip "$OUT/worker-orcd" "$OUT/worker-cli"
"$OUT/worker-cli" describe "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" "$OUT/smollm2.desc.gguf"
"$OUT/worker-cli" describe "$MODELS/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf" "$OUT/qwen.desc.gguf"
"$OUT/worker-cli" describe "$MODELS/gemma-3-270m-q4_k_m.gguf" "$OUT/gemma3.desc.gguf"
du -sh "$OUT"
ls -la "$OUT"
