//! A connection: its TCP engine (`crate::tcp::Tcb`), its timers, what its application was
//! told, its creation and end, and its lifecycle: `poll_conn` hands it a received segment,
//! writes what it sends into frames, and turns what happened into timers, events and the
//! listener's accept queue. Linux's timeouts (give up, unanswered connect, orphans) and its
//! readiness rules live here.

use std::cmp::Reverse;
use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::socket::tcp::State as ApiState;
use smoltcp::time::Instant;

use super::api::{ConnId, Event, Readiness, Respond, SockError, TcpOptions};
use super::{frame, Slot, Stack};
use crate::link::Link;
use crate::net::{Micros, Net, TxTrack};
use crate::stats::Stats;
use crate::tcp::seg::{Out, Seg};
use crate::tcp::{earliest, Counters, Failure, Payload, State, Tcb};

/// How long a connection the application closed stays in TIME-WAIT (Linux's TCP_TIMEWAIT_LEN).
pub(super) const TIME_WAIT_US: Micros = crate::tcp::TIME_WAIT_US;
/// A connection in TIME-WAIT whose next deadline is at least this far away owes no ACK.
const TIME_WAIT_SETTLED_US: Micros = 5_000;
/// TIME-WAIT records kept at most (Linux's tcp_max_tw_buckets on a large machine); past that a
/// connection ends without one, as Linux's does.
pub(super) const TIME_WAIT_MAX: usize = 262_144;

/// Buffers of finished connections kept for new ones: enough for a server's churn of short
/// connections (a connection per request at 100 at once), 16 MiB with the default 64 KiB
/// buffers.
pub(super) const SPARE_BUFFERS: usize = 128;

/// A retransmitted SYN is answered with the SYN-ACK at once, at most this often per connection
/// (Linux's tcp_invalid_ratelimit).
const DUP_SYN_ANSWER_GAP_US: Micros = 500_000;

/// Give up on a connection whose data has been unacknowledged, with nothing at all heard
/// from the peer, for this long: Linux's tcp_retries2 (15) with a 200 ms minimum RTO comes to
/// 924.6 s. A peer that answers (zero-window probes, duplicate ACKs) is not given up on.
const GIVE_UP_US: Micros = 924_600_000;
/// The same for an orphan (the application closed it): Linux gives orphans tcp_orphan_retries
/// (8 at its default of 0), ~100 s; 60 s here, as tcp_fin_timeout.
const ORPHAN_GIVE_UP_US: Micros = 60_000_000;
/// An unanswered connect: Linux's tcp_syn_retries (6) with a 1 s initial RTO, 127 s.
pub(super) const CONNECT_TIMEOUT_US: Micros = 127_000_000;

/// How long Linux waits for an answer to a SYN sent with `retries` retransmissions
/// (TCP_SYNCNT, tcp_syn_retries): the RTO starts at 1 s and doubles up to 120 s
/// (tcp_model_timeout: 2^(n+1) - 1 s up to 6 retries, then 120 s more each).
pub(super) fn syn_timeout_us(retries: u32) -> Micros {
    const SECOND: Micros = 1_000_000;
    match retries {
        0..=6 => ((2 << retries) - 1) * SECOND,
        n => (127 + 120 * Micros::from(n - 6)) * SECOND,
    }
}
/// An orphan in FIN-WAIT-2 (our FIN acknowledged, the peer's never comes): tcp_fin_timeout.
const FIN_TIMEOUT_US: Micros = 60_000_000;

/// A passive open's handshake, while the connection is in SYN-RECEIVED.
#[derive(Debug, Clone, Copy)]
pub(super) struct Handshake {
    /// The client's initial sequence number: a SYN carrying it again is a retransmission.
    pub(super) peer_isn: u32,
    /// When the connection is dropped if the handshake has not completed.
    pub(super) expires: Micros,
    /// When a retransmitted SYN was last answered.
    pub(super) answered: Option<Micros>,
}

/// Who holds a connection: its listener (until accepted), or the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// From a listener on this port, not yet accepted.
    Passive(u16),
    /// Accepted, or actively opened.
    Owned,
}

/// How a connection opens.
pub(super) enum Open<'a> {
    /// connect(): SYN-SENT.
    Active,
    /// A peer's SYN to a listener: SYN-RECEIVED.
    Passive(&'a Seg<'a>),
    /// A passive open another process's stack offered (handover.rs), with the peer's bytes
    /// it held.
    Carried(&'a crate::tcp::Carry, &'a [u8]),
}

/// One connection: its TCP engine and what the stack keeps around it.
pub(super) struct Conn {
    pub(super) tcb: Tcb,
    pub(super) key: u64,
    pub(super) peer: SocketAddrV4,
    pub(super) local_port: u16,
    pub(super) origin: Origin,
    pub(super) handshake: Option<Handshake>,
    pub(super) app_closed: bool,
    /// Deadline currently in the timer heap for this connection.
    pub(super) armed: Option<Micros>,
    /// The deadline the connection really has now: when a later deadline supersedes the
    /// armed one, the heap entry stays and, when it fires, re-arms at this one instead of
    /// polling the connection for nothing. Earlier than `armed` only while the connection
    /// waits in `Stack::arm_next`/`arm_now` (see there).
    pub(super) want: Option<Micros>,
    /// In `Stack::arm_next` or `arm_now`.
    pub(super) arm_queued: bool,
    pub(super) dirty: bool,
    pub(super) event_queued: bool,
    /// The edge of the event queued (`Event::Conn`), gathered until `take_events`.
    pub(super) edge: u32,
    /// The state as the socket calls name it (kept for the statistics' state counts).
    pub(super) last_state: ApiState,
    pub(super) last_ready: Readiness,
    pub(super) last_recv_queue: usize,
    /// The error to report once (recv/send/SO_ERROR consume it, as Linux's sk_err).
    pub(super) error: Option<SockError>,
    /// The connection ended by an error (reset, timeout, refused): after the error was reported,
    /// reads give end of stream and writes EPIPE.
    pub(super) failed: bool,
    /// The application was told how its connect() failed (`Stack::disconnect`): the socket
    /// is unconnected, as Linux's after tcp_disconnect: reads are ENOTCONN, and it polls as
    /// writable and hung up.
    pub(super) disconnected: bool,
    /// shutdown(SHUT_RD): reads give what is buffered, then end of stream instead of EAGAIN;
    /// readable and RDHUP from now on (and HUP once sending is shut too), as on Linux.
    pub(super) rd_shut: bool,
    /// An active open gives up (ETIMEDOUT) at this time if still in SYN-SENT.
    pub(super) connect_expires: Option<Micros>,
    /// An orphan (closed by the application) in FIN-WAIT-2 is freed at this time.
    pub(super) orphan_expires: Option<Micros>,
    /// The stack gave up on the connection (`tcp_timeouts`): its error is ETIMEDOUT.
    pub(super) timed_out: bool,
    /// Its next hop was not resolved while it connected: its error is EHOSTUNREACH.
    pub(super) unreachable: bool,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged, with nothing heard from
    /// the peer, before the connection is given up (in place of the default, also for an
    /// orphan). `None`: the default.
    pub(super) user_timeout: Option<Micros>,
    /// The next hop of what it sends (`Net::send_ip`).
    pub(super) track: TxTrack,
    /// What the connection's options change in the frames it sends and in what it queues.
    pub(super) tuning: Tuning,
    /// An option changed what readiness the connection has (TCP_NOTSENT_LOWAT or SO_SNDBUF
    /// lifted): its next poll compares it with what its application was told, without a
    /// segment.
    pub(super) recheck: bool,
    /// Established, waiting for its first data before it is queued for accept (its listener's
    /// TCP_DEFER_ACCEPT): until then at the latest.
    pub(super) deferred_until: Option<Micros>,
    /// The engine's counters as last added to the stack's statistics.
    pub(super) counted: Counters,
}

/// A connection's options that act outside the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tuning {
    /// The IP MTU its segments are sized by (its listener's TCP_MAXSEG may lower the device's).
    pub(super) mtu: usize,
    /// IP_TTL and IP_TOS of every segment it sends.
    pub(super) ttl: u8,
    pub(super) tos: u8,
    /// SO_SNDBUF set on the connection: at most this much queued (at most the send buffer).
    pub(super) snd_cap: Option<usize>,
    /// TCP_NOTSENT_LOWAT: at most this much queued and not yet sent.
    pub(super) notsent_lowat: Option<usize>,
    /// TCP_LINGER2: how long an orphan waits in FIN-WAIT-2 for the peer's FIN (`None`:
    /// tcp_fin_timeout's 60 s; 0: not at all, it is reset).
    pub(super) fin_timeout: Option<Micros>,
    /// The IPv4 header of what it sends, total length and checksum zero, and its sum
    /// (`set_ip_header`): a segment's header is this with its length and checksum filled in.
    pub(super) ip_head: [u8; 20],
    pub(super) ip_sum: u64,
    /// The sum of its TCP pseudo-header without the length.
    pub(super) tcp_pseudo: u64,
    /// Any of SO_SNDBUF (lowered), TCP_NOTSENT_LOWAT is set: sends and readiness ask
    /// `send_room` (one test on every readiness check instead of two).
    pub(super) limited: bool,
}

/// The engine's state under the names the socket calls use.
#[inline]
pub(super) fn api_state(s: State) -> ApiState {
    match s {
        State::SynSent => ApiState::SynSent,
        State::SynReceived => ApiState::SynReceived,
        State::Established => ApiState::Established,
        State::FinWait1 => ApiState::FinWait1,
        State::FinWait2 => ApiState::FinWait2,
        State::CloseWait => ApiState::CloseWait,
        State::Closing => ApiState::Closing,
        State::LastAck => ApiState::LastAck,
        State::TimeWait => ApiState::TimeWait,
        State::Closed => ApiState::Closed,
    }
}

impl Tuning {
    /// Makes the IPv4 header template from `local` and `peer` and the TTL and TOS set.
    pub(super) fn set_ip_header(&mut self, local: Ipv4Addr, peer: Ipv4Addr) {
        let h = crate::csum::ipv4_tcp_template(local, peer, self.tos, self.ttl);
        self.ip_head = h;
        self.ip_sum = crate::csum::ipv4_template_sum(&h);
        self.tcp_pseudo = crate::csum::tcp_pseudo_sum(&h);
    }
}

impl Conn {
    /// The state as the socket calls name it.
    #[inline]
    pub(super) fn state(&self) -> ApiState {
        api_state(self.tcb.state())
    }

    /// What may still be queued: the send buffer (as SO_SNDBUF limits it) less what is in it.
    /// (Out of line: only for connections with such options.)
    #[inline(never)]
    pub(super) fn send_room(&self) -> usize {
        let cap = self.tcb.send_capacity();
        let limit = self.tuning.snd_cap.map_or(cap, |c| c.min(cap));
        let room = limit.saturating_sub(self.tcb.send_queue());
        match self.tuning.notsent_lowat {
            Some(lowat) => room.min(lowat.saturating_sub(self.tcb.notsent())),
            None => room,
        }
    }

    /// Whether an option limits what may be queued below the send buffer (SO_SNDBUF,
    /// TCP_NOTSENT_LOWAT): sends and readiness then ask `send_room`.
    #[inline]
    pub(super) fn limits_sending(&self) -> bool {
        self.tuning.limited
    }

    /// Records whether an option limits sending (after one changed).
    pub(super) fn note_limits(&mut self) {
        self.tuning.limited = self.tuning.snd_cap.is_some() || self.tuning.notsent_lowat.is_some();
    }

    /// When the stack gives up on this connection, as Linux does (see the constants).
    #[inline]
    pub(super) fn give_up_at(&self) -> Option<Micros> {
        if !(self.failed | self.timed_out | self.app_closed)
            && self.user_timeout.is_none()
            && self.connect_expires.is_none()
            && self.orphan_expires.is_none()
        {
            // The usual connection: what the general rules give for it (checked where debug
            // assertions are on: the fuzz targets).
            let at = self.tcb.silent_since().map(|t| t + GIVE_UP_US);
            debug_assert_eq!(at, self.give_up_at_by_rules());
            return at;
        }
        self.give_up_at_by_rules()
    }

    #[inline(never)]
    fn give_up_at_by_rules(&self) -> Option<Micros> {
        if self.failed || self.timed_out {
            // Over already (reset, timed out, refused): nothing to give up on.
            return None;
        }
        let limit = match self.user_timeout {
            Some(t) => t,
            None if self.app_closed => ORPHAN_GIVE_UP_US,
            None => GIVE_UP_US,
        };
        // TCP_USER_TIMEOUT also gives up on a peer that answers but keeps its window shut
        // while data waits for it (Linux's window-probe timer does, since 5.11).
        let shut = match self.user_timeout {
            Some(t) if self.tcb.send_queue() > 0 => self.tcb.zero_window_since().map(|z| z + t),
            _ => None,
        };
        // All are None for an established connection the application holds.
        earliest(
            earliest(
                earliest(self.tcb.silent_since().map(|t| t + limit), shut),
                self.connect_expires,
            ),
            self.orphan_expires,
        )
    }

    /// Whether `syn` retransmits the SYN of this connection's handshake, still in progress,
    /// and its answer is rate limited now: then it is dropped (the engine answers every one).
    pub(super) fn syn_answer_limited(&mut self, syn: &Seg, us: Micros) -> bool {
        let Some(h) = self.handshake.as_mut() else {
            return false;
        };
        if syn.seq != h.peer_isn {
            return false;
        }
        if h.answered.is_some_and(|t| us < t + DUP_SYN_ANSWER_GAP_US) {
            return true;
        }
        h.answered = Some(us);
        false
    }

    /// Gives up on the connection if its time came (see the constants). One step of
    /// `poll_conn`, inlined there.
    #[inline(always)]
    fn give_up_if_due(&mut self, us: Micros, stats: &mut Stats) {
        if !self.timed_out && self.give_up_at().is_some_and(|t| t <= us) {
            tracing::debug!(peer = %self.peer, app_closed = self.app_closed, "giving up on the connection");
            self.timed_out = true;
            self.tcb.abort();
            stats.tcp_timeouts += 1;
        }
    }

    /// Hands the engine's segments to the link: an IPv4 header, the TCP header and options the
    /// engine describes, the payload straight from its send queue, the checksums.
    #[inline]
    fn transmit<L: Link>(&mut self, net: &mut Net<L>, us: Micros) {
        let (lport, pport) = (self.local_port, self.peer.port());
        let (head, sum, mtu) = (&self.tuning.ip_head, self.tuning.ip_sum, self.tuning.mtu);
        let pseudo = self.tuning.tcp_pseudo;
        let track = &mut self.track;
        let peer = *self.peer.ip();
        let reply_to = match self.tcb.reply_ready(us) {
            true => net.cached_hop_mac(us, track, peer),
            false => None,
        };
        if let Some(mac) = reply_to {
            // A request's reply, usually: the engine's one step, the frame in one pass.
            let (out, (a, b)) = self.tcb.reply(us);
            let heads = frame::Heads {
                ip: head,
                ip_sum: sum,
                pseudo,
                ports: (lport, pport),
            };
            net.send_to_mac(mac, frame::TS_HEADERS + a.len() + b.len(), |f, macs| {
                frame::write_ts_frame(f, macs, &heads, &out, (a, b))
            });
            return;
        }
        self.tcb.output(us, &mut |out: &Out, (a, b): Payload| {
            let pay = a.len() + b.len();
            if frame::ts_only(out) {
                let heads = frame::Heads {
                    ip: head,
                    ip_sum: sum,
                    pseudo,
                    ports: (lport, pport),
                };
                let len = frame::TS_HEADERS + pay;
                if net.send_to_cached_hop(us, track, peer, len, |f, macs| {
                    frame::write_ts_frame(f, macs, &heads, out, (a, b))
                }) {
                    return true;
                }
            }
            let mut hl = out.header_len();
            let trimmed;
            let o = if out.nsack > 0 && 20 + hl + pay > mtu {
                // SACK blocks beside a full segment: as many as fit in the MTU.
                let mut t = *out;
                while t.nsack > 0 && 20 + t.header_len() + pay > mtu {
                    t.nsack -= 1;
                }
                hl = t.header_len();
                trimmed = t;
                &trimmed
            } else {
                out
            };
            let len = 20 + hl + pay;
            net.send_ip(us, len, Some(&mut *track), |p| {
                p[..20].copy_from_slice(head);
                p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                p[10..12].copy_from_slice(&crate::csum::ipv4_checksum(sum, len as u16));
                o.write(lport, pport, &mut p[20..20 + hl]);
                let d = 20 + hl;
                p[d..d + a.len()].copy_from_slice(a);
                p[d + a.len()..d + pay].copy_from_slice(b);
                crate::csum::fill_tcp_checksum_with(pseudo, &mut p[20..len]);
            });
            true
        });
    }

    /// Adds what the engine counted since the last time to the stack's statistics.
    #[inline]
    fn count(&mut self, stats: &mut Stats) {
        let now = self.tcb.counters;
        // (Every one of these events retransmits or is a timeout: two comparisons per poll.)
        if now.retransmits != self.counted.retransmits || now.timeouts != self.counted.timeouts {
            stats.tcp_retransmits += now.retransmits - self.counted.retransmits;
            stats.tcp_fast_recoveries += now.fast_recoveries - self.counted.fast_recoveries;
            stats.tcp_rto_timeouts += now.timeouts - self.counted.timeouts;
            stats.tcp_loss_probes += now.loss_probes - self.counted.loss_probes;
            stats.tcp_lost_retransmits += now.lost_retransmits - self.counted.lost_retransmits;
            self.counted = now;
        }
    }
}

impl<L: Link> Stack<L> {
    pub(super) fn next_seed(&mut self) -> u64 {
        // splitmix64 step
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new_conn(
        &mut self,
        now: Instant,
        k: u64,
        peer: SocketAddrV4,
        local_port: u16,
        origin: Origin,
        opts: &TcpOptions,
        open: Open,
    ) -> u32 {
        let us = now.total_micros() as Micros;
        // TCP_MAXSEG: the MSS announced and used is at most it.
        let mut mtu = self.net.link().ip_mtu();
        if let Some(mss) = opts.mss {
            mtu = mtu.min(usize::from(mss) + 40);
        }
        let set = opts.settings(mtu, self.rto_min_us);
        // Unpredictable initial sequence numbers (RFC 6528's aim) from the seeded generator.
        let iss = match open {
            Open::Carried(c, _) => c.iss,
            _ => self.next_seed() as u32,
        };
        // Buffers of a finished connection, of these sizes, if one is kept: their pages are
        // touched already (a fresh 64 KiB pair is zeroed, page by page, through page faults:
        // most of what a connection's setup costs).
        let spare = self
            .spare
            .iter()
            .rposition(|b| b.capacities() == (opts.rcvbuf, opts.sndbuf))
            .map(|i| self.spare.swap_remove(i));
        let tcb = match open {
            Open::Active => Tcb::connect_with(set, us, iss, spare),
            Open::Passive(syn) => Tcb::accept_with(set, us, iss, syn, spare),
            Open::Carried(c, data) => Tcb::carried_with(set, us, c, data, spare),
        };
        // A carried connection past its handshake enters as if the handshake completed here:
        // its first poll queues it for accept (`poll_conn`).
        let state = match open {
            Open::Carried(..) => ApiState::SynReceived,
            _ => api_state(tcb.state()),
        };
        let local = self.net.addr().addr;
        let mut conn = Conn {
            tcb,
            key: k,
            peer,
            local_port,
            origin,
            handshake: None,
            app_closed: false,
            armed: None,
            want: None,
            arm_queued: false,
            dirty: false,
            event_queued: false,
            edge: 0,
            last_state: state,
            last_ready: Readiness::default(),
            last_recv_queue: 0,
            error: None,
            failed: false,
            disconnected: false,
            rd_shut: false,
            connect_expires: None,
            orphan_expires: None,
            timed_out: false,
            unreachable: false,
            user_timeout: None,
            track: TxTrack::default(),
            tuning: Tuning {
                mtu,
                ttl: opts.ttl.unwrap_or(64),
                tos: opts.tos,
                snd_cap: None,
                notsent_lowat: None,
                fin_timeout: None,
                limited: false,
                ip_head: [0; 20],
                ip_sum: 0,
                tcp_pseudo: 0,
            },
            recheck: false,
            deferred_until: None,
            counted: Counters::default(),
        };
        conn.tuning.set_ip_header(local, *peer.ip());
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
        self.demux_changes += 1;
        if let Some(f) = self.flows.as_mut() {
            f.opened(k);
        }
        self.bucket_conns
            [crate::steer::flow_bucket(*peer.ip(), peer.port(), local_port) as usize] += 1;
        self.live += 1;
        self.shm.states.add(state);
        self.net.stats_mut().conns_opened += 1;
        idx
    }

    /// A connection the application closed reached TIME-WAIT: it is freed (its buffers go to
    /// the next connection) and only its end time is kept, as Linux keeps a small timewait
    /// socket instead of the full one. Until then a SYN for the same addresses and ports
    /// starts a new connection (Linux accepts one too), and any other segment is dropped,
    /// never reset (`demux`).
    pub(super) fn enter_time_wait(&mut self, key: u64, us: Micros) {
        if self.time_wait.len() >= TIME_WAIT_MAX {
            return;
        }
        let end = us + TIME_WAIT_US;
        if self.time_wait.insert(key, end).is_none() {
            self.time_wait_order.push_back((end, key));
        }
    }

    /// Drops the TIME-WAIT records that ended.
    pub(super) fn expire_time_wait(&mut self, us: Micros) {
        while let Some(&(end, key)) = self.time_wait_order.front() {
            if end > us {
                break;
            }
            self.time_wait_order.pop_front();
            if self.time_wait.get(&key) == Some(&end) {
                self.time_wait.remove(&key);
            }
        }
    }

    /// Takes `key` out of the demux if it still leads to slot `idx` (and tells the processes
    /// sharing the device: its flow is closed).
    pub(super) fn unhash(&mut self, key: u64, idx: u32) {
        if self.demux.get(&key) == Some(&idx) {
            self.demux.remove(&key);
            self.demux_changes += 1;
            if let Some(f) = self.flows.as_mut() {
                f.closed(key);
            }
        }
    }

    pub(super) fn free_conn(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        let Some(c) = slot.conn.take() else { return };
        slot.gen = slot.gen.wrapping_add(1);
        self.unhash(c.key, idx);
        if let Origin::Passive(port) = c.origin {
            if let Some(l) = self.listeners.get_mut(&port) {
                l.pending = l.pending.saturating_sub(1);
            }
        }
        let b = crate::steer::flow_bucket(*c.peer.ip(), c.peer.port(), c.local_port) as usize;
        self.bucket_conns[b] = self.bucket_conns[b].saturating_sub(1);
        self.free.push(idx);
        self.live -= 1;
        self.shm.states.remove(c.last_state);
        self.net.stats_mut().conns_freed += 1;
        if self.spare.len() < SPARE_BUFFERS {
            self.spare.push(c.tcb.into_buffers());
        }
    }

    /// Runs one connection: the engine takes `rx` if given, then sends what is due; then its
    /// timer, its readiness and the listener's accept queue are brought up to date.
    ///
    /// `coalesce`: `rx` is a segment of a received burst. If another frame of the burst may
    /// follow for the connection, what this one makes due now (an ACK) waits until the end of
    /// the burst (the connection goes on the dirty list, which `poll` runs right after the
    /// burst): one ACK after a burst of 32 segments acknowledges all of them, as Linux's
    /// NAPI/GRO batching does, where one per two full segments would cost 16 frames. A
    /// connection's last segment of the burst (a request the data-path cache answered) sends
    /// at once, in this pass, unless the connection is on the dirty list already.
    /// `respond`: offered the connection after `rx` if it brought data ([`Respond`]).
    pub(super) fn poll_conn(
        &mut self,
        now: Instant,
        idx: u32,
        rx: Option<&Seg>,
        coalesce: bool,
        respond: Option<&mut (dyn Respond + '_)>,
    ) {
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
        if c.want.is_none_or(|w| w <= us) {
            // (Its give-up time is among the deadlines `want` is the earliest of: a poll
            // before that one cannot find it due. An option that brings it earlier polls the
            // connection to set `want` again.)
            c.give_up_if_due(us, self.net.stats_mut());
        }
        let mut deferred = false;
        // The engine's next deadline, when nothing was sent since it was asked (one call of
        // `poll_at` for a request instead of two).
        let mut known_at = None;
        match rx {
            Some(seg) => {
                let queued = c.tcb.recv_queue();
                c.tcb.input(us, seg);
                // Offered: new bytes to read (not a duplicate, nor data out of order), on a
                // connection the application accepted and has not closed.
                let replied = respond
                    .filter(|_| {
                        c.tcb.recv_queue() > queued && c.origin == Origin::Owned && !c.app_closed
                    })
                    .is_some_and(|r| {
                        super::calls::respond_in_place(c, ConnId { slot: idx, gen }, r)
                    });
                // A request with a delayed ACK usually has nothing to send now: its ACK leaves
                // with the reply, when the application writes. A reply queued here is taken as
                // due without asking (if Nagle holds it, the transmit finds nothing to send
                // and sets the deadlines as usual).
                let at = if replied { Some(0) } else { c.tcb.poll_at() };
                if at.is_some_and(|t| t <= us) {
                    if c.dirty
                        || (coalesce
                            && super::rx_may_follow(
                                &self.rx_found,
                                &mut self.rx_followed,
                                self.rx_at,
                            ))
                    {
                        deferred = true;
                        if !c.dirty {
                            c.dirty = true;
                            self.dirty.push(idx);
                        }
                    } else {
                        c.transmit(&mut self.net, us);
                        c.count(self.net.stats_mut());
                    }
                } else {
                    known_at = Some(at);
                }
            }
            None => {
                c.transmit(&mut self.net, us);
                // (Only sending retransmits or times out: input changes neither count.)
                c.count(self.net.stats_mut());
            }
        }

        let state = c.state();
        let prev = c.last_state;
        if state != ApiState::SynSent {
            c.connect_expires = None;
        }
        if state != ApiState::FinWait2 {
            // (On to TIME-WAIT: that has its own end.)
            c.orphan_expires = None;
        } else if c.app_closed && c.orphan_expires.is_none() {
            c.orphan_expires = Some(us + c.tuning.fin_timeout.unwrap_or(FIN_TIMEOUT_US));
        }
        if state != prev {
            c.last_state = state;
            self.shm.states.moved(prev, state);
            if state == ApiState::Closed && !c.failed && !c.app_closed {
                let error = if c.unreachable {
                    Some(SockError::HostUnreachable)
                } else if c.timed_out {
                    Some(SockError::TimedOut)
                } else {
                    match c.tcb.failure() {
                        Some(Failure::Reset) => Some(SockError::Reset),
                        Some(Failure::Refused) => Some(SockError::Refused),
                        Some(Failure::TimedOut) => Some(SockError::TimedOut),
                        None => None,
                    }
                };
                if error.is_some() {
                    c.error = error;
                    c.failed = true;
                }
            }
        }

        // Handshake results for connections still owned by their listener.
        if let Origin::Passive(port) = c.origin {
            match state {
                ApiState::Closed if c.deferred_until.is_some() => {
                    // Reset while its accept was deferred (TCP_DEFER_ACCEPT): gone, as Linux
                    // drops the request; the application never heard of it.
                    self.free_conn(idx);
                    return;
                }
                ApiState::Closed if c.handshake.is_none() => {
                    // Reset while queued for accept: it stays queued, as on Linux, where accept
                    // hands it out and the first read says ECONNRESET (its error is set above).
                    // Freeing it left the listener readable for a connection accept no longer
                    // found (EAGAIN).
                }
                ApiState::Closed => {
                    // Reset or timed out during the handshake.
                    self.free_conn(idx);
                    return;
                }
                _ if prev == ApiState::SynReceived && state != ApiState::SynReceived => {
                    c.handshake = None;
                    let defer = self.listeners.get(&port).and_then(|l| l.opts.defer_accept);
                    match defer {
                        // TCP_DEFER_ACCEPT: not before its first data (or its FIN).
                        Some(d) if c.tcb.recv_queue() == 0 && state == ApiState::Established => {
                            c.deferred_until = Some(us + d.as_micros() as Micros);
                        }
                        _ => {
                            if let Some(l) = self.listeners.get_mut(&port) {
                                l.queue.push_back(ConnId { slot: idx, gen });
                                // One event per connection, also when others are still queued:
                                // for an EPOLLET listener each new connection is an edge, as on
                                // Linux.
                                self.events.push(Event::Accept(port));
                            }
                        }
                    }
                }
                _ if c.deferred_until.is_some_and(|t| {
                    t <= us || c.tcb.recv_queue() > 0 || state != ApiState::Established
                }) =>
                {
                    c.deferred_until = None;
                    if let Some(l) = self.listeners.get_mut(&port) {
                        l.queue.push_back(ConnId { slot: idx, gen });
                        self.events.push(Event::Accept(port));
                    }
                }
                _ => {}
            }
        } else if c.app_closed {
            if state == ApiState::Closed {
                self.free_conn(idx);
                return;
            }
        } else if rx.is_some() || state != prev || c.tuning.limited || c.recheck {
            c.recheck = false;
            // (Without a received segment or a change of state the readiness is what it was:
            // sending frees no buffer room and fills none, `send` records a full buffer itself,
            // and errors come with a change of state. The reply's poll of every request skips
            // this.)
            let ready = readiness(c);
            let rq = c.tcb.recv_queue();
            // Only what a waiter could want: a bit that was not set, or more data to read (an
            // edge for EPOLLET). A lost bit (the application read everything, filled the send
            // buffer) wakes nobody, and every epoll wait re-reads the readiness of what it
            // reports.
            if ready.gained_since(c.last_ready) || rq > c.last_recv_queue {
                c.edge |= edge_of(ready, c.last_ready, rq > c.last_recv_queue);
                if !c.event_queued {
                    c.event_queued = true;
                    self.events
                        .push(Event::Conn(ConnId { slot: idx, gen }, ready, 0));
                }
            }
            c.last_ready = ready;
            c.last_recv_queue = rq;
        } else if cfg!(debug_assertions) {
            let ready = readiness(c);
            debug_assert!(
                !ready.gained_since(c.last_ready) && c.tcb.recv_queue() <= c.last_recv_queue,
                "readiness gained without a segment or a change of state: {ready:?} after {:?}",
                c.last_ready
            );
        }

        if deferred {
            // The dirty pass after the burst polls it again and sets its timer.
            return;
        }
        let tcb_at = known_at.unwrap_or_else(|| c.tcb.poll_at());
        let at = if c.deferred_until.is_none() && c.handshake.is_none() {
            earliest(tcb_at, c.give_up_at())
        } else {
            earliest(
                earliest(tcb_at, c.deferred_until),
                earliest(c.handshake.map(|h| h.expires), c.give_up_at()),
            )
        };
        // A later deadline keeps the earlier heap entry (it fires, finds work or not, and
        // re-arms), so the heap does not grow by an entry per packet when a retransmission
        // timer restarts on every ACK; no deadline at all makes the pending entry stale.
        c.want = at.map(|at| at.max(us));
        if c.app_closed
            && state == ApiState::TimeWait
            && tcb_at.is_none_or(|t| t >= us + TIME_WAIT_SETTLED_US)
        {
            // Closed by the application, in TIME-WAIT, its last ACK sent: the connection
            // becomes a record.
            let key = c.key;
            self.free_conn(idx);
            self.enter_time_wait(key, us);
            return;
        }
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
}

/// The epoll bits of an event (`Event::Conn`): the readiness bits gained, EPOLLIN for more
/// data, and every bit for a change of state (the peer's FIN, an error, a hang-up wake every
/// waiter, as Linux's state change does).
#[inline]
fn edge_of(now: Readiness, before: Readiness, more_data: bool) -> u32 {
    let gained = now.bits() & !before.bits();
    let state = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
    if gained & state != 0 {
        u32::MAX
    } else {
        let edge = gained | if more_data { libc::EPOLLIN as u32 } else { 0 };
        // With EPOLLRDNORM and EPOLLWRNORM, as Linux's data-ready and write-space wake-ups.
        edge | (edge & (libc::EPOLLIN | libc::EPOLLOUT) as u32) << 6
    }
}

#[inline]
pub(super) fn readiness(c: &Conn) -> Readiness {
    let (error, failed) = (c.error, c.failed);
    let t = &c.tcb;
    let state = t.state();
    if state == State::Established
        && !(failed || c.rd_shut || c.limits_sending())
        && error.is_none()
    {
        // The usual case, what the general rules below give for it (checked where debug
        // assertions are on: the fuzz targets).
        let r = Readiness::new(
            t.can_recv(),
            t.can_send() || !t.may_send(),
            false,
            false,
            false,
        );
        debug_assert_eq!(r, readiness_by_rules(c));
        return r;
    }
    readiness_by_rules(c)
}

#[inline(never)]
fn readiness_by_rules(c: &Conn) -> Readiness {
    if c.disconnected {
        // (With the error connect(AF_UNSPEC) leaves pending until it is read.)
        return Readiness::new(false, true, false, true, c.error.is_some());
    }
    let (error, failed) = (c.error, c.failed);
    let t = &c.tcb;
    let state = t.state();
    let handshaking = matches!(state, State::SynSent | State::SynReceived);
    let closed = state == State::Closed || state == State::TimeWait;
    // The peer's FIN arrived (Linux: RCV_SHUTDOWN, set when the FIN is processed, whether or
    // not data is still queued before it). (Closed without an error is the end of a graceful
    // close: after the peer's FIN too.) Past the handshake, these are exactly the states where
    // the peer may not send. shutdown(SHUT_RD) is RCV_SHUTDOWN too.
    let rdhup = !handshaking && (c.rd_shut || !t.may_recv());
    let room = t.can_send() && (!c.limits_sending() || c.send_room() > 0);
    Readiness::new(
        t.can_recv() || rdhup || failed,
        (!handshaking && room) || failed || (!handshaking && !t.may_send()),
        rdhup || failed,
        failed || closed || (rdhup && !t.may_send()),
        error.is_some(),
    )
}
