//! Raw-syscall versions of the calls whose kernel interface differs from libc's, for the one
//! case where a hook cannot reach libc (re-entered while this thread is inside dlsym), and the
//! `_FORTIFY_SOURCE` checks, shared with the ops. Each returns what `libc::syscall` returns.

use libc::timespec;
use libc::{c_int, c_long, c_void, fd_set, nfds_t, pollfd, sigset_t, size_t, sockaddr, socklen_t};

/// The kernel's sigset size (`_NSIG / 8`), which ppoll/pselect6/epoll_pwait take.
pub(crate) const NSIG_BYTES: usize = 8;

extern "C" {
    /// glibc's "*** buffer overflow detected ***: terminated" + abort.
    fn __chk_fail() -> !;
}

/// The check of `__read_chk`/`__recv_chk`/`__recvfrom_chk`: reading `len` bytes into a buffer
/// the compiler knows to be `buflen` long.
#[inline]
pub(crate) fn check_len(len: size_t, buflen: size_t) {
    if len > buflen {
        // SAFETY: __chk_fail takes nothing and does not return.
        unsafe { __chk_fail() }
    }
}

/// The check of `__poll_chk`/`__ppoll_chk`: `nfds` entries in an array of `fdslen` bytes.
#[inline]
pub(crate) fn check_fds(nfds: nfds_t, fdslen: size_t) {
    if (fdslen / std::mem::size_of::<pollfd>()) < nfds as usize {
        // SAFETY: as above.
        unsafe { __chk_fail() }
    }
}

/// ppoll: the kernel writes the remaining time back, glibc's ppoll does not; pass a copy.
///
/// # Safety
/// ppoll's C contract.
pub(crate) unsafe fn ppoll(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_long {
    // SAFETY: `timeout` is null or valid per the caller's contract.
    let mut copy = unsafe { timeout.as_ref() }.copied();
    let tp = copy
        .as_mut()
        .map_or(std::ptr::null_mut(), |t| t as *mut timespec);
    // SAFETY: ppoll(2) with the caller's arguments and a private copy of the timeout.
    unsafe { libc::syscall(libc::SYS_ppoll, fds, nfds, tp, sigmask, NSIG_BYTES) }
}

/// pselect: pselect6 takes the sigmask as {pointer, size}, and writes the timeout back.
///
/// # Safety
/// pselect's C contract.
pub(crate) unsafe fn pselect(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_long {
    // SAFETY: `timeout` is null or valid per the caller's contract.
    let mut copy = unsafe { timeout.as_ref() }.copied();
    let tp = copy
        .as_mut()
        .map_or(std::ptr::null_mut(), |t| t as *mut timespec);
    let data: [usize; 2] = [sigmask as usize, NSIG_BYTES];
    let dp = if sigmask.is_null() {
        std::ptr::null()
    } else {
        data.as_ptr()
    };
    // SAFETY: pselect6(2) with the caller's sets, a private timeout and the sigmask pair.
    unsafe { libc::syscall(libc::SYS_pselect6, nfds, r, w, e, tp, dp) }
}

/// `__read_chk` by syscall.
///
/// # Safety
/// read's C contract.
pub(crate) unsafe fn read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> c_long {
    check_len(n, buflen);
    // SAFETY: read(2) with the caller's arguments.
    unsafe { libc::syscall(libc::SYS_read, fd, buf, n) }
}

/// `__recv_chk`/`__recvfrom_chk` by syscall.
///
/// # Safety
/// recvfrom's C contract.
pub(crate) unsafe fn recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> c_long {
    check_len(len, buflen);
    // SAFETY: recvfrom(2) with the caller's arguments.
    unsafe { libc::syscall(libc::SYS_recvfrom, fd, buf, len, flags, addr, alen) }
}

/// `__poll_chk` by syscall.
///
/// # Safety
/// poll's C contract.
pub(crate) unsafe fn poll_chk(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> c_long {
    check_fds(nfds, fdslen);
    // SAFETY: poll(2) with the caller's arguments.
    unsafe { libc::syscall(libc::SYS_poll, fds, nfds, timeout) }
}

/// `__ppoll_chk` by syscall.
///
/// # Safety
/// ppoll's C contract.
pub(crate) unsafe fn ppoll_chk(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
    fdslen: size_t,
) -> c_long {
    check_fds(nfds, fdslen);
    // SAFETY: as ppoll.
    unsafe { ppoll(fds, nfds, timeout, sigmask) }
}

/// `syscall(nr, args...)` without libc (the fallback of the `syscall` hook itself, whose libc
/// name is the hook): the instruction, and libc's convention for the result (-1 and errno).
///
/// # Safety
/// The system call `nr`'s contract for these arguments.
pub(crate) unsafe fn syscall6(nr: c_long, a: [c_long; 6]) -> c_long {
    let r: c_long;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the x86-64 Linux system call convention: number in rax, arguments in rdi, rsi,
    // rdx, r10, r8, r9; the kernel clobbers rcx and r11; the caller vouches for the call.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => r,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: the AArch64 Linux system call convention: number in x8, arguments and result in
    // x0..x5; the caller vouches for the call.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") nr,
            inlateout("x0") a[0] => r,
            in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
            options(nostack),
        );
    }
    if (-4095..0).contains(&r) {
        crate::errno::set(-r as c_int);
        -1
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ppoll_and_pselect_leave_the_timeout_alone() {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) into a 2-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut p = [pollfd {
            fd: fds[0],
            events: libc::POLLIN,
            revents: 0,
        }];
        let t = timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        // SAFETY: valid pollfd array, timeout, no sigmask.
        let n = unsafe { ppoll(p.as_mut_ptr(), 1, &t, std::ptr::null()) };
        assert_eq!(n, 0);
        assert_eq!((t.tv_sec, t.tv_nsec), (0, 1_000_000));
        // SAFETY: an empty fd_set (all zero is FD_ZERO).
        let mut set: fd_set = unsafe { std::mem::zeroed() };
        // SAFETY: FD_SET on a valid set with an fd < FD_SETSIZE.
        unsafe { libc::FD_SET(fds[0], &mut set) };
        let mask: sigset_t = {
            // SAFETY: sigemptyset on a zeroed sigset_t.
            let mut m = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { libc::sigemptyset(&mut m) };
            m
        };
        // SAFETY: valid set, timeout and sigmask.
        let n = unsafe {
            pselect(
                fds[0] + 1,
                &mut set,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &t,
                &mask,
            )
        };
        assert_eq!(n, 0);
        assert_eq!((t.tv_sec, t.tv_nsec), (0, 1_000_000));
        // SAFETY: closing the pipe this test opened.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn checks_pass_within_bounds() {
        check_len(10, 10);
        check_len(0, 0);
        check_fds(2, 2 * std::mem::size_of::<pollfd>());
        check_fds(0, 0);
    }
}
