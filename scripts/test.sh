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
cargo test --workspace --locked
