//! Waiting: how a thread blocked in our epoll_wait/poll sleeps and who wakes it.
//!
//! A waiter polls the stack, spins MTCP_SPIN_US after work, then blocks on what can make work
//! for it: its own kernel fds (the application's epoll fd, or the poll array), the device's
//! wake-up fd, and its own eventfd, which other threads write when they make work for it. On a
//! device without a wake-up fd (net_memif) the block is a nap (20 µs doubling to
//! MTCP_IDLE_SLEEP_US). While frames wait for room in the device's ring it does not block at
//! all (`TxWait`).
//!
//! Threads of a pool do not all wake for every frame: a thread blocked in epoll_wait or in a
//! blocking socket call blocks in an epoll instance of its own, which holds the device's
//! wake-up fd with EPOLLEXCLUSIVE, so the kernel wakes one of them per frame; the one woken
//! polls the stack and wakes, through their eventfds, only the threads whose epoll set or
//! socket the poll gave something (`WaitKey`). A thread blocked in poll()/select() is woken for
//! any delivery.
//!
//! Writes inside an event-loop iteration may leave together at its end (`defer_tx`): one
//! transmit burst per iteration.

use crate::mono::Instant;
use std::cell::Cell;
use std::mem::zeroed;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libc::{c_int, sigset_t};
use userstack::clock;
use userstack::idle::{Backoff, TxWait};
use userstack::link::Link;

use super::{config, in_child, shim, Table};

/// Application threads blocked in our epoll_wait/poll with the device's wake-up armed, or
/// napping on a device without one: they wake for frames (or within a nap) and for the stack's
/// next timer themselves, so the keeper has nothing to do.
pub(super) static BLOCKED_WAITERS: AtomicUsize = AtomicUsize::new(0);
/// Of those, the threads that watch the device (its wake-up fd in their wait, or naps on a
/// device without one).
pub(super) static WATCHERS: AtomicUsize = AtomicUsize::new(0);
/// Threads whose last wait was for connections' data (`Look::Wait`): blocked, or busy with
/// what their last wait returned, and back soon to poll. While there is one, a thread that
/// waits only for new connections (`Look::Connections`) does not watch the device: memcached's
/// or a thread pool's acceptor sleeps while its workers take the frames, and the poll that
/// takes a SYN wakes it (the keeper's, within 10 ms, if no worker comes back to poll).
static DATA_THREADS: AtomicUsize = AtomicUsize::new(0);
/// What a blocked thread waits for, so that a delivery wakes only the threads it concerns: an
/// object of the socket table (`Sockets::key_of`: the epoll set of an epoll_wait, the socket
/// of a blocking recv/send/accept), or `None`: anything (poll, select, a lingering close).
pub(super) type WaitKey = Option<u32>;

/// The threads blocked in our waits: each one's eventfd and what it waits for.
/// `notify_waiters` writes the eventfds of those another thread made work for (its poll
/// delivered events to their sets or sockets, an epoll_ctl queued an entry, a shutdown), or of
/// all (frames left waiting for the device). One eventfd shared by all waiters could not wake
/// several: the first to drain it hid the wake-up from the others.
static WAITER_FDS: Mutex<Vec<(c_int, WaitKey)>> = Mutex::new(Vec::new());
/// The waiting means of threads that exited, for the next thread that blocks.
static SPARE_FDS: Mutex<Vec<Waiter>> = Mutex::new(Vec::new());

/// Tags of the entries of a thread's epoll instance.
const TAG_SET: u64 = 0;
const TAG_WAKE: u64 = 1;
const TAG_EFD: u64 = 2;

/// A thread's means of blocking: its eventfd, which other threads write when they make work
/// for it, and its epoll instance, which holds that eventfd, the device's wake-up fd (with
/// EPOLLEXCLUSIVE: a frame wakes one of the threads blocked on it) and the application's epoll
/// set the thread last waited on (its fd and `Obj::Epoll`'s uid).
#[derive(Clone, Copy)]
struct Waiter {
    efd: c_int,
    ep: c_int,
    wake: c_int,
    /// `wake` is watched edge-triggered.
    wake_edge: bool,
    set: Option<(c_int, u64)>,
}

impl Waiter {
    fn new() -> Waiter {
        // SAFETY: plain eventfd and epoll creation; the eventfd joins the epoll instance.
        unsafe {
            let efd = super::fds::lift(libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC));
            let mut ep = super::fds::lift(libc::epoll_create1(libc::EPOLL_CLOEXEC));
            if ep >= 0 && efd >= 0 {
                let mut ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: TAG_EFD,
                };
                if libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, efd, &mut ev) != 0 {
                    libc::close(ep);
                    ep = -1;
                }
            }
            Waiter {
                efd,
                ep,
                wake: -1,
                wake_edge: false,
                set: None,
            }
        }
    }

    /// Makes the epoll instance hold `wake` (edge-triggered if its flag says so) and the
    /// application's set `set` (and no other). False if it cannot: the caller blocks briefly
    /// without it.
    fn hold(&mut self, wake: Option<(c_int, bool)>, set: Option<(c_int, u64)>) -> bool {
        if self.ep < 0 {
            return false;
        }
        let add = |fd: c_int, events: u32, tag: u64| {
            let mut ev = libc::epoll_event { events, u64: tag };
            // SAFETY: adding a live fd to our own epoll instance.
            unsafe { libc::epoll_ctl(self.ep, libc::EPOLL_CTL_ADD, fd, &mut ev) == 0 }
        };
        if wake != Some((self.wake, self.wake_edge)) {
            if self.wake >= 0 {
                // SAFETY: removing an entry of our own epoll instance.
                unsafe {
                    libc::epoll_ctl(
                        self.ep,
                        libc::EPOLL_CTL_DEL,
                        self.wake,
                        std::ptr::null_mut(),
                    )
                };
                self.wake = -1;
            }
            if let Some((w, edge)) = wake {
                let mut exclusive = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
                if edge {
                    exclusive |= libc::EPOLLET as u32;
                }
                if !add(w, exclusive, TAG_WAKE) {
                    return false;
                }
                self.wake = w;
                self.wake_edge = edge;
            }
        }
        if set != self.set {
            if let Some((old, _)) = self.set.take() {
                // SAFETY: removing an entry of our own epoll instance (ENOENT if the kernel
                // removed it when the set was closed).
                unsafe { libc::epoll_ctl(self.ep, libc::EPOLL_CTL_DEL, old, std::ptr::null_mut()) };
            }
            if let Some((fd, _)) = set {
                if !add(fd, libc::EPOLLIN as u32, TAG_SET) {
                    return false;
                }
            }
            self.set = set;
        }
        true
    }
}

/// Whether the calling thread is the only one that waits for data (or none has yet): the
/// process's one event loop (Redis), not one of a pool whose threads share the stack
/// (memcached's workers), nor a thread that waits only for connections beside one that waits
/// for data (memcached's main thread). (`DATA_THREADS` counts the threads whose last block
/// waited for data.)
pub(super) fn sole_data_thread() -> bool {
    match DATA_THREADS.load(Ordering::Relaxed) {
        0 => true,
        1 => WAITER.try_with(|w| w.1.get()).unwrap_or(false),
        _ => false,
    }
}

/// A thread's [`Waiter`], handed back to `SPARE_FDS` when the thread exits, and whether it
/// is counted in DATA_THREADS.
struct ThreadWaiter(Cell<Waiter>, Cell<bool>);

impl Drop for ThreadWaiter {
    fn drop(&mut self) {
        if self.1.get() {
            DATA_THREADS.fetch_sub(1, Ordering::Relaxed);
        }
        // (In a forked child the lock may have been copied held: leave it alone.)
        let w = self.0.get();
        if w.efd >= 0 && !in_child() {
            if let Ok(mut v) = SPARE_FDS.lock() {
                v.push(w);
            }
        }
    }
}

thread_local! {
    static WAITER: ThreadWaiter = ThreadWaiter(
        Cell::new(
            SPARE_FDS
                .lock()
                .ok()
                .and_then(|mut v| v.pop())
                .unwrap_or_else(Waiter::new),
        ),
        Cell::new(false),
    );
    /// This thread's naps on a device without a wake-up fd. It outlives each call: an idle
    /// application calls epoll_wait again and again (Redis: every 100 ms or sooner), and
    /// starting each call over at 20 µs doubled the wake-ups of an idle Redis on memif
    /// (~1,100 a second instead of ~500).
    static NAPS: Cell<Option<Backoff>> = const { Cell::new(None) };
    /// This thread's wait for a full transmit ring (`prepare_block`).
    static TX_WAIT: Cell<Option<TxWait>> = const { Cell::new(None) };
}

/// This thread's wake-up eventfd (-1 if it has none).
pub(super) fn my_eventfd() -> c_int {
    WAITER.try_with(|w| w.0.get().efd).unwrap_or(-1)
}

/// Whether a thread is blocked in a wait for `key`.
pub(super) fn waits_on(key: u32) -> bool {
    WAITER_FDS
        .lock()
        .is_ok_and(|v| v.iter().any(|&(_, k)| k == Some(key)))
}

/// Wakes the threads blocked in our waits (each one's eventfd): those waiting for one of the
/// objects in `only`, and those waiting for anything; all if `only` is `None`.
pub(super) fn notify_waiters(only: Option<&[u32]>) {
    let Ok(fds) = WAITER_FDS.lock() else { return };
    for &(fd, key) in fds.iter() {
        let concerned = match (only, key) {
            (Some(objs), Some(k)) => objs.contains(&k),
            _ => true,
        };
        if concerned {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes to our own eventfd.
            unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
        }
    }
}

// ------------------------------------------------------------------ deferred writes

/// Connections with deferred writes beyond which a write transmits at once.
const DEFER_MAX: usize = 32;

/// Whether a write may leave its data for the thread's next wait to transmit, with the other
/// replies of the same event-loop iteration: one transmit burst (with af_packet or af_xdp, one
/// system call) per iteration instead of one per reply. Only inside an event loop's
/// iteration, and for at most `DEFER_MAX` connections; the keeper thread sends whatever a
/// thread that stops waiting leaves behind. `MTCP_TX_DEFER=0` sends every write at once.
#[inline]
pub(super) fn defer_tx(pending: usize) -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| config().as_ref().map_or(true, |c| c.tx_defer))
        && pending <= DEFER_MAX
        && crate::tls::in_loop().get()
}

/// Ends this thread's event-loop iteration at a wait that is not ours (the kernel's fds only):
/// writes it deferred leave now, as that wait will not poll the stack.
pub(super) fn leave_loop_for_kernel() {
    if crate::tls::in_loop().replace(false) {
        if let Some(mut s) = shim() {
            s.flush();
        }
    }
}

// ------------------------------------------------------------------ blocking

/// What a waiter blocks on, besides the application's own fds.
pub(super) struct Blocking {
    /// Counted in BLOCKED_WAITERS (there is a stack): `after_block` uncounts it.
    counted: bool,
    /// Counted in WATCHERS.
    watching: bool,
    /// The device's wake-up fd, if it has one and this thread watches it.
    pub(super) wake: Option<c_int>,
    /// It is watched edge-triggered (`Stack::wake_edge`).
    wake_edge: bool,
    /// Time to the stack's next timer.
    until_timer: Option<Duration>,
    /// The stack runs over a device without a wake-up fd (net_memif): no frame ends the
    /// block, so it lasts at most one of the thread's naps (20 µs doubling to
    /// MTCP_IDLE_SLEEP_US while nothing happens), then the waiter polls again.
    pub(super) nap: bool,
    /// That device says its link is down (memif: no peer): the naps may grow longer.
    link_down: bool,
}

impl Blocking {
    /// The device's wake-up fd to watch, and whether edge-triggered.
    pub(super) fn watch(&self) -> Option<(c_int, bool)> {
        self.wake.map(|w| (w, self.wake_edge))
    }
}

/// Work was found: this thread's next nap is the shortest again.
pub(super) fn naps_reset() {
    NAPS.with(|n| {
        if let Some(mut b) = n.get() {
            b.reset();
            n.set(Some(b));
        }
    });
}

/// This thread's next nap, at most `limit` (longer naps while the device's link is down).
fn nap(limit: Duration, link_down: bool) -> Duration {
    NAPS.with(|n| {
        let mut b = n.get().unwrap_or_else(|| match config() {
            Ok(c) => Backoff::new(c),
            Err(_) => Backoff::with_max(Duration::from_millis(2)),
        });
        let d = b.take(limit, link_down);
        n.set(Some(b));
        d
    })
}

/// Before a waiter blocks: `prepare`. `None`: poll again instead of blocking (after work, with
/// `last_work` now, so the caller spins; after a wait for the device's ring, without).
/// `key` is what the waiter waits for (other threads wake it when they deliver to it); `look`
/// says, under the table's lock, whether that is there already and what kind of wait it is.
/// `epoll`: the waiter blocks in its epoll instance (`block_in`), where the device's wake-up
/// fd may be watched edge-triggered (`Stack::wake_edge`); a ppoll watches it level-triggered.
pub(super) fn prepare_block(
    last_work: &mut Instant,
    key: WaitKey,
    look: impl FnOnce(&mut Table) -> Look,
    answer_in: Option<c_int>,
    epoll: bool,
) -> Result<Blocking, Again> {
    match prepare(key, look, answer_in, epoll) {
        Prep::Block(b) => Ok(b),
        Prep::Work(again) => {
            *last_work = Instant::now();
            naps_reset();
            Err(again)
        }
        // Waited for the device's ring: poll again, without the spin of a wake-up.
        Prep::TxWait => Err(Again::Poll),
    }
}

/// Why a thread about to block looks again instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Again {
    /// Poll again.
    Poll,
    /// The poll after arming the device's wake-up found work, and its events are delivered:
    /// the next look need not poll at once.
    Delivered,
}

/// What `prepare` found.
enum Prep {
    /// Nothing to do: block.
    Block(Blocking),
    /// The last poll found work, or what the thread waits for is there: look again (and
    /// spin, work is likely to follow).
    Work(Again),
    /// Frames wait for room in the device; the thread yielded or napped: poll again.
    TxWait,
}

const NOT_COUNTED: Blocking = Blocking {
    counted: false,
    watching: false,
    wake: None,
    wake_edge: false,
    until_timer: None,
    nap: false,
    link_down: false,
};

/// What a thread about to block found when it looked again, under the table's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Look {
    /// What it waits for is there (another thread's poll delivered it after the thread last
    /// looked): poll again instead of blocking.
    Ready,
    /// Block, watching the device.
    Wait,
    /// Block; the thread waits only for new connections (its epoll set holds listeners
    /// alone, or a blocking accept): it watches the device only if no thread watches it and
    /// no thread waits for data (`DATA_THREADS`); the thread whose poll takes a SYN wakes it.
    Connections,
}

/// Arms the device's wake-up fd and counts the thread as blocked, unless frames arrived
/// meanwhile or wait for room in the device, or what the thread waits for came meanwhile
/// (`look`): other threads' polls wake only the threads counted here, under the same lock.
///
/// `answer_in`: the application's event loop waits on that epoll set, and the data-path cache
/// may answer in the poll after arming (`Sockets::pump_with`).
fn prepare(
    key: WaitKey,
    look: impl FnOnce(&mut Table) -> Look,
    answer_in: Option<c_int>,
    epoll: bool,
) -> Prep {
    let Some(mut s) = shim() else {
        return Prep::Block(NOT_COUNTED);
    };
    let look = look(&mut s);
    if look == Look::Ready {
        return Prep::Work(Again::Poll);
    }
    let data = look == Look::Wait;
    let _ = WAITER.try_with(|w| {
        if w.1.replace(data) != data {
            if data {
                DATA_THREADS.fetch_add(1, Ordering::Relaxed);
            } else {
                DATA_THREADS.fetch_sub(1, Ordering::Relaxed);
            }
        }
    });
    let watch = data
        || (WATCHERS.load(Ordering::Relaxed) == 0 && DATA_THREADS.load(Ordering::Relaxed) == 0);
    let Some(st) = s.stack_mut() else {
        return Prep::Block(NOT_COUNTED);
    };
    if st.link().tx_pending() > 0 {
        // Frames wait for room in the device: poll again instead of blocking, after letting a
        // peer that shares this CPU (a memif process) drain the ring, or a short nap if the
        // device stays full (idle::TxWait).
        let taken = st.link().tx_taken();
        drop(s);
        TX_WAIT.with(|t| {
            let mut w = t.get().unwrap_or_default();
            w.wait(taken);
            t.set(Some(w));
        });
        return Prep::TxWait;
    }
    if !watch {
        // A data thread watches the device or comes back to poll it (or the keeper does, within
        // 10 ms): this one sleeps until a poll delivers to it.
        BLOCKED_WAITERS.fetch_add(1, Ordering::Relaxed);
        register(key);
        return Prep::Block(Blocking {
            counted: true,
            ..NOT_COUNTED
        });
    }
    // A device with a wake-up fd (a memif peer that takes part, af_packet, af_xdp): blocked
    // on it at once. (Napping instead, to spare a memif peer the system call of a wake-up,
    // cost more than it saved: most naps ended with nothing to do, each the CPU of a timer
    // wake-up; docs/architecture.md.)
    let cap = st.link().wake_cap();
    let wake = st.wake_fd();
    let wake_edge = epoll && wake.is_some() && st.wake_edge();
    // Other threads blocked on the device's wake-up keep it armed if this poll finds work.
    if wake.is_none() {
        st.note_sleep();
    } else if !s.arm_wake(WATCHERS.load(Ordering::Relaxed) > 0, answer_in) {
        // That poll may have taken frames for other threads' connections: their events go to
        // their epoll sets and blocked threads now (a blocking recv that retries and succeeds
        // would not poll again, and those threads' device wake-up is spent).
        s.deliver(true);
        return Prep::Work(Again::Delivered);
    }
    let Some(st) = s.stack_mut() else {
        return Prep::Block(NOT_COUNTED);
    };
    BLOCKED_WAITERS.fetch_add(1, Ordering::Relaxed);
    WATCHERS.fetch_add(1, Ordering::Relaxed);
    register(key);
    Prep::Block(Blocking {
        counted: true,
        watching: true,
        wake,
        wake_edge,
        until_timer: match (st.next_deadline().map(clock::until), cap) {
            (Some(t), Some(cap)) => Some(t.min(cap)),
            (t, cap) => t.or(cap),
        },
        nap: wake.is_none(),
        link_down: wake.is_none() && st.link().link_down(),
    })
}

/// Registers this thread as blocked, waiting for `key`. Under the table's lock: whoever makes
/// work for this thread after this point (under the same lock) writes its eventfd.
fn register(key: WaitKey) {
    let me = my_eventfd();
    if me >= 0 {
        if let Ok(mut v) = WAITER_FDS.lock() {
            v.push((me, key));
        }
    }
}

/// After a waiter blocked: unregisters it, drains its eventfd if it was written, consumes the
/// device's wake-up if the block returned for it (`woke`), and disarms the wake-up if no other
/// thread still watches it.
pub(super) fn after_block(notified: bool, woke: bool, b: &Blocking) {
    let me = my_eventfd();
    if notified {
        let mut v = 0u64;
        // SAFETY: draining this thread's own eventfd (non-blocking).
        unsafe { libc::read(me, (&mut v as *mut u64).cast(), 8) };
    }
    // Under the table's lock, as prepare_block counts and arms under it: the last thread out
    // disarms, and a thread blocking meanwhile finds the count and the armed state agreeing.
    let mut s = shim();
    let mut last = !b.counted;
    if b.watching {
        last = WATCHERS.fetch_sub(1, Ordering::Relaxed) == 1;
    }
    if b.counted {
        BLOCKED_WAITERS.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut v) = WAITER_FDS.lock() {
            if let Some(i) = v.iter().position(|&(fd, _)| fd == me) {
                v.swap_remove(i);
            }
        }
    }
    if woke || last {
        if let Some(st) = s.as_mut().and_then(|s| s.stack_mut()) {
            if woke {
                st.wake_seen(!last, b.wake_edge);
            }
            if last {
                st.disarm_wake();
            }
        }
    }
}

/// Blocks in this thread's epoll instance for at most `t`, with the caller's signal mask: until
/// its eventfd is written, the application's epoll set `set` (fd, uid) has kernel events, or a
/// frame arrives for which the kernel picks this thread among those blocked on the device's
/// wake-up `wake`. Returns the wait's result (events, 0, or -1 with errno), whether the
/// eventfd was written, whether the wake-up fd was readable, and whether `set` had kernel
/// events. Without an epoll instance of its own (EMFILE) the thread blocks at most a
/// millisecond on the device and its eventfd alone (and `set`'s kernel events count as
/// possible then; a device watched edge-triggered is not watched then: what woke the last
/// block may still be there, and ppoll would return at once).
pub(super) fn block_in(
    wake: Option<(c_int, bool)>,
    set: Option<(c_int, u64)>,
    t: Duration,
    sigmask: *const sigset_t,
) -> (c_int, bool, bool, bool) {
    let Ok(mut w) = WAITER.try_with(|w| w.0.get()) else {
        return (0, false, false, true);
    };
    let held = w.hold(wake, set);
    let _ = WAITER.try_with(|c| c.0.set(w));
    if !held {
        let watch = |fd: c_int| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let level = wake.and_then(|(fd, edge)| (!edge).then_some(fd));
        let mut p = [watch(level.unwrap_or(-1)), watch(w.efd)];
        let ts = clock::timespec(t.min(Duration::from_millis(1)));
        // SAFETY: a local array of two pollfds (a negative fd is ignored); the caller's mask.
        let r = unsafe { libc::ppoll(p.as_mut_ptr(), 2, &ts, sigmask) };
        return (r, w.efd >= 0 && p[1].revents != 0, p[0].revents != 0, true);
    }
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 3];
    let r = epoll_pwait2(w.ep, &mut evs, t, sigmask);
    let got = |tag| r > 0 && evs[..r as usize].iter().any(|e| e.u64 == tag);
    (r, got(TAG_EFD), got(TAG_WAKE), r < 0 || got(TAG_SET))
}

/// epoll_pwait2 (a timeout in nanoseconds: naps are microseconds); epoll_pwait with the timeout
/// rounded up to a millisecond on kernels before 5.11.
fn epoll_pwait2(
    ep: c_int,
    evs: &mut [libc::epoll_event],
    t: Duration,
    sigmask: *const sigset_t,
) -> c_int {
    static OLD_KERNEL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let n = evs.len() as c_int;
    if !OLD_KERNEL.load(Ordering::Relaxed) {
        let ts = clock::timespec(t);
        // SAFETY: epoll_pwait2(2) on our epoll instance, a local array of `n` events, the
        // caller's signal mask (the kernel's sigset size).
        let r = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                ep,
                evs.as_mut_ptr(),
                n,
                &ts,
                sigmask,
                crate::raw::NSIG_BYTES,
            )
        } as c_int;
        if r >= 0 || crate::errno::get() != libc::ENOSYS {
            return r;
        }
        OLD_KERNEL.store(true, Ordering::Relaxed);
    }
    let ms = t.as_micros().div_ceil(1000).min(c_int::MAX as u128) as c_int;
    // SAFETY: as above, with a timeout in milliseconds.
    unsafe { libc::epoll_pwait(ep, evs.as_mut_ptr(), n, ms, sigmask) }
}

/// How long to block: the earlier of the caller's deadline and the next stack timer (an hour
/// if neither), and on a device without a wake-up fd at most this thread's next nap.
pub(super) fn block_for(deadline: Option<Instant>, b: &Blocking) -> Duration {
    let mut wait = deadline
        .map(|d| d.saturating_duration_since(Instant::now()))
        .unwrap_or(Duration::from_secs(3600));
    if let Some(t) = b.until_timer {
        wait = wait.min(t);
    }
    if b.nap {
        wait = nap(wait, b.link_down);
    }
    wait
}

// ------------------------------------------------------------------ blocking socket calls

/// How one wait of a blocking socket call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Waited {
    /// Something may have changed: try the call again.
    Again,
    /// The call's deadline (SO_RCVTIMEO, SO_SNDTIMEO) passed.
    TimedOut,
    /// A signal handler of the application ran.
    Interrupted,
}

/// The application's signals, held back from the first wait of a blocking call to its end:
/// while the call polls the stack they stay pending, and the waits' ppoll, with the thread's
/// own mask, takes them. So a handler of the application's always runs inside a wait, and the
/// call ends with EINTR (or restarts) as Linux's would, whenever the signal came.
pub(super) struct SigHold {
    old: sigset_t,
}

impl SigHold {
    pub(super) fn new() -> SigHold {
        // SAFETY: all-zero sigset_t values, filled by the calls below.
        let (mut all, mut old): (sigset_t, sigset_t) = unsafe { (zeroed(), zeroed()) };
        // SAFETY: local sets; blocks every signal the thread may block (glibc keeps its own
        // internal ones), keeping the mask it had.
        unsafe {
            libc::sigfillset(&mut all);
            // A fault (a copy into a write-protected page a garbage collector watches) must
            // reach its handler at once: blocked, Linux would kill the process instead.
            for sig in FAULTS {
                libc::sigdelset(&mut all, sig);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        }
        SigHold { old }
    }

    /// The thread's own mask, for the waits' ppoll.
    pub(super) fn mask(&self) -> *const sigset_t {
        &self.old
    }
}

impl Drop for SigHold {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`; what arrived meanwhile is delivered now
        // if the ppoll did not take it.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// One wait of a blocking recv/send/accept on `key`: until a frame arrives from the device (and
/// the kernel picks this thread), another thread makes work for this one (its eventfd),
/// `kernel_fd` becomes readable (a dual listener's kernel side), the stack's next timer, or
/// `deadline`; a signal the thread's own mask lets through (`mask`, a [`SigHold`]'s) ends it.
/// On a device without a wake-up fd the wait is one of the thread's naps.
pub(super) fn wait_once(
    key: WaitKey,
    kernel_fd: Option<c_int>,
    deadline: Option<Instant>,
    mask: *const sigset_t,
    look: impl FnOnce(&mut Table) -> Look,
) -> Waited {
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return Waited::TimedOut;
    }
    let mut last_work = Instant::now();
    let Ok(b) = prepare_block(&mut last_work, key, look, None, kernel_fd.is_none()) else {
        return Waited::Again;
    };
    if kernel_fd.is_none() {
        let t = block_for(deadline, &b);
        let (r, notified, woke, _) = block_in(b.watch(), None, t, mask);
        let err = crate::errno::get();
        after_block(notified, woke, &b);
        return if r < 0 && err == libc::EINTR {
            Waited::Interrupted
        } else {
            Waited::Again
        };
    }
    let me = my_eventfd();
    let watch = |fd: Option<c_int>| libc::pollfd {
        fd: fd.unwrap_or(-1),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut p = [
        watch(kernel_fd),
        watch(b.wake),
        watch((me >= 0).then_some(me)),
    ];
    let ts = clock::timespec(block_for(deadline, &b));
    // SAFETY: a local array of three pollfds (negative fds are ignored); the caller's mask.
    let r = unsafe { libc::ppoll(p.as_mut_ptr(), 3, &ts, mask) };
    let err = crate::errno::get();
    after_block(p[2].revents != 0, p[1].revents != 0, &b);
    if r < 0 && err == libc::EINTR {
        return Waited::Interrupted;
    }
    Waited::Again
}

/// Signals a thread gets only for a fault of its own (SIGSEGV, ...): never the one that ended
/// a wait. Programs install handlers for them without SA_RESTART (Rust's runtime does, for
/// stack overflows; so do JVMs and Python's faulthandler).
const FAULTS: [c_int; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// Whether a blocking recv/send/accept that a signal handler interrupted starts again, as Linux
/// restarts it: when the handler was installed with SA_RESTART and the socket has no timeout
/// for the call (`timeout`). Which signal arrived is not known here, so the call restarts only
/// if every signal with a handler (faults aside) has SA_RESTART; otherwise it fails with EINTR.
pub(super) fn restarts(timeout: bool) -> bool {
    if timeout {
        return false;
    }
    (1..=libc::SIGRTMAX()).all(|sig| {
        if FAULTS.contains(&sig) {
            return true;
        }
        // SAFETY: all-zero is a valid sigaction to receive the current one.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reading the signal's disposition, changing nothing.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            return true;
        }
        let h = old.sa_sigaction;
        h == libc::SIG_DFL || h == libc::SIG_IGN || old.sa_flags & libc::SA_RESTART != 0
    })
}
