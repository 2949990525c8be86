//! Signals and output under the shim: whatever a device driver needs, the application never sees
//! a signal it did not cause (no interrupted sleep, no handler of its own run, no handler, ignore
//! or mask changed), and a normal start prints nothing of ours on its stderr.
//!
//! DPDK 22.11's net_tap would take a free real-time signal for its receive trigger (a handler,
//! O_ASYNC on its queue fds, one signal per frame to the process): docs/architecture.md,
//! "Signals". Debian's redis-server and a Python server run under the shim, clients in a
//! namespace; `DEBUG SLEEP` goes through the kernel side (127.0.0.1) of the same listener.

use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mtcp_tests::redis::{shim_lib, BedOptions, Dev, RedisBed, TempDir};
use mtcp_tests::{unique_ifname, Netns, ServerProcess, Subnet};

/// From the namespace: one connection, made before this starts sending; 5 PINGs 100 ms apart,
/// then their replies. Prints "sent" once all are sent and "pong" as each reply arrives.
const PINGER: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
print("connected", flush=True)
sys.stdin.readline()
for _ in range(5):
    s.sendall(b"PING\r\n")
    time.sleep(0.1)
print("sent", flush=True)
got = b""
while got.count(b"+PONG\r\n") < 5:
    chunk = s.recv(64)
    assert chunk, "closed"
    if got.count(b"+PONG\r\n") == 0 and (got + chunk).count(b"+PONG\r\n") > 0:
        print("pong", flush=True)
    got += chunk
assert got == b"+PONG\r\n" * 5, got
print("pongs=5", flush=True)
"#;

/// `SigBlk`, `SigIgn` and `SigCgt` of a process's main thread (/proc/PID/status).
fn signal_state(pid: u32) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .filter(|l| {
            ["SigBlk:", "SigIgn:", "SigCgt:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The process's fds with O_ASYNC set (their owner gets a signal when they become ready).
fn async_fds(pid: u32) -> Vec<String> {
    const O_ASYNC: u32 = 0o20000;
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let info = std::fs::read_to_string(e.path()).ok()?;
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())?;
        let fd = e.file_name().to_string_lossy().into_owned();
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        (flags & O_ASYNC != 0).then(|| format!("fd {fd} -> {}", target.display()))
    })
    .collect()
}

/// The same redis-server, without the shim, serving a unix socket only: its signal state is
/// what Redis itself sets up.
fn plain_redis_signal_state() -> Vec<String> {
    let dir = TempDir::new("plain-redis");
    let sock = dir.path().join("redis.sock");
    let mut plain = ServerProcess::builder("redis-server")
        .args([
            "--port",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--unixsocket",
        ])
        .arg(&sock)
        .arg("--dir")
        .arg(dir.path())
        .ready_prefix("")
        .spawn()
        .expect("plain redis-server starts");
    mtcp_tests::wait_stdout_contains(
        &mut plain,
        "ready to accept connections at",
        Duration::from_secs(30),
    )
    .expect("plain redis-server gets ready");
    signal_state(plain.pid())
}

/// `DEBUG SLEEP 2` through the kernel side while a client sends PINGs through the stack: the
/// sleep lasts its 2 s (Redis's nanosleep is not interrupted), the PINGs are answered after it;
/// Redis's signal state is the one it has without the shim, and no fd of the process asks for
/// signals. On every device.
#[test]
fn debug_sleep_lasts_while_frames_arrive_through_the_stack() {
    let plain = plain_redis_signal_state();
    for dev in [Dev::Tap, Dev::AfPacket, Dev::AfXdp, Dev::Memif] {
        let mut bed = RedisBed::new(BedOptions {
            dev,
            args: vec!["--enable-debug-command".into(), "yes".into()],
            ..Default::default()
        });
        let (h, p) = (bed.addr(), bed.port.to_string());
        let mut pinger = bed
            .ns
            .command("python3")
            .args(["-c", PINGER, &h, &p])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 pinger");
        let mut lines = std::io::BufReader::new(pinger.stdout.take().expect("stdout")).lines();
        let mut next = |what: &str| {
            let l = lines
                .next()
                .unwrap_or_else(|| panic!("{dev:?}: pinger ended before {what:?}"))
                .expect("pinger's stdout");
            assert_eq!(l, what, "{dev:?}");
            Instant::now()
        };
        next("connected");

        let t0 = Instant::now();
        let sleeper = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &p, "debug", "sleep", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli debug sleep");
        std::thread::sleep(Duration::from_millis(300));
        use std::io::Write;
        let mut stdin = pinger.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("pinger's stdin");
        drop(stdin);
        let sent = next("sent");
        let first_pong = next("pong");
        let out = sleeper.wait_with_output().expect("redis-cli ends");
        let slept = t0.elapsed();
        next("pongs=5");
        assert!(pinger.wait().expect("pinger ends").success(), "{dev:?}");
        eprintln!(
            "{dev:?}: DEBUG SLEEP 2 took {slept:?}; PINGs sent by {:?}, first PONG at {:?}",
            sent - t0,
            first_pong - t0
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n", "{dev:?}");
        assert!(
            slept >= Duration::from_secs(2),
            "{dev:?}: DEBUG SLEEP 2 returned after {slept:?}\n{}",
            bed.diagnostics()
        );
        assert!(
            sent - t0 < Duration::from_secs(2) && first_pong - t0 >= Duration::from_secs(2),
            "{dev:?}: PINGs sent by {:?}, first answered at {:?}",
            sent - t0,
            first_pong - t0
        );

        let pid = bed.server.pid();
        assert_eq!(signal_state(pid), plain, "{dev:?}: Redis's signal state");
        assert_eq!(async_fds(pid), Vec::<String>::new(), "{dev:?}: O_ASYNC fds");
    }
}

/// A Python server over net_tap that takes every real-time signal for itself once the stack
/// runs (a handler that counts): its handlers never run while frames come and go through the
/// stack, the stack keeps receiving, and listen() (which starts DPDK) changed no handler.
#[test]
fn an_application_owning_the_real_time_signals_gets_none_of_ours() {
    const SERVER: &str = r#"
import signal, socket, sys
# Masks of the main thread, less glibc's own signals 32 and 33 (its first pthread_create, made
# by the stack's start here, installs them; sigaction refuses them to applications).
GLIBC = (1 << 31) | (1 << 32)
def sig_state():
    return [(w[0], int(w[1], 16) & ~GLIBC) for w in (l.split() for l in open("/proc/self/status"))
            if w[0] in ("SigBlk:", "SigIgn:", "SigCgt:")]
got = []
before = sig_state()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("state %s" % ("same" if sig_state() == before else "changed %s -> %s" % (before, sig_state())))
for n in range(signal.SIGRTMIN, signal.SIGRTMAX + 1):
    signal.signal(n, lambda n, f: got.append(n))
signal.signal(signal.SIGIO, lambda n, f: got.append(n))
print("ready", flush=True)
c, _ = s.accept()
while True:
    data = c.recv(4096)
    if not data:
        break
    c.sendall(data)
print("signals %s" % sorted(set(got)), flush=True)
"#;
    const CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
for i in range(200):
    msg = b"message %d\n" % i
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += s.recv(64)
    assert got == msg, got
    if i % 20 == 0:
        time.sleep(0.02)
s.close()
print("echoed=200")
"#;
    let subnet = Subnet::allocate().expect("subnet");
    let ns = Netns::new().expect("netns");
    let tap = unique_ifname("g");
    let port = (19500 + subnet.index()).to_string();
    let mut server = ServerProcess::builder("python3")
        .args(["-c", SERVER, &port])
        .env("LD_PRELOAD", shim_lib())
        .env("MTCP_PORTS", &port)
        .env("MTCP_DEV", format!("tap:{tap}"))
        .env("MTCP_ADDR", subnet.cidr(2))
        .ready_prefix("ready")
        .spawn()
        .expect("the server starts");
    ns.adopt_link(&tap, &subnet.cidr(1))
        .expect("tap moved into the namespace");
    let client = ns
        .exec(
            "timeout",
            [
                "30",
                "python3",
                "-c",
                CLIENT,
                &subnet.addr(2).to_string(),
                &port,
            ],
        )
        .expect("the client runs");
    let done = server.wait_stdout("signals", Duration::from_secs(10));
    let out = server.stdout();
    assert!(
        client.status.success(),
        "client: {}{}\nserver: {out}\n{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr),
        server.diagnostics()
    );
    assert!(out.contains("state same"), "{out}");
    assert_eq!(done.ok().as_deref(), Some("signals []"), "{out}");
    assert_eq!(async_fds(server.pid()), Vec::<String>::new());
}

/// A normal start over net_tap prints nothing on the application's stderr (DPDK's messages are
/// kept unless MTCP_LOG asks for them, or the start fails); with MTCP_LOG set, DPDK's messages
/// of that level are there; a start that fails shows DPDK's reason before the shim's line.
#[test]
fn dpdk_says_nothing_unless_asked_or_the_start_fails() {
    let mut bed = RedisBed::new(BedOptions::default());
    bed.cli_ok(&["ping"]);
    let (status, stderr) = bed.server.stop_with_stderr().expect("redis-server stops");
    assert!(status.success(), "{status}");
    assert_eq!(stderr, "", "the application's stderr");

    let mut bed = RedisBed::new(BedOptions {
        env: vec![("MTCP_LOG".into(), "debug".into())],
        ..Default::default()
    });
    bed.cli_ok(&["ping"]);
    let (_, stderr) = bed.server.stop_with_stderr().expect("redis-server stops");
    for line in ["EAL: ", "Failed to send start req to secondary"] {
        assert!(
            stderr.contains(line),
            "MTCP_LOG=debug: no {line:?} in\n{stderr}"
        );
    }

    let subnet = Subnet::allocate().expect("subnet");
    let port = (19700 + subnet.index()).to_string();
    let out = std::process::Command::new("timeout")
        .args(["30", "redis-server", "--port", &port, "--save", ""])
        .env("LD_PRELOAD", shim_lib())
        .env("MTCP_PORTS", &port)
        .env("MTCP_DEV", format!("tap:{}", unique_ifname("f")))
        .env("MTCP_ADDR", subnet.cidr(2))
        .env("MTCP_EAL_ARGS", "--vdev=net_nonexistent0")
        .output()
        .expect("redis-server runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (dpdk, ours) = (
        stderr.find("EAL: failed to parse device \"net_nonexistent0\""),
        stderr.find("DPDK EAL initialisation failed"),
    );
    assert!(
        !out.status.success() && dpdk.is_some() && dpdk < ours,
        "{}: {stderr}",
        out.status
    );
}
