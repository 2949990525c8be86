//! The mode word: which of the library's features this process uses. Every hook loads it
//! before anything else; zero means pure passthrough. Bits are only ever set.

use std::sync::atomic::{AtomicU32, Ordering};

/// Mode bit: `MTCP_SHIM_TRACE` is set; every hook call is counted.
pub const MODE_TRACE: u32 = 1;
/// Mode bit: `MTCP_PORTS` is set (valid or not).
pub const MODE_CONFIG: u32 = 2;
/// Mode bit: the fd table exists (some fd was ours at some point).
pub const MODE_TABLE: u32 = 4;

/// Zero means "pure passthrough": the hooks forward without looking further.
pub(crate) static MODE: AtomicU32 = AtomicU32::new(0);

/// Sets mode bits (they are never cleared).
pub(crate) fn set_mode(bits: u32) {
    MODE.fetch_or(bits, Ordering::Release);
}

/// The current mode bits.
pub fn mode() -> u32 {
    MODE.load(Ordering::Relaxed)
}
