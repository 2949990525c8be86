#!/usr/bin/env bash
# ci/redis-callgrind.sh: instructions per Redis request in user space, counted by valgrind's
# callgrind (exact and repeatable, unlike time on a shared VM; it does not see the kernel),
# for redis-server on kernel TCP and under mtcpshim over net_af_packet, the same client load.
#
#     sudo ci/redis-callgrind.sh          # from the repository root; about 3 minutes
#
# Per path: redis-server runs under callgrind in one namespace (over a veth pair to the
# client's), is warmed up with 2,000 GETs, its counters are zeroed, then redis-benchmark sends
# N GETs at -c 50 and the counters are dumped. ci/callgrind-summary.py prints instructions per
# request by object (redis-server, libmtcpshim.so, libc, ...) and by function, and the
# inclusive cost of the shim's entry points. Callgrind slows the server ~50x, so it serves more
# requests per event-loop iteration than at full speed and timer-driven work (delayed ACKs)
# falls on fewer requests: per-request costs of batched work are lower bounds.
#
# Output: $OUT/callgrind-PATH.txt and the raw $OUT/callgrind-PATH.out (callgrind_annotate,
# kcachegrind). Environment: N (default 20000), OUT (default bench-out), PATHS (default
# "kernel af_packet"; af_packet-cache: af_packet with the GET cache, MTCP_REDIS_CACHE=64M), BENCH (redis-benchmark's options, default "-c 50 -t get"; e.g.
# "-c 50 -t lrange_100 -d 1024", where each of the N LRANGEs comes after one of N LPUSHes,
# so "per request" is per LPUSH+LRANGE pair), WARMUP (the warm-up runs' redis-benchmark
# options, runs separated by ";", default "-n 2000 $BENCH"; e.g. "-n 2000 -c 50 -t get; -n 20000
# -c 50 -t set" for SETs after the cache has been filled and has gone quiet), VG_OPTS (more callgrind options, e.g.
# "--dump-instr=yes" for costs per instruction), SKIP_BUILD=1, CARGO_TARGET_DIR.

set -uo pipefail
NAME=redis-callgrind.sh
# shellcheck source=ci/lib.sh
source "$(dirname "$0")/lib.sh"

TARGET=${CARGO_TARGET_DIR:-target}
LIB=$(realpath -m "$TARGET/release/libmtcpshim.so")
N=${N:-20000}
OUT=${OUT:-bench-out}
PATHS=${PATHS:-kernel af_packet}
BENCH=${BENCH:--c 50 -t get}
PORT=6379
if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release -p mtcpshim >&2 || exit 1
fi
command -v valgrind >/dev/null || { echo "$NAME: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
mkdir -p "$OUT"
echo "# $0: $(date -u '+%Y-%m-%d %H:%M:%S UTC')  $(git describe --always --dirty 2>/dev/null)  N=$N, redis-benchmark $BENCH"

for path in $PATHS; do
    new_ns SRV || exit 1
    new_ns CLI || exit 1
    new_if sif s
    new_if cif c
    veth "$SRV" "$sif" "$CLI" "$cif" || exit 1
    setup_end "$CLI" "$cif" "$NET.1/24" || exit 1
    env=()
    case $path in
    kernel) setup_end "$SRV" "$sif" "$NET.2/24" || exit 1 ;;
    af_packet | af_packet-cache)
        setup_end "$SRV" "$sif" || exit 1
        env=(LD_PRELOAD="$LIB" MTCP_PORTS=$PORT MTCP_DEV="af_packet:$sif" MTCP_ADDR="$NET.2/24"
            MTCP_HUGEPAGES=no MTCP_SPIN_US=0)
        [[ $path == af_packet-cache ]] && env+=(MTCP_REDIS_CACHE=64M)
        ;;
    *) echo "$NAME: unknown path $path" >&2; exit 2 ;;
    esac
    raw=$OUT/callgrind-$path.out
    rm -f "$raw"*
    # shellcheck disable=SC2086 # VG_OPTS is a list of words
    start_bg "redis-$path" "" 30 ip netns exec "$SRV" env "${env[@]}" valgrind --tool=callgrind \
        ${VG_OPTS:-} --callgrind-out-file="$raw" redis-server --port "$PORT" --bind 0.0.0.0 --save '' \
        --appendonly no --protected-mode no || exit 1
    pid=$LAST_PID
    ok=
    for _ in $(seq 600); do
        [[ $(ip netns exec "$CLI" redis-cli -h "$NET.2" -p "$PORT" ping 2>/dev/null) == PONG ]] && { ok=1; break; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n $ok ]] || { echo "$NAME: $path: redis-server under valgrind did not answer" >&2; cat "$TMP/redis-$path.err" >&2; exit 1; }
    IFS=';' read -ra warmups <<<"${WARMUP:--n 2000 $BENCH}"
    for w in "${warmups[@]}"; do
        # shellcheck disable=SC2086 # a list of words
        ip netns exec "$CLI" redis-benchmark -h "$NET.2" -p "$PORT" -q $w >/dev/null 2>&1
    done
    callgrind_control -z "$pid" >/dev/null 2>&1
    # shellcheck disable=SC2086
    ip netns exec "$CLI" redis-benchmark -h "$NET.2" -p "$PORT" -q -n "$N" $BENCH 2>/dev/null | tr '\r' '\n' | tail -1
    callgrind_control -d "$pid" >/dev/null 2>&1
    stop_bg "$pid"
    # The dump after the measured run is the file's part 1.
    /usr/bin/python3 "$(dirname "$0")/callgrind-summary.py" "$raw.1" "$N" 30 \
        '^(mtcpshim::|userstack::|smoltcp::iface::interface::Interface::poll|epoll_wait$|read$|write$|aeProcessEvents|beforeSleep|readQueryFromClient|writeToClient)' \
        >"$OUT/callgrind-$path.txt"
    echo "== $path"
    sed -n '1,8p' "$OUT/callgrind-$path.txt"
    del_ns "$CLI"
    del_ns "$SRV"
done
