//! TCP sequence numbers: comparison modulo 2^32, and what the sequence numbers of a
//! connection's transmitted segments tell (the highest sent, the last acknowledgement sent,
//! retransmissions), recorded in its [`TxTrack`] on the way out.

use crate::net::TxTrack;
use crate::stats::Stats;

/// Compares sequence numbers modulo 2^32.
pub fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The window scale option's shift in a SYN's options (0 without one).
fn window_scale(mut opts: &[u8]) -> u8 {
    while let [kind, rest @ ..] = opts {
        match *kind {
            0 => break,
            1 => opts = rest,
            _ => {
                let len = usize::from(*rest.first().unwrap_or(&0));
                if len < 2 || len > opts.len() {
                    break;
                }
                if *kind == 3 && len == 3 {
                    return opts[2].min(14);
                }
                opts = &opts[len..];
            }
        }
    }
    0
}

pub(crate) fn count_retransmit(ip: &[u8], t: &mut TxTrack, stats: &mut Stats) {
    if ip.len() < 20 || ip[9] != 6 {
        return;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    if total < ihl + 20 {
        return;
    }
    let tcp = &ip[ihl..total];
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let doff = usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    if flags & 0x10 != 0 {
        t.last_ack_sent = Some(u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]));
    }
    if flags & 0x02 != 0 {
        t.wshift = window_scale(&tcp[20.min(tcp.len())..doff.min(tcp.len())]);
    }
    let seg_len = tcp.len().saturating_sub(doff) as u32
        + u32::from(flags & 0x02 != 0)
        + u32::from(flags & 0x01 != 0);
    if seg_len == 0 {
        return;
    }
    let end = seq.wrapping_add(seg_len);
    match t.snd_max {
        Some(max) if seq_lt(seq, max) => {
            stats.tcp_retransmits += 1;
            t.retransmits = t.retransmits.wrapping_add(1);
            if seq_lt(max, end) {
                t.snd_max = Some(end);
            }
        }
        _ => t.snd_max = Some(end),
    }
}
