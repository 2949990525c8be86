//! Stack logic over an in-memory cable: two stacks talk TCP to each other. The same code runs
//! over DPDK devices in the integration tests (tests/ at the workspace root).

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::time::{Duration, Instant};

use crate::config::{parse_cidr, CongestionControl};
use crate::link::MemLink;
use crate::stack::{ConnId, Event, SockError, Stack, TcpOptions};

pub(crate) const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub(crate) const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

pub(crate) fn opts() -> TcpOptions {
    TcpOptions {
        nodelay: true,
        keepalive: None,
        rcvbuf: 16 << 10,
        sndbuf: 16 << 10,
        ack_delay: None,
        cc: CongestionControl::Reno,
    }
}

/// A stack with address `cidr` and the test options on one end of a cable.
pub(crate) fn stack_on(link: MemLink, cidr: &str, now: Instant) -> Stack<MemLink> {
    Stack::with_link(
        link,
        parse_cidr("t", cidr).unwrap(),
        None,
        None,
        opts(),
        now,
    )
}

struct Pair {
    server: Stack<MemLink>,
    client: Stack<MemLink>,
    now: Instant,
}

impl Pair {
    fn new() -> Pair {
        let (a, b) = MemLink::pair(SERVER_MAC, CLIENT_MAC);
        let now = Instant::from_secs(1);
        Pair {
            server: stack_on(a, "198.18.0.2/24", now),
            client: stack_on(b, "198.18.0.1/24", now),
            now,
        }
    }

    /// Polls both sides until neither has work, advancing time by `step` each round.
    fn settle(&mut self, step: Duration) {
        for _ in 0..10_000 {
            self.now += step;
            let a = self.server.poll(self.now);
            let b = self.client.poll(self.now);
            if !a && !b && self.server.link().pending() == 0 && self.client.link().pending() == 0 {
                return;
            }
        }
        panic!("the stacks never settled");
    }

    /// Polls both sides for `total` of simulated time, in `step`s.
    fn advance(&mut self, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.now += step;
            self.server.poll(self.now);
            self.client.poll(self.now);
        }
    }

    fn run(&mut self) {
        self.settle(Duration::from_micros(10));
    }

    /// A connection from the client to the server's port 7777, both ends with `o`, accepted:
    /// (client's end, server's end). Pending events are taken.
    fn connected(&mut self, o: TcpOptions) -> (ConnId, ConnId) {
        self.server.listen(7777, 16, o).unwrap();
        let c = self
            .client
            .connect(self.now, self.server_addr(7777), o)
            .unwrap();
        self.run();
        let (s, _) = self.server.accept(7777).unwrap();
        let mut ev = Vec::new();
        self.server.take_events(&mut ev);
        (c, s)
    }

    fn server_addr(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), port)
    }
}

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
    assert!(p.server.readiness(s).unwrap().readable);
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
    assert!(p.server.readiness(s).unwrap().rdhup);
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
fn closed_port_resets_and_connect_is_refused() {
    let mut p = Pair::new();
    let c = p.client.connect(p.now, p.server_addr(9), opts()).unwrap();
    p.run();
    assert_eq!(p.server.stats().tcp_rst_sent, 1);
    let mut buf = [0u8; 4];
    // Like Linux: EPOLLERR|EPOLLHUP until the error is read, the error once, then EOF / EPIPE.
    let r = p.client.readiness(c).unwrap();
    assert!(r.error && r.hup && r.writable, "{r:?}");
    assert_eq!(p.client.recv(c, &mut buf), Err(SockError::Refused));
    assert!(!p.client.readiness(c).unwrap().error);
    assert_eq!(p.client.recv(c, &mut buf), Ok(0));
    assert_eq!(p.client.send(c, b"x"), Err(SockError::Pipe));
    assert_eq!(p.client.take_error(c), Ok(None));
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
    assert!(p.server.readiness(s).unwrap().error);
    assert_eq!(p.server.take_error(s), Ok(Some(SockError::Reset)));
    assert_eq!(p.server.take_error(s), Ok(None));
    assert_eq!(p.server.recv(s, &mut buf), Ok(0));
    assert_eq!(p.server.send(s, b"x"), Err(SockError::Pipe));
    let r = p.server.readiness(s).unwrap();
    assert!(r.hup && r.readable && !r.error, "{r:?}");
}

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
fn syn_burst_beyond_backlog_is_queued_not_reset() {
    let mut p = Pair::new();
    p.server.listen(6379, 4, opts()).unwrap();
    let clients: Vec<_> = (0..12)
        .map(|_| {
            p.client
                .connect(p.now, p.server_addr(6379), opts())
                .unwrap()
        })
        .collect();
    p.run();
    let st = p.server.stats();
    assert_eq!(st.tcp_rst_sent, 0);
    assert!(st.drop_syn_backlog >= 8, "{st}");
    assert_eq!(p.server.accept_queue_len(6379), 4);
    // Accepting makes room; the clients' SYN retransmissions (1 s RTO) get in.
    let mut accepted = 0;
    for _ in 0..80 {
        while p.server.accept(6379).is_ok() {
            accepted += 1;
        }
        p.advance(Duration::from_millis(100), Duration::from_millis(1));
    }
    while p.server.accept(6379).is_ok() {
        accepted += 1;
    }
    assert_eq!(accepted, 12);
    for c in clients {
        assert_eq!(
            p.client.state(c).unwrap(),
            smoltcp::socket::tcp::State::Established
        );
    }
    assert_eq!(p.server.stats().tcp_rst_sent, 0);
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

#[test]
fn malformed_frames_are_counted_and_dropped() {
    let mut p = Pair::new();
    p.server.listen(7, 4, opts()).unwrap();
    let mac = SERVER_MAC;
    let inject = |p: &mut Pair, f: Vec<u8>| {
        p.server.link().inject(f);
        p.now += Duration::from_micros(1);
        p.server.poll(p.now);
    };
    // Too short.
    inject(&mut p, vec![1, 2, 3]);
    // IPv4 with a truncated header.
    let mut f = Vec::new();
    f.extend_from_slice(&mac);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40]);
    inject(&mut p, f.clone());
    // A TCP SYN with a wrong checksum.
    let mut syn = vec![0u8; 54];
    syn[..6].copy_from_slice(&mac);
    syn[6..12].copy_from_slice(&CLIENT_MAC);
    syn[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut syn[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
    ]);
    let mut ipp = smoltcp::wire::Ipv4Packet::new_unchecked(&mut syn[14..34]);
    ipp.fill_checksum();
    syn[34..54].copy_from_slice(&[
        0x30, 0x39, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0xde, 0xad, 0, 0,
    ]);
    inject(&mut p, syn);
    // Unknown EtherType, and a frame for another MAC.
    let mut v6 = f.clone();
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    inject(&mut p, v6);
    let mut other = f;
    other[0] = 0x04;
    inject(&mut p, other);
    let st = p.server.stats();
    assert_eq!(st.drop_malformed, 2, "{st}");
    assert_eq!(st.drop_bad_checksum, 1, "{st}");
    assert_eq!(st.drop_unsupported, 1, "{st}");
    assert_eq!(st.drop_not_ours, 1, "{st}");
    assert_eq!(p.server.connections(), 0);
    assert_eq!(st.tx_frames, 0, "nothing answered a bad frame");
}

#[test]
fn icmp_echo_is_answered() {
    let mut p = Pair::new();
    // Resolve the client first via a TCP exchange's ARP, then ping from a raw frame.
    p.server.listen(1, 1, opts()).unwrap();
    p.client.connect(p.now, p.server_addr(1), opts()).unwrap();
    p.run();
    let mut f = vec![0u8; 14 + 28];
    f[..6].copy_from_slice(&SERVER_MAC);
    f[6..12].copy_from_slice(&CLIENT_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14..34].copy_from_slice(&[
        0x45, 0, 0, 28, 0, 2, 0, 0, 64, 1, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
    ]);
    smoltcp::wire::Ipv4Packet::new_unchecked(&mut f[14..34]).fill_checksum();
    f[34..42].copy_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
    let ck = !ones_sum(&f[34..42]);
    f[36..38].copy_from_slice(&ck.to_be_bytes());
    let before = p.server.stats().tx_frames;
    p.server.link().inject(f);
    p.now += Duration::from_micros(1);
    p.server.poll(p.now);
    assert_eq!(p.server.stats().tx_frames, before + 1);
}

fn ones_sum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
fn off_subnet_peers_go_through_the_gateway() {
    // The client routes 198.19.0.0/16 via the server's address, its gateway: it must resolve
    // the gateway's MAC and send the SYN there (the server, not being 198.19.7.7, drops it).
    let (a, b) = MemLink::pair(SERVER_MAC, CLIENT_MAC);
    let mut now = Instant::from_secs(1);
    let mut server = Stack::with_link(
        a,
        parse_cidr("t", "198.18.0.2/24").unwrap(),
        None,
        None,
        opts(),
        now,
    );
    let gw = Ipv4Addr::new(198, 18, 0, 2);
    let mut client = Stack::with_link(
        b,
        parse_cidr("t", "198.18.0.1/24").unwrap(),
        None,
        Some(gw),
        opts(),
        now,
    );
    client
        .connect(
            now,
            SocketAddrV4::new(Ipv4Addr::new(198, 19, 7, 7), 80),
            opts(),
        )
        .unwrap();
    for _ in 0..10 {
        now += Duration::from_micros(10);
        client.poll(now);
        server.poll(now);
    }
    assert_eq!(client.neighbor(gw), Some(SERVER_MAC), "gateway resolved");
    assert_eq!(client.stats().arp_requests_sent, 1);
    assert!(
        server.stats().drop_not_ours >= 1,
        "SYN for 198.19.7.7 reached the gateway's MAC"
    );
}

#[test]
fn off_subnet_without_gateway_is_unreachable() {
    let mut p = Pair::new();
    let r = p.client.connect(
        p.now,
        SocketAddrV4::new(Ipv4Addr::new(198, 19, 7, 7), 80),
        opts(),
    );
    assert_eq!(r, Err(SockError::NetUnreachable));
}

#[test]
fn unanswered_arp_gives_up_and_counts() {
    // Nobody answers for 198.18.0.9: three requests a second apart, then the queued SYN is
    // dropped and counted.
    let mut p = Pair::new();
    p.client
        .connect(
            p.now,
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 9), 80),
            opts(),
        )
        .unwrap();
    p.advance(Duration::from_millis(2900), Duration::from_millis(10));
    let st = p.client.stats();
    assert_eq!(st.arp_requests_sent, 3, "{st}");
    assert_eq!(st.drop_arp_unresolved, 0, "still waiting: {st}");
    p.advance(Duration::from_millis(200), Duration::from_millis(10));
    let st = p.client.stats();
    assert!(
        st.drop_arp_unresolved >= 1,
        "gave up after the third request: {st}"
    );
    assert_eq!(p.client.neighbor(Ipv4Addr::new(198, 18, 0, 9)), None);
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

#[test]
fn data_after_close_resets_like_linux() {
    // The server reads everything and closes; the client keeps writing: the server must reset
    // (an orphaned connection has no reader), not advertise a shrinking window forever.
    let mut p = Pair::new();
    p.server.listen(11, 4, opts()).unwrap();
    let c = p.client.connect(p.now, p.server_addr(11), opts()).unwrap();
    p.run();
    let (s, _) = p.server.accept(11).unwrap();
    p.server.close(s).unwrap();
    p.run();
    p.client.send(c, b"more data after the close").unwrap();
    p.run();
    assert_eq!(p.server.connections(), 0);
    let mut buf = [0u8; 8];
    // As Linux's tcp_recvmsg: the pending error is reported before end of stream.
    assert_eq!(p.client.recv(c, &mut buf), Err(SockError::Reset));
    assert_eq!(p.client.recv(c, &mut buf), Ok(0));
}

/// The connection counts by TCP state that the statistics file shows are kept incrementally;
/// they must match the connections' real states through a whole life, on both sides.
#[test]
fn tcp_state_counts_follow_connections() {
    let count = |s: &Stack<MemLink>, name: &str| {
        s.tcp_states()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap()
    };
    let total = |s: &Stack<MemLink>| s.tcp_states().iter().map(|(_, v)| v).sum::<u64>();
    let mut p = Pair::new();
    p.server.listen(7777, 16, opts()).unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            p.client
                .connect(p.now, p.server_addr(7777), opts())
                .unwrap(),
        );
    }
    assert_eq!(count(&p.client, "syn_sent"), 3);
    p.run();
    assert_eq!(count(&p.client, "established"), 3);
    assert_eq!(count(&p.server, "established"), 3);
    // Not accepted yet: the listener's accept queue holds them.
    let l = p.server.listener_stats();
    assert_eq!(l.len(), 1);
    assert_eq!(
        (
            l[0].port,
            l[0].backlog,
            l[0].accept_queue,
            l[0].syn_received
        ),
        (7777, 16, 3, 0)
    );
    let (s0, _) = p.server.accept(7777).unwrap();
    assert_eq!(p.server.listener_stats()[0].accept_queue, 2);

    // The client closes one: FIN-WAIT-2 / CLOSE-WAIT, then the server closes: TIME-WAIT.
    p.client.close(clients[0]).unwrap();
    p.run();
    assert_eq!(count(&p.client, "fin_wait_2"), 1);
    assert_eq!(count(&p.server, "close_wait"), 1);
    p.server.close(s0).unwrap();
    p.run();
    assert_eq!(count(&p.client, "time_wait"), 1);
    assert_eq!(count(&p.client, "established"), 2);
    assert_eq!(total(&p.client), p.client.connections() as u64);
    assert_eq!(total(&p.server), p.server.connections() as u64);
    // TIME-WAIT ends and the connection is freed: it leaves the counts.
    p.advance(Duration::from_secs(11), Duration::from_millis(100));
    assert_eq!(count(&p.client, "time_wait"), 0);
    assert_eq!(total(&p.client), 2);
    assert_eq!(total(&p.server), 2);
}

#[test]
fn a_received_burst_is_acknowledged_once() {
    let mut p = Pair::new();
    let o = TcpOptions {
        rcvbuf: 64 << 10,
        sndbuf: 64 << 10,
        cc: CongestionControl::None,
        ..opts()
    };
    p.server.listen(7777, 16, o).unwrap();
    let c = p.client.connect(p.now, p.server_addr(7777), o).unwrap();
    p.run();
    let (s, _) = p.server.accept(7777).unwrap();

    // 16 KiB leave the client in one poll: a dozen full segments on the server's side.
    let data: Vec<u8> = (0..16 << 10)
        .map(|i: u32| (i * 7 + i / 251) as u8)
        .collect();
    assert_eq!(p.client.send(c, &data).unwrap(), data.len());
    p.now += Duration::from_micros(10);
    p.client.poll(p.now);
    let segments = p.server.link().pending();
    assert!(
        segments >= 8,
        "the client sent only {segments} segments at once"
    );

    // ack_delay None: smoltcp wants an ACK after every segment; the burst gets one.
    let before = p.server.stats().tx_frames;
    p.now += Duration::from_micros(10);
    p.server.poll(p.now);
    assert_eq!(
        p.server.stats().tx_frames - before,
        1,
        "frames the server sent for a burst of {segments} segments"
    );

    p.run();
    let mut got = vec![0u8; data.len() + 1];
    assert_eq!(p.server.recv(s, &mut got).unwrap(), data.len());
    assert_eq!(&got[..data.len()], &data[..]);
    // The ACK covered everything: nothing left in flight, the client's buffer is free.
    assert_eq!(p.client.send(c, &data).unwrap(), data.len());
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
    assert!(!p.server.readiness(s).unwrap().writable);
    p.run();
    p.server.take_events(&mut ev);
    let now = p.server.readiness(s).unwrap();
    assert!(now.writable, "{now:?}");
    let carried: Vec<_> = ev
        .iter()
        .filter_map(|e| match *e {
            Event::Conn(id, r) if id == s => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(carried, vec![now], "{ev:?}");
    let mut buf = [0u8; 4096];
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 4096);
}

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
    for round in 0..20 {
        assert_eq!(p.client.send(c, b"GET k\r\n").unwrap(), 7);
        p.now += step;
        p.client.poll(p.now);
        let entries = p.server.timer_entries();
        p.now += step;
        p.server.poll(p.now); // the request: its ACK may wait 1 ms
        assert_eq!(
            p.server.timer_entries(),
            entries,
            "round {round}: the request added a timer entry"
        );
        assert_eq!(p.server.recv(s, &mut buf).unwrap(), 7);
        p.server.send(s, b"$1\r\nv\r\n").unwrap();
        p.now += step;
        p.server.poll(p.now); // the reply, with the ACK
        assert!(
            p.server.timer_entries() <= entries + 1,
            "round {round}: {entries} -> {} timer entries",
            p.server.timer_entries()
        );
        p.run();
        assert_eq!(p.client.recv(c, &mut buf).unwrap(), 7);
        // Longer than the ACK delay between requests: each request needs a fresh timer.
        p.advance(Duration::from_millis(3), Duration::from_micros(500));
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
    assert!(r.readable && r.rdhup && !r.hup, "{r:?}");
    // Reading the data changes none of that.
    let mut buf = [0u8; 64];
    assert_eq!(p.server.recv(s, &mut buf[..4]).unwrap(), 4);
    assert_eq!(p.server.readiness(s).unwrap(), r);
    p.server.shutdown_write(s).unwrap();
    p.run();
    let r = p.server.readiness(s).unwrap();
    assert!(r.readable && r.rdhup && r.hup, "{r:?}");
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 6);
    assert_eq!(p.server.recv(s, &mut buf).unwrap(), 0);
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
    assert!(p.server.readiness(s).unwrap().writable);
    while p.server.send(s, &half).is_ok() {}
    assert!(!p.server.readiness(s).unwrap().writable);
    p.now += Duration::from_micros(10);
    p.client.poll(p.now); // the client takes the first half and ACKs it at once
    p.now += Duration::from_micros(10);
    p.server.poll(p.now); // the ACK, then the queued rest leaves
    assert!(p.server.readiness(s).unwrap().writable);
    p.server.take_events(&mut ev);
    assert!(
        ev.iter()
            .any(|e| matches!(*e, Event::Conn(id, r) if id == s && r.writable)),
        "no writable event: {ev:?}"
    );
    let mut buf = vec![0u8; 32 << 10];
    assert!(p.client.recv(c, &mut buf).unwrap() > 0);
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

/// A peer that vanished with our data unacknowledged: the connection is given up after
/// ~15 minutes of silence, as Linux does after tcp_retries2, and a writer waiting for
/// EPOLLOUT wakes with an error (ETIMEDOUT). Smoltcp alone retransmitted for ever.
#[test]
fn a_vanished_peer_is_given_up_after_fifteen_minutes() {
    let mut p = Pair::new();
    let (_c, s) = p.connected(opts());
    let chunk = [1u8; 4096];
    while p.server.send(s, &chunk).is_ok() {}
    let mut ev = Vec::new();
    p.server.take_events(&mut ev);
    let start = p.now;
    let failed = server_alone_until(&mut p, Duration::from_secs(1200), |st| {
        st.readiness(s).is_ok_and(|r| r.error)
    })
    .expect("given up within 20 minutes");
    let after = failed - start;
    assert!(
        after >= Duration::from_secs(924) && after <= Duration::from_secs(990),
        "given up after {after}"
    );
    p.server.take_events(&mut ev);
    assert!(
        ev.iter()
            .any(|e| matches!(*e, Event::Conn(id, r) if id == s && r.error && r.hup)),
        "{ev:?}"
    );
    assert_eq!(p.server.send(s, b"x"), Err(SockError::TimedOut));
    assert_eq!(p.server.stats().tcp_timeouts, 1);
    // Given up, still held by the application: no timer left due (a deadline in the past
    // would make every loop poll at once, for as long as the socket stays open).
    p.now += Duration::from_millis(100);
    p.server.poll(p.now);
    assert!(
        p.server.next_deadline().is_none_or(|d| d > p.now),
        "{:?} at {}",
        p.server.next_deadline(),
        p.now
    );
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
    assert!(p.server.readiness(s).unwrap().error);
    for _ in 0..10 {
        p.now += Duration::from_secs(100);
        p.server.poll(p.now);
        assert!(
            p.server.next_deadline().is_none_or(|d| d > p.now),
            "{:?} at {}",
            p.server.next_deadline(),
            p.now
        );
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
    assert!(!r.error && !r.writable, "{r:?}");
    assert_eq!(p.server.stats().tcp_timeouts, 0);
}

/// A connect nobody answers (the listener's backlog is full, so its SYNs are dropped) fails
/// with ETIMEDOUT after 127 s, as Linux's does after tcp_syn_retries.
#[test]
fn an_unanswered_connect_times_out() {
    let mut p = Pair::new();
    p.server.listen(7777, 1, opts()).unwrap();
    let _first = p
        .client
        .connect(p.now, p.server_addr(7777), opts())
        .unwrap();
    p.run(); // established, never accepted: the backlog is full
    let c = p
        .client
        .connect(p.now, p.server_addr(7777), opts())
        .unwrap();
    let start = p.now;
    let end = p.now + Duration::from_secs(200);
    while p.now < end && !p.client.readiness(c).unwrap().error {
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

/// An ARP request from `sha`/`spa` for `tpa`, broadcast.
fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 28];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa);
    f[38..42].copy_from_slice(&tpa);
    f
}

/// Connections cache their resolved next hop (net.rs, `HopCache`); a neighbour's new MAC must
/// reach the next segment all the same, and the old one none.
#[test]
fn a_peers_new_mac_is_used_by_its_connections_next_segment() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    let mut buf = [0u8; 16];
    assert_eq!(p.server.send(s, b"one").unwrap(), 3);
    p.run();
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 3);
    // The client's address moved to another MAC (a failover): the server learns it from ARP.
    let moved = [2, 0, 0, 0, 0, 0x99];
    let (client_ip, server_ip) = ([198, 18, 0, 1], [198, 18, 0, 2]);
    p.server
        .link()
        .inject(arp_request(moved, client_ip, server_ip));
    p.now += Duration::from_micros(10);
    p.server.poll(p.now);
    // (The server's ARP reply goes to the new MAC too: counted before the segment is.)
    p.client.poll(p.now);
    let lost_before = p.client.stats().drop_not_ours;
    assert_eq!(p.server.send(s, b"two").unwrap(), 3);
    p.now += Duration::from_micros(10);
    p.server.poll(p.now);
    p.client.poll(p.now);
    assert!(
        p.client.stats().drop_not_ours > lost_before,
        "the segment went to the old MAC: {}",
        p.client.stats()
    );
    assert_eq!(p.client.recv(c, &mut buf), Err(SockError::WouldBlock));
    // Back to the real MAC: the retransmission arrives.
    p.server
        .link()
        .inject(arp_request(CLIENT_MAC, client_ip, server_ip));
    p.advance(Duration::from_secs(2), Duration::from_millis(1));
    assert_eq!(p.client.recv(c, &mut buf).unwrap(), 3);
    assert_eq!(&buf[..3], b"two");
}
