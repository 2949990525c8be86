//! `MTCP_PORTS`: the TCP ports whose listening sockets the user-space stack serves.
//!
//! A comma-separated list of ports 1-65535 (`6379` or `6379, 6380`). Unset or empty: the
//! library is a pure passthrough. A value that cannot be used is reported once on stderr,
//! naming the variable and repeating the value, and the state is [`State::Invalid`]: the
//! library serves no port then, and the ports that did parse stay recorded so that the bind
//! of such a port can be refused rather than quietly handed to the kernel (pitfall 15).
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

/// Why a value of `MTCP_PORTS` is not a list of ports: the first bad item and what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortsError<'a> {
    pub item: &'a [u8],
    pub why: &'static str,
}

/// Parses a `MTCP_PORTS` value, calling `add` for every valid port. Items are separated by
/// commas and may be surrounded by blanks. All items are looked at; the result is the number of
/// valid items, or the first bad one.
pub fn parse_ports(value: &[u8], mut add: impl FnMut(u16)) -> Result<usize, PortsError<'_>> {
    let mut first_err = None;
    let mut n = 0;
    for raw in value.split(|&b| b == b',') {
        let item = raw.trim_ascii();
        match parse_port(item) {
            Ok(p) => {
                add(p);
                n += 1;
            }
            Err(why) => {
                first_err.get_or_insert(PortsError { item, why });
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

fn parse_port(item: &[u8]) -> Result<u16, &'static str> {
    if item.is_empty() {
        return Err("is an empty item");
    }
    if !item.iter().all(u8::is_ascii_digit) {
        return Err("is not a port number");
    }
    // At most 5 significant digits fit; longer runs (other than leading zeros) are too big.
    let digits = {
        let nz = item.iter().position(|&b| b != b'0').unwrap_or(item.len());
        &item[nz..]
    };
    if digits.len() > 5 {
        return Err("is out of range");
    }
    let v = digits
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    if v == 0 || v > 65535 {
        return Err("is out of range");
    }
    Ok(v as u16)
}

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
                "{VAR}=\"{}\": \"{}\" {}; expected a comma-separated list of TCP ports \
                 1-65535, e.g. 6379,6380. No port will be served by the user-space stack",
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

    fn parse(s: &str) -> Result<Vec<u16>, (String, &'static str)> {
        let mut v = Vec::new();
        match parse_ports(s.as_bytes(), |p| v.push(p)) {
            Ok(n) => {
                assert_eq!(n, v.len());
                Ok(v)
            }
            Err(e) => Err((String::from_utf8_lossy(e.item).into_owned(), e.why)),
        }
    }

    #[test]
    fn valid_lists() {
        assert_eq!(parse("6379"), Ok(vec![6379]));
        assert_eq!(parse("6379,6380"), Ok(vec![6379, 6380]));
        assert_eq!(parse(" 1 , 65535 "), Ok(vec![1, 65535]));
        assert_eq!(parse("080"), Ok(vec![80]));
        assert_eq!(parse("0000000000443"), Ok(vec![443]));
        assert_eq!(parse("7,7"), Ok(vec![7, 7]));
    }

    #[test]
    fn bad_items_are_named() {
        assert_eq!(parse("0"), Err(("0".into(), "is out of range")));
        assert_eq!(parse("65536"), Err(("65536".into(), "is out of range")));
        assert_eq!(
            parse("99999999999"),
            Err(("99999999999".into(), "is out of range"))
        );
        assert_eq!(parse("abc"), Err(("abc".into(), "is not a port number")));
        assert_eq!(parse("-1"), Err(("-1".into(), "is not a port number")));
        assert_eq!(
            parse("6379-6380"),
            Err(("6379-6380".into(), "is not a port number"))
        );
        assert_eq!(parse("6379,"), Err(("".into(), "is an empty item")));
        assert_eq!(parse("6379,,1"), Err(("".into(), "is an empty item")));
        assert_eq!(parse("+80"), Err(("+80".into(), "is not a port number")));
    }

    #[test]
    fn valid_items_of_a_bad_list_are_still_reported() {
        let mut v = Vec::new();
        let e = parse_ports(b"6379,x,6380", |p| v.push(p)).unwrap_err();
        assert_eq!(e.item, b"x");
        assert_eq!(v, vec![6379, 6380]);
    }

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
