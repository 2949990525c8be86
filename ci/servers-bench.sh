#!/usr/bin/env bash
# Worker processes and threads, kernel and shim side by side in one run: nginx serving a 1 KiB
# file under wrk (-c 100; keep-alive, and a new connection per request), memcached under
# memaslap (memcaslap on Debian; 90% get, 10% set), tokio's multi-threaded runtime echoing 64
# bytes (examples/tokio_echo.rs under examples/echo_load.rs, 100 connections), each with 1 and
# 2 workers (nginx worker_processes, memcached -t, tokio worker threads). Prints requests/s, p50/p99 latency (wrk) and the server's
# CPU per request (all its processes and threads: utime+stime from /proc, µs).
#
# Kernel: the server in a namespace of its own, over a veth pair to the client's namespace.
# Shim: the server under LD_PRELOAD=libmtcpshim.so over net_af_packet on its end of the veth
# pair (in its own namespace too, with no address on that end). On this 2-core machine the
# client shares the cores with the server: 1 worker runs on CPU 1 and the client on CPU 0; 2
# workers use both CPUs, as does the client.
#
#   SKIP_BUILD=1 DURATION=5 bash ci/servers-bench.sh      (as root, from the repository root)
#
# Environment: DURATION (s per run, default 5), WORKERS (default "1 2"), SERVERS (default
# "nginx nginx-close memcached tokio"), SIDES (default "kernel shim"), SHIM_ENV (more variables for
# the shim's side, e.g. "MTCP_SPIN_US=0").
set -euo pipefail
NAME=servers-bench
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-5}
WORKERS=${WORKERS:-1 2}
SERVERS=${SERVERS:-nginx nginx-close memcached tokio}
SIDES=${SIDES:-kernel shim}
SHIM_ENV=${SHIM_ENV:-}
SHIM=$PWD/target/release/libmtcpshim.so
if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release -p mtcpshim -p mtcp-examples >&2
fi
TOKIO=$PWD/target/release/tokio-echo
LOAD=$PWD/target/release/echo-load
for tool in nginx wrk memcached memcaslap; do
    command -v "$tool" >/dev/null || { echo "$NAME: $tool is missing (bash ci/setup.sh)" >&2; exit 2; }
done

# CPU ticks (utime+stime) of a process and all its children's threads, by pid list.
ticks_of() {
    local total=0 p t
    for p in "$@"; do
        for t in /proc/"$p"/task/*/stat; do
            [[ -r $t ]] || continue
            total=$((total + $(awk '{print $14 + $15}' "$t" 2>/dev/null || echo 0)))
        done
    done
    echo "$total"
}

tree_of() { # PID: the pid and its children (nginx's master and workers)
    local p=$1
    echo "$p"
    cat /proc/"$p"/task/"$p"/children 2>/dev/null || true
}

HZ=$(getconf CLK_TCK)
# wrk's latency percentile q (e.g. 50%) in ms, from "50%  812.00us" / "1.20ms" / "1.02s".
MS='$1 == q { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
  printf "%.3f", (u == "us") ? v / 1000 : (u == "s") ? v * 1000 : v }'

www=$TMP/www
mkdir -p "$www" "$TMP/nginx-tmp"
head -c 1024 /dev/urandom >"$www/1k.bin"

printf '%-12s %-7s %3s %12s %10s %10s %14s\n' server side w "requests/s" "p50 ms" "p99 ms" "CPU µs/req"

run_one() { # SERVER SIDE WORKERS
    local server=$1 side=$2 w=$3 sns cns sif cif port=8000 srv_pid pids before after reqs lat50 lat99 out
    new_ns sns
    new_ns cns
    new_if sif s
    new_if cif c
    veth "$sns" "$sif" "$cns" "$cif"
    setup_end "$cns" "$cif" "$NET.1/24"
    local cpus=1 ccpus=0
    if [[ $w -gt 1 ]]; then cpus=0-1; ccpus=0-1; fi
    local pre=()
    if [[ $side == kernel ]]; then
        setup_end "$sns" "$sif" "$NET.2/24"
    else
        setup_end "$sns" "$sif"
        pre=(env LD_PRELOAD="$SHIM" MTCP_PORTS=$port MTCP_DEV=af_packet:"$sif" MTCP_ADDR="$NET.2/24" $SHIM_ENV)
    fi
    case $server in
        nginx | nginx-close)
            cat >"$TMP/nginx.conf" <<EOF
user root;
worker_processes $w;
daemon off;
error_log $TMP/nginx-error.log warn;
pid $TMP/nginx.pid;
events { worker_connections 4096; accept_mutex off; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx-tmp;
    server { listen $port; root $www; keepalive_requests 1000000; }
}
EOF
            ip netns exec "$sns" taskset -c $cpus "${pre[@]}" nginx -c "$TMP/nginx.conf" -p "$TMP" \
                -e "$TMP/nginx-error.log" >"$TMP/srv.out" 2>"$TMP/srv.err" &
            ;;
        tokio)
            ip netns exec "$sns" taskset -c $cpus "${pre[@]}" "$TOKIO" $port "$w" \
                >"$TMP/srv.out" 2>"$TMP/srv.err" &
            ;;
        memcached)
            ip netns exec "$sns" taskset -c $cpus "${pre[@]}" memcached -u root -m 1024 -t "$w" \
                -p $port -U 0 -l 0.0.0.0 -c 4096 >"$TMP/srv.out" 2>"$TMP/srv.err" &
            ;;
    esac
    srv_pid=$!
    PIDS+=("$srv_pid")
    # Served once a request is answered from the client's namespace (every worker's stack
    # starts when it first serves; the first requests may wait for a SYN retransmission).
    local i ok=
    for i in $(seq 200); do
        if [[ $server == memcached ]]; then
            ip netns exec "$cns" timeout 2 memcstat --servers="$NET.2:$port" >/dev/null 2>&1 && ok=1
        elif [[ $server == tokio ]]; then
            ip netns exec "$cns" timeout 2 "$LOAD" "$NET.2:$port" 1 1 >/dev/null 2>&1 && ok=1
        else
            ip netns exec "$cns" curl -sf -o /dev/null -m 2 "http://$NET.2:$port/1k.bin" && ok=1
        fi
        [[ -n $ok ]] && break
        sleep 0.05
    done
    if [[ -z $ok ]]; then
        echo "$NAME: $server on the $side does not answer" >&2
        sed 's/^/    /' "$TMP/srv.err" >&2
        return 1
    fi
    # A warm-up second, then the measured run.
    case $server in
        nginx) ip netns exec "$cns" taskset -c $ccpus wrk -t 2 -c 100 -d 1 "http://$NET.2:$port/1k.bin" >/dev/null ;;
        nginx-close) ip netns exec "$cns" taskset -c $ccpus wrk -t 2 -c 100 -d 1 -H "Connection: close" "http://$NET.2:$port/1k.bin" >/dev/null ;;
        memcached) ip netns exec "$cns" taskset -c $ccpus memcaslap -s "$NET.2:$port" -T 2 -c 64 -t 1s >/dev/null 2>&1 || true ;;
        tokio) ip netns exec "$cns" taskset -c $ccpus "$LOAD" "$NET.2:$port" 100 1 >/dev/null ;;
    esac
    pids=$(tree_of "$srv_pid" | xargs)
    before=$(ticks_of $pids)
    case $server in
        nginx | nginx-close)
            local hdr=()
            [[ $server == nginx-close ]] && hdr=(-H "Connection: close")
            out=$(ip netns exec "$cns" taskset -c $ccpus wrk -t 2 -c 100 -d "$DURATION" --latency "${hdr[@]}" \
                "http://$NET.2:$port/1k.bin")
            reqs=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
            lat50=$(awk -f <(echo "$MS") -v q=50% <<<"$out")
            lat99=$(awk -f <(echo "$MS") -v q=99% <<<"$out")
            if grep -q "Socket errors\|Non-2xx" <<<"$out"; then
                echo "$NAME: $server on the $side: $(grep -E 'Socket errors|Non-2xx' <<<"$out")" >&2
            fi
            ;;
        memcached)
            out=$(ip netns exec "$cns" taskset -c $ccpus memcaslap -s "$NET.2:$port" -T 2 -c 64 \
                -t "${DURATION}s" 2>&1)
            reqs=$(awk '/^Run time:/ {for (i = 1; i <= NF; i++) if ($i == "TPS:") print $(i + 1)}' <<<"$out")
            lat50=- lat99=-
            ;;
        tokio)
            out=$(ip netns exec "$cns" taskset -c $ccpus "$LOAD" "$NET.2:$port" 100 "$DURATION")
            reqs=$(awk '{print $2}' <<<"$out")
            lat50=$(awk '{print $4}' <<<"$out")
            lat99=$(awk '{print $6}' <<<"$out")
            [[ $(awk '{print $8}' <<<"$out") == 0 ]] || echo "$NAME: tokio on the $side: $out" >&2
            ;;
    esac
    after=$(ticks_of $pids)
    local cpu_us
    cpu_us=$(awk -v t=$((after - before)) -v hz="$HZ" -v r="$reqs" -v d="$DURATION" \
        'BEGIN { if (r > 0) printf "%.1f", t / hz * 1e6 / (r * d); else print "-" }')
    printf '%-12s %-7s %3s %12s %10s %10s %14s\n' "$server" "$side" "$w" "${reqs:-?}" "$lat50" "$lat99" "$cpu_us"
    stop_bg "$srv_pid"
    del_ns "$sns"
    del_ns "$cns"
}

for server in $SERVERS; do
    for w in $WORKERS; do
        for side in $SIDES; do
            run_one "$server" "$side" "$w"
        done
    done
done
