//! The stack: receive burst → demux → the connection's TCP engine (`crate::tcp`) → transmit
//! burst, with O(1) work per packet and per poll whatever the number of connections. In front
//! of the connections:
//! - a hash map from (peer address, peer port, local port) to the connection's slot (the local
//!   address is always the stack's one address);
//! - a timer heap of `(deadline, slot, generation)` fed from each interface's `poll_at`;
//! - a dirty list of connections the application wrote to.
//!
//! A poll touches only connections that received a packet, whose timer expired or that were
//! written to. A SYN for a listening port creates a new connection (and its interface) only if
//! the listener's backlog has room; otherwise it is dropped, as Linux does, and the peer
//! retransmits it: a burst of SYNs is queued, never reset.
//!
//! Its rooms:
//! - this file: the [`Stack`] itself, its construction, `poll` (receive burst, writes, timers,
//!   transmit burst), the timer heap and the dirty list;
//! - `api`: the public types of the socket calls (handles, events, readiness, errors, options);
//! - `demux`: a received IPv4 packet to its connection, a listener or the control interface;
//! - `conn`: a connection's state and lifecycle (`poll_conn`), its timeouts and readiness;
//! - `calls`: the socket calls (listen, accept, connect, recv, send, shutdown, close, options);
//! - `device`: the smoltcp `Device` of the control interface (resets for segments no
//!   connection wants, ICMP echo);
//! - `publish`: the live statistics file.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::config::{Cidr, Config};
use crate::faults::FaultInjector;
use crate::link::{Link, LinkCounters, RxFrame};
use crate::net::{Micros, Net};
use crate::pcap::PcapWriter;
use crate::stats::Stats;

mod api;
mod calls;
mod conn;
mod demux;
mod device;
mod frame;
mod handover;
mod publish;
#[cfg(test)]
pub(crate) mod tests;

pub use api::{
    linux_state, ConnId, Event, Keepalive, Readiness, Respond, SockError, TcpInfo, TcpOptions,
};
pub use calls::SOMAXCONN;
use conn::Conn;
use device::CapsDev;

const RX_BURST: usize = 32;

/// `Stack::rx_at` while the frame handed over has no slot from the prefetch.
const NO_FRAME: u32 = u32::MAX;

/// Which frames of a burst another frame of the same connection may follow (bit `i` for
/// frame `i`, from the prefetch's slots): set where a later frame's slot falls in the same of
/// 64 buckets, so a frame left clear is surely its connection's last of the burst.
fn followed_frames(found: &[Option<u32>]) -> u32 {
    const _: () = assert!(RX_BURST <= 32);
    let (mut seen, mut followed) = (0u64, 0u32);
    for (i, slot) in found.iter().enumerate().rev() {
        if let Some(s) = slot {
            let b = 1u64 << (s & 63);
            if seen & b != 0 {
                followed |= 1 << i;
            }
            seen |= b;
        }
    }
    followed
}

/// Whether another frame of the burst may follow frame `at` for the same connection (see
/// `Stack::rx_at`); the burst's `followed_frames`, computed at the first question.
fn rx_may_follow(found: &[Option<u32>], followed: &mut Option<u32>, at: u32) -> bool {
    if at == NO_FRAME {
        return true;
    }
    *followed.get_or_insert_with(|| followed_frames(found)) & (1 << at) != 0
}

/// Counters that spread the local ports of connections to one destination (`connect_from`):
/// how many, a power of two.
const PORT_PERTURB: usize = 256;

/// A listening port: its backlog, and the connections it gave birth to, accepted or not.
struct Listener {
    backlog: usize,
    /// Connections born from this listener and not yet accepted (SYN-RECEIVED or ESTABLISHED).
    pending: usize,
    queue: VecDeque<ConnId>,
    opts: TcpOptions,
}

/// A connection's place; its generation changes whenever it is reused (see [`ConnId`]).
struct Slot {
    gen: u32,
    conn: Option<Conn>,
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
    /// their deadline only after the next poll's writes ran (and not while the request is
    /// unread and the deadline not due: `arm_queued`). A request's segment arms the
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
    control_caps: DeviceCapabilities,
    rx: Vec<L::Rx>,
    held_rx: Option<L::Rx>,
    /// Set while `poll` hands a received burst to the connections: the egress a segment makes
    /// due (an ACK) waits for the end of the burst if another frame of the burst may follow
    /// for its connection (see `poll_conn`).
    in_rx_burst: bool,
    /// The last poll received frames ([`Stack::received`]).
    received: bool,
    /// The frame of the burst being handed over (its index in `rx_found`), `NO_FRAME` when
    /// the prefetch gave it no slot (a new connection, a demux changed since).
    rx_at: u32,
    /// `followed_frames` of the burst, once asked (`rx_may_follow`).
    rx_followed: Option<u32>,
    /// The demux's answers for a burst's frames, from the lookups that prefetched their
    /// connections (`prefetch_conn`): a frame's connection's slot, `None` where nothing was
    /// found. `rx_tcp` takes a frame's answer instead of its own lookup while the demux is as
    /// it was then (`demux_changes`).
    rx_found: Vec<Option<u32>>,
    /// Moves at every insertion into and removal from the demux.
    demux_changes: u64,
    /// Which flows are this stack's when processes share its device (steer.rs).
    steering: crate::steer::Steering,
    /// Connections per steering bucket.
    bucket_conns: [u32; crate::steer::BUCKETS as usize],
    /// The connections of the processes sharing the device (steer.rs), if any.
    flows: Option<Box<dyn crate::steer::FlowRegistry>>,
    /// Ports this process stopped listening on while it shares the device with others
    /// (`flows`): a SYN for one is dropped, not refused. It comes in the moments before
    /// another process takes this one's share of the flows (nginx's old workers close their
    /// listeners on reload), and the client's retransmission finds the new owner, as on Linux,
    /// where the listener lives on in the new workers and nobody is refused. (Refused after
    /// all when the registry says no other process may listen there.)
    closed_ports: Vec<u16>,
    /// Connections this stack offered to the other processes (`flows`) when it stopped
    /// listening (handover.rs).
    handed: Vec<handover::Handing>,
    /// Buffers of freed connections, reused by new ones (`conn::SPARE_BUFFERS` at most).
    spare: Vec<crate::tcp::Buffers>,
    /// Connections in TIME-WAIT that the application closed, by demux key: only their end
    /// time (conn.rs, `enter_time_wait`), in the order they end.
    time_wait: HashMap<u64, Micros, foldhash::fast::RandomState>,
    time_wait_order: VecDeque<(Micros, u64)>,
    seed: u64,
    /// The ports connect() picks from, and how it spreads them: a keyed hash of the
    /// destination and one counter per bucket of destinations (`connect_from`).
    local_ports: crate::config::LocalPorts,
    port_key: std::collections::hash_map::RandomState,
    port_perturb: Box<[u32; PORT_PERTURB]>,
    /// xorshift64 state for the random part of that counter's steps (never 0).
    port_rng: u64,
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
        stack.local_ports = cfg.local_ports.clone();
        stack.start_publishing(cfg, now);
        Ok(stack)
    }

    fn with_net(mut net: Net<L>, defaults: TcpOptions, now: Instant) -> Self {
        net.stats_mut().steer_buckets = u64::from(crate::steer::BUCKETS);
        let mtu = net.link().ip_mtu();
        // Unpredictable initial sequence numbers need an unpredictable seed: std's RandomState
        // is keyed from the OS random source.
        let mut seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            0x6d74_6370u64,
        );
        seed ^= now.total_micros() as u64;

        // The control interface answers segments no connection wants (with a reset) and ICMP
        // echo; it checks and computes every checksum itself.
        let mut control_caps = DeviceCapabilities::default();
        control_caps.medium = Medium::Ip;
        control_caps.max_transmission_unit = mtu;
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
            control_caps,
            rx: Vec::with_capacity(RX_BURST),
            held_rx: None,
            in_rx_burst: false,
            rx_at: NO_FRAME,
            received: false,
            rx_followed: None,
            rx_found: Vec::with_capacity(RX_BURST),
            demux_changes: 0,
            steering: crate::steer::Steering::ALONE,
            bucket_conns: [0; crate::steer::BUCKETS as usize],
            flows: None,
            closed_ports: Vec::new(),
            handed: Vec::new(),
            spare: Vec::new(),
            time_wait: HashMap::default(),
            time_wait_order: VecDeque::new(),
            seed,
            local_ports: crate::config::LocalPorts::default(),
            port_key: std::collections::hash_map::RandomState::new(),
            port_perturb: Box::new([0; PORT_PERTURB]),
            port_rng: (seed >> 1) | 1,
            defaults,
            live: 0,
            rto_min_us: crate::tcp::DEFAULT_RTO_MIN_US,
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

    /// Which flows are this stack's (`Steering::ALONE` unless processes share its device).
    pub fn steering(&self) -> crate::steer::Steering {
        self.steering
    }

    /// Which flows are this stack's, where processes share its device (steer.rs): from now on
    /// SYNs open connections only in `steering.syn`'s buckets, and unwanted segments get a
    /// reset only in `steering.rst`'s.
    pub fn set_steering(&mut self, steering: crate::steer::Steering, now: Instant) {
        if steering == self.steering {
            return;
        }
        self.steering = steering;
        self.net.stats_mut().steer_buckets = u64::from(steering.syn.count_ones());
        // Shown at once (an idle worker blocked in accept publishes nothing).
        self.publish(now.total_micros() as crate::net::Micros);
    }

    /// Processes share the device: `flows` learns of every connection this stack opens and
    /// frees, and decides whether a segment no connection wants gets a reset (steer.rs). The
    /// connections already open are registered now.
    pub fn set_flow_registry(&mut self, mut flows: Box<dyn crate::steer::FlowRegistry>) {
        for &k in self.demux.keys() {
            flows.opened(k);
        }
        self.flows = Some(flows);
    }

    /// Makes the peer of a connection this stack does not have (a worker process that died had
    /// it; the demux key `key` names it) reset it, as the kernel resets the connections of a
    /// process that dies: a bare ACK whose sequence and acknowledgment numbers lie outside any
    /// window, which the peer answers with an ACK of its own (RFC 793; RFC 5961's challenge
    /// ACK); that ACK, a segment no connection wants, gets a reset the peer accepts (its
    /// sequence number is the ACK's acknowledgment number), from whichever process sees it.
    pub fn provoke_reset(&mut self, now: Instant, key: u64) {
        let peer = Ipv4Addr::from((key >> 32) as u32);
        let peer_port = (key >> 16) as u16;
        let local_port = key as u16;
        let r = self.next_seed();
        let local = self.net.addr().addr;
        let us = now.total_micros() as Micros;
        // Two probes, their acknowledgment numbers half the sequence space apart: one is ahead
        // of anything the peer sent, which a stack that checks the acknowledgment before the
        // sequence number (smoltcp) answers too; Linux answers either (its sequence number is
        // outside the window).
        for ack in [(r >> 32) as u32, ((r >> 32) as u32).wrapping_add(1 << 31)] {
            self.net.send_ip(us, 40, None, |p| {
                p.fill(0);
                p[0] = 0x45;
                p[2..4].copy_from_slice(&40u16.to_be_bytes());
                p[6] = 0x40; // don't fragment
                p[8] = 64;
                p[9] = 6;
                p[12..16].copy_from_slice(&local.octets());
                p[16..20].copy_from_slice(&peer.octets());
                crate::csum::fill_ipv4_header_checksum(&mut p[..20]);
                let t = &mut p[20..];
                t[0..2].copy_from_slice(&local_port.to_be_bytes());
                t[2..4].copy_from_slice(&peer_port.to_be_bytes());
                t[4..8].copy_from_slice(&(r as u32).to_be_bytes());
                t[8..12].copy_from_slice(&ack.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = 0x10; // ACK
                t[14..16].copy_from_slice(&1024u16.to_be_bytes());
                crate::csum::fill_tcp_checksum(p);
            });
        }
        self.net.flush();
    }

    /// Live connections per steering bucket (a process hands a bucket over, and stops seeing
    /// its frames once its own connections there are gone).
    pub fn bucket_conns(&self) -> [u32; crate::steer::BUCKETS as usize] {
        // Offers not settled count too: their flows' segments must keep reaching this stack
        // (it stays silent about them) until the taker has them.
        let mut n = self.bucket_conns;
        for h in &self.handed {
            n[handover::bucket_of(h.key) as usize] += 1;
        }
        n
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
        self.arm_wake_with(now, others_blocked, None)
    }

    /// [`Stack::arm_wake`], its poll offering `respond` the connections it brings data to
    /// ([`Stack::poll_with`]).
    pub fn arm_wake_with(
        &mut self,
        now: Instant,
        others_blocked: bool,
        respond: Option<&mut dyn Respond>,
    ) -> bool {
        if self.net.link().wake_fd().is_none() {
            // Nothing to arm, no race to close: the caller's own poll just found nothing.
            self.note_sleep();
            return true;
        }
        self.net.link_mut().arm_wake();
        if self.poll_with(now, respond) {
            if !others_blocked {
                self.net.link_mut().disarm_wake();
            }
            return false;
        }
        self.note_sleep();
        true
    }

    /// Whether the last poll received frames (work of its own, beside what the application
    /// asked of it: writes, timers).
    pub fn received(&self) -> bool {
        self.received
    }

    /// After waking up from `wake_fd`.
    pub fn disarm_wake(&mut self) {
        self.net.link_mut().disarm_wake();
    }

    /// A block returned with `wake_fd` readable: see [`crate::link::Link::wake_seen`]. Call it from every
    /// thread whose block did, before `disarm_wake` where that follows.
    /// `edge_block`: the block watched it edge-triggered ([`Stack::wake_edge`]).
    pub fn wake_seen(&mut self, others_blocked: bool, edge_block: bool) {
        self.net.link_mut().wake_seen(others_blocked, edge_block);
    }

    /// Asks that every waiter watch `wake_fd` edge-triggered: see
    /// [`crate::link::Link::wake_edge`]. Returns whether they must (true) or level-triggered.
    pub fn wake_edge(&mut self) -> bool {
        self.net.link_mut().wake_edge()
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
        self.poll_with(now, None)
    }

    /// [`Stack::poll`], with `respond` offered the connections its received segments bring
    /// data to (see [`Respond`]).
    pub fn poll_with(&mut self, now: Instant, mut respond: Option<&mut dyn Respond>) -> bool {
        let us = now.total_micros() as Micros;
        self.net.stats_mut().polls += 1;
        let mut work = false;
        self.expire_time_wait(us);

        let mut rx = std::mem::take(&mut self.rx);
        self.net.link_mut().rx_burst(&mut rx, RX_BURST);
        self.shm.after_rx(!rx.is_empty(), self.net.stats_mut());
        self.received = !rx.is_empty();
        work |= self.received;
        // Start the cache misses of the whole burst's connections at once (hash bucket, slot,
        // socket), so they overlap instead of stalling one frame at a time; at 10,000
        // connections the stack is bound by these misses, not by instructions.
        // Their answers save `rx_tcp` its own lookup while the demux stays as it is.
        self.rx_found.clear();
        let changes = self.demux_changes;
        if rx.len() > 1 {
            for frame in rx.iter() {
                let slot = self.prefetch_conn(frame.data());
                self.rx_found.push(slot);
            }
        }
        // (A burst of one frame has nothing to coalesce: its egress goes at once.)
        self.in_rx_burst = rx.len() > 1;
        self.rx_followed = None;
        if self.net.rx_faults() {
            for frame in rx.drain(..) {
                self.rx_faulty(now, frame);
            }
        } else {
            for (i, frame) in rx.iter().enumerate() {
                let slot = match self.demux_changes == changes {
                    true => self.rx_found.get(i).copied().flatten(),
                    false => None,
                };
                self.rx_at = if slot.is_some() { i as u32 } else { NO_FRAME };
                self.rx_frame(now, frame.data(), slot, respond.as_deref_mut());
            }
            self.net.link_mut().rx_release(&mut rx);
        }
        self.rx_at = NO_FRAME;
        self.rx = rx;
        if let Some(held) = self.held_rx.take() {
            self.rx_frame(now, held.data(), None, None);
        }
        self.in_rx_burst = false;

        // Writes before timers: a connection the application wrote to is polled here anyway,
        // and its reply carries what a due delayed-ACK timer would have sent, so that timer
        // then finds its deadline moved (re-armed, no second poll of the connection).
        if !self.dirty.is_empty() {
            work = true;
            self.run_dirty(now);
        }
        if !(self.arm_now.is_empty() && self.arm_next.is_empty()) {
            self.arm_queued(us);
        }
        if let Some(&Reverse((t, _, _))) = self.timers.peek() {
            if t <= us {
                work = true;
                self.run_timers(now);
            }
        }
        if self.net.arp_deadline().is_some_and(|d| d <= us) {
            work = true;
            self.net.arp_timers(us);
            let gone = self.net.take_unreachable();
            if !gone.is_empty() {
                self.unreachable(now, &gone);
            }
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

    /// ARP gave up on next hops `gone`: connections still connecting through them fail with
    /// EHOSTUNREACH, as Linux's connect() does when its neighbour is not resolved (established
    /// ones go on retransmitting). A walk over the connections, only when ARP gives up.
    #[cold]
    fn unreachable(&mut self, now: Instant, gone: &[Ipv4Addr]) {
        for idx in 0..self.slots.len() as u32 {
            let Some(c) = self.slots[idx as usize].conn.as_mut() else {
                continue;
            };
            if c.last_state != smoltcp::socket::tcp::State::SynSent
                || !self
                    .net
                    .route(*c.peer.ip())
                    .is_some_and(|h| gone.contains(&h))
            {
                continue;
            }
            c.unreachable = true;
            c.tcb.abort();
            // Its error and its event now, before the application looks at it again.
            self.poll_conn(now, idx, None, false, None);
        }
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
    /// this poll's writes); this poll's queue waits for the next one. A connection whose
    /// request is still unread stays queued until it is read or its deadline is due: the
    /// application has not answered yet, and its answer will carry the ACK.
    fn arm_queued(&mut self, us: Micros) {
        let mut now = std::mem::take(&mut self.arm_now);
        for (idx, gen) in now.drain(..) {
            let slot = &mut self.slots[idx as usize];
            let Some(c) = slot.conn.as_mut().filter(|_| slot.gen == gen) else {
                continue;
            };
            if c.tcb.recv_queue() > 0 && c.want.is_some_and(|w| w > us) {
                self.arm_next.push((idx, gen));
                continue;
            }
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
                self.poll_conn(now, idx, None, false, None);
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
                            self.poll_conn(now, idx, None, false, None);
                        }
                    }
                }
            }
        }
        self.expired = expired;
    }

    fn mark_dirty(&mut self, idx: u32) {
        let c = self.slots[idx as usize].conn.as_mut().expect("live");
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(idx);
        }
    }
}

// The shim keeps one stack behind a lock shared by the application's threads.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Stack<crate::dpdk::DpdkLink>>();
    assert_send::<Stack<crate::link::MemLink>>();
};
