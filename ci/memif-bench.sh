#!/usr/bin/env bash
# No kernel TCP on either side: a client under the shim (its connect()s through the stack)
# against a server under the shim, their stacks joined by a net_memif pair, side by side in one
# run with the kernel's loopback, the kernel over a veth pair between two namespaces, and (for
# Redis) the unix socket. Two applications: redis-benchmark against redis-server (GET), and wrk
# against nginx (a 1 KiB file, keep-alive, one nginx process). For each path and load:
# requests/s, p50 and p99 (the client's), and the server's and the client's CPU per request
# (utime+stime of every thread, from /proc).
#
#   SKIP_BUILD=1 bash ci/memif-bench.sh          (as root, from the repository root)
#
# Environment: APPS (default "redis nginx"), N (Redis requests per run, default 100000),
# LOADS (Redis, default "1:1 50:1 50:16 1000:1", clients:pipeline), WRK_LOADS (nginx
# connections, default "1 50 1000"), DURATION (seconds per wrk run, default 5), PATHS (default
# "memif memif-spin loopback veth unix"; memif-spin is memif with MTCP_SPIN_US=1000 MTCP_SPIN_ADAPT=off on both
# sides, mtcprun's latency profile; nginx skips unix: wrk has no unix sockets). The server runs
# on CPU 1, the client on CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=memif-bench
APPS=${APPS:-redis nginx}
N=${N:-100000}
WRK_LOADS=${WRK_LOADS:-1 50 1000}
DURATION=${DURATION:-5}
LOADS=${LOADS:-1:1 50:1 50:16 1000:1}
PATHS=${PATHS:-memif memif-spin loopback veth unix}
if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release -p mtcpshim >&2
fi
SHIM=$PWD/target/release/libmtcpshim.so
for tool in redis-server redis-benchmark nginx wrk; do
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

# The client's prefix and the server's for PATH: sets CLIENT and SERVER (command prefixes), ADDR
# (the server's address, empty for the unix socket), BIND (what the server binds); creates
# the namespaces of the veth path. PORT: the server's port.
PORT=6390
paths_for() {
    local path=$1
    CLIENT=(taskset -c 0)
    SERVER=(taskset -c 1)
    case $path in
        memif | memif-spin)
            local sock=$TMP/memif.sock spin=()
            # memif-spin: both sides keep polling 1 ms after their last work (MTCP_SPIN_US=1000
            # MTCP_SPIN_ADAPT=off, mtcprun's latency profile) instead of up to 50 µs.
            [[ $path == memif-spin ]] && spin=(MTCP_SPIN_US=1000 MTCP_SPIN_ADAPT=off)
            SERVER=(taskset -c 1 env LD_PRELOAD="$SHIM" MTCP_PORTS=$PORT
                MTCP_DEV="memif:$sock,server" MTCP_ADDR=$NET.2/24 "${spin[@]}")
            CLIENT=(taskset -c 0 env LD_PRELOAD="$SHIM" MTCP_DEV="memif:$sock,client"
                MTCP_ADDR=$NET.3/24 "${spin[@]}")
            ADDR=$NET.2 BIND=0.0.0.0
            ;;
        loopback)
            ADDR=127.0.0.1 BIND=127.0.0.1
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
            SERVER=(ip netns exec $s taskset -c 1)
            CLIENT=(ip netns exec $c taskset -c 0)
            ADDR=$NET.2 BIND=$NET.2
            ;;
        unix)
            ADDR= BIND=
            ;;
    esac
}

# Starts redis-server for PATH; sets SRV (pid), HOSTARGS (redis-benchmark's address arguments),
# CLIENT (the command prefix that runs the client).
start_redis() {
    local path=$1 port=$PORT
    paths_for "$path"
    if [[ $path == unix ]]; then
        "${SERVER[@]}" redis-server --port 0 --unixsocket "$TMP/redis.sock" --save "" \
            >"$TMP/srv.log" 2>&1 &
        HOSTARGS=(-s "$TMP/redis.sock")
    else
        "${SERVER[@]}" redis-server --port $port --bind $BIND --save "" --protected-mode no \
            >"$TMP/srv.log" 2>&1 &
        HOSTARGS=(-h "$ADDR" -p $port)
    fi
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

# Starts nginx (one process) for PATH serving $WWW; sets SRV and CLIENT.
WWW=$TMP/www
start_nginx() {
    local path=$1 i
    paths_for "$path"
    mkdir -p "$WWW" "$TMP/nginx-tmp"
    [[ -f $WWW/1k.bin ]] || head -c 1024 /dev/urandom >"$WWW/1k.bin"
    # One process: a memif port has one owner, and the other paths are measured alike.
    cat >"$TMP/nginx.conf" <<EOF
user root;
master_process off;
worker_processes 1;
daemon off;
error_log $TMP/nginx-error.log warn;
pid $TMP/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx-tmp;
    server { listen $BIND:$PORT; root $WWW; keepalive_requests 1000000; }
}
EOF
    "${SERVER[@]}" nginx -c "$TMP/nginx.conf" -p "$TMP" -e "$TMP/nginx-error.log" \
        >"$TMP/srv.log" 2>&1 &
    SRV=$!
    PIDS+=("$SRV")
    for i in $(seq 100); do
        if [[ $path == memif* ]]; then
            # The stack publishes its listeners (mtcprun stats) once nginx listens.
            ./target/release/mtcprun stats "$SRV" 2>/dev/null | grep -q "^ *port $PORT " && return 0
        else
            "${SERVER[@]}" ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q . && return 0
        fi
        kill -0 "$SRV" 2>/dev/null || break
        sleep 0.1
    done
    echo "$NAME: nginx for $path does not start:" >&2
    cat "$TMP/srv.log" "$TMP/nginx-error.log" 2>/dev/null | sed 's/^/    /' >&2
    return 1
}

# "0m1.234s 0m0.567s" (the last line of `times`) -> seconds of user + system time.
cpu_of_times() {
    awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } print s }' <<<"$1"
}

bench_redis() {
    printf '%-9s %6s %3s %12s %9s %9s %12s %12s\n' redis clients P "GET/s" "p50 ms" "p99 ms" "srv µs/req" "cli µs/req"
    for path in $PATHS; do
        start_redis "$path"
        "${CLIENT[@]}" redis-benchmark "${HOSTARGS[@]}" -n 20000 -c 50 -t get -q >/dev/null 2>&1 || true
        for load in $LOADS; do
            c=${load%%:*} p=${load##*:}
            before=$(ticks "$SRV")
            # The client's CPU: what `times` says its subshell's children used (ip netns exec,
            # env and taskset exec in place: the child is the benchmark).
            cli=$(
                "${CLIENT[@]}" redis-benchmark "${HOSTARGS[@]}" -n "$N" -c "$c" -P "$p" -t get \
                    --csv >"$TMP/out.csv" 2>"$TMP/err" || echo failed
                times >"$TMP/times"
                tail -1 "$TMP/times"
            )
            after=$(ticks "$SRV")
            if [[ $cli == failed* ]]; then
                echo "$NAME: redis $path $load failed: $(cat "$TMP/err")" >&2
                continue
            fi
            cli=$(cpu_of_times "$cli")
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
}

# wrk's latency percentile q (e.g. 50%) in ms, from "50%  812.00us" / "1.20ms" / "1.02s".
MS='$1 == q { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
  printf "%.3f", (u == "us") ? v / 1000 : (u == "s") ? v * 1000 : v }'

bench_nginx() {
    printf '%-9s %6s %3s %12s %9s %9s %12s %12s\n' nginx clients "" "requests/s" "p50 ms" "p99 ms" "srv µs/req" "cli µs/req"
    for path in $PATHS; do
        [[ $path == unix ]] && continue
        start_nginx "$path"
        local url="http://$ADDR:$PORT/1k.bin"
        "${CLIENT[@]}" wrk -t 1 -c 50 -d 1 "$url" >/dev/null 2>&1 || true
        for c in $WRK_LOADS; do
            before=$(ticks "$SRV")
            cli=$(
                "${CLIENT[@]}" wrk -t 1 -c "$c" -d "$DURATION" --latency "$url" \
                    >"$TMP/wrk.out" 2>"$TMP/err" || echo failed
                times >"$TMP/times"
                tail -1 "$TMP/times"
            )
            after=$(ticks "$SRV")
            if [[ $cli == failed* ]] || ! grep -q '^Requests/sec' "$TMP/wrk.out"; then
                echo "$NAME: nginx $path -c $c failed: $(cat "$TMP/wrk.out" "$TMP/err")" >&2
                continue
            fi
            if grep -qE 'Socket errors|Non-2xx' "$TMP/wrk.out"; then
                echo "$NAME: nginx $path -c $c: $(grep -E 'Socket errors|Non-2xx' "$TMP/wrk.out")" >&2
            fi
            cli=$(cpu_of_times "$cli")
            reqs=$(awk '/ requests in / {print $1}' "$TMP/wrk.out")
            awk -v path="$path" -v c="$c" -v n="$reqs" -v d="$DURATION" \
                -v p50="$(awk -v q=50% "$MS" "$TMP/wrk.out")" -v p99="$(awk -v q=99% "$MS" "$TMP/wrk.out")" \
                -v st=$((after - before)) -v ct="$cli" -v hz="$HZ" \
                'BEGIN { printf "%-9s %6s %3s %12.0f %9s %9s %12.2f %12.2f\n", path, c, "", n / d, p50, p99,
                         st / hz * 1e6 / n, ct * 1e6 / n }'
        done
        stop
    done
}

for app in $APPS; do
    case $app in
        redis) bench_redis ;;
        nginx) bench_nginx ;;
        *) echo "$NAME: unknown application $app (APPS: redis nginx)" >&2; exit 2 ;;
    esac
done
