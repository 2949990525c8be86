//! The `frames` target: a stack (the one under test) and a second stack (its peer) on an
//! in-memory cable. Before the input is read, the peer opens connections that leave the stack
//! with one in each state (established idle, established with unread data both ways,
//! CLOSE-WAIT, FIN-WAIT, SYN-RECEIVED in a backlog of one, SYN-SENT to a port nobody serves);
//! every frame the peer sent meanwhile is kept as a template. The input is then a program of
//! operations: a raw frame; a template with bytes changed; a template with its TCP sequence
//! numbers, flags, window, options or payload rewritten and its checksums made right again
//! (so it gets past the checks into the connection's state machine); time passing; an
//! application call on one of the stack's connections. The peer answers when the input says
//! so, which keeps real conversations going among the fuzzed frames. Every poll of the stack
//! has a responder ([`userstack::Respond`], as the shim's data-path cache): it answers some
//! of what segments bring, by the data's first byte, so received data is also taken and
//! replied to inside the poll, in every state the frames lead to.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket, TcpSeqNumber};
use userstack::config::{parse_cidr, CongestionControl};
use userstack::link::MemLink;
use userstack::{ConnId, Respond, Stack, TcpOptions};

use crate::Input;

const STACK_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const STACK_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Operations per input at most (an input is one short conversation).
const MAX_OPS: usize = 256;
const MAX_TEMPLATES: usize = 64;
const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;

fn options() -> TcpOptions {
    TcpOptions {
        nodelay: true,
        keepalive: None,
        rcvbuf: 8 << 10,
        sndbuf: 8 << 10,
        ack_delay: None,
        cc: CongestionControl::Reno,
        mss: None,
        ttl: None,
        tos: 0,
        defer_accept: None,
    }
}

struct Scene {
    stack: Stack<MemLink>,
    peer: Stack<MemLink>,
    now: Instant,
    /// Frames the peer sent to the stack.
    templates: Vec<Vec<u8>>,
    /// The stack's connections.
    conns: Vec<ConnId>,
    /// Frames the stack sent so far (all checked).
    sent: usize,
    answers: Answers,
}

/// The responder of the stack's polls: by the first byte `b` of what a connection received,
/// it leaves everything (`b % 4 == 0`) or answers `b % 4` bytes with a reply of `b / 4` bytes
/// (at most the room).
#[derive(Default)]
struct Answers {
    out: Vec<u8>,
}

impl Respond for Answers {
    fn respond(&mut self, _id: ConnId, a: &[u8], b: &[u8], room: usize) -> Option<(usize, &[u8])> {
        assert!(!a.is_empty() && room > 0, "offered with data and room");
        let first = a[0];
        let n = usize::from(first % 4).min(a.len() + b.len());
        if n == 0 {
            return None;
        }
        self.out.clear();
        self.out.resize(usize::from(first / 4).min(room), b'r');
        Some((n, &self.out))
    }
}

impl Scene {
    fn new() -> Scene {
        let (a, b) = MemLink::pair(STACK_MAC, PEER_MAC);
        let now = Instant::from_secs(1);
        let stack_on = |link, cidr| {
            Stack::with_link(
                link,
                parse_cidr("fuzz", cidr).expect("cidr"),
                None,
                None,
                options(),
                now,
            )
        };
        let mut s = Scene {
            stack: stack_on(a, "198.18.0.2/24"),
            peer: stack_on(b, "198.18.0.1/24"),
            now,
            templates: Vec::new(),
            conns: Vec::new(),
            sent: 0,
            answers: Answers::default(),
        };
        s.stack.listen(80, 8, options()).expect("listen");
        s.stack.listen(81, 1, options()).expect("listen");
        s.peer.listen(82, 8, options()).expect("listen");
        let established = [(); 4].map(|_| s.open(80));
        let [idle, busy, half, closing] = established;
        let _ = idle;
        // Unread data both ways.
        let _ = s.peer.send(busy.1, &[7; 3000]);
        let _ = s.stack.send(busy.0, &[9; 3000]);
        // The peer is done sending: CLOSE-WAIT here.
        let _ = s.peer.shutdown_write(half.1);
        // The stack is done sending: FIN-WAIT.
        let _ = s.stack.shutdown_write(closing.0);
        s.exchange(4);
        // SYN-RECEIVED: the SYN-ACK never reaches the peer.
        if let Ok(_c) = s
            .peer
            .connect(s.now, SocketAddrV4::new(STACK_IP, 81), options())
        {
            s.step(false);
        }
        // SYN-SENT: to a port the peer does not answer (its frames never reach it).
        if let Ok(c) = s
            .stack
            .connect(s.now, SocketAddrV4::new(PEER_IP, 9), options())
        {
            s.conns.push(c);
            s.step(false);
        }
        // A connection from the stack to the peer's listener.
        if let Ok(c) = s
            .stack
            .connect(s.now, SocketAddrV4::new(PEER_IP, 82), options())
        {
            s.conns.push(c);
            s.exchange(3);
        }
        s
    }

    /// A connection from the peer to the stack's `port`, accepted: (the stack's id, the peer's).
    fn open(&mut self, port: u16) -> (ConnId, ConnId) {
        let p = self
            .peer
            .connect(self.now, SocketAddrV4::new(STACK_IP, port), options())
            .expect("connect");
        self.exchange(3);
        let (c, _) = self.stack.accept(port).expect("accepted");
        self.conns.push(c);
        (c, p)
    }

    /// Rounds of both sides polling, each one delivering what the other sent.
    fn exchange(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.step(true);
        }
    }

    /// The peer polls and its frames reach the stack (kept as templates), the stack polls;
    /// what the stack sent is checked, and reaches the peer if `deliver` (else it is lost).
    fn step(&mut self, deliver: bool) {
        self.now += Duration::from_millis(1);
        // (Frames injected and held wait there too: only the peer's are templates.)
        let held = self.stack.link().waiting().len();
        self.peer.poll(self.now);
        for f in self.stack.link().waiting().into_iter().skip(held) {
            if self.templates.len() < MAX_TEMPLATES {
                self.templates.push(f);
            }
        }
        self.poll();
        if deliver {
            self.peer.poll(self.now);
            self.sent = 0;
        } else {
            self.peer.link().discard();
            self.sent = 0;
        }
    }

    /// Every frame the stack sent since the last look is well formed.
    fn check_sent(&mut self) {
        let out = self.peer.link().waiting();
        for f in &out[self.sent.min(out.len())..] {
            check_frame(f);
        }
        self.sent = out.len();
    }

    /// Delivers `frame`; the stack polls unless `hold` (held frames arrive in one burst with
    /// those of the next operation that polls: the stack's burst handling, e.g. each frame's
    /// connection found by the burst's prefetch while earlier frames open and close
    /// connections).
    fn inject(&mut self, frame: Vec<u8>, hold: bool) {
        self.stack.link().inject(frame);
        if !hold {
            self.poll();
        }
    }

    /// The stack polls, with its responder; what it sent is checked.
    fn poll(&mut self) {
        self.stack.poll_with(self.now, Some(&mut self.answers));
        self.check_sent();
    }

    fn conn(&self, pick: u8) -> Option<ConnId> {
        if self.conns.is_empty() {
            None
        } else {
            Some(self.conns[usize::from(pick) % self.conns.len()])
        }
    }
}

/// A frame the stack sent: Ethernet from its MAC; ARP, or IPv4 from its address with a right
/// header checksum and length, carrying TCP with a right checksum.
fn check_frame(f: &[u8]) {
    assert!(f.len() >= ETH_HDR, "a whole Ethernet header: {f:?}");
    assert_eq!(f[6..12], STACK_MAC, "sent from the stack's MAC");
    let payload = &f[ETH_HDR..];
    match u16::from_be_bytes([f[12], f[13]]) {
        ETHERTYPE_ARP => {
            // Ethernet/IPv4 ARP: hardware type 1, protocol 0x0800, lengths 6 and 4, from us.
            assert!(payload.len() >= 28, "a whole ARP packet");
            assert_eq!(
                payload[..6],
                [0, 1, 8, 0, 6, 4],
                "an Ethernet/IPv4 ARP packet"
            );
            assert_eq!(payload[8..14], STACK_MAC, "ARP from the stack's MAC");
            assert_eq!(
                payload[14..18],
                STACK_IP.octets(),
                "ARP from the stack's address"
            );
        }
        ETHERTYPE_IPV4 => {
            let ip = Ipv4Packet::new_checked(payload).expect("a whole IPv4 packet");
            assert!(ip.verify_checksum(), "IPv4 header checksum");
            assert_eq!(ip.src_addr(), STACK_IP, "sent from the stack's address");
            assert_eq!(ip.next_header(), IpProtocol::Tcp, "only TCP is sent");
            let tcp = TcpPacket::new_checked(ip.payload()).expect("a whole TCP segment");
            assert!(
                tcp.verify_checksum(
                    &IpAddress::Ipv4(ip.src_addr()),
                    &IpAddress::Ipv4(ip.dst_addr())
                ),
                "TCP checksum"
            );
        }
        other => panic!("the stack sent a frame of ethertype {other:#06x}"),
    }
}

/// A template's TCP header rewritten from the input, checksums made right: `None` if the
/// template is not a TCP frame.
fn rewrite(template: &[u8], inp: &mut Input) -> Option<Vec<u8>> {
    if template.len() < ETH_HDR
        || u16::from_be_bytes([template[12], template[13]]) != ETHERTYPE_IPV4
    {
        return None;
    }
    let ip = Ipv4Packet::new_checked(&template[ETH_HDR..]).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let ip_hl = usize::from(ip.header_len());
    let tcp_hl = usize::from(tcp.header_len());
    let what = inp.byte();
    // Options: the template's, or new bytes (a multiple of 4, up to 40).
    let opts: Vec<u8> = if what & 1 != 0 {
        let n = usize::from(inp.byte() % 11) * 4;
        let mut o = inp.bytes(n).to_vec();
        o.resize(n, 0);
        o
    } else {
        ip.payload()[20..tcp_hl].to_vec()
    };
    // Payload: the template's, or new bytes.
    let payload: Vec<u8> = if what & 2 != 0 {
        let n = usize::from(inp.u16() % 1500);
        inp.bytes(n).to_vec()
    } else {
        ip.payload()[tcp_hl..].to_vec()
    };
    let mut hdr = ip.payload()[..20].to_vec();
    {
        let mut t = TcpPacket::new_unchecked(&mut hdr[..]);
        if what & 4 != 0 {
            t.set_seq_number(TcpSeqNumber(
                t.seq_number().0.wrapping_add(inp.u32() as i32),
            ));
        }
        if what & 8 != 0 {
            t.set_ack_number(TcpSeqNumber(
                t.ack_number().0.wrapping_add(inp.u32() as i32),
            ));
        }
        if what & 16 != 0 {
            let flags = inp.byte();
            let b = t.into_inner();
            b[13] = flags;
            t = TcpPacket::new_unchecked(b);
        }
        if what & 32 != 0 {
            t.set_window_len(inp.u16());
        }
        t.set_header_len((20 + opts.len()) as u8);
    }
    let tcp_len = 20 + opts.len() + payload.len();
    let total = ip_hl + tcp_len;
    if ETH_HDR + total > ETH_HDR + 1500 {
        return None;
    }
    let mut frame = template[..ETH_HDR + ip_hl].to_vec();
    frame.extend_from_slice(&hdr);
    frame.extend_from_slice(&opts);
    frame.extend_from_slice(&payload);
    let (src, dst);
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[ETH_HDR..]);
        ip.set_total_len(total as u16);
        ip.fill_checksum();
        src = IpAddress::Ipv4(ip.src_addr());
        dst = IpAddress::Ipv4(ip.dst_addr());
    }
    let mut t = TcpPacket::new_unchecked(&mut frame[ETH_HDR + ip_hl..]);
    t.fill_checksum(&src, &dst);
    Some(frame)
}

/// One input through the `frames` target.
pub fn frames(data: &[u8]) {
    let mut s = Scene::new();
    let mut inp = Input::new(data);
    let mut ops = 0;
    while !inp.is_empty() && ops < MAX_OPS {
        ops += 1;
        let op = inp.byte();
        let kind = if s.templates.is_empty() { 0 } else { op % 6 };
        // A frame injected with the two high bits set waits for the next operation that polls:
        // frames of several operations in one burst.
        let hold = op >= 0xc0 && kind < 4;
        match kind {
            // A raw frame.
            0 => {
                let n = usize::from(inp.u16() % 1600);
                let f = inp.bytes(n).to_vec();
                s.inject(f, hold);
            }
            // A template with bytes changed.
            1 => {
                let t = usize::from(inp.byte()) % s.templates.len();
                let mut f = s.templates[t].clone();
                for _ in 0..inp.byte() % 8 {
                    let at = usize::from(inp.u16()) % f.len();
                    let v = inp.byte();
                    f[at] ^= v;
                }
                if inp.byte() & 1 != 0 {
                    let keep = usize::from(inp.u16()) % (f.len() + 1);
                    f.truncate(keep);
                }
                s.inject(f, hold);
            }
            // A template's TCP header rewritten, checksums right.
            2 | 3 => {
                let t = usize::from(inp.byte()) % s.templates.len();
                let template = s.templates[t].clone();
                if let Some(f) = rewrite(&template, &mut inp) {
                    s.inject(f, hold);
                }
            }
            // Time passes (up to ~65 s) and the stack polls.
            4 => {
                let ms = u64::from(inp.byte()) * u64::from(inp.byte());
                s.now += Duration::from_millis(ms);
                s.poll();
            }
            // The application calls.
            _ => {
                let Some(c) = s.conn(inp.byte()) else {
                    continue;
                };
                let mut buf = [0u8; 2048];
                match inp.byte() % 8 {
                    0 | 1 => {
                        let _ = s.stack.recv(c, &mut buf);
                    }
                    2 | 3 => {
                        let n = usize::from(inp.u16() % 4096);
                        let _ = s.stack.send(c, &vec![0x5a; n]);
                    }
                    4 => {
                        let _ = s.stack.shutdown_write(c);
                    }
                    5 => {
                        let _ = s.stack.close(c);
                    }
                    6 => {
                        let _ = s.stack.abort(c);
                    }
                    _ => {
                        for port in [80, 81] {
                            if let Ok((c, _)) = s.stack.accept(port) {
                                s.conns.push(c);
                            }
                        }
                    }
                }
                let _ = s.stack.readiness(c);
                let _ = s.stack.tcp_info(c);
                s.poll();
            }
        }
        // The high bit: the peer answers (and the stack hears it), else what the stack sent
        // is lost. (Not after a held frame: the stack would poll it.)
        if !hold {
            s.step(op & 0x80 != 0);
        }
    }
    // The stack still serves: time passes, every connection is closed and the stack lets
    // them go.
    for c in std::mem::take(&mut s.conns) {
        let _ = s.stack.close(c);
    }
    s.now += Duration::from_secs(600);
    s.exchange(2);
    let _ = s.stack.stats();
}
