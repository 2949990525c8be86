//! `MTCP_PCAP=FILE`: the stack's frames, both directions, in classic pcap format (readable by
//! `tcpdump -r`), because tcpdump on the host cannot see user-space traffic. Bounded by
//! `MTCP_PCAP_MAX` bytes; when off, the cost is one `Option` check per frame.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::stats::Stats;

const SNAPLEN: u32 = 65535;
const LINKTYPE_ETHERNET: u32 = 1;

pub struct PcapWriter {
    out: BufWriter<File>,
    written: u64,
    max: u64,
    dirty: bool,
}

impl PcapWriter {
    pub fn create(path: &str, max: u64) -> std::io::Result<PcapWriter> {
        let mut out = BufWriter::with_capacity(1 << 16, File::create(path)?);
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&SNAPLEN.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&h)?;
        out.flush()?;
        Ok(PcapWriter {
            out,
            written: 24,
            max,
            dirty: false,
        })
    }

    pub fn record(&mut self, frame: &[u8], stats: &mut Stats) {
        let len = frame.len().min(SNAPLEN as usize);
        if self.written + 16 + len as u64 > self.max {
            stats.pcap_truncated += 1;
            return;
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&(ts.as_secs() as u32).to_le_bytes());
        h[4..8].copy_from_slice(&ts.subsec_micros().to_le_bytes());
        h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        if self
            .out
            .write_all(&h)
            .and_then(|_| self.out.write_all(&frame[..len]))
            .is_ok()
        {
            self.written += 16 + len as u64;
            self.dirty = true;
            stats.pcap_written += 1;
        }
    }

    pub fn flush(&mut self) {
        if self.dirty {
            let _ = self.out.flush();
            self.dirty = false;
        }
    }
}

impl Drop for PcapWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}
