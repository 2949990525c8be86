//! The stack's own TCP engine: one connection's state machine, without I/O.
//!
//! The caller hands it received segments ([`Tcb::input`], header and options parsed by
//! [`seg::parse`], checksum already verified) and the application's bytes ([`Tcb::send`],
//! [`Tcb::recv`], [`Tcb::close`]); [`Tcb::output`] gives back the segments to send, each as a
//! header description ([`seg::Out`]) and its payload as at most two slices of the send queue,
//! for the caller to write into a frame; [`Tcb::poll_at`] says when it next needs `output`
//! without any input.
//!
//! What it does, and where it follows whom:
//! - RFC 9293's state machine from SYN-SENT/SYN-RECEIVED to TIME-WAIT, with RFC 5961's
//!   challenge ACKs for an in-window RST or SYN.
//! - Window scaling, timestamps (echoed; RTT is timed on our own clock) and SACK (RFC 7323,
//!   2018): a receiver keeps out-of-order data in place in its buffer and reports up to three
//!   SACK blocks, the most recent first.
//! - Loss recovery by the SACK scoreboard (RFC 6675): a hole is lost once three segments' worth
//!   (or three ranges) above it were SACKed, or everything sent after it (RFC 5827's early
//!   retransmit, for small flights), or after three duplicate ACKs; every lost hole is
//!   repaired while the estimated flight (`pipe`) is below the congestion window, so several
//!   holes go in one round trip; a partial ACK keeps recovery going (RFC 6582 without SACK).
//!   After a retransmission timeout everything unSACKed is lost and sent again from the first
//!   hole, skipping what the peer holds: no go-back-N over data SACK says arrived.
//! - A tail-loss probe (RFC 8985's TLP, simplified): when a flight of more than one segment
//!   stops being acknowledged for 2 SRTT + max(10 ms, 4 RTTVAR), its last segment again, also
//!   during fast recovery (armed again by each repair, whose ACK may be lost with nothing left
//!   to send), so a lost tail or a lost ACK is found by SACK instead of the timeout. Always the last segment, never new data: a duplicate draws an ACK at once,
//!   where new data may wait for the peer's delayed ACK (Linux's grows to 200 ms while its
//!   reader lags). (One segment alone may be waiting for a delayed ACK: the timer covers it.)
//! - RTO per RFC 6298 (floor `rto_min`, Linux's 200 ms by default), Karn's rule; NewReno
//!   congestion control with an initial window of ten segments (RFC 6928, Linux's), byte
//!   counting (RFC 3465).
//! - Delayed ACKs as Linux's: at once for more than one full segment unacknowledged,
//!   out-of-order data, a filled hole, a FIN, or in quick-ACK mode; else after `ack_delay`.
//!   A window update is sent when reading doubles a window that was at most half the buffer.
//! - Nagle (unless `nodelay`) in Minshall's form, as Linux's: a partial segment waits only
//!   while an earlier partial segment is unacknowledged, so a reply's last piece leaves behind
//!   its full segments; sender-side silly-window avoidance, zero-window probes and keepalive
//!   probes as Linux sends them (an old sequence number, no data).
//! - Header prediction both ways: an established connection's next in-order segment, and new
//!   data to send with nothing else due, take short paths of the general one's steps that can
//!   apply (`Tcb::input_compared` and `Tcb::output_compared` run both and compare, in the
//!   tests and the fuzz target).

mod carry;
pub mod ranges;
pub mod ring;
pub mod seg;
#[cfg(test)]
mod tests;

use crate::net::Micros;
use crate::seq::seq_lt;
pub use carry::{Carry, CARRY_WORDS};
use ranges::Ranges;
use ring::Ring;
use seg::{Out, Seg, ACK, FIN, PSH, RST, SYN};

/// The retransmission timeout's floor by default (Linux's TCP_RTO_MIN; MTCP_RTO_MIN lowers it
/// on a path known to be short).
pub const DEFAULT_RTO_MIN_US: Micros = 200_000;
/// The retransmission timeout before any RTT sample (RFC 6298).
const INITIAL_RTO_US: Micros = 1_000_000;
/// The largest retransmission timeout (Linux's TCP_RTO_MAX).
const MAX_RTO_US: Micros = 120_000_000;
/// Initial congestion window, in segments (RFC 6928).
const INITIAL_CWND_SEGS: u32 = 10;
/// Duplicate ACKs (or SACKed segments above a hole) that mean loss.
const DUP_THRESH: u32 = 3;
/// A tail-loss probe waits at least 2 SRTT + max(this, 4 RTTVAR).
const PROBE_SLACK_US: Micros = 10_000;
/// How long TIME-WAIT lasts (Linux's TCP_TIMEWAIT_LEN).
pub const TIME_WAIT_US: Micros = 60_000_000;
/// Segments acknowledged at once after the handshake (Linux's quick-ACK mode at the start).
const QUICK_ACKS: u8 = 16;
/// Data sent within this time (or the delayed-ACK time, if longer) of data received makes a
/// connection interactive (Linux's TCP_ATO_MIN).
const PINGPONG_US: Micros = 40_000;
/// How long TCP_CORK holds a partial segment at most (Linux's ceiling).
const CORK_HOLD_US: Micros = 200_000;
/// Pure ACKs to segments outside the window, and challenge ACKs, at most one per this time
/// (Linux's tcp_invalid_ratelimit): two stacks cannot be made to ACK each other in a loop.
const OOW_ACK_GAP_US: Micros = 500_000;

/// A connection's TCP state. Numbered as smoltcp's `tcp::State`, the names the socket calls
/// use, so that the stack's mapping of one to the other (`stack::conn::api_state`, by name)
/// compiles to nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    SynSent = 2,
    SynReceived = 3,
    Established = 4,
    FinWait1 = 5,
    FinWait2 = 6,
    CloseWait = 7,
    Closing = 8,
    LastAck = 9,
    TimeWait = 10,
    Closed = 0,
}

/// Congestion control (MTCP_CC, TCP_CONGESTION).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// None: only the peer's window limits what is in flight.
    None,
    /// NewReno (RFC 5681, 6582): the window halves on loss, grows a segment per round trip.
    Reno,
    /// CUBIC (RFC 9438, Linux's default): β = 0.7, C = 0.4, fast convergence, the
    /// Reno-friendly region.
    Cubic,
}

/// CUBIC's state since the last congestion event.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Cubic {
    /// The window before the last reduction, in bytes.
    w_max: f64,
    /// Time from the epoch's start to reach `w_max` again, in seconds.
    k: f64,
    /// When the current congestion-avoidance epoch started.
    epoch: Option<Micros>,
    /// The Reno-friendly estimate of the window, in bytes.
    w_est: f64,
}

const CUBIC_BETA: f64 = 0.7;
const CUBIC_C: f64 = 0.4;

/// How a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The peer reset it.
    Reset,
    /// The peer answered our SYN with a reset.
    Refused,
    /// Keepalive probes went unanswered.
    TimedOut,
}

/// Keepalive (SO_KEEPALIVE with TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle_us: Micros,
    pub interval_us: Micros,
    pub probes: u32,
}

/// What a connection starts with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// The MSS we announce (the device's MTU less 40).
    pub mss: u16,
    pub rx_capacity: usize,
    pub tx_capacity: usize,
    pub nodelay: bool,
    pub ack_delay_us: Micros,
    pub rto_min_us: Micros,
    pub timestamps: bool,
    pub sack: bool,
    pub window_scaling: bool,
    pub keepalive: Option<Keepalive>,
    pub congestion: Congestion,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mss: 1460,
            rx_capacity: 64 * 1024,
            tx_capacity: 64 * 1024,
            nodelay: false,
            ack_delay_us: 1_000,
            rto_min_us: 200_000,
            timestamps: true,
            sack: true,
            window_scaling: true,
            keepalive: None,
            congestion: Congestion::Cubic,
        }
    }
}

/// What the engine counted (for the stack's statistics and TCP_INFO).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Segments sent again (any reason).
    pub retransmits: u64,
    /// Recoveries entered on duplicate ACKs or SACK.
    pub fast_recoveries: u64,
    pub timeouts: u64,
    pub loss_probes: u64,
    /// Retransmissions found lost themselves (and sent again).
    pub lost_retransmits: u64,
    pub segs_in: u64,
    pub segs_out: u64,
}

/// One connection. (Cloned and compared by the checks of header prediction against the
/// general path.)
#[derive(Clone, PartialEq)]
pub struct Tcb {
    state: State,
    failure: Option<Failure>,
    set: Settings,

    // Sending.
    tx: Ring,
    iss: u32,
    /// Sequence number of the send queue's first byte.
    tx_seq: u32,
    snd_una: u32,
    /// The next new sequence number to send (the highest sent + 1).
    snd_nxt: u32,
    /// The end of the last partial segment of new data sent (Linux's `snd_sml`): Nagle holds
    /// another partial segment while that one is unacknowledged.
    snd_sml: u32,
    /// The peer's window, in bytes.
    snd_wnd: u32,
    snd_wl1: u32,
    snd_wl2: u32,
    /// The peer's window scale shift.
    snd_shift: u8,
    /// Largest payload per segment (the path's MSS less the timestamp option).
    payload_max: u32,
    fin_queued: bool,
    /// TCP_CORK: partial segments wait (at most `CORK_HOLD_US`).
    cork: bool,
    /// Since when a partial segment has been held by the cork.
    cork_since: Option<Micros>,
    /// The cork's ceiling passed: what it held goes.
    cork_lifted: bool,
    cwnd: u32,
    ssthresh: u32,
    /// Bytes acknowledged toward the next congestion-avoidance increase (Reno).
    ca_acked: u32,
    cubic: Cubic,
    dupacks: u32,
    in_recovery: bool,
    /// Recovery after a timeout: every unSACKed byte is lost.
    rto_recovery: bool,
    /// snd_nxt when recovery began: it ends when that is acknowledged.
    recover: u32,
    /// The highest sequence number retransmitted in this recovery.
    high_rxt: u32,
    /// This recovery's retransmissions not yet acknowledged (at most `MAX_RXTS` followed).
    rxts: Vec<Rxt>,
    /// Retransmissions found lost: sent again before any other hole.
    again: Vec<(u32, u32)>,
    sacked: Ranges,
    sack_ok: bool,
    /// Window scaling is on (both SYNs carried the option).
    ws_on: bool,
    srtt: Option<Micros>,
    rttvar: Micros,
    rto: Micros,
    backoff: u32,
    rtx_at: At,
    /// One segment timed at a time: its end and when it left.
    timing: Option<(u32, Micros)>,
    probe_at: At,
    probe_done: bool,
    persist_at: At,
    /// Since when data has been outstanding with nothing heard from the peer.
    silent_since: Option<Micros>,
    /// Since when the peer's window has been shut while data waits to go.
    zero_wnd_since: Option<Micros>,
    /// When a rate-limited ACK (see `OOW_ACK_GAP_US`) was last sent.
    oow_at: Option<Micros>,
    syn_due: bool,
    /// A reset to send: its sequence number, and whether it carries an ACK.
    rst_due: Option<(u32, bool)>,
    /// The reset (`rst_due`) follows the data the windows let go now ([`Tcb::reset_after_sent`]).
    data_before_rst: bool,

    // Receiving.
    rx: Ring,
    irs: u32,
    rcv_nxt: u32,
    rcv_shift: u8,
    /// The right edge of the window last advertised.
    rcv_adv: u32,
    ooo: Ranges,
    peer_fin: Option<u32>,
    /// The peer's FIN was taken.
    fin_got: bool,
    /// TCP_WINDOW_CLAMP (or SO_RCVBUF lowered after the handshake): the most we offer.
    clamp: Option<u32>,
    ack_now: bool,
    ack_at: At,
    unacked_bytes: u32,
    /// The largest segment received (Linux's rcv_mss).
    rcv_mss: u32,
    quick: u8,
    /// Interactive mode (Linux's pingpong): data was sent within the delayed-ACK time of data
    /// received, so replies carry the ACKs and quick-ACK mode does not ACK every segment at
    /// once. Left when the delayed-ACK timer fires (nothing was sent in time to carry the ACK).
    pingpong: bool,
    /// When data last arrived in order.
    data_rx_at: Option<Micros>,
    /// SO_RCVBUF lowered after the handshake: the buffer counts as this size (the window
    /// offered is what it has room for).
    rx_limit: Option<u32>,
    ts_ok: bool,
    ts_recent: u32,
    ts_offset: u32,
    /// Last time anything came from the peer (keepalive).
    last_rx: Micros,
    ka_sent: u32,
    time_wait_until: At,
    pub counters: Counters,
}

/// The earlier of two optional times. (Written as a minimum with "never" as the largest time,
/// which compiles to conditional moves that chains of it fold together; a match on the pair
/// branched on every one, ~40 instructions per poll of a connection.)
#[inline(always)]
pub(crate) fn earliest(a: Option<Micros>, b: Option<Micros>) -> Option<Micros> {
    let m = a.unwrap_or(Micros::MAX).min(b.unwrap_or(Micros::MAX));
    (m != Micros::MAX).then_some(m)
}

/// A timer's deadline, or none: a time where "never" is the largest, so that the earliest of
/// several is a minimum without branches (an engine asks for its next deadline twice a
/// request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct At(Micros);

impl At {
    pub(crate) const NEVER: At = At(Micros::MAX);

    #[inline]
    pub(crate) fn when(t: Micros) -> At {
        At(t.min(Micros::MAX - 1))
    }

    #[inline]
    pub(crate) fn get(self) -> Option<Micros> {
        (self != At::NEVER).then_some(self.0)
    }

    #[inline]
    pub(crate) fn is_some(self) -> bool {
        self != At::NEVER
    }

    #[inline]
    pub(crate) fn is_none(self) -> bool {
        self == At::NEVER
    }

    #[inline]
    pub(crate) fn is_some_and(self, f: impl FnOnce(Micros) -> bool) -> bool {
        self.get().is_some_and(f)
    }

    #[inline]
    pub(crate) fn is_none_or(self, f: impl FnOnce(Micros) -> bool) -> bool {
        self.get().is_none_or(f)
    }
}

/// A retransmission: what it covered, when it left, and snd_nxt then.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rxt {
    start: u32,
    end: u32,
    sent: Micros,
    nxt: u32,
}

/// Retransmissions followed per recovery for loss of their own.
const MAX_RXTS: usize = 256;

/// A connection's receive and send buffers, kept for the next connection.
pub struct Buffers {
    rx: Ring,
    tx: Ring,
}

impl Buffers {
    /// The sizes of the receive and send buffers.
    pub fn capacities(&self) -> (usize, usize) {
        (self.rx.capacity(), self.tx.capacity())
    }
}

/// Where an emitted segment's payload comes from: up to two slices of the send queue.
pub type Payload<'a> = (&'a [u8], &'a [u8]);

impl Tcb {
    fn new(set: Settings, now: Micros, iss: u32, state: State, bufs: Option<Buffers>) -> Self {
        // Buffers of a finished connection, if their sizes fit: their pages are touched
        // already (a fresh 64 KiB pair is zeroed page by page through page faults).
        let (rx, tx) = match bufs {
            Some(b) if b.rx.capacity() == set.rx_capacity && b.tx.capacity() == set.tx_capacity => {
                let (mut rx, mut tx) = (b.rx, b.tx);
                rx.clear();
                tx.clear();
                (rx, tx)
            }
            _ => (Ring::new(set.rx_capacity), Ring::new(set.tx_capacity)),
        };
        let shift = if set.window_scaling {
            wscale_for(set.rx_capacity)
        } else {
            0
        };
        Tcb {
            state,
            failure: None,
            set,
            tx,
            iss,
            tx_seq: iss.wrapping_add(1),
            snd_una: iss,
            snd_nxt: iss.wrapping_add(1),
            snd_sml: iss,
            snd_wnd: 0,
            snd_wl1: 0,
            snd_wl2: 0,
            snd_shift: 0,
            payload_max: 536,
            fin_queued: false,
            cork: false,
            cork_since: None,
            cork_lifted: false,
            cwnd: 0,
            ssthresh: u32::MAX,
            ca_acked: 0,
            cubic: Cubic::default(),
            dupacks: 0,
            in_recovery: false,
            rto_recovery: false,
            recover: iss,
            high_rxt: iss,
            rxts: Vec::new(),
            again: Vec::new(),
            sacked: Ranges::default(),
            sack_ok: false,
            ws_on: false,
            srtt: None,
            rttvar: 0,
            rto: INITIAL_RTO_US,
            backoff: 0,
            rtx_at: At::NEVER,
            timing: None,
            probe_at: At::NEVER,
            probe_done: false,
            persist_at: At::NEVER,
            silent_since: None,
            zero_wnd_since: None,
            oow_at: None,
            syn_due: true,
            rst_due: None,
            data_before_rst: false,
            rx,
            irs: 0,
            rcv_nxt: 0,
            rcv_shift: shift,
            rcv_adv: 0,
            ooo: Ranges::default(),
            peer_fin: None,
            fin_got: false,
            clamp: None,
            ack_now: false,
            ack_at: At::NEVER,
            unacked_bytes: 0,
            rcv_mss: 536,
            quick: QUICK_ACKS,
            pingpong: false,
            data_rx_at: None,
            rx_limit: None,
            ts_ok: false,
            ts_recent: 0,
            ts_offset: iss.rotate_left(13),
            last_rx: now,
            ka_sent: 0,
            time_wait_until: At::NEVER,
            counters: Counters::default(),
        }
    }

    /// An active open: SYN-SENT, its SYN due now.
    pub fn connect(set: Settings, now: Micros, iss: u32) -> Self {
        Self::new(set, now, iss, State::SynSent, None)
    }

    /// A passive open from a peer's SYN: SYN-RECEIVED, the SYN-ACK due now.
    pub fn accept(set: Settings, now: Micros, iss: u32, syn: &Seg) -> Self {
        Self::accept_with(set, now, iss, syn, None)
    }

    /// `connect`, reusing the buffers of a finished connection if their sizes are the ones
    /// `set` asks for.
    pub fn connect_with(set: Settings, now: Micros, iss: u32, bufs: Option<Buffers>) -> Self {
        Self::new(set, now, iss, State::SynSent, bufs)
    }

    /// `accept`, reusing buffers as `connect_with` does.
    pub fn accept_with(
        set: Settings,
        now: Micros,
        iss: u32,
        syn: &Seg,
        bufs: Option<Buffers>,
    ) -> Self {
        let mut t = Self::new(set, now, iss, State::SynReceived, bufs);
        t.take_syn(syn);
        t
    }

    /// The connection's buffers, for the next one (`connect_with`, `accept_with`).
    pub fn into_buffers(self) -> Buffers {
        Buffers {
            rx: self.rx,
            tx: self.tx,
        }
    }

    /// Whether the application's `send` would take bytes now.
    pub fn can_send(&self) -> bool {
        self.may_send() && self.tx.free() > 0
    }

    /// Whether bytes wait to be read.
    pub fn can_recv(&self) -> bool {
        !self.rx.is_empty()
    }

    /// The peer's FIN was taken (all its data arrived; reads end once the buffer is empty).
    pub fn peer_finished(&self) -> bool {
        self.fin_got && self.failure.is_none()
    }

    /// What a SYN from the peer tells: its sequence number and options.
    fn take_syn(&mut self, syn: &Seg) {
        self.irs = syn.seq;
        self.rcv_nxt = syn.seq.wrapping_add(1);
        self.rcv_adv = self.rcv_nxt;
        let peer_mss = u32::from(syn.opts.mss.unwrap_or(536)).max(64);
        let mss = peer_mss.min(u32::from(self.set.mss));
        match syn.opts.wscale {
            Some(s) if self.set.window_scaling => {
                self.snd_shift = s;
                self.ws_on = true;
            }
            _ => self.rcv_shift = 0,
        }
        self.sack_ok = self.set.sack && syn.opts.sack_perm;
        if let (true, Some((val, _))) = (self.set.timestamps, syn.opts.ts) {
            self.ts_ok = true;
            self.ts_recent = val;
        }
        self.payload_max = mss - if self.ts_ok { 12 } else { 0 };
        self.snd_wnd = u32::from(syn.wnd);
        self.snd_wl1 = syn.seq;
        self.cwnd = INITIAL_CWND_SEGS * self.payload_max;
        self.rcv_mss = self.payload_max.min(536);
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn failure(&self) -> Option<Failure> {
        self.failure
    }

    /// Bytes waiting to be read.
    pub fn recv_queue(&self) -> usize {
        self.rx.len()
    }

    /// Bytes queued to send, sent or not, until acknowledged.
    pub fn send_queue(&self) -> usize {
        self.tx.len()
    }

    pub fn send_capacity(&self) -> usize {
        self.tx.capacity()
    }

    pub fn recv_capacity(&self) -> usize {
        self.rx.capacity()
    }

    /// The application may still queue data (its side is open and the connection is up).
    pub fn may_send(&self) -> bool {
        matches!(self.state, State::Established | State::CloseWait) && !self.fin_queued
    }

    /// The peer may still send data (no FIN from it yet).
    pub fn may_recv(&self) -> bool {
        matches!(
            self.state,
            State::SynSent
                | State::SynReceived
                | State::Established
                | State::FinWait1
                | State::FinWait2
        )
    }

    pub fn timestamps(&self) -> bool {
        self.ts_ok
    }

    /// Both SYNs carried SACK-permitted.
    pub fn sack_permitted(&self) -> bool {
        self.sack_ok
    }

    /// The window scales, the peer's and ours, when both SYNs carried the option.
    pub fn window_scales(&self) -> Option<(u8, u8)> {
        self.ws_on.then_some((self.snd_shift, self.rcv_shift))
    }

    /// The path's largest payload per segment.
    pub fn payload_max(&self) -> u32 {
        self.payload_max
    }

    /// The largest payload of a segment sent now: `payload_max` less the SACK option while
    /// out-of-order data is held (as Linux's tcp_current_mss), so that every segment, data
    /// segments included, reports the holes and still fits the MSS.
    #[inline]
    fn seg_max(&self) -> u32 {
        if self.sack_ok && !self.ooo.is_empty() {
            let blocks = self.ooo.len().min(seg::MAX_SACK_OUT) as u32;
            self.payload_max.saturating_sub(4 + 8 * blocks).max(1)
        } else {
            self.payload_max
        }
    }

    pub fn srtt_us(&self) -> Option<Micros> {
        self.srtt
    }

    pub fn rttvar_us(&self) -> Micros {
        self.rttvar
    }

    pub fn rto_us(&self) -> Micros {
        self.rto
    }

    pub fn cwnd(&self) -> u32 {
        self.cwnd
    }

    pub fn ssthresh(&self) -> u32 {
        self.ssthresh
    }

    /// Bytes sent and not yet acknowledged.
    pub fn in_flight(&self) -> u32 {
        self.snd_nxt.wrapping_sub(self.snd_una)
    }

    /// The next sequence number expected from the peer.
    pub fn rcv_nxt(&self) -> u32 {
        self.rcv_nxt
    }

    /// Since when sent data has waited with nothing at all heard from the peer.
    pub fn silent_since(&self) -> Option<Micros> {
        self.silent_since
    }

    /// What must hold between any two calls (the fuzz target and the tests check it): the
    /// sequence variables in order, the queues within their buffers, SACK and out-of-order
    /// ranges inside the space they describe, the advertised window inside the buffer's room.
    pub fn check(&self) -> Result<(), String> {
        let synced = !matches!(
            self.state,
            State::SynSent | State::SynReceived | State::Closed
        );
        let end = self
            .tx_seq
            .wrapping_add(self.tx.len() as u32)
            .wrapping_add(u32::from(self.fin_queued));
        let within = |lo: u32, x: u32, hi: u32| !seq_lt(x, lo) && !seq_lt(hi, x);
        if synced && !within(self.snd_una, self.snd_nxt, end) {
            return Err(format!(
                "snd_una {} snd_nxt {} end {end}",
                self.snd_una, self.snd_nxt
            ));
        }
        if synced
            && self
                .snd_una
                .wrapping_sub(self.tx_seq)
                .min(self.tx_seq.wrapping_sub(self.snd_una))
                > 1
        {
            return Err(format!("snd_una {} tx_seq {}", self.snd_una, self.tx_seq));
        }
        for r in self.sacked.iter() {
            if !within(self.snd_una, r.start, self.snd_nxt) || !within(r.start, r.end, self.snd_nxt)
            {
                return Err(format!(
                    "SACKed {r:?} outside {}..{}",
                    self.snd_una, self.snd_nxt
                ));
            }
        }
        let rx_end = self.rcv_nxt.wrapping_add(self.rx.free() as u32);
        for r in self.ooo.iter() {
            if !seq_lt(self.rcv_nxt, r.start) || !within(r.start, r.end, rx_end) {
                return Err(format!("held {r:?} outside {}..{rx_end}", self.rcv_nxt));
            }
        }
        if synced && seq_lt(rx_end, self.rcv_adv) {
            return Err(format!(
                "window to {} past the room to {rx_end}",
                self.rcv_adv
            ));
        }
        Ok(())
    }

    /// TCP_CORK: on, partial segments wait for more data (200 ms at most); off, they go.
    pub fn set_cork(&mut self, on: bool) {
        self.cork = on;
        if !on {
            self.cork_since = None;
        }
    }

    /// TCP_QUICKACK: on (`n` > 0), what is owed is acknowledged now and the next `n` segments
    /// at once; off, ACKs are delayed (interactive mode), as Linux switches.
    pub fn set_quickack(&mut self, n: u8) {
        self.quick = n;
        self.pingpong = n == 0;
        if n > 0 && (self.unacked_bytes > 0 || self.ack_at.is_some()) {
            self.ack_now = true;
        }
    }

    /// TCP_WINDOW_CLAMP: offer at most this window (the right edge already offered stays).
    pub fn set_window_clamp(&mut self, clamp: Option<u32>) {
        self.clamp = clamp;
        // A clamp lifted may open the window enough to tell the peer now.
        self.after_read();
    }

    /// SO_RCVBUF lowered on an open connection: the receive buffer counts as `limit` bytes
    /// (the window offered is its room; `None`: the whole buffer). The right edge already
    /// offered stays.
    pub fn set_recv_limit(&mut self, limit: Option<u32>) {
        self.rx_limit = limit.filter(|&l| (l as usize) < self.rx.capacity());
        self.after_read();
    }

    /// The receive buffer's size as SO_RCVBUF set it.
    pub fn recv_limit(&self) -> usize {
        self.rx_limit.map_or(self.rx.capacity(), |l| l as usize)
    }

    /// TCP_WINDOW_CLAMP as set.
    pub fn window_clamp(&self) -> Option<u32> {
        self.clamp
    }

    /// Queued bytes not sent yet (TCP_NOTSENT_LOWAT, tcpi_notsent_bytes).
    pub fn notsent(&self) -> usize {
        self.unsent() as usize
    }

    /// Backoffs of the retransmission timer since data was last acknowledged.
    pub fn backoff(&self) -> u32 {
        self.backoff
    }

    pub fn ack_delay_us(&self) -> Micros {
        self.set.ack_delay_us
    }

    /// The largest segment received so far (tcpi_rcv_mss).
    pub fn rcv_mss(&self) -> u32 {
        self.rcv_mss
    }

    /// The window we would offer now (tcpi_rcv_wnd).
    pub fn rcv_wnd(&self) -> u32 {
        self.window_to_offer()
    }

    /// Since when the peer's window has been shut with data waiting (TCP_USER_TIMEOUT gives
    /// up on such a peer too).
    pub fn zero_window_since(&self) -> Option<Micros> {
        self.zero_wnd_since
    }

    /// TCP_CONGESTION: the algorithm from now on (the window as it is).
    pub fn set_congestion(&mut self, cc: Congestion) {
        self.set.congestion = cc;
        self.cubic = Cubic::default();
        self.ca_acked = 0;
    }

    pub fn set_nodelay(&mut self, on: bool) {
        self.set.nodelay = on;
    }

    pub fn set_ack_delay(&mut self, us: Micros) {
        self.set.ack_delay_us = us;
    }

    pub fn set_keepalive(&mut self, ka: Option<Keepalive>, now: Micros) {
        self.set.keepalive = ka;
        self.last_rx = now;
        self.ka_sent = 0;
    }

    /// Queues as much of `data` as fits; 0 when the connection does not take data.
    pub fn send(&mut self, data: &[u8]) -> usize {
        if !self.may_send() {
            return 0;
        }
        self.tx.push(data)
    }

    /// Reads up to `out.len()` bytes; a window update is made due when reading opened the
    /// window enough (see the module's documentation).
    pub fn recv(&mut self, out: &mut [u8]) -> usize {
        let n = self.rx.pop(out);
        if n > 0 {
            self.after_read();
        }
        n
    }

    /// Copies up to `out.len()` bytes without taking them.
    pub fn peek(&self, out: &mut [u8]) -> usize {
        self.rx.peek(out)
    }

    /// The bytes waiting to be read, in place (two slices where the ring wraps).
    pub fn received(&self) -> (&[u8], &[u8]) {
        self.rx.slices(0, self.rx.len())
    }

    /// Drops `n` read bytes (after `peek`).
    pub fn consume(&mut self, n: usize) {
        self.rx.consume(n.min(self.rx.len()));
        self.after_read();
    }

    /// Segments still to be acknowledged at once (quick-ACK mode: after the handshake, or
    /// TCP_QUICKACK).
    pub fn quick_acks_left(&self) -> u8 {
        self.quick
    }

    /// After the application read (or a clamp on the window was lifted): a window update is
    /// made due if the window grew enough (see the module's documentation).
    fn after_read(&mut self) {
        let cur = self.adv_left();
        if (cur as usize) * 2 <= self.recv_limit() {
            let new = self.window_to_offer();
            if new > 0 && new >= cur.saturating_mul(2) {
                self.ack_now = true;
            }
        }
    }

    /// The application closes its sending side (close or shutdown(SHUT_WR)): a FIN follows
    /// the queued data.
    pub fn close(&mut self) {
        match self.state {
            State::SynSent => self.state = State::Closed,
            State::SynReceived | State::Established => {
                self.fin_queued = true;
                self.state = State::FinWait1;
            }
            State::CloseWait => {
                self.fin_queued = true;
                self.state = State::LastAck;
            }
            _ => {}
        }
    }

    /// Resets the connection: a RST is sent (from a synchronized state) and it is closed.
    pub fn abort(&mut self) {
        if !matches!(self.state, State::SynSent | State::Closed | State::TimeWait) {
            self.rst_due = Some((self.snd_nxt, true));
        }
        self.data_before_rst = false;
        self.close_now();
    }

    /// Closed, nothing owed: no ACK, SYN or retransmission is due any more (`poll_at` asks
    /// for them before it looks at the state).
    fn close_now(&mut self) {
        self.state = State::Closed;
        self.rtx_at = At::NEVER;
        self.ack_now = false;
        self.syn_due = false;
    }

    /// Resets the connection as close(2) with unread data does on Linux: what the windows let
    /// go now goes first, then the RST; the rest of the queue is dropped. Linux transmits a
    /// write in the call that makes it, so a reply written before such a close reaches the
    /// peer ahead of the reset; here the write waited for the next output. Closed once
    /// [`Tcb::output`] ran.
    pub fn reset_after_sent(&mut self) {
        if self.next_data() == 0 {
            return self.abort();
        }
        self.rst_due = Some((self.snd_nxt, true));
        self.data_before_rst = true;
    }

    /// When `output` is next needed without input (0: now). (Inlined into its two callers in
    /// the stack's per-connection poll, once per request each.)
    #[inline(always)]
    pub fn poll_at(&self) -> Option<Micros> {
        if self.ack_now || self.rst_due.is_some() || (self.syn_due && self.rtx_at.is_none()) {
            return Some(0);
        }
        if self.state == State::Closed {
            return None;
        }
        if (self.unsent() > 0 && self.next_data() > 0) || self.fin_sendable() {
            return Some(0);
        }
        // The timers, the rare ones only when they can be set (one request's path asks this
        // several times).
        let mut at = self
            .ack_at
            .min(self.rtx_at)
            .min(self.probe_at.min(self.persist_at))
            .min(self.time_wait_until)
            .get();
        if self.set.keepalive.is_some() {
            at = earliest(at, self.keepalive_at());
        }
        if self.cork {
            at = earliest(at, self.cork_since.map(|t| t + CORK_HOLD_US));
        }
        if !self.rxts.is_empty() {
            at = earliest(at, self.rxt_overdue_at());
        }
        at
    }

    /// An ACK is owed now (a read opened the window enough, TCP_QUICKACK, ...).
    pub fn ack_due(&self) -> bool {
        self.ack_now
    }

    #[inline(always)]
    fn keepalive_at(&self) -> Option<Micros> {
        let ka = self.set.keepalive?;
        if !matches!(self.state, State::Established | State::CloseWait)
            || self.snd_una != self.snd_nxt
            || !self.tx.is_empty()
        {
            return None;
        }
        Some(self.last_rx + ka.idle_us + Micros::from(self.ka_sent) * ka.interval_us)
    }

    // ---------------------------------------------------------------- input

    /// A received segment.
    #[inline]
    pub fn input(&mut self, now: Micros, seg: &Seg) {
        if self.predicted(seg) {
            self.input_predicted(now, seg);
        } else {
            self.input_general(now, seg);
        }
    }

    /// Header prediction (the common case BSD's and Linux's fast paths take): the next
    /// in-order segment of an established connection, an ACK with or without data, no SYN,
    /// FIN, RST or other flag but PSH, no SACK block, acknowledging nothing that was not sent
    /// and, while data is in flight, something new (not a duplicate ACK), its data fitting in
    /// the buffer, no hole before it or FIN after it waiting, no recovery in progress. Such a
    /// segment is in the window, and of the general path's steps only the timestamp, the send
    /// window, the ACK's progress and the in-order data apply to it.
    #[inline]
    fn predicted(&self, seg: &Seg) -> bool {
        let acked = seg.ack.wrapping_sub(self.snd_una);
        let flight = self.snd_nxt.wrapping_sub(self.snd_una);
        self.state == State::Established
            && seg.flags & !PSH == ACK
            && seg.seq == self.rcv_nxt
            && seg.opts.nsack == 0
            && acked <= flight
            && (acked > 0 || flight == 0)
            && !self.in_recovery
            && self.ooo.is_empty()
            && self.peer_fin.is_none()
            && seg.payload.len() <= self.rx.free()
    }

    /// [`Tcb::input`], for tests and fuzzing: where header prediction takes the segment, the
    /// general path runs on a copy and must leave the same state (else a panic). Returns
    /// whether the prediction took it.
    #[doc(hidden)]
    pub fn input_compared(&mut self, now: Micros, seg: &Seg) -> bool {
        if !self.predicted(seg) {
            self.input_general(now, seg);
            return false;
        }
        let mut general = self.clone();
        general.input_general(now, seg);
        self.input_predicted(now, seg);
        assert!(
            *self == general,
            "header prediction and the general path differ after a segment with seq {} ack {} \
             flags {:#x} and {} bytes",
            seg.seq,
            seg.ack,
            seg.flags,
            seg.payload.len()
        );
        true
    }

    /// [`Tcb::output`], for tests and fuzzing, with an `emit` that takes every segment: where
    /// the short path is taken, the general path runs on a copy and must send the same
    /// segments and leave the same state (else a panic). Returns whether the short path was
    /// taken.
    #[doc(hidden)]
    pub fn output_compared<F>(&mut self, now: Micros, emit: &mut F) -> bool
    where
        F: FnMut(&Out, Payload) -> bool,
    {
        let record = |sent: &mut Vec<(Out, Vec<u8>)>, o: &Out, (a, b): Payload| {
            sent.push((*o, [a, b].concat()));
        };
        if !self.output_predicted(now) {
            self.output_general(now, emit);
            return false;
        }
        let mut general = self.clone();
        let mut by_general = Vec::new();
        general.output_general(now, &mut |o: &Out, p: Payload| {
            record(&mut by_general, o, p);
            true
        });
        let mut sent = Vec::new();
        if self.reply_ready(now) {
            // The reply's one step (itself checked against the general path), and the short
            // path of `output` on a copy.
            let mut short = self.clone();
            let mut by_short = Vec::new();
            short.output(now, &mut |o: &Out, p: Payload| {
                record(&mut by_short, o, p);
                true
            });
            assert!(
                by_short == by_general && short == general,
                "the short path of output differs from the general path"
            );
            let (o, p) = self.reply(now);
            record(&mut sent, &o, p);
            assert!(emit(&o, p), "output_compared's emit takes every segment");
        } else {
            self.output(now, &mut |o: &Out, p: Payload| {
                record(&mut sent, o, p);
                let took = emit(o, p);
                assert!(took, "output_compared's emit takes every segment");
                took
            });
        }
        assert!(
            sent == by_general,
            "the short path of output sent other segments"
        );
        assert!(
            *self == general,
            "the short path of output left another state"
        );
        true
    }

    /// [`Tcb::input`] for a segment [`Tcb::predicted`] accepts: what the general path does
    /// with it, without the tests that cannot fail for it.
    #[inline]
    fn input_predicted(&mut self, now: Micros, seg: &Seg) {
        self.counters.segs_in += 1;
        self.last_rx = now;
        self.ka_sent = 0;
        self.take_ts(seg);
        self.take_window(now, seg);
        self.silent_since = None;
        if seg.ack != self.snd_una {
            self.take_acked(now, seg.ack);
        }
        if self.snd_una != self.snd_nxt {
            self.silent_since = Some(now);
        }
        if !seg.payload.is_empty() {
            self.rcv_mss = self.rcv_mss.max(seg.payload.len() as u32);
            self.take_in_order(now, seg.payload);
            self.ack_policy(now);
        }
    }

    /// A received segment, by the general rules (every state, every flag, every case of the
    /// sequence and acknowledgment numbers).
    fn input_general(&mut self, now: Micros, seg: &Seg) {
        self.counters.segs_in += 1;
        match self.state {
            State::Closed => return,
            State::SynSent => return self.input_syn_sent(now, seg),
            State::SynReceived if seg.has(SYN) && !seg.has(ACK) && seg.seq == self.irs => {
                self.syn_due = true; // its SYN again: our SYN-ACK was lost
                self.rtx_at = At::NEVER;
                return;
            }
            _ => {}
        }
        if !self.acceptable(seg) {
            if !seg.has(RST) {
                self.oow_ack(now, seg);
            }
            return;
        }
        self.last_rx = now;
        self.ka_sent = 0;
        if seg.has(RST) {
            if seg.seq == self.rcv_nxt {
                self.fail(Failure::Reset);
            } else {
                self.oow_ack(now, seg); // RFC 5961: a challenge ACK
            }
            return;
        }
        if seg.has(SYN) {
            self.oow_ack(now, seg); // RFC 5961: a challenge ACK
            return;
        }
        if !seg.has(ACK) {
            return;
        }
        self.take_ts(seg);
        if self.state == State::SynReceived {
            if seg.ack != self.iss.wrapping_add(1) {
                self.rst_due = Some((seg.ack, false));
                return;
            }
            self.established(now, seg);
        } else if seq_lt(self.snd_nxt, seg.ack) {
            self.ack_now = true; // acknowledges what was never sent
            return;
        } else if !seq_lt(seg.ack, self.snd_una) {
            self.on_ack(now, seg);
        }
        if !seg.payload.is_empty() {
            if matches!(
                self.state,
                State::Established | State::FinWait1 | State::FinWait2
            ) {
                self.on_data(now, seg);
            } else {
                self.ack_now = true;
            }
        }
        if seg.has(FIN) {
            if self.state == State::TimeWait {
                self.ack_now = true;
                self.time_wait_until = At::when(now + TIME_WAIT_US);
            } else if self.may_recv() {
                // Kept only if its place is inside the buffer's room, so a FIN beyond it (whose
                // data was not kept either) cannot stand in for the real one.
                let fin = seg.seq.wrapping_add(seg.payload.len() as u32);
                let room_end = self.rcv_nxt.wrapping_add(self.rx.free() as u32);
                if !seq_lt(fin, self.rcv_nxt) && !seq_lt(room_end, fin) {
                    self.peer_fin = Some(fin);
                }
            }
        }
        self.take_fin(now);
    }

    /// An ACK for a segment outside the window, or a challenge ACK: at once for data (the
    /// peer retransmits what we have, having missed our ACK), else at most one per
    /// `OOW_ACK_GAP_US` (Linux's tcp_oow_rate_limited).
    fn oow_ack(&mut self, now: Micros, seg: &Seg) {
        if !seg.payload.is_empty() && !seg.has(SYN) {
            self.ack_now = true;
        } else if self.oow_at.is_none_or(|t| now >= t + OOW_ACK_GAP_US) {
            self.oow_at = Some(now);
            self.ack_now = true;
        }
    }

    /// Whether a segment falls in the window, as Linux's tcp_sequence decides: it ends at or
    /// after rcv_nxt and starts at or before the right edge of the window offered. (RFC 9293's
    /// strict test refuses a pure ACK exactly at the edge, which a peer that filled the window
    /// past a lost segment sends: its ACKs for our data would never count.)
    fn acceptable(&self, seg: &Seg) -> bool {
        let wnd = self
            .adv_left()
            .max(u32::from(self.state == State::SynReceived));
        let end = seg.seq.wrapping_add(seg.seq_len());
        !seq_lt(end, self.rcv_nxt) && !seq_lt(self.rcv_nxt.wrapping_add(wnd), seg.seq)
    }

    fn input_syn_sent(&mut self, now: Micros, seg: &Seg) {
        let ack_ok = seg.has(ACK) && seg.ack == self.iss.wrapping_add(1);
        if seg.has(ACK) && !ack_ok {
            if !seg.has(RST) {
                self.rst_due = Some((seg.ack, false));
            }
            return;
        }
        if seg.has(RST) {
            if ack_ok {
                self.fail(Failure::Refused);
            }
            return;
        }
        if !seg.has(SYN) || !ack_ok {
            return; // a simultaneous open is not supported: the peer's SYN is ignored
        }
        // Our SYN offered our options; the peer's answer decides which are on.
        self.take_syn(seg);
        self.established(now, seg);
        self.ack_now = true;
        self.last_rx = now;
    }

    /// The handshake completed by `seg` (the ACK of our SYN).
    fn established(&mut self, now: Micros, seg: &Seg) {
        self.state = State::Established;
        self.snd_una = self.iss.wrapping_add(1);
        // The window of a SYN is never scaled.
        let shift = if seg.has(SYN) { 0 } else { self.snd_shift };
        self.snd_wnd = u32::from(seg.wnd) << shift;
        self.snd_wl1 = seg.seq;
        self.snd_wl2 = seg.ack;
        self.rtx_at = At::NEVER;
        self.syn_due = false;
        if let Some((_, sent)) = self.timing.take() {
            if self.backoff == 0 {
                self.rtt_sample(now.saturating_sub(sent));
            }
        }
        self.backoff = 0;
        self.rto = self.rto_now();
    }

    fn fail(&mut self, f: Failure) {
        self.failure = Some(f);
        self.close_now();
    }

    /// The peer's timestamp, kept for our echo (RFC 7323's rule: from a segment that does
    /// not start beyond what we expect).
    #[inline]
    fn take_ts(&mut self, seg: &Seg) {
        if let (true, Some((val, _))) = (self.ts_ok, seg.opts.ts) {
            if !seq_lt(self.rcv_nxt, seg.seq) && seq_lt(self.ts_recent, val.wrapping_add(1)) {
                self.ts_recent = val;
            }
        }
    }

    /// The send window from an acceptable ACK, if the segment is not older than the one that
    /// set it last (RFC 9293's SND.WL1/SND.WL2 rule).
    #[inline]
    fn take_window(&mut self, now: Micros, seg: &Seg) {
        let wnd = u32::from(seg.wnd) << self.snd_shift;
        if seq_lt(self.snd_wl1, seg.seq)
            || (self.snd_wl1 == seg.seq && !seq_lt(seg.ack, self.snd_wl2))
        {
            self.snd_wnd = wnd;
            self.snd_wl1 = seg.seq;
            self.snd_wl2 = seg.ack;
            if wnd > 0 {
                self.persist_at = At::NEVER;
                self.zero_wnd_since = None;
            } else if self.unsent() > 0 {
                self.zero_wnd_since.get_or_insert(now);
            }
        }
    }

    fn on_ack(&mut self, now: Micros, seg: &Seg) {
        let ack = seg.ack;
        let acked = ack.wrapping_sub(self.snd_una);
        let wnd_changed = (u32::from(seg.wnd) << self.snd_shift) != self.snd_wnd;
        self.take_window(now, seg);
        let mut new_sack = false;
        if self.sack_ok {
            for &(s, e) in &seg.opts.sack[..usize::from(seg.opts.nsack)] {
                // Blocks at or below the cumulative ACK are D-SACKs: nothing was lost.
                if seq_lt(ack, e) && !seq_lt(self.snd_nxt, e) && seq_lt(s, e) && !seq_lt(s, ack) {
                    let before = self.sacked.bytes();
                    self.sacked.add(s, e);
                    new_sack |= self.sacked.bytes() != before;
                }
            }
        }
        self.silent_since = None;
        if acked > 0 {
            self.take_acked(now, ack);
        } else if self.snd_una != self.snd_nxt
            && ((seg.payload.is_empty() && !seg.has(FIN) && !wnd_changed) || new_sack)
        {
            self.dupacks += 1;
        }
        if self.in_recovery && !self.rxts.is_empty() {
            self.check_retransmissions(now);
        }
        if self.snd_una != self.snd_nxt {
            self.silent_since.get_or_insert(now);
            if !self.in_recovery
                && (self.dupacks >= DUP_THRESH || (new_sack && self.is_lost(self.snd_una)))
                && seq_lt(self.recover, self.snd_una.wrapping_add(1))
            {
                self.enter_recovery();
            }
        }
    }

    fn take_acked(&mut self, now: Micros, ack: u32) {
        let acked = ack.wrapping_sub(self.snd_una);
        let data = (ack.wrapping_sub(self.tx_seq) as usize).min(self.tx.len());
        self.tx.consume(data);
        self.tx_seq = self.tx_seq.wrapping_add(data as u32);
        self.snd_una = ack;
        self.sacked.trim_below(ack);
        if let Some((end, sent)) = self.timing {
            if !seq_lt(ack, end) {
                self.timing = None;
                self.rtt_sample(now.saturating_sub(sent));
            }
        }
        self.backoff = 0;
        self.rto = self.rto_now();
        self.dupacks = 0;
        self.probe_done = false;
        if self.in_recovery {
            if !seq_lt(ack, self.recover) {
                self.in_recovery = false;
                self.rxts.clear();
                self.again.clear();
                if !self.rto_recovery {
                    self.cwnd = self.ssthresh;
                }
                self.rto_recovery = false;
            } else if self.rto_recovery {
                self.grow(acked, now);
            }
        } else {
            self.grow(acked, now);
        }
        if self.snd_una == self.snd_nxt {
            self.rtx_at = At::NEVER;
            self.probe_at = At::NEVER;
        } else {
            self.rtx_at = At::when(now + self.rto);
            self.arm_probe(now);
        }
        // Our FIN acknowledged.
        if self.fin_queued && self.tx.is_empty() && self.snd_una == self.fin_end() {
            match self.state {
                State::FinWait1 => self.state = State::FinWait2,
                State::Closing => self.enter_time_wait(now),
                State::LastAck => self.state = State::Closed,
                _ => {}
            }
        }
    }

    /// Slow start (by bytes acknowledged, RFC 3465 with L = 1 SMSS), then congestion
    /// avoidance by the connection's algorithm.
    #[inline]
    fn grow(&mut self, acked: u32, now: Micros) {
        let smss = self.payload_max;
        if self.cwnd < self.ssthresh {
            self.cwnd = self.cwnd.saturating_add(acked.min(smss));
            return;
        }
        match self.set.congestion {
            Congestion::None => {}
            Congestion::Reno => {
                self.ca_acked = self.ca_acked.saturating_add(acked);
                if self.ca_acked >= self.cwnd {
                    self.ca_acked -= self.cwnd;
                    self.cwnd = self.cwnd.saturating_add(smss);
                }
            }
            Congestion::Cubic => self.cubic_grow(acked, now),
        }
    }

    /// RFC 9438 4.2-4.4: the window follows W_cubic(t + RTT) = C (t + RTT - K)^3 + W_max,
    /// or the Reno-friendly estimate where that is larger, growing at most by half a
    /// segment per segment acknowledged.
    fn cubic_grow(&mut self, acked: u32, now: Micros) {
        let mss = f64::from(self.payload_max);
        let cwnd = f64::from(self.cwnd);
        let cu = &mut self.cubic;
        let epoch = *cu.epoch.get_or_insert_with(|| {
            // An epoch that starts without a reduction before it (slow start ended by the
            // threshold alone): the curve starts at the window as it is.
            if cu.w_max < cwnd {
                cu.w_max = cwnd;
                cu.k = 0.0;
            }
            cu.w_est = cwnd;
            now
        });
        let rtt = self.srtt.unwrap_or(0) as f64 / 1e6;
        let t = now.saturating_sub(epoch) as f64 / 1e6 + rtt;
        let segs = (t - cu.k).powi(3) * CUBIC_C;
        let mut target = (cu.w_max / mss + segs) * mss;
        let alpha = 3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA);
        cu.w_est += alpha * mss * f64::from(acked) / cwnd;
        if cu.w_est > target {
            target = cu.w_est;
        }
        let target = target.clamp(cwnd, 1.5 * cwnd);
        let inc = (target - cwnd) / cwnd * f64::from(acked);
        self.cwnd = (cwnd + inc.min(f64::from(acked) / 2.0)) as u32;
    }

    /// A congestion event: the threshold the window comes back to (RFC 9438 4.6, 4.7 for
    /// CUBIC; half the flight for Reno).
    fn reduce(&mut self) -> u32 {
        let floor = 2 * self.payload_max;
        match self.set.congestion {
            Congestion::Cubic => {
                let cwnd = f64::from(self.cwnd.max(floor));
                let cu = &mut self.cubic;
                // Fast convergence: a window that did not reach the last maximum releases
                // bandwidth for newer flows.
                cu.w_max = if cwnd < cu.w_max {
                    cwnd * (1.0 + CUBIC_BETA) / 2.0
                } else {
                    cwnd
                };
                let ssthresh = (cwnd * CUBIC_BETA).max(f64::from(floor));
                cu.k = ((cu.w_max - ssthresh) / f64::from(self.payload_max) / CUBIC_C)
                    .max(0.0)
                    .cbrt();
                cu.epoch = None;
                ssthresh as u32
            }
            _ => (self.in_flight() / 2).max(floor),
        }
    }

    fn enter_recovery(&mut self) {
        self.counters.fast_recoveries += 1;
        self.ssthresh = self.reduce();
        self.in_recovery = true;
        self.rto_recovery = false;
        self.recover = self.snd_nxt;
        self.high_rxt = self.snd_una;
        self.cwnd = self.ssthresh;
        self.ca_acked = 0;
        self.timing = None;
        self.probe_at = At::NEVER;
    }

    /// A retransmission is lost too (RFC 8985's rule, for retransmissions): once data sent
    /// after it was SACKed, or once it has gone unacknowledged for an RTT and a quarter
    /// while ACKs still come.
    fn check_retransmissions(&mut self, now: Micros) {
        let una = self.snd_una;
        let high = self.sacked.high();
        let overdue = self.srtt.map(|s| s + s / 4 + 1_000);
        let mut i = 0;
        while i < self.rxts.len() {
            let r = self.rxts[i];
            if !seq_lt(una, r.end) {
                self.rxts.swap_remove(i);
                continue;
            }
            let later_arrived = high.is_some_and(|h| seq_lt(r.nxt, h));
            // The time rule needs the path alive: something heard from the peer a round trip
            // after the retransmission left (an answer to what was sent after it). On a dead
            // path the retransmission timer, backing off, is what sends again.
            let heard = self.srtt.is_some_and(|s| self.last_rx >= r.sent + s);
            if later_arrived || (heard && overdue.is_some_and(|d| now >= r.sent + d)) {
                self.rxts.swap_remove(i);
                self.counters.lost_retransmits += 1;
                if self.again.len() < MAX_RXTS {
                    let s = if seq_lt(r.start, una) { una } else { r.start };
                    self.again.push((s, r.end));
                }
                continue;
            }
            i += 1;
        }
    }

    /// When the oldest retransmission followed is overdue (`check_retransmissions`).
    fn rxt_overdue_at(&self) -> Option<Micros> {
        let srtt = self.srtt?;
        let oldest = self
            .rxts
            .iter()
            .filter(|r| self.last_rx >= r.sent + srtt)
            .map(|r| r.sent)
            .min()?;
        Some(oldest + srtt + srtt / 4 + 1_000)
    }

    /// The next piece of a lost retransmission to send again: its start and end (at most a
    /// segment, stopping at SACKed data); spent pieces are dropped from `again`.
    fn next_again(&mut self) -> Option<(u32, u32)> {
        while let Some(&(s0, e)) = self.again.first() {
            let mut s = if seq_lt(s0, self.snd_una) {
                self.snd_una
            } else {
                s0
            };
            while let Some(end) = self.sacked.covering(s) {
                s = end;
            }
            if !seq_lt(s, e) {
                self.again.remove(0);
                continue;
            }
            let mut end = if seq_lt(s.wrapping_add(self.seg_max()), e) {
                s.wrapping_add(self.seg_max())
            } else {
                e
            };
            if let Some(r) = self
                .sacked
                .iter()
                .find(|r| seq_lt(s, r.start) && seq_lt(r.start, end))
            {
                end = r.start;
            }
            if end == e {
                self.again.remove(0);
            } else {
                self.again[0].0 = end;
            }
            return Some((s, end));
        }
        None
    }

    fn rtt_sample(&mut self, rtt: Micros) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                self.rttvar = (3 * self.rttvar + srtt.abs_diff(rtt)) / 4;
                self.srtt = Some((7 * srtt + rtt) / 8);
            }
        }
    }

    /// RFC 6298's RTO, with the floor, the backoff and the ceiling.
    fn rto_now(&self) -> Micros {
        let base = match self.srtt {
            Some(srtt) => (srtt + (4 * self.rttvar).max(1_000)).max(self.set.rto_min_us),
            None => INITIAL_RTO_US,
        };
        (base << self.backoff.min(16)).min(MAX_RTO_US)
    }

    /// Arms the tail-loss probe. Not for a flight of one segment: its ACK may be a delayed
    /// one (Linux's peers wait 40 ms and more; RFC 8985 adds the worst-case delayed-ACK time,
    /// 200 ms, which is the RTO's floor anyway), so it is left to the retransmission timer.
    #[inline]
    fn arm_probe(&mut self, now: Micros) {
        if self.probe_done || self.rto_recovery || self.in_flight() <= self.payload_max {
            self.probe_at = At::NEVER;
            return;
        }
        if let Some(srtt) = self.srtt {
            let pto = 2 * srtt + PROBE_SLACK_US.max(4 * self.rttvar);
            if self.rtx_at.is_none_or(|r| now + pto < r) {
                self.probe_at = At::when(now + pto);
            }
        }
    }

    fn on_data(&mut self, now: Micros, seg: &Seg) {
        let mut seq = seg.seq;
        let mut data = seg.payload;
        if seq_lt(seq, self.rcv_nxt) {
            let skip = self.rcv_nxt.wrapping_sub(seq) as usize;
            if skip >= data.len() {
                self.ack_now = true; // all of it was here already: the peer missed our ACK
                return;
            }
            data = &data[skip..];
            seq = self.rcv_nxt;
        }
        self.rcv_mss = self.rcv_mss.max(seg.payload.len() as u32);
        let off = seq.wrapping_sub(self.rcv_nxt) as usize;
        let room = self.rx.free();
        if off >= room {
            self.ack_now = true;
            return;
        }
        let n = data.len().min(room - off);
        if off == 0 {
            let had_holes = !self.ooo.is_empty();
            self.take_in_order(now, &data[..n]);
            if had_holes {
                self.ooo.trim_below(self.rcv_nxt);
                while let Some(r) = self.ooo.take_at(self.rcv_nxt) {
                    let more = r.end.wrapping_sub(self.rcv_nxt);
                    self.rx.commit(more as usize);
                    self.rcv_nxt = r.end;
                }
                self.ack_now = true;
            } else {
                self.ack_policy(now);
            }
        } else {
            self.rx.write_at(self.rx.len() + off, &data[..n]);
            self.ooo.add(seq, seq.wrapping_add(n as u32));
            self.ack_now = true;
        }
    }

    /// Data at `rcv_nxt`, which fits in the buffer: queued for the application.
    #[inline]
    fn take_in_order(&mut self, now: Micros, data: &[u8]) {
        let len = self.rx.len();
        self.rx.write_at(len, data);
        self.rx.commit(data.len());
        self.rcv_nxt = self.rcv_nxt.wrapping_add(data.len() as u32);
        self.unacked_bytes += data.len() as u32;
        self.data_rx_at = Some(now);
    }

    /// When in-order data (no hole filled) is acknowledged: at once in quick-ACK mode or for
    /// more than a full segment unacknowledged, else after the delayed-ACK time.
    #[inline]
    fn ack_policy(&mut self, now: Micros) {
        if (self.quick > 0 && !self.pingpong) || self.unacked_bytes > self.rcv_mss {
            self.quick = self.quick.saturating_sub(1);
            self.ack_now = true;
        } else if self.set.ack_delay_us == 0 {
            self.ack_now = true;
        } else if self.ack_at.is_none() {
            self.ack_at = At::when(now + self.set.ack_delay_us);
        }
    }

    /// The peer's FIN, once everything before it arrived.
    fn take_fin(&mut self, now: Micros) {
        if self.peer_fin != Some(self.rcv_nxt) {
            return;
        }
        self.peer_fin = None;
        self.fin_got = true;
        self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        // Nothing follows a FIN: bytes held beyond it are not the peer's.
        self.ooo.clear();
        self.ack_now = true;
        match self.state {
            State::SynReceived | State::Established => self.state = State::CloseWait,
            State::FinWait1 => {
                if self.fin_queued && self.snd_una == self.fin_end() && self.tx.is_empty() {
                    self.enter_time_wait(now);
                } else {
                    self.state = State::Closing;
                }
            }
            State::FinWait2 => self.enter_time_wait(now),
            _ => {}
        }
    }

    fn enter_time_wait(&mut self, now: Micros) {
        self.state = State::TimeWait;
        self.time_wait_until = At::when(now + TIME_WAIT_US);
        self.rtx_at = At::NEVER;
        self.probe_at = At::NEVER;
        self.persist_at = At::NEVER;
    }

    // ---------------------------------------------------------------- loss

    /// Whether the hole at `seq` is lost by the SACK rule (RFC 6675 IsLost), or because
    /// everything sent after it was SACKed (early retransmit, RFC 5827: a flight too small to
    /// bring three duplicates, such as a reply of two or three segments, has nothing else to
    /// tell).
    fn is_lost(&self, seq: u32) -> bool {
        let (bytes, ranges) = self.sacked.above(seq);
        ranges >= DUP_THRESH as usize
            || bytes > (DUP_THRESH - 1) * self.payload_max
            || (ranges == 1 && self.sacked.high() == Some(self.snd_nxt))
    }

    /// The end of the sequence space we have to send (the FIN included once queued).
    fn fin_end(&self) -> u32 {
        self.tx_seq
            .wrapping_add(self.tx.len() as u32)
            .wrapping_add(u32::from(self.fin_queued))
    }

    /// The next lost and not yet retransmitted hole: its start and end.
    fn next_lost(&self) -> Option<(u32, u32)> {
        let at = if seq_lt(self.high_rxt, self.snd_una) {
            self.snd_una
        } else {
            self.high_rxt
        };
        self.next_lost_from(at)
    }

    /// The first lost hole at or above `at`.
    fn next_lost_from(&self, mut at: u32) -> Option<(u32, u32)> {
        let limit = if self.rto_recovery {
            self.snd_nxt
        } else if self.sack_ok {
            self.sacked
                .high()
                .unwrap_or(self.snd_una.wrapping_add(self.payload_max))
        } else {
            self.snd_una.wrapping_add(self.payload_max)
        };
        let limit = if seq_lt(self.snd_nxt, limit) {
            self.snd_nxt
        } else {
            limit
        };
        while seq_lt(at, limit) {
            if let Some(end) = self.sacked.covering(at) {
                at = end;
                continue;
            }
            let end = self
                .sacked
                .iter()
                .find(|r| seq_lt(at, r.start))
                .map_or(limit, |r| {
                    if seq_lt(r.start, limit) {
                        r.start
                    } else {
                        limit
                    }
                });
            if self.rto_recovery || at == self.snd_una || self.is_lost(at) {
                return Some((at, end));
            }
            return None;
        }
        None
    }

    /// RFC 6675's pipe: bytes in flight, less what is SACKed and what is lost and not sent again.
    fn pipe(&self) -> u32 {
        let out = self
            .snd_nxt
            .wrapping_sub(self.snd_una)
            .saturating_sub(self.sacked.bytes());
        if !self.in_recovery {
            return out;
        }
        let mut lost = 0u32;
        let mut at = if seq_lt(self.high_rxt, self.snd_una) {
            self.snd_una
        } else {
            self.high_rxt
        };
        while let Some((s, e)) = self.next_lost_from(at) {
            lost += e.wrapping_sub(s);
            at = e;
        }
        // Retransmissions found lost are not in flight either (SACKed parts aside: rare, and
        // an underestimate only sends them a little sooner).
        for &(s, e) in &self.again {
            let s = if seq_lt(s, self.snd_una) {
                self.snd_una
            } else {
                s
            };
            if seq_lt(s, e) {
                lost += e.wrapping_sub(s);
            }
        }
        out.saturating_sub(lost)
    }

    fn on_rto(&mut self, now: Micros) {
        self.counters.timeouts += 1;
        self.rxts.clear();
        self.again.clear();
        self.backoff += 1;
        self.rto = self.rto_now();
        self.timing = None;
        self.probe_at = At::NEVER;
        if matches!(self.state, State::SynSent | State::SynReceived) {
            self.syn_due = true;
            self.rtx_at = At::NEVER;
            return;
        }
        self.ssthresh = self.reduce();
        self.cwnd = self.payload_max;
        self.ca_acked = 0;
        self.in_recovery = true;
        self.rto_recovery = true;
        self.recover = self.snd_nxt;
        self.high_rxt = self.snd_una;
        self.dupacks = 0;
        self.rtx_at = At::when(now + self.rto);
    }

    // ---------------------------------------------------------------- output

    /// What is left of the window last advertised.
    fn adv_left(&self) -> u32 {
        if seq_lt(self.rcv_nxt, self.rcv_adv) {
            self.rcv_adv.wrapping_sub(self.rcv_nxt)
        } else {
            0
        }
    }

    /// The window we offer now: the buffer's room, in the scale's steps, never moving the
    /// right edge back.
    #[inline]
    fn window_to_offer(&self) -> u32 {
        let max = 65535u32 << self.rcv_shift;
        let free = match self.rx_limit {
            Some(l) => (l as usize)
                .saturating_sub(self.rx.len())
                .min(self.rx.free()),
            None => self.rx.free(),
        };
        let room = (free as u32).min(max).min(self.clamp.unwrap_or(u32::MAX));
        (room & !((1u32 << self.rcv_shift) - 1)).max(self.adv_left())
    }

    /// Queued bytes not sent yet.
    fn unsent(&self) -> u32 {
        let end = self.tx_seq.wrapping_add(self.tx.len() as u32);
        if seq_lt(self.snd_nxt, end) {
            end.wrapping_sub(self.snd_nxt)
        } else {
            0
        }
    }

    /// New bytes that may go now by the peer's window (not the congestion window).
    fn sendable_ignoring_cwnd(&self) -> u32 {
        if !self.sends_data() {
            return 0;
        }
        let wnd_end = self.snd_una.wrapping_add(self.snd_wnd);
        let by_wnd = if seq_lt(self.snd_nxt, wnd_end) {
            wnd_end.wrapping_sub(self.snd_nxt)
        } else {
            0
        };
        self.unsent().min(by_wnd)
    }

    /// New bytes that may go now (window and congestion window permitting).
    fn sendable(&self) -> u32 {
        let can = self.sendable_ignoring_cwnd();
        if can == 0 || self.set.congestion == Congestion::None {
            return can;
        }
        can.min(self.cwnd.saturating_sub(self.pipe()))
    }

    /// The length of the new data segment due now: 0 when there is none, or when Nagle (a
    /// partial segment while an earlier partial segment is in flight: Minshall's form, which
    /// Linux's `tcp_nagle_check` uses) or silly-window avoidance (a segment cut short by a
    /// window while data is in flight) holds it back.
    #[inline]
    fn next_data(&self) -> u32 {
        self.next_segment().0
    }

    /// [`Tcb::next_data`], and whether that segment is a partial one (shorter than the MSS
    /// allows).
    #[inline]
    fn next_segment(&self) -> (u32, bool) {
        let can = self.sendable();
        let max = self.seg_max();
        let n = can.min(max);
        if n == 0 || n == max {
            return (n, false);
        }
        let unsent = self.unsent();
        if self.cork && !self.cork_lifted && n == unsent && !self.fin_queued {
            return (0, true); // corked: a partial segment waits (`output` lifts it after the ceiling)
        }
        if self.snd_nxt == self.snd_una {
            return (n, true);
        }
        if n < unsent || (!self.set.nodelay && !self.fin_queued && self.small_in_flight()) {
            return (0, true);
        }
        (n, true)
    }

    /// A partial segment sent is not acknowledged yet (Linux's `tcp_minshall_check`).
    #[inline]
    fn small_in_flight(&self) -> bool {
        seq_lt(self.snd_una, self.snd_sml) && !seq_lt(self.snd_nxt, self.snd_sml)
    }

    fn fin_sendable(&self) -> bool {
        self.fin_queued
            && self.snd_nxt == self.tx_seq.wrapping_add(self.tx.len() as u32)
            && matches!(
                self.state,
                State::FinWait1 | State::LastAck | State::Closing
            )
    }

    #[inline(always)]
    fn header(&mut self, now: Micros, seq: u32, flags: u8) -> Out {
        let wnd = self.window_to_offer();
        let mut out = Out {
            seq,
            ack: self.rcv_nxt,
            flags,
            wnd: (wnd >> self.rcv_shift).min(65535) as u16,
            ..Out::default()
        };
        if self.ts_ok {
            out.ts = Some((self.ts_val(now), self.ts_recent));
        }
        if self.sack_ok && !self.ooo.is_empty() {
            let (blocks, n) = self.ooo.recent::<{ seg::MAX_SACK_OUT }>();
            for (i, b) in blocks[..n].iter().enumerate() {
                out.sack[i] = (b.start, b.end);
            }
            out.nsack = n as u8;
        }
        out
    }

    /// Our timestamp clock: milliseconds, from a per-connection offset.
    fn ts_val(&self, now: Micros) -> u32 {
        ((now / 1000) as u32).wrapping_add(self.ts_offset)
    }

    /// After a segment carrying our ACK left.
    fn acked_sent(&mut self, out: &Out) {
        self.counters.segs_out += 1;
        if out.flags & ACK != 0 {
            self.rcv_adv = self
                .rcv_nxt
                .wrapping_add(u32::from(out.wnd) << self.rcv_shift);
            self.ack_now = false;
            self.ack_at = At::NEVER;
            self.unacked_bytes = 0;
        }
    }

    /// Emits the segment covering `[seq, end)` of the sequence space (data from the send
    /// queue, the FIN if it falls inside). Returns whether `emit` took it.
    fn emit_range<F>(&mut self, now: Micros, seq: u32, end: u32, emit: &mut F) -> bool
    where
        F: FnMut(&Out, Payload) -> bool,
    {
        let data_end = self.tx_seq.wrapping_add(self.tx.len() as u32);
        let pay_end = if seq_lt(data_end, end) { data_end } else { end };
        let n = if seq_lt(seq, pay_end) {
            pay_end.wrapping_sub(seq)
        } else {
            0
        };
        let fin = self.fin_queued && seq_lt(data_end, end);
        let mut flags = ACK;
        if fin {
            flags |= FIN;
        }
        if n > 0 && seq.wrapping_add(n) == data_end {
            flags |= PSH;
        }
        let out = self.header(now, seq, flags);
        let off = seq.wrapping_sub(self.tx_seq) as usize;
        if !emit(&out, self.tx.slices(off, n as usize)) {
            return false;
        }
        self.segment_sent(now, &out, n > 0);
        true
    }

    /// Sends what is due: a SYN or SYN-ACK, a reset, retransmissions, new data, a FIN, probes,
    /// or an ACK. `emit` gets each segment and returns false when it cannot take more (the
    /// rest waits for the next call).
    #[inline]
    pub fn output<F>(&mut self, now: Micros, emit: &mut F)
    where
        F: FnMut(&Out, Payload) -> bool,
    {
        if self.output_predicted(now) {
            self.take_due_ack(now);
            if self.send_new_data(now, emit) {
                self.send_owed_ack(now, emit);
            }
        } else {
            self.output_general(now, emit);
        }
    }

    /// Whether [`Tcb::reply`] takes what is due now: [`Tcb::output`]'s short path, for
    /// everything queued in one segment with the timestamp option alone, nothing in flight
    /// (so neither Nagle nor the congestion window's use holds it) and the windows open for
    /// it. A request's reply, usually.
    #[inline]
    pub fn reply_ready(&self, now: Micros) -> bool {
        let unsent = self.unsent();
        self.output_predicted(now)
            && self.ts_ok
            && self.snd_nxt == self.snd_una
            && (!self.sack_ok || self.ooo.is_empty())
            && unsent <= self.payload_max
            && unsent <= self.snd_wnd
            && (self.set.congestion == Congestion::None || unsent <= self.cwnd)
    }

    /// What [`Tcb::output`] does when [`Tcb::reply_ready`] says so, in one step: the segment
    /// (its header, with the timestamp option alone, and its payload, the whole send queue
    /// not sent yet), the connection's state as `output` leaves it after sending that. The
    /// caller sends it. (Where debug assertions are on, the general path runs on a copy and
    /// must send the same segment and leave the same state.)
    #[inline]
    pub fn reply(&mut self, now: Micros) -> (Out, Payload<'_>) {
        debug_assert!(self.reply_ready(now));
        #[cfg(debug_assertions)]
        let (general, by_general) = {
            let mut g = self.clone();
            let mut sent = Vec::new();
            g.output_general(now, &mut |o: &Out, (a, b): Payload| {
                sent.push((*o, [a, b].concat()));
                true
            });
            (g, sent)
        };
        self.take_due_ack(now);
        let s = self.snd_nxt;
        let n = self.unsent();
        let e = s.wrapping_add(n);
        let out = self.header(now, s, ACK | PSH);
        self.segment_sent(now, &out, true);
        self.new_data_sent(now, e, n < self.payload_max);
        #[cfg(debug_assertions)]
        {
            let (a, b) = self
                .tx
                .slices(s.wrapping_sub(self.tx_seq) as usize, n as usize);
            assert!(
                by_general == [(out, [a, b].concat())],
                "the reply's step sent another segment than output"
            );
            assert!(
                *self == general,
                "the reply's step left another state than output"
            );
        }
        let off = s.wrapping_sub(self.tx_seq) as usize;
        (out, self.tx.slices(off, n as usize))
    }

    /// The delayed ACK's time came: it is owed now (what is sent next carries it), and the
    /// exchange is no longer interactive (nothing was sent in time to carry it).
    #[inline]
    fn take_due_ack(&mut self, now: Micros) {
        if self.ack_at.is_some_and(|t| now >= t) {
            self.ack_now = true;
            self.pingpong = false;
        }
    }

    /// Whether [`Tcb::output`] has only new data to send (and the ACK, if that does not carry
    /// it): an established connection with data queued and an open window, no reset, FIN or
    /// cork, no recovery, no timer due but the delayed ACK's. Of the general path's steps only
    /// those can do anything then (the engine's tests and the tcp fuzz target run both and
    /// compare).
    #[inline]
    fn output_predicted(&self, now: Micros) -> bool {
        self.state == State::Established
            && self.rst_due.is_none()
            && !(self.in_recovery || self.cork || self.fin_queued)
            && self.snd_wnd > 0
            && self.unsent() > 0
            && self.rtx_at.min(self.probe_at.min(self.time_wait_until)).0 > now
    }

    /// [`Tcb::output`] by the general rules: every state, timer and repair.
    fn output_general<F>(&mut self, now: Micros, emit: &mut F)
    where
        F: FnMut(&Out, Payload) -> bool,
    {
        if let Some((mut seq, with_ack)) = self.rst_due {
            if self.data_before_rst {
                if !self.send_new_data(now, emit) {
                    return;
                }
                self.data_before_rst = false;
                self.close_now();
                seq = self.snd_nxt;
                self.rst_due = Some((seq, with_ack));
            }
            let mut out = Out {
                seq,
                flags: RST,
                ..Out::default()
            };
            if with_ack {
                out.flags |= ACK;
                out.ack = self.rcv_nxt;
            }
            if emit(&out, (&[], &[])) {
                self.rst_due = None;
                self.counters.segs_out += 1;
            }
            return;
        }
        if self.state == State::Closed {
            return;
        }
        if self.time_wait_until.is_some_and(|t| now >= t) {
            self.state = State::Closed;
            return;
        }
        if self.rtx_at.is_some_and(|t| now >= t) {
            self.on_rto(now);
        }
        self.take_due_ack(now);
        match self.state {
            State::SynSent | State::SynReceived => return self.output_syn(now, emit),
            State::TimeWait => {
                if self.ack_now {
                    let out = self.header(now, self.snd_nxt, ACK);
                    if emit(&out, (&[], &[])) {
                        self.acked_sent(&out);
                    }
                }
                return;
            }
            _ => {}
        }

        // Retransmissions of lost holes, while the flight allows; retransmissions overdue are
        // lost too (also when no ACK comes to tell: the flight may be that retransmission).
        if self.in_recovery && !self.rxts.is_empty() {
            self.check_retransmissions(now);
        }
        if self.in_recovery {
            while self.pipe() < self.cwnd {
                let (s, e, again) = match self.next_again() {
                    Some((s, e)) => (s, e, true),
                    None => {
                        let Some((s, e)) = self.next_lost() else {
                            break;
                        };
                        let e = if seq_lt(s.wrapping_add(self.seg_max()), e) {
                            s.wrapping_add(self.seg_max())
                        } else {
                            e
                        };
                        (s, e, false)
                    }
                };
                if !self.emit_range(now, s, e, emit) {
                    if again {
                        self.again.insert(0, (s, e));
                    }
                    return;
                }
                if !again {
                    self.high_rxt = e;
                }
                if self.rxts.len() < MAX_RXTS {
                    self.rxts.push(Rxt {
                        start: s,
                        end: e,
                        sent: now,
                        nxt: self.snd_nxt,
                    });
                }
                self.counters.retransmits += 1;
                self.timing = None;
                if self.rtx_at.is_none() || s == self.snd_una {
                    self.rtx_at = At::when(now + self.rto);
                }
                // The ACK this repair draws may be lost too, and nothing may be left to send:
                // a probe follows, not the timeout.
                if self.probe_at.is_none() && !self.rto_recovery {
                    self.arm_probe(now);
                }
            }
        }
        // A tail-loss probe.
        if self.probe_at.is_some_and(|t| now >= t) {
            self.probe_at = At::NEVER;
            self.probe_done = true;
            let e = self.snd_nxt;
            let s = e.wrapping_sub(self.seg_max().min(self.in_flight()));
            if seq_lt(s, e) {
                if !self.emit_range(now, s, e, emit) {
                    return;
                }
                self.counters.loss_probes += 1;
                self.counters.retransmits += 1;
                self.timing = None;
            }
        }
        // New data (what a cork held past its ceiling too).
        if self.cork && self.unsent() > 0 {
            let since = *self.cork_since.get_or_insert(now);
            self.cork_lifted |= now >= since + CORK_HOLD_US;
        }
        if !self.send_new_data(now, emit) {
            return;
        }
        // The FIN alone, once all data went.
        if self.fin_sendable() {
            let s = self.snd_nxt;
            if !self.emit_range(now, s, s.wrapping_add(1), emit) {
                return;
            }
            self.snd_nxt = s.wrapping_add(1);
            if self.rtx_at.is_none() {
                self.rtx_at = At::when(now + self.rto);
            }
        }
        // Zero window: probe it (Linux: an old sequence number, no data). Its clock for
        // TCP_USER_TIMEOUT starts when data waits for it.
        if self.snd_wnd == 0 && self.unsent() > 0 {
            self.zero_wnd_since.get_or_insert(now);
        }
        if self.snd_wnd == 0 && self.unsent() > 0 && self.snd_nxt == self.snd_una {
            match self.persist_at.get() {
                None => self.persist_at = At::when(now + self.rto),
                Some(t) if now >= t => {
                    let out = self.header(now, self.snd_una.wrapping_sub(1), ACK);
                    if !emit(&out, (&[], &[])) {
                        return;
                    }
                    self.acked_sent(&out);
                    self.backoff = (self.backoff + 1).min(16);
                    self.persist_at = At::when(now + self.rto_now());
                }
                Some(_) => {}
            }
        }
        // Keepalive.
        if let (Some(at), Some(ka)) = (self.keepalive_at(), self.set.keepalive) {
            if now >= at {
                if self.ka_sent >= ka.probes {
                    self.fail(Failure::TimedOut);
                    self.rst_due = Some((self.snd_nxt, true));
                    return self.output(now, emit);
                }
                let out = self.header(now, self.snd_una.wrapping_sub(1), ACK);
                if !emit(&out, (&[], &[])) {
                    return;
                }
                self.acked_sent(&out);
                self.ka_sent += 1;
            }
        }
        self.send_owed_ack(now, emit);
    }

    /// New data, as the windows, Nagle and the cork allow. False if `emit` refused a
    /// segment (the rest waits for the next call).
    #[inline]
    fn send_new_data<F>(&mut self, now: Micros, emit: &mut F) -> bool
    where
        F: FnMut(&Out, Payload) -> bool,
    {
        loop {
            let (n, partial) = self.next_segment();
            if n == 0 {
                break;
            }
            let unsent = self.unsent();
            let s = self.snd_nxt;
            let e = s
                .wrapping_add(n)
                .wrapping_add(u32::from(self.fin_queued && n == unsent));
            if !self.emit_range(now, s, e, emit) {
                return false;
            }
            self.new_data_sent(now, e, partial);
            if self.unsent() == 0 {
                // (`next_data` would say 0: a reply is one segment, and this the usual end.)
                break;
            }
        }
        true
    }

    /// After segment `out` left (`data`: with a payload): a reply soon after a request makes
    /// the exchange interactive (Linux's tcp_event_data_sent); its ACK is sent.
    #[inline(always)]
    fn segment_sent(&mut self, now: Micros, out: &Out, data: bool) {
        if data
            && self
                .data_rx_at
                .is_some_and(|t| now.saturating_sub(t) < self.set.ack_delay_us.max(PINGPONG_US))
        {
            self.pingpong = true;
        }
        self.acked_sent(out);
    }

    /// After a segment of new data ending at `e` left (`partial`: shorter than the MSS
    /// allows, for Nagle): the sequence space, the RTT sample, the cork, the retransmission
    /// timer, the loss probe, the silence the give-up time counts from.
    #[inline(always)]
    fn new_data_sent(&mut self, now: Micros, e: u32, partial: bool) {
        self.snd_nxt = e;
        if partial {
            self.snd_sml = e;
        }
        self.timing.get_or_insert((e, now));
        if self.unsent() == 0 {
            self.cork_since = None;
            self.cork_lifted = false;
        }
        if self.rtx_at.is_none() {
            self.rtx_at = At::when(now + self.rto);
        }
        self.arm_probe(now);
        self.silent_since.get_or_insert(now);
    }

    /// A pure ACK, if one is still owed after what was sent.
    #[inline]
    fn send_owed_ack<F>(&mut self, now: Micros, emit: &mut F)
    where
        F: FnMut(&Out, Payload) -> bool,
    {
        if self.ack_now {
            let out = self.header(now, self.snd_nxt, ACK);
            if emit(&out, (&[], &[])) {
                self.acked_sent(&out);
            }
        }
    }

    /// States in which queued data still goes out.
    fn sends_data(&self) -> bool {
        matches!(
            self.state,
            State::Established
                | State::CloseWait
                | State::FinWait1
                | State::Closing
                | State::LastAck
        )
    }

    fn output_syn<F>(&mut self, now: Micros, emit: &mut F)
    where
        F: FnMut(&Out, Payload) -> bool,
    {
        if !self.syn_due {
            return;
        }
        let passive = self.state == State::SynReceived;
        let mut out = Out {
            seq: self.iss,
            ack: if passive { self.rcv_nxt } else { 0 },
            flags: if passive { SYN | ACK } else { SYN },
            wnd: self.rx.free().min(65535) as u16,
            mss: Some(self.set.mss),
            ..Out::default()
        };
        // Passive: answer with the options the peer offered; active: offer what we do.
        let ws = if passive {
            self.ws_on
        } else {
            self.set.window_scaling
        };
        if ws {
            out.wscale = Some(self.rcv_shift);
        }
        out.sack_perm = if passive { self.sack_ok } else { self.set.sack };
        let ts = if passive {
            self.ts_ok
        } else {
            self.set.timestamps
        };
        if ts {
            out.ts = Some((self.ts_val(now), if passive { self.ts_recent } else { 0 }));
        }
        if !emit(&out, (&[], &[])) {
            return;
        }
        self.counters.segs_out += 1;
        if self.backoff > 0 {
            self.counters.retransmits += 1;
        }
        self.syn_due = false;
        if self.backoff == 0 {
            self.timing = Some((self.iss.wrapping_add(1), now));
        }
        self.rtx_at = At::when(now + self.rto);
        if passive {
            self.rcv_adv = self.rcv_nxt.wrapping_add(u32::from(out.wnd));
        }
    }
}

/// The smallest shift that lets a window of `capacity` bytes be advertised.
fn wscale_for(capacity: usize) -> u8 {
    let mut shift = 0;
    while shift < 14 && (capacity >> shift) > 65535 {
        shift += 1;
    }
    shift
}
