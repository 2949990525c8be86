//! THE list of intercepted calls: one line per C function, with its C signature, its gate and
//! its raw-syscall fallback. `intercept!` (hook.rs) expands it into the saved originals and the
//! exported hooks; `crate::ops` has one function per line with the same arguments.
//!
//! Syntax of a line:
//!
//! ```text
//! fn NAME(ARG: TYPE, ...) -> RET where GATE, raw FALLBACK;
//! fn NAME(ARG: TYPE, ...; ... VARARG: TYPE) -> RET where GATE, raw FALLBACK;   // variadic C
//! ```
//!
//! - GATE: when the call may be the library's and goes to its op (`ours(fd)`, `ours2(a, b)`:
//!   the fd(s) in the fd table; `active()`: MTCP_PORTS is set; `any_ours()`: some fd is ours).
//!   Each gate also names the mode bits without which it cannot pass (`gate::mask`): while
//!   none of them is set the hook forwards after two loads (so with MTCP_PORTS set, fd calls
//!   stay on the fast path until an fd first becomes ours).
//! - FALLBACK: what the hook does if it is entered again while this very thread is inside
//!   dlsym resolving an original (libc is not reachable then): the raw syscall.
//!
//! Beyond the list in the issue: `fcntl64` (glibc >= 2.28 redirects `fcntl` to it when a
//! program is built with `_FILE_OFFSET_BITS=64`: Debian's redis-server and python3.11 import
//! it), `recvmmsg`/`sendmmsg`, `__ppoll_chk`, `close_range`, and `syscall` for the calls that
//! close or replace fds (libuv, hence Node.js, closes every fd with `syscall(SYS_close, fd)`). glibc 2.36 exports every name here
//! (`epoll_pwait2` since 2.35).

use libc::{
    c_int, c_long, c_uint, c_ulong, c_void, epoll_event, fd_set, iovec, mmsghdr, msghdr, nfds_t,
    off64_t, off_t, pollfd, sigset_t, size_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
};

use crate::raw;

/// The gates: whether a call may be the library's (then its op runs), and for each the mode
/// bits without which it is certainly not (then the hook forwards at once).
#[allow(non_upper_case_globals)]
mod gate {
    use crate::mode::{MODE_CONFIG, MODE_TABLE, MODE_TRACE};
    use libc::c_int;

    /// `fd` is one of ours.
    #[inline]
    pub(super) fn ours(fd: c_int) -> bool {
        crate::fdtable::is_ours(fd)
    }

    /// `fd` is one of ours, or some socket's bind to a flagged port waits for listen() (close
    /// must tell the socket table).
    #[inline]
    pub(super) fn closing(fd: c_int) -> bool {
        ours(fd) || crate::fdtable::pending_binds() || crate::candidates::is(fd)
    }

    /// epoll_ctl: either fd is ours, or `fd` is a socket connect() may make ours (its entries
    /// are noted: `candidates`).
    #[inline]
    pub(super) fn ctl(epfd: c_int, fd: c_int) -> bool {
        ours2(epfd, fd) || crate::candidates::is(fd)
    }

    /// An epoll wait while MTCP_PORTS is set: on an instance of ours, the stack's; on any other,
    /// counted (another thread may make the instance ours meanwhile: `runtime::kwait`).
    #[inline]
    pub(super) fn waiting(epfd: c_int) -> bool {
        ours(epfd) || active()
    }

    /// An fd of ours, a socket connect() may make ours (the options set on it are noted:
    /// `candidates`), or an AF_PACKET socket's option while the stack starts its DPDK port
    /// (the PMD's fanout group: `runtime::packet_fanout`).
    #[inline]
    pub(super) fn sockopt(fd: c_int, level: c_int) -> bool {
        ours(fd)
            || crate::candidates::is(fd)
            || (level == libc::SOL_PACKET && crate::runtime::starting_dpdk())
    }

    /// `fd` is one of ours, or a socket connect() may make ours sends with MSG_FASTOPEN
    /// (a connect and a send in one call: the destination may be the stack's).
    #[inline]
    pub(super) fn sending(fd: c_int, flags: c_int) -> bool {
        ours(fd) || (flags & libc::MSG_FASTOPEN != 0 && crate::candidates::is(fd))
    }

    /// dup or fcntl of `fd`: one of ours, or a socket connect() may make ours (what the shim
    /// knows of it holds for one number only: `candidates`).
    #[inline]
    pub(super) fn duping(fd: c_int) -> bool {
        ours(fd) || crate::candidates::is(fd)
    }

    /// dup2/dup3: either fd is ours or such a socket.
    #[inline]
    pub(super) fn duping2(old: c_int, new: c_int) -> bool {
        ours2(old, new) || crate::candidates::is(old) || crate::candidates::is(new)
    }

    /// Either fd is one of ours.
    #[inline]
    pub(super) fn ours2(a: c_int, b: c_int) -> bool {
        ours(a) || ours(b)
    }

    /// MTCP_PORTS, MTCP_DEV or MTCP_ADDR is set (calls that decide whether an fd becomes
    /// ours).
    #[inline]
    pub(super) fn active() -> bool {
        crate::mode::mode() & MODE_CONFIG != 0
    }

    /// A raw `syscall(nr, a, b, ...)` that closes or replaces an fd number the socket table
    /// knows (libuv closes its fds with `syscall(SYS_close, fd)`); any other system call made
    /// through `syscall()` is never ours.
    #[inline]
    pub(super) fn fd_syscall(nr: libc::c_long, a: libc::c_long, b: libc::c_long) -> bool {
        match nr {
            libc::SYS_close => closing(a as c_int),
            libc::SYS_close_range => closing_any(),
            libc::SYS_dup2 | libc::SYS_dup3 => duping2(a as c_int, b as c_int),
            _ => false,
        }
    }

    /// Some fd is ours, or some bind waits for listen() (close_range).
    #[inline]
    pub(super) fn closing_any() -> bool {
        any_ours() || crate::fdtable::pending_binds() || crate::candidates::any()
    }

    /// Some fd is ours (calls that take sets of fds).
    #[inline]
    pub(super) fn any_ours() -> bool {
        crate::fdtable::any_ours()
    }

    /// Mode bits that send a call to the slow path, per gate (tracing always does).
    pub(super) mod mask {
        use super::*;
        pub(in super::super) const ours: u32 = MODE_TRACE | MODE_TABLE;
        pub(in super::super) const ours2: u32 = MODE_TRACE | MODE_TABLE;
        pub(in super::super) const duping: u32 = MODE_TRACE | MODE_TABLE | MODE_CONFIG;
        pub(in super::super) const duping2: u32 = MODE_TRACE | MODE_TABLE | MODE_CONFIG;
        pub(in super::super) const sending: u32 = MODE_TRACE | MODE_TABLE | MODE_CONFIG;
        pub(in super::super) const sockopt: u32 = MODE_TRACE | MODE_TABLE | MODE_CONFIG;
        pub(in super::super) const closing: u32 = MODE_TRACE | MODE_TABLE | MODE_CONFIG;
        pub(in super::super) const ctl: u32 = MODE_TRACE | MODE_TABLE | MODE_CONFIG;
        pub(in super::super) const active: u32 = MODE_TRACE | MODE_CONFIG;
        pub(in super::super) const any_ours: u32 = MODE_TRACE | MODE_TABLE;
        pub(in super::super) const waiting: u32 = MODE_TRACE | MODE_TABLE | MODE_CONFIG;
        pub(in super::super) const closing_any: u32 = MODE_TRACE | MODE_TABLE | MODE_CONFIG;
        pub(in super::super) const fd_syscall: u32 = MODE_TRACE | MODE_TABLE | MODE_CONFIG;
    }
}

macro_rules! sys {
    ($nr:ident $(, $arg:expr)*) => { libc::syscall(libc::$nr $(, $arg)*) };
}

intercept! {
    // --- sockets --------------------------------------------------------------------------
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int
        where active(), raw sys!(SYS_socket, domain, ty, protocol);
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int
        where active(), raw sys!(SYS_bind, fd, addr, len);
    fn listen(fd: c_int, backlog: c_int) -> c_int
        where active(), raw sys!(SYS_listen, fd, backlog);
    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int
        where ours(fd), raw sys!(SYS_accept, fd, addr, len);
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int
        where ours(fd), raw sys!(SYS_accept4, fd, addr, len, flags);
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int
        where active(), raw sys!(SYS_connect, fd, addr, len);
    fn shutdown(fd: c_int, how: c_int) -> c_int
        where ours(fd), raw sys!(SYS_shutdown, fd, how);
    fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int
        where ours(fd), raw sys!(SYS_getsockopt, fd, level, name, val, len);
    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int
        where sockopt(fd, level), raw sys!(SYS_setsockopt, fd, level, name, val, len);
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int
        where ours(fd), raw sys!(SYS_getsockname, fd, addr, len);
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int
        where ours(fd), raw sys!(SYS_getpeername, fd, addr, len);

    // --- data -----------------------------------------------------------------------------
    fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t
        where ours(fd), raw sys!(SYS_read, fd, buf, count);
    fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t
        where ours(fd), raw sys!(SYS_write, fd, buf, count);
    fn readv(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t
        where ours(fd), raw sys!(SYS_readv, fd, iov, iovcnt);
    fn writev(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t
        where ours(fd), raw sys!(SYS_writev, fd, iov, iovcnt);
    fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t
        where ours(fd), raw sys!(SYS_recvfrom, fd, buf, len, flags, 0usize, 0usize);
    fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t
        where ours(fd), raw sys!(SYS_recvfrom, fd, buf, len, flags, addr, alen);
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t
        where ours(fd), raw sys!(SYS_recvmsg, fd, msg, flags);
    fn recvmmsg(fd: c_int, vec: *mut mmsghdr, vlen: c_uint, flags: c_int, timeout: *mut timespec) -> c_int
        where ours(fd), raw sys!(SYS_recvmmsg, fd, vec, vlen, flags, timeout);
    fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t
        where ours(fd), raw sys!(SYS_sendto, fd, buf, len, flags, 0usize, 0usize);
    fn sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, alen: socklen_t) -> ssize_t
        where sending(fd, flags), raw sys!(SYS_sendto, fd, buf, len, flags, addr, alen);
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t
        where sending(fd, flags), raw sys!(SYS_sendmsg, fd, msg, flags);
    fn sendmmsg(fd: c_int, vec: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int
        where ours(fd), raw sys!(SYS_sendmmsg, fd, vec, vlen, flags);
    fn sendfile(out_fd: c_int, in_fd: c_int, offset: *mut off_t, count: size_t) -> ssize_t
        where ours2(out_fd, in_fd), raw sys!(SYS_sendfile, out_fd, in_fd, offset, count);
    fn sendfile64(out_fd: c_int, in_fd: c_int, offset: *mut off64_t, count: size_t) -> ssize_t
        where ours2(out_fd, in_fd), raw sys!(SYS_sendfile, out_fd, in_fd, offset, count);

    // --- fds ------------------------------------------------------------------------------
    fn close(fd: c_int) -> c_int
        where closing(fd), raw sys!(SYS_close, fd);
    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int
        where closing_any(), raw sys!(SYS_close_range, first, last, flags);
    fn syscall(nr: c_long; ... a1: c_long, a2: c_long, a3: c_long, a4: c_long, a5: c_long, a6: c_long) -> c_long
        where fd_syscall(nr, a1, a2), raw raw::syscall6(nr, [a1, a2, a3, a4, a5, a6]);
    fn dup(fd: c_int) -> c_int
        where duping(fd), raw sys!(SYS_dup, fd);
    fn dup2(old: c_int, new: c_int) -> c_int
        where duping2(old, new), raw sys!(SYS_dup2, old, new);
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int
        where duping2(old, new), raw sys!(SYS_dup3, old, new, flags);
    fn fcntl(fd: c_int, cmd: c_int; ... arg: c_ulong) -> c_int
        where duping(fd), raw sys!(SYS_fcntl, fd, cmd, arg);
    fn fcntl64(fd: c_int, cmd: c_int; ... arg: c_ulong) -> c_int
        where duping(fd), raw sys!(SYS_fcntl, fd, cmd, arg);
    fn ioctl(fd: c_int, request: c_ulong; ... arg: *mut c_void) -> c_int
        where ours(fd), raw sys!(SYS_ioctl, fd, request, arg);

    // --- readiness ------------------------------------------------------------------------
    fn epoll_create(size: c_int) -> c_int
        where active(), raw sys!(SYS_epoll_create, size);
    fn epoll_create1(flags: c_int) -> c_int
        where active(), raw sys!(SYS_epoll_create1, flags);
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut epoll_event) -> c_int
        where ctl(epfd, fd), raw sys!(SYS_epoll_ctl, epfd, op, fd, event);
    fn epoll_wait(epfd: c_int, events: *mut epoll_event, maxevents: c_int, timeout: c_int) -> c_int
        where waiting(epfd), raw sys!(SYS_epoll_wait, epfd, events, maxevents, timeout);
    fn epoll_pwait(epfd: c_int, events: *mut epoll_event, maxevents: c_int, timeout: c_int, sigmask: *const sigset_t) -> c_int
        where waiting(epfd), raw sys!(SYS_epoll_pwait, epfd, events, maxevents, timeout, sigmask, raw::NSIG_BYTES);
    fn epoll_pwait2(epfd: c_int, events: *mut epoll_event, maxevents: c_int, timeout: *const timespec, sigmask: *const sigset_t) -> c_int
        where waiting(epfd), raw sys!(SYS_epoll_pwait2, epfd, events, maxevents, timeout, sigmask, raw::NSIG_BYTES);
    fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int
        where any_ours(), raw sys!(SYS_poll, fds, nfds, timeout);
    fn ppoll(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t) -> c_int
        where any_ours(), raw raw::ppoll(fds, nfds, timeout, sigmask);
    fn select(nfds: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *mut timeval) -> c_int
        where any_ours(), raw sys!(SYS_select, nfds, r, w, e, timeout);
    fn pselect(nfds: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *const timespec, sigmask: *const sigset_t) -> c_int
        where any_ours(), raw raw::pselect(nfds, r, w, e, timeout, sigmask);

    // --- _FORTIFY_SOURCE twins: the original __*_chk runs for passthrough (it checks, then
    // --- reads); the op checks the same way before doing the plain call's op.
    fn __read_chk(fd: c_int, buf: *mut c_void, nbytes: size_t, buflen: size_t) -> ssize_t
        where ours(fd), raw raw::read_chk(fd, buf, nbytes, buflen);
    fn __recv_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int) -> ssize_t
        where ours(fd), raw raw::recvfrom_chk(fd, buf, len, buflen, flags, std::ptr::null_mut(), std::ptr::null_mut());
    fn __recvfrom_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t
        where ours(fd), raw raw::recvfrom_chk(fd, buf, len, buflen, flags, addr, alen);
    fn __poll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: c_int, fdslen: size_t) -> c_int
        where any_ours(), raw raw::poll_chk(fds, nfds, timeout, fdslen);
    fn __ppoll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t, fdslen: size_t) -> c_int
        where any_ours(), raw raw::ppoll_chk(fds, nfds, timeout, sigmask, fdslen);
}

/// How many times the hook `id` was called since tracing started (0 unless `MTCP_SHIM_TRACE`).
pub fn trace_count(id: Id) -> u64 {
    TRACE_COUNTS[id as usize].load(std::sync::atomic::Ordering::Relaxed)
}

extern "C" fn at_exit() {
    if crate::mode::mode() & crate::mode::MODE_TRACE != 0 {
        crate::hook::write_trace_line(&TRACE_COUNTS, &NAMES);
    }
}

/// Runs at exit(3) (and at dlclose); does nothing unless tracing.
#[used]
#[link_section = ".fini_array"]
static AT_EXIT: extern "C" fn() = at_exit;
