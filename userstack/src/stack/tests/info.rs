//! `Stack::tcp_info`: what getsockopt(TCP_INFO) and TCP_MAXSEG report.

use smoltcp::time::{Duration, Instant};

use super::{opts, stack_on, Pair, CLIENT_MAC, SERVER_MAC};
use crate::link::MemLink;

/// Linux's state numbers (include/net/tcp_states.h).
const ESTABLISHED: u8 = 1;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
const TIME_WAIT: u8 = 6;
const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;

#[test]
fn tcp_info_follows_the_state_the_rtt_and_the_queues() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    let i = p.server.tcp_info(s).unwrap();
    assert_eq!(i.state, ESTABLISHED);
    assert_eq!(p.client.tcp_info(c).unwrap().state, ESTABLISHED);
    // The handshake is the first RTT sample (the SYN-ACK's ACK), as on Linux; the RTO has
    // its 200 ms floor.
    assert!(i.srtt_us > 0 && i.rttvar_us > 0, "{i:?}");
    assert_eq!(i.rto_us, 200_000, "{i:?}");
    // Full segments carry 1448 bytes beside the timestamp option; the largest segment
    // received is assumed to be 536 bytes until a larger one comes (Linux's rcv_mss).
    assert_eq!(
        (i.snd_mss, i.rcv_mss, i.advmss, i.pmtu),
        (1448, 536, 1460, 1500)
    );
    assert_eq!(i.total_retrans, 0);
    assert_eq!(i.rcv_wnd, 16 << 10);

    // Queued, not sent: not-sent bytes; sent, not acknowledged: unacknowledged ones.
    p.server.send(s, &[7u8; 100]).unwrap();
    let i = p.server.tcp_info(s).unwrap();
    assert_eq!(
        (i.send_queue, i.notsent_bytes, i.unacked_bytes),
        (100, 100, 0)
    );
    p.now += Duration::from_micros(10);
    p.server.poll(p.now);
    let i = p.server.tcp_info(s).unwrap();
    assert_eq!((i.send_queue, i.notsent_bytes), (100, 0));
    assert_eq!((i.unacked_bytes, i.unacked_segs), (100, 1));
    p.run();
    let i = p.server.tcp_info(s).unwrap();
    assert_eq!((i.send_queue, i.unacked_bytes, i.unacked_segs), (0, 0, 0));
    assert!(i.srtt_us > 0 && i.rttvar_us > 0, "{i:?}");
    assert!(i.rto_us >= 200_000 && i.rto_us < 1_000_000, "{i:?}");
    let ci = p.client.tcp_info(c).unwrap();
    assert_eq!(ci.recv_queue, 100);
    // The window is what the buffer has room for, in the window scale's steps.
    assert!(
        ci.rcv_wnd <= (16 << 10) - 100 && ci.rcv_wnd + 128 > (16 << 10) - 100,
        "{ci:?}"
    );
    assert!(ci.srtt_us > 0, "the client timed its SYN: {ci:?}");

    // The server closes first: FIN-WAIT-1, FIN-WAIT-2 once its FIN is acknowledged; the
    // client is in CLOSE-WAIT, then LAST-ACK; the server ends in TIME-WAIT.
    p.server.shutdown_write(s).unwrap();
    p.now += Duration::from_micros(10);
    p.server.poll(p.now);
    assert_eq!(p.server.tcp_info(s).unwrap().state, FIN_WAIT1);
    p.run();
    assert_eq!(p.server.tcp_info(s).unwrap().state, FIN_WAIT2);
    assert_eq!(p.client.tcp_info(c).unwrap().state, CLOSE_WAIT);
    p.client.shutdown_write(c).unwrap();
    p.now += Duration::from_micros(10);
    p.client.poll(p.now);
    assert_eq!(p.client.tcp_info(c).unwrap().state, LAST_ACK);
    p.run();
    assert_eq!(p.server.tcp_info(s).unwrap().state, TIME_WAIT);
}

#[test]
fn tcp_info_reports_the_negotiated_mss() {
    // The client's MTU is 1000: its SYN announces an MSS of 960, which the server sends with
    // (948 bytes of payload beside the timestamp option).
    let (a, mut b) = MemLink::pair(SERVER_MAC, CLIENT_MAC);
    b.set_ip_mtu(1000);
    let now = Instant::from_secs(1);
    let mut p = Pair {
        server: stack_on(a, "198.18.0.2/24", now),
        client: stack_on(b, "198.18.0.1/24", now),
        now,
    };
    let (c, s) = p.connected(opts());
    let i = p.server.tcp_info(s).unwrap();
    assert_eq!((i.snd_mss, i.rcv_mss, i.advmss), (948, 536, 1460), "{i:?}");
    // The client's own MSS is the smaller one: the server's 1460 does not raise it.
    let i = p.client.tcp_info(c).unwrap();
    assert_eq!((i.snd_mss, i.rcv_mss, i.advmss), (948, 536, 960), "{i:?}");

    // The server really sends segments of at most 948 bytes: 3000 bytes in 4 segments, where
    // an MSS of 1460 would take 3.
    p.server.send(s, &[1u8; 3000]).unwrap();
    p.now += Duration::from_micros(10);
    p.server.poll(p.now);
    let i = p.server.tcp_info(s).unwrap();
    assert_eq!(i.unacked_bytes, 3000, "{i:?}");
    assert_eq!(i.unacked_segs, 4);
    assert_eq!(p.client.link().pending(), i.unacked_segs as usize);
}

#[test]
fn tcp_info_counts_retransmissions() {
    let mut p = Pair::new();
    let (c, s) = p.connected(opts());
    p.server.send(s, b"lost once").unwrap();
    p.now += Duration::from_micros(10);
    p.server.poll(p.now);
    assert_eq!(p.client.link().discard(), 1, "the data segment is lost");
    assert_eq!(p.server.tcp_info(s).unwrap().total_retrans, 0);
    // The retransmission timeout (1 s: no RTT sample yet) sends it again.
    p.advance(Duration::from_millis(1500), Duration::from_millis(1));
    p.run();
    let i = p.server.tcp_info(s).unwrap();
    assert!(i.total_retrans >= 1, "{i:?}");
    assert_eq!(i.unacked_bytes, 0);
    let mut buf = [0u8; 32];
    assert_eq!(p.client.recv(c, &mut buf), Ok(9));
}
