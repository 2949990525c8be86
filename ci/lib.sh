# ci/lib.sh: what the benchmark scripts share: their namespaces, interfaces and processes, and
# removing all of them on exit (also on failure or Ctrl-C). Sourced; the caller sets NAME (for
# messages) and may define `extra_cleanup`. Exits 2 unless run as root from the repository root.
#
# Hygiene: every namespace is `mtcp-<pid>-<n>` and every interface `mt<pid hex>-<n><tag>` (the
# tests crate's convention, so its stale-object cleanup also recognises leftovers of a killed
# run); addresses are 198.19.<pid%250>.0/24 inside those namespaces only; only processes started
# here are stopped, by pid.

if [[ $(id -u) -ne 0 ]]; then
    echo "$NAME: must run as root (network namespaces, DPDK)" >&2
    exit 2
fi
if [[ ! -f Cargo.toml || ! -d shim ]]; then
    echo "$NAME: run from the repository root" >&2
    exit 2
fi

PIDHEX=$(printf %x $$)
NET=198.19.$(($$ % 250))
TMP=$(mktemp -d "/tmp/mtcp-$NAME-$$.XXXXXX")
NS_LIST=()
PIDS=()
COUNTER=0

# ------------------------------------------------------------------------- cleanup

stop_pid() { # PID: SIGTERM, up to 5 s grace, then SIGKILL; only pids this script started
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$NAME: pid $pid ignored SIGTERM, killing" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null || true
    return 0
}

cleanup() {
    local rc=$? pid ns
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    for ns in "${NS_LIST[@]}"; do
        ip netns delete "$ns" 2>/dev/null
    done
    # Nothing is created in the root namespace; this only catches a failure between
    # `ip link add` and the move of both ends (names carry our pid).
    for l in $(ls /sys/class/net 2>/dev/null | grep "^mt${PIDHEX}-" || true); do
        ip link delete "$l" 2>/dev/null
    done
    declare -F extra_cleanup >/dev/null && extra_cleanup
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "$NAME: interrupted" >&2; exit 130' INT TERM

# ------------------------------------------------------------------------- helpers

new_ns() { # VAR: creates mtcp-<pid>-<n> with lo up, stores its name in VAR
    local n="mtcp-$$-$COUNTER"
    COUNTER=$((COUNTER + 1))
    ip netns add "$n" || return 1
    NS_LIST+=("$n")
    ip -n "$n" link set lo up
    printf -v "$1" %s "$n"
}

del_ns() { # NAME: deletes a namespace (and every interface in it) now
    local ns=$1 i
    ip netns delete "$ns" 2>/dev/null
    for i in "${!NS_LIST[@]}"; do
        [[ ${NS_LIST[$i]} == "$ns" ]] && unset 'NS_LIST[i]'
    done
    NS_LIST=("${NS_LIST[@]}")
}

new_if() { # VAR TAG: a fresh interface name mt<pid hex>-<n hex><tag> (<= 15 bytes)
    local n
    n="mt${PIDHEX}-$(printf %x $COUNTER)$2"
    COUNTER=$((COUNTER + 1))
    printf -v "$1" %s "$n"
}

veth() { # NS_A IF_A NS_B IF_B: a veth pair created directly inside the two namespaces
    ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
}

setup_end() { # NS IF [CIDR] [offloads-on]: IPv6 off, offloads off (unless asked), address, up
    local ns=$1 ifc=$2 cidr=${3:-} keep=${4:-}
    ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$ifc.disable_ipv6=1"
    if [[ -z $keep ]]; then
        ip netns exec "$ns" ethtool -K "$ifc" tx off tso off gso off >/dev/null 2>&1 || {
            echo "$NAME: ethtool -K $ifc failed" >&2
            return 1
        }
    fi
    [[ -n $cidr ]] && { ip -n "$ns" addr add "$cidr" dev "$ifc" || return 1; }
    ip -n "$ns" link set "$ifc" up
}

# start_bg NAME READY_PREFIX TIMEOUT_S CMD...: starts CMD in the background (stdout and stderr
# to $TMP/NAME.out/.err), records its pid in PIDS and in $LAST_PID, waits for a stdout line
# starting with READY_PREFIX. Fails (and shows stderr) if the process exits or times out.
start_bg() {
    local name=$1 ready=$2 tmo=$3 i
    shift 3
    "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    for i in $(seq $((tmo * 20))); do
        if grep -q "^$ready" "$TMP/$name.out" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$LAST_PID" 2>/dev/null; then
            echo "$NAME: $name exited before it was ready:" >&2
            sed 's/^/    /' "$TMP/$name.err" "$TMP/$name.out" >&2
            return 1
        fi
        sleep 0.05
    done
    echo "$NAME: $name not ready within ${tmo}s:" >&2
    sed 's/^/    /' "$TMP/$name.err" >&2
    return 1
}

stop_bg() { # PID: stops it and forgets it
    local pid=$1 i
    stop_pid "$pid"
    for i in "${!PIDS[@]}"; do
        [[ ${PIDS[$i]} == "$pid" ]] && unset 'PIDS[i]'
    done
    PIDS=("${PIDS[@]}")
}

