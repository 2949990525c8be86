//! A classic blocking server, one thread per connection (tests/py/blocking_server.py: blocking
//! accept, SO_RCVTIMEO as a timeval, recv with MSG_WAITALL, sendall, os.sendfile of 100,000 and
//! 3,000,000 bytes on blocking sockets), served by the kernel and under the shim, with 8
//! connections at once from tests/py/blocking_client.py in a namespace. On each side: every
//! byte as expected (SHA-256), every timeout (a silent client, a partial request, idle accepts
//! on two listeners, a timeout inherited from the listener) within 2 ms before / 150 ms after
//! its SO_RCVTIMEO, no reset, every thread ended, no socket left open, a clean exit on QUIT;
//! and the server's and the client's lines the same under the shim as on the kernel.
//!
//! Kernel: the server in a namespace of its own, over a veth pair. Shim: the server in the root
//! namespace under `LD_PRELOAD=libmtcpshim.so` (or `$MTCP_SHIM_LIB`) over net_af_packet or
//! net_af_xdp on the veth's root end, over net_tap (moved into the client's namespace), or over
//! net_memif with `mtcp-faultbridge` as its NIC ([`StackDevice`]). The
//! same addresses in all (.2 server, .1 client); Debian's python3 on both ends.

use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mtcp_tests::redis::{py_file, shim_lib, Dev};
use mtcp_tests::stackdev::StackDevice;
use mtcp_tests::{cpu_ns, Netns, ServerProcess, Subnet, VethPair};

const PYTHON: &str = "/usr/bin/python3";
/// A timeout may end this much before its SO_RCVTIMEO or this much after it (as the scripts'
/// classes say).
const EARLY_MS: f64 = 2.0;
const LATE_MS: f64 = 150.0;

/// What one run printed.
struct Run {
    what: String,
    server: String,
    client: String,
    client_ok: bool,
    server_ok: bool,
    /// Both sides' output and the server's state, for failure messages.
    report: String,
    took: Duration,
}

/// Starts the client against the started server, waits for both, checks what holds on any side.
fn run(
    what: String,
    stack: Option<&str>,
    mut server: ServerProcess,
    client_ns: &Netns,
    addr: &str,
    port: u16,
) -> Run {
    let t0 = Instant::now();
    // `timeout`: a client that hangs (it gives up after 15 s without an answer itself) fails.
    let client: Output = client_ns
        .exec(
            "timeout",
            [
                "180",
                PYTHON,
                &py_file("blocking_client.py"),
                addr,
                &port.to_string(),
            ],
        )
        .expect("the client runs");
    let client_out = String::from_utf8_lossy(&client.stdout).into_owned();
    let client_err = String::from_utf8_lossy(&client.stderr).into_owned();
    // The server exits by itself after QUIT (at most ~30 s when threads are stuck).
    let deadline = Instant::now() + Duration::from_secs(45);
    let status = loop {
        if let Some(st) = server.try_status().expect("server status") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    // Let the stdout reader take the last lines.
    let _ = server.wait_stdout("done", Duration::from_secs(2));
    let out = server.stdout();
    // A server under the shim that did not exit: its stack's counters (retransmits, drops...).
    // and the counters of the kernel's end of its device (a veth's XDP drops...).
    let mut stats = String::new();
    if let (None, Some(dev_if)) = (status, stack) {
        let mtcprun = mtcp_tests::built_artifact("mtcprun", "MTCPRUN_BIN");
        let pid = server.pid().to_string();
        for (tag, prog, args) in [
            ("mtcprun stats", mtcprun.as_os_str(), vec!["stats", &pid]),
            ("ethtool -S", "ethtool".as_ref(), vec!["-S", dev_if]),
        ] {
            let got = std::process::Command::new(prog).args(&args).output();
            stats += &match got {
                Ok(o) => format!(
                    "\n--- {tag} ---\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("\n{tag}: {e}"),
            };
        }
    }
    let report = format!(
        "{what}: client ({}):\n{client_out}{client_err}\nserver:\n{out}\n{}{stats}",
        client.status,
        server.diagnostics()
    );
    assert!(
        status.is_some(),
        "{what}: the server did not exit within 45 s of the client's end\n{report}"
    );
    eprintln!("{what}: {took:?}");
    Run {
        what,
        server: out,
        client: client_out,
        client_ok: client.status.success(),
        server_ok: status.is_some_and(|s| s.success()),
        report,
        took,
    }
}

fn kernel_run() -> Run {
    let subnet = Subnet::allocate().expect("subnet");
    let (sns, cns) = (Netns::new().expect("netns"), Netns::new().expect("netns"));
    let _veth = VethPair::between(&sns, &subnet.cidr(2), &cns, &subnet.cidr(1)).expect("veth");
    let port = 21000 + 2 * subnet.index();
    let server = ServerProcess::builder_in(&sns, PYTHON)
        .args([py_file("blocking_server.py"), port.to_string()])
        .ready_prefix("ready")
        .spawn()
        .expect("the server starts");
    run(
        "kernel".into(),
        None,
        server,
        &cns,
        &subnet.addr(2).to_string(),
        port,
    )
}

/// The blocking server under the shim over `dev` (with `env` too), its clients' namespace.
struct ShimBed {
    // Dropped in this order: the server, the device (a memif bridge stops, the veth goes),
    // the namespace.
    server: ServerProcess,
    device: StackDevice,
    cns: Netns,
    subnet: Subnet,
    port: u16,
}

fn shim_bed(dev: Dev, env: &[(&str, &str)]) -> ShimBed {
    shim_bed_of("blocking_server.py", dev, env)
}

/// [`shim_bed`] with another of tests/py's servers (`script PORT`, printing `ready`).
fn shim_bed_of(script: &str, dev: Dev, env: &[(&str, &str)]) -> ShimBed {
    let subnet = Subnet::allocate().expect("subnet");
    let cns = Netns::new().expect("netns");
    let port = 21000 + 2 * subnet.index();
    let mut device = StackDevice::new(dev, &cns, &subnet.cidr(1)).expect("the device");
    let mut builder = ServerProcess::builder(PYTHON);
    builder = builder
        .args([py_file(script), port.to_string()])
        .env("LD_PRELOAD", shim_lib())
        .env("MTCP_PORTS", format!("{port},{}", port + 1))
        .env("MTCP_DEV", device.mtcp_dev())
        .env("MTCP_ADDR", subnet.cidr(2));
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let mut server = builder
        .ready_prefix("ready")
        .spawn()
        .expect("the server starts under the shim");
    // Once the server listens: the tap moves into the clients' namespace, memif's bridge
    // starts.
    device
        .attach(&cns, &subnet.cidr(1), &mut server)
        .expect("the device attached");
    ShimBed {
        subnet,
        cns,
        port,
        server,
        device,
    }
}

fn shim_run(dev: Dev) -> Run {
    // (Bound in the order of their drops' reverse: the server, then the device, then the
    // namespace.)
    let ShimBed {
        subnet,
        cns,
        port,
        device,
        server,
    } = shim_bed(dev, &[]);
    let dev_if = device.kernel_if().to_string();
    run(
        format!("shim over {dev:?}"),
        Some(dev_if.as_str()),
        server,
        &cns,
        &subnet.addr(2).to_string(),
        port,
    )
}

/// The lines compared between the kernel and the shim: all but the raw timings, grouped by
/// their prefix (`conn 3`, `quit`...) in a stable order: the connections run at once, so only
/// the order within one of them is fixed.
fn events(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text.lines().filter(|l| !l.starts_with("timing ")).collect();
    v.sort_by_key(|l| l.split_once(':').map_or(*l, |(k, _)| k));
    v
}

/// Checks that hold on every side, the kernel's included: the raw timings within tolerance of
/// their SO_RCVTIMEO, every transfer and timeout as expected.
fn check_alone(run: &Run) {
    let what = &run.what;
    assert!(run.client_ok, "{what}: the client failed\n{}", run.report);
    assert!(
        run.server_ok && run.server.lines().any(|l| l == "done"),
        "{what}: the server did not finish cleanly\n{}",
        run.report
    );
    let mut timings = 0;
    for line in run.server.lines().chain(run.client.lines()) {
        // "timing conn 3 silent 301.2 ms (SO_RCVTIMEO 300 ms)"
        let Some(rest) = line.strip_prefix("timing ") else {
            continue;
        };
        let nums: Vec<f64> = rest
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let (ms, want) = (nums[nums.len() - 2], nums[nums.len() - 1]);
        assert!(
            ms >= want - EARLY_MS && ms <= want + LATE_MS,
            "{what}: {line}: not within -{EARLY_MS}/+{LATE_MS} ms of its SO_RCVTIMEO\n{}",
            run.server
        );
        timings += 1;
    }
    // Server: 2 silent, 2 partial, 2 idle accepts, 1 inherited; client: 4 silent + 1 inherited.
    assert_eq!(
        timings, 12,
        "{what}: timings\n{}\n{}",
        run.server, run.client
    );
    for line in run.server.lines().chain(run.client.lines()) {
        if line.starts_with("timing ") {
            eprintln!("{what}: {line}");
        }
    }
    let count = |text: &str, needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    let s = &run.server;
    for (needle, n) in [
        ("sendfile sent 100000 in 1 call(s)", 8),
        ("sendfile sent 3000000 in 1 call(s)", 8),
        ("in 1 call(s), sent back", 16),
        ("silent client: EAGAIN after about", 2),
        ("returned 10 bytes after about", 2),
        ("idle second listener: EAGAIN after about 250 ms", 1),
        (
            "second listener's silent connection: EAGAIN after about 250 ms",
            1,
        ),
        ("idle main listener: EAGAIN after about 300 ms", 1),
        ("end of stream after", 4),
        (": closed", 8),
        ("quit: 8 connections served, threads still running: []", 1),
        ("quit: the client closed: True", 1),
        ("fds: 0 sockets open beyond those of the start", 1),
        ("error", 0),
        ("failed", 0),
        ("not about", 0),
        ("not EAGAIN", 0),
        ("unexpected", 0),
    ] {
        assert_eq!(
            count(s, needle),
            n,
            "{what}: server lines with {needle:?}\n{s}"
        );
    }
    let c = &run.client;
    for (needle, n) in [
        ("sha256", 32),
        ("as expected", 32),
        (": closed by the server", 8),
        (
            "second listener's connection closed by the server after about 250 ms",
            1,
        ),
        ("FAIL", 0),
        ("not about", 0),
        ("quit: the server says 'BYE'", 1),
    ] {
        assert_eq!(
            count(c, needle),
            n,
            "{what}: client lines with {needle:?}\n{c}"
        );
    }
}

fn kernel() -> &'static Run {
    static KERNEL: OnceLock<Run> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let run = kernel_run();
        check_alone(&run);
        run
    })
}

fn same_as_the_kernel(dev: Dev) {
    let kernel = kernel();
    let shim = shim_run(dev);
    let mut differences = String::new();
    for (side, k, s) in [
        ("server", &kernel.server, &shim.server),
        ("client", &kernel.client, &shim.client),
    ] {
        let (ke, se) = (events(k), events(s));
        if ke != se {
            differences += &format!(
                "the {side}'s lines differ ({} on the kernel, {} under the shim):\n\
                 only on the kernel:\n{}\nonly under the shim:\n{}\n",
                ke.len(),
                se.len(),
                only_in(&ke, &se),
                only_in(&se, &ke)
            );
        }
    }
    assert!(
        differences.is_empty(),
        "{}: {differences}\n{}\n\nthe kernel's server:\n{}",
        shim.what,
        shim.report,
        kernel.server
    );
    check_alone(&shim);
    eprintln!(
        "kernel run {:?}, {} run {:?}",
        kernel.took, shim.what, shim.took
    );
}

/// The lines of `a` that `b` does not have (as many times as `a` has them more), in `a`'s
/// order.
fn only_in(a: &[&str], b: &[&str]) -> String {
    let mut rest: Vec<&str> = b.to_vec();
    let mut out = String::new();
    for l in a {
        match rest.iter().position(|r| r == l) {
            Some(i) => {
                rest.remove(i);
            }
            None => out += &format!("  {l}\n"),
        }
    }
    out
}

#[test]
fn a_blocking_thread_per_connection_server_over_af_packet_is_served_as_by_the_kernel() {
    same_as_the_kernel(Dev::AfPacket);
}

#[test]
fn a_blocking_thread_per_connection_server_over_tap_is_served_as_by_the_kernel() {
    same_as_the_kernel(Dev::Tap);
}

/// Over net_af_xdp: this load once stalled it (frames in mbufs past the UMEM's end were
/// dropped by the kernel as invalid TX descriptors; see userstack/src/dpdk/link.rs, packed_pool).
#[test]
fn a_blocking_thread_per_connection_server_over_af_xdp_is_served_as_by_the_kernel() {
    same_as_the_kernel(Dev::AfXdp);
}

/// Over net_memif (mtcp-faultbridge as its NIC, which wakes the blocked threads: it takes
/// part in the wake-ups).
#[test]
fn a_blocking_thread_per_connection_server_over_memif_is_served_as_by_the_kernel() {
    same_as_the_kernel(Dev::Memif);
}

/// Python `script` in the clients' namespace, given the server's address and `port` (at most a
/// minute).
fn python_client(cns: &Netns, script: &str, subnet: &Subnet, port: u16) -> Output {
    cns.exec(
        "timeout",
        [
            "60",
            PYTHON,
            "-c",
            script,
            &subnet.addr(2).to_string(),
            &port.to_string(),
        ],
    )
    .expect("the client runs")
}

/// A client of the blocking server's four connections: each says HELLO, then one ECHO of ten
/// bytes every 50 ms in turn, 40 in all.
const SPACED_ECHOES: &str = r#"
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
conns = []
for k in range(4):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(f"HELLO {k}".encode().ljust(32))
    conns.append(s)
for i in range(40):
    time.sleep(0.05)
    s = conns[i % 4]
    s.sendall(b"ECHO 10".ljust(32) + b"0123456789")
    got = b""
    while len(got) < 10:
        part = s.recv(10 - len(got))
        if not part:
            sys.exit(f"echo {i}: closed after {got!r}")
        got += part
    if got != b"0123456789":
        sys.exit(f"echo {i}: {got!r}")
print("40 echoes")
"#;

/// Five threads blocked over net_memif at once (four in recv, one in accept), each woken by a
/// frame in turn: the thread a wake-up ends reads its datagram though it is not the last one
/// blocked (it does not disarm), so its next block sleeps instead of returning at once. (Left
/// unread, the datagram keeps the thread spinning: a whole core.)
#[test]
fn threads_blocked_over_memif_sleep_between_requests() {
    let mut bed = shim_bed(Dev::Memif, &[("MTCP_SPIN_US", "0")]);
    let server = &mut bed.server;
    let (c0, t0) = (cpu_ns(server.pid()), Instant::now());
    let out = python_client(&bed.cns, SPACED_ECHOES, &bed.subnet, bed.port);
    let (cpu, secs) = (cpu_ns(server.pid()) - c0, t0.elapsed().as_secs_f64());
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("40 echoes"),
        "client: {}{}\nserver: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.diagnostics()
    );
    let share = cpu as f64 / 1e9 / secs * 100.0;
    eprintln!("server: {share:.1}% of a core over {secs:.2} s of spaced echoes");
    // Asleep between requests: a few percent (a thread spinning on the unread datagram
    // takes a whole core).
    assert!(
        share < 25.0,
        "the server used {share:.1}% of a core for 40 echoes 50 ms apart"
    );
}

/// A server that runs a child process for every request keeps its connection: CPython's
/// subprocess starts the child with vfork, which shares the server's memory, and the child
/// closes every fd from 3 up (close_range) before exec. Those closes are the child's own: the
/// server's socket table must not see them (it used to: the connection was closed under the
/// server at its first request).
#[test]
fn a_server_that_spawns_a_child_per_request_keeps_its_connection() {
    let mut bed = shim_bed_of("spawn_server.py", Dev::AfPacket, &[]);
    let client = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
f = s.makefile("rb")
for i in range(3):
    s.sendall(b"run\n")
    print(f.readline().decode().strip())
"#;
    let out = python_client(&bed.cns, client, &bed.subnet, bed.port);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok 1 0\nok 2 0\nok 3 0\n",
        "client: {}\nserver: {}",
        String::from_utf8_lossy(&out.stderr),
        bed.server.diagnostics()
    );
}

/// A server that stops its acceptor thread with shutdown() of the listener, as Linux allows: the
/// thread blocked in accept() wakes with EINVAL, the port refuses clients, and listen() starts
/// it again on the same port (a stack-only listener: bound to MTCP_ADDR).
#[test]
fn shutdown_of_a_listener_wakes_its_blocked_acceptor_and_stops_it() {
    let mut bed = shim_bed_of("acceptor_server.py", Dev::AfPacket, &[]);
    let client = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
ctl = socket.create_connection((host, port), timeout=10)
answers = ctl.makefile("rb")
def greeted():
    with socket.create_connection((host, port + 1), timeout=10) as c:
        return c.makefile("rb").readline().decode().strip()
def ask(cmd):
    ctl.sendall(cmd.encode() + b"\n")
    return answers.readline().decode().strip()
print(greeted())
print(ask("shut"))
try:
    socket.create_connection((host, port + 1), timeout=10).close()
    print("connected to a stopped listener")
except ConnectionRefusedError:
    print("refused")
print(ask("listen"))
print(greeted())
"#;
    let out = python_client(&bed.cns, client, &bed.subnet, bed.port);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\nacceptor ended EINVAL, accepting 0\nrefused\nlistening, accepting 1\nhello\n",
        "client: {}\nserver: {}",
        String::from_utf8_lossy(&out.stderr),
        bed.server.diagnostics()
    );
}

/// A connection closed while another thread is blocked reading it, and the next connection
/// accepted (whose fd may get the same number): the blocked reader never takes the new
/// connection's data, which goes to the thread that reads it; the reader ends (end of stream
/// on Linux once the first client closes, EBADF under the shim).
#[test]
fn a_reader_blocked_on_a_closed_fd_never_reads_the_next_connection() {
    let mut bed = shim_bed_of("close_under_reader.py", Dev::AfPacket, &[]);
    let client = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
first = socket.create_connection((host, port), timeout=10)
second = socket.create_connection((host, port), timeout=10)
second.sendall(b"second\n")
answers = second.makefile("rb")
print(answers.readline().decode().strip())
first.close()
print(answers.readline().decode().strip())
"#;
    let out = python_client(&bed.cns, client, &bed.subnet, bed.port);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout == "main read second\nreader ended EBADF\n"
            || stdout == "main read second\nreader ended eof\n",
        "client: {stdout}{}\nserver: {}",
        String::from_utf8_lossy(&out.stderr),
        bed.server.diagnostics()
    );
}

/// Over net_memif, a thread woken by a frame while other threads stay blocked may go back to
/// the application for long (here 300 ms of work): the frames that come meanwhile for the
/// others' connections still wake one of them at once. Every echo of a second connection,
/// sent while the first connection's thread works, is answered well within the keeper's idle
/// period (50 ms while threads are blocked: the poll that would otherwise find it; the first
/// echo of a round took that long when the woken thread left the device's wake-up disarmed).
/// Each round: an echo (its thread answers and blocks again), then the busy request, whose
/// frame wakes the first thread through the device's wake-up while the second is blocked.
#[test]
fn a_thread_busy_in_the_application_holds_back_no_other_threads_replies_over_memif() {
    let mut bed = shim_bed_of("busy_server.py", Dev::Memif, &[("MTCP_SPIN_US", "0")]);
    let client = r#"
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
busy = socket.create_connection((host, port), timeout=10)
other = socket.create_connection((host, port), timeout=10)
answers = other.makefile("rb")
done = busy.makefile("rb")
rtts = []
for round in range(6):
    time.sleep(0.05)
    other.sendall(b"echo warm\n"); answers.readline()
    busy.sendall(b"busy 300\n")
    time.sleep(0.05)
    for i in range(5):
        t = time.monotonic()
        other.sendall(f"echo {i}\n".encode())
        assert answers.readline() == f"{i}\n".encode()
        rtts.append((time.monotonic() - t) * 1000)
        time.sleep(0.02)
    assert done.readline() == b"done\n"
print(f"slowest {max(rtts):.2f} ms, all {' '.join(f'{r:.1f}' for r in rtts)}")
"#;
    let out = python_client(&bed.cns, client, &bed.subnet, bed.port);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    let slowest: f64 = stdout
        .strip_prefix("slowest ")
        .and_then(|r| r.split_once(' '))
        .and_then(|(m, _)| m.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "client: {stdout}{}\nserver: {}",
                String::from_utf8_lossy(&out.stderr),
                bed.server.diagnostics()
            )
        });
    assert!(
        slowest < 25.0,
        "an echo waited for the keeper's poll: {stdout}"
    );
}
