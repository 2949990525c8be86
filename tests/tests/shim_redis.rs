//! Debian's unmodified redis-server under `LD_PRELOAD=libmtcpshim.so`, its flagged port served by
//! the user-space stack over net_tap; redis-cli and redis-benchmark in a network namespace the
//! test creates (the tap is moved into it). The basic commands and redis-benchmark also run over
//! net_memif, with `mtcp-faultbridge` forwarding between the memif and a veth pair to the
//! clients' namespace (a server data path with no kernel in it); requests after a pause run over
//! every device (tap, af_packet, af_xdp, memif).
//!
//! The library is `target/<profile>/libmtcpshim.so` (ci/test.sh builds the workspace first), or
//! `$MTCP_SHIM_LIB`; the bridge is `target/<profile>/mtcp-faultbridge`, or
//! `$MTCP_FAULTBRIDGE_BIN`.

use std::process::Command;
use std::time::{Duration, Instant};

use mtcp_tests::redis::{bench_results, py_file, BedOptions, Dev, RedisBed, TempDir};
use mtcp_tests::{cpu_ns, ServerProcess};

/// The bed most tests here use: net_tap, Redis bound as given.
fn bed(bind: &str) -> RedisBed {
    RedisBed::new(BedOptions {
        bind: bind.into(),
        ..Default::default()
    })
}

/// `check` on Redis bound to 0.0.0.0 over net_memif, `mtcp-faultbridge` its NIC; then the
/// bridge must report no lost frame.
fn over_memif(check: fn(&mut RedisBed)) {
    let mut bed = RedisBed::new(BedOptions {
        dev: Dev::Memif,
        ..Default::default()
    });
    check(&mut bed);
    // Nothing lost on the way out either: the stack's memif transmit ring never overflowed
    // (1024 slots did under redis-benchmark's LRANGE_600), so nothing was retransmitted but
    // tail-loss probes: on these 2 cores the bridge, the client and the server take turns,
    // and an ACK can come later than a probe's 2 SRTT + 10 ms (the probe's copy then arrives
    // twice, harmlessly).
    assert_eq!(
        bed.stack_counter("drop_tx_ring_full"),
        0,
        "drop_tx_ring_full"
    );
    let (retx, probes) = (
        bed.stack_counter("tcp_retransmits"),
        bed.stack_counter("tcp_loss_probes"),
    );
    assert!(
        retx <= probes,
        "{retx} retransmissions, {probes} of them probes\n{}",
        bed.diagnostics()
    );
    bridge_reports_no_loss(&mut bed);
}

#[test]
fn redis_is_served_through_the_stack_and_on_loopback_at_once() {
    let mut bed = bed("0.0.0.0");
    served_through_the_stack_and_on_loopback(&mut bed);
}

/// The same over net_memif: every frame crosses the bridge, which reports none lost.
#[test]
fn redis_over_memif_is_served_through_the_stack_and_on_loopback_at_once() {
    over_memif(served_through_the_stack_and_on_loopback);
}

/// Stops a memif bed's bridge; asserts that frames crossed it both ways and that it reports none
/// lost (no send error, including frames its memif port could not queue; no oversize frame: the
/// veth's offloads are off).
fn bridge_reports_no_loss(bed: &mut RedisBed) {
    let line = bed.stop_bridge();
    eprintln!("{line}");
    let (to_stack, to_clients) = line
        .split_once(" b_to_a: ")
        .unwrap_or_else(|| panic!("no b_to_a counters in {line:?}"));
    for (dir, counters) in [("to the stack", to_stack), ("to the clients", to_clients)] {
        let kv = mtcp_tests::parse_kv(counters);
        let n = |k: &str| -> u64 { mtcp_tests::kv_get(&kv, k).unwrap() };
        assert!(n("tx") > 0, "{dir}: no frame crossed the bridge: {line}");
        assert_eq!(
            (n("send_errors"), n("oversize")),
            (0, 0),
            "{dir}: frames lost in the bridge: {line}"
        );
    }
}

/// Strings, counters, lists and hashes through the stack; CLIENT LIST's addresses; the kernel
/// side of the same listener (127.0.0.1) at the same time.
fn served_through_the_stack_and_on_loopback(bed: &mut RedisBed) {
    bed.wait_ready();
    assert_eq!(
        bed.cli_ok(&["set", "greeting", "hello from the stack"]),
        "OK\n"
    );
    assert_eq!(bed.cli_ok(&["get", "greeting"]), "hello from the stack\n");
    assert_eq!(bed.cli_ok(&["incrby", "n", "41"]), "41\n");
    assert_eq!(bed.cli_ok(&["incr", "n"]), "42\n");
    assert_eq!(bed.cli_ok(&["rpush", "l", "a", "b", "c"]), "3\n");
    assert_eq!(bed.cli_ok(&["lrange", "l", "0", "-1"]), "a\nb\nc\n");
    assert_eq!(bed.cli_ok(&["hset", "h", "f", "v"]), "1\n");
    assert_eq!(bed.cli_ok(&["hgetall", "h"]), "f\nv\n");
    // CLIENT LIST tells the truth: the client's own address in the namespace, the stack's as laddr.
    let list = bed.cli_ok(&["client", "list"]);
    let want_peer = format!("addr={}:", bed.subnet.addr(1));
    let want_local = format!("laddr={}:{}", bed.addr(), bed.port);
    assert!(
        list.contains(&want_peer) && list.contains(&want_local),
        "{list}"
    );
    // The kernel side of the same listener, at the same time.
    let out = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &bed.port.to_string(),
            "get",
            "greeting",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the stack\n"
    );
}

/// redis-benchmark's default test set (PING, SET, GET, INCR, lists, sets, hashes, sorted sets,
/// LRANGE_100..600, MSET) at -c 50, -P 1 and -P 16: no error, every test reports a rate.
#[test]
fn redis_benchmark_through_the_stack_has_no_errors() {
    let mut bed = bed("0.0.0.0");
    benchmark_has_no_errors(&mut bed);
}

/// The same over net_memif, and the bridge reports no lost frame.
#[test]
fn redis_benchmark_over_memif_has_no_errors() {
    over_memif(benchmark_has_no_errors);
}

fn benchmark_has_no_errors(bed: &mut RedisBed) {
    bed.wait_ready();
    let (h, p) = (bed.addr(), bed.port.to_string());
    for pipeline in ["1", "16"] {
        let out = bed
            .ns
            .exec(
                "redis-benchmark",
                [
                    "-h", &h, "-p", &p, "-q", "-n", "10000", "-c", "50", "-P", pipeline,
                ],
            )
            .expect("redis-benchmark runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "-P {pipeline}: {text}{err}\n{}",
            bed.diagnostics()
        );
        // -q prints the final figures after carriage-return progress lines.
        let finals: Vec<&str> = text
            .split(['\r', '\n'])
            .filter(|l| l.contains("requests per second"))
            .collect();
        // The default test set, every test reported.
        for t in [
            "PING_INLINE:",
            "PING_MBULK:",
            "SET:",
            "GET:",
            "INCR:",
            "LPUSH:",
            "RPUSH:",
            "LPOP:",
            "RPOP:",
            "SADD:",
            "HSET:",
            "SPOP:",
            "ZADD:",
            "ZPOPMIN:",
            "LRANGE_100",
            "LRANGE_600",
            "MSET",
        ] {
            assert!(
                finals.iter().any(|l| l.starts_with(t)),
                "-P {pipeline}: no {t} result in: {text}"
            );
        }
        assert!(
            !text.to_lowercase().contains("error") && !err.to_lowercase().contains("error"),
            "-P {pipeline}: {text}{err}"
        );
    }
}

/// One client's requests through the stack do not make the server ask the kernel about its
/// own fds each time: over memif, 5,000 GETs of one client at a time, every server thread
/// traced by strace. Redis's epoll set also holds kernel fds (the 127.0.0.1 side of its
/// listener): an epoll_wait that looked at them (a system call, epoll_wait with a zero
/// timeout) before and after each request made two a request; they are looked at again only
/// once a look, or a block watching them, is 100 µs old (docs/shim.md, epoll): at most one
/// look per iteration of Redis's loop, one per request here. How many fewer depends on the
/// machine's load, which stretches the time between a block and the next wait (about a
/// third of the requests look on an idle machine, half and more beside other tests), and so
/// does whether the loop blocks between requests (system calls of their own).
#[test]
fn one_clients_requests_over_memif_do_not_look_at_the_kernels_fds_each_time() {
    over_memif(|bed| {
        const N: u64 = 5000;
        let _timed = TIMED.read().unwrap_or_else(|e| e.into_inner());
        let table = traced(bed, &["-c"], |bed| {
            let (h, p) = (bed.addr(), bed.port.to_string());
            let n = N.to_string();
            let args = ["-h", &h, "-p", &p, "-q", "-n", &n, "-c", "1", "-t", "get"];
            let bench = bed
                .ns
                .exec("redis-benchmark", args)
                .expect("redis-benchmark runs");
            assert!(bench.status.success(), "{bench:?}");
        });
        let calls = mtcp_tests::strace_calls(&table, "epoll_wait");
        assert!(
            calls < N,
            "{calls} epoll_wait calls for {N} requests of one client:\n{table}"
        );
    });
}

/// Redis over af_packet without spinning arms the device's wake-up before it blocks for each
/// of a client's PINGs that come 2 ms apart (our AF_PACKET socket's filter lets frames
/// through) and disarms it after, without a system call: a store into a BPF map the filter
/// reads, not a setsockopt swapping the filter each way, and the frames that woke the last
/// block handed back to the socket's ring, not read with a recvmmsg.
#[test]
fn blocking_between_requests_over_af_packet_arms_the_wake_up_without_a_system_call() {
    let mut bed = RedisBed::new(BedOptions {
        dev: Dev::AfPacket,
        env: vec![("MTCP_SPIN_US".into(), "0".into())],
        ..Default::default()
    });
    // A PING after each 2 ms pause: the loop blocks (and arms) before each one.
    const PINGS: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
for _ in range(200):
    time.sleep(0.002)
    s.sendall(b"PING\r\n")
    got = b""
    while not got.endswith(b"\r\n"):
        got += s.recv(64)
    assert got == b"+PONG\r\n", got
print("pinged")
"#;
    // Every block of the server's (in its thread's epoll instance: epoll_pwait2, or epoll_pwait
    // before Linux 5.11), setsockopt, getsockopt and recvmmsg, one line each.
    let trace = traced(
        &mut bed,
        &[
            "-e",
            "trace=epoll_pwait2,epoll_pwait,setsockopt,getsockopt,recvmmsg",
        ],
        |bed| {
            let (h, p) = (bed.addr(), bed.port.to_string());
            bed.run_ok("python3", &["-c", PINGS, &h, &p]);
        },
    );
    let blocks = trace
        .lines()
        .filter(|l| l.contains("epoll_pwait2(") || l.contains("epoll_pwait("))
        .count();
    assert!(
        blocks >= 100,
        "it hardly blocked between requests:\n{trace}"
    );
    // (A block woken by a frame finds it in the ring: no error to read either.)
    let calls = trace
        .lines()
        .filter(|l| {
            l.contains("SO_ATTACH_BPF") || l.contains("SO_ERROR") || l.contains("recvmmsg(")
        })
        .count();
    assert_eq!(
        calls, 0,
        "filters swapped or the wake-up socket read for {blocks} blocks:\n{trace}"
    );
}

/// A request that reaches af_packet's ring while the loop is arming its wake-up (its last
/// poll, then the block) wakes it: the PMD's ring holds each frame before the wake-up's filter
/// sees it. Bound the other way round, about one request in a thousand of this client waited
/// for the loop's next timer (30-190 ms with Redis at `hz 1`). The kernel registers an
/// interface's packet sockets again when it comes back up: the order holds after that too.
/// Going down leaves an error on the wake-up socket (ENETDOWN), which makes it readable until
/// someone reads the error: the idle loop must block all the same ([`flap_and_idle`]).
#[test]
fn requests_that_arrive_as_the_loop_blocks_over_af_packet_wake_it() {
    let mut bed = woken_at_once(Dev::AfPacket);
    flap_and_idle(&mut bed, Dev::AfPacket);
}

/// The same over memif (the peer, a stack of ours, wakes the loop through a flag and a
/// datagram) and af_xdp (the PMD's socket, readable while its ring holds frames; its interface
/// taken down and up too).
#[test]
fn requests_that_arrive_as_the_loop_blocks_over_memif_and_af_xdp_wake_it() {
    woken_at_once(Dev::Memif);
    let mut bed = woken_at_once(Dev::AfXdp);
    flap_and_idle(&mut bed, Dev::AfXdp);
}

/// Takes the interface of `bed` (over `dev`) down and up: after each step the idle loop
/// sleeps (asserted on the stack's `sleeps`, a second of idle each time: a handful, where a
/// loop that a device's error wakes at once counts up to millions), and requests then wake it
/// as before ([`pings_wake_it`]).
fn flap_and_idle(bed: &mut RedisBed, dev: Dev) {
    let iface = bed.root_if().expect("a veth bed").to_string();
    let idle_sleeps = |bed: &RedisBed| {
        let (s0, t0) = (bed.stack_counter("sleeps"), Instant::now());
        std::thread::sleep(Duration::from_secs(1));
        (bed.stack_counter("sleeps") - s0) as f64 / t0.elapsed().as_secs_f64()
    };
    for state in ["down", "up"] {
        let st = Command::new("ip")
            .args(["link", "set", "dev", &iface, state])
            .status()
            .unwrap();
        assert!(st.success(), "ip link set dev {iface} {state}");
        let rate = idle_sleeps(bed);
        assert!(
            rate < 100.0,
            "{dev:?}: {iface} {state}, idle: {rate:.0} sleeps a second\n{}",
            bed.diagnostics()
        );
    }
    pings_wake_it(bed, &format!("{dev:?} after {iface} went down and up"));
    let rate = idle_sleeps(bed);
    assert!(
        rate < 100.0,
        "{dev:?}: idle after the PINGs: {rate:.0} sleeps a second"
    );
}

/// Redis over `dev`, its loop woken at once by requests that come at any point of its
/// polling, spinning and blocking ([`pings_wake_it`]).
fn woken_at_once(dev: Dev) -> RedisBed {
    let mut bed = RedisBed::new(BedOptions {
        dev,
        // Redis's own timer once a second: a missed wake-up waits for the stack's next timer
        // or that one, far longer than any round trip here.
        args: vec!["--hz".into(), "1".into()],
        ..Default::default()
    });
    bed.wait_ready();
    pings_wake_it(&mut bed, &format!("over {dev:?}"));
    bed
}

/// 20,000 PINGs, each after a pause of 0-60 µs drawn at random, so that requests come while
/// the loop polls, spins (MTCP_SPIN_US's 50 µs) and blocks: none waits for a timer.
fn pings_wake_it(bed: &mut RedisBed, what: &str) {
    const PINGS: &str = r#"
import socket, sys, time, random
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
clock, rtts = time.perf_counter_ns, []
for _ in range(20000):
    end = clock() + random.randint(0, 60) * 1000
    while clock() < end:
        pass
    t0 = clock()
    s.sendall(b"PING\r\n")
    got = b""
    while not got.endswith(b"\r\n"):
        got += s.recv(64)
    assert got == b"+PONG\r\n", got
    rtts.append((clock() - t0) // 1000)
rtts.sort()
print("median", rtts[len(rtts) // 2], "slowest", *rtts[-5:])
"#;
    let (h, p) = (bed.addr(), bed.port.to_string());
    let _timed = TIMED.read().unwrap_or_else(|e| e.into_inner());
    let out = bed.run_ok("python3", &["-c", PINGS, &h, &p]);
    let slowest: u64 = out
        .split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no round trips: {out}"));
    assert!(
        slowest < 50_000,
        "{what}: a request waited for the loop to wake (µs): {out}"
    );
}

/// What strace with `args` wrote of every thread of `bed`'s server while `client` ran.
fn traced(bed: &mut RedisBed, args: &[&str], client: impl FnOnce(&mut RedisBed)) -> String {
    bed.wait_ready();
    let (pid, out) = (bed.server.pid(), bed.dir.path().join("strace.txt"));
    mtcp_tests::strace::traced(&[pid], args, &out, || client(bed)).0
}

/// Requests after pauses, on every device with a wake-up fd, without spinning: each one must
/// wake Redis's blocked event loop through the device's wake-up (tap: its fd; af_packet: our
/// AF_PACKET socket; af_xdp: the PMD's AF_XDP socket). A lost wake-up leaves the request to the
/// next timeout of the loop (Redis's 100 ms cron, the shim's keeper): a median round trip of
/// milliseconds instead of a fraction of one. (memif has no wake-up fd: the next test.)
#[test]
fn requests_after_a_pause_wake_redis_on_every_device() {
    for dev in [Dev::Tap, Dev::AfPacket, Dev::AfXdp] {
        let median = median_ping_after_pauses(dev, &[]);
        assert!(median < Duration::from_millis(3), "{dev:?}: {median:?}");
    }
}

/// The same over net_memif, which has no wake-up fd. docs/configuration.md and
/// troubleshooting.md: an idle loop polls again after a sleep that doubles from 20 µs up to
/// MTCP_IDLE_SLEEP_US, so the first frame after idle waits at most that long; the reply then
/// waits at most 1 ms in the idle bridge (its longest block on the kernel side). The median
/// round trip must stay below their sum. A request left to the shim's keeper (it polls once
/// nobody did for 10 ms) waits up to ~20 ms, one left to Redis's cron up to 100 ms.
#[test]
fn requests_after_a_pause_over_memif_wait_at_most_the_idle_sleep() {
    const IDLE_SLEEP: Duration = Duration::from_millis(2);
    const BRIDGE_MAX_BLOCK: Duration = Duration::from_millis(1);
    let us = IDLE_SLEEP.as_micros().to_string();
    let median = median_ping_after_pauses(Dev::Memif, &[("MTCP_IDLE_SLEEP_US", &us)]);
    assert!(
        median < IDLE_SLEEP + BRIDGE_MAX_BLOCK,
        "Memif: {median:?} with MTCP_IDLE_SLEEP_US={us}"
    );
}

/// An idle server over memif sleeps long with its peer connected and after the peer went away:
/// ~500 naps a second (MTCP_IDLE_SLEEP_US, 2 ms) cost 1-2% of a core on this VM (a bare 2 ms
/// sleep loop alone 0.9%). The peer here, mtcp-faultbridge, is a stack of ours: it wakes the
/// server when it puts frames on the ring (dpdk/memif_wake.rs), so the server blocks until
/// then (at most 100 ms at a time). With the peer gone the link is down, nothing can arrive,
/// and the naps grow to the link-down nap (50 ms). Asserted on the stack's `sleeps` counter
/// (deterministic, unlike a CPU share on a shared VM: ~500 a second otherwise, 10-40 here);
/// the CPU share is printed.
#[test]
fn an_idle_server_over_memif_sleeps_long_with_its_peer_and_without() {
    let mut bed = RedisBed::new(BedOptions {
        dev: Dev::Memif,
        env: vec![("MTCP_SPIN_US".into(), "0".into())],
        ..Default::default()
    });
    let rate = |bed: &RedisBed, window: Duration| {
        let pid = bed.server.pid();
        let (s0, c0, t0) = (bed.stack_counter("sleeps"), cpu_ns(pid), Instant::now());
        std::thread::sleep(window);
        let secs = t0.elapsed().as_secs_f64();
        let naps = (bed.stack_counter("sleeps") - s0) as f64 / secs;
        let cpu = (cpu_ns(pid) - c0) as f64 / 1e9 / secs * 100.0;
        (naps, cpu)
    };
    let (up, up_cpu) = rate(&bed, Duration::from_secs(1));
    eprintln!("peer connected, idle: {up:.0} sleeps/s, {up_cpu:.2}% CPU");
    assert!(
        up < 100.0,
        "idle with a peer that wakes it: {up:.0} sleeps a second\n{}",
        bed.diagnostics()
    );
    eprintln!("{}", bed.stop_bridge());
    // The server notices the peer's end on its control socket; windows of a second until the
    // naps are long (at most 5).
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (down, cpu) = rate(&bed, Duration::from_secs(1));
        seen.push(format!("{down:.0} naps/s {cpu:.2}% CPU"));
        if down < 60.0 {
            eprintln!("peer gone, idle: {}", seen.join(", "));
            return;
        }
    }
    panic!(
        "the naps stay short with no peer: {seen:?}\n{}",
        bed.diagnostics()
    );
}

/// Redis over `dev` with MTCP_SPIN_US=0 (and `env`); from the namespace, one connection sends
/// PING 30 times, each after a 20 ms pause. The median round trip (printed with the maximum).
fn median_ping_after_pauses(dev: Dev, env: &[(&str, &str)]) -> Duration {
    const PINGS: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtt = []
for _ in range(30):
    time.sleep(0.02)
    t = time.perf_counter()
    s.sendall(b"PING\r\n")
    got = b""
    while not got.endswith(b"\r\n"):
        got += s.recv(64)
    assert got == b"+PONG\r\n", got
    rtt.append(time.perf_counter() - t)
rtt.sort()
print("median_us=%d max_us=%d" % (rtt[len(rtt) // 2] * 1e6, rtt[-1] * 1e6))
"#;
    let mut bed = RedisBed::new(BedOptions {
        dev,
        env: [("MTCP_SPIN_US", "0")]
            .iter()
            .chain(env)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    });
    bed.wait_ready();
    let (h, p) = (bed.addr(), bed.port.to_string());
    eprintln!("{dev:?}: PING after a 20 ms pause, 30 times");
    let _timed = TIMED.read().unwrap_or_else(|e| e.into_inner());
    let text = bed.run_ok("python3", &["-c", PINGS, &h, &p]);
    eprintln!("{dev:?}: {}", text.trim());
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix("median_us="))
        .and_then(|v| v.parse().ok())
        .map(Duration::from_micros)
        .unwrap_or_else(|| panic!("{dev:?}: no median in {text:?}"))
}

#[test]
fn bound_to_loopback_the_stack_refuses() {
    let bed = bed("127.0.0.1");
    // The stack runs (its address answers ping) but the port is the kernel's loopback one only.
    bed.ns
        .wait_ping(bed.subnet.addr(2), Duration::from_secs(10))
        .expect("the stack answers ping");
    let out = bed.cli(&["ping"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Connection refused"),
        "expected a refusal from the stack, got: {text}"
    );
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &bed.port.to_string(), "ping"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PONG\n");
}

/// Redis's default bind, `* -::*`: an IPv4 wildcard listener and an optional IPv6 one, which
/// Redis makes IPV6_V6ONLY (every IPv6 listener of Redis is; so `--bind ::` never takes IPv4
/// clients, on Linux either). The IPv4 one is served through the stack (and the kernel, for
/// 127.0.0.1); the IPv6 one cannot be, so its listen() fails with EADDRNOTAVAIL and one line from
/// the shim, and Redis, for which that address is optional, says so and goes on.
#[test]
fn redis_default_bind_is_served_on_ipv4_and_its_v6only_listener_fails_loudly() {
    // A Unix socket too: Redis makes it after the TCP listeners, on the fd number the failed
    // IPv6 socket had (its record of a flagged bind goes with it).
    let sock_dir = TempDir::new("redis-unix");
    let sock = sock_dir.path().join("redis.sock");
    let mut bed = RedisBed::new(BedOptions {
        bind: "* -::*".into(),
        args: vec!["--unixsocket".into(), sock.to_str().unwrap().into()],
        ..Default::default()
    });
    assert_eq!(bed.cli_ok(&["ping"]), "PONG\n");
    let out = Command::new("redis-cli")
        .args(["-s", sock.to_str().unwrap(), "ping"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PONG\n");
    assert!(bed.stack_counter("conns_opened") >= 1);
    // Its IPv4 listener took the client: a plain IPv4 address, as on the kernel.
    let list = bed.cli_ok(&["client", "list"]);
    let want_peer = format!("addr={}:", bed.subnet.addr(1));
    assert!(list.contains(&want_peer), "{list}");
    let log = bed.server.stdout();
    let want = format!(
        "Could not create server TCP listening socket ::*:{}: listen: Cannot assign requested address",
        bed.port
    );
    assert!(log.contains(&want), "{log}");
    let err = bed.server.stderr();
    let said: Vec<&str> = err.lines().filter(|l| l.starts_with("mtcpshim:")).collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(
        said[0].contains(&format!(
            "cannot serve port {} on [::] with IPV6_V6ONLY",
            bed.port
        )),
        "{err}"
    );
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &bed.port.to_string(), "ping"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PONG\n");
}

/// Reads the one line `v6_listener.py dual` answers a connection to HOST PORT with.
const V6_CLIENT: &str = "import socket, sys\n\
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n\
b = b''\n\
while not b.endswith(b'\\n'):\n    d = s.recv(512)\n    if not d:\n        break\n    b += d\n\
print(b.decode(), end='')\n";

/// A listener on `::` with IPV6_V6ONLY off (Python, as Node's `server.listen(port)` and
/// nginx's `listen [::]:80 ipv6only=off` make one) over net_tap: an IPv4 client in the
/// namespace is served through the stack, and the server sees it as Linux shows an IPv4 client
/// of such a listener: v4-mapped, AF_INET6 (accept's address, getpeername, getsockname,
/// SO_DOMAIN). The kernel side keeps serving 127.0.0.1 (v4-mapped too) and ::1.
#[test]
fn a_v6_wildcard_listener_serves_ipv4_clients_through_the_stack_v4_mapped() {
    let subnet = mtcp_tests::Subnet::allocate().expect("subnet");
    let ns = mtcp_tests::Netns::new().expect("netns");
    let port = 16000 + subnet.index();
    let tap = mtcp_tests::unique_ifname("r");
    let mut server = ServerProcess::builder("/usr/bin/python3")
        .args([py_file("v6_listener.py"), "dual".into(), port.to_string()])
        .env("LD_PRELOAD", mtcp_tests::redis::shim_lib())
        .env("MTCP_PORTS", port.to_string())
        .env("MTCP_DEV", format!("tap:{tap}"))
        .env("MTCP_ADDR", subnet.cidr(2))
        .ready_prefix("listening")
        .spawn()
        .expect("the server starts under the shim");
    assert!(
        server.stdout().starts_with("v6only 0\n"),
        "{}",
        server.diagnostics()
    );
    ns.adopt_link(&tap, &subnet.cidr(1))
        .expect("tap moved into the namespace");
    let (c, s) = (subnet.addr(1), subnet.addr(2));
    let line = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let p = port.to_string();
    let stack = line(
        ns.exec("/usr/bin/python3", ["-c", V6_CLIENT, &s.to_string(), &p])
            .expect("the client runs"),
    );
    assert_eq!(
        stack,
        format!(
            "accept=::ffff:{c} flowinfo=0 scope_id=0 peername=::ffff:{c} \
             sockname=::ffff:{s}:{port} family=AF_INET6 domain=10\n"
        ),
        "{}",
        server.diagnostics()
    );
    assert!(mtcp_tests::redis::stack_counter(server.pid(), "conns_opened") >= 1);
    // The kernel side: IPv4 on loopback, v4-mapped the same way; IPv6 itself.
    let kernel = |host: &str| {
        line(
            Command::new("/usr/bin/python3")
                .args(["-c", V6_CLIENT, host, &p])
                .output()
                .unwrap(),
        )
    };
    assert_eq!(
        kernel("127.0.0.1"),
        format!(
            "accept=::ffff:127.0.0.1 flowinfo=0 scope_id=0 peername=::ffff:127.0.0.1 \
             sockname=::ffff:127.0.0.1:{port} family=AF_INET6 domain=10\n"
        )
    );
    assert_eq!(
        kernel("::1"),
        format!(
            "accept=::1 flowinfo=0 scope_id=0 peername=::1 sockname=::1:{port} \
             family=AF_INET6 domain=10\n"
        )
    );
    let said: Vec<String> = server
        .stderr()
        .lines()
        .filter(|l| l.starts_with("mtcpshim:"))
        .map(String::from)
        .collect();
    assert!(said.is_empty(), "{said:?}");
}

/// Redis forks for BGSAVE; the child closes the sockets it inherited. Under load, 10 BGSAVEs:
/// every one succeeds, the clients see no error, and the parent keeps serving every key.
#[test]
fn bgsave_children_leave_the_parents_connections_alone() {
    let mut bed = bed("0.0.0.0");
    bed.wait_ready();
    let (h, p) = (bed.addr(), bed.port.to_string());
    let bench = bed
        .ns
        .command("redis-benchmark")
        .args([
            "-h", &h, "-p", &p, "-q", "-n", "100000", "-c", "20", "-r", "5000", "-t", "set",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("redis-benchmark starts");
    let mut started = 0;
    for _ in 0..10 {
        if bed.cli_ok(&["bgsave"]).contains("started") {
            started += 1;
        }
        // Wait for that save to end before asking for the next one.
        let deadline = Instant::now() + Duration::from_secs(20);
        while bed
            .cli_ok(&["info", "persistence"])
            .contains("rdb_bgsave_in_progress:1")
        {
            assert!(Instant::now() < deadline, "BGSAVE never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let out = bench.wait_with_output().expect("redis-benchmark ends");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.to_lowercase().contains("error"),
        "{text}"
    );
    assert_eq!(started, 10);
    let info = bed.cli_ok(&["info", "persistence"]);
    assert!(info.contains("rdb_last_bgsave_status:ok"), "{info}");
    let keys: u64 = bed.cli_ok(&["dbsize"]).trim().parse().unwrap();
    assert!(keys > 0 && keys <= 5000, "{keys}");
    assert_eq!(bed.cli_ok(&["ping"]), "PONG\n");
}

/// Redis behaviours that depend on the socket layer, through the stack: pub/sub with 100 subscribers, BLPOP with a
/// timeout, MULTI/EXEC, CLIENT KILL, QUIT. (1,000 concurrent clients and WATCH with a
/// concurrent writer: tests below.)
#[test]
fn redis_client_behaviours_through_the_stack() {
    let mut bed = bed("0.0.0.0");
    bed.wait_ready();
    let (h, p) = (bed.addr(), bed.port.to_string());

    // MULTI/EXEC, and WATCH aborting a transaction whose key changed.
    let script = "MULTI\nSET a 1\nINCR a\nEXEC\nWATCH a\nMULTI\nINCR a\nEXEC\n";
    let out = bed
        .ns
        .command("redis-cli")
        .args(["-h", &h, "-p", &p])
        .stdin_bytes(script);
    assert_eq!(out, "OK\nQUEUED\nQUEUED\nOK\n2\nOK\nOK\nQUEUED\n3\n");

    // BLPOP with a timeout returns nil after it; with data it returns at once.
    let t = Instant::now();
    assert_eq!(bed.cli_ok(&["blpop", "nolist", "1"]), "\n");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "BLPOP returned early"
    );
    bed.cli_ok(&["rpush", "q", "job"]);
    assert_eq!(bed.cli_ok(&["blpop", "q", "5"]), "q\njob\n");

    // Pub/sub: 100 subscribers each get the message.
    let mut subs = Vec::new();
    for _ in 0..100 {
        let child = bed
            .ns
            .command("redis-cli")
            .args(["-h", &h, "-p", &p, "subscribe", "news"])
            .stdout(std::process::Stdio::piped())
            // CLIENT KILL ends them with "Server closed the connection": expected.
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("subscriber starts");
        subs.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: u64 = bed
            .cli_ok(&["pubsub", "numsub", "news"])
            .lines()
            .nth(1)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        if n == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} subscribers registered");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        bed.cli_ok(&["publish", "news", "hello-subscribers"]),
        "100\n"
    );
    // CLIENT KILL of every pubsub client ends the subscribers (their connections are closed).
    let killed: u64 = bed
        .cli_ok(&["client", "kill", "type", "pubsub"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(killed, 100);
    for child in subs {
        let out = child.wait_with_output().expect("subscriber ends");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("hello-subscribers"),
            "a subscriber missed the message: {text}"
        );
    }
    // QUIT: the same as through the kernel side of the same server (127.0.0.1).
    let script = "PING\nQUIT\n";
    let through_stack = bed
        .ns
        .command("redis-cli")
        .args(["-h", &h, "-p", &p])
        .stdin_bytes(script);
    let through_kernel = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &p])
        .stdin_bytes(script);
    assert_eq!(through_stack, through_kernel);
    assert!(through_stack.starts_with("PONG\n"), "{through_stack}");
}

/// Held (read) by the tests that time round trips or count what time decides, and (write) by
/// [`CpuHogs`]: this binary's tests run side by side, and 8 busy loops on the same CPUs delay
/// a server or its peer by up to ~100 ms, which a test of wake-ups would take for a missed
/// one.
static TIMED: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Busy-loop processes keeping the CPUs loaded while they live; each is killed by its pid on
/// drop, and by the kernel (PR_SET_PDEATHSIG) if the test dies without unwinding. None start
/// while a test times round trips ([`TIMED`]).
struct CpuHogs(
    Vec<std::process::Child>,
    #[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>,
);

impl CpuHogs {
    fn start(n: usize) -> CpuHogs {
        use std::os::unix::process::CommandExt;
        let timed = TIMED.write().unwrap_or_else(|e| e.into_inner());
        let mut hogs = CpuHogs(Vec::new(), timed);
        for _ in 0..n {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "while :; do :; done"])
                .stdin(std::process::Stdio::null());
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("a busy loop starts");
            hogs.0.push(child);
        }
        hogs
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// 1,000 clients connecting at once while 8 busy loops share the CPUs: the server's handshakes,
/// accepts and replies come late, and clients send their first request late. Every client must
/// get its connection and its answers (no "Connection reset by peer" for an idle accepted
/// connection ~100 ms after accept; see docs/shim.md). Set
/// MTCP_TESTS_PCAP=/path to keep the server's capture.
#[test]
fn thousand_clients_connect_while_the_cpus_are_loaded() {
    let pcap = std::env::var("MTCP_TESTS_PCAP").ok();
    let mut bed = RedisBed::new(BedOptions {
        env: pcap
            .iter()
            .map(|p| ("MTCP_PCAP".to_string(), p.clone()))
            .collect(),
        ..Default::default()
    });
    bed.wait_ready();
    let hogs = CpuHogs::start(8);
    let text = bed.bench(&["-c", "1000", "-n", "20000", "-t", "ping_mbulk"]);
    drop(hogs);
    assert!(text.contains("PING_MBULK"), "{text}");
    assert_eq!(bed.cli_ok(&["ping"]), "PONG\n");
}

/// Runs a command with `input` on stdin; returns its stdout (asserting success).
trait StdinBytes {
    fn stdin_bytes(&mut self, input: &str) -> String;
}

impl StdinBytes for Command {
    fn stdin_bytes(&mut self, input: &str) -> String {
        use std::io::Write;
        let mut child = self
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Every data type (strings, lists, hashes, sets, sorted sets, streams), errors, a 200 kB value:
/// the raw reply bytes from Redis served by the stack are the same as from the same Redis
/// served by the kernel (started in the client's namespace, on its loopback).
#[test]
fn replies_are_byte_for_byte_the_kernels() {
    let mut bed = bed("0.0.0.0");
    replies_match_the_kernels(&mut bed);
}

/// The same with the GET cache on (MTCP_REDIS_CACHE).
#[test]
fn replies_are_byte_for_byte_the_kernels_with_the_get_cache_on() {
    let mut bed = RedisBed::new(BedOptions {
        env: vec![("MTCP_REDIS_CACHE".into(), "16M".into())],
        ..Default::default()
    });
    replies_match_the_kernels(&mut bed);
}

/// redis-py's checks with the GET cache on.
#[test]
fn redis_py_with_the_get_cache_on() {
    let mut bed = RedisBed::new(BedOptions {
        env: vec![("MTCP_REDIS_CACHE".into(), "16M".into())],
        ..Default::default()
    });
    redis_py_checks(&mut bed);
}

fn replies_match_the_kernels(bed: &mut RedisBed) {
    bed.wait_ready();
    let dir = TempDir::new("kredis");
    let p = bed.port.to_string();
    let mut kernel = ServerProcess::builder_in(&bed.ns, "redis-server")
        .args([
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            dir.path().to_str().unwrap(),
        ])
        .ready_prefix("")
        .spawn()
        .expect("kernel redis-server starts");
    mtcp_tests::wait_stdout_contains(
        &mut kernel,
        "Ready to accept connections",
        Duration::from_secs(30),
    )
    .expect("kernel redis-server gets ready");
    let replay = |host: &str| {
        let out = bed
            .ns
            .exec(
                "/usr/bin/python3",
                [
                    &py_file("resp_replay.py"),
                    host,
                    &p,
                    &py_file("commands.txt"),
                ],
            )
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let through_stack = replay(&bed.addr());
    let through_kernel = replay("127.0.0.1");
    assert!(
        through_kernel.len() > 200_000 && through_kernel.ends_with(b"+OK\r\n"),
        "the kernel's replies are incomplete ({} bytes)",
        through_kernel.len()
    );
    if through_stack != through_kernel {
        let at = through_stack
            .iter()
            .zip(&through_kernel)
            .position(|(a, b)| a != b)
            .unwrap_or(through_stack.len().min(through_kernel.len()));
        let show = |v: &[u8]| {
            String::from_utf8_lossy(&v[at.saturating_sub(80)..(at + 80).min(v.len())]).into_owned()
        };
        panic!(
            "replies differ at byte {at} (stack {} bytes, kernel {}):\nstack:  {:?}\nkernel: {:?}",
            through_stack.len(),
            through_kernel.len(),
            show(&through_stack),
            show(&through_kernel)
        );
    }
}

/// Redis's answer to a malformed request, written just before it closes the connection with the
/// client's next data unread, reaches the client ahead of the reset, as through the kernel
/// (Redis's own suite, "Protocol desync regression test"): every round, through the stack and
/// through the kernel side of the same server.
#[test]
fn a_protocol_errors_reply_goes_ahead_of_the_reset() {
    let mut bed = bed("0.0.0.0");
    bed.wait_ready();
    let (h, p) = (bed.addr(), bed.port.to_string());
    let rounds = "3000";
    let script = py_file("protocol_error.py");
    let through_stack = bed
        .ns
        .exec("/usr/bin/python3", [&script, &h, &p, rounds])
        .expect("python3 runs");
    let through_stack = String::from_utf8_lossy(&through_stack.stdout).into_owned();
    let through_kernel = Command::new("/usr/bin/python3")
        .args([&script, "127.0.0.1", &p, rounds])
        .output()
        .expect("python3 runs");
    let through_kernel = String::from_utf8_lossy(&through_kernel.stdout).into_owned();
    let all = format!("{rounds} of {rounds} rounds read the error\n");
    assert_eq!(through_kernel, all, "through the kernel");
    assert_eq!(
        through_stack,
        all,
        "through the stack\n{}",
        bed.server.diagnostics()
    );
}

/// redis-py (Debian's python3-redis) through the stack: pipelines of 1,000, WATCH aborted by a
/// concurrent write, pub/sub, a 10 MB value, 50 threads on a pool, 100 asyncio clients.
#[test]
fn redis_py_through_the_stack() {
    let mut bed = bed("0.0.0.0");
    redis_py_checks(&mut bed);
}

fn redis_py_checks(bed: &mut RedisBed) {
    bed.wait_ready();
    let out = bed
        .ns
        .exec(
            "/usr/bin/python3",
            [
                &py_file("redis_py_check.py"),
                &bed.addr(),
                &bed.port.to_string(),
            ],
        )
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("redis-py: all checks passed"),
        "{text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        bed.server.diagnostics()
    );
}

/// 1,000 clients connected at once (redis-benchmark -c 1000): no error, every request answered,
/// and Redis saw every connection.
#[test]
fn a_thousand_concurrent_clients() {
    let mut bed = bed("0.0.0.0");
    bed.wait_ready();
    let text = bed.bench(&["-n", "30000", "-c", "1000", "-t", "ping_mbulk,set,get"]);
    let finals = bench_results(&text).len();
    assert_eq!(finals, 3, "{text}");
    let received: u64 = bed
        .info_field("stats", "total_connections_received")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Each of the three tests opens its 1,000 connections.
    assert!(received >= 3000, "{received} connections received");
}

/// A device whose transmit ring is full holds frames back, in order, instead of dropping them
/// (as a qdisc does for a full driver queue): Redis over memif with 64-slot rings answers 200
/// clients at once (600 frames) while its "NIC", the bridge, is stopped. Every reply arrives
/// intact once the bridge resumes, the stack reports the frames it held back (`tx_delayed`),
/// and it dropped none (it dropped ~540 before: each one a client waiting for a retransmission).
#[test]
fn a_full_transmit_ring_delays_frames_and_drops_none() {
    let mut bed = small_ring_bed();
    let (held, dropped, cpu) = burst_into_a_stopped_nic(&mut bed, Resume::WhenHeld);
    eprintln!("tx_delayed +{held}, drop_tx_ring_full +{dropped}, CPU while held {cpu:.3}");
    assert_eq!(dropped, 0, "frames dropped at the full ring");
    assert!(
        cpu < 0.25,
        "the server used {:.0}% of a core while its frames waited for a stopped device",
        cpu * 100.0
    );
}

/// A device that takes nothing for longer than the link's give-up time (500 ms) loses the frames
/// waiting for it, and TCP recovers them once it resumes: every reply still arrives intact. The
/// link then holds frames back again as soon as the device takes one (it does not stay in the
/// drop-at-once mode it uses while the device is dead).
#[test]
fn a_stopped_device_loses_the_held_frames_and_tcp_recovers_them() {
    let mut bed = small_ring_bed();
    let (_, dropped, _) = burst_into_a_stopped_nic(&mut bed, Resume::WhenDropped);
    assert!(dropped > 0);
    assert!(bed.stack_counter("tcp_retransmits") > 0);
    let (held, dropped, _) = burst_into_a_stopped_nic(&mut bed, Resume::WhenHeld);
    eprintln!("after the device resumed: tx_delayed +{held}, drop_tx_ring_full +{dropped}");
    assert_eq!(
        dropped, 0,
        "frames dropped at the full ring after the device resumed"
    );
}

/// Redis over memif with 64-slot rings (and DEBUG enabled), a key `k` of 4,000 bytes.
fn small_ring_bed() -> RedisBed {
    let mut bed = RedisBed::new(BedOptions {
        dev: Dev::Memif,
        memif_ring_log2: Some(6),
        args: vec!["--enable-debug-command".into(), "yes".into()],
        ..Default::default()
    });
    bed.wait_ready();
    let (h, p) = (bed.addr(), bed.port.to_string());
    bed.run_ok(
        "redis-cli",
        &["-h", &h, "-p", &p, "set", "k", &"v".repeat(SIZE)],
    );
    bed
}

const SIZE: usize = 4000; // three segments per reply

/// When the stopped bridge resumes in `burst_into_a_stopped_nic`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Resume {
    /// Once the stack holds 100 more frames back (`tx_delayed`).
    WhenHeld,
    /// Once the stack gave up on the stopped device and dropped frames (`drop_tx_ring_full`).
    WhenDropped,
}

/// 200 clients send `GET k` while Redis sleeps (the stack accepts and ACKs them); the bridge is
/// stopped; Redis wakes and answers all of them at once into the small ring; the bridge resumes
/// as `resume` says. Every reply must arrive intact. Returns how much `tx_delayed` and
/// `drop_tx_ring_full` grew and, for [`Resume::WhenHeld`], the share of a core the server used
/// during 250 ms while frames waited for the stopped device.
fn burst_into_a_stopped_nic(bed: &mut RedisBed, resume: Resume) -> (u64, u64, f64) {
    const CLIENTS: &str = r#"
import fcntl, socket, struct, sys, termios, time
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
socks = [socket.create_connection((host, port)) for _ in range(n)]
for s in socks:
    s.sendall(b"GET k\r\n")
# Until the server's stack has acknowledged every request (Redis itself is asleep).
def unacked(s):
    return struct.unpack("i", fcntl.ioctl(s, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
deadline = time.time() + 10
while any(unacked(s) for s in socks):
    assert time.time() < deadline, "requests not acknowledged"
    time.sleep(0.005)
print("sent", flush=True)
want = b"$%d\r\n" % size + b"v" * size + b"\r\n"
for s in socks:
    s.settimeout(30)
    got = b""
    while len(got) < len(want):
        chunk = s.recv(65536)
        assert chunk, "connection closed"
        got += chunk
    assert got == want, (len(got), got[:40])
print("replies=%d" % n, flush=True)
"#;
    const N: usize = 200;
    use std::io::BufRead;
    let (h, p) = (bed.addr(), bed.port.to_string());
    let (held0, dropped0) = (
        bed.stack_counter("tx_delayed"),
        bed.stack_counter("drop_tx_ring_full"),
    );
    let mut sleeper = bed
        .ns
        .command("redis-cli")
        .args(["-h", &h, "-p", &p, "debug", "sleep", "4"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli debug sleep");
    let mut clients = bed
        .ns
        .command("python3")
        .args(["-c", CLIENTS, &h, &p, &N.to_string(), &SIZE.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 clients");
    let mut out = std::io::BufReader::new(clients.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("clients' first line");
    assert_eq!(line.trim(), "sent", "{}", bed.diagnostics());

    // The bridge stops; Redis wakes and answers all 200 into the 64-slot ring. (Frames may have
    // been held back before too: 200 handshakes and ACKs at once overflow 64 slots.)
    let before = match resume {
        Resume::WhenHeld => ("tx_delayed", bed.stack_counter("tx_delayed") + 100),
        Resume::WhenDropped => (
            "drop_tx_ring_full",
            bed.stack_counter("drop_tx_ring_full") + 1,
        ),
    };
    let bridge = bed.bridge.as_ref().expect("memif bed has a bridge").pid() as i32;
    // SAFETY: signalling the bridge process this bed started.
    unsafe { libc::kill(bridge, libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.stack_counter(before.0) < before.1 {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(bridge, libc::SIGCONT) };
            panic!(
                "{resume:?}: {} never reached {} (tx_delayed={}, drop_tx_ring_full={})\n{}",
                before.0,
                before.1,
                bed.stack_counter("tx_delayed"),
                bed.stack_counter("drop_tx_ring_full"),
                bed.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Frames wait for the stopped device: the server must not spin a core meanwhile. 250 ms
    // with frames held (the link gives up on a device after 500 ms without progress).
    let cpu = if resume == Resume::WhenHeld {
        let pid = bed.server.pid();
        let (c0, t0) = (cpu_ns(pid), Instant::now());
        std::thread::sleep(Duration::from_millis(250));
        let share = (cpu_ns(pid) - c0) as f64 / t0.elapsed().as_nanos() as f64;
        assert!(
            bed.stack_counter("tx_backlog") > 0,
            "frames no longer held after 250 ms"
        );
        share
    } else {
        0.0
    };
    // SAFETY: as above.
    unsafe { libc::kill(bridge, libc::SIGCONT) };

    line.clear();
    out.read_line(&mut line).expect("clients' last line");
    let status = clients.wait().expect("clients exit");
    assert!(
        status.success() && line.trim() == format!("replies={N}"),
        "{resume:?}: clients: {status} {line:?}\n{}",
        bed.diagnostics()
    );
    let slept = sleeper.wait().expect("debug sleep returns");
    assert!(slept.success(), "DEBUG SLEEP: {slept}");
    (
        bed.stack_counter("tx_delayed") - held0,
        bed.stack_counter("drop_tx_ring_full") - dropped0,
        cpu,
    )
}
