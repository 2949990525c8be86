//! What the library does with a call that may be its own: one function per line of the table,
//! with the same arguments, called by the hook (inside the re-entrancy guard, under
//! `catch_unwind`, errno saved) only when the line's gate passes.
//!
//! This is the C-ABI translation: each op checks and reads the caller's pointers (buffers,
//! iovecs, sockaddrs, option values, event arrays, signal masks), calls `runtime` with slices
//! and values, and writes the answer back as the kernel would (truncated addresses, option
//! lengths, `msg_len`). An answer of `None` from the runtime hands the call to libc
//! ([`Bypass::NotOurs`]).

use libc::{
    c_int, c_long, c_uint, c_ulong, c_void, epoll_event, fd_set, iovec, mmsghdr, msghdr, nfds_t,
    off64_t, off_t, pollfd, sigset_t, size_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
};

use crate::outcome::{Bypass, Outcome};
use crate::raw::{check_fds, check_len};
use crate::runtime;

use Outcome::Bypass as B;

const NOT_OURS_SZ: Outcome<ssize_t> = B(Bypass::NotOurs);

fn out<T>(r: Option<Result<T, c_int>>) -> Outcome<T> {
    Outcome::from_answer(r)
}

/// A null buffer of some length is EFAULT (on our connections; the kernel answers for its
/// own). Otherwise `None`: the op goes on (a zero-length one too: Linux's recv of 0 bytes waits
/// for data, its send of 0 bytes says EPIPE after shutdown), and `runtime::recv`/`send` hand
/// kernel fds back themselves, so the common path takes the shim's lock only once.
fn null_buffer(fd: c_int, len: size_t, null: bool) -> Option<Outcome<ssize_t>> {
    if len == 0 || !null {
        return None;
    }
    Some(if !runtime::is_conn(fd) {
        NOT_OURS_SZ
    } else {
        Outcome::Error(libc::EFAULT)
    })
}

/// The caller's buffer as a slice (a dangling, empty one for a zero length, whose pointer may
/// be null).
///
/// # Safety
/// For a non-zero `len`, `p` points to `len` bytes valid for reads and writes.
unsafe fn buf_mut<'a>(p: *mut u8, len: size_t) -> &'a mut [u8] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(p, len) }
}

/// As [`buf_mut`], for reading only.
///
/// # Safety
/// For a non-zero `len`, `p` points to `len` bytes valid for reads.
unsafe fn buf_ref<'a>(p: *const u8, len: size_t) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(p, len) }
}

/// A send's outcome: EPIPE raises SIGPIPE (unless MSG_NOSIGNAL), as the kernel does.
fn sigpipe<T>(r: Outcome<T>, flags: c_int) -> Outcome<T> {
    if matches!(r, Outcome::Error(libc::EPIPE)) {
        runtime::raise_sigpipe(flags);
    }
    r
}

fn out_len(r: Option<Result<usize, c_int>>) -> Outcome<ssize_t> {
    Outcome::from_answer(r.map(|r| r.map(|n| n as ssize_t)))
}

/// readv/writev/recvmsg/sendmsg on a connection of ours: one call of `each` per non-empty iovec,
/// in order, stopping at the first short transfer (the rest would block) or error (reported
/// only if nothing was transferred). A blocking write blocks for every iovec (it returns when
/// all is queued, as Linux's does); a read blocks only for the first (it returns what is
/// there), unless MSG_WAITALL.
///
/// # Safety
/// `iov` points to `cnt` valid iovecs whose buffers are valid for `each`'s access.
unsafe fn each_iov(
    fd: c_int,
    iov: *const iovec,
    cnt: c_int,
    flags: c_int,
    write: bool,
    vfs: bool,
    mut each: impl FnMut(*mut u8, usize, c_int) -> Option<Result<usize, c_int>>,
) -> Outcome<ssize_t> {
    let ours = if write {
        runtime::takes_writes(fd)
    } else {
        runtime::is_conn(fd)
    };
    if !ours {
        return NOT_OURS_SZ;
    }
    if !(0..=libc::UIO_MAXIOV).contains(&cnt) {
        return Outcome::Error(libc::EINVAL);
    }
    let mut total = 0usize;
    // SAFETY: the caller's iovec array (see above).
    let iovs = (0..cnt as usize).map(|i| unsafe { iov.add(i).read_unaligned() });
    if iovs.clone().all(|v| v.iov_len == 0) {
        // Nothing to move: readv/writev return 0 at once (Linux's file layer does); recvmsg and
        // sendmsg are calls of zero bytes (which wait, or fail, as Linux's do).
        if vfs {
            return Outcome::Done(0);
        }
        return match each(std::ptr::null_mut(), 0, flags) {
            None => NOT_OURS_SZ,
            Some(Ok(n)) => Outcome::Done(n as ssize_t),
            Some(Err(e)) => Outcome::Error(e),
        };
    }
    for v in iovs {
        if v.iov_len == 0 {
            continue;
        }
        let f = if total > 0 && !write && flags & libc::MSG_WAITALL == 0 {
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
            Some(Err(e)) => {
                runtime::keep_errno(fd, e);
                break;
            }
        }
    }
    Outcome::Done(total as ssize_t)
}

/// # Safety
/// `iov` points to `cnt` valid iovecs whose buffers are writable.
unsafe fn recv_iov(
    fd: c_int,
    iov: *const iovec,
    cnt: c_int,
    flags: c_int,
    vfs: bool,
) -> Outcome<ssize_t> {
    let mut call = runtime::Call::default();
    // SAFETY: each iovec describes a writable buffer (readv contract).
    unsafe {
        each_iov(fd, iov, cnt, flags, false, vfs, |p, n, f| {
            runtime::recv(fd, buf_mut(p, n), f, &mut call)
        })
    }
}

/// # Safety
/// `iov` points to `cnt` valid iovecs whose buffers are readable.
unsafe fn send_iov(
    fd: c_int,
    iov: *const iovec,
    cnt: c_int,
    flags: c_int,
    vfs: bool,
) -> Outcome<ssize_t> {
    let mut call = runtime::Call::default();
    // SAFETY: each iovec describes a readable buffer (writev contract).
    let r = unsafe {
        each_iov(fd, iov, cnt, flags, true, vfs, |p, n, f| {
            runtime::send(fd, buf_ref(p, n), f, &mut call)
        })
    };
    sigpipe(r, flags)
}

const NOT_OURS: Outcome<c_int> = B(Bypass::NotOurs);

// --- sockets --------------------------------------------------------------------------------

pub(crate) unsafe fn socket(domain: c_int, ty: c_int, protocol: c_int) -> Outcome<c_int> {
    // SAFETY: the raw system call with the application's arguments.
    let fd = unsafe { libc::syscall(libc::SYS_socket, domain, ty, protocol) } as c_int;
    if fd < 0 {
        return Outcome::Error(crate::errno::get());
    }
    let stream = ty & 0xf == libc::SOCK_STREAM;
    if stream && matches!(domain, libc::AF_INET | libc::AF_INET6) && runtime::connects() {
        crate::candidates::mark(fd, domain);
    } else if crate::candidates::is(fd) {
        // A candidate's number closed unseen (a close inside libc): the records were its.
        crate::candidates::forget(fd);
    }
    Outcome::Done(fd)
}

pub(crate) unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> Outcome<c_int> {
    if crate::candidates::is(fd) {
        // connect() asks for the bound port then (and only then).
        crate::candidates::note_bind(fd);
    }
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
    // An address of another family than the socket's: the kernel's error (EINVAL, EAFNOSUPPORT).
    if sock_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) != Some(family) {
        return NOT_OURS;
    }
    if family == libc::AF_INET6 {
        // SAFETY: an AF_INET6 address of sufficient length (checked above).
        let sin6 = unsafe { addr.cast::<libc::sockaddr_in6>().read_unaligned() };
        let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
        // IPV6_V6ONLY cannot change once the socket is bound (EINVAL): asked now, it holds.
        let Some(v6only) = sock_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) else {
            return NOT_OURS;
        };
        return out(runtime::bind6(fd, ip, v6only != 0, port));
    }
    // SAFETY: an AF_INET address of sufficient length (checked above).
    let sin = unsafe { addr.cast::<libc::sockaddr_in>().read_unaligned() };
    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    out(runtime::bind(fd, ip, port))
}

pub(crate) unsafe fn listen(fd: c_int, backlog: c_int) -> Outcome<c_int> {
    if crate::candidates::is(fd) {
        crate::candidates::forget(fd);
    }
    out(runtime::listen(fd, backlog))
}

pub(crate) unsafe fn accept(fd: c_int, a: *mut sockaddr, l: *mut socklen_t) -> Outcome<c_int> {
    // SAFETY: accept's contract.
    unsafe { accept_with(fd, a, l, 0) }
}

/// accept/accept4 on a listener of ours: the new fd, its peer's address written as the kernel
/// writes it.
///
/// # Safety
/// `a` and `l` are null or a buffer of `*l` bytes and its length (accept's contract).
unsafe fn accept_with(
    fd: c_int,
    a: *mut sockaddr,
    l: *mut socklen_t,
    flags: c_int,
) -> Outcome<c_int> {
    match runtime::accept(fd, flags) {
        None => NOT_OURS,
        Some(Err(e)) => Outcome::Error(e),
        Some(Ok((new, peer))) => {
            // SAFETY: see above.
            unsafe { write_sockaddr(peer, a, l) };
            Outcome::Done(new)
        }
    }
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
    // SAFETY: accept4's contract.
    unsafe { accept_with(fd, a, l, flags) }
}

/// connect() to a destination `MTCP_CONNECT` gives the stack (an IPv4 address, or an IPv4
/// address v4-mapped on an AF_INET6 socket), on a stream socket of the address's family; or
/// again on a connection of ours. Everything else is the kernel's.
pub(crate) unsafe fn connect(fd: c_int, a: *const sockaddr, l: socklen_t) -> Outcome<c_int> {
    // SAFETY: connect's contract: `a` points to `l` readable bytes (the family read only when
    // `l` covers it).
    let unspec = !a.is_null()
        && l as usize >= std::mem::size_of::<libc::sa_family_t>()
        && c_int::from(unsafe { std::ptr::addr_of!((*a).sa_family).read_unaligned() })
            == libc::AF_UNSPEC;
    if unspec && runtime::is_ours(fd) {
        // Linux disconnects the socket.
        return match runtime::unconnect(fd) {
            None => NOT_OURS,
            a => out(a),
        };
    }
    // SAFETY: connect's contract: `a` points to `l` readable bytes (or the kernel answers
    // EFAULT; we read only what `l` covers).
    let Some(port) = (unsafe { sockaddr_port(a, l) }) else {
        return NOT_OURS;
    };
    // SAFETY: sockaddr_port checked the family and that `l` covers the address.
    let family = c_int::from(unsafe { std::ptr::addr_of!((*a).sa_family).read_unaligned() });
    let ip = if family == libc::AF_INET6 {
        // SAFETY: an AF_INET6 address of sufficient length (checked above).
        let sin6 = unsafe { a.cast::<libc::sockaddr_in6>().read_unaligned() };
        match std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).to_ipv4_mapped() {
            Some(v4) => v4,
            None => return NOT_OURS,
        }
    } else {
        // SAFETY: an AF_INET address of sufficient length (checked above).
        let sin = unsafe { a.cast::<libc::sockaddr_in>().read_unaligned() };
        std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
    };
    let ours = runtime::is_ours(fd);
    // A socket of ours, or one whose kind is known since socket() (a candidate), or else asked.
    let known = (!ours).then(|| crate::candidates::known(fd)).flatten();
    let (stream, domain) = match &known {
        Some(k) => (true, k.domain),
        None if ours => (true, None),
        None => (
            is_stream(fd),
            sock_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN),
        ),
    };
    // IPV6_V6ONLY: its default unless the application set it, the system's
    // (net.ipv6.bindv6only).
    let v6only = || match &known {
        Some(k) if !k.set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) => runtime::default_v6only(),
        _ => sock_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    };
    if !ours
        && (!runtime::connect_takes(ip)
            || !stream
            || domain != Some(family)
            // A v4-mapped address on an IPv6-only socket: the kernel refuses it
            // (ENETUNREACH), as it would any IPv4 peer of that socket.
            || family == libc::AF_INET6 && v6only() != Some(0))
    {
        // The kernel's connection: the socket stays the kernel's.
        if crate::candidates::is(fd) {
            crate::candidates::forget(fd);
        }
        return NOT_OURS;
    }
    let fam = if family == libc::AF_INET6 {
        crate::sockets::Family::Inet6
    } else {
        crate::sockets::Family::Inet
    };
    let r = runtime::connect(
        fd,
        std::net::SocketAddrV4::new(ip, port),
        fam,
        known.as_ref(),
    );
    if r.is_none() && ours {
        // A failed connection of ours connects anew through the kernel: its epoll entries
        // move to the kernel's instances once the kernel's connect() started.
        let entries = runtime::take_released();
        if !entries.is_empty() {
            // SAFETY: connect's contract, forwarded (inside the hook: libc's own).
            let rc = unsafe { libc::connect(fd, a, l) };
            let e = crate::errno::get();
            for (epfd, events, data) in entries {
                let mut ev = libc::epoll_event { events, u64: data };
                // SAFETY: the application's epoll instance and socket.
                unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
            }
            return if rc == 0 {
                Outcome::Done(0)
            } else {
                Outcome::Error(e)
            };
        }
    }
    out(r)
}

pub(crate) unsafe fn shutdown(fd: c_int, how: c_int) -> Outcome<c_int> {
    out(runtime::shutdown(fd, how))
}

pub(crate) unsafe fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> Outcome<c_int> {
    if !runtime::is_ours(fd) {
        return NOT_OURS;
    }
    if val.is_null() || len.is_null() {
        // The kernel says EFAULT (or answers an option that needs no buffer).
        return NOT_OURS;
    }
    // SAFETY: getsockopt's contract: `len` points to the room of the buffer `val`.
    let room = unsafe { len.read_unaligned() } as c_int;
    if room < 0 {
        return Outcome::Error(libc::EINVAL);
    }
    // SAFETY: as above: `val` has `room` writable bytes.
    let out = unsafe { std::slice::from_raw_parts_mut(val.cast::<u8>(), room as usize) };
    match runtime::getsockopt(fd, level, name, out) {
        None => NOT_OURS,
        Some(Err(e)) => Outcome::Error(e),
        Some(Ok(n)) => {
            // SAFETY: as above.
            unsafe { len.write_unaligned(n as socklen_t) };
            Outcome::Done(0)
        }
    }
}

pub(crate) unsafe fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> Outcome<c_int> {
    if !runtime::is_ours(fd) {
        if level == libc::SOL_PACKET && name == libc::PACKET_FANOUT {
            // SAFETY: setsockopt's contract.
            return unsafe { runtime::packet_fanout(fd, val, len) };
        }
        if crate::candidates::is(fd) {
            // The kernel's call, noted when it succeeds: connect() reads back what was set.
            // SAFETY: the raw system call with the application's arguments.
            let r = unsafe { libc::syscall(libc::SYS_setsockopt, fd, level, name, val, len) };
            if r < 0 {
                return Outcome::Error(crate::errno::get());
            }
            crate::candidates::note_option(fd, level, name);
            return Outcome::Done(0);
        }
        return NOT_OURS;
    }
    let value: &[u8] = if len == 0 {
        &[]
    } else if val.is_null() {
        // The kernel's answer on the identity socket (EINVAL or EFAULT, as Linux checks).
        return NOT_OURS;
    } else {
        // SAFETY: setsockopt's contract: `val` points to `len` readable bytes.
        unsafe { std::slice::from_raw_parts(val.cast::<u8>(), len as usize) }
    };
    out(runtime::setsockopt(fd, level, name, value))
}

pub(crate) unsafe fn getsockname(fd: c_int, a: *mut sockaddr, l: *mut socklen_t) -> Outcome<c_int> {
    // SAFETY: getsockname's contract.
    unsafe { name(fd, false, a, l) }
}

pub(crate) unsafe fn getpeername(fd: c_int, a: *mut sockaddr, l: *mut socklen_t) -> Outcome<c_int> {
    // SAFETY: getpeername's contract.
    unsafe { name(fd, true, a, l) }
}

/// getpeername (`peer`) or getsockname of a socket of ours.
///
/// # Safety
/// As `write_sockaddr`.
unsafe fn name(fd: c_int, peer: bool, a: *mut sockaddr, l: *mut socklen_t) -> Outcome<c_int> {
    match runtime::name(fd, peer) {
        None => NOT_OURS,
        Some(Err(e)) => Outcome::Error(e),
        Some(Ok(addr)) => {
            // SAFETY: see above.
            unsafe { write_sockaddr(addr, a, l) };
            Outcome::Done(0)
        }
    }
}

/// Writes `addr` to the caller's buffer as a sockaddr_in or sockaddr_in6 (flow info and scope
/// as `addr` has them), truncated to `*len` bytes, and the full size to `*len`, as the kernel
/// does. Nothing if either pointer is null.
///
/// # Safety
/// `out` and `len` are null, or `out` has room for `*len` bytes (accept/getpeername contract).
unsafe fn write_sockaddr(addr: std::net::SocketAddr, out: *mut sockaddr, len: *mut socklen_t) {
    if out.is_null() || len.is_null() {
        return;
    }
    match addr {
        std::net::SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: see above.
            unsafe { copy_sockaddr(&sin, out, len) }
        }
        std::net::SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: see above.
            unsafe { copy_sockaddr(&sin6, out, len) }
        }
    }
}

/// Copies the address `a` into the caller's buffer, at most `*len` bytes of it, and sets `*len`
/// to its full size.
///
/// # Safety
/// As `write_sockaddr`, with neither pointer null.
unsafe fn copy_sockaddr<T>(a: &T, out: *mut sockaddr, len: *mut socklen_t) {
    let size = std::mem::size_of::<T>();
    // SAFETY: at most *len bytes are copied into `out`, which has room for them.
    unsafe {
        let room = (*len as usize).min(size);
        std::ptr::copy_nonoverlapping((a as *const T).cast::<u8>(), out.cast::<u8>(), room);
        *len = size as socklen_t;
    }
}

// --- data -----------------------------------------------------------------------------------

pub(crate) unsafe fn read(fd: c_int, buf: *mut c_void, n: size_t) -> Outcome<ssize_t> {
    if n == 0 {
        // Linux's file layer returns 0 for a read of zero bytes before the socket sees it.
        return if runtime::is_conn(fd) {
            Outcome::Done(0)
        } else {
            NOT_OURS_SZ
        };
    }
    // SAFETY: read's contract: buf has room for n bytes.
    unsafe { recv(fd, buf, n, 0) }
}

pub(crate) unsafe fn write(fd: c_int, buf: *const c_void, n: size_t) -> Outcome<ssize_t> {
    // SAFETY: write's contract: buf holds n readable bytes.
    unsafe { send(fd, buf, n, 0) }
}

pub(crate) unsafe fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> Outcome<ssize_t> {
    // SAFETY: readv's contract.
    unsafe { recv_iov(fd, iov, cnt, 0, true) }
}

pub(crate) unsafe fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> Outcome<ssize_t> {
    // SAFETY: writev's contract.
    unsafe { send_iov(fd, iov, cnt, 0, true) }
}

pub(crate) unsafe fn recv(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
) -> Outcome<ssize_t> {
    if let Some(r) = null_buffer(fd, len, buf.is_null()) {
        return r;
    }
    // SAFETY: recv's contract: buf has room for len bytes.
    let b = unsafe { buf_mut(buf.cast::<u8>(), len) };
    out_len(runtime::recv(fd, b, flags, &mut runtime::Call::default()))
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
    if !runtime::is_conn(fd) {
        return NOT_OURS_SZ;
    }
    if msg.is_null() {
        return Outcome::Error(libc::EFAULT);
    }
    // SAFETY: recvmsg's contract: msg is a valid msghdr with msg_iovlen iovecs.
    unsafe {
        let r = recv_iov(fd, (*msg).msg_iov, (*msg).msg_iovlen as c_int, flags, false);
        if matches!(r, Outcome::Done(_)) {
            (*msg).msg_namelen = 0;
            (*msg).msg_controllen = 0;
            (*msg).msg_flags = 0;
        }
        r
    }
}

pub(crate) unsafe fn recvmmsg(
    fd: c_int,
    vec: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
    timeout: *mut timespec,
) -> Outcome<c_int> {
    if !runtime::is_conn(fd) {
        return NOT_OURS;
    }
    // SAFETY: recvmmsg's contract.
    let until = match unsafe { timespec_arg(timeout) } {
        Ok(t) => t.map(|t| std::time::Instant::now() + t),
        Err(e) => return Outcome::Error(e),
    };
    let first = flags & !libc::MSG_WAITFORONE;
    let rest = if flags & libc::MSG_WAITFORONE != 0 {
        first | libc::MSG_DONTWAIT
    } else {
        first
    };
    // SAFETY: as above: vec holds vlen mmsghdrs.
    unsafe { each_mmsg(vec, vlen, first, rest, until, |m, f| recvmsg(fd, m, f)) }
}

/// recvmmsg/sendmmsg on a connection of ours (the caller checked): one recvmsg/sendmsg per
/// entry, its length in `msg_len`; stops at the first error (reported only if no entry was
/// done), at end of stream, or when `until` has passed after an entry (recvmmsg's timeout,
/// checked as Linux does).
///
/// # Safety
/// `vec` is null or points to `vlen` mmsghdrs valid for `one`.
unsafe fn each_mmsg(
    vec: *mut mmsghdr,
    vlen: c_uint,
    first: c_int,
    rest: c_int,
    until: Option<std::time::Instant>,
    mut one: impl FnMut(*mut msghdr, c_int) -> Outcome<ssize_t>,
) -> Outcome<c_int> {
    if vec.is_null() {
        return Outcome::Error(libc::EFAULT);
    }
    let vlen = vlen.min(libc::UIO_MAXIOV as c_uint);
    let mut done = 0;
    for i in 0..vlen as usize {
        // SAFETY: see above.
        let m = unsafe { vec.add(i) };
        // SAFETY: as above.
        let hdr = unsafe { std::ptr::addr_of_mut!((*m).msg_hdr) };
        match one(hdr, if i == 0 { first } else { rest }) {
            Outcome::Done(n) => {
                // SAFETY: as above.
                unsafe { (*m).msg_len = n as c_uint };
                done += 1;
                if n == 0 || until.is_some_and(|u| std::time::Instant::now() >= u) {
                    break;
                }
            }
            Outcome::Error(e) if done == 0 => return Outcome::Error(e),
            Outcome::Error(_) => break,
            B(b) => return B(b),
        }
    }
    Outcome::Done(done)
}

pub(crate) unsafe fn send(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
) -> Outcome<ssize_t> {
    if let Some(r) = null_buffer(fd, len, buf.is_null()) {
        return r;
    }
    if flags & libc::MSG_FASTOPEN != 0 {
        if let Some(Err(e)) = runtime::fast_open(fd, false) {
            return Outcome::Error(e);
        }
    }
    // SAFETY: send's contract: buf holds len readable bytes.
    let b = unsafe { buf_ref(buf.cast::<u8>(), len) };
    sigpipe(
        out_len(runtime::send(fd, b, flags, &mut runtime::Call::default())),
        flags,
    )
}

pub(crate) unsafe fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    a: *const sockaddr,
    l: socklen_t,
) -> Outcome<ssize_t> {
    if flags & libc::MSG_FASTOPEN != 0 {
        // SAFETY: sendto's contract: `a` points to `l` readable bytes.
        if let Some(r) = unsafe { fast_open(fd, a, l) } {
            return r;
        }
    }
    // A connected TCP socket ignores the destination, as Linux does.
    // SAFETY: sendto's contract.
    unsafe { send(fd, buf, len, flags & !libc::MSG_FASTOPEN) }
}

/// sendto/sendmsg with MSG_FASTOPEN on a socket not yet connected: a connect() and a send in
/// one call. The stack puts no data in its SYN (as Linux without a cookie): a non-blocking
/// socket's call starts the handshake and says `EINPROGRESS`, a blocking one's waits for
/// it, then sends. `None`: connected, the send follows; `Some`: the call's answer (the
/// kernel's own TFO for a destination the stack does not take, or the connect's failure).
///
/// # Safety
/// `a` is null or points to `l` readable bytes.
unsafe fn fast_open(fd: c_int, a: *const sockaddr, l: socklen_t) -> Option<Outcome<ssize_t>> {
    if runtime::is_ours(fd) {
        // Connected already, or connecting: as Linux answers; failed since: a new connect,
        // as below.
        match runtime::fast_open(fd, !a.is_null()) {
            Some(Err(e)) => return Some(Outcome::Error(e)),
            Some(Ok(false)) => return None,
            Some(Ok(true)) | None => {}
        }
    }
    if a.is_null() {
        return Some(NOT_OURS_SZ);
    }
    // SAFETY: as above.
    match unsafe { connect(fd, a, l) } {
        B(b) => Some(B(b)),
        Outcome::Error(e) => Some(Outcome::Error(e)),
        Outcome::Done(_) => None,
    }
}

pub(crate) unsafe fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> Outcome<ssize_t> {
    if flags & libc::MSG_FASTOPEN != 0 && !msg.is_null() {
        // SAFETY: sendmsg's contract: msg is a valid msghdr, its name `msg_namelen` bytes.
        let (a, l) = unsafe { ((*msg).msg_name.cast::<sockaddr>(), (*msg).msg_namelen) };
        // SAFETY: as above.
        if let Some(r) = unsafe { fast_open(fd, a, l) } {
            return r;
        }
    }
    let flags = flags & !libc::MSG_FASTOPEN;
    if !runtime::takes_writes(fd) {
        return NOT_OURS_SZ;
    }
    if msg.is_null() {
        return Outcome::Error(libc::EFAULT);
    }
    // SAFETY: sendmsg's contract: msg is a valid msghdr with msg_iovlen iovecs.
    unsafe { send_iov(fd, (*msg).msg_iov, (*msg).msg_iovlen as c_int, flags, false) }
}

pub(crate) unsafe fn sendmmsg(
    fd: c_int,
    vec: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
) -> Outcome<c_int> {
    if !runtime::takes_writes(fd) {
        return NOT_OURS;
    }
    // SAFETY: sendmmsg's contract: vec holds vlen mmsghdrs.
    unsafe { each_mmsg(vec, vlen, flags, flags, None, |m, f| sendmsg(fd, m, f)) }
}

pub(crate) unsafe fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    off: *mut off_t,
    n: size_t,
) -> Outcome<ssize_t> {
    // SAFETY: sendfile's contract (off_t and off64_t are the same on x86-64).
    unsafe { sendfile64(out_fd, in_fd, off.cast(), n) }
}

pub(crate) unsafe fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    off: *mut off64_t,
    count: size_t,
) -> Outcome<ssize_t> {
    // A stack socket as the source is what the kernel refuses too (EINVAL: not a file).
    if !runtime::is_conn(out_fd) {
        return NOT_OURS_SZ;
    }
    // Read at an offset (the caller's, or the file position, moved afterwards by what was sent,
    // so nothing read but unsent is lost), send, until `count` or the socket takes no more.
    let start = if off.is_null() {
        // SAFETY: lseek on the caller's fd.
        unsafe { libc::lseek64(in_fd, 0, libc::SEEK_CUR) }
    } else {
        // SAFETY: sendfile's contract: off points to an offset.
        unsafe { off.read_unaligned() }
    };
    if start < 0 {
        let e = crate::errno::get();
        return Outcome::Error(if e == libc::ESPIPE { libc::EINVAL } else { e });
    }
    let mut buf = vec![0u8; count.min(256 * 1024)];
    let mut total = 0usize;
    let mut call = runtime::Call::default();
    while total < count {
        let want = (count - total).min(buf.len());
        // SAFETY: reading into our own buffer.
        let got = unsafe {
            libc::pread64(
                in_fd,
                buf.as_mut_ptr().cast(),
                want,
                start + total as off64_t,
            )
        };
        if got < 0 {
            if total == 0 {
                return Outcome::Error(crate::errno::get());
            }
            break;
        }
        if got == 0 {
            break;
        }
        // Blocking socket: each chunk is queued whole before the next is read, so the call
        // returns when `count` bytes are queued (or at end of file), as Linux's does.
        match runtime::send(out_fd, &buf[..got as usize], 0, &mut call) {
            None => return NOT_OURS_SZ,
            Some(Ok(sent)) => {
                total += sent;
                if sent < got as usize {
                    break;
                }
            }
            Some(Err(e)) if total == 0 => return sigpipe(Outcome::Error(e), 0),
            Some(Err(e)) => {
                runtime::keep_errno(out_fd, e);
                break;
            }
        }
    }
    let end = start + total as off64_t;
    if off.is_null() {
        // SAFETY: lseek on the caller's fd.
        unsafe { libc::lseek64(in_fd, end, libc::SEEK_SET) };
    } else {
        // SAFETY: as above.
        unsafe { off.write_unaligned(end) };
    }
    Outcome::Done(total as ssize_t)
}

// --- fds ------------------------------------------------------------------------------------

pub(crate) unsafe fn close(fd: c_int) -> Outcome<c_int> {
    // Our bookkeeping goes; the kernel then closes the fd (the eventfd or the kernel socket).
    if crate::candidates::is(fd) && !runtime::in_shared_child() {
        crate::candidates::forget(fd);
    }
    runtime::close(fd);
    NOT_OURS
}

pub(crate) unsafe fn close_range(first: c_uint, last: c_uint, flags: c_int) -> Outcome<c_int> {
    // Bad arguments are the kernel's to refuse (EINVAL); CLOSE_RANGE_CLOEXEC closes nothing.
    let known = libc::CLOSE_RANGE_UNSHARE as c_int | libc::CLOSE_RANGE_CLOEXEC as c_int;
    if first <= last
        && flags & !known == 0
        && flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0
        && !runtime::in_shared_child()
    {
        // (A vfork child's closes are its own: `runtime::in_shared_child`. One system call
        // per close_range, which closes many fds at once.)
        let clamp = |v: c_uint| c_int::try_from(v).unwrap_or(c_int::MAX);
        crate::candidates::forget_range(clamp(first), clamp(last));
        runtime::close_range(clamp(first), clamp(last));
    }
    B(Bypass::NotOurs)
}

/// `syscall()` for the calls its gate lets through: close, close_range, dup2, dup3 (the same
/// ops as their libc names; the kernel call then runs as `syscall` itself).
pub(crate) unsafe fn syscall(
    nr: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    _a4: c_long,
    _a5: c_long,
    _a6: c_long,
) -> Outcome<c_long> {
    let widen = |o: Outcome<c_int>| match o {
        Outcome::Bypass(b) => Outcome::Bypass(b),
        Outcome::Done(v) => Outcome::Done(c_long::from(v)),
        Outcome::Error(e) => Outcome::Error(e),
    };
    // SAFETY: the caller's arguments, as the libc functions of the same names take them.
    unsafe {
        match nr {
            libc::SYS_close => widen(close(a1 as c_int)),
            libc::SYS_close_range => widen(close_range(a1 as c_uint, a2 as c_uint, a3 as c_int)),
            libc::SYS_dup2 => widen(dup2(a1 as c_int, a2 as c_int)),
            libc::SYS_dup3 => widen(dup3(a1 as c_int, a2 as c_int, a3 as c_int)),
            _ => B(Bypass::NotOurs),
        }
    }
}

/// After the kernel made `new` a duplicate of `old`: `new` refers to `old`'s object too.
fn dup_done(old: c_int, new: c_int) -> Outcome<c_int> {
    if new < 0 {
        return Outcome::Error(crate::errno::get());
    }
    if (crate::candidates::is(old) || crate::candidates::is(new)) && !runtime::in_shared_child() {
        // `old`'s socket has two numbers now; `new` names it, not a candidate's socket (one
        // dup2 replaced, or a stale bit).
        if crate::candidates::is(old) {
            crate::candidates::note_dup(old);
        }
        if crate::candidates::is(new) {
            crate::candidates::forget(new);
        }
    }
    match runtime::alias(old, new) {
        Ok(()) => Outcome::Done(new),
        Err(e) => {
            // SAFETY: the fd the kernel just made for this call.
            unsafe { libc::close(new) };
            Outcome::Error(e)
        }
    }
}

pub(crate) unsafe fn dup(fd: c_int) -> Outcome<c_int> {
    // SAFETY: plain dup (inside the guard: libc's).
    dup_done(fd, unsafe { libc::dup(fd) })
}

pub(crate) unsafe fn dup2(old: c_int, new: c_int) -> Outcome<c_int> {
    // SAFETY: the same call with no flags.
    unsafe { dup_to(old, new, None) }
}

pub(crate) unsafe fn dup3(old: c_int, new: c_int, flags: c_int) -> Outcome<c_int> {
    // SAFETY: as above.
    unsafe { dup_to(old, new, Some(flags)) }
}

/// dup2 (`flags` None) and dup3: the kernel closes `new` silently if `old` is valid and
/// different; our side of `new` goes first.
unsafe fn dup_to(old: c_int, new: c_int, flags: Option<c_int>) -> Outcome<c_int> {
    if old == new {
        return NOT_OURS; // dup2: `new` if valid; dup3: EINVAL (the kernel says which).
    }
    // (dup3's flags are checked first, as the kernel does.)
    if flags.is_some_and(|f| f & !libc::O_CLOEXEC != 0) {
        return Outcome::Error(libc::EINVAL);
    }
    // SAFETY: F_GETFD has no side effect.
    if unsafe { libc::fcntl(old, libc::F_GETFD) } < 0 {
        return Outcome::Error(libc::EBADF);
    }
    runtime::close(new);
    // SAFETY: the application's own arguments.
    let r = unsafe {
        match flags {
            None => libc::dup2(old, new),
            Some(f) => libc::dup3(old, new, f),
        }
    };
    dup_done(old, r)
}

pub(crate) unsafe fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> Outcome<c_int> {
    match cmd {
        libc::F_SETFL if runtime::is_ours(fd) => {
            runtime::set_nonblock(fd, arg as c_int & libc::O_NONBLOCK != 0);
        }
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            // SAFETY: the application's own arguments.
            return dup_done(fd, unsafe { libc::fcntl(fd, cmd, arg as c_int) });
        }
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
        libc::FIONREAD => match runtime::fionread(fd) {
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
            runtime::set_nonblock(fd, on);
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
    let ev = if event.is_null() {
        None
    } else {
        // SAFETY: epoll_ctl's contract: event points to a valid epoll_event for ADD/MOD.
        let ev = unsafe { std::ptr::read_unaligned(event) };
        Some((ev.events, ev.u64))
    };
    match runtime::epoll_ctl(epfd, op, fd, ev) {
        None if crate::candidates::is(fd) => {
            // A socket connect() may make ours: the kernel's entry, noted once it is made.
            // SAFETY: the application's own arguments.
            if unsafe { libc::epoll_ctl(epfd, op, fd, event) } < 0 {
                return Outcome::Error(crate::errno::get());
            }
            crate::candidates::note_ctl(epfd, op, fd, ev);
            Outcome::Done(0)
        }
        None => NOT_OURS,
        Some(Err(e)) => Outcome::Error(e),
        Some(Ok(kernel_side)) => {
            // The kernel side of a dual listener is watched by the kernel epoll as well.
            // SAFETY: the application's own arguments.
            if kernel_side && unsafe { libc::epoll_ctl(epfd, op, fd, event) } < 0 {
                return Outcome::Error(crate::errno::get());
            }
            Outcome::Done(0)
        }
    }
}

pub(crate) unsafe fn epoll_wait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
) -> Outcome<c_int> {
    // SAFETY: epoll_wait's contract.
    unsafe {
        epoll_wait_with(epfd, events, max, timeout, std::ptr::null(), || {
            libc::epoll_wait(epfd, events, max, timeout)
        })
    }
}

/// epoll_wait/epoll_pwait/epoll_pwait2, on any epoll instance while MTCP_PORTS is set: on one
/// that holds none of our fds, the kernel's wait (`kernel`, the caller's call), counted so
/// that another thread adding one of ours rings this one out of it; on one of ours, the
/// stack's wait.
///
/// # Safety
/// `events` has room for `max` entries; `sigmask` is null or a valid signal set.
unsafe fn epoll_wait_with(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    mut timeout_ms: c_int,
    sigmask: *const sigset_t,
    kernel: impl FnOnce() -> c_int,
) -> Outcome<c_int> {
    if !runtime::is_ours(epfd) {
        if max <= 0 || events.is_null() {
            return NOT_OURS; // the kernel's errors (EBADF before EINVAL)
        }
        if userstack::dpdk::on_interrupt_thread() {
            // DPDK's own thread, between its drivers' callbacks: they run behind the fence
            // that keeps them from unmapping a ring under a burst (userstack dpdk/fence.rs).
            let (r, err) =
                userstack::dpdk::interrupt_thread_waits(|| (kernel(), crate::errno::get()));
            // The callbacks this wait's events run make no call into the library.
            crate::guard::callbacks_begin();
            return if r < 0 {
                Outcome::Error(err)
            } else {
                Outcome::Done(r)
            };
        }
    }
    // Linux's EP_MAX_EVENTS.
    const MAX_EVENTS: usize = i32::MAX as usize / std::mem::size_of::<epoll_event>();
    if max <= 0 || max as usize > MAX_EVENTS {
        return Outcome::Error(libc::EINVAL);
    }
    // A null array: Linux waits as usual and fails with EFAULT when it has an event to copy
    // out (0 if none came by the timeout). The wait writes into one slot of its own then.
    let mut one = [std::mem::MaybeUninit::<epoll_event>::uninit(); 1];
    let slots = if events.is_null() {
        &mut one[..]
    } else {
        // SAFETY: see above; the entries are only written.
        unsafe {
            std::slice::from_raw_parts_mut(
                events.cast::<std::mem::MaybeUninit<epoll_event>>(),
                max as usize,
            )
        }
    };
    let copied = |a: Option<Result<c_int, c_int>>| match a {
        Some(Ok(n)) if n > 0 && events.is_null() => Outcome::Error(libc::EFAULT),
        a => out(a),
    };
    match runtime::kernel_epoll_wait(epfd, slots, timeout_ms, kernel) {
        runtime::KernelWait::NotTaken => {}
        runtime::KernelWait::Done(a) => return copied(a),
        runtime::KernelWait::Rest(ms) => timeout_ms = ms,
    }
    // SAFETY: see above.
    let mask = unsafe { sigmask.as_ref() };
    copied(runtime::epoll_wait(epfd, slots, timeout_ms, mask))
}

pub(crate) unsafe fn epoll_pwait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    sigmask: *const sigset_t,
) -> Outcome<c_int> {
    // SAFETY: epoll_pwait's contract.
    unsafe {
        epoll_wait_with(epfd, events, max, timeout, sigmask, || {
            libc::epoll_pwait(epfd, events, max, timeout, sigmask)
        })
    }
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
    // SAFETY: epoll_pwait2's contract.
    unsafe {
        epoll_wait_with(epfd, events, max, ms, sigmask, || {
            libc::epoll_pwait2(epfd, events, max, timeout, sigmask)
        })
    }
}

pub(crate) unsafe fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> Outcome<c_int> {
    let t = (timeout >= 0).then(|| std::time::Duration::from_millis(timeout as u64));
    // SAFETY: poll's contract.
    unsafe { poll_with(fds, nfds, t, std::ptr::null()) }
}

/// poll/ppoll: the array as a slice, for `runtime::poll` (which hands back `None` when no fd in it
/// is ours).
///
/// # Safety
/// `fds` points to `nfds` pollfds (or nfds is 0).
unsafe fn poll_with(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: Option<std::time::Duration>,
    sigmask: *const sigset_t,
) -> Outcome<c_int> {
    if nfds == 0 || fds.is_null() {
        return NOT_OURS;
    }
    // SAFETY: the caller's array (poll contract).
    let list = unsafe { std::slice::from_raw_parts_mut(fds, nfds as usize) };
    // SAFETY: ppoll's contract: null or a valid signal set.
    let mask = unsafe { sigmask.as_ref() };
    out(runtime::poll(list, timeout, mask))
}

pub(crate) unsafe fn ppoll(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> Outcome<c_int> {
    // SAFETY: ppoll's contract: timeout is null or a valid timespec.
    let t = match unsafe { timespec_arg(timeout) } {
        Ok(t) => t,
        Err(e) => return Outcome::Error(e),
    };
    // SAFETY: ppoll's contract.
    unsafe { poll_with(fds, nfds, t, sigmask) }
}

/// A timeout argument: null is "forever"; a negative or unnormalized one is EINVAL.
///
/// # Safety
/// `t` is null or points to a timespec.
unsafe fn timespec_arg(t: *const timespec) -> Result<Option<std::time::Duration>, c_int> {
    if t.is_null() {
        return Ok(None);
    }
    // SAFETY: see above.
    let t = unsafe { t.read_unaligned() };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return Err(libc::EINVAL);
    }
    Ok(Some(std::time::Duration::new(
        t.tv_sec as u64,
        t.tv_nsec as u32,
    )))
}

pub(crate) unsafe fn select(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    timeout: *mut timeval,
) -> Outcome<c_int> {
    let t = if timeout.is_null() {
        None
    } else {
        // SAFETY: select's contract: a valid timeval.
        let tv = unsafe { timeout.read_unaligned() };
        // Linux takes microseconds beyond a second (it normalizes them); negatives are EINVAL.
        if tv.tv_sec < 0 || tv.tv_usec < 0 {
            return Outcome::Error(libc::EINVAL);
        }
        Some(
            std::time::Duration::from_secs(tv.tv_sec as u64)
                + std::time::Duration::from_micros(tv.tv_usec as u64),
        )
    };
    let start = std::time::Instant::now();
    // SAFETY: select's contract.
    let res = unsafe { select_with(nfds, r, w, e, t, std::ptr::null()) };
    if let (Some(t), false) = (t, timeout.is_null()) {
        if !matches!(res, B(_)) {
            // Linux's select writes back the time not slept.
            let left = t.saturating_sub(start.elapsed());
            // SAFETY: as above.
            unsafe {
                timeout.write_unaligned(timeval {
                    tv_sec: left.as_secs() as libc::time_t,
                    tv_usec: left.subsec_micros() as libc::suseconds_t,
                })
            };
        }
    }
    res
}

/// select/pselect as a poll over the fds in the three sets, when some of them are ours.
///
/// # Safety
/// Each set is null or an fd_set with at least `nfds` bits.
unsafe fn select_with(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    timeout: Option<std::time::Duration>,
    sigmask: *const sigset_t,
) -> Outcome<c_int> {
    if nfds < 0 {
        return Outcome::Error(libc::EINVAL);
    }
    // Sets may be larger than FD_SETSIZE (a program allocates them for its nfds); Linux looks
    // at no more bits than its fd table has room for.
    let nfds = if nfds as usize > libc::FD_SETSIZE {
        nfds.min(fd_limit())
    } else {
        nfds
    };
    let sets = [(r, libc::POLLIN), (w, libc::POLLOUT), (e, libc::POLLPRI)];
    let mut list: Vec<pollfd> = Vec::new();
    for fd in 0..nfds {
        let mut events = 0;
        for (set, ev) in sets {
            // SAFETY: the set holds nfds bits (select contract).
            if !set.is_null() && unsafe { fd_bit(set, fd) } {
                events |= ev;
            }
        }
        if events != 0 {
            list.push(pollfd {
                fd,
                events,
                revents: 0,
            });
        }
    }
    if !list.iter().any(|p| crate::fdtable::is_ours(p.fd)) {
        return NOT_OURS;
    }
    // SAFETY: pselect's contract: null or a valid signal set.
    let mask = unsafe { sigmask.as_ref() };
    match runtime::poll(&mut list, timeout, mask) {
        None => return NOT_OURS,
        Some(Err(e)) => return Outcome::Error(e),
        Some(Ok(_)) => {}
    }
    if list.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        return Outcome::Error(libc::EBADF);
    }
    // What Linux counts as ready for each set (fs/select.c POLLIN_SET, POLLOUT_SET, POLLEX_SET).
    let ready = [
        libc::POLLIN | libc::POLLRDNORM | libc::POLLHUP | libc::POLLERR,
        libc::POLLOUT | libc::POLLWRNORM | libc::POLLERR,
        libc::POLLPRI,
    ];
    for (set, _) in sets {
        if !set.is_null() {
            for p in &list {
                // SAFETY: as above.
                unsafe { set_fd_bit(set, p.fd, false) };
            }
        }
    }
    let mut n = 0;
    for p in &list {
        for ((set, ev), mask) in sets.iter().zip(ready) {
            if !set.is_null() && p.events & ev != 0 && p.revents & mask != 0 {
                // SAFETY: as above.
                unsafe { set_fd_bit(*set, p.fd, true) };
                n += 1;
            }
        }
    }
    Outcome::Done(n)
}

/// Bit `fd` of a select set of any size (libc's FD_ISSET refuses fds past FD_SETSIZE).
///
/// # Safety
/// `set` holds more than `fd` bits.
unsafe fn fd_bit(set: *const fd_set, fd: c_int) -> bool {
    let bits = libc::c_ulong::BITS as usize;
    let (word, bit) = (fd as usize / bits, fd as usize % bits);
    // SAFETY: the caller's set holds the word of bit `fd`.
    let w = unsafe { set.cast::<libc::c_ulong>().add(word).read_unaligned() };
    w >> bit & 1 != 0
}

/// Sets (`on`) or clears bit `fd` of a select set of any size.
///
/// # Safety
/// As [`fd_bit`], and the set is writable.
unsafe fn set_fd_bit(set: *mut fd_set, fd: c_int, on: bool) {
    let bits = libc::c_ulong::BITS as usize;
    let (word, bit) = (fd as usize / bits, fd as usize % bits);
    // SAFETY: as above.
    unsafe {
        let p = set.cast::<libc::c_ulong>().add(word);
        let w = p.read_unaligned();
        let m: libc::c_ulong = 1 << bit;
        p.write_unaligned(if on { w | m } else { w & !m });
    }
}

/// How many fds the process may have (RLIMIT_NOFILE's soft limit): no fd at or past it is
/// open, so select looks no further.
fn fd_limit() -> c_int {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct of ours.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return c_int::MAX;
    }
    c_int::try_from(rl.rlim_cur).unwrap_or(c_int::MAX)
}

pub(crate) unsafe fn pselect(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> Outcome<c_int> {
    // SAFETY: pselect's contract (glibc's pselect leaves the timeout unchanged).
    let t = match unsafe { timespec_arg(timeout) } {
        Ok(t) => t,
        Err(e) => return Outcome::Error(e),
    };
    // SAFETY: as above.
    unsafe { select_with(nfds, r, w, e, t, sigmask) }
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

/// Whether `fd` is a SOCK_STREAM socket (asked of the kernel).
fn is_stream(fd: c_int) -> bool {
    sock_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
}

/// An int socket option of `fd`, asked of the kernel (inside the guard, so libc's getsockopt
/// runs). `None`: the kernel has none (not a socket, not that kind of socket).
fn sock_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: getsockopt into a c_int with its size.
    let r = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut c_int).cast(), &mut len) };
    (r == 0).then_some(v)
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
    fn v4_mapped_addresses_are_written_as_linux_writes_them() {
        let a = std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
            std::net::Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped(),
            0xc40a,
            0,
            0,
        ));
        // As Linux wrote them for an IPv4 client of a `::` listener (AF_INET6 = 10, port,
        // flow info 0, ::ffff:198.18.0.1, scope 0), and the full length 28 whatever the room.
        let want: [u8; 28] = [
            10, 0, 0xc4, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 1,
            0, 0, 0, 0,
        ];
        for room in [64usize, 28, 16, 4, 0] {
            let mut buf = [0xeeu8; 64];
            let mut len = room as socklen_t;
            // SAFETY: `buf` has room for `len` bytes.
            unsafe { write_sockaddr(a, buf.as_mut_ptr().cast(), &mut len) };
            assert_eq!(len, 28, "room {room}");
            let n = room.min(28);
            assert_eq!(buf[..n], want[..n], "room {room}");
            assert!(buf[n..].iter().all(|&b| b == 0xee), "room {room}");
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
