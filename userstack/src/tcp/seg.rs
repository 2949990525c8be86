//! TCP segments as the engine sees them: a received header and its options parsed in place
//! (the checksum was verified by the demux), and a segment to send written into a buffer
//! (the caller fills in the checksum).

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// At most this many SACK blocks in a segment we send (3 fit beside the timestamp option).
pub const MAX_SACK_OUT: usize = 3;

/// The options the engine acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Opts {
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_perm: bool,
    /// TSval, TSecr.
    pub ts: Option<(u32, u32)>,
    pub sack: [(u32, u32); 4],
    pub nsack: u8,
}

/// A received segment.
#[derive(Debug, Clone, Copy)]
pub struct Seg<'a> {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub wnd: u16,
    pub opts: Opts,
    pub payload: &'a [u8],
}

impl Seg<'_> {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Sequence space the segment takes: its payload, and one each for SYN and FIN.
    pub fn seq_len(&self) -> u32 {
        self.payload.len() as u32 + u32::from(self.has(SYN)) + u32::from(self.has(FIN))
    }
}

/// Parses a TCP header and its payload (`tcp` runs from the header to the end of the IP
/// payload). `None` when the header is malformed (too short, data offset out of range).
#[inline]
pub fn parse(tcp: &[u8]) -> Option<Seg<'_>> {
    if tcp.len() < 20 {
        return None;
    }
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 || doff > tcp.len() {
        return None;
    }
    let be32 = |i: usize| u32::from_be_bytes([tcp[i], tcp[i + 1], tcp[i + 2], tcp[i + 3]]);
    let mut seg = Seg {
        seq: be32(4),
        ack: be32(8),
        flags: tcp[13],
        wnd: u16::from_be_bytes([tcp[14], tcp[15]]),
        opts: Opts::default(),
        payload: &tcp[doff..],
    };
    if doff == 32 && tcp[20..24] == [1, 1, 8, 10] {
        // Timestamps alone, as Linux and most stacks send them on every segment after the
        // handshake (RFC 7323, appendix A's layout).
        seg.opts.ts = Some((be32(24), be32(28)));
    } else if doff > 20 {
        seg.opts = parse_opts(&tcp[20..doff]);
    }
    Some(seg)
}

fn parse_opts(mut o: &[u8]) -> Opts {
    let mut opts = Opts::default();
    while let [kind, rest @ ..] = o {
        match *kind {
            0 => break,
            1 => o = rest,
            _ => {
                let Some(&len) = rest.first() else { break };
                let len = usize::from(len);
                if len < 2 || len > o.len() {
                    break;
                }
                let body = &o[2..len];
                match (*kind, body.len()) {
                    (2, 2) => opts.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                    (3, 1) => opts.wscale = Some(body[0].min(14)),
                    (4, 0) => opts.sack_perm = true,
                    (5, n) if n % 8 == 0 => {
                        for b in body.chunks_exact(8).take(4) {
                            let s = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                            let e = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                            opts.sack[usize::from(opts.nsack)] = (s, e);
                            opts.nsack += 1;
                        }
                    }
                    (8, 8) => {
                        let v = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                        let e = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                        opts.ts = Some((v, e));
                    }
                    _ => {}
                }
                o = &o[len..];
            }
        }
    }
    opts
}

/// A segment to send: its header fields and options; the payload travels beside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Out {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub wnd: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_perm: bool,
    pub ts: Option<(u32, u32)>,
    pub sack: [(u32, u32); MAX_SACK_OUT],
    pub nsack: u8,
}

impl Out {
    /// Length of the options, padded to a multiple of 4.
    pub fn opts_len(&self) -> usize {
        let mut n = 0;
        if self.mss.is_some() {
            n += 4;
        }
        if self.sack_perm || self.ts.is_some() {
            // SACK-permitted + timestamps share 12 bytes; either alone takes 4 or 12 with NOPs.
            n += if self.ts.is_some() { 12 } else { 4 };
        }
        if self.wscale.is_some() {
            n += 4;
        }
        if self.nsack > 0 {
            n += 4 + 8 * usize::from(self.nsack);
        }
        n
    }

    pub fn header_len(&self) -> usize {
        20 + self.opts_len()
    }

    /// Writes the header with its options into `buf` (at least `header_len()` long), checksum
    /// zero; returns its length.
    #[inline]
    pub fn write(&self, src_port: u16, dst_port: u16, buf: &mut [u8]) -> usize {
        let len = self.header_len();
        let h = &mut buf[..len];
        h[0..2].copy_from_slice(&src_port.to_be_bytes());
        h[2..4].copy_from_slice(&dst_port.to_be_bytes());
        h[4..8].copy_from_slice(&self.seq.to_be_bytes());
        h[8..12].copy_from_slice(&self.ack.to_be_bytes());
        h[12] = ((len / 4) as u8) << 4;
        h[13] = self.flags;
        h[14..16].copy_from_slice(&self.wnd.to_be_bytes());
        h[16..20].fill(0);
        let mut o = 20;
        if let Some(mss) = self.mss {
            h[o..o + 4].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
            o += 4;
        }
        match (self.sack_perm, self.ts) {
            (true, Some((v, e))) => {
                h[o..o + 2].copy_from_slice(&[4, 2]);
                h[o + 2..o + 4].copy_from_slice(&[8, 10]);
                h[o + 4..o + 8].copy_from_slice(&v.to_be_bytes());
                h[o + 8..o + 12].copy_from_slice(&e.to_be_bytes());
                o += 12;
            }
            (false, Some((v, e))) => {
                h[o..o + 4].copy_from_slice(&[1, 1, 8, 10]);
                h[o + 4..o + 8].copy_from_slice(&v.to_be_bytes());
                h[o + 8..o + 12].copy_from_slice(&e.to_be_bytes());
                o += 12;
            }
            (true, None) => {
                h[o..o + 4].copy_from_slice(&[1, 1, 4, 2]);
                o += 4;
            }
            (false, None) => {}
        }
        if let Some(ws) = self.wscale {
            h[o..o + 4].copy_from_slice(&[1, 3, 3, ws]);
            o += 4;
        }
        if self.nsack > 0 {
            let n = usize::from(self.nsack);
            h[o..o + 4].copy_from_slice(&[1, 1, 5, (2 + 8 * n) as u8]);
            o += 4;
            for &(s, e) in &self.sack[..n] {
                h[o..o + 4].copy_from_slice(&s.to_be_bytes());
                h[o + 4..o + 8].copy_from_slice(&e.to_be_bytes());
                o += 8;
            }
        }
        debug_assert_eq!(o, len);
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_parses_back() {
        let cases = [
            Out {
                seq: 7,
                ack: 0,
                flags: SYN,
                wnd: 65535,
                mss: Some(1460),
                wscale: Some(7),
                sack_perm: true,
                ts: Some((1, 0)),
                ..Out::default()
            },
            Out {
                seq: 9,
                ack: 11,
                flags: ACK,
                wnd: 3,
                mss: Some(536),
                ..Out::default()
            },
            Out {
                seq: 1,
                ack: 2,
                flags: ACK | PSH,
                wnd: 100,
                ts: Some((5, 6)),
                sack: [(10, 20), (30, 40), (50, 60)],
                nsack: 3,
                ..Out::default()
            },
            Out {
                seq: 1,
                ack: 2,
                flags: ACK,
                sack: [(10, 20), (0, 0), (0, 0)],
                nsack: 1,
                ..Out::default()
            },
            Out {
                seq: 0xffff_fff0,
                ack: 0x8000_0001,
                flags: ACK | PSH,
                wnd: 501,
                ts: Some((0xdead_beef, 0x0102_0304)),
                ..Out::default()
            },
        ];
        for out in cases {
            let mut buf = [0u8; 80];
            let n = out.write(1000, 2000, &mut buf);
            assert!(n <= 60 && n % 4 == 0);
            buf[n..n + 3].copy_from_slice(b"abc");
            let seg = parse(&buf[..n + 3]).unwrap();
            assert_eq!(
                (seg.seq, seg.ack, seg.flags, seg.wnd),
                (out.seq, out.ack, out.flags, out.wnd)
            );
            assert_eq!(seg.opts.mss, out.mss);
            assert_eq!(seg.opts.wscale, out.wscale);
            assert_eq!(seg.opts.sack_perm, out.sack_perm);
            assert_eq!(seg.opts.ts, out.ts);
            assert_eq!(seg.opts.nsack, out.nsack);
            assert_eq!(
                &seg.opts.sack[..usize::from(out.nsack)],
                &out.sack[..usize::from(out.nsack)]
            );
            assert_eq!(seg.payload, b"abc");
            // The timestamps-alone shortcut reads what the general option parser reads.
            assert_eq!(seg.opts, parse_opts(&buf[20..n]));
        }
    }

    #[test]
    fn malformed_headers_and_options_are_refused_or_skipped() {
        assert!(parse(&[0; 19]).is_none());
        let mut h = [0u8; 24];
        h[12] = 4 << 4; // data offset 16
        assert!(parse(&h).is_none());
        h[12] = 7 << 4; // 28 > 24
        assert!(parse(&h).is_none());
        h[12] = 6 << 4;
        h[20..24].copy_from_slice(&[2, 9, 0, 0]); // MSS with a length past the header
        assert_eq!(parse(&h).unwrap().opts, Opts::default());
        h[20..24].copy_from_slice(&[5, 3, 0, 0]); // SACK of a partial block
        assert_eq!(parse(&h).unwrap().opts.nsack, 0);
    }
}
