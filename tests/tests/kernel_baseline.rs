//! Self-tests of the fixtures and of `mtcp-client`, kernel to kernel, without the DPDK stack:
//! the reference echo server (`mtcp-client serve`) runs in one namespace, the client in a
//! second one, joined by a veth pair (198.18.X.1 <-> 198.18.X.2).

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use mtcp_tests::{
    kv_get, parse_summary, LinkGuard, Netns, Result, ServerProcess, Subnet, VethPair,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_mtcp-client");

/// Server namespace + client namespace + veth + running reference server.
/// Field order = drop order: server first, then the veth, then the namespaces.
struct Bed {
    server: ServerProcess,
    _veth: VethPair,
    client_ns: Netns,
    _server_ns: Netns,
    subnet: Subnet,
}

impl Bed {
    fn new() -> Result<Bed> {
        let subnet = Subnet::allocate()?;
        let server_ns = Netns::new()?;
        let client_ns = Netns::new()?;
        let veth = VethPair::between(&server_ns, &subnet.cidr(1), &client_ns, &subnet.cidr(2))?;
        let listen = format!("{}:7000", subnet.addr(1));
        let server = ServerProcess::builder_in(&server_ns, CLIENT)
            .args(["serve", "--listen", &listen, "--exit-after", "600"])
            .ready_prefix("serve: listening on")
            .spawn()?;
        Ok(Bed {
            server,
            _veth: veth,
            client_ns,
            _server_ns: server_ns,
            subnet,
        })
    }

    fn addr(&self) -> String {
        format!("{}:7000", self.subnet.addr(1))
    }

    /// Runs `mtcp-client <args>` in the client namespace; asserts exit 0 and returns the
    /// parsed summary.
    fn client(&mut self, args: &[&str]) -> HashMap<String, String> {
        let out = self.client_ns.exec(CLIENT, args).expect("run mtcp-client");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "mtcp-client {args:?} failed ({})\nstdout: {stdout}\nstderr: {stderr}\n{}",
            out.status,
            self.server.diagnostics()
        );
        eprintln!("mtcp-client {}: {}", args[0], stdout.trim());
        parse_summary(&out.stdout).expect("summary line")
    }
}

#[test]
fn conns_200x20() {
    let mut bed = Bed::new().unwrap();
    let addr = bed.addr();
    let kv = bed.client(&[
        "conns", "--addr", &addr, "--conns", "200", "--msgs", "20", "--size", "64",
    ]);
    assert_eq!(kv_get::<u64>(&kv, "ok").unwrap(), 200);
    assert_eq!(kv_get::<u64>(&kv, "failed").unwrap(), 0);
    assert_eq!(kv_get::<u64>(&kv, "total_msgs").unwrap(), 200 * 20);
}

#[test]
fn conns_1000_two_threads_odd_size() {
    let mut bed = Bed::new().unwrap();
    let addr = bed.addr();
    let kv = bed.client(&[
        "conns",
        "--addr",
        &addr,
        "--conns",
        "1000",
        "--msgs",
        "5",
        "--size",
        "3001",
        "--threads",
        "2",
    ]);
    assert_eq!(kv_get::<u64>(&kv, "ok").unwrap(), 1000);
    assert_eq!(kv_get::<u64>(&kv, "bytes").unwrap(), 1000 * 5 * 3001);
}

#[test]
fn bulk_64mib() {
    let mut bed = Bed::new().unwrap();
    let addr = bed.addr();
    let n = 64u64 << 20;
    let kv = bed.client(&["bulk", "--addr", &addr, "--bytes", &n.to_string()]);
    assert_eq!(kv_get::<u64>(&kv, "bytes").unwrap(), n);
    assert_eq!(kv["match"], "true");
    assert_eq!(kv["sha256"].len(), 64);
    assert!(kv_get::<f64>(&kv, "mbps").unwrap() > 0.0);
}

#[test]
fn burst_511() {
    let mut bed = Bed::new().unwrap();
    let addr = bed.addr();
    let kv = bed.client(&["burst", "--addr", &addr, "--conns", "511"]);
    assert_eq!(kv_get::<u64>(&kv, "ok").unwrap(), 511);
    for k in ["reset", "refused", "timeout", "echo_fail"] {
        assert_eq!(kv_get::<u64>(&kv, k).unwrap(), 0, "{k}");
    }
}

#[test]
fn latency_and_rr() {
    let mut bed = Bed::new().unwrap();
    let addr = bed.addr();
    let kv = bed.client(&[
        "latency", "--addr", &addr, "--count", "2000", "--warmup", "100",
    ]);
    let p50 = kv_get::<f64>(&kv, "p50_us").unwrap();
    let p99 = kv_get::<f64>(&kv, "p99_us").unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} p99 {p99}");
    assert!(kv_get::<f64>(&kv, "mean_us").unwrap() > 0.0);

    let kv = bed.client(&["rr", "--addr", &addr, "--conns", "8", "--secs", "1"]);
    assert!(kv_get::<f64>(&kv, "rps").unwrap() > 100.0);
    assert_eq!(kv_get::<u64>(&kv, "failed").unwrap(), 0);
}

#[test]
fn client_reports_refused_and_fails() {
    // No server on this port: the client must exit non-zero with a clear count.
    let bed = Bed::new().unwrap();
    let addr = format!("{}:7001", bed.subnet.addr(1));
    let out = bed
        .client_ns
        .exec(
            CLIENT,
            ["burst", "--addr", &addr, "--conns", "5", "--timeout", "5"],
        )
        .unwrap();
    assert!(!out.status.success());
    let kv = parse_summary(&out.stdout).unwrap();
    assert_eq!(kv_get::<u64>(&kv, "refused").unwrap(), 5);
    assert_eq!(kv_get::<u64>(&kv, "ok").unwrap(), 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Refused"), "{stderr}");
}

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new(&format!("/sys/class/net/{name}")).exists()
}

#[test]
fn guards_clean_up_after_panic() {
    let names = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let subnet = Subnet::allocate().unwrap();
        let ns = Netns::new().unwrap();
        let veth = VethPair::new(&ns, &subnet.cidr(1)).unwrap();
        let server = ServerProcess::builder("sleep")
            .arg("300")
            .ready_prefix("")
            .ready_timeout(Duration::from_millis(200))
            .spawn();
        assert!(
            server.is_err(),
            "sleep prints nothing, so it never becomes ready"
        );
        assert!(ns.has_link(veth.ns_if()));
        assert!(link_exists(veth.root_if()));
        *names.lock().unwrap() = Some((
            ns.name().to_string(),
            veth.root_if().to_string(),
            subnet.index(),
        ));
        panic!("deliberate panic with live guards");
    }));
    assert!(r.is_err());
    let (ns, root_if, _) = names.lock().unwrap().take().unwrap();
    assert!(!netns_exists(&ns), "netns {ns} survived the panic");
    assert!(!link_exists(&root_if), "link {root_if} survived the panic");
}

#[test]
fn root_end_has_no_address_and_offloads_off() {
    let subnet = Subnet::allocate().unwrap();
    let ns = Netns::new().unwrap();
    let veth = VethPair::new(&ns, &subnet.cidr(1)).unwrap();
    let root = Command::new("ip")
        .args(["-br", "addr", "show", "dev", veth.root_if()])
        .output()
        .unwrap();
    let root = String::from_utf8_lossy(&root.stdout);
    assert!(
        !root.contains("198.1"),
        "root end must have no IPv4 address: {root}"
    );
    let inner = ns
        .ip(&["-br", "addr", "show", "dev", veth.ns_if()])
        .unwrap();
    assert!(String::from_utf8_lossy(&inner.stdout).contains(&subnet.cidr(1)));
    for (ns_opt, ifname) in [(None, veth.root_if()), (Some(&ns), veth.ns_if())] {
        let out = match ns_opt {
            None => Command::new("ethtool")
                .args(["-k", ifname])
                .output()
                .unwrap(),
            Some(ns) => ns.exec("ethtool", ["-k", ifname]).unwrap(),
        };
        let text = String::from_utf8_lossy(&out.stdout);
        for feat in [
            "tx-checksumming: off",
            "tcp-segmentation-offload: off",
            "generic-segmentation-offload: off",
        ] {
            assert!(text.contains(feat), "{ifname}: {feat} missing in\n{text}");
        }
    }
}

#[test]
fn adopt_link_waits_for_late_interface() {
    let subnet = Subnet::allocate().unwrap();
    let ns = Netns::new().unwrap();
    let tap = mtcp_tests::unique_ifname("tap");
    let guard = LinkGuard::new(&tap);
    // Stand-in for the DPDK server creating its net_tap a little later.
    let name = tap.clone();
    let creator = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        mtcp_tests::run_checked(
            Command::new("ip").args(["tuntap", "add", "mode", "tap", "name", &name]),
        )
    });
    ns.adopt_link(&tap, &subnet.cidr(1)).unwrap();
    creator.join().unwrap().unwrap();
    assert!(
        !link_exists(&tap),
        "tap should have left the root namespace"
    );
    let out = ns.ip(&["-br", "addr", "show", "dev", &tap]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&subnet.cidr(1)));
    // A missing interface times out with a clear error.
    let err = ns
        .adopt_link_timeout("mtnonexistent", &subnet.cidr(2), Duration::from_millis(100))
        .unwrap_err();
    assert!(format!("{err:#}").contains("did not appear"), "{err:#}");
    drop(guard);
    drop(ns);
    assert!(!link_exists(&tap));
}

#[test]
fn ping_and_enter() {
    let subnet = Subnet::allocate().unwrap();
    let a = Netns::new().unwrap();
    let b = Netns::new().unwrap();
    let _veth = VethPair::between(&a, &subnet.cidr(1), &b, &subnet.cidr(2)).unwrap();
    b.ping(subnet.addr(1), 2).unwrap();
    a.wait_ping(subnet.addr(2), Duration::from_secs(5)).unwrap();
    // A thread that entered `a` sees a's addresses: binding .1 works there.
    let addr = subnet.addr(1);
    let bound = a
        .enter(move || std::net::TcpListener::bind((addr, 0)).map(|l| l.local_addr().unwrap()))
        .unwrap();
    assert!(bound.is_ok(), "{bound:?}");
    // ...and the root namespace does not have that address.
    assert!(std::net::TcpListener::bind((addr, 0)).is_err());
}

#[test]
fn server_process_lifecycle() {
    // Exits before ready: the error carries its stderr.
    let err = ServerProcess::builder("sh")
        .args(["-c", "echo boom-diagnostic >&2; exit 3"])
        .ready_prefix("ready")
        .spawn()
        .err()
        .expect("must fail");
    assert!(format!("{err:#}").contains("boom-diagnostic"), "{err:#}");

    // Ready line, env passing, graceful SIGTERM.
    let sp = ServerProcess::spawn(
        {
            let mut c = Command::new("sh");
            c.args(["-c", "echo \"echo: listening on $MTCP_X\"; exec sleep 300"]);
            c
        },
        &[("MTCP_X", "198.18.0.1:7")],
        "echo: listening on",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(sp.ready_line(), "echo: listening on 198.18.0.1:7");
    let pid = sp.pid();
    let st = sp.stop().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGTERM)
    );
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

    // Ignores SIGTERM: SIGKILL after the stop timeout.
    let sp = ServerProcess::builder("sh")
        .args(["-c", "trap '' TERM; echo up; while :; do sleep 0.05; done"])
        .ready_prefix("up")
        .stop_timeout(Duration::from_millis(500))
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let st = sp.stop().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
    assert!(t.elapsed() >= Duration::from_millis(500));
}

#[test]
fn subnets_are_distinct() {
    let subs: Vec<Subnet> = (0..20).map(|_| Subnet::allocate().unwrap()).collect();
    let mut idx: Vec<u16> = subs.iter().map(|s| s.index()).collect();
    idx.sort_unstable();
    idx.dedup();
    assert_eq!(idx.len(), 20);
    for s in &subs {
        let a = s.addr(1).octets();
        assert_eq!(a[0], 198);
        assert!(a[1] == 18 || a[1] == 19);
    }
}

#[test]
fn cleanup_stale_removes_only_dead_owners() {
    // 0xffffff and 99999999 exceed pid_max (2^22), so these owners are certainly dead.
    let me = std::process::id();
    let stale_ns = format!("mtcp-99999999-{me}");
    let stale_if = format!("mtffffff-{:x}s", me & 0xfff);
    let decoy_ns = format!("mtcpdecoy-{me}");
    mtcp_tests::run_checked(Command::new("ip").args(["netns", "add", &stale_ns])).unwrap();
    mtcp_tests::run_checked(Command::new("ip").args(["netns", "add", &decoy_ns])).unwrap();
    let _decoy_guard = DeleteNetns(decoy_ns.clone());
    let _stale_guard = DeleteNetns(stale_ns.clone());
    let peer = format!("mtcpdcy{:x}", me & 0xffffff);
    let _link_guard = LinkGuard::new(&stale_if);
    let _peer_guard = LinkGuard::new(&peer);
    mtcp_tests::run_checked(Command::new("ip").args([
        "link", "add", &stale_if, "type", "veth", "peer", "name", &peer,
    ]))
    .unwrap();
    // Live owner (this process): must survive.
    let live = Netns::new().unwrap();
    mtcp_tests::cleanup_stale().unwrap();
    assert!(!netns_exists(&stale_ns));
    assert!(!link_exists(&stale_if));
    assert!(
        netns_exists(&decoy_ns),
        "a name not following the pattern was removed"
    );
    assert!(
        netns_exists(live.name()),
        "a live owner's netns was removed"
    );
}

struct DeleteNetns(String);
impl Drop for DeleteNetns {
    fn drop(&mut self) {
        if netns_exists(&self.0) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }
}
