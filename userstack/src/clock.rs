//! The stack's clock: monotonic microseconds since the first call, as a smoltcp `Instant`.
//! `std::time::Instant` reads CLOCK_MONOTONIC through the vDSO: no system call.

use std::sync::OnceLock;

static BASE: OnceLock<std::time::Instant> = OnceLock::new();

pub fn now() -> smoltcp::time::Instant {
    let base = *BASE.get_or_init(std::time::Instant::now);
    // Start at 1 s so that "time 0" never means "now".
    smoltcp::time::Instant::from_micros(base.elapsed().as_micros() as i64 + 1_000_000)
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
