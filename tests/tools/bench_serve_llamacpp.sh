#!/usr/bin/env bash
# herd serve and llama.cpp's llama-server side by side: the built-in demo model on the CPU, the same
# streamed-completion load (herd bench-serve) against each, alternately, in one run.
#
# Usage (from the repository root): tests/tools/bench_serve_llamacpp.sh [ROUNDS]   (default 2)
# Environment: CONCURRENCY (default "1 4 16"), PROMPT_TOKENS (128), GEN_TOKENS (64), THREADS (llama-server
# -t, default: the number of CPUs), LLAMACPP_VERSION (the llama-cpp-python sdist whose vendored llama.cpp
# is built, default 0.3.36).
#
# What it does, each step skipped when its result is already there (under target/llamacpp/):
# 1. pip downloads the llama-cpp-python sdist (pinned) and builds llama-server from the llama.cpp source it
#    vendors, with cmake (Release, native CPU, no curl/SSL/web UI). About 22 minutes on 2 cores.
# 2. Converts native/demo to an f32 GGUF with tests/tools/demo_to_gguf.py (numpy + the vendored gguf-py in
#    a venv).
# 3. Builds herd (release), starts `herd serve --max-seqs 16` and `llama-server -np 16 -c 65536
#    --cont-batching` (16 slots of 4,096 tokens, the demo's context), waits for both, then for each round
#    and each concurrency C runs `herd bench-serve` against herd, then against llama-server: R = 8 requests
#    for C < 4, else 2C; random-token prompts, temperature 0.8, seeded. Prints one JSON line per run and a
#    table at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2}
version=${LLAMACPP_VERSION:-0.3.36}
work=target/llamacpp
mkdir -p "$work"

server="$work/build/bin/llama-server"
if [ ! -x "$server" ]; then
    command -v cmake >/dev/null && command -v g++ >/dev/null || {
        echo "installing cmake and g++"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ >/dev/null
    }
    src="$work/llama_cpp_python-$version"
    if [ ! -d "$src/vendor/llama.cpp" ]; then
        python3 -m pip download --no-binary llama-cpp-python --no-deps "llama-cpp-python==$version" -d "$work"
        tar xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
    fi
    cmake -S "$src/vendor/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >/dev/null
    cmake --build "$work/build" --target llama-server -j"$(nproc)"
fi

gguf="$work/demo.gguf"
if [ ! -f "$gguf" ]; then
    src="$work/llama_cpp_python-$version"
    if [ ! -x "$work/venv/bin/python" ]; then
        python3 -m venv "$work/venv"
        "$work/venv/bin/pip" install --quiet numpy
        "$work/venv/bin/pip" install --quiet "$src/vendor/llama.cpp/gguf-py"
    fi
    "$work/venv/bin/python" tests/tools/demo_to_gguf.py native/demo "$gguf" >/dev/null
fi

cargo build --release --locked -p herd
herd=target/release/herd
hport=18098
lport=18190
$herd serve --port $hport --max-seqs 16 >"$work/herd-serve.log" 2>&1 &
hpid=$!
"$server" -m "$gguf" --port $lport -c 65536 -np 16 --cont-batching -t "${THREADS:-$(nproc)}" \
    >"$work/llama-server.log" 2>&1 &
lpid=$!
trap 'kill $hpid $lpid 2>/dev/null || true' EXIT
for p in $hport $lport; do
    for _ in $(seq 120); do
        curl -sf "http://127.0.0.1:$p/health" >/dev/null && break
        sleep 1
    done
    curl -sf "http://127.0.0.1:$p/health" >/dev/null || { echo "error: the server on port $p did not start" >&2; exit 1; }
done

results="$work/results.jsonl"
: >"$results"
for round in $(seq "$rounds"); do
    for c in ${CONCURRENCY:-1 4 16}; do
        r=$((c < 4 ? 8 : 2 * c))
        for who in herd llama-server; do
            port=$([ $who = herd ] && echo $hport || echo $lport)
            line=$($herd bench-serve --url "http://127.0.0.1:$port/v1" --concurrency "$c" --requests "$r" \
                --prompt-tokens "${PROMPT_TOKENS:-128}" --gen-tokens "${GEN_TOKENS:-64}" --json)
            echo "{\"server\": \"$who\", \"round\": $round, \"result\": $line}" | tee -a "$results"
        done
    done
done

python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\n| server | round | C | R | generated tok/s | TTFT p50 / p99 (ms) | inter-token p50 / p99 (ms) | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for x in rows:
    r = x["result"]
    print(f"| {x['server']} | {x['round']} | {r['concurrency']} | {r['requests']} | {r['tokens_per_s']:,.0f} | "
          f"{r['ttft_ms_p50']:,.0f} / {r['ttft_ms_p99']:,.0f} | {r['itl_ms_p50']:.1f} / {r['itl_ms_p99']:.1f} | {r['errors']} |")
EOF
