//! The TCP checksum: summed in 32-bit words into a 64-bit accumulator (which the compiler
//! vectorizes), where smoltcp adds 16-bit words one by one (over a full 1,448-byte segment,
//! smoltcp's way was 15% of the instructions of a Redis LRANGE reply of 100 KB).
//! `fill_tcp_checksum` completes every segment a connection sends, `tcp_checksum_ok` is the
//! receive check.
//!
//! The one's-complement sum does not depend on byte order (RFC 1071, 2.(B)): words are loaded
//! in native order and the folded result is stored in native order.

use std::net::Ipv4Addr;

/// One's-complement sum of `b` in native-order 32-bit words (odd tail padded with zeros), not
/// yet folded. Callers sum buffers that start at even offsets of the checksummed stream.
fn ones_sum(b: &[u8]) -> u64 {
    if b.len() < 256 {
        return ones_sum_small(b);
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above; the answer is cached).
        #[allow(unsafe_code)]
        return unsafe { ones_sum_avx2(b) };
    }
    ones_sum_words(b)
}

/// The sum of a short buffer (headers, a small request or reply): 64-bit words added with
/// their carries (one add and one add-with-carry per 8 bytes; the vectorized loop's setup
/// costs more than the sum below ~100 bytes). Less than 2^33, so callers may add a few.
#[inline(always)]
fn ones_sum_small(b: &[u8]) -> u64 {
    let word = |c: &[u8]| {
        u128::from(u64::from_ne_bytes([
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
        ]))
    };
    let mut acc: u128 = 0;
    let mut chunks = b.chunks_exact(16);
    for c in &mut chunks {
        acc += word(&c[..8]) + word(&c[8..]);
    }
    let mut r = chunks.remainder();
    if r.len() >= 8 {
        acc += word(r);
        r = &r[8..];
    }
    let mut tail: u64 = 0;
    let mut i = 0;
    if r.len() >= 4 {
        tail += u64::from(u32::from_ne_bytes([r[0], r[1], r[2], r[3]]));
        i = 4;
    }
    if r.len() >= i + 2 {
        tail += u64::from(u16::from_ne_bytes([r[i], r[i + 1]]));
        i += 2;
    }
    if r.len() > i {
        tail += u64::from(u16::from_ne_bytes([r[i], 0]));
    }
    acc += u128::from(tail);
    // 2^64 and 2^32 are 1 modulo 0xffff: the halves add up to the same checksum.
    let (lo, carry) = (acc as u64).overflowing_add((acc >> 64) as u64);
    let s = lo + u64::from(carry);
    (s & 0xffff_ffff) + (s >> 32)
}

/// The same loop compiled for AVX2 (32 bytes per vector instead of SSE2's 16).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
unsafe fn ones_sum_avx2(b: &[u8]) -> u64 {
    ones_sum_words(b)
}

#[inline(always)]
fn ones_sum_words(b: &[u8]) -> u64 {
    let mut chunks = b.chunks_exact(4);
    let mut s: u64 = (&mut chunks)
        .map(|c| u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
        .sum();
    let r = chunks.remainder();
    let mut tail = [0u8; 4];
    tail[..r.len()].copy_from_slice(r);
    s += u64::from(u32::from_ne_bytes(tail));
    s
}

/// The 16-bit one's-complement sum of `s`: the same value as adding its 16-bit halves until
/// they fit, in four fixed steps without a branch (any u64 fits after them: below 2^33, then
/// 2^18, then 0x10003, then 0x10000).
#[inline]
fn fold(s: u64) -> u16 {
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The IPv4 pseudo-header of a TCP segment of `tcp_len` bytes between the addresses in `ip`.
#[inline]
fn pseudo_sum(ip: &[u8], tcp_len: usize) -> u64 {
    let a = &ip[12..20];
    let l = (tcp_len as u16).to_be_bytes();
    u64::from(u32::from_ne_bytes([a[0], a[1], a[2], a[3]]))
        + u64::from(u32::from_ne_bytes([a[4], a[5], a[6], a[7]]))
        + u64::from(u32::from_ne_bytes([0, 6, l[0], l[1]]))
}

/// Whether an IPv4 header (its `ihl` bytes) has a correct checksum.
#[inline]
pub fn ipv4_header_ok(header: &[u8]) -> bool {
    if let Ok(h) = <&[u8; 20]>::try_from(header) {
        // No options (nearly every packet): five words.
        let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
        return fold(w(0) + w(4) + w(8) + w(12) + w(16)) == 0xffff;
    }
    fold(ones_sum_small(header)) == 0xffff
}

/// Computes and stores the checksum of an IPv4 header (its checksum field is overwritten).
pub fn fill_ipv4_header_checksum(header: &mut [u8]) {
    header[10] = 0;
    header[11] = 0;
    let sum = fold(ones_sum_words(header));
    header[10..12].copy_from_slice(&(!sum).to_ne_bytes());
}

/// The IPv4 header of a connection's TCP segments from `local` to `peer` with TOS `tos` and
/// TTL `ttl`, don't-fragment set, total length and checksum zero: the template
/// `ipv4_template_sum` and `ipv4_checksum` complete per packet.
pub fn ipv4_tcp_template(local: Ipv4Addr, peer: Ipv4Addr, tos: u8, ttl: u8) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[1] = tos;
    h[6] = 0x40; // don't fragment
    h[8] = ttl;
    h[9] = 6;
    h[12..16].copy_from_slice(&local.octets());
    h[16..20].copy_from_slice(&peer.octets());
    h
}

/// The not yet folded sum of an IPv4 header template whose total length and checksum are
/// zero (`ipv4_checksum` completes it per packet).
pub fn ipv4_template_sum(header: &[u8; 20]) -> u64 {
    ones_sum_words(header)
}

/// The checksum field of a header made from a template of sum `sum` (`ipv4_template_sum`)
/// with its total length set to `len`: the template's sum plus the length's word.
pub fn ipv4_checksum(sum: u64, len: u16) -> [u8; 2] {
    let l = len.to_be_bytes();
    let word = u32::from_ne_bytes([0, 0, l[0], l[1]]);
    (!fold(sum + u64::from(word))).to_ne_bytes()
}

/// Computes and stores the TCP checksum of the IPv4 packet `ip` (header, then the segment, up
/// to the header's total length). Anything but a well-formed TCP packet is left alone.
pub fn fill_tcp_checksum(ip: &mut [u8]) {
    if ip.len() < 20 || ip[9] != 6 {
        return;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    if ihl < 20 || total < ihl + 20 {
        return;
    }
    let pseudo = pseudo_sum(ip, total - ihl);
    let tcp = &mut ip[ihl..total];
    tcp[16] = 0;
    tcp[17] = 0;
    let sum = fold(pseudo + ones_sum(tcp));
    tcp[16..18].copy_from_slice(&(!sum).to_ne_bytes());
}

/// The sum of the pseudo-header of TCP segments between the addresses of IPv4 header `ip`,
/// without their length (a connection's, made once: `fill_tcp_checksum_with`).
pub fn tcp_pseudo_sum(ip: &[u8]) -> u64 {
    pseudo_sum(ip, 0)
}

/// Computes and stores the checksum of TCP segment `tcp` (its header, then its payload) whose
/// pseudo-header without the length sums to `pseudo` (`tcp_pseudo_sum`).
#[inline]
pub fn fill_tcp_checksum_with(pseudo: u64, tcp: &mut [u8]) {
    tcp[16] = 0;
    tcp[17] = 0;
    let l = (tcp.len() as u16).to_be_bytes();
    let len = u64::from(u32::from_ne_bytes([0, 0, l[0], l[1]]));
    let sum = fold(pseudo + len + ones_sum(tcp));
    tcp[16..18].copy_from_slice(&(!sum).to_ne_bytes());
}

/// Whether the TCP segment `ip[ihl..]` of the IPv4 packet `ip` (cut to its total length) has
/// a correct checksum.
#[inline]
pub fn tcp_checksum_ok(ip: &[u8], ihl: usize) -> bool {
    let tcp = &ip[ihl..];
    fold(pseudo_sum(ip, tcp.len()) + ones_sum(tcp)) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed steps give what folding until the sum fits gives, for any u64.
    #[test]
    fn fold_is_the_folded_sum() {
        fn by_loop(mut s: u64) -> u16 {
            while s >> 16 != 0 {
                s = (s & 0xffff) + (s >> 16);
            }
            s as u16
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut cases = vec![
            0,
            1,
            0xffff,
            0x1_0000,
            0x1_fffe,
            u64::MAX,
            0xffff_ffff,
            1 << 33,
        ];
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(x);
            cases.push(x >> (x % 64));
        }
        for s in cases {
            assert_eq!(fold(s), by_loop(s), "{s:#x}");
        }
    }
    use smoltcp::wire::{IpAddress, Ipv4Address, TcpPacket};

    /// An IPv4+TCP packet with `payload` bytes from a simple generator.
    fn packet(payload: usize, seed: u32) -> Vec<u8> {
        let total = 40 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[198, 18, 0, 1]);
        p[16..20].copy_from_slice(&[198, 18, (seed >> 8) as u8, seed as u8]);
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        for b in &mut p[20..] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        p[20 + 12] = 5 << 4;
        p
    }

    fn addrs(p: &[u8]) -> (IpAddress, IpAddress) {
        let a = |o: usize| IpAddress::Ipv4(Ipv4Address::new(p[o], p[o + 1], p[o + 2], p[o + 3]));
        (a(12), a(16))
    }

    #[test]
    fn a_template_and_its_length_give_the_full_headers_checksum() {
        let t = ipv4_tcp_template(
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 0, 77),
            0x10,
            64,
        );
        let sum = ipv4_template_sum(&t);
        for len in [40u16, 52, 1500, 65535] {
            let mut h = t;
            h[2..4].copy_from_slice(&len.to_be_bytes());
            fill_ipv4_header_checksum(&mut h);
            assert_eq!(ipv4_checksum(sum, len), [h[10], h[11]], "length {len}");
        }
    }

    #[test]
    fn agrees_with_smoltcp_both_ways() {
        // Every length from empty to a full segment and beyond, odd and even.
        for (i, len) in (0..1600).chain([8960, 65_000]).enumerate() {
            let mut p = packet(len, i as u32 + 7);
            fill_tcp_checksum(&mut p);
            let (src, dst) = addrs(&p);
            assert!(
                TcpPacket::new_unchecked(&p[20..]).verify_checksum(&src, &dst),
                "ours, checked by smoltcp, payload {len}"
            );
            assert!(tcp_checksum_ok(&p, 20));
            let mut q = packet(len, i as u32 + 7);
            TcpPacket::new_unchecked(&mut q[20..]).fill_checksum(&src, &dst);
            assert_eq!(p, q, "the same checksum as smoltcp's, payload {len}");
            let mut r = packet(len, i as u32 + 7);
            let pseudo = tcp_pseudo_sum(&r[..20]);
            fill_tcp_checksum_with(pseudo, &mut r[20..]);
            assert_eq!(p, r, "from a connection's pseudo-header sum, payload {len}");
        }
    }

    #[test]
    fn carries_of_all_ones_words_agree_with_smoltcp() {
        // Every word 0xffff: the most carries the wide sums can meet, short and long.
        for len in (0..300).chain([1448, 4000]) {
            let mut p = packet(len, 1);
            for b in &mut p[20..] {
                *b = 0xff;
            }
            p[20 + 12] = 5 << 4;
            fill_tcp_checksum(&mut p);
            let (src, dst) = addrs(&p);
            assert!(
                TcpPacket::new_unchecked(&p[20..]).verify_checksum(&src, &dst),
                "payload {len}"
            );
        }
    }

    #[test]
    fn any_flipped_bit_fails_the_check() {
        // A short segment (the word-sum path) and a long one (the vectorized path).
        for len in [37, 333] {
            let mut p = packet(len, 3);
            fill_tcp_checksum(&mut p);
            for byte in 20..p.len() {
                for bit in 0..8 {
                    p[byte] ^= 1 << bit;
                    assert!(!tcp_checksum_ok(&p, 20), "flip at {byte}.{bit}");
                    p[byte] ^= 1 << bit;
                }
            }
            // The pseudo-header covers the addresses.
            p[19] ^= 1;
            assert!(!tcp_checksum_ok(&p, 20));
        }
    }

    #[test]
    fn ipv4_header_check_agrees_with_smoltcp() {
        for seed in 0..200u32 {
            let mut h = packet(0, seed)[..20].to_vec();
            h[1] = seed as u8;
            h[4..8].copy_from_slice(&seed.wrapping_mul(0x9e37_79b9).to_ne_bytes());
            fill_ipv4_header_checksum(&mut h);
            assert!(ipv4_header_ok(&h));
            assert!(smoltcp::wire::Ipv4Packet::new_unchecked(&h[..]).verify_checksum());
            h[(seed % 20) as usize] ^= 1 << (seed % 8);
            assert!(!ipv4_header_ok(&h));
        }
        // With options (24 bytes: the general sum).
        let mut h = packet(0, 9)[..24].to_vec();
        h[0] = 0x46;
        h[20..24].copy_from_slice(&[1, 1, 1, 0]);
        fill_ipv4_header_checksum(&mut h);
        assert!(ipv4_header_ok(&h));
        assert!(smoltcp::wire::Ipv4Packet::new_unchecked(&h[..]).verify_checksum());
        h[22] ^= 4;
        assert!(!ipv4_header_ok(&h));
    }

    #[test]
    fn not_tcp_or_too_short_is_left_alone() {
        let mut p = packet(10, 1);
        p[9] = 17;
        let before = p.clone();
        fill_tcp_checksum(&mut p);
        assert_eq!(p, before);
        let mut short = packet(0, 1);
        short[2..4].copy_from_slice(&30u16.to_be_bytes());
        let before = short.clone();
        fill_tcp_checksum(&mut short);
        assert_eq!(short, before);
    }
}
