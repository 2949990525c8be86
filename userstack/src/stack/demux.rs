//! Received packets to their connections: IPv4 checks, the TCP checksum, the lookup of
//! (peer address, peer port, local port) in the demux map, new connections for a listener's
//! SYNs (within its backlog), and everything else to the control interface (RST, ICMP echo).

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::time::Instant;

use super::api::Respond;
use super::conn::{Conn, Handshake, Open, Origin};
use super::device::IpDev;
use super::Stack;
use crate::faults::FaultAction;
use crate::link::{Link, RxFrame};
use crate::net::{Micros, ETHERTYPE_IPV4, ETH_HDR};
use crate::tcp::seg::{ACK, FIN, RST, SYN};
use crate::tcp::State;

/// IPv4's protocol numbers (its header's byte 9) the stack takes.
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;

/// A half-open connection whose SYN-ACK goes unanswered is dropped silently when Linux drops
/// it: after tcp_synack_retries (5) retransmissions, 1 + 2 + 4 + 8 + 16 + 32 s after the SYN
/// (the engine's SYN-ACK timer has the same schedule but never gives up, so vanished clients
/// would hold backlog places for good).
const SYN_RECV_LIFETIME_US: Micros = 63_000_000;
/// Half-open connections a listener keeps at least (its backlog if larger): Linux's SYN queue
/// default (`tcp_max_syn_backlog`, 1024 on small machines), which its SYN cookies extend
/// without bound. Each costs a connection slot until its handshake completes or expires.
const SYN_QUEUE_MIN: usize = 1024;

impl<L: Link> Stack<L> {
    pub(super) fn rx_faulty(&mut self, now: Instant, frame: L::Rx) {
        match self.net.rx_fault() {
            FaultAction::Pass => self.rx_frame(now, frame.data(), None, None),
            FaultAction::Drop => return,
            FaultAction::Duplicate => {
                self.rx_frame(now, frame.data(), None, None);
                self.rx_frame(now, frame.data(), None, None);
            }
            FaultAction::Reorder => {
                if let Some(prev) = self.held_rx.replace(frame) {
                    self.rx_frame(now, prev.data(), None, None);
                }
                return;
            }
        }
        if let Some(held) = self.held_rx.take() {
            self.rx_frame(now, held.data(), None, None);
        }
    }

    /// One received Ethernet frame; `found`: its connection's slot, if the demux was asked
    /// already (`prefetch_conn`) and has not changed since.
    /// `respond`: offered the connection if the frame brings it data ([`Respond`]).
    pub(super) fn rx_frame(
        &mut self,
        now: Instant,
        f: &[u8],
        found: Option<u32>,
        respond: Option<&mut (dyn Respond + '_)>,
    ) {
        let us = now.total_micros() as Micros;
        if let Some(ip) = self.net.rx_frame(us, f) {
            self.rx_ipv4(now, ip, found, respond);
        }
    }

    fn rx_ipv4(
        &mut self,
        now: Instant,
        p: &[u8],
        found: Option<u32>,
        respond: Option<&mut (dyn Respond + '_)>,
    ) {
        // The header's fields where they are (RFC 791): a version 4 header of at least 20
        // bytes, its checksum right, inside a total length the frame holds.
        if p.len() < 20 {
            self.net.stats_mut().drop_malformed += 1;
            return;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if p[0] >> 4 != 4
            || ihl < 20
            || ihl > total
            || total > p.len()
            || !crate::csum::ipv4_header_ok(&p[..ihl])
        {
            self.net.stats_mut().drop_malformed += 1;
            return;
        }
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        if dst != self.net.addr().addr {
            self.net.stats_mut().drop_not_ours += 1;
            return;
        }
        if src.is_broadcast()
            || src.is_multicast()
            || src.is_unspecified()
            || src == self.net.broadcast()
        {
            self.net.stats_mut().drop_malformed += 1;
            return;
        }
        // More fragments, or an offset.
        if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
            self.net.stats_mut().drop_fragment += 1;
            return;
        }
        let packet = &p[..total];
        match p[9] {
            PROTO_TCP => self.rx_tcp(now, packet, src, ihl, found, respond),
            PROTO_ICMP => self.control_input(now, packet),
            _ => self.net.stats_mut().drop_unsupported += 1,
        }
    }

    fn rx_tcp(
        &mut self,
        now: Instant,
        packet: &[u8],
        src: Ipv4Addr,
        ihl: usize,
        found: Option<u32>,
        respond: Option<&mut (dyn Respond + '_)>,
    ) {
        if !crate::csum::tcp_checksum_ok(packet, ihl) {
            self.net.stats_mut().drop_bad_checksum += 1;
            return;
        }
        let Some(seg) = crate::tcp::seg::parse(&packet[ihl..]) else {
            self.net.stats_mut().drop_malformed += 1;
            return;
        };
        let t = &packet[ihl..];
        let sport = u16::from_be_bytes([t[0], t[1]]);
        let dport = u16::from_be_bytes([t[2], t[3]]);
        if sport == 0 || dport == 0 {
            self.net.stats_mut().drop_malformed += 1;
            return;
        }
        let us = now.total_micros() as Micros;
        let syn_only = seg.has(SYN) && !seg.has(ACK) && !seg.has(RST);
        let k = key(src, sport, dport);
        // (The prefetch's lookup read the same bytes of the same frame.)
        debug_assert!(found.is_none() || found == self.demux.get(&k).copied());
        let found = found.or_else(|| self.demux.get(&k).copied());
        if let Some(idx) = found {
            // A new SYN on a 4-tuple whose old connection is over (TIME-WAIT, or closed: reset,
            // timed out, or closed by the application and draining) starts a new connection, as
            // on Linux, where such a socket is out of the lookup tables.
            let reuse = syn_only && {
                let c = self.slots[idx as usize]
                    .conn
                    .as_ref()
                    .expect("demux points at live slots");
                matches!(c.tcb.state(), State::TimeWait | State::Closed)
            };
            if !reuse {
                let c = self.slots[idx as usize].conn.as_mut().expect("live");
                if syn_only && c.syn_answer_limited(&seg, us) {
                    // Its SYN-ACK was lost or is late: answered at once (as Linux's
                    // tcp_check_req), but at most once per 500 ms.
                    return;
                }
                if syn_only && c.handshake.is_some() {
                    self.net.stats_mut().tcp_dup_syn_answered += 1;
                }
                let payload = seg.payload.len();
                if c.rd_shut && payload > 0 {
                    // New data after shutdown(SHUT_RD) once our FIN is out (SHUT_RDWR, or
                    // SHUT_RD then SHUT_WR): Linux resets the connection (RFC 1122, 4.2.2.13;
                    // tcp_rcv_state_process in FIN-WAIT-1/2), where RFC 793 would queue it for
                    // a reader that said it will not read.
                    let end = seg.seq.wrapping_add(payload as u32);
                    if matches!(c.tcb.state(), State::FinWait1 | State::FinWait2)
                        && crate::seq::seq_lt(c.tcb.rcv_nxt(), end)
                    {
                        // A reset (sent, and reported: ECONNRESET), as Linux's tcp_reset.
                        c.tcb.abort();
                        c.error = Some(super::api::SockError::Reset);
                        c.failed = true;
                        self.poll_conn(now, idx, None, false, None);
                        return;
                    }
                }
                if c.app_closed && payload > 0 {
                    // Data for a connection the application closed has no reader: Linux resets
                    // the connection (tcp_rcv_state_process), which is how a writer learns the
                    // server is gone. Keeping it would fill the window and stall the peer.
                    c.tcb.abort();
                    self.poll_conn(now, idx, None, false, None);
                    return;
                }
                self.poll_conn(now, idx, Some(&seg), self.in_rx_burst, respond);
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
                self.unhash(k, idx);
            }
        }
        if let Some(&end) = self.time_wait.get(&k) {
            if syn_only || end <= us {
                // A new connection for the same addresses and ports (or the record ended).
                self.time_wait.remove(&k);
            } else if !seg.has(FIN) || seg.has(RST) {
                // The peer's last ACK, or a stray segment: no reset.
                return;
            }
            // A FIN retransmitted: our ACK of it was lost. Linux ACKs it again from its
            // timewait socket; the record has no sequence numbers, and a reset frees the peer
            // (closed on its side already) as well: below.
        }
        let bucket = crate::steer::flow_bucket(src, sport, dport);
        if syn_only && !self.steering.takes_syn(bucket) {
            // Another process's new connection (processes sharing the device).
            self.net.stats_mut().steered_away += 1;
            return;
        }
        if syn_only {
            if let Some(l) = self.listeners.get(&dport) {
                // As Linux with tcp_syncookies=1 (its default): a SYN is dropped when the
                // accept queue is full (more than the backlog wait in it); half-open
                // connections do not fill it (past its SYN queue Linux answers with a cookie).
                // The stack has no cookies: it keeps up to SYN_QUEUE_MIN half-open (or the
                // backlog, if larger), so a burst of connects is answered at once instead of
                // a second later.
                let queued = l.queue.len();
                let half_open = l.pending.saturating_sub(queued);
                if queued > l.backlog || half_open >= l.backlog.max(SYN_QUEUE_MIN) {
                    self.net.stats_mut().drop_syn_backlog += 1;
                    return;
                }
                let peer = SocketAddrV4::new(src, sport);
                self.open_passive(now, k, peer, dport, Open::Passive(&seg));
                return;
            }
            if self.closed_ports.contains(&dport)
                && self.flows.as_ref().is_some_and(|f| f.others_may_listen())
            {
                // A port this process gave up among processes sharing the device: another
                // takes its share of the flows (see `closed_ports`). A process with nobody
                // to take over refuses it, as Linux does a port nobody listens on.
                self.net.stats_mut().steered_away += 1;
                return;
            }
        }
        // No connection wants it: the control interface answers with RST (never to a RST),
        // unless another process sharing the device may own the connection, or this stack
        // offered it to them (handover.rs).
        if self.handed.iter().any(|h| h.key == k) {
            self.net.stats_mut().steered_away += 1;
            return;
        }
        let theirs = match self.flows.as_mut() {
            Some(f) => f.elsewhere(k),
            None => !self.steering.resets(bucket),
        };
        if theirs {
            self.net.stats_mut().steered_away += 1;
            return;
        }
        if !seg.has(RST) {
            self.net.stats_mut().tcp_rst_sent += 1;
        }
        self.control_input(now, packet);
    }

    /// A connection born in listener `port`'s queue, in SYN-RECEIVED (a peer's SYN) or
    /// carried from another process (handover.rs), polled at once: its SYN-ACK, or its ACK.
    /// False if nobody listens on `port`.
    pub(super) fn open_passive(
        &mut self,
        now: Instant,
        k: u64,
        peer: SocketAddrV4,
        port: u16,
        open: Open,
    ) -> bool {
        let Some(opts) = self.listeners.get(&port).map(|l| l.opts) else {
            return false;
        };
        let peer_isn = match &open {
            Open::Passive(syn) => syn.seq,
            Open::Carried(c, _) => c.irs,
            Open::Active => unreachable!("an active open has no listener"),
        };
        let us = now.total_micros() as Micros;
        let idx = self.new_conn(now, k, peer, port, Origin::Passive(port), &opts, open);
        if let Some(l) = self.listeners.get_mut(&port) {
            l.pending += 1;
        }
        let c = self.slots[idx as usize]
            .conn
            .as_mut()
            .expect("just created");
        c.handshake = Some(Handshake {
            peer_isn,
            expires: us + SYN_RECV_LIFETIME_US,
            answered: None,
        });
        self.poll_conn(now, idx, None, false, None);
        true
    }

    /// Looks up the connection a frame is for and prefetches its state; returns its slot. Parses only what the lookup needs; `rx_frame` validates everything
    /// afterwards.
    pub(super) fn prefetch_conn(&self, f: &[u8]) -> Option<u32> {
        if f.len() < ETH_HDR + 40
            || f[12..14] != ETHERTYPE_IPV4.to_be_bytes()
            || f[ETH_HDR + 9] != 6
        {
            return None;
        }
        let ihl = usize::from(f[ETH_HDR] & 0x0f) * 4;
        let t = ETH_HDR + ihl;
        if f.len() < t + 4 {
            return None;
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
        let idx = *self.demux.get(&k)?;
        if self.live * std::mem::size_of::<Conn>() > PREFETCH_ABOVE {
            if let Some(c) = self.slots[idx as usize].conn.as_ref() {
                crate::prefetch::lines(c as *const Conn as *const u8, std::mem::size_of::<Conn>());
            }
        }
        Some(idx)
    }

    fn control_input(&mut self, now: Instant, packet: &[u8]) {
        let mut dev = IpDev {
            rx: Some(packet),
            net: &mut self.net,
            now: now.total_micros() as Micros,
            caps: &self.control_caps,
        };
        self.control.poll(now, &mut dev, &mut self.control_sockets);
    }
}

/// The bytes of connection state below which a burst's connections are not prefetched: state
/// that fits in the CPU's caches stays there between bursts, and its ~17 prefetches a frame
/// (one per line of a connection) would cost instructions for no miss saved.
const PREFETCH_ABOVE: usize = 256 * 1024;

pub(super) fn key(peer: Ipv4Addr, peer_port: u16, local_port: u16) -> u64 {
    (u64::from(u32::from(peer)) << 32) | (u64::from(peer_port) << 16) | u64::from(local_port)
}
