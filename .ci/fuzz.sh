#!/usr/bin/env bash
# Fuzzing: builds every cargo-fuzz target under fuzz/ once, then runs each
# for a bounded time, starting from its committed seed corpus
# (fuzz/corpus/<target>/). Fails when any target finds a crash (a panic,
# an arithmetic overflow, an out-of-memory, a timeout); the input that did it
# is kept under fuzz/artifacts/<target>/ and the command that replays it is
# printed.
#
# Usage: bash .ci/fuzz.sh [--build-only]
#   --build-only   install cargo-fuzz where missing and build the targets,
#                  run nothing (.ci/run does this in the background while
#                  its other steps wait on servers)
#
# Settings (environment):
#   WF_IOT_FUZZ_SECONDS   seconds each target runs (default 60)
#   WF_IOT_FUZZ_TARGETS   the targets to run, space-separated (default: all)
#   WF_IOT_FUZZ_JOBS      targets run at once (default 2, one per core of
#                         the CI machine)
#
# The targets build unoptimized, with debug assertions and overflow checks
# and without a sanitizer: the code they feed is safe Rust, and the build
# takes a quarter of the CPU time of an optimized one with the address
# sanitizer (6 against 24 CPU minutes here) while still running 1,000 to
# 40,000 inputs a second (jwt_verify about 250). For a long hunt, or for memory errors in
# dependencies' unsafe code, run a target with cargo-fuzz's defaults (see
# README.md). Only stable Rust is needed: cargo-fuzz passes nightly-only
# compiler flags, which RUSTC_BOOTSTRAP=1 allows on a stable toolchain.
# With CI set, Cargo runs with --locked.

set -euo pipefail

BUILD_ONLY=""
case "${1:-}" in
    --build-only) BUILD_ONLY=yes ;;
    "") ;;
    *) echo "usage: $0 [--build-only]" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${WF_IOT_FUZZ_SECONDS:-60}
FUZZ_JOBS=${WF_IOT_FUZZ_JOBS:-2}
export RUSTC_BOOTSTRAP=1

fail() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}

[[ "$FUZZ_SECONDS" =~ ^[1-9][0-9]*$ ]] || fail "WF_IOT_FUZZ_SECONDS must be a positive number of seconds, not '$FUZZ_SECONDS'"
[[ "$FUZZ_JOBS" =~ ^[1-9][0-9]*$ ]] || fail "WF_IOT_FUZZ_JOBS must be a positive number, not '$FUZZ_JOBS'"

LOCKED=()
if [[ -n "${CI:-}" ]]; then
    LOCKED=(--locked)
fi

installed=$(cargo fuzz --version 2>/dev/null | awk '{print $2}' || true)
if [[ "$installed" != "$CARGO_FUZZ_VERSION" ]]; then
    echo "--- installing cargo-fuzz $CARGO_FUZZ_VERSION (found: ${installed:-none})"
    cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi
cargo fuzz --version

# cargo-fuzz has no --locked of its own: check the lockfile first, so that
# the build below uses fuzz/Cargo.lock as committed.
if [[ ${#LOCKED[@]} -gt 0 ]]; then
    cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null ||
        fail "fuzz/Cargo.lock is out of date (run: cd fuzz && cargo update -w)"
fi

mapfile -t ALL_TARGETS < <(cargo fuzz list --fuzz-dir fuzz)
if [[ -n "${WF_IOT_FUZZ_TARGETS:-}" ]]; then
    read -r -a TARGETS <<<"$WF_IOT_FUZZ_TARGETS"
    for target in "${TARGETS[@]}"; do
        [[ " ${ALL_TARGETS[*]} " == *" $target "* ]] ||
            fail "no fuzz target '$target' (there are: ${ALL_TARGETS[*]})"
    done
else
    TARGETS=("${ALL_TARGETS[@]}")
fi
for target in "${TARGETS[@]}"; do
    [[ -n $(ls -A "fuzz/corpus/$target" 2>/dev/null) ]] ||
        fail "fuzz/corpus/$target has no seed inputs"
done

# The same flags for the build and the runs, so that the runs build nothing;
# no debug information, which the build would spend most of its time on.
BUILD_FLAGS=(--fuzz-dir fuzz --dev --sanitizer none)
export CARGO_PROFILE_DEV_DEBUG=0

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wf-iot-fuzz.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "--- building ${#ALL_TARGETS[@]} fuzz targets (coverage instrumentation, debug assertions)"
build_start=$(date +%s)
cargo fuzz build "${BUILD_FLAGS[@]}"
echo "built in $(($(date +%s) - build_start)) s"
if [[ -n "$BUILD_ONLY" ]]; then
    exit 0
fi

# run TARGET: fuzzes TARGET for FUZZ_SECONDS into a scratch corpus that
# starts from the seeds (new inputs are not written to the committed
# seeds); the log goes to $WORK/TARGET.log.
run() {
    local target=$1
    mkdir -p "$WORK/corpus/$target" "$WORK/tmp/$target" "fuzz/artifacts/$target"
    TMPDIR="$WORK/tmp/$target" cargo fuzz run "${BUILD_FLAGS[@]}" "$target" \
        "$WORK/corpus/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$WORK/$target.log" 2>&1
}

failed=()
pids=()
names=()
wait_one() {
    local i=$1
    if wait "${pids[$i]}"; then
        local runs
        runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$WORK/${names[$i]}.log")
        echo "ok: ${names[$i]}: no crash in ${runs:-?} inputs (${FUZZ_SECONDS} s)"
    else
        echo "CRASH: ${names[$i]}; the end of its log:"
        tail -n 60 "$WORK/${names[$i]}.log"
        failed+=("${names[$i]}")
    fi
}

echo "--- running ${#TARGETS[@]} targets for ${FUZZ_SECONDS} s each, ${FUZZ_JOBS} at a time"
run_start=$(date +%s)
next=0
for target in "${TARGETS[@]}"; do
    run "$target" &
    pids+=($!)
    names+=("$target")
    if ((${#pids[@]} - next >= FUZZ_JOBS)); then
        wait_one "$next"
        next=$((next + 1))
    fi
done
while ((next < ${#pids[@]})); do
    wait_one "$next"
    next=$((next + 1))
done
echo "ran in $(($(date +%s) - run_start)) s"

if ((${#failed[@]} > 0)); then
    for target in "${failed[@]}"; do
        for artifact in fuzz/artifacts/"$target"/*; do
            [[ -e "$artifact" ]] || continue
            echo "replay: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz $target $artifact"
        done
    done
    fail "fuzzing found crashes in: ${failed[*]}"
fi
echo "ok: no fuzz target found a crash"
