//! `mtcprun`, the launcher, as a user runs it: bad configurations are refused before anything
//! starts; redis-server runs under it (same pid) and is reached through the stack from a client
//! in a network namespace; `mtcprun stats` follows the traffic and the statistics file goes away
//! with the server; `--pcap` records the exchange; the Debian package built by ci/deb.sh works.
//!
//! Binaries: `target/<profile>/mtcprun` and `libmtcpshim.so` beside it (ci/test.sh builds the
//! workspace first), or `$MTCPRUN_BIN`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mtcp_tests::redis::{BedOptions, Launch, RedisBed, TempDir};

/// A bed on net_tap bound to the wildcard, started as `launch` says.
fn opts(launch: Launch) -> BedOptions {
    BedOptions {
        launch,
        ..Default::default()
    }
}
use mtcp_tests::unique_ifname;
use serde_json::Value;

fn mtcprun_bin() -> PathBuf {
    mtcp_tests::built_artifact("mtcprun", "MTCPRUN_BIN")
}

/// `mtcprun ARGS` with no MTCP_* variable or LD_PRELOAD inherited from the test's environment.
fn mtcprun(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MTCP_") || k == "LD_PRELOAD" {
            c.env_remove(k);
        }
    }
    c.args(args).envs(env.iter().copied());
    c.output().expect("mtcprun runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn launch(extra: &[&str]) -> Launch {
    Launch::Mtcprun {
        bin: mtcprun_bin(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
    }
}

/// Arguments, environment, the one line expected on stderr.
type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, String);

/// Every bad option or value: exit status 2, one line on stderr naming it, and the command never
/// ran.
#[test]
fn bad_configuration_is_refused_before_anything_starts() {
    let bin = mtcprun_bin();
    let missing_if = unique_ifname("nx");
    let af_missing = format!("af_packet:{missing_if}");
    let no_iface = format!(
        "mtcprun: MTCP_DEV=af_packet:{missing_if}: no network interface named \"{missing_if}\""
    );
    let ports_msg = "expected a comma-separated list of TCP ports 1-65535, e.g. 6379,6380";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        (vec!["--devv", "tap"], vec![],
         "mtcprun: unknown option --devv (mtcprun --help lists them)".into()),
        (vec!["--dev"], vec![],
         "mtcprun: --dev needs a value, e.g. --dev tap:mtcp0".into()),
        (vec!["--ports", "1", "--addr", "--", "x"], vec![],
         "mtcprun: --addr needs a value, e.g. --addr 198.18.0.2/24".into()),
        (vec!["--dev", "eth9", "--ports", "1"], vec![],
         "mtcprun: --dev=\"eth9\": unknown device kind; expected tap[:IFNAME], af_packet:IFACE, \
          af_xdp:IFACE, memif:SOCKET[,server|client][,ring=N], pci:ADDR or vdev:RAW".into()),
        (vec!["--addr", "198.18.0.300/24", "--ports", "1"], vec![],
         "mtcprun: --addr=\"198.18.0.300/24\": expected an IPv4 address with a prefix length, \
          e.g. 198.18.0.2/24".into()),
        (vec!["--addr", "198.18.7.2/24", "--gateway", "198.19.0.1", "--ports", "1"], vec![],
         "mtcprun: --gateway=\"198.19.0.1\": the gateway must be another address inside \
          MTCP_ADDR's subnet 198.18.7.2/24".into()),
        (vec!["--tap-peer", "198.19.0.1/24", "--ports", "1"], vec![],
         "mtcprun: --tap-peer=\"198.19.0.1/24\": must be in the same subnet as MTCP_ADDR \
          (198.18.0.2/24) so the kernel can reach the stack".into()),
        (vec!["--dev", "af_packet:v0", "--tap-peer", "198.18.0.1/24", "--ports", "1"], vec![],
         "mtcprun: --tap-peer=\"198.18.0.1/24\": only applies to MTCP_DEV=tap".into()),
        (vec!["--ports", "0"], vec![],
         format!("mtcprun: --ports=\"0\": \"0\" is out of range; {ports_msg}")),
        (vec!["--ports", "6379,redis"], vec![],
         format!("mtcprun: --ports=\"6379,redis\": \"redis\" is not a port number; {ports_msg}")),
        (vec!["--profile", "fast", "--ports", "1"], vec![],
         "mtcprun: --profile=\"fast\": unknown profile; expected latency, throughput, low-cpu"
             .into()),
        (vec![], vec![("MTCP_PORTS", "65536")],
         format!("mtcprun: MTCP_PORTS=\"65536\": \"65536\" is out of range; {ports_msg}")),
        (vec![], vec![],
         "mtcprun: no port to serve: give --ports PORT[,PORT...] (or set MTCP_PORTS)".into()),
        (vec!["--ports", "1"], vec![("MTCP_SPIN_US", "fast")],
         "mtcprun: MTCP_SPIN_US=\"fast\": expected a whole number between 0 and 10000000".into()),
        (vec!["--ports", "1"], vec![("MTCP_RCVBUF", "1")],
         "mtcprun: MTCP_RCVBUF=\"1\": expected a size between 2048 and 67108864 bytes \
          (suffixes K, M, G)".into()),
        (vec!["--ports", "1", "--pcap", "/tmp/x.pcap"], vec![("MTCP_PCAP_MAX", "10")],
         "mtcprun: MTCP_PCAP_MAX=\"10\": expected a size between 4096 and 1099511627776 bytes \
          (suffixes K, M, G)".into()),
        (vec!["--ports", "1"], vec![("MTCP_CC", "bbr")],
         "mtcprun: MTCP_CC=\"bbr\": expected cubic, reno or none".into()),
        (vec!["--ports", "1"], vec![("MTCP_STATS", "sometimes")],
         "mtcprun: MTCP_STATS=\"sometimes\": expected on or off".into()),
        // The profile is overridden by the environment, and that value is checked too.
        (vec!["--ports", "1", "--profile", "latency"], vec![("MTCP_ACK_DELAY_US", "-1")],
         "mtcprun: MTCP_ACK_DELAY_US=\"-1\": expected a whole number between 0 and 500000".into()),
        // Checked against the machine too, before the program starts.
        (vec!["--ports", "1", "--dev", &af_missing], vec![], no_iface),
        (vec!["--ports", "1", "--dev", "tap:lo"], vec![],
         "mtcprun: MTCP_DEV=tap:lo: an interface named \"lo\" already exists; name the tap with \
          MTCP_DEV=tap:NAME".into()),
    ];
    for (args, env, want) in &cases {
        let mut all = args.clone();
        if !all.contains(&"--") {
            all.push("--");
        }
        all.extend(["sh", "-c", "echo COMMAND-RAN"]);
        let out = mtcprun(&bin, &all, env);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} {env:?}: {stdout}{stderr}"
        );
        assert_eq!(stderr.trim_end(), want, "{args:?} {env:?}");
        assert!(!stdout.contains("COMMAND-RAN"), "{args:?}: {stdout}");
    }
}

#[test]
fn missing_command_prints_usage_and_exits_2() {
    let out = mtcprun(&mtcprun_bin(), &["--ports", "6379"], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("mtcprun: no command to run\nusage: mtcprun "),
        "{err}"
    );
    let out = mtcprun(&mtcprun_bin(), &["stats"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("usage: mtcprun stats PID"));
}

/// `INFO server`'s process_id: the pid Redis itself reports.
fn redis_pid(bed: &mut RedisBed) -> u32 {
    let info = bed.cli_ok(&["info", "server"]);
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process_id in INFO: {info}"))
}

#[test]
fn redis_under_mtcprun_keeps_its_pid_and_is_served_through_the_stack() {
    let mut bed = RedisBed::new(opts(launch(&[])));
    bed.wait_ready();
    assert_eq!(bed.cli_ok(&["set", "k", "through mtcprun"]), "OK\n");
    assert_eq!(bed.cli_ok(&["get", "k"]), "through mtcprun\n");
    // exec, not spawn: the pid mtcprun was started with is Redis's own.
    assert_eq!(redis_pid(&mut bed), bed.server.pid());
    // The client's address as Redis sees it is the namespace's: the stack carried it.
    let list = bed.cli_ok(&["client", "list"]);
    assert!(
        list.contains(&format!("addr={}:", bed.subnet.addr(1))),
        "{list}"
    );
}

fn stats_json(bin: &Path, pid: u32) -> Value {
    let out = mtcprun(bin, &["stats", &pid.to_string(), "--json"], &[]);
    assert!(out.status.success(), "mtcprun stats: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

fn num(v: &Value, group: &str, key: &str) -> u64 {
    v[group][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {group}.{key} in {v}"))
}

/// Polls `mtcprun stats --json` until `cond` holds; returns that sample.
fn wait_stats(bin: &Path, pid: u32, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stats_json(bin, pid);
        if cond(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "never {what}: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stats_follow_traffic_and_vanish_when_the_server_exits() {
    let bin = mtcprun_bin();
    let mut bed = RedisBed::new(opts(launch(&[])));
    bed.wait_ready();
    let pid = bed.server.pid();
    let shm = PathBuf::from(format!("/dev/shm/mtcpshim.{pid}"));
    assert!(shm.exists(), "{} missing", shm.display());

    let before = stats_json(&bin, pid);
    assert_eq!(before["pid"], pid);
    assert_eq!(before["command"], "redis-server");
    for key in [
        "rx_frames",
        "rx_bytes",
        "tx_frames",
        "tx_bytes",
        "drop_malformed",
        "drop_bad_checksum",
        "drop_not_ours",
        "drop_mempool_empty",
        "drop_tx_ring_full",
        "drop_syn_backlog",
        "tcp_retransmits",
        "conns_opened",
        "polls",
        "polls_idle",
        "sleeps",
        "wakeups",
    ] {
        num(&before, "stack", key);
    }
    // Connections by every TCP state the statistics name (eleven, LISTEN included).
    let tcp = before["tcp"].as_object().expect("tcp states");
    assert_eq!(tcp.len(), 11, "{tcp:?}");
    for state in [
        "listen",
        "syn_received",
        "established",
        "close_wait",
        "time_wait",
    ] {
        num(&before, "tcp", state);
    }
    let size = num(&before, "mempool", "size");
    assert!(size > 0);
    assert_eq!(
        num(&before, "mempool", "in_use") + num(&before, "mempool", "avail"),
        size
    );
    let listener = before["listeners"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["port"] == bed.port))
        .unwrap_or_else(|| panic!("port {} not in listeners: {before}", bed.port));
    assert_eq!(listener["backlog"], 511, "{listener}"); // Redis's tcp-backlog

    // 1,000 GETs, five connections: at least one frame in per request.
    let rx0 = num(&before, "stack", "rx_frames");
    let (h, p) = (bed.stack_addr(), bed.port.to_string());
    let out = bed
        .ns
        .exec(
            "redis-benchmark",
            [
                "-h", &h, "-p", &p, "-n", "1000", "-c", "5", "-t", "get", "-q",
            ],
        )
        .expect("redis-benchmark runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = wait_stats(&bin, pid, "1,000 more frames received", |v| {
        num(v, "stack", "rx_frames") >= rx0 + 1000
    });
    assert!(num(&after, "stack", "tx_frames") > num(&before, "stack", "tx_frames"));
    // A clean link retransmits nothing. (Redis's SO_KEEPALIVE on each client must not send a
    // keepalive probe at once, which would be counted here on about every connection.)
    assert_eq!(
        num(&after, "stack", "tcp_retransmits"),
        0,
        "retransmissions on a lossless veth: {after}"
    );
    assert!(num(&after, "stack", "polls") > num(&before, "stack", "polls"));

    // A connection held open shows as ESTABLISHED.
    let addr: std::net::SocketAddr = format!("{h}:{p}").parse().unwrap();
    let conn = bed
        .ns
        .enter(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .expect("setns")
        .expect("connect through the stack");
    wait_stats(&bin, pid, "an established connection", |v| {
        num(v, "tcp", "established") >= 1 && num(v, "conns", "live") >= 1
    });
    drop(conn);

    // --watch: one sample per interval, rates per second from the second one on.
    let out = mtcprun(
        &bin,
        &[
            "stats",
            &pid.to_string(),
            "--watch",
            "0.1",
            "--count",
            "2",
            "--json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].get("per_second").is_none());
    assert!(lines[1]["per_second"]["stack.rx_frames"].is_number());
    // The readable form names the counters and the listener.
    let out = mtcprun(&bin, &["stats", &pid.to_string()], &[]);
    let readable = text(&out.stdout);
    assert!(
        readable.contains("rx_frames") && readable.contains(&format!("port {}", bed.port)),
        "{readable}"
    );

    // The file goes away with the process.
    let (status, stderr) = bed.server.stop_with_stderr().expect("redis-server stops");
    assert!(status.success(), "{status}: {stderr}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while shm.exists() {
        assert!(
            Instant::now() < deadline,
            "{} still there after exit",
            shm.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = mtcprun(&bin, &["stats", &pid.to_string()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with(&format!("mtcprun: no statistics for pid {pid}")),
        "{}",
        text(&out.stderr)
    );
}

/// One parsed packet of `tcpdump -nn -A`: its header line and what follows it.
struct Packet {
    header: String,
    body: String,
}

fn packets(dump: &str) -> Vec<Packet> {
    let mut v: Vec<Packet> = Vec::new();
    for line in dump.lines() {
        let starts_packet = line.len() > 9
            && line.as_bytes()[2] == b':'
            && line.as_bytes()[5] == b':'
            && line.contains(" IP ");
        if starts_packet {
            v.push(Packet {
                header: line.to_string(),
                body: String::new(),
            });
        } else if let Some(p) = v.last_mut() {
            p.body.push_str(line);
            p.body.push('\n');
        }
    }
    v
}

#[test]
fn pcap_option_records_the_syn_the_request_and_the_reply() {
    let dir = TempDir::new("mtcp-pcap");
    let file = dir.path().join("stack.pcap");
    let mut bed = RedisBed::new(opts(launch(&["--pcap", file.to_str().unwrap()])));
    bed.wait_ready();
    let value = format!("pcap-probe-{}", std::process::id());
    assert_eq!(bed.cli_ok(&["set", "k", &value]), "OK\n");
    let server = format!("{}.{}", bed.stack_addr(), bed.port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The stack flushes the file after every poll; a record being written may be cut short,
        // so tcpdump's status is not looked at, only what it printed.
        let out = Command::new("tcpdump")
            .args(["-nn", "-A", "-r"])
            .arg(&file)
            .output()
            .expect("tcpdump runs");
        let dump = text(&out.stdout);
        let pk = packets(&dump);
        let to_server = |p: &&Packet| p.header.contains(&format!("> {server}: "));
        let syn = pk
            .iter()
            .filter(to_server)
            .any(|p| p.header.contains("Flags [S]"));
        let request = pk.iter().filter(to_server).any(|p| p.body.contains(&value));
        let reply = pk
            .iter()
            .any(|p| p.header.contains(&format!("IP {server} > ")) && p.body.contains("+OK"));
        if syn && request && reply {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "syn={syn} request={request} reply={reply} in:\n{dump}{}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The package built by ci/deb.sh, installed with dpkg -i (and removed at the end): its Depends
/// name nothing of DPDK and are satisfied here, and the installed /usr/bin/mtcprun finds its
/// library at ../lib/mtcpshim/ and serves Redis through the stack.
#[test]
fn debian_package_runs_redis_through_the_stack() {
    // Built from the artifacts of the workspace build (ci/test.sh builds first).
    mtcprun_bin();
    mtcp_tests::built_artifact("libmtcpshim.so", "MTCP_SHIM_LIB");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("ci/deb.sh"))
        .arg("--no-build")
        .output()
        .expect("bash ci/deb.sh");
    assert!(out.status.success(), "ci/deb.sh: {}", text(&out.stderr));
    let deb = root.join(
        text(&out.stdout)
            .lines()
            .last()
            .expect("package path")
            .trim(),
    );
    assert!(deb.is_file(), "{}", deb.display());

    let depends =
        mtcp_tests::run_checked(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"))
            .expect("dpkg-deb -f");
    let depends = text(&depends.stdout);
    assert!(depends.contains("libc6"), "{depends}");
    assert!(
        !depends.to_lowercase().contains("dpdk") && !depends.contains("librte"),
        "{depends}"
    );
    for dep in depends.trim().split(", ") {
        let (name, min) = match dep.split_once(" (>= ") {
            Some((n, v)) => (n, Some(v.trim_end_matches(')'))),
            None => (dep, None),
        };
        let q = Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}\t${Version}", name])
            .output()
            .expect("dpkg-query");
        let q = text(&q.stdout);
        let (status, version) = q.split_once('\t').unwrap_or(("", ""));
        assert_eq!(status, "install ok installed", "{name}: {q}");
        if let Some(min) = min {
            let ok = Command::new("dpkg")
                .args(["--compare-versions", version, "ge", min])
                .status()
                .expect("dpkg --compare-versions");
            assert!(ok.success(), "{name} {version} < {min}");
        }
    }

    // Installed for real (dpkg -i), removed again at the end (dpkg -r), also on failure. A
    // machine that already has the package installed is left alone: the test stops there.
    let have = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "mtcpshim"])
        .output()
        .expect("dpkg-query");
    assert!(
        !text(&have.stdout).contains("installed"),
        "the mtcpshim package is already installed here; this test installs and removes its own"
    );
    struct Installed;
    impl Drop for Installed {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["-r", "mtcpshim"]).output();
        }
    }
    mtcp_tests::run_checked(Command::new("dpkg").arg("-i").arg(&deb)).expect("dpkg -i");
    let _installed = Installed;
    let root_dir = Path::new("/");
    for f in [
        "usr/bin/mtcprun",
        "usr/lib/mtcpshim/libmtcpshim.so",
        "usr/share/doc/mtcpshim/README.md",
        "usr/share/doc/mtcpshim/docs/configuration.md",
        "usr/share/doc/mtcpshim/docs/operating.md",
    ] {
        assert!(
            root_dir.join(f).is_file(),
            "{f} not installed by the package"
        );
    }
    let ldd = mtcp_tests::run_checked(
        Command::new("ldd").arg(root_dir.join("usr/lib/mtcpshim/libmtcpshim.so")),
    )
    .expect("ldd");
    assert!(
        !text(&ldd.stdout).contains("librte_"),
        "{}",
        text(&ldd.stdout)
    );

    let installed = root_dir.join("usr/bin/mtcprun");
    let mut bed = RedisBed::new(opts(Launch::Mtcprun {
        bin: installed.clone(),
        extra: vec![],
    }));
    bed.wait_ready();
    assert_eq!(bed.cli_ok(&["set", "pkg", "installed"]), "OK\n");
    assert_eq!(bed.cli_ok(&["get", "pkg"]), "installed\n");
    wait_stats(&installed, bed.server.pid(), "frames received", |v| {
        num(v, "stack", "rx_frames") > 0
    });
}

/// A forked child that exits through exit(3) runs the parent's atexit handlers: the statistics
/// file must survive it (only its creator removes it), and go away when the parent exits.
#[test]
fn forked_child_exiting_leaves_the_parents_statistics_file() {
    let subnet = mtcp_tests::Subnet::allocate().expect("subnet");
    let tap = unique_ifname("f");
    let port = 16000 + subnet.index();
    let dir = TempDir::new("mtcp-fork");
    let stop = dir.path().join("stop");
    let script = format!(
        r#"
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
s = socket.socket()
s.bind(("0.0.0.0", {port}))
s.listen(16)
child = os.fork()
if child == 0:
    sys.exit(0)  # Python's exit calls exit(3): atexit handlers run in the child
os.waitpid(child, 0)
print("child exited", flush=True)
while not os.path.exists("{stop}"):
    time.sleep(0.02)
sys.exit(0)
"#,
        stop = stop.display()
    );
    let mut cmd = Command::new(mtcprun_bin());
    let (dev, addr, ports) = (format!("tap:{tap}"), subnet.cidr(2), port.to_string());
    cmd.args(["--dev", &dev, "--addr", &addr, "--ports", &ports, "--"])
        .args(["python3", "-c", &script]);
    let mut server = mtcp_tests::ServerProcess::builder_for(cmd)
        .ready_prefix("child exited")
        .spawn()
        .expect("python3 under mtcprun");
    let shm = PathBuf::from(format!("/dev/shm/mtcpshim.{}", server.pid()));
    assert!(
        shm.exists(),
        "the child's exit removed {}\n{}",
        shm.display(),
        server.diagnostics()
    );
    // The listener is published at the stack's next poll (the keeper's, within tens of ms).
    wait_stats(&mtcprun_bin(), server.pid(), "the listener", |v| {
        v["listeners"][0]["port"] == port
    });
    std::fs::write(&stop, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.try_status().expect("waitpid").is_none() {
        assert!(Instant::now() < deadline, "{}", server.diagnostics());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !shm.exists(),
        "{} left after the parent exited",
        shm.display()
    );
}
