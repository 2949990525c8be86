//! Debian's unmodified redis-server with its port served by the user-space stack over net_tap,
//! and a network namespace holding the tap's kernel side, where redis-cli and redis-benchmark
//! run. The server is started either with `LD_PRELOAD=libmtcpshim.so` and `MTCP_*` variables
//! ([`Launch::Preload`]) or through the `mtcprun` launcher ([`Launch::Mtcprun`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::{unique_ifname, wait_stdout_contains, Netns, ServerProcess, Subnet};

/// How redis-server is started.
pub enum Launch {
    /// `LD_PRELOAD=LIB MTCP_PORTS=.. MTCP_DEV=.. MTCP_ADDR=.. redis-server ...`
    Preload(PathBuf),
    /// `MTCPRUN --dev .. --addr .. --ports .. EXTRA... -- redis-server ...`
    Mtcprun { bin: PathBuf, extra: Vec<String> },
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `$TMPDIR/<tag>-<pid>-<n>`, created.
    pub fn new(tag: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("{tag}-{}-{}", std::process::id(), crate::next_id()));
        std::fs::create_dir_all(&p).expect("temporary directory");
        TempDir(p)
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

/// redis-server under the stack, and a namespace holding the tap's kernel side.
/// Field order is drop order: the server (and its tap) first, then the namespace.
pub struct RedisBed {
    pub server: ServerProcess,
    pub ns: Netns,
    pub subnet: Subnet,
    pub port: u16,
    pub dir: TempDir,
}

impl RedisBed {
    /// Starts redis-server bound to `bind` (`STACK` stands for the stack's address) and moves
    /// the tap into a fresh namespace once Redis listens.
    pub fn new(launch: Launch, bind: &str) -> RedisBed {
        let subnet = Subnet::allocate().expect("subnet");
        let ns = Netns::new().expect("netns");
        let tap = unique_ifname("r");
        // A port of its own per test (the kernel side of a wildcard listener is in the root
        // namespace), inside MTCP_PORTS.
        let port = 16000 + subnet.index();
        let dir = TempDir::new("mtcp-redis");
        let bind = bind.replace("STACK", &subnet.addr(2).to_string());
        let mut args = vec![
            "--port".to_string(),
            port.to_string(),
            "--save".into(),
            String::new(),
        ];
        args.extend(["--appendonly", "no", "--protected-mode", "no", "--dir"].map(String::from));
        args.push(dir.path().to_str().expect("utf-8 path").into());
        args.push("--bind".into());
        args.extend(bind.split_whitespace().map(String::from));
        let (dev, addr, ports) = (format!("tap:{tap}"), subnet.cidr(2), port.to_string());
        let builder = match launch {
            Launch::Preload(lib) => ServerProcess::builder("redis-server")
                .args(&args)
                .env("LD_PRELOAD", lib)
                .env("MTCP_PORTS", ports)
                .env("MTCP_DEV", dev)
                .env("MTCP_ADDR", addr),
            Launch::Mtcprun { bin, extra } => {
                let mut cmd = Command::new(bin);
                cmd.args(["--dev", &dev, "--addr", &addr, "--ports", &ports])
                    .args(extra)
                    .arg("--")
                    .arg("redis-server")
                    .args(&args);
                ServerProcess::builder_for(cmd)
            }
        };
        let mut server = builder
            .ready_prefix("")
            .spawn()
            .expect("redis-server starts");
        // Move the tap only once Redis listens: the port is started then (the netdev appears
        // earlier, during the EAL's probe, and must not leave the namespace before its start).
        wait_stdout_contains(
            &mut server,
            "Ready to accept connections",
            Duration::from_secs(30),
        )
        .expect("redis-server gets ready");
        ns.adopt_link(&tap, &subnet.cidr(1))
            .expect("tap moved into the namespace");
        RedisBed {
            server,
            ns,
            subnet,
            port,
            dir,
        }
    }

    pub fn stack_addr(&self) -> String {
        self.subnet.addr(2).to_string()
    }

    /// redis-cli in the namespace, against the stack's address.
    pub fn cli(&mut self, args: &[&str]) -> Output {
        let (h, p) = (self.stack_addr(), self.port.to_string());
        let mut all = vec!["-h", &h, "-p", &p];
        all.extend_from_slice(args);
        self.ns.exec("redis-cli", &all).expect("redis-cli runs")
    }

    /// redis-cli that must succeed; its stdout.
    pub fn cli_ok(&mut self, args: &[&str]) -> String {
        let out = self.cli(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {text}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.server.diagnostics()
        );
        text
    }

    /// Waits until the server answers PING through the stack.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.cli(&["ping"]);
            if out.stdout.starts_with(b"PONG") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no PONG through the stack: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.server.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
