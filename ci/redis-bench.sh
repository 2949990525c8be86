#!/usr/bin/env bash
# ci/redis-bench.sh: Debian's redis-server under redis-benchmark, on the kernel and through
# mtcpshim, side by side in one run: the same client, the same machine, the same scenarios.
#
#     sudo ci/redis-bench.sh          # from the repository root; about 10 minutes
#
# Paths (server in one namespace on CPU 1, redis-benchmark in another on CPU 0, one veth pair):
#   kernel        redis-server on kernel TCP over the veth pair (offloads off, as for the others)
#   af_packet     redis-server under LD_PRELOAD=libmtcpshim.so, its port on the stack over
#                 net_af_packet on the veth's server end (MTCP_SPIN_US default: 50 µs)
#   af_packet-s0  the same with MTCP_SPIN_US=0 (block as soon as there is no work: the CPU a
#                 request really costs, without the spin)
#   af_xdp-s0     the shim over net_af_xdp on the same veth end, MTCP_SPIN_US=0 (not in the
#                 default PATHS; on a veth, XDP's receive work runs on the sending CPU: the
#                 client's, which RPS cannot change)
#   memif-s0      the shim over net_memif (server role), MTCP_SPIN_US=0; the frames cross
#                 `mtcp-faultbridge --b dpdk:memif:...` (a DPDK process on the client's CPU that
#                 plays the NIC: it moves frames between the memif and the veth's server end).
#                 The only path with no kernel in the server's data path, as on a real NIC: the
#                 server CPU it shows is the shim, the stack and Redis alone. The bridge shares
#                 the client's CPU at normal priority (BRIDGE_PRIO, default "nice -n 0"), which
#                 bounds throughput; "chrt --idle 0" gives it only the client's idle time (more
#                 rps at -c 50, but at -c 1000+ the CPU-bound client starves it and the server's
#                 memif ring overflows: frames lost, seconds of p99) (not in the default
#                 PATHS; needs the mtcp-tests binaries built); `memif`: the same with the
#                 default MTCP_SPIN_US
#   (-sN)         af_packet, af_xdp and memif with any MTCP_SPIN_US: `memif-s10` spins up to
#                 10 µs (as long as spinning catches requests: MTCP_SPIN_ADAPT)
#   tap           under the shim over net_tap (the tap moved into the client's namespace)
#   unix          kernel redis-server over a unix socket (client in the server's namespace):
#                 the ceiling without TCP at all
# Scenarios: c1 (-c 1: light load, a wait and a wake-up per request; not in the default
# SCENARIOS), c50 (-c 50 -P 1), p16 (-c 50 -P 16), d1024 (-d 1024), d65536 (-d 65536),
# c1000 (-c 1000), c10000 (-c 10000); tests GET SET INCR LPUSH LRANGE_100, each its own run.
#
# Per run: rps, p50 and p99 (ms) from `redis-benchmark --csv`, server CPU µs per request
# (utime+stime of the server from /proc/PID/stat across the run, divided by requests), and
# frames per request each way (the client's end of the link: its tx and rx packet counters). Per path:
# syscalls per request (strace -c -f on every server thread during 50,000 GETs at -c 50, or
# with STRACE_ARGS, e.g. "-c 1") and
# idle CPU (% of one core over 5 s with connections closed).
#
# Results: a table on stdout, $OUT/redis.csv (default bench-out/), and, if python3 has
# matplotlib, $OUT/redis-*.png charts (ci/charts.py); $OUT/strace-PATH.txt (the syscalls);
# $OUT/stats-PATH.txt (the stack's counters at the end of a shim path, `mtcprun stats`).
#
# With PROFILE=1 (needs `perf`, Debian's linux-perf): per path, a CPU profile of the server's
# CPU during 100,000 GETs at -c 50 (cpu-clock sampling, which works without hardware counters,
# kernel symbols included; PROFILE_ARGS, default "-c 50", are redis-benchmark's options for
# it): $OUT/profile-PATH.txt, the top symbols and the split between
# redis-server, the shim (libmtcpshim.so) and the kernel.
#
# Environment: N (requests per run, default 100000; x10 for p16, /10 for d65536), TESTS
# (default get,set,incr,lpush,lrange_100), SCENARIOS (default "c50 p16 d1024 d65536 c1000
# c10000"), PATHS (default "kernel af_packet af_packet-s0 tap unix"), MTCP_ENV (extra
# VAR=VALUE words for the shim paths, e.g. "MTCP_TX_DEFER=off" to compare), SKIP_BUILD=1,
# CARGO_TARGET_DIR (default target), OUT.

set -uo pipefail
NAME=redis-bench.sh

echo "# $0 $*"
echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC')  $(uname -r)  $(nproc) CPUs  $(git describe --always --dirty 2>/dev/null || echo "?")  $(redis-server --version | grep -o 'v=[^ ]*')"

# shellcheck source=ci/lib.sh
source "$(dirname "$0")/lib.sh"

TARGET=${CARGO_TARGET_DIR:-target}
LIB=$(realpath -m "$TARGET/release/libmtcpshim.so")
N=${N:-100000}
TESTS=${TESTS:-get,set,incr,lpush,lrange_100}
SCENARIOS=${SCENARIOS:-c50 p16 d1024 d65536 c1000 c10000}
PATHS=${PATHS:-kernel af_packet af_packet-s0 tap unix}
OUT=${OUT:-bench-out}
SRV_CPU=${SRV_CPU:-1}
CLI_CPU=${CLI_CPU:-0}
PORT=6379
export MTCP_HUGEPAGES=${MTCP_HUGEPAGES:-auto}
HZ=$(getconf CLK_TCK)

if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release -p mtcpshim -p mtcprun >&2 || exit 1
    if [[ $PATHS == *memif* ]]; then
        cargo build --release -p mtcp-tests --bin mtcp-faultbridge >&2 || exit 1
    fi
fi
[[ -f $LIB ]] || { echo "$NAME: $LIB missing (build it)" >&2; exit 1; }
# -c 10000 needs 10,000 fds in the client and the server: the hard limit is enough (on these
# machines it is 20000 and cannot be raised; Redis turns maxclients 20000 into 19968).
ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < 10100)) && [[ $SCENARIOS == *c10000* ]]; then
    echo "$NAME: the fd limit $(ulimit -n) is below 10100: scenario c10000 dropped" >&2
    SCENARIOS=${SCENARIOS//c10000/}
fi
mkdir -p "$OUT"
CSV=$OUT/redis.csv
echo "path,scenario,test,rps,p50_ms,p99_ms,cpu_us_per_req,user_us_per_req,sys_us_per_req,frames_in_per_req,frames_out_per_req" >"$CSV"

cpu_ticks() { # PID: utime + stime of the whole process, in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}
user_ticks() { # PID: utime alone
    awk '{print $14}' "/proc/$1/stat"
}

# ------------------------------------------------------------------------- one server

SRV_PID=
BRIDGE_PID=
CLI_NS=
SRV_NS=
CLI_IF= # the client's end of the link (its counters give frames per request); none for unix
TARGET_ARGS=()

start_path() { # PATH: namespaces, devices and a redis-server for it; sets SRV_PID etc.
    local path=$1 sif cif tap env=() ready
    CLI_IF=
    new_ns SRV_NS || return 1
    new_ns CLI_NS || return 1
    local args=(--port "$PORT" --bind 0.0.0.0 --save '' --appendonly no --protected-mode no
        --maxclients 20000 --dir "$TMP")
    case $path in
    kernel | af_packet | af_packet-s[0-9]* | af_xdp-s[0-9]*)
        new_if sif s
        new_if cif c
        veth "$SRV_NS" "$sif" "$CLI_NS" "$cif" || return 1
        setup_end "$CLI_NS" "$cif" "$NET.1/24" || return 1
        CLI_IF=$cif
        # Each end's receive processing on its own side's CPU (RPS), as between two machines:
        # otherwise the client's whole TCP receive path runs in softirq on the server's CPU
        # (veth hands a frame over on the sender's CPU) and counts as server CPU.
        rps "$CLI_NS" "$cif" "$CLI_CPU" || return 1
        rps "$SRV_NS" "$sif" "$SRV_CPU" || return 1
        if [[ $path == kernel ]]; then
            setup_end "$SRV_NS" "$sif" "$NET.2/24" || return 1
        else
            setup_end "$SRV_NS" "$sif" || return 1
            env=(LD_PRELOAD="$LIB" MTCP_PORTS=$PORT MTCP_DEV="${path%%-*}:$sif" MTCP_ADDR="$NET.2/24")
            [[ $path =~ -s([0-9]+)$ ]] && env+=(MTCP_SPIN_US="${BASH_REMATCH[1]}")
        fi
        ;;
    memif | memif-s[0-9]*)
        new_if sif s
        new_if cif c
        veth "$SRV_NS" "$sif" "$CLI_NS" "$cif" || return 1
        setup_end "$CLI_NS" "$cif" "$NET.1/24" || return 1
        setup_end "$SRV_NS" "$sif" || return 1
        CLI_IF=$cif
        # Both ends' kernel receive work on the client's CPU: the bridge is the NIC there.
        rps "$CLI_NS" "$cif" "$CLI_CPU" || return 1
        rps "$SRV_NS" "$sif" "$CLI_CPU" || return 1
        MEMIF_SOCK=$TMP/memif.sock
        env=(LD_PRELOAD="$LIB" MTCP_PORTS=$PORT MTCP_DEV="memif:$MEMIF_SOCK,server"
            MTCP_ADDR="$NET.2/24")
        [[ $path =~ -s([0-9]+)$ ]] && env+=(MTCP_SPIN_US="${BASH_REMATCH[1]}")
        ;;
    tap)
        new_if tap t
        env=(LD_PRELOAD="$LIB" MTCP_PORTS=$PORT MTCP_DEV="tap:$tap" MTCP_ADDR="$NET.2/24")
        ;;
    unix)
        args+=(--unixsocket "$TMP/redis.sock" --unixsocketperm 700)
        ;;
    esac
    # shellcheck disable=SC2206 # MTCP_ENV is a list of words
    [[ ${#env[@]} -gt 0 && -n ${MTCP_ENV:-} ]] && env+=($MTCP_ENV)
    start_bg "redis-$path" "" 30 ip netns exec "$SRV_NS" env "${env[@]}" \
        taskset -c "$SRV_CPU" redis-server "${args[@]}" || return 1
    SRV_PID=$LAST_PID
    for _ in $(seq 600); do
        grep -q "Ready to accept connections" "$TMP/redis-$path.out" && break
        kill -0 "$SRV_PID" 2>/dev/null || { cat "$TMP/redis-$path.out" "$TMP/redis-$path.err" >&2; return 1; }
        sleep 0.05
    done
    if [[ $path == memif* ]]; then
        start_bg "bridge-$path" "faultbridge: ready" 30 ip netns exec "$SRV_NS" env MTCP_LOG=error \
            taskset -c "$CLI_CPU" ${BRIDGE_PRIO:-nice -n 0} "$TARGET/release/mtcp-faultbridge" --a "$sif" \
            --b "dpdk:memif:$MEMIF_SOCK,client" --faults "" || return 1
        BRIDGE_PID=$LAST_PID
    fi
    if [[ $path == tap ]]; then
        # The tap leaves the server's namespace only once its port started.
        ip -n "$SRV_NS" link set "$tap" netns "$CLI_NS" || return 1
        setup_end "$CLI_NS" "$tap" "$NET.1/24" || return 1
        CLI_IF=$tap
    fi
    # Thousands of client connections per run, run after run: the client recycles its ports
    # out of TIME_WAIT (else the second -c 10000 run finds none left).
    ip netns exec "$CLI_NS" sysctl -qw net.ipv4.tcp_tw_reuse=1 \
        net.ipv4.ip_local_port_range="1024 65000" || return 1
    if [[ $path == unix ]]; then
        TARGET_ARGS=(-s "$TMP/redis.sock")
        CLI_NS=$SRV_NS
    else
        TARGET_ARGS=(-h "$NET.2" -p "$PORT")
    fi
    for _ in $(seq 200); do
        [[ $(ip netns exec "$CLI_NS" redis-cli "${TARGET_ARGS[@]}" ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.05
    done
    echo "$NAME: $path: no PONG" >&2
    return 1
}

rps() { # NS IF CPU: the interface's receive processing on CPU
    ip netns exec "$1" sh -c "printf %x $((1 << $3)) >/sys/class/net/$2/queues/rx-0/rps_cpus"
}

frames() { # tx|rx: the client's end's frame counter (tx: to the server), or - without a link
    if [[ -n $CLI_IF ]]; then
        ip netns exec "$CLI_NS" cat "/sys/class/net/$CLI_IF/statistics/$1_packets"
    else
        echo -
    fi
}

stop_path() {
    [[ -n $BRIDGE_PID ]] && stop_bg "$BRIDGE_PID"
    BRIDGE_PID=
    stop_bg "$SRV_PID"
    del_ns "$CLI_NS"
    [[ $SRV_NS != "$CLI_NS" ]] && del_ns "$SRV_NS"
    SRV_PID=
}

bench() { # PATH SCENARIO TEST ARGS...: one redis-benchmark run, one CSV row
    local path=$1 scen=$2 test=$3 t0 t1 u0 u1 i0 i1 o0 o1 line rps p50 p99 n cpu usr sys fin fout
    shift 3
    n=$N
    [[ $scen == p16 ]] && n=$((N * 10))
    [[ $scen == d65536 ]] && n=$((N / 10))
    t0=$(cpu_ticks "$SRV_PID")
    u0=$(user_ticks "$SRV_PID")
    i0=$(frames tx)
    o0=$(frames rx)
    line=$(timeout 300 ip netns exec "$CLI_NS" taskset -c "$CLI_CPU" redis-benchmark \
        "${TARGET_ARGS[@]}" --csv -n "$n" -t "$test" -r 10000 "$@" 2>"$TMP/bench.err" | tail -1)
    t1=$(cpu_ticks "$SRV_PID")
    u1=$(user_ticks "$SRV_PID")
    i1=$(frames tx)
    o1=$(frames rx)
    IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"${line//\"/}"
    if [[ -z $rps || $rps == rps ]]; then
        echo "  $path $scen $test: failed: $(tail -2 "$TMP/bench.err")" >&2
        return
    fi
    per_req() { awk -v d="$1" -v hz="$HZ" -v n="$n" 'BEGIN{printf "%.2f", d * 1e6 / hz / n}'; }
    cpu=$(per_req $((t1 - t0)))
    usr=$(per_req $((u1 - u0)))
    sys=$(per_req $((t1 - t0 - u1 + u0)))
    fin=- fout=-
    if [[ $i0 != - ]]; then # frames on the link per request, each way (in: to the server)
        fin=$(awk -v d=$((i1 - i0)) -v n="$n" 'BEGIN{printf "%.2f", d / n}')
        fout=$(awk -v d=$((o1 - o0)) -v n="$n" 'BEGIN{printf "%.2f", d / n}')
    fi
    printf '  %-13s %-7s %-11s %12s rps  p50 %7s ms  p99 %7s ms  cpu %6s us/req (user %s, sys %s)  frames/req in %s out %s\n' \
        "$path" "$scen" "$test" "$rps" "$p50" "$p99" "$cpu" "$usr" "$sys" "$fin" "$fout"
    echo "$path,$scen,$test,$rps,$p50,$p99,$cpu,$usr,$sys,$fin,$fout" >>"$CSV"
}

traced_gets() { # N "BENCH ARGS" TRACER...: TRACER runs (in the background) while
    # redis-benchmark sends N GETs with BENCH ARGS, then gets SIGINT, as strace and perf want.
    local n=$1 args=$2 tpid
    shift 2
    "$@" 2>/dev/null &
    tpid=$!
    PIDS+=("$tpid")
    sleep 1 # strace and perf attach asynchronously; they print nothing to wait on
    # shellcheck disable=SC2086 # args is a list of words
    ip netns exec "$CLI_NS" taskset -c "$CLI_CPU" redis-benchmark "${TARGET_ARGS[@]}" -q \
        -n "$n" -t get $args >/dev/null 2>&1
    kill -INT "$tpid" 2>/dev/null
    wait "$tpid" 2>/dev/null
}

syscalls_per_request() { # PATH: strace -c over every server thread during 50,000 GETs
    local tids=() t total
    for t in /proc/"$SRV_PID"/task/*; do tids+=(-p "${t##*/}"); done
    # shellcheck disable=SC2086 # STRACE_ARGS is a list of words
    traced_gets 50000 "${STRACE_ARGS:--c 50}" strace -c -f -o "$TMP/strace.txt" "${tids[@]}"
    cp "$TMP/strace.txt" "$OUT/strace-$1.txt"
    total=$(awk '$NF == "total" {print $4}' "$TMP/strace.txt")
    awk -v t="${total:-0}" 'BEGIN{printf "%.2f", t / 50000}'
}

profile() { # PATH: where the server's CPU goes during 100,000 GETs at -c 50
    local f=$OUT/profile-$1.txt
    traced_gets 100000 "${PROFILE_ARGS:--c 50}" \
        perf record -q -e cpu-clock -F 4999 -C "$SRV_CPU" -g -o "$TMP/perf.data"
    {
        echo "# $1: the server's samples on CPU $SRV_CPU during 100,000 GETs (${PROFILE_ARGS:--c 50}), by object"
        perf report -i "$TMP/perf.data" --pid "$SRV_PID" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
        echo "# $1: inclusive share of kernel entry points (children included)"
        perf report -i "$TMP/perf.data" --pid "$SRV_PID" --children --sort sym --stdio -g none 2>/dev/null |
            grep -E '\] (entry_SYSCALL_64|asm_common_interrupt|asm_sysvec_call_function_single|irq_exit_rcu|packet_sendmsg|tpacket_rcv|net_rx_action|__netif_receive_skb_core|tcp_v4_rcv|tcp_sendmsg|tcp_recvmsg|ep_poll|do_epoll_wait|__x64_sys_epoll_wait|__x64_sys_read|__x64_sys_write|__x64_sys_sendto|__x64_sys_ppoll|__x64_sys_poll)$' |
            head -20
        echo "# $1: top symbols"
        perf report -i "$TMP/perf.data" --pid "$SRV_PID" --no-children --sort dso,sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
    } >"$f"
    sed -n '1,6p' "$f" | sed 's/^/  /'
}

idle_cpu() { # PATH: % of one core the server uses over 5 s with no client
    local t0 t1
    # First every connection of the runs must be gone (closing 10,000 is work, not idling).
    for _ in $(seq 600); do
        [[ $(ip netns exec "$CLI_NS" redis-cli "${TARGET_ARGS[@]}" info clients 2>/dev/null |
            tr -d '\r' | sed -n 's/^connected_clients://p') == 1 ]] && break
        sleep 0.05
    done
    sleep 1 # the stack's last FIN/ACK exchanges and timers after Redis closed them
    t0=$(cpu_ticks "$SRV_PID")
    sleep 5
    t1=$(cpu_ticks "$SRV_PID")
    awk -v d=$((t1 - t0)) -v hz="$HZ" 'BEGIN{printf "%.1f", d * 100 / hz / 5}'
}

declare -A SYSC IDLE
for path in $PATHS; do
    echo "== $path"
    if ! start_path "$path"; then
        echo "  $path: could not start, skipped" >&2
        [[ -n $SRV_PID ]] && stop_path
        continue
    fi
    for scen in $SCENARIOS; do
        case $scen in
        c1) a=(-c 1) ;;
        c50) a=(-c 50) ;;
        p16) a=(-c 50 -P 16) ;;
        d1024) a=(-c 50 -d 1024) ;;
        d65536) a=(-c 50 -d 65536) ;;
        c1000) a=(-c 1000) ;;
        c10000) a=(-c 10000) ;;
        *) echo "$NAME: unknown scenario $scen" >&2; continue ;;
        esac
        # Each scenario starts from an empty database: -d 65536 would leave 64 KiB values
        # under the keys the next scenario's GETs read.
        ip netns exec "$CLI_NS" redis-cli "${TARGET_ARGS[@]}" flushall >/dev/null 2>&1
        for test in ${TESTS//,/ }; do
            bench "$path" "$scen" "$test" "${a[@]}"
        done
    done
    SYSC[$path]=$(syscalls_per_request "$path")
    [[ -n ${PROFILE:-} ]] && profile "$path"
    IDLE[$path]=$(idle_cpu "$path")
    echo "  $path: syscalls/request ${SYSC[$path]}  idle CPU ${IDLE[$path]}%"
    echo "$path,idle,cpu_percent,,,,${IDLE[$path]},,,," >>"$CSV"
    echo "$path,syscalls,get_c50,,,,${SYSC[$path]},,,," >>"$CSV"
    # The stack's counters after all of the path's runs (drops, retransmissions, ...).
    if [[ $path != kernel && $path != unix ]] && [[ -x $TARGET/release/mtcprun ]]; then
        "$TARGET/release/mtcprun" stats "$SRV_PID" >"$OUT/stats-$path.txt" 2>&1
    fi
    stop_path
done

# ------------------------------------------------------------------------- summary

echo
echo "== side by side (rps; cpu us/request), GET"
/usr/bin/python3 - "$CSV" "$PATHS" "$SCENARIOS" <<'EOF'
import csv, statistics, sys
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1])))
paths, scens = sys.argv[2].split(), sys.argv[3].split()
# A path named more than once ran once per mention, in order: its k-th mention is its k-th
# row of a scenario, and the ratios pair each run with the kernel's run of the same turn.
runs = defaultdict(list)
for r in rows:
    if r["test"].lower() == "get":
        runs[(r["path"], r["scenario"])].append(r)
turn, cols = defaultdict(int), []
for p in paths:
    cols.append((p, turn[p]))
    turn[p] += 1
def run(p, k, s):
    got = runs.get((p, s), [])
    return got[k] if k < len(got) else None
print("%-8s" % "" + "".join("%26s" % p for p in paths))
for s in scens:
    cells = []
    for p, k in cols:
        r = run(p, k, s)
        cells.append("%26s" % ("%s; %s" % (r["rps"], r["cpu_us_per_req"]) if r else "-"))
    print("%-8s" % s + "".join(cells))
for p in dict.fromkeys(paths):
    extra = {r["scenario"]: r["cpu_us_per_req"] for r in rows if r["path"] == p and r["scenario"] in ("idle", "syscalls")}
    if extra:
        print("%-13s syscalls/request %s, idle CPU %s%%" % (p, extra.get("syscalls", "-"), extra.get("idle", "-")))
for p in dict.fromkeys(paths):
    if p == "kernel":
        continue
    ratios = []
    for k in range(turn[p]):
        r, kr = run(p, k, "c50"), run("kernel", k, "c50")
        if r and kr and float(kr["cpu_us_per_req"]) > 0:
            ratios.append(float(r["cpu_us_per_req"]) / float(kr["cpu_us_per_req"]))
    if len(ratios) == 1:
        print("%-13s server CPU per GET at -c 50: %.2fx the kernel's" % (p, ratios[0]))
    elif ratios:
        print("%-13s server CPU per GET at -c 50: %s the kernel's (runs paired in turn; median %.2fx)"
              % (p, ", ".join("%.2fx" % x for x in ratios), statistics.median(ratios)))
for p in dict.fromkeys(paths):
    u, r = run("unix", 0, "p16"), run(p, 0, "p16")
    if u and r and p != "unix":
        print("%-13s GET -P 16: %.0f%% of the unix socket's rate" % (p, 100 * float(r["rps"]) / float(u["rps"])))
EOF
if /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
    /usr/bin/python3 "$(dirname "$0")/charts.py" "$CSV" "$OUT" && echo "charts: $OUT/redis-*.png"
fi
echo "results: $CSV"
