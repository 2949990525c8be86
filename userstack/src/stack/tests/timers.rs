//! The timer heap (stack/mod.rs): deadlines a reply makes unnecessary are never armed.

use smoltcp::time::Duration;

use super::{opts, Pair};
use crate::stack::TcpOptions;

/// A request whose reply is written before the next poll arms no delayed-ACK timer (the reply
/// carries the ACK): the request adds no timer-heap entry (the reply may add its
/// retransmission timer). A request left unanswered still gets its delayed ACK on time.
#[test]
fn a_replied_request_arms_no_delayed_ack_timer() {
    let mut p = Pair::new();
    let ack_delay = std::time::Duration::from_millis(1);
    let o = TcpOptions {
        ack_delay: Some(ack_delay),
        ..opts()
    };
    let (c, s) = p.connected(o);
    let step = Duration::from_micros(10);
    let mut buf = [0u8; 64];
    // The request read in the poll after the one that received it; then read a few polls
    // after it (the data-path cache answers after the poll that hands it the requests; a
    // thread polls twice more before it blocks): the reply carries the ACK either way.
    for (read_after, polls) in [("at once", 1), ("late", 3)] {
        for round in 0..20 {
            assert_eq!(p.client.send(c, b"GET k\r\n").unwrap(), 7);
            p.now += step;
            p.client.poll(p.now);
            let entries = p.server.timer_entries();
            for _ in 0..polls {
                p.now += step;
                p.server.poll(p.now); // the request: its ACK may wait 1 ms
            }
            assert_eq!(
                p.server.timer_entries(),
                entries,
                "round {round} (read {read_after}): the request added a timer entry"
            );
            assert_eq!(p.server.recv(s, &mut buf).unwrap(), 7);
            p.server.send(s, b"$1\r\nv\r\n").unwrap();
            for _ in 0..polls.min(2) {
                p.now += step;
                p.server.poll(p.now); // the reply, with the ACK
            }
            assert!(
                p.server.timer_entries() <= entries + 1,
                "round {round} (read {read_after}): {entries} -> {} timer entries",
                p.server.timer_entries()
            );
            p.run();
            assert_eq!(p.client.recv(c, &mut buf).unwrap(), 7);
            // Longer than the ACK delay between requests: each request needs a fresh timer.
            p.advance(Duration::from_millis(3), Duration::from_micros(500));
        }
    }

    // No reply: the ACK alone, after the delay, and not much later. The deadline waits in the
    // queue, not in the heap, for a poll: `next_deadline` (what a blocked loop sleeps until)
    // must show it.
    assert_eq!(p.client.send(c, b"GET k\r\n").unwrap(), 7);
    p.now += step;
    p.client.poll(p.now);
    let sent = p.now;
    p.now += step;
    p.server.poll(p.now);
    let wake = p.server.next_deadline().expect("a delayed ACK is due");
    assert!(
        wake <= sent + Duration::from_micros(1100),
        "the loop would sleep until {wake} (request at {sent})"
    );
    let before = p.server.stats().tx_frames;
    while p.server.stats().tx_frames == before {
        assert!(
            p.now - sent <= Duration::from_micros(1100),
            "no ACK within {:?}",
            p.now - sent
        );
        p.now += step;
        p.server.poll(p.now);
    }
    assert!(
        p.now - sent >= Duration::from_micros(900),
        "ACK after {:?}",
        p.now - sent
    );
    p.client.poll(p.now);
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 7);
}
