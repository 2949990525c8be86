//! Where DPDK's own messages go. The EAL writes them to the application's stderr (and syslog)
//! by default; a start of net_tap alone prints half a dozen errors that are no error for us (no
//! `multiq` qdisc for rte_flow, no secondary process to tell). Here they go to [`sink`]:
//!
//! - with `MTCP_LOG` set, to stderr, at the level it names (`eal::dpdk_log_level`), as asked;
//! - otherwise they are held while the port starts, written to stderr only if the start fails
//!   (DPDK's reason comes just before ours), and dropped once it succeeded, with whatever DPDK
//!   says later.

use std::os::raw::c_char;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// At most this much of DPDK's output is held during a start (its messages at the default
/// level are a few lines; a start that fails says why in its last ones).
const HELD_MAX: usize = 64 << 10;

struct Held {
    /// Messages are held (`MTCP_LOG` unset, the start not over yet).
    holding: bool,
    text: Vec<u8>,
}

static PRINT: AtomicBool = AtomicBool::new(false);
static HELD: Mutex<Held> = Mutex::new(Held {
    holding: false,
    text: Vec::new(),
});
/// Set while the net_tap start runs with the real-time signals taken (`signals.rs`): the PMD
/// then says that it found no free one, which is what we want, and no news to the user.
static QUIET_RT_SIGNALS: AtomicBool = AtomicBool::new(false);

fn write_stderr(mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: writing from a valid buffer to fd 2.
        let n = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        b = &b[n as usize..];
    }
}

/// One write of DPDK's log stream (a whole message).
extern "C" fn sink(buf: *const c_char, len: usize) {
    if buf.is_null() || len == 0 {
        return;
    }
    // SAFETY: the stream hands us `len` readable bytes.
    let msg = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    if QUIET_RT_SIGNALS.load(Ordering::Relaxed) && is_rt_signal_notice(msg) {
        return;
    }
    if PRINT.load(Ordering::Relaxed) {
        write_stderr(msg);
        return;
    }
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    if held.holding && held.text.len() + msg.len() <= HELD_MAX {
        held.text.extend_from_slice(msg);
    }
}

/// net_tap's messages when it finds no free real-time signal ("All rt-signals are in use",
/// "No Rx trigger signal available").
fn is_rt_signal_notice(msg: &[u8]) -> bool {
    let has = |needle: &[u8]| msg.windows(needle.len()).any(|w| w == needle);
    has(b"rt-signals are in use") || has(b"Rx trigger signal")
}

/// Takes DPDK's log before the EAL starts: printed if `print` (MTCP_LOG set), else held until
/// [`start_over`].
pub(super) fn capture(print: bool) {
    PRINT.store(print, Ordering::Relaxed);
    HELD.lock().unwrap_or_else(|e| e.into_inner()).holding = !print;
    if !dpdk_sys::rte_log_to(sink) {
        tracing::warn!("cannot redirect DPDK's log: it goes to stderr");
    }
}

/// The start is over: if it failed, what DPDK said during it goes to stderr now; from here on,
/// unless printed, DPDK's messages are dropped.
pub(super) fn start_over(failed: bool) {
    let text = {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        held.holding = false;
        std::mem::take(&mut held.text)
    };
    if failed {
        write_stderr(&text);
    }
}

/// While the guard lives, net_tap's "no free real-time signal" messages are dropped.
pub(super) struct QuietRtSignals;

impl QuietRtSignals {
    pub(super) fn new() -> QuietRtSignals {
        QUIET_RT_SIGNALS.store(true, Ordering::Relaxed);
        QuietRtSignals
    }
}

impl Drop for QuietRtSignals {
    fn drop(&mut self) {
        QUIET_RT_SIGNALS.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::is_rt_signal_notice;

    #[test]
    fn the_tap_pmds_no_signal_notices_are_recognised() {
        assert!(is_rt_signal_notice(
            b"rte_eth_tap: tun_alloc(): All rt-signals are in use\n"
        ));
        assert!(is_rt_signal_notice(
            b"tun_alloc(): No Rx trigger signal available\n"
        ));
        assert!(!is_rt_signal_notice(
            b"tun_alloc(): Unable to set net_tap0 to nonblocking\n"
        ));
    }
}
