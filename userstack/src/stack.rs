//! The stack: receive burst → demux → one small smoltcp interface per connection → transmit
//! burst, with O(1) work per packet and per poll whatever the number of connections.
//!
//! smoltcp scans its whole socket set for every packet and every poll. Here every connection
//! owns a smoltcp `Interface` (medium IP) and a `SocketSet` holding just its own socket, so
//! those scans are over one socket. In front of them:
//! - a hash map from (peer address, peer port, local port) to the connection's slot (the local
//!   address is always the stack's one address);
//! - a timer heap of `(deadline, slot, generation)` fed from each interface's `poll_at`;
//! - a dirty list of connections the application wrote to.
//!
//! A poll touches only connections that received a packet, whose timer expired or that were
//! written to. A SYN for a listening port creates a new connection (and its interface) only if
//! the listener's backlog has room; otherwise it is dropped, as Linux does, and the peer
//! retransmits it: a burst of SYNs is queued, never reset.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SDuration, Instant};
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, Ipv4Packet, TcpPacket,
};

use crate::config::{Cidr, Config, CongestionControl};
use crate::faults::{FaultAction, FaultInjector};
use crate::link::{Link, LinkCounters, RxFrame};
use crate::net::{Micros, Net, TxTrack, ETHERTYPE_IPV4, ETH_HDR};
use crate::pcap::PcapWriter;
use crate::recovery::{synth_ack, Recovery};
use crate::stats::Stats;

mod publish;

const RX_BURST: usize = 32;
/// Linux's default `net.core.somaxconn`.
pub const SOMAXCONN: usize = 4096;
const EPHEMERAL: std::ops::Range<u16> = 32768..61000;
/// A half-open connection whose SYN-ACK goes unanswered is dropped silently when Linux drops
/// it: after tcp_synack_retries (5) retransmissions, 1 + 2 + 4 + 8 + 16 + 32 s after the SYN
/// (smoltcp's own SYN-ACK timer has the same schedule but never gives up, so vanished clients
/// would hold backlog places for good).
const SYN_RECV_LIFETIME_US: Micros = 63_000_000;
/// A retransmitted SYN is answered with the SYN-ACK at once, at most this often per connection
/// (Linux's tcp_invalid_ratelimit).
const DUP_SYN_ANSWER_GAP_US: Micros = 500_000;

/// A connection handle. The generation changes whenever a slot is reused, so a handle kept
/// after its connection was freed can never reach the connection that took the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub slot: u32,
    pub gen: u32,
}

/// What changed since the last `take_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A connection became ready in a way it was not (a readiness bit set), or more data
    /// arrived; its readiness as of `take_events` (what `readiness` would return then, without
    /// computing it again). Readiness lost makes no event.
    Conn(ConnId, Readiness),
    /// A connection joined a listener's accept queue (one event per connection).
    Accept(u16),
}

/// Readiness of a connection, with the meaning of the epoll bits of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer sent FIN (EPOLLRDHUP).
    pub rdhup: bool,
    /// Both directions are closed, or the connection was reset (EPOLLHUP).
    pub hup: bool,
    /// A pending error (EPOLLERR).
    pub error: bool,
}

impl Readiness {
    /// Whether a bit is set here that is not set in `before`.
    #[inline]
    pub fn gained_since(self, before: Readiness) -> bool {
        (self.readable && !before.readable)
            || (self.writable && !before.writable)
            || (self.rdhup && !before.rdhup)
            || (self.hup && !before.hup)
            || (self.error && !before.error)
    }
}

/// Errors of socket operations, mapped one to one onto errno by callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockError {
    /// EAGAIN
    WouldBlock,
    /// ECONNRESET
    Reset,
    /// ETIMEDOUT
    TimedOut,
    /// ECONNREFUSED (an active open answered by RST)
    Refused,
    /// EPIPE: writing after shutdown(SHUT_WR) or after the connection closed.
    Pipe,
    /// ENOTCONN
    NotConnected,
    /// EBADF: the handle was closed or its slot reused.
    BadHandle,
    /// EADDRINUSE
    AddrInUse,
    /// EADDRNOTAVAIL: no free ephemeral port.
    AddrNotAvail,
    /// EINVAL
    Invalid,
    /// ENETUNREACH
    NetUnreachable,
}

impl SockError {
    pub fn errno(self) -> i32 {
        match self {
            SockError::WouldBlock => libc::EAGAIN,
            SockError::Reset => libc::ECONNRESET,
            SockError::TimedOut => libc::ETIMEDOUT,
            SockError::Refused => libc::ECONNREFUSED,
            SockError::Pipe => libc::EPIPE,
            SockError::NotConnected => libc::ENOTCONN,
            SockError::BadHandle => libc::EBADF,
            SockError::AddrInUse => libc::EADDRINUSE,
            SockError::AddrNotAvail => libc::EADDRNOTAVAIL,
            SockError::Invalid => libc::EINVAL,
            SockError::NetUnreachable => libc::ENETUNREACH,
        }
    }
}

impl std::fmt::Display for SockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.errno()))
    }
}

impl std::error::Error for SockError {}

/// TCP keepalive parameters (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: std::time::Duration,
    pub intvl: std::time::Duration,
    pub cnt: u32,
}

/// Per-socket TCP options; a listener's are inherited by the connections it accepts, as on Linux.
#[derive(Debug, Clone, Copy)]
pub struct TcpOptions {
    pub nodelay: bool,
    pub keepalive: Option<std::time::Duration>,
    pub rcvbuf: usize,
    pub sndbuf: usize,
    pub ack_delay: Option<std::time::Duration>,
    pub cc: CongestionControl,
}

impl TcpOptions {
    pub fn from_config(c: &Config) -> Self {
        TcpOptions {
            nodelay: false,
            keepalive: None,
            rcvbuf: c.rcvbuf,
            sndbuf: c.sndbuf,
            ack_delay: c.ack_delay,
            cc: c.cc,
        }
    }

    fn apply(&self, s: &mut tcp::Socket<'_>) {
        s.set_nagle_enabled(!self.nodelay);
        s.set_ack_delay(self.ack_delay.map(to_sdur));
        s.set_keep_alive(self.keepalive.map(to_sdur));
        s.set_congestion_control(match self.cc {
            CongestionControl::None => tcp::CongestionControl::None,
            CongestionControl::Reno => tcp::CongestionControl::Reno,
            CongestionControl::Cubic => tcp::CongestionControl::Cubic,
        });
    }
}

fn to_sdur(d: std::time::Duration) -> SDuration {
    SDuration::from_micros(d.as_micros() as u64)
}

struct Listener {
    backlog: usize,
    /// Connections born from this listener and not yet accepted (SYN-RECEIVED or ESTABLISHED).
    pending: usize,
    queue: VecDeque<ConnId>,
    opts: TcpOptions,
}

/// Give up on a connection whose data has been unacknowledged, with nothing at all heard
/// from the peer, for this long: Linux's tcp_retries2 (15) with a 200 ms minimum RTO comes to
/// 924.6 s. A peer that answers (zero-window probes, duplicate ACKs) is not given up on.
const GIVE_UP_US: Micros = 924_600_000;
/// The same for an orphan (the application closed it): Linux gives orphans tcp_orphan_retries
/// (8 at its default of 0), ~100 s; 60 s here, as tcp_fin_timeout.
const ORPHAN_GIVE_UP_US: Micros = 60_000_000;
/// An unanswered connect: Linux's tcp_syn_retries (6) with a 1 s initial RTO, 127 s.
const CONNECT_TIMEOUT_US: Micros = 127_000_000;
/// An orphan in FIN-WAIT-2 (our FIN acknowledged, the peer's never comes): tcp_fin_timeout.
const FIN_TIMEOUT_US: Micros = 60_000_000;

/// A passive open's handshake, while the connection is in SYN-RECEIVED.
#[derive(Debug, Clone, Copy)]
struct Handshake {
    /// The client's initial sequence number: a SYN carrying it again is a retransmission.
    peer_isn: u32,
    /// When the connection is dropped if the handshake has not completed.
    expires: Micros,
    /// When a retransmitted SYN was last answered.
    answered: Option<Micros>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// From a listener on this port, not yet accepted.
    Passive(u16),
    /// Accepted, or actively opened.
    Owned,
}

struct Conn {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    key: u64,
    peer: SocketAddrV4,
    local_port: u16,
    origin: Origin,
    handshake: Option<Handshake>,
    app_closed: bool,
    /// Deadline currently in the timer heap for this connection.
    armed: Option<Micros>,
    /// The deadline the connection really has now: when a later deadline supersedes the
    /// armed one, the heap entry stays and, when it fires, re-arms at this one instead of
    /// polling the connection for nothing (with a 1 ms delayed ACK that would be a whole poll
    /// of the connection for most requests). Earlier than `armed` only while the connection
    /// waits in `Stack::arm_next`/`arm_now` (see there).
    want: Option<Micros>,
    /// In `Stack::arm_next` or `arm_now`.
    arm_queued: bool,
    /// Keepalive asked for (setsockopt) but not yet given to smoltcp, and when it is due: see
    /// `set_keepalive`.
    keepalive: Option<(Keepalive, Micros)>,
    dirty: bool,
    event_queued: bool,
    last_state: tcp::State,
    last_ready: Readiness,
    last_recv_queue: usize,
    /// The error to report once (recv/send/SO_ERROR consume it, as Linux's sk_err).
    error: Option<SockError>,
    /// The connection ended by an error (reset, timeout, refused): after the error was reported,
    /// reads give end of stream and writes EPIPE.
    failed: bool,
    /// shutdown(SHUT_RD): reads give what is buffered, then end of stream instead of EAGAIN;
    /// readable and RDHUP from now on (and HUP once sending is shut too), as on Linux.
    rd_shut: bool,
    /// An active open gives up (ETIMEDOUT) at this time if still in SYN-SENT.
    connect_expires: Option<Micros>,
    /// An orphan (closed by the application) in FIN-WAIT-2 is freed at this time.
    orphan_expires: Option<Micros>,
    /// The stack gave up on the connection (`tcp_timeouts`): its error is ETIMEDOUT.
    timed_out: bool,
    track: TxTrack,
    rec: Recovery,
    /// This connection's clock runs this many microseconds ahead of the stack's (see recovery.rs).
    skew: i64,
}

impl Conn {
    /// Sequence space we sent is waiting for the peer's acknowledgement (not counting the
    /// handshake's SYN).
    fn outstanding(&self) -> bool {
        matches!((self.rec.snd_una(), self.track.snd_max),
            (Some(una), Some(max)) if crate::seq::seq_lt(una, max))
    }

    /// When the stack gives up on this connection, as Linux does (see the constants).
    #[inline]
    fn give_up_at(&self) -> Option<Micros> {
        if self.failed || self.timed_out {
            // Over already (reset, timed out, refused): nothing to give up on.
            return None;
        }
        let limit = if self.app_closed {
            ORPHAN_GIVE_UP_US
        } else {
            GIVE_UP_US
        };
        // Both are None for an established connection the application holds.
        earliest(
            earliest(
                self.rec.silent_since().map(|t| t + limit),
                self.connect_expires,
            ),
            self.orphan_expires,
        )
    }

    /// Whether `syn` retransmits the SYN of this connection's handshake, still in progress, and
    /// deserves an answer now (rate limited).
    fn retransmitted_syn(&mut self, syn: &TcpPacket<&[u8]>, us: Micros) -> bool {
        let Some(h) = self.handshake.as_mut() else {
            return false;
        };
        if syn.seq_number().0 as u32 != h.peer_isn
            || h.answered.is_some_and(|t| us < t + DUP_SYN_ANSWER_GAP_US)
        {
            return false;
        }
        h.answered = Some(us);
        true
    }

    /// Moves this connection's clock forward to smoltcp's next timer, so that what smoltcp
    /// would do then (here: a retransmission) happens on the next poll.
    fn skip_to_smoltcp_timer(&mut self, now: Instant) {
        let vnow = now + SDuration::from_micros(self.skew as u64);
        if let Some(at) = self.iface.poll_at(vnow, &self.sockets) {
            if at > vnow {
                self.skew += (at - vnow).total_micros() as i64;
            }
        }
    }
}

/// The earlier of two optional deadlines (an iterator chain over five of them cost ~100
/// instructions per request).
#[inline(always)]
fn earliest(a: Option<Micros>, b: Option<Micros>) -> Option<Micros> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

/// The part of the stack every connection's interface sends through.
struct IpDev<'a, L: Link> {
    rx: Option<&'a [u8]>,
    net: &'a mut Net<L>,
    now: Micros,
    track: Option<&'a mut TxTrack>,
    caps: &'a DeviceCapabilities,
}

struct IpRx<'a>(&'a [u8]);

struct IpTx<'a, L: Link> {
    net: &'a mut Net<L>,
    now: Micros,
    track: Option<&'a mut TxTrack>,
    /// smoltcp leaves the TCP checksum to the "device" (connection interfaces): compute it.
    fill_tcp_checksum: bool,
}

impl smoltcp::phy::RxToken for IpRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<L: Link> smoltcp::phy::TxToken for IpTx<'_, L> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.fill_tcp_checksum {
            self.net.send_ip(self.now, len, self.track, |ip| {
                let r = f(ip);
                crate::csum::fill_tcp_checksum(ip);
                r
            })
        } else {
            self.net.send_ip(self.now, len, self.track, f)
        }
    }
}

impl<L: Link> Device for IpDev<'_, L> {
    type RxToken<'b>
        = IpRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = IpTx<'b, L>
    where
        Self: 'b;

    fn receive(&mut self, _ts: Instant) -> Option<(IpRx<'_>, IpTx<'_, L>)> {
        let data = self.rx.take()?;
        Some((
            IpRx(data),
            IpTx {
                net: self.net,
                now: self.now,
                track: self.track.as_deref_mut(),
                fill_tcp_checksum: !self.caps.checksum.tcp.tx(),
            },
        ))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<IpTx<'_, L>> {
        Some(IpTx {
            net: self.net,
            now: self.now,
            track: self.track.as_deref_mut(),
            fill_tcp_checksum: !self.caps.checksum.tcp.tx(),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// Only used to hand capabilities to `Interface::new`.
struct CapsDev(DeviceCapabilities);

impl Device for CapsDev {
    type RxToken<'b>
        = IpRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = IpRx<'b>
    where
        Self: 'b;
    fn receive(&mut self, _: Instant) -> Option<(IpRx<'_>, IpRx<'_>)> {
        None
    }
    fn transmit(&mut self, _: Instant) -> Option<IpRx<'_>> {
        None
    }
    fn capabilities(&self) -> DeviceCapabilities {
        self.0.clone()
    }
}

impl smoltcp::phy::TxToken for IpRx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, _len: usize, _f: F) -> R {
        unreachable!("CapsDev never hands out tokens")
    }
}

fn key(peer: Ipv4Addr, peer_port: u16, local_port: u16) -> u64 {
    (u64::from(u32::from(peer)) << 32) | (u64::from(peer_port) << 16) | u64::from(local_port)
}

/// The user-space TCP/IPv4 stack over one link.
pub struct Stack<L: Link> {
    net: Net<L>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    demux: HashMap<u64, u32, foldhash::fast::RandomState>,
    listeners: HashMap<u16, Listener, foldhash::fast::RandomState>,
    timers: BinaryHeap<Reverse<(Micros, u32, u32)>>,
    expired: Vec<(Micros, u32, u32)>,
    /// Connections whose received segment made their deadline earlier than the armed one,
    /// queued during this poll (`arm_next`) and the previous one (`arm_now`); the heap gets
    /// their deadline only after the next poll's writes ran. A request's segment arms the
    /// delayed-ACK timer, and the reply the application writes before the next poll carries
    /// that ACK and moves the deadline back to a retransmission time later than the armed
    /// one: then no heap entry is needed at all. Arming at once cost a push and, later, a pop
    /// per request (~250 instructions of ~12,000 per Redis GET). `next_deadline` and `poll`
    /// account for both queues, so no timer fires late.
    arm_next: Vec<(u32, u32)>,
    arm_now: Vec<(u32, u32)>,
    dirty: Vec<u32>,
    events: Vec<Event>,
    control: Interface,
    control_sockets: SocketSet<'static>,
    conn_caps: DeviceCapabilities,
    control_caps: DeviceCapabilities,
    rx: Vec<L::Rx>,
    held_rx: Option<L::Rx>,
    /// Set while `poll` hands a received burst to the connections: the egress a segment makes
    /// due (an ACK) waits for the end of the burst (see `poll_conn`).
    in_rx_burst: bool,
    seed: u64,
    next_ephemeral: u16,
    defaults: TcpOptions,
    live: usize,
    rto_min_us: Micros,
    /// Live statistics in /dev/shm and the TCP state counts they show (stack/publish.rs).
    shm: publish::Shm,
}

impl<L: Link> Stack<L> {
    /// A stack over `link` with the configuration's address, gateway, MAC, pcap and faults.
    pub fn new(link: L, cfg: &Config, now: Instant) -> std::io::Result<Self> {
        let mac = cfg.stack_mac().unwrap_or_else(|| link.mac());
        let mut net = Net::new(link, mac, cfg.addr, cfg.gateway);
        if let Some(path) = &cfg.pcap {
            net.set_pcap(Some(PcapWriter::create(path, cfg.pcap_max_bytes).map_err(
                |e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("MTCP_PCAP={path:?}: cannot create the capture file: {e}"),
                    )
                },
            )?));
        }
        if cfg.faults.active() {
            net.set_faults(Some(FaultInjector::new(cfg.faults)));
        }
        let mut stack = Self::with_net(net, TcpOptions::from_config(cfg), now);
        stack.rto_min_us = cfg.rto_min.as_micros() as Micros;
        stack.start_publishing(cfg, now);
        Ok(stack)
    }

    fn with_net(net: Net<L>, defaults: TcpOptions, now: Instant) -> Self {
        let mtu = net.link().ip_mtu();
        // Unpredictable initial sequence numbers need an unpredictable seed: std's RandomState
        // is keyed from the OS random source.
        let mut seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            0x6d74_6370u64,
        );
        seed ^= now.total_micros() as u64;

        let mut conn_caps = DeviceCapabilities::default();
        conn_caps.medium = Medium::Ip;
        conn_caps.max_transmission_unit = mtu;
        // The demux verifies IPv4 header and TCP checksums before a segment reaches a
        // connection, so smoltcp only computes the IPv4 one on transmit; the TCP checksum of
        // what it sends is ours too (csum.rs: the same result, a fraction of the work).
        let mut cs = ChecksumCapabilities::default();
        cs.ipv4 = Checksum::Tx;
        cs.tcp = Checksum::None;
        conn_caps.checksum = cs;

        let mut control_caps = conn_caps.clone();
        control_caps.checksum = ChecksumCapabilities::default();
        let mut control = Interface::new(
            IfaceConfig::new(HardwareAddress::Ip),
            &mut CapsDev(control_caps.clone()),
            now,
        );
        let cidr = IpCidr::new(IpAddress::Ipv4(net.addr().addr), net.addr().prefix);
        control.update_ip_addrs(|a| {
            let _ = a.push(cidr);
        });
        Stack {
            net,
            slots: Vec::new(),
            free: Vec::new(),
            demux: HashMap::default(),
            listeners: HashMap::default(),
            timers: BinaryHeap::new(),
            expired: Vec::new(),
            arm_next: Vec::new(),
            arm_now: Vec::new(),
            dirty: Vec::new(),
            events: Vec::new(),
            control,
            control_sockets: SocketSet::new(Vec::new()),
            conn_caps,
            control_caps,
            rx: Vec::with_capacity(RX_BURST),
            held_rx: None,
            in_rx_burst: false,
            seed,
            next_ephemeral: EPHEMERAL.start
                + (seed % u64::from(EPHEMERAL.end - EPHEMERAL.start)) as u16,
            defaults,
            live: 0,
            rto_min_us: crate::recovery::DEFAULT_RTO_MIN_US,
            shm: publish::Shm::default(),
        }
    }

    /// A stack over any link with an explicit address (unit tests, other embedders).
    pub fn with_link(
        link: L,
        addr: Cidr,
        mac: Option<[u8; 6]>,
        gateway: Option<Ipv4Addr>,
        opts: TcpOptions,
        now: Instant,
    ) -> Self {
        let mac = mac.unwrap_or_else(|| link.mac());
        Self::with_net(Net::new(link, mac, addr, gateway), opts, now)
    }

    /// The TCP options new sockets start with (from the configuration).
    pub fn default_options(&self) -> TcpOptions {
        self.defaults
    }

    pub fn addr(&self) -> Cidr {
        self.net.addr()
    }

    pub fn mac(&self) -> [u8; 6] {
        self.net.mac()
    }

    pub fn link(&self) -> &L {
        self.net.link()
    }

    pub fn link_mut(&mut self) -> &mut L {
        self.net.link_mut()
    }

    pub fn stats(&self) -> Stats {
        let mut s = *self.net.stats();
        let lc = self.net.link().counters();
        s.drop_tx_ring_full = lc.tx_ring_full;
        s.tx_delayed = lc.tx_delayed;
        s
    }

    pub fn link_counters(&self) -> LinkCounters {
        self.net.link().counters()
    }

    /// Open connections (including those draining after close).
    pub fn connections(&self) -> usize {
        self.live
    }

    pub fn wake_fd(&self) -> Option<RawFd> {
        self.net.link().wake_fd()
    }

    /// Prepares to block on `wake_fd`: arms it, then polls once more so a frame that arrived
    /// before arming is not left waiting. Returns false if that poll found work (do not block);
    /// the wake-up is then disarmed unless `others_blocked` (other threads blocked on it).
    pub fn arm_wake(&mut self, now: Instant, others_blocked: bool) -> bool {
        if self.net.link().wake_fd().is_none() {
            // Nothing to arm, no race to close: the caller's own poll just found nothing.
            self.note_sleep();
            return true;
        }
        self.net.link_mut().arm_wake();
        if self.poll(now) {
            if !others_blocked {
                self.net.link_mut().disarm_wake();
            }
            return false;
        }
        self.note_sleep();
        true
    }

    /// After waking up from `wake_fd`.
    pub fn disarm_wake(&mut self) {
        self.net.link_mut().disarm_wake();
    }

    /// Turns fault injection on or off at run time (tests start clean, then degrade the link).
    pub fn set_faults(&mut self, faults: Option<crate::config::Faults>) {
        self.net
            .set_faults(faults.filter(|f| f.active()).map(FaultInjector::new));
    }

    /// Neighbour cache lookup (diagnostics, tests).
    pub fn neighbor(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.net.neighbor(ip)
    }

    /// The earliest time at which `poll` has timer work to do, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let t = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let queued = self
            .arm_now
            .iter()
            .chain(self.arm_next.iter())
            .filter_map(|&(idx, gen)| self.live_conn(idx, gen)?.want)
            .min();
        let t = match (t, queued) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        let a = self.net.arp_deadline();
        let d = match (t, a) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        if !self.dirty.is_empty() || self.net.link().tx_pending() > 0 {
            return Some(Instant::from_micros(0));
        }
        d.map(|us| Instant::from_micros(us as i64))
    }

    // ---------------------------------------------------------------- polling

    /// Does all pending work: received frames, queued writes, expired timers, then one
    /// transmit burst. Returns whether anything was done.
    pub fn poll(&mut self, now: Instant) -> bool {
        let us = now.total_micros() as Micros;
        self.net.stats_mut().polls += 1;
        let mut work = false;

        let mut rx = std::mem::take(&mut self.rx);
        self.net.link_mut().rx_burst(&mut rx, RX_BURST);
        self.shm.after_rx(!rx.is_empty(), self.net.stats_mut());
        if !rx.is_empty() {
            work = true;
        }
        // Start the cache misses of the whole burst's connections at once (hash bucket, slot,
        // socket), so they overlap instead of stalling one frame at a time; at 10,000
        // connections the stack is bound by these misses, not by instructions.
        if rx.len() > 1 {
            for frame in rx.iter() {
                self.prefetch_conn(frame.data());
            }
        }
        // (A burst of one frame has nothing to coalesce: its egress goes at once.)
        self.in_rx_burst = rx.len() > 1;
        for frame in rx.drain(..) {
            self.rx_faulty(now, frame);
        }
        self.rx = rx;
        if let Some(held) = self.held_rx.take() {
            self.rx_frame(now, held.data());
        }
        self.in_rx_burst = false;

        // Writes before timers: a connection the application wrote to is polled here anyway,
        // and its reply carries what a due delayed-ACK timer would have sent, so that timer
        // then finds its deadline moved (re-armed, no second poll of the connection).
        if !self.dirty.is_empty() {
            work = true;
            self.run_dirty(now);
        }
        self.arm_queued();
        if let Some(&Reverse((t, _, _))) = self.timers.peek() {
            if t <= us {
                work = true;
                self.run_timers(now);
            }
        }
        if self.net.arp_deadline().is_some_and(|d| d <= us) {
            work = true;
            self.net.arp_timers(us);
        }
        self.net.flush();
        if !work {
            self.net.stats_mut().polls_idle += 1;
        }
        if self.shm.due(us, work) {
            self.publish(us);
        }
        work
    }

    /// How many connections have writes queued that the next `poll` or `flush` transmits.
    pub fn pending_writes(&self) -> usize {
        self.dirty.len()
    }

    /// Transmits what the application queued since the last poll, without receiving.
    pub fn flush(&mut self, now: Instant) {
        if !self.dirty.is_empty() {
            self.run_dirty(now);
            self.net.flush();
        }
    }

    /// Entries in the timer heap (live and superseded).
    #[cfg(test)]
    pub(crate) fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// The connection in `slot` if it is still generation `gen`.
    fn live_conn(&self, idx: u32, gen: u32) -> Option<&Conn> {
        let slot = &self.slots[idx as usize];
        slot.conn.as_ref().filter(|_| slot.gen == gen)
    }

    /// Gives the heap the deadlines queued in the previous poll (whatever they are now, after
    /// this poll's writes); this poll's queue waits for the next one.
    fn arm_queued(&mut self) {
        let mut now = std::mem::take(&mut self.arm_now);
        for (idx, gen) in now.drain(..) {
            let slot = &mut self.slots[idx as usize];
            let Some(c) = slot.conn.as_mut().filter(|_| slot.gen == gen) else {
                continue;
            };
            c.arm_queued = false;
            if let Some(w) = c.want {
                if c.armed.is_none_or(|a| w < a) {
                    c.armed = Some(w);
                    self.timers.push(Reverse((w, idx, gen)));
                }
            }
        }
        self.arm_now = std::mem::replace(&mut self.arm_next, now);
        if !self.arm_now.is_empty() {
            self.prune_timers();
        }
    }

    fn run_dirty(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for idx in dirty.drain(..) {
            if let Some(c) = self.slots[idx as usize].conn.as_mut() {
                c.dirty = false;
                self.poll_conn(now, idx, None, false);
            }
        }
        // Keep the allocation; anything marked dirty meanwhile is in self.dirty.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Drops superseded heap entries once they outnumber the live ones (at most one per
    /// connection, its `armed`): every request supersedes a retransmission deadline with a
    /// delayed-ACK one, and popping each stale entry one by one cost a log-sized sift per
    /// request (the heap held ~1 entry per request of the last RTO); `retain` rebuilds it in
    /// one linear pass.
    fn prune_timers(&mut self) {
        if self.timers.len() <= 2 * self.live + 64 {
            return;
        }
        let slots = &self.slots;
        self.timers.retain(|Reverse((t, idx, gen))| {
            let slot = &slots[*idx as usize];
            slot.gen == *gen && slot.conn.as_ref().is_some_and(|c| c.armed == Some(*t))
        });
    }

    fn run_timers(&mut self, now: Instant) {
        let us = now.total_micros() as Micros;
        while let Some(&Reverse((t, idx, gen))) = self.timers.peek() {
            if t > us {
                break;
            }
            self.timers.pop();
            self.expired.push((t, idx, gen));
        }
        let mut expired = std::mem::take(&mut self.expired);
        for (t, idx, gen) in expired.drain(..) {
            let slot = &mut self.slots[idx as usize];
            if slot.gen != gen {
                continue;
            }
            // An entry is live only while it is the connection's armed deadline; entries
            // superseded by an earlier deadline, or by "no timer needed", are dropped here.
            if let Some(c) = slot.conn.as_mut() {
                if c.armed == Some(t) {
                    match c.want {
                        Some(w) if w > us => {
                            c.armed = Some(w);
                            self.timers.push(Reverse((w, idx, gen)));
                        }
                        _ => {
                            c.armed = None;
                            self.poll_conn(now, idx, None, false);
                        }
                    }
                }
            }
        }
        self.expired = expired;
    }

    fn rx_faulty(&mut self, now: Instant, frame: L::Rx) {
        match self.net.rx_fault() {
            FaultAction::Pass => self.rx_frame(now, frame.data()),
            FaultAction::Drop => return,
            FaultAction::Duplicate => {
                self.rx_frame(now, frame.data());
                self.rx_frame(now, frame.data());
            }
            FaultAction::Reorder => {
                if let Some(prev) = self.held_rx.replace(frame) {
                    self.rx_frame(now, prev.data());
                }
                return;
            }
        }
        if let Some(held) = self.held_rx.take() {
            self.rx_frame(now, held.data());
        }
    }

    /// One received Ethernet frame.
    fn rx_frame(&mut self, now: Instant, f: &[u8]) {
        let us = now.total_micros() as Micros;
        if let Some(ip) = self.net.rx_frame(us, f) {
            self.rx_ipv4(now, ip);
        }
    }

    fn rx_ipv4(&mut self, now: Instant, p: &[u8]) {
        let Ok(ip) = Ipv4Packet::new_checked(p) else {
            self.net.stats_mut().drop_malformed += 1;
            return;
        };
        if ip.version() != 4 || !ip.verify_checksum() {
            self.net.stats_mut().drop_malformed += 1;
            return;
        }
        let src = ip.src_addr();
        let dst = ip.dst_addr();
        if dst != self.net.addr().addr {
            self.net.stats_mut().drop_not_ours += 1;
            return;
        }
        if src.is_broadcast()
            || src.is_multicast()
            || src.is_unspecified()
            || src == self.net.addr().broadcast()
        {
            self.net.stats_mut().drop_malformed += 1;
            return;
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            self.net.stats_mut().drop_fragment += 1;
            return;
        }
        let total = usize::from(ip.total_len());
        let packet = &p[..total];
        match ip.next_header() {
            smoltcp::wire::IpProtocol::Tcp => {
                self.rx_tcp(now, packet, src, usize::from(ip.header_len()))
            }
            smoltcp::wire::IpProtocol::Icmp => self.control_input(now, packet),
            _ => self.net.stats_mut().drop_unsupported += 1,
        }
    }

    fn rx_tcp(&mut self, now: Instant, packet: &[u8], src: Ipv4Addr, ihl: usize) {
        let Ok(tcp) = TcpPacket::new_checked(&packet[ihl..]) else {
            self.net.stats_mut().drop_malformed += 1;
            return;
        };
        if !crate::csum::tcp_checksum_ok(packet, ihl) {
            self.net.stats_mut().drop_bad_checksum += 1;
            return;
        }
        let (sport, dport) = (tcp.src_port(), tcp.dst_port());
        if sport == 0 || dport == 0 {
            self.net.stats_mut().drop_malformed += 1;
            return;
        }
        let syn_only = tcp.syn() && !tcp.ack() && !tcp.rst();
        let k = key(src, sport, dport);
        if let Some(&idx) = self.demux.get(&k) {
            // A new SYN on a 4-tuple whose old connection is over (TIME-WAIT, or closed: reset,
            // timed out, or closed by the application and draining) starts a new connection, as
            // on Linux, where such a socket is out of the lookup tables.
            let reuse = syn_only && {
                let c = self.slots[idx as usize]
                    .conn
                    .as_ref()
                    .expect("demux points at live slots");
                let st = c.sockets.get::<tcp::Socket>(c.handle).state();
                st == tcp::State::TimeWait || st == tcp::State::Closed
            };
            if !reuse {
                let us = now.total_micros() as Micros;
                let c = self.slots[idx as usize].conn.as_mut().expect("live");
                if syn_only && c.retransmitted_syn(&tcp, us) {
                    // Its SYN-ACK was lost or is late. smoltcp ignores the SYN and would resend
                    // the SYN-ACK only on its timer; Linux (tcp_check_req) resends it now.
                    c.skip_to_smoltcp_timer(now);
                    self.net.stats_mut().tcp_dup_syn_answered += 1;
                }
                let payload = packet
                    .len()
                    .saturating_sub(ihl + usize::from(tcp.header_len()));
                if c.rd_shut && payload > 0 {
                    // New data after shutdown(SHUT_RD) once our FIN is out (SHUT_RDWR, or
                    // SHUT_RD then SHUT_WR): Linux resets the connection (RFC 1122, 4.2.2.13;
                    // tcp_rcv_state_process in FIN-WAIT-1/2), where RFC 793 would queue it for
                    // a reader that said it will not read.
                    let end = (tcp.seq_number().0 as u32).wrapping_add(payload as u32);
                    let st = c.sockets.get::<tcp::Socket>(c.handle).state();
                    if matches!(st, tcp::State::FinWait1 | tcp::State::FinWait2)
                        && c.rec.peer_next().is_none_or(|n| crate::seq::seq_lt(n, end))
                    {
                        c.sockets.get_mut::<tcp::Socket>(c.handle).abort();
                        self.poll_conn(now, idx, None, false);
                        return;
                    }
                }
                if c.app_closed && payload > 0 {
                    // Data for a connection the application closed has no reader: Linux resets
                    // the connection (tcp_rcv_state_process), which is how a writer learns the
                    // server is gone. Keeping it would fill the window and stall the peer.
                    c.sockets.get_mut::<tcp::Socket>(c.handle).abort();
                    self.poll_conn(now, idx, None, false);
                    return;
                }
                let retx =
                    c.rec
                        .on_segment(&tcp, payload, c.track.snd_max, now.total_micros() as Micros);
                self.poll_conn(now, idx, Some(packet), self.in_rx_burst);
                if retx {
                    self.provoke_fast_retransmit(now, idx);
                }
                return;
            }
            if self.slots[idx as usize]
                .conn
                .as_ref()
                .is_some_and(|c| c.app_closed)
            {
                self.free_conn(idx);
            } else {
                // The application still holds the old connection (to read its error or its
                // last data): it stays, out of the demux.
                self.demux.remove(&k);
            }
        }
        if syn_only {
            if let Some(l) = self.listeners.get(&dport) {
                if l.pending >= l.backlog {
                    self.net.stats_mut().drop_syn_backlog += 1;
                    return;
                }
                let opts = l.opts;
                let idx = self.new_conn(
                    now,
                    k,
                    SocketAddrV4::new(src, sport),
                    dport,
                    Origin::Passive(dport),
                    &opts,
                    |s| {
                        s.listen(IpListenEndpoint {
                            addr: None,
                            port: dport,
                        })
                        .map_err(|_| SockError::Invalid)
                    },
                );
                if let Ok(idx) = idx {
                    if let Some(l) = self.listeners.get_mut(&dport) {
                        l.pending += 1;
                    }
                    let c = self.slots[idx as usize]
                        .conn
                        .as_mut()
                        .expect("just created");
                    c.handshake = Some(Handshake {
                        peer_isn: tcp.seq_number().0 as u32,
                        expires: now.total_micros() as Micros + SYN_RECV_LIFETIME_US,
                        answered: None,
                    });
                    self.poll_conn(now, idx, Some(packet), false);
                }
                return;
            }
        }
        // No connection wants it: smoltcp's control interface answers with RST (never to a RST).
        if !tcp.rst() {
            self.net.stats_mut().tcp_rst_sent += 1;
        }
        self.control_input(now, packet);
    }

    /// Looks up the connection a frame is for and prefetches its state. Parses only what the
    /// lookup needs; `rx_frame` validates everything afterwards.
    fn prefetch_conn(&self, f: &[u8]) {
        if f.len() < ETH_HDR + 40
            || f[12..14] != ETHERTYPE_IPV4.to_be_bytes()
            || f[ETH_HDR + 9] != 6
        {
            return;
        }
        let ihl = usize::from(f[ETH_HDR] & 0x0f) * 4;
        let t = ETH_HDR + ihl;
        if f.len() < t + 4 {
            return;
        }
        let src = Ipv4Addr::new(
            f[ETH_HDR + 12],
            f[ETH_HDR + 13],
            f[ETH_HDR + 14],
            f[ETH_HDR + 15],
        );
        let k = key(
            src,
            u16::from_be_bytes([f[t], f[t + 1]]),
            u16::from_be_bytes([f[t + 2], f[t + 3]]),
        );
        if let Some(&idx) = self.demux.get(&k) {
            if let Some(c) = self.slots[idx as usize].conn.as_ref() {
                crate::prefetch::lines(c as *const Conn as *const u8, std::mem::size_of::<Conn>());
                let sock = c.sockets.get::<tcp::Socket>(c.handle);
                crate::prefetch::lines(
                    sock as *const tcp::Socket as *const u8,
                    std::mem::size_of::<tcp::Socket>(),
                );
            }
        }
    }

    fn control_input(&mut self, now: Instant, packet: &[u8]) {
        let mut dev = IpDev {
            rx: Some(packet),
            net: &mut self.net,
            now: now.total_micros() as Micros,
            track: None,
            caps: &self.control_caps,
        };
        self.control.poll(now, &mut dev, &mut self.control_sockets);
    }

    fn next_seed(&mut self) -> u64 {
        // splitmix64 step
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[allow(clippy::too_many_arguments)]
    fn new_conn(
        &mut self,
        now: Instant,
        k: u64,
        peer: SocketAddrV4,
        local_port: u16,
        origin: Origin,
        opts: &TcpOptions,
        open: impl FnOnce(&mut tcp::Socket<'static>) -> Result<(), SockError>,
    ) -> Result<u32, SockError> {
        let mut cfg = IfaceConfig::new(HardwareAddress::Ip);
        cfg.random_seed = self.next_seed();
        let mut iface = Interface::new(cfg, &mut CapsDev(self.conn_caps.clone()), now);
        let cidr = IpCidr::new(
            IpAddress::Ipv4(self.net.addr().addr),
            self.net.addr().prefix,
        );
        iface.update_ip_addrs(|a| {
            let _ = a.push(cidr);
        });
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; opts.rcvbuf]),
            tcp::SocketBuffer::new(vec![0u8; opts.sndbuf]),
        );
        opts.apply(&mut sock);
        open(&mut sock)?;
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(sock);
        let state = sockets.get::<tcp::Socket>(handle).state();
        let conn = Conn {
            iface,
            sockets,
            handle,
            key: k,
            peer,
            local_port,
            origin,
            handshake: None,
            app_closed: false,
            armed: None,
            want: None,
            arm_queued: false,
            keepalive: None,
            dirty: false,
            event_queued: false,
            last_state: state,
            last_ready: Readiness::default(),
            last_recv_queue: 0,
            error: None,
            failed: false,
            rd_shut: false,
            connect_expires: None,
            orphan_expires: None,
            timed_out: false,
            track: TxTrack::default(),
            rec: Recovery::new(self.rto_min_us),
            skew: 0,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].conn = Some(conn);
                i
            }
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    conn: Some(conn),
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.demux.insert(k, idx);
        self.live += 1;
        self.shm.states.add(state);
        self.net.stats_mut().conns_opened += 1;
        Ok(idx)
    }

    fn free_conn(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        let Some(c) = slot.conn.take() else { return };
        slot.gen = slot.gen.wrapping_add(1);
        if self.demux.get(&c.key) == Some(&idx) {
            self.demux.remove(&c.key);
        }
        if let Origin::Passive(port) = c.origin {
            if let Some(l) = self.listeners.get_mut(&port) {
                l.pending = l.pending.saturating_sub(1);
            }
        }
        self.free.push(idx);
        self.live -= 1;
        self.shm.states.remove(c.last_state);
        self.net.stats_mut().conns_freed += 1;
    }

    /// Runs one connection's interface: ingress of `rx` if given, then egress; then updates
    /// its timer, its readiness and the listener's accept queue.
    ///
    /// `coalesce`: an egress the segment makes due now waits until the end of the received
    /// burst (the connection goes on the dirty list, which `poll` runs right after the burst).
    /// smoltcp acknowledges every second full segment at once; a bulk sender's burst of 32
    /// segments then cost 16 ACK frames, each a transmit through the device, where one ACK
    /// after the burst acknowledges all of it, as Linux's NAPI/GRO batching does.
    fn poll_conn(&mut self, now: Instant, idx: u32, rx: Option<&[u8]>, coalesce: bool) {
        let us = now.total_micros() as Micros;
        let gen = self.slots[idx as usize].gen;
        let c = self.slots[idx as usize]
            .conn
            .as_mut()
            .expect("polled slot is live");
        if c.handshake.is_some_and(|h| h.expires <= us) {
            self.net.stats_mut().syn_recv_expired += 1;
            self.free_conn(idx);
            return;
        }
        if c.rec.deadline().is_some_and(|d| d <= us) && !c.outstanding() {
            c.rec.stop();
        }
        if !c.timed_out && c.give_up_at().is_some_and(|t| t <= us) {
            tracing::debug!(peer = %c.peer, app_closed = c.app_closed, "giving up on the connection");
            c.timed_out = true;
            c.sockets.get_mut::<tcp::Socket>(c.handle).abort();
            self.net.stats_mut().tcp_timeouts += 1;
        }
        if c.rec.deadline().is_some_and(|d| d <= us) {
            // Our retransmission timer, with data outstanding: bring smoltcp's own
            // retransmission time forward to now. (With nothing outstanding smoltcp's next timer
            // is another one, keepalive or TIME-WAIT, which must not be brought forward.)
            c.skip_to_smoltcp_timer(now);
            tracing::debug!(
                peer = %c.peer,
                una = ?c.rec.snd_una(),
                max = ?c.track.snd_max,
                retx = c.track.retransmits,
                state = %c.sockets.get::<tcp::Socket>(c.handle).state(),
                sendq = c.sockets.get::<tcp::Socket>(c.handle).send_queue(),
                "retransmission timeout (assisted)"
            );
            c.rec.on_timeout(us);
            self.net.stats_mut().tcp_rto_assists += 1;
        }
        if let Some((k, due)) = c.keepalive {
            let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
            if due <= us || sock.send_queue() > 0 {
                c.keepalive = None;
                sock.set_keep_alive(Some(to_sdur(k.idle)));
                sock.set_timeout(Some(to_sdur(k.idle + k.intvl * k.cnt)));
            }
        }
        let vnow = now + SDuration::from_micros(c.skew as u64);
        let mut dev = IpDev {
            rx,
            net: &mut self.net,
            now: us,
            track: Some(&mut c.track),
            caps: &self.conn_caps,
        };
        // A received segment: ingress, then egress only if smoltcp has something to send now.
        // A request with a delayed ACK usually has nothing (its ACK leaves with the reply, when
        // the application writes): an egress pass that finds nothing costs about as much as
        // the ingress. Replies smoltcp makes during ingress (RST, challenge ACKs) leave from
        // within it. Writes and timers: egress.
        // Egress: smoltcp sends at most one segment per pass; after a pass that sent, its
        // poll_at (needed anyway, for the timer) says whether another is due now, instead of
        // a last pass that finds nothing (as `Interface::poll` does): a one-segment reply costs
        // one pass and one poll_at. A run of segments then goes out pass after pass. No
        // fragmentation or SLAAC features are built, so `poll_maintenance` has nothing to do.
        // `smol_at`: smoltcp's poll_at, when nothing was sent since it was asked.
        let due = |at: Option<Instant>| at.is_some_and(|t| t <= vnow);
        let mut smol_at = rx.is_some().then(|| {
            c.iface.poll_ingress_single(vnow, &mut dev, &mut c.sockets);
            c.iface.poll_at(vnow, &c.sockets)
        });
        let mut deferred = false;
        if coalesce && smol_at.is_some_and(due) {
            deferred = true;
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(idx);
            }
        } else if smol_at.is_none_or(due) {
            smol_at = if c.iface.poll_egress(vnow, &mut dev, &mut c.sockets) == PollResult::None {
                None
            } else {
                let at = c.iface.poll_at(vnow, &c.sockets);
                if due(at) {
                    // More is due at once: a run of segments (a large reply, an ACK opening
                    // the window). Pass after pass until one sends nothing, and ask poll_at
                    // once afterwards, not after every segment.
                    while c.iface.poll_egress(vnow, &mut dev, &mut c.sockets) != PollResult::None {}
                    None
                } else {
                    Some(at)
                }
            };
        }
        if !c.failed {
            c.rec.on_sent(c.track.snd_max, c.track.retransmits, us);
        }

        let sock = c.sockets.get::<tcp::Socket>(c.handle);
        let state = sock.state();
        let prev = c.last_state;
        if state != tcp::State::SynSent {
            c.connect_expires = None;
        }
        if state != tcp::State::FinWait2 {
            // (On to TIME-WAIT: that has its own end.)
            c.orphan_expires = None;
        } else if c.app_closed && c.orphan_expires.is_none() {
            c.orphan_expires = Some(us + FIN_TIMEOUT_US);
        }
        if state != prev {
            c.last_state = state;
            self.shm.states.moved(prev, state);
            if state == tcp::State::Closed && !c.failed && !c.app_closed {
                let error = match prev {
                    _ if c.timed_out => Some(SockError::TimedOut),
                    tcp::State::SynSent => Some(SockError::Refused),
                    tcp::State::LastAck | tcp::State::TimeWait | tcp::State::Closing => None,
                    _ => Some(if sock.timeout().is_some() {
                        SockError::TimedOut
                    } else {
                        SockError::Reset
                    }),
                };
                if error.is_some() {
                    c.error = error;
                    c.failed = true;
                    // Nothing will be acknowledged any more: no retransmission timer.
                    c.rec.stop();
                }
            }
        }

        // Handshake results for connections still owned by their listener.
        if let Origin::Passive(port) = c.origin {
            match state {
                tcp::State::Closed if c.handshake.is_none() => {
                    // Reset while queued for accept: it stays queued, as on Linux, where accept
                    // hands it out and the first read says ECONNRESET (its error is set above).
                    // Freeing it left the listener readable for a connection accept no longer
                    // found (EAGAIN).
                }
                tcp::State::Listen | tcp::State::Closed => {
                    // Reset or timed out during the handshake.
                    self.free_conn(idx);
                    return;
                }
                _ if prev == tcp::State::SynReceived && state != tcp::State::SynReceived => {
                    c.handshake = None;
                    if let Some(l) = self.listeners.get_mut(&port) {
                        l.queue.push_back(ConnId { slot: idx, gen });
                        // One event per connection, also when others are still queued: for an
                        // EPOLLET listener each new connection is an edge, as on Linux.
                        self.events.push(Event::Accept(port));
                    }
                }
                _ => {}
            }
        } else if c.app_closed {
            if state == tcp::State::Closed {
                self.free_conn(idx);
                return;
            }
        } else if rx.is_some() || state != prev {
            // (Without a received segment or a change of state the readiness is what it was:
            // egress frees no buffer room and fills none, `send` records a full buffer itself,
            // and errors come with a change of state. The reply's poll of every request skips
            // this.)
            let ready = readiness(sock, c);
            let rq = sock.recv_queue();
            // Only what a waiter could want: a bit that was not set, or more data to read (an
            // edge for EPOLLET). A lost bit (the application read everything, filled the send
            // buffer) wakes nobody, and every epoll wait re-reads the readiness of what it
            // reports: it was an event per request for nothing (the reply's poll, after Redis
            // had read the request), two hash lookups and a readiness read in the shim.
            if (ready.gained_since(c.last_ready) || rq > c.last_recv_queue) && !c.event_queued {
                c.event_queued = true;
                self.events
                    .push(Event::Conn(ConnId { slot: idx, gen }, ready));
            }
            c.last_ready = ready;
            c.last_recv_queue = rq;
        } else if cfg!(debug_assertions) {
            let ready = readiness(sock, c);
            debug_assert!(
                !ready.gained_since(c.last_ready) && sock.recv_queue() <= c.last_recv_queue,
                "readiness gained without a segment or a change of state: {ready:?} after {:?}",
                c.last_ready
            );
        }

        if deferred {
            // The dirty pass after the burst polls it again and sets its timer.
            return;
        }
        // (Nothing was sent since an ingress's poll_at: it still holds.)
        let smol_at = smol_at
            .unwrap_or_else(|| c.iface.poll_at(vnow, &c.sockets))
            .map(|at| (at.total_micros() - c.skew).max(0) as Micros);
        let at = earliest(
            earliest(smol_at, c.rec.deadline()),
            earliest(
                earliest(
                    c.handshake.map(|h| h.expires),
                    c.keepalive.map(|(_, due)| due),
                ),
                c.give_up_at(),
            ),
        );
        // A later deadline keeps the earlier heap entry (it fires, finds work or not, and
        // re-arms), so the heap does not grow by an entry per packet when a retransmission
        // timer restarts on every ACK; no deadline at all makes the pending entry stale.
        c.want = at.map(|at| at.max(us));
        match at {
            None => c.armed = None,
            Some(at) => {
                let at = at.max(us);
                if c.arm_queued {
                    // Armed from the queue (with `want` as it is then).
                } else if c.armed.is_none_or(|a| at < a) {
                    if rx.is_some() && at > us {
                        // A received segment: most likely a request whose reply will carry the
                        // ACK (see `arm_next`).
                        c.arm_queued = true;
                        self.arm_next.push((idx, gen));
                    } else {
                        c.armed = Some(at);
                        self.timers.push(Reverse((at, idx, gen)));
                        self.prune_timers();
                    }
                }
            }
        }
    }

    /// Hands smoltcp duplicate ACKs (at most three) until it retransmits the first
    /// unacknowledged segment; see recovery.rs for why.
    fn provoke_fast_retransmit(&mut self, now: Instant, idx: u32) {
        self.net.stats_mut().tcp_fast_retransmit_assists += 1;
        let gen = self.slots[idx as usize].gen;
        let mut seg = [0u8; 40];
        for _ in 0..3 {
            let slot = &self.slots[idx as usize];
            let Some(c) = slot.conn.as_ref().filter(|_| slot.gen == gen) else {
                return;
            };
            let seq = match (c.track.last_ack_sent, c.rec.peer_next()) {
                (Some(a), Some(p)) if crate::seq::seq_lt(a, p) => p,
                (a, p) => match a.or(p) {
                    Some(x) => x,
                    None => return,
                },
            };
            let (Some(una), Some(max)) = (c.rec.snd_una(), c.track.snd_max) else {
                return;
            };
            if !crate::seq::seq_lt(una, max) {
                return;
            }
            let before = c.track.retransmits;
            let local = SocketAddrV4::new(self.net.addr().addr, c.local_port);
            synth_ack(&mut seg, c.peer, local, seq, una, c.rec.window_raw());
            self.poll_conn(now, idx, Some(&seg), false);
            let slot = &self.slots[idx as usize];
            match slot.conn.as_ref() {
                Some(c) if slot.gen == gen && c.track.retransmits == before => {}
                _ => return,
            }
        }
    }

    fn mark_dirty(&mut self, idx: u32) {
        let c = self.slots[idx as usize].conn.as_mut().expect("live");
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(idx);
        }
    }

    /// Moves the pending events into `out` (cleared first).
    pub fn take_events(&mut self, out: &mut Vec<Event>) {
        out.clear();
        std::mem::swap(out, &mut self.events);
        for e in out.iter_mut() {
            if let Event::Conn(id, ready) = e {
                if let Some(c) = self.slots[id.slot as usize].conn.as_mut() {
                    c.event_queued = false;
                    // What the connection's last poll_conn computed. Application calls since
                    // then (an event queued by `flush` waits for the next poll) can only have
                    // cleared bits: recv (readable), send (writable), SO_ERROR (error); epoll
                    // re-reads the readiness of every candidate it reports.
                    *ready = c.last_ready;
                }
            }
        }
    }

    // ---------------------------------------------------------------- sockets

    /// Listens on `port` (all of the stack's addresses). Backlog as in listen(2): capped at
    /// SOMAXCONN, at least 1.
    pub fn listen(&mut self, port: u16, backlog: usize, opts: TcpOptions) -> Result<(), SockError> {
        if port == 0 {
            return Err(SockError::Invalid);
        }
        if self.listeners.contains_key(&port) {
            return Err(SockError::AddrInUse);
        }
        let backlog = backlog.clamp(1, SOMAXCONN);
        self.listeners.insert(
            port,
            Listener {
                backlog,
                pending: 0,
                queue: VecDeque::new(),
                opts,
            },
        );
        Ok(())
    }

    /// Changes a listener's backlog (listen(2) called again).
    pub fn set_backlog(&mut self, port: u16, backlog: usize) -> Result<(), SockError> {
        let l = self.listeners.get_mut(&port).ok_or(SockError::Invalid)?;
        l.backlog = backlog.clamp(1, SOMAXCONN);
        Ok(())
    }

    /// Stops listening; connections not yet accepted are reset, as Linux does.
    pub fn unlisten(&mut self, port: u16) {
        let Some(mut l) = self.listeners.remove(&port) else {
            return;
        };
        let victims: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.conn
                    .as_ref()
                    .is_some_and(|c| c.origin == Origin::Passive(port))
            })
            .map(|(i, _)| i as u32)
            .collect();
        l.queue.clear();
        for idx in victims {
            let c = self.slots[idx as usize].conn.as_mut().expect("live");
            c.sockets.get_mut::<tcp::Socket>(c.handle).abort();
            c.origin = Origin::Owned;
            c.app_closed = true;
            self.mark_dirty(idx);
        }
    }

    pub fn accept_queue_len(&self, port: u16) -> usize {
        self.listeners.get(&port).map_or(0, |l| l.queue.len())
    }

    /// Takes the next established connection from the listener's queue.
    pub fn accept(&mut self, port: u16) -> Result<(ConnId, SocketAddrV4), SockError> {
        loop {
            let l = self.listeners.get_mut(&port).ok_or(SockError::Invalid)?;
            let id = l.queue.pop_front().ok_or(SockError::WouldBlock)?;
            let slot = &mut self.slots[id.slot as usize];
            if slot.gen != id.gen {
                continue; // reset while queued and already freed
            }
            let Some(c) = slot.conn.as_mut() else {
                continue;
            };
            l.pending = l.pending.saturating_sub(1);
            c.origin = Origin::Owned;
            let sock = c.sockets.get::<tcp::Socket>(c.handle);
            c.last_ready = readiness(sock, c);
            c.last_recv_queue = sock.recv_queue();
            return Ok((id, c.peer));
        }
    }

    /// Opens a connection to `remote` from an ephemeral port.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddrV4,
        opts: TcpOptions,
    ) -> Result<ConnId, SockError> {
        if remote.port() == 0
            || remote.ip().is_unspecified()
            || remote.ip().is_broadcast()
            || remote.ip().is_multicast()
        {
            return Err(SockError::Invalid);
        }
        if !self.net.addr().contains(*remote.ip()) && self.net.gateway().is_none() {
            return Err(SockError::NetUnreachable);
        }
        let span = EPHEMERAL.end - EPHEMERAL.start;
        let mut port = None;
        for _ in 0..span {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p + 1 >= EPHEMERAL.end {
                EPHEMERAL.start
            } else {
                p + 1
            };
            if !self.listeners.contains_key(&p)
                && !self
                    .demux
                    .contains_key(&key(*remote.ip(), remote.port(), p))
            {
                port = Some(p);
                break;
            }
        }
        let local_port = port.ok_or(SockError::AddrNotAvail)?;
        let k = key(*remote.ip(), remote.port(), local_port);
        let local = IpEndpoint::new(IpAddress::Ipv4(self.net.addr().addr), local_port);
        let remote_ep = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
        // connect() needs the interface's context, so the socket is opened after the
        // connection (and its interface) exists.
        let idx = self.new_conn(now, k, remote, local_port, Origin::Owned, &opts, |_| Ok(()))?;
        let c = self.slots[idx as usize]
            .conn
            .as_mut()
            .expect("just created");
        let cx = c.iface.context();
        let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
        if sock.connect(cx, remote_ep, local).is_err() {
            self.free_conn(idx);
            return Err(SockError::Invalid);
        }
        self.shm.states.moved(c.last_state, tcp::State::SynSent);
        c.last_state = tcp::State::SynSent;
        c.connect_expires = Some(now.total_micros() as Micros + CONNECT_TIMEOUT_US);
        let gen = self.slots[idx as usize].gen;
        self.mark_dirty(idx);
        Ok(ConnId { slot: idx, gen })
    }

    fn conn(&self, id: ConnId) -> Result<&Conn, SockError> {
        let slot = self
            .slots
            .get(id.slot as usize)
            .ok_or(SockError::BadHandle)?;
        match slot.conn.as_ref() {
            Some(c) if slot.gen == id.gen && !c.app_closed => Ok(c),
            _ => Err(SockError::BadHandle),
        }
    }

    fn conn_mut(&mut self, id: ConnId) -> Result<&mut Conn, SockError> {
        let slot = self
            .slots
            .get_mut(id.slot as usize)
            .ok_or(SockError::BadHandle)?;
        match slot.conn.as_mut() {
            Some(c) if slot.gen == id.gen && !c.app_closed => Ok(c),
            _ => Err(SockError::BadHandle),
        }
    }

    pub fn peer_addr(&self, id: ConnId) -> Result<SocketAddrV4, SockError> {
        Ok(self.conn(id)?.peer)
    }

    pub fn local_addr(&self, id: ConnId) -> Result<SocketAddrV4, SockError> {
        Ok(SocketAddrV4::new(
            self.net.addr().addr,
            self.conn(id)?.local_port,
        ))
    }

    /// The TCP state of a slot's connection, also after the application closed it (diagnostics).
    pub fn slot_state(&self, id: ConnId) -> Option<(tcp::State, bool, usize)> {
        let slot = self.slots.get(id.slot as usize)?;
        let c = slot.conn.as_ref().filter(|_| slot.gen == id.gen)?;
        let sock = c.sockets.get::<tcp::Socket>(c.handle);
        Some((sock.state(), c.dirty, sock.recv_queue()))
    }

    pub fn state(&self, id: ConnId) -> Result<tcp::State, SockError> {
        let c = self.conn(id)?;
        Ok(c.sockets.get::<tcp::Socket>(c.handle).state())
    }

    pub fn readiness(&self, id: ConnId) -> Result<Readiness, SockError> {
        let c = self.conn(id)?;
        Ok(readiness(c.sockets.get::<tcp::Socket>(c.handle), c))
    }

    /// Bytes waiting to be read (FIONREAD).
    pub fn recv_queue(&self, id: ConnId) -> Result<usize, SockError> {
        let c = self.conn(id)?;
        Ok(c.sockets.get::<tcp::Socket>(c.handle).recv_queue())
    }

    /// Reads into `buf`. `Ok(0)` is end of stream (the peer's FIN, after all data). A
    /// connection that ended in error reports the error once, then end of stream.
    pub fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, SockError> {
        self.recv_inner(id, buf, false)
    }

    /// recv(MSG_PEEK): copies without consuming.
    pub fn peek(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, SockError> {
        self.recv_inner(id, buf, true)
    }

    fn recv_inner(&mut self, id: ConnId, buf: &mut [u8], peek: bool) -> Result<usize, SockError> {
        let rcvbuf_half;
        let n = {
            let c = self.conn_mut(id)?;
            let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
            rcvbuf_half = sock.recv_capacity() / 2;
            let queued = sock.recv_queue();
            if buf.is_empty() {
                return Ok(0);
            }
            let got = if peek {
                sock.peek_slice(buf)
            } else {
                sock.recv_slice(buf)
            };
            match got {
                Ok(0) | Err(tcp::RecvError::InvalidState) | Err(tcp::RecvError::Finished) => {
                    if let Some(e) = c.error.take() {
                        return Err(e);
                    }
                    if c.failed {
                        return Ok(0);
                    }
                    return match sock.state() {
                        tcp::State::SynSent | tcp::State::SynReceived => Err(SockError::WouldBlock),
                        tcp::State::Listen => Err(SockError::NotConnected),
                        _ if sock.may_recv() && !c.rd_shut => Err(SockError::WouldBlock),
                        _ => Ok(0),
                    };
                }
                Ok(n) => {
                    c.last_recv_queue = sock.recv_queue();
                    (n, queued)
                }
            }
        };
        // Reading from a more than half full buffer may open the window enough to tell the
        // peer now (smoltcp decides); otherwise the next segment carries the update.
        if !peek && n.1 > rcvbuf_half {
            self.mark_dirty(id.slot);
        }
        Ok(n.0)
    }

    /// Queues `data` for sending; it leaves on the next `poll` or `flush`.
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<usize, SockError> {
        let n = {
            let c = self.conn_mut(id)?;
            if let Some(e) = c.error.take() {
                return Err(e);
            }
            if c.failed {
                return Err(SockError::Pipe);
            }
            let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
            match sock.state() {
                tcp::State::SynSent | tcp::State::SynReceived => return Err(SockError::WouldBlock),
                tcp::State::Listen => return Err(SockError::NotConnected),
                _ => {}
            }
            if !sock.may_send() {
                return Err(SockError::Pipe);
            }
            if data.is_empty() {
                return Ok(0);
            }
            let n = match sock.send_slice(data) {
                Ok(0) => return Err(SockError::WouldBlock),
                Ok(n) => n,
                Err(_) => return Err(SockError::Pipe),
            };
            if !sock.can_send() {
                // Events are queued when a poll finds the readiness changed since the last
                // one. The buffer is full now: if the next poll takes an ACK that frees room
                // before it polls this write, it finds "writable" again, and must see that as a
                // change, or a writer waiting for EPOLLOUT is never woken.
                c.last_ready.writable = false;
            }
            n
        };
        self.mark_dirty(id.slot);
        Ok(n)
    }

    /// shutdown(SHUT_RD): what is buffered (and what still arrives) can be read, and then reads
    /// give end of stream instead of waiting; the socket is readable with RDHUP from now on
    /// (the caller tells its epoll sets: no event is queued for its own call, as for `send`).
    pub fn shutdown_read(&mut self, id: ConnId) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        let sock = c.sockets.get::<tcp::Socket>(c.handle);
        // Linux sets the flag and still says ENOTCONN for a closed (e.g. reset) socket.
        c.rd_shut = true;
        if matches!(sock.state(), tcp::State::Closed | tcp::State::Listen) {
            return Err(SockError::NotConnected);
        }
        c.last_ready = readiness(sock, c);
        Ok(())
    }

    /// shutdown(SHUT_WR): FIN after the queued data; reading goes on.
    pub fn shutdown_write(&mut self, id: ConnId) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
        if matches!(sock.state(), tcp::State::Closed | tcp::State::Listen) {
            return Err(SockError::NotConnected);
        }
        sock.close();
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// Sets TCP_NODELAY / keepalive on an open connection.
    pub fn set_nodelay(&mut self, id: ConnId, on: bool) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.sockets
            .get_mut::<tcp::Socket>(c.handle)
            .set_nagle_enabled(!on);
        Ok(())
    }

    /// SO_KEEPALIVE with TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT, or off. smoltcp has one
    /// keepalive interval and an inactivity timeout: the first probe goes after `idle` (then
    /// every `idle`), and the connection is aborted (ETIMEDOUT) after `idle + intvl * cnt` without
    /// hearing from the peer, which is when Linux gives up too.
    ///
    /// As on Linux the first probe goes out after `idle` without traffic. smoltcp, given a
    /// keep-alive interval on an idle connection,
    /// probes at once (its timer starts at time 0 until a segment moves it), which Redis's
    /// SO_KEEPALIVE on every accepted client turned into a probe (and the client's duplicate
    /// ACK) per connection, counted as a retransmission. So the setting waits: it is handed to
    /// smoltcp just before the connection next sends (the send restarts smoltcp's idle timer)
    /// or, if it stays silent, `idle` from now, when a probe is due anyway.
    pub fn set_keepalive(
        &mut self,
        now: Instant,
        id: ConnId,
        ka: Option<Keepalive>,
    ) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        match ka {
            Some(k) => {
                let due = now.total_micros() as Micros + k.idle.as_micros() as Micros;
                c.keepalive = Some((k, due));
                // Polled once so that its timer includes `due` (a silent connection is
                // polled again only then).
                self.mark_dirty(id.slot);
            }
            None => {
                c.keepalive = None;
                let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
                sock.set_keep_alive(None);
                sock.set_timeout(None);
            }
        }
        Ok(())
    }

    /// getsockopt(SO_ERROR): the pending error, cleared by reading it.
    pub fn take_error(&mut self, id: ConnId) -> Result<Option<SockError>, SockError> {
        Ok(self.conn_mut(id)?.error.take())
    }

    /// close(2): the handle is dead at once; queued data is still delivered, then FIN, unless
    /// unread data is left, in which case the connection is reset (as Linux does).
    pub fn close(&mut self, id: ConnId) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.app_closed = true;
        let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
        if sock.recv_queue() > 0 {
            sock.abort();
        } else {
            sock.close();
        }
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// close(2) with SO_LINGER {on, 0}: reset now.
    pub fn abort(&mut self, id: ConnId) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.app_closed = true;
        c.sockets.get_mut::<tcp::Socket>(c.handle).abort();
        self.mark_dirty(id.slot);
        Ok(())
    }
}

fn readiness(sock: &tcp::Socket<'_>, c: &Conn) -> Readiness {
    let (error, failed) = (c.error, c.failed);
    let state = sock.state();
    let handshaking = matches!(
        state,
        tcp::State::SynSent | tcp::State::SynReceived | tcp::State::Listen
    );
    let closed = state == tcp::State::Closed || state == tcp::State::TimeWait;
    // The peer's FIN arrived (Linux: RCV_SHUTDOWN, set when the FIN is processed, whether or
    // not data is still queued before it). smoltcp's may_recv stays true until that data is
    // read; with it, EPOLLRDHUP appeared only when the application emptied the buffer.
    // (Closed without an error is the end of a graceful close: after the peer's FIN too.) Past
    // the handshake, these are exactly the states where may_recv can be false.
    // shutdown(SHUT_RD) is RCV_SHUTDOWN too.
    let rdhup = !handshaking
        && (c.rd_shut
            || matches!(
                state,
                tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::Closing
                    | tcp::State::TimeWait
                    | tcp::State::Closed
            ));
    Readiness {
        readable: sock.can_recv() || rdhup || failed,
        writable: (!handshaking && sock.can_send()) || failed || (!handshaking && !sock.may_send()),
        rdhup: rdhup || failed,
        hup: failed || closed || (rdhup && !sock.may_send()),
        error: error.is_some(),
    }
}

// The shim keeps one stack behind a lock shared by the application's threads.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Stack<crate::dpdk::DpdkLink>>();
    assert_send::<Stack<crate::link::MemLink>>();
};
