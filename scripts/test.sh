#!/usr/bin/env bash
# herd's test command: everything CI runs, on a fresh machine. Installs what the tests need first.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi

# The CPU reference backend and the golden tests need nothing beyond cargo: the fixtures made by
# transformers are committed under tests/fixtures (regenerate with tests/tools/make_fixtures.py).
cargo build --workspace --all-targets --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "herd: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
