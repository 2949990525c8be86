//! The TCP engine's own cost per request (`userstack::tcp`, no device, no demux, no checksum):
//! a client engine and a server engine exchange requests and replies of Redis GET's sizes
//! (35 bytes in, 9 out) through segments written and parsed as on the wire, in simulated
//! time; the server's delayed ACK rides on its reply, the client acknowledges each reply at once.
//!
//!     cargo bench -p userstack --bench engine
//!
//! Prints the server turn's time per exchange (receive the request segment, read it, write
//! the reply, send its segment). Instructions (no hardware counters on these VMs): collect
//! only inside the server turns,
//!
//!     cargo bench -p userstack --bench engine --no-run   # prints the executable's path
//!     ENGINE_EXCHANGES=20000 valgrind --tool=callgrind --collect-atstart=no \
//!         --toggle-collect='*server_turn*' target/release/deps/engine-<hash>
//!
//! and divide `Collected` by the exchanges.

use std::hint::black_box;
use std::time::Instant;

use userstack::tcp::seg::{self, Out};
use userstack::tcp::{Payload, Settings, State, Tcb};

fn encode(out: &Out, p: Payload, buf: &mut Vec<u8>) {
    buf.clear();
    buf.resize(out.header_len() + p.0.len() + p.1.len(), 0);
    let n = out.write(6379, 40000, buf);
    buf[n..n + p.0.len()].copy_from_slice(p.0);
    buf[n + p.0.len()..].copy_from_slice(p.1);
}

/// Everything `t` sends now, into `wire` (one segment at most is expected per turn here).
fn send_all(t: &mut Tcb, now: u64, wire: &mut Vec<Vec<u8>>, spare: &mut Vec<Vec<u8>>) {
    t.output(now, &mut |o: &Out, p: Payload| {
        let mut buf = spare.pop().unwrap_or_default();
        encode(o, p, &mut buf);
        wire.push(buf);
        true
    });
}

#[inline(never)]
fn server_turn(
    b: &mut Tcb,
    now: u64,
    rx: &mut Vec<Vec<u8>>,
    tx: &mut Vec<Vec<u8>>,
    spare: &mut Vec<Vec<u8>>,
) {
    let mut req = [0u8; 64];
    for s in rx.drain(..) {
        if let Some(seg) = seg::parse(&s) {
            b.input(now, &seg);
        }
        spare.push(s);
    }
    let n = b.recv(&mut req);
    if n > 0 {
        b.send(black_box(b"$3\r\nbar\r\n"));
    }
    send_all(b, now, tx, spare);
}

fn main() {
    let exchanges: usize = std::env::var("ENGINE_EXCHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let set = Settings {
        nodelay: true,
        ..Settings::default()
    };
    let mut now = 1_000u64;
    let mut a = Tcb::connect(set, now, 1);
    let (mut to_a, mut to_b, mut spare) = (Vec::new(), Vec::new(), Vec::new());
    send_all(&mut a, now, &mut to_b, &mut spare);
    let syn = to_b.pop().unwrap();
    let mut b = Tcb::accept(set, now, 2, &seg::parse(&syn).unwrap());
    send_all(&mut b, now, &mut to_a, &mut spare);
    for s in to_a.drain(..) {
        a.input(now, &seg::parse(&s).unwrap());
    }
    send_all(&mut a, now, &mut to_b, &mut spare);
    for s in to_b.drain(..) {
        b.input(now, &seg::parse(&s).unwrap());
    }
    assert_eq!(
        (a.state(), b.state()),
        (State::Established, State::Established)
    );
    let req = b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n".to_vec();
    let mut reply = [0u8; 64];
    let mut server = std::time::Duration::ZERO;
    for _ in 0..exchanges {
        now += 20;
        a.send(&req);
        send_all(&mut a, now, &mut to_b, &mut spare);
        now += 20;
        let t = Instant::now();
        server_turn(&mut b, now, &mut to_b, &mut to_a, &mut spare);
        server += t.elapsed();
        now += 20;
        for s in to_a.drain(..) {
            a.input(now, &seg::parse(&s).unwrap());
            spare.push(s);
        }
        assert!(a.recv(&mut reply) > 0, "the reply arrived");
        // The client acknowledges the reply at once: the next turn takes that ACK too.
        send_all(&mut a, now, &mut to_b, &mut spare);
    }
    println!(
        "engine: {exchanges} exchanges, server turn {:.1} ns/exchange (receive request, read, write reply, send)",
        server.as_nanos() as f64 / exchanges as f64
    );
}
