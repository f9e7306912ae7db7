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
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: $0 CPU [cargo test arguments...]   (CPU: max, neoverse-n1, cortex-a72)" >&2
    exit 2
fi
cpu=$1
shift
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-aarch64-linux-gnu-gcc}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $cpu"
exec cargo test --target aarch64-unknown-linux-gnu "$@"
