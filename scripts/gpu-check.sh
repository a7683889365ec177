#!/usr/bin/env bash
# The GPU check: run on the GPU machine (../shared/GPU.md), from the repository root, with binaries built
# on a development machine and carried in .gpu/ (ignored by git):
#
#   cargo build --release -p herd -p herd-conformance
#   cargo test --release -p herd-conformance --test golden_wgpu --no-run   # prints the test binary's path
#   mkdir -p .gpu/bin && cp target/release/herd target/release/conformance .gpu/bin/
#   cp <golden_wgpu test binary> .gpu/bin/golden_wgpu
#   (.gpu/debs: the Vulkan loader packages, see GPU.md step 2)
#
# It checks the wgpu backend (op table, golden fixtures) on the GPU, then measures the op table's --perf
# mode and `herd bench` at full scale (synthetic weights of Scout's real shapes). Output goes to stdout and,
# when $OUT is set, to files there.
set -u
OUT="${OUT:-/tmp/herd-gpu}"
mkdir -p "$OUT"
for f in .gpu/debs/*.deb; do dpkg -x "$f" /; done
ldconfig
export XDG_RUNTIME_DIR=/tmp
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
B=.gpu/bin
chmod +x $B/* 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2

echo "== op table on wgpu (correctness), with and without subgroup reductions"
for mode in --subgroups --no-subgroups; do
    timeout 120 $B/conformance --backend wgpu $mode > "$OUT/ops_wgpu$mode.txt" 2>&1; echo "$mode exit $?"
    head -1 "$OUT/ops_wgpu$mode.txt"; grep -E "FAIL|ERROR" "$OUT/ops_wgpu$mode.txt" | head -5; tail -1 "$OUT/ops_wgpu$mode.txt"
done

echo "== golden fixtures on wgpu"
HERD_FIXTURES="$PWD/tests/fixtures" HERD_REQUIRE_WGPU=1 timeout 120 $B/golden_wgpu > "$OUT/golden_wgpu.txt" 2>&1; echo "exit $?"
grep -E "test result|panicked" "$OUT/golden_wgpu.txt" | head -3

echo "== op table --perf on wgpu"
timeout 150 $B/conformance --backend wgpu --perf > "$OUT/perf_wgpu.txt" 2>&1; echo "exit $?"
grep -E "k=5120 n=8192|k=1024 n=1024|d=128 chunk|1500, 1|d=1024 f=|d=512 f=512|dim=5120|n=1048576|vocab=202048|fixed cost" "$OUT/perf_wgpu.txt"
echo "== reductions without subgroups (compare with the rows above)"
timeout 60 $B/conformance --backend wgpu --perf --no-subgroups --op rms_norm > "$OUT/perf_wgpu_nosg.txt" 2>&1
timeout 60 $B/conformance --backend wgpu --perf --no-subgroups --op sample >> "$OUT/perf_wgpu_nosg.txt" 2>&1
grep -E "dim=5120|vocab=202048" "$OUT/perf_wgpu_nosg.txt"

echo "== herd bench, synthetic Scout shapes, wgpu"
timeout 200 $B/herd bench --backend wgpu --synthetic scout --layers 4 --prompt-tokens 128 --gen-tokens 16 --repeat 2 > "$OUT/bench_wgpu.txt" 2>&1; echo "exit $?"
tail -12 "$OUT/bench_wgpu.txt"
