//! `syscall-seq`: a fixed sequence of socket calls on kernel fds, straight through libc (the
//! way a C program makes them), printing one line per call: `name ret errno`.
//!
//! errno is set to a sentinel (7777) before every call and printed after it, so a library that
//! changes errno on success shows up as well as one that returns other values. Fd numbers are
//! printed too: a preloaded library that opens fds of its own shifts them. The sequence covers
//! every call mtcpshim intercepts, with error cases (EBADF, ENOTCONN, EAGAIN, EINVAL,
//! ECONNREFUSED, EPIPE with MSG_NOSIGNAL, EISCONN, EEXIST, ENOENT, ENOTSOCK, ENOTTY,
//! ENOPROTOOPT). The calls are grouped into steps, each under a header line `step: NAME` that
//! names the behaviour they check. `shim_passthrough.rs` runs it with and without
//! `LD_PRELOAD=libmtcpshim.so` and compares the outputs, naming the first step that differs.
//!
//! `syscall-seq bench [N]` instead times N calls of a few cheap hooked functions and prints
//! `bench <what> ns_per_call=<best of 7 rounds>`; `syscall-seq loop N` makes N `read(-1, ..)`
//! calls and nothing else (for counting instructions per call under callgrind).

use std::ffi::c_int;
use std::mem::{size_of, zeroed};
use std::ptr::{null, null_mut};
use std::time::Instant;

use libc::{
    c_uint, c_void, epoll_event, fd_set, iovec, mmsghdr, msghdr, nfds_t, pollfd, sigset_t, size_t,
    sockaddr, sockaddr_in, socklen_t, ssize_t, timespec, timeval,
};

extern "C" {
    fn fcntl64(fd: c_int, cmd: c_int, ...) -> c_int;
    fn __read_chk(fd: c_int, buf: *mut c_void, nbytes: size_t, buflen: size_t) -> ssize_t;
    fn __recv_chk(
        fd: c_int,
        buf: *mut c_void,
        len: size_t,
        buflen: size_t,
        flags: c_int,
    ) -> ssize_t;
    fn __recvfrom_chk(
        fd: c_int,
        buf: *mut c_void,
        len: size_t,
        buflen: size_t,
        flags: c_int,
        addr: *mut sockaddr,
        alen: *mut socklen_t,
    ) -> ssize_t;
    fn __poll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: c_int, fdslen: size_t) -> c_int;
    fn __ppoll_chk(
        fds: *mut pollfd,
        nfds: nfds_t,
        timeout: *const timespec,
        sigmask: *const sigset_t,
        fdslen: size_t,
    ) -> c_int;
}

const SENTINEL: c_int = 7777;

fn errno() -> c_int {
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: c_int) {
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() = v }
}

struct Log(Vec<String>);

impl Log {
    fn line(&mut self, s: String) {
        self.0.push(s);
    }
    /// Starts a step: a header line `step: NAME` naming the behaviour the calls after it
    /// check, up to the next header. The comparing test names the first step that differs.
    fn step(&mut self, name: &str) {
        self.line(format!("{}{name}", mtcp_tests::steps::STEP_PREFIX));
    }
    fn check(&mut self, what: &str, ok: bool) {
        self.line(format!("check {what} {}", if ok { "ok" } else { "FAILED" }));
    }
}

/// `call!(log, "name", expr)`: sets the errno sentinel, evaluates `expr` (an unsafe libc call),
/// logs `name ret errno` and returns ret as i64.
macro_rules! call {
    ($log:expr, $name:expr, $e:expr) => {{
        set_errno(SENTINEL);
        // SAFETY: every call in this program passes valid buffers/lengths (or deliberately
        // invalid fds/flags, which the kernel rejects).
        #[allow(clippy::macro_metavars_in_unsafe)]
        let r = unsafe { $e } as i64;
        let e = errno();
        $log.line(format!("{} {} {}", $name, r, e));
        r
    }};
}

fn loopback(port: u16) -> sockaddr_in {
    sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn sa(a: &sockaddr_in) -> *const sockaddr {
    (a as *const sockaddr_in).cast()
}

fn sa_mut(a: &mut sockaddr_in) -> *mut sockaddr {
    (a as *mut sockaddr_in).cast()
}

const SIN_LEN: socklen_t = size_of::<sockaddr_in>() as socklen_t;

fn port_of(a: &sockaddr_in) -> u16 {
    u16::from_be(a.sin_port)
}

fn int_opt(v: &c_int) -> *const c_void {
    (v as *const c_int).cast()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    match args.get(1).map(String::as_str) {
        Some("bench") => return bench(n),
        Some("loop") => return read_loop(n),
        _ => {}
    }
    let mut log = Log(Vec::new());
    sequence(&mut log);
    let out = log.0.join("\n") + "\n";
    print!("{out}");
    if log.0.iter().any(|l| l.ends_with("FAILED")) {
        std::process::exit(1);
    }
}

#[allow(clippy::too_many_lines)]
fn sequence(log: &mut Log) {
    let one: c_int = 1;
    let zero: c_int = 0;
    let int_len = size_of::<c_int>() as socklen_t;

    log.step("setsockopt with a short optlen is EINVAL, with an unknown level ENOPROTOOPT");
    // --- listener -------------------------------------------------------------------------
    let lfd = call!(
        log,
        "socket",
        libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)
    ) as c_int;
    call!(
        log,
        "setsockopt",
        libc::setsockopt(
            lfd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            int_opt(&one),
            int_len
        )
    );
    call!(
        log,
        "setsockopt/short-optlen-EINVAL",
        libc::setsockopt(lfd, libc::SOL_SOCKET, libc::SO_REUSEADDR, int_opt(&one), 0)
    );
    call!(
        log,
        "setsockopt/bad-level-ENOPROTOOPT",
        libc::setsockopt(lfd, 9999, 1, int_opt(&one), int_len)
    );
    log.step(
        "bind a second time or with a short address is EINVAL; getsockname gives the chosen port",
    );
    let any = loopback(0);
    call!(log, "bind", libc::bind(lfd, sa(&any), SIN_LEN));
    call!(log, "bind/again-EINVAL", libc::bind(lfd, sa(&any), SIN_LEN));
    call!(log, "bind/short-EINVAL", libc::bind(lfd, sa(&any), 4));
    call!(log, "listen", libc::listen(lfd, 16));
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut laddr: sockaddr_in = unsafe { zeroed() };
    let mut alen = SIN_LEN;
    call!(
        log,
        "getsockname",
        libc::getsockname(lfd, sa_mut(&mut laddr), &mut alen)
    );
    let lport = port_of(&laddr);
    log.check("getsockname-port", lport != 0 && alen == SIN_LEN);
    log.step("accept on a non-blocking listener with nothing queued is EAGAIN");
    call!(
        log,
        "fcntl/F_SETFL-nonblock",
        libc::fcntl(lfd, libc::F_SETFL, libc::O_NONBLOCK)
    );
    call!(
        log,
        "accept/empty-EAGAIN",
        libc::accept(lfd, null_mut(), null_mut())
    );
    call!(
        log,
        "accept4/empty-EAGAIN",
        libc::accept4(lfd, null_mut(), null_mut(), libc::SOCK_CLOEXEC)
    );
    call!(
        log,
        "fcntl/F_SETFL-block",
        libc::fcntl(lfd, libc::F_SETFL, 0)
    );

    log.step("an unconnected socket: getpeername, recv, read and shutdown are ENOTCONN, send EPIPE; listen binds it");
    // --- an unconnected socket --------------------------------------------------------------
    let cfd = call!(
        log,
        "socket",
        libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)
    ) as c_int;
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut peer: sockaddr_in = unsafe { zeroed() };
    alen = SIN_LEN;
    call!(
        log,
        "getpeername/ENOTCONN",
        libc::getpeername(cfd, sa_mut(&mut peer), &mut alen)
    );
    let mut buf = [0u8; 4096];
    call!(
        log,
        "recv/ENOTCONN",
        libc::recv(cfd, buf.as_mut_ptr().cast(), 16, 0)
    );
    call!(
        log,
        "read/ENOTCONN",
        libc::read(cfd, buf.as_mut_ptr().cast(), 16)
    );
    call!(
        log,
        "shutdown/ENOTCONN",
        libc::shutdown(cfd, libc::SHUT_RDWR)
    );
    call!(
        log,
        "send/unconnected-EPIPE",
        libc::send(cfd, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL)
    );
    call!(log, "listen/on-unbound", libc::listen(cfd, 1));
    call!(log, "close", libc::close(cfd));

    log.step("connect a second time is EISCONN; accept4 with bad flags is EINVAL, with SOCK_CLOEXEC sets FD_CLOEXEC");
    // --- a connection -----------------------------------------------------------------------
    let cfd = call!(
        log,
        "socket",
        libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)
    ) as c_int;
    let to = loopback(lport);
    call!(log, "connect", libc::connect(cfd, sa(&to), SIN_LEN));
    call!(
        log,
        "connect/again-EISCONN",
        libc::connect(cfd, sa(&to), SIN_LEN)
    );
    call!(
        log,
        "accept4/bad-flags-EINVAL",
        libc::accept4(lfd, null_mut(), null_mut(), 0x4000_0000)
    );
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut from: sockaddr_in = unsafe { zeroed() };
    alen = SIN_LEN;
    let sfd = call!(
        log,
        "accept4",
        libc::accept4(lfd, sa_mut(&mut from), &mut alen, libc::SOCK_CLOEXEC)
    ) as c_int;
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut cname: sockaddr_in = unsafe { zeroed() };
    alen = SIN_LEN;
    call!(
        log,
        "getsockname",
        libc::getsockname(cfd, sa_mut(&mut cname), &mut alen)
    );
    alen = SIN_LEN;
    call!(
        log,
        "getpeername",
        libc::getpeername(sfd, sa_mut(&mut peer), &mut alen)
    );
    log.check(
        "peer-is-client",
        port_of(&peer) == port_of(&cname) && port_of(&from) == port_of(&cname),
    );
    call!(
        log,
        "fcntl/F_GETFD-cloexec",
        libc::fcntl(sfd, libc::F_GETFD)
    );

    log.step(
        "socket options read back; SO_ERROR 0; getsockopt with an unknown level is EOPNOTSUPP",
    );
    // options
    call!(
        log,
        "setsockopt/TCP_NODELAY",
        libc::setsockopt(
            cfd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            int_opt(&one),
            int_len
        )
    );
    let mut v: c_int = -1;
    let mut vlen = int_len;
    call!(
        log,
        "getsockopt/TCP_NODELAY",
        libc::getsockopt(
            cfd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&mut v as *mut c_int).cast(),
            &mut vlen
        )
    );
    log.line(format!("value TCP_NODELAY {v} {vlen}"));
    vlen = int_len;
    call!(
        log,
        "getsockopt/SO_TYPE",
        libc::getsockopt(
            cfd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut v as *mut c_int).cast(),
            &mut vlen
        )
    );
    log.line(format!("value SO_TYPE {v}"));
    vlen = int_len;
    call!(
        log,
        "getsockopt/SO_ERROR",
        libc::getsockopt(
            cfd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut v as *mut c_int).cast(),
            &mut vlen
        )
    );
    log.line(format!("value SO_ERROR {v}"));
    vlen = int_len;
    call!(
        log,
        "getsockopt/bad-level-EOPNOTSUPP",
        libc::getsockopt(cfd, 9999, 1, (&mut v as *mut c_int).cast(), &mut vlen)
    );
    call!(
        log,
        "setsockopt/SO_KEEPALIVE",
        libc::setsockopt(
            sfd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            int_opt(&one),
            int_len
        )
    );
    call!(
        log,
        "setsockopt/TCP_KEEPIDLE",
        libc::setsockopt(
            sfd,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            int_opt(&one),
            int_len
        )
    );

    log.step("write then read delivers the bytes");
    // data: write/read
    call!(log, "write", libc::write(cfd, b"hello".as_ptr().cast(), 5));
    let n = call!(
        log,
        "read",
        libc::read(sfd, buf.as_mut_ptr().cast(), buf.len())
    );
    log.check("read-data", &buf[..n.max(0) as usize] == b"hello");

    log.step("O_NONBLOCK through fcntl: a read with nothing buffered is EAGAIN; an unknown fcntl command is EINVAL");
    // fcntl flags, EAGAIN
    call!(log, "fcntl/F_GETFL", libc::fcntl(sfd, libc::F_GETFL));
    call!(
        log,
        "fcntl/F_SETFL-nonblock",
        libc::fcntl(sfd, libc::F_SETFL, libc::O_NONBLOCK)
    );
    call!(log, "fcntl/F_GETFL", libc::fcntl(sfd, libc::F_GETFL));
    call!(
        log,
        "read/empty-EAGAIN",
        libc::read(sfd, buf.as_mut_ptr().cast(), 16)
    );
    call!(
        log,
        "recv/empty-EAGAIN",
        libc::recv(sfd, buf.as_mut_ptr().cast(), 16, 0)
    );
    call!(
        log,
        "recv/MSG_DONTWAIT-EAGAIN",
        libc::recv(cfd, buf.as_mut_ptr().cast(), 16, libc::MSG_DONTWAIT)
    );
    call!(log, "fcntl64/F_GETFL", fcntl64(sfd, libc::F_GETFL));
    call!(log, "fcntl64/F_SETFL", fcntl64(sfd, libc::F_SETFL, 0));
    call!(log, "fcntl/bad-cmd-EINVAL", libc::fcntl(sfd, 99999));
    call!(log, "fcntl/F_SETFD", libc::fcntl(sfd, libc::F_SETFD, 0));
    call!(log, "fcntl/F_GETFD", libc::fcntl(sfd, libc::F_GETFD));

    log.step("ioctl(FIONBIO) sets and clears O_NONBLOCK; TIOCGWINSZ on a socket is ENOTTY");
    // ioctl
    let mut nb: c_int = 1;
    call!(
        log,
        "ioctl/FIONBIO-on",
        libc::ioctl(sfd, libc::FIONBIO, &mut nb as *mut c_int)
    );
    call!(log, "fcntl/F_GETFL", libc::fcntl(sfd, libc::F_GETFL));
    call!(
        log,
        "read/empty-EAGAIN",
        libc::read(sfd, buf.as_mut_ptr().cast(), 16)
    );
    nb = 0;
    call!(
        log,
        "ioctl/FIONBIO-off",
        libc::ioctl(sfd, libc::FIONBIO, &mut nb as *mut c_int)
    );
    call!(log, "fcntl/F_GETFL", libc::fcntl(sfd, libc::F_GETFL));
    let mut ws: libc::winsize = unsafe_zeroed();
    call!(
        log,
        "ioctl/TIOCGWINSZ-ENOTTY",
        libc::ioctl(sfd, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize)
    );

    log.step(
        "writev and readv gather and scatter, FIONREAD counts; iovcnt -1 is EINVAL, a bad fd EBADF",
    );
    // readv/writev, FIONREAD
    let parts: [&[u8]; 3] = [b"ab", b"cde", b"fghij"];
    let iov: Vec<iovec> = parts
        .iter()
        .map(|p| iovec {
            iov_base: p.as_ptr() as *mut c_void,
            iov_len: p.len(),
        })
        .collect();
    call!(
        log,
        "writev",
        libc::writev(cfd, iov.as_ptr(), iov.len() as c_int)
    );
    let mut avail: c_int = -1;
    call!(
        log,
        "ioctl/FIONREAD",
        libc::ioctl(sfd, libc::FIONREAD, &mut avail as *mut c_int)
    );
    log.line(format!("value FIONREAD {avail}"));
    let mut b1 = [0u8; 4];
    let mut b2 = [0u8; 16];
    let riov = [
        iovec {
            iov_base: b1.as_mut_ptr().cast(),
            iov_len: b1.len(),
        },
        iovec {
            iov_base: b2.as_mut_ptr().cast(),
            iov_len: b2.len(),
        },
    ];
    let n = call!(log, "readv", libc::readv(sfd, riov.as_ptr(), 2));
    log.check(
        "readv-data",
        n == 10 && &b1 == b"abcd" && &b2[..6] == b"efghij",
    );
    call!(
        log,
        "writev/bad-iovcnt-EINVAL",
        libc::writev(cfd, iov.as_ptr(), -1)
    );
    call!(log, "readv/EBADF", libc::readv(-1, riov.as_ptr(), 2));

    log.step("MSG_PEEK leaves the data; sendto and recvfrom without addresses act as send and recv on TCP");
    // send/recv, sendto/recvfrom on TCP
    call!(
        log,
        "send",
        libc::send(cfd, b"0123456789".as_ptr().cast(), 10, 0)
    );
    call!(
        log,
        "recv/MSG_PEEK",
        libc::recv(sfd, buf.as_mut_ptr().cast(), 4, libc::MSG_PEEK)
    );
    call!(log, "recv", libc::recv(sfd, buf.as_mut_ptr().cast(), 4, 0));
    call!(
        log,
        "recvfrom",
        libc::recvfrom(sfd, buf.as_mut_ptr().cast(), 100, 0, null_mut(), null_mut())
    );
    log.check("recvfrom-data", &buf[..6] == b"456789");
    call!(
        log,
        "sendto/no-addr",
        libc::sendto(cfd, b"xy".as_ptr().cast(), 2, 0, null(), 0)
    );
    call!(
        log,
        "recv",
        libc::recv(sfd, buf.as_mut_ptr().cast(), 100, 0)
    );

    log.step("sendmsg and recvmsg gather and scatter; recvmsg(MSG_DONTWAIT) with nothing buffered is EAGAIN");
    // sendmsg/recvmsg
    let siov = [
        iovec {
            iov_base: b"msg-".as_ptr() as *mut c_void,
            iov_len: 4,
        },
        iovec {
            iov_base: b"body".as_ptr() as *mut c_void,
            iov_len: 4,
        },
    ];
    let mut mh: msghdr = unsafe_zeroed();
    mh.msg_iov = siov.as_ptr() as *mut iovec;
    mh.msg_iovlen = 2;
    call!(log, "sendmsg", libc::sendmsg(cfd, &mh, 0));
    let mut rbuf = [0u8; 32];
    let mut rio = iovec {
        iov_base: rbuf.as_mut_ptr().cast(),
        iov_len: rbuf.len(),
    };
    let mut rh: msghdr = unsafe_zeroed();
    rh.msg_iov = &mut rio;
    rh.msg_iovlen = 1;
    let n = call!(log, "recvmsg", libc::recvmsg(sfd, &mut rh, 0));
    log.check("recvmsg-data", &rbuf[..n.max(0) as usize] == b"msg-body");
    call!(
        log,
        "recvmsg/DONTWAIT-EAGAIN",
        libc::recvmsg(sfd, &mut rh, libc::MSG_DONTWAIT)
    );

    log.step("poll, ppoll, select and pselect report readiness; too many fds or nfds -1 is EINVAL");
    // readiness: poll, ppoll, select, pselect, epoll
    let mut pfd = [pollfd {
        fd: sfd,
        events: libc::POLLIN,
        revents: 0,
    }];
    call!(log, "poll/idle", libc::poll(pfd.as_mut_ptr(), 1, 0));
    call!(log, "write", libc::write(cfd, b"r".as_ptr().cast(), 1));
    call!(log, "poll/readable", libc::poll(pfd.as_mut_ptr(), 1, 1000));
    log.line(format!("value poll-revents {}", pfd[0].revents));
    let t0 = timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    pfd[0].revents = 0;
    call!(
        log,
        "ppoll/readable",
        libc::ppoll(pfd.as_mut_ptr(), 1, &t0, null())
    );
    log.line(format!("value ppoll-revents {}", pfd[0].revents));
    call!(
        log,
        "poll/EINVAL",
        libc::poll(pfd.as_mut_ptr(), u32::MAX as nfds_t, 0)
    );
    let mut rs: fd_set = unsafe_zeroed();
    // SAFETY: FD_SET on a valid set, fd < FD_SETSIZE.
    unsafe { libc::FD_SET(sfd, &mut rs) };
    let mut tv = timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    call!(
        log,
        "select/readable",
        libc::select(sfd + 1, &mut rs, null_mut(), null_mut(), &mut tv)
    );
    // SAFETY: FD_ISSET on a valid set.
    log.check("select-set", unsafe { libc::FD_ISSET(sfd, &rs) });
    call!(
        log,
        "select/EINVAL",
        libc::select(-1, null_mut(), null_mut(), null_mut(), &mut tv)
    );
    let mut mask: sigset_t = unsafe_zeroed();
    // SAFETY: sigemptyset on a valid sigset_t.
    unsafe { libc::sigemptyset(&mut mask) };
    // SAFETY: FD_SET on a valid set.
    unsafe { libc::FD_SET(sfd, &mut rs) };
    call!(
        log,
        "pselect/readable",
        libc::pselect(sfd + 1, &mut rs, null_mut(), null_mut(), &t0, &mask)
    );
    let mut ws_set: fd_set = unsafe_zeroed();
    // SAFETY: FD_SET on a valid set.
    unsafe { libc::FD_SET(cfd, &mut ws_set) };
    call!(
        log,
        "pselect/writable",
        libc::pselect(cfd + 1, null_mut(), &mut ws_set, null_mut(), &t0, null())
    );

    log.step("epoll: a size 0 or bad flags are EINVAL, ADD twice EEXIST, itself EINVAL, a bad fd EBADF; EPOLLET reports once; DEL twice ENOENT");
    let ep0 = call!(log, "epoll_create", libc::epoll_create(1)) as c_int;
    call!(log, "epoll_create/EINVAL", libc::epoll_create(0));
    let ep = call!(
        log,
        "epoll_create1",
        libc::epoll_create1(libc::EPOLL_CLOEXEC)
    ) as c_int;
    call!(log, "epoll_create1/EINVAL", libc::epoll_create1(0x1234));
    let mut ev = epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0xfeed_face_cafe_beef,
    };
    call!(
        log,
        "epoll_ctl/ADD",
        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, sfd, &mut ev)
    );
    call!(
        log,
        "epoll_ctl/ADD-EEXIST",
        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, sfd, &mut ev)
    );
    call!(
        log,
        "epoll_ctl/self-EINVAL",
        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, ep, &mut ev)
    );
    call!(
        log,
        "epoll_ctl/EBADF",
        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, -1, &mut ev)
    );
    let mut evs = [epoll_event { events: 0, u64: 0 }; 8];
    call!(
        log,
        "epoll_wait",
        libc::epoll_wait(ep, evs.as_mut_ptr(), 8, 1000)
    );
    let (e0, d0) = (evs[0].events, evs[0].u64);
    log.line(format!("value epoll-event {e0:#x} {d0:#x}"));
    call!(
        log,
        "epoll_pwait",
        libc::epoll_pwait(ep, evs.as_mut_ptr(), 8, 0, &mask)
    );
    call!(
        log,
        "epoll_pwait2",
        libc::epoll_pwait2(ep, evs.as_mut_ptr(), 8, &t0, null())
    );
    call!(
        log,
        "epoll_wait/not-epoll-EINVAL",
        libc::epoll_wait(sfd, evs.as_mut_ptr(), 8, 0)
    );
    call!(
        log,
        "epoll_wait/bad-max-EINVAL",
        libc::epoll_wait(ep, evs.as_mut_ptr(), 0, 0)
    );
    ev.events = (libc::EPOLLIN | libc::EPOLLET) as u32;
    call!(
        log,
        "epoll_ctl/MOD",
        libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, sfd, &mut ev)
    );
    call!(
        log,
        "epoll_wait/ET",
        libc::epoll_wait(ep, evs.as_mut_ptr(), 8, 0)
    );
    call!(
        log,
        "epoll_wait/ET-again",
        libc::epoll_wait(ep, evs.as_mut_ptr(), 8, 0)
    );
    call!(
        log,
        "epoll_ctl/DEL",
        libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, sfd, null_mut())
    );
    call!(
        log,
        "epoll_ctl/DEL-ENOENT",
        libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, sfd, null_mut())
    );
    call!(log, "read", libc::read(sfd, buf.as_mut_ptr().cast(), 16));

    log.step("the fortified entry points (__read_chk, __recv_chk, __poll_chk, ...) act as the plain calls");
    // fortified twins (called directly, with the sizes the compiler would pass)
    call!(
        log,
        "write",
        libc::write(cfd, b"chk1chk2chk3".as_ptr().cast(), 12)
    );
    let mut small = [0u8; 4];
    call!(
        log,
        "__read_chk",
        __read_chk(sfd, small.as_mut_ptr().cast(), 4, small.len())
    );
    call!(
        log,
        "__recv_chk",
        __recv_chk(sfd, small.as_mut_ptr().cast(), 4, small.len(), 0)
    );
    call!(
        log,
        "__recvfrom_chk",
        __recvfrom_chk(
            sfd,
            small.as_mut_ptr().cast(),
            4,
            small.len(),
            0,
            null_mut(),
            null_mut()
        )
    );
    log.check("chk-data", &small == b"chk3");
    call!(
        log,
        "__read_chk/EBADF",
        __read_chk(-1, small.as_mut_ptr().cast(), 4, small.len())
    );
    call!(
        log,
        "__poll_chk/idle",
        __poll_chk(pfd.as_mut_ptr(), 1, 0, size_of::<[pollfd; 1]>())
    );
    call!(
        log,
        "__ppoll_chk/idle",
        __ppoll_chk(pfd.as_mut_ptr(), 1, &t0, null(), size_of::<[pollfd; 1]>())
    );

    log.step("sendfile and sendfile64 advance the offset; a bad in-fd is EBADF; setsockopt on a non-socket is ENOTSOCK");
    // sendfile / sendfile64 from a memfd
    let mfd = call!(log, "memfd_create", libc::memfd_create(c"seq".as_ptr(), 0)) as c_int;
    let blob: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    call!(
        log,
        "write",
        libc::write(mfd, blob.as_ptr().cast(), blob.len())
    );
    let mut off: libc::off_t = 0;
    call!(log, "sendfile", libc::sendfile(cfd, mfd, &mut off, 1000));
    log.line(format!("value sendfile-offset {off}"));
    let mut off64: libc::off64_t = 1000;
    call!(
        log,
        "sendfile64",
        libc::sendfile64(cfd, mfd, &mut off64, 2000)
    );
    log.line(format!("value sendfile64-offset {off64}"));
    call!(
        log,
        "sendfile/EBADF",
        libc::sendfile(cfd, -1, null_mut(), 10)
    );
    let mut got = Vec::new();
    while got.len() < 3000 {
        let n = call!(
            log,
            "read",
            libc::read(sfd, buf.as_mut_ptr().cast(), buf.len())
        );
        if n <= 0 {
            break;
        }
        got.extend_from_slice(&buf[..n as usize]);
    }
    log.check("sendfile-data", got == blob);
    call!(
        log,
        "setsockopt/ENOTSOCK",
        libc::setsockopt(
            mfd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            int_opt(&zero),
            int_len
        )
    );
    call!(log, "close", libc::close(mfd));

    log.step("dup, dup2, dup3 and F_DUPFD_CLOEXEC share the socket; dup2 to itself returns it, dup3 to itself is EINVAL, a bad fd EBADF");
    // dup, dup2, dup3, F_DUPFD_CLOEXEC
    let d = call!(log, "dup", libc::dup(sfd)) as c_int;
    call!(log, "dup2", libc::dup2(sfd, 100));
    call!(log, "fcntl/F_GETFD", libc::fcntl(100, libc::F_GETFD));
    call!(log, "dup2/same", libc::dup2(sfd, sfd));
    call!(log, "dup2/EBADF", libc::dup2(-1, 101));
    call!(log, "dup3", libc::dup3(sfd, 101, libc::O_CLOEXEC));
    call!(log, "fcntl/F_GETFD", libc::fcntl(101, libc::F_GETFD));
    call!(log, "dup3/same-EINVAL", libc::dup3(sfd, sfd, 0));
    call!(
        log,
        "fcntl/F_DUPFD_CLOEXEC",
        libc::fcntl(sfd, libc::F_DUPFD_CLOEXEC, 200)
    );
    call!(log, "write", libc::write(cfd, b"dup".as_ptr().cast(), 3));
    call!(
        log,
        "read/via-dup2",
        libc::read(100, buf.as_mut_ptr().cast(), 16)
    );
    call!(log, "dup/EBADF", libc::dup(-1));
    for fd in [d, 100] {
        call!(log, "close", libc::close(fd));
    }
    log.step("close through syscall(SYS_close) and close_range: the fds go, a bad range is EINVAL");
    call!(log, "syscall/close", libc::syscall(libc::SYS_close, 101));
    call!(
        log,
        "syscall/close-EBADF",
        libc::syscall(libc::SYS_close, 101)
    );
    call!(log, "syscall/getppid", libc::syscall(libc::SYS_getppid) > 0);
    call!(log, "close_range/EINVAL", libc::close_range(201, 200, 0));
    call!(log, "close_range", libc::close_range(200, 200, 0));
    call!(log, "fcntl/F_GETFD-EBADF", libc::fcntl(200, libc::F_GETFD));

    log.step("UDP: recvfrom gives the sender address; sendmmsg and recvmmsg, then EAGAIN with nothing queued");
    // UDP: sendto/recvfrom with addresses, sendmmsg/recvmmsg
    let u1 = call!(
        log,
        "socket/udp",
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
    ) as c_int;
    let u2 = call!(
        log,
        "socket/udp",
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
    ) as c_int;
    call!(log, "bind", libc::bind(u1, sa(&any), SIN_LEN));
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut u1addr: sockaddr_in = unsafe { zeroed() };
    alen = SIN_LEN;
    call!(
        log,
        "getsockname",
        libc::getsockname(u1, sa_mut(&mut u1addr), &mut alen)
    );
    call!(
        log,
        "sendto",
        libc::sendto(u2, b"dgram".as_ptr().cast(), 5, 0, sa(&u1addr), SIN_LEN)
    );
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut src: sockaddr_in = unsafe { zeroed() };
    alen = SIN_LEN;
    let n = call!(
        log,
        "recvfrom",
        libc::recvfrom(
            u1,
            buf.as_mut_ptr().cast(),
            64,
            0,
            sa_mut(&mut src),
            &mut alen
        )
    );
    log.check(
        "recvfrom-addr",
        n == 5 && alen == SIN_LEN && src.sin_addr.s_addr == u1addr.sin_addr.s_addr,
    );
    call!(log, "connect/udp", libc::connect(u2, sa(&u1addr), SIN_LEN));
    let pay: [&[u8]; 2] = [b"one", b"three"];
    let mut sio: Vec<iovec> = pay
        .iter()
        .map(|p| iovec {
            iov_base: p.as_ptr() as *mut c_void,
            iov_len: p.len(),
        })
        .collect();
    let mut smsgs: Vec<mmsghdr> = sio
        .iter_mut()
        .map(|io| {
            let mut m: mmsghdr = unsafe_zeroed();
            m.msg_hdr.msg_iov = io;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    call!(
        log,
        "sendmmsg",
        libc::sendmmsg(u2, smsgs.as_mut_ptr(), 2 as c_uint, 0)
    );
    let mut rb = [[0u8; 16]; 2];
    let mut rio: Vec<iovec> = rb
        .iter_mut()
        .map(|b| iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut rmsgs: Vec<mmsghdr> = rio
        .iter_mut()
        .map(|io| {
            let mut m: mmsghdr = unsafe_zeroed();
            m.msg_hdr.msg_iov = io;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    call!(
        log,
        "recvmmsg",
        libc::recvmmsg(u1, rmsgs.as_mut_ptr(), 2, libc::MSG_DONTWAIT, null_mut())
    );
    log.check(
        "recvmmsg-data",
        rmsgs[0].msg_len == 3 && rmsgs[1].msg_len == 5 && &rb[1][..5] == b"three",
    );
    call!(
        log,
        "recvmmsg/EAGAIN",
        libc::recvmmsg(u1, rmsgs.as_mut_ptr(), 2, libc::MSG_DONTWAIT, null_mut())
    );
    call!(log, "close", libc::close(u1));
    call!(log, "close", libc::close(u2));

    log.step("after shutdown(SHUT_WR) the peer reads 0 and a send is EPIPE; a bad how is EINVAL, a non-socket ENOTSOCK");
    // shutdown, EOF, EPIPE
    call!(log, "shutdown/SHUT_WR", libc::shutdown(cfd, libc::SHUT_WR));
    call!(
        log,
        "read/EOF",
        libc::read(sfd, buf.as_mut_ptr().cast(), 16)
    );
    call!(
        log,
        "send/after-shutdown-EPIPE",
        libc::send(cfd, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL)
    );
    call!(
        log,
        "sendto/after-shutdown-EPIPE",
        libc::sendto(cfd, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL, null(), 0)
    );
    call!(log, "shutdown/bad-how-EINVAL", libc::shutdown(cfd, 7));
    call!(log, "shutdown/ENOTSOCK", libc::shutdown(ep, libc::SHUT_RD));
    call!(log, "write", libc::write(sfd, b"back".as_ptr().cast(), 4));
    call!(log, "read", libc::read(cfd, buf.as_mut_ptr().cast(), 16));

    log.step("calls on a closed fd are EBADF; poll reports POLLNVAL");
    // closed fds
    call!(log, "close", libc::close(sfd));
    call!(log, "close/again-EBADF", libc::close(sfd));
    call!(
        log,
        "read/closed-EBADF",
        libc::read(sfd, buf.as_mut_ptr().cast(), 16)
    );
    call!(log, "write/EBADF", libc::write(-1, b"x".as_ptr().cast(), 1));
    call!(
        log,
        "recv/EBADF",
        libc::recv(sfd, buf.as_mut_ptr().cast(), 16, 0)
    );
    call!(
        log,
        "getsockopt/EBADF",
        libc::getsockopt(
            sfd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut v as *mut c_int).cast(),
            &mut vlen
        )
    );
    call!(log, "fcntl/EBADF", libc::fcntl(sfd, libc::F_GETFL));
    call!(
        log,
        "ioctl/EBADF",
        libc::ioctl(sfd, libc::FIONREAD, &mut avail as *mut c_int)
    );
    call!(
        log,
        "epoll_ctl/closed-EBADF",
        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, sfd, &mut ev)
    );
    pfd[0].revents = 0;
    call!(
        log,
        "poll/closed-POLLNVAL",
        libc::poll(pfd.as_mut_ptr(), 1, 0)
    );
    log.line(format!("value poll-revents {}", pfd[0].revents));
    call!(log, "close", libc::close(cfd));
    call!(log, "close", libc::close(ep));
    call!(log, "close", libc::close(ep0));

    log.step("connect to a port nobody listens on is ECONNREFUSED; socket with an unknown family is EAFNOSUPPORT, an unknown type EINVAL");
    // ECONNREFUSED: the listener's port after the listener is gone
    call!(log, "close", libc::close(lfd));
    let rfd = call!(
        log,
        "socket",
        libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)
    ) as c_int;
    call!(
        log,
        "connect/ECONNREFUSED",
        libc::connect(rfd, sa(&to), SIN_LEN)
    );
    vlen = int_len;
    call!(
        log,
        "getsockopt/SO_ERROR",
        libc::getsockopt(
            rfd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut v as *mut c_int).cast(),
            &mut vlen
        )
    );
    log.line(format!("value SO_ERROR {v}"));
    call!(log, "close", libc::close(rfd));
    call!(
        log,
        "socket/EAFNOSUPPORT",
        libc::socket(12345, libc::SOCK_STREAM, 0)
    );
    call!(log, "socket/EINVAL", libc::socket(libc::AF_INET, 0x7777, 0));
}

fn unsafe_zeroed<T>() -> T {
    // SAFETY: only used for C structs for which all-zero is a valid value.
    unsafe { zeroed() }
}

/// Best-of-7 ns per call of `f` over `n` calls.
fn time(n: u32, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(n));
    }
    best
}

fn bench(n: u32) {
    let mut p = [0; 2];
    // SAFETY: pipe2 into a 2-element array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK) }, 0);
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    let nfd = std::os::fd::AsRawFd::as_raw_fd(&null);
    let mut b = [0u8; 8];
    let ns = time(n, || {
        // SAFETY: read on our own empty non-blocking pipe (EAGAIN).
        let r = unsafe { libc::read(p[0], b.as_mut_ptr().cast(), b.len()) };
        debug_assert_eq!(r, -1);
    });
    println!("bench read-empty-pipe ns_per_call={ns:.1}");
    let ns = time(n, || {
        // SAFETY: write one byte to /dev/null.
        unsafe { libc::write(nfd, b.as_ptr().cast(), 1) };
    });
    println!("bench write-devnull ns_per_call={ns:.1}");
    let ns = time(n, || {
        // SAFETY: F_GETFL on our own fd.
        unsafe { libc::fcntl(p[0], libc::F_GETFL) };
    });
    println!("bench fcntl-getfl ns_per_call={ns:.1}");
    let ns = time(n, || {
        // SAFETY: read on an invalid fd (EBADF): the cheapest syscall a hook can forward.
        unsafe { libc::read(-1, b.as_mut_ptr().cast(), 1) };
    });
    println!("bench read-ebadf ns_per_call={ns:.1}");
}

fn read_loop(n: u32) {
    let mut b = [0u8; 1];
    for _ in 0..n {
        // SAFETY: read on an invalid fd (EBADF).
        unsafe { libc::read(-1, b.as_mut_ptr().cast(), 1) };
    }
}
