//! Connection lifecycle (stack/conn.rs): keepalive, recovery through faults, ACK coalescing, events
//! and readiness, Linux's timeouts (give-up, connect, FIN-WAIT-2 orphans).

use smoltcp::time::{Duration, Instant};

use super::{nothing_due, opts, Pair};
use crate::config::CongestionControl;
use crate::link::MemLink;
use crate::stack::{ConnId, Event, SockError, Stack, TcpOptions};

#[test]
fn keepalive_finds_a_dead_peer() {
    let mut p = Pair::new();
    p.server.listen(9, 4, opts()).unwrap();
    p.client.connect(p.now, p.server_addr(9), opts()).unwrap();
    p.run();
    let (s, _) = p.server.accept(9).unwrap();
    let ka = crate::stack::Keepalive {
        idle: std::time::Duration::from_secs(2),
        intvl: std::time::Duration::from_secs(1),
        cnt: 3,
    };
    p.server.set_keepalive(p.now, s, Some(ka)).unwrap();
    // The client vanishes (its frames stop reaching the server): after idle + intvl * cnt the
    // server gives up with ETIMEDOUT, having sent probes meanwhile.
    let before = p.server.stats().tx_frames;
    let start = p.now;
    let mut first_probe = None;
    let end = p.now + Duration::from_secs(7);
    while p.now < end {
        p.now += Duration::from_millis(10);
        p.server.poll(p.now);
        p.client.link().pending(); // the client no longer polls: its inbox just fills
        if first_probe.is_none() && p.server.stats().tx_frames > before {
            first_probe = Some(p.now - start);
        }
    }
    // As on Linux, the first probe after `idle` without traffic, not when it is switched on.
    let first = first_probe.expect("keepalive probes were sent");
    assert!(
        first >= Duration::from_secs(2) && first < Duration::from_millis(2100),
        "first probe after {first}"
    );
    let mut buf = [0u8; 4];
    assert_eq!(p.server.recv(s, &mut buf), Err(SockError::TimedOut));
}

#[test]
fn bulk_transfer_with_faults_is_intact() {
    let mut p = Pair::new();
    p.server.listen(5001, 16, opts()).unwrap();
    let c = p
        .client
        .connect(p.now, p.server_addr(5001), opts())
        .unwrap();
    p.run();
    let (s, _) = p.server.accept(5001).unwrap();
    // Turn faults on for both directions once connected.
    let f = crate::config::Faults {
        loss: 3.0,
        dup: 1.0,
        reorder: 1.0,
        seed: 42,
    };
    p.server.set_faults(Some(f));
    p.client.set_faults(Some(f));
    let total = 2 << 20;
    let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
    let (mut sent, mut got) = (0, Vec::with_capacity(total));
    let mut buf = vec![0u8; 8192];
    for _ in 0..1_000_000 {
        if sent < total {
            if let Ok(n) = p.client.send(c, &data[sent..]) {
                sent += n;
            }
        }
        loop {
            match p.server.recv(s, &mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        if got.len() == total {
            break;
        }
        p.now += Duration::from_micros(50);
        p.server.poll(p.now);
        p.client.poll(p.now);
    }
    assert_eq!(got.len(), total);
    assert!(got == data, "payload corrupted");
    let st = p.client.stats();
    assert!(st.fault_dropped > 0 && st.tcp_retransmits > 0, "{st}");
}

/// A pair whose server listens on 7777, with 64 KiB buffers and no congestion window (what a
/// client sends leaves in one poll).
fn burst_pair() -> (Pair, TcpOptions) {
    let mut p = Pair::new();
    let o = TcpOptions {
        rcvbuf: 64 << 10,
        sndbuf: 64 << 10,
        cc: CongestionControl::None,
        ..opts()
    };
    p.server.listen(7777, 16, o).unwrap();
    (p, o)
}

/// What the client queued leaves in one poll (at least 8 segments), and the server takes it
/// in one poll: the segments, and the frames the server sent for them.
fn one_burst(p: &mut Pair) -> (usize, u64) {
    p.now += Duration::from_micros(10);
    p.client.poll(p.now);
    let segments = p.server.link().pending();
    assert!(
        segments >= 8,
        "the client sent only {segments} segments at once"
    );
    let before = p.server.stats().tx_frames;
    p.now += Duration::from_micros(10);
    p.server.poll(p.now);
    (segments, p.server.stats().tx_frames - before)
}

#[test]
fn a_received_burst_is_acknowledged_once() {
    let (mut p, o) = burst_pair();
    let c = p.client.connect(p.now, p.server_addr(7777), o).unwrap();
    p.run();
    let (s, _) = p.server.accept(7777).unwrap();

    // 16 KiB leave the client in one poll: a dozen full segments on the server's side.
    let data: Vec<u8> = (0..16 << 10)
        .map(|i: u32| (i * 7 + i / 251) as u8)
        .collect();
    assert_eq!(p.client.send(c, &data).unwrap(), data.len());
    // ack_delay None: an ACK is due after every segment; the burst gets one.
    let (segments, frames) = one_burst(&mut p);
    assert_eq!(
        frames, 1,
        "frames the server sent for a burst of {segments} segments"
    );

    p.run();
    let mut got = vec![0u8; data.len() + 1];
    assert_eq!(p.server.recv(s, &mut got).unwrap(), data.len());
    assert_eq!(&got[..data.len()], &data[..]);
    // The ACK covered everything: nothing left in flight, the client's buffer is free.
    assert_eq!(p.client.send(c, &data).unwrap(), data.len());
}

/// A burst that brings segments of several connections gets one ACK per connection: each
/// connection's last segment of the burst sends at once, the earlier ones wait for it.
#[test]
fn a_burst_of_several_connections_gets_one_ack_each() {
    let (mut p, o) = burst_pair();
    let a = p.client.connect(p.now, p.server_addr(7777), o).unwrap();
    let b = p.client.connect(p.now, p.server_addr(7777), o).unwrap();
    p.run();
    let (sa, _) = p.server.accept(7777).unwrap();
    let (sb, _) = p.server.accept(7777).unwrap();

    // A dozen full segments of one connection, then one of the other, in one burst.
    let data = vec![5u8; 12 << 10];
    assert_eq!(p.client.send(a, &data).unwrap(), data.len());
    assert_eq!(p.client.send(b, &[1, 2, 3]).unwrap(), 3);
    // ack_delay None: an ACK is due after every segment; each connection gets one.
    let (segments, frames) = one_burst(&mut p);
    assert_eq!(
        frames, 2,
        "frames the server sent for a burst of {segments} segments of two connections"
    );
    p.run();
    let mut got = vec![0u8; data.len() + 1];
    assert_eq!(p.server.recv(sa, &mut got).unwrap(), data.len());
    assert_eq!(p.server.recv(sb, &mut got).unwrap(), 3);
    assert_eq!(
        p.client.send(a, &data).unwrap(),
        data.len(),
        "all of it acknowledged"
    );
}

/// A burst's frames that another of the same connection may follow: every one but a
/// connection's last, and those whose slot shares its bucket of 64 with a later frame's.
#[test]
fn frames_followed_in_their_burst() {
    use crate::stack::{followed_frames, rx_may_follow, NO_FRAME};
    assert_eq!(followed_frames(&[]), 0);
    assert_eq!(
        followed_frames(&[Some(3), Some(4), Some(3), None, Some(4)]),
        0b00011
    );
    // Slots 1 and 65 share a bucket: taken as the same connection (it only delays an ACK).
    assert_eq!(followed_frames(&[Some(1), Some(65), Some(2)]), 0b001);
    let found = [Some(7), Some(7), Some(8)];
    let mut followed = None;
    assert!(rx_may_follow(&found, &mut followed, 0));
    assert_eq!(followed, Some(0b001));
    assert!(!rx_may_follow(&found, &mut followed, 1));
    assert!(!rx_may_follow(&found, &mut followed, 2));
    assert!(rx_may_follow(&found, &mut followed, NO_FRAME));
}

/// A connection event carries the readiness the shim hands to epoll without asking again: it
/// must be the connection's readiness when the events are taken, also when a later poll in the
/// same round changed it after the event was queued (the send buffer filled: not writable, an
/// event; then the peer's ACKs emptied it: writable again, no second event).
#[test]
fn a_connection_event_carries_its_current_readiness() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    let mut ev = Vec::new();
    let chunk = [7u8; 4096];
    while p.server.send(s, &chunk).is_ok() {}
    assert!(!p.server.readiness(s).unwrap().writable());
    p.run();
    p.server.take_events(&mut ev);
    let now = p.server.readiness(s).unwrap();
    assert!(now.writable(), "{now:?}");
    let carried: Vec<_> = ev
        .iter()
        .filter_map(|e| match *e {
            Event::Conn(id, r, _) if id == s => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(carried, vec![now], "{ev:?}");
    let mut buf = [0u8; 4096];
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 4096);
}

/// EPOLLRDHUP as soon as the peer's FIN arrives, also with data still unread before it, as on
/// Linux (RCV_SHUTDOWN); and EPOLLHUP once both directions are shut, whatever is still queued.
#[test]
fn the_peers_fin_is_reported_with_data_still_unread() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    p.client.send(c, b"last words").unwrap();
    p.client.close(c).unwrap();
    p.run();
    let r = p.server.readiness(s).unwrap();
    assert!(r.readable() && r.rdhup() && !r.hup(), "{r:?}");
    // Reading the data changes none of that.
    let mut buf = [0u8; 64];
    assert_eq!(p.server.recv(s, &mut buf[..4]).unwrap(), 4);
    assert_eq!(p.server.readiness(s).unwrap(), r);
    p.server.shutdown_write(s).unwrap();
    p.run();
    let r = p.server.readiness(s).unwrap();
    assert!(r.readable() && r.rdhup() && r.hup(), "{r:?}");
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 6);
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 0);
}

/// Polls the server alone (the client is gone: nothing it sent arrives, nothing answers) from
/// now until `until`, in 100 ms steps; returns when `stop` holds, with the time.
fn server_alone_until(
    p: &mut Pair,
    until: Duration,
    mut stop: impl FnMut(&mut Stack<MemLink>) -> bool,
) -> Option<Instant> {
    let end = p.now + until;
    while p.now < end {
        p.now += Duration::from_millis(100);
        p.server.poll(p.now);
        if stop(&mut p.server) {
            return Some(p.now);
        }
    }
    None
}

/// Fills the server's send buffer on `s` with the client gone silent, then runs the server
/// alone for at most `limit`: how long until it gave the connection up, if it did.
fn time_to_give_up(p: &mut Pair, s: ConnId, limit: Duration) -> Option<Duration> {
    let chunk = [1u8; 4096];
    while p.server.send(s, &chunk).is_ok() {}
    let start = p.now;
    let failed = server_alone_until(p, limit, |st| st.readiness(s).is_ok_and(|r| r.error()))?;
    Some(failed - start)
}

/// A peer that vanished with our data unacknowledged: the connection is given up after
/// ~15 minutes of silence, as Linux does after tcp_retries2, and a writer waiting for
/// EPOLLOUT wakes with an error (ETIMEDOUT). Smoltcp alone retransmitted for ever.
#[test]
fn a_vanished_peer_is_given_up_after_fifteen_minutes() {
    let mut p = Pair::new();
    let (_c, s) = p.connected(opts());
    let mut ev = Vec::new();
    let after =
        time_to_give_up(&mut p, s, Duration::from_secs(1200)).expect("given up within 20 minutes");
    assert!(
        after >= Duration::from_secs(924) && after <= Duration::from_secs(990),
        "given up after {after}"
    );
    p.server.take_events(&mut ev);
    assert!(
        ev.iter()
            .any(|e| matches!(*e, Event::Conn(id, r, _) if id == s && r.error() && r.hup())),
        "{ev:?}"
    );
    assert_eq!(p.server.send(s, b"x"), Err(SockError::TimedOut));
    assert_eq!(p.server.stats().tcp_timeouts, 1);
    // Given up, still held by the application: no timer left due.
    p.now += Duration::from_millis(100);
    nothing_due(&mut p.server, p.now);
}

/// TCP_USER_TIMEOUT: a vanished peer is given up once our data has been unacknowledged, with
/// nothing heard, for the user timeout instead of ~15 minutes.
#[test]
fn a_user_timeout_gives_up_on_a_vanished_peer_sooner() {
    let mut p = Pair::new();
    let (_c, s) = p.connected(opts());
    p.server
        .set_user_timeout(s, Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let after =
        time_to_give_up(&mut p, s, Duration::from_secs(60)).expect("given up within a minute");
    assert!(
        after >= Duration::from_secs(5) && after <= Duration::from_secs(7),
        "given up after {after}"
    );
    assert_eq!(p.server.send(s, b"x"), Err(SockError::TimedOut));
    // Back to the default: not given up after the same time.
    let mut q = Pair::new();
    let (_c, s) = q.connected(opts());
    q.server
        .set_user_timeout(s, Some(std::time::Duration::from_secs(5)))
        .unwrap();
    q.server.set_user_timeout(s, None).unwrap();
    let failed = time_to_give_up(&mut q, s, Duration::from_secs(60));
    assert!(failed.is_none(), "given up after {failed:?}");
}

/// A peer that resets the connection while our data is outstanding: the connection is over,
/// no retransmission or give-up timer stays due, and it is not counted as given up on.
#[test]
fn a_reset_with_data_outstanding_leaves_no_timer_due() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    let chunk = [1u8; 4096];
    while p.server.send(s, &chunk).is_ok() {}
    p.client.abort(c).unwrap();
    p.run();
    assert!(p.server.readiness(s).unwrap().error());
    for _ in 0..10 {
        p.now += Duration::from_secs(100);
        nothing_due(&mut p.server, p.now);
    }
    assert_eq!(p.server.stats().tcp_timeouts, 0);
}

/// A peer that is alive but does not read (zero window; a paused client) is never given up:
/// it answers the window probes.
#[test]
fn a_peer_that_does_not_read_is_not_given_up() {
    let mut p = Pair::new();
    let (_c, s) = p.connected(opts());
    let chunk = [1u8; 4096];
    let end = p.now + Duration::from_secs(1500);
    while p.now < end {
        while p.server.send(s, &chunk).is_ok() {}
        p.advance(Duration::from_secs(10), Duration::from_millis(100));
    }
    let r = p.server.readiness(s).unwrap();
    assert!(!r.error() && !r.writable(), "{r:?}");
    assert_eq!(p.server.stats().tcp_timeouts, 0);
}

/// TCP_USER_TIMEOUT gives up on a peer that answers the window probes but keeps its window
/// shut for that long, as Linux does (since 5.11); without it, such a peer is kept (above).
#[test]
fn a_user_timeout_gives_up_on_a_window_that_stays_shut() {
    let mut p = Pair::new();
    let (_c, s) = p.connected(opts());
    p.server
        .set_user_timeout(s, Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let chunk = [1u8; 4096];
    let start = p.now;
    let mut failed = None;
    while p.now < start + Duration::from_secs(60) {
        while p.server.send(s, &chunk).is_ok() {}
        p.advance(Duration::from_millis(500), Duration::from_millis(50));
        if p.server.readiness(s).unwrap().error() {
            failed = Some(p.now - start);
            break;
        }
    }
    // The client's 16 KiB buffer fills in well under a second; then 5 s of a shut window.
    let after = failed.expect("given up within a minute");
    assert!(
        after >= Duration::from_secs(5) && after <= Duration::from_secs(8),
        "given up after {after}"
    );
    assert_eq!(p.server.send(s, b"x"), Err(SockError::TimedOut));
    assert_eq!(p.server.stats().tcp_timeouts, 1);
}

/// A connect nobody answers (the listener's backlog is full, so its SYNs are dropped) fails
/// with ETIMEDOUT after 127 s, as Linux's does after tcp_syn_retries.
#[test]
fn an_unanswered_connect_times_out() {
    let mut p = Pair::new();
    p.server.listen(7777, 1, opts()).unwrap();
    for _ in 0..2 {
        p.client
            .connect(p.now, p.server_addr(7777), opts())
            .unwrap();
    }
    p.run(); // established, never accepted: the accept queue is full (more than the backlog)
    let c = p
        .client
        .connect(p.now, p.server_addr(7777), opts())
        .unwrap();
    let start = p.now;
    let end = p.now + Duration::from_secs(200);
    while p.now < end && !p.client.readiness(c).unwrap().error() {
        p.now += Duration::from_millis(100);
        p.server.poll(p.now);
        p.client.poll(p.now);
    }
    assert!(p.server.stats().drop_syn_backlog > 0);
    let after = p.now - start;
    assert!(
        after >= Duration::from_secs(127) && after <= Duration::from_secs(128),
        "connect failed after {after} ({:?})",
        p.client.state(c)
    );
    assert_eq!(p.client.take_error(c), Ok(Some(SockError::TimedOut)));
}

/// An orphan in FIN-WAIT-2 (closed by the application, its FIN acknowledged, the peer's FIN
/// never comes) is freed after 60 s, as Linux frees it after tcp_fin_timeout.
#[test]
fn an_orphan_in_fin_wait_2_is_freed_after_a_minute() {
    let mut p = Pair::new();
    let (_c, s) = p.connected(opts());
    p.server.close(s).unwrap();
    p.run(); // our FIN is acknowledged; the client then vanishes
    assert_eq!(p.server.connections(), 1);
    let start = p.now;
    let freed = server_alone_until(&mut p, Duration::from_secs(120), |st| st.connections() == 0)
        .expect("freed within 2 minutes");
    let after = freed - start;
    assert!(
        after >= Duration::from_secs(60) && after <= Duration::from_secs(61),
        "freed after {after}"
    );
}

/// TCP_LINGER2 shortens the wait of an orphan in FIN-WAIT-2; a negative one (here zero) ends it
/// at once with a reset, as on Linux.
#[test]
fn tcp_linger2_sets_how_long_an_orphan_waits_for_the_peers_fin() {
    for (linger2, least, most) in [(5, 5, 6), (0, 0, 1)] {
        let mut p = Pair::new();
        let (_c, s) = p.connected(opts());
        p.server
            .set_fin_timeout(s, Some(std::time::Duration::from_secs(linger2)))
            .unwrap();
        p.server.close(s).unwrap();
        p.run();
        let start = p.now;
        let freed =
            server_alone_until(&mut p, Duration::from_secs(120), |st| st.connections() == 0)
                .expect("freed within 2 minutes");
        let after = freed - start;
        assert!(
            after >= Duration::from_secs(least) && after <= Duration::from_secs(most),
            "TCP_LINGER2 {linger2}: freed after {after}"
        );
    }
}

/// A connection the application closed becomes a TIME-WAIT record once its last ACK is out:
/// its socket (and buffers) serve the next connection, the record lasts Linux's 60 s, and no
/// reset is sent on the way.
#[test]
fn a_closed_connection_waits_out_time_wait_as_a_record() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    p.server.close(s).unwrap();
    p.run();
    p.client.close(c).unwrap();
    p.run();
    assert_eq!(p.server.connections(), 0, "freed, not held for TIME-WAIT");
    let st = p.server.tcp_states();
    assert_eq!(
        st.iter().find(|(n, _)| *n == "time_wait").map(|(_, v)| v),
        Some(1)
    );
    assert_eq!(p.server.stats().tcp_rst_sent, 0);
    // A new connection, served from the kept socket.
    let c2 = p
        .client
        .connect(p.now, p.server_addr(7777), opts())
        .unwrap();
    p.run();
    let (s2, _) = p.server.accept(7777).unwrap();
    p.client.send(c2, b"again").unwrap();
    p.run();
    let mut buf = [0u8; 16];
    assert_eq!(p.server.recv(s2, &mut buf), Ok(5));
    assert_eq!(&buf[..5], b"again");
    assert_eq!(p.server.stats().tcp_rst_sent, 0);
    p.advance(Duration::from_secs(61), Duration::from_millis(500));
    let st = p.server.tcp_states();
    assert_eq!(
        st.iter().find(|(n, _)| *n == "time_wait").map(|(_, v)| v),
        Some(0)
    );
}

/// TCP_USER_TIMEOUT's clock for a shut window runs only while data waits for it: a peer that
/// shut its window while nothing was queued, long before the next write, is not given up on at
/// once.
#[test]
fn a_window_shut_while_nothing_waits_starts_no_user_timeout_clock() {
    let mut p = Pair::new();
    let (_c, s) = p.connected(opts());
    p.server
        .set_user_timeout(s, Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // Exactly the client's 16 KiB window: all acknowledged, the window shut, nothing queued.
    assert_eq!(p.server.send(s, &[1u8; 16 << 10]).unwrap(), 16 << 10);
    p.run();
    p.advance(Duration::from_secs(10), Duration::from_millis(100));
    assert!(!p.server.readiness(s).unwrap().error());
    // A write now waits behind the shut window: given up 5 s later, not at once.
    p.server.send(s, b"x").unwrap();
    p.advance(Duration::from_secs(1), Duration::from_millis(100));
    assert!(!p.server.readiness(s).unwrap().error(), "given up at once");
}
