#!/usr/bin/env bash
# Builds everything and runs every test: unit tests, and integration tests that start the
# example servers over real DPDK devices (net_tap, net_af_packet, net_af_xdp; net_memif for Redis, its
# frames forwarded to a veth pair by mtcp-faultbridge) with kernel clients in network namespaces they
# create and delete. Needs root. This is README.md's "test" command.
set -euo pipefail
cd "$(dirname "$0")/.."

# The integration tests run target/release/echo and target/release/libmtcpshim.so (artifacts of
# other packages than the tests'), so build the whole workspace first.
cargo build --release --workspace
# Two test threads: each integration test runs a DPDK server and a client on a 2-core machine.
# Every test binary runs even after a failure (--no-fail-fast): the closing line counts them all.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || status=$?
# A minute of libFuzzer per fuzz target (alone: it takes a core).
bash ci/fuzz.sh 2>&1 | tee -a "$log" || status=1
# One closing line for the whole run (cargo's own last line is a crate's doc-tests; each fuzz
# target counts as a test).
awk '/^test result:/ { p += $4; f += $6 }
     /^fuzz [a-z]+: ok/ { p++ } /^fuzz [a-z]+: FAILED/ { f++ }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
