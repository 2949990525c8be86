//! Flow steering between processes that share one device (worker processes forked after
//! listen(), each with a stack of its own on the same af_packet interface).
//!
//! Every TCP flow falls in one of [`BUCKETS`] buckets, by its peer's address and port and its
//! local port ([`flow_bucket`]): the flows to a listener spread by the clients' addresses and
//! ports, and a process picks the local port of an outgoing connection so that its peer's
//! replies fall in a bucket it owns ([`Steering::owns`]). A process takes new connections (SYNs) only in the buckets it owns, and
//! answers a segment no connection of its own wants with a reset only in buckets it owns alone:
//! [`Steering`]. Which process owns which bucket is decided outside the stack (the shim keeps
//! a table in memory the processes share). The device is told to deliver only the frames of
//! the buckets a process sees ([`frame_filter`]: a classic BPF program for the packet
//! sockets), so a frame is received and parsed by one process, not by all.

use std::net::Ipv4Addr;

use crate::tcp::Carry;

/// How many buckets flows are spread over (the bits of a `u32` mask).
pub const BUCKETS: u32 = 32;

/// Every bucket.
pub const ALL: u32 = u32::MAX;

/// The bucket of the flow between `peer`:`port` and this host's `local_port`: the address and
/// both ports folded into 32 bits, the halves folded together, the low 5 bits. For a given
/// peer and port, consecutive local ports fall in different buckets. [`frame_filter`]
/// computes the same in the kernel.
#[inline]
pub fn flow_bucket(peer: Ipv4Addr, port: u16, local_port: u16) -> u32 {
    let h = u32::from(peer) ^ u32::from(port ^ local_port);
    (h ^ (h >> 16)) & (BUCKETS - 1)
}

/// Which flows a stack may take, as bucket masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steering {
    /// Buckets whose SYNs open connections here (elsewhere a SYN is dropped silently: it is
    /// another process's).
    pub syn: u32,
    /// Buckets where a segment no connection wants is answered with a reset (elsewhere it is
    /// dropped silently: another process may own the connection).
    pub rst: u32,
}

impl Steering {
    /// A stack alone on its device: every flow is its own.
    pub const ALONE: Steering = Steering { syn: ALL, rst: ALL };

    #[inline]
    pub fn takes_syn(&self, bucket: u32) -> bool {
        self.syn & (1 << bucket) != 0
    }

    /// Whether the bucket is this stack's own (it takes its new connections): an outgoing
    /// connection whose flow falls there gets its replies.
    #[inline]
    pub fn owns(&self, bucket: u32) -> bool {
        self.takes_syn(bucket)
    }

    #[inline]
    pub fn resets(&self, bucket: u32) -> bool {
        self.rst & (1 << bucket) != 0
    }
}

/// Which connections the processes sharing a device have, so that a segment no connection of
/// this stack wants is answered with a reset only if no other live process has its connection
/// (during a bucket's handover two processes see its frames, and a process that died leaves
/// connections nobody has). Keys are the stack's demux keys (peer address, peer port, local
/// port). Kept by the embedder (the shim: a table in memory the processes share).
pub trait FlowRegistry: Send {
    /// This stack has a connection for `key` from now on.
    fn opened(&mut self, key: u64);
    /// This stack's connection for `key` is gone. (A key opened twice, as a connection taken
    /// back from this stack's own offer is while the offer's registration stays, is closed
    /// twice: each call takes one registration away.)
    fn closed(&mut self, key: u64);
    /// Another live process has a connection for `key`.
    fn elsewhere(&mut self, key: u64) -> bool;

    /// Whether another process may listen on a port this one gave up: one serves already, or
    /// may come (a worker's parent lives on, and forks the next generation on reload).
    fn others_may_listen(&self) -> bool {
        true
    }

    /// Offers this stack's connection `key` to the processes that still listen on its port: a
    /// passive open its application never accepted, whose listener it closed (`carry`, and
    /// `data`, the peer's bytes held, in two parts). Whether the offer is up (false: no room
    /// for it); the connection stays registered as this process's until taken.
    fn hand_over(&mut self, _key: u64, _carry: &Carry, _data: (&[u8], &[u8])) -> bool {
        false
    }

    /// What became of this process's offer of `key`; with `withdraw`, an offer nobody took
    /// yet is withdrawn (`Handed::Back`).
    fn handed(&mut self, _key: u64, _withdraw: bool) -> Handed {
        Handed::Back
    }

    /// Claims one offer of another process that `wants` (its key and how many bytes it
    /// holds): its key and carry, its bytes in `data`. The claim ends with `took`.
    fn take_offer(
        &mut self,
        _wants: &mut dyn FnMut(u64, usize) -> bool,
        _data: &mut Vec<u8>,
    ) -> Option<(u64, Carry)> {
        None
    }

    /// Ends the claim of the offer of `key`: `taken`, the connection is this stack's now (and
    /// registered: `opened` came first, so the offering process, which stops answering for it
    /// when it sees it taken, never leaves a moment where nobody has it); else the offer is up
    /// again.
    fn took(&mut self, _key: u64, _taken: bool) {}
}

/// What became of a connection offered to other processes (`FlowRegistry::hand_over`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// Nobody took it yet.
    Waiting,
    /// Another process carries it on.
    Taken,
    /// Nobody took it, and nobody will: it is the offering stack's again.
    Back,
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const fn ins(code: u16, jt: u8, jf: u8, k: u32) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

// Classic BPF opcodes (linux/filter.h).
const LDH_ABS: u16 = 0x28;
const LDB_ABS: u16 = 0x30;
const LDW_ABS: u16 = 0x20;
const LDH_IND: u16 = 0x48;
const LDXB_MSH: u16 = 0xb1;
const ST: u16 = 0x02;
const LDX_MEM: u16 = 0x61;
const XOR_X: u16 = 0xac;
const TAX: u16 = 0x07;
const RSH_K: u16 = 0x74;
const RSH_X: u16 = 0x7c;
const AND_K: u16 = 0x54;
const LD_IMM: u16 = 0x00;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

/// What a filter keeps of a frame it accepts: all of it.
const KEEP: u32 = 0x0004_0000;

/// A packet-socket filter over Ethernet frames that keeps: TCP over IPv4 of the buckets in
/// `see`; other IPv4 (ICMP: pings, errors) only if `ip_other`; everything that is not IPv4
/// (ARP: every process keeps its own neighbour table).
pub fn frame_filter(see: u32, ip_other: bool) -> Vec<SockFilter> {
    let other_ip = if ip_other { KEEP } else { 0 };
    vec![
        /* 0 */ ins(LDH_ABS, 0, 0, 12), // EtherType
        /* 1 */ ins(JEQ_K, 0, 26, 0x0800), // not IPv4: 28
        /* 2 */ ins(LDB_ABS, 0, 0, 23), // IP protocol
        /* 3 */ ins(JEQ_K, 0, 23, 6), // not TCP: 27
        /* 4 */ ins(LDH_ABS, 0, 0, 20), // flags, fragment offset
        /* 5 */ ins(JSET_K, 21, 0, 0x1fff), // a later fragment (no ports): 27
        /* 6 */ ins(LDXB_MSH, 0, 0, 14), // X = IP header length
        /* 7 */ ins(LDH_IND, 0, 0, 14), // source port
        /* 8 */ ins(ST, 0, 0, 0),
        /* 9 */ ins(LDH_IND, 0, 0, 16), // destination port
        /* 10 */ ins(LDX_MEM, 0, 0, 0),
        /* 11 */ ins(XOR_X, 0, 0, 0), // source port ^ destination port
        /* 12 */ ins(ST, 0, 0, 0),
        /* 13 */ ins(LDW_ABS, 0, 0, 26), // source address
        /* 14 */ ins(LDX_MEM, 0, 0, 0),
        /* 15 */ ins(XOR_X, 0, 0, 0), // address ^ ports
        /* 16 */ ins(TAX, 0, 0, 0),
        /* 17 */ ins(RSH_K, 0, 0, 16),
        /* 18 */ ins(XOR_X, 0, 0, 0), // h ^ (h >> 16)
        /* 19 */ ins(AND_K, 0, 0, BUCKETS - 1), // the bucket
        /* 20 */ ins(TAX, 0, 0, 0),
        /* 21 */ ins(LD_IMM, 0, 0, see),
        /* 22 */ ins(RSH_X, 0, 0, 0),
        /* 23 */ ins(AND_K, 0, 0, 1),
        /* 24 */ ins(JEQ_K, 1, 0, 0), // not seen: 26
        /* 25 */ ins(RET_K, 0, 0, KEEP),
        /* 26 */ ins(RET_K, 0, 0, 0),
        /* 27 */ ins(RET_K, 0, 0, other_ip),
        /* 28 */ ins(RET_K, 0, 0, KEEP),
    ]
}

/// An Ethernet frame of TCP over IPv4 from `src`:`sport` to port `dport`, with an IP header of
/// `ihl_words` words and the flags and fragment offset `frag`: what the filters read (tests).
#[cfg(test)]
pub(crate) fn tcp_frame(
    src: Ipv4Addr,
    sport: u16,
    dport: u16,
    ihl_words: u8,
    frag: u16,
) -> Vec<u8> {
    let mut f = vec![0u8; 14 + usize::from(ihl_words) * 4 + 20];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x40 | ihl_words;
    f[20..22].copy_from_slice(&frag.to_be_bytes());
    f[23] = 6;
    f[26..30].copy_from_slice(&src.octets());
    let t = 14 + usize::from(ihl_words) * 4;
    f[t..t + 2].copy_from_slice(&sport.to_be_bytes());
    f[t + 2..t + 4].copy_from_slice(&dport.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic BPF interpreter for the instructions `frame_filter` uses (as the kernel runs
    /// them: loads are big-endian, out of bounds returns 0).
    fn run(prog: &[SockFilter], f: &[u8]) -> u32 {
        let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
        let load = |off: usize, n: usize| -> Option<u32> {
            let b = f.get(off..off + n)?;
            Some(b.iter().fold(0u32, |v, &byte| v << 8 | u32::from(byte)))
        };
        let mut pc = 0;
        loop {
            let i = prog[pc];
            pc += 1;
            let k = i.k as usize;
            match i.code {
                LDH_ABS => match load(k, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LDB_ABS => match load(k, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LDW_ABS => match load(k, 4) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LDH_IND => match load(x as usize + k, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LDXB_MSH => match load(k, 1) {
                    Some(v) => x = (v & 0xf) * 4,
                    None => return 0,
                },
                ST => mem[k] = a,
                LDX_MEM => x = mem[k],
                XOR_X => a ^= x,
                TAX => x = a,
                RSH_K => a >>= i.k,
                RSH_X => a = a.checked_shr(x).unwrap_or(0),
                AND_K => a &= i.k,
                LD_IMM => a = i.k,
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
                RET_K => return i.k,
                c => panic!("opcode {c:#x} not interpreted"),
            }
        }
    }

    #[test]
    fn the_kernel_filter_and_the_stack_agree_on_every_flows_bucket() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            let r = next();
            let ip = Ipv4Addr::from(r as u32);
            let port = (r >> 32) as u16;
            let local = (r >> 40) as u16;
            let see = (r >> 16) as u32;
            let ihl = 5 + (r >> 60) as u8 % 3; // with and without IP options
            let frame = tcp_frame(ip, port, local, ihl, 0x4000);
            let kept = run(&frame_filter(see, false), &frame) != 0;
            assert_eq!(
                kept,
                see & (1 << flow_bucket(ip, port, local)) != 0,
                "{ip}:{port} -> {local}"
            );
        }
    }

    #[test]
    fn buckets_spread_one_clients_ports_evenly() {
        let mut n = [0u32; BUCKETS as usize];
        for port in 32768..32768 + 3200u16 {
            n[flow_bucket(Ipv4Addr::new(198, 18, 0, 1), port, 6379) as usize] += 1;
        }
        assert!(n.iter().all(|&c| c == 100), "{n:?}");
    }

    /// The outgoing connections to one server: every 32 consecutive local ports cover every
    /// bucket once, so a process finds a port for its own buckets among the next few.
    #[test]
    fn local_ports_to_one_server_cover_every_bucket() {
        let server = Ipv4Addr::new(198, 18, 0, 2);
        for start in [32768u16, 40001, 60967] {
            let mut seen = 0u32;
            for local in start..start + BUCKETS as u16 {
                seen |= 1 << flow_bucket(server, 6379, local);
            }
            assert_eq!(seen, ALL, "from {start}");
        }
    }

    #[test]
    fn frames_that_are_not_tcp_go_where_they_are_told() {
        let tcp = tcp_frame(Ipv4Addr::new(198, 18, 0, 1), 40000, 80, 5, 0);
        let mut icmp = tcp.clone();
        icmp[23] = 1;
        let later_fragment = tcp_frame(Ipv4Addr::new(198, 18, 0, 1), 40000, 80, 5, 0x2001);
        let mut arp = tcp.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        for ip_other in [false, true] {
            let p = frame_filter(0, ip_other);
            assert_eq!(run(&p, &tcp), 0);
            assert_eq!(run(&p, &icmp) != 0, ip_other);
            assert_eq!(run(&p, &later_fragment) != 0, ip_other);
            assert_ne!(run(&p, &arp), 0);
            assert_eq!(run(&p, &arp[..10]), 0, "a runt frame");
        }
        assert_ne!(run(&frame_filter(ALL, false), &tcp), 0);
    }
}
