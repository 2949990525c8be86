//! `MTCP_PORTS`: the TCP ports whose listening sockets the user-space stack serves.
//!
//! A comma-separated list of ports 1-65535 (`6379` or `6379, 6380`). Unset or empty: the
//! library is a pure passthrough. A value that cannot be used is reported once on stderr,
//! naming the variable and repeating the value, and the state is [`State::Invalid`]: the
//! library serves no port then, and the ports that did parse stay recorded so that the bind
//! of such a port can be refused rather than quietly handed to the kernel.
//!
//! Read once, lazily, on the first call of any hook (never in an ELF constructor), into
//! statics: no allocation, nothing hooked is called while parsing.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// The variable's name.
pub const VAR: &str = "MTCP_PORTS";

/// What `MTCP_PORTS` said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Unset or empty: pure passthrough.
    Unset,
    /// A valid list: [`is_flagged`] tells which ports.
    Ports,
    /// Set, but not a valid list (reported on stderr): no port is served.
    Invalid,
}

const UNSET: u8 = 0;
const PORTS_OK: u8 = 1;
const INVALID: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNSET);
/// One bit per port. Written only by `init_from_env`, before the mode word that makes any hook
/// look at it is published.
static PORTS: [AtomicU64; 1024] = [const { AtomicU64::new(0) }; 1024];

/// The state read from the environment (`Unset` before the first hook call).
pub fn state() -> State {
    match STATE.load(Ordering::Acquire) {
        PORTS_OK => State::Ports,
        INVALID => State::Invalid,
        _ => State::Unset,
    }
}

/// Whether `port` is listed in `MTCP_PORTS` (also when the list as a whole was invalid: the
/// caller checks [`state`]).
#[inline]
pub fn is_flagged(port: u16) -> bool {
    let w = PORTS[usize::from(port >> 6)].load(Ordering::Relaxed);
    w & (1u64 << (port & 63)) != 0
}

/// The listed ports, in increasing order.
pub fn flagged_ports() -> impl Iterator<Item = u16> {
    (1..=u16::MAX).filter(|&p| is_flagged(p))
}

// The parser is userstack's (mtcprun checks a value with the same code before it starts a
// program): it allocates nothing, so it is safe here.
pub use userstack::config::{parse_ports, PortsError, PORTS_EXPECTED};

/// Reads `MTCP_PORTS` from the environment into the statics; reports a bad value on stderr.
/// Called once, by `init`.
pub(crate) fn init_from_env() {
    // SAFETY: getenv with a NUL-terminated name; the result (if any) points into the
    // environment, which we only read here, before returning.
    let p = unsafe { libc::getenv(c"MTCP_PORTS".as_ptr()) };
    if p.is_null() {
        return;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    let value = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
    if value.trim_ascii().is_empty() {
        return; // empty counts as unset, as for every MTCP_* variable
    }
    let res = parse_ports(value, |port| {
        PORTS[usize::from(port >> 6)].fetch_or(1u64 << (port & 63), Ordering::Relaxed);
    });
    match res {
        Ok(_) => STATE.store(PORTS_OK, Ordering::Release),
        Err(e) => {
            STATE.store(INVALID, Ordering::Release);
            crate::shim_log!(
                "{VAR}=\"{}\": \"{}\" {}; {PORTS_EXPECTED}. No port will be served by the \
                 user-space stack",
                value.escape_ascii(),
                e.item.escape_ascii(),
                e.why
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_lookup() {
        // The statics are process-wide; use ports no other test sets.
        for p in [1u16, 63, 64, 65535] {
            PORTS[usize::from(p >> 6)].fetch_or(1u64 << (p & 63), Ordering::Relaxed);
        }
        for p in [1u16, 63, 64, 65535] {
            assert!(is_flagged(p));
        }
        for p in [0u16, 2, 62, 65, 65534] {
            assert!(!is_flagged(p));
        }
        let all: Vec<u16> = flagged_ports().collect();
        assert_eq!(all, vec![1, 63, 64, 65535]);
    }
}
