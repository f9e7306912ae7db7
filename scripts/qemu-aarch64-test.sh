#!/usr/bin/env bash
# Cross-compiles tests for aarch64 Linux and runs them under qemu-aarch64 (user mode) as the
# given CPU model, so that the aarch64 kernel tables that CPU has (NEON, dotprod, i8mm, chosen
# at run time) are the ones tested:
#
#   scripts/qemu-aarch64-test.sh CPU [cargo test arguments...]
#
#   CPU = max          NEON, dotprod and i8mm: every aarch64 table runs
#         neoverse-n1  NEON and dotprod, no i8mm
#         cortex-a72   NEON only
#
# Needs rustup's aarch64 std (`rustup target add aarch64-unknown-linux-gnu`), Debian's
# gcc-aarch64-linux-gnu (the linker, and the C library qemu loads from /usr/aarch64-linux-gnu)
# and qemu-user; .ci/run installs what is missing. The build goes to
# target/aarch64-unknown-linux-gnu, beside the host build, which it leaves alone.
#
# Each test binary runs under a time limit (QEMU_TEST_TIMEOUT, 90 s; the slowest takes about
# 25 s here) and, if it runs out, once more: qemu-user can hang a multithreaded guest (a CI run
# sat for an hour in a test that takes 20 s, and 12 runs in a row here did not repeat it; a
# later CI run lost its 180 s limit to one), and a hang must end as a failure with its name,
# not as a CI run that never finishes. A test that fails is not run again.
set -euo pipefail
if [ "${1:-}" = "--run" ]; then
    # Cargo's runner for the test binaries: --run CPU BINARY [ARGS...]
    cpu=$2
    shift 2
    limit=${QEMU_TEST_TIMEOUT:-90}
    for attempt in 1 2; do
        status=0
        timeout --kill-after=10 "$limit" qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$cpu" "$@" ||
            status=$?
        if [ "$status" -ne 124 ] && [ "$status" -ne 137 ]; then
            exit "$status"
        fi
        echo "qemu-aarch64 -cpu $cpu: $(basename "$1") ran past ${limit} s (attempt $attempt of 2)" >&2
    done
    exit 124
fi
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: $0 CPU [cargo test arguments...]   (CPU: max, neoverse-n1, cortex-a72)" >&2
    exit 2
fi
cpu=$1
shift
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-aarch64-linux-gnu-gcc}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/qemu-aarch64-test.sh --run $cpu"
exec cargo test --target aarch64-unknown-linux-gnu "$@"
