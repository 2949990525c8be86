#!/usr/bin/env bash
# ci/bench.sh: latency and bulk throughput of kernel TCP and of userstack over every device
# path, side by side; then the same lossy link for both; then the connection-scale benchmark.
#
#     sudo ci/bench.sh            # from the repository root; about 3-5 minutes
#
# Paths (16-byte ping-pong latency with `mtcp-client latency`, bulk echo with `mtcp-client bulk`):
#   kernel-veth       kernel server (`mtcp-client serve`) in one netns, client in another, one veth
#                     pair between them, default offloads (TSO/GSO on)
#   kernel-veth-nooff the same with tx/tso/gso offloads off (MTU-sized frames, as userstack sends)
#   us-tap            userstack `echo` on DPDK net_tap; the tap moved into the client's netns
#   us-af_packet      `echo` on DPDK net_af_packet on one end of a veth pair, other end in the
#                     client's netns (offloads off on both ends)
#   us-memif          `echo` (memif server) and `uclient` (memif client), two DPDK processes
#   lossy             64 MiB bulk with MTCP_FAULTS=loss=2,dup=1,reorder=1 (per frame, each way):
#                     userstack over af_packet with the faults in the stack, vs kernel TCP through
#                     `mtcp-faultbridge` (same parser, same injector) between two veth pairs
# Server on CPU 1, client on CPU 0 (taskset); the fault bridge floats. userstack servers
# busy-poll (MTCP_SPIN_US=10000000); uclient always busy-polls.
#
# Hygiene: every namespace is `mtcp-<this pid>-<n>` and every interface `mt<pid hex>-<n><tag>`
# (the tests crate's convention, so its stale-object cleanup also recognises leftovers of a
# killed run); addresses are 198.19.<pid%250>.0/24 inside those namespaces only. DPDK servers and
# the bridge run inside namespaces of their own, so the root namespace gets no interface at
# all. Everything (processes started here, by pid; namespaces; memif socket; temp files) is
# removed on exit, also on failure or Ctrl-C.
#
# Environment: BULK_BYTES (default 268435456), LOSSY_BYTES (67108864), LAT_COUNT (20000),
# FAULTS (loss=2,dup=1,reorder=1), MTCP_HUGEPAGES (default auto: no hugepages unless reserved),
# ONLY (paths to run, default "kernel tap af_packet memif lossy scale"), LOSSY_TIMEOUT (60 s per
# lossy transfer), SKIP_BUILD=1, CARGO_TARGET_DIR (default target).

set -uo pipefail

echo "# $0 $*"
echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC')  $(uname -r)  $(nproc) CPUs  $(git describe --always --dirty 2>/dev/null || echo "?")"

TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release
BULK_BYTES=${BULK_BYTES:-268435456}
LOSSY_BYTES=${LOSSY_BYTES:-67108864}
LAT_COUNT=${LAT_COUNT:-20000}
FAULTS=${FAULTS:-loss=2,dup=1,reorder=1}
LOSSY_TIMEOUT=${LOSSY_TIMEOUT:-60}
ONLY=" ${ONLY:-kernel tap af_packet memif lossy scale} "
ONLY=${ONLY//,/ }
want() { [[ $ONLY == *" $1 "* ]]; }
PORT=7777
SRV_CPU=${SRV_CPU:-1}
CLI_CPU=${CLI_CPU:-0}
export MTCP_HUGEPAGES=${MTCP_HUGEPAGES:-auto}

NAME=bench.sh
MEMIF_SOCK=/tmp/mtcp-bench-$$-memif.sock
extra_cleanup() { rm -f "$MEMIF_SOCK"; }
# shellcheck source=ci/lib.sh
source "$(dirname "$0")/lib.sh"

field() { # LINE KEY: value of key=value in a summary line
    sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"
}

# run_client ROW KIND CMD...: runs a client that prints one `mode=...` line; records results.
declare -A P50 P99 MBS MATCH SECS NOTE
run_client() {
    local row=$1 kind=$2 out line rc
    shift 2
    out=$(timeout "${RUN_TIMEOUT:-180}" "$@" 2>"$TMP/client.err")
    rc=$?
    line=$(grep '^mode=' <<<"$out" | tail -1)
    echo "  $row: ${line:-<no result>}"
    if [[ $rc -ne 0 || -z $line ]]; then
        echo "  $row: client failed (exit $rc):" >&2
        sed 's/^/    /' "$TMP/client.err" | tail -5 >&2
        NOTE[$row]+="${kind}-failed "
        return 1
    fi
    if [[ $kind == latency ]]; then
        P50[$row]=$(field "$line" p50_us)
        P99[$row]=$(field "$line" p99_us)
    else
        MBS[$row]=$(field "$line" mb_per_s)
        MATCH[$row]=$(field "$line" match)
        SECS[$row]=$(field "$line" secs)
    fi
}

# bounded_bulk ROW NS CMD...: a lossy bulk run limited to LOSSY_TIMEOUT seconds. If the client
# is not done by then, the echoed bytes it received so far are read from the kernel (`ss` in
# its namespace NS) and reported as an incomplete rate, then the client is stopped.
bounded_bulk() {
    local row=$1 ns=$2 pid t0 el line rcv
    shift 2
    "$@" >"$TMP/bb.out" 2>"$TMP/bb.err" </dev/null &
    pid=$!
    PIDS+=("$pid")
    t0=$(date +%s.%N)
    while kill -0 "$pid" 2>/dev/null; do
        el=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
        if awk -v e="$el" -v m="$LOSSY_TIMEOUT" 'BEGIN { exit !(e >= m) }'; then
            rcv=$(ip netns exec "$ns" ss -tniH state established "dst $NET.2" 2>/dev/null |
                grep -o 'bytes_received:[0-9]*' | cut -d: -f2 | sort -n | tail -1)
            rcv=${rcv:-0}
            stop_bg "$pid"
            MBS[$row]=$(awk -v r="$rcv" -v e="$el" 'BEGIN { printf "~%.2f", r / e / 1e6 }')
            SECS[$row]=">$LOSSY_TIMEOUT"
            MATCH[$row]=incomplete
            NOTE[$row]+="echoed $rcv B in ${el%.*}s; "
            echo "  $row: not done after ${LOSSY_TIMEOUT}s: $rcv bytes echoed so far"
            return 1
        fi
        sleep 0.2
    done
    wait "$pid"
    local rc=$?
    stop_bg "$pid"
    line=$(grep '^mode=' "$TMP/bb.out" | tail -1)
    echo "  $row: ${line:-<no result>}"
    if [[ $rc -ne 0 || -z $line ]]; then
        sed 's/^/    /' "$TMP/bb.err" | tail -5 >&2
        NOTE[$row]+="bulk-failed(exit $rc) "
        return 1
    fi
    MBS[$row]=$(field "$line" mb_per_s)
    MATCH[$row]=$(field "$line" match)
    SECS[$row]=$(field "$line" secs)
}

ROWS=()
add_row() { ROWS+=("$1"); }

echo_env() { # common userstack settings for a server
    echo MTCP_SPIN_US=10000000 MTCP_LOG=warn
}

lat() { echo latency --addr "$1:$PORT" --count "$LAT_COUNT" --size 16 --warmup 1000; }
bulk() { echo bulk --addr "$1:$PORT" --bytes "$2"; }

tcp_retrans() { # NS: retransmitted segments and retransmission timeouts of the namespace's TCP
    ip netns exec "$1" awk '
        /^Tcp:/    { if (!t) { for (i = 1; i <= NF; i++) c[$i] = i; t = 1 } else r = $c["RetransSegs"] }
        /^TcpExt:/ { if (!x) { for (i = 1; i <= NF; i++) d[$i] = i; x = 1 } else o = $d["TCPTimeouts"] }
        END { printf "retrans=%s rto=%s", r, o }' /proc/net/snmp /proc/net/netstat
}

stack_counters() { # FILE: the fault and retransmit counters from echo's final stats line
    grep -o 'fault_dropped=[0-9]* fault_duplicated=[0-9]* fault_reordered=[0-9]*\|tcp_retransmits=[0-9]*\|tcp_rto_timeouts=[0-9]*\|tcp_loss_probes=[0-9]*' "$1" |
        sed 's/fault_//g; s/tcp_//' | paste -sd' '
}

# ------------------------------------------------------------------------- build

if [[ -z ${SKIP_BUILD:-} ]]; then
    echo "== build (release)"
    cargo build --release -q -p mtcp-tests -p mtcp-examples || exit 1
    if want scale; then
        cargo bench -q -p userstack --bench scale --no-run 2>/dev/null || exit 1
    fi
fi
for b in mtcp-client mtcp-faultbridge echo uclient; do
    [[ -x $BIN/$b ]] || { echo "bench.sh: $BIN/$b missing (build failed?)" >&2; exit 1; }
done
CLIENT=$(realpath "$BIN/mtcp-client")
BRIDGE=$(realpath "$BIN/mtcp-faultbridge")
ECHO=$(realpath "$BIN/echo")
UCLIENT=$(realpath "$BIN/uclient")
echo "== settings: latency $LAT_COUNT x 16 B (+1000 warm-up), bulk $BULK_BYTES B, lossy $LOSSY_BYTES B with $FAULTS; subnet $NET.0/24; MTCP_HUGEPAGES=$MTCP_HUGEPAGES"

# ------------------------------------------------------------------------- (a) kernel over veth

kernel_veth() { # ROW OFFLOADS(on|off)
    local row=$1 off=$2 nc ns ic is keep=""
    add_row "$row"
    [[ $off == on ]] && keep=keep
    new_ns nc && new_ns ns || return 1
    new_if ic c && new_if is s
    veth "$nc" "$ic" "$ns" "$is" &&
        setup_end "$nc" "$ic" "$NET.1/24" $keep && setup_end "$ns" "$is" "$NET.2/24" $keep || {
        NOTE[$row]+="setup-failed "
        del_ns "$nc"; del_ns "$ns"
        return 1
    }
    if start_bg kserve "serve: listening" 10 \
        ip netns exec "$ns" taskset -c $SRV_CPU "$CLIENT" serve --listen "$NET.2:$PORT"; then
        local pid=$LAST_PID
        run_client "$row" latency ip netns exec "$nc" taskset -c $CLI_CPU "$CLIENT" $(lat $NET.2)
        run_client "$row" bulk ip netns exec "$nc" taskset -c $CLI_CPU "$CLIENT" $(bulk $NET.2 "$BULK_BYTES")
        stop_bg "$pid"
    else
        NOTE[$row]+="server-failed "
    fi
    del_ns "$nc"
    del_ns "$ns"
}

if want kernel; then
    echo "== (a) kernel TCP over veth"
    kernel_veth kernel-veth on
    kernel_veth kernel-veth-nooff off
fi

# ------------------------------------------------------------------------- (b) userstack over net_tap

us_tap() {
    local row=us-tap nc ns tap
    add_row "$row"
    new_ns nc && new_ns ns || return 1
    new_if tap tap
    if start_bg echo-tap "echo: listening" 30 \
        ip netns exec "$ns" env $(echo_env) MTCP_DEV="tap:$tap" MTCP_ADDR="$NET.2/24" \
        taskset -c $SRV_CPU "$ECHO" --port $PORT; then
        local pid=$LAST_PID
        echo "  server: $(head -1 "$TMP/echo-tap.out")"
        if ip -n "$ns" link set "$tap" netns "$nc" && setup_end "$nc" "$tap" "$NET.1/24" keep; then
            ip netns exec "$nc" ethtool -K "$tap" tx off tso off gso off >/dev/null 2>&1
            run_client "$row" latency ip netns exec "$nc" taskset -c $CLI_CPU "$CLIENT" $(lat $NET.2)
            run_client "$row" bulk ip netns exec "$nc" taskset -c $CLI_CPU "$CLIENT" $(bulk $NET.2 "$BULK_BYTES")
        else
            NOTE[$row]+="tap-move-failed "
        fi
        stop_bg "$pid"
    else
        NOTE[$row]+="server-failed "
    fi
    del_ns "$nc"
    del_ns "$ns"
}

if want tap; then
    echo "== (b) userstack over DPDK net_tap"
    us_tap
fi

# ------------------------------------------------------------------------- (c) userstack over af_packet

# us_af_packet ROW BYTES [FAULTS]: echo on net_af_packet (in its own netns) <-veth-> client netns
us_af_packet() {
    local row=$1 bytes=$2 faults=${3:-} nc ns ic is
    add_row "$row"
    new_ns nc && new_ns ns || return 1
    new_if ic c && new_if is d
    veth "$nc" "$ic" "$ns" "$is" && setup_end "$nc" "$ic" "$NET.1/24" && setup_end "$ns" "$is" || {
        NOTE[$row]+="setup-failed "
        del_ns "$nc"; del_ns "$ns"
        return 1
    }
    if start_bg "echo-$row" "echo: listening" 30 \
        ip netns exec "$ns" env $(echo_env) MTCP_DEV="af_packet:$is" MTCP_ADDR="$NET.2/24" \
        MTCP_FAULTS="$faults" taskset -c $SRV_CPU "$ECHO" --port $PORT; then
        local pid=$LAST_PID
        echo "  server: $(head -1 "$TMP/echo-$row.out")"
        [[ -z $faults ]] &&
            run_client "$row" latency ip netns exec "$nc" taskset -c $CLI_CPU "$CLIENT" $(lat $NET.2)
        if [[ -n $faults ]]; then
            bounded_bulk "$row" "$nc" ip netns exec "$nc" taskset -c $CLI_CPU "$CLIENT" \
                $(bulk $NET.2 "$bytes") --stall-timeout "$LOSSY_TIMEOUT"
        else
            run_client "$row" bulk ip netns exec "$nc" taskset -c $CLI_CPU "$CLIENT" $(bulk $NET.2 "$bytes")
        fi
        if [[ -n $faults ]]; then
            local rt
            rt=$(tcp_retrans "$nc")
            stop_bg "$pid"
            NOTE[$row]+="stack: $(stack_counters "$TMP/echo-$row.err"); kernel client: $rt"
        else
            stop_bg "$pid"
        fi
    else
        NOTE[$row]+="server-failed "
    fi
    del_ns "$nc"
    del_ns "$ns"
}

if want af_packet; then
    echo "== (c) userstack over DPDK net_af_packet"
    us_af_packet us-af_packet "$BULK_BYTES"
fi

# ------------------------------------------------------------------------- (d) userstack over memif

us_memif() {
    local row=us-memif
    add_row "$row"
    rm -f "$MEMIF_SOCK"
    # Two DPDK primaries side by side: without hugepages the stack passes --no-shconf, with them
    # --in-memory, so they share no EAL files; no --file-prefix needed.
    if start_bg echo-memif "echo: listening" 30 \
        env $(echo_env) MTCP_DEV="memif:$MEMIF_SOCK,server" MTCP_ADDR="$NET.2/24" \
        taskset -c $SRV_CPU "$ECHO" --port $PORT; then
        local pid=$LAST_PID
        echo "  server: $(head -1 "$TMP/echo-memif.out")"
        local cenv=(env MTCP_LOG=error MTCP_DEV="memif:$MEMIF_SOCK,client" MTCP_ADDR="$NET.1/24")
        run_client "$row" latency "${cenv[@]}" taskset -c $CLI_CPU "$UCLIENT" $(lat $NET.2)
        run_client "$row" bulk "${cenv[@]}" taskset -c $CLI_CPU "$UCLIENT" $(bulk $NET.2 "$BULK_BYTES")
        stop_bg "$pid"
    else
        NOTE[$row]+="server-failed "
    fi
    rm -f "$MEMIF_SOCK"
}

if want memif; then
    echo "== (d) userstack over DPDK memif (echo + uclient)"
    us_memif
fi

# ------------------------------------------------------------------------- (e) lossy

kernel_lossy() {
    local row=kernel-lossy nc nb ns ic ib1 ib2 is
    add_row "$row"
    new_ns nc && new_ns nb && new_ns ns || return 1
    new_if ic c && new_if ib1 ba && new_if ib2 bb && new_if is s
    veth "$nc" "$ic" "$nb" "$ib1" && veth "$nb" "$ib2" "$ns" "$is" &&
        setup_end "$nc" "$ic" "$NET.1/24" && setup_end "$nb" "$ib1" && setup_end "$nb" "$ib2" &&
        setup_end "$ns" "$is" "$NET.2/24" || {
        NOTE[$row]+="setup-failed "
        del_ns "$nc"; del_ns "$nb"; del_ns "$ns"
        return 1
    }
    if start_bg bridge "faultbridge: ready" 10 \
        ip netns exec "$nb" "$BRIDGE" --a "$ib1" --b "$ib2" --faults "$FAULTS"; then
        local bpid=$LAST_PID
        if start_bg kserve-lossy "serve: listening" 10 \
            ip netns exec "$ns" taskset -c $SRV_CPU "$CLIENT" serve --listen "$NET.2:$PORT"; then
            local spid=$LAST_PID
            bounded_bulk "$row" "$nc" ip netns exec "$nc" taskset -c $CLI_CPU \
                "$CLIENT" $(bulk $NET.2 "$LOSSY_BYTES") --stall-timeout "$LOSSY_TIMEOUT"
            NOTE[$row]+="kernel client: $(tcp_retrans "$nc"); kernel server: $(tcp_retrans "$ns")"
            stop_bg "$spid"
        else
            NOTE[$row]+="server-failed "
        fi
        stop_bg "$bpid"
        echo "  bridge: $(grep '^faultbridge: stopped' "$TMP/bridge.out")"
    else
        NOTE[$row]+="bridge-failed "
    fi
    del_ns "$nc"
    del_ns "$nb"
    del_ns "$ns"
}

if want lossy; then
    echo "== (e) lossy link ($FAULTS), $LOSSY_BYTES B bulk"
    us_af_packet us-af_packet-lossy "$LOSSY_BYTES" "$FAULTS"
    kernel_lossy
fi

# ------------------------------------------------------------------------- table

echo
echo "== results (latency: 16 B ping-pong, $LAT_COUNT round trips; bulk: echo, MB/s of echoed payload)"
printf '%-20s %9s %9s %11s %9s %6s  %s\n' path p50_us p99_us bulk_MB/s bulk_s match notes
for r in "${ROWS[@]}"; do
    bytes=$BULK_BYTES
    [[ $r == *lossy* ]] && bytes=$LOSSY_BYTES
    printf '%-20s %9s %9s %11s %9s %6s  %s\n' "$r" "${P50[$r]:--}" "${P99[$r]:--}" \
        "${MBS[$r]:--}" "${SECS[$r]:--}" "${MATCH[$r]:--}" "$((bytes >> 20))MiB ${NOTE[$r]:-}"
done

# ------------------------------------------------------------------------- (f) scale

if want scale; then
    echo
    echo "== (f) cargo bench -p userstack --bench scale"
    taskset -c $SRV_CPU cargo bench -q -p userstack --bench scale 2>&1 | grep -v '^\s*\(Compiling\|Finished\|Running\)'
fi
