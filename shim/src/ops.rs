//! What the library does with a call that may be its own: one function per line of the table,
//! with the same arguments, called by the hook (inside the re-entrancy guard, under
//! `catch_unwind`, errno saved) only when the line's gate passes.
//!
//! This layer has no user-space stack behind it yet: no fd ever becomes ours, so the ops that
//! need an fd of ours are unreachable and hand the call back ([`Bypass::NoStack`]). The ops gated
//! on `MTCP_PORTS` (socket, bind, listen, epoll_create*) run when it is set; `bind` says once,
//! on stderr, that a flagged port is served by the kernel in this build (pitfall 15: never
//! fall back silently).

use std::sync::atomic::{AtomicBool, Ordering};

use libc::{
    c_int, c_uint, c_ulong, c_void, epoll_event, fd_set, iovec, mmsghdr, msghdr, nfds_t, off64_t,
    off_t, pollfd, sigset_t, size_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
};

use crate::raw::{check_fds, check_len};

/// The result of an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Not the library's business after all: libc's function runs with the same arguments.
    Bypass(Bypass),
    /// Handled: the hook returns this value (errno untouched).
    Done(T),
    /// Handled, failed: the hook sets errno to this value and returns -1.
    Error(c_int),
}

/// Why a call went to libc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bypass {
    /// The call is not about one of the library's sockets.
    NotOurs,
    /// It would be ours, but this build has no user-space stack: the kernel handles it.
    NoStack,
}

use Outcome::Bypass as B;

const NOT_OURS: Outcome<c_int> = B(Bypass::NotOurs);

/// Ops on an fd of ours: unreachable until the stack is plugged in.
#[inline]
fn no_stack<T>() -> Outcome<T> {
    B(Bypass::NoStack)
}

// --- sockets --------------------------------------------------------------------------------

pub(crate) unsafe fn socket(_domain: c_int, _ty: c_int, _protocol: c_int) -> Outcome<c_int> {
    NOT_OURS
}

pub(crate) unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> Outcome<c_int> {
    // SAFETY: bind's contract: `addr` points to `len` readable bytes (or is invalid, and then
    // the kernel answers EFAULT; we only read it when `len` covers what we read).
    let Some(port) = (unsafe { sockaddr_port(addr, len) }) else {
        return NOT_OURS;
    };
    if crate::config::is_flagged(port) && is_stream(fd) {
        static SAID: AtomicBool = AtomicBool::new(false);
        if crate::config::state() == crate::config::State::Ports
            && !SAID.swap(true, Ordering::Relaxed)
        {
            crate::shim_log!(
                "port {port} is in MTCP_PORTS, but this build of mtcpshim has no user-space \
                 stack yet: the kernel serves it (said once)"
            );
        }
        return B(Bypass::NoStack);
    }
    NOT_OURS
}

pub(crate) unsafe fn listen(_fd: c_int, _backlog: c_int) -> Outcome<c_int> {
    NOT_OURS
}

pub(crate) unsafe fn accept(_fd: c_int, _a: *mut sockaddr, _l: *mut socklen_t) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn accept4(
    _fd: c_int,
    _a: *mut sockaddr,
    _l: *mut socklen_t,
    _flags: c_int,
) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn connect(_fd: c_int, _a: *const sockaddr, _l: socklen_t) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn shutdown(_fd: c_int, _how: c_int) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn getsockopt(
    _fd: c_int,
    _level: c_int,
    _name: c_int,
    _val: *mut c_void,
    _len: *mut socklen_t,
) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn setsockopt(
    _fd: c_int,
    _level: c_int,
    _name: c_int,
    _val: *const c_void,
    _len: socklen_t,
) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn getsockname(
    _fd: c_int,
    _a: *mut sockaddr,
    _l: *mut socklen_t,
) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn getpeername(
    _fd: c_int,
    _a: *mut sockaddr,
    _l: *mut socklen_t,
) -> Outcome<c_int> {
    no_stack()
}

// --- data -----------------------------------------------------------------------------------

pub(crate) unsafe fn read(_fd: c_int, _buf: *mut c_void, _n: size_t) -> Outcome<ssize_t> {
    no_stack()
}

pub(crate) unsafe fn write(_fd: c_int, _buf: *const c_void, _n: size_t) -> Outcome<ssize_t> {
    no_stack()
}

pub(crate) unsafe fn readv(_fd: c_int, _iov: *const iovec, _cnt: c_int) -> Outcome<ssize_t> {
    no_stack()
}

pub(crate) unsafe fn writev(_fd: c_int, _iov: *const iovec, _cnt: c_int) -> Outcome<ssize_t> {
    no_stack()
}

pub(crate) unsafe fn recv(
    _fd: c_int,
    _buf: *mut c_void,
    _len: size_t,
    _flags: c_int,
) -> Outcome<ssize_t> {
    no_stack()
}

pub(crate) unsafe fn recvfrom(
    _fd: c_int,
    _buf: *mut c_void,
    _len: size_t,
    _flags: c_int,
    _a: *mut sockaddr,
    _l: *mut socklen_t,
) -> Outcome<ssize_t> {
    no_stack()
}

pub(crate) unsafe fn recvmsg(_fd: c_int, _msg: *mut msghdr, _flags: c_int) -> Outcome<ssize_t> {
    no_stack()
}

pub(crate) unsafe fn recvmmsg(
    _fd: c_int,
    _vec: *mut mmsghdr,
    _vlen: c_uint,
    _flags: c_int,
    _timeout: *mut timespec,
) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn send(
    _fd: c_int,
    _buf: *const c_void,
    _len: size_t,
    _flags: c_int,
) -> Outcome<ssize_t> {
    no_stack()
}

pub(crate) unsafe fn sendto(
    _fd: c_int,
    _buf: *const c_void,
    _len: size_t,
    _flags: c_int,
    _a: *const sockaddr,
    _l: socklen_t,
) -> Outcome<ssize_t> {
    no_stack()
}

pub(crate) unsafe fn sendmsg(_fd: c_int, _msg: *const msghdr, _flags: c_int) -> Outcome<ssize_t> {
    no_stack()
}

pub(crate) unsafe fn sendmmsg(
    _fd: c_int,
    _vec: *mut mmsghdr,
    _vlen: c_uint,
    _flags: c_int,
) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn sendfile(
    _out: c_int,
    _in: c_int,
    _off: *mut off_t,
    _n: size_t,
) -> Outcome<ssize_t> {
    no_stack()
}

pub(crate) unsafe fn sendfile64(
    _out: c_int,
    _in: c_int,
    _off: *mut off64_t,
    _n: size_t,
) -> Outcome<ssize_t> {
    no_stack()
}

// --- fds ------------------------------------------------------------------------------------

pub(crate) unsafe fn close(_fd: c_int) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn dup(_fd: c_int) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn dup2(_old: c_int, _new: c_int) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn dup3(_old: c_int, _new: c_int, _flags: c_int) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn fcntl(_fd: c_int, _cmd: c_int, _arg: c_ulong) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> Outcome<c_int> {
    // SAFETY: the same call under its other name.
    unsafe { fcntl(fd, cmd, arg) }
}

pub(crate) unsafe fn ioctl(_fd: c_int, _request: c_ulong, _arg: *mut c_void) -> Outcome<c_int> {
    no_stack()
}

// --- readiness ------------------------------------------------------------------------------

pub(crate) unsafe fn epoll_create(_size: c_int) -> Outcome<c_int> {
    NOT_OURS
}

pub(crate) unsafe fn epoll_create1(_flags: c_int) -> Outcome<c_int> {
    NOT_OURS
}

pub(crate) unsafe fn epoll_ctl(
    _epfd: c_int,
    _op: c_int,
    _fd: c_int,
    _event: *mut epoll_event,
) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn epoll_wait(
    _epfd: c_int,
    _events: *mut epoll_event,
    _max: c_int,
    _timeout: c_int,
) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn epoll_pwait(
    _epfd: c_int,
    _events: *mut epoll_event,
    _max: c_int,
    _timeout: c_int,
    _sigmask: *const sigset_t,
) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn epoll_pwait2(
    _epfd: c_int,
    _events: *mut epoll_event,
    _max: c_int,
    _timeout: *const timespec,
    _sigmask: *const sigset_t,
) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn poll(_fds: *mut pollfd, _nfds: nfds_t, _timeout: c_int) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn ppoll(
    _fds: *mut pollfd,
    _nfds: nfds_t,
    _timeout: *const timespec,
    _sigmask: *const sigset_t,
) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn select(
    _nfds: c_int,
    _r: *mut fd_set,
    _w: *mut fd_set,
    _e: *mut fd_set,
    _timeout: *mut timeval,
) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn pselect(
    _nfds: c_int,
    _r: *mut fd_set,
    _w: *mut fd_set,
    _e: *mut fd_set,
    _timeout: *const timespec,
    _sigmask: *const sigset_t,
) -> Outcome<c_int> {
    no_stack()
}

// --- _FORTIFY_SOURCE twins: glibc's check, then the plain call's op ------------------------

pub(crate) unsafe fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    nbytes: size_t,
    buflen: size_t,
) -> Outcome<ssize_t> {
    check_len(nbytes, buflen);
    // SAFETY: read's contract, which the caller of __read_chk also has.
    unsafe { read(fd, buf, nbytes) }
}

pub(crate) unsafe fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
) -> Outcome<ssize_t> {
    check_len(len, buflen);
    // SAFETY: as above, for recv.
    unsafe { recv(fd, buf, len, flags) }
}

pub(crate) unsafe fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
    a: *mut sockaddr,
    l: *mut socklen_t,
) -> Outcome<ssize_t> {
    check_len(len, buflen);
    // SAFETY: as above, for recvfrom.
    unsafe { recvfrom(fd, buf, len, flags, a, l) }
}

pub(crate) unsafe fn __poll_chk(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> Outcome<c_int> {
    check_fds(nfds, fdslen);
    // SAFETY: as above, for poll.
    unsafe { poll(fds, nfds, timeout) }
}

pub(crate) unsafe fn __ppoll_chk(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
    fdslen: size_t,
) -> Outcome<c_int> {
    check_fds(nfds, fdslen);
    // SAFETY: as above, for ppoll.
    unsafe { ppoll(fds, nfds, timeout, sigmask) }
}

// --- helpers --------------------------------------------------------------------------------

/// The port of an AF_INET/AF_INET6 address, if `addr` is one and `len` covers it.
///
/// # Safety
/// `addr` is null or points to at least `len` readable bytes.
pub unsafe fn sockaddr_port(addr: *const sockaddr, len: socklen_t) -> Option<u16> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family is readable (checked above); read unaligned.
    let family = unsafe { std::ptr::addr_of!((*addr).sa_family).read_unaligned() };
    let need = match c_int::from(family) {
        libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
        libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
        _ => return None,
    };
    if (len as usize) < need {
        return None;
    }
    // sin_port and sin6_port are both at offset 2, in network byte order.
    // SAFETY: `need` >= 4 bytes are readable.
    let port = unsafe { addr.cast::<u8>().add(2).cast::<u16>().read_unaligned() };
    Some(u16::from_be(port))
}

/// Whether `fd` is a SOCK_STREAM socket (asked of the kernel; inside the guard, so libc's
/// getsockopt runs).
fn is_stream(fd: c_int) -> bool {
    let mut ty: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: getsockopt into a c_int with its size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut c_int).cast(),
            &mut len,
        )
    };
    r == 0 && ty == libc::SOCK_STREAM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_addresses() {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 6379u16.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        let p = (&sin as *const libc::sockaddr_in).cast::<sockaddr>();
        let n = std::mem::size_of::<libc::sockaddr_in>() as socklen_t;
        // SAFETY: `p` points to a sockaddr_in of `n` bytes.
        unsafe {
            assert_eq!(sockaddr_port(p, n), Some(6379));
            assert_eq!(sockaddr_port(p, n - 1), None);
            assert_eq!(sockaddr_port(p, 0), None);
            assert_eq!(sockaddr_port(std::ptr::null(), n), None);
        }
        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = 443u16.to_be();
        let n6 = std::mem::size_of::<libc::sockaddr_in6>() as socklen_t;
        // SAFETY: a sockaddr_in6 of `n6` bytes.
        unsafe {
            let p6 = (&sin6 as *const libc::sockaddr_in6).cast::<sockaddr>();
            assert_eq!(sockaddr_port(p6, n6), Some(443));
            assert_eq!(sockaddr_port(p6, n), None);
        }
        // SAFETY: a sockaddr_un is not an inet address.
        let un: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe {
            let pu = (&un as *const libc::sockaddr_un).cast::<sockaddr>();
            assert_eq!(sockaddr_port(pu, 110), None);
        }
    }

    #[test]
    fn stream_detection() {
        // SAFETY: plain socket calls on fds this test owns.
        unsafe {
            let t = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let u = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            assert!(is_stream(t));
            assert!(!is_stream(u));
            assert!(!is_stream(-1));
            libc::close(t);
            libc::close(u);
        }
    }
}
