//! The frame of a connection's usual segment, written in one pass: a segment whose only TCP
//! option is the timestamp (every data segment and ACK of an established connection that
//! negotiated timestamps, when no SACK block is owed), to a next hop the connection has
//! cached. Ethernet, IPv4 and TCP headers go in at fixed offsets (one bounds check for the
//! 66 bytes), the payload after them, then both checksums. Everything else (SYNs, SACK
//! blocks, no timestamps, a hop to resolve) takes the general path in `Conn::transmit`,
//! which writes the same bytes for these segments (test below).

use crate::csum;
use crate::net::ETHERTYPE_IPV4;
use crate::tcp::seg::Out;
use crate::tcp::Payload;

/// Ethernet, IPv4, and TCP with the timestamp option (NOP, NOP, kind 8, length 10).
pub(super) const TS_HEADERS: usize = 14 + 20 + 32;

/// Whether the timestamp is `out`'s only option.
#[inline]
pub(super) fn ts_only(out: &Out) -> bool {
    out.ts.is_some()
        && out.mss.is_none()
        && out.wscale.is_none()
        && !out.sack_perm
        && out.nsack == 0
}

/// What a connection's segments share: its IPv4 header template (length and checksum zero)
/// and that template's sum, the sum of its TCP pseudo-header without the length, its ports.
pub(super) struct Heads<'a> {
    pub ip: &'a [u8; 20],
    pub ip_sum: u64,
    pub pseudo: u64,
    pub ports: (u16, u16),
}

/// Writes `out` (`ts_only`) with payload `a` then `b` as a whole frame into `frame`, exactly
/// `TS_HEADERS` + payload bytes long, from MAC `src` to MAC `dst`.
#[inline(always)]
pub(super) fn write_ts_frame(
    frame: &mut [u8],
    (dst, src): ([u8; 6], [u8; 6]),
    heads: &Heads<'_>,
    out: &Out,
    (a, b): Payload,
) {
    let (ts_val, ts_ecr) = out.ts.unwrap_or_default();
    let ip_len = (frame.len() - 14) as u16;
    let (h, pay) = frame.split_at_mut(TS_HEADERS);
    let h: &mut [u8; TS_HEADERS] = h.try_into().expect("a frame holds its headers");
    h[0..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&src);
    h[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    h[14..34].copy_from_slice(heads.ip);
    h[16..18].copy_from_slice(&ip_len.to_be_bytes());
    h[24..26].copy_from_slice(&csum::ipv4_checksum(heads.ip_sum, ip_len));
    h[34..36].copy_from_slice(&heads.ports.0.to_be_bytes());
    h[36..38].copy_from_slice(&heads.ports.1.to_be_bytes());
    h[38..42].copy_from_slice(&out.seq.to_be_bytes());
    h[42..46].copy_from_slice(&out.ack.to_be_bytes());
    h[46] = (32 / 4) << 4;
    h[47] = out.flags;
    h[48..50].copy_from_slice(&out.wnd.to_be_bytes());
    h[50..54].fill(0);
    h[54..58].copy_from_slice(&[1, 1, 8, 10]);
    h[58..62].copy_from_slice(&ts_val.to_be_bytes());
    h[62..66].copy_from_slice(&ts_ecr.to_be_bytes());
    let (pa, pb) = pay.split_at_mut(a.len());
    pa.copy_from_slice(a);
    if !b.is_empty() {
        // (A call of memcpy saved for the usual payload, which does not wrap.)
        pb.copy_from_slice(b);
    }
    csum::fill_tcp_checksum_with(heads.pseudo, &mut frame[34..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::write_eth;
    use crate::tcp::seg::{ACK, FIN, PSH};

    /// The general path's bytes: what `Conn::transmit` and `Net::send_ip` write.
    fn general(
        (dst, src): ([u8; 6], [u8; 6]),
        heads: &Heads<'_>,
        out: &Out,
        (a, b): Payload,
    ) -> Vec<u8> {
        let hl = out.header_len();
        let len = 20 + hl + a.len() + b.len();
        let mut f = vec![0xa5; 14 + len];
        write_eth(&mut f, dst, src, ETHERTYPE_IPV4);
        let p = &mut f[14..];
        p[..20].copy_from_slice(heads.ip);
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[10..12].copy_from_slice(&csum::ipv4_checksum(heads.ip_sum, len as u16));
        out.write(heads.ports.0, heads.ports.1, &mut p[20..20 + hl]);
        let d = 20 + hl;
        p[d..d + a.len()].copy_from_slice(a);
        p[d + a.len()..len].copy_from_slice(b);
        csum::fill_tcp_checksum_with(heads.pseudo, &mut p[20..len]);
        f
    }

    #[test]
    fn writes_what_the_general_path_writes() {
        let ip = csum::ipv4_tcp_template(
            std::net::Ipv4Addr::new(198, 18, 0, 2),
            std::net::Ipv4Addr::new(198, 18, 0, 1),
            0x10,
            64,
        );
        let heads = Heads {
            ip: &ip,
            ip_sum: csum::ipv4_template_sum(&ip),
            pseudo: csum::tcp_pseudo_sum(&ip),
            ports: (6379, 51234),
        };
        let macs = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let data: Vec<u8> = (0..1500u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for n in 0..600 {
            // Payload lengths of both parities, split anywhere (the send ring's wrap).
            let len = (n * 37 % 1449) * usize::from(n % 5 != 0);
            let cut = next() as usize % (len + 1);
            let (a, b) = (&data[..cut], &data[cut..len]);
            let out = Out {
                seq: next(),
                ack: next(),
                flags: [ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN][n % 4],
                wnd: next() as u16,
                ts: Some((next(), next())),
                ..Out::default()
            };
            assert!(ts_only(&out));
            let want = general(macs, &heads, &out, (a, b));
            let mut got = vec![0x5a; TS_HEADERS + len];
            write_ts_frame(&mut got, macs, &heads, &out, (a, b));
            assert_eq!(got, want, "segment {n}: {len} bytes cut at {cut}");
            assert!(csum::ipv4_header_ok(&got[14..34]));
            assert!(csum::tcp_checksum_ok(&got[14..], 20));
        }
    }

    #[test]
    fn only_timestamps_take_the_one_pass() {
        let ts = Out {
            ts: Some((1, 2)),
            ..Out::default()
        };
        assert!(ts_only(&ts));
        assert!(!ts_only(&Out::default()));
        assert!(!ts_only(&Out { nsack: 1, ..ts }));
        assert!(!ts_only(&Out {
            mss: Some(1460),
            ..ts
        }));
        assert!(!ts_only(&Out {
            wscale: Some(7),
            ..ts
        }));
        assert!(!ts_only(&Out {
            sack_perm: true,
            ..ts
        }));
    }
}
