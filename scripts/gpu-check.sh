#!/usr/bin/env bash
# The GPU check (docs/checks.md §11): run on the GPU machine, from the repository root, with binaries built
# on a development machine by scripts/gpu-prepare.sh and carried in .gpu/ (ignored by git).
#
# It checks the CUDA and wgpu backends on the GPU (op table, golden fixtures, images in prompts;
# HERD_REQUIRE_CUDA=1 so that a missing device fails instead of skipping). When the op table fails on CUDA it
# runs again with HERD_CUDA_SYNC=1 (graphs off, a wait after every command), so that a fault names the
# command that caused it. Then, once and within SANITIZER_BUDGET seconds, the op table and the golden
# fixtures run under compute-sanitizer's memcheck, synccheck and racecheck. Then it measures the op table's
# --perf mode and `herd bench` at full scale (synthetic weights of Scout's real shapes, made on the device),
# and prints a short table last, with a verdict per sanitizer tool. Output goes to stdout and to logs packed
# into $OUT/gpu-check-logs.tar.gz with summary.txt beside it (the sanitizers' full logs as sanitizer_<tool>_<target>.txt).
set -u
OUT="${OUT:-/tmp/herd-gpu}"
# The logs go to $L and, at the end, into one archive in $OUT (a device call brings back at most 8 files).
L=/tmp/herd-gpu-logs
mkdir -p "$OUT" "$L"
for f in .gpu/debs/*.deb; do dpkg -x "$f" /; done
ldconfig
export XDG_RUNTIME_DIR=/tmp
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
B=.gpu/bin
# gpu-prepare.sh packs the binaries (they are over the carry limit unpacked).
if [ -f .gpu/bin.tar.xz ] && [ ! -d "$B" ]; then
    tar -C .gpu -xJf .gpu/bin.tar.xz 2>/dev/null ||
        python3 -c 'import tarfile; tarfile.open(".gpu/bin.tar.xz").extractall(".gpu")' || { echo "cannot unpack .gpu/bin.tar.xz"; exit 1; }
fi
chmod +x $B/* 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2

export HERD_REQUIRE_CUDA=1
summary=()
row() { summary+=("$(printf '%-44s %s' "$1" "$2")"); }
# One call on the GPU machine may run 600 s: sections that would start after BUDGET seconds are skipped
# (and say so), CUDA first.
BUDGET="${BUDGET:-480}"
time_left() { if [ "$SECONDS" -ge "$BUDGET" ]; then echo "== skipped ($1): ${SECONDS}s used"; row "$1" "SKIPPED (time)"; return 1; fi; }

echo "== op table on cuda (correctness)"
timeout 120 $B/conformance --backend cuda > "$L/ops_cuda.txt" 2>&1; rc=$?; echo "exit $rc"
head -1 "$L/ops_cuda.txt"; grep -E "FAIL|ERROR|NOT RUN" "$L/ops_cuda.txt" | head -20; tail -3 "$L/ops_cuda.txt"
row "op table, cuda" "$(tail -1 "$L/ops_cuda.txt") (exit $rc)"
row "cuda libraries" "$(grep -m1 '^cuda libraries:' "$L/ops_cuda.txt" | cut -d' ' -f3-)"
# A failure on the device (a fault, a wrong result) is hard to place when a step runs as one graph and
# errors surface at the next wait: the table again with HERD_CUDA_SYNC=1 (graphs off, a wait after every
# command), whose errors name the command (kernel, grid, block) that faulted.
if [ "$rc" -ne 0 ] || grep -qE "FAIL|ERROR" "$L/ops_cuda.txt"; then
    echo "== op table on cuda again with HERD_CUDA_SYNC=1, to name the command that fails"
    HERD_CUDA_SYNC=1 timeout 180 $B/conformance --backend cuda > "$L/ops_cuda_sync.txt" 2>&1; rc=$?; echo "exit $rc"
    grep -E "FAIL|ERROR|command [0-9]+ of|panicked" "$L/ops_cuda_sync.txt" | head -20
    row "op table, cuda, HERD_CUDA_SYNC=1" "$(tail -1 "$L/ops_cuda_sync.txt") (exit $rc)"
fi

time_left "golden fixtures, cuda" && {
echo "== golden fixtures on cuda"
HERD_FIXTURES="$PWD/tests/fixtures" HERD_DEMO_DIR="$PWD/native/demo" timeout 120 $B/golden_cuda --exact golden_fixtures_on_cuda synthetic_weights_match_the_host_generator --nocapture > "$L/golden_cuda.txt" 2>&1; rc=$?; echo "exit $rc"
grep -E "test result|panicked|cuda graphs|rel err" "$L/golden_cuda.txt" | head -12
row "golden fixtures, cuda" "$(grep -E 'test result' "$L/golden_cuda.txt" | head -1) (exit $rc)"
}

# A test binary's named tests on the GPU: gpu_test ROW LOG SECONDS 'GREP' BINARY TEST...; the log goes to $L/LOG.
gpu_test() {
    local name=$1 log=$L/$2 secs=$3 pat=$4 bin=$5; shift 5
    time_left "$name" || return 0
    echo "== $name ($bin: $*)"
    HERD_FIXTURES="$PWD/tests/fixtures" HERD_DEMO_DIR="$PWD/native/demo" timeout "$secs" "$B/$bin" --exact "$@" \
        --nocapture > "$log" 2>&1; local rc=$?; echo "exit $rc"
    grep -E "test result|panicked|$pat" "$log" | head -8
    row "$name" "$(grep -E 'test result' "$log" | head -1) (exit $rc)"
}
# Speculative decoding: greedy tokens unchanged with prompt lookup and a draft model.
gpu_test "speculative decoding, cuda" speculate_cuda.txt 60 kept speculate greedy_tokens_unchanged_on_cuda
# Continuous batching: requests run together give what each gets alone (demo, scout; 1, 4, 16 at a time).
gpu_test "batching changes nothing, cuda" schedule_cuda.txt 90 differ schedule batching_changes_nothing_on_cuda

time_left "herd serve on cuda" && {
# `herd serve --backend cuda` with the demo model, loaded by `herd bench-serve` (streamed completions of random
# 128-token prompts, 64 tokens each) at 1, 16 and 64 at a time: issue 19's C=16 against C=1 on a GPU.
echo "== herd serve on cuda (demo model): bench-serve at concurrency 1, 16, 64"
$B/herd serve --backend cuda --port 18080 --max-seqs 64 > "$L/serve_cuda.txt" 2>&1 &
spid=$!
up='import urllib.request; urllib.request.urlopen("http://127.0.0.1:18080/health", timeout=1)'
for _ in $(seq 60); do python3 -c "$up" 2>/dev/null && break; sleep 0.5; done
for c in 1 16 64; do
    timeout 60 $B/herd bench-serve --url http://127.0.0.1:18080/v1 --concurrency $c --requests $((c < 16 ? 16 : 4 * c)) \
        --prompt-tokens 128 --gen-tokens 64 > "$L/bench_serve_cuda_$c.txt" 2>&1; echo "C=$c exit $?"
    cat "$L/bench_serve_cuda_$c.txt"
    row "cuda serve C=$c" "$(grep -oE '[0-9.]+ generated tokens/s' "$L/bench_serve_cuda_$c.txt"), itl $(grep -oE 'p50 [0-9.]+ ms, p99 [0-9.]+ ms' "$L/bench_serve_cuda_$c.txt" | tail -1), $(grep -E '^errors' "$L/bench_serve_cuda_$c.txt")"
done
kill -INT $spid 2>/dev/null; wait $spid; echo "serve exit $?"
tail -3 "$L/serve_cuda.txt"
}

time_left "images in prompts, cuda" && {
echo "== images in prompts on cuda (tests/fixtures/scout_vision), then the vision tower's encode time at Scout's shape"
HERD_FIXTURES="$PWD/tests/fixtures" timeout 90 $B/golden_cuda --exact images_in_prompts_match_transformers_on_cuda \
    --nocapture > "$L/vision_cuda.txt" 2>&1; rc=$?; echo "exit $rc"
grep -E "test result|panicked|rel err" "$L/vision_cuda.txt" | head -8
row "images in prompts, cuda" "$(grep -E 'test result' "$L/vision_cuda.txt" | head -1) (exit $rc)"
timeout 90 $B/herd bench --backend cuda --synthetic scout --images 1,16 --repeat 3 > "$L/bench_cuda_vision.txt" 2>&1
echo "exit $?"; cat "$L/bench_cuda_vision.txt" | head -6
row "cuda vision tower, 1 tile" "$(grep -E '^encode  1 tiles' "$L/bench_cuda_vision.txt")"
row "cuda vision tower, 16 tiles" "$(grep -E '^encode 16 tiles' "$L/bench_cuda_vision.txt")"
}

# compute-sanitizer, once: the op table and the golden fixtures under memcheck (out-of-bounds and misaligned
# accesses, API errors), synccheck (__syncthreads in divergent code) and racecheck (shared-memory races),
# each tool's run under `timeout`. Here, after the correctness sections and before the benchmarks, because
# its findings matter more than a speed number but it is slow (memcheck 10-100x, racecheck more): the
# section gets at most SANITIZER_BUDGET seconds and never more than half of what BUDGET has left, shared
# among its runs by weight (an op table run 2, a golden run 1; time a run leaves unused goes to the runs
# after it), so the benchmarks still run. memcheck first: it finds the most.
# SANITIZER_BUDGET=0 skips it. HERD_CUDA_GRAPHS=0 under the sanitizer: every kernel is then its own
# cuLaunchKernel, so a report's host backtrace shows that launch (from a graph it would show only
# cuGraphLaunch), and graphs add nothing the tools check (the same kernels run either way) but capture work.
SANITIZER_BUDGET="${SANITIZER_BUDGET:-180}"
SANITIZER="$(command -v compute-sanitizer || true)"
[ -z "$SANITIZER" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && SANITIZER=/usr/local/cuda/bin/compute-sanitizer
if [ -z "$SANITIZER" ]; then
    echo "== compute-sanitizer: not found (PATH, /usr/local/cuda/bin)"
    row "compute-sanitizer" "NOT RUN (not found)"
elif [ "$SANITIZER_BUDGET" -le 0 ]; then
    row "compute-sanitizer" "SKIPPED (SANITIZER_BUDGET=0)"
elif time_left "compute-sanitizer"; then
    echo "== compute-sanitizer ($("$SANITIZER" --version 2>/dev/null | grep -m1 -oE '[0-9]{4}\.[0-9.]+')): op table and golden fixtures"
    cap=$(( (BUDGET - SECONDS) / 2 )); [ "$cap" -gt "$SANITIZER_BUDGET" ] && cap=$SANITIZER_BUDGET
    san_end=$((SECONDS + cap)); weight_left=9
    for tool in memcheck synccheck racecheck; do
        for target in ops golden; do
            log="$L/sanitizer_${tool}_$target.txt"
            w=1; [ "$target" = ops ] && w=2
            left=$((san_end - SECONDS)); t=$((left * w / weight_left)); weight_left=$((weight_left - w))
            if [ "$left" -lt 15 ]; then
                row "sanitizer $tool, $target" "SKIPPED (the section's ${cap}s were used)"; continue
            fi
            [ "$t" -lt 15 ] && t=15
            if [ "$target" = ops ]; then
                cmd=("$B/conformance" --backend cuda)
            else
                cmd=("$B/golden_cuda" --exact golden_fixtures_on_cuda synthetic_weights_match_the_host_generator)
            fi
            HERD_CUDA_GRAPHS=0 HERD_FIXTURES="$PWD/tests/fixtures" HERD_DEMO_DIR="$PWD/native/demo" timeout -k 10 "$t" \
                "$SANITIZER" --tool "$tool" --error-exitcode 9 --print-limit 20 "${cmd[@]}" > "$log" 2>&1; rc=$?
            summary_line=$(grep -m1 -E "(ERROR|RACECHECK) SUMMARY" "$log" | sed 's/^========= //')
            reports=$(grep -E '^========= [A-Za-z]' "$log" | grep -cvE 'COMPUTE-SANITIZER|SUMMARY|Target application|No (errors|hazards)')
            result=$(grep -m1 -E '^conformance:|^test result' "$log")
            case $rc in
                0) verdict="clean (${summary_line:-no summary}; ${result:-no result line})" ;;
                9) verdict="ERRORS FOUND (${summary_line:-reports: $reports})" ;;
                124 | 137) verdict="TIMED OUT after ${t}s (reports before it stopped: $reports)" ;;
                *) verdict="target failed, exit $rc (${summary_line:-reports: $reports}; ${result:-no result line})" ;;
            esac
            echo "-- $tool, $target: $verdict"
            if [ "$rc" -ne 0 ] && [ "$reports" -gt 0 ]; then
                grep -E '^=========' "$log" | grep -vE 'COMPUTE-SANITIZER' | head -16
            fi
            row "sanitizer $tool, $target" "$verdict"
        done
    done
fi

echo "== herd bench, synthetic Scout shapes (12 of 48 layers, bf16), cuda"
for pt in 2048 128; do
    time_left "cuda bench $pt" || continue
    timeout 120 $B/herd bench --backend cuda --synthetic scout --layers 12 --prompt-tokens $pt --gen-tokens 64 --repeat 2 \
        > "$L/bench_cuda_$pt.txt" 2>&1; echo "prompt $pt exit $?"
    grep -E "prefill|decode|backend|parameters|error" "$L/bench_cuda_$pt.txt"
    row "cuda prefill, $pt-token prompt" "$(grep -E '^prefill' "$L/bench_cuda_$pt.txt")"
    row "cuda decode after $pt tokens" "$(grep -E '^decode:' "$L/bench_cuda_$pt.txt")"
    row "cuda decode, 48-layer estimate" "$(grep -oE '[0-9.]+ tok/s decode at 48 layers' "$L/bench_cuda_$pt.txt")"
done

time_left "cuda guard check (Llama Guard 4 shapes)" && {
    # What one `--guard` check costs: Llama Guard 4's shapes (48 dense layers, bf16, 24 GB), a 512-token prompt
    # (its template and a short conversation) read and a few answer tokens written.
    timeout 120 $B/herd bench --backend cuda --synthetic guard --layers 48 --prompt-tokens 512 --gen-tokens 8 \
        --repeat 2 > "$L/bench_cuda_guard.txt" 2>&1; echo "exit $?"
    grep -E "prefill|decode|error" "$L/bench_cuda_guard.txt"
    row "cuda guard check: 512-token prompt" "$(grep -E '^prefill' "$L/bench_cuda_guard.txt")"
    row "cuda guard check: answer tokens" "$(grep -E '^decode:' "$L/bench_cuda_guard.txt")"
}

time_left "cuda bench, int4 Scout (48 layers)" && {
    timeout 150 $B/herd bench --backend cuda --synthetic scout --layers 48 --quant q4 --prompt-tokens 128 --gen-tokens 64 \
        --repeat 2 > "$L/bench_cuda_q4.txt" 2>&1; echo "exit $?"
    grep -E "prefill|decode|backend|parameters|error" "$L/bench_cuda_q4.txt"
    row "cuda int4 Scout 48 layers, decode" "$(grep -E '^decode:' "$L/bench_cuda_q4.txt")"
    row "cuda int4 Scout 48 layers, weight GB/s" "$(grep -oE '= [0-9.]+ GB/s' "$L/bench_cuda_q4.txt")"
}

time_left "cuda decode at depth, int4 Scout (48 layers), q8 KV to 1M tokens" && {
    # Issue 21's goal: all 48 layers in int4 and the KV in q8, filled to each depth (12 global layers grow with
    # it, 36 chunked ones hold 8192), then decode. The bytes per token over the time per token is the GB/s;
    # set it against the device's bandwidth (>= 70% is the goal).
    timeout 240 $B/herd bench --backend cuda --synthetic scout --layers 48 --quant q4 --kv-dtype q8 \
        --context 1024,262144,1048576 --gen-tokens 16 --repeat 2 > "$L/bench_cuda_depth.txt" 2>&1; echo "exit $?"
    grep -E "^context|KV in|error" "$L/bench_cuda_depth.txt"
    for d in 1024 262144 1048576; do
        row "cuda int4 Scout 48 layers, q8 KV, decode at $d" "$(grep -E "^context $d:" "$L/bench_cuda_depth.txt")"
    done
}

time_left "cuda decode at 1M tokens, int4 Scout (48 layers), q4 KV" && {
    # The same at 1M tokens with q4 keys and values (KIVI: keys per channel over each page, a stage for the page
    # being filled), whose attention decodes 4-bit codes inside the kernel.
    timeout 180 $B/herd bench --backend cuda --synthetic scout --layers 48 --quant q4 --kv-dtype q4 \
        --context 1048576 --gen-tokens 16 --repeat 2 > "$L/bench_cuda_depth_q4.txt" 2>&1; echo "exit $?"
    grep -E "^context|KV in|error" "$L/bench_cuda_depth_q4.txt"
    row "cuda int4 Scout 48 layers, q4 KV, decode at 1048576" "$(grep -E "^context 1048576:" "$L/bench_cuda_depth_q4.txt")"
}

time_left "expert streaming, cuda" && {
echo "== expert streaming on cuda: identical logits on the fixtures, then int4 Scout (12 layers) at several budgets"
HERD_FIXTURES="$PWD/tests/fixtures" timeout 120 $B/expert_cache --exact streaming_is_exact_on_cuda --nocapture \
    > "$L/expert_cache_cuda.txt" 2>&1; rc=$?; echo "exit $rc"
grep -E "test result|panicked|differ" "$L/expert_cache_cuda.txt" | head -5
row "expert streaming exact, cuda" "$(grep -E 'test result' "$L/expert_cache_cuda.txt" | head -1) (exit $rc)"
# 16 experts x 12 layers of ~65 MB: 13GiB holds them all, 1GiB one per layer; off = resident (the 5% check).
timeout 240 $B/herd bench --backend cuda --synthetic scout --layers 12 --quant q4 --prompt-tokens 128 --gen-tokens 64 \
    --repeat 2 --expert-cache off,13GiB,4GiB,1GiB > "$L/bench_cuda_stream.txt" 2>&1; echo "exit $?"
grep -E "^decode:|^prefill|expert cache:|lookups|fetched|last repetition|peak:|error" "$L/bench_cuda_stream.txt"
i=0; for b in off 13GiB 4GiB 1GiB; do
    i=$((i + 1))
    row "cuda int4 Scout 12 layers, cache $b" "$(grep -E '^decode:' "$L/bench_cuda_stream.txt" | sed -n ${i}p)"
done
row "cuda streaming, decode H2D" "$(grep -E 'last repetition' "$L/bench_cuda_stream.txt" | tail -1)"
row "cuda host-to-device peak" "$(grep -E "^host to device peak" "$L/bench_cuda_stream.txt" | head -1)"
# The staging fill on one thread against the default (several): what the parallel fill buys.
HERD_COPY_THREADS=1 timeout 120 $B/herd bench --backend cuda --synthetic scout --layers 12 --quant q4 --prompt-tokens 16 \
    --gen-tokens 32 --repeat 1 --expert-cache 1GiB > "$L/bench_cuda_stream_1thread.txt" 2>&1; echo "exit $?"
row "cuda streaming 1GiB, one copy thread" "$(grep -E 'last repetition' "$L/bench_cuda_stream_1thread.txt" | tail -1)"
}

time_left "cuda bench, bf16 activations" && {
    HERD_CUDA_BF16_ACTIVATIONS=1 timeout 120 $B/herd bench --backend cuda --synthetic scout --layers 12 --prompt-tokens 2048 \
        --gen-tokens 16 --repeat 2 > "$L/bench_cuda_bf16act.txt" 2>&1; echo "exit $?"
    grep -E "prefill|backend" "$L/bench_cuda_bf16act.txt"
    row "cuda prefill 2048, bf16 activations" "$(grep -E '^prefill' "$L/bench_cuda_bf16act.txt")"
}

time_left "cuda perf table" && {
echo "== op table --perf on cuda"
timeout 120 $B/conformance --backend cuda --perf > "$L/perf_cuda.txt" 2>&1; echo "exit $?"
grep -E "k=5120 n=8192|k=1024 n=1024|d=128 chunk|1500, 1|d=1024 f=|d=512 f=512|dim=5120|n=1048576|vocab=202048|fixed cost|graphs" "$L/perf_cuda.txt"
}

echo "== op table on wgpu (correctness), with and without subgroup reductions"
for mode in --subgroups --no-subgroups; do
    time_left "wgpu table $mode" || continue
    timeout 120 $B/conformance --backend wgpu $mode > "$L/ops_wgpu$mode.txt" 2>&1; echo "$mode exit $?"
    head -1 "$L/ops_wgpu$mode.txt"; grep -E "FAIL|ERROR" "$L/ops_wgpu$mode.txt" | head -5; tail -1 "$L/ops_wgpu$mode.txt"
    row "op table, wgpu $mode" "$(tail -1 "$L/ops_wgpu$mode.txt")"
done

time_left "golden fixtures, wgpu" && {
echo "== golden fixtures on wgpu"
HERD_FIXTURES="$PWD/tests/fixtures" HERD_DEMO_DIR="$PWD/native/demo" HERD_REQUIRE_WGPU=1 timeout 120 $B/golden_wgpu > "$L/golden_wgpu.txt" 2>&1; rc=$?; echo "exit $rc"
grep -E "test result|panicked" "$L/golden_wgpu.txt" | head -3
row "golden fixtures, wgpu" "$(grep -E 'test result' "$L/golden_wgpu.txt" | head -1) (exit $rc)"
}

time_left "wgpu perf table" && {
echo "== op table --perf on wgpu"
timeout 150 $B/conformance --backend wgpu --perf > "$L/perf_wgpu.txt" 2>&1; echo "exit $?"
grep -E "k=5120 n=8192|k=1024 n=1024|d=128 chunk|1500, 1|d=1024 f=|d=512 f=512|dim=5120|n=1048576|vocab=202048|fixed cost" "$L/perf_wgpu.txt"
echo "== reductions without subgroups (compare with the rows above)"
timeout 60 $B/conformance --backend wgpu --perf --no-subgroups --op rms_norm > "$L/perf_wgpu_nosg.txt" 2>&1
timeout 60 $B/conformance --backend wgpu --perf --no-subgroups --op sample >> "$L/perf_wgpu_nosg.txt" 2>&1
grep -E "dim=5120|vocab=202048" "$L/perf_wgpu_nosg.txt"
}

time_left "wgpu bench" && {
echo "== herd bench, synthetic Scout shapes, wgpu"
timeout 120 $B/herd bench --backend wgpu --synthetic scout --layers 4 --prompt-tokens 128 --gen-tokens 16 --repeat 2 > "$L/bench_wgpu.txt" 2>&1; echo "exit $?"
tail -12 "$L/bench_wgpu.txt"
row "wgpu decode (4 layers)" "$(grep -E '^decode:' "$L/bench_wgpu.txt")"
}

echo
echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $(date -u +%F))"
printf '%s\n' "${summary[@]}"
printf '%s\n' "${summary[@]}" > "$L/summary.txt"
tar -czf "$OUT/gpu-check-logs.tar.gz" -C "$L" . && cp "$L/summary.txt" "$OUT/summary.txt"
