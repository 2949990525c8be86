#!/usr/bin/env bash
# Builds everything and runs every test: unit tests, and integration tests that start the
# example servers over real DPDK devices (net_tap, net_af_packet) with kernel clients in network
# namespaces they create and delete. Needs root. This is README.md's "test" command.
set -euo pipefail
cd "$(dirname "$0")/.."

# The integration tests run target/release/echo (a binary of another package than the tests').
cargo build --release --workspace --bins
# Two test threads: each integration test runs a DPDK server and a client on a 2-core machine.
cargo test --release --workspace -- --test-threads=2
