//! The runtime around the socket table: the process's one [`Sockets`] behind a lock, the
//! kernel and process services it asks for ([`Proc`]), the keeper thread, fork, and (in
//! `wait`) everything that blocks. `calls` has the entry points `ops` calls.
//!
//! Everything here runs inside the hook's re-entrancy guard, so the libc calls made from here
//! reach libc's own functions.
//!
//! Locks, in the order they may be taken: the table's lock (`shim()`), then `WAITER_FDS`,
//! `SPARE_FDS` or the kernel waits' registry (`kwait`) (never the other way round, and never
//! two of these). The keeper only ever tries the
//! table's lock (it never waits for it). A forked child takes neither: it may have copied
//! them held ([`in_child`]).

mod calls;
mod control;
mod fanout;
mod fds;
mod group;
mod kwait;
mod sockopt;
mod wait;
pub(crate) mod watch;

pub(crate) use calls::*;
pub(crate) use fanout::{packet_fanout, starting_dpdk};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use libc::c_int;
use userstack::dpdk::DpdkLink;
use userstack::{clock, Config, Stack};

use crate::fdtable::{self, FdTable};
use crate::sockets::{fork::Child, Family, Host, SockOpt, Sockets};
use wait::{notify_waiters, BLOCKED_WAITERS, WATCHERS};

/// The process's socket table.
type Table = Sockets<'static, DpdkLink, Proc>;

static SHIM: OnceLock<Option<Mutex<Table>>> = OnceLock::new();

/// Threads blocked in poll() or select() with a listener of ours among their fds.
pub(crate) static LISTEN_POLLERS: AtomicUsize = AtomicUsize::new(0);

/// When the stack was last polled (µs on the stack clock), by anyone.
static LAST_POLL: AtomicU64 = AtomicU64::new(0);

/// The stack's configuration, read once.
fn config() -> &'static Result<Config, String> {
    static CFG: OnceLock<Result<Config, String>> = OnceLock::new();
    CFG.get_or_init(|| Config::from_env().map_err(|e| e.to_string()))
}

/// The process's socket table, locked; made (with the fd table) on first use. `None` only if
/// the fd table cannot be mapped (said once): then no fd is ever ours.
fn shim() -> Option<MutexGuard<'static, Table>> {
    let lock = SHIM.get_or_init(|| match fdtable::global_or_init() {
        Some(t) => Some(Mutex::new(Sockets::new(Proc, t, config().clone()))),
        None => {
            crate::shim_log!(
                "cannot serve the ports in MTCP_PORTS: no memory for the fd table; they stay \
                 the kernel's"
            );
            None
        }
    });
    Some(lock.as_ref()?.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The process as the socket table's host: DPDK, the kernel's own calls, stderr.
struct Proc;

impl Host<DpdkLink> for Proc {
    fn start(&mut self, cfg: &Config) -> Result<Stack<DpdkLink>, String> {
        // DPDK's files, sockets and eventfds go above the numbers the application's own fds
        // would get on the kernel.
        let _low = fds::LowFds::hold();
        let _starting = fanout::Starting::begin();
        DpdkLink::start(cfg)
            .map_err(|e| e.to_string())
            .and_then(|link| Stack::new(link, cfg, clock::now()).map_err(|e| e.to_string()))
    }

    fn preflight(&mut self, cfg: &Config) -> Result<(), String> {
        // The stack starts later, maybe in worker processes forked meanwhile: they share
        // this page to split the flows.
        group::ensure();
        userstack::config::preflight(cfg)
    }

    fn steer(&mut self, stack: &mut Stack<DpdkLink>, serving: bool) {
        group::steer(stack, serving);
    }

    fn started(&mut self) {
        start_keeper();
        // SAFETY: registering a handler with no arguments; it runs at exit(3).
        unsafe { libc::atexit(close_at_exit) };
    }

    fn say(&mut self, msg: &str) {
        crate::shim_log!("{msg}");
    }

    #[inline]
    fn now(&self) -> smoltcp::time::Instant {
        clock::now()
    }

    #[inline]
    fn poll_time(&mut self) -> smoltcp::time::Instant {
        let now = clock::now();
        LAST_POLL.store(now.total_micros() as u64, Ordering::Relaxed);
        now
    }

    fn kernel_listen(&mut self, fd: c_int, backlog: c_int) -> Result<(), c_int> {
        // SAFETY: plain listen on the application's own socket.
        if unsafe { libc::listen(fd, backlog) } < 0 {
            return Err(crate::errno::get());
        }
        Ok(())
    }

    fn kernel_readable(&mut self, fd: c_int) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd of our own, no wait.
        unsafe { libc::poll(&mut p, 1, 0) > 0 && p.revents & libc::POLLIN != 0 }
    }

    fn kernel_shutdown(&mut self, fd: c_int, how: c_int) -> Result<(), c_int> {
        // SAFETY: plain shutdown of the application's own socket.
        if unsafe { libc::shutdown(fd, how) } < 0 {
            return Err(crate::errno::get());
        }
        Ok(())
    }

    fn identity_fd(
        &mut self,
        flags: c_int,
        family: Family,
        inherit: &[SockOpt],
    ) -> Result<c_int, c_int> {
        sockopt::identity_socket(flags, family, inherit)
    }

    fn listener_options(&mut self, fd: c_int, family: Family) -> Vec<SockOpt> {
        sockopt::listener_options(fd, family)
    }

    fn connect_options(
        &mut self,
        fd: c_int,
        family: Family,
        set: Option<&[(c_int, c_int)]>,
    ) -> Vec<SockOpt> {
        sockopt::connect_options(fd, family, set)
    }

    fn default_int(&mut self, family: Family, level: c_int, name: c_int) -> Option<c_int> {
        sockopt::default_int(family, level, name)
    }

    fn kernel_check(
        &mut self,
        family: Family,
        level: c_int,
        name: c_int,
        value: &[u8],
    ) -> Result<(), c_int> {
        sockopt::check(family, level, name, value)
    }

    fn kernel_nonblocking(&mut self, fd: c_int) -> bool {
        // SAFETY: F_GETFL reads the fd's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        flags >= 0 && flags & libc::O_NONBLOCK != 0
    }

    fn kernel_getsockopt_int(&mut self, fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
        sockopt::get_int(fd, level, name)
    }

    fn kernel_setsockopt(
        &mut self,
        fd: c_int,
        level: c_int,
        name: c_int,
        value: &[u8],
    ) -> Result<(), c_int> {
        sockopt::set(fd, level, name, value)
    }

    fn bell(&mut self, epfd: c_int) -> c_int {
        kwait::nest_bell(epfd)
    }

    fn ring(&mut self, bell: c_int, on: bool) {
        kwait::ring_bell(bell, on);
    }

    fn control_io(&mut self) -> Option<&mut dyn crate::cache::ControlIo> {
        Some(self)
    }

    fn peer_end(&mut self, fd: c_int) -> Option<c_int> {
        control::peer_end(fd)
    }

    fn close_fd(&mut self, fd: c_int) {
        // SAFETY: an fd the socket table made and owns.
        unsafe { libc::close(fd) };
    }

    fn check_epoll(&mut self, fd: c_int) -> Result<(), c_int> {
        // Whether fd is an epoll instance, as epoll_ctl finds out: deleting a pollable fd
        // that is not in it (a fresh eventfd) is ENOENT from an epoll instance, EINVAL from
        // any other file, EBADF from a closed fd.
        // SAFETY: a new eventfd of ours, closed below.
        let probe = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if probe < 0 {
            return Err(crate::errno::get());
        }
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: an epoll_ctl DEL of our eventfd (it is in no set); `ev` is ours.
        let r = unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_DEL, probe, &mut ev) };
        let err = crate::errno::get();
        // SAFETY: the eventfd made above.
        unsafe { libc::close(probe) };
        match (r, err) {
            (0, _) | (_, libc::ENOENT) => Ok(()),
            (_, e) => Err(e),
        }
    }

    #[inline]
    fn waits_on(&mut self, key: u32) -> bool {
        BLOCKED_WAITERS.load(Ordering::Relaxed) > 0 && wait::waits_on(key)
    }

    fn polls_listeners(&mut self) -> bool {
        LISTEN_POLLERS.load(Ordering::Relaxed) > 0
    }

    fn wake_waiters(&mut self, only: Option<&[u32]>) {
        if BLOCKED_WAITERS.load(Ordering::Relaxed) > 0 {
            notify_waiters(only);
        }
    }
}

// ------------------------------------------------------------------ fork

/// Set in a forked child (pthread_atfork): see `sockets::fork` for what the child may do.
static IN_CHILD: AtomicBool = AtomicBool::new(false);

extern "C" fn after_fork_in_child() {
    IN_CHILD.store(true, Ordering::SeqCst);
}

#[inline]
fn in_child() -> bool {
    IN_CHILD.load(Ordering::Relaxed)
}

/// The process whose memory this is: set when the library is loaded, and in every forked
/// child. A child of vfork() (or of clone with CLONE_VM) shares its parent's memory, so its
/// socket table, but runs no atfork handler: what it closes or dups is its own kernel fds,
/// and the table must not change (CPython's subprocess closes every fd from 3 up with
/// close_range in a vfork child).
static OWNER_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn owner_after_fork() {
    // SAFETY: getpid has no preconditions.
    OWNER_PID.store(unsafe { libc::getpid() }, Ordering::SeqCst);
}

/// At load: records the owner, and has every forked child record itself.
pub(crate) fn own_memory() {
    owner_after_fork();
    // SAFETY: registering a handler that only stores an atomic.
    unsafe { libc::pthread_atfork(None, None, Some(owner_after_fork)) };
    crate::candidates::lock_across_fork();
}

/// Whether the caller runs in a child that shares this process's memory (vfork): one system
/// call, asked only by the calls that close or duplicate fds, once the fd is known to be ours
/// (`calls::close`, `calls::alias`, `ops::close`'s candidates, `ops::close_range`).
pub(crate) fn in_shared_child() -> bool {
    let owner = OWNER_PID.load(Ordering::Relaxed);
    // SAFETY: getpid has no preconditions (glibc does not cache it).
    owner != 0 && owner != unsafe { libc::getpid() }
}

/// A forked child's view of its fds (`None` in the parent, or before any fd was ours).
fn child() -> Option<Child<'static>> {
    if !in_child() {
        return None;
    }
    Some(Child(fdtable::global().unwrap_or_else(empty_table)))
}

/// A child whose parent never had an fd of ours has nothing to forget.
fn empty_table() -> &'static FdTable {
    static EMPTY: OnceLock<Option<FdTable>> = OnceLock::new();
    EMPTY
        .get_or_init(|| FdTable::with_len(1))
        .as_ref()
        .expect("a one-page mapping")
}

/// Runs `f` on the locked table: the common preamble of every call. `None` (the call is the
/// kernel's) in a forked child, which must not touch the table.
#[inline]
fn with<T>(f: impl FnOnce(&mut Table) -> Option<T>) -> Option<T> {
    if in_child() {
        return None;
    }
    f(&mut *shim()?)
}

// ------------------------------------------------------------------ exit

/// How long exit(3) waits, at most, for the peers to acknowledge the FINs of the connections
/// the process leaves open (and what was sent before them).
const EXIT_DRAIN: Duration = Duration::from_millis(250);
/// How long exit(3) waits, at most, for the worker processes that still listen to take the
/// connections this one's listeners held (the stack withdraws an offer after 2 s).
const HANDOVER_DRAIN: Duration = Duration::from_millis(2_500);

/// At exit(3): the kernel would close every socket the process leaves open, sending FINs (or
/// resets) that tell the peers; with the stack gone they would hear nothing and wait out
/// their own timeouts (a master under the shim that exits would leave its replicas connected
/// to nothing). So the stack closes every connection and transmits, then keeps polling until
/// the peers acknowledged the FINs, EXIT_DRAIN at most. A process killed by a signal, or one
/// that ends with _exit(2), closes nothing. Not in a forked child: the connections are the
/// parent's.
extern "C" fn close_at_exit() {
    if in_child() {
        return;
    }
    let Some(Some(lock)) = SHIM.get() else {
        return;
    };
    let deadline = Instant::now() + EXIT_DRAIN;
    // Another thread may hold the table (briefly; or for good, if it called exit itself from
    // inside a call of ours): try for a while, never wait for it.
    let mut s = loop {
        match lock.try_lock() {
            Ok(s) => break s,
            Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(std::sync::TryLockError::WouldBlock) => return,
        }
    };
    s.close_all();
    // Connections its listeners held, offered to worker processes that still listen: until
    // they are taken (the others' next round) or withdrawn and reset (the stack's own limit).
    let handover_deadline = Instant::now() + HANDOVER_DRAIN;
    let mut next_round = Instant::now();
    loop {
        s.pump();
        let now = Instant::now();
        if s.handovers_pending() > 0 && now >= next_round {
            s.steer();
            next_round = now + Duration::from_millis(5);
        }
        let draining = s.closing_unacked() > 0 && now < deadline;
        if !draining && (s.handovers_pending() == 0 || now >= handover_deadline) {
            break;
        }
        drop(s);
        std::thread::sleep(Duration::from_micros(if draining { 100 } else { 1_000 }));
        s = match lock.lock() {
            Ok(s) => s,
            Err(e) => e.into_inner(),
        };
    }
}

// ------------------------------------------------------------------ keeper

/// The keeper polls when nobody else did for this long.
const KEEPER_PERIOD: Duration = Duration::from_millis(10);

/// The keeper thread: serves timers, ARP, pings and new connections while no application
/// thread polls the stack (the application is busy, or its epoll has none of our fds).
fn start_keeper() {
    // SAFETY: registering a handler that only stores an atomic.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    let spawned = std::thread::Builder::new()
        .name("mtcp-keeper".into())
        .spawn(|| {
            // Its own calls (sleeping, the eventfd) go straight to libc.
            crate::guard::mark_thread_internal();
            loop {
                // While an application thread is blocked in our wait, it wakes for frames and
                // timers itself: check back less often (idle Redis: 20 wake-ups a second
                // instead of 100, 0.3% of a core less).
                let period = if WATCHERS.load(Ordering::Relaxed) > 0 {
                    KEEPER_PERIOD * 5
                } else {
                    KEEPER_PERIOD
                };
                std::thread::sleep(period);
                // Worker processes: this one's share of the flows (a worker came or went).
                if let Some(Some(lock)) = SHIM.get() {
                    if let Ok(mut s) = lock.try_lock() {
                        s.steer();
                    }
                }
                let now = clock::now();
                let idle_for =
                    (now.total_micros() as u64).saturating_sub(LAST_POLL.load(Ordering::Relaxed));
                if idle_for < KEEPER_PERIOD.as_micros() as u64 {
                    continue;
                }
                let blocked = WATCHERS.load(Ordering::Relaxed) > 0;
                let Some(Some(lock)) = SHIM.get() else {
                    continue;
                };
                // Never wait for the lock: whoever holds it is polling anyway.
                let Ok(mut s) = lock.try_lock() else { continue };
                // Blocked waiters wake for frames and for the timers they knew of when they
                // blocked; work another thread made since (a write left for the next poll, a
                // timer armed earlier than theirs) is the keeper's.
                let overdue = s.stack().is_some_and(|st| {
                    st.pending_writes() > 0 || st.next_deadline().is_some_and(|d| d <= now)
                });
                if blocked && !overdue {
                    continue;
                }
                if s.pump() {
                    notify_waiters(None);
                }
            }
        });
    if let Err(e) = spawned {
        crate::shim_log!(
            "cannot start the keeper thread ({e}): the stack is polled only inside socket calls"
        );
    }
}
