//! The Ethernet/ARP layer (net.rs), through a pair of stacks: routing to the gateway, ARP giving
//! up, a neighbour's new MAC.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::time::{Duration, Instant};

use crate::config::parse_cidr;
use crate::link::MemLink;
use crate::stack::tests::{opts, Pair, CLIENT_MAC, SERVER_MAC};
use crate::stack::{SockError, Stack};

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
