#!/usr/bin/env bash
# The CPU backend's kernels for the processors this machine is not: aarch64 (the NEON kernels, under
# qemu-user) and wasm32 with SIMD128 (the browser build's kernels, under Node's WASI). For each it builds the
# op table without the GPU backends and runs it (tests/tests/ops.rs: every row at the best level, the vector
# ops at the scalar level too) and the CPU kernels' unit tests (each level's rounding bit for bit against the
# scalar rule, the matmuls against f64). Installs what it needs when missing (scripts/test.sh runs it).
# A target whose tools could not be had is reported as NOT RUN (one line in HERD_NOT_RUN_LOG), or fails where
# HERD_REQUIRE_CROSS=1. Usage: scripts/cross-test.sh [aarch64] [wasm32]
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64 wasm32)
status=0

not_run() {
    local line="$1: NOT RUN ($2)"
    echo "$line" >&2
    [ -n "${HERD_NOT_RUN_LOG:-}" ] && echo "$line" >> "$HERD_NOT_RUN_LOG"
    if [ "${HERD_REQUIRE_CROSS:-}" = 1 ]; then
        echo "error: $1 is required (HERD_REQUIRE_CROSS=1)" >&2
        status=1
    fi
}

have_target() {
    rustup target list --installed 2>/dev/null | grep -qx "$1" || rustup target add "$1" >/dev/null 2>&1
}

# One optimized build per target (the profile `cross` in Cargo.toml: the workspace's crates as in a release,
# the dependencies, which are not what runs here, at a lower level so that they build faster), of both test
# binaries in one cargo run so that their dependencies' features unify and build once. The filters pick the
# op table's tests (herd-conformance's ops test, `_table`) and the CPU kernels' unit tests (`cpu::`).
run_target() {
    local triple=$1

    echo "== $triple: the op table and the CPU kernels' unit tests"
    # The ops test only: the other test files need the GPU backends.
    cargo test --profile cross --locked --target "$triple" --no-default-features \
        -p herd-conformance --test ops -p herd-core --lib -- _table cpu:: --skip cpu::pool::
}

for t in "${targets[@]}"; do
    case "$t" in
    aarch64)
        if ! command -v qemu-aarch64 >/dev/null 2>&1 || ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
                echo "installing qemu-user and the aarch64 cross linker for the NEON kernels' tests"
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user \
                    gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null || true
            fi
        fi
        if ! command -v qemu-aarch64 >/dev/null 2>&1 || ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
            not_run "the NEON kernels (aarch64)" "no qemu-aarch64 or aarch64-linux-gnu-gcc"
        elif ! have_target aarch64-unknown-linux-gnu; then
            not_run "the NEON kernels (aarch64)" "rustup could not add aarch64-unknown-linux-gnu"
        else
            # qemu's default processor (max) has the dot-product extension, so the best level is neon.
            CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
                CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
                run_target aarch64-unknown-linux-gnu || status=1
        fi
        ;;
    wasm32)
        if ! command -v node >/dev/null 2>&1; then
            not_run "the SIMD128 kernels (wasm32)" "no node"
        elif ! have_target wasm32-wasip1; then
            not_run "the SIMD128 kernels (wasm32)" "rustup could not add wasm32-wasip1"
        else
            # WASI has no threads: the CPU backend runs every op on the calling thread (cpu::pool), so the
            # pool's own tests are left out. Node runs single-threaded: with its background threads, Node 20
            # crashed (SIGSEGV/SIGBUS in its interpreter) about every other run after the tests had passed and
            # the program had returned; without them, none did in 12 runs.
            CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C target-feature=+simd128" \
                CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings --single-threaded $PWD/tests/tools/wasi-run.mjs" \
                run_target wasm32-wasip1 || status=1
        fi
        ;;
    *)
        echo "error: unknown target $t (aarch64 or wasm32)" >&2
        exit 2
        ;;
    esac
done
exit "$status"
