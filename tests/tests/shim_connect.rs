//! Outgoing connections through the stack: Debian's redis-cli and redis-benchmark under the
//! shim in the client role (MTCP_DEV and MTCP_ADDR, no MTCP_PORTS), their connect()s to the
//! stack's subnet served by the stack over net_af_packet: against a kernel redis-server in a
//! namespace, and against redis-server under the shim, each process with a stack of its own
//! on one end of a veth pair.

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};

use mtcp_tests::redis::{redis_in, shim_client, under_shim};
use mtcp_tests::{Netns, ServerProcess, Subnet, VethPair};

/// redis-benchmark's arguments for the shim-to-shim tests: 20,000 SETs, GETs and LPUSHes from
/// 50 connections to `h`:`p` (LLEN mylist is 20,000 after it).
fn bench_args<'a>(h: &'a str, p: &'a str) -> Vec<&'a str> {
    vec![
        "-h",
        h,
        "-p",
        p,
        "-n",
        "20000",
        "-c",
        "50",
        "-t",
        "set,get,lpush",
        "-q",
    ]
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A client under the shim in the root namespace reaches a kernel redis-server in a
/// namespace through its stack: the server sees the stack's address and an ephemeral port; a
/// closed port is refused as the kernel refuses it; redis-benchmark's 50 non-blocking
/// connections (hiredis: connect, EINPROGRESS, EPOLLOUT, SO_ERROR) run 20,000 SETs and GETs
/// without an error; a Python client that waits for each reply in poll() on its connection
/// alone gets every reply without the kernel's poll being asked about that array (only the
/// blocks that wait for a frame are system calls: strace counts no `poll` for it). (The root
/// namespace has no route to the subnet: a connect() the stack did not take would not reach
/// the server.)
#[test]
fn redis_clients_connect_through_the_stack_to_a_kernel_server() {
    let subnet = Subnet::allocate().expect("subnet");
    let ns = Netns::new().expect("netns");
    let veth = VethPair::new(&ns, &subnet.cidr(1)).expect("veth");
    let port = 17000 + subnet.index();
    let (server_ip, stack_cidr) = (subnet.addr(1), subnet.cidr(2));
    let mut server = redis_in(&ns, server_ip, port, &[], None);
    let (h, p) = (server_ip.to_string(), port.to_string());
    let client = |program: &str, args: &[&str]| {
        let mut cmd = Command::new(program);
        cmd.args(args);
        shim_client(cmd, veth.root_if(), &stack_cidr)
            .output()
            .expect("the client runs")
    };

    let out = client("redis-cli", &["-h", &h, "-p", &p, "CLIENT", "LIST"]);
    let list = text(&out);
    assert!(out.status.success(), "{list}\n{}", server.diagnostics());
    let addr = list
        .split_whitespace()
        .find_map(|f| f.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {list}"));
    let (ip, from) = addr.rsplit_once(':').expect("ip:port");
    assert_eq!(ip, subnet.addr(2).to_string(), "{list}");
    let from: u16 = from.parse().expect("a port");
    // The client runs in this namespace: its stack takes the namespace's port range.
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("the port range");
    let (low, high) = range
        .split_once(char::is_whitespace)
        .map(|(l, h)| (l.trim().parse::<u16>(), h.trim().parse::<u16>()))
        .and_then(|(l, h)| Some((l.ok()?, h.ok()?)))
        .expect("two ports");
    assert!((low..=high).contains(&from), "{list} ({range})");

    let closed = (port + 1).to_string();
    let out = client("redis-cli", &["-h", &h, "-p", &closed, "PING"]);
    assert!(text(&out).contains("Connection refused"), "{}", text(&out));

    let out = client(
        "redis-benchmark",
        &[
            "-h", &h, "-p", &p, "-n", "20000", "-c", "50", "-t", "set,get", "-q",
        ],
    );
    let bench = text(&out);
    assert!(out.status.success(), "{bench}\n{}", server.diagnostics());
    assert!(
        bench.contains("SET: ") && bench.contains("GET: ") && !bench.contains("rror"),
        "{bench}"
    );
    let dbsize = ns
        .exec("redis-cli", ["-h", &h, "-p", &p, "DBSIZE"])
        .expect("redis-cli in the namespace");
    assert_eq!(String::from_utf8_lossy(&dbsize.stdout).trim(), "1");

    const PINGS: u64 = 2000;
    let script = format!(
        r#"
import select, socket
s = socket.create_connection(("{h}", {p}))
p = select.poll()
p.register(s, select.POLLIN)
for i in range({PINGS}):
    s.sendall(b"PING\r\n")
    got = b""
    while not got.endswith(b"\r\n"):
        assert p.poll(5000), "no reply in 5 s"
        got += s.recv(64)
    assert got == b"+PONG\r\n", got
print("pinged")
"#
    );
    let trace = tempfile_path("poll-strace");
    let out = client(
        "strace",
        &[
            "-f",
            "-c",
            "-e",
            "trace=poll",
            "-o",
            &trace,
            "python3",
            "-c",
            &script,
        ],
    );
    let summary = std::fs::read_to_string(&trace).unwrap_or_default();
    let _ = std::fs::remove_file(&trace);
    assert!(
        out.status.success() && text(&out).contains("pinged"),
        "{}\n{summary}",
        text(&out)
    );
    let polls = mtcp_tests::strace_calls(&summary, "poll");
    assert!(
        polls < PINGS / 2,
        "{polls} poll calls for {PINGS} pings:\n{summary}"
    );
}

/// A path for a file of this test's own in the temporary directory.
fn tempfile_path(what: &str) -> String {
    std::env::temp_dir()
        .join(format!("mtcp-{what}-{}", std::process::id()))
        .to_string_lossy()
        .into_owned()
}

/// redis-benchmark under the shim against redis-server under the shim: each in a namespace of
/// its own, each with a stack on its end of a veth pair (the kernel's addresses on the ends are
/// other ones, and the kernel takes no part in the TCP of either), every request answered; the
/// client's local ports from its namespace's ip_local_port_range, less its reserved ports.
#[test]
fn redis_benchmark_under_the_shim_against_redis_under_the_shim() {
    let subnet = Subnet::allocate().expect("subnet");
    let (ns_server, ns_client) = (Netns::new().expect("netns"), Netns::new().expect("netns"));
    let veth = VethPair::between(&ns_server, &subnet.cidr(101), &ns_client, &subnet.cidr(102))
        .expect("veth");
    let port = 17500 + subnet.index();
    let server_ip = subnet.addr(2);
    let mut server = redis_in(
        &ns_server,
        Ipv4Addr::UNSPECIFIED,
        port,
        &[],
        Some((veth.root_if(), &subnet.cidr(2))),
    );
    // The client's namespace has a local port range of its own, most of it reserved: its
    // stack takes the 200 ports left, as the kernel's connect() would. (The reserved list is
    // written long, with ports outside the range first: the kernel answers only a read from
    // the file's start, so a list read in pieces would lose its end.)
    let low: Vec<String> = (1001..1100).step_by(2).map(|p| p.to_string()).collect();
    let script = format!(
        "echo '20000 22999' > /proc/sys/net/ipv4/ip_local_port_range && \
         echo '{},20000-22799' > /proc/sys/net/ipv4/ip_local_reserved_ports",
        low.join(",")
    );
    ns_client
        .exec_checked("sh", ["-c", &script])
        .expect("the namespace's port range is set");
    let (h, p) = (server_ip.to_string(), port.to_string());
    let mut cmd = ns_client.command("redis-benchmark");
    cmd.args(bench_args(&h, &p));
    let out = shim_client(cmd, veth.ns_if(), &subnet.cidr(3))
        .output()
        .expect("redis-benchmark runs");
    let bench = text(&out);
    assert!(out.status.success(), "{bench}\n{}", server.diagnostics());
    assert!(
        bench.contains("LPUSH: ") && !bench.contains("rror"),
        "{bench}\n{}",
        server.diagnostics()
    );
    let cli = |args: &[&str]| {
        let mut cmd = ns_client.command("redis-cli");
        cmd.args(["-h", &h, "-p", &p]).args(args);
        let out = shim_client(cmd, veth.ns_if(), &subnet.cidr(3))
            .output()
            .expect("redis-cli runs");
        text(&out)
    };
    assert_eq!(
        cli(&["LLEN", "mylist"]).trim(),
        "20000",
        "{}",
        server.diagnostics()
    );
    // Both ends are stacks: the server sees the client's stack address, and its own stack
    // opened the benchmark's connections.
    let list = cli(&["CLIENT", "LIST"]);
    let from = list
        .split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("addr={}:", subnet.addr(3))))
        .unwrap_or_else(|| panic!("no client from the stack's address in {list}"));
    let from: u16 = from.parse().expect("a port");
    assert!((22800..=22999).contains(&from), "{list}");
    assert!(mtcp_tests::redis::stack_counter(server.pid(), "conns_opened") >= 50);
}

/// connect() under the shim answers as the kernel's: tests/py/connect_seq.py (blocking and
/// non-blocking connects to a listener and to a closed port, EINPROGRESS, POLLOUT, SO_ERROR once,
/// EISCONN, SO_SNDTIMEO's EINPROGRESS against a silent address, a socket in epoll before
/// connect, EHOSTUNREACH for an address nobody has, ETIMEDOUT with TCP_SYNCNT 1 against a host
/// that never answers, a port bound before connect) run by the kernel and under the shim from
/// the same namespace, to the same kernel server, print the same lines.
#[test]
fn connect_answers_as_the_kernels() {
    let subnet = Subnet::allocate().expect("subnet");
    let (ns_server, ns_client) = (Netns::new().expect("netns"), Netns::new().expect("netns"));
    let veth =
        VethPair::between(&ns_server, &subnet.cidr(1), &ns_client, &subnet.cidr(2)).expect("veth");
    let port = 18500 + subnet.index();
    let script = mtcp_tests::redis::py_file("connect_seq.py");
    let mut server = ServerProcess::builder_in(&ns_server, "/usr/bin/python3")
        .args([script.as_str(), "serve", &port.to_string()])
        .ready_prefix("listening")
        .spawn()
        .expect("the server starts");
    // A host that answers ARP and nothing else: the server's namespace drops whatever it
    // would send from that address.
    let silent_host = subnet.addr(5).to_string();
    for args in [
        vec!["addr", "add", &subnet.cidr(5), "dev", veth.root_if()],
        vec!["rule", "add", "from", &silent_host, "lookup", "100"],
        vec!["route", "add", "blackhole", "default", "table", "100"],
    ] {
        ns_server.ip(&args).expect("the silent host");
    }
    let args = [
        script.clone(),
        subnet.addr(1).to_string(),
        port.to_string(),
        (port + 1).to_string(),
        subnet.addr(77).to_string(),
        silent_host.clone(),
    ];
    let run = |shim: bool| {
        let mut cmd = ns_client.command("/usr/bin/python3");
        cmd.args(&args);
        if shim {
            cmd = shim_client(cmd, veth.ns_if(), &subnet.cidr(3));
        }
        let out = cmd.output().expect("python3 runs");
        assert!(out.status.success(), "shim {shim}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let kernel = run(false);
    assert!(kernel.ends_with("done\n"), "{kernel}");
    let shim = run(true);
    assert_eq!(shim, kernel, "{}", server.diagnostics());
}

/// 10,000 outgoing connections at once: redis-benchmark -c 10000 under the shim against a
/// kernel redis-server; every connection is opened (the server counts them) and every request
/// answered.
#[test]
fn ten_thousand_outgoing_connections_at_once() {
    let subnet = Subnet::allocate().expect("subnet");
    let ns = Netns::new().expect("netns");
    let veth = VethPair::new(&ns, &subnet.cidr(1)).expect("veth");
    let port = 17800 + subnet.index();
    // (The fd limit here is 20,000: Redis takes 19,968 clients, the benchmark's 10,000 fit.)
    let mut server = redis_in(&ns, subnet.addr(1), port, &["--maxclients", "20000"], None);
    let (ip, p) = (subnet.addr(1).to_string(), port.to_string());
    let mut cmd = Command::new("redis-benchmark");
    cmd.args([
        "-h", &ip, "-p", &p, "-c", "10000", "-n", "50000", "-t", "get", "-q",
    ]);
    let out = shim_client(cmd, veth.root_if(), &subnet.cidr(2))
        .output()
        .expect("redis-benchmark runs");
    let bench = text(&out);
    assert!(
        out.status.success() && bench.contains("GET: ") && !bench.contains("rror"),
        "{bench}\n{}",
        server.diagnostics()
    );
    let stats = ns
        .exec("redis-cli", ["-h", &ip, "-p", &p, "INFO", "stats"])
        .expect("redis-cli in the namespace");
    let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
    let field = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    assert!(field("total_connections_received") >= 10_000, "{stats}");
    assert_eq!(field("rejected_connections"), 0, "{stats}");
}

/// A net_memif pair between processes under the shim: the socket in a directory of its own,
/// the server's stack (the memif server) at `.2` of the subnet, clients' at `.3`.
struct MemifPair {
    subnet: Subnet,
    _dir: mtcp_tests::redis::TempDir,
    sock: std::path::PathBuf,
}

impl MemifPair {
    fn new(name: &str) -> MemifPair {
        let subnet = Subnet::allocate().expect("subnet");
        let dir = mtcp_tests::redis::TempDir::new(name);
        let sock = dir.path().join("memif.sock");
        MemifPair {
            subnet,
            _dir: dir,
            sock,
        }
    }

    fn host(&self) -> String {
        self.subnet.addr(2).to_string()
    }

    fn port(&self) -> String {
        (17600 + self.subnet.index()).to_string()
    }

    /// MTCP_DEV for the memif `role` ("server" or "client").
    fn dev(&self, role: &str) -> String {
        format!("memif:{},{role}", self.sock.display())
    }

    /// redis-server under the shim on the memif server's end.
    fn server_command(&self) -> Command {
        let (h, p) = (self.host(), self.port());
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &p,
            "--bind",
            &h,
            "--save",
            "",
            "--protected-mode",
            "no",
        ]);
        under_shim(
            &mut cmd,
            &self.dev("server"),
            &self.subnet.cidr(2),
            Some(&p),
        );
        cmd
    }

    /// That server, its stack running.
    fn server(&self) -> ServerProcess {
        let cmd = self.server_command();
        let mut server = mtcp_tests::redis::start_redis(cmd);
        mtcp_tests::redis::wait_stack(&mut server);
        server
    }
}

/// No kernel anywhere on the path: redis-benchmark under the shim against redis-server under
/// the shim over a net_memif pair (the server's stack the memif server, the client's the
/// memif client), every request answered; then redis-cli, over the same pair, finds every
/// LPUSH there.
#[test]
fn redis_benchmark_under_the_shim_over_memif_against_redis_under_the_shim() {
    let pair = MemifPair::new("memif-pair");
    let (h, p) = (pair.host(), pair.port());
    let subnet = &pair.subnet;
    let memif = |role: &str| pair.dev(role);
    let mut server = pair.server();
    let client = |program: &str, args: &[&str]| {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let out = under_shim(&mut cmd, &memif("client"), &subnet.cidr(3), None)
            .output()
            .expect("the client runs");
        text(&out)
    };
    let bench = client("redis-benchmark", &bench_args(&h, &p));
    assert!(
        bench.contains("LPUSH: ") && !bench.contains("rror"),
        "{bench}\n{}",
        server.diagnostics()
    );
    assert_eq!(
        client("redis-cli", &["-h", &h, "-p", &p, "LLEN", "mylist"]).trim(),
        "20000",
        "{}",
        server.diagnostics()
    );
    // Idle between requests: each stack sleeps until the other wakes it (memif has no
    // interrupts of its own; dpdk/memif_wake.rs), instead of napping ~500 times a second, and
    // a request after a pause is answered at once (not at the end of a nap or of the 100 ms
    // cap on a block).
    let sleeps = || mtcp_tests::redis::stack_counter(server.pid(), "sleeps");
    let before = sleeps();
    let script = "import socket, sys, time\n\
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n\
        took = []\n\
        for _ in range(9):\n\
        \x20   time.sleep(0.3)\n\
        \x20   t = time.monotonic()\n\
        \x20   s.sendall(b'PING\\r\\n')\n\
        \x20   assert s.recv(64) == b'+PONG\\r\\n'\n\
        \x20   took.append(time.monotonic() - t)\n\
        print('median ms', sorted(took)[4] * 1000)\n";
    let out = client("python3", &["-c", script, &h, &p]);
    let slept = sleeps() - before;
    let median: f64 = out
        .trim()
        .strip_prefix("median ms ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{out}\n{}", server.diagnostics()));
    assert!(median < 20.0, "a PING after 300 ms idle took {median} ms");
    // 2.7 s idle: ~1,350 naps without the peer's wake-ups; with them (~300), a block of at most
    // 100 ms at a time, and a few naps after each request.
    assert!(
        slept < 600,
        "the server's stack slept {slept} times in 2.7 s"
    );
}

/// A memif peer killed while the server still has its frames to read (40 times over): the
/// server keeps serving. The peer's end of the control socket closes, and DPDK's interrupt
/// thread runs net_memif's disconnect, which unmaps the rings the server's receive burst may
/// be copying from at that moment (userstack dpdk/fence.rs keeps the two apart). The server is
/// stopped (SIGSTOP) while its peer floods it and is killed, so that it resumes with a full
/// ring to read and the disconnect to run at once. Without the fence the server died of
/// SIGSEGV in `eth_memif_rx` within about ten rounds.
#[test]
fn a_memif_peer_killed_with_frames_unread_leaves_the_server_serving() {
    const ROUNDS: usize = 40;
    let pair = MemifPair::new("memif-kill");
    let (h, p) = (pair.host(), pair.port());
    let subnet = &pair.subnet;
    let memif = |role: &str| pair.dev(role);
    let mut server = pair.server();
    let pid = server.pid();
    let signal = |pid: u32, sig: libc::c_int| {
        // SAFETY: a signal to a process this test started.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
    };
    let alive = |server: &mut ServerProcess, round: usize| {
        assert!(
            server.try_status().expect("status").is_none(),
            "the server died after its peer's kill number {}\n{}",
            round - 1,
            server.diagnostics()
        );
    };
    // A server that dies publishes no counter: say that it died.
    let counter = |server: &mut ServerProcess, round: usize, name: &str| {
        std::panic::catch_unwind(|| mtcp_tests::redis::stack_counter(pid, name)).unwrap_or_else(
            |e| {
                alive(server, round);
                std::panic::resume_unwind(e)
            },
        )
    };
    for round in 1..=ROUNDS {
        let opened0 = counter(&mut server, round, "conns_opened");
        let mut frames0 = None;
        // Pipelined 4 kB SETs from 20 connections.
        let mut flood = Command::new("redis-benchmark");
        flood.args([
            "-h",
            &h,
            "-p",
            &p,
            "-c",
            "20",
            "-P",
            "32",
            "-d",
            "4000",
            "-t",
            "set",
            "-n",
            "100000000",
            "-q",
        ]);
        under_shim(&mut flood, &memif("client"), &subnet.cidr(3), None);
        // Killed and reaped also if the test fails.
        let mut flood = ServerProcess::builder_for(flood)
            .no_ready_line()
            .spawn()
            .expect("redis-benchmark starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            alive(&mut server, round);
            // A server that dies meanwhile publishes no counter: say that it died.
            let counters = (
                counter(&mut server, round, "conns_opened"),
                counter(&mut server, round, "rx_frames"),
            );
            // This round's connections are in (the last peer's disconnect ran: a memif server
            // takes no second peer), then frames from them.
            if counters.0 >= opened0 + 20 {
                let from = *frames0.get_or_insert(counters.1);
                if counters.1 >= from + 5_000 {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the flood did not reach the server\n{}",
                server.diagnostics()
            );
            assert!(
                flood.try_status().expect("status").is_none(),
                "round {round}: redis-benchmark ended\n{}",
                server.diagnostics()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Stopped with frames of the flood still to read, the server resumes with them and
        // with its peer's disconnect at once.
        signal(pid, libc::SIGSTOP);
        let stopped = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the command name in parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        };
        while !stopped() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        signal(flood.pid(), libc::SIGKILL);
        // Gone (its fds closed) once it can be reaped.
        while flood.try_status().expect("status").is_none() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        signal(pid, libc::SIGCONT);
        // The last round is followed by a PING.
    }
    let mut cli = Command::new("redis-cli");
    cli.args(["-h", &h, "-p", &p, "PING"]);
    let out = under_shim(&mut cli, &memif("client"), &subnet.cidr(3), None)
        .output()
        .expect("redis-cli runs");
    alive(&mut server, ROUNDS + 1);
    assert_eq!(text(&out).trim(), "PONG", "{}", server.diagnostics());
}

/// A memif server whose stack cannot start (its capture file cannot be made): listen() fails at
/// once and says why. (DPDK's interrupt thread, which runs the memif listener's callbacks,
/// closes fds while the stack starts: those calls must not wait for the shim's table, which
/// the failed start holds while it closes the port.)
#[test]
fn a_memif_server_whose_stack_cannot_start_fails_listen() {
    let pair = MemifPair::new("memif-nostart");
    let mut cmd = pair.server_command();
    cmd.env("MTCP_PCAP", "/nonexistent/mtcp-test/x.pcap")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("redis-server runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server still runs after 30 s: listen() hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("its output");
    let err = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("MTCP_PCAP=\"/nonexistent/mtcp-test/x.pcap\": cannot create the capture file"),
        "{err}"
    );
}

/// Servers under the shim in one network namespace, each on an interface of its own: DPDK's
/// af_packet PMD names its PACKET_FANOUT group after its pid and its interface's number
/// (`(pid ^ ifindex) & 0xffff`), and group ids belong to the whole namespace, so with
/// sequential pids and interface numbers two servers can ask for the same id, and the second
/// one's DPDK port failed (EINVAL: the group is on another interface). Here another process
/// holds exactly the id this server's PMD asks for, on another interface, and the next id on
/// the server's own interface (as a sibling worker whose id was replaced would): the shim
/// gives the PMD a group of its own (shim/src/runtime/fanout.rs), not one it would share with
/// the other socket (which would take the frames of some of the connections), and the server
/// is served through its stack on every connection.
#[test]
fn a_fanout_group_another_process_holds_does_not_stop_the_stack() {
    let subnet = Subnet::allocate().expect("subnet");
    let ns = Netns::new().expect("netns");
    let (dpdk, kernel, other, other_peer) = (
        mtcp_tests::unique_ifname("f"),
        mtcp_tests::unique_ifname("k"),
        mtcp_tests::unique_ifname("o"),
        mtcp_tests::unique_ifname("p"),
    );
    for args in [
        vec![
            "link", "add", &dpdk, "type", "veth", "peer", "name", &kernel,
        ],
        vec![
            "link",
            "add",
            &other,
            "type",
            "veth",
            "peer",
            "name",
            &other_peer,
        ],
        vec!["addr", "add", &subnet.cidr(1), "dev", &kernel],
    ] {
        ns.ip(&args).expect("the namespace's links");
    }
    for ifname in [&dpdk, &kernel, &other, &other_peer] {
        let _ = ns.exec(
            "ethtool",
            ["-K", ifname, "tx", "off", "tso", "off", "gso", "off"],
        );
        ns.ip(&["link", "set", "dev", ifname, "up"]).expect("up");
    }
    let port = 17900 + subnet.index();
    let (h, p) = (subnet.addr(2).to_string(), port.to_string());
    let dir = mtcp_tests::redis::TempDir::new("fanout");
    let held = dir.path().join("held");
    // The holder: an AF_PACKET socket on the other interface in the group the PMD of process
    // PID will ask for, and one on the server's interface in the next group (with the PMD's
    // mode: a socket asking for that group would join it); it ends with its parent (the
    // server, once the shell execs it).
    let holder = "import ctypes, socket, sys, time\n\
        ctypes.CDLL(None).prctl(1, 9)\n\
        pid, dpdk, other, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]\n\
        gid = (pid ^ int(open('/sys/class/net/%s/ifindex' % dpdk).read())) & 0xffff\n\
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n\
        s.bind((other, 0))\n\
        s.setsockopt(263, 18, (gid | ((0x8000 | 0x1000) << 16)).to_bytes(4, 'little'))\n\
        t = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n\
        t.bind((dpdk, 0))\n\
        t.setsockopt(263, 18, (((gid + 1) & 0xffff) | ((0x8000 | 0x1000) << 16)).to_bytes(4, 'little'))\n\
        open(out, 'w').write(str(gid))\n\
        time.sleep(120)\n";
    let script = format!(
        "python3 -c \"$HOLDER\" $$ {dpdk} {other} {held} &\n\
         for i in $(seq 100); do [ -s {held} ] && break; sleep 0.05; done\n\
         [ -s {held} ] || {{ echo 'the holder did not start'; exit 1; }}\n\
         exec redis-server --port {p} --bind 0.0.0.0 --save '' --protected-mode no\n",
        held = held.display()
    );
    let mut cmd = ns.command("bash");
    cmd.args(["-c", &script]).env("HOLDER", holder);
    under_shim(
        &mut cmd,
        &format!("af_packet:{dpdk}"),
        &subnet.cidr(2),
        Some(&p),
    );
    // (bash and python3 run under the shim too: they make no sockets it takes.)
    let mut server = mtcp_tests::redis::start_redis(cmd);
    assert!(
        std::fs::read_to_string(&held).is_ok_and(|g| !g.is_empty()),
        "{}",
        server.diagnostics()
    );
    mtcp_tests::redis::wait_stack(&mut server);
    // Connections from 16 source ports: a socket sharing the group would take some of them.
    for i in 0..16 {
        let out = ns
            .exec("timeout", ["5", "redis-cli", "-h", &h, "-p", &p, "PING"])
            .expect("redis-cli runs");
        assert_eq!(
            text(&out).trim(),
            "PONG",
            "connection {i}\n{}",
            server.diagnostics()
        );
    }
}
