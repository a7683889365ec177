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

# The CUDA backend's tests run its kernels on its CPU emulator (kernels/emu.h), built with a C++ compiler.
if ! command -v "${CXX:-c++}" >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing g++ for the CUDA emulator"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi
if command -v "${CXX:-c++}" >/dev/null 2>&1; then
    export HERD_REQUIRE_CUDA_EMU=1
else
    echo "warning: no C++ compiler: the CUDA emulator tests will report NOT RUN" >&2
fi

# The CUDA kernels are compiled by NVRTC when first used. There is no GPU here, but NVRTC runs anywhere: the
# tests compile every kernel family for Hopper with NVIDIA's NVRTC wheel from PyPI (fetched once into
# target/nvrtc). With it present, a kernel that fails to compile fails the tests.
NVRTC_VERSION=12.9.86
NVRTC_LIB="$PWD/target/nvrtc/nvidia/cuda_nvrtc/lib"
if [ ! -e "$NVRTC_LIB/libnvrtc.so.12" ] && command -v python3 >/dev/null 2>&1; then
    echo "fetching NVRTC $NVRTC_VERSION (nvidia-cuda-nvrtc-cu12 from PyPI) to compile-check the CUDA kernels"
    mkdir -p target/nvrtc
    wheel_dir=$(mktemp -d)
    # pip fetches the wheel by name from the package index it is set up with.
    if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null || true
    fi
    python3 -m pip download --quiet --no-deps --dest "$wheel_dir" "nvidia-cuda-nvrtc-cu12==$NVRTC_VERSION" || true
    for w in "$wheel_dir"/*.whl; do
        [ -e "$w" ] && python3 -m zipfile -e "$w" target/nvrtc
    done
    rm -rf "$wheel_dir"
fi
if [ -e "$NVRTC_LIB/libnvrtc.so.12" ]; then
    export LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export HERD_REQUIRE_NVRTC=1
else
    echo "warning: NVRTC could not be fetched: the CUDA kernel compile check will report NOT RUN" >&2
fi

# `herd serve` is driven by the official openai Python client (native/tests/serve.rs), pinned, installed by
# pip from the package index it is set up with into a virtual environment under target/.
# The jsonschema package checks the structured output it gets back.
OPENAI_VERSION=3.57.0
JSONSCHEMA_VERSION=4.23.0
OPENAI_VENV="$PWD/target/openai-venv"
if ! "$OPENAI_VENV/bin/python" -c "import openai, jsonschema, sys; from importlib.metadata import version
sys.exit(openai.__version__ != '$OPENAI_VERSION' or version('jsonschema') != '$JSONSCHEMA_VERSION')" 2>/dev/null; then
    echo "installing the openai client $OPENAI_VERSION for the server tests"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null || true
        fi
    fi
    rm -rf "$OPENAI_VENV"
    (python3 -m venv "$OPENAI_VENV" && "$OPENAI_VENV/bin/pip" install --quiet "openai==$OPENAI_VERSION" "jsonschema==$JSONSCHEMA_VERSION") || true
fi
if "$OPENAI_VENV/bin/python" -c "import openai, jsonschema" 2>/dev/null; then
    export HERD_OPENAI_PYTHON="$OPENAI_VENV/bin/python" HERD_REQUIRE_OPENAI=1
else
    echo "warning: the openai client could not be installed: its server test will report NOT RUN" >&2
fi

# The browser demo is tested in a real browser: headless Chromium (WebGPU on its SwiftShader adapter) driven
# by npm's playwright-core, on the page built by scripts/build-web.sh (which installs wasm-bindgen-cli when
# missing). Each is installed when missing; with all of them present a failing page fails the tests.
apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing $* for the tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    fi
}
[ -x "${HERD_CHROMIUM:-/usr/bin/chromium}" ] || apt_install chromium || true
command -v npm >/dev/null 2>&1 || apt_install nodejs npm || true
browser=yes
if [ ! -x "${HERD_CHROMIUM:-/usr/bin/chromium}" ] || ! command -v npm >/dev/null 2>&1; then
    browser=no
elif [ ! -d web/tests/node_modules/playwright-core ] &&
    ! (cd web/tests && npm ci --no-audit --no-fund --loglevel=error); then
    browser=no
elif ! bash scripts/build-web.sh; then
    echo "error: the browser demo does not build" >&2
    exit 1
fi
if [ "$browser" = yes ]; then
    export HERD_REQUIRE_BROWSER=1
else
    echo "warning: no Chromium, npm or playwright-core could be had: the browser tests will report NOT RUN" >&2
fi

# `herd app` is tested in a real window: an X server with no screen (Xvfb), drawn on lavapipe. Installed when
# missing; with it present a window that fails fails the tests.
# winit opens these X11 libraries at run time (they come with Chromium's, but not on every machine).
if ! command -v Xvfb >/dev/null 2>&1 || ! /sbin/ldconfig -p 2>/dev/null | grep 'libxkbcommon-x11\.so\.0' >/dev/null; then
    apt_install xvfb libxkbcommon-x11-0 libx11-xcb1 libxcursor1 libxi6 libxrandr2 || true
fi
# xdotool types into the window as a user would.
command -v xdotool >/dev/null 2>&1 || apt_install xdotool || true
if command -v Xvfb >/dev/null 2>&1 && command -v xdotool >/dev/null 2>&1 && [ -n "${HERD_REQUIRE_WGPU:-}" ]; then
    export HERD_REQUIRE_WINDOW=1
else
    echo "warning: no Xvfb, xdotool or Vulkan driver: the desktop window's tests will report NOT RUN" >&2
fi

# The build below needs several GiB under target/; say up front how much the disk has, so that a run that
# dies for want of space is read as that.
df -h . | awk 'NR == 2 { print "herd: " $4 " free on the disk that holds target/" }'

# The fixtures made by transformers are committed under tests/fixtures (regenerate them with
# tests/tools/make_fixtures.py), so the tests need no Python.
cargo build --workspace --all-targets --locked
# The core, the wgpu backend and the page's crate also build for the browser (wasm32). Building the page
# showed that they do; without it, check them.
if [ "$browser" = no ]; then
    if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -q '^wasm32-unknown-unknown$'; then
        rustup target add wasm32-unknown-unknown
    fi
    cargo check --locked --target wasm32-unknown-unknown -p herd-core -p herd-wgpu -p herd-web
fi
log=$(mktemp)
# Each test that cannot run here appends a line to this file (herd_core::not_run); they are counted below.
export HERD_NOT_RUN_LOG
HERD_NOT_RUN_LOG=$(mktemp)
trap 'rm -f "$log" "$HERD_NOT_RUN_LOG"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# The CPU kernels of the processors this machine is not: NEON under qemu-user, SIMD128 (the browser build's)
# under Node's WASI. The script installs what it needs; what it cannot have is counted as NOT RUN below.
bash scripts/cross-test.sh 2>&1 | tee -a "$log" || status=1
# One closing line for the whole run, summed over every test binary, with what could not run and why.
if [ -s "$HERD_NOT_RUN_LOG" ]; then
    echo "herd: not run here:"
    sort "$HERD_NOT_RUN_LOG" | uniq -c | sed 's/^/  /'
fi
awk -v skipped="$(wc -l < "$HERD_NOT_RUN_LOG")" \
    '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "herd: %d passed, %d failed, %d NOT RUN\n", p, f, skipped }' "$log"
du -sh target 2>/dev/null | awk '{ print "herd: target/ holds " $1 }'
exit "$status"
