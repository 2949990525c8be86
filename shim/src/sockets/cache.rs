//! The data-path cache's place in the socket table (`crate::cache`): which calls it sees, and
//! where it may answer.
//!
//! - Connections accepted from the stack's listeners are the cache's clients: it follows what
//!   the application reads from them (`io`), and is told when they close.
//! - It answers only in an epoll_wait of the application's with a timeout other than zero
//!   (`epoll_pass`, and the poll after arming the device's wake-up in that wait): Redis's
//!   event loop waiting between iterations. Inside that wait's polls, the stack offers it each
//!   usual connection right after a segment brought it data ([`InPoll`]); after the poll, the
//!   connections still queued as readable in the set are offered before the set reports them
//!   (`cache_answer_queued`). What the cache answers is consumed from the connection's
//!   receive buffer and its replies sent, and the application sees only what is left. A
//!   connection whose epoll entry asks for EPOLLOUT (the application has output waiting for
//!   it) is not offered.
//! - The cache's own connection: its upkeep runs at the same points; the application's end,
//!   once found, becomes an [`Obj::Watch`] of the table, whose writes go to the cache.

use libc::c_int;
use userstack::epoll::EpollSet;
use userstack::link::Link;
use userstack::{Config, ConnId, Readiness, Respond, Stack};

use super::conn::IoTry;
use super::{ConnIndex, Entry, Host, Io, Obj, Sockets, Watchers};
use crate::cache::redis::RedisCache;
use crate::cache::{CacheStats, ControlIo, Responder, UnixMs, Upkeep, HEAD};
use crate::fdtable::{FdState, FdTable};

/// The cache, its port and its buffers.
pub struct Cache {
    /// The protocol's cache, by its type (a [`Responder`]): the socket layer's calls into it,
    /// one on every read, are direct and may be inlined. (Caches of two protocols would be an
    /// enum of the two.)
    pub(super) r: Box<RedisCache>,
    /// A port the application listens on (the first served), for the cache's connection.
    port: Option<u16>,
    input: Vec<u8>,
    out: Vec<u8>,
    /// The fds a pass offers, with the events their entries ask for.
    fds: Vec<(i32, u32)>,
    /// Some connection's output goes through the cache ([`Responder::app_write`]).
    pub(super) rewriting: bool,
    /// When its statistics were last handed to the stack (`cache_publish`), in milliseconds of
    /// the poll's clock.
    published: i64,
    /// The application's end of the cache's connection, watched ([`Obj::Watch`]), and the
    /// connection's number ([`Responder::link_gen`]).
    watched: Option<(c_int, u64)>,
}

/// Hands the statistics of cache `c` to `stack`, which publishes them with its own.
fn publish<L: Link>(c: &mut Cache, stack: Option<&mut Stack<L>>) {
    let values = c.r.stats().values(c.r.up());
    if let Some(st) = stack {
        let extra = st.extra_stats_mut();
        if extra.len() == values.len() {
            extra.copy_from_slice(&values);
        }
    }
}

impl Cache {
    /// The cache `cfg` asks for, if any; its statistics are published with the stack's.
    pub fn configure(cfg: &mut Config) -> Option<Cache> {
        if cfg.redis_cache == 0 {
            return None;
        }
        cfg.extra_stats = CacheStats::NAMES.to_vec();
        let budget = usize::try_from(cfg.redis_cache).unwrap_or(usize::MAX);
        Some(Cache {
            r: Box::new(
                RedisCache::new(budget, cfg.cache_fault_late, 0).with_stack_addr(cfg.addr.addr),
            ),
            port: None,
            input: Vec::new(),
            out: Vec::new(),
            fds: Vec::new(),
            rewriting: false,
            published: i64::MIN,
            watched: None,
        })
    }
}

/// A connection's name for the cache.
fn key(id: ConnId) -> u64 {
    (u64::from(id.slot) << 32) | u64::from(id.gen)
}

/// Connections offered to the cache per reading of its clock.
const ANSWERS_PER_CLOCK: u32 = 16;

/// Followed kernel connections are named by their entry's index with this bit (a stack
/// connection's slot never reaches it).
const FOLLOWED: u64 = 1 << 63;

impl<L: Link, H: Host<L>> Sockets<'_, L, H> {
    /// The cache's clock and its kernel calls (`None`: a host that cannot give the cache a
    /// connection; it then stays down).
    fn cache_io(&mut self) -> Option<(UnixMs, &mut dyn ControlIo)> {
        let now = self.host.unix_ms();
        Some((now, self.host.control_io()?))
    }

    pub(super) fn cache_opened(&mut self, id: ConnId) {
        if self.cache.is_some() {
            let now = self.host.unix_ms();
            if let Some(c) = self.cache.as_mut() {
                c.r.opened(key(id), now);
            }
        }
    }

    pub(super) fn cache_closed(&mut self, id: ConnId) {
        self.cache_closed_key(key(id));
    }

    pub(super) fn cache_closed_key(&mut self, key: u64) {
        if let Some(c) = self.cache.as_mut() {
            c.r.closed(key);
        }
    }

    /// Whether the kernel's connections of dual listeners are to be followed
    /// ([`Sockets::follow`]): the cache is on.
    pub fn follows_kernel_clients(&self) -> bool {
        self.cache.is_some()
    }

    /// The kernel side of a dual listener accepted `fd`: the cache follows what the application
    /// reads from it ([`Obj::Follow`]).
    pub fn follow(&mut self, fd: c_int) {
        if self.cache.is_none() || self.insert(fd, Obj::Follow).is_err() {
            return;
        }
        if let Some(k) = self.followed(fd) {
            let now = self.host.unix_ms();
            if let Some(c) = self.cache.as_mut() {
                c.r.opened_followed(k, now);
            }
        }
    }

    /// The cache's name for followed connection `fd` (`None`: not one).
    pub fn followed(&self, fd: c_int) -> Option<u64> {
        match self.obj_ref(fd) {
            Some(Obj::Follow) => Some(FOLLOWED | u64::from(self.index_of(fd)?)),
            _ => None,
        }
    }

    /// The application read `bytes` from followed connection `key` (fd `fd`).
    pub fn cache_read_followed(&mut self, fd: c_int, key: u64, bytes: &[u8]) {
        let Some(c) = self.cache.as_mut() else { return };
        let host = &self.host;
        if !c.r.app_read(key, bytes, &|| host.unix_ms()) {
            return;
        }
        // Its writes go through the cache only if the application had written everything
        // before, and they cannot block (the cache sends with the table held).
        let pending = self.index_of(fd).is_some_and(|i| self.output_waits(i))
            || !self.host.kernel_nonblocking(fd);
        if let Some(c) = self.cache.as_mut() {
            if pending {
                c.r.output_unknown(key);
            }
            c.rewriting = c.r.rewriting();
        }
    }

    /// The application writes `data` to followed connection `fd` (a kernel socket): `None` if
    /// it goes to the kernel as it is; otherwise the cache sent what it must through `send`
    /// (the kernel's send, without blocking: bytes taken or an errno), and this is how much of
    /// `data` it took, or the errno.
    pub fn followed_write(
        &mut self,
        fd: c_int,
        data: &[u8],
        send: &mut dyn FnMut(&[u8]) -> Result<usize, c_int>,
    ) -> Option<Result<usize, c_int>> {
        if !self.cache.as_ref().is_some_and(|c| c.rewriting) {
            return None;
        }
        let key = self.followed(fd)?;
        let c = self.cache.as_mut()?;
        let mut error = libc::EAGAIN;
        let r = c.r.app_write(key, data, &mut |b| {
            send(b).map_err(|e| {
                error = e;
            })
        })?;
        c.rewriting = c.r.rewriting();
        Some(r.map_err(|()| error))
    }

    /// The application read `bytes` from connection `id` (fd `fd`). (Inlined in the read:
    /// with the cache on, every read of every connection comes here.)
    #[inline(always)]
    pub(super) fn cache_read(&mut self, id: ConnId, fd: c_int, bytes: &[u8]) {
        if let Some(c) = self.cache.as_mut() {
            let host = &self.host;
            if c.r.app_read(key(id), bytes, &|| host.unix_ms()) {
                self.cache_read_rewrites(id, fd);
            }
        }
    }

    /// The cache may rewrite what the application writes next to connection `id` (fd `fd`),
    /// after a read.
    #[cold]
    #[inline(never)]
    fn cache_read_rewrites(&mut self, id: ConnId, fd: c_int) {
        // Replies are found by counting them from the next byte the application writes: only
        // if it had written everything before.
        let pending = self.index_of(fd).is_some_and(|i| self.output_waits(i));
        if let Some(c) = self.cache.as_mut() {
            if pending {
                c.r.output_unknown(key(id));
            }
            c.rewriting = c.r.rewriting();
        }
    }

    /// The application writes `data` to connection `id` while the cache rewrites some output:
    /// `None` if this connection's goes as it is.
    pub(super) fn cache_write(
        &mut self,
        id: ConnId,
        data: &[u8],
    ) -> Option<Result<usize, userstack::SockError>> {
        let c = self.cache.as_mut()?;
        let stack = self.stack.as_mut()?;
        let mut error = None;
        let r = c.r.app_write(key(id), data, &mut |b| {
            stack.send(id, b).map_err(|e| {
                error = Some(e);
            })
        })?;
        c.rewriting = c.r.rewriting();
        Some(r.map_err(|()| error.unwrap_or(userstack::SockError::WouldBlock)))
    }

    /// Whether the application has output waiting for the connection of entry `i`: an epoll
    /// entry of one of its fds asks for EPOLLOUT.
    fn output_waits(&self, i: u32) -> bool {
        output_waits(self.table, &self.objs, &self.watchers, i)
    }

    /// The application's event loop (the served listeners') waits: the cache's next reads
    /// are the next iteration's.
    pub(super) fn cache_loop_turn(&mut self) {
        if let Some(c) = self.cache.as_mut() {
            c.r.loop_turn();
        }
    }

    /// A transfer on the application's end of the cache's connection: a write goes to the
    /// cache (all of it taken), a read to the kernel.
    pub(super) fn watch_io(&mut self, fd: c_int, op: &mut Io<'_>) -> Option<IoTry> {
        match op {
            Io::Write(data) => {
                let n = data.len();
                if self.watches_current(fd) {
                    self.cache_control_output(data);
                } else if let Some(c) = self.cache.as_mut() {
                    // Replies to what the cache sent on a connection it has left.
                    c.r.stale_output(n);
                }
                Some(IoTry {
                    result: Ok(n),
                    nonblock: true,
                    timeout: None,
                    rcvlowat: 1,
                })
            }
            Io::Read(..) => None,
        }
    }

    /// Whether `fd` (an [`Obj::Watch`]) is the application's end of the cache's current
    /// connection, not of one the cache has left (closed and made again: Redis's writes to
    /// the old one, and its close of it, do not concern the new one).
    pub(super) fn watches_current(&self, fd: c_int) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|c| c.watched == Some((fd, c.r.link_gen())))
    }

    /// The application writes `data` to its end of the cache's connection.
    pub(super) fn cache_control_output(&mut self, data: &[u8]) {
        let now = self.host.unix_ms();
        if let Some(c) = self.cache.as_mut() {
            c.r.control_output(data, now);
        }
    }

    /// `f` on the cache with its clock and kernel calls (nothing without a cache, or if the
    /// host gives it no connection).
    fn with_cache_io(&mut self, f: impl FnOnce(&mut dyn Responder, &mut dyn ControlIo, UnixMs)) {
        let Some(mut c) = self.cache.take() else {
            return;
        };
        if let Some((now, io)) = self.cache_io() {
            f(&mut *c.r, io, now);
        }
        self.cache = Some(c);
    }

    /// The application closed its end of the cache's connection.
    pub(super) fn cache_control_closed(&mut self) {
        self.with_cache_io(|r, io, now| r.control_closed(io, now));
    }

    /// The application's wait found nothing to report (see [`Responder::idle`]).
    pub(super) fn cache_idle(&mut self) {
        if self.cache.as_ref().is_some_and(|c| c.r.idle_work()) {
            self.with_cache_io(|r, io, now| r.idle(io, now));
        }
    }

    /// The cache's upkeep, at a point where it may answer. (Nothing, not even the clock,
    /// while the cache has nothing to do on its connection: the usual pass. The cache stays
    /// in its place: a move of it out and back cost more than the upkeep itself.)
    pub(super) fn cache_upkeep(&mut self) {
        let Some(c) = self.cache.as_mut() else {
            return;
        };
        if !c.r.upkeep_due() {
            return;
        }
        if c.port.is_none() {
            c.port = self.port_fds.keys().next().copied();
        }
        let now = self.host.unix_ms();
        let upkeep = match (c.port, self.host.control_io()) {
            (Some(port), Some(io)) => c.r.upkeep(io, port, now),
            _ => Upkeep::Nothing,
        };
        if let Upkeep::Watch(ours) = upkeep {
            self.cache_watch(ours);
        }
    }

    /// The cache's connection to Redis is `ours`: Redis's end of it, accepted on the kernel
    /// side, is watched (and no longer followed as a client).
    #[cold]
    fn cache_watch(&mut self, ours: c_int) {
        let Some(mut c) = self.cache.take() else {
            return;
        };
        let theirs = self.host.peer_end(ours);
        if let Some((fd, key)) = theirs.and_then(|fd| Some((fd, self.followed(fd)?))) {
            // Accepted on the kernel side and followed as a client: it is the cache's.
            c.r.closed(key);
            let _ = self.remove(fd);
        }
        let watched = theirs.filter(|&fd| self.insert(fd, Obj::Watch).is_ok());
        // (Taken before `watching`, which may leave the connection at once.)
        c.watched = watched.map(|fd| (fd, c.r.link_gen()));
        if let Some((now, io)) = self.cache_io() {
            c.r.watching(io, watched, now);
        }
        publish(&mut c, self.stack.as_mut());
        self.cache = Some(c);
    }

    /// The cache's statistics handed to the stack after a pass: always when the application
    /// is about to wait (`waits`; the pass's answers are in them), otherwise at most once a
    /// millisecond of the poll's clock (the stack writes its statistics out no more often).
    pub(super) fn cache_publish(&mut self, waits: bool) {
        let ms = self.last_poll.total_millis();
        if let Some(c) = self.cache.as_mut() {
            if waits || c.published != ms {
                c.published = ms;
                publish(c, self.stack.as_mut());
            }
        }
    }

    /// Offers the connections queued as ready in epoll set `epfd` to the cache; transmits the
    /// replies.
    pub(super) fn cache_answer_queued(&mut self, epfd: libc::c_int) {
        if !self.cache.as_ref().is_some_and(|c| c.r.wants_any()) {
            return;
        }
        let Some(mut c) = self.cache.take() else {
            return;
        };
        let mut fds = std::mem::take(&mut c.fds);
        fds.clear();
        if let Some(Obj::Epoll { set, .. }) = self.obj_ref(epfd) {
            fds.extend(set.queued());
        }
        let mut answered = false;
        // The cache's clock, read once for several connections. A time read after the poll
        // that brought their requests, while nothing but the cache acts (Redis waits; the
        // entries change only by what Redis writes), is an instant at which every answer of
        // the pass is the one Redis would have given: after the request, before the reply.
        // (Re-read every ANSWERS_PER_CLOCK connections: a pass over thousands of them.)
        let mut clock = Clock::default();
        for &(fd, events) in &fds {
            let Some(i) = self.index_of(fd) else { continue };
            if let Some(Some(Entry {
                obj: Obj::Conn { id, opts, .. },
                fds: its_fds,
                ..
            })) = self.objs.get(i as usize)
            {
                let (id, lowat) = (*id, opts.rcvlowat > 1);
                // Output the application has waiting for this connection goes first: the
                // usual connection has one fd, watched by this set alone, whose entry says.
                let only_here = its_fds.len() == 1
                    && self.watchers.get(&fd).map(Vec::as_slice) == Some(&[epfd][..]);
                let waits = if only_here {
                    events & libc::EPOLLOUT as u32 != 0
                } else {
                    self.output_waits(i)
                };
                if waits {
                    continue;
                }
                let now = clock.now(|| self.host.unix_ms());
                if let Some(r) = self.answer_with(&mut c, id, now) {
                    answered = true;
                    // The set is told the connection's readiness now (for each of its fds
                    // there), so that the wait after this pass neither asks for it nor takes
                    // what the poll told: when the cache took all it had, the entry leaves the
                    // ready list. Under SO_RCVLOWAT the set's readiness is not the stack's:
                    // the wait asks.
                    let n = self.objs[i as usize].as_ref().map_or(0, |e| e.fds.len());
                    for k in 0..n {
                        let f = self.objs[i as usize].as_ref().map_or(-1, |e| e.fds[k]);
                        if let Some(Obj::Epoll { set, .. }) = self.obj(epfd) {
                            if lowat {
                                set.untell(f);
                            } else {
                                set.settle(f, r);
                            }
                        }
                    }
                }
            }
        }
        c.fds = fds;
        self.cache = Some(c);
        if answered {
            self.flush();
        }
    }

    /// Offers connection `id` to the cache (the application has no output waiting for it).
    /// Returns the connection's readiness if the cache answered anything (its replies are
    /// queued, not sent).
    fn answer_with(&mut self, c: &mut Cache, id: ConnId, now: UnixMs) -> Option<Readiness> {
        // A look at the first bytes before anything else: most requests that are not answered
        // cost only this.
        if !c.r.wants(key(id)) {
            return None;
        }
        let stack = self.stack.as_mut()?;
        let Ok((a, b, room)) = stack.look(id) else {
            return None;
        };
        let used = c.answer(id, a, b, room, || now);
        if used == 0 {
            return None;
        }
        match stack.answer(id, used, &c.out) {
            Ok((sent, r)) => {
                debug_assert_eq!(sent, c.out.len(), "the room was looked at");
                Some(r)
            }
            // (Not reached: `look` gives no room where the send fails. Were it, the requests
            // would stay for Redis, and the cache's figures would count them as hits too.)
            Err(_) => None,
        }
    }
}

impl Cache {
    /// What the cache answers of connection `id`'s waiting bytes (`a` then `b`, in place) with
    /// `room` bytes of send room: how many bytes, its replies in `self.out` (0: none). `now`
    /// is read only if the requests are looked at.
    #[inline]
    fn answer(
        &mut self,
        id: ConnId,
        a: &[u8],
        b: &[u8],
        room: usize,
        now: impl FnOnce() -> UnixMs,
    ) -> usize {
        if a.is_empty() || room == 0 {
            return 0;
        }
        // The requests in place where the buffer does not wrap (at most 64 KiB of them).
        let limit = (a.len() + b.len()).min(64 * 1024);
        let input: &[u8] = if a.len() >= limit {
            &a[..limit]
        } else {
            // Copied together only if the head says the cache may answer them.
            let mut head = [0u8; HEAD];
            let first: &[u8] = if a.len() >= HEAD {
                &a[..HEAD]
            } else {
                let m = b.len().min(HEAD - a.len());
                head[..a.len()].copy_from_slice(a);
                head[a.len()..a.len() + m].copy_from_slice(&b[..m]);
                &head[..a.len() + m]
            };
            if !self.r.may_answer(key(id), first) {
                return 0;
            }
            self.input.clear();
            self.input.extend_from_slice(a);
            self.input.extend_from_slice(&b[..limit - a.len()]);
            &self.input
        };
        self.out.clear();
        self.r.answer(key(id), input, &mut self.out, room, now())
    }
}

/// Whether the application has output waiting for the connection of entry `i`: an epoll
/// entry of one of its fds asks for EPOLLOUT.
fn output_waits(table: &FdTable, objs: &[Option<Entry>], watchers: &Watchers, i: u32) -> bool {
    let Some(Some(Entry { fds, .. })) = objs.get(i as usize) else {
        return false;
    };
    fds.iter().any(|fd| {
        watchers
            .get(fd)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .any(|ep| {
                let set = match table.lookup(*ep) {
                    FdState::Ours(k) => objs.get(k as usize).and_then(Option::as_ref),
                    FdState::NotOurs => None,
                };
                matches!(set, Some(Entry { obj: Obj::Epoll { set, .. }, .. })
                    if set.interest(*fd).is_some_and(|ev| ev & libc::EPOLLOUT as u32 != 0))
            })
    })
}

/// The cache answering inside the stack's poll ([`Respond`]), in an epoll_wait of the
/// application's event loop (`epfd`, the set it waits on) where the cache may answer: a
/// connection's requests are answered right after the segment that brought them, and one
/// answered entirely raises no event. It is offered what the pass after the poll
/// (`cache_answer_queued`) would be offered, in the usual case only: a connection with one fd,
/// watched by this set alone, whose entry may report its data (EPOLLIN, not a spent ONESHOT)
/// and asks for no EPOLLOUT (the application has no output waiting). Anything else raises its
/// event as without the cache, and the pass after the poll looks at it. (Nor a connection
/// under SO_RCVLOWAT: its entry is queued only once that many bytes wait.)
pub(super) struct InPoll<'a, F> {
    pub(super) cache: &'a mut Cache,
    pub(super) objs: &'a [Option<Entry>],
    pub(super) conns: &'a ConnIndex,
    pub(super) watchers: &'a Watchers,
    pub(super) set: &'a EpollSet,
    pub(super) epfd: c_int,
    /// Reads the cache's wall clock (through `clock`).
    pub(super) read_clock: F,
    pub(super) clock: Clock,
}

/// The cache's clock in a poll or a pass: read at the first answer, then once per
/// ANSWERS_PER_CLOCK connections. (The poll received its frames before the first reading:
/// every request answered came before it, and the reading comes before the replies; Redis
/// waits in this very call, so nothing but the cache acts between the two.)
#[derive(Default)]
pub(super) struct Clock {
    at: Option<(UnixMs, u32)>,
}

impl Clock {
    /// The time to answer at, from `read` when it is due for a reading.
    fn now(&mut self, read: impl FnOnce() -> UnixMs) -> UnixMs {
        match &mut self.at {
            Some((t, n)) if *n < ANSWERS_PER_CLOCK => {
                *n += 1;
                *t
            }
            _ => {
                let t = read();
                self.at = Some((t, 1));
                t
            }
        }
    }
}

impl<F: Fn() -> UnixMs> Respond for InPoll<'_, F> {
    fn respond(&mut self, id: ConnId, a: &[u8], b: &[u8], room: usize) -> Option<(usize, &[u8])> {
        if !self.cache.r.wants(key(id)) {
            return None;
        }
        let &i = self.conns.get(&id)?;
        let Entry {
            obj: Obj::Conn { opts, .. },
            fds,
            ..
        } = self.objs.get(i as usize)?.as_ref()?
        else {
            return None;
        };
        // (Under SO_RCVLOWAT the set reports data only from that many bytes on: the pass
        // offers the connection when it does.)
        if opts.rcvlowat > 1 {
            return None;
        }
        let [fd] = fds[..] else { return None };
        if self.watchers.get(&fd).map(Vec::as_slice) != Some(&[self.epfd][..]) {
            return None;
        }
        let events = self.set.armed_interest(fd)?;
        if events & libc::EPOLLIN as u32 == 0 || events & libc::EPOLLOUT as u32 != 0 {
            return None;
        }
        let (clock, read) = (&mut self.clock, &self.read_clock);
        let used = self.cache.answer(id, a, b, room, || clock.now(read));
        (used > 0).then_some((used, &self.cache.out[..]))
    }
}
