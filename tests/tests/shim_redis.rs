//! Debian's unmodified redis-server under `LD_PRELOAD=libmtcpshim.so`, its flagged port served by
//! the user-space stack over net_tap; redis-cli and redis-benchmark in a network namespace the
//! test creates (the tap is moved into it).
//!
//! The library is `target/<profile>/libmtcpshim.so` (ci/test.sh builds the workspace first), or
//! `$MTCP_SHIM_LIB`.

use std::process::Command;
use std::time::{Duration, Instant};

use mtcp_tests::redis::{Launch, RedisBed};

/// redis-server under the shim (`target/<profile>/libmtcpshim.so` or `$MTCP_SHIM_LIB`).
fn bed(bind: &str) -> RedisBed {
    let lib = mtcp_tests::built_artifact("libmtcpshim.so", "MTCP_SHIM_LIB");
    RedisBed::new(Launch::Preload(lib), bind)
}

#[test]
fn redis_is_served_through_the_stack_and_on_loopback_at_once() {
    let mut bed = bed("0.0.0.0");
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
    let want_local = format!("laddr={}:{}", bed.stack_addr(), bed.port);
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

#[test]
fn redis_benchmark_through_the_stack_has_no_errors() {
    let mut bed = bed("0.0.0.0");
    bed.wait_ready();
    let (h, p) = (bed.stack_addr(), bed.port.to_string());
    for pipeline in ["1", "16"] {
        let out = bed
            .ns
            .exec(
                "redis-benchmark",
                [
                    "-h", &h, "-p", &p, "-q", "-n", "20000", "-c", "50", "-P", pipeline, "-t",
                    "get,set",
                ],
            )
            .expect("redis-benchmark runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "-P {pipeline}: {text}{err}\n{}",
            bed.server.diagnostics()
        );
        // -q prints the final figures after carriage-return progress lines.
        let finals: Vec<&str> = text
            .split(['\r', '\n'])
            .filter(|l| l.contains("requests per second"))
            .collect();
        assert!(
            finals.iter().any(|l| l.starts_with("SET:"))
                && finals.iter().any(|l| l.starts_with("GET:")),
            "-P {pipeline}: {text}"
        );
        assert!(
            !text.to_lowercase().contains("error") && !err.to_lowercase().contains("error"),
            "-P {pipeline}: {text}{err}"
        );
    }
}

#[test]
fn bound_to_loopback_the_stack_refuses() {
    let mut bed = bed("127.0.0.1");
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

/// Redis forks for BGSAVE; the child closes the sockets it inherited. Under load, 10 BGSAVEs:
/// every one succeeds, the clients see no error, and the parent keeps serving every key.
#[test]
fn bgsave_children_leave_the_parents_connections_alone() {
    let mut bed = bed("0.0.0.0");
    bed.wait_ready();
    let (h, p) = (bed.stack_addr(), bed.port.to_string());
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

/// The behaviours issue 4 names, through the stack: pub/sub with 100 subscribers, BLPOP with a
/// timeout, MULTI/EXEC, CLIENT KILL, QUIT. (1,000 concurrent clients: an open bug, see
/// docs/shim.md.)
#[test]
fn redis_client_behaviours_through_the_stack() {
    let mut bed = bed("0.0.0.0");
    bed.wait_ready();
    let (h, p) = (bed.stack_addr(), bed.port.to_string());

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
