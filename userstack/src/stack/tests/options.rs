//! Per-connection options: buffer sizes and MSS from the
//! listener, SO_SNDBUF on a connection, TCP_QUICKACK, IP_TTL and IP_TOS.

use smoltcp::time::Duration;

use super::{opts, Pair};
use crate::stack::{ConnId, TcpOptions};

/// The IPv4 headers of the frames waiting on the client's side (what the server sent; ARP
/// aside).
fn ip_headers(p: &Pair) -> Vec<Vec<u8>> {
    p.client
        .link()
        .waiting()
        .into_iter()
        .filter(|f| f[12..14] == [0x08, 0x00])
        .map(|f| f[14..34].to_vec())
        .collect()
}

/// Whether an IPv4 header's checksum is right (its ones' complement sum is all ones).
fn header_checksum_ok(h: &[u8]) -> bool {
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn ttl_and_tos_are_in_every_segment_sent_and_the_data_arrives() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    p.server.set_ip_header(s, Some(7), 0x28).unwrap();
    assert_eq!(p.server.send(s, &[b'x'; 3000]).unwrap(), 3000);
    p.now += Duration::from_micros(10);
    p.server.poll(p.now);
    let headers = ip_headers(&p);
    assert!(headers.len() >= 2, "{} segments", headers.len());
    for h in &headers {
        assert_eq!((h[8], h[1]), (7, 0x28), "TTL and TOS of {h:?}");
        assert!(header_checksum_ok(h), "IPv4 checksum of {h:?}");
    }
    // Every segment passed the client's checksums: all the data arrived.
    p.run();
    let mut buf = vec![0u8; 4000];
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 3000);
    // Back to the defaults: TTL 64, TOS 0.
    p.server.set_ip_header(s, None, 0).unwrap();
    p.server.send(s, b"y").unwrap();
    p.now += Duration::from_micros(10);
    p.server.poll(p.now);
    let h = ip_headers(&p).pop().expect("a segment");
    assert_eq!((h[8], h[1]), (64, 0));
}

#[test]
fn a_listeners_options_size_the_buffers_and_the_mss_of_its_connections() {
    let mut p = Pair::new();
    let o = TcpOptions {
        rcvbuf: 4096,
        sndbuf: 6000,
        mss: Some(1000),
        ttl: Some(9),
        ..opts()
    };
    p.server.listen(7777, 16, opts()).unwrap();
    // Set after listen(), before the client comes: the next connections have them.
    p.server.set_listen_options(7777, o).unwrap();
    let c = p
        .client
        .connect(p.now, p.server_addr(7777), opts())
        .unwrap();
    // The SYN-ACK (after ARP): TTL 9.
    let mut synack = None;
    for _ in 0..10 {
        p.now += Duration::from_micros(10);
        p.client.poll(p.now);
        p.now += Duration::from_micros(10);
        p.server.poll(p.now);
        let frames = p.client.link().waiting();
        synack = frames
            .into_iter()
            .find(|f| f[12..14] == [0x08, 0x00] && f[47] & 0x12 == 0x12);
        if synack.is_some() {
            break;
        }
    }
    assert_eq!(synack.expect("a SYN-ACK")[14 + 8], 9);
    p.run();
    let (s, _) = p.server.accept(7777).unwrap();
    assert_eq!(p.server.buffer_sizes(s).unwrap(), (4096, 6000));
    let i = p.server.tcp_info(s).unwrap();
    // (988 bytes of payload beside the timestamp option.)
    assert_eq!((i.advmss, i.pmtu, i.snd_mss), (1000, 1040, 988));
    // The client sends segments of at most 1,000 bytes into a window of at most 4 KiB.
    assert_eq!(p.client.tcp_info(c).unwrap().snd_mss, 988);
    assert_eq!(p.client.send(c, &[b'z'; 10_000]).unwrap(), 10_000);
    p.now += Duration::from_micros(10);
    p.client.poll(p.now);
    let sizes: Vec<usize> = p
        .server
        .link()
        .waiting()
        .iter()
        .filter(|f| f[12..14] == [0x08, 0x00])
        .map(|f| usize::from(u16::from_be_bytes([f[16], f[17]])) - 40)
        .collect();
    assert!(sizes.iter().all(|&n| n <= 1000), "{sizes:?}");
    assert!(sizes.iter().sum::<usize>() <= 4096, "{sizes:?}");
}

#[test]
fn so_sndbuf_on_a_connection_limits_what_is_queued() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    p.server.set_send_cap(s, Some(3000)).unwrap();
    assert_eq!(p.server.buffer_sizes(s).unwrap().1, 3000);
    assert_eq!(p.server.send(s, &[b'a'; 10_000]).unwrap(), 3000);
    assert!(!p.server.readiness(s).unwrap().writable());
    assert_eq!(
        p.server.send(s, b"b"),
        Err(crate::stack::SockError::WouldBlock)
    );
    // Acknowledged: room again, and still no more than 3,000 queued.
    p.run();
    let mut buf = vec![0u8; 10_000];
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 3000);
    assert!(p.server.readiness(s).unwrap().writable());
    assert_eq!(p.server.send(s, &[b'a'; 10_000]).unwrap(), 3000);
    // A cap at or above the buffer is the buffer.
    p.server.set_send_cap(s, Some(1 << 20)).unwrap();
    assert_eq!(p.server.buffer_sizes(s).unwrap().1, 16 << 10);
}

/// Payload lengths of the TCP segments waiting on the client's side.
fn payloads(p: &Pair) -> Vec<usize> {
    p.client
        .link()
        .waiting()
        .iter()
        .filter(|f| f[12..14] == [0x08, 0x00])
        .map(|f| {
            let ip = &f[14..];
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let ihl = usize::from(ip[0] & 0xf) * 4;
            let doff = usize::from(ip[ihl + 12] >> 4) * 4;
            total - ihl - doff
        })
        .collect()
}

/// The server polls once, `after` from now.
fn server_poll(p: &mut Pair, after: Duration) {
    p.now += after;
    p.server.poll(p.now);
}

/// The client sends one byte; whether the server acknowledges it at once (within 20 us),
/// rather than after its delayed-ACK time. Everything is acknowledged and read afterwards.
fn acked_at_once(p: &mut Pair, c: ConnId, s: ConnId) -> bool {
    p.client.send(c, b"q").unwrap();
    p.now += Duration::from_micros(10);
    p.client.poll(p.now);
    p.now += Duration::from_micros(10);
    p.server.poll(p.now);
    let at_once = p.client.link().pending() > 0;
    p.advance(Duration::from_millis(50), Duration::from_millis(1));
    p.run();
    let mut buf = [0u8; 64];
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 1);
    at_once
}

#[test]
fn quickack_acknowledges_at_once_for_a_while_then_delays_again() {
    let mut p = Pair::new();
    let o = TcpOptions {
        ack_delay: Some(std::time::Duration::from_millis(40)),
        ..opts()
    };
    let (c, s) = p.connected(o);
    assert_eq!(p.server.tcp_info(s).unwrap().ato_us, 40_000);
    // A request answered at once makes the exchange interactive (Linux's pingpong mode): the
    // next request's ACK waits to leave with its reply.
    let mut buf = [0u8; 64];
    p.client.send(c, b"request").unwrap();
    p.run();
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 7);
    p.server.send(s, b"reply").unwrap();
    p.run();
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 5);
    assert!(!acked_at_once(&mut p, c, s));
    // TCP_QUICKACK: the next sixteen segments are acknowledged at once, then the delayed ACK
    // is back.
    p.server.set_quickack(s, true).unwrap();
    for i in 0..16 {
        assert!(acked_at_once(&mut p, c, s), "segment {i}");
    }
    assert!(!acked_at_once(&mut p, c, s));
    // Switched on and off again: delayed.
    p.server.set_quickack(s, true).unwrap();
    p.server.set_quickack(s, false).unwrap();
    assert!(!acked_at_once(&mut p, c, s));
    assert_eq!(p.server.tcp_info(s).unwrap().ato_us, 40_000);
}

#[test]
fn cork_sends_whole_segments_only_until_uncorked() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    let mss = p.server.tcp_info(s).unwrap().snd_mss as usize;
    p.server.set_cork(s, true).unwrap();
    // Less than a segment: held.
    assert_eq!(p.server.send(s, &[b'h'; 100]).unwrap(), 100);
    server_poll(&mut p, Duration::from_millis(1));
    assert_eq!(payloads(&p), Vec::<usize>::new());
    assert_eq!(p.server.tcp_info(s).unwrap().notsent_bytes, 100);
    // Past a segment: the whole segment leaves, the rest is held.
    assert_eq!(p.server.send(s, &vec![b'b'; mss]).unwrap(), mss);
    server_poll(&mut p, Duration::from_millis(1));
    assert_eq!(payloads(&p), vec![mss]);
    // Uncorked: the rest leaves at once.
    p.server.set_cork(s, false).unwrap();
    server_poll(&mut p, Duration::from_micros(10));
    assert_eq!(payloads(&p), vec![mss, 100]);
    p.run();
    let mut buf = vec![0u8; 4 * mss];
    let n = p.client.recv(c, &mut buf).unwrap();
    assert_eq!(n, mss + 100);
    assert!(buf[..100].iter().all(|&b| b == b'h') && buf[100..n].iter().all(|&b| b == b'b'));
}

#[test]
fn cork_holds_a_partial_segment_at_most_200_ms_and_close_sends_it() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    p.server.set_cork(s, true).unwrap();
    p.server.send(s, b"partial").unwrap();
    server_poll(&mut p, Duration::from_millis(1));
    server_poll(&mut p, Duration::from_millis(150));
    assert_eq!(payloads(&p), Vec::<usize>::new());
    // The stack's next timer is the cork's.
    let due = p.server.next_deadline().expect("a timer");
    assert!(
        due <= p.now + Duration::from_millis(50),
        "{due} vs {}",
        p.now
    );
    server_poll(&mut p, Duration::from_millis(50));
    assert_eq!(payloads(&p), vec![7]);
    p.run();
    let mut buf = [0u8; 64];
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 7);
    // Corked still: shutdown(SHUT_WR) sends what is held, then the FIN.
    p.server.send(s, b"tail").unwrap();
    p.server.shutdown_write(s).unwrap();
    p.run();
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 4);
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 0);
}

#[test]
fn so_rcvbuf_on_a_connection_lowers_the_window_and_reads_reopen_it_at_once() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    p.server.set_recv_cap(s, Some(4096)).unwrap();
    assert_eq!(p.server.buffer_sizes(s).unwrap().0, 4096);
    let data: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut most_queued_later = 0;
    for round in 0..200 {
        if sent < data.len() {
            sent += p.client.send(c, &data[sent..]).unwrap_or(0);
        }
        // Only the immediate exchange: no timer (a window probe) is needed to go on.
        p.run();
        let queued = p.server.recv_queue(s).unwrap();
        if round > 0 {
            // The window offered before the buffer was lowered is used up in the first round;
            // from then on the peer sends no more than the lowered buffer's room.
            most_queued_later = most_queued_later.max(queued);
        }
        let n = p.server.recv(s, &mut buf).unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
        if got.len() == data.len() {
            break;
        }
    }
    assert_eq!(
        got.len(),
        data.len(),
        "all the data, without waiting for a probe"
    );
    assert!(got == data, "in order");
    assert!(
        most_queued_later <= 4096,
        "{most_queued_later} bytes queued"
    );
    // Back to the whole buffer.
    p.server.set_recv_cap(s, None).unwrap();
    assert_eq!(p.server.buffer_sizes(s).unwrap().0, 16 << 10);
}

/// The windows of the TCP segments (not SYNs) waiting on the client's side.
fn windows(p: &Pair) -> Vec<u32> {
    p.client
        .link()
        .waiting()
        .iter()
        .filter(|f| f[12..14] == [0x08, 0x00] && f[14 + 9] == 6)
        .map(|f| &f[14 + usize::from(f[14] & 0xf) * 4..])
        .filter(|t| t[13] & 0x02 == 0)
        .map(|t| u32::from(u16::from_be_bytes([t[14], t[15]])))
        .collect()
}

#[test]
fn tcp_window_clamp_bounds_every_window_offered() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    p.server.set_window_clamp(s, Some(3000)).unwrap();
    assert_eq!(p.server.window_clamp(s).unwrap(), 3000);
    let data = vec![b'w'; 60_000];
    let (mut sent, mut got) = (0, 0);
    let mut buf = vec![0u8; 65536];
    // The window offered before the clamp is kept (its edge never moves back); once a window
    // within the clamp was offered, none is larger.
    let mut clamped = false;
    let mut windows_seen = 0;
    for _ in 0..5000 {
        if sent < data.len() {
            sent += p.client.send(c, &data[sent..]).unwrap_or(0);
        }
        p.now += Duration::from_micros(10);
        p.client.poll(p.now);
        p.now += Duration::from_micros(10);
        p.server.poll(p.now);
        for w in windows(&p) {
            assert!(!clamped || w <= 3000, "a window of {w} after the clamp");
            clamped |= w <= 3000;
            windows_seen += 1;
        }
        got += p.server.recv(s, &mut buf).unwrap_or(0);
        if got == data.len() {
            break;
        }
    }
    assert_eq!(got, data.len());
    assert!(clamped && windows_seen > 10, "{windows_seen} windows seen");
    p.server.set_window_clamp(s, None).unwrap();
    assert_eq!(p.server.window_clamp(s).unwrap(), 16 << 10);
}

/// A connection (client's end, server's end) whose server end has a 64 KiB send buffer and
/// TCP_NOTSENT_LOWAT `lowat`; the client has 16 KiB and reads nothing.
fn with_notsent_lowat(lowat: usize) -> (Pair, crate::stack::ConnId, crate::stack::ConnId) {
    let mut p = Pair::new();
    let big = TcpOptions {
        sndbuf: 64 << 10,
        ..opts()
    };
    p.server.listen(7777, 16, big).unwrap();
    let c = p
        .client
        .connect(p.now, p.server_addr(7777), opts())
        .unwrap();
    p.run();
    let (s, _) = p.server.accept(7777).unwrap();
    p.server.set_notsent_lowat(s, Some(lowat)).unwrap();
    (p, c, s)
}

#[test]
fn notsent_lowat_limits_what_waits_unsent() {
    let (mut p, c, s) = with_notsent_lowat(1000);
    // The client does not read: its 16 KiB window fills, then at most 1,000 bytes wait unsent.
    for _ in 0..10 {
        while p.server.send(s, &[b'n'; 4096]).is_ok() {}
        p.run();
    }
    let i = p.server.tcp_info(s).unwrap();
    assert!(i.notsent_bytes <= 1000, "{} unsent", i.notsent_bytes);
    assert!(i.send_queue < 20_000, "{} queued", i.send_queue);
    // A send takes no more than what keeps fewer than 1,000 bytes unsent (Linux: writable
    // while fewer than the mark wait).
    let took = p.server.send(s, &[b'n'; 4096]).unwrap_or(0);
    assert!(
        took + i.notsent_bytes as usize <= 1000,
        "{took} more with {} unsent",
        i.notsent_bytes
    );
    // The client reads: room again.
    let mut buf = vec![0u8; 65536];
    while p.client.recv(c, &mut buf).unwrap_or(0) > 0 {}
    p.run();
    assert!(p.server.readiness(s).unwrap().writable());
}

#[test]
fn defer_accept_queues_a_connection_at_its_first_data_or_after_the_time() {
    let mut p = Pair::new();
    let o = TcpOptions {
        defer_accept: Some(std::time::Duration::from_secs(5)),
        ..opts()
    };
    p.server.listen(7777, 16, o).unwrap();
    let quiet = p
        .client
        .connect(p.now, p.server_addr(7777), opts())
        .unwrap();
    let talker = p
        .client
        .connect(p.now, p.server_addr(7777), opts())
        .unwrap();
    p.run();
    // Both handshakes are done; neither has sent anything: nothing to accept.
    assert_eq!(
        p.client.state(quiet).unwrap(),
        smoltcp::socket::tcp::State::Established
    );
    assert!(p.server.accept(7777).is_err());
    // The first data queues its connection, with the data.
    p.client.send(talker, b"hello").unwrap();
    p.run();
    let (s, _) = p
        .server
        .accept(7777)
        .expect("the connection that sent data");
    let mut buf = [0u8; 16];
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 5);
    assert!(p.server.accept(7777).is_err());
    // The quiet one after 5 s.
    p.advance(Duration::from_millis(4900), Duration::from_millis(100));
    assert!(p.server.accept(7777).is_err());
    p.advance(Duration::from_millis(200), Duration::from_millis(100));
    assert!(p.server.accept(7777).is_ok(), "accepted after the deferral");
}

#[test]
fn a_deferred_connection_reset_before_its_data_is_gone() {
    let mut p = Pair::new();
    let o = TcpOptions {
        defer_accept: Some(std::time::Duration::from_secs(5)),
        ..opts()
    };
    p.server.listen(7777, 16, o).unwrap();
    let c = p
        .client
        .connect(p.now, p.server_addr(7777), opts())
        .unwrap();
    p.run();
    assert_eq!(p.server.connections(), 1);
    p.client.abort(c).unwrap();
    p.run();
    // Freed (its backlog place too), never to be accepted, and no timer of its left behind.
    assert_eq!(p.server.connections(), 0);
    assert!(p.server.accept(7777).is_err());
    p.advance(Duration::from_secs(6), Duration::from_millis(100));
    assert!(p.server.accept(7777).is_err());
    assert!(p.server.next_deadline().is_none_or(|d| d > p.now));
}

#[test]
fn lifting_notsent_lowat_makes_the_connection_writable_at_once() {
    let (mut p, _c, s) = with_notsent_lowat(1000);
    // 1,000 bytes wait unsent (no poll sends them): not writable.
    while p.server.send(s, &[b'n'; 4096]).is_ok() {}
    assert!(!p.server.readiness(s).unwrap().writable());
    let mut ev = Vec::new();
    p.server.take_events(&mut ev);
    ev.clear();
    // The mark lifted: the 64 KiB buffer has room, and a writer waiting for EPOLLOUT hears it
    // at the next poll, without a segment from the peer.
    p.server.set_notsent_lowat(s, None).unwrap();
    p.now += Duration::from_micros(10);
    p.server.poll(p.now);
    p.server.take_events(&mut ev);
    assert!(
        ev.iter()
            .any(|e| matches!(e, crate::stack::Event::Conn(id, r, _) if *id == s && r.writable())),
        "{ev:?}"
    );
}
