#!/usr/bin/env bash
# ci/cache-bench.sh: the Redis GET cache (MTCP_REDIS_CACHE) off and on, side by side in one run:
# Debian's redis-server under LD_PRELOAD=libmtcpshim.so, the same path, client and workloads.
#
#     sudo ci/cache-bench.sh          # from the repository root; about 4 minutes
#
# Path: the server in one namespace on CPU 1 (SRV_CPU), its port on the stack over the device
# DEV (default af_packet, on the server's end of a veth pair), redis-benchmark in another
# namespace on CPU 0 (CLI_CPU) at the other end. MODES (default "off on"): the cache off, and
# on with 64 MiB; each mode its own fresh server, the modes alternating ROUNDS times (default
# 2; every other round in reverse order, so that neither a drift of the machine's speed nor
# the order of a round's two servers favours one mode), and the medians shown.
#
# Workloads (KEYS and -P from the name; -c 50 each):
#   get1k / get100k       GET of keys from a set of 1,000 / 100,000 (all written first)
#   mix                   90/10 GET/SET: two redis-benchmarks at once, 45 clients GETting and
#                         5 SETting the same 1,000 keys (the rps is the sum; latency the GETs')
#   set                   SET only, 1,000 keys: what the cache costs writers (invalidations)
# Before each run every key is written, and (but for set) read once over (10 GETs per key), in
# both modes: with the cache on, the runs measure it warm.
#   each at -P 1 and -P 16 (suffix p1, p16).
# Per run: rps, p50 and p99 (ms), server CPU µs per request (utime+stime of the server across
# the run, divided by requests), requests per sleep of the server (its threads' voluntary
# context switches), and the cache's hit rate (hits / (hits + misses), from `mtcprun stats`).
#
# SRV_QUOTA=P: the server may use P% of a CPU (a cgroup of its own, CFS quota over 10 ms
# periods, and MTCP_SPIN_US=0: spinning would spend the quota; SRV_SPIN_US=N spins N µs
# instead), so that the server, not the client, bounds the rps in both modes: the rps ratio
# then shows what the cache saves of the server's CPU (over the kernel path, on 2 CPUs, the
# client is the bound without it).
#
# Environment: N (requests per run, default 200000; x5 for -P 16), WORKLOADS (default "get1k
# get100k mix set"), PIPES (default "1 16"), DEV (af_packet or memif), ROUNDS, SKIP_BUILD=1,
# CARGO_TARGET_DIR, OUT (default bench-out/; the rows go to $OUT/cache.csv), PERF=1 (each run's
# server sampled by `perf record -e cpu-clock -g` into $OUT/perf-MODE-WORKLOAD-pP.data; the
# sampling costs both modes alike), SYSCALLS=1 (the server's system calls per request, counted
# by `perf stat -e raw_syscalls:sys_enter`).
#
# CLIENT=shim: redis-benchmark runs under the shim too, its stack the client end of a net_memif
# pair whose server end is redis-server's (no kernel TCP on either side, no bridge; DEV is
# ignored). Over the kernel a client costs more per request than the server with the cache
# (the client's CPU bounds the rps); here it does not. The mix's 5 SET clients and the
# script's own redis-cli calls go to the server's kernel side (127.0.0.1) then.
# MEMIF_RING=N: the pair's rings of 2^N slots (`ring=N` in both MTCP_DEVs; default 13).

set -uo pipefail
NAME=cache-bench.sh

echo "# $0 $*"
echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC')  $(uname -r)  $(nproc) CPUs  $(git describe --always --dirty 2>/dev/null || echo "?")  $(redis-server --version | grep -o 'v=[^ ]*')"

# shellcheck source=ci/lib.sh
source "$(dirname "$0")/lib.sh"

TARGET=${CARGO_TARGET_DIR:-target}
LIB=$(realpath -m "$TARGET/release/libmtcpshim.so")
MTCPRUN=$TARGET/release/mtcprun
N=${N:-200000}
WORKLOADS=${WORKLOADS:-get1k get100k mix set}
PIPES=${PIPES:-1 16}
MODES=${MODES:-off on}
ROUNDS=${ROUNDS:-2}
DEV=${DEV:-af_packet}
CLIENT=${CLIENT:-kernel}
[[ $CLIENT == shim ]] && DEV=memif-pair
RING=${MEMIF_RING:+,ring=$MEMIF_RING}
OUT=${OUT:-bench-out}
SRV_CPU=${SRV_CPU:-1}
SRV_QUOTA=${SRV_QUOTA:-}
CGROUP=
CLI_CPU=${CLI_CPU:-0}
PORT=6379
export MTCP_HUGEPAGES=${MTCP_HUGEPAGES:-auto}
HZ=$(getconf CLK_TCK)

if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release -p mtcpshim -p mtcprun >&2 || exit 1
    if [[ $DEV == memif ]]; then
        cargo build --release -p mtcp-tests --bin mtcp-faultbridge >&2 || exit 1
    fi
fi
[[ -f $LIB && -x $MTCPRUN ]] || { echo "$NAME: $LIB or $MTCPRUN missing (build them)" >&2; exit 1; }
mkdir -p "$OUT"
CSV=$OUT/cache.csv
echo "round,mode,workload,pipeline,rps,p50_ms,p99_ms,cpu_us_per_req,user_us_per_req,hit_rate" >"$CSV"

SRV_PID= BRIDGE_PID= SRV_NS= CLI_NS=

start_server() { # MODE: namespaces, veth, redis-server under the shim (cache off or on)
    local mode=$1 sif cif env
    new_ns SRV_NS || return 1
    new_ns CLI_NS || return 1
    new_if sif s
    new_if cif c
    veth "$SRV_NS" "$sif" "$CLI_NS" "$cif" || return 1
    setup_end "$CLI_NS" "$cif" "$NET.1/24" || return 1
    setup_end "$SRV_NS" "$sif" || return 1
    ip netns exec "$CLI_NS" sh -c "printf %x $((1 << CLI_CPU)) >/sys/class/net/$cif/queues/rx-0/rps_cpus"
    env=(LD_PRELOAD="$LIB" MTCP_PORTS=$PORT MTCP_ADDR="$NET.2/24")
    if [[ $DEV == memif ]]; then
        ip netns exec "$SRV_NS" sh -c "printf %x $((1 << CLI_CPU)) >/sys/class/net/$sif/queues/rx-0/rps_cpus"
        env+=(MTCP_DEV="memif:$TMP/memif.sock,server")
    elif [[ $DEV == memif-pair ]]; then
        env+=(MTCP_DEV="memif:$TMP/memif.sock,server$RING")
    else
        ip netns exec "$SRV_NS" sh -c "printf %x $((1 << SRV_CPU)) >/sys/class/net/$sif/queues/rx-0/rps_cpus"
        env+=(MTCP_DEV="$DEV:$sif")
    fi
    [[ $mode == on ]] && env+=(MTCP_REDIS_CACHE=64M)
    [[ -n $SRV_QUOTA ]] && env+=(MTCP_SPIN_US="${SRV_SPIN_US:-0}")
    start_bg "redis-$mode" "" 30 ip netns exec "$SRV_NS" env "${env[@]}" taskset -c "$SRV_CPU" \
        redis-server --port "$PORT" --bind 0.0.0.0 --save '' --appendonly no \
        --protected-mode no --dir "$TMP" || return 1
    SRV_PID=$LAST_PID
    if [[ -n $SRV_QUOTA ]]; then
        quota_server "$SRV_PID" || return 1
    fi
    for _ in $(seq 600); do
        grep -q "Ready to accept connections" "$TMP/redis-$mode.out" && break
        sleep 0.05
    done
    if [[ $DEV == memif ]]; then
        start_bg "bridge-$mode" "faultbridge: ready" 30 ip netns exec "$SRV_NS" env MTCP_LOG=error \
            taskset -c "$CLI_CPU" "$TARGET/release/mtcp-faultbridge" --a "$sif" \
            --b "dpdk:memif:$TMP/memif.sock,client" --faults "" || return 1
        BRIDGE_PID=$LAST_PID
    fi
    for _ in $(seq 200); do
        [[ $(cli ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.05
    done
    echo "$NAME: no PONG" >&2
    return 1
}

# The server's CPU limited to SRV_QUOTA% of one CPU: a cgroup of its own (v2's cpu.max, or
# v1's CFS quota), removed when the server stops.
quota_server() { # PID
    local us=$((SRV_QUOTA * 100))
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        CGROUP=/sys/fs/cgroup/mtcp-cachebench-$$
        mkdir -p "$CGROUP" && echo "$us 10000" >"$CGROUP/cpu.max"
    else
        CGROUP=/sys/fs/cgroup/cpu/mtcp-cachebench-$$
        mkdir -p "$CGROUP" && echo 10000 >"$CGROUP/cpu.cfs_period_us" &&
            echo "$us" >"$CGROUP/cpu.cfs_quota_us"
    fi || { echo "$NAME: cannot make a CPU cgroup for SRV_QUOTA" >&2; return 1; }
    echo "$1" >"$CGROUP/cgroup.procs"
}

drop_cgroup() {
    [[ -n $CGROUP ]] || return 0
    rmdir "$CGROUP" 2>/dev/null
    CGROUP=
}
extra_cleanup() { drop_cgroup; }

stop_server() {
    [[ -n $BRIDGE_PID ]] && stop_bg "$BRIDGE_PID"
    BRIDGE_PID=
    stop_bg "$SRV_PID"
    drop_cgroup
    del_ns "$CLI_NS"
    del_ns "$SRV_NS"
}

cli() {
    if [[ $CLIENT == shim ]]; then
        ip netns exec "$SRV_NS" redis-cli -h 127.0.0.1 -p "$PORT" "$@"
    else
        ip netns exec "$CLI_NS" redis-cli -h "$NET.2" -p "$PORT" "$@"
    fi
}

# The prefix that runs a redis-benchmark of the client's (under the shim with CLIENT=shim).
CLIENT_ENV=()
if [[ $CLIENT == shim ]]; then
    CLIENT_ENV=(env LD_PRELOAD="$LIB" MTCP_DEV="memif:$TMP/memif.sock,client$RING" MTCP_ADDR="$NET.3/24")
fi

benchmark() { # ARGS...: redis-benchmark on the client's CPU, its CSV line
    # (With CLIENT=shim in the server's namespace: the memif socket is an abstract one, which
    # only a process of the same network namespace reaches.)
    local ns=$CLI_NS
    [[ $CLIENT == shim ]] && ns=$SRV_NS
    timeout 600 ip netns exec "$ns" "${CLIENT_ENV[@]}" taskset -c "$CLI_CPU" redis-benchmark \
        -h "$NET.2" -p "$PORT" --csv "$@" 2>>"$TMP/bench.err" | tail -1 | tr -d '"'
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SRV_PID/stat"; }
user_ticks() { awk '{print $14}' "/proc/$SRV_PID/stat"; }
# The server's voluntary context switches (its threads' sleeps), all threads.
sleeps() { cat /proc/"$SRV_PID"/task/*/status | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s}'; }

stat_value() { # NAME: a counter of the server's stack (0 without one)
    "$MTCPRUN" stats "$SRV_PID" 2>/dev/null | awk -v n="$1" '$1 == n {print $2; exit}' | grep . || echo 0
}

run() { # ROUND MODE WORKLOAD PIPELINE: one run, one CSV row
    local round=$1 mode=$2 w=$3 p=$4 n=$N keys=1000 t0 t1 u0 u1 s0 s1 h0 h1 m0 m1 line rps p50 p99 r2
    [[ $p -gt 1 ]] && n=$((N * 5))
    [[ $w == get100k ]] && keys=100000
    cli flushall >/dev/null
    # Every key exists: GETs find values, as a cache in front of a loaded store would; and a
    # first pass of GETs (as in every mode) fills the cache: the run measures it warm.
    benchmark -t set -r "$keys" -n $((keys * 10)) -c 50 -P 16 -d 16 >/dev/null
    [[ $w != set ]] && benchmark -t get -r "$keys" -n $((keys * 10)) -c 50 -P 1 >/dev/null
    t0=$(cpu_ticks)
    u0=$(user_ticks)
    s0=$(sleeps)
    h0=$(stat_value hits)
    m0=$(stat_value misses)
    local perf_pid= count_pid=
    if [[ -n ${PERF:-} ]]; then
        perf record -q -e cpu-clock -g -p "$SRV_PID" -o "$OUT/perf-$mode-$w-p$p.data" 2>/dev/null &
        perf_pid=$!
    fi
    if [[ -n ${SYSCALLS:-} ]]; then
        perf stat -x, -e raw_syscalls:sys_enter -p "$SRV_PID" -o "$TMP/syscalls.csv" 2>/dev/null &
        count_pid=$!
    fi
    case $w in
    get1k | get100k)
        line=$(benchmark -t get -r "$keys" -n "$n" -c 50 -P "$p")
        IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"$line"
        ;;
    set)
        line=$(benchmark -t set -r "$keys" -n "$n" -c 50 -P "$p")
        IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"$line"
        ;;
    mix)
        local setter=(ip netns exec "$CLI_NS" taskset -c "$CLI_CPU" redis-benchmark -h "$NET.2")
        if [[ $CLIENT == shim ]]; then
            # (One client process per memif pair: the SETs take the server's kernel side.)
            setter=(ip netns exec "$SRV_NS" taskset -c "$CLI_CPU" redis-benchmark -h 127.0.0.1)
        fi
        timeout 600 "${setter[@]}" \
            -p "$PORT" --csv -t set -r "$keys" -n $((n / 10)) -c 5 -P "$p" 2>>"$TMP/bench.err" |
            tail -1 | tr -d '"' >"$TMP/sets.csv" &
        local spid=$!
        line=$(benchmark -t get -r "$keys" -n $((n * 9 / 10)) -c 45 -P "$p")
        wait "$spid"
        IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"$line"
        IFS=, read -r _ r2 _ <<<"$(cat "$TMP/sets.csv")"
        rps=$(awk -v a="$rps" -v b="$r2" 'BEGIN{printf "%.2f", a + b}')
        ;;
    esac
    t1=$(cpu_ticks)
    u1=$(user_ticks)
    s1=$(sleeps)
    local pid sys=
    for pid in $perf_pid $count_pid; do
        kill -INT "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ -n $count_pid ]]; then
        sys=$(awk -F, -v n="$n" '/sys_enter/ {printf "  syscalls %.3f/req", $1 / n}' "$TMP/syscalls.csv")
    fi
    h1=$(stat_value hits)
    m1=$(stat_value misses)
    if [[ -z ${rps:-} || $rps == rps ]]; then
        echo "  $mode $w -P $p: failed: $(tail -2 "$TMP/bench.err")" >&2
        return
    fi
    local cpu usr hit per
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$n" 'BEGIN{printf "%.2f", d * 1e6 / hz / n}')
    usr=$(awk -v d=$((u1 - u0)) -v hz="$HZ" -v n="$n" 'BEGIN{printf "%.2f", d * 1e6 / hz / n}')
    per=$(awk -v s=$((s1 - s0)) -v n="$n" 'BEGIN{printf "%.0f", s ? n / s : n}')
    hit=$(awk -v h=$((h1 - h0)) -v m=$((m1 - m0)) 'BEGIN{printf "%.3f", (h + m) ? h / (h + m) : 0}')
    printf '  %-3s %-8s -P %-3s %12s rps  p50 %7s ms  p99 %7s ms  cpu %6s us/req (user %s)  req/sleep %s  hits %s%s\n' \
        "$mode" "$w" "$p" "$rps" "$p50" "$p99" "$cpu" "$usr" "$per" "$hit" "$sys"
    echo "$round,$mode,$w,$p,$rps,$p50,$p99,$cpu,$usr,$hit" >>"$CSV"
}

read -ra modes <<<"$MODES"
for round in $(seq "$ROUNDS"); do
    # Every other round runs the modes in reverse order (off on, on off, ...): a machine that
    # speeds up or slows down over the run, or a round's second server that runs slower (seen
    # in one run at -P 1 on this project's VM, ~8% in 7 of 8 rounds; not in an A/A run of
    # 6 rounds, MODES="off off"), favours neither mode.
    order=("${modes[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((k = ${#modes[@]} - 1; k >= 0; k--)); do order+=("${modes[k]}"); done
    fi
    for mode in "${order[@]}"; do
        echo "== round $round, cache $mode"
        start_server "$mode" || { echo "$NAME: server did not start" >&2; exit 1; }
        for w in $WORKLOADS; do
            for p in $PIPES; do
                run "$round" "$mode" "$w" "$p"
            done
        done
        [[ $mode == on ]] && "$MTCPRUN" stats "$SRV_PID" >"$OUT/cache-stats.txt" 2>&1
        stop_server
    done
done

echo
echo "== medians of $ROUNDS rounds (cache off | on)"
/usr/bin/python3 - "$CSV" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
keys = []
for r in rows:
    k = (r["workload"], r["pipeline"])
    if k not in keys:
        keys.append(k)
def med(mode, k, col):
    v = [float(r[col]) for r in rows if r["mode"] == mode and (r["workload"], r["pipeline"]) == k]
    return statistics.median(v) if v else None
print("%-14s %23s %17s %17s %15s %15s %6s %8s" % ("", "rps off | on", "p50 ms", "p99 ms", "cpu us/req", "user us/req", "hits", "rps on/off"))
for k in keys:
    c = {col: (med("off", k, col), med("on", k, col)) for col in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "user_us_per_req", "hit_rate")}
    f = lambda v, fmt: (fmt % v) if v is not None else "-"
    ratio = c["rps"][1] / c["rps"][0] if c["rps"][0] and c["rps"][1] else None
    print("%-14s %11s | %-9s %7s | %-7s %7s | %-7s %6s | %-6s %6s | %-6s %6s %8s" % (
        "%s -P %s" % k, f(c["rps"][0], "%.0f"), f(c["rps"][1], "%.0f"),
        f(c["p50_ms"][0], "%.3f"), f(c["p50_ms"][1], "%.3f"),
        f(c["p99_ms"][0], "%.3f"), f(c["p99_ms"][1], "%.3f"),
        f(c["cpu_us_per_req"][0], "%.2f"), f(c["cpu_us_per_req"][1], "%.2f"),
        f(c["user_us_per_req"][0], "%.2f"), f(c["user_us_per_req"][1], "%.2f"),
        f(c["hit_rate"][1], "%.2f"), f(ratio, "%.2fx")))
# Each round ran off then on back to back: their ratio sees the same hour of this VM, which
# drifts from one round to the next as much as the modes differ.
print("rps on/off within each round (and their median):")
for k in keys:
    by = {}
    for r in rows:
        if (r["workload"], r["pipeline"]) == k:
            by.setdefault(r["round"], {})[r["mode"]] = float(r["rps"])
    ratios = [b["on"] / b["off"] for b in by.values() if b.get("on") and b.get("off")]
    if ratios:
        print("%-14s %s  median %.2fx" % ("%s -P %s" % k, " ".join("%.2fx" % x for x in ratios), statistics.median(ratios)))
EOF
echo "results: $CSV"
