//! Passive opens against a scripted, Linux-like client: every segment the client sends is
//! written by the test, every segment the stack answers is inspected. These are the cases a
//! loaded server meets with many clients connecting at once: SYN-ACKs lost or late, SYNs
//! retransmitted while the handshake is half done, SYNs dropped by a full backlog, connections
//! waiting long in the accept queue, idle accepted connections with keepalive (what Redis sets).
//! What Linux does is the reference: the handshake completes, the connection is accepted once,
//! data flows, and the stack never sends a RST to a client it still holds a connection for.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp::State;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::{opts, stack_on, CLIENT_MAC as PEER_MAC, SERVER_MAC};
use crate::link::{Link, MemLink, VecFrame};
use crate::stack::{ConnId, Keepalive, SockError, Stack};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PORT: u16 = 6379;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// A TCP segment the stack sent to the peer.
#[derive(Debug, Clone)]
struct Seg {
    at: Instant,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: Vec<u8>,
}

impl Seg {
    fn is(&self, flags: u8) -> bool {
        self.flags & (SYN | ACK | RST | FIN) == flags
    }
}

/// One client connection's sequence numbers as the scripted peer keeps them.
#[derive(Debug, Clone, Copy)]
struct Client {
    port: u16,
    isn: u32,
    /// Next sequence number to send (after the SYN: isn + 1).
    snd_nxt: u32,
    /// The server's ISN once a SYN-ACK was seen.
    server_isn: Option<u32>,
}

impl Client {
    fn new(port: u16) -> Client {
        let isn = 0x1000_0000u32.wrapping_mul(u32::from(port) % 13 + 1) ^ u32::from(port);
        Client {
            port,
            isn,
            snd_nxt: isn.wrapping_add(1),
            server_isn: None,
        }
    }

    fn rcv_nxt(&self) -> u32 {
        self.server_isn.expect("a SYN-ACK was seen").wrapping_add(1)
    }
}

/// The server stack, and the other end of its cable driven by hand.
struct Bed {
    server: Stack<MemLink>,
    peer: MemLink,
    now: Instant,
    /// Every segment the server sent, in order.
    log: Vec<Seg>,
}

impl Bed {
    fn new(backlog: usize) -> Bed {
        let (a, b) = MemLink::pair(SERVER_MAC, PEER_MAC);
        let now = Instant::from_secs(1);
        let mut bed = Bed {
            server: stack_on(a, "198.18.0.2/24", now),
            peer: b,
            now,
            log: Vec::new(),
        };
        bed.server.listen(PORT, backlog, opts()).unwrap();
        // An ARP request from the peer: the server learns its MAC (and answers).
        bed.send_arp(1, [0; 6]);
        bed.step(Duration::from_micros(10));
        bed
    }

    fn send_arp(&mut self, op: u16, tha: [u8; 6]) {
        let mut f = Vec::with_capacity(42);
        f.extend_from_slice(if op == 1 { &[0xff; 6] } else { &SERVER_MAC });
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&PEER_IP.octets());
        f.extend_from_slice(&tha);
        f.extend_from_slice(&SERVER_IP.octets());
        self.push(f);
    }

    fn push(&mut self, frame: Vec<u8>) {
        self.peer.tx_push(VecFrame(frame));
        self.peer.tx_flush();
    }

    /// Sends one segment from the peer.
    fn send(&mut self, sport: u16, flags: u8, seq: u32, ack: u32, payload: &[u8]) {
        let syn = flags & SYN != 0;
        let tcp = TcpRepr {
            src_port: sport,
            dst_port: PORT,
            control: match flags & (SYN | FIN | RST) {
                SYN => TcpControl::Syn,
                FIN => TcpControl::Fin,
                RST => TcpControl::Rst,
                _ => TcpControl::None,
            },
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: (flags & ACK != 0).then_some(TcpSeqNumber(ack as i32)),
            window_len: if syn { 64240 } else { 502 },
            // What a Linux client offers in its SYN (less timestamps).
            window_scale: syn.then_some(7),
            max_seg_size: syn.then_some(1460),
            sack_permitted: syn,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: PEER_IP,
            dst_addr: SERVER_IP,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut f = vec![0u8; 14 + 20 + tcp.buffer_len()];
        f[..6].copy_from_slice(&SERVER_MAC);
        f[6..12].copy_from_slice(&PEER_MAC);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let caps = ChecksumCapabilities::default();
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[14..34]), &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut f[34..]),
            &IpAddress::Ipv4(PEER_IP),
            &IpAddress::Ipv4(SERVER_IP),
            &caps,
        );
        self.push(f);
    }

    fn syn(&mut self, c: &Client) {
        self.send(c.port, SYN, c.isn, 0, &[]);
    }

    /// The final ACK of the handshake (or any pure ACK).
    fn ack(&mut self, c: &Client) {
        self.send(c.port, ACK, c.snd_nxt, c.rcv_nxt(), &[]);
    }

    fn data(&mut self, c: &mut Client, payload: &[u8]) {
        self.send(c.port, ACK, c.snd_nxt, c.rcv_nxt(), payload);
        c.snd_nxt = c.snd_nxt.wrapping_add(payload.len() as u32);
    }

    /// Advances time by `dt`, polls the server once and collects what it sent.
    fn step(&mut self, dt: Duration) -> Vec<Seg> {
        self.now += dt;
        self.server.poll(self.now);
        let mut frames = Vec::new();
        self.peer.rx_burst(&mut frames, usize::MAX);
        let mut got = Vec::new();
        for f in frames {
            let f = &f.0;
            match u16::from_be_bytes([f[12], f[13]]) {
                0x0806 if u16::from_be_bytes([f[20], f[21]]) == 1 => {
                    let sha: [u8; 6] = f[22..28].try_into().unwrap();
                    self.send_arp(2, sha);
                }
                0x0800 => {
                    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
                    assert_eq!(ip.next_header(), IpProtocol::Tcp, "only TCP expected");
                    let t = TcpPacket::new_checked(ip.payload()).unwrap();
                    assert!(
                        t.verify_checksum(&IpAddress::Ipv4(SERVER_IP), &IpAddress::Ipv4(PEER_IP)),
                        "bad checksum from the server"
                    );
                    let b = t.as_ref();
                    got.push(Seg {
                        at: self.now,
                        sport: t.src_port(),
                        dport: t.dst_port(),
                        flags: b[13],
                        seq: t.seq_number().0 as u32,
                        ack: t.ack_number().0 as u32,
                        payload: t.payload().to_vec(),
                    });
                }
                _ => {}
            }
        }
        self.log.extend(got.iter().cloned());
        got
    }

    /// Polls every `step` for `total`, returning what the server sent meanwhile.
    fn run(&mut self, total: Duration, step: Duration) -> Vec<Seg> {
        let end = self.now + total;
        let mut out = Vec::new();
        while self.now < end {
            out.extend(self.step(step));
        }
        out
    }

    /// Segments the server sent to a client port.
    fn to(&self, c: &Client) -> Vec<&Seg> {
        self.log.iter().filter(|s| s.dport == c.port).collect()
    }

    fn syn_acks(&self, c: &Client) -> Vec<&Seg> {
        self.to(c).into_iter().filter(|s| s.is(SYN | ACK)).collect()
    }

    /// Takes the SYN-ACK the server answered `c` with, and checks it.
    fn learn_syn_ack(&self, c: &mut Client) {
        let sa = *self
            .syn_acks(c)
            .first()
            .unwrap_or_else(|| panic!("no SYN-ACK to port {}: {:?}", c.port, self.log));
        assert_eq!(sa.ack, c.isn.wrapping_add(1), "{sa:?}");
        assert_eq!(sa.sport, PORT);
        c.server_isn = Some(sa.seq);
    }

    /// The client's SYN, and the server's SYN-ACK learnt.
    fn open(&mut self, c: &mut Client) {
        self.syn(c);
        self.step(Duration::from_micros(10));
        self.learn_syn_ack(c);
    }

    /// The client's final ACK; the connection is accepted, exactly once.
    fn establish(&mut self, c: &Client) -> ConnId {
        self.ack(c);
        self.step(Duration::from_micros(10));
        let acc = self.accept_all();
        assert_eq!(acc.len(), 1, "accepted exactly once: {acc:?}");
        assert_eq!(acc[0].1, c.port);
        acc[0].0
    }

    /// Data flows both ways, and no RST was ever sent.
    fn finish(&mut self, id: ConnId, c: &mut Client) {
        self.exchange(id, c);
        let rsts: Vec<&Seg> = self.log.iter().filter(|s| s.flags & RST != 0).collect();
        assert!(rsts.is_empty(), "the server sent RST: {rsts:?}");
        assert_eq!(self.server.stats().tcp_rst_sent, 0);
    }

    /// Accepts everything queued; returns the connections with their peer ports.
    fn accept_all(&mut self) -> Vec<(ConnId, u16)> {
        let mut v = Vec::new();
        while let Ok((id, peer)) = self.server.accept(PORT) {
            v.push((id, peer.port()));
        }
        v
    }

    /// Data both ways on an accepted connection: the client's bytes arrive, the reply is sent.
    fn exchange(&mut self, id: ConnId, c: &mut Client) {
        self.data(c, b"*1\r\n$4\r\nPING\r\n");
        self.step(Duration::from_millis(1));
        let mut buf = [0u8; 64];
        let n = self.server.recv(id, &mut buf).expect("the request arrived");
        assert_eq!(&buf[..n], b"*1\r\n$4\r\nPING\r\n");
        self.server.send(id, b"+PONG\r\n").unwrap();
        let out = self.step(Duration::from_millis(1));
        let pong = out
            .iter()
            .find(|s| s.dport == c.port && s.payload == b"+PONG\r\n")
            .unwrap_or_else(|| panic!("no reply to port {}: {out:?}", c.port));
        assert_eq!(pong.seq, c.rcv_nxt(), "the reply follows the SYN-ACK");
        assert_eq!(pong.ack, c.snd_nxt);
    }
}

/// Linux's tcp_check_req: a retransmitted SYN (same ISN) for a request still in SYN-RECEIVED
/// is answered with the SYN-ACK again at once.
#[test]
fn duplicate_syn_in_syn_received_gets_the_syn_ack_again() {
    let mut b = Bed::new(16);
    let mut c = Client::new(40001);
    b.open(&mut c);
    b.step(Duration::from_millis(300));
    b.syn(&c);
    let out = b.step(Duration::from_micros(10));
    let again: Vec<&Seg> = out.iter().filter(|s| s.is(SYN | ACK)).collect();
    assert_eq!(again.len(), 1, "the duplicate SYN is answered: {out:?}");
    assert_eq!(again[0].seq, c.server_isn.unwrap(), "the same SYN-ACK");
    assert_eq!(b.server.connections(), 1, "one connection for the 4-tuple");
    assert_eq!(b.server.stats().tcp_dup_syn_answered, 1);
    let id = b.establish(&c);
    b.finish(id, &mut c);
}

/// The SYN-ACK is lost; the client retransmits its SYN after 1 s; the handshake completes on
/// the SYN-ACK that answers it.
#[test]
fn lost_syn_ack_then_retransmitted_syn_completes() {
    let mut b = Bed::new(16);
    let mut c = Client::new(40002);
    b.open(&mut c);
    b.log.clear(); // the SYN-ACK never reached the client
    b.run(Duration::from_millis(999), Duration::from_millis(1));
    assert!(
        b.syn_acks(&c).is_empty(),
        "no SYN-ACK retransmission before 1 s"
    );
    b.syn(&c);
    b.run(Duration::from_millis(5), Duration::from_millis(1));
    let sas = b.syn_acks(&c);
    assert!(!sas.is_empty(), "a SYN-ACK answers the retransmitted SYN");
    assert!(
        sas.iter().all(|s| s.seq == c.server_isn.unwrap()),
        "{sas:?}"
    );
    assert!(b.accept_all().is_empty());
    let id = b.establish(&c);
    b.finish(id, &mut c);
}

/// The final ACK comes late (the client, or the path, was slow): the server keeps the request,
/// retransmits its SYN-ACK with Linux's backoff (1 s, then doubling) and completes when the ACK
/// arrives.
#[test]
fn late_final_ack_still_completes_with_linux_like_syn_ack_backoff() {
    let mut b = Bed::new(16);
    let mut c = Client::new(40003);
    b.open(&mut c);
    b.run(Duration::from_secs(20), Duration::from_millis(1));
    let times: Vec<i64> = b.syn_acks(&c).iter().map(|s| s.at.total_millis()).collect();
    // SYN-ACKs at 0, 1, 3, 7, 15 s (Linux: TCP_TIMEOUT_INIT, doubling).
    assert_eq!(times.len(), 5, "{times:?}");
    for (i, w) in times.windows(2).enumerate() {
        let gap = w[1] - w[0];
        let want = 1000 << i;
        assert!(
            (want..want + 50).contains(&gap),
            "SYN-ACK gaps {times:?}: gap {i} is {gap} ms, want {want}"
        );
    }
    assert_eq!(b.server.connections(), 1);
    let id = b.establish(&c);
    b.finish(id, &mut c);
}

/// A client that never completes: after Linux's tcp_synack_retries (5 retransmissions, 63 s)
/// the request is dropped silently and its place in the SYN queue is free again. Holding it
/// forever would let vanished clients fill the SYN queue for good.
#[test]
fn unanswered_syn_ack_expires_silently_after_five_retries() {
    let mut b = Bed::new(1);
    let mut c = Client::new(40004);
    b.open(&mut c);
    b.run(Duration::from_secs(62), Duration::from_millis(5));
    assert_eq!(b.server.connections(), 1, "still held before 63 s");
    let mut d = Client::new(40005);
    b.run(Duration::from_secs(2), Duration::from_millis(5));
    assert_eq!(b.server.connections(), 0, "dropped after 63 s");
    assert_eq!(b.server.stats().syn_recv_expired, 1);
    assert_eq!(b.syn_acks(&c).len(), 6, "the SYN-ACK and 5 retransmissions");
    // The place is free again.
    b.open(&mut d);
    let id = b.establish(&d);
    b.finish(id, &mut d);
}

/// Half-open connections do not fill the backlog (Linux answers past its SYN queue with a
/// cookie): a burst of SYNs beyond it is answered and completes into the accept queue. Once
/// the accept queue is full (more than the backlog wait in it), new SYNs are dropped (counted,
/// no reset), also their retransmissions while it stays full; once the application accepted,
/// the next retransmissions get in; everyone is accepted exactly once.
#[test]
fn syn_burst_beyond_backlog_then_retransmissions_after_the_backlog_drains() {
    let mut b = Bed::new(2);
    let mut clients: Vec<Client> = (0..6).map(|i| Client::new(41000 + i)).collect();
    for c in &clients[..3] {
        b.syn(c);
    }
    b.step(Duration::from_micros(10));
    assert_eq!(b.server.stats().drop_syn_backlog, 0);
    for c in &mut clients[..3] {
        b.learn_syn_ack(c);
        b.ack(c);
    }
    b.step(Duration::from_micros(10));
    // Three wait in the accept queue, one more than the backlog: full.
    for c in &clients[3..] {
        b.syn(c);
    }
    b.step(Duration::from_micros(10));
    assert_eq!(b.server.stats().drop_syn_backlog, 3);
    for c in &clients[3..] {
        assert!(b.syn_acks(c).is_empty(), "port {}", c.port);
    }
    // Still full: the retransmissions at 1 s are dropped again.
    b.run(Duration::from_secs(1), Duration::from_millis(1));
    for c in &clients[3..] {
        b.syn(c);
    }
    b.step(Duration::from_micros(10));
    assert_eq!(b.server.stats().drop_syn_backlog, 6);
    let mut accepted = b.accept_all();
    assert_eq!(accepted.len(), 3);
    // The retransmissions at 3 s get in.
    b.run(Duration::from_secs(2), Duration::from_millis(1));
    for c in &clients[3..] {
        b.syn(c);
    }
    b.step(Duration::from_micros(10));
    for c in &mut clients[3..] {
        b.learn_syn_ack(c);
        b.ack(c);
    }
    b.step(Duration::from_micros(10));
    accepted.extend(b.accept_all());
    let mut ports: Vec<u16> = accepted.iter().map(|a| a.1).collect();
    ports.sort();
    assert_eq!(ports, (41000..41006).collect::<Vec<_>>(), "each once");
    for (id, port) in accepted {
        let c = clients.iter_mut().find(|c| c.port == port).unwrap();
        b.finish(id, c);
    }
}

/// An established connection the application does not accept for two minutes (the client
/// already sent its request) is still there, intact, when it is accepted.
#[test]
fn connection_waiting_long_in_the_accept_queue_is_kept() {
    let mut b = Bed::new(4);
    let mut c = Client::new(40006);
    b.open(&mut c);
    b.ack(&c);
    b.data(&mut c, b"early");
    b.step(Duration::from_micros(10));
    assert_eq!(b.server.accept_queue_len(PORT), 1);
    let out = b.run(Duration::from_secs(120), Duration::from_millis(10));
    assert!(
        out.iter().all(|s| s.payload.is_empty() && s.is(ACK)),
        "only ACKs while queued: {out:?}"
    );
    let acc = b.accept_all();
    assert_eq!(acc.len(), 1);
    let id = acc[0].0;
    assert_eq!(b.server.state(id), Ok(State::Established));
    let mut buf = [0u8; 16];
    assert_eq!(b.server.recv(id, &mut buf), Ok(5));
    assert_eq!(&buf[..5], b"early");
    b.finish(id, &mut c);
}

/// The reported bug. Redis sets SO_KEEPALIVE (300 s idle, 100 s interval, 3 probes) on every
/// connection it accepts; under load a client sends its first request a few hundred
/// milliseconds after its handshake. Meanwhile the connection must stay established: no RST,
/// no "timeout", and no probe (Linux's first comes after 300 s idle).
#[test]
fn idle_accepted_connection_with_keepalive_is_not_reset() {
    let mut b = Bed::new(4);
    let mut c = Client::new(40007);
    b.open(&mut c);
    // The ACK of the SYN-ACK comes after 40 ms (a loaded client).
    b.run(Duration::from_millis(40), Duration::from_millis(1));
    let id = b.establish(&c);
    let ka = Keepalive {
        idle: std::time::Duration::from_secs(300),
        intvl: std::time::Duration::from_secs(100),
        cnt: 3,
    };
    b.server.set_keepalive(b.now, id, Some(ka)).unwrap();
    // The client answers keepalive probes as Linux does (a pure ACK), 200 ms late (loaded).
    let mut answer_at = None;
    for _ in 0..5000 {
        let out = b.step(Duration::from_millis(1));
        if out
            .iter()
            .any(|s| s.dport == c.port && s.payload.len() == 1)
        {
            answer_at.get_or_insert(b.now + Duration::from_millis(200));
        }
        if answer_at.is_some_and(|t| b.now >= t) {
            b.ack(&c);
            answer_at = None;
        }
    }
    assert_eq!(b.server.state(id), Ok(State::Established));
    let mut buf = [0u8; 4];
    assert_eq!(b.server.recv(id, &mut buf), Err(SockError::WouldBlock));
    let probes = b.to(&c).iter().filter(|s| s.payload.len() == 1).count();
    assert!(
        probes == 0,
        "{probes} keepalive probes in 5 s: {:?}",
        b.to(&c)
    );
    b.finish(id, &mut c);
}

/// A retransmitted SYN that arrives after the handshake completed (it was queued behind the
/// client's ACK) neither resets nor duplicates the connection.
#[test]
fn stale_syn_after_the_handshake_is_harmless() {
    let mut b = Bed::new(4);
    let mut c = Client::new(40008);
    b.open(&mut c);
    b.ack(&c);
    b.syn(&c);
    let id = b.establish(&c);
    assert_eq!(b.server.connections(), 1);
    b.finish(id, &mut c);
}

/// A client port reused for a new connection while the application still holds the old,
/// reset, connection on that 4-tuple (it has not closed it yet): as on Linux, where a reset
/// socket is out of the lookup tables, the new SYN reaches the listener.
#[test]
fn syn_on_the_tuple_of_a_reset_connection_not_yet_closed_opens_a_new_one() {
    let mut b = Bed::new(4);
    let mut c = Client::new(40009);
    b.open(&mut c);
    let old = b.establish(&c);
    b.send(c.port, RST | ACK, c.snd_nxt, c.rcv_nxt(), &[]);
    b.step(Duration::from_micros(10));
    assert_eq!(b.server.take_error(old), Ok(Some(SockError::Reset)));
    // Same port, new ISN.
    let mut c2 = Client::new(40009);
    c2.isn = c.isn.wrapping_add(100_000);
    c2.snd_nxt = c2.isn.wrapping_add(1);
    b.log.clear();
    b.open(&mut c2);
    let id = b.establish(&c2);
    assert_ne!(id, old);
    b.finish(id, &mut c2);
    // The old handle still tells what happened to it, then closes cleanly.
    let mut buf = [0u8; 4];
    assert_eq!(b.server.recv(old, &mut buf), Ok(0));
    b.server.close(old).unwrap();
    b.step(Duration::from_micros(10));
    assert_eq!(b.server.connections(), 1);
}
