//! The Redis GET cache (`MTCP_REDIS_CACHE`): Debian's redis-server under the shim with the cache
//! on, clients through the stack (in the bed's namespace) and through the kernel side
//! (127.0.0.1) at once. What a user checks: hot GETs are answered by the cache (its counters in
//! `mtcprun stats`), and no read ever returns what Redis would not have returned then: a
//! history of concurrent reads and writes through both sides is checked read by read
//! (`tests/py/cache_history.py`), and the same checker catches a cache that applies
//! invalidations one reply late (`MTCP_REDIS_CACHE_FAULT=late`).

use std::process::{Command, Stdio};
use std::time::Duration;

use mtcp_tests::redis::{py_file, BedOptions, RedisBed};

/// A bed whose Redis has the cache on, with `extra_env` and redis-server arguments `args`.
fn cache_bed_with(extra_env: &[(&str, &str)], args: &[&str]) -> RedisBed {
    let mut env = vec![("MTCP_REDIS_CACHE".to_string(), "16M".to_string())];
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    RedisBed::new(BedOptions {
        env,
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    })
}

fn cache_bed(extra_env: &[(&str, &str)]) -> RedisBed {
    cache_bed_with(extra_env, &[])
}

/// `cache_history.py relay` in the bed's namespace, against the stack, as an argv.
fn relay_argv(bed: &RedisBed) -> Vec<String> {
    vec![
        "ip".into(),
        "netns".into(),
        "exec".into(),
        bed.ns.name().into(),
        "python3".into(),
        py_file("cache_history.py"),
        "relay".into(),
        bed.addr(),
        bed.port.to_string(),
    ]
}

/// `cache_history.py causal` on the host (writes through 127.0.0.1, reads through the stack):
/// its status and output.
fn causal(bed: &RedisBed, rounds: u32) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(py_file("cache_history.py"))
        .args([
            "causal",
            "127.0.0.1",
            &bed.port.to_string(),
            &rounds.to_string(),
        ])
        .args(relay_argv(bed))
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn counter(bed: &RedisBed, name: &str) -> u64 {
    bed.stack_counter(name)
}

/// A GET that starts after a write through the kernel side was acknowledged returns the new
/// value, every time, while the cache answers the GETs around it.
#[test]
fn a_write_through_the_kernel_side_is_seen_by_the_next_get_through_the_stack() {
    let mut bed = cache_bed(&[]);
    let (ok, text) = causal(&bed, 300);
    assert!(ok, "{text}\n{}", bed.diagnostics());
    let hits = counter(&bed, "hits");
    eprintln!("{text}: {hits} cache hits");
    assert!(
        hits >= 300,
        "the cache answered {hits} of the 900 GETs\n{}",
        mtcp_tests::redis::stats_text(bed.server.pid())
    );
}

/// The same with Redis's I/O threads reading and writing the clients (and the cache's
/// connection).
#[test]
fn a_write_is_seen_by_the_next_get_with_io_threads() {
    let mut bed = cache_bed_with(&[], &["--io-threads", "2", "--io-threads-do-reads", "yes"]);
    let (ok, text) = causal(&bed, 200);
    assert!(ok, "{text}\n{}", bed.diagnostics());
    assert!(
        counter(&bed, "hits") >= 200,
        "{}",
        mtcp_tests::redis::stats_text(bed.server.pid())
    );
}

/// The same with the cache's invalidations applied one reply late: the check catches it.
#[test]
fn a_cache_that_invalidates_one_reply_late_is_caught() {
    let bed = cache_bed(&[("MTCP_REDIS_CACHE_FAULT", "late")]);
    let (ok, text) = causal(&bed, 300);
    eprintln!("{text}");
    assert!(!ok, "a late cache passed: {text}");
    assert!(text.contains("STALE"), "{text}");
}

/// Hot GETs through the stack are answered by the cache, and what it answers is Redis's value.
#[test]
fn hot_gets_are_answered_by_the_cache() {
    let mut bed = cache_bed(&[]);
    bed.cli_ok(&["set", "hot", "value"]);
    for _ in 0..3 {
        let out = bed.cli_ok(&["-r", "200", "get", "hot"]);
        assert!(out.lines().all(|l| l == "value"), "{out}");
    }
    let hits = counter(&bed, "hits");
    assert!(
        hits > 0,
        "{}",
        mtcp_tests::redis::stats_text(bed.server.pid())
    );
    let _ = Duration::ZERO;
}

/// How long the history runs (`MTCP_CACHE_HISTORY_SECS`, 60 by default).
fn history_secs() -> u64 {
    std::env::var("MTCP_CACHE_HISTORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// Runs the workers of a history against `bed` for `secs` seconds: 4 through the stack, 2
/// through the kernel side, 1 writing through the kernel side and reading each key it wrote
/// through the stack. Then `cache_history.py check` on their records: its status and output.
fn history(bed: &RedisBed, secs: u64) -> (bool, String) {
    let py = py_file("cache_history.py");
    let port = bed.port.to_string();
    let secs = secs.to_string();
    let mut children = Vec::new();
    let mut files = Vec::new();
    let mut spawn = |mut cmd: Command, name: &str| {
        let path = bed.dir.path().join(format!("{name}.jsonl"));
        let file = std::fs::File::create(&path).expect("record file");
        cmd.stdout(file).stdin(Stdio::null());
        children.push((name.to_string(), cmd.spawn().expect("worker starts")));
        files.push(path);
    };
    for i in 0..4 {
        let mut c = bed.ns.command("timeout");
        c.args(["600", "python3", &py, "worker", &bed.addr(), &port])
            .arg(format!("s{i}"))
            .arg(&secs);
        spawn(c, &format!("s{i}"));
    }
    for i in 0..2 {
        let mut c = Command::new("timeout");
        c.args(["600", "python3", &py, "worker", "127.0.0.1", &port])
            .arg(format!("k{i}"))
            .arg(&secs);
        spawn(c, &format!("k{i}"));
    }
    let mut c = Command::new("timeout");
    c.args([
        "600",
        "python3",
        &py,
        "worker",
        "127.0.0.1",
        &port,
        "w",
        &secs,
    ])
    .args(relay_argv(bed));
    spawn(c, "w");
    for (name, mut child) in children {
        let st = child.wait().expect("worker ends");
        assert!(st.success(), "worker {name} failed: {st}");
    }
    let out = Command::new("python3")
        .arg(&py)
        .arg("check")
        .args(&files)
        .output()
        .expect("checker runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Concurrent GET/SET/DEL/SET PX/INCR/MULTI/EVAL on six keys through the stack and through
/// the kernel side: every read is one Redis could have returned, while the cache answers
/// many of them.
#[test]
fn every_read_of_a_concurrent_history_is_one_redis_could_have_returned() {
    let mut bed = cache_bed(&[]);
    let (ok, text) = history(&bed, history_secs());
    let hits = counter(&bed, "hits");
    eprintln!("{text}: {hits} cache hits");
    assert!(ok, "{text}\n{}", bed.diagnostics());
    assert!(
        hits > 0,
        "the cache answered nothing\n{}",
        mtcp_tests::redis::stats_text(bed.server.pid())
    );
}

/// The same history with invalidations applied one reply late: the checker says so.
#[test]
fn the_history_checker_catches_a_cache_one_reply_late() {
    let bed = cache_bed(&[("MTCP_REDIS_CACHE_FAULT", "late")]);
    let (ok, text) = history(&bed, 10);
    eprintln!("{text}");
    assert!(!ok && text.contains("VIOLATION"), "{text}");
}

/// redis-cli on the host, through the kernel side (127.0.0.1): its stdout, asserting success.
fn kernel_cli(bed: &RedisBed, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &bed.port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What clients on the kernel side do that Redis's tracking does not report is followed too:
/// SWAPDB (the cached database's keys change), CLIENT PAUSE (Redis answers nobody meanwhile)
/// and MONITOR (it must see every command), also from connections the cache does not answer.
#[test]
fn swapdb_pause_and_monitor_through_the_kernel_side_are_followed() {
    let mut bed = cache_bed(&[]);
    bed.cli_ok(&["set", "k", "db0"]);
    kernel_cli(&bed, &["-n", "1", "set", "k", "db1"]);
    let out = bed.cli_ok(&["-r", "50", "get", "k"]);
    assert!(out.lines().all(|l| l == "db0"), "{out}");
    assert!(counter(&bed, "hits") > 0);
    assert_eq!(kernel_cli(&bed, &["swapdb", "0", "1"]), "OK");
    assert_eq!(bed.cli_ok(&["get", "k"]).trim(), "db1", "after SWAPDB");
    // The same from connections that selected another database first (left to Redis, whose
    // requests the cache still follows), through the stack and through the kernel side.
    let hot = |bed: &mut RedisBed, want: &str| {
        let out = bed.cli_ok(&["-r", "20", "get", "k"]);
        assert!(out.lines().all(|l| l == want), "{out}");
    };
    hot(&mut bed, "db1");
    assert_eq!(bed.cli_ok(&["-n", "1", "swapdb", "0", "1"]).trim(), "OK");
    assert_eq!(
        bed.cli_ok(&["get", "k"]).trim(),
        "db0",
        "after SWAPDB from db 1"
    );
    hot(&mut bed, "db0");
    assert_eq!(kernel_cli(&bed, &["-n", "1", "swapdb", "0", "1"]), "OK");
    assert_eq!(
        bed.cli_ok(&["get", "k"]).trim(),
        "db1",
        "after SWAPDB from db 1"
    );

    // A pause: a cached GET waits for its end, as Redis's own would.
    let _ = bed.cli_ok(&["-r", "20", "get", "k"]);
    assert_eq!(kernel_cli(&bed, &["client", "pause", "600", "all"]), "OK");
    let t = std::time::Instant::now();
    assert_eq!(bed.cli_ok(&["get", "k"]).trim(), "db1");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "a GET during CLIENT PAUSE 600 returned after {waited:?}"
    );

    // MONITOR through the kernel side sees the GETs made through the stack.
    let mut monitor = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &bed.port.to_string(), "monitor"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("redis-cli monitor");
    let mut stdout = std::io::BufReader::new(monitor.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("monitor says OK");
    let _ = bed.cli_ok(&["-r", "5", "get", "k"]);
    let mut seen = 0;
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut stdout, &mut line).unwrap_or(0) > 0 {
            if line.contains("\"get\" \"k\"") {
                seen += 1;
                if seen == 5 {
                    break;
                }
            }
            line.clear();
        }
        seen
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    let seen = reader.join().unwrap();
    assert_eq!(seen, 5, "MONITOR saw {seen} of the 5 GETs");
}

/// Redis also listening on a unix socket, whose clients the shim does not see: the cache stays
/// off and says why, once, on stderr; Redis serves every GET as without it.
#[test]
fn a_redis_with_a_unix_socket_keeps_the_cache_off_and_says_why() {
    let dir = mtcp_tests::redis::TempDir::new("cacheunix");
    let sock = dir.path().join("redis.sock");
    let mut bed = cache_bed_with(&[], &["--unixsocket", sock.to_str().unwrap()]);
    off_and_said_once(
        &mut bed,
        "MTCP_REDIS_CACHE: Redis also listens on the unix socket",
    );
}

/// Redis serves GETs as without the cache, which says `why` it is off, once, on stderr, and
/// answers none.
fn off_and_said_once(bed: &mut RedisBed, why: &str) {
    bed.cli_ok(&["set", "k", "v"]);
    let gets = |b: &mut RedisBed| {
        let out = b.cli_ok(&["-r", "50", "get", "k"]);
        assert!(out.lines().all(|l| l == "v"), "{out}");
    };
    gets(bed);
    bed.wait_for(
        "the cache says why it is off",
        Duration::from_secs(10),
        |b| b.server.stderr().contains(why),
    );
    gets(bed);
    let said = bed.server.stderr().matches("MTCP_REDIS_CACHE").count();
    assert_eq!(said, 1, "{}", bed.server.stderr());
    assert_eq!(counter(bed, "hits"), 0);
    assert_eq!(counter(bed, "up"), 0);
}

/// A Redis whose default user may not turn CLIENT TRACKING on: the cache asks for it with its
/// first fill, is refused, turns off and says why, once; Redis serves every GET as without it,
/// until an ACL change allows it.
#[test]
fn a_redis_that_refuses_tracking_turns_the_cache_off_and_says_why() {
    let user = [
        "--user",
        "default",
        "on",
        "nopass",
        "~*",
        "&*",
        "+@all",
        "-client|tracking",
    ];
    let mut bed = cache_bed_with(&[], &user);
    off_and_said_once(
        &mut bed,
        "MTCP_REDIS_CACHE: Redis refused CLIENT TRACKING: NOPERM",
    );
    // An ACL change is checked again: allowed now, the cache fills and answers.
    bed.cli_ok(&["acl", "setuser", "default", "+client|tracking"]);
    bed.wait_for("the cache answers", Duration::from_secs(10), |b| {
        let out = b.cli_ok(&["-r", "20", "get", "k"]);
        assert!(out.lines().all(|l| l == "v"), "{out}");
        counter(b, "hits") > 0
    });
}

/// Thousands of keys changed by one command: Redis writes their invalidations to the cache's
/// connection in one burst, larger than its output buffer, and so with writev (Redis writes a
/// client's output with writev when it spills over the buffer, which Redis also shrinks for
/// idle clients). Every one of them reaches the cache: no GET after the write returns an old
/// value. (Redis answers the cache's fills the same way: a fill reply the cache did not see
/// would leave its key a miss for good.)
#[test]
fn a_burst_of_invalidations_written_with_writev_reaches_the_cache() {
    let mut bed = cache_bed(&[]);
    const KEYS: usize = 3000;
    // One MSET of every key (a script would empty the cache: it might run SWAPDB).
    let mset = |v: &str| {
        let mut args = vec!["mset".to_string()];
        for i in 0..KEYS {
            args.push(format!("key:{i:012}"));
            args.push(v.to_string());
        }
        args
    };
    let kernel_mset = |bed: &RedisBed, v: &str| {
        let args = mset(v);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kernel_cli(bed, &args);
    };
    kernel_mset(&bed, "old");
    // Through the stack, every key read often enough to be cached (redis-benchmark's keys).
    bed.bench(&[
        "-t",
        "get",
        "-r",
        &KEYS.to_string(),
        "-n",
        "60000",
        "-c",
        "10",
    ]);
    let fills = counter(&bed, "fills");
    assert!(
        fills as usize >= KEYS * 9 / 10,
        "{fills} fills of {KEYS} keys\n{}",
        mtcp_tests::redis::stats_text(bed.server.pid())
    );
    // One command changes them all (through the kernel side).
    kernel_mset(&bed, "new");
    let read_all = format!(
        "import socket\n\
         s = socket.create_connection(('{}', {}))\n\
         keys = [b'key:%012d' % i for i in range({KEYS})]\n\
         s.sendall(b''.join(b'*2\\r\\n$3\\r\\nGET\\r\\n$%d\\r\\n%s\\r\\n' % (len(k), k) for k in keys))\n\
         want = {KEYS} * len(b'$3\\r\\nnew\\r\\n')\n\
         buf = b''\n\
         while len(buf) < want:\n\
         \x20   d = s.recv(65536)\n\
         \x20   if not d: break\n\
         \x20   buf += d\n\
         print(buf.count(b'old'), buf.count(b'new'))\n",
        bed.addr(),
        bed.port
    );
    let out = bed.run_ok("python3", &["-c", &read_all]);
    assert_eq!(out.trim(), format!("0 {KEYS}"), "(old, new) values read");
    assert!(counter(&bed, "invalidations") as usize >= KEYS * 9 / 10);
}

/// The figures of INFO that the cache would change, as a client through the stack reads them,
/// then a client through the kernel side (127.0.0.1).
fn info_figures(bed: &mut RedisBed) -> Vec<(String, String)> {
    const FIELDS: [&str; 12] = [
        "connected_clients",
        "tracking_clients",
        "tracking_total_keys",
        "tracking_total_items",
        "total_connections_received",
        "total_commands_processed",
        "total_net_input_bytes",
        "total_net_output_bytes",
        "keyspace_hits",
        "keyspace_misses",
        "cmdstat_get",
        "cmdstat_set",
    ];
    let stack = bed.cli_ok(&["info", "everything"]);
    let kernel = kernel_cli(bed, &["info", "everything"]);
    [("stack", stack), ("kernel", kernel)]
        .iter()
        .flat_map(|(side, info)| FIELDS.iter().map(move |f| (side, info, f)))
        // The kernel side's output bytes count the stack side's INFO reply, whose text
        // differs from server to server (memory, pids, times).
        .filter(|(side, _, f)| !(**side == "kernel" && **f == "total_net_output_bytes"))
        .map(|(side, info, f)| {
            let line = info
                .lines()
                .find(|l| l.starts_with(&format!("{f}:")))
                .unwrap_or_else(|| panic!("no {f} in INFO:\n{info}"));
            let value = line.split_once(':').unwrap().1.trim();
            // A command's time is the server's own: only its counts compare.
            let value = value.split(",usec=").next().unwrap();
            (format!("{side} {f}"), value.to_string())
        })
        .collect()
}

/// INFO shows what Redis would show without the cache, to clients through the stack and
/// through the kernel side: GETs the cache answered count as Redis's own (keyspace hits and
/// misses, GET's calls, commands, bytes), and the cache's own connection and its commands do
/// not (nor in CLIENT LIST, nor in CLIENT KILL's count). The same requests with the cache off and on give the
/// same figures.
#[test]
fn info_shows_what_redis_would_show_without_the_cache() {
    let run = |cache: bool| {
        let mut bed = if cache {
            cache_bed(&[])
        } else {
            RedisBed::new(BedOptions::default())
        };
        bed.cli_ok(&["set", "k", "v"]);
        let out = bed.cli_ok(&["-r", "300", "get", "k"]);
        assert_eq!(out.lines().filter(|l| *l == "v").count(), 300, "{out}");
        let out = bed.cli_ok(&["-r", "100", "get", "nosuchkey"]);
        assert_eq!(out.lines().count(), 100, "{out}");
        let mut figures = info_figures(&mut bed);
        // A CONFIG SET has the cache make its connection again: Redis closing the old
        // connection's end must not end the new one (its handshake would count in INFO as
        // a client's, and the cache would be off for a second). (Redis keeps a closed
        // client's tracked keys in its tracking table until they change: tracking_total_*
        // count the old connection's keys after this: docs/configuration.md. And the output
        // bytes count the first INFO replies, whose lengths differ from run to run with
        // figures nobody compares: memory, times.)
        bed.cli_ok(&["config", "set", "maxmemory-samples", "5"]);
        if cache {
            bed.wait_for("the cache up again", Duration::from_secs(10), |b| {
                counter(b, "up") == 1
            });
        }
        let out = bed.cli_ok(&["-r", "100", "get", "k"]);
        assert_eq!(out.lines().filter(|l| *l == "v").count(), 100, "{out}");
        let hits = if cache { counter(&bed, "hits") } else { 0 };
        figures.extend(
            info_figures(&mut bed)
                .into_iter()
                .filter(|(k, _)| {
                    !k.contains("tracking_total") && !k.contains("total_net_output_bytes")
                })
                .map(|(k, v)| (format!("{k}, after CONFIG SET"), v)),
        );
        // CLIENT LIST's clients (their names), through the stack and the kernel side.
        for (side, list) in [
            ("stack", bed.cli_ok(&["client", "list"])),
            ("kernel", kernel_cli(&bed, &["client", "list"])),
        ] {
            let names: Vec<&str> = list
                .lines()
                .map(|l| {
                    l.split(' ')
                        .find_map(|f| f.strip_prefix("name="))
                        .unwrap_or_else(|| panic!("{list}"))
                })
                .collect();
            figures.push((format!("{side} CLIENT LIST"), format!("{names:?}")));
        }
        // CLIENT KILL's count of the others (the cache's connection among them, with the cache
        // on).
        let killed = bed.cli_ok(&["client", "kill", "skipme", "yes"]);
        figures.push(("killed".into(), killed.trim().to_string()));
        (figures, hits)
    };
    let (off, _) = run(false);
    let (on, hits) = run(true);
    assert!(hits >= 300, "the cache answered {hits} of the 500 GETs");
    assert_eq!(on, off, "INFO with the cache on (left) and off (right)");
}

/// A key the cache answers does not look idle to Redis: OBJECT IDLETIME's reply is corrected
/// (Redis not evicting by LRU), or, with LRU eviction, the cache tells Redis of its answers (a
/// TOUCH) within half a second.
#[test]
fn a_key_only_the_cache_answers_does_not_look_idle_to_redis() {
    key_answered_by_the_cache_looks_used(false);
    key_answered_by_the_cache_looks_used(true);
}

fn key_answered_by_the_cache_looks_used(lru: bool) {
    let mut args = vec!["--enable-debug-command", "yes"];
    if lru {
        args.extend(["--maxmemory-policy", "allkeys-lru"]);
    }
    let mut bed = cache_bed_with(&[], &args);
    bed.cli_ok(&["set", "k", "v"]);
    bed.cli_ok(&["-r", "20", "get", "k"]);
    let before = counter(&bed, "hits");
    // 3 seconds of GETs, each answered by the cache.
    let out = bed.cli_ok(&["-r", "30", "-i", "0.1", "get", "k"]);
    assert_eq!(out.lines().filter(|l| *l == "v").count(), 30, "{out}");
    let hits = counter(&bed, "hits") - before;
    assert!(hits >= 25, "the cache answered {hits} of 30 GETs");
    let idle: u64 = kernel_cli(&bed, &["object", "idletime", "k"])
        .parse()
        .expect("a number");
    assert!(
        idle <= 1,
        "OBJECT IDLETIME k: {idle} s (LRU eviction: {lru})"
    );
    if lru {
        // Redis's own idea of the key's last access, which LRU eviction goes by (DEBUG OBJECT
        // is not corrected by the cache).
        let debug = kernel_cli(&bed, &["debug", "object", "k"]);
        let own: u64 = debug
            .split_whitespace()
            .find_map(|f| f.strip_prefix("lru_seconds_idle:"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{debug}"));
        assert!(own <= 1, "Redis's LRU sees k idle for {own} s");
    }
}
