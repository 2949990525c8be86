//! A test bed for Debian's redis-server under `LD_PRELOAD=libmtcpshim.so`: its flagged port on
//! the stack over a device the bed creates (net_tap, net_af_packet, net_af_xdp, or net_memif
//! with `mtcp-faultbridge` as its NIC), clients (redis-cli, redis-benchmark, python3) in a
//! network namespace the bed creates. Everything goes when the bed is dropped (server first,
//! then the bridge, its device and the namespace), also when a test fails.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use std::net::Ipv4Addr;
use std::process::Command;

use crate::{unique_ifname, Netns, ServerProcess, Subnet, VethPair};

/// The shim library the workspace build made (or `$MTCP_SHIM_LIB`).
pub fn shim_lib() -> PathBuf {
    crate::built_artifact("libmtcpshim.so", "MTCP_SHIM_LIB")
}

/// The kernel-to-DPDK bridge the workspace build made (or `$MTCP_FAULTBRIDGE_BIN`).
pub fn faultbridge_bin() -> PathBuf {
    crate::built_artifact("mtcp-faultbridge", "MTCP_FAULTBRIDGE_BIN")
}

/// A file of tests/py/.
pub fn py_file(name: &str) -> String {
    format!("{}/py/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Starts redis-server as `cmd` says and waits (30 s at most) until it logs "Ready to accept
/// connections"; panics with its diagnostics if it does not.
pub fn start_redis(cmd: std::process::Command) -> ServerProcess {
    let mut server = ServerProcess::builder_for(cmd)
        .ready_prefix("")
        .spawn()
        .expect("redis-server starts");
    crate::wait_stdout_contains(
        &mut server,
        "Ready to accept connections",
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", server.diagnostics()));
    server
}

/// Waits (20 s at most) until `server`'s stack runs, as `mtcprun stats` shows it: on
/// af_packet it starts when the server first serves its listener, after its ready line.
pub fn wait_stack(server: &mut ServerProcess) {
    let mtcprun = crate::built_artifact("mtcprun", "MTCPRUN_BIN");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::process::Command::new(&mtcprun)
        .args(["stats", &server.pid().to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            Instant::now() < deadline,
            "no stack in the server\n{}",
            server.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `cmd` under the shim: its stack on `dev` (an MTCP_DEV value) with the address `cidr`,
/// serving `ports` (an MTCP_PORTS value; `None`: a client, no port of its is the stack's).
pub fn under_shim<'c>(
    cmd: &'c mut Command,
    dev: &str,
    cidr: &str,
    ports: Option<&str>,
) -> &'c mut Command {
    cmd.env("LD_PRELOAD", shim_lib())
        .env("MTCP_DEV", dev)
        .env("MTCP_ADDR", cidr);
    match ports {
        Some(p) => cmd.env("MTCP_PORTS", p),
        None => cmd.env_remove("MTCP_PORTS"),
    }
}

/// `program` under the shim as a client: its stack on af_packet device `dev` with `cidr`.
pub fn shim_client(mut cmd: Command, dev: &str, cidr: &str) -> Command {
    under_shim(&mut cmd, &format!("af_packet:{dev}"), cidr, None);
    cmd
}

/// redis-server in `ns`, bound to `ip`:`port`, with `extra` arguments, ready; under the shim
/// on af_packet device `dev` with `cidr` if `shim` says so (and its stack running).
pub fn redis_in(
    ns: &Netns,
    ip: Ipv4Addr,
    port: u16,
    extra: &[&str],
    shim: Option<(&str, &str)>,
) -> ServerProcess {
    let mut cmd = ns.command("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        &ip.to_string(),
        "--save",
        "",
        "--protected-mode",
        "no",
    ])
    .args(extra);
    if let Some((dev, cidr)) = shim {
        let port = port.to_string();
        under_shim(&mut cmd, &format!("af_packet:{dev}"), cidr, Some(&port));
    }
    let mut server = start_redis(cmd);
    if shim.is_some() {
        wait_stack(&mut server);
    }
    server
}

/// Everything `mtcprun stats PID` prints of process `pid`'s stack (for a failure's message).
pub fn stats_text(pid: u32) -> String {
    let bin = crate::built_artifact("mtcprun", "MTCPRUN_BIN");
    match std::process::Command::new(&bin)
        .args(["stats", &pid.to_string()])
        .output()
    {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("mtcprun stats {pid}: {e}"),
    }
}

/// One of process `pid`'s stack counters, as `mtcprun stats PID` prints it (e.g.
/// "conns_opened"), from a publication made after this call began: it shows everything the
/// caller saw happen before the call (the stack publishes within milliseconds of its work).
pub fn stack_counter(pid: u32, name: &str) -> u64 {
    let bin = crate::built_artifact("mtcprun", "MTCPRUN_BIN");
    let start = Instant::now();
    loop {
        let asked = start.elapsed();
        let out = std::process::Command::new(&bin)
            .args(["stats", &pid.to_string()])
            .output()
            .expect("mtcprun runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // "pid N (comm): stack up S s, published A ms ago"
        let age_ms: Option<f64> = text
            .lines()
            .next()
            .and_then(|l| l.split("published ").nth(1))
            .and_then(|r| r.split_whitespace().next()?.parse().ok());
        let value = text.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next()?.parse::<u64>().ok())?
        });
        match (age_ms, value) {
            // Rounded to 0.1 ms: 0.1 ms of slack.
            (Some(a), Some(v)) if a <= asked.as_secs_f64() * 1e3 + 0.1 => return v,
            (Some(_), Some(_)) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            _ => panic!(
                "no counter {name} published after the call in `mtcprun stats`: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

/// Which DPDK device carries the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dev {
    /// net_tap; the tap is moved into the clients' namespace once Redis listens.
    Tap,
    /// net_af_packet on the root end of a veth pair whose other end is in the namespace.
    AfPacket,
    /// net_af_xdp on the root end of such a veth pair.
    AfXdp,
    /// net_memif (server role) on a socket in the bed's directory; `mtcp-faultbridge --b
    /// dpdk:memif:SOCKET,client` is its NIC: it forwards frames between the memif and the root
    /// end of such a veth pair (as ci/redis-bench.sh's path memif-s0). memif has no wake-up fd:
    /// a frame that arrives while the stack is idle waits for its next poll, and a frame from
    /// the memif waits up to 1 ms in an idle bridge (its longest block on the kernel side).
    Memif,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "mtcp-{tag}-{}-{}",
            std::process::id(),
            crate::unique_ifname("")
        ));
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How redis-server is started.
pub enum Launch {
    /// `LD_PRELOAD=LIB MTCP_PORTS=.. MTCP_DEV=.. MTCP_ADDR=.. redis-server ...`
    Preload(PathBuf),
    /// `MTCPRUN --dev .. --addr .. --ports .. EXTRA... -- redis-server ...`
    Mtcprun { bin: PathBuf, extra: Vec<String> },
}

/// The final lines of `redis-benchmark -q` output, one per test ("GET: N requests per
/// second, ..."), after its carriage-return progress lines.
pub fn bench_results(text: &str) -> Vec<&str> {
    text.split(['\r', '\n'])
        .filter(|l| l.contains("requests per second"))
        .collect()
}

/// An MTCP_DEV value for a memif port on `socket` in `role`, with rings of 2^`ring_log2`
/// slots if given.
pub(crate) fn memif_spec(socket: &Path, role: &str, ring_log2: Option<u8>) -> String {
    match ring_log2 {
        None => format!("memif:{},{role}", socket.display()),
        Some(n) => format!(
            "vdev:net_memif0,role={role},socket={},id=0,rsize={n}",
            socket.display()
        ),
    }
}

/// The memif socket of a [`Dev::Memif`] bed: in the bed's own directory, so unique and removed
/// with it.
fn memif_socket(dir: &TempDir) -> PathBuf {
    dir.path().join("memif.sock")
}

/// `mtcp-faultbridge --a ROOT_IF --b dpdk:memif:SOCKET,client` (the memif's client role, the
/// server being Redis's stack), once it reports ready. If it does not, the panic also shows the
/// server's state (the caller's guards, the server's included, go as it unwinds).
pub(crate) fn start_bridge(
    root_if: &str,
    socket: &Path,
    ring_log2: Option<u8>,
    server: &mut ServerProcess,
) -> ServerProcess {
    let b = format!("dpdk:{}", memif_spec(socket, "client", ring_log2));
    ServerProcess::builder(faultbridge_bin())
        .args(["--a", root_if, "--b", &b, "--faults", ""])
        .ready_prefix("faultbridge: ready")
        .spawn()
        .unwrap_or_else(|e| panic!("mtcp-faultbridge starts: {e:#}\n{}", server.diagnostics()))
}

/// Options of a bed.
pub struct BedOptions {
    pub launch: Launch,
    pub dev: Dev,
    /// `--bind` value; `STACK` stands for the stack's address.
    pub bind: String,
    /// More redis-server arguments.
    pub args: Vec<String>,
    /// More environment for the server.
    pub env: Vec<(String, String)>,
    /// [`Dev::Memif`]: rings of 2^N slots on both sides instead of the stack's default.
    pub memif_ring_log2: Option<u8>,
}

impl Default for BedOptions {
    fn default() -> Self {
        BedOptions {
            launch: Launch::Preload(shim_lib()),
            dev: Dev::Tap,
            bind: "0.0.0.0".into(),
            args: Vec::new(),
            env: Vec::new(),
            memif_ring_log2: None,
        }
    }
}

/// redis-server under the shim and a namespace for its clients. Field order is drop order.
pub struct RedisBed {
    pub server: ServerProcess,
    /// `mtcp-faultbridge` of a [`Dev::Memif`] bed, stopped (by its pid) after the server.
    pub bridge: Option<ServerProcess>,
    _veth: Option<VethPair>,
    pub ns: Netns,
    pub subnet: Subnet,
    pub port: u16,
    pub dir: TempDir,
}

impl RedisBed {
    pub fn new(opts: BedOptions) -> RedisBed {
        let subnet = Subnet::allocate().expect("subnet");
        let ns = Netns::new().expect("netns");
        // A port of its own per bed (the kernel side of a wildcard listener is in the root
        // namespace), inside MTCP_PORTS.
        let port = 16000 + subnet.index();
        let dir = TempDir::new("redis");
        let bind = opts.bind.replace("STACK", &subnet.addr(2).to_string());
        let mut args = vec![
            "--port".to_string(),
            port.to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
            "--dir".into(),
            dir.path().to_str().unwrap().into(),
            "--bind".into(),
        ];
        args.extend(bind.split_whitespace().map(String::from));
        args.extend(opts.args.iter().cloned());
        let (veth, dev, tap) = match opts.dev {
            Dev::Tap => {
                let tap = unique_ifname("r");
                (None, format!("tap:{tap}"), Some(tap))
            }
            Dev::AfPacket | Dev::AfXdp | Dev::Memif => {
                let v = VethPair::new(&ns, &subnet.cidr(1)).expect("veth");
                let d = match opts.dev {
                    Dev::AfXdp => format!("af_xdp:{}", v.root_if()),
                    // The bridge connects once Redis listens, to the veth's root end.
                    Dev::Memif => memif_spec(&memif_socket(&dir), "server", opts.memif_ring_log2),
                    _ => format!("af_packet:{}", v.root_if()),
                };
                (Some(v), d, None)
            }
        };
        let (addr, ports) = (subnet.cidr(2), port.to_string());
        let mut b = match opts.launch {
            Launch::Preload(lib) => ServerProcess::builder("redis-server")
                .args(&args)
                .env("LD_PRELOAD", lib)
                .env("MTCP_PORTS", ports)
                .env("MTCP_DEV", dev)
                .env("MTCP_ADDR", addr),
            Launch::Mtcprun { bin, extra } => {
                let mut cmd = std::process::Command::new(bin);
                cmd.args(["--dev", &dev, "--addr", &addr, "--ports", &ports])
                    .args(extra)
                    .arg("--")
                    .arg("redis-server")
                    .args(&args);
                ServerProcess::builder_for(cmd)
            }
        }
        .ready_prefix("");
        for (k, v) in &opts.env {
            b = b.env(k, v);
        }
        let mut server = b.spawn().expect("redis-server starts");
        crate::wait_stdout_contains(
            &mut server,
            "Ready to accept connections",
            Duration::from_secs(30),
        )
        .expect("redis-server gets ready");
        // Once Redis listens, its memif port has started and its socket exists.
        let bridge = (opts.dev == Dev::Memif).then(|| {
            let root_if = veth.as_ref().expect("memif bed has a veth pair").root_if();
            start_bridge(
                root_if,
                &memif_socket(&dir),
                opts.memif_ring_log2,
                &mut server,
            )
        });
        if let Some(tap) = tap {
            // Only once Redis listens: the port is started then (the netdev appears earlier,
            // during the EAL's probe, and must not leave the namespace before its start).
            ns.adopt_link(&tap, &subnet.cidr(1))
                .expect("tap moved into the namespace");
        }
        // Served through the stack only if bound to the wildcard or the stack's address (Redis's
        // IPv6 listeners are IPV6_V6ONLY: never the stack's).
        let served = bind
            .split_whitespace()
            .any(|a| a == "0.0.0.0" || a == "*" || a == subnet.addr(2).to_string());
        let mut bed = RedisBed {
            server,
            bridge,
            _veth: veth,
            ns,
            subnet,
            port,
            dir,
        };
        if served {
            bed.wait_ready();
        }
        bed
    }

    /// For assertion messages: the server's state and output, and the bridge's if there is one.
    pub fn diagnostics(&mut self) -> String {
        let mut d = self.server.diagnostics();
        if let Some(b) = &mut self.bridge {
            d = format!("{d}\n--- bridge ---\n{}", b.diagnostics());
        }
        d
    }

    /// Stops the bridge of a [`Dev::Memif`] bed (SIGTERM to its pid) and returns its counters
    /// line, `faultbridge: stopped a_to_b: rx=.. tx=.. .. b_to_a: ..` (a: the clients' side).
    pub fn stop_bridge(&mut self) -> String {
        let mut b = self.bridge.take().expect("a memif bed has a bridge");
        let (status, _) = b.stop_with_stderr().expect("the bridge stops");
        let line = b.wait_stdout("faultbridge: stopped", Duration::from_secs(5));
        assert!(
            status.success(),
            "the bridge exited with {status}\n{}",
            b.diagnostics()
        );
        line.expect("the bridge prints its counters when it stops")
    }

    /// One of the server's stack counters, as `mtcprun stats PID` prints it (e.g.
    /// "drop_tx_ring_full").
    pub fn stack_counter(&self, name: &str) -> u64 {
        stack_counter(self.server.pid(), name)
    }

    /// The stack's address.
    pub fn addr(&self) -> String {
        self.subnet.addr(2).to_string()
    }

    /// The root end of the bed's veth pair (the device of [`Dev::AfPacket`] and
    /// [`Dev::AfXdp`], the bridge's kernel side for [`Dev::Memif`]).
    pub fn root_if(&self) -> Option<&str> {
        self._veth.as_ref().map(VethPair::root_if)
    }

    /// The same (the name mtcprun's tests use).
    pub fn stack_addr(&self) -> String {
        self.addr()
    }

    /// redis-cli in the namespace, against the stack's address.
    pub fn cli(&self, args: &[&str]) -> Output {
        let (h, p) = (self.addr(), self.port.to_string());
        let mut all = vec!["-h", &h, "-p", &p];
        all.extend_from_slice(args);
        self.ns.exec("redis-cli", &all).expect("redis-cli runs")
    }

    /// redis-cli, asserting success; its stdout.
    pub fn cli_ok(&mut self, args: &[&str]) -> String {
        let out = self.cli(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {text}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        );
        text
    }

    /// One field of INFO.
    pub fn info_field(&mut self, section: &str, key: &str) -> Option<String> {
        let text = self.cli_ok(&["info", section]);
        let prefix = format!("{key}:");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_string())
    }

    /// Waits until `cond` holds, polling every 20 ms, `timeout` at most; fails with `what`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&mut Self) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the server answers PING through the stack.
    pub fn wait_ready(&mut self) {
        self.wait_for("PONG through the stack", Duration::from_secs(20), |b| {
            b.cli(&["ping"]).stdout.starts_with(b"PONG")
        });
    }

    /// A tool in the namespace, asserting success and no "error" in its output; its stdout.
    pub fn run_ok(&mut self, program: &str, args: &[&str]) -> String {
        let out = self.ns.exec(program, args).expect("runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success() && !text.to_lowercase().contains("error"),
            "{program} {args:?}: {text}{err}\n{}",
            self.diagnostics()
        );
        text
    }

    /// redis-benchmark in the namespace against the stack (`-q` and ARGS), in the background,
    /// under `timeout 600` (a client whose connection never completes would wait forever).
    pub fn bench_bg(&self, args: &[&str]) -> std::process::Child {
        let (h, p) = (self.addr(), self.port.to_string());
        let mut all = vec!["600", "redis-benchmark", "-h", &h, "-p", &p, "-q"];
        all.extend_from_slice(args);
        self.ns
            .command("timeout")
            .args(&all)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("redis-benchmark starts")
    }

    /// Waits for a `bench_bg` run; asserts it succeeded with no error. Its stdout and stderr.
    pub fn bench_done(&mut self, child: std::process::Child) -> String {
        let out = child.wait_with_output().expect("redis-benchmark ends");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !text.to_lowercase().contains("error"),
            "{text}\n{}",
            self.diagnostics()
        );
        text
    }

    /// `bench_bg` + `bench_done`.
    pub fn bench(&mut self, args: &[&str]) -> String {
        let child = self.bench_bg(args);
        self.bench_done(child)
    }

    /// The server's open fds and resident memory (kB).
    pub fn fds_and_rss(&self) -> (usize, u64) {
        let pid = self.server.pid();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        (fds, rss)
    }
}
