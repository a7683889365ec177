#!/usr/bin/env bash
# Prepares the GPU check on a development machine (no GPU needed): builds the release binaries and the GPU
# test binaries into .gpu/bin and downloads the Vulkan loader packages into .gpu/debs (the GPU machine has
# none; docs/checks.md §11). Then, on the GPU machine: `bash scripts/gpu-check.sh` (carry .gpu along).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/bin .gpu/debs
cargo build --release --locked -p herd -p herd-conformance
cp target/release/herd target/release/conformance .gpu/bin/
for t in golden_wgpu golden_cuda expert_cache speculate schedule; do
    exe=$(cargo test --release --locked -p herd-conformance --test "$t" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
    cp "$exe" ".gpu/bin/$t"
done
if ! ls .gpu/debs/libvulkan1_*.deb >/dev/null 2>&1; then
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    mkdir -p /tmp/amd64/partial
    # shellcheck disable=SC2086
    apt-get $o update -qq && (cd .gpu/debs && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
strip .gpu/bin/* 2>/dev/null || true
# The binaries are ~65 MB stripped, more than the 64 MiB a device call may carry with the working tree: they
# travel as one xz archive (~20 MB), which gpu-check.sh unpacks.
tar -C .gpu -cf - bin | xz -9 -T0 > .gpu/bin.tar.xz
rm -rf .gpu/bin
du -sh .gpu
echo "ready: carry .gpu and run scripts/gpu-check.sh on the GPU machine"
