//! The Ethernet/ARP layer shared by every connection: received frames checked, counted and
//! captured (ARP answered and learnt here, IPv4 handed to the stack's demux); frame building,
//! neighbour resolution, routing to the gateway, pcap and fault injection on the way out.
//!
//! Connections (and the control interface) send and receive IPv4 packets; this layer adds and
//! strips the Ethernet header, so ARP lives in one table for the whole stack.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

use crate::config::Cidr;
use crate::faults::{FaultAction, FaultInjector};
use crate::link::{Link, TxFrame};
use crate::pcap::PcapWriter;
use crate::stats::Stats;

pub const ETH_HDR: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// Shortest Ethernet frame without FCS; shorter frames are padded.
const ETH_MIN_FRAME: usize = 60;

/// Micro-seconds on the stack's monotonic clock.
pub type Micros = u64;

const ARP_RETRY_US: Micros = 1_000_000;
const ARP_TRIES: u8 = 3;
/// An entry older than this is refreshed by a new request (it keeps being used meanwhile).
const ARP_REFRESH_US: Micros = 60_000_000;
/// Packets held per unresolved neighbour, like the kernel's `unres_qlen`.
const ARP_PENDING_MAX: usize = 64;
/// Unresolved neighbours at once; beyond that new ones are refused (and their packets dropped).
const ARP_UNRESOLVED_MAX: usize = 1024;

struct Neighbor {
    mac: Option<[u8; 6]>,
    updated: Micros,
    pending: VecDeque<Vec<u8>>,
    tries: u8,
    next_try: Micros,
}

/// A connection's next hop, resolved (see `HopCache`).
#[derive(Default, Clone, Copy)]
pub struct TxTrack {
    hop: Option<HopCache>,
}

/// A connection's resolved next hop, so that its segments skip the neighbour table (a route,
/// a hash lookup and the refresh check: ~70 instructions per segment). Valid while no
/// neighbour's MAC changed (`Net::hop_epoch`; only resolved entries are cached, and a resolved
/// entry is never removed) and until the entry is due for a refresh (then `next_hop` runs,
/// and sends the refresh).
#[derive(Clone, Copy)]
struct HopCache {
    dst: Ipv4Addr,
    mac: [u8; 6],
    until: Micros,
    epoch: u64,
}

pub struct Net<L: Link> {
    link: L,
    mac: [u8; 6],
    addr: Cidr,
    /// The subnet's broadcast address (`addr`'s).
    broadcast: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
    stats: Stats,
    neighbors: HashMap<Ipv4Addr, Neighbor, foldhash::fast::RandomState>,
    unresolved: usize,
    /// Earliest pending ARP retry.
    arp_deadline: Option<Micros>,
    pcap: Option<PcapWriter>,
    faults: Option<FaultInjector>,
    held_tx: Option<L::Tx>,
    scratch: Vec<u8>,
    /// Moves whenever a neighbour's MAC changes: connections' cached next hops are stale then.
    hop_epoch: u64,
    /// Next hops whose resolution was given up since the stack last asked (`take_unreachable`).
    unreachable: Vec<Ipv4Addr>,
}

enum NextHop {
    /// The MAC, and until when a resolved neighbour's needs no refresh (`None`: broadcast, or
    /// from a connection's cache).
    Mac([u8; 6], Option<Micros>),
    Pending(Ipv4Addr),
    Unroutable,
}

impl<L: Link> Net<L> {
    pub fn new(link: L, mac: [u8; 6], addr: Cidr, gateway: Option<Ipv4Addr>) -> Self {
        Net {
            link,
            mac,
            addr,
            broadcast: addr.broadcast(),
            gateway,
            stats: Stats::default(),
            neighbors: HashMap::default(),
            unresolved: 0,
            arp_deadline: None,
            pcap: None,
            faults: None,
            held_tx: None,
            scratch: Vec::new(),
            hop_epoch: 0,
            unreachable: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn link(&self) -> &L {
        &self.link
    }

    #[inline]
    pub(crate) fn link_mut(&mut self) -> &mut L {
        &mut self.link
    }

    #[inline]
    pub(crate) fn mac(&self) -> [u8; 6] {
        self.mac
    }

    #[inline]
    pub(crate) fn addr(&self) -> Cidr {
        self.addr
    }

    #[inline]
    pub(crate) fn broadcast(&self) -> Ipv4Addr {
        self.broadcast
    }

    #[inline]
    pub(crate) fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway
    }

    /// The stack's counters: this layer counts frames and drops, the layers above count theirs
    /// here too.
    #[inline]
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    #[inline]
    pub(crate) fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// Captures every frame received and sent from now on (`None`: stops capturing).
    pub(crate) fn set_pcap(&mut self, pcap: Option<PcapWriter>) {
        self.pcap = pcap;
    }

    /// Injects faults into the frames received and sent from now on (`None`: a clean link).
    pub(crate) fn set_faults(&mut self, faults: Option<FaultInjector>) {
        self.faults = faults;
    }

    pub fn arp_deadline(&self) -> Option<Micros> {
        self.arp_deadline
    }

    /// The neighbour's MAC, if resolved (for tests and diagnostics).
    pub fn neighbor(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.neighbors.get(&ip).and_then(|n| n.mac)
    }

    /// The next hop of a packet to `dst`: itself on the stack's subnet, else the gateway.
    pub fn route(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if self.addr.contains(dst) {
            Some(dst)
        } else {
            self.gateway
        }
    }

    fn next_hop(&mut self, now: Micros, dst: Ipv4Addr) -> NextHop {
        if dst.is_broadcast() || dst == self.addr.broadcast() {
            return NextHop::Mac(BROADCAST_MAC, None);
        }
        let Some(hop) = self.route(dst) else {
            return NextHop::Unroutable;
        };
        let (mac, refresh, fresh_until) = match self.neighbors.get(&hop) {
            Some(n) => (
                n.mac,
                n.mac.is_some()
                    && now.saturating_sub(n.updated) > ARP_REFRESH_US
                    && n.next_try <= now,
                n.updated + ARP_REFRESH_US,
            ),
            None => (None, false, 0),
        };
        if refresh {
            if let Some(n) = self.neighbors.get_mut(&hop) {
                n.next_try = now + ARP_RETRY_US;
            }
            self.send_arp(now, 1, hop, BROADCAST_MAC, [0; 6]);
        }
        match mac {
            Some(m) => NextHop::Mac(m, Some(fresh_until)),
            None => NextHop::Pending(hop),
        }
    }

    /// Builds one IPv4 packet of `len` bytes with `f` and sends it in an Ethernet frame.
    /// This is the only transmit path: connections' segments and the control interface's
    /// answers end here.
    pub fn send_ip<R>(
        &mut self,
        now: Micros,
        len: usize,
        track: Option<&mut TxTrack>,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        let Some(mut frame) = self.link.tx_alloc(ETH_HDR + len) else {
            self.stats.drop_mempool_empty += 1;
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.resize(len, 0);
            let r = f(&mut scratch);
            self.scratch = scratch;
            return r;
        };
        let buf = frame.data_mut();
        let r = f(&mut buf[ETH_HDR..]);
        let dst = ipv4_dst(&buf[ETH_HDR..]);
        let cached = track.as_ref().and_then(|t| self.cached_hop(now, t, dst));
        let hop = match cached {
            Some(h) => NextHop::Mac(h.mac, None),
            None => {
                let hop = self.next_hop(now, dst);
                if let (NextHop::Mac(mac, fresh), Some(t)) = (&hop, track) {
                    // (An entry due for its refresh is not cached: the next segment looks it
                    // up again, as it would have, until the neighbour answers.)
                    t.hop = fresh.filter(|&until| until >= now).map(|until| HopCache {
                        dst,
                        mac: *mac,
                        until,
                        epoch: self.hop_epoch,
                    });
                }
                hop
            }
        };
        match hop {
            NextHop::Mac(mac, _) => {
                write_eth(frame.data_mut(), mac, self.mac, ETHERTYPE_IPV4);
                self.emit(frame);
            }
            NextHop::Pending(hop) => {
                let pkt = frame.data_mut()[ETH_HDR..].to_vec();
                drop(frame);
                self.queue_unresolved(now, hop, pkt);
            }
            NextHop::Unroutable => self.stats.drop_no_route += 1,
        }
        r
    }

    /// `track`'s next hop for `dst`, if still valid (see `HopCache`).
    #[inline]
    fn cached_hop(&self, now: Micros, track: &TxTrack, dst: Ipv4Addr) -> Option<HopCache> {
        track
            .hop
            .filter(|h| h.dst == dst && h.epoch == self.hop_epoch && now <= h.until)
    }

    /// `dst`'s next hop's MAC, if `track` holds it still valid (see `HopCache`).
    #[inline]
    pub fn cached_hop_mac(&self, now: Micros, track: &TxTrack, dst: Ipv4Addr) -> Option<[u8; 6]> {
        self.cached_hop(now, track, dst).map(|h| h.mac)
    }

    /// Sends a frame of `len` bytes that `f` writes whole (given the next hop's MAC and ours)
    /// to `dst`, when `track` holds `dst`'s next hop still valid (see `HopCache`). False:
    /// it does not, nothing was sent, and `send_ip` is the way (it resolves the hop).
    #[inline]
    pub fn send_to_cached_hop(
        &mut self,
        now: Micros,
        track: &TxTrack,
        dst: Ipv4Addr,
        len: usize,
        f: impl FnOnce(&mut [u8], ([u8; 6], [u8; 6])),
    ) -> bool {
        let Some(mac) = self.cached_hop_mac(now, track, dst) else {
            return false;
        };
        self.send_to_mac(mac, len, f);
        true
    }

    /// Sends a frame of `len` bytes that `f` writes whole (given `mac`, the next hop's, and
    /// ours), a cached hop's ([`Net::cached_hop_mac`]).
    #[inline]
    pub fn send_to_mac(
        &mut self,
        mac: [u8; 6],
        len: usize,
        f: impl FnOnce(&mut [u8], ([u8; 6], [u8; 6])),
    ) {
        match self.link.tx_alloc(len) {
            Some(mut frame) => {
                f(frame.data_mut(), (mac, self.mac));
                self.emit(frame);
            }
            None => self.stats.drop_mempool_empty += 1,
        }
    }

    /// Sends a finished frame: pcap, fault injection, counters, then the link's tx batch.
    #[inline]
    fn emit(&mut self, frame: L::Tx) {
        if self.faults.is_none() && self.held_tx.is_none() {
            self.emit_now(frame);
        } else {
            self.emit_faulty(frame);
        }
    }

    /// [`Net::emit`] with faults injected or a frame held back.
    #[inline(never)]
    fn emit_faulty(&mut self, mut frame: L::Tx) {
        let action = self
            .faults
            .as_mut()
            .map_or(FaultAction::Pass, |f| f.decide());
        match action {
            FaultAction::Pass => self.emit_now(frame),
            FaultAction::Drop => self.stats.fault_dropped += 1,
            FaultAction::Duplicate => {
                self.stats.fault_duplicated += 1;
                let mut data = std::mem::take(&mut self.scratch);
                data.clear();
                data.extend_from_slice(frame.data_mut());
                self.emit_now(frame);
                if let Some(mut copy) = self.link.tx_alloc(data.len()) {
                    copy.data_mut().copy_from_slice(&data);
                    self.emit_now(copy);
                }
                self.scratch = data;
            }
            FaultAction::Reorder => {
                self.stats.fault_reordered += 1;
                if let Some(prev) = self.held_tx.replace(frame) {
                    self.emit_now(prev);
                }
                return;
            }
        }
        if let Some(held) = self.held_tx.take() {
            self.emit_now(held);
        }
    }

    #[inline(always)]
    fn emit_now(&mut self, mut frame: L::Tx) {
        let data = frame.data_mut();
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += data.len() as u64;
        if let Some(p) = self.pcap.as_mut() {
            p.record(data, &mut self.stats);
        }
        self.link.tx_push(frame);
    }

    /// Sends whatever is batched; called once at the end of each poll.
    pub fn flush(&mut self) {
        if let Some(held) = self.held_tx.take() {
            self.emit_now(held);
        }
        self.link.tx_flush();
        if let Some(p) = self.pcap.as_mut() {
            p.flush();
        }
    }

    fn queue_unresolved(&mut self, now: Micros, hop: Ipv4Addr, pkt: Vec<u8>) {
        if !self.neighbors.contains_key(&hop) {
            if self.unresolved >= ARP_UNRESOLVED_MAX {
                self.stats.drop_arp_unresolved += 1;
                return;
            }
            self.unresolved += 1;
            self.neighbors.insert(
                hop,
                Neighbor {
                    mac: None,
                    updated: now,
                    pending: VecDeque::new(),
                    tries: 1,
                    next_try: now + ARP_RETRY_US,
                },
            );
            self.arp_deadline = Some(
                self.arp_deadline
                    .map_or(now + ARP_RETRY_US, |d| d.min(now + ARP_RETRY_US)),
            );
            self.send_arp(now, 1, hop, BROADCAST_MAC, [0; 6]);
        }
        let n = self.neighbors.get_mut(&hop).expect("inserted above");
        if n.pending.len() >= ARP_PENDING_MAX {
            self.stats.drop_arp_unresolved += 1;
            return;
        }
        n.pending.push_back(pkt);
    }

    /// The next hops whose resolution was given up since the last call.
    pub fn take_unreachable(&mut self) -> Vec<Ipv4Addr> {
        std::mem::take(&mut self.unreachable)
    }

    /// Retries or gives up unresolved neighbours whose time has come.
    pub fn arp_timers(&mut self, now: Micros) {
        match self.arp_deadline {
            Some(d) if d <= now => {}
            _ => return,
        }
        let mut retry = Vec::new();
        let mut next: Option<Micros> = None;
        let mut given_up = 0u64;
        let mut gone = Vec::new();
        // (Only unresolved entries go: no connection cached one.)
        self.neighbors.retain(|ip, n| {
            if n.mac.is_some() {
                return true;
            }
            if n.next_try > now {
                next = Some(next.map_or(n.next_try, |d| d.min(n.next_try)));
                return true;
            }
            if n.tries >= ARP_TRIES {
                given_up += n.pending.len() as u64;
                gone.push(*ip);
                return false;
            }
            n.tries += 1;
            n.next_try = now + ARP_RETRY_US;
            next = Some(next.map_or(n.next_try, |d| d.min(n.next_try)));
            retry.push(*ip);
            true
        });
        self.unresolved = self.neighbors.values().filter(|n| n.mac.is_none()).count();
        self.stats.drop_arp_unresolved += given_up;
        self.unreachable.extend(gone);
        self.arp_deadline = next;
        for ip in retry {
            self.send_arp(now, 1, ip, BROADCAST_MAC, [0; 6]);
        }
    }

    fn send_arp(
        &mut self,
        _now: Micros,
        op: u16,
        target_ip: Ipv4Addr,
        dst_mac: [u8; 6],
        target_mac: [u8; 6],
    ) {
        let Some(mut frame) = self.link.tx_alloc(ETH_MIN_FRAME) else {
            self.stats.drop_mempool_empty += 1;
            return;
        };
        let buf = frame.data_mut();
        buf.fill(0);
        write_eth(buf, dst_mac, self.mac, ETHERTYPE_ARP);
        let a = &mut buf[ETH_HDR..ETH_HDR + 28];
        a[0..2].copy_from_slice(&1u16.to_be_bytes());
        a[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        a[4] = 6;
        a[5] = 4;
        a[6..8].copy_from_slice(&op.to_be_bytes());
        a[8..14].copy_from_slice(&self.mac);
        a[14..18].copy_from_slice(&self.addr.addr.octets());
        a[18..24].copy_from_slice(&target_mac);
        a[24..28].copy_from_slice(&target_ip.octets());
        if op == 1 {
            self.stats.arp_requests_sent += 1;
        } else {
            self.stats.arp_replies_sent += 1;
        }
        self.emit_now(frame);
    }

    /// What fault injection does to a received frame (counted here); `Pass` on a clean link.
    /// The caller holds a reordered frame back.
    #[inline]
    /// Whether received frames meet injected faults (MTCP_FAULTS).
    pub(crate) fn rx_faults(&self) -> bool {
        self.faults.is_some()
    }

    pub(crate) fn rx_fault(&mut self) -> FaultAction {
        let action = self
            .faults
            .as_mut()
            .map_or(FaultAction::Pass, |f| f.decide());
        match action {
            FaultAction::Pass => {}
            FaultAction::Drop => self.stats.fault_dropped += 1,
            FaultAction::Duplicate => self.stats.fault_duplicated += 1,
            FaultAction::Reorder => self.stats.fault_reordered += 1,
        }
        action
    }

    /// One received Ethernet frame: counted and captured; ARP is handled here, and the IPv4
    /// packet of a frame for our MAC (or broadcast) is returned for the stack's demux.
    #[inline]
    pub(crate) fn rx_frame<'f>(&mut self, now: Micros, f: &'f [u8]) -> Option<&'f [u8]> {
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += f.len() as u64;
        if let Some(p) = self.pcap.as_mut() {
            p.record(f, &mut self.stats);
        }
        if f.len() < ETH_HDR {
            self.stats.drop_malformed += 1;
            return None;
        }
        let dst: [u8; 6] = f[0..6].try_into().expect("6 bytes");
        if dst != self.mac && dst != BROADCAST_MAC {
            self.stats.drop_not_ours += 1;
            return None;
        }
        match u16::from_be_bytes([f[12], f[13]]) {
            ETHERTYPE_IPV4 => return Some(&f[ETH_HDR..]),
            ETHERTYPE_ARP => self.rx_arp(now, &f[ETH_HDR..]),
            _ => self.stats.drop_unsupported += 1,
        }
        None
    }

    /// Handles an ARP packet (the Ethernet payload).
    pub fn rx_arp(&mut self, now: Micros, p: &[u8]) {
        if p.len() < 28
            || u16::from_be_bytes([p[0], p[1]]) != 1
            || u16::from_be_bytes([p[2], p[3]]) != ETHERTYPE_IPV4
            || p[4] != 6
            || p[5] != 4
        {
            self.stats.drop_malformed += 1;
            return;
        }
        let op = u16::from_be_bytes([p[6], p[7]]);
        let sha: [u8; 6] = p[8..14].try_into().expect("6 bytes");
        let spa = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
        let tpa = Ipv4Addr::new(p[24], p[25], p[26], p[27]);
        let sender_ok = sha[0] & 1 == 0
            && sha != [0; 6]
            && sha != self.mac
            && self.addr.contains(spa)
            && spa != self.addr.addr;
        let for_us = tpa == self.addr.addr;
        if !sender_ok {
            if for_us {
                self.stats.drop_malformed += 1;
            }
            return;
        }
        // RFC 826: update an existing entry from any ARP packet; create one only when the packet
        // is for us (as Linux does), so a flood of foreign ARP cannot fill the table.
        if for_us || self.neighbors.contains_key(&spa) {
            self.learn(now, spa, sha);
        }
        if op == 1 && for_us {
            self.send_arp(now, 2, spa, sha, sha);
        }
    }

    fn learn(&mut self, now: Micros, ip: Ipv4Addr, mac: [u8; 6]) {
        let n = self.neighbors.entry(ip).or_insert(Neighbor {
            mac: None,
            updated: now,
            pending: VecDeque::new(),
            tries: 0,
            next_try: 0,
        });
        let was_unresolved = n.mac.is_none() && n.tries > 0;
        if n.mac != Some(mac) {
            // Connections that cached the old MAC look it up again.
            self.hop_epoch += 1;
        }
        n.mac = Some(mac);
        n.updated = now;
        n.tries = 0;
        n.next_try = now;
        let pending = std::mem::take(&mut n.pending);
        if was_unresolved {
            self.unresolved = self.unresolved.saturating_sub(1);
        }
        for pkt in pending {
            match self.link.tx_alloc(ETH_HDR + pkt.len()) {
                Some(mut frame) => {
                    let buf = frame.data_mut();
                    write_eth(buf, mac, self.mac, ETHERTYPE_IPV4);
                    buf[ETH_HDR..].copy_from_slice(&pkt);
                    self.emit(frame);
                }
                None => self.stats.drop_mempool_empty += 1,
            }
        }
    }
}

pub fn write_eth(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

fn ipv4_dst(ip: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])
}

#[cfg(test)]
mod tests;
