//! mtcp-client: kernel-socket TCP load/verification client and reference echo server.
//!
//! Run it inside a network namespace (`ip netns exec NS mtcp-client ...`). Every subcommand
//! prints exactly one summary line `mode=<sub> key=value ...` on stdout and exits 0 only if
//! every check passed; problems go to stderr, prefixed `mtcp-client <sub>:`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mtcp_tests::workload::{
    bulk_line, exit_code, hex, lat_summary, latency_rounds, subcommand, Args, BulkOpts,
    LatencyOpts, Rng, Stream,
};
use sha2::{Digest, Sha256};

const USAGE: &str = "\
usage: mtcp-client <subcommand> [--key value ...]
  conns   --addr IP:PORT [--conns 1000] [--msgs 100] [--size 64] [--threads 1]
          [--parallel-connects 128] [--timeout 120] [--seed 1]
  bulk    --addr IP:PORT [--bytes 1073741824] [--chunk 65536] [--stall-timeout 30] [--seed 1]
  burst   --addr IP:PORT [--conns 511] [--size 16] [--timeout 30]
  latency --addr IP:PORT [--count 20000] [--size 16] [--warmup 1000] [--timeout 10] [--pause-ms 0]
  rr      --addr IP:PORT [--conns 1] [--secs 5] [--size 16] [--threads 1] [--timeout 30]
  serve   --listen IP:PORT [--backlog 1024] [--exit-after SECS]
Each prints one line `mode=<sub> key=value ...` and exits non-zero on any mismatch.";

fn main() -> ExitCode {
    let (sub, args) = match subcommand(USAGE) {
        Ok(s) => s,
        Err(code) => return code,
    };
    raise_nofile();
    let r = Args::parse(&args).and_then(|a| match sub.as_str() {
        "conns" => cmd_conns(a),
        "bulk" => cmd_bulk(a),
        "burst" => cmd_burst(a),
        "latency" => cmd_latency(a),
        "rr" => cmd_rr(a),
        "serve" => cmd_serve(a),
        _ => Err(anyhow!("unknown subcommand {sub:?}\n{USAGE}")),
    });
    exit_code("mtcp-client", &sub, r)
}

/// Soft RLIMIT_NOFILE up to the hard limit (20000 on the project machines).
fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// Seed of connection `i`'s message stream.
fn conn_seed(base: u64, i: usize) -> u64 {
    base.wrapping_mul(0x1000_0000_01b3) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

// ---------------------------------------------------------------------------------------
// Raw sockets: non-blocking connect, listen, epoll
// ---------------------------------------------------------------------------------------

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data large enough for both families.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn new_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let fam = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2); the fd is owned immediately.
    let fd = unsafe {
        libc::socket(
            fam,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts a non-blocking connect. Returns the stream and whether it already completed.
fn start_connect(addr: &SocketAddr) -> io::Result<(TcpStream, bool)> {
    let fd = new_socket(addr)?;
    let (ss, len) = sockaddr(addr);
    // SAFETY: ss/len describe a valid sockaddr for this family.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    };
    let done = if rc == 0 {
        true
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        false
    };
    Ok((TcpStream::from(fd), done))
}

fn listen(addr: &SocketAddr, backlog: i32) -> Result<std::net::TcpListener> {
    let fd = new_socket(addr).context("socket")?;
    let one: libc::c_int = 1;
    let (ss, len) = sockaddr(addr);
    // SAFETY: valid fd, option pointer/length and sockaddr.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of_val(&one) as libc::socklen_t,
        );
        if libc::bind(
            fd.as_raw_fd(),
            &ss as *const _ as *const libc::sockaddr,
            len,
        ) != 0
        {
            return Err(io::Error::last_os_error()).with_context(|| format!("bind {addr}"));
        }
        if libc::listen(fd.as_raw_fd(), backlog) != 0 {
            return Err(io::Error::last_os_error()).context("listen");
        }
    }
    Ok(std::net::TcpListener::from(fd))
}

struct Epoll(OwnedFd);

const EIN: u32 = libc::EPOLLIN as u32;
const EOUT: u32 = libc::EPOLLOUT as u32;
const EERR: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

impl Epoll {
    fn new() -> Result<Epoll> {
        // SAFETY: epoll_create1; fd owned immediately.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1");
        }
        // SAFETY: fresh valid fd.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: valid epoll fd and event struct.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }
    fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }
    fn del(&self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
    }
    fn wait(&self, evs: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let ms = timeout.as_millis().min(1000) as i32;
        loop {
            // SAFETY: evs is a valid writable buffer of evs.len() events.
            let n = unsafe {
                libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), evs.len() as i32, ms)
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Failure classification
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fail {
    Refused,
    Reset,
    Timeout,
    Eof,
    Mismatch,
    Other,
}

fn classify(e: &io::Error) -> Fail {
    match e.kind() {
        ErrorKind::ConnectionRefused => Fail::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Fail::Reset
        }
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Fail::Timeout,
        _ => Fail::Other,
    }
}

#[derive(Default)]
struct Failures {
    list: Vec<(usize, Fail, String)>,
}

impl Failures {
    fn push(&mut self, conn: usize, kind: Fail, msg: String) {
        self.list.push((conn, kind, msg));
    }
    fn count(&self, kind: Fail) -> usize {
        self.list.iter().filter(|f| f.1 == kind).count()
    }
    fn report(&self, sub: &str) {
        for (conn, kind, msg) in self.list.iter().take(10) {
            eprintln!("mtcp-client {sub}: conn {conn}: {kind:?}: {msg}");
        }
        if self.list.len() > 10 {
            eprintln!(
                "mtcp-client {sub}: ... {} more failures",
                self.list.len() - 10
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connect phase
// ---------------------------------------------------------------------------------------

/// Opens `n` connections with at most `parallel` connects in flight (usize::MAX: fire all at
/// once). Returns one entry per connection: the stream or the failure.
fn connect_many(
    addr: &SocketAddr,
    n: usize,
    parallel: usize,
    deadline: Instant,
    first_index: usize,
    failures: &mut Failures,
) -> Result<Vec<Option<TcpStream>>> {
    let ep = Epoll::new()?;
    let mut slots: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut done = vec![false; n];
    let mut next = 0usize;
    let mut in_flight = 0usize;
    let mut finished = 0usize;
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    while finished < n {
        while next < n && in_flight < parallel {
            let i = next;
            next += 1;
            match start_connect(addr) {
                Ok((s, true)) => {
                    slots[i] = Some(s);
                    done[i] = true;
                    finished += 1;
                }
                Ok((s, false)) => {
                    ep.add(s.as_raw_fd(), EOUT, i as u64).context("epoll add")?;
                    slots[i] = Some(s);
                    in_flight += 1;
                }
                Err(e) => {
                    failures.push(first_index + i, classify(&e), format!("connect: {e}"));
                    done[i] = true;
                    finished += 1;
                }
            }
        }
        if finished == n {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            for i in 0..n {
                if !done[i] {
                    failures.push(first_index + i, Fail::Timeout, "connect timed out".into());
                    slots[i] = None;
                }
            }
            break;
        }
        let k = ep.wait(&mut evs, deadline - now).context("epoll_wait")?;
        for ev in &evs[..k] {
            let i = ev.u64 as usize;
            if done[i] {
                continue;
            }
            let s = slots[i].as_ref().unwrap();
            ep.del(s.as_raw_fd());
            done[i] = true;
            finished += 1;
            in_flight -= 1;
            let err = match s.take_error() {
                Ok(Some(e)) => Some(e),
                Ok(None) => s.peer_addr().err(),
                Err(e) => Some(e),
            };
            if let Some(e) = err {
                failures.push(first_index + i, classify(&e), format!("connect: {e}"));
                slots[i] = None;
            }
        }
    }
    Ok(slots)
}

// ---------------------------------------------------------------------------------------
// Ping-pong engine (epoll, one thread, many connections)
// ---------------------------------------------------------------------------------------

enum Limit {
    Msgs(u64),
    Until(Instant),
}

struct PpConn {
    index: usize,
    stream: TcpStream,
    rng: Rng,
    msg: Vec<u8>,
    sent: usize,
    recvd: usize,
    done_msgs: u64,
    msg_start: Instant,
    want_out: bool,
    finished: bool,
}

#[derive(Default)]
struct PpStats {
    msgs: u64,
    /// From the start of the ping-pong phase until the last connection finished.
    elapsed: Duration,
    finished_conns: usize,
    lat_ns: Vec<u32>,
}

/// Every connection sends a message of `size` pseudo-random bytes, reads its echo back in
/// full and checks it, then the next one, until `limit`. Connections stay open until all are
/// done. Failed connections are recorded in `failures` and dropped.
fn pingpong(
    conns: Vec<(usize, TcpStream, u64)>,
    size: usize,
    limit: Limit,
    deadline: Instant,
    record_latency: bool,
    failures: &mut Failures,
) -> Result<PpStats> {
    let ep = Epoll::new()?;
    let mut stats = PpStats::default();
    let mut slots: Vec<Option<PpConn>> = Vec::with_capacity(conns.len());
    let mut tmp = vec![0u8; size.clamp(1, 1 << 16)];
    let mut active = 0usize;
    let t_start = Instant::now();

    let stop_now = |done_msgs: u64| match limit {
        Limit::Msgs(m) => done_msgs >= m,
        Limit::Until(t) => Instant::now() >= t,
    };

    for (token, (index, stream, seed)) in conns.into_iter().enumerate() {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        let mut c = PpConn {
            index,
            stream,
            rng: Rng::new(seed),
            msg: vec![0u8; size],
            sent: 0,
            recvd: 0,
            done_msgs: 0,
            msg_start: Instant::now(),
            want_out: true,
            finished: false,
        };
        if stop_now(0) {
            c.finished = true;
            stats.finished_conns += 1;
            slots.push(Some(c));
            continue;
        }
        c.rng.fill(&mut c.msg);
        ep.add(c.stream.as_raw_fd(), EIN | EOUT, token as u64)?;
        slots.push(Some(c));
        active += 1;
    }

    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    while active > 0 {
        let now = Instant::now();
        if now >= deadline {
            for c in slots.iter().flatten() {
                if !c.finished {
                    failures.push(
                        c.index,
                        Fail::Timeout,
                        format!(
                            "timed out in message {} (sent {}/{size}, received {}/{size})",
                            c.done_msgs, c.sent, c.recvd
                        ),
                    );
                }
            }
            break;
        }
        let k = ep.wait(&mut evs, deadline - now).context("epoll_wait")?;
        for ev in &evs[..k] {
            let token = ev.u64 as usize;
            let Some(c) = slots[token].as_mut() else {
                continue;
            };
            match step(
                c,
                ev.events,
                &mut tmp,
                size,
                &stop_now,
                record_latency,
                &mut stats,
            ) {
                Ok(Step::Continue) => {
                    let want_out = c.sent < size;
                    if want_out != c.want_out {
                        c.want_out = want_out;
                        let evs = if want_out { EIN | EOUT } else { EIN };
                        ep.modify(c.stream.as_raw_fd(), evs, token as u64)?;
                    }
                }
                Ok(Step::Finished) => {
                    c.finished = true;
                    ep.del(c.stream.as_raw_fd());
                    stats.finished_conns += 1;
                    active -= 1;
                }
                Err((kind, msg)) => {
                    ep.del(c.stream.as_raw_fd());
                    failures.push(c.index, kind, format!("message {}: {msg}", c.done_msgs));
                    slots[token] = None;
                    active -= 1;
                }
            }
        }
    }
    stats.elapsed = t_start.elapsed();
    drop(slots); // all connections stay open until here
    Ok(stats)
}

enum Step {
    Continue,
    Finished,
}

fn step(
    c: &mut PpConn,
    events: u32,
    tmp: &mut [u8],
    size: usize,
    stop_now: &dyn Fn(u64) -> bool,
    record_latency: bool,
    stats: &mut PpStats,
) -> std::result::Result<Step, (Fail, String)> {
    let io_err = |what: &str, e: io::Error| (classify(&e), format!("{what}: {e}"));
    for _ in 0..64 {
        let mut progress = false;
        if c.sent < size {
            match c.stream.write(&c.msg[c.sent..]) {
                Ok(n) => {
                    c.sent += n;
                    progress = n > 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
                Err(e) => return Err(io_err("write", e)),
            }
        }
        let want = (size - c.recvd).min(tmp.len());
        match c.stream.read(&mut tmp[..want]) {
            Ok(0) => {
                return Err((
                    Fail::Eof,
                    format!(
                        "connection closed by peer after {}/{size} echoed bytes",
                        c.recvd
                    ),
                ))
            }
            Ok(n) => {
                let exp = &c.msg[c.recvd..c.recvd + n];
                if let Some(p) = exp.iter().zip(&tmp[..n]).position(|(a, b)| a != b) {
                    return Err((
                        Fail::Mismatch,
                        format!(
                            "echo mismatch at byte {}: expected {:#04x}, got {:#04x}",
                            c.recvd + p,
                            exp[p],
                            tmp[p]
                        ),
                    ));
                }
                c.recvd += n;
                if c.recvd > c.sent {
                    return Err((Fail::Mismatch, "received more than was sent".into()));
                }
                progress = true;
                if c.recvd == size {
                    if record_latency {
                        let ns = c.msg_start.elapsed().as_nanos().min(u32::MAX as u128) as u32;
                        stats.lat_ns.push(ns);
                    }
                    c.done_msgs += 1;
                    stats.msgs += 1;
                    if stop_now(c.done_msgs) {
                        return Ok(Step::Finished);
                    }
                    c.rng.fill(&mut c.msg);
                    c.sent = 0;
                    c.recvd = 0;
                    c.msg_start = Instant::now();
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
            Err(e) => return Err(io_err("read", e)),
        }
        if !progress {
            break;
        }
    }
    if events & EERR != 0 {
        if let Ok(Some(e)) = c.stream.take_error() {
            return Err(io_err("socket error", e));
        }
    }
    Ok(Step::Continue)
}

/// What every connection of a ping-pong run does.
#[derive(Clone, Copy)]
struct Plan {
    addr: SocketAddr,
    /// Connects in flight at once.
    parallel: usize,
    size: usize,
    /// `Some(secs)`: ping-pong for that long; `None`: `msgs` messages per connection.
    limit_secs: Option<f64>,
    msgs: u64,
    seed: u64,
    record_latency: bool,
}

/// Connect + ping-pong for one slice of connections (one thread).
fn pingpong_slice(
    plan: Plan,
    range: std::ops::Range<usize>,
    deadline: Instant,
) -> Result<(PpStats, Failures, Duration)> {
    let mut failures = Failures::default();
    let t0 = Instant::now();
    let slots = connect_many(
        &plan.addr,
        range.len(),
        plan.parallel,
        deadline,
        range.start,
        &mut failures,
    )?;
    let connect_time = t0.elapsed();
    let conns: Vec<_> = slots
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let index = range.start + i;
            s.map(|s| (index, s, conn_seed(plan.seed, index)))
        })
        .collect();
    let limit = match plan.limit_secs {
        Some(s) => Limit::Until(Instant::now() + Duration::from_secs_f64(s)),
        None => Limit::Msgs(plan.msgs),
    };
    let stats = pingpong(
        conns,
        plan.size,
        limit,
        deadline,
        plan.record_latency,
        &mut failures,
    )?;
    Ok((stats, failures, connect_time))
}

struct Multi {
    stats: PpStats,
    failures: Failures,
    connect_time: Duration,
    secs: f64,
}

/// Splits `n` connections over `threads` threads running [`pingpong_slice`]; the connect
/// budget `plan.parallel` is shared among them.
fn pingpong_threads(plan: Plan, n: usize, threads: usize, timeout: Duration) -> Result<Multi> {
    let threads = threads.clamp(1, n.max(1));
    let deadline = Instant::now() + timeout;
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let range = (n * t / threads)..(n * (t + 1) / threads);
        let plan = Plan {
            parallel: plan.parallel.div_ceil(threads).max(1),
            ..plan
        };
        handles.push(std::thread::spawn(move || {
            pingpong_slice(plan, range, deadline)
        }));
    }
    let mut m = Multi {
        stats: PpStats::default(),
        failures: Failures::default(),
        connect_time: Duration::ZERO,
        secs: 0.0,
    };
    for h in handles {
        let (s, f, ct) = h.join().map_err(|_| anyhow!("worker thread panicked"))??;
        m.stats.msgs += s.msgs;
        m.stats.elapsed = m.stats.elapsed.max(s.elapsed);
        m.stats.finished_conns += s.finished_conns;
        m.stats.lat_ns.extend(s.lat_ns);
        m.failures.list.extend(f.list);
        m.connect_time = m.connect_time.max(ct);
    }
    m.secs = t0.elapsed().as_secs_f64();
    Ok(m)
}

// ---------------------------------------------------------------------------------------
// Subcommands
// ---------------------------------------------------------------------------------------

fn cmd_conns(a: Args) -> Result<()> {
    let addr: SocketAddr = a.get("addr", None)?;
    let n: usize = a.get("conns", Some(1000))?;
    let msgs: u64 = a.get("msgs", Some(100))?;
    let size: usize = a.get("size", Some(64))?;
    let threads: usize = a.get("threads", Some(1))?;
    let parallel: usize = a.get("parallel-connects", Some(128))?;
    let timeout: f64 = a.get("timeout", Some(120.0))?;
    let seed: u64 = a.get("seed", Some(1))?;
    a.finish()?;
    if size == 0 {
        bail!("--size must be > 0");
    }
    let plan = Plan {
        addr,
        parallel: parallel.max(1),
        size,
        limit_secs: None,
        msgs,
        seed,
        record_latency: false,
    };
    let m = pingpong_threads(plan, n, threads, Duration::from_secs_f64(timeout))?;
    let failed = m.failures.list.len();
    let ok = n - failed;
    println!(
        "mode=conns conns={n} msgs={msgs} size={size} ok={ok} failed={failed} \
         refused={} reset={} timeout={} mismatch={} eof={} total_msgs={} bytes={} \
         connect_ms={:.1} secs={:.3}",
        m.failures.count(Fail::Refused),
        m.failures.count(Fail::Reset),
        m.failures.count(Fail::Timeout),
        m.failures.count(Fail::Mismatch),
        m.failures.count(Fail::Eof),
        m.stats.msgs,
        m.stats.msgs * size as u64,
        m.connect_time.as_secs_f64() * 1e3,
        m.secs
    );
    if failed > 0 || m.stats.msgs != n as u64 * msgs {
        m.failures.report("conns");
        bail!(
            "{failed} of {n} connections failed; {} of {} messages echoed",
            m.stats.msgs,
            n as u64 * msgs
        );
    }
    Ok(())
}

fn cmd_bulk(a: Args) -> Result<()> {
    let addr: SocketAddr = a.get("addr", None)?;
    let BulkOpts {
        total,
        chunk,
        stall,
        seed,
    } = BulkOpts::from_args(&a)?;
    a.finish()?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(stall))?;
    s.set_write_timeout(Some(stall))?;
    let mut w = s.try_clone()?;
    let t0 = Instant::now();
    // Bytes the writer has handed to the kernel (said when the echo stalls).
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = written.clone();
    let writer = std::thread::spawn(move || -> Result<[u8; 32]> {
        let mut tx = Stream::new(seed, chunk, total);
        let mut h = Sha256::new();
        let mut sent: u64 = 0;
        while let Some(buf) = tx.next_chunk() {
            h.update(buf);
            w.write_all(buf).map_err(|e| {
                anyhow!("write after {sent} bytes: {e}").context(if classify(&e) == Fail::Timeout {
                    "send stalled (peer not reading?)"
                } else {
                    "send failed"
                })
            })?;
            sent += buf.len() as u64;
            progress.store(sent, std::sync::atomic::Ordering::Relaxed);
        }
        w.shutdown(Shutdown::Write).context("shutdown(Write)")?;
        Ok(h.finalize().into())
    });
    let mut r = s;
    let mut h = Sha256::new();
    let mut got: u64 = 0;
    let mut buf = vec![0u8; chunk.max(65536)];
    let read_res: Result<()> = loop {
        match r.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                h.update(&buf[..n]);
                got += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                break Err(anyhow!("read after {got} of {total} bytes: {e}")).context(
                    if classify(&e) == Fail::Timeout {
                        format!("echo stalled for {stall:?}")
                    } else {
                        "receive failed".into()
                    },
                )
            }
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    if read_res.is_err() {
        use std::os::fd::AsRawFd;
        eprintln!(
            "bulk: after {secs:.1} s: {} bytes written, {got} echoed; {}",
            written.load(std::sync::atomic::Ordering::Relaxed),
            mtcp_tests::tcpinfo::describe(r.as_raw_fd())
        );
        // Unblock the writer (it may be stuck on a full send buffer) before joining it.
        let _ = r.shutdown(Shutdown::Both);
    }
    let sent_hash = writer
        .join()
        .map_err(|_| anyhow!("writer thread panicked"))?;
    read_res?;
    let sent_hash = sent_hash?;
    let recv_hash: [u8; 32] = h.finalize().into();
    let ok = got == total && sent_hash == recv_hash;
    println!("{}", bulk_line(got, secs, &recv_hash, ok));
    if got != total {
        bail!("received {got} bytes, sent {total}");
    }
    if sent_hash != recv_hash {
        bail!(
            "echo differs from what was sent: sent sha256={} received sha256={}",
            hex(&sent_hash),
            hex(&recv_hash)
        );
    }
    Ok(())
}

fn cmd_burst(a: Args) -> Result<()> {
    let addr: SocketAddr = a.get("addr", None)?;
    let n: usize = a.get("conns", Some(511))?;
    let size: usize = a.get("size", Some(16))?;
    let timeout: f64 = a.get("timeout", Some(30.0))?;
    a.finish()?;
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    let mut failures = Failures::default();
    let t0 = Instant::now();
    let slots = connect_many(&addr, n, usize::MAX, deadline, 0, &mut failures)?;
    let connect_time = t0.elapsed();
    let established = slots.iter().filter(|s| s.is_some()).count();
    let conns: Vec<_> = slots
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (i, s, conn_seed(7, i))))
        .collect();
    let stats = pingpong(
        conns,
        size.max(1),
        Limit::Msgs(1),
        deadline,
        false,
        &mut failures,
    )?;
    let ok = stats.finished_conns;
    let bad =
        failures.count(Fail::Other) + failures.count(Fail::Mismatch) + failures.count(Fail::Eof);
    println!(
        "mode=burst conns={n} ok={ok} established={established} reset={} refused={} \
         timeout={} echo_fail={bad} connect_ms={:.1} secs={:.3}",
        failures.count(Fail::Reset),
        failures.count(Fail::Refused),
        failures.count(Fail::Timeout),
        connect_time.as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64()
    );
    if ok != n {
        failures.report("burst");
        bail!("only {ok} of {n} connections were established and echoed");
    }
    Ok(())
}

fn cmd_latency(a: Args) -> Result<()> {
    let addr: SocketAddr = a.get("addr", None)?;
    let o = LatencyOpts::from_args(&a)?;
    a.finish()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(o.timeout))?;
    s.set_write_timeout(Some(o.timeout))?;
    let line = latency_rounds(&o, |i, msg, back| {
        s.write_all(msg)
            .with_context(|| format!("write, round trip {i}"))?;
        s.read_exact(back)
            .with_context(|| format!("read echo, round trip {i}"))
    })?;
    println!("{line}");
    Ok(())
}

fn cmd_rr(a: Args) -> Result<()> {
    let addr: SocketAddr = a.get("addr", None)?;
    let n: usize = a.get("conns", Some(1))?;
    let secs: f64 = a.get("secs", Some(5.0))?;
    let size: usize = a.get("size", Some(16))?;
    let threads: usize = a.get("threads", Some(1))?;
    let parallel: usize = a.get("parallel-connects", Some(128))?;
    let timeout: f64 = a.get("timeout", Some(30.0))?;
    a.finish()?;
    if size == 0 {
        bail!("--size must be > 0");
    }
    let plan = Plan {
        addr,
        parallel: parallel.max(1),
        size,
        limit_secs: Some(secs),
        msgs: 0,
        seed: 3,
        record_latency: true,
    };
    let mut m = pingpong_threads(plan, n, threads, Duration::from_secs_f64(secs + timeout))?;
    let failed = m.failures.list.len();
    // Requests per second over the ping-pong window (connect time excluded).
    let window = m.stats.elapsed.as_secs_f64().max(1e-9);
    println!(
        "mode=rr conns={n} size={size} secs={window:.3} requests={} rps={:.0} failed={failed} {}",
        m.stats.msgs,
        m.stats.msgs as f64 / window,
        lat_summary(&mut m.stats.lat_ns)
    );
    if failed > 0 {
        m.failures.report("rr");
        bail!("{failed} of {n} connections failed");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reference echo server
// ---------------------------------------------------------------------------------------

struct EchoConn {
    s: TcpStream,
    buf: Box<[u8]>,
    off: usize,
    len: usize,
    eof: bool,
    interest: u32,
}

enum EchoStep {
    Keep,
    Close,
}

fn echo_step(c: &mut EchoConn) -> EchoStep {
    for _ in 0..32 {
        if c.off < c.len {
            match c.s.write(&c.buf[c.off..c.len]) {
                Ok(n) => c.off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return EchoStep::Keep,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return EchoStep::Close,
            }
            if c.off < c.len {
                continue;
            }
        }
        c.off = 0;
        c.len = 0;
        if c.eof {
            // Everything echoed and the peer is done sending: FIN our side and close.
            let _ = c.s.shutdown(Shutdown::Write);
            return EchoStep::Close;
        }
        match c.s.read(&mut c.buf) {
            Ok(0) => c.eof = true,
            Ok(n) => c.len = n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return EchoStep::Keep,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return EchoStep::Close,
        }
    }
    EchoStep::Keep
}

fn cmd_serve(a: Args) -> Result<()> {
    let addr: SocketAddr = a.get("listen", None)?;
    let backlog: i32 = a.get("backlog", Some(1024))?;
    let exit_after: f64 = a.get("exit-after", Some(0.0))?;
    a.finish()?;
    let l = listen(&addr, backlog)?;
    let local = l.local_addr()?;
    let ep = Epoll::new()?;
    const LISTENER: u64 = u64::MAX;
    ep.add(l.as_raw_fd(), EIN, LISTENER)?;
    println!("serve: listening on {local}");
    let stop_at = (exit_after > 0.0).then(|| Instant::now() + Duration::from_secs_f64(exit_after));
    let mut conns: Vec<Option<EchoConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let (mut accepted, mut closed) = (0u64, 0u64);
    loop {
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            eprintln!("serve: --exit-after reached, exiting (accepted={accepted} closed={closed})");
            return Ok(());
        }
        let k = ep.wait(&mut evs, Duration::from_millis(500))?;
        for ev in &evs[..k] {
            if ev.u64 == LISTENER {
                loop {
                    match l.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(true)?;
                            let _ = s.set_nodelay(true);
                            let idx = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            ep.add(s.as_raw_fd(), EIN, idx as u64)?;
                            conns[idx] = Some(EchoConn {
                                s,
                                buf: vec![0u8; 65536].into_boxed_slice(),
                                off: 0,
                                len: 0,
                                eof: false,
                                interest: EIN,
                            });
                            accepted += 1;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                            eprintln!("serve: accept: {e}");
                            break;
                        }
                        Err(e) => {
                            eprintln!("serve: accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let idx = ev.u64 as usize;
            let Some(c) = conns[idx].as_mut() else {
                continue;
            };
            match echo_step(c) {
                EchoStep::Keep => {
                    let want = if c.off < c.len { EOUT } else { EIN };
                    if want != c.interest {
                        c.interest = want;
                        ep.modify(c.s.as_raw_fd(), want, idx as u64)?;
                    }
                }
                EchoStep::Close => {
                    ep.del(c.s.as_raw_fd());
                    conns[idx] = None;
                    free.push(idx);
                    closed += 1;
                }
            }
        }
    }
}
