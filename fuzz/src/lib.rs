//! What each fuzz target does with one input. The libFuzzer binaries (fuzz/libfuzzer, built
//! and run by ci/fuzz.sh) call these; the corpus replay tests (fuzz/tests/corpus.rs) run every
//! input kept in fuzz/corpus through them in every test run, on stable.
//!
//! - [`frames`]: frames into the stack's receive path (Ethernet, ARP, IPv4, TCP header and
//!   options) while it holds connections in every state, and the application's calls between
//!   them. Checks that nothing panics and that every frame the stack sends is well formed.
//! - [`config`]: the MTCP_* variables through the configuration parser. Checks that nothing
//!   panics and that an accepted device cannot add arguments of its own to DPDK's command line.
//! - [`resp`]: RESP through the Redis cache's parsers and through a cache whose connection is
//!   up (client requests, Redis's replies and invalidations). Checks that nothing panics and
//!   that the cache answers only whole GET requests.
//! - [`tcp`]: segments into the stack's TCP engine (`userstack::tcp`) in a connection with
//!   data both ways: raw, or the peer's own with fields and SACK blocks rewritten, with time
//!   passing and the application's calls between them. Checks that nothing panics, that the
//!   engine's invariants hold after every step, and that what it sends parses back.

#![deny(unsafe_code)]

mod config;
mod frames;
mod resp;
mod tcp;

pub use config::config;
pub use frames::frames;
pub use resp::resp;
pub use tcp::tcp;

/// Reads an input front to back; past its end every read is zero.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Up to `n` bytes (fewer at the end).
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }
}
