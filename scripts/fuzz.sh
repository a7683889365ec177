#!/usr/bin/env bash
# Long, coverage-guided fuzz runs of herd-fuzz's targets with cargo-afl (AFL++), one afl-fuzz at a time.
#
# Usage: scripts/fuzz.sh [TARGET|all] [BUDGET]
#   TARGET  one of the names in fuzz/src/lib.rs's TARGETS (default: all, cheapest first)
#   BUDGET  per target: seconds (600, 600s; default 600; afl-fuzz -V) or executions (10M, 500k, 2000000x; afl-fuzz -E)
#
# Each target's state is kept in target/afl/out/TARGET and a later run resumes it (AFL_AUTORESUME), so the
# executions of several runs add up: the summary's execs are the total. Crashes and hangs are copied into
# fuzz/regressions/TARGET/ (afl-crash-HASH, afl-hang-HASH) for review, and the crashes are replayed outside
# afl to print their panic messages. The bounded run in `cargo test` replays fuzz/regressions, so a crash
# kept there fails the tests until it is fixed. See FUZZING.md.
#
# Environment: HERD_FUZZ_TIMEOUT_MS (afl-fuzz -t, default 1000: a slower input is a hang),
# HERD_FUZZ_MEM_MB (afl-fuzz -m, default 4096), AFL_* variables pass through to afl-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."

which=${1:-all}
budget=${2:-600}
case "$budget" in
    *[0-9]s | *[0-9]) limit=(-V "${budget%s}"); what="${budget%s} s" ;;
    *[0-9]x) limit=(-E "${budget%x}"); what="${budget%x} execs" ;;
    *[0-9]k | *[0-9]K) limit=(-E "$((${budget%?} * 1000))"); what="$budget execs" ;;
    *[0-9]m | *[0-9]M) limit=(-E "$((${budget%?} * 1000000))"); what="$budget execs" ;;
    *) echo "error: budget $budget: seconds (600, 600s) or executions (10M, 500k, 2000000x)" >&2; exit 2 ;;
esac

all=$(sed -n '/^pub const TARGETS/,/^];/s/^ *("\([a-z_]*\)",.*/\1/p' fuzz/src/lib.rs)
if [ "$which" = all ]; then
    targets=$all
elif grep -qx "$which" <<<"$all"; then
    targets=$which
else
    echo "error: no target $which (targets: $(echo $all))" >&2
    exit 2
fi

if ! command -v cargo-afl >/dev/null 2>&1; then
    echo "installing cargo-afl"
    cargo install cargo-afl --locked
fi
# cargo-afl builds AFL++ for this toolchain once.
if ! (cargo afl fuzz -h 2>&1 || true) | grep -q afl-fuzz; then
    cargo afl config --build
fi

# Its own target directory: cargo-afl's instrumentation flags must not invalidate the normal build.
export CARGO_TARGET_DIR="$PWD/target/afl"
cargo afl build --release --locked -p herd-fuzz --features afl --bin herd-fuzz-afl
bin="$CARGO_TARGET_DIR/release/herd-fuzz-afl"

# Headless, as root, on a shared machine: no UI, no CPU-frequency check, no core binding.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
export AFL_AUTORESUME=1 AFL_IGNORE_SEED_PROBLEMS=1

stat() { sed -n "s/^$2 *: *//p" "$1" 2>/dev/null | head -1; }

for t in $targets; do
    out="target/afl/out/$t"
    mkdir -p "$out"
    echo "== $t: afl-fuzz for $what (state in $out)"
    cargo afl fuzz -i "fuzz/corpus/$t" -o "$out" "${limit[@]}" -t "${HERD_FUZZ_TIMEOUT_MS:-1000}" \
        -m "${HERD_FUZZ_MEM_MB:-4096}" -- "$bin" "$t" >"$out/afl-fuzz.log" 2>&1 || {
        echo "afl-fuzz failed for $t; the end of $out/afl-fuzz.log:" >&2
        tail -20 "$out/afl-fuzz.log" >&2
        exit 1
    }
done

echo
printf '%-14s %14s %10s %8s %6s %9s\n' target execs execs/s crashes hangs run_time
for t in $targets; do
    s="target/afl/out/$t/default/fuzzer_stats"
    [ -f "$s" ] || continue
    crashes=$(stat "$s" saved_crashes)
    hangs=$(stat "$s" saved_hangs)
    printf '%-14s %14s %10s %8s %6s %8ss\n' "$t" "$(stat "$s" execs_done)" "$(stat "$s" execs_per_sec)" \
        "$crashes" "$hangs" "$(stat "$s" run_time)"
    # Each of afl's crashes and hangs is copied once (target/afl/out/TARGET/copied lists them), so one that
    # was reviewed and removed (e.g. replaced by a minimised input) does not come back.
    new=()
    copied="target/afl/out/$t/copied"
    touch "$copied"
    for kind in crash hang; do
        for f in "target/afl/out/$t/default/${kind}es"/id:* "target/afl/out/$t/default/${kind}s"/id:*; do
            [ -f "$f" ] || continue
            grep -qxF "$f" "$copied" && continue
            echo "$f" >>"$copied"
            dest="fuzz/regressions/$t/afl-$kind-$(sha256sum "$f" | cut -c1-16)"
            mkdir -p "fuzz/regressions/$t"
            cp "$f" "$dest"
            chmod 644 "$dest"
            [ "$kind" = crash ] && new+=("$dest")
        done
    done
    if [ ${#new[@]} -gt 0 ]; then
        echo "   new crashes of $t, copied into fuzz/regressions/$t/ (replayed outside afl):"
        (unset CARGO_TARGET_DIR; cargo run -q --locked -p herd-fuzz --example replay -- "$t" "${new[@]}" || true) |
            sed 's/^/   /'
    fi
done
