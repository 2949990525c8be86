#!/usr/bin/env bash
# Fuzzes the stack's receive path, its TCP engine, the configuration parser and the cache's RESP with libFuzzer, on stable Rust
# (coverage instrumentation through -C passes=sancov-module; no cargo-fuzz, no nightly).
# Targets: fuzz/src (frames, config, resp, tcp); their libFuzzer binaries: fuzz/libfuzzer.
#
#   bash ci/fuzz.sh                    every target, FUZZ_SECONDS each (default 60)
#   bash ci/fuzz.sh frames             one target
#   bash ci/fuzz.sh frames FILE...     runs the target on these inputs once (a crash to look at)
#   MERGE=1 bash ci/fuzz.sh frames     keeps what the run found that covers new code in
#                                      fuzz/corpus/frames (minimised), to be committed
#
# Each run starts from fuzz/corpus/TARGET; new inputs go to a scratch directory unless MERGE=1.
# A crash stops the run: the input is saved and printed, and the script fails. Turn it into a
# unit test where the bug is, and add the input to fuzz/corpus/TARGET (the corpus replay tests
# run it in every test run).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=fuzz
TARGETS=(frames config resp tcp)
SECONDS_EACH=${FUZZ_SECONDS:-60}
TRIPLE=$(rustc -vV | awk '/^host:/ {print $2}')
BIN=$PWD/fuzz/libfuzzer/target/$TRIPLE/release

# Edge and comparison coverage for libFuzzer, as cargo-fuzz sets it (its flags that need
# nightly, the sanitizers, are left out). --target keeps the flags off build scripts.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
if ! (cd fuzz/libfuzzer && cargo build --release --target "$TRIPLE" >&2); then
    echo "$NAME build: FAILED" >&2
    exit 1
fi

if [[ $# -ge 2 ]]; then
    target=$1
    shift
    exec "$BIN/$target" "$@"
fi
[[ $# -eq 1 ]] && TARGETS=("$1")

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
status=0
for target in "${TARGETS[@]}"; do
    [[ -x $BIN/$target ]] || { echo "$NAME: no target $target (${TARGETS[*]})" >&2; exit 2; }
    mkdir -p "$TMP/$target" "fuzz/corpus/$target"
    log=$TMP/$target.log
    # rss_limit: an input that makes the stack hold memory without bound is a finding too.
    if "$BIN/$target" "$TMP/$target" "fuzz/corpus/$target" -max_total_time="$SECONDS_EACH" \
        -max_len=4096 -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
        -artifact_prefix="$TMP/$target-" >"$log" 2>&1; then
        runs=$(awk '/^stat::number_of_executed_units/ {print $NF}' "$log")
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
        echo "$NAME $target: ok, ${runs:-?} inputs in $SECONDS_EACH s, $cov, corpus $(ls "fuzz/corpus/$target" | wc -l) + $(ls "$TMP/$target" | wc -l) new"
        if [[ -n ${MERGE:-} ]]; then
            "$BIN/$target" -merge=1 "fuzz/corpus/$target" "$TMP/$target" >>"$log" 2>&1
            echo "$NAME $target: corpus now $(ls "fuzz/corpus/$target" | wc -l) inputs"
        fi
    else
        status=1
        echo "$NAME $target: FAILED" >&2
        grep -E -A12 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -40 >&2 || tail -40 "$log" >&2
        for crash in "$TMP/$target"-*; do
            [[ -e $crash ]] || continue
            keep=target/fuzz-$target-$(basename "$crash")
            mkdir -p target
            cp "$crash" "$keep"
            echo "$NAME $target: the input ($keep; replay: bash ci/fuzz.sh $target $keep):" >&2
            od -A d -t x1 "$crash" | head -20 >&2
        done
    fi
done
exit "$status"
