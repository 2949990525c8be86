//! net_tap without signals.
//!
//! DPDK 22.11's net_tap (drivers/net/tap/rte_eth_tap.c) receives by signal: `tun_alloc`, which
//! opens each tun queue fd (the keep-alive fd at probe, the queue fds at queue setup), takes the
//! first real-time signal from SIGRTMIN+1 whose handler is SIG_DFL, installs its handler there
//! (`tap_trigger_cb`, SA_RESTART) and sets F_SETSIG, O_ASYNC and F_SETOWN(getpid()) on the fd;
//! the kernel then queues that signal to the process for every frame the tap hands us, and the
//! handler bumps a global counter. `pmd_rx_burst` reads only when that counter moved since the
//! queue last found it empty. A signal sent to the process interrupts whichever application
//! thread takes it (nanosleep, epoll_wait, ... return early with EINTR: Redis's `DEBUG SLEEP`
//! ends at the first frame), and the application's sigaction sees a handler it never set.
//!
//! When no real-time signal is free, `tun_alloc` sets no O_ASYNC and no owner, sets the counter
//! to 0 for good, and `pmd_rx_burst` reads the fd at every call (its "no trigger" mode). We give
//! it that mode: for the start of a net_tap port, every real-time signal the PMD would look at
//! that has the default action is set to "ignore" ([`RtSignalsTaken`]), and put back as it was
//! right after. No signal is ever generated; an empty receive poll costs one `readv` returning
//! EAGAIN. The wake-up fd (the queue fd, level-triggered) does not depend on the signal.

use std::os::fd::RawFd;

/// The real-time signals net_tap's `tun_alloc` looks at: SIGRTMIN+1 up to, not including,
/// SIGRTMAX.
fn tap_candidates() -> std::ops::Range<libc::c_int> {
    libc::SIGRTMIN() + 1..libc::SIGRTMAX()
}

/// The real-time signals with the default action, set to "ignore" while this lives (the net_tap
/// PMD skips signals whose handler is not SIG_DFL). Dropping it restores each one that still
/// ignores to what it was; one the application changed meanwhile stays the application's.
pub(super) struct RtSignalsTaken {
    taken: Vec<(libc::c_int, libc::sigaction)>,
}

impl RtSignalsTaken {
    pub(super) fn take() -> RtSignalsTaken {
        let mut taken = Vec::new();
        for signo in tap_candidates() {
            // SAFETY: sigaction with a valid signal number and plain-data structs; SIG_IGN
            // runs no code of ours.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signo, std::ptr::null(), &mut old) != 0
                    || old.sa_sigaction != libc::SIG_DFL
                {
                    continue;
                }
                let mut ign: libc::sigaction = std::mem::zeroed();
                ign.sa_sigaction = libc::SIG_IGN;
                if libc::sigaction(signo, &ign, std::ptr::null_mut()) == 0 {
                    taken.push((signo, old));
                }
            }
        }
        RtSignalsTaken { taken }
    }
}

impl Drop for RtSignalsTaken {
    fn drop(&mut self) {
        for (signo, old) in &self.taken {
            // SAFETY: as in `take`; `old` is what sigaction reported for this signal.
            unsafe {
                let mut now: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(*signo, std::ptr::null(), &mut now) == 0
                    && now.sa_sigaction == libc::SIG_IGN
                {
                    libc::sigaction(*signo, old, std::ptr::null_mut());
                }
            }
        }
    }
}

/// Whether `fd` asks the kernel for signals (O_ASYNC): a net_tap queue fd must not.
pub(super) fn signals_on(fd: RawFd) -> bool {
    // SAFETY: F_GETFL on an fd; -1 if it is not open.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl >= 0 && fl & libc::O_ASYNC != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(signo: libc::c_int) -> libc::sighandler_t {
        // SAFETY: querying the disposition only.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(signo, std::ptr::null(), &mut sa), 0);
            sa.sa_sigaction
        }
    }

    extern "C" fn apps_handler(_: libc::c_int) {}

    /// Taken: every candidate has a handler that is not SIG_DFL (net_tap would find none);
    /// dropped: each is back, and one the application set meanwhile is left alone.
    #[test]
    fn the_real_time_signals_are_taken_and_given_back() {
        let first = tap_candidates().start;
        let before: Vec<_> = tap_candidates().map(handler).collect();
        let taken = RtSignalsTaken::take();
        assert!(tap_candidates().all(|s| handler(s) != libc::SIG_DFL));
        // SAFETY: installing a handler that does nothing.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = apps_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigaction(first, &sa, std::ptr::null_mut());
        }
        drop(taken);
        let after: Vec<_> = tap_candidates().map(handler).collect();
        assert_eq!(after[1..], before[1..]);
        assert_eq!(
            after[0],
            apps_handler as extern "C" fn(libc::c_int) as libc::sighandler_t
        );
        // SAFETY: restoring the default.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(first, &sa, std::ptr::null_mut());
        }
    }
}
