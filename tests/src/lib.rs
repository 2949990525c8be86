//! Fixtures for mtcpshim integration tests and benchmark drivers.
//!
//! Everything here creates kernel objects (network namespaces, veth pairs, processes) and
//! removes them again in `Drop`, so a failing or panicking test leaves nothing behind.
//! Hygiene rules the fixtures enforce:
//! * addresses come from 198.18.0.0/15 ([`Subnet`]), one /24 per test, unique across
//!   concurrently running test processes;
//! * every namespace and interface name contains the creating pid and a counter
//!   ([`unique_ifname`], [`Netns::new`]); leftovers of processes that died without running
//!   their destructors (SIGKILL) are removed by [`cleanup_stale`], which runs once per process
//!   before the first namespace is created;
//! * [`ServerProcess`] only ever signals the pid it spawned itself.
//!
//! Declare guards in creation order (`Netns` first, then `VethPair`, then `ServerProcess`):
//! Rust drops locals in reverse order, so the server stops before its namespace disappears.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

pub use anyhow::{anyhow, bail, Context, Error, Result};

pub mod redis;
pub mod workload;

/// Prefix of every network namespace this crate creates: `mtcp-<pid>-<n>`.
pub const NETNS_PREFIX: &str = "mtcp-";
/// Prefix of every interface name this crate creates: `mt<pid hex>-<n hex><tag>`.
pub const IFNAME_PREFIX: &str = "mt";

static COUNTER: AtomicU32 = AtomicU32::new(0);
static STALE_CLEANUP: Once = Once::new();

pub(crate) fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A fresh interface name, unique per process and call: `mt<pid hex>-<counter hex><tag>`.
/// `tag` (at most 3 lowercase ASCII alphanumerics) tells the role, e.g. `"r"` root end, `"tap"`.
/// The result is at most 15 bytes (IFNAMSIZ - 1).
pub fn unique_ifname(tag: &str) -> String {
    assert!(
        tag.len() <= 3
            && tag
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
        "interface tag {tag:?} must be at most 3 lowercase ASCII alphanumerics"
    );
    let name = format!(
        "{IFNAME_PREFIX}{:x}-{:x}{tag}",
        std::process::id(),
        next_id() & 0xfff
    );
    debug_assert!(name.len() <= 15, "{name} too long");
    name
}

fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion and fails (with the command line, status and stderr in the
/// error) unless it exits 0.
pub fn run_checked(cmd: &mut Command) -> Result<Output> {
    let line = command_line(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output> {
    run_checked(Command::new("ip").args(args))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and root-namespace interfaces named by this crate whose creating
/// process no longer exists (left behind by a SIGKILLed test run). Returns what it removed.
/// Objects of live processes are never touched.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let list = ip(&["netns", "list"])?;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        // Exactly `mtcp-<decimal pid>-<decimal counter>`; anything else is not ours.
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(|rest| {
            let (pid, n) = rest.split_once('-')?;
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            (digits(pid) && digits(n)).then(|| pid.parse::<u32>().ok())?
        }) else {
            continue;
        };
        if !pid_alive(pid) && ip(&["netns", "delete", name]).is_ok() {
            removed.push(format!("netns {name}"));
        }
    }
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for ent in dir.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(IFNAME_PREFIX) else {
                continue;
            };
            // Exactly `mt<1-6 hex pid>-<counter hex + tag, 1-6 lowercase alphanumerics>`.
            let Some((pid_hex, tail)) = rest.split_once('-') else {
                continue;
            };
            let hex = |s: &str| {
                s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            };
            let tail_ok = (1..=6).contains(&tail.len())
                && tail
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
            if !(1..=6).contains(&pid_hex.len()) || !hex(pid_hex) || !tail_ok {
                continue;
            }
            let Ok(pid) = u32::from_str_radix(pid_hex, 16) else {
                continue;
            };
            if !pid_alive(pid) && ip(&["link", "delete", &name]).is_ok() {
                removed.push(format!("link {name}"));
            }
        }
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------------------
// Subnet allocation
// ---------------------------------------------------------------------------------------

/// One /24 out of 198.18.0.0/15 (512 of them), reserved for the lifetime of this value.
///
/// The reservation is a bound abstract unix socket `@mtcp-tests-subnet-<i>`: the kernel makes
/// it unique machine-wide (per network namespace, and all test processes live in the root
/// one) and releases it when the process dies, so parallel test processes never share a
/// subnet and nothing needs cleaning up. The first candidate is derived from pid + counter.
#[derive(Debug)]
pub struct Subnet {
    index: u16,
    _lock: UnixListener,
}

impl Subnet {
    /// Number of /24 subnets in 198.18.0.0/15.
    pub const COUNT: u16 = 512;

    pub fn allocate() -> Result<Subnet> {
        let start = std::process::id()
            .wrapping_mul(97)
            .wrapping_add(next_id().wrapping_mul(13)) as usize;
        for k in 0..Self::COUNT as usize {
            let index = ((start + k) % Self::COUNT as usize) as u16;
            let addr = UnixAddr::from_abstract_name(format!("mtcp-tests-subnet-{index}"))
                .context("abstract socket address")?;
            if let Ok(l) = UnixListener::bind_addr(&addr) {
                return Ok(Subnet { index, _lock: l });
            }
        }
        bail!(
            "all {} /24 subnets of 198.18.0.0/15 are in use",
            Self::COUNT
        )
    }

    /// Index 0..512 of this /24 inside 198.18.0.0/15.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// `198.18.X.host` (or `198.19.X.host`).
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(
            198,
            18 + (self.index / 256) as u8,
            (self.index % 256) as u8,
            host,
        )
    }

    /// `"198.18.X.host/24"`, ready for `ip addr add`.
    pub fn cidr(&self, host: u8) -> String {
        format!("{}/24", self.addr(host))
    }

    /// `"198.18.X.0/24"`.
    pub fn network(&self) -> String {
        self.cidr(0)
    }
}

// ---------------------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------------------

/// A network namespace `mtcp-<pid>-<n>` with `lo` up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new() -> Result<Netns> {
        STALE_CLEANUP.call_once(|| {
            if let Ok(removed) = cleanup_stale() {
                for r in removed {
                    eprintln!("mtcp-tests: removed stale {r}");
                }
            }
        });
        let name = format!("{NETNS_PREFIX}{}-{}", std::process::id(), next_id());
        ip(&["netns", "add", &name]).with_context(|| format!("creating netns {name}"))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])
            .with_context(|| format!("bringing lo up in {}", ns.name))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program` as a [`Command`] to configure and spawn.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program args` inside the namespace and returns its output whatever its status
    /// (an error only if it could not be started).
    pub fn exec<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args).stdin(Stdio::null());
        let line = command_line(&c);
        c.output().with_context(|| format!("cannot run `{line}`"))
    }

    /// Like [`Netns::exec`] but fails unless the command exits 0.
    pub fn exec_checked<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args);
        run_checked(&mut c)
    }

    /// `ip -n NAME args...`, checked.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args);
        run_checked(&mut c)
    }

    /// Whether interface `ifname` exists inside this namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        self.ip(&["link", "show", "dev", ifname]).is_ok()
    }

    /// Moves the root-namespace interface `ifname` (e.g. a net_tap created by the server
    /// under test) into this namespace, assigns `cidr` and brings it up. Polls for up to
    /// 10 s until the interface exists.
    pub fn adopt_link(&self, ifname: &str, cidr: &str) -> Result<()> {
        self.adopt_link_timeout(ifname, cidr, Duration::from_secs(10))
    }

    pub fn adopt_link_timeout(&self, ifname: &str, cidr: &str, timeout: Duration) -> Result<()> {
        let sys = format!("/sys/class/net/{ifname}");
        let deadline = Instant::now() + timeout;
        while !Path::new(&sys).exists() {
            if Instant::now() >= deadline {
                bail!("interface {ifname} did not appear in the root namespace within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        ip(&["link", "set", "dev", ifname, "netns", &self.name])
            .with_context(|| format!("moving {ifname} into {}", self.name))?;
        self.configure_end(ifname, cidr, false)
    }

    /// Address, offloads off, IPv6 off, up. Offload changes are mandatory on veth ends and
    /// best effort otherwise (a tap may not support every flag).
    fn configure_end(&self, ifname: &str, cidr: &str, offloads_required: bool) -> Result<()> {
        let ctx = || format!("configuring {ifname} in {}", self.name);
        let _ = self.exec(
            "sysctl",
            ["-qw", &format!("net.ipv6.conf.{ifname}.disable_ipv6=1")],
        );
        self.ip(&["addr", "add", cidr, "dev", ifname])
            .with_context(ctx)?;
        let eth = self.exec_checked(
            "ethtool",
            ["-K", ifname, "tx", "off", "tso", "off", "gso", "off"],
        );
        if offloads_required {
            eth.with_context(ctx)?;
        }
        self.ip(&["link", "set", "dev", ifname, "up"])
            .with_context(ctx)?;
        Ok(())
    }

    /// `ping -c count` from inside the namespace; fails unless every reply arrives in time.
    pub fn ping(&self, addr: Ipv4Addr, count: u32) -> Result<Output> {
        let a = addr.to_string();
        let c = count.to_string();
        self.exec_checked("ping", ["-n", "-q", "-c", &c, "-i", "0.2", "-W", "2", &a])
            .with_context(|| format!("ping {a} from {}", self.name))
    }

    /// Pings `addr` once per attempt until one reply arrives or `timeout` passes.
    pub fn wait_ping(&self, addr: Ipv4Addr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let a = addr.to_string();
        loop {
            let out = self.exec("ping", ["-n", "-q", "-c", "1", "-W", "1", &a])?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{a} did not answer ping from {} within {timeout:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `f` on a new thread that has joined this network namespace (setns), so sockets
    /// it creates live in the namespace. Returns what `f` returns.
    pub fn enter<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let h = std::thread::spawn(move || -> Result<T> {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
            }
            drop(file);
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Waits until a TCP connect from inside the namespace to `addr` succeeds.
    pub fn wait_tcp(&self, addr: std::net::SocketAddr, timeout: Duration) -> Result<()> {
        let name = self.name.clone();
        self.enter(move || {
            let deadline = Instant::now() + timeout;
            loop {
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(anyhow!(
                            "{addr} not accepting TCP from {name} within {timeout:?}: {e}"
                        ))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("mtcp-tests: cannot delete netns {}: {e:#}", self.name);
        }
    }
}

/// `ns.exec(cmd, args)`: runs a command inside `ns` and returns its output.
pub fn run_in_netns<I, S>(ns: &Netns, cmd: impl AsRef<OsStr>, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    ns.exec(cmd, args)
}

// ---------------------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------------------

/// Deletes a root-namespace interface on drop (if it still exists there).
#[derive(Debug)]
pub struct LinkGuard {
    name: String,
}

impl LinkGuard {
    pub fn new(name: impl Into<String>) -> LinkGuard {
        LinkGuard { name: name.into() }
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if Path::new(&format!("/sys/class/net/{}", self.name)).exists() {
            if let Err(e) = ip(&["link", "delete", "dev", &self.name]) {
                eprintln!("mtcp-tests: cannot delete link {}: {e:#}", self.name);
            }
        }
    }
}

/// A veth pair; deleted on drop (deleting either end removes both).
#[derive(Debug)]
pub struct VethPair {
    a: String,
    b: String,
    /// Namespace each end currently lives in (`None` = root namespace).
    a_ns: Option<String>,
    b_ns: Option<String>,
}

impl VethPair {
    /// Root end (no address, for a DPDK af_packet/af_xdp PMD) + an end inside `ns` with
    /// `ns_cidr`. Both ends up, TX checksum/TSO/GSO offloads off on both, IPv6 off.
    pub fn new(ns: &Netns, ns_cidr: &str) -> Result<VethPair> {
        let mut v = Self::create()?;
        v.move_b(ns)?;
        let root = v.a.clone();
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{root}/disable_ipv6"), "1");
        run_checked(
            Command::new("ethtool").args(["-K", &root, "tx", "off", "tso", "off", "gso", "off"]),
        )
        .with_context(|| format!("disabling offloads on {root}"))?;
        ip(&["link", "set", "dev", &root, "up"])?;
        ns.configure_end(&v.b.clone(), ns_cidr, true)?;
        Ok(v)
    }

    /// Both ends in namespaces (kernel-to-kernel self-tests): end A in `a` with `a_cidr`,
    /// end B in `b` with `b_cidr`.
    pub fn between(a: &Netns, a_cidr: &str, b: &Netns, b_cidr: &str) -> Result<VethPair> {
        let mut v = Self::create()?;
        v.move_b(b)?;
        ip(&["link", "set", "dev", &v.a, "netns", a.name()])
            .with_context(|| format!("moving {} into {}", v.a, a.name()))?;
        v.a_ns = Some(a.name().to_string());
        a.configure_end(&v.a.clone(), a_cidr, true)?;
        b.configure_end(&v.b.clone(), b_cidr, true)?;
        Ok(v)
    }

    fn create() -> Result<VethPair> {
        let base = unique_ifname("");
        let (a, b) = (format!("{base}r"), format!("{base}n"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])
            .with_context(|| format!("creating veth pair {a}/{b}"))?;
        Ok(VethPair {
            a,
            b,
            a_ns: None,
            b_ns: None,
        })
    }

    fn move_b(&mut self, ns: &Netns) -> Result<()> {
        ip(&["link", "set", "dev", &self.b, "netns", ns.name()])
            .with_context(|| format!("moving {} into {}", self.b, ns.name()))?;
        self.b_ns = Some(ns.name().to_string());
        Ok(())
    }

    /// End A: in the root namespace for [`VethPair::new`] (give it to DPDK).
    pub fn root_if(&self) -> &str {
        &self.a
    }

    /// End B: the one inside the namespace passed to [`VethPair::new`].
    pub fn ns_if(&self) -> &str {
        &self.b
    }
}

fn delete_link_in(ns: &Option<String>, name: &str) -> Result<Output> {
    match ns {
        None => ip(&["link", "delete", "dev", name]),
        Some(n) => ip(&["-n", n, "link", "delete", "dev", name]),
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // If the namespace holding an end was deleted first, the kernel already destroyed the
        // pair and both attempts fail harmlessly.
        if delete_link_in(&self.a_ns, &self.a).is_err() {
            let _ = delete_link_in(&self.b_ns, &self.b);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------------------

const MAX_CAPTURE: usize = 16 << 20;

#[derive(Default)]
struct Capture {
    text: Mutex<(String, bool)>, // (contents, stream closed)
    cv: Condvar,
}

impl Capture {
    fn spawn_reader(self: &Arc<Self>, pipe: impl Read + Send + 'static, echo: Option<String>) {
        let cap = Arc::clone(self);
        std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&line);
                        if let Some(tag) = &echo {
                            eprint!("[{tag}] {s}");
                        }
                        let mut g = cap.text.lock().unwrap();
                        if g.0.len() < MAX_CAPTURE {
                            g.0.push_str(&s);
                            if !s.ends_with('\n') {
                                g.0.push('\n');
                            }
                        }
                        cap.cv.notify_all();
                    }
                }
            }
            cap.text.lock().unwrap().1 = true;
            cap.cv.notify_all();
        });
    }

    fn contents(&self) -> String {
        self.text.lock().unwrap().0.clone()
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Builder for [`ServerProcess`].
pub struct ServerBuilder {
    cmd: Command,
    ready_prefix: String,
    ready_timeout: Duration,
    stop_timeout: Duration,
    kill_on_parent_death: bool,
}

impl ServerBuilder {
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }
    /// Stdout line prefix that means "ready" (default: any first line).
    pub fn ready_prefix(mut self, p: impl Into<String>) -> Self {
        self.ready_prefix = p.into();
        self
    }
    /// How long to wait for the ready line (default 30 s).
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }
    /// How long to wait after SIGTERM before SIGKILL (default 5 s).
    pub fn stop_timeout(mut self, d: Duration) -> Self {
        self.stop_timeout = d;
        self
    }
    /// PR_SET_PDEATHSIG=SIGTERM in the child (default on): the server is also stopped when
    /// the spawning *thread* dies without running destructors (e.g. SIGKILLed test run).
    /// Turn it off if the spawning thread exits while the server must keep running.
    pub fn kill_on_parent_death(mut self, on: bool) -> Self {
        self.kill_on_parent_death = on;
        self
    }
    pub fn spawn(self) -> Result<ServerProcess> {
        ServerProcess::start(
            self.cmd,
            &self.ready_prefix,
            self.ready_timeout,
            self.stop_timeout,
            self.kill_on_parent_death,
        )
    }
}

/// A spawned server: stdout/stderr captured through pipes, started once its ready line
/// appeared; on drop SIGTERM to its pid, up to `stop_timeout` (5 s) grace, then SIGKILL.
///
/// Set `MTCP_TESTS_VERBOSE=1` to also copy its output to stderr as it arrives.
pub struct ServerProcess {
    child: Child,
    desc: String,
    out: Arc<Capture>,
    err: Arc<Capture>,
    ready_line: String,
    stop_timeout: Duration,
    status: Option<ExitStatus>,
}

impl ServerProcess {
    /// A builder for `program`, run in the root namespace.
    pub fn builder(program: impl AsRef<OsStr>) -> ServerBuilder {
        Self::builder_for(Command::new(program))
    }

    /// A builder for `program` run inside `ns` (`ip netns exec`, which execs in place, so
    /// the pid is the server's own).
    pub fn builder_in(ns: &Netns, program: impl AsRef<OsStr>) -> ServerBuilder {
        Self::builder_for(ns.command(program))
    }

    /// A builder around a prepared command (args/env already set).
    pub fn builder_for(cmd: Command) -> ServerBuilder {
        ServerBuilder {
            cmd,
            ready_prefix: String::new(),
            ready_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(5),
            kill_on_parent_death: true,
        }
    }

    /// Spawns `cmd` (with `env` added) and waits up to `timeout` for a stdout line starting
    /// with `ready_prefix`.
    pub fn spawn(
        mut cmd: Command,
        env: &[(&str, &str)],
        ready_prefix: &str,
        timeout: Duration,
    ) -> Result<ServerProcess> {
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start(cmd, ready_prefix, timeout, Duration::from_secs(5), true)
    }

    fn start(
        mut cmd: Command,
        ready_prefix: &str,
        ready_timeout: Duration,
        stop_timeout: Duration,
        pdeathsig: bool,
    ) -> Result<ServerProcess> {
        let desc = command_line(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if pdeathsig {
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot spawn `{desc}`"))?;
        let verbose = std::env::var_os("MTCP_TESTS_VERBOSE").is_some_and(|v| v != "0");
        let out = Arc::new(Capture::default());
        let err = Arc::new(Capture::default());
        let tag = format!("pid {}", child.id());
        out.spawn_reader(child.stdout.take().unwrap(), verbose.then(|| tag.clone()));
        err.spawn_reader(child.stderr.take().unwrap(), verbose.then_some(tag));
        let mut sp = ServerProcess {
            child,
            desc,
            out,
            err,
            ready_line: String::new(),
            stop_timeout,
            status: None,
        };
        sp.ready_line = sp
            .wait_stdout(ready_prefix, ready_timeout)
            .context("server did not become ready")?;
        Ok(sp)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stdout line that matched the ready prefix.
    pub fn ready_line(&self) -> &str {
        &self.ready_line
    }

    /// Everything the server printed to stdout so far.
    pub fn stdout(&self) -> String {
        self.out.contents()
    }

    /// Everything the server printed to stderr so far.
    pub fn stderr(&self) -> String {
        self.err.contents()
    }

    /// A summary for assertion messages: command, pid, state, last lines of both streams.
    pub fn diagnostics(&mut self) -> String {
        let state = match self.try_status() {
            Ok(Some(s)) => format!("exited: {s}"),
            Ok(None) => "running".into(),
            Err(e) => format!("unknown: {e}"),
        };
        format!(
            "server `{}` (pid {}, {state})\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            self.desc,
            self.pid(),
            tail(&self.stdout(), 20),
            tail(&self.stderr(), 40)
        )
    }

    /// Writes the captured output to `dir/<name>.stdout` and `dir/<name>.stderr` (e.g. for CI
    /// artifacts); creates `dir` if needed.
    pub fn write_logs(&self, dir: &Path, name: &str) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (ext, text) in [("stdout", self.stdout()), ("stderr", self.stderr())] {
            let p = dir.join(format!("{name}.{ext}"));
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    }

    /// Exit status if the server has exited (reaps it), `None` while it runs.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().context("waitpid")?;
        }
        Ok(self.status)
    }

    /// Waits until a stdout line starting with `prefix` appears (searching from the start of
    /// the output) and returns that line. Fails early if the server exits.
    pub fn wait_stdout(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let g = self.out.text.lock().unwrap();
                if let Some(l) = g.0.lines().find(|l| l.starts_with(prefix)) {
                    return Ok(l.to_string());
                }
                let closed = g.1;
                drop(g);
                let exited = self.try_status()?;
                if let Some(st) = exited.filter(|_| closed) {
                    let diag = self.diagnostics();
                    bail!(
                        "`{}` exited ({st}) before printing {prefix:?}\n{diag}",
                        self.desc
                    );
                }
                if Instant::now() >= deadline {
                    bail!(
                        "no stdout line starting with {prefix:?} within {timeout:?}\n{}",
                        self.diagnostics()
                    );
                }
            }
            let g = self.out.text.lock().unwrap();
            let _ = self
                .out
                .cv
                .wait_timeout(g, Duration::from_millis(50))
                .unwrap();
        }
    }

    /// SIGTERM (SIGKILL after the stop timeout), then waits until stderr is closed and returns
    /// the exit status with the whole of stderr (a server's last words, e.g. its counters).
    pub fn stop_with_stderr(&mut self) -> Result<(ExitStatus, String)> {
        let st = self.terminate()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut g = self.err.text.lock().unwrap();
        while !g.1 && Instant::now() < deadline {
            g = self
                .err
                .cv
                .wait_timeout(g, Duration::from_millis(50))
                .unwrap()
                .0;
        }
        Ok((st, g.0.clone()))
    }

    /// SIGTERM, wait up to the stop timeout, then SIGKILL; returns the exit status.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.try_status()? {
            return Ok(s);
        }
        // Not reaped yet, so the pid is still ours (at worst a zombie).
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + self.stop_timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.try_status()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "mtcp-tests: `{}` (pid {pid}) ignored SIGTERM for {:?}, sending SIGKILL",
            self.desc, self.stop_timeout
        );
        self.child.kill().context("SIGKILL")?;
        let s = self.child.wait().context("waitpid after SIGKILL")?;
        self.status = Some(s);
        Ok(s)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("mtcp-tests: stopping `{}`: {e:#}", self.desc);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client output
// ---------------------------------------------------------------------------------------

/// Parses `key=value` tokens of a summary line (tokens without `=` are ignored).
pub fn parse_kv(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The key=value pairs of the last stdout line that starts with `mode=` (the summary line
/// every `mtcp-client` subcommand prints).
pub fn parse_summary(stdout: &[u8]) -> Result<HashMap<String, String>> {
    let s = String::from_utf8_lossy(stdout);
    let line = s
        .lines()
        .rev()
        .find(|l| l.starts_with("mode="))
        .ok_or_else(|| anyhow!("no summary line (mode=...) in output: {s:?}"))?;
    Ok(parse_kv(line))
}

/// Fetches and parses `key` from a parsed summary.
pub fn kv_get<T: std::str::FromStr>(kv: &HashMap<String, String>, key: &str) -> Result<T> {
    let v = kv
        .get(key)
        .ok_or_else(|| anyhow!("summary has no {key}=: {kv:?}"))?;
    v.parse()
        .map_err(|_| anyhow!("summary value {key}={v} does not parse"))
}

/// A file the workspace build put beside this test's executable (`target/<profile>/NAME`:
/// the echo example, libmtcpshim.so), or the path in `$env_var`. `ci/test.sh` builds the whole
/// workspace before the tests, so these exist.
pub fn built_artifact(name: &str, env_var: &str) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return std::path::PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --release, see ci/test.sh), or set {env_var}",
        p.display()
    );
    p
}

/// Waits until a server's stdout contains `text` anywhere in a line (Redis prefixes its log
/// lines with pid and time, so a prefix match cannot be used); fails if it exits first.
pub fn wait_stdout_contains(
    server: &mut ServerProcess,
    text: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !server.stdout().contains(text) {
        if server.try_status()?.is_some() {
            bail!(
                "server exited before printing {text:?}\n{}",
                server.diagnostics()
            );
        }
        if Instant::now() >= deadline {
            bail!("no {text:?} within {timeout:?}\n{}", server.diagnostics());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
