//! userstack over real DPDK devices, served to ordinary kernel clients in a network namespace.
//!
//! The server is `examples/echo` (userstack over DPDK); the client is `mtcp-client` using kernel
//! sockets inside a namespace this test creates. Devices: net_tap (the tap netdev is moved into
//! the client's namespace) and net_af_packet (on the root end of a veth pair whose other end is in
//! the namespace). Everything is removed when a test ends, also when it fails.
//!
//! The echo binary is found beside this test's executable (`target/<profile>/echo`), or at
//! `$MTCP_ECHO_BIN`; `ci/test.sh` builds it first.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use mtcp_tests::{kv_get, parse_summary, unique_ifname, Netns, ServerProcess, Subnet, VethPair};

const CLIENT: &str = env!("CARGO_BIN_EXE_mtcp-client");
const PORT: u16 = 7777;

fn echo_bin() -> PathBuf {
    mtcp_tests::built_artifact("echo", "MTCP_ECHO_BIN")
}

#[derive(Debug, Clone, Copy)]
enum Dev {
    Tap,
    AfPacket,
    AfXdp,
}

/// A running echo server on userstack and a client namespace that reaches it.
/// Field order is drop order: the server (and its device) first, then veth, then namespace.
struct Bed {
    server: ServerProcess,
    _veth: Option<VethPair>,
    ns: Netns,
    subnet: Subnet,
}

impl Bed {
    fn new(dev: Dev, extra_env: &[(&str, &str)]) -> Bed {
        let subnet = Subnet::allocate().expect("subnet");
        let ns = Netns::new().expect("netns");
        let (spec, veth) = match dev {
            Dev::Tap => (format!("tap:{}", unique_ifname("t")), None),
            Dev::AfPacket | Dev::AfXdp => {
                let v = VethPair::new(&ns, &subnet.cidr(1)).expect("veth");
                let kind = if matches!(dev, Dev::AfXdp) {
                    "af_xdp"
                } else {
                    "af_packet"
                };
                (format!("{kind}:{}", v.root_if()), Some(v))
            }
        };
        let mut b = ServerProcess::builder(echo_bin())
            .args(["--port", &PORT.to_string()])
            .env("MTCP_DEV", &spec)
            .env("MTCP_ADDR", subnet.cidr(2))
            .env("MTCP_LOG", "warn")
            .ready_prefix("echo: listening on");
        for (k, v) in extra_env {
            b = b.env(k, v);
        }
        let server = b.spawn().expect("echo server starts");
        if let Some(tap) = spec.strip_prefix("tap:") {
            ns.adopt_link(tap, &subnet.cidr(1))
                .expect("tap moved into the namespace");
        }
        Bed {
            server,
            _veth: veth,
            ns,
            subnet,
        }
    }

    fn addr(&self) -> String {
        format!("{}:{PORT}", self.subnet.addr(2))
    }

    /// Runs `mtcp-client ARGS` in the namespace; asserts success; returns its summary.
    fn client(&mut self, args: &[&str]) -> HashMap<String, String> {
        let out = self.ns.exec(CLIENT, args).expect("run mtcp-client");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "mtcp-client {args:?} failed ({})\nstdout: {stdout}\nstderr: {}\n{}\nthe stack now:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.server.diagnostics(),
            mtcp_tests::redis::stats_text(self.server.pid())
        );
        eprintln!("{}", stdout.trim());
        parse_summary(&out.stdout).expect("summary line")
    }

    /// Stops the server (SIGTERM) and returns its final counters (`echo: stopped; k=v ...`).
    fn stop(mut self) -> HashMap<String, u64> {
        let (status, stderr) = self.server.stop_with_stderr().expect("stop echo");
        assert!(
            status.success(),
            "echo exited with {status} on SIGTERM:\n{stderr}"
        );
        let line = stderr
            .lines()
            .find_map(|l| l.strip_prefix("echo: stopped;"))
            .unwrap_or_else(|| panic!("no counters line in:\n{stderr}"));
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().expect("counter value")))
            .collect()
    }
}

#[test]
fn tap_ping_reaches_the_stack() {
    let mut bed = Bed::new(Dev::Tap, &[]);
    let out = bed.ns.ping(bed.subnet.addr(2), 5).expect("ping runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("5 received"),
        "ping failed: {text}\n{}",
        bed.server.diagnostics()
    );
}

#[test]
fn tap_1000_connections_echo_100_messages_each() {
    let mut bed = Bed::new(Dev::Tap, &[]);
    let a = bed.addr();
    let s = bed.client(&[
        "conns",
        "--addr",
        &a,
        "--conns",
        "1000",
        "--msgs",
        "100",
        "--size",
        "64",
        "--timeout",
        "300",
    ]);
    assert_eq!(kv_get::<u64>(&s, "ok").unwrap(), 1000);
    assert_eq!(kv_get::<u64>(&s, "mismatch").unwrap(), 0);
    assert_eq!(kv_get::<u64>(&s, "total_msgs").unwrap(), 100_000);
    let st = bed.stop();
    assert_eq!(st["conns_opened"], 1000);
    assert_eq!(st["drop_malformed"] + st["drop_bad_checksum"], 0, "{st:?}");
}

#[test]
fn tap_one_gib_echo_is_intact() {
    let mut bed = Bed::new(Dev::Tap, &[]);
    let a = bed.addr();
    let s = bed.client(&["bulk", "--addr", &a, "--bytes", "1073741824"]);
    assert_eq!(s["match"], "true");
    assert_eq!(kv_get::<u64>(&s, "bytes").unwrap(), 1 << 30);
}

#[test]
fn tap_64_mib_through_loss_dup_reorder_is_intact() {
    let mut bed = Bed::new(
        Dev::Tap,
        &[("MTCP_FAULTS", "loss=2,dup=1,reorder=1,seed=3")],
    );
    let a = bed.addr();
    let s = bed.client(&[
        "bulk",
        "--addr",
        &a,
        "--bytes",
        "67108864",
        "--stall-timeout",
        "60",
    ]);
    assert_eq!(s["match"], "true");
    assert_eq!(kv_get::<u64>(&s, "bytes").unwrap(), 64 << 20);
    let st = bed.stop();
    // The faults really happened, and losses were repaired by retransmission.
    assert!(
        st["fault_dropped"] > 0 && st["fault_duplicated"] > 0 && st["fault_reordered"] > 0,
        "{st:?}"
    );
    assert!(st["tcp_retransmits"] > 0, "{st:?}");
}

#[test]
fn tap_burst_of_511_connects_all_accepted_none_reset() {
    let mut bed = Bed::new(Dev::Tap, &[]);
    let a = bed.addr();
    let s = bed.client(&["burst", "--addr", &a, "--conns", "511", "--timeout", "60"]);
    assert_eq!(kv_get::<u64>(&s, "ok").unwrap(), 511);
    assert_eq!(kv_get::<u64>(&s, "reset").unwrap(), 0);
    assert_eq!(kv_get::<u64>(&s, "refused").unwrap(), 0);
    let st = bed.stop();
    assert_eq!(st["tcp_rst_sent"], 0, "{st:?}");
}

/// Ping, 200 connections x 50 messages and 256 MiB checked end to end over a veth device.
fn ping_echo_and_bulk(dev: Dev) {
    let mut bed = Bed::new(dev, &[]);
    let out = bed.ns.ping(bed.subnet.addr(2), 3).expect("ping runs");
    assert!(
        out.status.success(),
        "ping over {dev:?} failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let a = bed.addr();
    let s = bed.client(&[
        "conns", "--addr", &a, "--conns", "200", "--msgs", "50", "--size", "100",
    ]);
    assert_eq!(kv_get::<u64>(&s, "ok").unwrap(), 200);
    let s = bed.client(&["bulk", "--addr", &a, "--bytes", "268435456"]);
    assert_eq!(s["match"], "true");
}

#[test]
fn af_packet_ping_echo_and_bulk() {
    ping_echo_and_bulk(Dev::AfPacket);
}

#[test]
fn af_xdp_ping_echo_and_bulk() {
    ping_echo_and_bulk(Dev::AfXdp);
}

#[test]
fn pcap_records_the_handshake_and_the_data() {
    let dir = std::env::temp_dir().join(format!("mtcp-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("stack.pcap");
    let mut bed = Bed::new(Dev::Tap, &[("MTCP_PCAP", file.to_str().unwrap())]);
    let a = bed.addr();
    bed.client(&[
        "conns", "--addr", &a, "--conns", "1", "--msgs", "1", "--size", "32",
    ]);
    bed.stop();
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&file)
        .output()
        .expect("tcpdump runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "tcpdump -r failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ARP"), "{text}");
    assert!(
        text.contains("Flags [S]") && text.contains("Flags [S.]"),
        "no handshake in:\n{text}"
    );
    assert!(
        text.contains("length 32"),
        "no 32-byte data segment in:\n{text}"
    );
}

/// The one-variable setup from README: the tap's kernel side gets MTCP_TAP_PEER, and a client
/// in the root namespace reaches the stack with nothing else to do.
#[test]
fn tap_peer_makes_the_stack_reachable_from_the_host() {
    let subnet = Subnet::allocate().unwrap();
    let tap = unique_ifname("p");
    let mut server = ServerProcess::builder(echo_bin())
        .env("MTCP_DEV", format!("tap:{tap}"))
        .env("MTCP_ADDR", subnet.cidr(2))
        .env("MTCP_TAP_PEER", subnet.cidr(1))
        .ready_prefix("echo: listening on")
        .spawn()
        .expect("echo starts");
    let a = format!("{}:7777", subnet.addr(2));
    let out = Command::new(CLIENT)
        .args(["conns", "--addr", &a, "--conns", "10", "--msgs", "10"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.diagnostics()
    );
}

// ------------------------------------------------------------------ bad configuration

/// Runs echo with `env` and no device setup; returns (exit code, stderr).
fn echo_fails(env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(echo_bin());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("echo runs");
    assert!(!out.status.success(), "echo accepted {env:?}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_values_give_their_exact_message() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("MTCP_DEV", "eth9")], "echo: MTCP_DEV=\"eth9\": unknown device kind; expected tap[:IFNAME], af_packet:IFACE, af_xdp:IFACE, memif:SOCKET[,server|client][,ring=N], pci:ADDR or vdev:RAW\n"),
        (&[("MTCP_ADDR", "198.18.0.256/24")], "echo: MTCP_ADDR=\"198.18.0.256/24\": expected an IPv4 address with a prefix length, e.g. 198.18.0.2/24\n"),
        (&[("MTCP_GW", "203.0.113.1")], "echo: MTCP_GW=\"203.0.113.1\": the gateway must be another address inside MTCP_ADDR's subnet 198.18.0.2/24\n"),
        (&[("MTCP_MAC", "ff:ff:ff:ff:ff:ff")], "echo: MTCP_MAC=\"ff:ff:ff:ff:ff:ff\": a multicast MAC address cannot be an interface address\n"),
        (&[("MTCP_HUGEPAGES", "lots")], "echo: MTCP_HUGEPAGES=\"lots\": expected auto, yes or no\n"),
        (&[("MTCP_FAULTS", "loss=x")], "echo: MTCP_FAULTS=\"loss=x\": loss must be a percentage between 0 and 100\n"),
    ];
    for (env, want) in cases {
        let (code, stderr) = echo_fails(env);
        assert_eq!(code, 2, "{env:?}");
        assert_eq!(&stderr, want, "{env:?}");
    }
}

#[test]
fn missing_interface_is_named_and_nothing_starts() {
    let name = unique_ifname("x");
    let (code, stderr) = echo_fails(&[("MTCP_DEV", &format!("af_packet:{name}"))]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!("echo: MTCP_DEV=af_packet:{name}: no network interface named {name:?}\n")
    );
}

#[test]
fn eal_failure_is_reported_and_no_tap_is_left() {
    let tap = unique_ifname("e");
    let (code, stderr) = echo_fails(&[
        ("MTCP_DEV", &format!("tap:{tap}")),
        ("MTCP_EAL_ARGS", "--no-such-eal-option"),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("echo: DPDK EAL initialisation failed: "),
        "{stderr}"
    );
    assert!(stderr.contains("--no-such-eal-option"), "{stderr}");
    assert!(
        !std::path::Path::new("/sys/class/net").join(&tap).exists(),
        "a half-started tap was left"
    );
}

#[test]
fn existing_interface_name_is_refused() {
    let (code, stderr) = echo_fails(&[("MTCP_DEV", "tap:lo")]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "echo: MTCP_DEV=tap:lo: an interface named \"lo\" already exists; name the tap with MTCP_DEV=tap:NAME\n"
    );
}

#[test]
fn without_privileges_the_error_says_so() {
    let tap = unique_ifname("n");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(echo_bin())
        .env("MTCP_DEV", format!("tap:{tap}"))
        .output()
        .expect("setpriv runs");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("echo: MTCP_DEV=tap:{tap}: no permission: DPDK devices need CAP_NET_ADMIN and CAP_NET_RAW (run as root)\n")
    );
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// An idle server blocks instead of spinning: on net_tap (its rx interrupt fd), on af_packet
/// (the link's own AF_PACKET wake-up socket) and on af_xdp (the PMD's AF_XDP socket). Served once first, so the stack is
/// warm and has connections' timers behind it.
#[test]
fn idle_server_uses_no_cpu() {
    for dev in [Dev::Tap, Dev::AfPacket, Dev::AfXdp] {
        // No spinning: every frame after a pause needs the wake-up.
        let mut bed = Bed::new(dev, &[("MTCP_SPIN_US", "0")]);
        let a = bed.addr();
        bed.client(&["conns", "--addr", &a, "--conns", "10", "--msgs", "10"]);
        let pid = bed.server.pid();
        let before = cpu_ticks(pid);
        std::thread::sleep(std::time::Duration::from_secs(3));
        let used = cpu_ticks(pid) - before;
        // 300 ticks would be a core spinning; allow scheduler noise, not a poll loop.
        assert!(used <= 6, "idle server used {used} ticks of CPU in 3 s");
        // And it still answers at once after idling: each of 20 requests, sent after a 20 ms
        // pause, wakes the blocked loop (a lost wake-up leaves it to the loop's next timeout,
        // up to a second).
        let s = bed.client(&[
            "latency",
            "--addr",
            &a,
            "--count",
            "20",
            "--warmup",
            "0",
            "--pause-ms",
            "20",
        ]);
        let max: f64 = kv_get(&s, "max_us").unwrap();
        assert!(
            max < 100_000.0,
            "{dev:?}: a round trip after a pause took {max} µs"
        );
    }
}
