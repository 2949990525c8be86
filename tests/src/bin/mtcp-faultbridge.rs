//! mtcp-faultbridge: a user-space Ethernet bridge between two kernel interfaces that loses,
//! duplicates and reorders frames exactly as the userstack's `MTCP_FAULTS` does.
//!
//! This kernel has no `sch_netem`, so kernel TCP cannot be put through the same faults as the
//! user-space stack with `tc`. Instead two veth pairs meet in this process:
//!
//!     ns A (kernel client) --veth-- [A_IF  mtcp-faultbridge  B_IF] --veth-- ns B (kernel server)
//!
//!     mtcp-faultbridge --a A_IF --b B_IF [--faults loss=2,dup=1,reorder=1,seed=7]
//!
//! (`--faults` defaults to `$MTCP_FAULTS`; its syntax and checks are the userstack's own, parsed
//! by `userstack::config::Config::from_map`, and every frame goes through a
//! `userstack::faults::FaultInjector`, one per direction.) Each interface gets an AF_PACKET raw
//! socket bound to it, in promiscuous mode; every frame received on one is sent out of the
//! other. "Reorder" holds a frame back behind the next frame of the same direction, or until
//! the current receive batch ends, as the stack does within one poll. Frames the bridge itself
//! sent (PACKET_OUTGOING) are never forwarded back.
//!
//! Side b can also be a DPDK port instead of a kernel interface: `--b dpdk:SPEC`, SPEC as
//! `MTCP_DEV` (e.g. `dpdk:memif:/tmp/m.sock,client`; the other MTCP_* variables such as
//! MTCP_HUGEPAGES and MTCP_LOG apply). That makes the bridge the "NIC" of a server whose stack
//! runs over net_memif, so kernel clients can reach it while the server's process has no
//! kernel in its data path (ci/redis-bench.sh path `memif-s0`). Both directions then run on
//! one thread, which polls both sides while frames flow, keeps polling for 200 µs after the
//! last one, then blocks on the kernel side's socket for up to 20 µs, doubling to 1 ms (the
//! DPDK side has no wake-up fd: a frame from it waits at most that long after an idle period).
//!
//! The interfaces must be up, without IPv4/IPv6 addresses the host would answer on, and with TX
//! checksum/TSO/GSO offloads off on the kernel ends (otherwise the bridge would see partial
//! checksums and 64 KB super-frames). Prints `faultbridge: ready ...` once both sockets are
//! bound; on SIGTERM or SIGINT it stops and prints `faultbridge: stopped ...` with counters per
//! direction.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use userstack::config::{Config, Faults};
use userstack::dpdk::DpdkLink;
use userstack::faults::{FaultAction, FaultInjector};
use userstack::link::{Link, RxFrame, TxFrame};

const USAGE: &str = "\
usage: mtcp-faultbridge --a IFACE --b IFACE|dpdk:DEV [--faults SPEC]
  DEV as MTCP_DEV, e.g. memif:/tmp/m.sock,client (side b is then that DPDK port)
  SPEC as MTCP_FAULTS (default: $MTCP_FAULTS), e.g. loss=2,dup=1,reorder=1,seed=7";

/// Frames read (and written) per system call.
const BATCH: usize = 32;
/// Largest frame accepted; larger ones (GSO super-frames from a misconfigured peer) are
/// counted and dropped.
const FRAME_MAX: usize = 9216 + 14;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mtcp-faultbridge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut a_if = None;
    let mut b_if = None;
    let mut spec = std::env::var("MTCP_FAULTS").ok();
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let (k, inline) = match k.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (k, None),
        };
        if k == "-h" || k == "--help" {
            println!("{USAGE}");
            return Ok(());
        }
        let v = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| anyhow!("{k} needs a value\n{USAGE}"))?,
        };
        match k.as_str() {
            "--a" => a_if = Some(v),
            "--b" => b_if = Some(v),
            "--faults" => spec = Some(v),
            _ => bail!("unknown option {k:?}\n{USAGE}"),
        }
    }
    let a_if = a_if.ok_or_else(|| anyhow!("--a is required\n{USAGE}"))?;
    let b_if = b_if.ok_or_else(|| anyhow!("--b is required\n{USAGE}"))?;
    let faults = parse_faults(spec.as_deref().unwrap_or(""))?;

    let a = PacketSocket::open(&a_if)?;
    let b = match b_if.strip_prefix("dpdk:") {
        Some(dev) => Side::Dpdk(Box::new(start_dpdk(dev)?)),
        None => Side::Packet(PacketSocket::open(&b_if)?),
    };
    // SAFETY: installing an async-signal-safe handler that only stores an atomic. No
    // SA_RESTART: a blocked poll() returns EINTR at once.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
    let ab = Arc::new(Counters::default());
    let ba = Arc::new(Counters::default());
    // Independent but reproducible decisions per direction.
    let fa = faults.active().then(|| FaultInjector::new(faults));
    let fb = faults.active().then(|| {
        FaultInjector::new(Faults {
            seed: faults.seed ^ 0x5bd1_e995,
            ..faults
        })
    });
    println!(
        "faultbridge: ready a={a_if} b={b_if} faults=loss={},dup={},reorder={},seed={}",
        faults.loss, faults.dup, faults.reorder, faults.seed
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let (r1, r2) = match b {
        Side::Packet(b) => {
            let (r1, r2) = forward_threads(a, b, fa, fb, &ab, &ba)?;
            (r1, r2)
        }
        Side::Dpdk(mut link) => {
            let r = forward_dpdk(&a, &mut link, fa, fb, &ab, &ba);
            // Frames still waiting for room in the port's ring get a last chance.
            let t = Instant::now();
            while link.tx_pending() > 0 && t.elapsed() < Duration::from_secs(1) {
                link.tx_flush();
            }
            // Frames the port's transmit ring refused: counted by the link after they were
            // handed to it (and counted as tx).
            let refused = link.counters().tx_ring_full + link.tx_pending() as u64;
            ab.tx.fetch_sub(refused, Ordering::Relaxed);
            ab.send_errors.fetch_add(refused, Ordering::Relaxed);
            (r, Ok(()))
        }
    };
    println!(
        "faultbridge: stopped a_to_b: {} b_to_a: {}",
        ab.summary(),
        ba.summary()
    );
    r1.context("forwarding a->b")?;
    r2.context("forwarding b->a")?;
    Ok(())
}

/// Side b: a kernel interface or a DPDK port.
enum Side {
    Packet(PacketSocket),
    Dpdk(Box<DpdkLink>),
}

/// Starts the DPDK port `dev` (an MTCP_DEV value); the other MTCP_* variables apply.
fn start_dpdk(dev: &str) -> Result<DpdkLink> {
    let mut vars: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MTCP_"))
        .collect();
    vars.insert("MTCP_DEV".into(), dev.into());
    let cfg = Config::from_map(&vars).map_err(|e| anyhow!("{e}"))?;
    DpdkLink::start(&cfg).map_err(|e| anyhow!("{e}"))
}

type Joined = (Result<()>, Result<()>);

/// Two kernel interfaces: one thread per direction, each blocking on its own socket.
fn forward_threads(
    a: PacketSocket,
    b: PacketSocket,
    fa: Option<FaultInjector>,
    fb: Option<FaultInjector>,
    ab: &Arc<Counters>,
    ba: &Arc<Counters>,
) -> Result<Joined> {
    let a = Arc::new(a);
    let b = Arc::new(b);
    let t1 = {
        let (a, b, c) = (a.clone(), b.clone(), ab.clone());
        std::thread::spawn(move || forward(&a, &b, fa, &c))
    };
    let t2 = {
        let (a, b, c) = (a.clone(), b.clone(), ba.clone());
        std::thread::spawn(move || forward(&b, &a, fb, &c))
    };
    let r1 = t1.join().map_err(|_| anyhow!("a->b thread panicked"))?;
    let r2 = t2.join().map_err(|_| anyhow!("b->a thread panicked"))?;
    Ok((r1, r2))
}

/// The fault specification, checked by the userstack's own configuration parser.
fn parse_faults(spec: &str) -> Result<Faults> {
    let mut vars = HashMap::new();
    vars.insert("MTCP_FAULTS".to_string(), spec.to_string());
    let cfg = Config::from_map(&vars).map_err(|e| anyhow!("{e}"))?;
    Ok(cfg.faults)
}

#[derive(Default)]
struct Counters {
    rx: AtomicU64,
    tx: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    oversize: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "rx={} tx={} tx_bytes={} dropped={} duplicated={} reordered={} oversize={} send_errors={}",
            g(&self.rx),
            g(&self.tx),
            g(&self.bytes),
            g(&self.dropped),
            g(&self.duplicated),
            g(&self.reordered),
            g(&self.oversize),
            g(&self.send_errors)
        )
    }
}

/// An AF_PACKET raw socket bound to one interface, promiscuous, not seeing its own output.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    name: String,
}

impl PacketSocket {
    fn open(ifname: &str) -> Result<PacketSocket> {
        let cname = std::ffi::CString::new(ifname).context("interface name")?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        if ifindex == 0 {
            bail!("no network interface named {ifname:?}");
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket call; the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error())
                .context("socket(AF_PACKET) (needs CAP_NET_RAW)");
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; bind/setsockopt get valid pointers and sizes.
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex;
            if libc::bind(
                raw,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("binding a packet socket to {ifname}"));
            }
            let mut mr: libc::packet_mreq = std::mem::zeroed();
            mr.mr_ifindex = ifindex;
            mr.mr_type = libc::PACKET_MR_PROMISC as u16;
            if libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                &mr as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::packet_mreq>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("promiscuous mode on {ifname}"));
            }
            // Best effort (Linux >= 4.20); outgoing frames are also filtered by pkttype.
            let one: libc::c_int = 1;
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
            let buf: libc::c_int = 4 << 20;
            for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    opt,
                    &buf as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as u32,
                );
            }
        }
        let s = PacketSocket {
            fd,
            ifindex,
            name: ifname.to_string(),
        };
        s.drain();
        Ok(s)
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Discards frames queued between socket() and bind() (they may be from any interface).
    fn drain(&self) {
        let mut buf = [0u8; 2048];
        // SAFETY: valid buffer.
        while unsafe {
            libc::recv(
                self.raw(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        } > 0
        {}
    }

    /// Waits up to `t` (µs resolution) for a frame to read.
    fn wait_readable_for(&self, t: Duration) {
        let mut p = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = userstack::clock::timespec(t);
        // SAFETY: one valid pollfd and timespec; no signal mask change.
        unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
    }

    /// Waits up to `ms` for a frame to read; false on timeout or signal.
    fn wait_readable(&self, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) > 0 }
    }
}

/// Receive buffers for one batch.
struct Batch {
    bufs: Vec<[u8; FRAME_MAX]>,
    addrs: Vec<libc::sockaddr_ll>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Box<Batch> {
        let mut b = Box::new(Batch {
            bufs: vec![[0u8; FRAME_MAX]; BATCH],
            // SAFETY: plain data.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            iov: Vec::with_capacity(BATCH),
            // SAFETY: plain data.
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
        });
        for i in 0..BATCH {
            let p = b.bufs[i].as_mut_ptr();
            b.iov.push(libc::iovec {
                iov_base: p as *mut libc::c_void,
                iov_len: FRAME_MAX,
            });
        }
        b
    }

    /// Reads up to BATCH frames without blocking; returns how many.
    fn recv(&mut self, s: &PacketSocket) -> std::io::Result<usize> {
        for i in 0..BATCH {
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: hdrs point at BATCH valid iovecs/buffers/addresses owned by self.
        let n = unsafe {
            libc::recvmmsg(
                s.raw(),
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    /// Calls `f` on each of the first `n` received frames that the bridge did not send itself;
    /// truncated ones are counted and skipped.
    fn each_frame(&self, n: usize, c: &Counters, mut f: impl FnMut(&[u8])) {
        for i in 0..n {
            if self.addrs[i].sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let len = self.hdrs[i].msg_len as usize;
            if len > FRAME_MAX || self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                c.rx.fetch_add(1, Ordering::Relaxed);
                c.oversize.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            f(&self.bufs[i][..len]);
        }
    }
}

/// Sends `frames` out of `out` (sendmmsg); frames the device refuses are counted and lost.
fn send_all(out: &PacketSocket, frames: &[Vec<u8>], c: &Counters) {
    if frames.is_empty() {
        return;
    }
    // SAFETY: plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = out.ifindex;
    sll.sll_halen = 6;
    let mut iov: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(frames.len());
    for v in iov.iter_mut() {
        // SAFETY: plain data.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_name = &mut sll as *mut _ as *mut libc::c_void;
        h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        h.msg_hdr.msg_iov = v;
        h.msg_hdr.msg_iovlen = 1;
        hdrs.push(h);
    }
    let mut done = 0;
    let mut tries = 0;
    while done < hdrs.len() {
        // SAFETY: hdrs[done..] point at live iovecs into `frames` and at `sll`.
        let n = unsafe {
            libc::sendmmsg(
                out.raw(),
                hdrs.as_mut_ptr().add(done),
                (hdrs.len() - done) as u32,
                0,
            )
        };
        if n > 0 {
            for f in &frames[done..done + n as usize] {
                c.bytes.fetch_add(f.len() as u64, Ordering::Relaxed);
            }
            c.tx.fetch_add(n as u64, Ordering::Relaxed);
            done += n as usize;
            continue;
        }
        let e = std::io::Error::last_os_error();
        tries += 1;
        if e.raw_os_error() == Some(libc::EINTR) && tries < 8 {
            continue;
        }
        if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS)) && tries < 64 {
            std::thread::yield_now();
            continue;
        }
        // Anything else (e.g. EMSGSIZE, ENETDOWN): that frame is lost, as on a wire.
        c.send_errors.fetch_add(1, Ordering::Relaxed);
        if c.send_errors.load(Ordering::Relaxed) <= 5 {
            eprintln!(
                "mtcp-faultbridge: send on {} ({} bytes): {e}",
                out.name,
                frames[done].len()
            );
        }
        done += 1;
        tries = 0;
    }
}

/// One direction's faults: decides each frame's fate and queues what goes out, in order.
struct Shaper {
    faults: Option<FaultInjector>,
    /// A frame held back to be overtaken (reorder).
    held: Option<Vec<u8>>,
    /// Spare buffers, so steady-state forwarding does not allocate.
    spare: Vec<Vec<u8>>,
}

impl Shaper {
    fn new(faults: Option<FaultInjector>) -> Shaper {
        Shaper {
            faults,
            held: None,
            spare: Vec::new(),
        }
    }

    /// Passes one received frame through the faults into `out`.
    fn push(&mut self, data: &[u8], out: &mut Vec<Vec<u8>>, c: &Counters) {
        c.rx.fetch_add(1, Ordering::Relaxed);
        if data.len() > FRAME_MAX {
            c.oversize.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut v = self.spare.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(data);
        match self
            .faults
            .as_mut()
            .map_or(FaultAction::Pass, |f| f.decide())
        {
            FaultAction::Pass => out.push(v),
            FaultAction::Drop => {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                self.spare.push(v);
                return;
            }
            FaultAction::Duplicate => {
                c.duplicated.fetch_add(1, Ordering::Relaxed);
                out.push(v.clone());
                out.push(v);
            }
            FaultAction::Reorder => {
                c.reordered.fetch_add(1, Ordering::Relaxed);
                if let Some(prev) = self.held.replace(v) {
                    out.push(prev);
                }
                return;
            }
        }
        // A held frame goes out right behind the frame that overtook it.
        if let Some(h) = self.held.take() {
            out.push(h);
        }
    }

    /// End of a receive batch: nothing else can overtake a held frame now.
    fn end_batch(&mut self, out: &mut Vec<Vec<u8>>) {
        if let Some(h) = self.held.take() {
            out.push(h);
        }
    }

    /// Takes back the buffers of frames that were sent.
    fn recycle(&mut self, out: &mut Vec<Vec<u8>>) {
        self.spare.append(out);
        self.spare.truncate(4 * BATCH);
    }
}

/// Forwards every frame received on `from` out of `to`, through `faults`, until STOP.
fn forward(
    from: &PacketSocket,
    to: &PacketSocket,
    faults: Option<FaultInjector>,
    c: &Counters,
) -> Result<()> {
    let mut batch = Batch::new();
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(2 * BATCH);
    let mut shaper = Shaper::new(faults);
    while !STOP.load(Ordering::Relaxed) {
        let n = batch
            .recv(from)
            .with_context(|| format!("recv on {}", from.name))?;
        if n == 0 {
            from.wait_readable(100);
            continue;
        }
        batch.each_frame(n, c, |data| shaper.push(data, &mut out, c));
        shaper.end_batch(&mut out);
        send_all(to, &out, c);
        shaper.recycle(&mut out);
    }
    Ok(())
}

/// How long the DPDK bridge keeps polling after the last frame before it blocks.
const SPIN: Duration = Duration::from_micros(200);
/// Its first and longest block on the kernel side's socket.
const FIRST_BLOCK: Duration = Duration::from_micros(20);
const MAX_BLOCK: Duration = Duration::from_millis(1);

/// Forwards both ways between kernel interface `a` and DPDK port `link`, on this thread.
fn forward_dpdk(
    a: &PacketSocket,
    link: &mut DpdkLink,
    fa: Option<FaultInjector>,
    fb: Option<FaultInjector>,
    ab: &Counters,
    ba: &Counters,
) -> Result<()> {
    let mut batch = Batch::new();
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(2 * BATCH);
    let mut to_b = Shaper::new(fa);
    let mut to_a = Shaper::new(fb);
    let mut rx: Vec<<DpdkLink as Link>::Rx> = Vec::with_capacity(BATCH);
    let mut last_work = Instant::now();
    let mut block = FIRST_BLOCK;
    while !STOP.load(Ordering::Relaxed) {
        let n = batch
            .recv(a)
            .with_context(|| format!("recv on {}", a.name))?;
        batch.each_frame(n, ab, |data| to_b.push(data, &mut out, ab));
        to_b.end_batch(&mut out);
        for f in &out {
            match link.tx_alloc(f.len()) {
                Some(mut m) => {
                    m.data_mut().copy_from_slice(f);
                    link.tx_push(m);
                    ab.tx.fetch_add(1, Ordering::Relaxed);
                    ab.bytes.fetch_add(f.len() as u64, Ordering::Relaxed);
                }
                None => {
                    ab.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        link.tx_flush();
        to_b.recycle(&mut out);

        link.rx_burst(&mut rx, BATCH);
        let m = rx.len();
        for f in rx.drain(..) {
            to_a.push(f.data(), &mut out, ba);
        }
        to_a.end_batch(&mut out);
        send_all(a, &out, ba);
        to_a.recycle(&mut out);

        if n + m > 0 || link.tx_pending() > 0 {
            last_work = Instant::now();
            block = FIRST_BLOCK;
        } else if last_work.elapsed() >= SPIN {
            a.wait_readable_for(block);
            block = (block * 2).min(MAX_BLOCK);
        }
    }
    Ok(())
}
