//! Loss recovery assist: Linux-like loss detection in front of smoltcp's TCP.
//!
//! smoltcp 0.14 retransmits early only on exactly three duplicate ACKs that also carry the same
//! window (then only the first unacknowledged segment), has no SACK-based loss detection, does
//! not act on partial ACKs (NewReno), and never retransmits on timeout sooner than 1 s. Through 2% loss that is one timeout per lost segment: 0.2 MB/s. We see every
//! segment before smoltcp does, so without changing smoltcp this module:
//! - counts ACKs that repeat the cumulative ACK while data is outstanding — pure ones whatever
//!   their window says (a receiver with out-of-order data advertises a changing window), and
//!   data-bearing ones that carry a SACK block (in a bidirectional stream the duplicate ACKs
//!   ride on data, and smoltcp ignores them) — and after the
//!   third, or after a partial ACK during recovery (RFC 6582), asks the stack to hand smoltcp
//!   duplicate ACKs until it retransmits the first unacknowledged segment;
//! - sends a tail-loss probe (RFC 8985, simplified; `Recovery::probe_deadline`) when a flight's
//!   ACKs stop for 2 SRTT + max(10 ms, 4 RTTVAR): the first unacknowledged segment again, as a fast
//!   retransmission, instead of waiting for the timeout;
//! - keeps a retransmission timer of its own (RFC 6298 from its own RTT samples, at least
//!   MTCP_RTO_MIN_MS, doubling while nothing is acknowledged); when it passes, the connection's private clock is moved forward
//!   to smoltcp's own retransmission time, so smoltcp retransmits now. Each connection has its own
//!   smoltcp interface, so the skew touches no other connection.

use smoltcp::wire::TcpPacket;

use crate::net::Micros;
use crate::seq::seq_lt;

/// Default retransmission timeout floor (MTCP_RTO_MIN_MS): Linux's 200 ms. It must stay above
/// the peers' delayed-ACK timer (Linux: 40 ms and more; others up to 200 ms): with a 30 ms
/// floor (FreeBSD's), 10,000 Redis clients on a busy machine acknowledged
/// replies later than that and 36,000 of 100,000 replies were retransmitted for nothing, each
/// one a go-back-N with the window reset, until throughput collapsed for seconds.
pub const DEFAULT_RTO_MIN_US: Micros = 200_000;
/// The retransmission timeout before any RTT sample.
const INITIAL_RTO_US: Micros = 1_000_000;
const MAX_BACKOFF: u32 = 6;
/// A conservative segment size for "three segments' worth" (the smallest common MSS is 536).
const SEGMENT_GUESS: u32 = 1200;
/// A tail-loss probe (RFC 8985) fires 2 SRTT + max(this, 4 RTTVAR) after the last progress.
const PROBE_SLACK_US: Micros = 10_000;

pub struct Recovery {
    rto_min: Micros,
    /// One segment timed at a time (RFC 6298, Karn): its end sequence and send time, and the
    /// retransmission count then (a retransmission invalidates the sample).
    timing: Option<(u32, Micros, u32)>,
    srtt: Option<Micros>,
    rttvar: Micros,
    snd_una: Option<u32>,
    dup: u8,
    /// snd_max when recovery started: ACKs below it are partial.
    recover: Option<u32>,
    win_raw: u16,
    /// Since when the oldest outstanding data has waited for an ACK.
    stalled_since: Option<Micros>,
    /// Since when data has been outstanding with no segment at all from the peer (an answered
    /// zero-window probe or a duplicate ACK counts as heard): when to give up (stack/conn.rs).
    silent_since: Option<Micros>,
    backoff: u32,
    /// The end of the highest sequence the peer has sent: a synthetic ACK carries it, so it is
    /// never older than smoltcp's rcv_nxt (which would make smoltcp discard it).
    peer_next: Option<u32>,
    /// The MSS option of the peer's SYN or SYN-ACK, as smoltcp takes it (none or 0: 536; at
    /// least 48), recorded once at the handshake: TCP_INFO and TCP_MAXSEG report it.
    peer_mss: Option<u16>,
    /// Since when the peer's latest ACKs have offered a zero window (TCP_USER_TIMEOUT gives up
    /// on a window that stays shut, as Linux's window-probe timer does).
    zero_since: Option<Micros>,
    /// Bytes outstanding (snd_max - snd_una) at the last look.
    flight: u32,
    /// A tail-loss probe was sent since the last progress.
    probed: bool,
}

impl Recovery {
    pub fn new(rto_min: Micros) -> Recovery {
        Recovery {
            rto_min,
            timing: None,
            srtt: None,
            rttvar: 0,
            snd_una: None,
            dup: 0,
            recover: None,
            win_raw: 0,
            stalled_since: None,
            silent_since: None,
            backoff: 0,
            peer_next: None,
            peer_mss: None,
            zero_since: None,
            flight: 0,
            probed: false,
        }
    }

    /// RFC 6298's srtt + 4 rttvar, with the floor applied to the variance term as Linux does
    /// (srtt + max(4 rttvar, floor)): a peer that delays its ACKs by up to the floor on top of
    /// the path's RTT is never retransmitted to. Before the first RTT sample: 1 s (RFC 6298's
    /// initial RTO, Linux's TCP_TIMEOUT_INIT).
    fn rto(&self) -> Micros {
        match self.srtt {
            Some(srtt) => srtt + (4 * self.rttvar).max(self.rto_min),
            None => INITIAL_RTO_US.max(self.rto_min),
        }
    }

    fn rtt_sample(&mut self, r: Micros) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                self.rttvar = (3 * self.rttvar + srtt.abs_diff(r)) / 4;
                self.srtt = Some((7 * srtt + r) / 8);
            }
        }
    }
    /// Looks at a segment from the peer before smoltcp does. `snd_max` is the highest sequence
    /// number we have sent. Returns whether a fast retransmission should be provoked.
    pub fn on_segment(
        &mut self,
        seg: &TcpPacket<&[u8]>,
        payload_len: usize,
        snd_max: Option<u32>,
        now: Micros,
    ) -> bool {
        if seg.rst() || !seg.ack() {
            return false;
        }
        if seg.window_len() == 0 {
            self.zero_since.get_or_insert(now);
        } else if self.zero_since.is_some() {
            self.zero_since = None;
        }
        if self.silent_since.is_some() {
            self.silent_since = Some(now);
        }
        if seg.syn() {
            // An active open's SYN-ACK acknowledges our SYN: the handshake's first ACK.
            self.note_syn(seg);
            if let (None, Some(max)) = (self.snd_una, snd_max) {
                self.first_ack(seg.ack_number().0 as u32, max, seg.window_len(), now);
            }
            return false;
        }
        let end = (seg.seq_number().0 as u32)
            .wrapping_add(payload_len as u32)
            .wrapping_add(u32::from(seg.fin()));
        if self.peer_next.is_none_or(|n| seq_lt(n, end)) {
            self.peer_next = Some(end);
        }
        let ack = seg.ack_number().0 as u32;
        let Some(max) = snd_max else {
            self.snd_una = Some(ack);
            return false;
        };
        match self.snd_una {
            Some(una) if seq_lt(una, ack) => {
                if let Some((end, at, _)) = self.timing {
                    if !seq_lt(ack, end) {
                        self.rtt_sample(now.saturating_sub(at));
                        self.timing = None;
                    }
                }
                self.snd_una = Some(ack);
                self.dup = 0;
                self.win_raw = seg.window_len();
                self.backoff = 0;
                self.probed = false;
                self.flight = max.wrapping_sub(ack);
                self.stalled_since = if seq_lt(ack, max) { Some(now) } else { None };
                self.silent_since = self.stalled_since;
                match self.recover {
                    Some(r) if seq_lt(ack, r) => true,
                    _ => {
                        self.recover = None;
                        // An ACK that moves snd_una and SACKs data above it: the new first
                        // unacknowledged segment is lost if everything sent after it, or three
                        // segments' worth, arrived (RFC 6675's IsLost, on the ACK that shows it:
                        // the duplicates that would follow may never come, at the tail of a
                        // flight).
                        let sacked = sack_high(seg, ack);
                        let lost = sacked
                            .is_some_and(|h| h.wrapping_sub(ack) >= 3 * SEGMENT_GUESS || h == max);
                        if lost && seq_lt(ack, max) {
                            self.recover = Some(max);
                        }
                        lost && seq_lt(ack, max)
                    }
                }
            }
            // A duplicate ACK: pure, or carrying data with a SACK block (the receiver holds data
            // above a hole: RFC 6675's loss signal; a bidirectional stream's duplicate ACKs
            // ride on data).
            Some(una) if una == ack && seq_lt(ack, max) && !seg.fin() => {
                self.win_raw = seg.window_len();
                let sacked = sack_high(seg, una);
                if sacked.is_none() && (payload_len > 0 || has_sack(seg)) {
                    // Data without a SACK block, or an ACK whose SACK blocks are all D-SACKs
                    // (a copy arrived twice): not a duplicate in RFC 6675's sense.
                    return false;
                }
                self.dup = self.dup.saturating_add(1);
                // Lost (RFC 6675): three duplicates, or three segments' worth SACKed above the
                // hole, or everything sent after it SACKed (no further duplicates will come,
                // the case RFC 5827's early retransmit covers).
                let lost = self.dup >= 3
                    || sacked.is_some_and(|h| h.wrapping_sub(una) >= 3 * SEGMENT_GUESS || h == max);
                if lost && self.recover.is_none() {
                    self.recover = Some(max);
                    return true;
                }
                false
            }
            None => {
                self.first_ack(ack, max, seg.window_len(), now);
                false
            }
            _ => {
                self.win_raw = seg.window_len();
                false
            }
        }
    }

    /// The handshake's ACK of our SYN or SYN-ACK: from here on the timer runs while data is
    /// outstanding, and not before (see `on_sent`).
    fn first_ack(&mut self, ack: u32, max: u32, win: u16, now: Micros) {
        self.snd_una = Some(ack);
        self.win_raw = win;
        self.stalled_since = if seq_lt(ack, max) { Some(now) } else { None };
        self.silent_since = self.stalled_since;
        self.backoff = 0;
    }

    /// Called after each transmission burst of the connection. Nothing happens during the
    /// handshake (no ACK seen yet): SYN and SYN-ACK retransmissions are left to smoltcp's own
    /// timer (1 s, doubling: RFC 6298's initial RTO, Linux's TCP_TIMEOUT_INIT). A 30 ms timer
    /// there would resend SYN-ACKs to a thousand clients that are merely slow, and an armed
    /// timer left over from the handshake would fire on a connection with nothing outstanding.
    pub fn on_sent(&mut self, snd_max: Option<u32>, retransmits: u32, now: Micros) {
        let (Some(una), Some(max)) = (self.snd_una, snd_max) else {
            return;
        };
        match self.timing {
            Some((_, _, r)) if r != retransmits => self.timing = None,
            None if seq_lt(una, max) => self.timing = Some((max, now, retransmits)),
            _ => {}
        }
        if self.stalled_since.is_none() && seq_lt(una, max) {
            self.stalled_since = Some(now);
        }
        self.flight = max.wrapping_sub(una);
        if self.silent_since.is_none() && seq_lt(una, max) {
            self.silent_since = Some(now);
        }
    }

    /// Since when the peer's window has been shut (its latest ACKs offer none).
    pub fn zero_window_since(&self) -> Option<Micros> {
        self.zero_since
    }

    /// The window counts as shut from the next ACK that says so (nothing waited for it).
    pub fn clear_zero_window(&mut self) {
        self.zero_since = None;
    }

    /// Since when data has been outstanding and the peer silent.
    pub fn silent_since(&self) -> Option<Micros> {
        self.silent_since
    }

    /// When our retransmission timer fires, if data is outstanding.
    pub fn deadline(&self) -> Option<Micros> {
        self.stalled_since.map(|t| t + (self.rto() << self.backoff))
    }

    /// When to send a tail-loss probe (RFC 8985's TLP), if one is due at all: data outstanding
    /// and no ACK for 2 SRTT + max(10 ms, 4 RTTVAR), before the retransmission timer (the
    /// variance term keeps a peer whose ACKs come irregularly, a loaded machine, from being
    /// probed for nothing). The last ACK of a flight
    /// may be lost, or the flight's last segments with every ACK that would show it: without a
    /// probe only the retransmission timeout (200 ms and more) finds out. The probe (the first
    /// unacknowledged segment again) draws an ACK that says what arrived. Only with at least
    /// two segments' worth outstanding: one segment may wait for the peer's delayed ACK (40
    /// ms and more). Once per flight: a second loss of the same flight waits for the timer.
    /// Also in recovery, where it stands in for RACK's detection of a lost retransmission:
    /// the hole's retransmission was lost when nothing moves snd_una for that long.
    pub fn probe_deadline(&self) -> Option<Micros> {
        if self.probed || self.backoff > 0 {
            return None;
        }
        if self.flight < 2 * SEGMENT_GUESS {
            return None;
        }
        let at = self.stalled_since? + 2 * self.srtt? + (4 * self.rttvar).max(PROBE_SLACK_US);
        (at < self.deadline()?).then_some(at)
    }

    /// A tail-loss probe was sent.
    pub fn on_probe(&mut self) {
        self.probed = true;
    }

    /// Stops the timer: nothing is outstanding.
    pub fn stop(&mut self) {
        self.stalled_since = None;
        self.silent_since = None;
        self.backoff = 0;
    }

    /// Our timer fired: back off and restart it.
    pub fn on_timeout(&mut self, now: Micros) {
        self.probed = false;
        self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
        self.stalled_since = Some(now);
        self.recover = None;
        self.dup = 0;
        self.timing = None;
    }

    /// The peer's SYN (a passive open's, or an active open's SYN-ACK): records its MSS option.
    pub fn note_syn(&mut self, seg: &TcpPacket<&[u8]>) {
        self.peer_mss = Some(syn_mss(seg));
    }

    /// The MSS the peer announced in its SYN (`None`: no SYN from the peer seen yet).
    pub fn peer_mss(&self) -> Option<u16> {
        self.peer_mss
    }

    /// The smoothed RTT in microseconds (`None` before the first sample).
    pub fn srtt(&self) -> Option<Micros> {
        self.srtt
    }

    /// The RTT variation in microseconds (0 before the first sample).
    pub fn rttvar(&self) -> Micros {
        self.rttvar
    }

    /// The retransmission timeout now, backoff included (Linux's icsk_rto).
    pub fn current_rto(&self) -> Micros {
        self.rto() << self.backoff
    }

    /// How many times the timer has backed off since data was last acknowledged.
    pub fn backoff(&self) -> u32 {
        self.backoff
    }

    pub fn snd_una(&self) -> Option<u32> {
        self.snd_una
    }

    pub fn peer_next(&self) -> Option<u32> {
        self.peer_next
    }

    pub fn window_raw(&self) -> u16 {
        self.win_raw
    }
}

/// The segment's TCP options as (kind, body after kind and length), NOPs skipped; stops at
/// the end-of-list option or at a malformed length.
fn options<'a>(seg: &'a TcpPacket<&[u8]>) -> impl Iterator<Item = (u8, &'a [u8])> {
    let mut opts = seg.options();
    std::iter::from_fn(move || loop {
        let &kind = opts.first()?;
        match kind {
            0 => return None,
            1 => opts = &opts[1..],
            _ => {
                let len = usize::from(*opts.get(1)?);
                if len < 2 || len > opts.len() {
                    return None;
                }
                let body = &opts[2..len];
                opts = &opts[len..];
                return Some((kind, body));
            }
        }
    })
}

/// The MSS a SYN announces, as smoltcp takes it: the option's value, at least 48; without
/// the option (or with 0): 536, RFC 9293's default (Linux's too).
fn syn_mss(seg: &TcpPacket<&[u8]>) -> u16 {
    const DEFAULT_MSS: u16 = 536;
    const MIN_REMOTE_MSS: u16 = 48;
    match options(seg).find(|&(kind, body)| kind == 2 && body.len() == 2) {
        Some((_, mss)) => match u16::from_be_bytes([mss[0], mss[1]]) {
            0 => DEFAULT_MSS,
            mss => mss.max(MIN_REMOTE_MSS),
        },
        None => DEFAULT_MSS,
    }
}

/// Whether the segment carries a SACK option.
fn has_sack(seg: &TcpPacket<&[u8]>) -> bool {
    options(seg).any(|(kind, _)| kind == 5)
}

/// The highest right edge among the segment's SACK blocks (option kind 5) above `ack`, if
/// any. A block at or below the cumulative ACK is a D-SACK (RFC 2883: the peer got something
/// twice), no sign of a hole.
fn sack_high(seg: &TcpPacket<&[u8]>, ack: u32) -> Option<u32> {
    options(seg)
        .filter(|&(kind, _)| kind == 5)
        .flat_map(|(_, blocks)| blocks.chunks_exact(8))
        .map(|b| u32::from_be_bytes([b[4], b[5], b[6], b[7]]))
        .filter(|&right| seq_lt(ack, right))
        .reduce(|h, right| if seq_lt(h, right) { right } else { h })
}

/// A pure ACK from `peer` to `local` as the peer would send it: sequence `seq` (our rcv_nxt),
/// acknowledging `ack`, advertising the raw window `win`. Checksums are left zero: connection
/// interfaces do not verify them (the demux already did, for real segments).
pub fn synth_ack(
    buf: &mut [u8; 40],
    peer: std::net::SocketAddrV4,
    local: std::net::SocketAddrV4,
    seq: u32,
    ack: u32,
    win: u16,
) {
    buf.fill(0);
    buf[0] = 0x45;
    buf[2..4].copy_from_slice(&40u16.to_be_bytes());
    buf[6] = 0x40; // DF
    buf[8] = 64;
    buf[9] = 6;
    buf[12..16].copy_from_slice(&peer.ip().octets());
    buf[16..20].copy_from_slice(&local.ip().octets());
    let t = &mut buf[20..40];
    t[0..2].copy_from_slice(&peer.port().to_be_bytes());
    t[2..4].copy_from_slice(&local.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x10;
    t[14..16].copy_from_slice(&win.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ACK segment acknowledging `ack`, with the SACK blocks `sack`, carrying no data.
    fn ack_segment(ack: u32, sack: &[(u32, u32)]) -> Vec<u8> {
        let opt_len = if sack.is_empty() {
            0
        } else {
            4 + 8 * sack.len()
        };
        let hdr = 20 + opt_len;
        let mut b = vec![0u8; hdr];
        b[8..12].copy_from_slice(&ack.to_be_bytes());
        b[12] = ((hdr / 4) as u8) << 4;
        b[13] = 0x10;
        b[14..16].copy_from_slice(&1000u16.to_be_bytes());
        if !sack.is_empty() {
            // NOP, NOP, SACK kind 5 and its length.
            b[20..24].copy_from_slice(&[1, 1, 5, (2 + 8 * sack.len()) as u8]);
            for (i, (l, r)) in sack.iter().enumerate() {
                b[24 + 8 * i..28 + 8 * i].copy_from_slice(&l.to_be_bytes());
                b[28 + 8 * i..32 + 8 * i].copy_from_slice(&r.to_be_bytes());
            }
        }
        b
    }

    fn on(r: &mut Recovery, ack: u32, sack: &[(u32, u32)], max: u32, now: Micros) -> bool {
        let b = ack_segment(ack, sack);
        r.on_segment(&TcpPacket::new_unchecked(&b[..]), 0, Some(max), now)
    }

    const MSS: u32 = 1460;

    /// A connection that has sent 10 segments from 1000 and had its RTT (100 µs) measured.
    fn sending() -> Recovery {
        let mut r = Recovery::new(DEFAULT_RTO_MIN_US);
        on(&mut r, 1000, &[], 1000, 0);
        r.on_sent(Some(1000 + MSS), 0, 0);
        on(&mut r, 1000 + MSS, &[], 1000 + MSS, 100);
        r.on_sent(Some(1000 + 11 * MSS), 0, 1_000);
        r
    }

    #[test]
    fn an_ack_that_moves_una_and_sacks_the_rest_of_the_flight_marks_the_hole_lost() {
        let mut r = sending();
        let max = 1000 + 11 * MSS;
        // Segment 2 arrived, segment 3 did not, everything after it did: the one ACK that says
        // so moves snd_una (the duplicates that would follow never come at a flight's tail).
        let hole = 1000 + 2 * MSS;
        assert!(on(&mut r, hole, &[(hole + MSS, max)], max, 1_100));
        // A plain cumulative ACK is no loss; neither is a D-SACK below the ACK.
        let mut r = sending();
        assert!(!on(&mut r, hole, &[], max, 1_100));
        let mut r = sending();
        assert!(!on(&mut r, hole, &[(1000 + MSS, hole)], max, 1_100));
    }

    #[test]
    fn a_d_sack_says_nothing_was_lost() {
        // A probe that was not needed: the peer acknowledges everything, then reports the
        // probe's copy below the ACK (RFC 2883); its duplicate ACKs carrying that block are no
        // sign of a hole.
        let mut r = sending();
        let max = 1000 + 11 * MSS;
        let una = 1000 + 2 * MSS;
        on(&mut r, una, &[], max, 1_100);
        for _ in 0..3 {
            assert!(!on(&mut r, una, &[(1000 + MSS, una)], max, 1_200));
        }
    }

    #[test]
    fn a_flight_whose_acks_stop_is_probed_before_the_timeout_once() {
        let mut r = sending();
        // 2 SRTT + 10 ms after the flight left, well before the 200 ms timer.
        let probe = r.probe_deadline().expect("a probe is due");
        assert_eq!(probe, 1_000 + 2 * 100 + PROBE_SLACK_US);
        assert!(probe < r.deadline().unwrap());
        r.on_probe();
        assert_eq!(r.probe_deadline(), None, "one probe per flight");
        // Progress: the next stall gets a probe of its own, counted from that ACK.
        let max = 1000 + 11 * MSS;
        on(&mut r, 1000 + 5 * MSS, &[], max, 20_000);
        assert_eq!(r.probe_deadline(), Some(20_000 + 2 * 100 + PROBE_SLACK_US));
        // After a timeout (backing off), none until data is acknowledged again.
        r.on_timeout(300_000);
        assert_eq!(r.probe_deadline(), None);
    }

    #[test]
    fn a_single_segment_in_flight_is_left_to_the_timer() {
        // One segment may be waiting for the peer's delayed ACK: no probe.
        let mut r = Recovery::new(DEFAULT_RTO_MIN_US);
        on(&mut r, 1000, &[], 1000, 0);
        r.on_sent(Some(1000 + MSS), 0, 0);
        on(&mut r, 1000 + MSS, &[], 1000 + MSS, 100);
        r.on_sent(Some(1000 + 2 * MSS), 0, 1_000);
        assert_eq!(r.probe_deadline(), None);
    }
}
