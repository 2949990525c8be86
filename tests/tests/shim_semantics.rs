//! The same socket calls on accepted connections, served by the kernel and by mtcpshim's stack,
//! give the same return values, errno and data (`tests/src/bin/stack-seq.rs` is the sequence:
//! getsockname/getpeername, get/setsockopt, fcntl, ioctl, read/recv/readv with MSG_PEEK and
//! MSG_DONTWAIT, poll and select (also beside a kernel fd), epoll LT/ET/MOD/DEL, write/writev/
//! send, dup/dup2/dup3/F_DUPFD, sendfile, sendmmsg/recvmmsg, shutdown, EOF, a reset by the peer,
//! accept4 flags, the listener). Its calls are grouped into steps named after the Linux
//! behaviour they check; a difference is reported as `step NAME: kernel said X, shim said Y`.
//! A second sequence (`stack-seq server6`) listens on `::` with IPV6_V6ONLY off and checks what
//! an IPv4 client looks like on such a listener (v4-mapped addresses, AF_INET6).
//!
//! Kernel: the server in one namespace, the client in another, over a veth pair. Stack: the
//! server in the root namespace under `LD_PRELOAD=libmtcpshim.so` on net_af_packet over the
//! veth's root end, the client in a namespace. Same addresses (.2 server, .1 client) in both.

use std::time::{Duration, Instant};

use mtcp_tests::{steps, Netns, ServerProcess, Subnet, VethPair};

fn seq_bin() -> std::path::PathBuf {
    mtcp_tests::built_artifact("stack-seq", "MTCP_STACK_SEQ")
}

fn shim_lib() -> std::path::PathBuf {
    mtcp_tests::built_artifact("libmtcpshim.so", "MTCP_SHIM_LIB")
}

/// Runs the client against the started server, waits for the server to finish, returns its
/// output.
fn run(mut server: ServerProcess, mode: Mode, client_ns: &Netns, addr: &str, port: u16) -> String {
    let client = client_ns
        .exec(seq_bin(), [mode.client(), addr, &port.to_string()])
        .expect("client runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.try_status().expect("status").is_none() {
        assert!(
            Instant::now() < deadline,
            "server did not finish:\n{}",
            server.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        client.status.success(),
        "client failed: {}\nserver:\n{}",
        String::from_utf8_lossy(&client.stderr),
        server.diagnostics()
    );
    let out = server.stdout();
    assert!(
        out.lines().any(|l| l == "done"),
        "server did not finish its sequence:\n{out}\n{}",
        server.diagnostics()
    );
    out
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

fn kernel_run(mode: Mode) -> String {
    let subnet = Subnet::allocate().expect("subnet");
    let (sns, cns) = (Netns::new().expect("netns"), Netns::new().expect("netns"));
    let _veth = VethPair::between(&sns, &subnet.cidr(2), &cns, &subnet.cidr(1)).expect("veth");
    let port = 18000 + subnet.index();
    let server = ServerProcess::builder_in(&sns, seq_bin())
        .args([mode.server(), &port.to_string()])
        .ready_prefix("ready")
        .spawn()
        .expect("server starts");
    run(server, mode, &cns, &subnet.addr(2).to_string(), port)
}

fn stack_run(mode: Mode) -> String {
    let subnet = Subnet::allocate().expect("subnet");
    let cns = Netns::new().expect("netns");
    let veth = VethPair::new(&cns, &subnet.cidr(1)).expect("veth");
    let port = 18000 + subnet.index();
    let server = ServerProcess::builder(seq_bin())
        .args([mode.server(), &port.to_string()])
        .env("LD_PRELOAD", shim_lib())
        .env("MTCP_PORTS", port.to_string())
        .env("MTCP_DEV", format!("af_packet:{}", veth.root_if()))
        .env("MTCP_ADDR", subnet.cidr(2))
        .ready_prefix("ready")
        .spawn()
        .expect("server starts under the shim");
    run(server, mode, &cns, &subnet.addr(2).to_string(), port)
}

#[test]
fn accepted_sockets_behave_as_the_kernels() {
    let kernel = kernel_run(Mode::V4);
    let stack = stack_run(Mode::V4);
    // The first step that differs (with what each side said), then every differing line.
    if let Some(report) = steps::compare(&kernel, &stack, "kernel", "shim") {
        panic!("{report}\n\nkernel:\n{kernel}");
    }
    // The sequence really ran: it has more than a hundred lines (step headers aside) and ends
    // with "done".
    assert!(steps::call_lines(&kernel) > 100, "{kernel}");
}

/// An IPv4 client of a listener on `::` (IPV6_V6ONLY off): the kernel shows it as v4-mapped
/// IPv6 (accept's address, getpeername, getsockname, short buffers, SO_DOMAIN); so must the
/// shim, whose stack serves it.
#[test]
fn ipv4_clients_of_a_v6_wildcard_listener_look_as_on_the_kernel() {
    let kernel = kernel_run(Mode::V6Wildcard);
    let stack = stack_run(Mode::V6Wildcard);
    if let Some(report) = steps::compare(&kernel, &stack, "kernel", "shim") {
        panic!("{report}\n\nkernel:\n{kernel}");
    }
    assert!(steps::call_lines(&kernel) > 20, "{kernel}");
    // On the kernel, as Linux answers (the comparison holds the shim to it).
    assert!(
        kernel.contains("family=10 addr=::ffff:.1 port=ephemeral flowinfo=0 scope_id=0 len=28"),
        "{kernel}"
    );
}
