#!/usr/bin/env bash
# Redis with no kernel TCP on either side: redis-benchmark under the shim (client role, its
# connect()s through the stack) against redis-server under the shim, their stacks joined by a
# net_memif pair, side by side in one run with the kernel's loopback, the kernel over a veth
# pair between two namespaces, and the unix socket. For each path and load: requests/s, p50 and
# p99 (redis-benchmark's), and the server's and the client's CPU per request (utime+stime of
# every thread, from /proc).
#
#   SKIP_BUILD=1 bash ci/memif-bench.sh          (as root, from the repository root)
#
# Environment: N (requests per run, default 100000), LOADS (default "1:1 50:1 50:16 1000:1",
# clients:pipeline), PATHS (default "memif loopback veth unix"). The server runs on CPU 1, the
# client on CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=memif-bench
N=${N:-100000}
LOADS=${LOADS:-1:1 50:1 50:16 1000:1}
PATHS=${PATHS:-memif loopback veth unix}
if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release -p mtcpshim >&2
fi
SHIM=$PWD/target/release/libmtcpshim.so
for tool in redis-server redis-benchmark; do
    command -v "$tool" >/dev/null || { echo "$NAME: $tool is missing (bash ci/setup.sh)" >&2; exit 2; }
done
TMP=$(mktemp -d)
NS=()
PIDS=()
cleanup() {
    local p n
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
NET=198.18.254
HZ=$(getconf CLK_TCK)
ulimit -n 65536 2>/dev/null || true
ticks() { # PID: utime+stime of every thread
    local t total=0
    for t in /proc/"$1"/task/*/stat; do
        [[ -r $t ]] && total=$((total + $(awk '{print $14 + $15}' "$t" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# Starts the server for PATH; sets SRV (pid), HOSTARGS (redis-benchmark's address arguments),
# CLIENT (the command prefix that runs the client).
start() {
    local path=$1 port=6390
    CLIENT=(taskset -c 0)
    case $path in
        memif)
            local sock=$TMP/memif.sock
            taskset -c 1 env LD_PRELOAD="$SHIM" MTCP_PORTS=$port MTCP_DEV="memif:$sock,server" \
                MTCP_ADDR=$NET.2/24 redis-server --port $port --bind 0.0.0.0 --save "" \
                --protected-mode no >"$TMP/srv.log" 2>&1 &
            HOSTARGS=(-h $NET.2 -p $port)
            CLIENT=(taskset -c 0 env LD_PRELOAD="$SHIM" MTCP_DEV="memif:$sock,client" MTCP_ADDR=$NET.3/24)
            ;;
        loopback)
            taskset -c 1 redis-server --port $port --bind 127.0.0.1 --save "" >"$TMP/srv.log" 2>&1 &
            HOSTARGS=(-h 127.0.0.1 -p $port)
            ;;
        veth)
            local s=mb-s-$$ c=mb-c-$$
            ip netns add $s && NS+=("$s")
            ip netns add $c && NS+=("$c")
            ip link add mbs$$ type veth peer name mbc$$
            ip link set mbs$$ netns $s
            ip link set mbc$$ netns $c
            ip -n $s addr add $NET.2/24 dev mbs$$
            ip -n $c addr add $NET.1/24 dev mbc$$
            ip -n $s link set mbs$$ up
            ip -n $c link set mbc$$ up
            ip netns exec $s taskset -c 1 redis-server --port $port --bind $NET.2 --save "" \
                --protected-mode no >"$TMP/srv.log" 2>&1 &
            HOSTARGS=(-h $NET.2 -p $port)
            CLIENT=(ip netns exec $c taskset -c 0)
            ;;
        unix)
            taskset -c 1 redis-server --port 0 --unixsocket "$TMP/redis.sock" --save "" \
                >"$TMP/srv.log" 2>&1 &
            HOSTARGS=(-s "$TMP/redis.sock")
            ;;
    esac
    SRV=$!
    PIDS+=("$SRV")
    local i
    for i in $(seq 100); do
        grep -qi "ready to accept" "$TMP/srv.log" && return 0
        sleep 0.1
    done
    echo "$NAME: the server for $path does not start:" >&2
    sed 's/^/    /' "$TMP/srv.log" >&2
    return 1
}

stop() {
    kill "$SRV" 2>/dev/null || true
    wait "$SRV" 2>/dev/null || true
    local n
    for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    NS=()
}

printf '%-9s %6s %3s %12s %9s %9s %12s %12s\n' path clients P "GET/s" "p50 ms" "p99 ms" "srv µs/req" "cli µs/req"
for path in $PATHS; do
    start "$path"
    "${CLIENT[@]}" redis-benchmark "${HOSTARGS[@]}" -n 20000 -c 50 -t get -q >/dev/null 2>&1 || true
    for load in $LOADS; do
        c=${load%%:*} p=${load##*:}
        before=$(ticks "$SRV")
        # The client's CPU: what `times` says its subshell's children used (ip netns exec, env
        # and taskset exec in place: the child is the benchmark).
        cli=$(
            "${CLIENT[@]}" redis-benchmark "${HOSTARGS[@]}" -n "$N" -c "$c" -P "$p" -t get \
                --csv >"$TMP/out.csv" 2>"$TMP/err" || echo failed
            times >"$TMP/times"
            tail -1 "$TMP/times"
        )
        after=$(ticks "$SRV")
        if [[ $cli == failed* ]]; then
            echo "$NAME: $path $load failed: $(cat "$TMP/err")" >&2
            continue
        fi
        # "0m1.234s 0m0.567s" -> seconds of user + system time.
        cli=$(awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } print s }' <<<"$cli")
        # "GET","rps","avg","min","p50","p95","p99","max"
        line=$(grep '^"GET' "$TMP/out.csv" | tr -d '"')
        IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"$line"
        awk -v path="$path" -v c="$c" -v p="$p" -v rps="$rps" -v p50="$p50" -v p99="$p99" \
            -v st=$((after - before)) -v ct="$cli" -v hz="$HZ" -v n="$N" \
            'BEGIN { printf "%-9s %6s %3s %12.0f %9s %9s %12.2f %12.2f\n", path, c, p, rps, p50, p99,
                     st / hz * 1e6 / n, ct * 1e6 / n }'
    done
    stop
done
