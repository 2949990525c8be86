//! A passive connection carried from one stack to another: processes that share a device and
//! a listening port each run a stack, and when one stops listening (an old worker after
//! `nginx -s reload`) the connections its listener holds but the application never accepted
//! go on in a stack that still listens, as on Linux, where the one listening socket the
//! processes share keeps them for the others.
//!
//! Only a connection whose state is a handful of numbers can be carried: in SYN-RECEIVED, or
//! past the handshake with nothing of ours sent but the SYN (the application never had it).
//! What the peer sent and we hold (a request) travels beside it; out-of-order data does not
//! (the peer sends it again).

use super::{Buffers, Micros, State, Tcb, INITIAL_CWND_SEGS};

/// What another stack needs to carry on a passive connection (`Tcb::carry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carry {
    /// The handshake completed (else: SYN-RECEIVED, our SYN-ACK unacknowledged).
    pub established: bool,
    /// The peer's FIN arrived (CLOSE-WAIT); `rcv_nxt` counts it.
    pub fin: bool,
    pub iss: u32,
    pub irs: u32,
    pub rcv_nxt: u32,
    /// The peer's window, in bytes.
    pub snd_wnd: u32,
    pub snd_shift: u8,
    pub rcv_shift: u8,
    pub ws_on: bool,
    pub sack_ok: bool,
    pub ts_ok: bool,
    pub ts_recent: u32,
    /// Our timestamp clock's reading when the connection was carried: the taker's clock goes
    /// on from it (processes' clocks need not agree; the peer discards a segment whose
    /// timestamp goes back, RFC 7323's PAWS).
    pub ts_val: u32,
    pub payload_max: u32,
    /// The smoothed round-trip time and its variance, if measured (µs).
    pub srtt: Option<Micros>,
    pub rttvar: Micros,
}

/// `Carry` as words, for memory the processes share.
pub const CARRY_WORDS: usize = 13;

impl Carry {
    pub fn to_words(&self) -> [u32; CARRY_WORDS] {
        let flags = u32::from(self.established)
            | u32::from(self.fin) << 1
            | u32::from(self.ws_on) << 2
            | u32::from(self.sack_ok) << 3
            | u32::from(self.ts_ok) << 4
            | u32::from(self.srtt.is_some()) << 5;
        let srtt = self.srtt.unwrap_or(0);
        [
            flags,
            self.iss,
            self.irs,
            self.rcv_nxt,
            self.snd_wnd,
            u32::from(self.snd_shift) | u32::from(self.rcv_shift) << 8,
            self.ts_recent,
            self.payload_max,
            srtt as u32,
            (srtt >> 32) as u32,
            self.rttvar as u32,
            (self.rttvar >> 32) as u32,
            self.ts_val,
        ]
    }

    /// The words `to_words` gave; None if they cannot be a connection's (shifts over 14, a
    /// payload size of no segment).
    pub fn from_words(w: &[u32; CARRY_WORDS]) -> Option<Carry> {
        let flag = |b: u32| w[0] & 1 << b != 0;
        let (snd_shift, rcv_shift) = ((w[5] & 0xff) as u8, (w[5] >> 8 & 0xff) as u8);
        if snd_shift > 14 || rcv_shift > 14 || !(64..=65_535).contains(&w[7]) {
            return None;
        }
        let wide = |lo: u32, hi: u32| Micros::from(lo) | Micros::from(hi) << 32;
        Some(Carry {
            established: flag(0),
            fin: flag(1),
            iss: w[1],
            irs: w[2],
            rcv_nxt: w[3],
            snd_wnd: w[4],
            snd_shift,
            rcv_shift,
            ws_on: flag(2),
            sack_ok: flag(3),
            ts_ok: flag(4),
            ts_recent: w[6],
            payload_max: w[7],
            srtt: flag(5).then(|| wide(w[8], w[9])),
            rttvar: wide(w[10], w[11]),
            ts_val: w[12],
        })
    }
}

impl Tcb {
    /// The connection as another stack would carry it on, if it can be: a passive open the
    /// application never had (nothing of ours sent but the SYN, no error). `now`: this stack's
    /// clock.
    pub fn carry(&self, now: Micros) -> Option<Carry> {
        let established = match self.state {
            State::SynReceived => false,
            State::Established | State::CloseWait => true,
            _ => return None,
        };
        let synless = self.iss.wrapping_add(1);
        if self.failure.is_some()
            || self.fin_queued
            || !self.tx.is_empty()
            || self.snd_nxt != synless
            || (established && self.snd_una != synless)
        {
            return None;
        }
        Some(Carry {
            established,
            fin: self.fin_got,
            iss: self.iss,
            irs: self.irs,
            rcv_nxt: self.rcv_nxt,
            snd_wnd: self.snd_wnd,
            snd_shift: self.snd_shift,
            rcv_shift: self.rcv_shift,
            ws_on: self.ws_on,
            sack_ok: self.sack_ok,
            ts_ok: self.ts_ok,
            ts_recent: self.ts_recent,
            ts_val: self.ts_val(now),
            payload_max: self.payload_max,
            srtt: self.srtt,
            rttvar: self.rttvar,
        })
    }

    /// A connection another stack carried (`carry`), with `data` the peer's bytes it held
    /// (as much as the receive buffer takes). Its next output acknowledges everything
    /// received (or, in SYN-RECEIVED, sends the SYN-ACK again).
    pub fn carried_with(
        set: super::Settings,
        now: Micros,
        c: &Carry,
        data: &[u8],
        bufs: Option<Buffers>,
    ) -> Self {
        let state = match (c.established, c.fin) {
            (false, _) => State::SynReceived,
            (true, false) => State::Established,
            (true, true) => State::CloseWait,
        };
        let mut t = Self::new(set, now, c.iss, state, bufs);
        t.irs = c.irs;
        t.rcv_nxt = c.rcv_nxt;
        t.rcv_adv = c.rcv_nxt;
        t.snd_wnd = c.snd_wnd;
        t.snd_wl1 = c.irs;
        t.snd_wl2 = c.iss;
        t.snd_shift = c.snd_shift;
        t.rcv_shift = c.rcv_shift;
        t.ws_on = c.ws_on;
        t.sack_ok = c.sack_ok;
        t.ts_ok = c.ts_ok;
        t.ts_recent = c.ts_recent;
        t.ts_offset = c.ts_val.wrapping_sub((now / 1000) as u32);
        t.payload_max = c.payload_max;
        t.cwnd = INITIAL_CWND_SEGS * c.payload_max;
        t.rcv_mss = c.payload_max.min(536);
        t.srtt = c.srtt;
        t.rttvar = c.rttvar;
        t.rto = t.rto_now();
        if c.established {
            t.snd_una = c.iss.wrapping_add(1);
            t.syn_due = false;
            t.fin_got = c.fin;
        }
        t.rx.push(data);
        // Past the handshake, an ACK of everything received; in SYN-RECEIVED the SYN-ACK
        // (`syn_due`) is that, and its retransmission timer takes over.
        t.ack_now = c.established;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::super::seg::{self, Out, ACK, SYN};
    use super::super::{Payload, Settings};
    use super::*;

    fn segments(t: &mut Tcb, now: Micros) -> Vec<(u8, u32, u32)> {
        let mut v = Vec::new();
        t.output(now, &mut |o: &Out, _: Payload| {
            v.push((o.flags, o.seq, o.ack));
            true
        });
        v
    }

    #[test]
    fn a_carried_handshake_sends_its_syn_ack_again_then_waits_for_its_timer() {
        let mut client = Tcb::connect(Settings::default(), 0, 100);
        let mut syn = Vec::new();
        client.output(0, &mut |o: &Out, _: Payload| {
            let mut buf = vec![0u8; o.header_len()];
            o.write(1, 2, &mut buf);
            syn = buf;
            true
        });
        let server = Tcb::accept(Settings::default(), 0, 5000, &seg::parse(&syn).unwrap());
        let carry = server.carry(0).expect("SYN-RECEIVED carries");
        assert!(!carry.established);
        let mut taken = Tcb::carried_with(Settings::default(), 10, &carry, &[], None);
        assert_eq!(taken.state(), State::SynReceived);
        assert_eq!(segments(&mut taken, 10), [(SYN | ACK, 5000, 101)]);
        // Nothing more is due until the SYN-ACK's retransmission timer.
        assert!(
            taken.poll_at().is_some_and(|t| t > 10),
            "{:?}",
            taken.poll_at()
        );
        assert!(segments(&mut taken, 11).is_empty());
    }

    #[test]
    fn an_established_carry_acknowledges_what_was_received_once() {
        let carry = Carry {
            established: true,
            fin: false,
            iss: 5000,
            irs: 100,
            rcv_nxt: 108,
            snd_wnd: 65_535,
            snd_shift: 7,
            rcv_shift: 7,
            ws_on: true,
            sack_ok: true,
            ts_ok: false,
            ts_recent: 0,
            ts_val: 0,
            payload_max: 1460,
            srtt: None,
            rttvar: 0,
        };
        let mut t = Tcb::carried_with(Settings::default(), 10, &carry, b"GET a\r\n", None);
        assert_eq!(t.state(), State::Established);
        assert_eq!(t.recv_queue(), 7);
        assert_eq!(segments(&mut t, 10), [(ACK, 5001, 108)]);
        assert_eq!(t.poll_at(), None, "nothing due: no data, no timer");
    }

    #[test]
    fn a_carry_comes_back_from_its_words_and_bad_words_are_refused() {
        let c = Carry {
            established: true,
            fin: true,
            iss: 0xdead_beef,
            irs: 7,
            rcv_nxt: 0xffff_fff0,
            snd_wnd: 3 << 20,
            snd_shift: 7,
            rcv_shift: 9,
            ws_on: true,
            sack_ok: false,
            ts_ok: true,
            ts_recent: 123_456,
            ts_val: 0xfeed_0001,
            payload_max: 1448,
            srtt: Some(5_000_000_123),
            rttvar: 1 << 33,
        };
        assert_eq!(Carry::from_words(&c.to_words()), Some(c));
        let plain = Carry {
            established: false,
            fin: false,
            ws_on: false,
            ts_ok: false,
            srtt: None,
            rttvar: 0,
            ..c
        };
        assert_eq!(Carry::from_words(&plain.to_words()), Some(plain));
        let mut w = c.to_words();
        w[5] = 15;
        assert_eq!(Carry::from_words(&w), None, "a shift over 14");
        let mut w = c.to_words();
        w[7] = 0;
        assert_eq!(Carry::from_words(&w), None, "no payload");
    }
}
