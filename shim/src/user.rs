//! The user-space sockets behind the hooks: flagged listeners, the stack's connections, and the
//! epoll instances that watch them. Everything here runs inside the hook's re-entrancy guard, so
//! libc calls made from here reach libc's own functions.
//!
//! - A listening TCP socket bound to a port in MTCP_PORTS on the wildcard address is a *dual
//!   listener*: the kernel socket keeps listening (so `redis-cli -h 127.0.0.1` still works) and
//!   the stack listens on the same port. Bound to MTCP_ADDR (which the kernel does not have), it
//!   is a stack-only listener. Bound to any other address, it stays the kernel's.
//! - Each connection accepted from the stack is identified by a real, small kernel fd: an
//!   eventfd, claimed in the fd table. Closing the fd closes the connection.
//! - An epoll instance the application adds one of our fds to keeps its kernel epoll (for its
//!   kernel fds, and the kernel side of dual listeners) and gets an `EpollSet` for our fds.
//!   `epoll_wait` polls the stack, reports our fds' events and the kernel's, spins
//!   MTCP_SPIN_US, then blocks on a private epoll holding the application's epoll fd and the
//!   device's wake-up fd, until the earlier of the application's timeout and the next stack timer.

use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use libc::{c_int, c_void, sockaddr, socklen_t};
use userstack::dpdk::DpdkLink;
use userstack::epoll::{EpollEvent, EpollSet};
use userstack::idle::{Backoff, TxWait};
use userstack::link::Link;
use userstack::{clock, Config, ConnId, Event, FastMap, Keepalive, Readiness, SockError, Stack};

use crate::fdtable::{self, FdState};

/// What one of our fds is.
enum Obj {
    Listener {
        port: u16,
        kernel: bool,
    },
    Conn {
        id: ConnId,
        nonblock: bool,
        keepalive: Option<Keepalive>,
        ka_on: bool,
    },
    Epoll {
        set: EpollSet,
        outer: c_int,
    },
}

/// One of our sockets (or epoll instances) and the fds that refer to it: more than one after
/// dup/dup2/dup3/F_DUPFD, as with the kernel's open file descriptions. The object goes when the
/// last of them is closed.
struct Entry {
    obj: Obj,
    fds: Vec<c_int>,
}

pub struct Shim {
    stack: Option<Stack<DpdkLink>>,
    /// Why the stack could not be started (said once on stderr; every flagged listen fails).
    failed: Option<String>,
    objs: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// A stack connection -> its entry's index.
    conn_fd: FastMap<ConnId, u32>,
    port_fds: FastMap<u16, Vec<c_int>>,
    /// Our fd -> the epoll fds watching it.
    watchers: FastMap<c_int, Vec<c_int>>,
    /// Sockets bound to a flagged port, waiting for listen(): fd -> (port, kernel side).
    binds: FastMap<c_int, (u16, bool)>,
    events: Vec<Event>,
    scratch: Vec<EpollEvent>,
}

static SHIM: OnceLock<Mutex<Shim>> = OnceLock::new();

/// When the stack was last polled (µs on the stack clock), by anyone.
static LAST_POLL: AtomicU64 = AtomicU64::new(0);
/// Application threads blocked in our epoll_wait/poll with the device's wake-up armed, or
/// napping on a device without one: they wake for frames (or within a nap) and for the stack's
/// next timer themselves, so the keeper has nothing to do.
static BLOCKED_WAITERS: AtomicUsize = AtomicUsize::new(0);
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
}

/// This thread's wake-up eventfd (-1 if it has none).
fn my_eventfd() -> c_int {
    WAKE_EFD.try_with(|e| e.0).unwrap_or(-1)
}
/// Set in a forked child (pthread_atfork). The child shares DPDK's memory with the parent and
/// may have copied the shim's lock while another thread held it: it must never touch either.
/// Closing an inherited stack fd in the child (Redis's BGSAVE child does) only drops the child's
/// copy of the fd-table entry; the parent's connection is untouched.
static IN_CHILD: AtomicBool = AtomicBool::new(false);

extern "C" fn after_fork_in_child() {
    IN_CHILD.store(true, Ordering::SeqCst);
}

fn in_child() -> bool {
    IN_CHILD.load(Ordering::Relaxed)
}

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
                let period = if BLOCKED_WAITERS.load(Ordering::Relaxed) > 0 {
                    KEEPER_PERIOD * 5
                } else {
                    KEEPER_PERIOD
                };
                std::thread::sleep(period);
                let now = clock::now();
                let idle_for =
                    (now.total_micros() as u64).saturating_sub(LAST_POLL.load(Ordering::Relaxed));
                if idle_for < KEEPER_PERIOD.as_micros() as u64 {
                    continue;
                }
                let blocked = BLOCKED_WAITERS.load(Ordering::Relaxed) > 0;
                let Some(lock) = SHIM.get() else { continue };
                // Never wait for the lock: whoever holds it is polling anyway.
                let Ok(mut s) = lock.try_lock() else { continue };
                // Blocked waiters wake for frames and for the timers they knew of when they
                // blocked; work another thread made since (a write left for the next poll, a
                // timer armed earlier than theirs) is the keeper's.
                let overdue = s
                    .stack
                    .as_ref()
                    .and_then(|st| st.next_deadline())
                    .is_some_and(|d| d <= now);
                if blocked && !overdue {
                    continue;
                }
                if s.pump() {
                    notify_waiters();
                }
            }
        });
    if let Err(e) = spawned {
        crate::shim_log!(
            "cannot start the keeper thread ({e}): the stack is polled only inside socket calls"
        );
    }
}

fn shim() -> MutexGuard<'static, Shim> {
    SHIM.get_or_init(|| {
        Mutex::new(Shim {
            stack: None,
            failed: None,
            objs: Vec::new(),
            free: Vec::new(),
            conn_fd: FastMap::default(),
            port_fds: FastMap::default(),
            watchers: FastMap::default(),
            binds: FastMap::default(),
            events: Vec::new(),
            scratch: Vec::new(),
        })
    })
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

/// The stack's configuration, read once.
fn config() -> &'static Result<Config, String> {
    static CFG: OnceLock<Result<Config, String>> = OnceLock::new();
    CFG.get_or_init(|| Config::from_env().map_err(|e| e.to_string()))
}

fn index_of(fd: c_int) -> Option<u32> {
    match fdtable::global()?.lookup(fd) {
        FdState::Ours(i) => Some(i),
        FdState::NotOurs => None,
    }
}

impl Shim {
    fn obj(&mut self, fd: c_int) -> Option<&mut Obj> {
        let i = index_of(fd)?;
        self.objs.get_mut(i as usize)?.as_mut().map(|e| &mut e.obj)
    }

    /// Makes `fd` ours, as a new object. Returns its index.
    fn insert(&mut self, fd: c_int, obj: Obj) -> Result<u32, c_int> {
        let table = fdtable::global_or_init().ok_or(libc::ENOMEM)?;
        let entry = Entry { obj, fds: vec![fd] };
        let i = match self.free.pop() {
            Some(i) => {
                self.objs[i as usize] = Some(entry);
                i
            }
            None => {
                self.objs.push(Some(entry));
                (self.objs.len() - 1) as u32
            }
        };
        if table.claim(fd, i).is_err() {
            self.objs[i as usize] = None;
            self.free.push(i);
            return Err(libc::EMFILE);
        }
        Ok(i)
    }

    /// Forgets `fd`. `None`: it was not ours. `Some(None)`: other fds still refer to its
    /// object. `Some(Some(obj))`: it was the last one; the object is the caller's to close.
    fn remove(&mut self, fd: c_int) -> Option<Option<Obj>> {
        let i = fdtable::global()?.release(fd)?;
        let slot = self.objs.get_mut(i as usize)?;
        let entry = slot.as_mut()?;
        entry.fds.retain(|&f| f != fd);
        if !entry.fds.is_empty() {
            return Some(None);
        }
        let obj = slot.take().map(|e| e.obj);
        self.free.push(i);
        Some(obj)
    }

    /// Tells every epoll set watching `fd` its readiness now.
    fn notify_watchers(&mut self, fd: c_int, r: Readiness) {
        let Some(eps) = self.watchers.get(&fd) else {
            return;
        };
        for &ep in eps {
            let Some(j) = index_of(ep) else { continue };
            if let Some(Some(Entry {
                obj: Obj::Epoll { set, .. },
                ..
            })) = self.objs.get_mut(j as usize)
            {
                set.notify(fd, r);
            }
        }
    }

    /// Tells the watchers of every fd of entry `i` that its readiness is `r`.
    #[inline]
    fn notify_entry_with(&mut self, i: u32, r: Readiness) {
        let n = self.objs[i as usize].as_ref().map_or(0, |e| e.fds.len());
        for k in 0..n {
            let fd = self.objs[i as usize].as_ref().map_or(-1, |e| e.fds[k]);
            self.notify_watchers(fd, r);
        }
    }

    /// Starts the stack on first use. On failure says why, once, and remembers it.
    fn ensure_stack(&mut self) -> Result<&mut Stack<DpdkLink>, c_int> {
        if self.stack.is_none() {
            if self.failed.is_some() {
                return Err(libc::EADDRNOTAVAIL);
            }
            let started = match config() {
                Err(e) => Err(e.clone()),
                Ok(cfg) => DpdkLink::start(cfg)
                    .map_err(|e| e.to_string())
                    .and_then(|link| {
                        Stack::new(link, cfg, clock::now()).map_err(|e| e.to_string())
                    }),
            };
            match started {
                Ok(s) => {
                    self.stack = Some(s);
                    start_keeper();
                }
                Err(e) => {
                    crate::shim_log!(
                        "cannot serve the ports in MTCP_PORTS: {e}; listen() on them fails"
                    );
                    self.failed = Some(e);
                    return Err(libc::EADDRNOTAVAIL);
                }
            }
        }
        Ok(self.stack.as_mut().expect("just started"))
    }

    /// Transmits the writes threads deferred (`defer_tx`), without receiving.
    fn flush_deferred(&mut self) {
        if let Some(st) = self.stack.as_mut() {
            flush(st);
        }
    }

    /// Polls the stack and tells every epoll set watching a changed fd.
    fn pump(&mut self) -> bool {
        let Some(stack) = self.stack.as_mut() else {
            return false;
        };
        let now = clock::now();
        LAST_POLL.store(now.total_micros() as u64, Ordering::Relaxed);
        let mut work = stack.poll(now);
        stack.take_events(&mut self.events);
        work |= !self.events.is_empty();
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            match *ev {
                Event::Conn(id, r) => {
                    if let Some(&i) = self.conn_fd.get(&id) {
                        self.notify_entry_with(i, r);
                    }
                }
                Event::Accept(port) => {
                    let n = self.port_fds.get(&port).map_or(0, Vec::len);
                    for k in 0..n {
                        let fd = self.port_fds[&port][k];
                        if let Some(r) = self.readiness(fd) {
                            self.notify_watchers(fd, r);
                        }
                    }
                }
            }
        }
        // Events for fds a thread blocked in our wait may be watching: that thread relies on
        // the device's wake-up, which this poll just took from it.
        if !events.is_empty() && BLOCKED_WAITERS.load(Ordering::Relaxed) > 0 {
            notify_waiters();
        }
        self.events = events;
        work
    }

    fn readiness(&self, fd: c_int) -> Option<Readiness> {
        self.readiness_at(index_of(fd)?)
    }

    fn readiness_at(&self, i: u32) -> Option<Readiness> {
        let stack = self.stack.as_ref()?;
        match &self.objs.get(i as usize)?.as_ref()?.obj {
            Obj::Listener { port, .. } => Some(Readiness {
                readable: stack.accept_queue_len(*port) > 0,
                ..Readiness::default()
            }),
            Obj::Conn { id, .. } => stack.readiness(*id).ok(),
            Obj::Epoll { .. } => None,
        }
    }
}

fn so_errno(e: SockError) -> c_int {
    e.errno()
}

// ------------------------------------------------------------------ listeners

/// bind(): remembers a stream socket bound to a flagged port. Returns `None` when the kernel
/// should do the bind as usual, `Some(result)` when we handle it (MTCP_ADDR, which the kernel
/// does not have).
pub fn bind(fd: c_int, ip: Ipv4Addr, port: u16) -> Option<Result<c_int, c_int>> {
    if in_child() {
        return None;
    }
    let cfg = match config() {
        Ok(c) => c,
        Err(e) => {
            let mut s = shim();
            if s.failed.is_none() {
                crate::shim_log!(
                    "cannot serve the ports in MTCP_PORTS: {e}; listen() on them fails"
                );
                s.failed = Some(e.clone());
            }
            // Let the kernel bind; listen() will fail loudly.
            s.binds.insert(fd, (port, true));
            return None;
        }
    };
    let mut s = shim();
    if ip.is_unspecified() {
        s.binds.insert(fd, (port, true));
        None
    } else if ip == cfg.addr.addr {
        s.binds.insert(fd, (port, false));
        Some(Ok(0))
    } else {
        // 127.0.0.1 or another kernel address: the kernel's alone, never reachable from the DPDK
        // port. The stack still runs (the process is configured for it), and answers a SYN for
        // this port with a reset, like any closed port.
        s.binds.remove(&fd);
        let _ = s.ensure_stack();
        None
    }
}

/// listen() on a socket bound to a flagged port: the stack listens too.
pub fn listen(fd: c_int, backlog: c_int) -> Option<Result<c_int, c_int>> {
    if in_child() {
        return None;
    }
    let mut s = shim();
    let (port, kernel) = *s.binds.get(&fd)?;
    if let Some(Obj::Listener { .. }) = s.obj(fd) {
        // listen() again: a new backlog.
        if kernel {
            // SAFETY: plain listen on the application's own socket.
            if unsafe { libc::listen(fd, backlog) } < 0 {
                return Some(Err(crate::errno::get()));
            }
        }
        let stack = s.stack.as_mut()?;
        return Some(
            stack
                .set_backlog(port, backlog.max(0) as usize)
                .map(|_| 0)
                .map_err(so_errno),
        );
    }
    let stack = match s.ensure_stack() {
        Ok(st) => st,
        Err(e) => return Some(Err(e)),
    };
    let mut opts = stack.default_options();
    opts.nodelay = false;
    if let Err(e) = stack.listen(port, backlog.max(0) as usize, opts) {
        return Some(Err(so_errno(e)));
    }
    if kernel {
        // SAFETY: plain listen on the application's own socket.
        if unsafe { libc::listen(fd, backlog) } < 0 {
            let e = crate::errno::get();
            if let Some(st) = s.stack.as_mut() {
                st.unlisten(port);
            }
            return Some(Err(e));
        }
    }
    if let Err(e) = s.insert(fd, Obj::Listener { port, kernel }) {
        return Some(Err(e));
    }
    s.binds.remove(&fd);
    s.port_fds.entry(port).or_default().push(fd);
    Some(Ok(0))
}

fn write_sockaddr(addr: SocketAddrV4, out: *mut sockaddr, len: *mut socklen_t) {
    if out.is_null() || len.is_null() {
        return;
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let size = std::mem::size_of::<libc::sockaddr_in>();
    // SAFETY: the caller's buffer holds *len bytes (accept/getpeername contract); we copy at
    // most that many and report the full size, as the kernel does (truncation).
    unsafe {
        let room = (*len as usize).min(size);
        std::ptr::copy_nonoverlapping(
            (&sin as *const libc::sockaddr_in).cast::<u8>(),
            out.cast::<u8>(),
            room,
        );
        *len = size as socklen_t;
    }
}

/// accept4() on a listener of ours: a stack connection if one is queued, else the kernel's.
/// `None`: hand the call to the kernel socket.
pub fn accept(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> Option<Result<c_int, c_int>> {
    if in_child() {
        return None;
    }
    loop {
        let mut s = shim();
        let Some(Obj::Listener { port, kernel }) = s.obj(fd) else {
            return None;
        };
        let (port, kernel) = (*port, *kernel);
        s.pump();
        let stack = s.stack.as_mut()?;
        match stack.accept(port) {
            Ok((id, peer)) => {
                let efd_flags = (flags & (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)) as c_int;
                // SAFETY: eventfd with valid flags (SOCK_* and EFD_* flags have the same values).
                let efd = unsafe { libc::eventfd(0, efd_flags) };
                if efd < 0 {
                    let e = crate::errno::get();
                    let _ = stack.abort(id);
                    return Some(Err(e));
                }
                let nonblock = flags & libc::SOCK_NONBLOCK != 0;
                let i = match s.insert(
                    efd,
                    Obj::Conn {
                        id,
                        nonblock,
                        keepalive: None,
                        ka_on: false,
                    },
                ) {
                    Ok(i) => i,
                    Err(e) => {
                        // SAFETY: our own fresh fd.
                        unsafe { libc::close(efd) };
                        if let Some(st) = s.stack.as_mut() {
                            let _ = st.abort(id);
                        }
                        return Some(Err(e));
                    }
                };
                s.conn_fd.insert(id, i);
                write_sockaddr(peer, addr, len);
                return Some(Ok(efd));
            }
            Err(SockError::WouldBlock) => {}
            Err(e) => return Some(Err(so_errno(e))),
        }
        drop(s);
        if kernel {
            // Non-blocking listener: the kernel answers (a connection or EAGAIN). Blocking: wait
            // for either kind without starving the stack's.
            // SAFETY: F_GETFL on the application's socket.
            let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if fl >= 0 && fl & libc::O_NONBLOCK != 0 {
                return None;
            }
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, 1) } > 0 {
                return None;
            }
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

// ------------------------------------------------------------------ connections

/// Whether `fd` is one of our connections (or listeners): the data ops only act then.
pub fn is_conn(fd: c_int) -> bool {
    if in_child() {
        return false;
    }
    matches!(shim().obj(fd), Some(Obj::Conn { .. }))
}

enum Io<'a> {
    Read(&'a mut [u8], bool),
    Write(&'a [u8]),
}

thread_local! {
    /// Whether this thread is between a wait of ours that returned events and its next wait:
    /// an event loop's iteration, at whose end the thread comes back to wait.
    static IN_LOOP: Cell<bool> = const { Cell::new(false) };
}

/// Connections with deferred writes beyond which a write transmits at once.
const DEFER_MAX: usize = 32;

/// Whether a write may leave its data for the thread's next wait to transmit, with the other
/// replies of the same event-loop iteration: one transmit burst (with af_packet or af_xdp, one
/// system call) per iteration instead of one per reply. Only inside an event loop's
/// iteration, only while no other thread is blocked (it would not see the data), and for at
/// most `DEFER_MAX` connections; the keeper thread sends whatever a thread that stops waiting
/// leaves behind. `MTCP_TX_DEFER=0` sends every write at once.
fn defer_tx(pending: usize) -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| config().as_ref().map_or(true, |c| c.tx_defer))
        && pending <= DEFER_MAX
        && IN_LOOP.with(Cell::get)
        && BLOCKED_WAITERS.load(Ordering::Relaxed) == 0
}

/// Transmits queued writes outside a wait. Frames the device had no room for then wait in the
/// link and need a poll soon; the keeper leaves that to threads blocked in our waits, so one of
/// them is woken (its block may have been timed before the frames were queued).
fn flush(stack: &mut Stack<DpdkLink>) {
    stack.flush(clock::now());
    if stack.link().tx_pending() > 0 && BLOCKED_WAITERS.load(Ordering::Relaxed) > 0 {
        notify_waiters();
    }
}

/// Wakes the threads blocked in our waits (each one's eventfd).
fn notify_waiters() {
    let Ok(fds) = WAITER_FDS.lock() else { return };
    for &fd in fds.iter() {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our own eventfd.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Ends this thread's event-loop iteration at a wait that is not ours (the kernel's fds only):
/// writes it deferred leave now, as that wait will not poll the stack.
fn leave_loop_for_kernel() {
    if IN_LOOP.replace(false) {
        shim().flush_deferred();
    }
}

/// recv/send on a connection of ours, blocking or not. `Ok(n)` or an errno.
fn io(fd: c_int, mut op: Io<'_>, dontwait: bool) -> Option<Result<usize, c_int>> {
    if in_child() {
        return None;
    }
    loop {
        let mut s = shim();
        let Some(Obj::Conn { id, nonblock, .. }) = s.obj(fd) else {
            return None;
        };
        let (id, nonblock) = (*id, *nonblock || dontwait);
        let stack = s.stack.as_mut()?;
        let r = match &mut op {
            Io::Read(buf, peek) => {
                let r = if *peek {
                    stack.peek(id, buf)
                } else {
                    stack.recv(id, buf)
                };
                if r == Err(SockError::WouldBlock) {
                    s.pump();
                    let stack = s.stack.as_mut()?;
                    if *peek {
                        stack.peek(id, buf)
                    } else {
                        stack.recv(id, buf)
                    }
                } else {
                    r
                }
            }
            Io::Write(data) => {
                let r = stack.send(id, data);
                if r.is_ok() && !defer_tx(stack.pending_writes()) {
                    flush(stack);
                }
                r
            }
        };
        match r {
            Ok(n) => return Some(Ok(n)),
            Err(SockError::WouldBlock) if nonblock => return Some(Err(libc::EAGAIN)),
            Err(SockError::WouldBlock) => {
                s.pump();
                drop(s);
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => return Some(Err(so_errno(e))),
        }
    }
}

pub fn recv(fd: c_int, buf: &mut [u8], flags: c_int) -> Option<Result<usize, c_int>> {
    io(
        fd,
        Io::Read(buf, flags & libc::MSG_PEEK != 0),
        flags & libc::MSG_DONTWAIT != 0,
    )
}

/// send: EPIPE raises SIGPIPE unless MSG_NOSIGNAL, as the kernel does.
pub fn send(fd: c_int, data: &[u8], flags: c_int) -> Option<Result<usize, c_int>> {
    let r = io(fd, Io::Write(data), flags & libc::MSG_DONTWAIT != 0)?;
    if r == Err(libc::EPIPE) && flags & libc::MSG_NOSIGNAL == 0 {
        // SAFETY: signalling the calling thread, as the kernel's send would.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGPIPE) };
    }
    Some(r)
}

/// close(): our bookkeeping first; the kernel then closes the fd itself (returns false if the fd
/// is not ours).
pub fn close(fd: c_int) -> bool {
    if in_child() {
        return fdtable::global().and_then(|t| t.release(fd)).is_some();
    }
    let mut s = shim();
    let listener_port = match s.obj(fd) {
        Some(Obj::Listener { port, .. }) => Some(*port),
        _ => None,
    };
    let epoll_entry = match s.obj(fd) {
        Some(Obj::Epoll { .. }) => index_of(fd),
        _ => None,
    };
    let Some(last) = s.remove(fd) else {
        return false;
    };
    if let (None, Some(i)) = (&last, epoll_entry) {
        // An epoll fd with dups left: the sets' watchers name it by number, so they name a dup
        // now (or its notifications were lost with the closed number).
        let other = s.objs[i as usize]
            .as_ref()
            .and_then(|e| e.fds.first().copied());
        if let Some(other) = other {
            for list in s.watchers.values_mut() {
                for e in list.iter_mut().filter(|e| **e == fd) {
                    *e = other;
                }
            }
        }
    }
    for ep in s.watchers.remove(&fd).unwrap_or_default() {
        if let Some(Obj::Epoll { set, .. }) = s.obj(ep) {
            let _ = set.delete(fd);
        }
    }
    if let Some(port) = listener_port {
        if let Some(v) = s.port_fds.get_mut(&port) {
            v.retain(|&f| f != fd);
        }
    }
    // Other fds (dups) still refer to the object: it stays.
    let Some(obj) = last else {
        return true;
    };
    match obj {
        Obj::Conn { id, .. } => {
            s.conn_fd.remove(&id);
            if let Some(stack) = s.stack.as_mut() {
                let _ = stack.close(id);
                flush(stack);
            }
        }
        Obj::Listener { port, .. } => {
            if s.port_fds.get(&port).is_none_or(Vec::is_empty) {
                s.port_fds.remove(&port);
                if let Some(stack) = s.stack.as_mut() {
                    stack.unlisten(port);
                }
            }
        }
        Obj::Epoll { outer, .. } => {
            for list in s.watchers.values_mut() {
                list.retain(|&e| e != fd);
            }
            if outer >= 0 {
                // SAFETY: our private epoll fd.
                unsafe { libc::close(outer) };
            }
        }
    }
    true
}

/// dup/dup2/dup3/F_DUPFD made `new` (a kernel fd: the dup of `old`'s identity fd): it now
/// refers to the same object as `old`, as a dup refers to the same open file description.
/// `Err(errno)`: it could not be recorded (the caller closes `new` and fails the call).
pub fn alias(old: c_int, new: c_int) -> Result<(), c_int> {
    let table = fdtable::global().ok_or(libc::EBADF)?;
    let FdState::Ours(i) = table.lookup(old) else {
        return Ok(());
    };
    if in_child() {
        // The child never touches the shim's state; its copy of the table is its own.
        return table.claim(new, i).map_err(|_| libc::EMFILE);
    }
    let mut s = shim();
    if table.claim(new, i).is_err() {
        return Err(libc::EMFILE);
    }
    let port = match s.objs.get_mut(i as usize) {
        Some(Some(e)) => {
            e.fds.push(new);
            match e.obj {
                Obj::Listener { port, .. } => Some(port),
                _ => None,
            }
        }
        _ => None,
    };
    if let Some(port) = port {
        s.port_fds.entry(port).or_default().push(new);
    }
    Ok(())
}

pub fn shutdown(fd: c_int, how: c_int) -> Option<Result<c_int, c_int>> {
    if in_child() {
        return None;
    }
    let mut s = shim();
    let Some(Obj::Conn { id, .. }) = s.obj(fd) else {
        return None;
    };
    let id = *id;
    if how != libc::SHUT_RD && how != libc::SHUT_WR && how != libc::SHUT_RDWR {
        return Some(Err(libc::EINVAL));
    }
    let stack = s.stack.as_mut()?;
    let mut result = Ok(0);
    if how != libc::SHUT_RD {
        if let Err(e) = stack.shutdown_write(id) {
            result = Err(so_errno(e));
        }
        flush(stack);
    }
    if how != libc::SHUT_WR {
        if let Err(e) = stack.shutdown_read(id) {
            result = Err(so_errno(e));
        }
    }
    // Readiness changed now (RDHUP, HUP, writable after SHUT_WR), not at the next packet: tell
    // the epoll sets, and wake threads blocked in our waits ("shutdown() from another thread
    // wakes the reader" is a common way to stop one).
    if let (Some(i), Ok(r)) = (index_of(fd), stack.readiness(id)) {
        s.notify_entry_with(i, r);
    }
    if BLOCKED_WAITERS.load(Ordering::Relaxed) > 0 {
        notify_waiters();
    }
    Some(result)
}

pub fn peer_or_local(
    fd: c_int,
    peer: bool,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> Option<Result<c_int, c_int>> {
    if in_child() {
        return None;
    }
    let mut s = shim();
    let cfg_addr = config().as_ref().ok().map(|c| c.addr.addr);
    match s.obj(fd)? {
        Obj::Conn { id, .. } => {
            let id = *id;
            let stack = s.stack.as_ref()?;
            let a = if peer {
                stack.peer_addr(id)
            } else {
                stack.local_addr(id)
            };
            match a {
                Ok(a) => {
                    write_sockaddr(a, addr, len);
                    Some(Ok(0))
                }
                Err(e) => Some(Err(so_errno(e))),
            }
        }
        Obj::Listener {
            port,
            kernel: false,
        } if !peer => {
            write_sockaddr(
                SocketAddrV4::new(cfg_addr.unwrap_or(Ipv4Addr::UNSPECIFIED), *port),
                addr,
                len,
            );
            Some(Ok(0))
        }
        _ => None,
    }
}

/// setsockopt on a connection: the options Redis and friends set take effect.
pub fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> Option<Result<c_int, c_int>> {
    if in_child() {
        return None;
    }
    let mut s = shim();
    let Some(Obj::Conn {
        id,
        keepalive,
        ka_on,
        ..
    }) = s.obj(fd)
    else {
        return None;
    };
    let id = *id;
    if val.is_null() || (len as usize) < std::mem::size_of::<c_int>() {
        return Some(Err(libc::EINVAL));
    }
    // SAFETY: the caller passes at least sizeof(int) readable bytes (checked above).
    let v = unsafe { std::ptr::read_unaligned(val.cast::<c_int>()) };
    let mut ka = keepalive.unwrap_or(Keepalive {
        idle: Duration::from_secs(7200),
        intvl: Duration::from_secs(75),
        cnt: 9,
    });
    let mut on = *ka_on;
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => on = v != 0,
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) if v > 0 => ka.idle = Duration::from_secs(v as u64),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) if v > 0 => {
            ka.intvl = Duration::from_secs(v as u64)
        }
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) if v > 0 => ka.cnt = v as u32,
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE | libc::TCP_KEEPINTVL | libc::TCP_KEEPCNT) => {
            return Some(Err(libc::EINVAL));
        }
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => {
            let stack = s.stack.as_mut()?;
            return Some(stack.set_nodelay(id, v != 0).map(|_| 0).map_err(so_errno));
        }
        // Accepted and without effect on the stack (buffer sizes are MTCP_RCVBUF/SNDBUF).
        _ => return Some(Ok(0)),
    }
    if let Some(Obj::Conn {
        keepalive, ka_on, ..
    }) = s.obj(fd)
    {
        *keepalive = Some(ka);
        *ka_on = on;
    }
    let stack = s.stack.as_mut()?;
    Some(
        stack
            .set_keepalive(clock::now(), id, on.then_some(ka))
            .map(|_| 0)
            .map_err(so_errno),
    )
}

pub fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> Option<Result<c_int, c_int>> {
    if in_child() {
        return None;
    }
    let mut s = shim();
    let Some(Obj::Conn { id, ka_on, .. }) = s.obj(fd) else {
        return None;
    };
    let (id, ka_on) = (*id, *ka_on);
    let stack = s.stack.as_mut()?;
    let v: c_int = match (level, name) {
        (libc::SOL_SOCKET, libc::SO_ERROR) => match stack.take_error(id) {
            Ok(e) => e.map_or(0, so_errno),
            Err(e) => return Some(Err(so_errno(e))),
        },
        (libc::SOL_SOCKET, libc::SO_TYPE) => libc::SOCK_STREAM,
        (libc::SOL_SOCKET, libc::SO_DOMAIN) => libc::AF_INET,
        (libc::SOL_SOCKET, libc::SO_PROTOCOL) => libc::IPPROTO_TCP,
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => c_int::from(ka_on),
        (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => 0,
        _ => return Some(Err(libc::ENOPROTOOPT)),
    };
    if val.is_null() || len.is_null() {
        return Some(Err(libc::EFAULT));
    }
    // SAFETY: the caller's buffer holds *len bytes; we write at most sizeof(int) of them.
    unsafe {
        let room = (*len as usize).min(std::mem::size_of::<c_int>());
        std::ptr::copy_nonoverlapping((&v as *const c_int).cast::<u8>(), val.cast::<u8>(), room);
        *len = room as socklen_t;
    }
    Some(Ok(0))
}

/// fcntl F_SETFL and ioctl FIONBIO: track O_NONBLOCK (the kernel applies it to the eventfd too).
pub fn set_nonblock(fd: c_int, on: bool) {
    if in_child() {
        return;
    }
    if let Some(Obj::Conn { nonblock, .. }) = shim().obj(fd) {
        *nonblock = on;
    }
}

/// ioctl FIONREAD.
pub fn fionread(fd: c_int) -> Option<Result<c_int, c_int>> {
    if in_child() {
        return None;
    }
    let mut s = shim();
    let Some(Obj::Conn { id, .. }) = s.obj(fd) else {
        return None;
    };
    let id = *id;
    let stack = s.stack.as_ref()?;
    Some(stack.recv_queue(id).map(|n| n as c_int).map_err(so_errno))
}

// ------------------------------------------------------------------ epoll

/// epoll_ctl when `epfd` or `fd` is ours. `None`: the kernel does it alone.
pub fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut libc::epoll_event,
) -> Option<Result<c_int, c_int>> {
    if in_child() {
        return None;
    }
    let mut s = shim();
    let (is_listener, kernel_side) = match s.obj(fd) {
        Some(Obj::Listener { kernel, .. }) => (true, *kernel),
        Some(Obj::Conn { .. }) => (false, false),
        _ => return None, // a kernel fd (maybe into an epoll of ours): the kernel's set
    };
    let _ = is_listener;
    // The epoll instance becomes ours the first time one of our fds joins it.
    if s.obj(epfd).is_none() {
        if op != libc::EPOLL_CTL_ADD {
            return Some(Err(libc::ENOENT));
        }
        // SAFETY: fstat-free check that epfd is an epoll instance: a zero-timeout wait on it.
        let probe = unsafe { libc::epoll_wait(epfd, std::ptr::null_mut(), 0, 0) };
        if probe < 0 && crate::errno::get() != libc::EINVAL {
            return Some(Err(crate::errno::get()));
        }
        if let Err(e) = s.insert(
            epfd,
            Obj::Epoll {
                set: EpollSet::new(),
                outer: -1,
            },
        ) {
            return Some(Err(e));
        }
    }
    let (events, data) = if event.is_null() {
        (0, 0)
    } else {
        // SAFETY: epoll_ctl's contract: event points to a valid epoll_event for ADD/MOD.
        let ev = unsafe { std::ptr::read_unaligned(event) };
        (ev.events, ev.u64)
    };
    if op != libc::EPOLL_CTL_DEL && event.is_null() {
        return Some(Err(libc::EFAULT));
    }
    let now = s.readiness(fd).unwrap_or_default();
    let r = match s.obj(epfd) {
        Some(Obj::Epoll { set, .. }) => {
            let r = match op {
                libc::EPOLL_CTL_ADD => set.add(fd, events, data, now),
                libc::EPOLL_CTL_MOD => set.modify(fd, events, data, now),
                libc::EPOLL_CTL_DEL => set.delete(fd),
                _ => return Some(Err(libc::EINVAL)),
            };
            // An fd added (or re-armed) while ready: a thread blocked on this set must look,
            // as Linux wakes it (an acceptor thread handing connections to workers' sets, a
            // worker re-arming an EPOLLONESHOT entry).
            if r.is_ok() && set.maybe_ready() && BLOCKED_WAITERS.load(Ordering::Relaxed) > 0 {
                notify_waiters();
            }
            r
        }
        _ => return Some(Err(libc::EINVAL)),
    };
    if let Err(e) = r {
        return Some(Err(e.errno()));
    }
    match op {
        libc::EPOLL_CTL_ADD => s.watchers.entry(fd).or_default().push(epfd),
        libc::EPOLL_CTL_DEL => {
            if let Some(v) = s.watchers.get_mut(&fd) {
                v.retain(|&e| e != epfd);
            }
        }
        _ => {}
    }
    drop(s);
    if kernel_side {
        // The kernel side of a dual listener is watched by the kernel epoll as well.
        // SAFETY: the application's own arguments.
        if unsafe { libc::epoll_ctl(epfd, op, fd, event) } < 0 {
            return Some(Err(crate::errno::get()));
        }
    }
    Some(Ok(0))
}

/// epoll_wait / epoll_pwait on an epoll instance of ours.
pub fn epoll_wait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    maxevents: c_int,
    timeout_ms: c_int,
    sigmask: *const libc::sigset_t,
) -> Option<Result<c_int, c_int>> {
    if in_child() {
        return None;
    }
    if maxevents <= 0 || events.is_null() {
        return Some(Err(libc::EINVAL));
    }
    let max = maxevents as usize;
    // The first pump below transmits what this thread deferred.
    let in_loop = IN_LOOP.replace(false);
    let deadline =
        (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
    let spin = config().as_ref().map(|c| c.spin).unwrap_or(Duration::ZERO);
    let mut last_work = Instant::now();
    let mut kernel_quiet = false;
    let mut kernel_first = false;
    loop {
        // Our fds first (or the kernel's, alternately, so neither kind starves the other).
        let mut n = 0usize;
        {
            let mut s = shim();
            if !matches!(s.obj(epfd), Some(Obj::Epoll { .. })) {
                // The kernel's epoll: what this thread deferred leaves now.
                if in_loop {
                    s.flush_deferred();
                }
                return None;
            }
            if s.pump() {
                last_work = Instant::now();
                naps_reset();
            }
            let mut out = std::mem::take(&mut s.scratch);
            // The set is taken out of its slot while it reads the other objects' readiness.
            let mut set = match s.obj(epfd) {
                Some(Obj::Epoll { set, .. }) => std::mem::take(set),
                _ => return None,
            };
            let room = if kernel_first { max.div_ceil(2) } else { max };
            set.wait(&mut out, room, |fd| s.readiness(fd));
            if let Some(Obj::Epoll { set: slot, .. }) = s.obj(epfd) {
                *slot = set;
            }
            for (i, e) in out.iter().enumerate().take(max) {
                // SAFETY: events has room for maxevents entries (epoll_wait contract).
                unsafe {
                    events.add(i).write(libc::epoll_event {
                        events: e.events,
                        u64: e.data,
                    })
                };
                n += 1;
            }
            s.scratch = out;
        }
        kernel_first = !kernel_first;
        // The kernel's fds, without blocking. Not right after a nap that timed out: its ppoll
        // saw none of them ready, and the next one returns at once if one is (a system call
        // less per nap of an idle thread on memif).
        if n < max && !std::mem::take(&mut kernel_quiet) {
            // SAFETY: the remaining room of the caller's array.
            let k = unsafe { libc::epoll_wait(epfd, events.add(n), (max - n) as c_int, 0) };
            if k < 0 {
                if n == 0 {
                    return Some(Err(crate::errno::get()));
                }
            } else {
                n += k as usize;
            }
        }
        if n > 0 {
            IN_LOOP.set(true);
            return Some(Ok(n as c_int));
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Some(Ok(0));
        }
        if now.duration_since(last_work) < spin {
            continue;
        }
        // Block: on a private epoll holding the application's epoll fd and the wake-up fd.
        let Some(b) = prepare_block(&mut last_work) else {
            continue;
        };
        let wake = b.wake;
        let outer = {
            let mut s = shim();
            match s.obj(epfd) {
                Some(Obj::Epoll { outer, .. }) => {
                    if *outer < 0 {
                        *outer = private_epoll(epfd, wake);
                    }
                    *outer
                }
                _ => {
                    // Another thread closed the epoll fd meanwhile.
                    drop(s);
                    after_block(false, &b);
                    return None;
                }
            }
        };
        // Naps are microseconds, below epoll_wait's resolution: ppoll on the private epoll
        // (readable while it has events) for every block.
        // Without a private epoll (it could not be created: EMFILE) the application's kernel
        // fds and the device are not watched: block no longer than a short nap.
        let mut t = block_for(deadline, &b);
        if outer < 0 {
            t = t.min(Duration::from_millis(1));
        }
        let (r, notified) = block_on(outer, t, sigmask);
        let err = crate::errno::get();
        after_block(notified, &b);
        if r < 0 && err == libc::EINTR {
            return Some(Err(libc::EINTR));
        }
        if woke_for_work(&b, r) {
            last_work = Instant::now();
        }
        kernel_quiet = b.nap && r == 0;
    }
}

/// What a waiter blocks on, besides the application's own fds.
struct Blocking {
    /// Counted in BLOCKED_WAITERS (there is a stack): `after_block` uncounts it.
    counted: bool,
    /// The device's wake-up fd, if it has one.
    wake: Option<c_int>,
    /// Time to the stack's next timer.
    until_timer: Option<Duration>,
    /// The stack runs over a device without a wake-up fd (net_memif): no frame ends the
    /// block, so it lasts at most one of the thread's naps (20 µs doubling to
    /// MTCP_IDLE_SLEEP_US while nothing happens), then the waiter polls again.
    nap: bool,
    /// That device says its link is down (memif: no peer): the naps may grow longer.
    link_down: bool,
}

/// Whether a waiter that blocked with `b` and got `r` from the blocking call goes back to
/// spinning (MTCP_SPIN_US): after a wake-up, yes (work is likely to follow); after a nap that
/// timed out, no: it polls once and naps again, or an idle thread on memif would spin after
/// every nap (2.5-3% of a core instead of well under 1%).
fn woke_for_work(b: &Blocking, r: c_int) -> bool {
    !b.nap || r > 0
}

thread_local! {
    /// This thread's naps on a device without a wake-up fd. It outlives each call: an idle
    /// application calls epoll_wait again and again (Redis: every 100 ms or sooner), and
    /// starting each call over at 20 µs doubled the wake-ups of an idle Redis on memif
    /// (~1,100 a second instead of ~500).
    static NAPS: std::cell::Cell<Option<Backoff>> = const { std::cell::Cell::new(None) };
    /// This thread's wait for a full transmit ring (`prepare_block`).
    static TX_WAIT: std::cell::Cell<Option<TxWait>> = const { std::cell::Cell::new(None) };
}

/// Work was found: this thread's next nap is the shortest again.
fn naps_reset() {
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
fn prepare_block(last_work: &mut Instant) -> Option<Blocking> {
    match prepare() {
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

/// Arms the device's wake-up fd and counts the thread as blocked, unless frames arrived
/// meanwhile or wait for room in the device.
fn prepare() -> Prep {
    let mut s = shim();
    let Some(st) = s.stack.as_mut() else {
        return Prep::Block(Blocking {
            counted: false,
            wake: None,
            until_timer: None,
            nap: false,
            link_down: false,
        });
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
        return Prep::Work;
    }
    let wake = st.wake_fd();
    BLOCKED_WAITERS.fetch_add(1, Ordering::Relaxed);
    // Registered under the shim's lock: whoever makes work for this thread after this point
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

/// What `prepare_block` found.
enum Prep {
    /// Nothing to do: block.
    Block(Blocking),
    /// The last poll found work: poll again (and spin, work is likely to follow).
    Work,
    /// Frames wait for room in the device; the thread yielded or napped: poll again.
    TxWait,
}

/// After a waiter blocked: unregisters it, drains its eventfd if it was written, and disarms
/// the device's wake-up if no other thread is still blocked on it.
fn after_block(notified: bool, b: &Blocking) {
    let me = my_eventfd();
    if notified {
        let mut v = 0u64;
        // SAFETY: draining this thread's own eventfd (non-blocking).
        unsafe { libc::read(me, (&mut v as *mut u64).cast(), 8) };
    }
    // Under the shim's lock, as prepare_block counts and arms under it: the last thread out
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
        if let Some(st) = s.stack.as_mut() {
            st.disarm_wake();
        }
    }
}

/// Blocks on `fd` (readable) and this thread's wake-up eventfd for at most `t`, with the
/// caller's signal mask. Returns ppoll's result and whether the eventfd was written.
fn block_on(fd: c_int, t: Duration, sigmask: *const libc::sigset_t) -> (c_int, bool) {
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
fn block_for(deadline: Option<Instant>, b: &Blocking) -> Duration {
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
fn private_epoll(epfd: c_int, wake: Option<c_int>) -> c_int {
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

// ------------------------------------------------------------------ poll / select

/// How poll sees one of the caller's entries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PollKind {
    /// The kernel's fd (or negative: ignored).
    Kernel,
    /// A stack connection or stack-only listener: the kernel must not look at its identity fd.
    Stack,
    /// A dual listener: the stack's accept queue and the kernel socket both count.
    Both,
}

/// Readiness as poll bits, limited to what was asked (errors and hang-ups always).
fn poll_bits(r: Readiness, events: i16) -> i16 {
    let b = userstack::epoll::bits(r) as i32;
    let mut rev = b & (events as i32 | libc::POLLERR as i32 | libc::POLLHUP as i32);
    if r.readable && events & libc::POLLRDNORM != 0 {
        rev |= libc::POLLRDNORM as i32;
    }
    if r.writable && events & libc::POLLWRNORM != 0 {
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
    sigmask: *const libc::sigset_t,
) -> Option<Result<c_int, c_int>> {
    if in_child() {
        return None;
    }
    let kinds: Vec<PollKind> = {
        let mut s = shim();
        fds.iter()
            .map(|p| match s.obj(p.fd) {
                Some(Obj::Conn { .. }) | Some(Obj::Listener { kernel: false, .. }) => {
                    PollKind::Stack
                }
                Some(Obj::Listener { kernel: true, .. }) => PollKind::Both,
                _ => PollKind::Kernel,
            })
            .collect()
    };
    if kinds.iter().all(|k| *k == PollKind::Kernel) {
        leave_loop_for_kernel();
        return None;
    }
    // The first pump below transmits what this thread deferred.
    IN_LOOP.set(false);
    let deadline = timeout.map(|t| Instant::now() + t);
    let spin = config().as_ref().map(|c| c.spin).unwrap_or(Duration::ZERO);
    let mut last_work = Instant::now();
    let mut mine = vec![0i16; fds.len()];
    loop {
        {
            let mut s = shim();
            if s.pump() {
                last_work = Instant::now();
                naps_reset();
            }
            for (i, p) in fds.iter().enumerate() {
                mine[i] = match kinds[i] {
                    PollKind::Kernel => 0,
                    _ => s.readiness(p.fd).map_or(0, |r| poll_bits(r, p.events)),
                };
            }
        }
        // The kernel's fds, without blocking; ours hidden from it.
        for (p, k) in fds.iter_mut().zip(&kinds) {
            if *k == PollKind::Stack {
                p.fd = !p.fd;
            }
        }
        // SAFETY: the caller's array of fds.len() entries.
        let k = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        let err = crate::errno::get();
        for ((p, kind), m) in fds.iter_mut().zip(&kinds).zip(&mine) {
            if *kind == PollKind::Stack {
                p.fd = !p.fd;
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
            IN_LOOP.set(true);
            return Some(Ok(n as c_int));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(Ok(0));
        }
        if last_work.elapsed() < spin {
            continue;
        }
        let Some(b) = prepare_block(&mut last_work) else {
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
        let me = my_eventfd();
        for fd in [wake, (me >= 0).then_some(me)].into_iter().flatten() {
            blk.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let ts = clock::timespec(block_for(deadline, &b));
        // SAFETY: a local array; the caller's signal mask while blocked.
        let r = unsafe { libc::ppoll(blk.as_mut_ptr(), blk.len() as libc::nfds_t, &ts, sigmask) };
        let err = crate::errno::get();
        let notified = me >= 0 && blk.last().is_some_and(|p| p.fd == me && p.revents != 0);
        after_block(notified, &b);
        if r < 0 && err == libc::EINTR {
            return Some(Err(libc::EINTR));
        }
        if woke_for_work(&b, r) {
            last_work = Instant::now();
        }
    }
}
