//! The library's own fds live above the application's: DPDK's files and sockets, the threads'
//! eventfds and epoll instances would otherwise take the lowest free numbers (as every new fd
//! does), and the application's sockets would get numbers a dozen higher than on the kernel.
//! Programs size tables by the fds they expect to open: wrk's event loop holds
//! 10 + 3 x connections fds and refuses any beyond.

use libc::c_int;

/// The lowest number of the library's own fds, if the fd limit leaves room (a quarter of it
/// at most).
fn base() -> c_int {
    const BASE: c_int = 256;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain out-parameter.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    let quarter = c_int::try_from(lim.rlim_cur / 4).unwrap_or(c_int::MAX);
    BASE.min(quarter)
}

/// `fd`, moved to a number at or above the library's base (close-on-exec); `fd` itself if
/// that cannot be done.
pub(super) fn lift(fd: c_int) -> c_int {
    let base = base();
    if fd < 0 || fd >= base {
        return fd;
    }
    // SAFETY: duplicating and closing our own fd.
    unsafe {
        let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, base);
        if high < 0 {
            return fd;
        }
        libc::close(fd);
        high
    }
}

/// While held, every free number below the library's base is taken (by /dev/null), so the fds
/// something else opens meanwhile (DPDK starting) land above it; dropping it frees them.
pub(super) struct LowFds(Vec<c_int>);

impl LowFds {
    pub(super) fn hold() -> LowFds {
        let base = base();
        let mut taken = Vec::new();
        loop {
            // SAFETY: opening /dev/null read-only (a NUL-terminated path).
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                break;
            }
            if fd >= base {
                // SAFETY: our own fd, just opened.
                unsafe { libc::close(fd) };
                break;
            }
            taken.push(fd);
        }
        LowFds(taken)
    }
}

impl Drop for LowFds {
    fn drop(&mut self) {
        for &fd in &self.0 {
            // SAFETY: closing the placeholders this value opened.
            unsafe { libc::close(fd) };
        }
    }
}
