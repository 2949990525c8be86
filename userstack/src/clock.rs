//! The stack's clock: monotonic microseconds since the first call, as a smoltcp `Instant`.
//! CLOCK_MONOTONIC (the clock of `std::time::Instant`), read through the vDSO: no system
//! call, and no more arithmetic than microseconds need (a `std::time::Instant`'s `elapsed`
//! cost ~140 instructions, half of it in the subtraction of two timespecs).

use std::sync::OnceLock;

/// The clock's reading at the first call, in microseconds.
static BASE: OnceLock<i64> = OnceLock::new();

/// CLOCK_MONOTONIC in microseconds.
#[inline]
#[allow(unsafe_code)]
fn monotonic_us() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000 + ts.tv_nsec / 1_000
}

pub fn now() -> smoltcp::time::Instant {
    // The base first: a reading after it is never below it, also on a thread that lost the
    // race to set it.
    let base = *BASE.get_or_init(monotonic_us);
    let us = monotonic_us();
    // Start at 1 s so that "time 0" never means "now".
    smoltcp::time::Instant::from_micros(us - base + 1_000_000)
}

/// Converts a stack instant back to a `std::time::Instant`-relative duration from now.
pub fn until(deadline: smoltcp::time::Instant) -> std::time::Duration {
    let n = now();
    if deadline <= n {
        std::time::Duration::ZERO
    } else {
        std::time::Duration::from_micros((deadline - n).total_micros())
    }
}

/// `d` as a `timespec` (for ppoll's microsecond timeouts).
pub fn timespec(d: std::time::Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    }
}
