//! Worker processes forked after listen(), under the shim: nginx in its default shape (a master
//! that listens and forks workers that accept on the inherited listener) and a Python pre-fork
//! server, over net_af_packet, each worker with a stack of its own and the flows split between
//! them (docs/architecture.md, "Worker processes").
//!
//! nginx, with Debian's defaults for files (`sendfile on; tcp_nopush on;`: TCP_CORK around each
//! response), serves files named by their SHA-256 (tests/py/check_clients.py `static`, which checks
//! every body and notes the worker that answered, nginx's `$pid`): with 1, 2 and 4 workers,
//! accept_mutex on and off, `listen ... reuseport`, keep-alive and a new connection per
//! request; the replies are the same as the kernel's nginx gives. A worker killed with SIGKILL
//! is respawned by the master, the connections of the other workers go on undisturbed, and the
//! new worker takes its share of new connections; `nginx -s reload` starts new workers while
//! the old ones finish, again without disturbing a connection the old workers do not close,
//! also with nginx as a daemon (its default).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mtcp_tests::redis::{py_file, TempDir};
use mtcp_tests::{ServerProcess, Side};

const PYTHON: &str = "/usr/bin/python3";

/// A side (kernel or shim) and its check client.
struct Bed(Side);

impl std::ops::Deref for Bed {
    type Target = Side;
    fn deref(&self) -> &Side {
        &self.0
    }
}

impl Bed {
    fn new(shim: bool) -> Bed {
        Bed(Side::new(shim, 24000))
    }

    fn side(&self) -> &'static str {
        self.0.name()
    }

    /// The check client, started.
    fn client(&self, args: &[String]) -> Child {
        let mut all = vec![
            "120".to_string(),
            PYTHON.into(),
            py_file("check_clients.py"),
        ];
        all.push(args[0].clone());
        all.push(self.addr());
        all.push(self.port.to_string());
        all.extend(args[1..].iter().cloned());
        self.cns
            .command("timeout")
            .args(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the client starts")
    }

    /// The Python server `script` (tests/py) with the port and `args`, started (it prints
    /// `ready`).
    fn python_server(&self, script: &str, args: &[&str]) -> ServerProcess {
        let mut argv = vec![PYTHON.to_string(), py_file(script), self.port.to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        self.server(&argv)
            .ready_prefix("ready")
            .spawn()
            .expect("the server starts")
    }

    /// Waits until `GET /index.txt` is answered from the client's namespace (nginx's log is
    /// `error_log`).
    fn wait_serving(&self, server: &mut ServerProcess, error_log: &Path) {
        let url = format!("http://{}:{}/index.txt", self.addr(), self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self
                .cns
                .exec("curl", ["-sf", "-o", "/dev/null", "-m", "2", &url])
                .expect("curl runs");
            if out.status.success() {
                return;
            }

            assert!(
                Instant::now() < deadline && server.try_status().expect("status").is_none(),
                "{}: nginx does not answer {url}\n{}\n{}",
                self.side(),
                server.diagnostics(),
                std::fs::read_to_string(error_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A counter of process `pid`'s stack (`mtcprun stats`), if its stack runs.
fn stack_stat(pid: &str, name: &str) -> Option<u64> {
    let bin = mtcp_tests::built_artifact("mtcprun", "MTCPRUN_BIN");
    let out = Command::new(bin).args(["stats", pid]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
    })
}

/// The children of process `pid`.
fn children(pid: u32) -> BTreeSet<String> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Waits until each of `pids` runs a stack (under the shim, a worker starts its own when it
/// first serves its listener) and the workers split the flows between them: each takes the new
/// connections of some of the 32 buckets, together all of them.
fn wait_stacks(pids: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shares: Vec<Option<u64>> = pids
            .iter()
            .map(|p| stack_stat(p, "steer_buckets"))
            .collect();
        if shares.iter().all(|s| s.is_some_and(|n| n > 0))
            && shares.iter().flatten().sum::<u64>() == 32
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the flows are not split between {pids:?}: {shares:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One client thread's line of check_clients.py `static`.
#[derive(Debug)]
struct ConnLine {
    pid: String,
    ok: bool,
    /// The workers whose kept-alive connections this client lost (and retried).
    lost: Vec<String>,
}

fn parse_lines(out: &str) -> Vec<ConnLine> {
    out.lines()
        .filter(|l| l.starts_with("conn "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let lost = match w.iter().position(|&x| x == "lost") {
                Some(i) if w[i + 1] != "-" => w[i + 1].split(',').map(String::from).collect(),
                _ => Vec::new(),
            };
            ConnLine {
                pid: w[3].to_string(),
                ok: w[4] == "ok",
                lost,
            }
        })
        .collect()
}

fn finish(client: Child, what: &str, server: &mut ServerProcess) -> (String, Vec<ConnLine>) {
    finish_after(client, String::new(), what, server)
}

/// As `finish`, for a client whose first lines (`head`) were read already.
fn finish_after(
    client: Child,
    head: String,
    what: &str,
    server: &mut ServerProcess,
) -> (String, Vec<ConnLine>) {
    let out: Output = client.wait_with_output().expect("client output");
    let text = head + &String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what}: the client failed ({}):\n{text}{err}\n{}",
        out.status,
        server.diagnostics()
    );
    let summary = text
        .lines()
        .find(|l| l.starts_with("ok "))
        .unwrap_or_else(|| panic!("{what}: no summary in {text}"))
        .to_string();
    (summary, parse_lines(&text))
}

/// The check client's files (and their index) in `www`.
fn make_docroot(www: &Path) {
    let made = Command::new(PYTHON)
        .args([
            py_file("check_clients.py"),
            "make_docroot".into(),
            www.display().to_string(),
            "24".into(),
        ])
        .status()
        .expect("python3 runs");
    assert!(made.success(), "make_docroot");
}

/// nginx with its configuration and files in a temporary directory.
struct Nginx {
    dir: TempDir,
    server: ServerProcess,
}

fn nginx_conf(dir: &Path, port: u16, workers: u32, accept_mutex: bool, reuseport: bool) -> String {
    format!(
        "user root;\nworker_processes {workers};\ndaemon off;\nerror_log {d}/error.log info;\n\
         pid {d}/nginx.pid;\nevents {{ worker_connections 1024; accept_mutex {am}; }}\n\
         http {{\n  access_log off;\n  default_type application/octet-stream;\n\
           sendfile on;\n  tcp_nopush on;\n\
         client_body_temp_path {d}/tmp;\n  server {{\n    listen {port}{rp};\n    root {d}/www;\n\
             keepalive_requests 100000;\n    keepalive_timeout 60s;\n\
             add_header X-Pid $pid always;\n  }}\n}}\n",
        d = dir.display(),
        am = if accept_mutex { "on" } else { "off" },
        rp = if reuseport { " reuseport" } else { "" },
    )
}

/// An nginx directory: `www` with the check client's files, `tmp`, and the configuration
/// `conf` makes for the directory in `nginx.conf`.
fn nginx_dir(conf: impl FnOnce(&Path) -> String) -> TempDir {
    let dir = TempDir::new("nginx");
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("docroot");
    std::fs::create_dir_all(dir.path().join("tmp")).expect("temp dir");
    make_docroot(&www);
    std::fs::write(dir.path().join("nginx.conf"), conf(dir.path())).expect("nginx.conf");
    dir
}

impl Nginx {
    fn start(bed: &Bed, workers: u32, accept_mutex: bool, reuseport: bool) -> Nginx {
        Nginx::start_with(bed, |dir| {
            nginx_conf(dir, bed.port, workers, accept_mutex, reuseport)
        })
    }

    /// nginx with the configuration `conf` makes for its directory (which holds `www`, the
    /// check client's files).
    fn start_with(bed: &Bed, conf: impl FnOnce(&Path) -> String) -> Nginx {
        Nginx::start_with_env(bed, &[], conf)
    }

    /// The same, with more environment for nginx (`MTCP_*` settings).
    fn start_with_env(
        bed: &Bed,
        env: &[(&str, &str)],
        conf: impl FnOnce(&Path) -> String,
    ) -> Nginx {
        let dir = nginx_dir(conf);
        let conf = dir.path().join("nginx.conf");
        let argv: Vec<String> = [
            "nginx",
            "-c",
            &conf.display().to_string(),
            "-p",
            &dir.path().display().to_string(),
            "-e",
            &dir.path().join("error.log").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut b = bed.server(&argv).no_ready_line();
        for (k, v) in env {
            b = b.env(k, v);
        }
        let mut server = b.spawn().expect("nginx starts");
        bed.wait_serving(&mut server, &dir.path().join("error.log"));
        Nginx { dir, server }
    }

    /// The master's children (its workers), by pid.
    fn workers(&self) -> BTreeSet<String> {
        children(self.server.pid())
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// One nginx configuration, kernel and shim: every body right, the same replies, and (with
/// accept_mutex off and several workers) the connections spread over more than one worker.
fn nginx_serves(workers: u32, accept_mutex: bool, reuseport: bool, mode: &str) {
    let mut summaries = Vec::new();
    for shim in [false, true] {
        let bed = Bed::new(shim);
        let mut ng = Nginx::start(&bed, workers, accept_mutex, reuseport);
        if shim && !accept_mutex {
            // Every worker runs its stack before the load (with accept_mutex on, a worker
            // starts its stack only once it first holds the mutex).
            wait_stacks(&ng.workers());
        }
        let what = format!(
            "nginx {workers} workers, accept_mutex {accept_mutex}, reuseport {reuseport}, \
             {mode}, on the {}",
            bed.side()
        );
        let args: Vec<String> = ["static", "32", "40", mode]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let client = bed.client(&args);
        let (summary, lines) = finish(client, &what, &mut ng.server);
        let pids: BTreeSet<&str> = lines.iter().map(|l| l.pid.as_str()).collect();
        eprintln!("{what}: {summary}; answered by {pids:?}");
        assert!(
            lines.iter().all(|l| l.ok && l.lost.is_empty()),
            "{what}: {lines:?}"
        );
        if workers > 1 && !accept_mutex && mode == "keepalive" {
            assert!(
                pids.len() > 1,
                "{what}: every connection went to one worker: {pids:?}\n{}",
                ng.error_log()
            );
        }
        summaries.push(summary);
    }
    assert_eq!(summaries[0], summaries[1], "the replies differ");
}

#[test]
fn nginx_one_worker() {
    nginx_serves(1, false, false, "keepalive");
}

#[test]
fn nginx_two_workers() {
    nginx_serves(2, false, false, "keepalive");
    nginx_serves(2, false, false, "close");
}

#[test]
fn nginx_four_workers_accept_mutex_on() {
    nginx_serves(4, true, false, "keepalive");
}

#[test]
fn nginx_two_workers_reuseport() {
    nginx_serves(2, false, true, "keepalive");
}

/// Runs a slow keep-alive load (32 connections, 150 requests each, 20 ms apart: ~3 s) and
/// `during` it, once every connection was answered; returns the client's lines.
fn under_load(
    bed: &Bed,
    ng: &mut Nginx,
    what: &str,
    during: impl FnOnce(&mut Nginx),
) -> Vec<ConnLine> {
    let (client, mut reader, head) = start_load(
        bed,
        &["static", "32", "150", "keepalive", "20"],
        String::new,
    );
    during(ng);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).expect("client output");
    let report = ng
        .workers()
        .iter()
        .map(|p| {
            let stats = [
                "conns_opened",
                "steered_away",
                "tcp_rst_sent",
                "tcp_retransmits",
            ]
            .map(|c| format!("{c} {:?}", stack_stat(p, c)));
            format!("worker {p}: {}", stats.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n");
    finish_after(
        client,
        head + &rest,
        &format!("{what}\n{report}"),
        &mut ng.server,
    )
    .1
}

#[test]
fn a_killed_worker_is_respawned_and_disturbs_no_other() {
    let bed = Bed::new(true);
    let mut ng = Nginx::start(&bed, 2, false, false);
    let before = ng.workers();
    assert_eq!(before.len(), 2, "{before:?}");
    wait_stacks(&before);
    let victim = before.iter().next().expect("a worker").clone();
    let what = format!("kill -9 {victim} of {before:?}");
    let lines = under_load(&bed, &mut ng, &what, |ng| {
        let rc = Command::new("kill")
            .args(["-KILL", &victim])
            .status()
            .expect("kill");
        assert!(rc.success());
        // The master respawns it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ng.workers().len() < 2 || ng.workers().contains(&victim) {
            assert!(
                Instant::now() < deadline,
                "no worker respawned: {:?}",
                ng.workers()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let after = ng.workers();
    let survivor: Vec<&String> = before.iter().filter(|p| **p != victim).collect();
    for l in &lines {
        assert!(l.ok, "{lines:?}");
        assert!(
            l.lost.iter().all(|p| *p == victim),
            "a connection of a worker that was not killed was lost: {l:?} (killed {victim}, \
             survivor {survivor:?})"
        );
    }
    assert!(
        lines.iter().any(|l| !l.lost.is_empty()),
        "no connection of the killed worker was lost: {lines:?}"
    );
    // New connections: the respawned worker takes its share.
    let args: Vec<String> = ["static", "32", "5", "keepalive"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (_, lines) = finish(bed.client(&args), "after the respawn", &mut ng.server);
    let pids: BTreeSet<String> = lines.iter().map(|l| l.pid.clone()).collect();
    let new: Vec<&String> = after.iter().filter(|p| !before.contains(*p)).collect();
    assert!(
        new.iter().all(|p| pids.contains(*p)),
        "the respawned worker {new:?} answered none of {pids:?}\n{}",
        ng.error_log()
    );
}

/// The check client with `args`, once every client thread had its first reply: the client,
/// its output from there on, and its lines so far (`log`: the server's, for a failure).
fn start_load(
    bed: &Bed,
    args: &[&str],
    log: impl Fn() -> String,
) -> (Child, std::io::BufReader<std::process::ChildStdout>, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut client = bed.client(&args);
    let mut reader = std::io::BufReader::new(client.stdout.take().expect("piped"));
    let head = until_started(&mut reader);
    assert!(
        head.ends_with("started\n"),
        "the load did not start: {head}\n{}",
        log()
    );
    (client, reader, head)
}

/// The check client's lines up to `started` (every client thread had its first reply), or
/// all it printed if it ended before.
fn until_started(reader: &mut impl std::io::BufRead) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("client output") == 0 {
            break;
        }
        head += &line;
        if line.trim() == "started" {
            break;
        }
    }
    head
}

/// `nginx -s reload` of the nginx in `dir` (its nginx.conf), then waits until none of the
/// `old` workers runs and two new ones do (`workers`: the master's children now; `log`: its
/// error log, for a failure).
fn reload(
    dir: &Path,
    old: &BTreeSet<String>,
    workers: impl Fn() -> BTreeSet<String>,
    log: impl Fn() -> String,
) {
    let rc = Command::new("nginx")
        .args(["-s", "reload", "-c"])
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(dir)
        .output()
        .expect("nginx -s reload");
    assert!(
        rc.status.success(),
        "{}",
        String::from_utf8_lossy(&rc.stderr)
    );
    // The old workers exit once their connections are done; new ones serve.
    let deadline = Instant::now() + Duration::from_secs(30);
    while workers().iter().any(|p| old.contains(p)) || workers().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "old workers {old:?} still there: {:?}\n{}",
            workers(),
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reload_starts_new_workers_and_the_old_ones_finish() {
    let bed = Bed::new(true);
    let mut ng = Nginx::start(&bed, 2, false, false);
    let old = ng.workers();
    wait_stacks(&old);
    let lines = under_load(&bed, &mut ng, "reload", |ng| {
        reload(ng.dir.path(), &old, || ng.workers(), || ng.error_log());
    });
    for l in &lines {
        assert!(l.ok, "{lines:?}");
        // nginx closes an old worker's idle kept-alive connections (on the kernel too); no
        // connection of a new worker is ever lost.
        assert!(
            l.lost.iter().all(|p| old.contains(p)),
            "{l:?} (old: {old:?})"
        );
    }
    let new = ng.workers();
    let served: BTreeSet<String> = lines.iter().map(|l| l.pid.clone()).collect();
    assert!(
        served.iter().any(|p| new.contains(p)),
        "no new worker {new:?} answered: {served:?}"
    );
}

/// A worker that stops listening leaves the connections its listener held, never accepted, to
/// the workers that still listen, as Linux's one listening socket does: a pre-fork server's
/// child that never accepts closes its listener while 24 connections wait, each with its
/// request sent; the other child answers every one, on the kernel and under the shim (where
/// the closing child's stack held its share and hands it over).
#[test]
fn connections_a_worker_held_when_it_stopped_listening_are_served_by_another() {
    use std::io::BufRead;
    for shim in [false, true] {
        let bed = Bed::new(shim);
        let mut server = bed.python_server("handover_server.py", &[]);
        let out = server.stdout();
        let pid_of = |role: &str| -> String {
            out.lines()
                .find_map(|l| l.strip_prefix(role).map(|p| p.trim().to_string()))
                .unwrap_or_else(|| panic!("no {role} in {out}"))
        };
        let (quitter, keeper) = (pid_of("quitter "), pid_of("keeper "));
        if shim {
            wait_stacks(&children(server.pid()));
        }
        let mut client = bed
            .cns
            .command("timeout")
            .args(["60", PYTHON])
            .arg(py_file("handover_client.py"))
            .args([bed.addr(), bed.port.to_string(), "24".into()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the client starts");
        let mut reader = std::io::BufReader::new(client.stdout.take().expect("piped"));
        let mut head = String::new();
        reader.read_line(&mut head).expect("client output");
        assert_eq!(head, "sent\n", "{}", server.diagnostics());
        let rc = Command::new("kill")
            .args(["-USR1", &quitter])
            .status()
            .expect("kill");
        assert!(rc.success());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut reader, &mut rest).expect("client output");
        let status = client.wait().expect("the client ends");
        let handed = ["conns_handed_over", "conns_taken_over", "handover_resets"]
            .map(|c| (stack_stat(&quitter, c), stack_stat(&keeper, c)));
        assert!(
            status.success(),
            "{}: {rest}\n(quitter, keeper): {handed:?}\n{}",
            bed.side(),
            server.diagnostics()
        );
        if shim {
            let (given, _) = handed[0];
            let (_, taken) = handed[1];
            assert!(
                given.is_some_and(|n| n > 0) && given == taken,
                "the quitter's connections were not handed over: {handed:?}"
            );
        }
    }
}

/// A worker whose application does not accept (it keeps its listener open but out of its
/// epoll set, as an nginx worker without the accept mutex does) leaves the connections of its
/// share to the worker that accepts, as Linux's one accept queue does: a pre-fork server's
/// child that looks at its listener once and never again, the other child accepting; 24
/// connections, each with its request sent, all answered, on the kernel and under the shim
/// (where the idle child's stack stops taking new connections after a second without an
/// accept and hands over what its listener held).
#[test]
fn connections_of_a_worker_that_does_not_accept_are_served_by_another() {
    for shim in [false, true] {
        let bed = Bed::new(shim);
        let mut server = bed.python_server("handover_server.py", &["idle"]);
        if shim {
            wait_stacks(&children(server.pid()));
        }
        let out = bed
            .cns
            .command("timeout")
            .args(["60", PYTHON])
            .arg(py_file("handover_client.py"))
            .args([bed.addr(), bed.port.to_string(), "24".into()])
            .output()
            .expect("the client runs");
        assert!(
            out.status.success(),
            "{}: {}\n{}",
            bed.side(),
            String::from_utf8_lossy(&out.stdout),
            server.diagnostics()
        );
    }
}

/// A pre-fork server whose children wait in select() on the listener, with no timeout, then
/// accept (gunicorn's sync workers): after two idle seconds, both children still serve, every
/// byte comes back. (A child blocked in select() on its listener accepts there: under the shim
/// it keeps its share of the flows, which a child idle past a second would give away.)
#[test]
fn python_prefork_server_waiting_in_select() {
    prefork_serves(&["2", "select"], Some(Duration::from_secs(2)));
}

/// A pre-fork server in Python (listen, fork 2 children, each a blocking accept loop that
/// echoes): both children serve, every byte comes back.
#[test]
fn python_prefork_server() {
    prefork_serves(&["2"], None);
}

/// tests/py/prefork_server.py with `args` (two children), idle for `idle` once its children
/// run (longer than a worker may go without accepting before it gives its flows away:
/// shim/src/sockets/mod.rs, ACCEPT_IDLE), then 16 echo clients: both children serve, the
/// replies are the same as on the kernel.
fn prefork_serves(args: &[&str], idle: Option<Duration>) {
    let mut summaries = Vec::new();
    for shim in [false, true] {
        let bed = Bed::new(shim);
        let mut server = bed.python_server("prefork_server.py", args);
        if shim {
            // Each child starts its stack in its first accept (or wait on the listener).
            let kids = children(server.pid());
            assert_eq!(kids.len(), 2, "{kids:?}");
            wait_stacks(&kids);
        }
        if let Some(d) = idle {
            std::thread::sleep(d);
        }
        let client: Vec<String> = ["echo", "16", "50"].iter().map(|s| s.to_string()).collect();
        let (summary, _) = finish(bed.client(&client), "prefork", &mut server);
        eprintln!("prefork {args:?} on the {}: {summary}", bed.side());
        let served = server.stdout();
        let children: BTreeSet<&str> = served
            .lines()
            .filter_map(|l| l.strip_prefix("served by "))
            .collect();
        assert!(children.len() == 2, "{}: {served}", bed.side());
        summaries.push(summary);
    }
    assert_eq!(summaries[0], summaries[1]);
}

/// gunicorn with 2 sync workers (a pre-fork WSGI server: the arbiter listens, its workers
/// accept): HTTP bodies of 0 to 70,000 bytes, a connection per request (sync workers close
/// after each response), the same replies as on the kernel.
#[test]
fn gunicorn_sync_workers() {
    let mut summaries = Vec::new();
    for shim in [false, true] {
        let bed = Bed::new(shim);
        let argv: Vec<String> = [
            "/usr/bin/gunicorn",
            "--workers",
            "2",
            "--worker-class",
            "sync",
            "--bind",
            &format!("0.0.0.0:{}", bed.port),
            "--chdir",
            &format!("{}/py", env!("CARGO_MANIFEST_DIR")),
            "wsgi_app:app",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut server = bed
            .server(&argv)
            .no_ready_line()
            .spawn()
            .expect("gunicorn starts");
        // Its workers, each with its stack (under the shim) once it serves.
        let deadline = Instant::now() + Duration::from_secs(30);
        while children(server.pid()).len() < 2 {
            assert!(
                Instant::now() < deadline,
                "gunicorn started no workers\n{}",
                server.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if shim {
            wait_stacks(&children(server.pid()));
        }
        let args: Vec<String> = ["http", "16", "25", "close"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (summary, _) = finish(bed.client(&args), "gunicorn", &mut server);
        eprintln!("gunicorn on the {}: {summary}", bed.side());
        summaries.push(summary);
    }
    assert_eq!(summaries[0], summaries[1]);
}

/// nginx's workers proxy every request to an upstream through their own stacks: two workers
/// under the shim sharing the device, `proxy_pass` to a kernel HTTP server in the clients'
/// namespace, a new upstream connection per request. Each worker picks the local port of its
/// upstream connection so that the replies come back to its own stack (steer.rs): every body
/// is right, both workers answer, and the upstream sees every connection come from the
/// stack's address.
#[test]
fn nginx_workers_proxy_through_their_own_stacks() {
    let bed = Bed::new(true);
    let upstream_port = bed.port + 1000;
    let upstream = format!("{}:{upstream_port}", bed.subnet.addr(1));
    let up_dir = TempDir::new("upstream");
    make_docroot(up_dir.path());
    let log = up_dir.path().join("peers.log");
    let up = ServerProcess::builder_in(&bed.cns, PYTHON)
        .args([
            py_file("http_upstream.py"),
            bed.subnet.addr(1).to_string(),
            upstream_port.to_string(),
            up_dir.path().display().to_string(),
            log.display().to_string(),
        ])
        .ready_prefix("serving")
        .spawn()
        .expect("the upstream starts");
    let mut ng = Nginx::start_with(&bed, |dir| {
        format!(
            "user root;\nworker_processes 2;\ndaemon off;\nerror_log {d}/error.log info;\n\
             pid {d}/nginx.pid;\nevents {{ worker_connections 1024; accept_mutex off; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n\
               proxy_temp_path {d}/tmp;\n  server {{\n    listen {port};\n\
                 location / {{ proxy_pass http://{upstream}; }}\n\
                 add_header X-Pid $pid always;\n  }}\n}}\n",
            d = dir.display(),
            port = bed.port,
        )
    });

    wait_stacks(&ng.workers());
    let args: Vec<String> = ["static", "32", "20", "close"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (summary, lines) = finish(
        bed.client(&args),
        "nginx proxying through its workers' stacks",
        &mut ng.server,
    );
    let pids: BTreeSet<&str> = lines.iter().map(|l| l.pid.as_str()).collect();
    eprintln!("nginx proxy: {summary}; answered by {pids:?}");
    assert!(lines.iter().all(|l| l.ok), "{lines:?}\n{}", ng.error_log());
    assert_eq!(pids.len(), 2, "{pids:?}");
    drop(up.stop());
    let peers = std::fs::read_to_string(&log).expect("the upstream's log");
    let stack = bed.addr();
    let from: BTreeSet<&str> = peers
        .lines()
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert!(
        peers.lines().count() >= 32 * 20,
        "one upstream connection per request"
    );
    assert_eq!(from, BTreeSet::from([stack.as_str()]), "{peers}");
}

/// An nginx master that runs as a daemon (nginx's default: the process that listens forks the
/// master and exits), known by its pid file; stopped (SIGTERM, by that pid) when dropped.
struct Daemon {
    master: u32,
    dir: TempDir,
}

impl Daemon {
    fn start(bed: &Bed, workers: u32) -> Daemon {
        let dir = nginx_dir(|d| {
            nginx_conf(d, bed.port, workers, false, false).replace("daemon off;", "daemon on;")
        });
        let conf_file = dir.path().join("nginx.conf");
        let argv: Vec<String> = [
            "nginx".to_string(),
            "-c".into(),
            conf_file.display().to_string(),
            "-p".into(),
            dir.path().display().to_string(),
        ]
        .to_vec();
        let mut launcher = bed
            .server(&argv)
            .no_ready_line()
            .spawn()
            .expect("nginx starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = launcher.try_status().expect("status") {
                break s;
            }
            assert!(Instant::now() < deadline, "nginx never became a daemon");
            std::thread::sleep(Duration::from_millis(20));
        };
        let pid_file = dir.path().join("nginx.pid");
        let master = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let daemon = Daemon {
            master: master.unwrap_or(0),
            dir,
        };
        assert!(
            status.success() && daemon.master != 0,
            "nginx as a daemon: {status}, no pid in {}\n{}\n{}",
            pid_file.display(),
            launcher.diagnostics(),
            daemon.error_log()
        );
        daemon
    }

    fn workers(&self) -> BTreeSet<String> {
        children(self.master)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.master == 0 {
            return;
        }
        // SAFETY: a signal to the master this test started (its pid file names it).
        unsafe { libc::kill(self.master as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(self.master as libc::pid_t, 0) } == 0 && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// nginx as users start it by default, a daemon: the process that listened (and made the page
/// the workers share) is gone before any worker runs a stack. Its workers serve, and `nginx -s
/// reload` replaces them while clients open a new connection for every request: every request
/// is answered (a SYN that reaches an old worker which stopped listening is left to the new
/// ones, whose parent, the master, lives on), and new workers answer some.
#[test]
fn nginx_as_a_daemon_serves_and_reloads_without_refusing_a_connection() {
    let bed = Bed::new(true);
    let ng = Daemon::start(&bed, 2);
    let old = ng.workers();
    assert_eq!(old.len(), 2, "workers of {}: {old:?}", ng.master);
    let (client, mut reader, head) =
        start_load(&bed, &["static", "8", "150", "close", "10"], || {
            ng.error_log()
        });
    wait_stacks(&old);
    reload(ng.dir.path(), &old, || ng.workers(), || ng.error_log());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).expect("client output");
    let out = client.wait_with_output().expect("client output");
    let text = head + &rest;
    assert!(
        out.status.success(),
        "the client failed ({}):\n{text}{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        ng.error_log()
    );
    let new = ng.workers();
    let served: BTreeSet<String> = parse_lines(&text).iter().map(|l| l.pid.clone()).collect();
    assert!(
        served.iter().any(|p| new.contains(p)),
        "no new worker {new:?} answered: {served:?}\n{text}"
    );
}

/// One client's light load on `bed`'s nginx: `requests` GETs of a missing file (a one-segment
/// 404) on 16 keep-alive connections, each after a pause of 0-`pause_us` µs drawn at random.
fn light_load(bed: &Bed, requests: u32, pause_us: u32) {
    const CLIENT: &str = r#"
import random, socket, sys, time
host, port, requests, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
conns = [socket.create_connection((host, port)) for _ in range(16)]
for s in conns:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
clock = time.perf_counter_ns
for _ in range(requests):
    end = clock() + random.randint(0, pause) * 1000
    while clock() < end:
        pass
    s = random.choice(conns)
    s.sendall(b"GET /missing HTTP/1.1\r\nHost: a\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(4096)
    head, body = got.split(b"\r\n\r\n", 1)
    length = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    want = int(length[0].split(b":")[1])
    while len(body) < want:
        body += s.recv(4096)
print("served")
"#;
    let (port, n, pause) = (
        bed.port.to_string(),
        requests.to_string(),
        pause_us.to_string(),
    );
    let out = bed
        .cns
        .exec(PYTHON, ["-c", CLIENT, &bed.addr(), &port, &n, &pause])
        .expect("the client runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("served"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Light load on several workers costs about what it costs one: a frame wakes only the worker
/// it is for (each worker's wake-up filter keeps that worker's buckets, as its packet sockets
/// do), and only work starts a spin (MTCP_SPIN_US). (With every worker woken by every frame and
/// a spin after every wake-up, 4 workers spent 2.6 times one worker's CPU per request here,
/// and slept ~3.6 times a request.) One client's requests on 16 keep-alive connections, each
/// after a pause of 0-200 µs drawn at random, to nginx with 1 and then 4 workers.
#[test]
fn idle_workers_do_not_spin_for_another_workers_requests() {
    let per_request = |workers: u32| -> (f64, u64) {
        let bed = Bed::new(true);
        let ng = Nginx::start(&bed, workers, false, false);
        let pids = ng.workers();
        wait_stacks(&pids);
        let cpu = || -> u64 {
            pids.iter()
                .map(|p| mtcp_tests::cpu_ns(p.parse().unwrap()))
                .sum()
        };
        let sleeps = || -> u64 {
            pids.iter()
                .map(|p| stack_stat(p, "sleeps").expect("a stack"))
                .sum()
        };
        let (before, slept) = (cpu(), sleeps());
        light_load(&bed, 5000, 200);
        let us = (cpu() - before) as f64 / 1e3 / 5000.0;
        let slept = sleeps() - slept;
        eprintln!("nginx, {workers} workers: {us:.1} µs of CPU a request, {slept} sleeps");
        (us, slept)
    };
    let ((one, _), (four, slept)) = (per_request(1), per_request(4));
    assert!(
        four < 2.0 * one,
        "4 workers spent {four:.1} µs of CPU a request, 1 worker {one:.1}"
    );
    // Each request wakes the worker it is for (its wake-up's filter keeps that worker's
    // buckets), not the four.
    assert!(
        slept < 2 * 5000,
        "4 workers slept {slept} times for 5,000 requests"
    );
}

/// A file longer than one segment, served with Debian's `sendfile on; tcp_nopush on;`
/// (TCP_CORK around each response, no TCP_NODELAY), one request at a time on a keep-alive
/// connection: each response arrives whole without waiting for the client's delayed ACK. Its
/// last, partial segment follows the full one at once when the cork comes off, as Linux's
/// Nagle (Minshall's form) lets it; held until the full segment was acknowledged, a quarter
/// of the responses took 40 ms. The cork's two setsockopt calls a response are the shim's
/// alone: none reaches the kernel (strace; on the kernel, the same nginx's reach it).
#[test]
fn a_response_longer_than_a_segment_does_not_wait_for_an_ack() {
    const GETS: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
clock, slowest = time.perf_counter_ns, 0
for _ in range(int(sys.argv[3])):
    t0 = clock()
    s.sendall(b"GET /index.txt HTTP/1.1\r\nHost: a\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    head, body = got.split(b"\r\n\r\n", 1)
    length = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    want = int(length[0].split(b":")[1])
    assert want > 1460, want
    while len(body) < want:
        body += s.recv(65536)
    slowest = max(slowest, (clock() - t0) // 1000)
print("slowest", slowest)
"#;
    // The client's GETs to `bed`'s nginx (1 worker): the slowest response (µs), and what strace
    // saw of the worker's setsockopt calls during 20 more.
    let serve = |bed: &Bed| -> (u64, String) {
        let ng = Nginx::start(bed, 1, false, false);
        let workers = ng.workers();
        if bed.side() == "shim" {
            wait_stacks(&workers);
        }
        let gets = |n: &str| {
            bed.cns
                .exec(PYTHON, ["-c", GETS, &bed.addr(), &bed.port.to_string(), n])
                .expect("the client runs")
        };
        let out = gets("300");
        let text = String::from_utf8_lossy(&out.stdout);
        let slowest: u64 = text
            .trim()
            .strip_prefix("slowest ")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
        let pids: Vec<u32> = workers.iter().map(|p| p.parse().unwrap()).collect();
        let file = ng.dir.path().join("strace.txt");
        let (trace, out) =
            mtcp_tests::strace::traced(&pids, &["-e", "trace=setsockopt"], &file, || gets("20"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (slowest, trace)
    };
    // nginx corks each response: on the kernel, strace sees it.
    let (_, kernel) = serve(&Bed::new(false));
    assert!(
        kernel.matches("TCP_CORK").count() >= 40,
        "nginx on the kernel did not cork its 20 responses:\n{kernel}"
    );
    let (slowest, shim) = serve(&Bed::new(true));
    assert!(
        slowest < 30_000,
        "a response took {slowest} µs (a delayed ACK is 40 ms)"
    );
    assert!(
        !shim.contains("TCP_CORK"),
        "TCP_CORK reached the kernel:\n{shim}"
    );
}

/// The spin after work (MTCP_SPIN_US) adapts to what it finds: with requests 0-1 ms apart,
/// where a 50 µs spin rarely catches the next one, a worker hardly spins, where a fixed spin
/// (MTCP_SPIN_ADAPT=off) polls the device some tens of times per request in vain (the stack's
/// `polls_idle`), and spends about the CPU of never spinning (printed: ~56 against ~112 µs a
/// request with the fixed spin on a quiet machine). One client's GETs on 16 keep-alive
/// connections, each after a pause of 0-1000 µs drawn at random, to nginx with 1 worker.
/// (The window's rules: `the_spin_window_follows_the_idle_stretches`.)
#[test]
fn the_spin_after_work_lasts_only_while_it_pays() {
    // Polls that found nothing, per request, and CPU µs per request, of the worker.
    let measure = |env: &[(&str, &str)]| -> f64 {
        let bed = Bed::new(true);
        let ng = Nginx::start_with_env(&bed, env, |dir| nginx_conf(dir, bed.port, 1, false, false));
        let pids = ng.workers();
        wait_stacks(&pids);
        let pid = pids.iter().next().expect("a worker").clone();
        let idle = || stack_stat(&pid, "polls_idle").expect("a stack");
        let (cpu, polls) = (mtcp_tests::cpu_ns(pid.parse().unwrap()), idle());
        light_load(&bed, 4000, 1000);
        let per = |v: u64| v as f64 / 4000.0;
        let (polls, cpu) = (
            per(idle() - polls),
            per(mtcp_tests::cpu_ns(pid.parse().unwrap()) - cpu) / 1e3,
        );
        eprintln!("{env:?}: {polls:.1} idle polls and {cpu:.1} µs of CPU a request");
        polls
    };
    let adapted = measure(&[]);
    let fixed = measure(&[("MTCP_SPIN_ADAPT", "off")]);
    assert!(
        fixed >= 10.0 && adapted < fixed / 4.0,
        "idle polls a request: {adapted:.1} adapted, {fixed:.1} with the fixed spin"
    );
}
