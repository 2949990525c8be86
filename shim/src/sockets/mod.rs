//! The shim's sockets: what each fd of ours is and what the calls on it mean, with Linux's
//! semantics, over the user-space stack. This module knows no global state and makes no system
//! call: it is generic over the stack's [`Link`], and what it needs of the kernel or of the
//! process (a new identity fd, the kernel side of a dual listener, starting the stack, a line
//! on stderr) it asks of its [`Host`]. The runtime (`crate::runtime`) holds the process's one
//! table behind a lock and adds what blocks (waits, naps, wake-ups between threads); unit
//! tests drive a table over `MemLink` against a second stack playing the client.
//!
//! - A listening TCP socket bound to a port in MTCP_PORTS on the wildcard address is a *dual
//!   listener*: the kernel socket keeps listening (so `redis-cli -h 127.0.0.1` still works) and
//!   the stack listens on the same port. Bound to MTCP_ADDR (which the kernel does not have), it
//!   is a stack-only listener. Bound to any other address, it stays the kernel's.
//! - An AF_INET6 socket bound to `::` with IPV6_V6ONLY off takes IPv4 clients as well, as on
//!   Linux: a dual listener too, whose stack connections are AF_INET6 with v4-mapped addresses
//!   (`::ffff:a.b.c.d`); `::ffff:MTCP_ADDR` is stack-only, as MTCP_ADDR is. `::` with
//!   IPV6_V6ONLY on asks for IPv6 alone, which the stack does not speak: its listen() fails,
//!   said once. Other IPv6 addresses (`::1`, ...) stay the kernel's.
//! - Each connection accepted from the stack is identified by a real, small kernel fd (the
//!   host's identity fd: a kernel TCP socket that is never connected, which also keeps the
//!   connection's socket options; see `options`), claimed in the fd table. Closing the fd
//!   closes the connection.
//! - An epoll instance the application adds one of our fds to keeps its kernel epoll (for its
//!   kernel fds, and the kernel side of dual listeners) and gets an [`EpollSet`] for our fds.
//! - dup/dup2/dup3/F_DUPFD give an object more fds; it goes with the last of them.
//!
//! Answers follow one convention ([`Answer`]): `None` means "not ours, the kernel answers",
//! `Some(Err(errno))` fails the call as Linux would.

mod cache;
mod conn;
mod connect;
mod epoll;
pub mod fork;
mod listen;
pub mod options;
#[cfg(test)]
mod tests;

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use libc::c_int;
use userstack::epoll::{EpollEvent, EpollSet};
use userstack::link::Link;
use userstack::{Config, ConnId, Event, FastMap, Readiness, SockError, Stack};

use crate::cache::Responder as _;
use crate::fdtable::{FdState, FdTable};
pub use crate::outcome::Answer;

pub use conn::Io;
pub use epoll::{Ctl, Pass};
pub use listen::Accepted;
pub use options::{ConnOpts, SockOpt};

/// What the socket table needs from the process it runs in.
pub trait Host<L: Link> {
    /// Starts the stack (called once, when a flagged port is first listened on, or, on a
    /// device processes share, when a listener is first served).
    fn start(&mut self, cfg: &Config) -> Result<Stack<L>, String>;
    /// What can be checked of `cfg` without starting (permissions, the interface exists), for
    /// a listen() whose stack starts later.
    fn preflight(&mut self, cfg: &Config) -> Result<(), String>;
    /// The stack just started (the runtime starts its keeper thread).
    fn started(&mut self) {}
    /// A bell for epoll set `epfd`, which joins another epoll set: an eventfd in `epfd`'s kernel
    /// instance whose entry no caller ever sees (the runtime drops it from every kernel
    /// result), not readable yet. -1 if none can be made.
    fn bell(&mut self, epfd: c_int) -> c_int {
        let _ = epfd;
        -1
    }
    /// Makes `bell` readable (`on`) or not.
    fn ring(&mut self, bell: c_int, on: bool) {
        let _ = (bell, on);
    }
    /// Worker processes sharing the device: which flows are this stack's now (`serving`: the
    /// process has listeners). Called when the stack starts serving listeners and then
    /// periodically; a process alone on its device has nothing to do.
    fn steer(&mut self, stack: &mut Stack<L>, serving: bool) {
        let _ = (stack, serving);
    }
    /// One line for the user, on stderr.
    fn say(&mut self, msg: &str);
    /// The stack clock.
    fn now(&self) -> smoltcp::time::Instant;
    /// The stack clock, for a poll of the stack (the runtime notes when the stack was last
    /// polled).
    fn poll_time(&mut self) -> smoltcp::time::Instant {
        self.now()
    }
    /// listen() on the kernel side of a dual listener.
    fn kernel_listen(&mut self, fd: c_int, backlog: c_int) -> Result<(), c_int>;
    /// shutdown() of the kernel side of a dual listener.
    fn kernel_shutdown(&mut self, fd: c_int, how: c_int) -> Result<(), c_int>;
    /// Whether the kernel socket `fd` (a dual listener's kernel side) is readable now.
    fn kernel_readable(&mut self, fd: c_int) -> bool;
    /// A new fd to stand for a connection: a kernel TCP socket of `family`, never connected,
    /// that keeps its options (`flags`: SOCK_NONBLOCK, SOCK_CLOEXEC; `inherit`: the options set
    /// on the listener that its accepted sockets inherit).
    fn identity_fd(
        &mut self,
        flags: c_int,
        family: Family,
        inherit: &[SockOpt],
    ) -> Result<c_int, c_int>;
    /// The options of listener `fd` (a kernel socket) that its accepted sockets inherit on
    /// Linux, those not at their default.
    fn listener_options(&mut self, fd: c_int, family: Family) -> Vec<SockOpt>;
    /// The options of kernel socket `fd` that a connection connect() makes of it takes:
    /// `set`, the options the application set on it (all it set since socket(), when that is
    /// known), read back; otherwise (`None`) those an accepted socket would inherit that are
    /// not at their default, and TCP_SYNCNT.
    fn connect_options(
        &mut self,
        fd: c_int,
        family: Family,
        set: Option<&[(c_int, c_int)]>,
    ) -> Vec<SockOpt>;
    /// The value of int option (`level`, `name`) on a fresh TCP socket of `family` (the
    /// system's default: TCP_SYNCNT is tcp_syn_retries).
    fn default_int(&mut self, family: Family, level: c_int, name: c_int) -> Option<c_int>;
    /// Whether the kernel takes setsockopt(`level`, `name`, `value`) on a TCP socket of
    /// `family` (Linux's checks of the length and the value), without changing any socket of
    /// the application.
    fn kernel_check(
        &mut self,
        family: Family,
        level: c_int,
        name: c_int,
        value: &[u8],
    ) -> Result<(), c_int>;
    /// getsockopt of an int option on the kernel socket `fd`.
    fn kernel_getsockopt_int(&mut self, fd: c_int, level: c_int, name: c_int) -> Option<c_int>;
    /// setsockopt on the kernel socket `fd`: the kernel checks and keeps the value.
    fn kernel_setsockopt(
        &mut self,
        fd: c_int,
        level: c_int,
        name: c_int,
        value: &[u8],
    ) -> Result<(), c_int>;
    /// Closes an fd the table made (identity fd, private epoll).
    fn close_fd(&mut self, fd: c_int);
    /// Whether `fd` is a kernel epoll instance (`Err(errno)` as epoll_ctl would fail if not).
    fn check_epoll(&mut self, fd: c_int) -> Result<(), c_int>;
    /// Threads blocked in the runtime's waits may have work now: this call delivered events
    /// to epoll sets, queued a ready epoll entry, shut a socket down, or left frames waiting
    /// for room in the device. (They rely on the device's wake-up, which this call's poll
    /// may have taken from them.) `only`: the entries (sockets, epoll sets) that changed;
    /// threads waiting for others may sleep on. `None`: wake every blocked thread.
    fn wake_waiters(&mut self, only: Option<&[u32]>);
    /// Whether a thread is blocked in a wait for entry `key` (an epoll set's index).
    fn waits_on(&mut self, key: u32) -> bool;
    /// Wall-clock milliseconds since the Unix epoch (the data-path cache's clock, read at
    /// every answer: clock_gettime and two multiplications, where SystemTime's
    /// `duration_since(UNIX_EPOCH)` cost ~60 instructions more). Before 1970: negative, as
    /// Redis's own `mstime()`.
    fn unix_ms(&self) -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to fill; CLOCK_REALTIME always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
        ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    }
    /// The kernel calls of the data-path cache's own connection (`None`: it cannot have one).
    fn control_io(&mut self) -> Option<&mut dyn crate::cache::ControlIo> {
        None
    }
    /// Whether a thread of the application is blocked in poll() or select() on a listener
    /// of ours (those waits name no key `waits_on` could see).
    fn polls_listeners(&mut self) -> bool {
        false
    }
    /// Whether the kernel socket `fd` is non-blocking (O_NONBLOCK).
    fn kernel_nonblocking(&mut self, fd: c_int) -> bool {
        let _ = fd;
        true
    }
    /// The fd of this process whose socket is the other end of the local TCP connection `fd`
    /// (its peer address is `fd`'s local address, and the other way round).
    fn peer_end(&mut self, fd: c_int) -> Option<c_int> {
        let _ = fd;
        None
    }
}

/// The address family a socket of ours has for the application. The stack speaks IPv4 alone;
/// an AF_INET6 socket sees its IPv4 peers as v4-mapped IPv6 addresses, as on Linux.
/// Where a connection stands as connect() sees it (Linux's `sock->state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, or connect() saw the handshake complete: connect() says EISCONN.
    Connected,
    /// connect() said EINPROGRESS (or was interrupted) and has not seen the outcome since:
    /// the next connect() says EALREADY while the handshake runs, then 0 or its error.
    Connecting,
    /// connect() saw the handshake fail: the next connect() starts a new one.
    Unconnected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Inet,
    Inet6,
}

impl Family {
    /// The stack's address as this family shows it (`::ffff:a.b.c.d`, flow info and scope 0;
    /// the wildcard address, an unconnected socket's, is `::`).
    pub fn addr(self, a: SocketAddrV4) -> SocketAddr {
        match self {
            Family::Inet => SocketAddr::V4(a),
            Family::Inet6 => {
                let ip = match *a.ip() {
                    std::net::Ipv4Addr::UNSPECIFIED => std::net::Ipv6Addr::UNSPECIFIED,
                    ip => ip.to_ipv6_mapped(),
                };
                SocketAddr::V6(SocketAddrV6::new(ip, a.port(), 0, 0))
            }
        }
    }

    /// SO_DOMAIN.
    pub fn domain(self) -> c_int {
        match self {
            Family::Inet => libc::AF_INET,
            Family::Inet6 => libc::AF_INET6,
        }
    }
}

/// A socket bound to a flagged port, waiting for listen().
#[derive(Clone, Copy, Debug)]
enum Bound {
    /// The stack listens at listen(); `kernel`: the kernel socket too (a dual listener).
    Serve {
        port: u16,
        kernel: bool,
        family: Family,
    },
    /// `::` with IPV6_V6ONLY: IPv6 alone, which the stack cannot serve; listen() fails.
    V6Only { port: u16 },
}

/// What one of our fds is.
pub(crate) enum Obj {
    Listener {
        port: u16,
        /// A dual listener: the kernel socket listens too.
        kernel: bool,
        family: Family,
        /// The options its accepted connections inherit.
        inherit: Vec<SockOpt>,
        /// shutdown(SHUT_RD or SHUT_RDWR) stopped it: bound, no longer listening, until the
        /// next listen().
        shut: bool,
        /// A shutdown(SHUT_RD or SHUT_RDWR) came again after that (Linux refuses it but marks
        /// the socket's reads shut: readable, RDHUP).
        read_shut: bool,
    },
    Conn {
        id: ConnId,
        family: Family,
        nonblock: bool,
        opts: ConnOpts,
        /// Where connect() stands on it.
        phase: Phase,
    },
    /// The application's end of the data-path cache's own connection to it (a kernel
    /// socket): what the application writes to it goes to the cache, not the kernel; every
    /// other call is the kernel's.
    Watch,
    /// A client connection the kernel side of a dual listener accepted, while the data-path
    /// cache is on: the cache follows what the application reads from it (its requests may
    /// change what the cache can answer for everyone: SWAPDB, CLIENT PAUSE, MONITOR); every
    /// call on it is the kernel's.
    Follow,
    Epoll {
        set: EpollSet,
        /// This set's number among all the sets the table ever had (never reused, unlike
        /// fd numbers and entry indexes): the runtime's waits know by it whether the set they
        /// registered with the kernel is still this one.
        uid: u64,
        /// This set is inside another epoll set (glib-style nesting): an eventfd in its
        /// kernel instance, readable while the set has ready entries, so that the outer set
        /// reports it (-1: not nested). Closed with the set.
        bell: c_int,
        /// Whether the bell is readable now.
        rung: bool,
        /// A listener of ours was added to it: the application's event loop for the served
        /// ports (the data-path cache answers only in the waits of such a set).
        listens: bool,
    },
}

/// One of our sockets (or epoll instances) and the fds that refer to it: more than one after
/// dup/dup2/dup3/F_DUPFD, as with the kernel's open file descriptions. The object goes when the
/// last of them is closed.
struct Entry {
    obj: Obj,
    fds: Vec<c_int>,
    /// Which object this is, never reused: a call that waits tells by it whether its fd
    /// still names the object it started on (see [`Sockets::ident`]).
    serial: u64,
}

/// How poll/select must look at one fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollKind {
    /// The kernel's fd (or negative: ignored).
    Kernel,
    /// A stack connection or stack-only listener: the kernel must not look at its identity fd.
    Stack,
    /// A dual listener: the stack's accept queue and the kernel socket both count.
    Both,
}

/// The socket table of one process.
pub struct Sockets<'t, L: Link, H: Host<L>> {
    host: H,
    table: &'t FdTable,
    cfg: Result<Config, String>,
    stack: Option<Stack<L>>,
    /// Why the stack could not be started (said once on stderr; every flagged listen fails).
    failed: Option<String>,
    /// Our epoll sets that are inside other epoll sets (they have a bell).
    nested: Vec<c_int>,
    /// Listeners waiting for the stack (port, backlog): on a device processes share, the
    /// stack starts at the first call that serves a listener (`serve_listeners`).
    deferred: Vec<(u16, usize)>,
    /// Connections closed with SO_LINGER on and a timeout: the close() that closed each waits
    /// (`take_lingering`, `lingers`) until its FIN is acknowledged or the timeout passes.
    lingering: Vec<(ConnId, std::time::Duration)>,
    /// Counts what may have made a blocked thread's call able to go on (events delivered, an
    /// epoll_ctl that queued a ready entry, a shutdown): a blocking call notes it when it
    /// finds nothing to do, and blocks only if it is unchanged when it registers as blocked.
    wakes: u64,
    /// Threads in close() waiting for a lingering connection (`linger_wait`).
    lingerers: usize,
    /// The entries whose readiness was told since the last wake-up, and the epoll sets that
    /// queued an entry for it: blocked threads waiting for one of them are woken
    /// (`Host::wake_waiters`), the others sleep on.
    touched: Vec<u32>,
    /// The last epoll set's uid.
    epoll_uids: u64,
    /// The last entry's serial.
    serials: u64,
    /// A connect() said that the stack cannot start (once).
    said_connect: bool,
    /// A connect() is starting the stack.
    connecting: bool,
    objs: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// A stack connection -> its entry's index.
    conn_fd: ConnIndex,
    /// Epoll entries a connect() released to the kernel (`Sockets::take_released`).
    released: Vec<(c_int, u32, u64)>,
    /// When the application was last seen accepting on a listener of ours (`steer`).
    accepting_at: Option<smoltcp::time::Instant>,
    port_fds: FastMap<u16, Vec<c_int>>,
    /// Our fd -> the epoll fds watching it.
    watchers: Watchers,
    /// Sockets bound to a flagged port, waiting for listen().
    binds: FastMap<c_int, Bound>,
    /// Ports whose IPV6_V6ONLY listener was refused (said once per port).
    refused_v6only: Vec<u16>,
    events: Vec<Event>,
    scratch: Vec<EpollEvent>,
    /// The time of the last poll (`pump_with`).
    last_poll: smoltcp::time::Instant,

    /// The data-path cache (`MTCP_REDIS_CACHE`), and its buffers.
    cache: Option<cache::Cache>,
}

fn so_errno(e: SockError) -> c_int {
    e.errno()
}

/// Our fds -> the epoll fds watching each, indexed by fd (fds are small and dense, and every
/// event of a connection looks its fds up here; a hash map's lookup cost ~25 instructions
/// more).
#[derive(Debug, Default)]
struct Watchers(Vec<Vec<c_int>>);

impl Watchers {
    #[inline]
    fn get(&self, fd: &c_int) -> Option<&Vec<c_int>> {
        self.0
            .get(usize::try_from(*fd).ok()?)
            .filter(|v| !v.is_empty())
    }

    fn get_mut(&mut self, fd: &c_int) -> Option<&mut Vec<c_int>> {
        self.0.get_mut(usize::try_from(*fd).ok()?)
    }

    /// Adds `ep` to the watchers of `fd` (not negative: an fd of ours).
    fn push(&mut self, fd: c_int, ep: c_int) {
        let Ok(k) = usize::try_from(fd) else { return };
        if self.0.len() <= k {
            self.0.resize_with(k + 1, Vec::new);
        }
        self.0[k].push(ep);
    }

    fn remove(&mut self, fd: &c_int) -> Option<Vec<c_int>> {
        self.get_mut(fd)
            .map(std::mem::take)
            .filter(|v| !v.is_empty())
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Vec<c_int>> {
        self.0.iter_mut()
    }
}

/// Stack connections -> their entries' indexes, by the connection's slot (slots are small and
/// dense, and every event of a connection is looked up here).
#[derive(Debug, Default)]
struct ConnIndex(Vec<Option<(ConnId, u32)>>);

impl ConnIndex {
    #[inline]
    fn get(&self, id: &ConnId) -> Option<&u32> {
        match self.0.get(id.slot as usize)? {
            Some((have, i)) if have == id => Some(i),
            _ => None,
        }
    }

    fn insert(&mut self, id: ConnId, i: u32) {
        let k = id.slot as usize;
        if self.0.len() <= k {
            self.0.resize(k + 1, None);
        }
        self.0[k] = Some((id, i));
    }

    fn remove(&mut self, id: &ConnId) {
        if let Some(e) = self.0.get_mut(id.slot as usize) {
            if e.is_some_and(|(have, _)| have == *id) {
                *e = None;
            }
        }
    }
}

/// How long a process's application may go without accepting on its listeners before the
/// other processes sharing the device take its flows (`Sockets::steer`): longer than
/// nginx's accept_mutex_delay (500 ms), the pause between a worker's tries for the mutex.
const ACCEPT_IDLE: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(1000);

/// The edge of a change that wakes every watcher (a state change: a shutdown, a listener's
/// new connection).
const EVERY_EDGE: u32 = u32::MAX;

/// A listener shutdown() stopped reads as Linux's closed socket: writable and hung up, and
/// readable with RDHUP once a second shutdown(SHUT_RD) (refused, ENOTCONN) has marked its
/// reads shut. A dual listener's kernel side says so itself (its kernel socket was shut too):
/// nothing of ours, or epoll would report it twice.
fn stopped_listener(kernel: bool, read_shut: bool) -> Readiness {
    if kernel {
        Readiness::NONE
    } else {
        Readiness::new(read_shut, true, read_shut, true, false)
    }
}

/// SO_RCVLOWAT (`lowat` > 1): a connection is readable for poll, select and epoll only once
/// `lowat` bytes are buffered, or at end of stream or an error, as on Linux. Out of line: the
/// readiness of a connection without a mark is on every request's path.
#[inline(never)]
fn low_water<L: Link>(stack: &Stack<L>, id: ConnId, lowat: usize, mut r: Readiness) -> Readiness {
    if r.readable()
        && !(r.rdhup() || r.hup() || r.error())
        && stack.recv_queue(id).is_ok_and(|n| n < lowat)
    {
        r.set_readable(false);
    }
    r
}

impl<'t, L: Link, H: Host<L>> Sockets<'t, L, H> {
    /// An empty table over `table`; `cfg` is the stack's configuration (or why it is unusable).
    pub fn new(host: H, table: &'t FdTable, mut cfg: Result<Config, String>) -> Self {
        let cache = cfg.as_mut().ok().and_then(cache::Cache::configure);
        Sockets {
            cache,

            host,
            table,
            cfg,
            stack: None,
            failed: None,
            deferred: Vec::new(),
            lingering: Vec::new(),
            wakes: 0,
            lingerers: 0,
            touched: Vec::new(),
            epoll_uids: 0,
            serials: 0,
            said_connect: false,
            connecting: false,
            nested: Vec::new(),
            objs: Vec::new(),
            free: Vec::new(),
            conn_fd: ConnIndex::default(),
            released: Vec::new(),
            accepting_at: None,
            port_fds: FastMap::default(),
            watchers: Watchers::default(),
            binds: FastMap::default(),
            refused_v6only: Vec::new(),
            events: Vec::new(),
            scratch: Vec::new(),
            last_poll: smoltcp::time::Instant::ZERO,
        }
    }

    /// Whether some socket is bound to a flagged port and not listening yet (its close must
    /// reach [`Sockets::close`]).
    pub fn has_pending_binds(&self) -> bool {
        !self.binds.is_empty()
    }

    /// The fds in `first..=last` bound to a flagged port and not listening yet.
    pub fn pending_binds_in(&self, first: c_int, last: c_int) -> Vec<c_int> {
        self.binds
            .keys()
            .copied()
            .filter(|fd| (first..=last).contains(fd))
            .collect()
    }

    pub fn host(&mut self) -> &mut H {
        &mut self.host
    }

    pub fn config(&self) -> Option<&Config> {
        self.cfg.as_ref().ok()
    }

    /// The stack, once started.
    pub fn stack(&self) -> Option<&Stack<L>> {
        self.stack.as_ref()
    }

    pub fn stack_mut(&mut self) -> Option<&mut Stack<L>> {
        self.stack.as_mut()
    }

    fn index_of(&self, fd: c_int) -> Option<u32> {
        match self.table.lookup(fd) {
            FdState::Ours(i) => Some(i),
            FdState::NotOurs => None,
        }
    }

    fn obj_ref(&self, fd: c_int) -> Option<&Obj> {
        let i = self.index_of(fd)?;
        self.objs.get(i as usize)?.as_ref().map(|e| &e.obj)
    }

    /// Which object of ours `fd` names (`None`: none), as its entry and serial. A call that
    /// waits re-reads its fd on every pass; another thread may close the fd meanwhile (and
    /// the number may come back as another socket): [`Sockets::keep_on`] keeps the call on
    /// the object it started on.
    pub fn ident(&self, fd: c_int) -> Option<(u32, u64)> {
        let i = self.index_of(fd)?;
        self.objs.get(i as usize)?.as_ref().map(|e| (i, e.serial))
    }

    /// Keeps `fd` naming the object `started` stands for (the call's first [`Sockets::ident`];
    /// `None`: nothing to follow): `fd` itself if it still does, else a dup left open (a close
    /// of one fd leaves the socket to its dups, and a call blocked on it goes on, as on
    /// Linux). `false`: the object was closed.
    pub fn keep_on(&self, fd: &mut c_int, started: Option<(u32, u64)>) -> bool {
        let Some((i, serial)) = started else {
            return true;
        };
        let Some(e) = self.objs.get(i as usize).and_then(Option::as_ref) else {
            return false;
        };
        if e.serial != serial {
            return false;
        }
        if !e.fds.contains(fd) {
            match e.fds.first() {
                Some(&f) => *fd = f,
                None => return false,
            }
        }
        true
    }

    /// Every fd number (dups) that refers to `fd`'s object.
    fn fds_of(&self, fd: c_int) -> Vec<c_int> {
        let i = self.index_of(fd);
        match i.and_then(|i| self.objs.get(i as usize)?.as_ref()) {
            Some(e) => e.fds.clone(),
            None => vec![fd],
        }
    }

    pub(crate) fn obj(&mut self, fd: c_int) -> Option<&mut Obj> {
        let i = self.index_of(fd)?;
        self.objs.get_mut(i as usize)?.as_mut().map(|e| &mut e.obj)
    }

    /// How poll/select sees `fd`.
    pub fn poll_kind(&mut self, fd: c_int) -> PollKind {
        let kind = match self.obj(fd) {
            Some(Obj::Conn { .. }) => return PollKind::Stack,
            Some(Obj::Listener { kernel: false, .. }) => PollKind::Stack,
            Some(Obj::Listener { kernel: true, .. }) => PollKind::Both,
            _ => return PollKind::Kernel,
        };
        // A poll or select on a listener: the application accepts there.
        self.note_accepting();
        kind
    }

    /// The application acts on a listener of ours (accept, poll, select): see `steer`.
    pub(crate) fn note_accepting(&mut self) {
        self.accepting_at = Some(self.host.now());
    }

    /// Whether the application watches a listener of ours for connections: one is in an
    /// epoll set of ours with EPOLLIN armed, or a thread waits on one (accept, poll).
    fn listeners_watched(&mut self) -> bool {
        let fds: Vec<c_int> = self.port_fds.values().flatten().copied().collect();
        for fd in fds {
            let eps = self.watchers.get(&fd).cloned().unwrap_or_default();
            for ep in eps {
                if let Some(Obj::Epoll { set, .. }) = self.obj(ep) {
                    if set
                        .armed_interest(fd)
                        .is_some_and(|e| e & libc::EPOLLIN as u32 != 0)
                    {
                        return true;
                    }
                }
            }
            if let Some(i) = self.index_of(fd) {
                if self.host.waits_on(i) {
                    return true;
                }
            }
        }
        self.host.polls_listeners()
    }

    /// Whether `fd` is a listener of ours.
    pub fn is_listener(&mut self, fd: c_int) -> bool {
        matches!(self.obj(fd), Some(Obj::Listener { .. }))
    }

    /// Makes `fd` ours, as a new object. Returns its index.
    fn insert(&mut self, fd: c_int, obj: Obj) -> Result<u32, c_int> {
        self.serials += 1;
        let entry = Entry {
            obj,
            fds: vec![fd],
            serial: self.serials,
        };
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
        if self.table.claim(fd, i).is_err() {
            self.objs[i as usize] = None;
            self.free.push(i);
            return Err(libc::EMFILE);
        }
        Ok(i)
    }

    /// Forgets `fd`. `None`: it was not ours. `Some(None)`: other fds still refer to its
    /// object. `Some(Some(obj))`: it was the last one; the object is the caller's to close.
    fn remove(&mut self, fd: c_int) -> Option<Option<Obj>> {
        let i = self.table.release(fd)?;
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

    /// Tells every epoll set watching `fd` its readiness now. Sets that hold `fd` with
    /// EPOLLEXCLUSIVE are told in the order they added it, up to the first one a thread is
    /// blocked on, as Linux wakes one waiting epoll instance: an event on a listener shared
    /// by a pool's per-thread sets wakes one thread, not the pool.
    #[inline]
    fn notify_watchers(&mut self, fd: c_int, r: Readiness, edge: u32) {
        let Some(eps) = self.watchers.get(&fd) else {
            return;
        };
        let mut woke_exclusive = false;
        for &ep in eps {
            let FdState::Ours(j) = self.table.lookup(ep) else {
                continue;
            };
            if let Some(Some(Entry {
                obj: Obj::Epoll { set, .. },
                ..
            })) = self.objs.get_mut(j as usize)
            {
                let (queued, exclusive) = set.notify_unless_exclusive(fd, r, edge, woke_exclusive);
                if queued {
                    self.touched.push(j);
                }
                if exclusive && !woke_exclusive && self.host.waits_on(j) {
                    woke_exclusive = true;
                }
            }
        }
    }

    /// Tells the watchers of every fd of entry `i` that its readiness is `r`. (Inlined: it
    /// runs for every event of a poll.)
    #[inline(always)]
    fn notify_entry_with(&mut self, i: u32, r: Readiness) {
        self.notify_entry_edge(i, r, EVERY_EDGE);
    }

    /// `notify_entry_with` for an event of the stack (`edge`: its `Event::Conn` edge).
    #[inline(always)]
    fn notify_entry_edge(&mut self, i: u32, r: Readiness, edge: u32) {
        self.touched.push(i);
        let n = self.objs[i as usize].as_ref().map_or(0, |e| e.fds.len());
        for k in 0..n {
            let fd = self.objs[i as usize].as_ref().map_or(-1, |e| e.fds[k]);
            self.notify_watchers(fd, r, edge);
        }
    }

    /// Starts the stack on first use. On failure says why, once, and remembers it.
    fn ensure_stack(&mut self) -> Result<&mut Stack<L>, c_int> {
        if self.stack.is_none() {
            if self.failed.is_some() {
                return Err(libc::EADDRNOTAVAIL);
            }
            let started = match &self.cfg {
                Err(e) => Err(e.clone()),
                Ok(cfg) => self.host.start(cfg),
            };
            match started {
                Ok(s) => {
                    self.stack = Some(s);
                    self.host.started();
                }
                Err(e) => {
                    self.fail(e);
                    return Err(libc::EADDRNOTAVAIL);
                }
            }
        }
        Ok(self.stack.as_mut().expect("just started"))
    }

    /// The stack cannot serve the flagged ports: say so once. (When a connect() starts it, the
    /// connect() says why it fails instead.)
    fn fail(&mut self, why: String) {
        if self.failed.is_none() && self.connecting {
            self.failed = Some(why);
            return;
        }
        if self.failed.is_none() {
            let what = if self.deferred.is_empty() {
                "listen() on them fails"
            } else {
                "accept() on their listeners fails (ENETDOWN)"
            };
            self.host.say(&format!(
                "cannot serve the ports in MTCP_PORTS: {why}; {what}"
            ));
            self.failed = Some(why);
        }
    }

    /// Whether listen() leaves starting the stack to the first call that serves a listener:
    /// the device can be shared by processes forked after listen(), each with a stack of its
    /// own (nginx's master listens, its workers accept), and none is started yet.
    fn defers_start(&self) -> bool {
        self.stack.is_none() && self.cfg.as_ref().is_ok_and(|c| c.dev.shared_by_processes())
    }

    /// Starts the stack for the listeners waiting for it (a call is about to serve them).
    /// Their ports listen on the stack from now on.
    fn serve_listeners(&mut self) -> Result<(), c_int> {
        self.ensure_stack()?;
        let waiting = std::mem::take(&mut self.deferred);
        let ports: Vec<u16> = waiting.iter().map(|&(p, _)| p).collect();
        let stack = self.stack.as_mut().expect("started");
        let mut opts = stack.default_options();
        opts.nodelay = false;
        let refused: Vec<(u16, SockError)> = waiting
            .into_iter()
            .filter_map(|(port, depth)| stack.listen(port, depth, opts).err().map(|e| (port, e)))
            .collect();
        for (port, e) in refused {
            let why = std::io::Error::from_raw_os_error(e.errno());
            self.host
                .say(&format!("cannot listen on port {port} of the stack: {why}"));
        }
        for port in ports {
            self.sync_listen_options(port);
        }
        // Its share of the flows before its first poll: it must not answer another worker's.
        self.steer();
        Ok(())
    }

    /// Worker processes sharing the device: this process's share of the flows, again (see
    /// [`Host::steer`]).
    ///
    /// A process serves the flows' new connections while it listens and its application
    /// accepts: a process whose application has not watched or called accept() on any of its
    /// listeners for `ACCEPT_IDLE` (an nginx worker without the accept mutex, which removes
    /// its listeners from its epoll set; a pre-fork child busy with one client) gives its
    /// flows to those that accept, with the connections its listeners hold, as Linux's one
    /// accept queue lets another process accept them. (It takes its share back once it
    /// accepts again.)
    pub fn steer(&mut self) {
        let listening = !self.port_fds.is_empty();
        let now = self.host.now();
        if listening && self.listeners_watched() {
            self.accepting_at = Some(now);
        }
        // (The clock starts with the stack's first round.)
        let since = *self.accepting_at.get_or_insert(now);
        let serving = listening && now - since < ACCEPT_IDLE;
        let Some(st) = self.stack.as_mut() else {
            return;
        };
        self.host.steer(st, serving);
        if st.events_pending() {
            // A connection another process handed over is queued for accept: its listener's
            // waiters are told now, not at the next frame.
            self.pump();
        }
    }

    /// Connections this process offered to the others when it stopped listening that are not
    /// settled yet (taken, or withdrawn and reset).
    pub fn handovers_pending(&self) -> usize {
        self.stack.as_ref().map_or(0, |st| st.handovers_pending())
    }

    /// Transmits what the stack has queued, without receiving. Frames the device had no room
    /// for wait in the link and need a poll soon: threads blocked in waits are told.
    pub fn flush(&mut self) {
        let now = self.host.now();
        if let Some(st) = self.stack.as_mut() {
            st.flush(now);
            if st.link().tx_pending() > 0 {
                self.wake_waiters();
            }
        }
    }

    /// Polls the stack and tells every epoll set watching a changed fd. Returns whether the
    /// stack did work (frames, timers, events).
    pub fn pump(&mut self) -> bool {
        self.pump_with(None)
    }

    /// [`Sockets::pump`]; `answer_in`: an epoll set the application's event loop waits on,
    /// where the data-path cache may answer requests inside the poll (`cache::InPoll`).
    pub fn pump_with(&mut self, answer_in: Option<c_int>) -> bool {
        if !self.deferred.is_empty() && self.failed.is_none() {
            let _ = self.serve_listeners();
        }
        let now = self.host.poll_time();
        self.last_poll = now;
        let Some(work) = self.with_responder(answer_in, |st, r| st.poll_with(now, r)) else {
            return false;
        };
        self.deliver(work)
    }

    /// Delivers the events the stack's last poll left to the epoll sets and the threads
    /// blocked on them, without polling again (also after the poll that armed the device's
    /// wake-up found work: `arm_wake`). `work`: whether that poll did any. Returns whether it
    /// did or left events.
    pub fn deliver(&mut self, mut work: bool) -> bool {
        let Some(stack) = self.stack.as_mut() else {
            return false;
        };
        stack.take_events(&mut self.events);
        work |= !self.events.is_empty();
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            match *ev {
                Event::Conn(id, r, edge) => {
                    if let Some(&i) = self.conn_fd.get(&id) {
                        let r = match &self.objs[i as usize] {
                            Some(Entry {
                                obj: Obj::Conn { opts, .. },
                                ..
                            }) if opts.rcvlowat > 1 => match self.stack.as_ref() {
                                Some(st) => low_water(st, id, opts.rcvlowat, r),
                                None => r,
                            },
                            _ => r,
                        };
                        self.notify_entry_edge(i, r, edge);
                    }
                }
                Event::Accept(port) => {
                    let n = self.port_fds.get(&port).map_or(0, Vec::len);
                    for k in 0..n {
                        let fd = self.port_fds[&port][k];
                        if let Some(r) = self.readiness(fd) {
                            if let Some(i) = self.index_of(fd) {
                                self.touched.push(i);
                            }
                            self.notify_watchers(fd, r, EVERY_EDGE);
                        }
                    }
                }
            }
        }
        if !events.is_empty() {
            self.wake_touched();
            if !self.nested.is_empty() {
                self.ring_nested();
            }
        } else if work && self.lingerers > 0 {
            self.wake_waiters();
        }
        self.events = events;
        work
    }

    /// `f` on the stack, with the data-path cache as its responder when `answer_in` is an
    /// epoll set of the served listeners' event loop, waited on where the cache may answer
    /// (`cache::InPoll`), and the cache wants to look at requests. `None`: no stack.
    fn with_responder<R>(
        &mut self,
        answer_in: Option<c_int>,
        f: impl FnOnce(&mut Stack<L>, Option<&mut dyn userstack::Respond>) -> R,
    ) -> Option<R> {
        let set_at = answer_in.and_then(|ep| Some((ep, self.index_of(ep)?)));
        let Sockets {
            stack,
            cache,
            objs,
            conn_fd,
            watchers,
            host,
            ..
        } = self;
        let stack = stack.as_mut()?;
        // (The served listeners' event loop: see `epoll_pass`.)
        let set = set_at.and_then(|(ep, i)| match objs.get(i as usize)? {
            Some(Entry {
                obj: Obj::Epoll {
                    set, listens: true, ..
                },
                ..
            }) => Some((ep, set)),
            _ => None,
        });
        Some(match (cache.as_mut().filter(|c| c.r.wants_any()), set) {
            (Some(c), Some((epfd, set))) => {
                let host = &*host;
                let mut r = cache::InPoll {
                    cache: c,
                    objs,
                    conns: conn_fd,
                    watchers,
                    set,
                    epfd,
                    read_clock: || host.unix_ms(),
                    clock: cache::Clock::default(),
                };
                f(stack, Some(&mut r))
            }
            _ => f(stack, None),
        })
    }

    /// Before a thread blocks on the device's wake-up: arms it and polls once more
    /// ([`Stack::arm_wake`]), with the cache answering as in [`Sockets::pump_with`] when
    /// `answer_in` says. Returns false if that poll found work (do not block).
    pub fn arm_wake(&mut self, others_blocked: bool, answer_in: Option<c_int>) -> bool {
        // (A poll like `pump_with`'s: when it finds work, the thread does not poll again
        // before it reports it, `deliver`.)
        let now = self.host.poll_time();
        self.last_poll = now;
        self.with_responder(answer_in, |st, r| st.arm_wake_with(now, others_blocked, r))
            .unwrap_or(true)
    }

    /// The bells of nested sets follow their readiness: rung while a set has ready entries.
    fn ring_nested(&mut self) {
        for k in 0..self.nested.len() {
            let ep = self.nested[k];
            if let Some(Obj::Epoll {
                set, bell, rung, ..
            }) = self.obj(ep)
            {
                let want = set.maybe_ready();
                if want != *rung && *bell >= 0 {
                    *rung = want;
                    let b = *bell;
                    self.host.ring(b, want);
                }
            }
        }
    }

    /// The readiness of our socket `fd` (`None`: not a socket of ours, or no stack).
    #[inline]
    pub fn readiness(&self, fd: c_int) -> Option<Readiness> {
        self.readiness_at(self.index_of(fd)?)
    }

    #[inline]
    fn readiness_at(&self, i: u32) -> Option<Readiness> {
        let obj = &self.objs.get(i as usize)?.as_ref()?.obj;
        let Some(stack) = self.stack.as_ref() else {
            // (A listener stopped before its stack started.)
            return match obj {
                Obj::Listener {
                    shut: true,
                    kernel,
                    read_shut,
                    ..
                } => Some(stopped_listener(*kernel, *read_shut)),
                _ => None,
            };
        };
        match obj {
            Obj::Listener {
                shut: true,
                kernel,
                read_shut,
                ..
            } => Some(stopped_listener(*kernel, *read_shut)),
            Obj::Listener { port, .. } => Some(if stack.accept_queue_len(*port) > 0 {
                Readiness::READABLE
            } else {
                Readiness::NONE
            }),
            Obj::Conn { id, opts, .. } => {
                let r = stack.readiness(*id).ok()?;
                if opts.rcvlowat > 1 {
                    return Some(low_water(stack, *id, opts.rcvlowat, r));
                }
                Some(r)
            }
            Obj::Epoll { .. } | Obj::Watch | Obj::Follow => None,
        }
    }

    /// Counts a change blocked threads must see, and wakes them all.
    fn wake_waiters(&mut self) {
        self.wakes = self.wakes.wrapping_add(1);
        self.touched.clear();
        self.host.wake_waiters(None);
    }

    /// Counts a change blocked threads must see, and wakes those waiting for what changed
    /// (`touched`).
    fn wake_touched(&mut self) {
        self.wakes = self.wakes.wrapping_add(1);
        let touched = std::mem::take(&mut self.touched);
        self.host.wake_waiters(Some(&touched));
        self.touched = touched;
        self.touched.clear();
    }

    /// What a thread blocking on `fd` waits for (see `touched`): its entry's index.
    pub fn key_of(&self, fd: c_int) -> Option<u32> {
        self.index_of(fd)
    }

    /// Epoll set `epfd`'s entry index and uid (`None`: not a set of ours).
    pub fn epoll_ids(&mut self, epfd: c_int) -> Option<(u32, u64)> {
        let i = self.index_of(epfd)?;
        match self.obj(epfd) {
            Some(Obj::Epoll { uid, .. }) => Some((i, *uid)),
            _ => None,
        }
    }

    /// A new epoll set of ours (`uid`: see there).
    fn new_epoll(&mut self) -> Obj {
        self.epoll_uids += 1;
        Obj::Epoll {
            set: EpollSet::new(),
            uid: self.epoll_uids,
            bell: -1,
            rung: false,
            listens: false,
        }
    }

    /// What `wakes` counted so far (see there).
    pub fn wakes(&self) -> u64 {
        self.wakes
    }

    /// A close() starts (`true`) or ends waiting for a lingering connection: while any does,
    /// every poll that did work wakes the blocked threads, since a connection the application
    /// closed gives no event when its FIN is acknowledged.
    pub fn linger_wait(&mut self, on: bool) {
        if on {
            self.lingerers += 1;
        } else {
            self.lingerers = self.lingerers.saturating_sub(1);
        }
    }

    /// Whether epoll set `epfd` has entries queued as ready (a thread about to block on it
    /// looks again instead).
    pub fn epoll_has_queued(&mut self, epfd: c_int) -> bool {
        match self.obj(epfd) {
            Some(Obj::Epoll { set, .. }) => set.has_queued(),
            _ => false,
        }
    }

    /// Whether a thread waiting on epoll set `epfd` waits only for new connections: the set
    /// holds listeners of ours and no connection (looked at only for small sets: a set with
    /// more than 8 entries is taken to hold connections).
    pub fn epoll_waits_for_connections(&self, epfd: c_int) -> bool {
        let Some(Obj::Epoll { set, .. }) = self.obj_ref(epfd) else {
            return false;
        };
        set.len() <= 8
            && set
                .keys()
                .all(|fd| matches!(self.obj_ref(fd), Some(Obj::Listener { .. })))
    }

    /// The connections the last close()s left lingering (SO_LINGER with a timeout), with
    /// their timeouts: their caller waits while [`Sockets::lingers`].
    pub fn take_lingering(&mut self) -> Vec<(ConnId, std::time::Duration)> {
        std::mem::take(&mut self.lingering)
    }

    /// Whether closed connection `id` still waits for the peer to acknowledge its FIN (or what
    /// was sent before it), as Linux's close() with SO_LINGER waits: FIN-WAIT-1, CLOSING,
    /// LAST-ACK.
    pub fn lingers(&self, id: ConnId) -> bool {
        use smoltcp::socket::tcp::State as S;
        self.stack
            .as_ref()
            .and_then(|st| st.slot_state(id))
            .is_some_and(|(state, ..)| matches!(state, S::FinWait1 | S::Closing | S::LastAck))
    }

    /// The process exits: every connection and listener of ours closes, as the kernel closes
    /// a process's sockets at exit (a FIN after what was sent, a reset where data was left
    /// unread, listeners reset what they had queued). Their fds are left to the kernel.
    pub fn close_all(&mut self) {
        let fds: Vec<c_int> = self
            .objs
            .iter()
            .flatten()
            .filter(|e| matches!(e.obj, Obj::Conn { .. } | Obj::Listener { .. }))
            .flat_map(|e| e.fds.iter().copied())
            .collect();
        for fd in fds {
            self.close(fd);
        }
        self.lingering.clear();
        self.flush();
    }

    /// Connections closed whose FIN the peer has not acknowledged yet (see
    /// [`Stack::closing_unacked`]).
    pub fn closing_unacked(&self) -> u64 {
        self.stack.as_ref().map_or(0, |st| st.closing_unacked())
    }

    /// close(): our bookkeeping (the kernel then closes the fd itself). Returns whether the
    /// fd was ours. A socket bound to a flagged port and never listening is not ours yet, but
    /// its bind goes with it: the fd number's next socket starts afresh.
    pub fn close(&mut self, fd: c_int) -> bool {
        self.binds.remove(&fd);
        let listener_port = match self.obj(fd) {
            Some(Obj::Listener { port, .. }) => Some(*port),
            _ => None,
        };
        let epoll_entry = match self.obj(fd) {
            Some(Obj::Epoll { .. }) => self.index_of(fd),
            _ => None,
        };
        let followed = self.cache.as_ref().and_then(|_| self.followed(fd));
        let current_watch = self.watches_current(fd);
        let entry = self.index_of(fd);
        let Some(last) = self.remove(fd) else {
            return false;
        };
        if let (None, Some(i)) = (&last, epoll_entry) {
            // An epoll fd with dups left: the sets' watchers name it by number, so they name a
            // dup now (or its notifications were lost with the closed number).
            let other = self.objs[i as usize]
                .as_ref()
                .and_then(|e| e.fds.first().copied());
            if let Some(other) = other {
                for list in self.watchers.values_mut() {
                    for e in list.iter_mut().filter(|e| **e == fd) {
                        *e = other;
                    }
                }
                // (Nested sets are named by number too.)
                for e in self.nested.iter_mut().filter(|e| **e == fd) {
                    *e = other;
                }
            }
        }
        for ep in self.watchers.remove(&fd).unwrap_or_default() {
            if let Some(Obj::Epoll { set, .. }) = self.obj(ep) {
                let _ = set.delete(fd);
            }
        }
        if let Some(port) = listener_port {
            if let Some(v) = self.port_fds.get_mut(&port) {
                v.retain(|&f| f != fd);
            }
        }
        // Other fds (dups) still refer to the object: it stays.
        let Some(obj) = last else {
            return true;
        };
        // Threads blocked on it (another thread's recv, accept, epoll_wait) wake and find it
        // gone.
        if let Some(i) = entry {
            if matches!(
                obj,
                Obj::Conn { .. } | Obj::Listener { .. } | Obj::Epoll { .. }
            ) && self.host.waits_on(i)
            {
                self.touched.push(i);
                self.wake_touched();
            }
        }
        match obj {
            Obj::Watch if current_watch => self.cache_control_closed(),
            Obj::Watch => {}
            Obj::Follow => {
                if let Some(key) = followed {
                    self.cache_closed_key(key);
                }
            }
            Obj::Conn { id, opts, .. } => {
                self.conn_fd.remove(&id);
                self.cache_closed(id);
                if let Some(stack) = self.stack.as_mut() {
                    // SO_LINGER on with a zero timeout: close resets the connection and drops
                    // what was not sent, as Linux does.
                    let _ = if opts.linger == Some(std::time::Duration::ZERO) {
                        stack.abort(id)
                    } else {
                        stack.close(id)
                    };
                    if let Some(t) = opts.linger.filter(|t| !t.is_zero()) {
                        self.lingering.push((id, t));
                    }
                    self.flush();
                }
            }
            Obj::Listener {
                port, shut: false, ..
            } => self.stop_listening(port),
            Obj::Listener { shut: true, .. } => {}
            Obj::Epoll { bell, .. } => {
                for list in self.watchers.values_mut() {
                    list.retain(|&e| e != fd);
                }
                if bell >= 0 {
                    self.nested.retain(|&e| e != fd);
                    self.host.close_fd(bell);
                }
            }
        }
        true
    }

    /// dup/dup2/dup3/F_DUPFD made `new` (a kernel fd: the dup of `old`'s identity fd): it now
    /// refers to the same object as `old`, as a dup refers to the same open file description.
    /// `Err(errno)`: it could not be recorded (the caller closes `new` and fails the call).
    pub fn alias(&mut self, old: c_int, new: c_int) -> Result<(), c_int> {
        let FdState::Ours(i) = self.table.lookup(old) else {
            return Ok(());
        };
        if self.table.claim(new, i).is_err() {
            return Err(libc::EMFILE);
        }
        let port = match self.objs.get_mut(i as usize) {
            Some(Some(e)) => {
                e.fds.push(new);
                match e.obj {
                    Obj::Listener {
                        port, shut: false, ..
                    } => Some(port),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(port) = port {
            self.port_fds.entry(port).or_default().push(new);
        }
        Ok(())
    }
}
