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

use anyhow::{anyhow, bail, Context, Result};
use userstack::config::{Config, Faults};
use userstack::faults::{FaultAction, FaultInjector};

const USAGE: &str = "\
usage: mtcp-faultbridge --a IFACE --b IFACE [--faults SPEC]
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
    let b = PacketSocket::open(&b_if)?;
    // SAFETY: installing an async-signal-safe handler that only stores an atomic. No
    // SA_RESTART: a blocked poll() returns EINTR at once.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
    let a = Arc::new(a);
    let b = Arc::new(b);
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
    println!(
        "faultbridge: stopped a_to_b: {} b_to_a: {}",
        ab.summary(),
        ba.summary()
    );
    r1.context("forwarding a->b")?;
    r2.context("forwarding b->a")?;
    Ok(())
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

/// Forwards every frame received on `from` out of `to`, through `faults`, until STOP.
fn forward(
    from: &PacketSocket,
    to: &PacketSocket,
    mut faults: Option<FaultInjector>,
    c: &Counters,
) -> Result<()> {
    let mut batch = Batch::new();
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(2 * BATCH);
    // Spare buffers, so steady-state forwarding does not allocate.
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut held: Option<Vec<u8>> = None;
    while !STOP.load(Ordering::Relaxed) {
        let n = batch
            .recv(from)
            .with_context(|| format!("recv on {}", from.name))?;
        if n == 0 {
            from.wait_readable(100);
            continue;
        }
        for i in 0..n {
            let len = batch.hdrs[i].msg_len as usize;
            let outgoing = batch.addrs[i].sll_pkttype == libc::PACKET_OUTGOING;
            if outgoing {
                continue;
            }
            c.rx.fetch_add(1, Ordering::Relaxed);
            if len > FRAME_MAX || batch.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                c.oversize.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let data = &batch.bufs[i][..len];
            let mut copy = || {
                let mut v = spare.pop().unwrap_or_default();
                v.clear();
                v.extend_from_slice(data);
                v
            };
            match faults.as_mut().map_or(FaultAction::Pass, |f| f.decide()) {
                FaultAction::Pass => out.push(copy()),
                FaultAction::Drop => {
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                FaultAction::Duplicate => {
                    c.duplicated.fetch_add(1, Ordering::Relaxed);
                    let f = copy();
                    out.push(f.clone());
                    out.push(f);
                }
                FaultAction::Reorder => {
                    c.reordered.fetch_add(1, Ordering::Relaxed);
                    let f = copy();
                    if let Some(prev) = held.replace(f) {
                        out.push(prev);
                    }
                    continue;
                }
            }
            // A held frame goes out right behind the frame that overtook it.
            if let Some(h) = held.take() {
                out.push(h);
            }
        }
        // End of the batch: nothing else to overtake a held frame now.
        if let Some(h) = held.take() {
            out.push(h);
        }
        send_all(to, &out, c);
        spare.append(&mut out);
        spare.truncate(4 * BATCH);
    }
    Ok(())
}
