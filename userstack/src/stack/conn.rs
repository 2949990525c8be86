//! A connection: its state (one smoltcp interface and socket, its timers, what its
//! application was told), its creation and end, and its lifecycle: `poll_conn` runs its
//! interface and turns what happened into timers, events and the listener's accept queue.
//! Linux's timeouts (give up, unanswered connect, orphans) and its readiness rules live here.

use std::cmp::Reverse;
use std::net::SocketAddrV4;

use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SDuration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, TcpPacket};

use super::api::{to_sdur, ConnId, Event, Keepalive, Readiness, SockError, TcpOptions};
use super::device::{CapsDev, IpDev, WinClamp};
use super::{Slot, Stack};
use crate::link::Link;

/// How long a connection the application closed stays in TIME-WAIT (Linux's TCP_TIMEWAIT_LEN).
pub(super) const TIME_WAIT_US: Micros = 60_000_000;
/// A connection in TIME-WAIT whose next smoltcp deadline is at least this far away owes no ACK.
const TIME_WAIT_SETTLED_US: Micros = 5_000;
/// TIME-WAIT records kept at most (Linux's tcp_max_tw_buckets on a large machine); past that a
/// connection ends without one, as Linux's does.
pub(super) const TIME_WAIT_MAX: usize = 262_144;

/// Closed sockets kept for new connections: enough for a server's churn of short connections
/// (a connection per request at 100 at once), 16 MiB with the default 64 KiB buffers.
pub(super) const SPARE_SOCKETS: usize = 128;
use crate::net::{Micros, TxTrack};
use crate::recovery::{synth_ack, Recovery};
use crate::stats::Stats;

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

/// One connection: its own smoltcp interface and socket, and what the stack keeps around them.
pub(super) struct Conn {
    pub(super) iface: Interface,
    pub(super) sockets: SocketSet<'static>,
    pub(super) handle: SocketHandle,
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
    /// polling the connection for nothing (with a 1 ms delayed ACK that would be a whole poll
    /// of the connection for most requests). Earlier than `armed` only while the connection
    /// waits in `Stack::arm_next`/`arm_now` (see there).
    pub(super) want: Option<Micros>,
    /// In `Stack::arm_next` or `arm_now`.
    pub(super) arm_queued: bool,
    /// Keepalive asked for (setsockopt) but not yet given to smoltcp, and when it is due: see
    /// `set_keepalive`.
    pub(super) keepalive: Option<(Keepalive, Micros)>,
    pub(super) dirty: bool,
    pub(super) event_queued: bool,
    pub(super) last_state: tcp::State,
    pub(super) last_ready: Readiness,
    pub(super) last_recv_queue: usize,
    /// The error to report once (recv/send/SO_ERROR consume it, as Linux's sk_err).
    pub(super) error: Option<SockError>,
    /// The connection ended by an error (reset, timeout, refused): after the error was reported,
    /// reads give end of stream and writes EPIPE.
    pub(super) failed: bool,
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
    pub(super) track: TxTrack,
    pub(super) rec: Recovery,
    /// This connection's clock runs this many microseconds ahead of the stack's (see recovery.rs).
    pub(super) skew: i64,
    /// What the connection's options change beyond smoltcp's own settings.
    pub(super) tuning: Tuning,
    /// TCP_CORK on: the bytes held back.
    pub(super) cork: Option<Box<Cork>>,
    /// An option changed what readiness the connection has (TCP_NOTSENT_LOWAT or SO_SNDBUF
    /// lifted): its next poll compares it with what its application was told, without a
    /// segment.
    pub(super) recheck: bool,
    /// SO_RCVBUF lowered after the handshake: the window offered is that buffer's room.
    pub(super) clamp: Option<WinClamp>,
    /// Established, waiting for its first data before it is queued for accept (its listener's
    /// TCP_DEFER_ACCEPT): until then at the latest.
    pub(super) deferred_until: Option<Micros>,
}

/// TCP_CORK: what a corked connection holds back (less than a segment), and since when.
#[derive(Debug, Default)]
pub(super) struct Cork {
    pub(super) held: Vec<u8>,
    /// When the first poll after the oldest held byte came saw it (`None`: nothing held).
    pub(super) since: Option<Micros>,
}

/// How long a corked connection holds a partial segment back (Linux's ceiling).
const CORK_HOLD_US: Micros = 200_000;

/// A connection's options that smoltcp has no setting for, or that change its settings for a
/// while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tuning {
    /// The IP MTU its segments are sized by (its listener's TCP_MAXSEG may lower the device's).
    pub(super) mtu: usize,
    /// IP_TOS of every segment it sends.
    pub(super) tos: u8,
    /// SO_SNDBUF set on the connection: at most this much queued (at most the send buffer).
    pub(super) snd_cap: Option<usize>,
    /// TCP_QUICKACK: segments still acknowledged at once, before `ack_delay` is back.
    pub(super) quick: u8,
    /// The delayed-ACK time the connection was given (TCP_QUICKACK suspends it).
    pub(super) ack_delay: Option<SDuration>,
    /// TCP_NOTSENT_LOWAT: at most this much queued and not yet sent.
    pub(super) notsent_lowat: Option<usize>,
    /// TCP_LINGER2: how long an orphan waits in FIN-WAIT-2 for the peer's FIN (`None`:
    /// tcp_fin_timeout's 60 s; 0: not at all, it is reset).
    pub(super) fin_timeout: Option<Micros>,
    /// Any of SO_SNDBUF (lowered), TCP_CORK, TCP_NOTSENT_LOWAT is set: sends and readiness
    /// ask `send_room` (one test on every readiness check instead of three).
    pub(super) limited: bool,
}

impl Conn {
    /// The MSS of the path (the smaller of ours and the peer's) and the payload of a full
    /// segment (less the timestamp option's 12 bytes when it is in use).
    pub(super) fn mss(&self) -> (usize, usize) {
        let sock = self.sockets.get::<tcp::Socket>(self.handle);
        let advmss = self.tuning.mtu.saturating_sub(40);
        // Before the peer's SYN is seen (an active open in SYN-SENT): smoltcp's default, 536.
        let peer = usize::from(self.rec.peer_mss().unwrap_or(536));
        let path = advmss.min(peer);
        let options = if sock.timestamp_enabled() { 12 } else { 0 };
        (path, path.saturating_sub(options).max(1))
    }

    /// What may still be queued: the send buffer (as SO_SNDBUF limits it) less what is in it
    /// and what TCP_CORK holds. (Out of line: only for connections with such options.)
    #[inline(never)]
    pub(super) fn send_room(&self) -> usize {
        let sock = self.sockets.get::<tcp::Socket>(self.handle);
        let limit = self
            .tuning
            .snd_cap
            .map_or(sock.send_capacity(), |cap| cap.min(sock.send_capacity()));
        let held = self.cork.as_ref().map_or(0, |k| k.held.len());
        let room = limit.saturating_sub(sock.send_queue() + held);
        match self.tuning.notsent_lowat {
            Some(lowat) => room.min(lowat.saturating_sub(self.notsent() + held)),
            None => room,
        }
    }

    /// Bytes in smoltcp's send buffer not yet sent.
    pub(super) fn notsent(&self) -> usize {
        let queued = self.sockets.get::<tcp::Socket>(self.handle).send_queue();
        queued.saturating_sub(self.unacked())
    }

    /// Sequence space sent and not yet acknowledged (a SYN or FIN counts one).
    pub(super) fn unacked(&self) -> usize {
        match (self.rec.snd_una(), self.track.snd_max) {
            (Some(una), Some(max)) if crate::seq::seq_lt(una, max) => {
                max.wrapping_sub(una) as usize
            }
            _ => 0,
        }
    }

    /// Whether an option limits what may be queued below the send buffer (SO_SNDBUF,
    /// TCP_CORK, TCP_NOTSENT_LOWAT): sends and readiness then ask `send_room`.
    #[inline]
    pub(super) fn limits_sending(&self) -> bool {
        self.tuning.limited
    }

    /// Records whether an option limits sending (after one changed).
    pub(super) fn note_limits(&mut self) {
        self.tuning.limited = self.tuning.snd_cap.is_some()
            || self.cork.is_some()
            || self.tuning.notsent_lowat.is_some();
    }

    /// Queues `data` (which fits: `send_room`) on a corked connection: whole segments go to
    /// smoltcp, the rest is held.
    pub(super) fn corked_send(&mut self, data: &[u8]) {
        let (_, seg) = self.mss();
        let Some(k) = self.cork.as_deref_mut() else {
            return;
        };
        let total = k.held.len() + data.len();
        let whole = total - total % seg;
        if whole == 0 {
            k.held.extend_from_slice(data);
            return;
        }
        let sock = self.sockets.get_mut::<tcp::Socket>(self.handle);
        let from_data = whole - k.held.len();
        let _ = sock.send_slice(&k.held);
        let _ = sock.send_slice(&data[..from_data]);
        k.held.clear();
        k.held.extend_from_slice(&data[from_data..]);
        k.since = None;
    }

    /// What TCP_CORK holds goes to smoltcp (uncorked, its time is up, the sending side ends).
    pub(super) fn release_cork(&mut self) {
        let Some(k) = self.cork.as_deref_mut() else {
            return;
        };
        if !k.held.is_empty() {
            let _ = self
                .sockets
                .get_mut::<tcp::Socket>(self.handle)
                .send_slice(&k.held);
            k.held.clear();
        }
        k.since = None;
    }

    /// After a read made room in a lowered receive buffer: whether the peer, which was offered
    /// less than half of it, should hear of the room now (the window grew by twice and by a
    /// segment at least, as Linux's tcp_cleanup_rbuf decides) rather than at its next probe.
    pub(super) fn note_read(&mut self) {
        let (_, seg) = self.mss();
        let queued = self.sockets.get::<tcp::Socket>(self.handle).recv_queue();
        let (Some(w), Some(ack)) = (self.clamp.as_mut(), self.track.last_ack_sent) else {
            return;
        };
        let offered = w
            .edge
            .map_or(0, |e| (e.wrapping_sub(ack) as i32).max(0) as u32);
        let room = w
            .cap
            .saturating_sub(u32::try_from(queued).unwrap_or(u32::MAX))
            .min(w.window.unwrap_or(u32::MAX));
        if room >= 2 * offered && room - offered >= (seg as u32).min(w.cap / 2) {
            w.nudge = true;
        }
    }

    /// A segment that makes smoltcp acknowledge at once with its window (which `WinClamp`
    /// lowers on the way out): one byte the peer sent long ago, outside the window, which RFC
    /// 9293 answers with an ACK, whatever the ACK timer says. `None` unless a read asked for
    /// it (`note_read`).
    pub(super) fn window_nudge(&mut self) -> Option<[u8; 41]> {
        let w = self.clamp.as_mut().filter(|w| w.nudge)?;
        w.nudge = false;
        let (rcv_nxt, una) = (self.track.last_ack_sent?, self.rec.snd_una()?);
        let mut seg = [0u8; 41];
        let local = std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, self.local_port);
        let local = match self.iface.ip_addrs().first() {
            Some(IpCidr::Ipv4(c)) => std::net::SocketAddrV4::new(c.address(), self.local_port),
            _ => local,
        };
        let mut head = [0u8; 40];
        synth_ack(
            &mut head,
            self.peer,
            local,
            rcv_nxt.wrapping_sub(1),
            una,
            self.rec.window_raw(),
        );
        seg[..40].copy_from_slice(&head);
        seg[2..4].copy_from_slice(&41u16.to_be_bytes());
        Some(seg)
    }

    /// When what TCP_CORK holds must leave (stamped by the first poll that sees it).
    fn cork_due(&mut self, us: Micros) -> Option<Micros> {
        let k = self.cork.as_deref_mut()?;
        if k.held.is_empty() {
            return None;
        }
        Some(*k.since.get_or_insert(us) + CORK_HOLD_US)
    }

    /// Sequence space we sent is waiting for the peer's acknowledgement (not counting the
    /// handshake's SYN).
    pub(super) fn outstanding(&self) -> bool {
        matches!((self.rec.snd_una(), self.track.snd_max),
            (Some(una), Some(max)) if crate::seq::seq_lt(una, max))
    }

    /// When the stack gives up on this connection, as Linux does (see the constants).
    #[inline]
    pub(super) fn give_up_at(&self) -> Option<Micros> {
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
            Some(t) if self.sockets.get::<tcp::Socket>(self.handle).send_queue() > 0 => {
                self.rec.zero_window_since().map(|z| z + t)
            }
            _ => None,
        };
        // All are None for an established connection the application holds.
        earliest(
            earliest(
                earliest(self.rec.silent_since().map(|t| t + limit), shut),
                self.connect_expires,
            ),
            self.orphan_expires,
        )
    }

    /// Whether `syn` retransmits the SYN of this connection's handshake, still in progress, and
    /// deserves an answer now (rate limited).
    pub(super) fn retransmitted_syn(&mut self, syn: &TcpPacket<&[u8]>, us: Micros) -> bool {
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

    /// The stack's own timers of this connection that are due, before its interface runs:
    /// giving up on it (see the constants), our retransmission timer (brought to smoltcp), and
    /// keepalive handed to smoltcp when due (see `Stack::set_keepalive`). One step of
    /// `poll_conn`, inlined there.
    #[inline(always)]
    fn due_timers(&mut self, now: Instant, us: Micros, stats: &mut Stats) {
        if self.rec.deadline().is_some_and(|d| d <= us) && !self.outstanding() {
            self.rec.stop();
        }
        if !self.timed_out && self.give_up_at().is_some_and(|t| t <= us) {
            tracing::debug!(peer = %self.peer, app_closed = self.app_closed, "giving up on the connection");
            self.timed_out = true;
            self.sockets.get_mut::<tcp::Socket>(self.handle).abort();
            stats.tcp_timeouts += 1;
        }
        if self.rec.deadline().is_some_and(|d| d <= us) {
            // Our retransmission timer, with data outstanding: bring smoltcp's own
            // retransmission time forward to now. (With nothing outstanding smoltcp's next timer
            // is another one, keepalive or TIME-WAIT, which must not be brought forward.)
            self.skip_to_smoltcp_timer(now);
            tracing::debug!(
                peer = %self.peer,
                una = ?self.rec.snd_una(),
                max = ?self.track.snd_max,
                retx = self.track.retransmits,
                state = %self.sockets.get::<tcp::Socket>(self.handle).state(),
                sendq = self.sockets.get::<tcp::Socket>(self.handle).send_queue(),
                "retransmission timeout (assisted)"
            );
            self.rec.on_timeout(us);
            stats.tcp_rto_assists += 1;
        }
        if self.cork.is_some() && self.cork_due(us).is_some_and(|t| t <= us) {
            self.release_cork();
        }
        if let Some((k, due)) = self.keepalive {
            let sock = self.sockets.get_mut::<tcp::Socket>(self.handle);
            if due <= us || sock.send_queue() > 0 {
                self.keepalive = None;
                sock.set_keep_alive(Some(to_sdur(k.idle)));
                sock.set_timeout(Some(to_sdur(k.idle + k.intvl * k.cnt)));
            }
        }
    }

    /// Moves this connection's clock forward to smoltcp's next timer, so that what smoltcp
    /// would do then (here: a retransmission) happens on the next poll.
    pub(super) fn skip_to_smoltcp_timer(&mut self, now: Instant) {
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
        open: impl FnOnce(&mut tcp::Socket<'static>) -> Result<(), SockError>,
    ) -> Result<u32, SockError> {
        let mut cfg = IfaceConfig::new(HardwareAddress::Ip);
        cfg.random_seed = self.next_seed();
        // TCP_MAXSEG: smoltcp sizes the MSS it announces and uses from the interface's MTU.
        let mut caps = self.conn_caps.clone();
        if let Some(mss) = opts.mss {
            caps.max_transmission_unit = caps.max_transmission_unit.min(usize::from(mss) + 40);
        }
        let mtu = caps.max_transmission_unit;
        let mut iface = Interface::new(cfg, &mut CapsDev(caps), now);
        let cidr = IpCidr::new(
            IpAddress::Ipv4(self.net.addr().addr),
            self.net.addr().prefix,
        );
        iface.update_ip_addrs(|a| {
            let _ = a.push(cidr);
        });
        // A closed socket of a freed connection, with buffers of these sizes, if one is kept:
        // its buffers are allocated and their pages touched already (a fresh 64 KiB buffer
        // pair is zeroed, page by page, through page faults: most of what a connection's
        // setup costs).
        let spare = self.spare.iter().rposition(|(set, h)| {
            let s = set.get::<tcp::Socket>(*h);
            s.recv_capacity() == opts.rcvbuf && s.send_capacity() == opts.sndbuf
        });
        let (mut sockets, handle) = match spare {
            Some(i) => self.spare.swap_remove(i),
            None => {
                let sock = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0u8; opts.rcvbuf]),
                    tcp::SocketBuffer::new(vec![0u8; opts.sndbuf]),
                );
                let mut set = SocketSet::new(Vec::with_capacity(1));
                let h = set.add(sock);
                (set, h)
            }
        };
        {
            let sock = sockets.get_mut::<tcp::Socket>(handle);
            // Every setting a connection may change is set again (listen/connect reset the
            // TCP state, sequence numbers, timers and buffers).
            sock.set_timeout(None);
            opts.apply(sock);
            open(sock)?;
        }
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
            unreachable: false,
            user_timeout: None,
            track: TxTrack::default(),
            rec: Recovery::new(self.rto_min_us),
            skew: 0,
            tuning: Tuning {
                mtu,
                tos: opts.tos,
                snd_cap: None,
                quick: 0,
                ack_delay: opts.ack_delay.map(to_sdur),
                notsent_lowat: None,
                fin_timeout: None,
                limited: false,
            },
            cork: None,
            recheck: false,
            clamp: None,
            deferred_until: None,
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
        if let Some(f) = self.flows.as_mut() {
            f.opened(k);
        }
        self.bucket_conns
            [crate::steer::flow_bucket(*peer.ip(), peer.port(), local_port) as usize] += 1;
        self.live += 1;
        self.shm.states.add(state);
        self.net.stats_mut().conns_opened += 1;
        Ok(idx)
    }

    /// A connection the application closed reached TIME-WAIT: it is freed (its socket and
    /// buffers go to the next connection) and only its end time is kept, as Linux keeps a
    /// small timewait socket instead of the full one. Until then a SYN for the same addresses
    /// and ports starts a new connection (Linux accepts one too), and any other segment is
    /// dropped, never reset (`demux`). smoltcp would hold the whole socket, both 64 KiB
    /// buffers included, for its 10 s: a server closing 7,000 connections a second held 9 GB.
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

    pub(super) fn free_conn(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        let Some(c) = slot.conn.take() else { return };
        slot.gen = slot.gen.wrapping_add(1);
        if self.demux.get(&c.key) == Some(&idx) {
            self.demux.remove(&c.key);
            if let Some(f) = self.flows.as_mut() {
                f.closed(c.key);
            }
        }
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
        let st = c.sockets.get::<tcp::Socket>(c.handle).state();
        let closed = matches!(st, tcp::State::Closed | tcp::State::TimeWait);
        if closed && self.spare.len() < SPARE_SOCKETS {
            self.spare.push((c.sockets, c.handle));
        }
    }

    /// Runs one connection's interface: ingress of `rx` if given, then egress; then updates
    /// its timer, its readiness and the listener's accept queue.
    ///
    /// `coalesce`: an egress the segment makes due now waits until the end of the received
    /// burst (the connection goes on the dirty list, which `poll` runs right after the burst).
    /// smoltcp acknowledges every second full segment at once; a bulk sender's burst of 32
    /// segments then cost 16 ACK frames, each a transmit through the device, where one ACK
    /// after the burst acknowledges all of it, as Linux's NAPI/GRO batching does.
    pub(super) fn poll_conn(&mut self, now: Instant, idx: u32, rx: Option<&[u8]>, coalesce: bool) {
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
        c.due_timers(now, us, self.net.stats_mut());
        let vnow = now + SDuration::from_micros(c.skew as u64);
        if let Some(w) = c.clamp.as_mut() {
            let queued = c.sockets.get::<tcp::Socket>(c.handle).recv_queue();
            w.room = w
                .cap
                .saturating_sub(u32::try_from(queued).unwrap_or(u32::MAX));
            if let Some(max) = w.window {
                w.room = w.room.min(max);
            }
            w.shift = c.track.wshift;
        }
        let mut dev = IpDev {
            rx,
            net: &mut self.net,
            now: us,
            track: Some(&mut c.track),
            caps: &self.conn_caps,
            tos: c.tuning.tos,
            win: c.clamp.as_mut(),
        };
        // TCP_QUICKACK: this segment is acknowledged at once; after the last one of the quick
        // mode, the delayed ACK is back.
        let quick_ends = c.tuning.quick > 0 && rx.is_some() && {
            c.tuning.quick -= 1;
            c.tuning.quick == 0
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
            if quick_ends {
                let d = c.tuning.ack_delay;
                c.sockets.get_mut::<tcp::Socket>(c.handle).set_ack_delay(d);
            }
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
            c.orphan_expires = Some(us + c.tuning.fin_timeout.unwrap_or(FIN_TIMEOUT_US));
        }
        if state != prev {
            c.last_state = state;
            self.shm.states.moved(prev, state);
            if state == tcp::State::Closed && !c.failed && !c.app_closed {
                let error = match prev {
                    _ if c.unreachable => Some(SockError::HostUnreachable),
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
                tcp::State::Closed if c.deferred_until.is_some() => {
                    // Reset while its accept was deferred (TCP_DEFER_ACCEPT): gone, as Linux
                    // drops the request; the application never heard of it.
                    self.free_conn(idx);
                    return;
                }
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
                    let defer = self.listeners.get(&port).and_then(|l| l.opts.defer_accept);
                    match defer {
                        // TCP_DEFER_ACCEPT: not before its first data (or its FIN).
                        Some(d) if sock.recv_queue() == 0 && state == tcp::State::Established => {
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
                    t <= us || sock.recv_queue() > 0 || state != tcp::State::Established
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
            if state == tcp::State::Closed {
                self.free_conn(idx);
                return;
            }
        } else if rx.is_some() || state != prev || c.tuning.limited || c.recheck {
            c.recheck = false;
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
        // TCP_CORK's and TCP_DEFER_ACCEPT's times.
        let extra_at = if c.cork.is_some() || c.deferred_until.is_some() {
            earliest(c.cork_due(us), c.deferred_until)
        } else {
            None
        };
        let at = earliest(
            earliest(
                earliest(smol_at, c.rec.deadline()),
                earliest(extra_at, c.rec.probe_deadline()),
            ),
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
        if c.app_closed
            && state == tcp::State::TimeWait
            && smol_at.is_none_or(|t| t >= us + TIME_WAIT_SETTLED_US)
        {
            // Closed by the application, in TIME-WAIT, its last ACK sent (smoltcp owes nothing
            // before its own TIME-WAIT end): the connection becomes a record.
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

    /// The tail-loss probe of connection `idx` (generation `gen`) if it is due: the first
    /// unacknowledged segment again (recovery.rs, `Recovery::probe_deadline`).
    pub(super) fn probe_if_due(&mut self, now: Instant, idx: u32, gen: u32) {
        let us = now.total_micros() as Micros;
        let slot = &mut self.slots[idx as usize];
        let Some(c) = slot.conn.as_mut().filter(|_| slot.gen == gen) else {
            return;
        };
        if c.failed || c.rec.probe_deadline().is_none_or(|d| d > us) {
            return;
        }
        c.rec.on_probe();
        self.net.stats_mut().tcp_loss_probes += 1;
        self.provoke_fast_retransmit(now, idx);
    }

    /// Hands smoltcp duplicate ACKs (at most three) until it retransmits the first
    /// unacknowledged segment; see recovery.rs for why.
    pub(super) fn provoke_fast_retransmit(&mut self, now: Instant, idx: u32) {
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
}

pub(super) fn readiness(sock: &tcp::Socket<'_>, c: &Conn) -> Readiness {
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
    let room = sock.can_send() && (!c.limits_sending() || c.send_room() > 0);
    Readiness {
        readable: sock.can_recv() || rdhup || failed,
        writable: (!handshaking && room) || failed || (!handshaking && !sock.may_send()),
        rdhup: rdhup || failed,
        hup: failed || closed || (rdhup && !sock.may_send()),
        error: error.is_some(),
    }
}
