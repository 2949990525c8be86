//! The demux (stack/demux.rs): closed ports, a listener's backlog, malformed frames, ICMP echo,
//! data for a closed connection.

use smoltcp::time::Duration;

use super::{opts, Pair, CLIENT_MAC, SERVER_MAC};
use crate::stack::SockError;

#[test]
fn closed_port_resets_and_connect_is_refused() {
    let mut p = Pair::new();
    let c = p.client.connect(p.now, p.server_addr(9), opts()).unwrap();
    p.run();
    assert_eq!(p.server.stats().tcp_rst_sent, 1);
    let mut buf = [0u8; 4];
    // Like Linux: EPOLLERR|EPOLLHUP until the error is read, the error once, then EOF / EPIPE.
    let r = p.client.readiness(c).unwrap();
    assert!(r.error() && r.hup() && r.writable(), "{r:?}");
    assert_eq!(p.client.recv(c, &mut buf), Err(SockError::Refused));
    assert!(!p.client.readiness(c).unwrap().error());
    assert_eq!(p.client.recv(c, &mut buf), Ok(0));
    assert_eq!(p.client.send(c, b"x"), Err(SockError::Pipe));
    assert_eq!(p.client.take_error(c), Ok(None));
}

#[test]
fn syn_burst_beyond_backlog_is_queued_not_reset() {
    let mut p = Pair::new();
    p.server.listen(6379, 4, opts()).unwrap();
    let connect = |p: &mut Pair| {
        p.client
            .connect(p.now, p.server_addr(6379), opts())
            .unwrap()
    };
    // A burst beyond the backlog: half-open connections do not fill it (Linux answers past
    // its SYN queue with a cookie), so all twelve complete and wait in the accept queue.
    let mut clients: Vec<_> = (0..12).map(|_| connect(&mut p)).collect();
    p.run();
    let st = p.server.stats();
    assert_eq!((st.tcp_rst_sent, st.drop_syn_backlog), (0, 0), "{st}");
    assert_eq!(p.server.accept_queue_len(6379), 12);
    // The accept queue is full (more than the backlog wait): new SYNs are dropped, not reset.
    clients.extend((0..3).map(|_| connect(&mut p)));
    p.run();
    let st = p.server.stats();
    assert_eq!(st.tcp_rst_sent, 0);
    assert!(st.drop_syn_backlog >= 3, "{st}");
    assert_eq!(p.server.accept_queue_len(6379), 12);
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
    assert_eq!(accepted, 15);
    for c in clients {
        assert_eq!(
            p.client.state(c).unwrap(),
            smoltcp::socket::tcp::State::Established
        );
    }
    assert_eq!(p.server.stats().tcp_rst_sent, 0);
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
    // IPv4 headers that are not what they say, each with a right checksum over what it says
    // is its header: an IHL below 5, version 6, a total length below the header's or beyond
    // the frame. Then fragments: more to come, or an offset.
    let ipv4 = |p: &mut Pair, vihl: u8, total: u16, frag: u16| {
        let mut f = vec![0u8; 54];
        f[..6].copy_from_slice(&mac);
        f[6..12].copy_from_slice(&CLIENT_MAC);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let [t0, t1] = total.to_be_bytes();
        let [f0, f1] = frag.to_be_bytes();
        f[14..34].copy_from_slice(&[
            vihl, 0, t0, t1, 0, 1, f0, f1, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ]);
        let hl = usize::from(vihl & 0x0f) * 4;
        crate::csum::fill_ipv4_header_checksum(&mut f[14..14 + hl]);
        inject(p, f);
    };
    ipv4(&mut p, 0x44, 40, 0);
    ipv4(&mut p, 0x65, 40, 0);
    ipv4(&mut p, 0x45, 19, 0);
    ipv4(&mut p, 0x45, 41, 0);
    ipv4(&mut p, 0x45, 40, 0x2000);
    ipv4(&mut p, 0x45, 40, 0x0001);
    let st = p.server.stats();
    assert_eq!(st.drop_malformed, 6, "{st}");
    assert_eq!(st.drop_fragment, 2, "{st}");
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

/// A registry of other processes' connections, for the tests: `theirs` are elsewhere.
struct Others {
    theirs: Vec<u64>,
    opened: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    /// Whether another process may take over a port this one gives up.
    takers: bool,
}

impl crate::steer::FlowRegistry for Others {
    fn opened(&mut self, key: u64) {
        self.opened.lock().unwrap().push(key);
    }
    fn closed(&mut self, key: u64) {
        self.opened.lock().unwrap().retain(|&k| k != key);
    }
    fn elsewhere(&mut self, key: u64) -> bool {
        self.theirs.contains(&key)
    }
    fn others_may_listen(&self) -> bool {
        self.takers
    }
}

#[test]
fn syns_of_buckets_another_process_takes_are_left_to_it() {
    use crate::steer::Steering;
    let mut p = Pair::new();
    p.server.listen(6379, 16, opts()).unwrap();
    p.server.set_steering(Steering { syn: 0, rst: 0 }, p.now);
    let c = p
        .client
        .connect(p.now, p.server_addr(6379), opts())
        .unwrap();
    p.advance(Duration::from_millis(50), Duration::from_millis(1));
    let st = p.server.stats();
    assert!(st.steered_away >= 1, "{st}");
    assert_eq!((st.conns_opened, st.tcp_rst_sent), (0, 0), "{st}");
    assert_eq!(
        p.client.state(c).unwrap(),
        smoltcp::socket::tcp::State::SynSent
    );
    // Its bucket becomes this stack's: the SYN's retransmission opens the connection.
    p.server.set_steering(Steering::ALONE, p.now);
    p.advance(Duration::from_millis(1500), Duration::from_millis(1));
    assert_eq!(
        p.client.state(c).unwrap(),
        smoltcp::socket::tcp::State::Established
    );
}

/// A server stack among processes sharing its device (`takers`: whether another may take a
/// port over) that listened on 6379 and stopped; a client's connect to it, 50 ms later.
fn syn_for_a_port_given_up(takers: bool) -> (Pair, crate::ConnId) {
    let mut p = Pair::new();
    p.server.set_flow_registry(Box::new(Others {
        theirs: Vec::new(),
        opened: Default::default(),
        takers,
    }));
    p.server.listen(6379, 16, opts()).unwrap();
    p.server.unlisten(p.now, 6379);
    let c = p
        .client
        .connect(p.now, p.server_addr(6379), opts())
        .unwrap();
    p.advance(Duration::from_millis(50), Duration::from_millis(1));
    (p, c)
}

/// A port this process stopped listening on when no other process may take it over (a
/// process alone on its device): a SYN is refused, as Linux refuses a port nobody listens on.
#[test]
fn a_syn_for_a_port_given_up_with_nobody_to_take_it_is_refused() {
    let (mut p, c) = syn_for_a_port_given_up(false);
    assert_eq!(p.server.stats().tcp_rst_sent, 1);
    assert_eq!(p.client.take_error(c), Ok(Some(crate::SockError::Refused)));
}

/// A port this process stopped listening on while it shares the device with others (nginx's
/// old worker on reload): a SYN that still reaches it is dropped, not refused, and its
/// retransmission finds the process that took the flows over.
#[test]
fn a_syn_for_a_port_given_up_among_processes_is_dropped_not_refused() {
    use crate::steer::Steering;
    let (mut p, c) = syn_for_a_port_given_up(true);
    assert_eq!(p.server.stats().tcp_rst_sent, 0);
    assert_eq!(
        p.client.state(c).unwrap(),
        smoltcp::socket::tcp::State::SynSent
    );
    // Listening again (here: the process that took over): the retransmitted SYN is served.
    p.server.set_steering(Steering::ALONE, p.now);
    p.server.listen(6379, 16, opts()).unwrap();
    p.advance(Duration::from_millis(1500), Duration::from_millis(1));
    assert_eq!(
        p.client.state(c).unwrap(),
        smoltcp::socket::tcp::State::Established
    );
}

#[test]
fn an_unknown_segment_is_reset_only_if_no_other_process_has_its_connection() {
    use crate::steer::Steering;
    for (theirs, resets) in [(true, 0), (false, 1)] {
        let mut p = Pair::new();
        p.server.listen(6379, 16, opts()).unwrap();
        let opened = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let c = p
            .client
            .connect(p.now, p.server_addr(6379), opts())
            .unwrap();
        p.run();
        let (id, _) = p.server.accept(6379).unwrap();
        let key = {
            p.server.set_flow_registry(Box::new(Others {
                theirs: Vec::new(),
                opened: opened.clone(),
                takers: true,
            }));
            let keys = opened.lock().unwrap().clone();
            assert_eq!(keys.len(), 1, "the open connection is registered");
            keys[0]
        };
        // The server forgets the connection (another process has it, or nobody does).
        p.server.abort(id).unwrap();
        let _ = p.server.close(id);
        p.now += Duration::from_millis(1);
        p.server.poll(p.now);
        p.client.link().discard();
        assert!(opened.lock().unwrap().is_empty(), "freed: unregistered");
        p.server.set_flow_registry(Box::new(Others {
            theirs: if theirs { vec![key] } else { Vec::new() },
            opened: opened.clone(),
            takers: true,
        }));
        p.server.set_steering(Steering { syn: 0, rst: 0 }, p.now);
        let before = p.server.stats().tcp_rst_sent;
        p.client.send(c, b"PING\r\n").unwrap();
        p.run();
        assert_eq!(
            p.server.stats().tcp_rst_sent - before,
            resets,
            "theirs: {theirs}"
        );
    }
}

#[test]
fn a_connection_nobody_has_is_reset_at_its_peers_answer_to_a_probe() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    let local = p.client.local_addr(c).unwrap();
    // The server loses the connection silently (another process had it, and died).
    p.server.abort(s).unwrap();
    let _ = p.server.close(s);
    p.now += Duration::from_millis(1);
    p.server.poll(p.now);
    p.client.link().discard();
    assert_eq!(
        p.client.state(c).unwrap(),
        smoltcp::socket::tcp::State::Established
    );
    let key = (u64::from(u32::from(*local.ip())) << 32) | (u64::from(local.port()) << 16) | 7777;
    p.server.provoke_reset(p.now, key);
    p.run();
    assert_eq!(
        p.server.stats().tcp_rst_sent,
        1,
        "{}\n{}",
        p.server.stats(),
        p.client.stats()
    );
    assert_eq!(
        p.client.state(c).unwrap(),
        smoltcp::socket::tcp::State::Closed
    );
}

/// A process that shares the device connects out: each connection's local port puts its flow
/// in a bucket the process owns (the device delivers it those buckets' frames), and a process
/// that owns none cannot connect (EADDRNOTAVAIL).
#[test]
fn outgoing_connections_take_local_ports_in_the_buckets_the_process_owns() {
    use crate::steer::{flow_bucket, Steering};
    let mut p = Pair::new();
    p.server.listen(6379, 64, opts()).unwrap();
    let own = (1 << 3) | (1 << 17) | (1 << 30);
    p.client
        .set_steering(Steering { syn: own, rst: own }, p.now);
    let server = p.server_addr(6379);
    let mut buckets = 0u32;
    for _ in 0..12 {
        let c = p.client.connect(p.now, server, opts()).unwrap();
        p.run();
        assert_eq!(
            p.client.state(c).unwrap(),
            smoltcp::socket::tcp::State::Established
        );
        let local = p.client.local_addr(c).unwrap().port();
        buckets |= 1 << flow_bucket(*server.ip(), server.port(), local);
    }
    assert_eq!(
        buckets, own,
        "every connection in an owned bucket, each of them used"
    );
    p.client.set_steering(Steering { syn: 0, rst: 0 }, p.now);
    assert_eq!(
        p.client.connect(p.now, server, opts()),
        Err(SockError::AddrNotAvail)
    );
}

/// The local ports connect() picks: inside the system's range, never a reserved one, every
/// free one used before EADDRNOTAVAIL; spread rather than in sequence (a peer cannot guess
/// the next one from the last).
#[test]
fn ephemeral_ports_come_from_the_range_spread_and_never_reserved() {
    use crate::config::LocalPorts;
    let mut p = Pair::new();
    p.server.listen(6379, 64, opts()).unwrap();
    let server = p.server_addr(6379);
    p.client.set_local_ports(LocalPorts {
        low: 40000,
        high: 40009,
        reserved: vec![(40003, 40003), (40006, 40007)],
    });
    let mut ports = Vec::new();
    for _ in 0..7 {
        let c = p.client.connect(p.now, server, opts()).unwrap();
        ports.push(p.client.local_addr(c).unwrap().port());
    }
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [40000, 40001, 40002, 40004, 40005, 40008, 40009],
        "{ports:?}"
    );
    assert_eq!(
        p.client.connect(p.now, server, opts()),
        Err(SockError::AddrNotAvail)
    );
    // Another peer may use the same ports.
    assert!(p.client.connect(p.now, p.server_addr(6380), opts()).is_ok());

    // Linux's default range: successive connections to one peer are not consecutive ports.
    let mut p = Pair::new();
    p.server.listen(6379, 64, opts()).unwrap();
    let mut last: Option<u16> = None;
    for _ in 0..20 {
        let c = p.client.connect(p.now, server, opts()).unwrap();
        let port = p.client.local_addr(c).unwrap().port();
        assert!((32768..=60999).contains(&port), "{port}");
        if let Some(l) = last {
            assert!(port.abs_diff(l) > 1, "{l} then {port}");
        }
        last = Some(port);
    }
}

/// A local port whose connection to a peer waits out TIME-WAIT is not used again for that peer
/// (Linux's connect() skips it too), but is for another.
#[test]
fn a_port_in_time_wait_is_not_reused_for_the_same_peer() {
    let mut p = Pair::new();
    p.server.listen(6380, 16, opts()).unwrap();
    let (c, s) = p.connected(opts());
    let local = p.client.local_addr(c).unwrap().port();
    p.client.close(c).unwrap();
    p.run();
    p.server.close(s).unwrap();
    p.run();
    let again = p
        .client
        .connect_from(p.now, p.server_addr(7777), Some(local), opts());
    assert_eq!(again, Err(SockError::AddrNotAvail));
    let other = p
        .client
        .connect_from(p.now, p.server_addr(6380), Some(local), opts())
        .unwrap();
    p.run();
    assert_eq!(
        p.client.state(other).unwrap(),
        smoltcp::socket::tcp::State::Established
    );
}

/// A connect() to an address of the subnet whose ARP nobody answers fails with EHOSTUNREACH
/// once the neighbour is given up (3 requests a second apart), as Linux's does: the error is
/// reported once, with the socket in error and hung up.
#[test]
fn a_connect_to_an_address_nobody_has_fails_with_host_unreachable() {
    let mut p = Pair::new();
    let nobody = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 0, 77), 6379);
    let c = p.client.connect(p.now, nobody, opts()).unwrap();
    p.advance(Duration::from_millis(2500), Duration::from_millis(10));
    assert!(
        !p.client.readiness(c).unwrap().error(),
        "not before the third request"
    );
    p.advance(Duration::from_millis(1000), Duration::from_millis(10));
    let r = p.client.readiness(c).unwrap();
    assert!(r.error() && r.hup(), "{r:?}");
    assert_eq!(p.client.take_error(c), Ok(Some(SockError::HostUnreachable)));
    assert_eq!(p.client.take_error(c), Ok(None));
}

/// TCP_SYNCNT: a connect() nobody answers is given up with ETIMEDOUT when Linux would give up
/// after that many SYN retransmissions (0: after the first RTO, 1 s).
#[test]
fn syn_retries_bound_an_unanswered_connect() {
    use crate::stack::conn::syn_timeout_us;
    assert_eq!(
        [0, 1, 6, 8].map(syn_timeout_us),
        [1_000_000, 3_000_000, 127_000_000, 367_000_000]
    );
    let mut p = Pair::new();
    // The server hears nothing (it never polls) once the client knows its address.
    p.server.listen(6379, 4, opts()).unwrap();
    let warm = p
        .client
        .connect(p.now, p.server_addr(6379), opts())
        .unwrap();
    p.run();
    p.client.abort(warm).unwrap();
    p.run();
    let c = p
        .client
        .connect(p.now, p.server_addr(6380), opts())
        .unwrap();
    p.client.set_syn_retries(c, 0).unwrap();
    let end = p.now + Duration::from_millis(900);
    while p.now < end {
        p.now += Duration::from_millis(10);
        p.client.poll(p.now);
    }
    assert_eq!(p.client.take_error(c), Ok(None));
    let end = p.now + Duration::from_millis(200);
    while p.now < end {
        p.now += Duration::from_millis(10);
        p.client.poll(p.now);
    }
    assert_eq!(p.client.take_error(c), Ok(Some(SockError::TimedOut)));
}
