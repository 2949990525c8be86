//! Waiting: how a thread blocked in our epoll_wait/poll sleeps and who wakes it.
//!
//! A waiter polls the stack, spins MTCP_SPIN_US after work, then blocks (ppoll) on what can
//! make work for it: its own kernel fds (through a private epoll holding the application's
//! epoll fd, or the poll array), the device's wake-up fd, and its own eventfd, which other
//! threads write when they make work for it. On a device without a wake-up fd (net_memif) the
//! block is a nap (20 µs doubling to MTCP_IDLE_SLEEP_US). While frames wait for room in the
//! device's ring it does not block at all (`TxWait`).
//!
//! Writes inside an event-loop iteration may leave together at its end (`defer_tx`): one
//! transmit burst per iteration.

use std::cell::Cell;
use std::mem::zeroed;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use libc::{c_int, sigset_t};
use userstack::clock;
use userstack::idle::{Backoff, TxWait};
use userstack::link::Link;

use super::{config, in_child, shim, Table};

/// Application threads blocked in our epoll_wait/poll with the device's wake-up armed, or
/// napping on a device without one: they wake for frames (or within a nap) and for the stack's
/// next timer themselves, so the keeper has nothing to do.
pub(super) static BLOCKED_WAITERS: AtomicUsize = AtomicUsize::new(0);
/// The eventfds of the threads blocked in our waits, one each: `notify_waiters` writes them all
/// when another thread made work for them (its poll delivered events, an epoll_ctl queued an
/// entry, a shutdown, frames left waiting). One eventfd shared by all waiters could not wake
/// several: the first to drain it hid the wake-up from the others.
static WAITER_FDS: Mutex<Vec<c_int>> = Mutex::new(Vec::new());
/// Eventfds of threads that exited, for the next thread that blocks.
static SPARE_FDS: Mutex<Vec<c_int>> = Mutex::new(Vec::new());

/// A thread's own wake-up eventfd, handed back to `SPARE_FDS` when the thread exits.
struct ThreadEventfd(c_int);

impl Drop for ThreadEventfd {
    fn drop(&mut self) {
        // (In a forked child the lock may have been copied held: leave it alone.)
        if self.0 >= 0 && !in_child() {
            if let Ok(mut v) = SPARE_FDS.lock() {
                v.push(self.0);
            }
        }
    }
}

thread_local! {
    static WAKE_EFD: ThreadEventfd = ThreadEventfd({
        let spare = SPARE_FDS.lock().ok().and_then(|mut v| v.pop());
        // SAFETY: plain eventfd creation.
        spare.unwrap_or_else(|| unsafe {
            libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
        })
    });
    /// Whether this thread is between a wait of ours that returned events and its next wait:
    /// an event loop's iteration, at whose end the thread comes back to wait.
    pub(super) static IN_LOOP: Cell<bool> = const { Cell::new(false) };
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
    WAKE_EFD.try_with(|e| e.0).unwrap_or(-1)
}

/// Wakes the threads blocked in our waits (each one's eventfd).
pub(super) fn notify_waiters() {
    let Ok(fds) = WAITER_FDS.lock() else { return };
    for &fd in fds.iter() {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our own eventfd.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

// ------------------------------------------------------------------ deferred writes

/// Connections with deferred writes beyond which a write transmits at once.
const DEFER_MAX: usize = 32;

/// Whether a write may leave its data for the thread's next wait to transmit, with the other
/// replies of the same event-loop iteration: one transmit burst (with af_packet or af_xdp, one
/// system call) per iteration instead of one per reply. Only inside an event loop's
/// iteration, only while no other thread is blocked (it would not see the data), and for at
/// most `DEFER_MAX` connections; the keeper thread sends whatever a thread that stops waiting
/// leaves behind. `MTCP_TX_DEFER=0` sends every write at once.
pub(super) fn defer_tx(pending: usize) -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| config().as_ref().map_or(true, |c| c.tx_defer))
        && pending <= DEFER_MAX
        && IN_LOOP.with(Cell::get)
        && BLOCKED_WAITERS.load(Ordering::Relaxed) == 0
}

/// Ends this thread's event-loop iteration at a wait that is not ours (the kernel's fds only):
/// writes it deferred leave now, as that wait will not poll the stack.
pub(super) fn leave_loop_for_kernel() {
    if IN_LOOP.replace(false) {
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
    /// The device's wake-up fd, if it has one.
    pub(super) wake: Option<c_int>,
    /// Time to the stack's next timer.
    until_timer: Option<Duration>,
    /// The stack runs over a device without a wake-up fd (net_memif): no frame ends the
    /// block, so it lasts at most one of the thread's naps (20 µs doubling to
    /// MTCP_IDLE_SLEEP_US while nothing happens), then the waiter polls again.
    pub(super) nap: bool,
    /// That device says its link is down (memif: no peer): the naps may grow longer.
    link_down: bool,
}

/// Whether a waiter that blocked with `b` and got `r` from the blocking call goes back to
/// spinning (MTCP_SPIN_US): after a wake-up, yes (work is likely to follow); after a nap that
/// timed out, no: it polls once and naps again, or an idle thread on memif would spin after
/// every nap (2.5-3% of a core instead of well under 1%).
pub(super) fn woke_for_work(b: &Blocking, r: c_int) -> bool {
    !b.nap || r > 0
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
/// `ready` says, under the table's lock, whether what the waiter waits for is there already
/// (another thread's poll delivered it after the waiter last looked and before it registered).
pub(super) fn prepare_block(
    last_work: &mut Instant,
    ready: impl FnOnce(&mut Table) -> bool,
) -> Option<Blocking> {
    match prepare(ready) {
        Prep::Block(b) => Some(b),
        Prep::Work => {
            *last_work = Instant::now();
            naps_reset();
            None
        }
        // Waited for the device's ring: poll again, without the spin of a wake-up.
        Prep::TxWait => None,
    }
}

/// What `prepare` found.
enum Prep {
    /// Nothing to do: block.
    Block(Blocking),
    /// The last poll found work: poll again (and spin, work is likely to follow).
    Work,
    /// Frames wait for room in the device; the thread yielded or napped: poll again.
    TxWait,
}

const NOT_COUNTED: Blocking = Blocking {
    counted: false,
    wake: None,
    until_timer: None,
    nap: false,
    link_down: false,
};

/// Arms the device's wake-up fd and counts the thread as blocked, unless frames arrived
/// meanwhile or wait for room in the device, or what the thread waits for came meanwhile
/// (`ready`): other threads' polls wake only the threads counted here, under the same lock.
fn prepare(ready: impl FnOnce(&mut Table) -> bool) -> Prep {
    let Some(mut s) = shim() else {
        return Prep::Block(NOT_COUNTED);
    };
    if ready(&mut s) {
        return Prep::Work;
    }
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
    // Other threads blocked on the device's wake-up keep it armed if this poll finds work.
    if !st.arm_wake(clock::now(), BLOCKED_WAITERS.load(Ordering::Relaxed) > 0) {
        // That poll may have taken frames for other threads' connections: their events go to
        // their epoll sets and blocked threads now (a blocking recv that retries and succeeds
        // would not poll again, and those threads' device wake-up is spent).
        s.pump();
        return Prep::Work;
    }
    let wake = st.wake_fd();
    BLOCKED_WAITERS.fetch_add(1, Ordering::Relaxed);
    // Registered under the table's lock: whoever makes work for this thread after this point
    // (under the same lock) writes its eventfd.
    let me = my_eventfd();
    if me >= 0 {
        if let Ok(mut v) = WAITER_FDS.lock() {
            v.push(me);
        }
    }
    Prep::Block(Blocking {
        counted: true,
        wake,
        until_timer: st.next_deadline().map(clock::until),
        nap: wake.is_none(),
        link_down: wake.is_none() && st.link().link_down(),
    })
}

/// After a waiter blocked: unregisters it, drains its eventfd if it was written, and disarms
/// the device's wake-up if no other thread is still blocked on it.
pub(super) fn after_block(notified: bool, b: &Blocking) {
    let me = my_eventfd();
    if notified {
        let mut v = 0u64;
        // SAFETY: draining this thread's own eventfd (non-blocking).
        unsafe { libc::read(me, (&mut v as *mut u64).cast(), 8) };
    }
    // Under the table's lock, as prepare_block counts and arms under it: the last thread out
    // disarms, and a thread blocking meanwhile finds the count and the armed state agreeing.
    let mut s = shim();
    let mut last = true;
    if b.counted {
        last = BLOCKED_WAITERS.fetch_sub(1, Ordering::Relaxed) == 1;
        if let Ok(mut v) = WAITER_FDS.lock() {
            if let Some(i) = v.iter().position(|&fd| fd == me) {
                v.swap_remove(i);
            }
        }
    }
    if last {
        if let Some(st) = s.as_mut().and_then(|s| s.stack_mut()) {
            st.disarm_wake();
        }
    }
}

/// Blocks on `fd` (readable) and this thread's wake-up eventfd for at most `t`, with the
/// caller's signal mask. Returns ppoll's result and whether the eventfd was written.
pub(super) fn block_on(fd: c_int, t: Duration, sigmask: *const libc::sigset_t) -> (c_int, bool) {
    let me = my_eventfd();
    let mut p = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: me,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let n = if me >= 0 { 2 } else { 1 };
    // SAFETY: a local array of `n` pollfds; the caller's signal mask while blocked.
    let r = unsafe { libc::ppoll(p.as_mut_ptr(), n, &clock::timespec(t), sigmask) };
    (r, me >= 0 && p[1].revents != 0)
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

/// A private epoll instance for blocking on the application's epoll fd (data 0) and the
/// device's wake-up fd (1); the thread's own eventfd is polled beside it (`block_on`).
pub(super) fn private_epoll(epfd: c_int, wake: Option<c_int>) -> c_int {
    // SAFETY: creating and filling our own epoll instance.
    unsafe {
        let o = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        if o < 0 {
            return o;
        }
        for (fd, tag) in [(Some(epfd), 0u64), (wake, 1)] {
            if let Some(fd) = fd {
                let mut ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: tag,
                };
                libc::epoll_ctl(o, libc::EPOLL_CTL_ADD, fd, &mut ev);
            }
        }
        o
    }
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

/// One wait of a blocking recv/send/accept: until a frame arrives from the device, another
/// thread makes work for this one (its eventfd), `kernel_fd` becomes readable (a dual
/// listener's kernel side), the stack's next timer, or `deadline`; a signal the thread's own
/// mask lets through (`mask`, a [`SigHold`]'s) ends it. On a device without a wake-up fd the
/// wait is one of the thread's naps.
pub(super) fn wait_once(
    kernel_fd: Option<c_int>,
    deadline: Option<Instant>,
    mask: *const sigset_t,
    ready: impl FnOnce(&mut Table) -> bool,
) -> Waited {
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return Waited::TimedOut;
    }
    let mut last_work = Instant::now();
    let Some(b) = prepare_block(&mut last_work, ready) else {
        return Waited::Again;
    };
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
    after_block(p[2].revents != 0, &b);
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
