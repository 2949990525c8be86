//! Redis as production runs it, under the shim: forks for BGSAVE and AOF rewrites,
//! io-threads, 10,000 clients, connect/close churn, 100 MB values, a busy server (DEBUG SLEEP),
//! slow and vanishing clients, a lossy network, SIGTERM under load. Debian's redis-server over
//! net_af_packet; clients (redis-benchmark, redis-cli, python3) in a namespace.

use std::process::Stdio;
use std::time::{Duration, Instant};

use mtcp_tests::redis::{bench_results, py_file, BedOptions, Dev, RedisBed, TempDir};
use mtcp_tests::ServerProcess;

/// One test of this file at a time: each loads both CPUs on its own (io-threads spin, 10,000
/// clients, 200,000 connects), and two at once on 2 cores only measure the contention.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The file's lock, held by a test from its first line (declared before the bed, so dropped
/// after it: the next test starts once this one's server and namespace are gone).
struct Serial<'a>(#[allow(dead_code)] std::sync::MutexGuard<'a, ()>);

fn serial() -> Serial<'static> {
    Serial(ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
}

fn bed_with(args: &[&str], env: &[(&str, &str)]) -> RedisBed {
    RedisBed::new(BedOptions {
        dev: Dev::AfPacket,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

/// python3 tests/py/redis_load.py WHAT HOST PORT ARGS... in the namespace; its stdout.
fn load(bed: &mut RedisBed, what: &str, args: &[&str]) -> String {
    let (h, p) = (bed.addr(), bed.port.to_string());
    let script = py_file("redis_load.py");
    let mut all = vec![script.as_str(), what, &h, &p];
    all.extend_from_slice(args);
    let out = bed.ns.exec("/usr/bin/python3", &all).expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        bed.server.diagnostics()
    );
    text
}

/// A kernel-served redis-server in the bed's namespace on 127.0.0.1:`port`, data in `dir`,
/// once its output shows `ready`.
fn kernel_redis(
    bed: &mut RedisBed,
    port: &str,
    dir: &TempDir,
    extra: &[&str],
    ready: &str,
) -> ServerProcess {
    let mut server = ServerProcess::builder_in(&bed.ns, "redis-server")
        .args([
            "--port",
            port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--enable-debug-command",
            "yes",
            "--dir",
            dir.path().to_str().unwrap(),
        ])
        .args(extra)
        .ready_prefix("")
        .spawn()
        .expect("kernel redis-server starts");
    mtcp_tests::wait_stdout_contains(&mut server, ready, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", server.diagnostics(), bed.diagnostics()));
    server
}

fn wait_no_bg_save(bed: &mut RedisBed) {
    bed.wait_for(
        "background save/rewrite ends",
        Duration::from_secs(30),
        |b| {
            let p = b.cli_ok(&["info", "persistence"]);
            p.contains("rdb_bgsave_in_progress:0") && p.contains("aof_rewrite_in_progress:0")
        },
    );
}

/// 100 BGSAVEs and 5 BGREWRITEAOFs during redis-benchmark: all succeed, no client error, the
/// parent keeps serving; the RDB then loads into a kernel-served Redis with the same digest.
#[test]
fn hundred_bgsaves_under_load_and_the_rdb_loads_back() {
    let _serial = serial();
    let mut bed = bed_with(&["--enable-debug-command", "yes"], &[]);
    let bench = bed.bench_bg(&["-n", "400000", "-c", "20", "-r", "20000", "-t", "set"]);
    for i in 0..100 {
        let r = bed.cli_ok(&["bgsave"]);
        assert!(r.contains("started"), "BGSAVE {i}: {r}");
        wait_no_bg_save(&mut bed);
        let p = bed.cli_ok(&["info", "persistence"]);
        assert!(p.contains("rdb_last_bgsave_status:ok"), "BGSAVE {i}: {p}");
    }
    bed.cli_ok(&["config", "set", "appendonly", "yes"]);
    wait_no_bg_save(&mut bed);
    for i in 0..5 {
        let r = bed.cli_ok(&["bgrewriteaof"]);
        assert!(r.contains("rewriting started"), "BGREWRITEAOF {i}: {r}");
        wait_no_bg_save(&mut bed);
        let p = bed.cli_ok(&["info", "persistence"]);
        assert!(
            p.contains("aof_last_bgrewrite_status:ok"),
            "BGREWRITEAOF {i}: {p}"
        );
    }
    bed.bench_done(bench);
    assert_eq!(bed.cli_ok(&["save"]), "OK\n");
    let keys = bed.cli_ok(&["dbsize"]);
    let digest = bed.cli_ok(&["debug", "digest"]);
    assert!(keys.trim().parse::<u64>().unwrap() > 1000, "{keys}");
    // Load the RDB into a plain Redis on the namespace's loopback.
    let kdir = TempDir::new("rdb-load");
    std::fs::copy(
        bed.dir.path().join("dump.rdb"),
        kdir.path().join("dump.rdb"),
    )
    .unwrap();
    let p = bed.port.to_string();
    let _kernel = kernel_redis(&mut bed, &p, &kdir, &[], "Ready to accept connections");
    let kcli = |args: &[&str]| {
        let mut all = vec!["-h", "127.0.0.1", "-p", &p];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&bed.ns.exec("redis-cli", &all).unwrap().stdout).into_owned()
    };
    assert_eq!(kcli(&["dbsize"]), keys, "every key loads back");
    assert_eq!(
        kcli(&["debug", "digest"]),
        digest,
        "the same data loads back"
    );
}

/// Replication from a master under the shim, which forks a child to stream its RDB through a
/// pipe that the parent copies to the replica's socket, waiting for EPOLLOUT whenever the
/// socket's buffer is full: `redis-cli --rdb` 20 times each from a disk-based and a diskless
/// master, then a real replica (kernel-served, in the namespace) that syncs and follows writes.
/// A lost EPOLLOUT (room freed by an ACK in the poll right after the send that filled the
/// buffer) stalled the transfer until the replica's 60 s timeout.
#[test]
fn replicas_get_the_whole_rdb_and_the_stream() {
    let _serial = serial();
    let mut bed = bed_with(&["--enable-debug-command", "yes"], &[]);
    bed.cli_ok(&["debug", "populate", "100000", "key", "10"]);
    let rdb = bed.dir.path().join("cli.rdb");
    let rdb_arg = rdb.to_str().unwrap().to_string();
    for diskless in ["no", "yes"] {
        bed.cli_ok(&["config", "set", "repl-diskless-sync", diskless]);
        bed.cli_ok(&["config", "set", "repl-diskless-sync-delay", "0"]);
        for i in 0..20 {
            let (h, p) = (bed.addr(), bed.port.to_string());
            let t0 = Instant::now();
            let out = bed
                .ns
                .exec(
                    "timeout",
                    ["30", "redis-cli", "-h", &h, "-p", &p, "--rdb", &rdb_arg],
                )
                .expect("redis-cli runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && text.contains("Transfer finished with success"),
                "diskless {diskless}, transfer {i} (after {:?}): {text}\n{}",
                t0.elapsed(),
                bed.diagnostics()
            );
            let size = std::fs::metadata(&rdb).map(|m| m.len()).unwrap_or(0);
            assert!(
                size > 1 << 20,
                "diskless {diskless}, transfer {i}: {size} bytes"
            );
            std::fs::remove_file(&rdb).unwrap();
        }
    }

    // A replica: the initial sync (diskless, as last set), then the write stream.
    let rdir = TempDir::new("replica");
    let rport = (bed.port + 1).to_string();
    let (maddr, mport) = (bed.addr(), bed.port.to_string());
    let _replica = kernel_redis(
        &mut bed,
        &rport,
        &rdir,
        &["--replicaof", &maddr, &mport],
        "MASTER <-> REPLICA sync: Finished with success",
    );
    bed.bench(&["-n", "50000", "-c", "20", "-r", "50000", "-t", "set,lpush"]);
    // WAIT: the replica acknowledged every write so far.
    assert_eq!(bed.cli_ok(&["wait", "1", "10000"]), "1\n");
    let (digest, keys) = (bed.cli_ok(&["debug", "digest"]), bed.cli_ok(&["dbsize"]));
    let rcli = |args: &[&str]| {
        let mut all = vec!["-h", "127.0.0.1", "-p", &rport];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&bed.ns.exec("redis-cli", &all).unwrap().stdout).into_owned()
    };
    assert_eq!(
        rcli(&["debug", "digest"]),
        digest,
        "the replica has the master's data"
    );
    assert_eq!(rcli(&["dbsize"]), keys);
}

/// io-threads 4 with threaded reads under 200 clients: no error, and redis-py's checks
/// (counters from 50 threads, pipelines, WATCH, pub/sub, asyncio) all hold.
#[test]
fn io_threads_serve_200_clients() {
    let _serial = serial();
    let mut bed = bed_with(&["--io-threads", "4", "--io-threads-do-reads", "yes"], &[]);
    let bench = bed.bench_bg(&["-n", "100000", "-c", "200", "-t", "set,get,incr,lpush,lpop"]);
    let (h, p) = (bed.addr(), bed.port.to_string());
    let out = bed
        .ns
        .exec("/usr/bin/python3", [&py_file("redis_py_check.py"), &h, &p])
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("all checks passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = bed.bench_done(bench);
    assert_eq!(bench_results(&text).len(), 5, "{text}");
    let threads = std::fs::read_dir(format!("/proc/{}/task", bed.server.pid()))
        .unwrap()
        .count();
    assert!(threads >= 4, "io-threads did not start: {threads} threads");
}

/// 10,000 clients at once (maxclients 20000): every request answered, every connection seen.
#[test]
fn ten_thousand_clients() {
    let _serial = serial();
    let mut bed = bed_with(&["--maxclients", "20000"], &[]);
    let bench = bed.bench_bg(&["-n", "100000", "-c", "10000", "-t", "ping_mbulk,get"]);
    let text = bed.bench_done(bench);
    assert_eq!(bench_results(&text).len(), 2, "{text}");
    let got: u64 = bed
        .info_field("stats", "total_connections_received")
        .unwrap()
        .parse()
        .unwrap();
    assert!(got >= 20_000, "{got} connections received");
    // All closed again: only this redis-cli remains.
    bed.wait_for("clients gone", Duration::from_secs(30), |b| {
        b.info_field("clients", "connected_clients").as_deref() == Some("1")
    });
}

/// 200,000 connect / command / close cycles: the server's fd count and RSS stay flat.
#[test]
fn connect_close_churn_leaves_nothing_behind() {
    let _serial = serial();
    let mut bed = bed_with(&[], &[]);
    // The client side recycles its ports (TIME_WAIT) as fast as the cycles come.
    for (k, v) in [
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.ip_local_port_range", "1024 65000"),
    ] {
        bed.ns
            .exec_checked("sysctl", ["-qw", &format!("{k}={v}")])
            .unwrap();
    }
    let churn = |bed: &mut RedisBed, n: &str| {
        bed.bench(&["-n", n, "-c", "50", "-k", "0", "-t", "ping_mbulk"]);
        bed.wait_for("clients gone", Duration::from_secs(30), |b| {
            b.info_field("clients", "connected_clients").as_deref() == Some("1")
        });
    };
    churn(&mut bed, "20000"); // warm-up: allocator and tables reach their working size
    let (fds0, rss0) = bed.fds_and_rss();
    churn(&mut bed, "200000");
    // The last redis-cli's connection may still be open in either count: compare once the
    // server is down to at most the count before.
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.fds_and_rss().0 > fds0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (fds1, rss1) = bed.fds_and_rss();
    let got: u64 = bed
        .info_field("stats", "total_connections_received")
        .unwrap()
        .parse()
        .unwrap();
    assert!(got >= 220_000, "{got} connections");
    assert!(
        fds1 <= fds0,
        "open fds: {fds0} before and {fds1} after 200,000 cycles"
    );
    assert!(
        rss1 <= rss0 + rss0 / 10 + 4096,
        "RSS grew from {rss0} kB to {rss1} kB over 200,000 cycles"
    );
}

/// A 100 MB value through SET/GET, and a pipeline of 10,000 commands.
#[test]
fn hundred_megabyte_values_and_long_pipelines() {
    let _serial = serial();
    let mut bed = bed_with(&[], &[]);
    let out = load(&mut bed, "bigvalue", &["100"]);
    assert!(out.contains("ok: 100 MB value round-trips"), "{out}");
    assert!(out.contains("ok: a pipeline of 10000"), "{out}");
}

/// While Redis sleeps in DEBUG SLEEP 5, the stack keeps working: 500 new connections complete
/// their handshakes (the keeper thread serves them), ping is answered; afterwards Redis accepts
/// and answers every one of them, none reset.
#[test]
fn connections_queue_while_redis_is_busy() {
    let _serial = serial();
    let mut bed = bed_with(&["--enable-debug-command", "yes"], &[]);
    let (h, p) = (bed.addr(), bed.port.to_string());
    let sleeper = bed
        .ns
        .command("redis-cli")
        .args(["-h", &h, "-p", &p, "debug", "sleep", "5"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let ping = bed
        .ns
        .exec("ping", ["-c", "3", "-i", "0.2", "-W", "1", &h])
        .unwrap();
    assert!(
        ping.status.success(),
        "the stack stopped answering ping while Redis sleeps: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // The script first checks that Redis is busy (a PING unanswered for 0.5 s), then connects
    // 500 times (3 s allowed each) and sends a PING on each.
    let out = load(&mut bed, "queued", &["500", "3"]);
    assert!(out.contains("ok: Redis is busy"), "{out}");
    assert!(out.contains("pongs=500 resets=0"), "{out}");
    let sleep_end = sleeper.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&sleep_end.stdout), "OK\n");
}

/// A client that asks for 200 MB of replies and reads none is closed by Redis's own
/// output-buffer limit; the server's memory stays bounded. Clients killed in the middle of a
/// command leave no connection and no fd behind.
#[test]
fn slow_and_vanishing_clients() {
    let _serial = serial();
    let mut bed = bed_with(
        &["--client-output-buffer-limit", "normal", "8mb", "4mb", "10"],
        &[],
    );
    let (fds0, rss0) = bed.fds_and_rss();
    let out = load(&mut bed, "slowreader", &[]);
    assert!(out.contains("ok: closed by the server"), "{out}");
    assert!(
        bed.server
            .stdout()
            .contains("for overcoming of output buffer limits"),
        "Redis did not close the client for its output buffer:\n{}",
        bed.server.stdout()
    );
    let (_, rss1) = bed.fds_and_rss();
    assert!(
        rss1 < rss0 + 100 * 1024,
        "RSS grew from {rss0} kB to {rss1} kB for one slow client"
    );
    // 20 clients that die half-way through a command.
    let (h, p) = (bed.addr(), bed.port.to_string());
    let script = py_file("redis_load.py");
    let mut kids = Vec::new();
    for _ in 0..20 {
        let mut c = bed
            .ns
            .command("/usr/bin/python3")
            .args([&script, "partial", &h, &p])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "sent\n");
        kids.push(c);
    }
    bed.wait_for("21 clients", Duration::from_secs(10), |b| {
        b.info_field("clients", "connected_clients").as_deref() == Some("21")
    });
    for mut c in kids {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    bed.wait_for(
        "the killed clients are gone",
        Duration::from_secs(30),
        |b| b.info_field("clients", "connected_clients").as_deref() == Some("1"),
    );
    // (fds0 may include the connection of the redis-cli that just ran, not yet closed then.)
    bed.wait_for("their fds are closed", Duration::from_secs(10), |b| {
        b.fds_and_rss().0 <= fds0
    });
}

/// Through 2% loss, 1% duplication and 1% reordering (each way, in the stack): 100,000 keys with
/// checksummed values written and read back intact.
#[test]
fn values_survive_a_lossy_network() {
    let _serial = serial();
    let mut bed = bed_with(&[], &[("MTCP_FAULTS", "loss=2,dup=1,reorder=1")]);
    let out = load(&mut bed, "checksums", &["100000"]);
    assert!(out.contains("ok: 100000 values read back intact"), "{out}");
}

/// SIGTERM while redis-benchmark runs: Redis saves and exits within 2 s, cleanly.
#[test]
fn sigterm_under_load_saves_and_exits() {
    let _serial = serial();
    let mut bed = bed_with(&["--save", "3600 1"], &[]);
    let bench = bed.bench_bg(&["-n", "10000000", "-c", "50", "-r", "10000", "-t", "set"]);
    bed.wait_for("keys written", Duration::from_secs(30), |b| {
        b.cli_ok(&["dbsize"]).trim().parse::<u64>().unwrap_or(0) > 1000
    });
    let t = Instant::now();
    let (status, _) = bed.server.stop_with_stderr().expect("stops");
    let took = t.elapsed();
    // The clients' connections now lead nowhere (the stack went with the server): stop them.
    // SIGTERM to `timeout`, which passes it on to redis-benchmark (a SIGKILL would orphan it).
    let mut bench = bench;
    // SAFETY: signalling the child this test started, by its pid.
    unsafe { libc::kill(bench.id() as libc::pid_t, libc::SIGTERM) };
    let _ = bench.wait();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(2), "took {took:?} to exit");
    assert!(
        bed.server.stdout().contains("DB saved on disk"),
        "{}",
        bed.server.stdout()
    );
    assert!(bed.dir.path().join("dump.rdb").exists());
}
