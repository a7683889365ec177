#!/usr/bin/env bash
# herd's test command: everything CI runs, on a fresh machine. Installs what the tests need first.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi

# The wgpu backend's tests run on a real Vulkan device: Mesa's lavapipe (a CPU implementation) when the
# machine has no GPU. Install it when missing; with it present a missing adapter fails the tests.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing mesa-vulkan-drivers (lavapipe) for the wgpu tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
    fi
fi
if ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
    export HERD_REQUIRE_WGPU=1
else
    echo "warning: no Vulkan driver could be installed: the wgpu tests will report NOT RUN" >&2
fi

# The fixtures made by transformers are committed under tests/fixtures (regenerate them with
# tests/tools/make_fixtures.py), so the tests need no Python.
cargo build --workspace --all-targets --locked
# The core and the wgpu backend also build for the browser (wasm32): check that they still do.
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -q '^wasm32-unknown-unknown$'; then
    rustup target add wasm32-unknown-unknown
fi
cargo check --locked --target wasm32-unknown-unknown -p herd-core -p herd-wgpu
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "herd: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
