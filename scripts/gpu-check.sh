#!/usr/bin/env bash
# The CUDA backend's device check, in one call on a GPU machine that has CUDA but no Rust
# toolchain and no model files. Run from the repository root:
#
#   scripts/gpu-check.sh            # binaries and descriptions in gpu-bin/ (GPU_BIN to change)
#   scripts/gpu-check.sh main       # only the checks of the default paths
#   scripts/gpu-check.sh experimental   # only the experimental paths (after a main run was
#                                       # cut short; the synthesized models are reused)
#
# gpu-bin/ (git-ignored, 22 MB) is prepared on the development machine by
# scripts/gpu-prepare.sh: stripped release builds of worker-orcd and worker-cli, and the
# descriptions of both fixtures that `worker-cli synth` expands here.
#
# Steps: every op and weight type against the CPU backend (check-ops); random-weight copies
# of both models (same metadata, types and shapes); CUDA against CPU logits and
# teacher-forced greedy tokens on a few prompts; free-running greedy tokens on both
# backends; the decode/prefill benchmark (with kernels per decode step), the same without
# CUDA graphs, and a per-kernel profile of a few decode steps; the HTTP worker streaming one
# request; the no-GPU message; then the experimental paths (matvec, gemm, pdl, attn, types,
# bias, models)
# checked and benchmarked one at a time and compared all together, and with models a
# random-weight Gemma 3 compared past its sliding window (reported, never failing the run).
# Each result prints as a RESULT line when known, and the table of them comes last.
set -uo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:-all}
case "$PHASE" in all | main | experimental) ;; *) echo "usage: $0 [all|main|experimental]" >&2; exit 2 ;; esac
BIN=${GPU_BIN:-gpu-bin}
WORK=${GPU_CHECK_DIR:-/tmp/gpu-check}
mkdir -p "$WORK"
ROWS=()
FAILED=0
# A result row: printed at once (so a run cut short still shows it) and again in the summary.
row() {
    ROWS+=("$(printf '%-44s %-5s %s' "$1" "$2" "$3")")
    printf 'RESULT %s\n' "${ROWS[-1]}"
    [ "$2" = PASS ] || [ "$2" = info ] || FAILED=1
}
step() { printf '\n=== %s (%ss)\n' "$1" "$SECONDS"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2
"$BIN/worker-orcd" --version

if [ "$PHASE" != experimental ]; then
step "check-ops: every op and weight type, CUDA vs CPU"
if timeout 120 "$BIN/worker-orcd" check-ops > "$WORK/ops.txt" 2>&1; then ok=PASS; else ok=FAIL; fi
cat "$WORK/ops.txt"
row "check-ops ($(grep -c '\[PASS\]' "$WORK/ops.txt") pass, $(grep -c '\[FAIL\]' "$WORK/ops.txt") fail, $(grep -c '\[SKIP\]' "$WORK/ops.txt") skip)" "$ok" ""

fi

step "synthesize random-weight models"
for m in smollm2 qwen gemma3; do
    # gemma3 (sliding windows: the models path) only when gpu-bin/ has its description.
    if [ -s "$BIN/$m.desc.gguf" ] && ! [ -s "$WORK/$m.gguf" ]; then
        timeout 180 "$BIN/worker-cli" synth "$BIN/$m.desc.gguf" "$WORK/$m.gguf" --seed 1 || row "synth $m" FAIL ""
    fi
done
ls -la "$WORK"/*.gguf

if [ "$PHASE" != experimental ]; then
for m in smollm2 qwen; do
    f="$WORK/$m.gguf"
    step "compare $m: logits and teacher-forced greedy, CUDA vs CPU"
    if timeout 240 "$BIN/worker-orcd" compare --model "$f" --prompt-lens 1,9,67 --steps 32 > "$WORK/cmp-$m.txt"; then
        ok=PASS
    else
        ok=FAIL
    fi
    cat "$WORK/cmp-$m.txt"
    mincos=$(grep -o 'min cos=[0-9.]*' "$WORK/cmp-$m.txt" | sort -t= -k2 -g | head -1)
    row "$m logits + greedy agree (3 prompts x 32)" "$ok" "$(grep -o 'agree [0-9]*/[0-9]*' "$WORK/cmp-$m.txt" | tr '\n' ' ')$mincos"

    step "free-running greedy, 32 tokens, CUDA and CPU"
    g=$(timeout 60 "$BIN/worker-orcd" generate --model "$f" --prompt-len 9 --max-tokens 32 --backend cuda)
    c=$(timeout 120 "$BIN/worker-orcd" generate --model "$f" --prompt-len 9 --max-tokens 32 --backend cpu)
    echo "cuda: $g"; echo "cpu:  $c"
    if [ -n "$g" ] && [ "$g" = "$c" ]; then ok=PASS; else ok=FAIL; fi
    row "$m greedy 32 tokens equal" "$ok" ""

    step "bench $m on CUDA: pp512, tg128"
    b=$(timeout 120 "$BIN/worker-orcd" bench --model "$f" --pp 512 --tg 128 --backend cuda 2>&1 | tail -1)
    echo "$b"
    case "$b" in bench*) ok=info ;; *) ok=FAIL ;; esac
    row "$m bench (CUDA)" "$ok" "$(echo "$b" | sed 's/.*: load/load/' | cut -c1-130)"

    step "decode without CUDA graphs, and a per-kernel profile of 8 decode steps ($m)"
    timeout 120 "$BIN/worker-orcd" --cuda-graphs false bench --model "$f" --pp 512 --tg 32 --backend cuda 2>&1 | tail -1
    timeout 120 "$BIN/worker-orcd" bench --model "$f" --pp 512 --tg 8 --profile-steps 8 --backend cuda 2>&1 | grep -A20 "kernel profile"
done

step "serve: the HTTP worker from VRAM, one /execute stream"
"$BIN/worker-orcd" serve --model "$WORK/smollm2.gguf" --port 0 --slots 2 > "$WORK/serve.out" 2> "$WORK/serve.err" &
spid=$!
url=""
for _ in $(seq 1 100); do
    url=$(sed -n 's/^listening on //p' "$WORK/serve.out" | head -1)
    [ -n "$url" ] && break
    sleep 0.2
done
if [ -n "$url" ]; then
    health=$(curl -s "$url/health"); echo "$health"
    if echo "$health" | grep -q '"memory_architecture":"vram-only"'; then ok=PASS; else ok=FAIL; fi
    row "serve: /health says vram-only" "$ok" "$(echo "$health" | grep -o '"memory_bytes":[0-9]*')"
    curl -sN -H 'content-type: application/json' "$url/execute" \
        -d '{"job_id":"gpu-1","prompt":"Hello there","max_tokens":16,"temperature":0}' > "$WORK/sse.txt"
    grep -c '^event: token' "$WORK/sse.txt" | sed 's/^/token events: /'
    tail -3 "$WORK/sse.txt"
    if grep -q '^event: end' "$WORK/sse.txt" && grep -q '"stop_reason"' "$WORK/sse.txt"; then ok=PASS; else ok=FAIL; fi
    row "serve: /execute streams to an end event" "$ok" "$(grep -o '"decode_time_ms":[0-9]*' "$WORK/sse.txt")"
else
    cat "$WORK/serve.err"
    row "serve: /execute streams to an end event" FAIL "did not start"
fi
kill -TERM "$spid" 2>/dev/null; wait "$spid" 2>/dev/null

step "no-GPU message (CUDA_VISIBLE_DEVICES=)"
msg=$(CUDA_VISIBLE_DEVICES= "$BIN/worker-orcd" generate --model "$WORK/smollm2.gguf" --prompt-len 2 --max-tokens 1 2>&1)
rc=$?
echo "rc=$rc: $msg"
if [ $rc -eq 1 ] && echo "$msg" | grep -q "no CUDA device found"; then ok=PASS; else ok=FAIL; fi
row "no device: exit 1, one line" "$ok" ""
fi

if [ "$PHASE" != main ]; then
step "experimental paths (--cuda-experimental): check-ops and bench one at a time, compare all together (info only)"
for x in matvec gemm pdl attn types bias models all; do
    X="$BIN/worker-orcd --cuda-experimental $x"
    if timeout 120 $X check-ops > "$WORK/ops-$x.txt" 2>&1; then xo=pass; else xo=FAIL; fi
    grep -v '\[PASS\]\|\[SKIP\]' "$WORK/ops-$x.txt"
    xc=""
    if [ "$x" = all ]; then
        xc=", compare pass"
        for m in smollm2 qwen; do
            timeout 240 $X compare --model "$WORK/$m.gguf" --prompt-lens 1,67 --steps 16 2>/dev/null | tee -a "$WORK/cmp-x.txt" || xc=", compare FAIL"
        done
    fi
    if [ "$x" = models ] && [ -s "$WORK/gemma3.gguf" ]; then
        # 600 positions: past Gemma 3's 512-position window.
        if timeout 300 $X compare --model "$WORK/gemma3.gguf" --prompt-lens 1,9,600 --steps 16 > "$WORK/cmp-gemma3.txt" 2>&1; then
            xc=", gemma3 compare pass"
        else
            xc=", gemma3 compare FAIL"
        fi
        cat "$WORK/cmp-gemma3.txt"
    fi
    xb=""
    for m in smollm2 qwen; do
        b=$(timeout 120 $X bench --model "$WORK/$m.gguf" --pp 512 --tg 128 2>&1 | tail -1)
        echo "$x: $b"
        xb="$xb $m $(echo "$b" | grep -o 'pp512 [0-9.]* tok/s, tg128 [0-9.]* tok/s')"
    done
    row "experimental $x: check-ops $xo$xc" info "$xb"
done

fi

printf '\n=== summary (%ss)\n' "$SECONDS"
printf '%s\n' "${ROWS[@]}"
exit $FAILED
