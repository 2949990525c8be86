//! Socket calls (stack/calls.rs): the basic exchange, stale handles, errors reported once, peek,
//! close with unread data, writability after a full send buffer.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::time::Duration;

use super::{nothing_due, opts, Pair, CLIENT_MAC, SERVER_MAC};
use crate::stack::{ConnId, Event, Respond, SockError};

#[test]
fn handshake_echo_close() {
    let mut p = Pair::new();
    p.server.listen(7777, 16, opts()).unwrap();
    let c = p
        .client
        .connect(p.now, p.server_addr(7777), opts())
        .unwrap();
    p.run();
    // ARP resolved both ways (the server learnt the client from its request).
    assert_eq!(
        p.client.neighbor(Ipv4Addr::new(198, 18, 0, 2)),
        Some(SERVER_MAC)
    );
    assert_eq!(
        p.server.neighbor(Ipv4Addr::new(198, 18, 0, 1)),
        Some(CLIENT_MAC)
    );

    let mut ev = Vec::new();
    p.server.take_events(&mut ev);
    assert!(ev.contains(&Event::Accept(7777)), "{ev:?}");
    let (s, peer) = p.server.accept(7777).unwrap();
    assert_eq!(
        peer,
        SocketAddrV4::new(
            Ipv4Addr::new(198, 18, 0, 1),
            p.client.local_addr(c).unwrap().port()
        )
    );
    assert_eq!(p.server.accept(7777), Err(SockError::WouldBlock));

    assert_eq!(p.client.send(c, b"hello").unwrap(), 5);
    p.run();
    let mut buf = [0u8; 64];
    assert!(p.server.readiness(s).unwrap().readable());
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(p.server.recv(s, &mut buf), Err(SockError::WouldBlock));
    p.server.send(s, b"world").unwrap();
    p.run();
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"world");

    // Client half-closes: the server reads EOF but can still send.
    p.client.shutdown_write(c).unwrap();
    p.run();
    assert_eq!(p.server.recv(s, &mut buf), Ok(0));
    assert!(p.server.readiness(s).unwrap().rdhup());
    p.server.send(s, b"late").unwrap();
    p.server.close(s).unwrap();
    p.run();
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 4);
    assert_eq!(p.client.recv(c, &mut buf), Ok(0));
    // The server's handle is dead at once, and its connection is freed once closed.
    assert_eq!(p.server.recv(s, &mut buf), Err(SockError::BadHandle));
    assert_eq!(p.server.connections(), 0);
}

#[test]
fn stale_handle_never_reaches_new_connection() {
    let mut p = Pair::new();
    p.server.listen(80, 16, opts()).unwrap();
    let c1 = p.client.connect(p.now, p.server_addr(80), opts()).unwrap();
    p.run();
    let (s1, _) = p.server.accept(80).unwrap();
    p.client.close(c1).unwrap();
    p.server.close(s1).unwrap();
    p.advance(Duration::from_secs(12), Duration::from_millis(5)); // through TIME-WAIT
    assert_eq!(p.server.connections(), 0);
    assert_eq!(p.client.connections(), 0);
    let _c2 = p.client.connect(p.now, p.server_addr(80), opts()).unwrap();
    p.run();
    let (s2, _) = p.server.accept(80).unwrap();
    assert_eq!(s2.slot, s1.slot, "the slot is reused");
    assert_ne!(s2.gen, s1.gen);
    assert_eq!(p.server.send(s1, b"x"), Err(SockError::BadHandle));
    assert!(p.server.send(s2, b"x").is_ok());
}

#[test]
fn reset_is_reported_once_and_peek_does_not_consume() {
    let mut p = Pair::new();
    p.server.listen(8, 4, opts()).unwrap();
    let c = p.client.connect(p.now, p.server_addr(8), opts()).unwrap();
    p.run();
    let (s, _) = p.server.accept(8).unwrap();
    p.client.send(c, b"peek me").unwrap();
    p.run();
    let mut buf = [0u8; 16];
    assert_eq!(p.server.peek(s, &mut buf), Ok(7));
    assert_eq!(p.server.recv(s, &mut buf), Ok(7));
    assert_eq!(&buf[..7], b"peek me");
    // The client resets (close with SO_LINGER 0): the server sees ECONNRESET once via SO_ERROR.
    p.client.abort(c).unwrap();
    p.run();
    assert!(p.server.readiness(s).unwrap().error());
    assert_eq!(p.server.take_error(s), Ok(Some(SockError::Reset)));
    assert_eq!(p.server.take_error(s), Ok(None));
    assert_eq!(p.server.recv(s, &mut buf), Ok(0));
    assert_eq!(p.server.send(s, b"x"), Err(SockError::Pipe));
    let r = p.server.readiness(s).unwrap();
    assert!(r.hup() && r.readable() && !r.error(), "{r:?}");
}

#[test]
fn a_reply_written_just_before_a_close_with_unread_data_goes_ahead_of_the_reset() {
    // Redis answers a protocol error and closes in one pass of its loop, with the client's
    // next data unread: Linux sent the reply in its write, then resets at close.
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    p.client.send(c, b"never read").unwrap();
    p.run();
    p.server.send(s, b"-ERR Protocol error\r\n").unwrap();
    p.server.close(s).unwrap();
    p.run();
    assert_eq!(p.server.connections(), 0, "the server's connection is gone");
    let mut buf = [0u8; 64];
    assert_eq!(p.client.recv(c, &mut buf), Ok(21));
    assert_eq!(&buf[..21], b"-ERR Protocol error\r\n");
    assert_eq!(p.client.recv(c, &mut buf), Err(SockError::Reset));
}

/// connect(AF_UNSPEC) (`unconnect`) with much unread data: the peer is reset, the error is
/// pending once, the connection is unconnected and out of the demux, and no timer stays due
/// (the dropped data made an ACK due; a closed connection owes none).
#[test]
fn unconnect_resets_drops_unread_data_and_leaves_nothing_due() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    // Three quarters of the client's 16 KiB buffer, left unread.
    let big = vec![b'x'; 12 * 1024];
    let mut sent = 0;
    for _ in 0..100 {
        if sent == big.len() {
            break;
        }
        sent += p.server.send(s, &big[sent..]).unwrap_or(0);
        p.run();
    }
    assert_eq!(sent, big.len());
    assert_eq!(p.client.recv_queue(c).unwrap(), big.len());
    p.client.unconnect(c).unwrap();
    p.run();
    let mut buf = [0u8; 16];
    assert_eq!(p.server.recv(s, &mut buf), Err(SockError::Reset));
    let r = p.client.readiness(c).unwrap();
    assert!(
        !r.readable() && r.writable() && r.hup() && r.error(),
        "{r:?}"
    );
    assert_eq!(p.client.recv(c, &mut buf), Err(SockError::Reset));
    assert_eq!(p.client.recv(c, &mut buf), Err(SockError::NotConnected));
    assert!(!p.client.readiness(c).unwrap().error());
    p.now += Duration::from_millis(100);
    nothing_due(&mut p.client, p.now);
}

#[test]
fn close_with_unread_data_resets_like_linux() {
    let mut p = Pair::new();
    p.server.listen(10, 4, opts()).unwrap();
    let c = p.client.connect(p.now, p.server_addr(10), opts()).unwrap();
    p.run();
    let (s, _) = p.server.accept(10).unwrap();
    p.client.send(c, b"never read").unwrap();
    p.run();
    p.server.send(s, b"reply").unwrap();
    p.run();
    p.server.close(s).unwrap();
    p.run();
    assert_eq!(p.server.connections(), 0, "the server's connection is gone");
    let mut buf = [0u8; 16];
    // The reply that arrived before the reset is still readable, then ECONNRESET.
    assert_eq!(p.client.recv(c, &mut buf), Ok(5));
    assert_eq!(p.client.recv(c, &mut buf), Err(SockError::Reset));
}

/// The application fills the send buffer (not writable any more) and, before the stack polls
/// again, the peer's ACK for earlier data frees room: the poll that takes the ACK must report
/// the connection writable. It is the wake-up a writer blocked on EPOLLOUT waits for; Redis's
/// diskless replication (redis-cli --rdb) stalled for its 60 s timeout without it: the
/// readiness the last poll had computed (writable, before the send) was compared with the new
/// one (writable again) and no event was queued.
#[test]
fn room_freed_right_after_a_send_filled_the_buffer_is_reported() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    let mut ev = Vec::new();
    let half = [5u8; 8 << 10];
    assert_eq!(p.server.send(s, &half).unwrap(), half.len());
    p.now += Duration::from_micros(10);
    p.server.poll(p.now); // the first half leaves; room is left: writable
    p.server.take_events(&mut ev);
    assert!(p.server.readiness(s).unwrap().writable());
    while p.server.send(s, &half).is_ok() {}
    assert!(!p.server.readiness(s).unwrap().writable());
    p.now += Duration::from_micros(10);
    p.client.poll(p.now); // the client takes the first half and ACKs it at once
    p.now += Duration::from_micros(10);
    p.server.poll(p.now); // the ACK, then the queued rest leaves
    assert!(p.server.readiness(s).unwrap().writable());
    p.server.take_events(&mut ev);
    assert!(
        ev.iter()
            .any(|e| matches!(*e, Event::Conn(id, r, _) if id == s && r.writable())),
        "no writable event: {ev:?}"
    );
    let mut buf = vec![0u8; 32 << 10];
    assert!(p.client.recv(c, &mut buf).unwrap() > 0);
}

/// A responder for the tests: answers each whole `GET k\r\n` line at the front with `+k\r\n`
/// (within the room), and leaves the rest from the first other line on.
#[derive(Default)]
struct Gets {
    out: Vec<u8>,
    offered: Vec<ConnId>,
}

impl Respond for Gets {
    fn respond(&mut self, id: ConnId, a: &[u8], b: &[u8], room: usize) -> Option<(usize, &[u8])> {
        assert!(!a.is_empty() && room > 0, "offered only with data and room");
        self.offered.push(id);
        self.out.clear();
        let all = [a, b].concat();
        let mut used = 0;
        for line in all.split_inclusive(|&c| c == b'\n') {
            let Some(k) = line
                .strip_prefix(b"GET ")
                .and_then(|l| l.strip_suffix(b"\r\n"))
            else {
                break;
            };
            if self.out.len() + k.len() + 3 > room {
                break;
            }
            self.out.extend_from_slice(b"+");
            self.out.extend_from_slice(k);
            self.out.extend_from_slice(b"\r\n");
            used += line.len();
        }
        (used > 0).then_some((used, &self.out[..]))
    }
}

fn conn_events(p: &mut Pair, id: ConnId) -> usize {
    let mut ev = Vec::new();
    p.server.take_events(&mut ev);
    ev.iter()
        .filter(|e| matches!(e, Event::Conn(c, _, _) if *c == id))
        .count()
}

/// A responder given to the poll answers in that poll: its replies leave in it, what it takes
/// the application never reads, and a connection it answered entirely raises no event; what
/// it leaves is read as without it, after an event. Only the application's connections are
/// offered.
#[test]
fn a_responder_answers_in_the_poll_that_brings_the_requests() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    let mut r = Gets::default();
    let mut buf = [0u8; 64];

    assert_eq!(p.client.send(c, b"GET a\r\nGET b\r\n").unwrap(), 14);
    p.client.poll(p.now);
    p.server.poll_with(p.now, Some(&mut r));
    assert_eq!(r.offered, [s]);
    assert_eq!(conn_events(&mut p, s), 0, "answered entirely: no event");
    assert_eq!(p.server.recv(s, &mut buf), Err(SockError::WouldBlock));
    // The replies left in that poll: one poll of the client finds them.
    p.client.poll(p.now);
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 8);
    assert_eq!(&buf[..8], b"+a\r\n+b\r\n");
    p.run();

    // Part of it answered: the rest is the application's, with an event.
    assert_eq!(p.client.send(c, b"GET c\r\nSET d\r\n").unwrap(), 14);
    p.client.poll(p.now);
    p.server.poll_with(p.now, Some(&mut r));
    assert_eq!(conn_events(&mut p, s), 1);
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 7);
    assert_eq!(&buf[..7], b"SET d\r\n");
    p.client.poll(p.now);
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"+c\r\n");

    // Declined: as without a responder.
    assert_eq!(p.client.send(c, b"SET e\r\n").unwrap(), 7);
    p.run_with(&mut r);
    assert_eq!(conn_events(&mut p, s), 1);
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 7);

    // A poll without the responder leaves everything to the application.
    assert_eq!(p.client.send(c, b"GET f\r\n").unwrap(), 7);
    p.run();
    assert_eq!(conn_events(&mut p, s), 1);
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 7);

    // Nor is one its listener still holds: it is not the application's yet.
    let c2 = p
        .client
        .connect(p.now, p.server_addr(7777), opts())
        .unwrap();
    p.run();
    assert_eq!(p.client.send(c2, b"GET h\r\n").unwrap(), 7);
    let offered = r.offered.len();
    p.run_with(&mut r);
    assert_eq!(r.offered.len(), offered, "not accepted yet");
    let (s2, _) = p.server.accept(7777).unwrap();
    assert_eq!(p.server.recv(s2, &mut buf).unwrap(), 7);

    // A connection that can no longer send is not offered: its data and its state are the
    // application's.
    let offered = r.offered.len();
    p.server.shutdown_write(s).unwrap();
    p.run();
    assert_eq!(p.client.send(c, b"GET g\r\n").unwrap(), 7);
    p.run_with(&mut r);
    assert_eq!(r.offered.len(), offered);
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 7);
}

#[test]
fn look_and_answer_do_what_a_read_send_room_and_send_do() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    assert_eq!(p.client.send(c, b"GET a\r\nGET b\r\n").unwrap(), 14);
    p.run();
    let room = p.server.send_room(s).unwrap();
    let (a, b, r) = p.server.look(s).unwrap();
    assert_eq!([a, b].concat(), b"GET a\r\nGET b\r\n");
    assert_eq!(r, room);
    // The first request answered: taken, its reply queued; the rest still readable.
    let (n, ready) = p.server.answer(s, 7, b"+a\r\n").unwrap();
    assert_eq!(n, 4);
    assert!(ready.readable() && ready.writable(), "{ready:?}");
    assert_eq!(ready, p.server.readiness(s).unwrap());
    assert_eq!(p.server.look(s).unwrap().2, room - 4);
    // The second: nothing left to read.
    let (_, ready) = p.server.answer(s, 7, b"+b\r\n").unwrap();
    assert!(!ready.readable() && ready.writable(), "{ready:?}");
    p.run();
    let mut buf = [0u8; 16];
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 8);
    assert_eq!(&buf[..8], b"+a\r\n+b\r\n");
    assert_eq!(p.server.recv(s, &mut buf), Err(SockError::WouldBlock));
    // Nothing to send: the bytes taken as recv takes them, at most what waits.
    assert_eq!(p.client.send(c, b"GET x\r\nGET y\r\n").unwrap(), 14);
    p.run();
    assert_eq!(p.server.answer(s, 7, b"").unwrap().0, 0);
    assert_eq!(p.server.recv_queue(s), Ok(7));
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 7);
    assert_eq!(&buf[..7], b"GET y\r\n");
    assert_eq!(p.client.send(c, b"x").unwrap(), 1);
    p.run();
    p.server.answer(s, 100, b"").unwrap();
    assert_eq!(p.server.recv(s, &mut buf), Err(SockError::WouldBlock));
    // A connection that can no longer send says so as send does, and takes nothing.
    assert_eq!(p.client.send(c, b"GET c\r\n").unwrap(), 7);
    p.run();
    p.server.shutdown_write(s).unwrap();
    assert_eq!(
        p.server.look(s).unwrap().2,
        0,
        "no room where send would fail"
    );
    assert_eq!(p.server.answer(s, 7, b"+c\r\n"), Err(SockError::Pipe));
    assert_eq!(p.server.recv_queue(s), Ok(7));
    p.server.close(s).unwrap();
    assert_eq!(p.server.look(s).err(), Some(SockError::BadHandle));
    assert_eq!(p.server.answer(s, 1, b"x"), Err(SockError::BadHandle));
}
