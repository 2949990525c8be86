//! The same socket calls on accepted connections, served by the kernel and by mtcpshim's stack,
//! give the same return values, errno and data (`tests/src/bin/stack-seq.rs` is the sequence:
//! getsockname/getpeername, get/setsockopt, fcntl, ioctl, read/recv/readv with MSG_PEEK and
//! MSG_DONTWAIT, poll and select (also beside a kernel fd), epoll LT/ET/MOD/DEL, write/writev/
//! send, dup/dup2/dup3/F_DUPFD, sendfile, blocking calls with and without timeouts, a sleep and
//! a blocking read on a kernel pipe while frames arrive through the stack, sendmmsg/recvmmsg,
//! shutdown, EOF, a reset by the peer, accept4 flags, the listener). Its calls are grouped into
//! steps named after the Linux behaviour they check; a difference is reported as
//! `step NAME: kernel said X, shim over DEV said Y`. A second sequence (`stack-seq server6`)
//! listens on `::` with IPV6_V6ONLY off and checks what an IPv4 client looks like on such a
//! listener (v4-mapped addresses, AF_INET6).
//!
//! Kernel: the server in one namespace, the client in another, over a veth pair; one run is the
//! reference for every device. Stack: the server in the root namespace under
//! `LD_PRELOAD=libmtcpshim.so` on each device the tests use (net_tap, net_af_packet,
//! net_af_xdp, net_memif with `mtcp-faultbridge` as its NIC: [`StackDevice`]), the client in a
//! namespace. Same addresses (.2 server, .1 client) in every setup. Every device is run before
//! the test fails, and the failure lists each device that differs.

use std::time::{Duration, Instant};

use mtcp_tests::redis::Dev;
use mtcp_tests::stackdev::StackDevice;
use mtcp_tests::{steps, Netns, ServerProcess, Subnet, VethPair};

/// The devices the stack runs on in the tests.
const DEVICES: [Dev; 4] = [Dev::Tap, Dev::AfPacket, Dev::AfXdp, Dev::Memif];

fn seq_bin() -> std::path::PathBuf {
    mtcp_tests::built_artifact("stack-seq", "MTCP_STACK_SEQ")
}

fn shim_lib() -> std::path::PathBuf {
    mtcp_tests::built_artifact("libmtcpshim.so", "MTCP_SHIM_LIB")
}

/// What a run of the sequence printed, and what went wrong if it did not end well.
struct Run {
    out: String,
    /// The client failed, or the server did not finish (or not its sequence): the cause and
    /// both sides' state. `out` is then what the server printed before.
    problem: Option<String>,
}

/// Runs the client against the started server, waits for the server to finish (20 s at most
/// after the client ended; then it is stopped), returns its output. `more` adds to the server's
/// diagnostics (memif's bridge).
fn run(
    mut server: ServerProcess,
    mode: Mode,
    client_ns: &Netns,
    addr: &str,
    port: u16,
    more: &mut dyn FnMut() -> String,
) -> Run {
    let client = client_ns
        .exec(seq_bin(), [mode.client(), addr, &port.to_string()])
        .expect("client runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut problem = None;
    while server.try_status().expect("status").is_none() {
        if Instant::now() >= deadline {
            problem = Some("the server did not finish".to_string());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = server.stdout();
    if problem.is_none() && !client.status.success() {
        problem = Some(format!(
            "the client failed: {}",
            String::from_utf8_lossy(&client.stderr)
        ));
    }
    if problem.is_none() && !out.lines().any(|l| l == "done") {
        problem = Some("the server did not finish its sequence".to_string());
    }
    let problem = problem.map(|p| format!("{p}\nserver:\n{}\n{}", server.diagnostics(), more()));
    Run { out, problem }
}

/// Which sequence of stack-seq runs.
#[derive(Clone, Copy)]
enum Mode {
    /// The listener on 0.0.0.0, the full sequence.
    V4,
    /// The listener on `::` (IPV6_V6ONLY off), an IPv4 client: the family-dependent calls.
    V6Wildcard,
}

impl Mode {
    fn server(self) -> &'static str {
        match self {
            Mode::V4 => "server",
            Mode::V6Wildcard => "server6",
        }
    }

    fn client(self) -> &'static str {
        match self {
            Mode::V4 => "client",
            Mode::V6Wildcard => "client6",
        }
    }
}

/// The kernel's output of `mode`: the reference every device is held to. The kernel is not
/// under test here, so a run that did not end well (a stall of the host's own TCP over the veth
/// under load) is said on stderr and run once more on a fresh pair of namespaces; a second
/// failure fails the test.
fn kernel_run(mode: Mode) -> String {
    match kernel_attempt(mode) {
        Ok(out) => out,
        Err(first) => {
            eprintln!("kernel reference run failed, running it once more:\n{first}");
            kernel_attempt(mode).unwrap_or_else(|p| panic!("kernel, twice: {p}\n\nfirst: {first}"))
        }
    }
}

fn kernel_attempt(mode: Mode) -> Result<String, String> {
    let subnet = Subnet::allocate().expect("subnet");
    let (sns, cns) = (Netns::new().expect("netns"), Netns::new().expect("netns"));
    let _veth = VethPair::between(&sns, &subnet.cidr(2), &cns, &subnet.cidr(1)).expect("veth");
    let port = 18000 + subnet.index();
    let server = ServerProcess::builder_in(&sns, seq_bin())
        .args([mode.server(), &port.to_string()])
        .ready_prefix("ready")
        .spawn()
        .expect("server starts");
    let addr = subnet.addr(2).to_string();
    let run = run(server, mode, &cns, &addr, port, &mut String::new);
    match run.problem {
        Some(p) => Err(format!("{p}\n{}", run.out)),
        None => Ok(run.out),
    }
}

fn stack_run(mode: Mode, dev: Dev) -> Run {
    let subnet = Subnet::allocate().expect("subnet");
    let cns = Netns::new().expect("netns");
    let mut device = StackDevice::new(dev, &cns, &subnet.cidr(1)).expect("device");
    let port = 18000 + subnet.index();
    let mut server = ServerProcess::builder(seq_bin())
        .args([mode.server(), &port.to_string()])
        .env("LD_PRELOAD", shim_lib())
        .env("MTCP_PORTS", port.to_string())
        .env("MTCP_DEV", device.mtcp_dev())
        .env("MTCP_ADDR", subnet.cidr(2))
        .ready_prefix("ready")
        .spawn()
        .unwrap_or_else(|e| panic!("{dev:?}: server starts under the shim: {e:#}"));
    device
        .attach(&cns, &subnet.cidr(1), &mut server)
        .unwrap_or_else(|e| panic!("{dev:?}: device attached: {e:#}\n{}", server.diagnostics()));
    let addr = subnet.addr(2).to_string();
    run(server, mode, &cns, &addr, port, &mut || {
        device.diagnostics()
    })
}

/// Runs `mode` once on the kernel, then under the shim on every device; fails unless every
/// device printed what the kernel did, with each differing device's report (the first step that
/// differs, with what each side said, then every differing line; a run that did not end well
/// also says why). The kernel's output.
fn same_on_every_device(mode: Mode) -> String {
    let t = Instant::now();
    let kernel = kernel_run(mode);
    eprintln!("{}: kernel run {:?}", mode.server(), t.elapsed());
    let mut reports = Vec::new();
    for dev in DEVICES {
        let t = Instant::now();
        let stack = stack_run(mode, dev);
        eprintln!("{}: shim over {dev:?} {:?}", mode.server(), t.elapsed());
        let label = format!("shim over {dev:?}");
        let diff = steps::compare(&kernel, &stack.out, "kernel", &label);
        if diff.is_some() || stack.problem.is_some() {
            let mut report = format!("=== {label} ===\n");
            if let Some(d) = diff {
                report.push_str(&d);
            }
            if let Some(p) = stack.problem {
                report.push_str(&format!("\n--- and the run did not end well: {p}"));
            }
            reports.push(report);
        }
    }
    if !reports.is_empty() {
        panic!(
            "{} of {} devices differ from the kernel:\n\n{}\n\nkernel:\n{kernel}",
            reports.len(),
            DEVICES.len(),
            reports.join("\n\n")
        );
    }
    kernel
}

/// The two tests run one after the other: the kernel's reference run of one stalled in loaded
/// full runs while the other ran its devices beside it (the server's control line never
/// reached the client; see stack-seq's stderr for what the server knew of it).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn accepted_sockets_behave_as_the_kernels_on_every_device() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let kernel = same_on_every_device(Mode::V4);
    // The sequence really ran: it has more than a hundred lines (step headers aside) and ends
    // with "done".
    assert!(steps::call_lines(&kernel) > 100, "{kernel}");
}

/// An IPv4 client of a listener on `::` (IPV6_V6ONLY off): the kernel shows it as v4-mapped
/// IPv6 (accept's address, getpeername, getsockname, short buffers, SO_DOMAIN); so must the
/// shim, whose stack serves it, on every device.
#[test]
fn ipv4_clients_of_a_v6_wildcard_listener_look_as_on_the_kernel_on_every_device() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let kernel = same_on_every_device(Mode::V6Wildcard);
    assert!(steps::call_lines(&kernel) > 20, "{kernel}");
    // On the kernel, as Linux answers (the comparison holds the shim to it).
    assert!(
        kernel.contains("family=10 addr=::ffff:.1 port=ephemeral flowinfo=0 scope_id=0 len=28"),
        "{kernel}"
    );
}
