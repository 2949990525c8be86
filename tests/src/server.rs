//! Server processes under test ([`ServerProcess`], built by [`ServerBuilder`]): spawned with
//! their stdout and stderr captured, started once a ready line appears, stopped on drop
//! (SIGTERM, then SIGKILL) by the pid they were spawned with and no other.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::command::command_line;
use crate::{bail, Context, Netns, Result};

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
    wait_ready: bool,
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
    /// The server prints no ready line (memcached): `spawn` returns at once, and the caller
    /// waits for its own sign of readiness.
    pub fn no_ready_line(mut self) -> Self {
        self.wait_ready = false;
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
            self.wait_ready,
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
            wait_ready: true,
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
        Self::start(
            cmd,
            ready_prefix,
            timeout,
            Duration::from_secs(5),
            true,
            true,
        )
    }

    fn start(
        mut cmd: Command,
        ready_prefix: &str,
        ready_timeout: Duration,
        stop_timeout: Duration,
        pdeathsig: bool,
        wait_ready: bool,
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
        if wait_ready {
            sp.ready_line = sp
                .wait_stdout(ready_prefix, ready_timeout)
                .context("server did not become ready")?;
        }
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

/// CPU time (ns) the threads of process `pid` have run so far (/proc/PID/task/*/schedstat; a
/// thread that ended no longer counts).
pub fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
