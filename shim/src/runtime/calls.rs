//! The entry points `ops` calls: each takes the table's lock (never in a forked child), asks
//! the socket table, and where the call blocks, waits as `wait` says. Answers as in
//! `sockets`: `None` hands the call to the kernel.

use crate::mono::Instant;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::MutexGuard;
use std::time::Duration;

use libc::{c_int, sigset_t};
use userstack::SockError;

use super::wait::{
    after_block, block_for, block_in, defer_tx, leave_loop_for_kernel, naps_reset, prepare_block,
    restarts, wait_once, Again, Look, SigHold, Waited,
};
use super::{child, config, kwait, shim, with};
use crate::sockets::{Accepted, Answer, Family, Io, PollKind};

/// The signal mask for the time a wait blocks, as ppoll takes it: the caller's (epoll_pwait,
/// ppoll, pselect), or else the thread's own, which `hold` keeps while the wait polls.
fn mask_or(m: Option<&sigset_t>, hold: &SigHold) -> *const sigset_t {
    m.map_or(hold.mask(), |m| m as *const sigset_t)
}

/// How long a wait of this thread polls after its last work before it blocks: MTCP_SPIN_US,
/// or, with MTCP_SPIN_ADAPT (the default), as much of it as has been paying, in the way of
/// Linux's haltpoll governor. What counts is a wait's idle stretch: from its start to the
/// events it returns, when a pass found nothing on the way (it spun, or blocked). No longer
/// than the window: the spin caught the events, the window stays. Longer, but within twice
/// MTCP_SPIN_US (a stretch that blocked holds the wake-up's own latency, tens of µs on a VM, so
/// a spin of MTCP_SPIN_US may have caught it): the window doubles, from a quarter of the
/// maximum. Longer than that, or a wait that reaches its timeout: spinning would not have
/// caught anything, only burnt the CPU; the window halves, to nothing below an eighth of the
/// maximum. Work of the stack's own (ACKs, timers) keeps a spin going (from `last_work`) but
/// ends no stretch: an ACK after a reply says nothing of when the next request comes. A server
/// under load keeps the whole spin; one whose requests come further apart blocks at once, as
/// the kernel's loop would.
struct Spin {
    max: Duration,
    adapt: bool,
    window: Duration,
    /// The wait's start, its idle stretch's.
    start: Instant,
    /// A pass found nothing: the wait is idle (`found` and `expired` adapt only then).
    idle: bool,
}

thread_local! {
    /// This thread's spin window (`Spin`), kept across its waits.
    static SPIN_WINDOW: std::cell::Cell<Option<Duration>> = const { std::cell::Cell::new(None) };
}

impl Spin {
    /// The spin of a wait that starts at `start`.
    fn new(start: Instant) -> Spin {
        let (max, adapt) = config()
            .as_ref()
            .map_or((Duration::ZERO, false), |c| (c.spin, c.spin_adapt));
        let window = if adapt {
            SPIN_WINDOW
                .try_with(|w| w.get())
                .ok()
                .flatten()
                .unwrap_or(max)
                .min(max)
        } else {
            max
        };
        Spin {
            max,
            adapt,
            window,
            start,
            idle: false,
        }
    }

    /// How long to keep polling after the last work.
    fn window(&self) -> Duration {
        self.window
    }

    /// A pass found nothing to do.
    fn idle(&mut self) {
        self.idle = true;
    }

    /// The wait returns events.
    fn found(&mut self) {
        if self.idle && self.adapt {
            self.adapt_to(Some(self.start.elapsed()));
        }
    }

    /// The wait reached its timeout with nothing to return.
    fn expired(&mut self) {
        if self.idle && self.adapt {
            self.adapt_to(None);
        }
    }

    fn adapt_to(&mut self, gap: Option<Duration>) {
        let w = self.window;
        self.window = adapted(w, gap, self.max);
        if self.window != w {
            let _ = SPIN_WINDOW.try_with(|c| c.set(Some(self.window)));
        }
    }
}

/// A spin window `w` (at most `max`) after an idle stretch of `gap` (`None`: one that ended
/// with nothing) ([`Spin`]).
fn adapted(w: Duration, gap: Option<Duration>, max: Duration) -> Duration {
    match gap {
        Some(g) if g <= w => w,
        Some(g) if g <= max * 2 => (w * 2).max(max / 4).min(max),
        _ if w / 2 < max / 8 => Duration::ZERO,
        _ => w / 2,
    }
}

/// The thread that spins now (its spin token; 0: none). One thread at a time spins in a wait
/// of ours: the others block at once. Spinning threads of one process take turns on the
/// stack's lock and on the CPUs: memcached's listening thread spinning in its epoll_wait took
/// the lock and a core from the worker thread that had the requests (31k requests/s, against
/// the kernel's 121k).
static SPINNER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Whether this thread's next epoll_wait gives the kernel's fds the first share of its
    /// room: flipped at every call, so that neither kind starves the other when more are
    /// ready than the caller has room for.
    static KERNEL_FIRST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The epoll fd whose kernel fds this thread's epoll_wait last looked at, when, and
    /// whether it found one ready (see `kernel_quiet`).
    static KERNEL_LOOKED: std::cell::Cell<Option<(c_int, Instant, bool)>> =
        const { std::cell::Cell::new(None) };
    static SPIN_ID: u64 = {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
}

/// Holds the spin token for as long as it lives (taken with [`SpinTurn::take`]).
struct SpinTurn(bool);

impl SpinTurn {
    fn new() -> SpinTurn {
        SpinTurn(false)
    }

    /// Whether this thread may spin now: it holds the token, or takes it if free.
    fn take(&mut self) -> bool {
        use std::sync::atomic::Ordering;
        if self.0 {
            return true;
        }
        let me = SPIN_ID.with(|id| *id);
        self.0 = SPINNER
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        self.0
    }

    /// Gives the token back (before blocking).
    fn release(&mut self) {
        if std::mem::take(&mut self.0) {
            SPINNER.store(0, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for SpinTurn {
    fn drop(&mut self) {
        self.release();
    }
}

// ------------------------------------------------------------------ listeners

/// Runs a call that may record or drop a pending bind, and notes whether any is left.
fn with_binds<T>(f: impl FnOnce(&mut super::Table) -> Answer<T>) -> Answer<T> {
    with(|s| {
        let r = f(s);
        crate::fdtable::set_pending_binds(s.has_pending_binds());
        Some(r)
    })?
}

pub fn bind(fd: c_int, ip: Ipv4Addr, port: u16) -> Answer<c_int> {
    with_binds(|s| s.bind(fd, ip, port))
}

/// bind() of an AF_INET6 stream socket to a flagged port (`v6only`: its IPV6_V6ONLY).
pub fn bind6(fd: c_int, ip: Ipv6Addr, v6only: bool, port: u16) -> Answer<c_int> {
    with_binds(|s| s.bind6(fd, ip, v6only, port))
}

pub fn listen(fd: c_int, backlog: c_int) -> Answer<c_int> {
    with_binds(|s| s.listen(fd, backlog))
}

/// Whether `MTCP_CONNECT` gives a connect() to `ip` to the stack (a cheap look before the
/// socket is asked anything).
pub fn connect_takes(ip: Ipv4Addr) -> bool {
    config()
        .as_ref()
        .is_ok_and(|c| c.connect.takes(&c.addr, c.gateway, ip))
}

/// connect() of stream socket `fd` (of `family`) to `to`: through the stack if `MTCP_CONNECT`
/// gives it the destination (`None`: the kernel's). A blocking socket waits for the handshake,
/// at most SO_SNDTIMEO (then EINPROGRESS, or EALREADY for a handshake an earlier call
/// started, as Linux); a signal handler that runs meanwhile ends the call with EINTR (unless
/// it restarts: SA_RESTART and no SO_SNDTIMEO), and the handshake goes on.
/// `known`: what is known of the socket since socket() (`candidates`): then only the options
/// the application set are read back, and the bound port only if it bound it.
pub fn connect(
    fd: c_int,
    to: SocketAddrV4,
    family: Family,
    known: Option<&crate::candidates::Known>,
) -> Answer<c_int> {
    // SAFETY: F_GETFL on the application's socket.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    let nonblock = fl >= 0 && fl & libc::O_NONBLOCK != 0;
    let bound = match known {
        Some(k) if !k.bound => None,
        _ => bound_port(fd),
    };
    let set = known.map(|k| k.options.as_slice());
    let was_ours = is_ours(fd);
    let first = with(|s| s.connect(fd, to, family, nonblock, bound, set))?;
    if !was_ours && is_ours(fd) {
        adopt_entries(fd);
    }
    // A blocking socket waits for the handshake, also one an earlier connect() started.
    let first = match first {
        Err(e @ (libc::EINPROGRESS | libc::EALREADY)) if !nonblock => e,
        r => return Some(r),
    };
    let until = timeout_of(fd, libc::SO_SNDTIMEO).map(|(at, _)| at);
    let mut hold = None;
    // The connection this call started (another thread may close the fd meanwhile).
    let started = with(|s| Some(s.ident(fd)))?;
    let mut fd = fd;
    loop {
        let (result, seen, key) = with(|s| {
            if !s.keep_on(&mut fd, started) {
                return Some((Some(Err(libc::EBADF)), 0, None));
            }
            s.pump();
            Some((s.connect_result(fd), s.wakes(), s.key_of(fd)))
        })?;
        if let Some(r) = result {
            return Some(r);
        }
        let mask = hold.get_or_insert_with(SigHold::new).mask();
        match wait_once(key, None, until, mask, |s| changed(s, seen, Look::Wait)) {
            Waited::Again => {}
            Waited::TimedOut => return Some(Err(first)),
            Waited::Interrupted if restarts(until.is_some()) => {}
            Waited::Interrupted => return Some(Err(libc::EINTR)),
        }
    }
}

/// The epoll entries the last connect() released to the kernel (see
/// `Sockets::take_released`).
pub fn take_released() -> Vec<(c_int, u32, u64)> {
    with(|s| Some(s.take_released())).unwrap_or_default()
}

/// connect() with AF_UNSPEC on `fd`: see `Sockets::unconnect`.
pub fn unconnect(fd: c_int) -> Answer<c_int> {
    with(|s| s.unconnect(fd))
}

/// IPV6_V6ONLY of a fresh AF_INET6 socket (net.ipv6.bindv6only).
pub fn default_v6only() -> Option<c_int> {
    super::sockopt::default_int(Family::Inet6, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
}

/// Whether connect() may give the stack some destination (MTCP_CONNECT is not `off`).
pub fn connects() -> bool {
    config()
        .as_ref()
        .is_ok_and(|c| c.connect != userstack::config::ConnectRule::Off)
}

/// connect() just made `fd` ours: the entries the application gave it in epoll instances
/// before connecting (nginx adds an upstream socket, then connects it) move to our sets with
/// the same events and data, and leave the kernel's instances, where the identity socket,
/// never connected, would report EPOLLOUT|EPOLLHUP and never the connection's data. An entry
/// the kernel no longer has (the number was reused unseen) moves nowhere.
fn adopt_entries(fd: c_int) {
    for (epfd, events, data) in crate::candidates::forget(fd) {
        // SAFETY: removing the application's entry for `fd` from its own instance.
        let had = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
        if had == 0 {
            let _ = epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, Some((events, data)));
        }
    }
}

/// The port kernel socket `fd` was bound to (bind() before connect()), if any.
fn bound_port(fd: c_int) -> Option<u16> {
    // SAFETY: an all-zero sockaddr_storage is valid; getsockname writes at most its size.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: a buffer of `len` bytes.
    let r = unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: the kernel wrote a sockaddr of `len` bytes.
    let port =
        unsafe { crate::ops::sockaddr_port((&ss as *const libc::sockaddr_storage).cast(), len) }?;
    (port != 0).then_some(port)
}

/// accept4() on a listener of ours: a stack connection if one is queued, else the kernel's
/// (a dual listener), else, on a blocking socket, wait for either (at most SO_RCVTIMEO).
pub fn accept(mut fd: c_int, flags: c_int) -> Answer<(c_int, SocketAddr)> {
    let asked = fd;
    let mut deadline = None;
    let mut hold = None;
    // The listener this call started on.
    let mut started = None;
    loop {
        // (What blocked threads were last woken for, as this attempt saw it.)
        let (accepted, seen, key) = with(|s| {
            if !s.keep_on(&mut fd, started) {
                return Some((Err(libc::EBADF), 0, None));
            }
            started = started.or_else(|| s.ident(fd));
            s.accept(fd, flags).map(|r| (r, s.wakes(), s.key_of(fd)))
        })?;
        let kernel = match accepted {
            Ok(Accepted::Conn { fd, peer }) => return Some(Ok((fd, peer))),
            Ok(Accepted::Empty { kernel }) => kernel,
            Err(e) => return Some(Err(e)),
        };
        // A connection on the kernel side: the kernel's accept takes it.
        if kernel && kernel_readable(fd) {
            return kernel_accept(fd, flags, fd != asked);
        }
        // SAFETY: F_GETFL on the application's socket.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if fl >= 0 && fl & libc::O_NONBLOCK != 0 {
            // The kernel says EAGAIN for a dual listener; a stack-only one's is ours to say.
            return if kernel {
                kernel_accept(fd, flags, fd != asked)
            } else {
                Some(Err(libc::EAGAIN))
            };
        }
        let timeout = *deadline.get_or_insert_with(|| timeout_of(fd, libc::SO_RCVTIMEO));
        let until = timeout.map(|(at, _)| at);
        let mask = hold.get_or_insert_with(SigHold::new).mask();
        match wait_once(key, kernel.then_some(fd), until, mask, |s| {
            changed(s, seen, Look::Connections)
        }) {
            Waited::Again => {}
            Waited::TimedOut => return Some(Err(libc::EAGAIN)),
            Waited::Interrupted if restarts(timeout.is_some()) => {}
            Waited::Interrupted => return Some(Err(libc::EINTR)),
        }
    }
}

/// The kernel side of dual listener `fd` accepts (`flags`: accept4's). `None` (the kernel's
/// own accept, as the application called it) unless the socket table follows the kernel's
/// connections (the data-path cache), or `moved` (the fd the application named was closed
/// while the call waited, and `fd` is a dup of it): then the kernel's accept4 here, and the
/// new fd is followed ([`Sockets::follow`]) if the table follows them.
fn kernel_accept(fd: c_int, flags: c_int, moved: bool) -> Answer<(c_int, SocketAddr)> {
    let follow = with(|s| Some(s.follows_kernel_clients()))?;
    if !follow && !moved {
        return None;
    }
    // SAFETY: sockaddr_storage is plain data, large enough for any address.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the application's listener; the address buffer and its length are ours.
    let new = unsafe {
        libc::accept4(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
            flags,
        )
    };
    if new < 0 {
        return Some(Err(crate::errno::get()));
    }
    let Some(peer) = super::control::socket_addr(&ss) else {
        // Not an IP peer (cannot be, on a TCP listener): the connection is not followed.
        return Some(Ok((new, SocketAddr::from(([0, 0, 0, 0], 0)))));
    };
    if follow {
        with(|s| {
            s.follow(new);
            Some(())
        });
        FOLLOWING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Some(Ok((new, peer)))
}

/// Whether the kernel socket `fd` is readable now.
fn kernel_readable(fd: c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// The deadline of a blocking call on kernel socket `fd` from its SO_RCVTIMEO or SO_SNDTIMEO
/// (`opt`), with the timeout: `None` without one.
fn timeout_of(fd: c_int, opt: c_int) -> Option<(Instant, Duration)> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: getsockopt into a local timeval of its size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    if r != 0 || (tv.tv_sec == 0 && tv.tv_usec == 0) {
        return None;
    }
    let d = Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64);
    Some((Instant::now() + d, d))
}

// ------------------------------------------------------------------ connections

/// Whether `fd` is one of our sockets or epoll instances (a lookup, no lock).
pub fn is_ours(fd: c_int) -> bool {
    crate::fdtable::is_ours(fd)
}

/// A send with MSG_FASTOPEN on `fd`, one of ours: see `Sockets::fast_open`.
pub fn fast_open(fd: c_int, with_address: bool) -> Option<Result<bool, c_int>> {
    with(|s| s.fast_open(fd, with_address))
}

/// Whether `fd` is one of our connections: the data ops only act then.
pub fn is_conn(fd: c_int) -> bool {
    with(|s| Some(s.is_conn(fd))).unwrap_or(false)
}

/// Whether what the application writes to `fd` is ours to take: one of our connections, or its
/// end of the data-path cache's connection (whose output goes to the cache, whatever call
/// writes it).
pub fn takes_writes(fd: c_int) -> bool {
    with(|s| Some(s.takes_writes(fd))).unwrap_or(false)
}

/// The part of `op` after its first `done` bytes.
fn rest<'b>(op: &'b mut Io<'_>, done: usize) -> Io<'b> {
    match op {
        Io::Read(buf, peek) => Io::Read(&mut buf[done..], *peek),
        Io::Write(data) => Io::Write(&data[done..]),
    }
}

/// One call of the application's, which may take several of ours (the iovecs of a writev, the
/// chunks of a sendfile): its deadline (SO_RCVTIMEO/SO_SNDTIMEO from its first wait on, for
/// the whole call, as Linux counts it) and its signals, held from its first wait to its end.
#[derive(Default)]
pub struct Call {
    deadline: Option<Option<Instant>>,
    hold: Option<SigHold>,
    /// A wait of the call timed out or was interrupted: its later pieces take only what needs
    /// no wait.
    ended: bool,
}

/// recv/send on a connection of ours, as Linux does them: a non-blocking call (O_NONBLOCK,
/// MSG_DONTWAIT) takes what it can now or says EAGAIN; a blocking receive returns as soon as
/// SO_RCVLOWAT bytes (one by default) are there (with MSG_WAITALL, when the buffer is full), or
/// at the end of the stream; a
/// blocking send returns when everything is queued. Either waits at most the socket's
/// SO_RCVTIMEO/SO_SNDTIMEO; on a timeout, an error or a signal, what was transferred is the
/// answer, or else EAGAIN, the error, or EINTR (or, for a handler with SA_RESTART and no
/// timeout, the call goes on). A receive of zero bytes waits as one of one byte would, and
/// returns 0 (also when its timeout passes, as Linux's does). (Inlined into `recv` and `send`,
/// its two callers: a call layer less on every transfer.)
#[inline(always)]
fn io(fd: c_int, mut op: Io<'_>, flags: c_int, call: &mut Call) -> Answer<usize> {
    if super::in_child() {
        return None;
    }
    // One try first, for what ends in it: a non-blocking call (an event loop's), or a
    // blocking one that moved what it asked for (or failed). Everything else, and the
    // calls that are no connection of ours, take the general loop below, which tries again.
    if flags & (libc::MSG_OOB | libc::MSG_PEEK | libc::MSG_WAITALL) == 0 && !call.ended {
        let mut s = shim()?;
        if let Some((result, nonblock)) = s.io_once(fd, &mut op, defer_tx) {
            let dontwait = nonblock || flags & libc::MSG_DONTWAIT != 0;
            let (len, write) = match &op {
                Io::Read(buf, _) => (buf.len(), false),
                Io::Write(data) => (data.len(), true),
            };
            return match result {
                Ok(n) if dontwait => Some(Ok(n)),
                Err(SockError::WouldBlock) if dontwait => Some(Err(libc::EAGAIN)),
                Err(SockError::WouldBlock) => {
                    let started = s.ident(fd);
                    drop(s);
                    io_loop(fd, op, flags, call, 0, started)
                }
                Err(e) => Some(Err(e.errno())),
                Ok(n) => {
                    let rcvlowat = s.io_waits(fd, write).1;
                    if !more_to_do(write, false, n, n, len, rcvlowat) {
                        return Some(Ok(n));
                    }
                    let started = s.ident(fd);
                    drop(s);
                    io_loop(fd, op, flags, call, n, started)
                }
            };
        }
    }
    io_loop(fd, op, flags, call, 0, None)
}

/// Whether a blocking transfer of `len` bytes goes on, its last try having moved `n` and all of
/// them `done`: a send until everything is queued, a receive until SO_RCVLOWAT bytes (all of
/// them with MSG_WAITALL) or the end of the stream.
fn more_to_do(
    write: bool,
    waitall: bool,
    n: usize,
    done: usize,
    len: usize,
    rcvlowat: usize,
) -> bool {
    if write {
        return done < len;
    }
    let target = if waitall {
        len
    } else {
        rcvlowat.clamp(1, len.max(1))
    };
    n > 0 && done < target
}

/// `io` past its first try: `done` bytes moved already, on the object `started` names (if
/// that try found one of ours).
#[inline(never)]
fn io_loop(
    mut fd: c_int,
    mut op: Io<'_>,
    flags: c_int,
    call: &mut Call,
    mut done: usize,
    mut started: Option<(u32, u64)>,
) -> Answer<usize> {
    let dontwait = flags & libc::MSG_DONTWAIT != 0;
    let (len, waitall, peek) = match &op {
        Io::Read(buf, peek) => (buf.len(), flags & libc::MSG_WAITALL != 0, *peek),
        Io::Write(data) => (data.len(), false, false),
    };
    let write = matches!(op, Io::Write(_));

    if flags & libc::MSG_OOB != 0 {
        // No urgent data: the stack keeps it in the stream and sends none.
        if !shim()?.is_conn(fd) {
            return None;
        }
        return Some(Err(if write {
            libc::EOPNOTSUPP
        } else {
            libc::EINVAL
        }));
    }
    let dontwait = dontwait || call.ended;
    loop {
        let mut s = shim()?;
        if !s.keep_on(&mut fd, started) {
            return Some(closed_meanwhile(done));
        }
        started = started.or_else(|| s.ident(fd));
        // A peek looks at the whole buffer again each time (nothing was consumed).
        let Some(t) = s.io(
            fd,
            &mut rest(&mut op, if peek { 0 } else { done }),
            defer_tx,
        ) else {
            // Not a connection of ours: the kernel's, or one the data-path cache follows
            // (whose writes may carry a reply the cache rewrites).
            if write {
                if !FOLLOWING.load(std::sync::atomic::Ordering::Relaxed) {
                    return None;
                }
                let Io::Write(data) = &op else { return None };
                let r = s.followed_write(fd, &data[done..], &mut |b| {
                    // SAFETY: the application's socket; `b` is readable.
                    let n = unsafe {
                        libc::send(
                            fd,
                            b.as_ptr().cast(),
                            b.len(),
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    };
                    if n < 0 {
                        Err(crate::errno::get())
                    } else {
                        Ok(n as usize)
                    }
                })?;
                return Some(r.map(|n| done + n));
            }
            let key = (!write && !peek && FOLLOWING.load(std::sync::atomic::Ordering::Relaxed))
                .then(|| s.followed(fd))??;
            drop(s);
            return Some(followed_read(fd, key, &mut op, flags));
        };
        match t.result {
            Ok(n) => {
                done = if peek { n } else { done + n };
                let more = more_to_do(write, waitall, n, done, len, t.rcvlowat);
                if !more || t.nonblock || dontwait {
                    return Some(Ok(done));
                }
            }
            Err(SockError::WouldBlock) if t.nonblock || dontwait => {
                return Some(if done > 0 {
                    Ok(done)
                } else {
                    Err(libc::EAGAIN)
                });
            }
            Err(SockError::WouldBlock) => {}
            Err(e) if done > 0 => {
                // The bytes moved are the answer; the error is the next call's, as on Linux.
                s.keep_error(fd, e);
                return Some(Ok(done));
            }
            Err(e) => return Some(Err(e.errno())),
        }
        // Blocking, and more to do: poll the stack (an ACK may have made room, data may have
        // come), and wait if that found nothing.
        if s.pump() {
            continue;
        }
        let (seen, key) = (s.wakes(), s.key_of(fd));
        drop(s);
        let until = *call
            .deadline
            .get_or_insert_with(|| t.timeout.map(|d| Instant::now() + d));
        let mask = call.hold.get_or_insert_with(SigHold::new).mask();
        match wait_once(key, None, until, mask, |s| changed(s, seen, Look::Wait)) {
            Waited::Again => {}
            Waited::TimedOut => {
                call.ended = true;
                return Some(if done > 0 || len == 0 {
                    Ok(done)
                } else {
                    Err(libc::EAGAIN)
                });
            }
            Waited::Interrupted if done == 0 && restarts(t.timeout.is_some()) => {}
            Waited::Interrupted => {
                call.ended = true;
                return Some(if done > 0 { Ok(done) } else { Err(libc::EINTR) });
            }
        }
    }
}

/// The answer of a call whose fd another thread closed while it waited (the number may name
/// another socket by now, which the call must not touch): what it moved, or EBADF. Linux keeps
/// such a call on the socket it started on until data or an error comes (the close takes
/// effect when it returns); ours closed the connection at once, so nothing would come.
fn closed_meanwhile(done: usize) -> Result<usize, c_int> {
    if done > 0 {
        Ok(done)
    } else {
        Err(libc::EBADF)
    }
}

/// Some connection of the kernel's is followed by the data-path cache (see [`Sockets::follow`]).
pub(super) static FOLLOWING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A read of a followed connection: the kernel's recv, as the application asked for it
/// (outside the table's lock: it may block), then what it read to the cache.
fn followed_read(fd: c_int, key: u64, op: &mut Io<'_>, flags: c_int) -> Result<usize, c_int> {
    let Io::Read(buf, _) = op else {
        return Err(libc::EINVAL);
    };
    // SAFETY: the application's socket and buffer.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(crate::errno::get());
    }
    let n = n as usize;
    if n > 0 {
        if let Some(mut s) = shim() {
            s.cache_read_followed(fd, key, &buf[..n]);
        }
    }
    Ok(n)
}

/// recv of one call of the application's (see [`Call`]).
pub fn recv(fd: c_int, buf: &mut [u8], flags: c_int, call: &mut Call) -> Answer<usize> {
    io(fd, Io::Read(buf, flags & libc::MSG_PEEK != 0), flags, call)
}

/// send of one call of the application's (SIGPIPE is the caller's to raise: `raise_sigpipe`,
/// once per call of the application's).
pub fn send(fd: c_int, data: &[u8], flags: c_int, call: &mut Call) -> Answer<usize> {
    io(fd, Io::Write(data), flags, call)
}

/// An error a later piece of a call met (an iovec of writev, a chunk of sendfile) after earlier
/// pieces moved bytes: the call returns those, and the error stays for the next call.
pub fn keep_errno(fd: c_int, errno: c_int) {
    let e = match errno {
        libc::ECONNRESET => SockError::Reset,
        libc::ETIMEDOUT => SockError::TimedOut,
        libc::ECONNREFUSED => SockError::Refused,
        _ => return,
    };
    with(|s| {
        s.keep_error(fd, e);
        Some(())
    });
}

/// A send that failed with EPIPE raises SIGPIPE unless MSG_NOSIGNAL, as the kernel does (only
/// when nothing was sent: a call that moved bytes returns their count, silently).
pub fn raise_sigpipe(flags: c_int) {
    if flags & libc::MSG_NOSIGNAL == 0 {
        // SAFETY: signalling the calling thread, as the kernel's send would.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGPIPE) };
    }
}

/// close(): our bookkeeping first; the kernel then closes the fd itself (returns false if the fd
/// is not ours).
pub fn close(fd: c_int) -> bool {
    if let Some(c) = child() {
        return c.close(fd);
    }
    let Some(table) = crate::fdtable::global() else {
        return false;
    };
    if !table.lookup(fd).is_ours() && !crate::fdtable::pending_binds() {
        return false;
    }
    if super::in_shared_child() {
        return false;
    }
    shim().is_some_and(|mut s| {
        let ours = s.close(fd);
        crate::fdtable::set_pending_binds(s.has_pending_binds());
        linger(s);
        ours
    })
}

/// After close() of connections with SO_LINGER on and a timeout: waits, as Linux's close()
/// does (on a non-blocking socket too), until each one's FIN is acknowledged, its timeout
/// passes or a signal handler runs; the connection goes on in the background after that.
fn linger(mut s: MutexGuard<'static, super::Table>) {
    let list = s.take_lingering();
    if list.is_empty() {
        return;
    }
    let mut hold = None;
    s.linger_wait(true);
    for (id, t) in list {
        let until = Some(Instant::now() + t);
        loop {
            if !s.lingers(id) {
                break;
            }
            if s.pump() {
                continue;
            }
            drop(s);
            let mask = hold.get_or_insert_with(SigHold::new).mask();
            let w = wait_once(None, None, until, mask, |s| {
                if s.lingers(id) {
                    Look::Wait
                } else {
                    Look::Ready
                }
            });
            s = match shim() {
                Some(s) => s,
                None => return,
            };
            if w != Waited::Again {
                break;
            }
        }
    }
    s.linger_wait(false);
}

/// close_range(first, last) is about to close every fd in the range: our bookkeeping for those
/// that are ours or bound to a flagged port. One pass over the fd table's part of the range
/// (close_range(3, ~0U) before exec covers every fd number the process may have).
pub fn close_range(first: c_int, last: c_int) {
    let Some(table) = crate::fdtable::global() else {
        return;
    };
    let end = last.min(c_int::try_from(table.len()).unwrap_or(c_int::MAX) - 1);
    let ours = (first..=end).filter(|&fd| table.lookup(fd).is_ours());
    if let Some(c) = child() {
        ours.for_each(|fd| {
            c.close(fd);
        });
        return;
    }
    let Some(mut s) = shim() else {
        return;
    };
    let mut fds: Vec<c_int> = ours.collect();
    fds.extend(s.pending_binds_in(first, end));
    for fd in fds {
        s.close(fd);
    }
    crate::fdtable::set_pending_binds(s.has_pending_binds());
    linger(s);
}

/// dup/dup2/dup3/F_DUPFD made `new`, a dup of `old`: if `old` is ours, so is `new`.
pub fn alias(old: c_int, new: c_int) -> Result<(), c_int> {
    if let Some(c) = child() {
        return c.alias(old, new);
    }
    match crate::fdtable::global() {
        Some(t) if t.lookup(old).is_ours() => {}
        _ => return Ok(()),
    }
    if super::in_shared_child() {
        return Ok(());
    }
    match shim() {
        Some(mut s) => s.alias(old, new),
        None => Ok(()),
    }
}

pub fn shutdown(fd: c_int, how: c_int) -> Answer<c_int> {
    with(|s| s.shutdown(fd, how))
}

/// getpeername (`peer`) or getsockname.
pub fn name(fd: c_int, peer: bool) -> Answer<SocketAddr> {
    with(|s| s.name(fd, peer))
}

pub fn setsockopt(fd: c_int, level: c_int, name: c_int, value: &[u8]) -> Answer<c_int> {
    with(|s| s.setsockopt(fd, level, name, value))
}

/// getsockopt into the caller's room: the value's length.
pub fn getsockopt(fd: c_int, level: c_int, name: c_int, out: &mut [u8]) -> Answer<usize> {
    with(|s| s.getsockopt(fd, level, name, out))
}

/// fcntl F_SETFL and ioctl FIONBIO.
pub fn set_nonblock(fd: c_int, on: bool) {
    with(|s| {
        s.set_nonblock(fd, on);
        Some(())
    });
}

pub fn fionread(fd: c_int) -> Answer<c_int> {
    with(|s| s.fionread(fd))
}

// ------------------------------------------------------------------ epoll

/// epoll_ctl when `fd` is ours. `Some(Ok(true))`: done, and the same call must also go to the
/// kernel's epoll (the kernel side of a dual listener).
pub fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: Option<(u32, u64)>) -> Answer<bool> {
    if !is_ours(epfd) && is_ours(fd) && !super::in_child() {
        adopt_epoll(epfd);
    }
    let r = with(|s| s.epoll_ctl(epfd, op, fd, event));
    if let Some(Ok(c)) = &r {
        if c.created {
            // Threads may be inside the kernel's wait on this instance, through this fd or
            // another one: those fds become dups of this one, and the bell rings.
            let waited = kwait::became_ours(epfd);
            let others: Vec<c_int> = waited
                .into_iter()
                .filter(|&w| w != epfd && !is_ours(w))
                .collect();
            if !others.is_empty() {
                let probe = kwait::probe_fd();
                for w in others {
                    if probe >= 0 && kwait::same_instance(epfd, w, probe) {
                        let _ = with(|s| s.alias(epfd, w).ok());
                    }
                }
                close_spare(probe);
            }
            kwait::ring(epfd);
        }
    }
    r.map(|r| r.map(|c| c.kernel_side))
}

/// `epfd`, not ours, may be another fd of an epoll instance of ours (a dup the shim did not
/// see being made): if a probe says so, it becomes a dup of that instance's fd. Returns
/// whether it did.
fn adopt_epoll(epfd: c_int) -> bool {
    let known: Vec<c_int> = kwait::instances()
        .into_iter()
        .filter(|&f| f != epfd)
        .collect();
    if known.is_empty() {
        return false;
    }
    let probe = kwait::probe_fd();
    if probe < 0 {
        return false;
    }
    let found = known
        .into_iter()
        .find(|&f| kwait::same_instance(f, epfd, probe));
    close_spare(probe);
    found.is_some_and(|f| with(|s| s.alias(f, epfd).ok()).is_some())
}

/// Closes an fd the runtime made for itself (if any).
fn close_spare(fd: c_int) {
    if fd >= 0 {
        // SAFETY: an fd this module made and nobody else holds.
        unsafe { libc::close(fd) };
    }
}

/// What [`kernel_epoll_wait`] did.
pub enum KernelWait {
    /// Nothing: `epfd` is ours, or this is a forked child (the call goes on as usual).
    NotTaken,
    /// The kernel's wait is the answer.
    Done(Answer<c_int>),
    /// Only a bell came: `epfd` is ours now; the wait goes on through the stack for this
    /// many milliseconds (-1: no limit).
    Rest(c_int),
}

/// epoll_wait on an epoll instance that holds none of our fds: the kernel's own wait (`wait`,
/// the application's call itself), counted so that an epoll_ctl adding one of ours from
/// another thread can ring this thread out of it (module `kwait`).
pub fn kernel_epoll_wait(
    epfd: c_int,
    events: &mut [std::mem::MaybeUninit<libc::epoll_event>],
    timeout_ms: c_int,
    wait: impl FnOnce() -> c_int,
) -> KernelWait {
    // An instance of ours (every wait of an event loop serving our sockets) takes no lock here.
    if super::in_child() || is_ours(epfd) {
        return KernelWait::NotTaken;
    }
    // An instance of ours made since this fd was last looked at may be this very instance.
    loop {
        let generation = kwait::needs_probe(epfd);
        if generation.is_some() && adopt_epoll(epfd) {
            return KernelWait::NotTaken;
        }
        if kwait::enter(epfd, generation) {
            break;
        }
        if is_ours(epfd) {
            return KernelWait::NotTaken;
        }
    }
    let start = Instant::now();
    let r = wait();
    let err = crate::errno::get();
    kwait::leave(epfd);
    if r < 0 {
        return KernelWait::Done(Some(Err(err)));
    }
    let n = kwait::drop_bells(events, r as usize);
    if n > 0 || r == 0 || !is_ours(epfd) {
        return KernelWait::Done(Some(Ok(n as c_int)));
    }
    if timeout_ms < 0 {
        return KernelWait::Rest(-1);
    }
    let spent = start.elapsed().as_millis().min(timeout_ms as u128) as c_int;
    KernelWait::Rest(timeout_ms - spent)
}

/// `look` of a wait that found nothing when the blocked threads had been woken `seen` times:
/// ready if they have been woken since (another thread's poll delivered something).
fn changed(s: &super::Table, seen: u64, wait: Look) -> Look {
    if s.wakes() != seen {
        Look::Ready
    } else {
        wait
    }
}

/// epoll_wait / epoll_pwait on an epoll instance of ours: our fds' events and the kernel's,
/// alternately first, then the spin and the block.
pub fn epoll_wait(
    mut epfd: c_int,
    events: &mut [std::mem::MaybeUninit<libc::epoll_event>],
    timeout_ms: c_int,
    sigmask: Option<&sigset_t>,
) -> Answer<c_int> {
    if super::in_child() {
        return None;
    }
    let max = events.len();
    if max == 0 {
        return Some(Err(libc::EINVAL));
    }
    // The first pass below transmits what this thread deferred.
    let was_in_loop = crate::tls::in_loop().replace(false);
    let mut last_work = Instant::now();
    let deadline = (timeout_ms >= 0).then(|| last_work + Duration::from_millis(timeout_ms as u64));
    let mut spin = Spin::new(last_work);
    let mut turn = SpinTurn::new();
    // Whether a look at the kernel's fds is due whatever `kernel_quiet` says (after a block
    // that ended for one of them).
    let mut kernel_due = false;
    // Passes in a row that did work without events to report.
    let mut busy = 0;
    let mut kernel_first = KERNEL_FIRST
        .try_with(|k| k.replace(!k.get()))
        .unwrap_or(false);
    let mut hold = None;
    // The set's entry index and uid, for blocking; the set (from the first block on).
    let mut ids = None;
    let mut started = None;
    // The poll that armed the device's wake-up before a block found work and delivered its
    // events: the next pass reports them without polling again.
    let mut delivered = false;
    if kernel_first && max == 1 && !kernel_quiet(epfd, last_work) {
        // Room for one event, and the kernel's turn: its fds are looked at first.
        // SAFETY: the caller's array, room for one event.
        let k = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr().cast(), 1, 0) };
        let found = k > 0 && kwait::drop_bells(events, k as usize) > 0;
        note_kernel_look(epfd, last_work, found);
        if found {
            if was_in_loop {
                if let Some(mut s) = shim() {
                    s.flush();
                }
            }
            crate::tls::in_loop().set(true);
            return Some(Ok(1));
        }
    }
    loop {
        // Our fds first, or half the room for them on the kernel's turn (so that neither kind
        // starves the other), unless the kernel's fds are quiet (`kernel_quiet`): the whole
        // room then.
        let quiet = !kernel_due && kernel_quiet(epfd, last_work);
        let room = if kernel_first && !quiet {
            max.div_ceil(2)
        } else {
            max
        };
        // The set's wait in this pass, if it filled a room that leaves the kernel's fds some;
        // if the set has dual listeners, whose kernel sides the kernel's set reports too.
        let mut filled = None;
        let mut paired = None;
        let poll = !std::mem::take(&mut delivered);
        let (mut n, nested, worked, received) = {
            let mut s = shim()?;
            // Blocked before: another thread may have closed the set's fd meanwhile (a dup
            // of it goes on naming the set).
            if !s.keep_on(&mut epfd, started) {
                return Some(Err(libc::EBADF));
            }
            match s.epoll_pass(epfd, room, events, timeout_ms != 0, poll) {
                Some(pass) => {
                    if pass.work {
                        last_work = Instant::now();
                        naps_reset();
                    }
                    if pass.n == room && room < max {
                        filled = Some(pass.call);
                    }
                    if pass.paired {
                        paired = Some(pass.call);
                    }
                    (pass.n, pass.nested, pass.work, pass.received)
                }
                None => {
                    // The kernel's epoll: what this thread deferred leaves now.
                    if was_in_loop {
                        s.flush();
                    }
                    return None;
                }
            }
        };
        kernel_first = !kernel_first;
        // The kernel's fds, without blocking, where the array has room: unless they are
        // quiet (`kernel_quiet`: the last look, or a block watching them, found none ready
        // less than KERNEL_QUIET_FOR ago), so that a loop kept busy by our sockets (events,
        // answers of the data-path cache, a spin) makes that system call at most every
        // KERNEL_QUIET_FOR; and whatever they were, at the deadline, after a block that
        // ended for one of them, and while a set of ours is nested in another (its events
        // reach the outer set's kernel instance). A block watches them itself and returns at
        // once if one is ready: no look before it.
        let now = (n == 0).then(Instant::now);
        let expired = now.is_some_and(|now| deadline.is_some_and(|d| now >= d));
        let look = n < max
            && (expired || kernel_due || nested || !kernel_quiet(epfd, now.unwrap_or(last_work)));
        if look {
            kernel_due = false;
            let rest = &mut events[n..];
            // SAFETY: the remaining room of the caller's array.
            let k =
                unsafe { libc::epoll_wait(epfd, rest.as_mut_ptr().cast(), rest.len() as c_int, 0) };
            if k < 0 {
                if n == 0 {
                    return Some(Err(crate::errno::get()));
                }
            } else {
                let ours = n;
                n += kwait::drop_bells(rest, k as usize);
                note_kernel_look(epfd, now.unwrap_or(last_work), n > ours);
                let more = n;
                if let (Some(call), true) = (filled, n < max) {
                    // Our half was full and the kernel's fds left room: more of ours, as
                    // Linux fills the array from one ready list.
                    if let Some(mut s) = shim() {
                        n += s.epoll_more(epfd, call, &mut events[n..]);
                    }
                }
                if let (Some(call), true) = (paired, more > ours && n > more - ours) {
                    // A dual listener's two sides, both ready: one event.
                    if let Some(mut s) = shim() {
                        // SAFETY: the first n entries are written (ours and the kernel's).
                        let written = unsafe {
                            std::slice::from_raw_parts_mut(events.as_mut_ptr().cast(), n)
                        };
                        n = s.epoll_fold_paired(epfd, call, written, ours, more);
                    }
                }
            }
        }
        if n > 0 {
            spin.found();
            crate::tls::in_loop().set(true);
            return Some(Ok(n as c_int));
        }
        let now = now.unwrap_or_else(Instant::now);
        if expired {
            spin.expired();
            return Some(Ok(0));
        }
        // A pass that received frames but had nothing to report (the data-path cache
        // answered, the frames were ACKs) is followed by another, not by arming the device's
        // wake-up for a last poll before blocking, which a loop kept busy would end at once,
        // each time (memif: a flag the peer then wakes us through, with a system call on each
        // side). (A pass that only transmitted, the replies of the loop's iteration, is not:
        // at light load the next request is a round trip away, and the pass would poll for
        // nothing once a request.)
        // Up to BUSY_PASSES in a row: a pass that keeps finding work goes through the
        // block's preparation, which waits for a full transmit ring. Not in a pool of
        // threads waiting for data, nor in a thread beside one: there the work was often
        // another thread's, delivered to it, and the passes took the stack's lock from it
        // (memcached -t 2: 7% fewer requests).
        if worked && received && busy < BUSY_PASSES && super::wait::sole_data_thread() {
            busy += 1;
            continue;
        }
        busy = 0;
        spin.idle();
        let window = spin.window();
        if !window.is_zero() && now.duration_since(last_work) < window && turn.take() {
            continue;
        }
        turn.release();
        // Block: in this thread's epoll instance, which holds the application's epoll fd, the
        // device's wake-up fd and the thread's eventfd.
        if ids.is_none() {
            (ids, started) =
                shim().map_or((None, None), |mut s| (s.epoll_ids(epfd), s.ident(epfd)));
        }
        let Some((key, uid)) = ids else {
            // Another thread closed the epoll fd meanwhile.
            return None;
        };
        let look = |s: &mut super::Table| {
            if s.epoll_has_queued(epfd) {
                Look::Ready
            } else if s.epoll_waits_for_connections(epfd) {
                Look::Connections
            } else {
                Look::Wait
            }
        };
        // (The cache answers in the poll after arming as in the pass: `epoll_pass`.)
        let answer_in = (timeout_ms != 0).then_some(epfd);
        let b = match prepare_block(&mut last_work, Some(key), look, answer_in, true) {
            Ok(b) => b,
            Err(again) => {
                delivered = again == Again::Delivered;
                continue;
            }
        };
        let t = block_for(deadline, &b);
        let hold = hold.get_or_insert_with(SigHold::new);
        let (r, notified, woke, kernel) =
            block_in(b.watch(), Some((epfd, uid)), t, mask_or(sigmask, hold));
        let err = crate::errno::get();
        after_block(notified, woke, &b);
        if r < 0 && err == libc::EINTR {
            return Some(Err(libc::EINTR));
        }
        // (A wake-up is not work: the pass after it finds the frames that woke it, and spins
        // after them. One that finds none (another worker process's frames, which wake every
        // process on the interface; a timer with nothing to do; a nap's end) blocks again at
        // once: with MTCP_SPIN_US's spin after every wake-up, nginx's 4 workers spent 4
        // spins a request.)
        // The block watched the kernel's fds: one of them ready (or maybe: no epoll instance
        // of the thread's) asks for a look, in this call or, if ours fill its room, the next;
        // none counts as a look that found none (a system call less per block, and per nap of
        // an idle thread on memif; the next block returns at once if one is ready by then).
        kernel_due = kernel;
        note_kernel_look(epfd, Instant::now(), kernel);
    }
}

/// See `busy` in [`epoll_wait`].
const BUSY_PASSES: u32 = 16;

/// How long the kernel's fds count as quiet after a look found none of them ready: while
/// our sockets keep an event loop busy, its epoll_wait looks at the kernel's fds at most this
/// often (a system call each time) unless the last look found one ready. A kernel fd that
/// becomes ready meanwhile is reported up to this much later than on Linux (OpenOnload's
/// EF_SELECT_NONBLOCK_FAST_USEC, 200 µs by default, makes the same trade for select()).
const KERNEL_QUIET_FOR: Duration = Duration::from_micros(100);

/// Whether this thread's last look at the kernel's fds was one of epoll set `epfd`'s, less
/// than KERNEL_QUIET_FOR before `now`, and found none ready.
fn kernel_quiet(epfd: c_int, now: Instant) -> bool {
    KERNEL_LOOKED
        .try_with(|k| {
            k.get().is_some_and(|(fd, at, found)| {
                fd == epfd && !found && now.saturating_duration_since(at) < KERNEL_QUIET_FOR
            })
        })
        .unwrap_or(false)
}

/// Notes a look at the kernel's fds of epoll set `epfd` at `now`, and whether it found one
/// ready.
fn note_kernel_look(epfd: c_int, now: Instant, found: bool) {
    let _ = KERNEL_LOOKED.try_with(|k| k.set(Some((epfd, now, found))));
}

// ------------------------------------------------------------------ poll / select

/// Readiness as poll bits, limited to what was asked (errors and hang-ups always).
fn poll_bits(r: userstack::Readiness, events: i16) -> i16 {
    let b = userstack::epoll::bits(r) as i32;
    let mut rev = b & (events as i32 | libc::POLLERR as i32 | libc::POLLHUP as i32);
    if r.readable() && events & libc::POLLRDNORM != 0 {
        rev |= libc::POLLRDNORM as i32;
    }
    if r.writable() && events & libc::POLLWRNORM != 0 {
        rev |= libc::POLLWRNORM as i32;
    }
    rev as i16
}

/// poll/ppoll over the caller's array when some of its fds are ours: our fds' readiness from
/// the stack, the kernel's from a zero-timeout poll with our identity fds hidden (negative),
/// then the same spin-then-block as epoll_wait. `None`: none of the fds is ours.
pub fn poll(
    fds: &mut [libc::pollfd],
    timeout: Option<Duration>,
    sigmask: Option<&sigset_t>,
) -> Answer<c_int> {
    let mut kinds: Vec<PollKind> = with(|s| Some(fds.iter().map(|p| s.poll_kind(p.fd)).collect()))?;
    if kinds.iter().all(|k| *k == PollKind::Kernel) {
        leave_loop_for_kernel();
        return None;
    }
    // The first pump below transmits what this thread deferred.
    crate::tls::in_loop().set(false);
    let mut last_work = Instant::now();
    let deadline = timeout.map(|t| last_work + t);
    let mut spin = Spin::new(last_work);
    let mut turn = SpinTurn::new();
    let mut mine = vec![0i16; fds.len()];
    let mut hold = None;
    // When a look at the kernel's fds (or a block watching them) last found none ready: they
    // are looked at again (a system call) once that is KERNEL_QUIET_FOR old, or at the
    // deadline, as in epoll_wait; never if the array has none.
    let mut kernel_quiet_since: Option<Instant> = None;
    loop {
        // (What blocked threads were last woken for, as this look saw it.)
        let mut listens = false;
        let seen = {
            let mut s = shim()?;
            if s.pump() {
                last_work = Instant::now();
                naps_reset();
            }
            for (i, p) in fds.iter().enumerate() {
                // Looked at again on every pass: another thread may close one of ours
                // meanwhile (the kernel then says POLLNVAL, or sees the number's next file).
                kinds[i] = s.poll_kind(p.fd);
                listens |= kinds[i] != PollKind::Kernel && s.is_listener(p.fd);
                mine[i] = match kinds[i] {
                    PollKind::Kernel => 0,
                    _ => s.readiness(p.fd).map_or(0, |r| poll_bits(r, p.events)),
                };
            }
            s.wakes()
        };
        // The kernel's fds, without blocking; ours hidden from it.
        let kernel = fds
            .iter()
            .zip(&kinds)
            .any(|(p, k)| *k != PollKind::Stack && p.fd >= 0);
        let now = Instant::now();
        let expired = deadline.is_some_and(|d| now >= d);
        let look = kernel
            && (expired
                || kernel_quiet_since.is_none_or(|t| now.duration_since(t) >= KERNEL_QUIET_FOR));
        let (k, err) = if look {
            for (p, k) in fds.iter_mut().zip(&kinds) {
                if *k == PollKind::Stack {
                    p.fd = !p.fd;
                }
            }
            // SAFETY: the caller's array of fds.len() entries.
            let k = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
            let err = crate::errno::get();
            for (p, kind) in fds.iter_mut().zip(&kinds) {
                if *kind == PollKind::Stack {
                    p.fd = !p.fd;
                }
            }
            kernel_quiet_since = (k == 0).then_some(now);
            (k, err)
        } else {
            for p in fds.iter_mut() {
                p.revents = 0;
            }
            (0, 0)
        };
        for ((p, kind), m) in fds.iter_mut().zip(&kinds).zip(&mine) {
            if *kind == PollKind::Stack {
                p.revents = *m;
            } else {
                p.revents |= *m;
            }
        }
        if k < 0 {
            return Some(Err(err));
        }
        let n = fds.iter().filter(|p| p.revents != 0).count();
        if n > 0 {
            spin.found();
            crate::tls::in_loop().set(true);
            return Some(Ok(n as c_int));
        }
        if expired {
            spin.expired();
            return Some(Ok(0));
        }
        spin.idle();
        let window = spin.window();
        if !window.is_zero() && last_work.elapsed() < window && turn.take() {
            continue;
        }
        turn.release();
        let Ok(b) = prepare_block(
            &mut last_work,
            None,
            |s| changed(s, seen, Look::Wait),
            None,
            false,
        ) else {
            continue;
        };
        let wake = b.wake;
        // Block on the kernel's fds, the wake-up fd and the keeper's notification.
        let mut blk: Vec<libc::pollfd> = fds
            .iter()
            .zip(&kinds)
            .filter(|(_, k)| **k != PollKind::Stack)
            .map(|(p, _)| libc::pollfd { revents: 0, ..*p })
            .collect();
        let kernel_fds = blk.len();
        let me = super::wait::my_eventfd();
        for fd in [wake, (me >= 0).then_some(me)].into_iter().flatten() {
            blk.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let ts = userstack::clock::timespec(block_for(deadline, &b));
        let hold = hold.get_or_insert_with(SigHold::new);
        // (The application accepts on the listener it waits on: see `Sockets::steer`.)
        if listens {
            super::LISTEN_POLLERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: a local array; the caller's signal mask while blocked.
        let r = unsafe {
            libc::ppoll(
                blk.as_mut_ptr(),
                blk.len() as libc::nfds_t,
                &ts,
                mask_or(sigmask, hold),
            )
        };
        let err = crate::errno::get();
        if listens {
            super::LISTEN_POLLERS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        let notified = me >= 0 && blk.last().is_some_and(|p| p.fd == me && p.revents != 0);
        let woke = wake.is_some_and(|w| blk.iter().any(|p| p.fd == w && p.revents != 0));
        // The block watched the kernel's fds: none ready counts as a look.
        let kernel_ready = r < 0 || blk[..kernel_fds].iter().any(|p| p.revents != 0);
        kernel_quiet_since = (!kernel_ready).then(Instant::now);
        after_block(notified, woke, &b);
        if r < 0 && err == libc::EINTR {
            return Some(Err(libc::EINTR));
        }
        // (No spin for the wake-up itself: see epoll_wait.)
    }
}

#[cfg(test)]
mod tests {
    use super::adapted;
    use std::time::Duration;

    const US: Duration = Duration::from_micros(1);

    /// The spin window keeps what it catches, grows toward the maximum when work came within
    /// twice it, shrinks to nothing when work comes later than that or not at all, and comes
    /// back.
    #[test]
    fn the_spin_window_follows_the_idle_stretches() {
        let max = 50 * US;
        // Caught by the spin: unchanged.
        assert_eq!(adapted(max, Some(30 * US), max), max);
        // Work further apart than twice the maximum, or a timeout: halves, then nothing.
        let mut w = max;
        let mut seen = Vec::new();
        for gap in [Some(300 * US), None, Some(101 * US), None] {
            w = adapted(w, gap, max);
            seen.push(w.as_micros());
        }
        assert_eq!(seen, [25, 12, 6, 0]);
        // Work within twice the maximum again (a blocked stretch holds the wake-up's latency):
        // a quarter of it, then doubling to it.
        let mut seen = Vec::new();
        for _ in 0..4 {
            w = adapted(w, Some(70 * US), max);
            seen.push(w.as_micros());
        }
        assert_eq!(seen, [12, 25, 50, 50]);
        // No spin configured: nothing to adapt.
        assert_eq!(
            adapted(Duration::ZERO, Some(10 * US), Duration::ZERO),
            Duration::ZERO
        );
    }
}
