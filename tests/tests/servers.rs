//! Epoll servers other than Redis, unmodified, under the shim: the two shapes most servers take
//! besides Redis's one thread, each with a client that checks every reply
//! (tests/py/check_clients.py), run against the kernel and under the shim:
//!
//! - tokio's multi-threaded runtime (examples/tokio_echo.rs, 4 worker threads sharing one epoll
//!   set, its driver thread blocked on it before the listener exists, registrations through a
//!   dup of the epoll fd): 32 connections x 100 echoes of random sizes;
//! - Node.js (libuv, which closes fds with `syscall(SYS_close)`): HTTP bodies of 0 to 70,000
//!   bytes, keep-alive and a new connection per request;
//! - uvloop (libuv under Python's asyncio): 32 connections x 100 echoes;
//! - memcached -t 4 (four threads, each with its own epoll set, connections handed to them by
//!   the listening thread): set and get of 32 x 200 values of up to 20,000 bytes.
//!
//! Kernel: the server in a namespace of its own, over a veth pair to the client's namespace.
//! Shim: the server in the root namespace under `LD_PRELOAD=libmtcpshim.so` over net_af_packet
//! on the veth's root end. The same addresses on both (.2 server, .1 client). On each side:
//! the client's checks pass (every byte as sent, no reset, no timeout), its summary line
//! (requests, bytes and the SHA-256 of every reply) is the same under the shim as on the
//! kernel, and the server holds as many sockets after the clients left as before they came.

use std::process::Output;
use std::time::{Duration, Instant};

use mtcp_tests::redis::py_file;
use mtcp_tests::{Netns, ServerProcess, Side};

const PYTHON: &str = "/usr/bin/python3";

/// A server and the client that checks it.
struct Case {
    name: &'static str,
    /// The server's command line; `{port}` is replaced.
    server: Vec<String>,
    /// Its stdout line that says it listens (`None`: it prints none; the listening socket is
    /// waited for instead).
    ready: Option<&'static str>,
    /// check_clients.py's arguments after HOST PORT.
    client: Vec<&'static str>,
}

fn tokio_echo() -> Case {
    let bin = mtcp_tests::built_artifact("tokio-echo", "MTCP_TOKIO_ECHO_BIN");
    Case {
        name: "tokio",
        server: vec![bin.display().to_string(), "{port}".into(), "4".into()],
        ready: Some("ready"),
        client: vec!["echo", "32", "100"],
    }
}

fn node_http(mode: &'static str) -> Case {
    Case {
        name: "node",
        server: vec![
            "node".into(),
            format!("{}/js/http_server.js", env!("CARGO_MANIFEST_DIR")),
            "{port}".into(),
        ],
        ready: Some("ready"),
        client: vec!["http", "16", "50", mode],
    }
}

fn uvloop_echo() -> Case {
    Case {
        name: "uvloop",
        server: vec![
            "/usr/bin/python3".into(),
            py_file("uvloop_echo.py"),
            "{port}".into(),
        ],
        ready: Some("ready"),
        client: vec!["echo", "32", "100"],
    }
}

fn memcached() -> Case {
    Case {
        name: "memcached",
        server: [
            "memcached",
            "-u",
            "root",
            "-m",
            "1024",
            "-t",
            "4",
            "-U",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(
            ["-l", "0.0.0.0", "-p", "{port}"]
                .iter()
                .map(|s| s.to_string()),
        )
        .collect(),
        ready: None,
        client: vec!["memcached", "32", "200"],
    }
}

/// Socket fds process `pid` holds now.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits until something listens on TCP `port` in `ns` (the root namespace if `None`).
fn wait_listening(ns: Option<&Netns>, port: u16, server: &mut ServerProcess) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let filter = format!("sport = :{port}");
    loop {
        let args = ["-Hltn", filter.as_str()];
        let out = match ns {
            Some(ns) => ns.exec("ss", args),
            None => std::process::Command::new("ss")
                .args(args)
                .output()
                .map_err(Into::into),
        }
        .expect("ss runs");
        if !out.stdout.is_empty() {
            return;
        }
        assert!(
            server.try_status().expect("status").is_none() && Instant::now() < deadline,
            "the server does not listen on {port}\n{}",
            server.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `case`'s server (under the shim if `shim`) and its client; returns the client's
/// summary line.
fn run(case: &Case, shim: bool) -> String {
    let side = if shim { "shim" } else { "kernel" };
    let bed = Side::new(shim, 23000);
    let port = bed.port;
    let argv: Vec<String> = case
        .server
        .iter()
        .map(|a| a.replace("{port}", &port.to_string()))
        .collect();
    let mut b = bed.server(&argv);
    b = match case.ready {
        Some(r) => b.ready_prefix(r),
        None => b.no_ready_line(),
    };
    let mut server = b.spawn().expect("the server starts");
    wait_listening(bed.sns.as_ref(), port, &mut server);
    // On af_packet the stack starts when the server first serves its listener (its packet
    // sockets count in the sockets held before the clients).
    bed.wait_stack(&mut server);
    let before = sockets_of(server.pid());
    let mut args = vec![
        py_file("check_clients.py"),
        case.client[0].to_string(),
        bed.addr(),
        port.to_string(),
    ];
    args.extend(case.client[1..].iter().map(|s| s.to_string()));
    let client: Output = bed
        .cns
        .exec(
            "timeout",
            ["120", PYTHON]
                .into_iter()
                .chain(args.iter().map(String::as_str)),
        )
        .expect("the client runs");
    let out = String::from_utf8_lossy(&client.stdout).into_owned();
    let err = String::from_utf8_lossy(&client.stderr).into_owned();
    assert!(
        client.status.success(),
        "{} on the {side}: the client failed ({}):\n{out}{err}\n{}",
        case.name,
        client.status,
        server.diagnostics()
    );
    // Every connection the clients opened is closed on the server's side too.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = sockets_of(server.pid());
        if now <= before {
            break;
        }

        assert!(
            Instant::now() < deadline,
            "{} on the {side}: {now} sockets 15 s after the clients left, {before} before they \
             came\n{}{}",
            case.name,
            server.diagnostics(),
            if shim {
                mtcp_tests::redis::stats_text(server.pid())
            } else {
                String::new()
            }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        server.try_status().expect("status").is_none(),
        "{} on the {side}: the server exited\n{}",
        case.name,
        server.diagnostics()
    );
    let summary = out
        .lines()
        .find(|l| l.starts_with("ok "))
        .unwrap_or_else(|| panic!("{}: no summary line in {out}", case.name))
        .to_string();
    eprintln!("{} on the {side}: {summary}", case.name);
    summary
}

/// The case on the kernel and under the shim: both pass, with the same replies.
fn same_on_both(case: Case) {
    let kernel = run(&case, false);
    let shim = run(&case, true);
    assert_eq!(shim, kernel, "{}: the replies differ", case.name);
}

#[test]
fn tokio_multi_threaded_echo() {
    same_on_both(tokio_echo());
}

#[test]
fn node_http_keep_alive() {
    same_on_both(node_http("keepalive"));
}

#[test]
fn node_http_connection_per_request() {
    same_on_both(node_http("close"));
}

#[test]
fn uvloop_asyncio_echo() {
    same_on_both(uvloop_echo());
}

#[test]
fn memcached_four_threads() {
    same_on_both(memcached());
}

/// Whether process `pid` has a thread named `mtcp-watch`.
fn watcher_runs(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "mtcp-watch")
            })
        })
        .unwrap_or(false)
}

/// What a preload library cannot serve is said, once each, on stderr: a flagged port that
/// listens through a raw system call (as Go's runtime makes them) and an io_uring the process
/// set up (tests/py/unseen.py).
#[test]
fn what_the_shim_cannot_see_is_said_once() {
    let bed = Side::new(true, 23000);
    let port = bed.port;
    let mut server = bed
        .server(&[PYTHON.into(), py_file("unseen.py"), port.to_string()])
        .ready_prefix("ready")
        .spawn()
        .expect("the program starts");
    let want = [
        format!("port {port} is in MTCP_PORTS but listens through the kernel"),
        "this process uses io_uring".to_string(),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    while !want.iter().all(|w| server.stderr().contains(w.as_str())) {
        assert!(
            Instant::now() < deadline,
            "not said within 15 s:\n{}",
            server.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The second look (10 s after the start) says nothing again: once the watcher thread
    // ended, each line is there once.
    let deadline = Instant::now() + Duration::from_secs(20);
    while watcher_runs(server.pid()) {
        assert!(
            Instant::now() < deadline,
            "the watcher thread did not end\n{}",
            server.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = server.stderr();
    for w in &want {
        assert_eq!(err.matches(w.as_str()).count(), 1, "{err}");
    }
}

/// An epoll set of ours inside another epoll set: the outer set reports it when a connection
/// in it has data (within a second, not at a timer), and no longer once it is drained
/// (tests/py/nested_epoll.py).
#[test]
fn an_epoll_set_nested_in_another_reports_our_connections() {
    let bed = Side::new(true, 23000);
    let port = bed.port;
    let script = py_file("nested_epoll.py");
    let mut server = bed
        .server(&[PYTHON.into(), script.clone(), port.to_string()])
        .ready_prefix("ready")
        .spawn()
        .expect("the server starts");
    let addr = bed.addr();
    let client = bed
        .cns
        .exec(
            PYTHON,
            [script.as_str(), "client", &addr, &port.to_string()],
        )
        .expect("the client runs");
    let done = server.wait_stdout("done", Duration::from_secs(30)).ok();
    let out = server.stdout();
    assert!(
        done.is_some() && client.status.success(),
        "client: {}{}\nserver: {out}\n{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr),
        server.diagnostics()
    );
    assert_eq!(String::from_utf8_lossy(&client.stdout).trim(), "ok nested");
    for check in ["quiet", "outer", "inner", "data", "drained"] {
        assert!(
            out.lines().any(|l| l == format!("ok {check}")),
            "{check}: {out}"
        );
    }
}

/// A listener with TCP_CORK and TCP_NODELAY set: its accepted socket reads both back as set,
/// and its first small write waits for the cork to come off, on the kernel and under the shim
/// alike (Linux clones the listener's Nagle flags into each accepted socket).
#[test]
fn a_corked_listeners_accepted_socket_starts_corked_as_on_the_kernel() {
    const SERVER: &str = r#"
import socket, sys, time
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
l.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
l.bind(("0.0.0.0", int(sys.argv[1])))
l.listen()
print("ready", flush=True)
a, _ = l.accept()
cork = a.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)
nodelay = a.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
print("accepted: TCP_CORK", cork, "TCP_NODELAY", nodelay, flush=True)
a.sendall(b"held")
time.sleep(0.1)
a.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
a.recv(1)
"#;
    const CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.settimeout(5)
t = time.monotonic()
got = s.recv(64)
print("got", got, "after the cork came off:", time.monotonic() - t > 0.05)
s.close()
"#;
    let run = |shim: bool| -> String {
        let bed = Side::new(shim, 23500);
        let argv: Vec<String> = [PYTHON, "-c", SERVER, &bed.port.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut server = bed
            .server(&argv)
            .ready_prefix("ready")
            .spawn()
            .expect("the server starts");
        bed.wait_stack(&mut server);
        let out = bed
            .cns
            .exec(PYTHON, ["-c", CLIENT, &bed.addr(), &bed.port.to_string()])
            .expect("the client runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.stdout().contains("accepted") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let seen = format!(
            "{}\n{}",
            server
                .stdout()
                .lines()
                .filter(|l| l.starts_with("accepted"))
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&out.stdout)
        );
        eprintln!("{}: {seen}", bed.name());
        seen
    };
    let kernel = run(false);
    assert!(
        kernel.contains("TCP_CORK 1") && kernel.contains("True"),
        "{kernel}"
    );
    assert_eq!(run(true), kernel);
}
