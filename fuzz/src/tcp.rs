//! The `tcp` target: segments into the stack's TCP engine. Two engines are connected (a
//! handshake, data both ways, some of it unread); then the input is a program run against the
//! server side: raw bytes as a segment, the client's own segments with their header fields and
//! SACK blocks rewritten, time passing (up to 65 s per step), the application's calls, and
//! honest exchanges between the two; the server's end may first be carried to another stack
//! (`Tcb::carry`, as worker processes hand over connections). Checks that nothing panics, that
//! the engine's invariants hold after every step (`Tcb::check`), and that every segment it
//! sends parses back to what it said it sent, with a payload no larger than the path's, and
//! that a segment header prediction takes (and an `output` that takes its short path) leaves
//! the engine as the general path would.

use userstack::tcp::seg::{self, Out};
use userstack::tcp::{Carry, Payload, Settings, State, Tcb};

use crate::Input;

/// A segment on the wire: header and payload.
fn encode(out: &Out, payload: Payload) -> Vec<u8> {
    let mut buf = vec![0u8; out.header_len() + payload.0.len() + payload.1.len()];
    let n = out.write(6379, 40000, &mut buf);
    buf[n..n + payload.0.len()].copy_from_slice(payload.0);
    buf[n + payload.0.len()..].copy_from_slice(payload.1);
    buf
}

/// Everything `t` sends now, checked; when `output` takes its short path, against the general
/// path run on a copy (the same segments, the same state after).
fn drain(t: &mut Tcb, now: u64) -> Vec<(Out, Vec<u8>)> {
    let mut v = Vec::new();
    let max = t.payload_max() as usize;
    t.output_compared(now, &mut |o: &Out, p: Payload| {
        let bytes = encode(o, p);
        let s = seg::parse(&bytes).expect("a segment we send parses");
        assert_eq!((s.seq, s.flags, s.wnd), (o.seq, o.flags, o.wnd));
        assert_eq!(s.payload.len(), p.0.len() + p.1.len());
        assert!(
            s.payload.len() <= max,
            "{} bytes in a segment of {max}",
            s.payload.len()
        );
        v.push((*o, bytes));
        true
    });
    v
}

/// A segment into `t`; one that header prediction takes must leave the engine as the general
/// path leaves it.
fn feed(t: &mut Tcb, now: u64, bytes: &[u8]) {
    if let Some(s) = seg::parse(bytes) {
        t.input_compared(now, &s);
    }
}

/// `t` carried on by another stack (a worker that stopped listening hands it over), through
/// the words the processes share.
fn carried(t: &Tcb, set: Settings, now: u64) -> Tcb {
    let c = t
        .carry(now)
        .expect("a passive open not yet accepted carries");
    let c = Carry::from_words(&c.to_words()).expect("its own words");
    let (x, y) = t.received();
    let moved = Tcb::carried_with(set, now, &c, &[x, y].concat(), None);
    check(&moved);
    moved
}

fn check(t: &Tcb) {
    if let Err(e) = t.check() {
        panic!("invariant broken: {e}");
    }
}

/// One input through the `tcp` target.
pub fn tcp(data: &[u8]) {
    let mut input = Input::new(data);
    // 1: the server's end is carried to another stack in SYN-RECEIVED, 2: once established.
    let carry_at = input.byte() % 4;
    let small = Settings {
        rx_capacity: 6000,
        tx_capacity: 8000,
        ..Settings::default()
    };
    let mut now = 1_000u64;
    let mut a = Tcb::connect(Settings::default(), now, 0xffff_ff00);
    let syn = drain(&mut a, now);
    let Some(syn) = seg::parse(&syn[0].1) else {
        unreachable!()
    };
    let mut b = Tcb::accept(small, now, 0x8000_0000, &syn);
    if carry_at == 1 {
        drain(&mut b, now);
        b = carried(&b, small, now + 7);
    }
    let mut from_a: Vec<Vec<u8>> = Vec::new();
    let exchange = |a: &mut Tcb, b: &mut Tcb, now: u64, from_a: &mut Vec<Vec<u8>>| {
        for _ in 0..8 {
            let to_a = drain(b, now);
            let to_b = drain(a, now);
            if to_a.is_empty() && to_b.is_empty() {
                break;
            }
            for (_, s) in to_b {
                feed(b, now, &s);
                if from_a.len() < 64 {
                    from_a.push(s);
                }
            }
            for (_, s) in to_a {
                feed(a, now, &s);
            }
        }
    };
    exchange(&mut a, &mut b, now, &mut from_a);
    assert_eq!(b.state(), State::Established);
    if carry_at == 2 {
        b = carried(&b, small, now + 7);
        exchange(&mut a, &mut b, now + 7, &mut from_a);
    }
    a.send(&[b'q'; 3000]);
    b.send(&[b'r'; 3000]);
    exchange(&mut a, &mut b, now, &mut from_a);
    let mut buf = [0u8; 1024];
    while !input.is_empty() {
        match input.byte() % 8 {
            0 => {
                let n = usize::from(input.byte());
                let raw = input.bytes(n);
                feed(&mut b, now, raw);
            }
            1 | 2 => {
                // One of the client's segments, rewritten and fed to the server.
                if from_a.is_empty() {
                    continue;
                }
                let pick = usize::from(input.byte()) % from_a.len();
                let Some(s) = seg::parse(&from_a[pick]) else {
                    continue;
                };
                let mut out = Out {
                    seq: s
                        .seq
                        .wrapping_add(u32::from(input.u16()).wrapping_sub(32768)),
                    ack: s
                        .ack
                        .wrapping_add(u32::from(input.u16()).wrapping_sub(32768)),
                    flags: if input.byte() & 1 == 0 {
                        s.flags
                    } else {
                        input.byte()
                    },
                    wnd: if input.byte() & 1 == 0 {
                        s.wnd
                    } else {
                        input.u16()
                    },
                    ts: s.opts.ts,
                    ..Out::default()
                };
                let nsack = input.byte() % 4;
                for i in 0..usize::from(nsack) {
                    let st = b_seq_guess(&b).wrapping_add(input.u16().into());
                    out.sack[i] = (st, st.wrapping_add(input.u16().into()));
                }
                out.nsack = nsack;
                let len = usize::from(input.u16()) % 3000;
                let payload = vec![b'x'; len.min(s.payload.len().max(len % 200))];
                let bytes = encode(&out, (&payload, &[]));
                feed(&mut b, now, &bytes);
            }
            3 => now += u64::from(input.u16()) * 1_000,
            4 => {
                let n = usize::from(input.u16()) % 5000;
                b.send(&vec![b's'; n]);
            }
            5 => match input.byte() % 6 {
                0 => {
                    b.recv(&mut buf);
                }
                1 => b.close(),
                2 if input.byte() & 1 == 0 => b.abort(),
                2 => b.reset_after_sent(),
                3 => {
                    let n = b.peek(&mut buf);
                    b.consume(n / 2);
                }
                4 => {
                    let x = input.byte();
                    b.set_nodelay(x & 1 == 1);
                    b.set_cork(x & 2 == 2);
                    b.set_window_clamp((x & 4 == 4).then_some(u32::from(x) * 64));
                    b.set_quickack(x >> 5);
                }
                _ => {
                    a.recv(&mut buf);
                    a.send(&[b'q'; 700]);
                }
            },
            6 => exchange(&mut a, &mut b, now, &mut from_a),
            _ => {
                drain(&mut b, now);
            }
        }
        check(&b);
        check(&a);
    }
}

/// A sequence number near what the server has in flight (for SACK blocks that mean something).
fn b_seq_guess(b: &Tcb) -> u32 {
    0x8000_0001u32.wrapping_add(b.in_flight())
}
