//! What the library does with a call that may be its own: one function per line of the table,
//! with the same arguments, called by the hook (inside the re-entrancy guard, under
//! `catch_unwind`, errno saved) only when the line's gate passes.
//!
//! This layer has no user-space stack behind it yet: no fd ever becomes ours, so the ops that
//! need an fd of ours are unreachable and hand the call back ([`Bypass::NoStack`]). The ops gated
//! on `MTCP_PORTS` (socket, bind, listen, epoll_create*) run when it is set; `bind` says once,
//! on stderr, that a flagged port is served by the kernel in this build (pitfall 15: never
//! fall back silently).

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

const NOT_OURS_SZ: Outcome<ssize_t> = B(Bypass::NotOurs);

/// A user.rs answer as an outcome: `None` hands the call to the kernel.
fn out(r: Option<Result<c_int, c_int>>) -> Outcome<c_int> {
    match r {
        None => B(Bypass::NotOurs),
        Some(Ok(v)) => Outcome::Done(v),
        Some(Err(e)) => Outcome::Error(e),
    }
}

/// A zero-length or null buffer is answered without touching it (on our connections; the
/// kernel answers for its own). Otherwise `None`: the op goes on, and `user::recv`/`send` hand
/// kernel fds back themselves, so the common path takes the shim's lock only once.
fn empty_or_null(fd: c_int, len: size_t, null: bool) -> Option<Outcome<ssize_t>> {
    if len != 0 && !null {
        return None;
    }
    Some(if !crate::user::is_conn(fd) {
        NOT_OURS_SZ
    } else if len == 0 {
        Outcome::Done(0)
    } else {
        Outcome::Error(libc::EFAULT)
    })
}

fn out_len(r: Option<Result<usize, c_int>>) -> Outcome<ssize_t> {
    match r {
        None => B(Bypass::NotOurs),
        Some(Ok(n)) => Outcome::Done(n as ssize_t),
        Some(Err(e)) => Outcome::Error(e),
    }
}

/// readv/writev/recvmsg/sendmsg on a connection of ours: one call of `each` per non-empty iovec,
/// in order, stopping at the first short transfer (the rest would block) or error (reported
/// only if nothing was transferred). Later iovecs never block.
///
/// # Safety
/// `iov` points to `cnt` valid iovecs whose buffers are valid for `each`'s access.
unsafe fn each_iov(
    fd: c_int,
    iov: *const iovec,
    cnt: c_int,
    flags: c_int,
    mut each: impl FnMut(*mut u8, usize, c_int) -> Option<Result<usize, c_int>>,
) -> Outcome<ssize_t> {
    if !crate::user::is_conn(fd) {
        return NOT_OURS_SZ;
    }
    if !(0..=libc::UIO_MAXIOV).contains(&cnt) {
        return Outcome::Error(libc::EINVAL);
    }
    let mut total = 0usize;
    for i in 0..cnt as usize {
        // SAFETY: the caller's iovec array (see above).
        let v = unsafe { iov.add(i).read_unaligned() };
        if v.iov_len == 0 {
            continue;
        }
        let f = if total > 0 {
            flags | libc::MSG_DONTWAIT
        } else {
            flags
        };
        match each(v.iov_base.cast::<u8>(), v.iov_len, f) {
            None => return NOT_OURS_SZ,
            Some(Ok(n)) => {
                total += n;
                if n < v.iov_len {
                    break;
                }
            }
            Some(Err(e)) if total == 0 => return Outcome::Error(e),
            Some(Err(_)) => break,
        }
    }
    Outcome::Done(total as ssize_t)
}

/// # Safety
/// `iov` points to `cnt` valid iovecs whose buffers are writable.
unsafe fn recv_iov(fd: c_int, iov: *const iovec, cnt: c_int, flags: c_int) -> Outcome<ssize_t> {
    // SAFETY: each iovec describes a writable buffer (readv contract).
    unsafe {
        each_iov(fd, iov, cnt, flags, |p, n, f| {
            crate::user::recv(fd, std::slice::from_raw_parts_mut(p, n), f)
        })
    }
}

/// # Safety
/// `iov` points to `cnt` valid iovecs whose buffers are readable.
unsafe fn send_iov(fd: c_int, iov: *const iovec, cnt: c_int, flags: c_int) -> Outcome<ssize_t> {
    // SAFETY: each iovec describes a readable buffer (writev contract).
    unsafe {
        each_iov(fd, iov, cnt, flags, |p, n, f| {
            crate::user::send(fd, std::slice::from_raw_parts(p, n), f)
        })
    }
}

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
    if !crate::config::is_flagged(port) || !is_stream(fd) {
        return NOT_OURS;
    }
    // SAFETY: sockaddr_port checked the family and that `len` covers the address.
    let family = c_int::from(unsafe { std::ptr::addr_of!((*addr).sa_family).read_unaligned() });
    if family != libc::AF_INET {
        // IPv6 listeners stay the kernel's: the stack speaks IPv4 only.
        return NOT_OURS;
    }
    // SAFETY: an AF_INET address of sufficient length (checked above).
    let sin = unsafe { addr.cast::<libc::sockaddr_in>().read_unaligned() };
    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    out(crate::user::bind(fd, ip, port))
}

pub(crate) unsafe fn listen(fd: c_int, backlog: c_int) -> Outcome<c_int> {
    out(crate::user::listen(fd, backlog))
}

pub(crate) unsafe fn accept(fd: c_int, a: *mut sockaddr, l: *mut socklen_t) -> Outcome<c_int> {
    out(crate::user::accept(fd, a, l, 0))
}

pub(crate) unsafe fn accept4(
    fd: c_int,
    a: *mut sockaddr,
    l: *mut socklen_t,
    flags: c_int,
) -> Outcome<c_int> {
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Outcome::Error(libc::EINVAL);
    }
    out(crate::user::accept(fd, a, l, flags))
}

pub(crate) unsafe fn connect(_fd: c_int, _a: *const sockaddr, _l: socklen_t) -> Outcome<c_int> {
    no_stack()
}

pub(crate) unsafe fn shutdown(fd: c_int, how: c_int) -> Outcome<c_int> {
    out(crate::user::shutdown(fd, how))
}

pub(crate) unsafe fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> Outcome<c_int> {
    out(crate::user::getsockopt(fd, level, name, val, len))
}

pub(crate) unsafe fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> Outcome<c_int> {
    out(crate::user::setsockopt(fd, level, name, val, len))
}

pub(crate) unsafe fn getsockname(fd: c_int, a: *mut sockaddr, l: *mut socklen_t) -> Outcome<c_int> {
    out(crate::user::peer_or_local(fd, false, a, l))
}

pub(crate) unsafe fn getpeername(fd: c_int, a: *mut sockaddr, l: *mut socklen_t) -> Outcome<c_int> {
    out(crate::user::peer_or_local(fd, true, a, l))
}

// --- data -----------------------------------------------------------------------------------

pub(crate) unsafe fn read(fd: c_int, buf: *mut c_void, n: size_t) -> Outcome<ssize_t> {
    // SAFETY: read's contract: buf has room for n bytes.
    unsafe { recv(fd, buf, n, 0) }
}

pub(crate) unsafe fn write(fd: c_int, buf: *const c_void, n: size_t) -> Outcome<ssize_t> {
    // SAFETY: write's contract: buf holds n readable bytes.
    unsafe { send(fd, buf, n, 0) }
}

pub(crate) unsafe fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> Outcome<ssize_t> {
    // SAFETY: readv's contract.
    unsafe { recv_iov(fd, iov, cnt, 0) }
}

pub(crate) unsafe fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> Outcome<ssize_t> {
    // SAFETY: writev's contract.
    unsafe { send_iov(fd, iov, cnt, 0) }
}

pub(crate) unsafe fn recv(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
) -> Outcome<ssize_t> {
    if let Some(r) = empty_or_null(fd, len, buf.is_null()) {
        return r;
    }
    // SAFETY: recv's contract: buf has room for len bytes.
    let b = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    out_len(crate::user::recv(fd, b, flags))
}

pub(crate) unsafe fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    a: *mut sockaddr,
    l: *mut socklen_t,
) -> Outcome<ssize_t> {
    // SAFETY: recvfrom's contract.
    let r = unsafe { recv(fd, buf, len, flags) };
    if matches!(r, Outcome::Done(_)) && !a.is_null() && !l.is_null() {
        // A connected TCP socket reports no source address, as Linux does.
        // SAFETY: l is a valid socklen_t pointer (recvfrom contract).
        unsafe { *l = 0 };
    }
    r
}

pub(crate) unsafe fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> Outcome<ssize_t> {
    if !crate::user::is_conn(fd) {
        return NOT_OURS_SZ;
    }
    if msg.is_null() {
        return Outcome::Error(libc::EFAULT);
    }
    // SAFETY: recvmsg's contract: msg is a valid msghdr with msg_iovlen iovecs.
    unsafe {
        let r = recv_iov(fd, (*msg).msg_iov, (*msg).msg_iovlen as c_int, flags);
        if matches!(r, Outcome::Done(_)) {
            (*msg).msg_namelen = 0;
            (*msg).msg_controllen = 0;
            (*msg).msg_flags = 0;
        }
        r
    }
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
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
) -> Outcome<ssize_t> {
    if let Some(r) = empty_or_null(fd, len, buf.is_null()) {
        return r;
    }
    // SAFETY: send's contract: buf holds len readable bytes.
    let b = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    out_len(crate::user::send(fd, b, flags))
}

pub(crate) unsafe fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    _a: *const sockaddr,
    _l: socklen_t,
) -> Outcome<ssize_t> {
    // A connected TCP socket ignores the destination, as Linux does.
    // SAFETY: sendto's contract.
    unsafe { send(fd, buf, len, flags) }
}

pub(crate) unsafe fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> Outcome<ssize_t> {
    if !crate::user::is_conn(fd) {
        return NOT_OURS_SZ;
    }
    if msg.is_null() {
        return Outcome::Error(libc::EFAULT);
    }
    // SAFETY: sendmsg's contract: msg is a valid msghdr with msg_iovlen iovecs.
    unsafe { send_iov(fd, (*msg).msg_iov, (*msg).msg_iovlen as c_int, flags) }
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

pub(crate) unsafe fn close(fd: c_int) -> Outcome<c_int> {
    // Our bookkeeping goes; the kernel then closes the fd (the eventfd or the kernel socket).
    crate::user::close(fd);
    NOT_OURS
}

pub(crate) unsafe fn dup(_fd: c_int) -> Outcome<c_int> {
    // Sharing a stack connection between two fds is not supported yet (docs/shim.md).
    Outcome::Error(libc::EOPNOTSUPP)
}

pub(crate) unsafe fn dup2(old: c_int, new: c_int) -> Outcome<c_int> {
    if crate::fdtable::is_ours(old) {
        return Outcome::Error(libc::EOPNOTSUPP);
    }
    // dup2 closes `new` first: drop our side of it, then the kernel does the rest.
    crate::user::close(new);
    NOT_OURS
}

pub(crate) unsafe fn dup3(old: c_int, new: c_int, _flags: c_int) -> Outcome<c_int> {
    // SAFETY: the same call, for our purposes.
    unsafe { dup2(old, new) }
}

pub(crate) unsafe fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> Outcome<c_int> {
    match cmd {
        libc::F_SETFL => crate::user::set_nonblock(fd, arg as c_int & libc::O_NONBLOCK != 0),
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => return Outcome::Error(libc::EOPNOTSUPP),
        _ => {}
    }
    // The kernel applies the flags to the identity fd too (F_GETFL then reads them back).
    NOT_OURS
}

pub(crate) unsafe fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> Outcome<c_int> {
    // SAFETY: the same call under its other name.
    unsafe { fcntl(fd, cmd, arg) }
}

pub(crate) unsafe fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> Outcome<c_int> {
    match request {
        libc::FIONREAD => match crate::user::fionread(fd) {
            None => NOT_OURS,
            Some(Err(e)) => Outcome::Error(e),
            Some(Ok(n)) => {
                if arg.is_null() {
                    return Outcome::Error(libc::EFAULT);
                }
                // SAFETY: FIONREAD's contract: arg points to an int.
                unsafe { arg.cast::<c_int>().write_unaligned(n) };
                Outcome::Done(0)
            }
        },
        libc::FIONBIO if !arg.is_null() => {
            // SAFETY: FIONBIO's contract: arg points to an int.
            let on = unsafe { arg.cast::<c_int>().read_unaligned() } != 0;
            crate::user::set_nonblock(fd, on);
            NOT_OURS
        }
        _ => NOT_OURS,
    }
}

// --- readiness ------------------------------------------------------------------------------

pub(crate) unsafe fn epoll_create(_size: c_int) -> Outcome<c_int> {
    NOT_OURS
}

pub(crate) unsafe fn epoll_create1(_flags: c_int) -> Outcome<c_int> {
    NOT_OURS
}

pub(crate) unsafe fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut epoll_event,
) -> Outcome<c_int> {
    out(crate::user::epoll_ctl(epfd, op, fd, event))
}

pub(crate) unsafe fn epoll_wait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
) -> Outcome<c_int> {
    out(crate::user::epoll_wait(
        epfd,
        events,
        max,
        timeout,
        std::ptr::null(),
    ))
}

pub(crate) unsafe fn epoll_pwait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    sigmask: *const sigset_t,
) -> Outcome<c_int> {
    out(crate::user::epoll_wait(epfd, events, max, timeout, sigmask))
}

pub(crate) unsafe fn epoll_pwait2(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> Outcome<c_int> {
    let ms = if timeout.is_null() {
        -1
    } else {
        // SAFETY: epoll_pwait2's contract: a valid timespec.
        let t = unsafe { timeout.read_unaligned() };
        if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
            return Outcome::Error(libc::EINVAL);
        }
        (t.tv_sec * 1000 + (t.tv_nsec + 999_999) / 1_000_000).min(i32::MAX as i64) as c_int
    };
    out(crate::user::epoll_wait(epfd, events, max, ms, sigmask))
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
