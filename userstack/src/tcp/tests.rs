//! The engine against itself: two connections over a simulated wire (delay, loss,
//! duplication, reordering; simulated time), and single steps checked segment by segment.

use super::seg::{self, Out, Seg, ACK, RST, SYN};
use super::*;

/// A segment on the wire: its bytes (header and payload, as `Out::write` lays them out).
fn encode(out: &Out, payload: Payload) -> Vec<u8> {
    let mut buf = vec![0u8; out.header_len() + payload.0.len() + payload.1.len()];
    let n = out.write(1, 2, &mut buf);
    buf[n..n + payload.0.len()].copy_from_slice(payload.0);
    buf[n + payload.0.len()..].copy_from_slice(payload.1);
    buf
}

/// What `t` sends now. Where the short path of `output` is taken, the general path runs on a
/// copy and must send the same and leave the same state (every test here compares them).
fn collect(t: &mut Tcb, now: Micros) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    if t.output_compared(now, &mut |o: &Out, p: Payload| {
        v.push(encode(o, p));
        true
    }) {
        PREDICTED_OUT.with(|n| n.set(n.get() + 1));
    }
    v
}

/// Feeds a segment; one that header prediction takes is checked against the general path
/// (every test here compares the two on every segment the prediction takes).
fn feed(t: &mut Tcb, now: Micros, bytes: &[u8]) {
    let s = seg::parse(bytes).expect("well formed");
    if t.input_compared(now, &s) {
        PREDICTED.with(|n| n.set(n.get() + 1));
    }
}

thread_local! {
    /// Segments this thread's tests fed that header prediction took.
    static PREDICTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Calls of `output` that took its short path.
    static PREDICTED_OUT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn parsed(bytes: &[u8]) -> Seg<'_> {
    seg::parse(bytes).unwrap()
}

/// A deterministic generator for the wire's faults.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 1000 < percent * 10
    }
}

#[derive(Clone, Copy)]
struct Faults {
    loss: u64,
    dup: u64,
    reorder: u64,
}

/// Two engines and the wire between them.
struct Pair {
    a: Tcb,
    b: Tcb,
    now: Micros,
    /// (delivery time, to b?, bytes)
    wire: Vec<(Micros, bool, Vec<u8>)>,
    delay: Micros,
    faults: Faults,
    rng: Rng,
    /// Per-direction link rate: a segment takes this long per 1,000 bytes.
    per_kb: Micros,
    busy: [Micros; 2],
}

impl Pair {
    fn new(a_set: Settings, b_set: Settings, faults: Faults, seed: u64) -> Self {
        let mut a = Tcb::connect(a_set, 0, 0xffff_f000);
        let syn = collect(&mut a, 0);
        assert_eq!(syn.len(), 1);
        let b = Tcb::accept(b_set, 0, 0x7000_0000, &parsed(&syn[0]));
        let mut p = Pair {
            a,
            b,
            now: 0,
            wire: Vec::new(),
            delay: 50,
            faults,
            rng: Rng(seed),
            per_kb: 1,
            busy: [0; 2],
        };
        p.flush();
        p
    }

    fn put(&mut self, to_b: bool, bytes: Vec<u8>) {
        let f = self.faults;
        if self.rng.chance(f.loss) {
            return;
        }
        let dir = usize::from(to_b);
        let start = self.busy[dir].max(self.now);
        let done = start + self.per_kb * (bytes.len() as Micros).div_ceil(1000);
        self.busy[dir] = done;
        let mut at = done + self.delay;
        if self.rng.chance(f.reorder) {
            at += 3 * self.delay; // overtaken by the next few
        }
        if self.rng.chance(f.dup) {
            self.wire.push((at + 1, to_b, bytes.clone()));
        }
        self.wire.push((at, to_b, bytes));
    }

    fn flush(&mut self) {
        let now = self.now;
        for s in collect(&mut self.a, now) {
            self.put(true, s);
        }
        for s in collect(&mut self.b, now) {
            self.put(false, s);
        }
    }

    /// Runs until `done` or `limit` of simulated time; false on the limit.
    fn run(&mut self, limit: Micros, mut step: impl FnMut(&mut Pair) -> bool) -> bool {
        let mut stuck = 0;
        loop {
            if step(self) {
                return true;
            }
            self.flush();
            let next_wire = self.wire.iter().map(|w| w.0).min();
            let next = [next_wire, self.a.poll_at(), self.b.poll_at()]
                .into_iter()
                .flatten()
                .min()
                .map(|t| t.max(self.now));
            let Some(next) = next else { return step(self) };
            if next > limit {
                return false;
            }
            stuck = if next == self.now { stuck + 1 } else { 0 };
            assert!(
                stuck < 10_000,
                "no progress at {}: a {:?} poll_at {:?}, b {:?} poll_at {:?}",
                self.now,
                self.a.state(),
                self.a.poll_at(),
                self.b.state(),
                self.b.poll_at()
            );
            self.now = next;
            let now = self.now;
            let mut due: Vec<_> = Vec::new();
            self.wire.retain(|w| {
                if w.0 <= now {
                    due.push(w.clone());
                    false
                } else {
                    true
                }
            });
            due.sort_by_key(|w| w.0);
            for (_, to_b, bytes) in due {
                let t = if to_b { &mut self.b } else { &mut self.a };
                feed(t, now, &bytes);
            }
        }
    }
}

fn no_faults() -> Faults {
    Faults {
        loss: 0,
        dup: 0,
        reorder: 0,
    }
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Sends `total` bytes from a to b; returns (simulated time, a's counters).
fn transfer(total: usize, faults: Faults, seed: u64) -> (Micros, Counters) {
    let mut p = Pair::new(Settings::default(), Settings::default(), faults, seed);
    assert!(p.run(10_000_000, |p| p.a.state() == State::Established
        && p.b.state() == State::Established));
    let start = p.now;
    let mut sent = 0;
    let mut got = 0;
    let mut buf = vec![0u8; 32 * 1024];
    let mut chunk = vec![0u8; 16 * 1024];
    let ok = p.run(600_000_000, |p| {
        while sent < total {
            let n = chunk.len().min(total - sent);
            for (i, c) in chunk[..n].iter_mut().enumerate() {
                *c = pattern(sent + i);
            }
            let k = p.a.send(&chunk[..n]);
            if k == 0 {
                break;
            }
            sent += k;
        }
        loop {
            let n = p.b.recv(&mut buf);
            if n == 0 {
                break;
            }
            for (i, c) in buf[..n].iter().enumerate() {
                assert_eq!(*c, pattern(got + i), "byte {} differs", got + i);
            }
            got += n;
        }
        got == total
    });
    assert!(ok, "{got} of {total} bytes arrived; a: {:?}", p.a.counters);
    (p.now - start, p.a.counters)
}

#[test]
fn a_handshake_agrees_on_options() {
    let mut p = Pair::new(
        Settings::default(),
        Settings {
            rx_capacity: 1 << 20,
            ..Settings::default()
        },
        no_faults(),
        1,
    );
    assert!(p.run(1_000_000, |p| p.a.state() == State::Established
        && p.b.state() == State::Established));
    assert!(p.a.timestamps() && p.b.timestamps());
    assert!(p.a.sack_ok && p.b.sack_ok);
    assert_eq!(p.b.rcv_shift, 5, "a window of 1 MiB needs a shift of 5");
    assert_eq!(p.a.snd_shift, 5);
    assert_eq!(p.a.payload_max(), 1448);
    // Without the options on one side, neither uses them.
    let plain = Settings {
        timestamps: false,
        sack: false,
        window_scaling: false,
        ..Settings::default()
    };
    let mut p = Pair::new(Settings::default(), plain, no_faults(), 1);
    assert!(p.run(1_000_000, |p| p.a.state() == State::Established
        && p.b.state() == State::Established));
    assert!(!p.a.timestamps() && !p.a.sack_ok && p.a.snd_shift == 0 && p.a.rcv_shift == 0);
    assert_eq!(p.a.payload_max(), 1460);
}

#[test]
fn a_lost_syn_and_syn_ack_are_sent_again() {
    let mut a = Tcb::connect(Settings::default(), 0, 100);
    assert_eq!(collect(&mut a, 0).len(), 1);
    assert_eq!(a.poll_at(), Some(1_000_000));
    let again = collect(&mut a, 1_000_000);
    assert_eq!(parsed(&again[0]).flags, SYN);
    assert_eq!(a.poll_at(), Some(3_000_000), "the RTO doubles");
    let mut b = Tcb::accept(Settings::default(), 0, 5, &parsed(&again[0]));
    let synack = collect(&mut b, 0);
    assert_eq!(parsed(&synack[0]).flags, SYN | ACK);
    // The SYN again (our SYN-ACK was lost): answered again at once.
    feed(&mut b, 10, &again[0]);
    assert_eq!(b.poll_at(), Some(0));
    assert_eq!(parsed(&collect(&mut b, 10)[0]).flags, SYN | ACK);
}

#[test]
fn requests_and_replies_take_the_predicted_path() {
    let mut p = established_pair();
    let before = PREDICTED.with(|n| n.get());
    let out_before = PREDICTED_OUT.with(|n| n.get());
    let mut buf = [0u8; 64];
    for _ in 0..10 {
        p.a.send(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        p.flush();
        let now = p.now;
        assert!(p.run(now + 10_000, |p| p.b.recv_queue() > 0));
        assert_eq!(p.b.recv(&mut buf), 20);
        p.b.send(b"$1\r\nv\r\n");
        p.flush();
        let now = p.now;
        assert!(p.run(now + 10_000, |p| p.a.recv_queue() > 0));
        assert_eq!(p.a.recv(&mut buf), 7);
    }
    // Each request at the server and each reply at the client (its ACK of the request with
    // it), every one checked against the general path by `feed`.
    let taken = PREDICTED.with(|n| n.get()) - before;
    assert!(taken >= 20, "{taken} of 20 segments predicted");
    // Each request and each reply left by the short path of `output`.
    let sent = PREDICTED_OUT.with(|n| n.get()) - out_before;
    assert!(sent >= 20, "{sent} of 20 segments sent by the short path");
}

#[test]
fn a_request_is_acknowledged_by_its_reply_or_after_the_delay() {
    let mut p = established_pair();
    // Past quick-ACK mode.
    p.b.quick = 0;
    p.a.send(b"GET k\r\n");
    p.flush();
    let now = p.now;
    assert!(p.run(now + 200, |p| p.b.recv_queue() > 0));
    // The ACK waits for the delay...
    assert!(collect(&mut p.b, p.now).is_empty());
    let due = p.b.poll_at().unwrap();
    assert_eq!(due, p.now + 1_000);
    // ...unless the reply goes first and carries it.
    let mut req = [0u8; 16];
    assert_eq!(p.b.recv(&mut req), 7);
    p.b.send(b"$1\r\nv\r\n");
    let out = collect(&mut p.b, p.now);
    assert_eq!(out.len(), 1);
    let s = parsed(&out[0]);
    assert_eq!(s.payload, b"$1\r\nv\r\n");
    assert_eq!(s.ack, p.b.rcv_nxt);
    assert_ne!(p.b.poll_at(), Some(due), "the delayed ACK is no longer due");
}

#[test]
fn out_of_order_data_is_held_and_sacked() {
    let mut p = established_pair();
    let data: Vec<u8> = (0..8 * 1448).map(pattern).collect();
    p.a.send(&data);
    let segs = collect(&mut p.a, p.now);
    assert_eq!(segs.len(), 8);
    // Segments 0 and 2 are lost; each of the others draws an ACK at once, with SACK blocks.
    let mut acks = Vec::new();
    for s in [1, 3, 4, 5, 6, 7] {
        feed(&mut p.b, p.now, &segs[s]);
        acks.extend(collect(&mut p.b, p.now));
    }
    assert_eq!(acks.len(), 6);
    let ack = parsed(&acks[1]);
    assert_eq!(ack.ack, parsed(&segs[0]).seq);
    assert_eq!(ack.opts.nsack, 2);
    assert_eq!(
        ack.opts.sack[0].0,
        parsed(&segs[3]).seq,
        "the latest block first"
    );
    assert_eq!(ack.opts.sack[1].0, parsed(&segs[1]).seq);
    // Two duplicates are not yet loss; the third is.
    feed(&mut p.a, p.now, &acks[0]);
    feed(&mut p.a, p.now, &acks[1]);
    assert!(!p.a.in_recovery);
    feed(&mut p.a, p.now, &acks[2]);
    assert!(p.a.in_recovery);
    for a in &acks[3..] {
        feed(&mut p.a, p.now, a);
    }
    // Both holes are repaired in the same round trip.
    let rtx = collect(&mut p.a, p.now);
    let seqs: Vec<u32> = rtx.iter().map(|s| parsed(s).seq).collect();
    assert_eq!(seqs, vec![parsed(&segs[0]).seq, parsed(&segs[2]).seq]);
    for s in &rtx {
        feed(&mut p.b, p.now, s);
    }
    let mut got = vec![0u8; data.len()];
    assert_eq!(p.b.recv(&mut got), data.len());
    assert_eq!(got, data);
}

#[test]
fn a_d_sack_is_not_a_loss() {
    let mut p = established_pair();
    p.a.send(&[7u8; 3000]);
    let segs = collect(&mut p.a, p.now);
    for s in &segs {
        feed(&mut p.b, p.now, s);
    }
    // The first segment again (a needless retransmission): b reports a D-SACK.
    feed(&mut p.b, p.now, &segs[0]);
    let acks = collect(&mut p.b, p.now);
    for a in &acks {
        for _ in 0..4 {
            feed(&mut p.a, p.now, a);
        }
    }
    assert!(!p.a.in_recovery);
    assert_eq!(p.a.counters.retransmits, 0);
}

#[test]
fn the_close_handshake_walks_the_states_on_both_sides() {
    let mut p = established_pair();
    p.a.send(b"bye");
    p.a.close();
    assert_eq!(p.a.state(), State::FinWait1);
    assert!(!p.a.may_send());
    assert!(p.run(p.now + 10_000, |p| p.b.state() == State::CloseWait));
    let mut buf = [0u8; 8];
    assert_eq!(p.b.recv(&mut buf), 3);
    assert!(!p.b.may_recv());
    assert!(p.run(p.now + 10_000, |p| p.a.state() == State::FinWait2));
    p.b.send(b"ok");
    p.b.close();
    assert_eq!(p.b.state(), State::LastAck);
    assert!(p.run(p.now + 10_000, |p| p.a.state() == State::TimeWait
        && p.b.state() == State::Closed));
    assert_eq!(p.a.recv(&mut buf), 2);
    let end = p.a.time_wait_until.get().unwrap();
    assert!(p.run(end + 1, |p| p.a.state() == State::Closed));
    assert!(p.now >= end);
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let mut p = established_pair();
    p.a.close();
    p.b.close();
    let fa = collect(&mut p.a, p.now);
    let fb = collect(&mut p.b, p.now);
    feed(&mut p.a, p.now, &fb[0]);
    feed(&mut p.b, p.now, &fa[0]);
    assert_eq!((p.a.state(), p.b.state()), (State::Closing, State::Closing));
    assert!(p.run(p.now + 10_000, |p| p.a.state() == State::TimeWait
        && p.b.state() == State::TimeWait));
}

#[test]
fn a_reset_in_the_window_is_challenged_and_one_at_rcv_nxt_resets() {
    let mut p = established_pair();
    let rst = |seq: u32| {
        let o = Out {
            seq,
            flags: RST,
            ..Out::default()
        };
        encode(&o, (&[], &[]))
    };
    let nxt = p.b.rcv_nxt;
    feed(&mut p.b, p.now, &rst(nxt.wrapping_add(100)));
    assert_eq!(p.b.state(), State::Established);
    let ch = collect(&mut p.b, p.now);
    assert_eq!(parsed(&ch[0]).flags, ACK, "a challenge ACK");
    feed(&mut p.b, p.now, &rst(nxt.wrapping_sub(1)));
    assert_eq!(
        p.b.state(),
        State::Established,
        "out of the window: ignored"
    );
    feed(&mut p.b, p.now, &rst(nxt));
    assert_eq!(
        (p.b.state(), p.b.failure()),
        (State::Closed, Some(Failure::Reset))
    );
    // An active open answered by a reset is refused.
    let mut c = Tcb::connect(Settings::default(), 0, 42);
    collect(&mut c, 0);
    let o = Out {
        seq: 0,
        ack: 43,
        flags: RST | ACK,
        ..Out::default()
    };
    feed(&mut c, 1, &encode(&o, (&[], &[])));
    assert_eq!(c.failure(), Some(Failure::Refused));
}

#[test]
fn abort_sends_a_reset() {
    let mut p = established_pair();
    p.a.abort();
    let out = collect(&mut p.a, p.now);
    assert_eq!(parsed(&out[0]).flags, RST | ACK);
    feed(&mut p.b, p.now, &out[0]);
    assert_eq!(p.b.failure(), Some(Failure::Reset));
}

#[test]
fn a_zero_window_is_probed_until_it_opens() {
    let small = Settings {
        rx_capacity: 4096,
        ..Settings::default()
    };
    let mut p = Pair::new(Settings::default(), small, no_faults(), 1);
    assert!(p.run(1_000_000, |p| p.b.state() == State::Established));
    let data: Vec<u8> = (0..10_000).map(pattern).collect();
    assert_eq!(p.a.send(&data), data.len());
    // b never reads: a fills its window, then probes.
    let t0 = p.now;
    assert!(!p.run(t0 + 3_000_000, |_| false));
    assert_eq!(p.b.recv_queue(), 4096);
    assert!(p.a.persist_at.is_some());
    assert_eq!(p.a.state(), State::Established);
    let mut got = Vec::new();
    let mut buf = [0u8; 1000];
    assert!(p.run(p.now + 30_000_000, |p| {
        loop {
            let n = p.b.recv(&mut buf);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got.len() == data.len()
    }));
    assert_eq!(got, data);
}

#[test]
fn keepalive_probes_then_gives_up() {
    let ka = Keepalive {
        idle_us: 1_000_000,
        interval_us: 100_000,
        probes: 3,
    };
    let mut a = Tcb::connect(
        Settings {
            keepalive: Some(ka),
            ..Settings::default()
        },
        0,
        9,
    );
    let syn = collect(&mut a, 0);
    let mut b = Tcb::accept(Settings::default(), 0, 77, &parsed(&syn[0]));
    let synack = collect(&mut b, 0);
    feed(&mut a, 10, &synack[0]);
    collect(&mut a, 10);
    assert_eq!(a.poll_at(), Some(1_000_010));
    for i in 0..3u64 {
        let at = 1_000_010 + i * 100_000;
        let probe = collect(&mut a, at);
        let s = parsed(&probe[0]);
        assert_eq!(
            (s.seq, s.payload.len()),
            (9, 0),
            "an old sequence number, no data"
        );
    }
    let end = collect(&mut a, 1_300_010);
    assert_eq!(parsed(&end[0]).flags, RST | ACK);
    assert_eq!(a.failure(), Some(Failure::TimedOut));
}

#[test]
fn a_clean_transfer_needs_no_retransmission() {
    let (_, c) = transfer(4 << 20, no_faults(), 7);
    assert_eq!((c.retransmits, c.timeouts), (0, 0), "{c:?}");
}

#[test]
fn a_transfer_through_loss_duplication_and_reordering_arrives_whole() {
    let faults = Faults {
        loss: 2,
        dup: 1,
        reorder: 1,
    };
    let (clean, _) = transfer(8 << 20, no_faults(), 11);
    let mut recoveries = 0;
    let mut timeouts = 0;
    for seed in 1..=8 {
        let (lossy, c) = transfer(8 << 20, faults, seed);
        eprintln!("seed {seed}: {lossy} us (clean {clean} us), {c:?}");
        recoveries += c.fast_recoveries;
        timeouts += c.timeouts;
    }
    // Holes are repaired by SACK, several per round trip, and lost retransmissions are found
    // by what arrived after them: a timeout is rare.
    assert!(recoveries > 0);
    assert!(
        timeouts * 50 <= recoveries,
        "{timeouts} timeouts in {recoveries} recoveries"
    );
}

#[test]
fn requests_and_replies_of_several_segments_arrive_whole_through_loss() {
    let faults = Faults {
        loss: 2,
        dup: 1,
        reorder: 1,
    };
    let mut p = Pair::new(Settings::default(), Settings::default(), faults, 5);
    assert!(p.run(10_000_000, |p| p.a.state() == State::Established
        && p.b.state() == State::Established));
    let rounds = 2_000;
    let mut buf = [0u8; 256];
    for i in 0..rounds {
        let req = format!("*2\r\n$3\r\nGET\r\n$4\r\nk{i:03}\r\n");
        assert_eq!(p.a.send(req.as_bytes()), req.len());
        let mut got = Vec::new();
        assert!(p.run(p.now + 60_000_000, |p| {
            let n = p.b.recv(&mut buf);
            got.extend_from_slice(&buf[..n]);
            got.len() == req.len()
        }));
        assert_eq!(got, req.as_bytes());
        let reply = format!("$4000\r\n{}\r\n", "v".repeat(4000));
        assert_eq!(p.b.send(reply.as_bytes()), reply.len());
        let mut got = Vec::new();
        assert!(p.run(p.now + 60_000_000, |p| {
            loop {
                let n = p.a.recv(&mut buf);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got.len() == reply.len()
        }));
        assert_eq!(got, reply.as_bytes());
    }
    // Every reply arrived whole and in order (checked above). A reply that lost its first or
    // middle segment is repaired on the SACK of what followed (early retransmit); a lost last
    // segment, or the last ACK, waits for the timer, as on Linux (its loss probe for a flight
    // of one segment waits 2 SRTT + 200 ms).
    eprintln!(
        "{rounds} rounds in {} us; a {:?}; b {:?}",
        p.now, p.a.counters, p.b.counters
    );
    assert!(p.b.counters.fast_recoveries > 0);
}

#[test]
fn bytes_held_beyond_the_peers_fin_are_dropped_with_it() {
    // Found by the fuzz target: data held out of order past the FIN stayed held after the FIN
    // was taken, with rcv_nxt at its start.
    let mut p = established_pair();
    let (nxt, ack) = (p.b.rcv_nxt, p.b.snd_nxt);
    let data = |seq: u32, flags: u8, payload: &[u8]| {
        let o = Out {
            seq,
            ack,
            flags: ACK | flags,
            wnd: 1000,
            ..Out::default()
        };
        encode(&o, (payload, &[]))
    };
    feed(&mut p.b, p.now, &data(nxt.wrapping_add(4), 0, b"late"));
    feed(&mut p.b, p.now, &data(nxt, seg::FIN, b"abc"));
    assert_eq!(p.b.state(), State::CloseWait);
    assert_eq!(p.b.recv_queue(), 3);
    p.b.check().unwrap();
}

#[test]
fn a_cork_holds_partial_segments_for_200_ms_at_most() {
    let mut p = established_pair();
    p.a.set_cork(true);
    p.a.send(&[1u8; 2000]);
    let t0 = p.now;
    // The whole segment goes and is acknowledged; the rest is held...
    assert!(!p.run(t0 + CORK_HOLD_US - 1_000, |_| false));
    assert_eq!(p.b.recv_queue(), 1448);
    // ...until the ceiling.
    assert!(p.run(t0 + CORK_HOLD_US + 1_000, |p| p.b.recv_queue() == 2000));
    assert!(p.now >= t0 + CORK_HOLD_US);
    // Uncorked, a partial segment goes at once.
    p.a.set_cork(false);
    p.a.send(&[2u8; 10]);
    let t1 = p.now;
    assert!(p.run(t1 + 1_000, |p| p.b.recv_queue() == 2010));
}

#[test]
fn acks_to_pure_segments_outside_the_window_are_rate_limited() {
    let mut p = established_pair();
    let far = Out {
        seq: p.b.rcv_nxt.wrapping_add(1 << 30),
        ack: p.b.snd_nxt,
        flags: ACK,
        wnd: 100,
        ..Out::default()
    };
    let bytes = encode(&far, (&[], &[]));
    let t = p.now;
    let mut acks = 0;
    for i in 0..100 {
        feed(&mut p.b, t + i * 10_000, &bytes);
        acks += collect(&mut p.b, t + i * 10_000).len();
    }
    assert_eq!(acks, 2, "one per 500 ms over a second");
    // Old data (the peer missed our ACK) is always answered.
    let old = Out {
        seq: p.b.rcv_nxt.wrapping_sub(10),
        ack: p.b.snd_nxt,
        flags: ACK,
        wnd: 100,
        ..Out::default()
    };
    let bytes = encode(&old, (b"0123456789", &[]));
    feed(&mut p.b, t + 1_000_001, &bytes);
    assert_eq!(collect(&mut p.b, t + 1_000_001).len(), 1);
}

#[test]
fn a_window_clamp_limits_what_is_offered() {
    let mut p = established_pair();
    let before = p.b.rcv_adv;
    p.b.set_window_clamp(Some(4096));
    // What the peer was offered before the clamp stays; from then on at most 4 KiB beyond
    // what was received, while the application reads as it comes.
    const TOTAL: usize = 300_000;
    let (mut widest, mut sent, mut got) = (0, 0, 0);
    let mut buf = vec![0u8; 70_000];
    let done = p.run(p.now + 5_000_000, |p| {
        sent += p.a.send(&[3u8; TOTAL][sent..]);
        if seq_lt(before, p.b.rcv_adv) {
            widest = widest.max(p.b.rcv_adv.wrapping_sub(p.b.rcv_nxt));
        }
        got += p.b.recv(&mut buf);
        got == TOTAL
    });
    assert!(done, "{got} of {TOTAL} bytes");
    assert!(
        (1..=4096).contains(&widest),
        "offered {widest} bytes past the clamp"
    );
    p.b.check().unwrap();
}

#[test]
fn a_finished_connections_buffers_serve_the_next_one_empty() {
    let mut p = established_pair();
    p.a.send(b"left unread");
    assert!(p.run(p.now + 10_000, |p| p.b.recv_queue() == 11));
    p.a.send(b"unsent");
    let a = std::mem::replace(&mut p.a, Tcb::connect(Settings::default(), 0, 1));
    let mut c = Tcb::connect_with(Settings::default(), p.now, 5, Some(a.into_buffers()));
    assert_eq!((c.recv_queue(), c.send_queue()), (0, 0));
    let b = std::mem::replace(&mut p.b, Tcb::connect(Settings::default(), 0, 1));
    let small = Settings {
        rx_capacity: 1000,
        ..Settings::default()
    };
    let d = Tcb::connect_with(small, p.now, 6, Some(b.into_buffers()));
    assert_eq!(
        d.recv_capacity(),
        1000,
        "buffers of other sizes are not taken"
    );
    let syn = collect(&mut c, p.now);
    assert_eq!(parsed(&syn[0]).flags, SYN);
}

#[test]
fn the_peers_fin_ends_reading_after_the_data() {
    let mut p = established_pair();
    p.a.send(b"last");
    p.a.close();
    assert!(p.run(p.now + 10_000, |p| p.b.state() == State::CloseWait));
    assert!(p.b.peer_finished() && p.b.can_recv());
    let mut buf = [0u8; 8];
    assert_eq!(p.b.recv(&mut buf), 4);
    assert!(!p.b.can_recv() && p.b.can_send());
    p.b.close();
    assert!(p.run(p.now + 10_000, |p| p.b.state() == State::Closed));
    assert!(p.b.peer_finished() && p.b.failure().is_none());
}

/// An established connection (for the congestion-control arithmetic).
fn established(cc: Congestion) -> Tcb {
    let set = Settings {
        congestion: cc,
        ..Settings::default()
    };
    let mut p = Pair::new(set, Settings::default(), no_faults(), 1);
    assert!(p.run(1_000_000, |p| p.a.state() == State::Established));
    let mut a = std::mem::replace(&mut p.a, Tcb::connect(Settings::default(), 0, 1));
    a.srtt = Some(100_000);
    a
}

#[test]
fn cubic_backs_off_by_0_7_and_is_back_at_its_maximum_after_k() {
    let mut a = established(Congestion::Cubic);
    let mss = a.payload_max;
    a.cwnd = 100 * mss;
    a.ssthresh = a.reduce();
    assert_eq!(a.ssthresh, 70 * mss);
    a.cwnd = a.ssthresh;
    // K = cbrt(W_max (1 - β) / C) = cbrt(100 * 0.3 / 0.4) s
    let k = (100.0f64 * 0.3 / 0.4).cbrt();
    assert!((a.cubic.k - k).abs() < 1e-9);
    // ACKs of a full window every RTT (100 ms, where Reno's growth is the slower) until K:
    // the window is back near W_max.
    let mut now = 0u64;
    while (now as f64) < (k - 0.1) * 1e6 {
        let w = a.cwnd;
        a.grow(w, now);
        now += 100_000;
    }
    let w = f64::from(a.cwnd) / f64::from(mss);
    assert!((95.0..=101.0).contains(&w), "{w} segments at K");
    // Past K, it probes beyond W_max.
    for _ in 0..40 {
        let w = a.cwnd;
        a.grow(w, now);
        now += 100_000;
    }
    assert!(a.cwnd > 110 * mss);
    // A loss before reaching W_max again: fast convergence lowers W_max.
    a.cwnd = 90 * mss;
    a.cubic.w_max = 100.0 * f64::from(mss);
    a.reduce();
    assert!((a.cubic.w_max / f64::from(mss) - 90.0 * 1.7 / 2.0).abs() < 1e-6);
}

#[test]
fn reno_halves_and_grows_a_segment_per_round_trip() {
    let mut a = established(Congestion::Reno);
    let mss = a.payload_max;
    a.cwnd = 100 * mss;
    a.snd_nxt = a.snd_una.wrapping_add(100 * mss);
    a.ssthresh = a.reduce();
    assert_eq!(a.ssthresh, 50 * mss);
    a.cwnd = a.ssthresh;
    for i in 1..=10 {
        let w = a.cwnd;
        a.grow(w, i * 100_000);
    }
    assert_eq!(a.cwnd, 60 * mss);
    // Without congestion control, only the peer's window counts.
    let mut n = established(Congestion::None);
    n.cwnd = mss;
    n.snd_wnd = 1 << 20;
    n.send(&vec![0u8; 100_000]);
    assert_eq!(
        n.sendable(),
        65_536,
        "the send buffer's 64 KiB, not one segment"
    );
}

/// Two engines with default settings over a clean wire, both established.
fn established_pair() -> Pair {
    let mut p = Pair::new(Settings::default(), Settings::default(), no_faults(), 1);
    assert!(p.run(1_000_000, |p| p.b.state() == State::Established));
    p
}

/// Nagle in Minshall's form, as Linux's: a write of a segment and a half leaves whole, its
/// partial tail right behind the full segment (the classic rule held the tail until the full
/// segment was acknowledged: a delayed ACK's 40 ms for each such reply); a small write after
/// it waits while that partial segment is unacknowledged, and goes when it is.
#[test]
fn nagle_holds_a_partial_segment_only_behind_another_partial_one() {
    let mut p = established_pair();
    assert!(!p.a.set.nodelay);
    p.a.send(&[1u8; 1448 + 500]);
    let segs = collect(&mut p.a, p.now);
    assert_eq!(segs.len(), 2, "the full segment and its tail, at once");
    p.a.send(&[2u8; 100]);
    assert!(
        collect(&mut p.a, p.now).is_empty(),
        "a partial segment is in flight"
    );
    for s in &segs {
        feed(&mut p.b, p.now, s);
    }
    let acks = collect(&mut p.b, p.now);
    assert_eq!(
        acks.len(),
        1,
        "more than a full segment: acknowledged at once"
    );
    feed(&mut p.a, p.now, &acks[0]);
    let next = collect(&mut p.a, p.now);
    assert_eq!(
        next.len(),
        1,
        "the small write, once the tail is acknowledged"
    );
    assert_eq!(seg::parse(&next[0]).unwrap().payload.len(), 100);
}

/// Two established engines, and the `n` full segments a flight of `n * 1448` bytes from `a`
/// makes (not delivered).
fn flight_of(n: usize) -> (Pair, Vec<Vec<u8>>) {
    let mut p = established_pair();
    p.a.send(&vec![5u8; n * 1448]);
    let segs = collect(&mut p.a, p.now);
    assert_eq!(segs.len(), n);
    (p, segs)
}

/// The first of `segs` is lost; the others reach `b`, whose SACKs start `a`'s recovery.
fn first_lost_then_sacked(p: &mut Pair, segs: &[Vec<u8>]) {
    for s in &segs[1..] {
        feed(&mut p.b, p.now, s);
        for ack in collect(&mut p.b, p.now) {
            feed(&mut p.a, p.now, &ack);
        }
    }
    assert!(p.a.in_recovery);
}

#[test]
fn a_small_flight_missing_its_first_segment_is_repaired_at_the_first_sack() {
    let (mut p, segs) = flight_of(3);
    // The first is lost; the others draw one ACK each, with a SACK block.
    feed(&mut p.b, p.now, &segs[1]);
    let ack1 = collect(&mut p.b, p.now);
    feed(&mut p.b, p.now, &segs[2]);
    let ack2 = collect(&mut p.b, p.now);
    feed(&mut p.a, p.now, &ack1[0]);
    assert!(
        !p.a.in_recovery,
        "one segment of two after the hole SACKed: not yet"
    );
    feed(&mut p.a, p.now, &ack2[0]);
    assert!(
        p.a.in_recovery,
        "everything after the hole SACKed: lost (RFC 5827)"
    );
    let rtx = collect(&mut p.a, p.now);
    assert_eq!(rtx.len(), 1);
    assert_eq!(parsed(&rtx[0]).seq, parsed(&segs[0]).seq);
    assert_eq!(p.a.counters.timeouts, 0);
}

#[test]
fn a_slow_reader_behind_a_lossy_wire_gets_everything_without_long_stalls() {
    // The reader takes everything every 300 ms: the sender meets a full window again and
    // again (zero-window probes, window updates) through loss, duplication and reordering.
    let faults = Faults {
        loss: 2,
        dup: 1,
        reorder: 1,
    };
    for seed in 1..=6 {
        let small = Settings {
            rx_capacity: 16 * 1024,
            ..Settings::default()
        };
        let mut p = Pair::new(Settings::default(), small, faults, seed);
        assert!(p.run(10_000_000, |p| p.a.state() == State::Established
            && p.b.state() == State::Established));
        let total = 2 << 20;
        let (mut sent, mut got) = (0usize, 0usize);
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_progress = p.now;
        let mut worst = 0;
        let end = p.now + 600_000_000;
        while got < total && p.now < end {
            let wake = p.now + 300_000;
            p.run(wake, |p| {
                while sent < total {
                    let k = p.a.send(&[7u8; 16 * 1024][..(total - sent).min(16 * 1024)]);
                    if k == 0 {
                        break;
                    }
                    sent += k;
                }
                false
            });
            p.now = p.now.max(wake);
            loop {
                let n = p.b.recv(&mut buf);
                if n == 0 {
                    break;
                }
                got += n;
                worst = worst.max(p.now - last_progress);
                last_progress = p.now;
            }
        }
        eprintln!(
            "seed {seed}: {got} bytes by {} us, worst wait {worst} us, a {:?}",
            p.now, p.a.counters
        );
        assert_eq!(got, total);
        assert!(worst < 5_000_000, "a wait of {worst} us");
    }
}

#[test]
fn a_pure_ack_at_the_right_edge_of_a_full_window_is_taken() {
    // The peer filled our whole window but its first segment was lost: its next segments are
    // held out of order up to the right edge, and its pure ACKs (for our data) carry a sequence
    // number at that edge. Linux takes such an ACK (tcp_sequence: seq <= rcv_nxt + window);
    // refusing it, the sender here never saw its data acknowledged and retransmitted in a loop.
    let small = Settings {
        rx_capacity: 4 * 1448,
        nodelay: true,
        ..Settings::default()
    };
    let mut p = Pair::new(
        Settings {
            nodelay: true,
            ..Settings::default()
        },
        small,
        no_faults(),
        1,
    );
    assert!(p.run(1_000_000, |p| p.b.state() == State::Established));
    p.a.send(&[1u8; 4 * 1448]);
    let segs = collect(&mut p.a, p.now);
    assert_eq!(segs.len(), 4);
    for s in &segs[1..] {
        feed(&mut p.b, p.now, s);
    }
    collect(&mut p.b, p.now);
    assert_eq!(
        p.b.adv_left(),
        4 * 1448,
        "the whole window is used up to its right edge"
    );
    // b sends data; a acknowledges it with a pure ACK at b's right edge (its next sequence
    // number: a sent everything the window took).
    p.b.send(b"reply");
    collect(&mut p.b, p.now);
    assert_eq!(p.b.in_flight(), 5);
    let edge = p.b.rcv_nxt.wrapping_add(p.b.adv_left());
    assert_eq!(edge, p.a.snd_nxt);
    let o = Out {
        seq: edge,
        ack: p.b.snd_nxt,
        flags: ACK,
        wnd: 1000,
        ..Out::default()
    };
    feed(&mut p.b, p.now, &encode(&o, (&[], &[])));
    assert_eq!(p.b.in_flight(), 0, "the ACK was taken");
}

#[test]
fn a_retransmission_on_a_dead_path_is_sent_again_only_by_the_backing_off_timer() {
    let (mut p, segs) = flight_of(3);
    // The first segment is lost; the SACKs of the others start recovery, whose retransmission
    // is lost too, and from then on the path carries nothing.
    first_lost_then_sacked(&mut p, &segs);
    let mut sent = collect(&mut p.a, p.now).len();
    assert_eq!(sent, 1);
    let start = p.now;
    let mut now = p.now;
    while now < start + 1_000_000 {
        now += 100;
        if p.a.poll_at().is_some_and(|t| t <= now) {
            sent += collect(&mut p.a, now).len();
        }
    }
    // The fast retransmission, then the timeout's at ~200 ms and ~600 ms (200 ms backing off
    // to 400): a retransmission nobody answered is not declared lost again and again.
    assert!(sent <= 4, "{sent} segments sent into a dead path in 1 s");
    assert!(p.a.counters.timeouts >= 2, "{:?}", p.a.counters);
}

#[test]
fn data_segments_carry_the_sack_blocks_within_the_mss() {
    // a's first segment is lost: b holds the second out of order.
    let (mut p, segs) = flight_of(2);
    feed(&mut p.b, p.now, &segs[1]);
    // b's replies are full data segments; each reports the hole and fits the MSS (1460 bytes
    // of options and payload), as Linux sizes them.
    p.b.send(&[2u8; 4 * 1448]);
    let out = collect(&mut p.b, p.now);
    assert!(out.len() >= 4, "{} segments", out.len());
    for bytes in &out {
        let s = parsed(bytes);
        let options = usize::from(bytes[12] >> 4) * 4 - 20;
        assert!(s.opts.nsack >= 1, "a segment without the SACK block");
        assert!(
            options + s.payload.len() <= 1460,
            "{options} + {}",
            s.payload.len()
        );
    }
}

#[test]
fn the_tail_loss_probe_is_the_last_segment_again_even_with_new_data_queued() {
    let (mut p, segs) = flight_of(3);
    // Every ACK of the flight is lost; more data waits behind a full congestion window.
    p.a.cwnd = p.a.in_flight();
    p.a.send(&[6u8; 1448]);
    assert!(collect(&mut p.a, p.now).is_empty(), "the window is full");
    let probe_at = p.a.probe_at.get().expect("a probe is armed");
    assert!(probe_at < p.a.rtx_at.get().expect("and the timer"));
    let probe = collect(&mut p.a, probe_at);
    assert_eq!(probe.len(), 1);
    // The duplicate of the last segment (the peer answers it at once), not new data (which
    // the peer may acknowledge only with its delayed ACK).
    assert_eq!(parsed(&probe[0]).seq, parsed(&segs[2]).seq);
    assert_eq!(parsed(&probe[0]).payload.len(), 1448);
    assert_eq!(p.a.counters.loss_probes, 1);
}

#[test]
fn a_repair_whose_ack_is_lost_is_followed_by_a_probe_not_the_timeout() {
    let (mut p, segs) = flight_of(3);
    first_lost_then_sacked(&mut p, &segs);
    let repair = collect(&mut p.a, p.now);
    assert_eq!(repair.len(), 1);
    // The repair arrives, but the ACK it draws is lost: nothing else is left to send.
    feed(&mut p.b, p.now, &repair[0]);
    collect(&mut p.b, p.now);
    let probe_at =
        p.a.probe_at
            .get()
            .expect("a probe is armed after the repair");
    assert!(probe_at < p.a.rtx_at.get().expect("and the timer"));
    let probe = collect(&mut p.a, probe_at);
    assert_eq!(probe.len(), 1);
    assert_eq!(parsed(&probe[0]).seq, parsed(&segs[2]).seq);
    // The peer answers the duplicate at once: everything is acknowledged, recovery is over.
    feed(&mut p.b, probe_at, &probe[0]);
    for ack in collect(&mut p.b, probe_at) {
        feed(&mut p.a, probe_at, &ack);
    }
    assert_eq!(p.a.in_flight(), 0);
    assert!(!p.a.in_recovery);
    assert_eq!(p.a.counters.timeouts, 0);
}
