//! A monotonic instant for the waits of the socket calls: the part of `std::time::Instant`'s
//! API they use, as nanoseconds of CLOCK_MONOTONIC (the clock of `std::time::Instant`) in one
//! integer. The std type keeps a timespec, and its subtraction of two (seconds and
//! nanoseconds, each checked) cost ~60 instructions; an event loop's epoll_wait makes several.

use std::ops::Add;
use std::time::Duration;

const NANOS: u64 = 1_000_000_000;

/// A reading of CLOCK_MONOTONIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// Now, read through the vDSO (no system call).
    #[inline]
    pub fn now() -> Instant {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Instant(ts.tv_sec as u64 * NANOS + ts.tv_nsec as u64)
    }

    /// The time from `earlier` to this one; zero if `earlier` is later.
    #[inline]
    pub fn duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// [`Instant::duration_since`] (which saturates too).
    #[inline]
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        self.duration_since(earlier)
    }

    /// The time since this instant.
    #[inline]
    pub fn elapsed(self) -> Duration {
        Instant::now().duration_since(self)
    }

    /// `d` later, unless that overflows.
    #[inline]
    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        let n = d
            .as_secs()
            .checked_mul(NANOS)?
            .checked_add(u64::from(d.subsec_nanos()))?;
        self.0.checked_add(n).map(Instant)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// `d` later, or the last instant there is (~584 years after boot) if that is later:
    /// a deadline of a timeout that long is one that never comes. (`std::time::Instant`'s
    /// panics only past ~2^63 seconds, and an application may give poll, select or
    /// SO_RCVTIMEO any number of seconds.)
    fn add(self, d: Duration) -> Instant {
        self.checked_add(d).unwrap_or(Instant(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_std_instant() {
        let (a, s) = (Instant::now(), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(2));
        let (b, t) = (Instant::now(), std::time::Instant::now());
        let (ours, std) = (b.duration_since(a), t.duration_since(s));
        assert!(ours >= Duration::from_millis(2), "{ours:?}");
        assert!(
            ours.abs_diff(std) < Duration::from_millis(1),
            "{ours:?} / {std:?}"
        );
        assert_eq!(a.duration_since(b), Duration::ZERO);
        assert_eq!(
            a + Duration::from_millis(5),
            a.checked_add(Duration::from_millis(5)).unwrap()
        );
        assert!(a + Duration::from_millis(5) > a);
        assert_eq!(
            (a + Duration::new(3, 7)).duration_since(a),
            Duration::new(3, 7)
        );
        assert_eq!(a.checked_add(Duration::MAX), None);
        // A timeout of ~1e18 s (a select's or a ppoll's time_t) is a deadline that never comes.
        let far = a + Duration::from_secs(1 << 60);
        assert!(far > a + Duration::from_secs(1 << 33));
        assert_eq!(far, a + Duration::MAX);
    }
}
