//! Network namespaces ([`Netns`]): created with `lo` up, deleted on drop; commands and threads
//! run inside them, interfaces are moved into and configured in them.

use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::command::{command_line, ip, run_checked};
use crate::names::{cleanup_stale, next_id, NETNS_PREFIX};
use crate::{anyhow, bail, Context, Result};

static STALE_CLEANUP: Once = Once::new();

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
    pub(crate) fn configure_end(
        &self,
        ifname: &str,
        cidr: &str,
        offloads_required: bool,
    ) -> Result<()> {
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
