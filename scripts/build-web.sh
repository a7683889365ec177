#!/usr/bin/env bash
# Builds the browser demo: herd-web for wasm32 (release) and its JS bindings, into web/www/pkg.
# wasm-bindgen-cli must match the wasm-bindgen crate in Cargo.lock; it is installed with cargo when missing
# (without --locked: one of its locked dependencies can be newer than the registry has), as a debug build:
# that builds in a third of the time, and writes the same output, only a few seconds slower.
# Usage: scripts/build-web.sh            then: cargo run --release -p herd -- serve-web
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -q '^wasm32-unknown-unknown$'; then
    rustup target add wasm32-unknown-unknown
fi
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if [ -z "$version" ]; then
    echo "error: wasm-bindgen is not in Cargo.lock" >&2
    exit 1
fi
if ! command -v wasm-bindgen >/dev/null 2>&1 || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$version" ]; then
    echo "installing wasm-bindgen-cli $version (about two minutes, once)"
    # --force: cargo may still list a wasm-bindgen-cli whose binary is gone or of another version.
    cargo install wasm-bindgen-cli --version "$version" --debug --force
    if ! command -v wasm-bindgen >/dev/null 2>&1; then
        echo "error: wasm-bindgen was installed but is not on PATH (add cargo's bin directory, ~/.cargo/bin)" >&2
        exit 1
    fi
fi
# No debug info: wasm-bindgen drops it anyway, and it costs a fifth of the build time.
CARGO_PROFILE_RELEASE_DEBUG=false cargo build --locked --release --target wasm32-unknown-unknown -p herd-web
rm -rf web/www/pkg
wasm-bindgen --target web --no-typescript --out-dir web/www/pkg target/wasm32-unknown-unknown/release/herd_web.wasm
echo "built web/www/pkg ($(du -h web/www/pkg/herd_web_bg.wasm | cut -f1) of wasm)"
