//! The Redis GET cache (`MTCP_REDIS_CACHE=SIZE`).
//!
//! **Consistency.** The cache opens a connection of its own to Redis (to 127.0.0.1 on a port
//! Redis listens on), speaks RESP3 on it and turns on CLIENT TRACKING before its first fill:
//! every key the cache reads there is one Redis sends an invalidation for when it changes (a
//! write by any client, a script, expiry, eviction, a flush, a master's stream). (Not at the
//! handshake: once any client has turned tracking on, Redis 7.0 keeps its tracking table for
//! good and looks up every key written in it, and checks the table's size before every
//! command while a client tracks, ~90 instructions a SET: a Redis that is only written to
//! never pays them.) The socket table routes what Redis
//! writes to that connection straight here ([`Responder::control_output`]) instead of the
//! kernel, so an invalidation is applied at the moment Redis writes it. Redis writes every
//! client's output, that connection's included, before its event loop waits again; the cache
//! answers only while Redis waits in epoll_wait (and not in the nested, zero-timeout waits it
//! makes inside a command). At that point every change Redis made has been invalidated, and
//! no command is executing: a reply from the cache is the reply Redis would give then.
//!
//! **Fills.** A GET the cache cannot answer goes to Redis; the cache asks for the key on its
//! own connection (`GET k` and `PEXPIRETIME k`, pipelined, which Redis runs back to back) and
//! keeps the reply with the key's expiry time. An invalidation of the key that arrives while
//! the fill is on its way discards it.
//!
//! **Per connection.** The cache follows what Redis reads from each connection (SELECT, HELLO,
//! AUTH, MULTI, CLIENT REPLY, SUBSCRIBE, MONITOR, blocking commands) and answers only a
//! connection whose next reply is simply the next request's: database 0, RESP2, default user,
//! not in a transaction, nothing unanswered, no output waiting in Redis. A connection that
//! leaves that state is left to Redis for good (`cache.aside_*`).
//!
//! **What Redis shows.** Under a `timeout`, a connection's request goes to Redis although
//! cached every 500 ms at most (CLIENT LIST's `idle`, the `timeout` setting). A key's last
//! use: when Redis evicts by LRU, the keys answered are TOUCHed in Redis within 500 ms;
//! otherwise OBJECT IDLETIME's reply is corrected, and a key is TOUCHed when it leaves the
//! cache. INFO's reply shows Redis's figures without the cache's part (`super::info`).
//! docs/configuration.md lists what differs (MONITOR, the slowlog, ...).

use std::collections::VecDeque;

use super::info::{Edit, Rewriter, Shown};
use super::resp::{self, Parsed, Reply};
use super::store::Store;
use super::{Aside, CacheStats, ControlIo, Responder, UnixMs, Upkeep};

/// The longest a connection or a key goes without Redis seeing a request for it.
pub const SEEN_EVERY_MS: UnixMs = 500;
/// How long keys to TOUCH wait to be sent together: one send to Redis (and one read of
/// Redis's) per this time, not per loop iteration. A key is queued once Redis has not seen it
/// for [`SEEN_EVERY_MS`] less this, so that Redis sees it within [`SEEN_EVERY_MS`].
const TOUCH_EVERY_MS: UnixMs = 100;
/// So many keys to TOUCH are sent at once.
const TOUCH_BATCH: usize = 4096;
/// A connection whose last this many requests held no GET is no longer looked at (its data is
/// not peeked at in every wait); its next GET that Redis reads makes it looked at again. A look
/// at a request the cache does not answer costs ~80 instructions, a GET left to Redis ~3,600
/// more than one the cache answers: looking pays while more than ~2% of a connection's
/// requests are GETs, and 16 requests in a row without one say that it is not so (a run of
/// 16 comes with probability 0.72 from a connection with 2% GETs, 10^-16 with 90%).
const QUIET_AFTER: u32 = 16;
/// The fewest GETs at the front of a pipeline the cache answers when it cannot answer all of
/// the pipeline's requests (see [`RedisCache::answer`]).
pub const MIN_PART: usize = 4;
/// How long a key whose entry was invalidated before any hit is not filled again (a
/// fill costs Redis two commands; a key written that often pays them back rarely).
const COLD_MS: UnixMs = 10;
/// Such keys remembered at most.
const MAX_COLD: usize = 65536;
/// Fills on their way at most.
const MAX_FILLS: usize = 256;
/// Fills are sent at most once per this time ([`RedisCache::send_fills`]).
const FILL_WAIT_MS: UnixMs = 1;
/// So many fills are sent without waiting longer.
const FILL_BATCH: usize = 16;
/// How long after losing its connection the cache tries again.
const RETRY_MS: UnixMs = 1000;
/// A handshake that takes longer than this is given up (and tried again later).
const HANDSHAKE_MS: UnixMs = 2000;
/// The client name of the cache's connection (what CLIENT LIST's rewritten reply leaves out).
pub const CLIENT_NAME: &str = "mtcp-cache";
/// What [`Expect::Ok`] names the tracking request by.
const TRACKING: &str = "CLIENT TRACKING";

/// The cache's connection to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not connected; tries at `retry`.
    Down { retry: UnixMs },
    /// The handshake is sent (or waits to be), its replies come through the kernel.
    Handshake { fd: i32, since: UnixMs },
    /// Handshake done; the table is finding Redis's end.
    Locating { fd: i32 },
    /// Redis's end is watched: the cache answers.
    Ready { fd: i32 },
    /// The cache cannot work with this Redis (said once on stderr).
    Off,
}

/// A reply the cache waits for on its connection, in order.
#[derive(Debug)]
enum Expect {
    Hello,
    Ok(&'static str),
    Policy,
    Timeout,
    Slowlog,
    Listeners,
    Modules,
    /// A TOUCH of keys (their hashes: [`RedisCache::key_hash`]).
    Touch(Vec<u64>),
    Get(Box<[u8]>),
    Ttl(Box<[u8]>),
}

/// A fill on its way.
#[derive(Debug, Default)]
struct Fill {
    /// The GET's reply: `Some(Some(v))` a value, `Some(None)` no such key.
    value: Option<Option<Box<[u8]>>>,
    /// An invalidation of the key came after the fill was sent: its value may be older.
    tainted: bool,
}

/// What the cache knows of one client connection.
#[derive(Debug, Default)]
struct Track {
    /// The end of what Redis read that is not a whole request yet.
    partial: Vec<u8>,
    db: i64,
    multi: bool,
    monitor: bool,
    /// Left to Redis: not answered (still followed).
    aside: bool,
    /// Its requests cannot be followed (see [`RedisCache::lost`]).
    lost: bool,
    /// When Redis last read from it.
    read: UnixMs,
    /// Requests Redis read from it since its last GET (a connection that sends no GETs is not
    /// worth a look at its data: see [`Responder::wants`]).
    since_get: u32,
    /// The loop iteration of its last read, and the requests Redis read from it in that
    /// iteration: replies Redis writes after that iteration's reads.
    epoch: u64,
    replies_ahead: u64,
    /// Its replies are not one per request (CLIENT REPLY, SUBSCRIBE, MONITOR): INFO's reply
    /// cannot be found by counting.
    uncounted: bool,
    /// Puts INFO's replies as Redis would show them without the cache in its output.
    info: Option<Box<Rewriter>>,
    /// Its data may be offered to the cache (`Responder::opened`, not `opened_followed`):
    /// counted in `looked_at` while it sends GETs.
    offered: bool,
    /// What commands queued in its transaction do to every connection's answers, taken
    /// when EXEC runs them (dropped by DISCARD).
    deferred: Vec<Global>,
    /// The loop iteration and the length of the input of its last request counted as not
    /// answered (`cache.misses`, `cache.unavailable`): a wait offers a connection in its poll
    /// and again from the set's ready list, and a request counts once.
    counted: (u64, usize),
}

/// What a command does to every connection's answers (`RedisCache::apply`), when it runs:
/// inside a transaction, at its EXEC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    /// Nothing cached can be trusted (SWAPDB, which Redis tells no tracking client of, or a
    /// script that may run it).
    Flush,
    /// CONFIG RESETSTAT: INFO's figures start again.
    ResetStat,
    /// A setting the handshake checked, or the users' rules, may have changed (CONFIG SET,
    /// ACL, REPLICAOF): the connection is made and checked again. `slowlog_all`: what a
    /// CONFIG SET of slowlog-log-slower-than alone says of it.
    Restart { slowlog_all: Option<bool> },
}

impl Track {
    /// Counted in `RedisCache::looked_at`.
    fn looked_at(&self) -> bool {
        self.offered && self.since_get < QUIET_AFTER
    }

    /// Stores what a read counted: requests since the last GET (keeping `looked_at`, the
    /// cache's count of connections [`Track::looked_at`], true) and replies ahead.
    #[inline]
    fn store_counts(&mut self, since_get: u32, ahead: u64, looked_at: &mut usize) {
        let before = self.looked_at();
        self.since_get = since_get;
        match (before, self.looked_at()) {
            (true, false) => *looked_at -= 1,
            (false, true) => *looked_at += 1,
            _ => {}
        }
        self.replies_ahead = ahead;
    }

    /// Whether Redis's reply to the next request would simply be the next reply: not left to
    /// Redis, not in a transaction, no request of it half read.
    fn answerable(&self) -> bool {
        !(self.aside || self.multi || !self.partial.is_empty())
    }
}

pub struct RedisCache {
    store: Store,
    link: Link,
    expect: VecDeque<Expect>,
    fills: userstack::FastMap<Box<[u8]>, Fill>,
    /// The keys Redis tracks for the cache's connection (hashes: [`RedisCache::key_hash`]):
    /// read there, not invalidated since. INFO's `tracking_total_*` leave them out.
    tracked: userstack::FastMap<u64, ()>,
    /// The client id Redis gave the cache's connection (HELLO's reply).
    own_id: Option<u64>,
    /// Keys whose fills wait to be sent (`send_fills`); the last fills went at `fills_sent`.
    queued_fills: Vec<Box<[u8]>>,
    fills_sent: UnixMs,
    /// Requests to send on the cache's connection.
    out: Vec<u8>,
    /// What Redis wrote on the cache's connection, not parsed yet.
    input: Vec<u8>,
    conns: super::conns::ConnMap<Track>,
    /// Offered connections with fewer than QUIET_AFTER requests since their last GET: those
    /// looked at (`wants`). None: no epoll wait offers any connection (`wants_any`).
    looked_at: usize,
    stats: CacheStats,
    /// Connections in MONITOR mode: while any is, every request goes to Redis (MONITOR shows
    /// what Redis executes).
    monitors: usize,
    /// Connections whose requests the cache cannot follow: while any is open, nobody is
    /// answered.
    blind: usize,
    /// What the cache changed in Redis's INFO figures (see `info`).
    shown: Shown,
    /// Iterations of the application's event loop (see [`Responder::loop_turn`]).
    epoch: u64,
    /// Connections whose output goes through their [`Rewriter`].
    rewriting: usize,
    /// Times Redis closed the cache's connection (CLIENT KILL counts it among the clients it
    /// killed: see [`Edit::Kill`]).
    own_closed: u64,
    /// CLIENT PAUSE: the cache answers nobody until then.
    /// Redis lifts a pause that ran out in its cron, up to 1000/hz ms later, and runs the
    /// requests it held back then: the end is kept that much later (`pause_grace`).
    paused_until: UnixMs,
    /// The pause holds back every command (CLIENT PAUSE ... ALL, the default), CLIENT UNPAUSE
    /// included: Redis runs an UNPAUSE only when the pause ends.
    pause_all: bool,
    /// 1000/hz ms, and one more (Redis's `hz`, as the handshake found it).
    pause_grace: UnixMs,
    /// Redis's `shutdown-timeout`, in ms: how long a SHUTDOWN may hold back writes while
    /// replicas catch up.
    shutdown_ms: UnixMs,
    /// A SHUTDOWN holds writes back: the cache answers nobody until then.
    held_until: UnixMs,
    /// Connections made so far: a watched end of an earlier one is no longer the cache's
    /// ([`Responder::link_gen`]).
    link_gen: u64,
    /// `MTCP_REDIS_CACHE_FAULT=late`: invalidations take effect one reply late (for tests
    /// that must show they catch it).
    late: bool,
    /// The connection must be made again (a setting it checked may have changed, or Redis
    /// wrote what the cache could not follow): nothing is answered until it is.
    link_restart: bool,
    /// Redis closes idle clients (its `timeout` setting is not 0).
    idle_timeout: bool,
    /// CLIENT TRACKING ON is sent on this connection (before its first fill).
    tracking: bool,
    /// Redis refused what the cache needs on its ready connection (CLIENT TRACKING): the next
    /// upkeep turns the cache off, saying why.
    refused: Option<String>,
    /// The cache is off because of one of Redis's settings (LFU eviction, every command in the
    /// slowlog): a CONFIG SET makes it connect and check again.
    off_by_setting: bool,
    /// Redis logs every command in its slowlog (`slowlog-log-slower-than 0`, as the handshake
    /// found or a client's CONFIG SET said): the cache stays off and does not connect, since
    /// Redis would log the handshake's commands among its clients'.
    slowlog_all: bool,
    /// The stack's address (a bind address of Redis's the shim serves).
    stack_addr: Option<std::net::Ipv4Addr>,
    /// Keys not to fill until then (see [`COLD_MS`]).
    cold: userstack::FastMap<Box<[u8]>, UnixMs>,
    /// Keys answered from the cache whose last access Redis has not seen for a while: an
    /// upkeep sends them in a TOUCH ([`TOUCH_EVERY_MS`]).
    touch: Vec<Box<[u8]>>,
    /// When the first of them was queued.
    touch_since: UnixMs,
    /// Redis evicts the least recently used keys (`maxmemory-policy` `*-lru`): keys the cache
    /// answers are TOUCHed in Redis within [`SEEN_EVERY_MS`]. Otherwise a key's last access
    /// matters only to OBJECT IDLETIME, whose replies the cache corrects, and to nothing once
    /// the key leaves the cache, which TOUCHes it then.
    lru: bool,
}

/// The blocking commands: their reply comes when something happens, not in the loop
/// iteration that read them.
const BLOCKING: [&[u8]; 12] = [
    b"BLPOP",
    b"BRPOP",
    b"BRPOPLPUSH",
    b"BLMOVE",
    b"BLMPOP",
    b"BZPOPMIN",
    b"BZPOPMAX",
    b"BZMPOP",
    b"WAIT",
    b"WAITAOF",
    b"XREAD",
    b"XREADGROUP",
];

impl RedisCache {
    /// A connection opened: its state, counted in `looked_at` if `offered`.
    fn track(&mut self, conn: u64, now: UnixMs, offered: bool) {
        let t = Track {
            read: now,
            offered,
            ..Track::default()
        };
        let counted = t.looked_at();
        if let Some(old) = self.conns.insert(conn, t) {
            if old.looked_at() {
                self.looked_at -= 1;
            }
        }
        if counted {
            self.looked_at += 1;
        }
    }

    /// A cache of at most `budget` bytes (`late`: see [`RedisCache::late`]).
    pub fn new(budget: usize, late: bool, now: UnixMs) -> RedisCache {
        RedisCache {
            store: Store::new(budget),
            link: Link::Down { retry: now },
            expect: VecDeque::new(),
            fills: Default::default(),
            tracked: Default::default(),
            own_id: None,
            queued_fills: Vec::new(),
            fills_sent: 0,
            out: Vec::new(),
            input: Vec::new(),
            conns: Default::default(),
            looked_at: 0,
            stats: CacheStats::default(),
            monitors: 0,
            blind: 0,
            shown: Shown::default(),
            epoch: 0,
            rewriting: 0,
            own_closed: 0,
            paused_until: 0,
            pause_all: false,
            pause_grace: 1000 / 10 + 1,
            shutdown_ms: 10_000,
            held_until: 0,
            link_gen: 0,
            late,
            link_restart: false,
            idle_timeout: false,
            tracking: false,
            refused: None,
            off_by_setting: false,
            slowlog_all: false,
            stack_addr: None,
            cold: Default::default(),
            touch: Vec::new(),
            touch_since: 0,
            lru: false,
        }
    }

    /// The stack's address, which Redis may bind to (a listener the shim serves).
    pub fn with_stack_addr(mut self, addr: std::net::Ipv4Addr) -> RedisCache {
        self.stack_addr = Some(addr);
        self
    }

    fn flush(&mut self) {
        if self.store.len() > 0 {
            self.stats.flushes += 1;
        }
        self.store.clear();
        for f in self.fills.values_mut() {
            f.tainted = true;
        }
    }

    /// Keys the cache answered that Redis has not seen since: the next upkeeps TOUCH them.
    fn touch_keys(&mut self, keys: Vec<Box<[u8]>>, now: UnixMs) {
        if keys.is_empty() {
            return;
        }
        if self.touch.is_empty() {
            self.touch_since = now;
        }
        self.touch.extend(keys);
    }

    /// The connection is gone (or unusable): nothing cached can be trusted any more.
    fn lose(&mut self, io: &mut dyn ControlIo, now: UnixMs) {
        self.link_gen += 1;
        match self.link {
            Link::Handshake { fd, .. } | Link::Locating { fd } | Link::Ready { fd } => io.close(fd),
            Link::Down { .. } | Link::Off => {}
        }
        self.flush();
        self.fills.clear();
        self.queued_fills.clear();
        self.tracked.clear();
        self.expect.clear();
        self.out.clear();
        self.input.clear();
        self.touch.clear();
        self.shown.own_client = false;
        self.shown.own_tracking = false;
        self.tracking = false;
        if self.link != Link::Off {
            self.link = Link::Down {
                retry: now + RETRY_MS,
            };
        }
    }

    fn off(&mut self, io: &mut dyn ControlIo, why: &str, now: UnixMs) {
        let until = if self.off_by_setting {
            "while that holds (checked again after a CONFIG SET or an ACL change)"
        } else {
            "from now on"
        };
        io.say(&format!(
            "MTCP_REDIS_CACHE: {why}; the cache is off {until}"
        ));
        self.lose(io, now);
        self.link = Link::Off;
    }

    /// `conn` sent what the cache cannot follow: its requests may change what the cache could
    /// answer for everyone, so nobody is answered until it closes (Redis closes a connection
    /// that sends what it cannot parse either).
    fn lost(&mut self, conn: u64) {
        self.aside(conn, Aside::Unparsed);
        if let Some(t) = self.conns.get_mut(&conn) {
            if !t.lost {
                t.lost = true;
                t.partial = Vec::new();
                self.blind += 1;
            }
        }
    }

    fn aside(&mut self, conn: u64, why: Aside) {
        if let Some(t) = self.conns.get_mut(&conn) {
            if !t.aside {
                t.aside = true;
                self.stats.aside[why as usize] += 1;
            }
        }
    }

    /// Whether the cache has something to send to Redis (TOUCHes, fills, requests not sent
    /// yet): otherwise the upkeep of a ready connection has nothing to do (the usual pass).
    fn ready_work(&self) -> bool {
        !(self.touch.is_empty() && self.queued_fills.is_empty() && self.out.is_empty())
    }

    /// What [`Responder::app_read`] does not count at its front: requests with a name the
    /// cache follows, or a request's end joined to its beginning read before.
    #[inline(never)]
    fn app_read_rest(&mut self, conn: u64, bytes: &[u8], now: UnixMs) -> bool {
        let Some(t) = self.conns.get_mut(&conn) else {
            return false;
        };
        let mut buf = std::mem::take(&mut t.partial);
        let joined;
        let data: &[u8] = if buf.is_empty() {
            bytes
        } else {
            buf.extend_from_slice(bytes);
            joined = buf;
            &joined
        };
        let mut used = 0;
        // Requests since the last GET, counted here and stored once.
        let mut since_get = t.since_get;
        // Replies Redis will write before the next request's, counted here and stored once.
        let mut ahead = t.replies_ahead;
        let mut info = false;
        while used < data.len() {
            used += count_plain(&data[used..], &mut since_get, &mut ahead);
            if used == data.len() {
                break;
            }
            match resp::command(&data[used..]) {
                Parsed::Done(c) => {
                    info |=
                        self.request(conn, &data[used..], &c, (&mut since_get, &mut ahead), now);
                    used += c.len;
                }
                Parsed::Quoted(len) => {
                    let Some(args) = resp::split_inline(&data[used..used + len]) else {
                        // Redis answers "unbalanced quotes" and closes the connection.
                        self.lost(conn);
                        return false;
                    };
                    let mut req = Vec::new();
                    resp::encode(&mut req, &args.iter().map(|a| &a[..]).collect::<Vec<_>>());
                    if let Parsed::Done(c) = resp::command(&req) {
                        info |= self.request(conn, &req, &c, (&mut since_get, &mut ahead), now);
                    }
                    used += len;
                }
                Parsed::Partial => break,
                Parsed::Bad => {
                    self.lost(conn);
                    return false;
                }
            }
        }
        if let Some(t) = self.conns.get_mut(&conn) {
            t.store_counts(since_get, ahead, &mut self.looked_at);
            if used < data.len() {
                t.partial = data[used..].to_vec();
            }
        }
        info
    }

    /// One whole request Redis read from `conn` (`buf` holds it at its front): follows it,
    /// counts it. Returns whether it is an INFO whose reply is to be rewritten.
    fn request(
        &mut self,
        conn: u64,
        buf: &[u8],
        c: &resp::Cmd,
        (since_get, ahead): (&mut u32, &mut u64),
        now: UnixMs,
    ) -> bool {
        if c.argc == 0 {
            // Redis skips an empty request: no reply.
            return false;
        }
        let name = c.arg(buf, 0).unwrap_or_default();
        let mut info = false;
        if resp::is_get(name) {
            *since_get = 0;
        } else {
            *since_get = since_get.saturating_add(1);
            if is_info(name) {
                let shown = Shown {
                    own_tracked: self.tracked.len() as u64,
                    ..self.shown
                };
                info = self.edit_request(conn, *ahead, Edit::Info(shown));
            } else if name.eq_ignore_ascii_case(b"OBJECT") && c.arg_is(buf, 1, b"IDLETIME") {
                // The key's idle time is at most the time since the cache last answered it
                // (the cache holds database 0's keys).
                let db0 = self.conns.get(&conn).is_some_and(|t| t.db == 0);
                let answered = c
                    .arg(buf, 2)
                    .filter(|_| db0)
                    .and_then(|k| self.store.get(k))
                    .map(|e| e.hit_at);
                if let Some(at) = answered.filter(|&at| at > 0) {
                    let idle = now / 1000 - at / 1000;
                    info = self.edit_request(conn, *ahead, Edit::Idle(idle));
                }
            } else if followed_name(name) {
                if name.eq_ignore_ascii_case(b"CLIENT") && c.arg_is(buf, 1, b"KILL") && c.argc != 3
                {
                    // The filter form answers how many it killed; the cache's connection may
                    // be one.
                    info = self.edit_request(conn, *ahead, Edit::Kill(self.own_closed));
                } else if name.eq_ignore_ascii_case(b"CLIENT") && c.arg_is(buf, 1, b"LIST") {
                    if let Some(id) = self.own_id.filter(|_| self.shown.own_client) {
                        info = self.edit_request(conn, *ahead, Edit::Clients(id));
                    }
                }
                self.follow(conn, buf, c, now);
            }
        }
        *ahead += 1;
        info
    }

    /// `conn` sent a request whose reply is to be changed (`edit`: INFO's figures without the
    /// cache's part in them, as they are now, for Redis executes the request in this
    /// iteration), after requests whose `ahead` replies Redis writes first.
    fn edit_request(&mut self, conn: u64, ahead: u64, edit: Edit) -> bool {
        let epoch = self.epoch;
        let Some(t) = self.conns.get_mut(&conn) else {
            return false;
        };
        if t.uncounted || t.multi {
            // Replies not one per request, or INFO's inside EXEC's: not rewritten.
            return false;
        }
        let rw = t.info.get_or_insert_with(Default::default);
        let was = rw.active();
        if !rw.expect(ahead, edit, epoch) {
            return false;
        }
        if !was {
            self.rewriting += 1;
        }
        true
    }

    fn uncounted(&mut self, conn: u64) {
        if let Some(t) = self.conns.get_mut(&conn) {
            t.uncounted = true;
        }
    }

    /// One request Redis read from `conn`.
    fn follow(&mut self, conn: u64, buf: &[u8], c: &resp::Cmd, now: UnixMs) {
        let name = c.arg(buf, 0).unwrap_or_default();
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if is(b"SELECT") {
            let db = c
                .arg(buf, 1)
                .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok());
            match (db, self.conns.get_mut(&conn)) {
                (Some(db), Some(t)) => t.db = db,
                _ => self.aside(conn, Aside::Unparsed),
            }
            if self.conns.get(&conn).is_some_and(|t| t.db != 0) {
                self.aside(conn, Aside::Db);
            }
        } else if is(b"HELLO") {
            if (2..KEPT_ARGS).any(|i| c.arg_is(buf, i, b"AUTH")) || c.argc > KEPT_ARGS {
                self.aside(conn, Aside::Auth);
            } else if c.argc >= 2 && c.arg(buf, 1) != Some(b"2") {
                self.aside(conn, Aside::Protocol);
            }
        } else if is(b"AUTH") {
            self.aside(conn, Aside::Auth);
        } else if is(b"MULTI") && c.argc == 1 {
            if let Some(t) = self.conns.get_mut(&conn) {
                if !t.multi {
                    t.multi = true;
                    t.deferred.clear();
                }
            }
        } else if is(b"RESET") {
            // Ends a transaction unrun (what else it resets leaves the connection as the
            // cache's rules left it: aside stays aside).
            if let Some(t) = self.conns.get_mut(&conn) {
                t.multi = false;
                t.deferred.clear();
            }
        } else if is(b"EXEC") || (is(b"DISCARD") && c.argc == 1) {
            // (A DISCARD Redis refuses leaves the transaction open; an EXEC it refuses, for
            // its arguments, ends it unrun.)
            let run = is(b"EXEC") && c.argc == 1;
            let deferred = match self.conns.get_mut(&conn) {
                Some(t) if t.multi => {
                    t.multi = false;
                    std::mem::take(&mut t.deferred)
                }
                _ => Vec::new(),
            };
            if run {
                for g in deferred {
                    self.apply(g);
                }
            }
        } else if is(b"CLIENT") {
            if c.arg_is(buf, 1, b"PAUSE") {
                // Held back from the moment it is read, also inside a transaction (early is
                // safe: nobody is answered).
                // (A timeout that is not a number: Redis refuses it, and pauses nothing.)
                let ms = c
                    .arg(buf, 2)
                    .and_then(|d| std::str::from_utf8(d).ok()?.parse::<i64>().ok());
                if let Some(ms) = ms {
                    let until = now
                        .saturating_add(ms.max(0))
                        .saturating_add(1 + self.pause_grace);
                    let all = !c.arg_is(buf, 3, b"WRITE");
                    if now >= self.paused_until {
                        self.pause_all = all;
                    } else {
                        self.pause_all |= all;
                    }
                    self.paused_until = self.paused_until.max(until);
                }
            } else if c.arg_is(buf, 1, b"UNPAUSE")
                && !self.pause_all
                && !self.conns.get(&conn).is_some_and(|t| t.multi)
            {
                // (Not under a pause of every command, where Redis runs the UNPAUSE only when
                // the pause ends, nor inside a transaction, whose EXEC may run nothing or wait
                // for the pause: the pause's own end stands.)
                self.paused_until = self.paused_until.min(now.saturating_add(self.pause_grace));
            } else if c.arg_is(buf, 1, b"REPLY") {
                self.aside(conn, Aside::Mode);
                self.uncounted(conn);
            } else if c.arg_is(buf, 1, b"TRACKING") {
                // Its invalidations are RESP3 pushes, which are not replies, or go to another
                // connection.
                self.aside(conn, Aside::Mode);
            }
        } else if is(b"SUBSCRIBE") || is(b"PSUBSCRIBE") || is(b"SSUBSCRIBE") {
            self.aside(conn, Aside::Mode);
            self.uncounted(conn);
        } else if is(b"MONITOR") {
            self.uncounted(conn);
            if let Some(t) = self.conns.get_mut(&conn) {
                if !t.monitor {
                    t.monitor = true;
                    self.monitors += 1;
                }
            }
            self.aside(conn, Aside::Mode);
        } else if BLOCKING.iter().any(|b| is(b)) {
            self.aside(conn, Aside::Blocking);
        } else if is(b"SWAPDB") || is(b"EVAL") || is(b"EVALSHA") || is(b"FCALL") {
            // Redis sends no invalidation for SWAPDB (its tracking keys are not per
            // database), and a script that may write may run it (EVAL_RO and FCALL_RO may
            // not).
            self.global(conn, Global::Flush);
        } else if is(b"CONFIG") && c.arg_is(buf, 1, b"RESETSTAT") {
            self.global(conn, Global::ResetStat);
        } else if is(b"CONFIG") && c.arg_is(buf, 1, b"SET")
            || is(b"ACL")
                && [&b"SETUSER"[..], b"DELUSER", b"LOAD"]
                    .iter()
                    .any(|s| c.arg_is(buf, 1, s))
            || is(b"REPLICAOF")
            || is(b"SLAVEOF")
            || is(b"MODULE") && !c.arg_is(buf, 1, b"LIST")
        {
            // Settings the handshake checked (maxmemory-policy, replicaof), or the users'
            // rules, may have changed: connect again and check again.
            // (Known without asking: while Redis logs every command, the handshake's would be
            // logged too. Several pairs in one CONFIG SET: the handshake asks.)
            let slowlog_all =
                (is(b"CONFIG") && c.argc == 4 && c.arg_is(buf, 2, b"slowlog-log-slower-than"))
                    .then(|| {
                        c.arg(buf, 3)
                            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                            == Some(0)
                    });
            self.global(conn, Global::Restart { slowlog_all });
        } else if is(b"FAILOVER") {
            // Writes held back, then Redis a replica (or not, if it fails): the cache stays
            // off until a CONFIG SET or an ACL change has it check again.
            if !c.arg_is(buf, 1, b"ABORT") {
                self.refused = Some("Redis was asked to FAIL OVER to a replica".into());
            }
        } else if is(b"SHUTDOWN") && !(1..c.argc).any(|i| c.arg_is(buf, i, b"ABORT")) {
            // Writes held back while replicas catch up, for at most shutdown-timeout (a hold
            // of its own: CLIENT UNPAUSE does not lift it).
            let until = now
                .saturating_add(self.shutdown_ms)
                .saturating_add(self.pause_grace);
            self.held_until = self.held_until.max(until);
        }
    }

    /// A request of `conn` (its input `len` bytes) was counted as not answered in this loop
    /// iteration: offered again in it, it is not counted again.
    fn count_once(&mut self, conn: u64, len: usize) {
        let epoch = self.epoch;
        if let Some(t) = self.conns.get_mut(&conn) {
            t.counted = (epoch, len);
        }
    }

    /// `g`, read from `conn`: now, or at the EXEC of the transaction it is queued in.
    fn global(&mut self, conn: u64, g: Global) {
        match self.conns.get_mut(&conn) {
            Some(t) if t.multi => t.deferred.push(g),
            _ => self.apply(g),
        }
    }

    fn apply(&mut self, g: Global) {
        match g {
            Global::Flush => self.flush(),
            Global::ResetStat => self.shown.reset_stats(),
            Global::Restart { slowlog_all } => {
                self.link_restart = true;
                if let Some(all) = slowlog_all {
                    self.slowlog_all = all;
                }
            }
        }
    }

    /// Parses what Redis wrote on the cache's connection.
    fn take(&mut self, now: UnixMs) -> Result<(), String> {
        let mut used = 0;
        loop {
            let buf = &self.input[used..];
            let (r, n) = match resp::reply(buf) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(_) => return Err("Redis sent a reply the cache cannot parse".into()),
            };
            if let Reply::Push(kind) = r {
                if kind == b"invalidate" {
                    let keys = invalidated(&buf[..n])?;
                    self.invalidate(keys, now);
                }
                used += n;
                continue;
            }
            let r = match r {
                Reply::Bulk(v) => Got::Value(Some(v.into())),
                Reply::Null => Got::Value(None),
                Reply::Int(i) => Got::Int(i),
                Reply::Error(e) => Got::Error(String::from_utf8_lossy(e).into_owned()),
                Reply::Simple(s) => Got::Simple(s.eq_ignore_ascii_case(b"OK")),
                Reply::Push(_) => unreachable!("handled above"),
                Reply::Other => Got::Other(buf[..n].to_vec()),
            };
            used += n;
            let Some(e) = self.expect.pop_front() else {
                return Err("Redis sent a reply the cache did not ask for".into());
            };
            self.answered(e, r, now)?;
        }
        self.input.drain(..used);
        Ok(())
    }

    fn answered(&mut self, e: Expect, r: Got, now: UnixMs) -> Result<(), String> {
        self.tally(&e, &r);
        match (e, r) {
            (Expect::Ok(TRACKING), Got::Error(e)) if e.starts_with("NOPERM") => {
                // Sent on the ready connection: a new connection would be refused the same
                // until the users' rules change. (Another error, e.g. BUSY while a script
                // runs, makes the connection again.)
                let why = format!("Redis refused CLIENT TRACKING: {e}");
                self.refused = Some(why.clone());
                return Err(why);
            }
            (Expect::Hello, Got::Other(raw)) => self.own_id = hello_id(&raw),
            (
                Expect::Hello
                | Expect::Ok(_)
                | Expect::Policy
                | Expect::Timeout
                | Expect::Slowlog
                | Expect::Listeners
                | Expect::Modules,
                Got::Error(e),
            ) => {
                return Err(if e.starts_with("NOAUTH") || e.starts_with("WRONGPASS") {
                    "Redis asks its clients for a password, and the cache has none".into()
                } else {
                    format!("Redis refused the cache's connection: {e}")
                });
            }
            (Expect::Ok(_), Got::Simple(true)) => {}
            (Expect::Ok(what), _) => return Err(format!("Redis did not take {what}")),
            (Expect::Timeout, Got::Other(raw)) => {
                // A map of one: `timeout` and its value, in seconds.
                self.idle_timeout = config_value(&raw).is_some_and(|v| v != b"0");
            }
            (Expect::Modules, Got::Other(raw)) => {
                // An array of one map per module (RESP3): "*0" when none is loaded.
                if !raw.starts_with(b"*0\r\n") {
                    self.off_by_setting = true;
                    return Err(
                        "Redis has modules loaded (MODULE LIST): a module's command \
                                may hold a client's reply back, which the cache would \
                                overtake"
                            .into(),
                    );
                }
            }
            (Expect::Listeners, Got::Other(raw)) => {
                if let Some(why) = self
                    .unfollowed_listener(&raw)
                    .or_else(|| self.settings(&raw))
                {
                    self.off_by_setting = true;
                    return Err(why);
                }
            }
            (Expect::Slowlog, Got::Other(raw)) => {
                self.slowlog_all = config_value(&raw) == Some(b"0");
                if self.slowlog_all {
                    self.off_by_setting = true;
                    return Err(SLOWLOG_ALL.into());
                }
            }
            (Expect::Touch(hashes), got) => {
                // Redis tracks the keys of a read-only command it ran.
                if ran(&got) {
                    self.tracked.extend(hashes.into_iter().map(|h| (h, ())));
                }
            }
            (Expect::Policy, Got::Other(raw)) => {
                self.lru = raw.windows(3).any(|w| w.eq_ignore_ascii_case(b"lru"));
                if raw.windows(3).any(|w| w.eq_ignore_ascii_case(b"lfu")) {
                    self.off_by_setting = true;
                    return Err(
                        "Redis evicts by access frequency (maxmemory-policy *-lfu), \
                                which keys the cache answers would not count in"
                            .into(),
                    );
                }
            }
            (Expect::Get(k), got) => {
                if ran(&got) {
                    self.tracked.insert(self.key_hash(&k), ());
                }
                if let Some(f) = self.fills.get_mut(&k) {
                    match got {
                        Got::Value(v) => f.value = Some(v),
                        _ => f.tainted = true,
                    }
                }
            }
            (Expect::Ttl(k), got) => {
                let Some(f) = self.fills.remove(&k) else {
                    return Ok(());
                };
                let (Got::Int(t), Some(value), false) = (got, f.value, f.tainted) else {
                    return Ok(());
                };
                let expires = match (t, &value) {
                    (-1, Some(_)) | (-2, None) => None,
                    (t, Some(_)) if t >= 0 => Some(t),
                    _ => return Ok(()),
                };
                let reply = resp::get_reply(value.as_deref()).into_boxed_slice();
                if self.store.fits(&k, &reply) {
                    let mut unseen = Vec::new();
                    self.store.insert(&k, reply, expires, now, &mut unseen);
                    // Keys answered since Redis last saw them, gone from the cache: Redis is
                    // told they were used.
                    self.touch_keys(unseen, now);
                    self.stats.fills += 1;
                }
            }
            (e, _) => return Err(format!("Redis answered {e:?} unexpectedly")),
        }
        Ok(())
    }

    /// What Redis counted for a command of the cache's that it answered (INFO shows it: see
    /// `info`): its calls, and the keyspace hits and misses of its lookups.
    fn tally(&mut self, e: &Expect, r: &Got) {
        let s = &mut self.shown;
        let (cmd, found) = match (e, r) {
            (Expect::Get(_), Got::Value(v)) => (0, Some(v.is_some())),
            (Expect::Get(_), _) => (0, None),
            (Expect::Ttl(_), Got::Int(t)) => (1, Some(*t != -2)),
            (Expect::Ttl(_), _) => (1, None),
            (Expect::Touch(keys), r) => {
                let keys = keys.len();
                let hits = match r {
                    Got::Int(n) => (*n).clamp(0, keys as i64) as u64,
                    _ => 0,
                };
                s.own_hits += hits;
                s.own_misses += keys as u64 - hits;
                (2, None)
            }
            (Expect::Hello, _) => {
                // Redis accepted the connection: it counts in total_connections_received.
                s.own_connections += 1;
                (3, None)
            }
            // A command Redis refused before running it counts in its rejected calls, not its
            // calls.
            (Expect::Ok(_), Got::Error(_)) => return,
            (Expect::Ok("CLIENT SETNAME"), _) => (4, None),
            (Expect::Ok(_), r) => {
                s.own_tracking = matches!(r, Got::Simple(true));
                (5, None)
            }
            (Expect::Policy | Expect::Timeout | Expect::Slowlog | Expect::Listeners, _) => {
                (6, None)
            }
            (Expect::Modules, _) => (7, None),
        };
        s.own_calls[cmd] += 1;
        match found {
            Some(true) => s.own_hits += 1,
            Some(false) => s.own_misses += 1,
            None => {}
        }
    }

    /// The hash a key is known by in `tracked`.
    fn key_hash(&self, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.tracked.hasher().hash_one(key)
    }

    /// An invalidation: `None` for every key (a flush).
    fn invalidate(&mut self, keys: Option<Vec<Box<[u8]>>>, now: UnixMs) {
        // Redis no longer tracks the keys it invalidated (a flush empties its whole table).
        let Some(keys) = keys else {
            self.tracked.clear();
            if self.late {
                self.store.doom_all();
            } else {
                self.flush();
            }
            for f in self.fills.values_mut() {
                f.tainted = true;
            }
            return;
        };
        for k in keys {
            let h = self.key_hash(&k);
            self.tracked.remove(&h);
            if let Some(f) = self.fills.get_mut(&k) {
                f.tainted = true;
            }
            if self.late {
                if let Some(e) = self.store.get_mut(&k) {
                    e.doomed = true;
                    self.stats.invalidations += 1;
                }
            } else if let Some(e) = self.store.take(&k) {
                self.stats.invalidations += 1;
                if e.hits == 0 {
                    // Written again before any hit paid for its fill: not filled for a while.
                    if self.cold.len() >= MAX_COLD {
                        self.cold.retain(|_, until| *until > now);
                    }
                    if self.cold.len() < MAX_COLD {
                        self.cold.insert(k, now + COLD_MS);
                    }
                }
            }
        }
    }

    /// Sends a fill for `key` if none is on its way (and the key is not one written too often
    /// to be worth it).
    fn fill(&mut self, key: &[u8], now: UnixMs) {
        if !matches!(self.link, Link::Ready { .. })
            || self.fills.len() >= MAX_FILLS
            || self.fills.contains_key(key)
        {
            return;
        }
        if let Some(&until) = self.cold.get(key) {
            if now < until {
                return;
            }
            self.cold.remove(key);
        }
        self.start_tracking();
        self.fills.insert(key.into(), Fill::default());
        self.queued_fills.push(key.into());
    }

    /// Turns tracking on, if not yet on this connection: ahead of a fill on the same
    /// connection, so that Redis tracks the key the fill reads.
    fn start_tracking(&mut self) {
        if !self.tracking {
            self.tracking = true;
            resp::encode(&mut self.out, &[b"CLIENT", b"TRACKING", b"ON"]);
            self.expect.push_back(Expect::Ok(TRACKING));
        }
    }

    /// Sends the queued fills (`force`: the application found nothing to do), otherwise at
    /// most once per FILL_WAIT_MS unless FILL_BATCH wait: a send on the cache's connection
    /// (and Redis's read of it) costs the server ~10 µs of the kernel's loopback TCP, paid once
    /// for the fills of a busy millisecond, and a fill goes at once when Redis is idle. A fill
    /// whose key changed meanwhile is not sent (it would be discarded).
    fn send_fills(&mut self, now: UnixMs, force: bool) {
        let due = force
            || now - self.fills_sent >= FILL_WAIT_MS
            // (The wall clock stepped back.)
            || now < self.fills_sent
            || self.queued_fills.len() >= FILL_BATCH;
        if self.queued_fills.is_empty() || !due {
            return;
        }
        self.fills_sent = now;
        for key in std::mem::take(&mut self.queued_fills) {
            if self.fills.get(&key).is_some_and(|f| f.tainted) {
                self.fills.remove(&key);
                continue;
            }
            resp::encode(&mut self.out, &[b"GET", &key]);
            resp::encode(&mut self.out, &[b"PEXPIRETIME", &key]);
            self.expect.push_back(Expect::Get(key.clone()));
            self.expect.push_back(Expect::Ttl(key));
        }
    }

    /// A listener of Redis's whose clients the cache cannot follow (from Redis's reply to
    /// `CONFIG GET unixsocket tls-port bind`): a unix socket, a TLS port, or a bind address
    /// other than the wildcard and the stack's (a kernel-only listener the shim leaves alone).
    fn unfollowed_listener(&self, raw: &[u8]) -> Option<String> {
        let mut it = config_values(raw).into_iter();
        let mut why = None;
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let v = String::from_utf8_lossy(v);
            match k {
                b"unixsocket" if !v.is_empty() => {
                    why = Some(format!("Redis also listens on the unix socket {v}"));
                }
                b"tls-port" if v != "0" => {
                    why = Some(format!("Redis also listens for TLS on port {v}"));
                }
                b"bind" => {
                    let own = self.stack_addr.map(|a| a.to_string());
                    let other = v
                        .split_whitespace()
                        .map(|a| a.trim_start_matches('-'))
                        .find(|a| {
                            !matches!(*a, "*" | "0.0.0.0" | "::" | "::*")
                                && Some(*a) != own.as_deref()
                        });
                    if let Some(a) = other {
                        why = Some(format!("Redis also listens on {a} (bind)"));
                    }
                }
                _ => {}
            }
        }
        why.map(|w| {
            format!(
                "{w}, whose clients the shim does not see (a SWAPDB, CLIENT PAUSE or MONITOR \
                 there would go unnoticed)"
            )
        })
    }

    /// The settings of the listeners' CONFIG GET that the cache follows; why it cannot work
    /// with them, if it cannot.
    fn settings(&mut self, raw: &[u8]) -> Option<String> {
        let mut it = config_values(raw).into_iter();
        let mut why = None;
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let num = || std::str::from_utf8(v).ok()?.parse::<i64>().ok();
            match k {
                b"replicaof" if !v.is_empty() => {
                    why = Some(format!(
                        "Redis is a replica of {} (its master's writes reach it unseen)",
                        String::from_utf8_lossy(v)
                    ));
                }
                b"cluster-enabled" if v == b"yes" => {
                    why = Some(
                        "Redis runs in cluster mode (a key's slot may move, where Redis \
                         answers MOVED or ASK)"
                            .into(),
                    );
                }
                b"notify-keyspace-events" if v.contains(&b'm') => {
                    why = Some(
                        "Redis sends key-miss events (notify-keyspace-events with m): the \
                         cache's own lookups would show among them, and its answers of missing \
                         keys would not"
                            .into(),
                    );
                }
                b"hz" => {
                    if let Some(hz) = num() {
                        self.pause_grace = 1000 / hz.max(1) + 1;
                    }
                }
                b"shutdown-timeout" => {
                    if let Some(s) = num() {
                        self.shutdown_ms = s.saturating_mul(1000);
                    }
                }
                _ => {}
            }
        }
        why
    }

    fn handshake(&mut self) {
        resp::encode(&mut self.out, &[b"HELLO", b"3"]);
        self.expect.push_back(Expect::Hello);
        resp::encode(
            &mut self.out,
            &[b"CLIENT", b"SETNAME", CLIENT_NAME.as_bytes()],
        );
        self.expect.push_back(Expect::Ok("CLIENT SETNAME"));
        resp::encode(&mut self.out, &[b"CONFIG", b"GET", b"maxmemory-policy"]);
        self.expect.push_back(Expect::Policy);
        resp::encode(&mut self.out, &[b"CONFIG", b"GET", b"timeout"]);
        self.expect.push_back(Expect::Timeout);
        resp::encode(
            &mut self.out,
            &[b"CONFIG", b"GET", b"slowlog-log-slower-than"],
        );
        self.expect.push_back(Expect::Slowlog);
        resp::encode(
            &mut self.out,
            &[
                b"CONFIG",
                b"GET",
                b"unixsocket",
                b"tls-port",
                b"bind",
                b"replicaof",
                b"cluster-enabled",
                b"notify-keyspace-events",
                b"hz",
                b"shutdown-timeout",
            ],
        );
        self.expect.push_back(Expect::Listeners);
        resp::encode(&mut self.out, &[b"MODULE", b"LIST"]);
        self.expect.push_back(Expect::Modules);
    }

    fn send_out(&mut self, io: &mut dyn ControlIo, fd: i32, now: UnixMs) {
        while !self.out.is_empty() {
            match io.send(fd, &self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                    self.shown.own_in += n as u64;
                }
                Err(libc::EAGAIN) => return,
                Err(_) => return self.lose(io, now),
            }
        }
    }

    /// Reads what came through the kernel on the cache's connection (the handshake's replies).
    fn recv_in(&mut self, io: &mut dyn ControlIo, fd: i32, now: UnixMs) {
        let mut buf = [0u8; 4096];
        loop {
            match io.recv(fd, &mut buf) {
                Ok(0) => return self.lose(io, now),
                Ok(n) => {
                    self.shown.own_out += n as u64;
                    self.input.extend_from_slice(&buf[..n]);
                }
                Err(_) => break,
            }
        }
        if let Err(why) = self.take(now) {
            self.off(io, &why, now);
        }
    }
}

/// Whether a request named `name` may change what the cache follows ([`RedisCache::follow`]):
/// most (GET, SET, ...) cannot, and one look at the name's length and first letter says so.
#[inline]
fn followed_name(name: &[u8]) -> bool {
    matches!(
        (name.len(), name.first().map(u8::to_ascii_uppercase)),
        (3, Some(b'A'))
            | (4, Some(b'A' | b'E' | b'W'))
            | (5, Some(b'H' | b'M' | b'B' | b'X' | b'F' | b'R'))
            | (6, Some(b'S' | b'C' | b'B' | b'O' | b'M'))
            | (7, Some(b'D' | b'M' | b'W' | b'E' | b'S'))
            | (8, Some(b'B' | b'F' | b'S'))
            | (9, Some(b'S' | b'R'))
            | (10, Some(b'P' | b'S' | b'B' | b'X'))
    )
}

/// The client id in Redis's reply to HELLO (a RESP3 map with an `id` field).
fn hello_id(raw: &[u8]) -> Option<u64> {
    const FIELD: &[u8] = b"$2\r\nid\r\n:";
    let at = raw.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let end = raw[at..].iter().position(|&b| b == b'\r')?;
    std::str::from_utf8(&raw[at..at + end]).ok()?.parse().ok()
}

/// Counts the whole requests at the front of `buf` that need only counting (a name the cache
/// does not follow, skimmed): `since_get` and `ahead` as [`Track`] keeps them. Returns the
/// bytes they take; what follows (if anything) needs the general parser, or more bytes.
#[inline(always)]
fn count_plain(buf: &[u8], since_get: &mut u32, ahead: &mut u64) -> usize {
    let mut used = 0;
    while used < buf.len() {
        let sets = count_sets(&buf[used..], since_get, ahead);
        used += sets;
        if sets > 0 {
            continue;
        }
        let Some((len, (n0, n1), _)) = resp::skim(&buf[used..]) else {
            break;
        };
        let name = &buf[used + n0..used + n1];
        if followed_name(name) || is_info(name) {
            break;
        }
        *since_get = if resp::is_get(name) {
            0
        } else {
            since_get.saturating_add(1)
        };
        *ahead += 1;
        used += len;
    }
    used
}

/// Counts the SETs of one value at the front of `buf` (`resp::set_len`) as [`count_plain`]
/// does; returns the bytes they take.
#[inline(always)]
fn count_sets(buf: &[u8], since_get: &mut u32, ahead: &mut u64) -> usize {
    let mut used = 0;
    while let Some(len) = resp::set_len(&buf[used..]) {
        *since_get = since_get.saturating_add(1);
        *ahead += 1;
        used += len;
    }
    used
}

/// [`count_plain`], called (keeps what is inlined where it is used short).
#[inline(never)]
fn count_plain_apart(buf: &[u8], since_get: &mut u32, ahead: &mut u64) -> usize {
    count_plain(buf, since_get, ahead)
}

/// The request at the front of `buf`: `Some(Some((its length, its key's range)))` for a GET
/// of one key, `Some(None)` for another whole request, `None` without a whole request.
#[inline]
fn front_get(buf: &[u8]) -> Option<Option<(usize, std::ops::Range<usize>)>> {
    if let Some(g) = resp::get_key(buf) {
        return Some(Some(g));
    }
    match resp::command(buf) {
        Parsed::Done(c) if !c.inline && c.argc == 2 && c.arg(buf, 0).is_some_and(resp::is_get) => {
            Some(Some((c.len, c.args[1].0 as usize..c.args[1].1 as usize)))
        }
        Parsed::Done(_) => Some(None),
        _ => None,
    }
}

/// Whether Redis ran the command `got` answers (so tracks its keys): not one refused before it
/// ran (-BUSY, -LOADING, -NOPERM, ...); a WRONGTYPE error is a GET that ran.
fn ran(got: &Got) -> bool {
    match got {
        Got::Error(e) => e.starts_with("WRONGTYPE"),
        _ => true,
    }
}

/// Whether a request named `name` is INFO (whose reply the cache rewrites).
#[inline]
fn is_info(name: &[u8]) -> bool {
    name.len() == 4 && name.eq_ignore_ascii_case(b"INFO")
}

/// How many arguments of a request the cache sees (`resp::KEPT`).
const KEPT_ARGS: usize = resp::KEPT;

/// One reply, owned.
enum Got {
    Value(Option<Box<[u8]>>),
    Int(i64),
    Error(String),
    Simple(bool),
    Other(Vec<u8>),
}

/// Why the cache is off while Redis logs every command.
const SLOWLOG_ALL: &str = "Redis logs every command in its slowlog (slowlog-log-slower-than \
                           0), where the requests the cache answered would be missing";

/// The value in Redis's RESP3 reply to `CONFIG GET name` (a map of one).
fn config_value(raw: &[u8]) -> Option<&[u8]> {
    config_values(raw).get(1).copied()
}

/// The strings of Redis's RESP3 reply to `CONFIG GET ...` (a map): name, value, name, ...
fn config_values(raw: &[u8]) -> Vec<&[u8]> {
    let mut v = Vec::new();
    let Some(mut at) = raw.iter().position(|&b| b == b'\n').map(|p| p + 1) else {
        return v;
    };
    while let Ok(Some((r, n))) = resp::reply(&raw[at..]) {
        match r {
            Reply::Bulk(s) | Reply::Simple(s) => v.push(s),
            _ => v.push(b""),
        }
        at += n;
    }
    v
}

/// The keys of an invalidation push (`None`: all keys).
fn invalidated(push: &[u8]) -> Result<Option<Vec<Box<[u8]>>>, String> {
    let bad = || "Redis sent an invalidation the cache cannot parse".to_string();
    let el = resp::elements(push).map_err(|_| bad())?.ok_or_else(bad)?;
    let &(a, b) = el.get(1).ok_or_else(bad)?;
    let body = &push[a..b];
    if matches!(resp::reply(body), Ok(Some((Reply::Null, _)))) {
        return Ok(None);
    }
    let keys = resp::elements(body).map_err(|_| bad())?.ok_or_else(bad)?;
    keys.into_iter()
        .map(|(a, b)| match resp::reply(&body[a..b]) {
            Ok(Some((Reply::Bulk(k) | Reply::Simple(k), _))) => Ok(k.into()),
            _ => Err(bad()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl Responder for RedisCache {
    fn opened(&mut self, conn: u64, now: UnixMs) {
        self.track(conn, now, true);
    }

    fn opened_followed(&mut self, conn: u64, now: UnixMs) {
        self.track(conn, now, false);
    }

    fn closed(&mut self, conn: u64) {
        if let Some(t) = self.conns.remove(&conn) {
            if t.looked_at() {
                self.looked_at -= 1;
            }
            if t.info.is_some_and(|rw| rw.active()) {
                self.rewriting -= 1;
            }
            if t.monitor {
                self.monitors -= 1;
            }
            if t.lost {
                self.blind -= 1;
            }
        }
    }

    fn app_read(&mut self, conn: u64, bytes: &[u8], clock: &dyn Fn() -> UnixMs) -> bool {
        if self.link == Link::Off && !self.off_by_setting {
            // Off for good: nothing to follow.
            return false;
        }
        let (epoch, looked_at) = (self.epoch, &mut self.looked_at);
        let Some(t) = self.conns.get_mut(&conn) else {
            return false;
        };
        if self.idle_timeout {
            // (Only a `timeout` asks when Redis last read from it.)
            t.read = clock();
        }
        if t.lost {
            return false;
        }
        if t.epoch != epoch {
            t.epoch = epoch;
            t.replies_ahead = 0;
        }
        // Every connection is followed, also those left to Redis: any of them may send what
        // changes the cache for everyone (SWAPDB, CLIENT PAUSE, MONITOR, CONFIG SET). Most
        // requests only need counting, which their name says: those at the front are counted
        // here, with the connection's state in hand.
        let mut used = 0;
        if t.partial.is_empty() {
            let (mut since_get, mut ahead) = (t.since_get, t.replies_ahead);
            // A writer's reads, SETs only, counted without a call.
            used = count_sets(bytes, &mut since_get, &mut ahead);
            if used < bytes.len() {
                used += count_plain_apart(&bytes[used..], &mut since_get, &mut ahead);
            }
            t.store_counts(since_get, ahead, looked_at);
            if used == bytes.len() {
                return false;
            }
        }
        self.app_read_rest(conn, &bytes[used..], clock())
    }

    fn loop_turn(&mut self) {
        self.epoch += 1;
    }

    fn output_unknown(&mut self, conn: u64) {
        if let Some(rw) = self.conns.get_mut(&conn).and_then(|t| t.info.as_mut()) {
            if rw.active() && rw.epoch == self.epoch {
                **rw = Rewriter::default();
                self.rewriting -= 1;
            }
        }
    }

    fn rewriting(&self) -> bool {
        self.rewriting > 0
    }

    fn app_write(
        &mut self,
        conn: u64,
        data: &[u8],
        send: &mut dyn FnMut(&[u8]) -> Result<usize, ()>,
    ) -> Option<Result<usize, ()>> {
        let rw = self.conns.get_mut(&conn)?.info.as_mut()?;
        if !rw.active() {
            return None;
        }
        // CLIENT KILL executed since it was read: its count less the cache's connection if
        // Redis closed that meanwhile.
        let closed = self.own_closed;
        rw.resolve(|e| match *e {
            Edit::Kill(then) => Some(Edit::Less(i64::from(closed > then))),
            _ => None,
        });
        let r = rw.write(data, send);
        self.shown.rewritten_out += rw.take_resized();
        if !rw.active() {
            self.rewriting -= 1;
        }
        Some(r)
    }

    fn wants_any(&self) -> bool {
        self.looked_at > 0
    }

    fn wants(&self, conn: u64) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|t| t.answerable() && t.since_get < QUIET_AFTER)
    }

    #[inline]
    fn may_answer(&self, _conn: u64, head: &[u8]) -> bool {
        head.len() >= 11 && head.starts_with(b"*2\r\n$3\r\n") && resp::is_get(&head[8..11])
    }

    fn answer(
        &mut self,
        conn: u64,
        input: &[u8],
        out: &mut Vec<u8>,
        room: usize,
        now: UnixMs,
    ) -> usize {
        let Some(t) = self.conns.get(&conn) else {
            return 0;
        };
        if !t.answerable() || !self.may_answer(conn, &input[..input.len().min(super::HEAD)]) {
            return 0;
        }
        // Under a `timeout`, Redis must see each connection's requests often enough that its
        // idle time stays true.
        let conn_seen = !self.idle_timeout || now - t.read < SEEN_EVERY_MS;
        let counted = t.counted == (self.epoch, input.len());
        if !self.up()
            || self.monitors > 0
            || self.blind > 0
            || now < self.paused_until.max(self.held_until)
        {
            if !counted {
                self.stats.unavailable += 1;
                self.count_once(conn, input.len());
            }
            return 0;
        }
        // The requests at the front the cache holds, answered in one pass, and whether they
        // are all the whole requests there are. Answering only a part of a pipeline splits its
        // replies into two segments (the cache's now, Redis's later), which costs more than a
        // few GETs save: a part is answered only from MIN_PART on, and a smaller part is taken
        // back (its replies dropped, its entries' hit counts restored).
        let (mut at, mut bytes, mut nil, mut n) = (0usize, 0usize, 0u64, 0usize);
        let mark = out.len();
        let mut stop = None;
        while at < input.len() {
            let Some(got) = front_get(&input[at..]) else {
                break;
            };
            let Some((len, k)) = got else {
                stop = Some(None);
                break;
            };
            let (k0, k1) = (at + k.start, at + k.end);
            let key = &input[k0..k1];
            let Some(e) = self.store.get_mut(key).filter(|e| {
                conn_seen && e.expires.is_none_or(|t| now + 1 < t) && bytes + e.reply.len() <= room
            }) else {
                stop = Some(Some((k0, k1)));
                break;
            };
            bytes += e.reply.len();
            e.hit_at = now;
            if self.lru && now - e.seen >= SEEN_EVERY_MS - TOUCH_EVERY_MS {
                // Redis evicts the least recently used keys: its idea of the key's last
                // access is brought up to date by a TOUCH, batched.
                e.seen = now;
                if self.touch.is_empty() {
                    self.touch_since = now;
                }
                self.touch.push(key.into());
            }
            out.extend_from_slice(&e.reply);
            nil += u64::from(&e.reply[..] == b"$-1\r\n");
            e.hits = e.hits.saturating_add(1);
            if e.doomed {
                self.store.remove(key);
            }
            n += 1;
            at += len;
        }
        if let Some(Some((k0, k1))) = stop {
            // The GET the cache cannot answer: Redis's (and a fill, or an expired entry gone).
            if !counted {
                self.stats.misses += 1;
                self.count_once(conn, input.len());
            }
            let key = &input[k0..k1];
            match self.store.get(key) {
                None => {
                    let key = key.to_vec();
                    self.fill(&key, now);
                }
                Some(e) if e.expires.is_some_and(|t| now + 1 >= t) => {
                    let key = key.to_vec();
                    self.store.remove(&key);
                }
                Some(_) => {}
            }
        }
        if n == 0 || (stop.is_some() && n < MIN_PART) {
            out.truncate(mark);
            // (The GETs answered, found again.)
            let mut back = 0;
            while let Some(Some((len, k))) = front_get(&input[back..at]) {
                if let Some(e) = self.store.get_mut(&input[back + k.start..back + k.end]) {
                    e.hits = e.hits.saturating_sub(1);
                }
                back += len;
            }
            return 0;
        }
        self.stats.hits += n as u64;
        self.shown.answered += n as u64 - nil;
        self.shown.answered_nil += nil;
        self.shown.answered_in += at as u64;
        self.shown.answered_out += (out.len() - mark) as u64;
        if let Some(Some(_)) = stop {
            // The miss counted is the front of what is left, offered again as that.
            self.count_once(conn, input.len() - at);
        }
        at
    }

    fn upkeep(&mut self, io: &mut dyn ControlIo, port: u16, now: UnixMs) -> Upkeep {
        if let Some(why) = self.refused.take() {
            // (An ACL change may allow it: checked again by connecting, as after a CONFIG SET.)
            self.link_restart = false;
            self.off_by_setting = true;
            self.off(io, &why, now);
        }
        if std::mem::take(&mut self.link_restart) && (self.link != Link::Off || self.off_by_setting)
        {
            if self.slowlog_all {
                if self.link != Link::Off {
                    self.off_by_setting = true;
                    self.off(io, SLOWLOG_ALL, now);
                }
            } else {
                self.off_by_setting = false;
                self.lose(io, now);
                self.link = Link::Down { retry: now };
            }
        }
        match self.link {
            Link::Off | Link::Locating { .. } => {}
            Link::Down { retry } => {
                if now >= retry {
                    match io.connect(port) {
                        Ok(fd) => {
                            self.link = Link::Handshake { fd, since: now };
                            self.shown.own_client = true;
                            self.handshake();
                            self.send_out(io, fd, now);
                        }
                        Err(e) => {
                            let why = std::io::Error::from_raw_os_error(e);
                            self.off(
                                io,
                                &format!("cannot connect to Redis on 127.0.0.1:{port}: {why}"),
                                now,
                            );
                        }
                    }
                }
            }
            Link::Handshake { fd, since } => {
                self.send_out(io, fd, now);
                if self.link == (Link::Handshake { fd, since }) {
                    self.recv_in(io, fd, now);
                }
                if self.link == (Link::Handshake { fd, since }) {
                    if self.expect.is_empty() {
                        self.link = Link::Locating { fd };
                        return Upkeep::Watch(fd);
                    }
                    if now - since > HANDSHAKE_MS {
                        self.lose(io, now);
                    }
                }
            }
            Link::Ready { fd } => {
                if !self.ready_work() {
                    return Upkeep::Nothing;
                }
                let due =
                    now - self.touch_since >= TOUCH_EVERY_MS || self.touch.len() >= TOUCH_BATCH;
                for keys in self.touch.chunks(512).take_while(|_| due) {
                    let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
                    args.push(b"TOUCH");
                    args.extend(keys.iter().map(|k| &k[..]));
                    resp::encode(&mut self.out, &args);
                    let hashes = keys.iter().map(|k| self.key_hash(k)).collect();
                    self.expect.push_back(Expect::Touch(hashes));
                }
                if due {
                    self.touch.clear();
                }
                self.send_fills(now, false);
                self.send_out(io, fd, now);
            }
        }
        Upkeep::Nothing
    }

    fn upkeep_due(&self) -> bool {
        self.link_restart
            || match self.link {
                Link::Off | Link::Locating { .. } => false,
                Link::Down { .. } | Link::Handshake { .. } => true,
                Link::Ready { .. } => self.ready_work(),
            }
    }

    fn idle_work(&self) -> bool {
        matches!(self.link, Link::Ready { .. }) && !self.queued_fills.is_empty()
    }

    fn idle(&mut self, io: &mut dyn ControlIo, now: UnixMs) {
        if let Link::Ready { fd } = self.link {
            self.send_fills(now, true);
            self.send_out(io, fd, now);
        }
    }

    fn watching(&mut self, io: &mut dyn ControlIo, fd: Option<i32>, now: UnixMs) {
        let Link::Locating { fd: ours } = self.link else {
            return;
        };
        if fd.is_none() {
            return self.off(io, "cannot find Redis's end of the cache's connection", now);
        }
        // Anything Redis wrote before its end was watched (a flush's invalidation).
        self.link = Link::Handshake {
            fd: ours,
            since: now,
        };
        self.recv_in(io, ours, now);
        if matches!(self.link, Link::Handshake { .. }) {
            self.link = Link::Ready { fd: ours };
        }
    }

    fn control_output(&mut self, bytes: &[u8], now: UnixMs) {
        self.shown.own_out += bytes.len() as u64;
        self.input.extend_from_slice(bytes);
        if let Err(why) = self.take(now) {
            // Nothing can be trusted; the next upkeep connects again.
            self.flush();
            self.link_restart = true;
            let _ = why;
        }
    }

    fn control_closed(&mut self, io: &mut dyn ControlIo, now: UnixMs) {
        self.own_closed += 1;
        self.lose(io, now);
    }

    fn stats(&self) -> CacheStats {
        let mut s = self.stats;
        s.entries = self.store.len() as u64;
        s.bytes = self.store.bytes() as u64;
        s
    }

    fn up(&self) -> bool {
        matches!(self.link, Link::Ready { .. }) && !self.link_restart
    }

    fn link_gen(&self) -> u64 {
        self.link_gen
    }

    fn stale_output(&mut self, n: usize) {
        // (Redis counts them in its output bytes, as the cache's.)
        self.shown.own_out += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel side of the cache's connection, played by the test: what the cache sent,
    /// what it will receive through the kernel (the handshake's replies), what it said.
    #[derive(Default)]
    struct Io {
        sent: Vec<u8>,
        incoming: Vec<u8>,
        said: Vec<String>,
        closed: Vec<i32>,
        refuse: Option<i32>,
    }

    impl ControlIo for Io {
        fn connect(&mut self, _port: u16) -> Result<i32, i32> {
            self.refuse.map_or(Ok(7), Err)
        }
        fn send(&mut self, _fd: i32, bytes: &[u8]) -> Result<usize, i32> {
            self.sent.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn recv(&mut self, _fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
            if self.incoming.is_empty() {
                return Err(libc::EAGAIN);
            }
            let n = buf.len().min(self.incoming.len());
            buf[..n].copy_from_slice(&self.incoming[..n]);
            self.incoming.drain(..n);
            Ok(n)
        }
        fn close(&mut self, fd: i32) {
            self.closed.push(fd);
        }
        fn say(&mut self, msg: &str) {
            self.said.push(msg.to_string());
        }
    }

    const HANDSHAKE_REPLIES: &[u8] = b"%1\r\n$5\r\nproto\r\n:3\r\n+OK\r\n\
        %1\r\n$16\r\nmaxmemory-policy\r\n$10\r\nnoeviction\r\n\
        %1\r\n$7\r\ntimeout\r\n$1\r\n0\r\n\
        %1\r\n$23\r\nslowlog-log-slower-than\r\n$5\r\n10000\r\n\
        %8\r\n$10\r\nunixsocket\r\n$0\r\n\r\n$8\r\ntls-port\r\n$1\r\n0\r\n\
        $4\r\nbind\r\n$7\r\n0.0.0.0\r\n$9\r\nreplicaof\r\n$0\r\n\r\n\
        $15\r\ncluster-enabled\r\n$2\r\nno\r\n$22\r\nnotify-keyspace-events\r\n$0\r\n\r\n\
        $2\r\nhz\r\n$2\r\n10\r\n$16\r\nshutdown-timeout\r\n$2\r\n10\r\n*0\r\n";

    fn get(key: &str) -> Vec<u8> {
        let mut v = Vec::new();
        resp::encode(&mut v, &[b"GET", key.as_bytes()]);
        v
    }

    fn req(args: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        resp::encode(&mut v, &a);
        v
    }

    fn push(keys: &[&str]) -> Vec<u8> {
        let mut v = format!(">2\r\n$10\r\ninvalidate\r\n*{}\r\n", keys.len()).into_bytes();
        for k in keys {
            v.extend_from_slice(format!("${}\r\n{k}\r\n", k.len()).as_bytes());
        }
        v
    }

    /// A cache whose connection is up and tracks, with client connection 1 open.
    fn ready(late: bool) -> (RedisCache, Io) {
        ready_with(late, HANDSHAKE_REPLIES.to_vec())
    }

    /// The same with Redis's handshake replies `replies`.
    fn ready_with(late: bool, replies: Vec<u8>) -> (RedisCache, Io) {
        let (mut c, mut io) = connected(late, replies);
        c.start_tracking();
        c.upkeep(&mut io, 6379, 0);
        assert_eq!(io.sent, req(&["CLIENT", "TRACKING", "ON"]));
        io.sent.clear();
        c.control_output(b"+OK\r\n", 0);
        assert!(c.up() && c.shown.own_tracking);
        (c, io)
    }

    /// A cache whose connection is up, tracking nothing yet, with client connection 1 open.
    fn connected(late: bool, replies: Vec<u8>) -> (RedisCache, Io) {
        let mut c = RedisCache::new(1 << 20, late, 0);
        let mut io = Io {
            incoming: replies,
            ..Io::default()
        };
        assert_eq!(c.upkeep(&mut io, 6379, 0), Upkeep::Nothing);
        let sent = String::from_utf8_lossy(&io.sent).into_owned();
        assert!(
            sent.contains("HELLO") && !sent.contains("TRACKING"),
            "{sent}"
        );
        assert_eq!(c.upkeep(&mut io, 6379, 0), Upkeep::Watch(7));
        assert!(!c.up());
        c.watching(&mut io, Some(42), 0);
        assert!(c.up());
        io.sent.clear();
        c.opened(1, 0);
        (c, io)
    }

    /// Answers `input` on connection 1 at `now`: (bytes used, replies).
    fn answer(c: &mut RedisCache, input: &[u8], now: UnixMs) -> (usize, Vec<u8>) {
        let mut out = Vec::new();
        let n = c.answer(1, input, &mut out, 1 << 20, now);
        (n, out)
    }

    /// Misses `key`, sends its fill and takes Redis's replies to it (`value`, `ttl`).
    fn fill(c: &mut RedisCache, io: &mut Io, key: &str, value: &str, ttl: i64, now: UnixMs) {
        assert_eq!(answer(c, &get(key), now).0, 0);
        c.upkeep(io, 6379, now);
        if io.sent.is_empty() {
            // Fills went less than FILL_WAIT_MS ago.
            c.upkeep(io, 6379, now + FILL_WAIT_MS);
        }
        let mut want = req(&["GET", key]);
        want.extend(req(&["PEXPIRETIME", key]));
        assert_eq!(io.sent, want);
        io.sent.clear();
        c.control_output(
            format!("${}\r\n{value}\r\n:{ttl}\r\n", value.len()).as_bytes(),
            now,
        );
    }

    /// Tracking goes on with the first fill, ahead of it, and not at the handshake: a Redis
    /// that is only written to keeps no tracking table.
    #[test]
    fn tracking_starts_with_the_first_fill() {
        let (mut c, mut io) = connected(false, HANDSHAKE_REPLIES.to_vec());
        assert!(!c.shown.own_tracking);
        c.app_read(1, &req(&["SET", "k", "v"]), &|| 1);
        c.upkeep(&mut io, 6379, 1);
        assert!(
            io.sent.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&io.sent)
        );
        assert_eq!(answer(&mut c, &get("k"), 2).0, 0);
        c.upkeep(&mut io, 6379, 2 + FILL_WAIT_MS);
        let mut want = req(&["CLIENT", "TRACKING", "ON"]);
        want.extend(req(&["GET", "k"]));
        want.extend(req(&["PEXPIRETIME", "k"]));
        assert_eq!(io.sent, want);
        io.sent.clear();
        c.control_output(b"+OK\r\n$1\r\nv\r\n:-1\r\n", 3);
        assert!(c.shown.own_tracking);
        assert_eq!(answer(&mut c, &get("k"), 4).1, b"$1\r\nv\r\n");
        // Once per connection.
        assert_eq!(answer(&mut c, &get("j"), 5).0, 0);
        c.upkeep(&mut io, 6379, 5 + FILL_WAIT_MS);
        assert_eq!(
            io.sent,
            [req(&["GET", "j"]), req(&["PEXPIRETIME", "j"])].concat()
        );
    }

    /// A Redis that refuses CLIENT TRACKING (an ACL without it) turns the cache off, said
    /// once, instead of making its connection again at every miss.
    #[test]
    fn tracking_refused_turns_the_cache_off_said_once() {
        let (mut c, mut io) = connected(false, HANDSHAKE_REPLIES.to_vec());
        assert_eq!(answer(&mut c, &get("k"), 1).0, 0);
        c.upkeep(&mut io, 6379, 1 + FILL_WAIT_MS);
        c.control_output(
            b"-NOPERM this user has no permissions to run the 'client|tracking' command\r\n",
            2,
        );
        assert!(!c.up());
        c.upkeep(&mut io, 6379, 3);
        c.upkeep(&mut io, 6379, 3 + 10 * RETRY_MS);
        assert_eq!(io.said.len(), 1, "{:?}", io.said);
        assert!(io.said[0].contains("NOPERM"), "{:?}", io.said);
        assert_eq!(io.closed, [7]);
        assert_eq!(answer(&mut c, &get("k"), 4 + 10 * RETRY_MS).0, 0);
    }

    /// Another error (BUSY while a script runs) is not a refusal: the connection is made
    /// again, nothing is said, and Redis's refused call is not counted among its calls.
    #[test]
    fn tracking_busy_makes_the_connection_again() {
        let (mut c, mut io) = connected(false, HANDSHAKE_REPLIES.to_vec());
        assert_eq!(answer(&mut c, &get("k"), 1).0, 0);
        c.upkeep(&mut io, 6379, 1 + FILL_WAIT_MS);
        let calls = c.shown.own_calls;
        c.control_output(
            b"-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.\r\n",
            2,
        );
        assert_eq!(c.shown.own_calls, calls);
        assert!(!c.up());
        io.incoming = HANDSHAKE_REPLIES.to_vec();
        io.sent.clear();
        c.upkeep(&mut io, 6379, 3);
        assert!(io.said.is_empty(), "{:?}", io.said);
        assert_eq!(io.closed, [7]);
        assert!(String::from_utf8_lossy(&io.sent).contains("HELLO"));
        assert_eq!(c.upkeep(&mut io, 6379, 3), Upkeep::Watch(7));
    }

    #[test]
    fn a_miss_fills_and_the_next_get_is_answered_until_invalidated() {
        let (mut c, mut io) = ready(false);
        fill(&mut c, &mut io, "k", "v", -1, 1);
        let two = [get("k"), get("k")].concat();
        let (n, out) = answer(&mut c, &two, 2);
        assert_eq!(n, two.len(), "a pipeline of two hits");
        assert_eq!(out, b"$1\r\nv\r\n$1\r\nv\r\n");
        assert_eq!(
            (c.stats().hits, c.stats().fills, c.stats().entries),
            (2, 1, 1)
        );
        // Part of a pipeline: only from MIN_PART hits on (its replies would go in two
        // segments).
        let part = [get("k"), get("k"), get("other")].concat();
        assert_eq!(answer(&mut c, &part, 2).0, 0);
        let hits = vec![get("k"); MIN_PART].concat();
        let part = [hits.clone(), get("other")].concat();
        assert_eq!(answer(&mut c, &part, 2).0, hits.len());
        assert_eq!(c.stats().hits, 2 + MIN_PART as u64);
        c.control_output(&push(&["k"]), 3);
        assert_eq!(answer(&mut c, &get("k"), 3).0, 0);
        assert_eq!(c.stats().invalidations, 1);
        // A miss offered twice in one loop iteration (in the poll, then from the ready
        // list) counts once; in the next, again.
        c.loop_turn();
        let misses = c.stats().misses;
        assert_eq!(answer(&mut c, &get("k"), 4).0, 0);
        assert_eq!(answer(&mut c, &get("k"), 4).0, 0);
        assert_eq!(c.stats().misses, misses + 1);
        c.loop_turn();
        assert_eq!(answer(&mut c, &get("k"), 5).0, 0);
        assert_eq!(c.stats().misses, misses + 2);
        // A pipeline answered in part: its miss, offered again as what is left, counts once.
        let (mut c, mut io) = ready(false);
        fill(&mut c, &mut io, "k", "v", -1, 6);
        c.loop_turn();
        let misses = c.stats().misses;
        let part = [vec![get("k"); MIN_PART].concat(), get("other")].concat();
        let (n, _) = answer(&mut c, &part, 7);
        assert!(n > 0);
        assert_eq!(answer(&mut c, &part[n..], 7).0, 0);
        assert_eq!(c.stats().misses, misses + 1);
    }

    #[test]
    fn an_invalidation_while_a_fill_is_on_its_way_discards_it() {
        let (mut c, mut io) = ready(false);
        assert_eq!(answer(&mut c, &get("k"), 1).0, 0);
        c.upkeep(&mut io, 6379, 1);
        // The key changed after the fill was sent: its reply may hold either value.
        let mut bytes = push(&["k"]);
        bytes.extend_from_slice(b"$1\r\nv\r\n:-1\r\n");
        c.control_output(&bytes, 2);
        assert_eq!(answer(&mut c, &get("k"), 3).0, 0);
        assert_eq!(c.stats().fills, 0);
    }

    #[test]
    fn an_invalidation_right_after_the_fill_reply_removes_the_entry() {
        let (mut c, mut io) = ready(false);
        assert_eq!(answer(&mut c, &get("k"), 1).0, 0);
        c.upkeep(&mut io, 6379, 1);
        let mut bytes = b"$1\r\nv\r\n:-1\r\n".to_vec();
        bytes.extend(push(&["k"]));
        c.control_output(&bytes, 2);
        assert_eq!(answer(&mut c, &get("k"), 3).0, 0);
    }

    #[test]
    fn a_flush_invalidates_everything() {
        let (mut c, mut io) = ready(false);
        fill(&mut c, &mut io, "a", "1", -1, 1);
        fill(&mut c, &mut io, "b", "2", -1, 1);
        assert_eq!(c.stats().entries, 2);
        c.control_output(b">2\r\n$10\r\ninvalidate\r\n_\r\n", 2);
        assert_eq!(c.stats().entries, 0);
        assert_eq!(c.stats().flushes, 1);
    }

    #[test]
    fn missing_keys_are_cached_as_nil_and_keys_with_a_ttl_until_just_before_it() {
        let (mut c, mut io) = ready(false);
        assert_eq!(answer(&mut c, &get("none"), 1).0, 0);
        c.upkeep(&mut io, 6379, 1 + FILL_WAIT_MS);
        io.sent.clear();
        c.control_output(b"_\r\n:-2\r\n", 1);
        assert_eq!(answer(&mut c, &get("none"), 2).1, b"$-1\r\n");
        fill(&mut c, &mut io, "t", "v", 100, 1);
        assert_eq!(answer(&mut c, &get("t"), 98).1, b"$1\r\nv\r\n");
        assert_eq!(answer(&mut c, &get("t"), 99).0, 0, "expires at 100");
    }

    /// Redis sees every key the cache answers within SEEN_EVERY_MS of the answer: keys
    /// queued from SEEN_EVERY_MS - TOUCH_EVERY_MS on, and sent together TOUCH_EVERY_MS after
    /// the first.
    /// What the application writing `output` to connection 1 sends (the connection takes it
    /// all), and what the cache says it took.
    fn written(c: &mut RedisCache, output: &[u8]) -> (Option<Result<usize, ()>>, Vec<u8>) {
        let mut sent = Vec::new();
        let r = c.app_write(1, output, &mut |b| {
            sent.extend_from_slice(b);
            Ok(b.len())
        });
        (r, sent)
    }

    /// Redis evicting by LRU: the cache's answers are TOUCHed in Redis.
    fn ready_lru() -> (RedisCache, Io) {
        let replies = String::from_utf8_lossy(HANDSHAKE_REPLIES)
            .replace("$10\r\nnoeviction", "$11\r\nallkeys-lru");
        ready_with(false, replies.into_bytes())
    }

    #[test]
    fn keys_answered_are_touched_in_redis_every_500_ms() {
        let (mut c, mut io) = ready_lru();
        fill(&mut c, &mut io, "k", "v", -1, 0);
        fill(&mut c, &mut io, "j", "w", -1, 0);
        assert!(answer(&mut c, &get("k"), 100).0 > 0);
        c.upkeep(&mut io, 6379, 100);
        assert!(io.sent.is_empty(), "filled at 0: Redis saw the keys then");
        let queued = SEEN_EVERY_MS - TOUCH_EVERY_MS;
        assert!(answer(&mut c, &[get("k"), get("j")].concat(), queued).0 > 0);
        assert!(answer(&mut c, &get("k"), queued + 1).0 > 0);
        c.upkeep(&mut io, 6379, queued + 1);
        assert!(io.sent.is_empty(), "the TOUCH waits for more keys");
        c.upkeep(&mut io, 6379, SEEN_EVERY_MS);
        assert_eq!(
            io.sent,
            req(&["TOUCH", "k", "j"]),
            "one TOUCH for both, once, by SEEN_EVERY_MS"
        );
        c.control_output(b":2\r\n", SEEN_EVERY_MS + 2);
        assert!(c.up());
    }

    /// Redis not evicting by LRU: no TOUCH for the answers; OBJECT IDLETIME's reply says at
    /// most the time since the cache's last answer; a key answered since Redis saw it is
    /// TOUCHed when it leaves the cache.
    #[test]
    fn without_lru_eviction_idle_times_are_corrected_instead() {
        let (mut c, mut io) = ready(false);
        fill(&mut c, &mut io, "k", "v", -1, 0);
        assert!(answer(&mut c, &get("k"), 2500).0 > 0);
        c.upkeep(&mut io, 6379, 3000);
        c.upkeep(&mut io, 6379, 9000);
        assert!(io.sent.is_empty(), "no TOUCH");
        c.loop_turn();
        assert!(c.app_read(1, &req(&["OBJECT", "IDLETIME", "k"]), &|| 5000));
        let (r, sent) = written(&mut c, b":5\r\n");
        assert_eq!((r, &sent[..]), (Some(Ok(4)), &b":3\r\n"[..]));
        // A key never answered by the cache, or another database's k: Redis's reply as it is.
        c.loop_turn();
        assert!(!c.app_read(1, &req(&["OBJECT", "IDLETIME", "other"]), &|| 5000));
        c.opened(2, 0);
        c.app_read(2, &req(&["SELECT", "9"]), &|| 5000);
        assert!(!c.app_read(2, &req(&["OBJECT", "IDLETIME", "k"]), &|| 5000));
        // k leaves the cache (others fill it up): it is TOUCHed.
        let big = "x".repeat(60_000);
        for i in 0..20 {
            fill(&mut c, &mut io, &format!("big{i}"), &big, -1, 6000);
        }
        assert!(!c.store.contains(b"k"));
        c.upkeep(&mut io, 6379, 6200);
        assert_eq!(io.sent, req(&["TOUCH", "k"]));
    }

    #[test]
    fn under_a_timeout_redis_sees_a_request_of_each_connection_every_500_ms() {
        let replies = String::from_utf8_lossy(HANDSHAKE_REPLIES)
            .replace("timeout\r\n$1\r\n0\r\n", "timeout\r\n$3\r\n300\r\n");
        let (mut c, mut io) = ready_with(false, replies.into_bytes());
        fill(&mut c, &mut io, "k", "v", -1, 0);
        assert!(answer(&mut c, &get("k"), 100).0 > 0);
        // The connection has not been read by Redis since 0.
        assert_eq!(answer(&mut c, &get("k"), SEEN_EVERY_MS).0, 0);
        c.app_read(1, &get("k"), &|| SEEN_EVERY_MS);
        assert!(answer(&mut c, &get("k"), SEEN_EVERY_MS + 1).0 > 0);
    }

    #[test]
    fn connections_in_states_the_cache_cannot_answer_exactly_are_left_to_redis() {
        let cases: [(&[&str], Option<Aside>); 9] = [
            (&["SELECT", "1"], Some(Aside::Db)),
            (&["HELLO", "3"], Some(Aside::Protocol)),
            (&["HELLO", "2", "AUTH", "u", "p"], Some(Aside::Auth)),
            (&["AUTH", "pw"], Some(Aside::Auth)),
            (&["CLIENT", "REPLY", "OFF"], Some(Aside::Mode)),
            (&["SUBSCRIBE", "ch"], Some(Aside::Mode)),
            (&["BLPOP", "l", "0"], Some(Aside::Blocking)),
            (&["MULTI"], None),
            (&["SELECT", "0"], None),
        ];
        for (cmd, why) in cases {
            let (mut c, mut io) = ready(false);
            fill(&mut c, &mut io, "k", "v", -1, 0);
            c.app_read(1, &req(cmd), &|| 1);
            let answered = answer(&mut c, &get("k"), 2).0 > 0;
            let want = cmd == ["SELECT", "0"];
            assert_eq!(answered, want, "after {cmd:?}");
            if let Some(why) = why {
                assert_eq!(c.stats().aside[why as usize], 1, "{cmd:?}");
            }
        }
        // A transaction ends with EXEC.
        let (mut c, mut io) = ready(false);
        fill(&mut c, &mut io, "k", "v", -1, 0);
        c.app_read(1, &req(&["MULTI"]), &|| 1);
        c.app_read(1, &req(&["EXEC"]), &|| 1);
        assert!(answer(&mut c, &get("k"), 2).0 > 0);
        // Half a request read by Redis: what follows it is not the next request.
        let g = get("k");
        c.app_read(1, &g[..5], &|| 3);
        assert_eq!(answer(&mut c, &g, 4).0, 0);
        c.app_read(1, &g[5..], &|| 5);
        assert!(answer(&mut c, &g, 6).0 > 0);
    }

    #[test]
    fn nobody_is_answered_during_client_pause_or_while_a_monitor_watches() {
        let (mut c, mut io) = ready(false);
        fill(&mut c, &mut io, "k", "v", -1, 0);
        c.opened(2, 0);
        c.app_read(2, &req(&["CLIENT", "PAUSE", "100"]), &|| 10);
        assert_eq!(answer(&mut c, &get("k"), 50).0, 0);
        assert!(answer(&mut c, &get("k"), 212).0 > 0);
        c.app_read(2, &req(&["MONITOR"]), &|| 220);
        assert_eq!(answer(&mut c, &get("k"), 230).0, 0);
        c.closed(2);
        assert!(answer(&mut c, &get("k"), 240).0 > 0);
    }

    #[test]
    fn a_connection_that_sends_no_gets_is_not_looked_at_until_it_does() {
        let (mut c, _io) = ready(false);
        assert!(c.wants(1));
        c.opened(2, 0);
        for conn in [1, 2] {
            for _ in 0..QUIET_AFTER {
                c.app_read(conn, &req(&["SET", "k", "v"]), &|| 1);
            }
            assert!(!c.wants(conn));
            assert_eq!(c.wants_any(), conn == 1, "connection 2 is still looked at");
        }
        c.app_read(1, &get("k"), &|| 2);
        assert!(c.wants(1));
        assert!(c.wants_any());
        c.closed(1);
        assert!(!c.wants_any(), "the one looked at closed");
        c.opened(3, 3);
        assert!(c.wants_any(), "a new connection is looked at");
        c.opened(3, 4);
        c.closed(3);
        assert!(!c.wants_any(), "counted once when opened twice");
        c.opened_followed(4, 5);
        assert!(
            !c.wants_any(),
            "a connection only followed is never offered"
        );
        c.closed(4);
        assert!(!c.wants_any());
    }

    #[test]
    fn fills_go_at_most_once_a_millisecond_unless_many_wait() {
        let (mut c, mut io) = ready(false);
        let sent = |io: &mut Io| {
            String::from_utf8_lossy(&std::mem::take(&mut io.sent))
                .matches("PEXPIRETIME")
                .count()
        };
        // A miss after a quiet time: its fill goes at once.
        assert_eq!(answer(&mut c, &get("a"), 10).0, 0);
        c.upkeep(&mut io, 6379, 10);
        assert_eq!(sent(&mut io), 1);
        // Misses within the millisecond: together, a millisecond later.
        for k in ["b", "c"] {
            assert_eq!(answer(&mut c, &get(k), 10).0, 0);
        }
        c.upkeep(&mut io, 6379, 10);
        assert_eq!(sent(&mut io), 0);
        c.upkeep(&mut io, 6379, 10 + FILL_WAIT_MS);
        assert_eq!(sent(&mut io), 2);
        // Redis found idle: they go at once.
        assert_eq!(answer(&mut c, &get("d"), 11).0, 0);
        c.upkeep(&mut io, 6379, 11);
        assert_eq!(sent(&mut io), 0);
        c.idle(&mut io, 11);
        assert_eq!(sent(&mut io), 1);
        // FILL_BATCH waiting go at once; a wall clock that stepped back does not hold them.
        for i in 0..FILL_BATCH {
            assert_eq!(answer(&mut c, &get(&format!("k{i}")), 11).0, 0);
        }
        c.upkeep(&mut io, 6379, 11);
        assert_eq!(sent(&mut io), FILL_BATCH);
        assert_eq!(answer(&mut c, &get("z"), 5).0, 0);
        c.upkeep(&mut io, 6379, 5);
        assert_eq!(sent(&mut io), 1);
    }

    #[test]
    fn a_key_written_again_before_any_hit_is_not_filled_for_a_while() {
        let (mut c, mut io) = ready(false);
        fill(&mut c, &mut io, "k", "v", -1, 0);
        c.control_output(&push(&["k"]), 2);
        assert_eq!(answer(&mut c, &get("k"), 3).0, 0);
        c.upkeep(&mut io, 6379, 3);
        assert!(io.sent.is_empty(), "no fill for {COLD_MS} ms");
        // Later it is filled again.
        fill(&mut c, &mut io, "k", "v2", -1, 2 + COLD_MS);
        assert_eq!(answer(&mut c, &get("k"), 3 + COLD_MS).1, b"$2\r\nv2\r\n");
    }

    #[test]
    fn swapdb_empties_the_cache() {
        let (mut c, mut io) = ready(false);
        fill(&mut c, &mut io, "k", "v", -1, 0);
        c.app_read(1, &req(&["SWAPDB", "0", "1"]), &|| 1);
        assert_eq!(c.stats().entries, 0);
        // A script that may write may run SWAPDB: the same; a read-only one may not.
        for (cmd, empties) in [
            (&["EVAL", "return 1", "0"][..], true),
            (&["EVALSHA", "abc", "0"][..], true),
            (&["FCALL", "f", "0"][..], true),
            (&["EVAL_RO", "return 1", "0"][..], false),
            (&["FCALL_RO", "f", "0"][..], false),
        ] {
            fill(&mut c, &mut io, "k", "v", -1, 0);
            c.app_read(1, &req(cmd), &|| 1);
            assert_eq!(c.stats().entries == 0, empties, "{cmd:?}");
            c.app_read(1, &req(&["SWAPDB", "0", "1"]), &|| 1);
        }
    }

    /// A transaction's SWAPDB (and the other commands that change every connection's
    /// answers) takes effect when EXEC runs it, and not at all after DISCARD; a DISCARD
    /// Redis refuses leaves the transaction open, an EXEC it refuses ends it unrun.
    #[test]
    fn a_transactions_swapdb_takes_effect_at_its_exec() {
        let (mut c, mut io) = ready(false);
        c.opened(2, 0);
        fill(&mut c, &mut io, "k", "v", -1, 0);
        c.app_read(2, &req(&["MULTI"]), &|| 1);
        c.app_read(2, &req(&["SWAPDB", "0", "1"]), &|| 1);
        assert_eq!(c.stats().entries, 1, "queued, not run");
        c.app_read(2, &req(&["EXEC"]), &|| 2);
        assert_eq!(c.stats().entries, 0, "run by EXEC");
        fill(&mut c, &mut io, "k", "v", -1, 3);
        c.app_read(2, &req(&["MULTI"]), &|| 4);
        c.app_read(2, &req(&["SWAPDB", "0", "1"]), &|| 4);
        c.app_read(2, &req(&["DISCARD"]), &|| 5);
        assert_eq!(c.stats().entries, 1, "discarded");
        c.app_read(2, &req(&["MULTI"]), &|| 6);
        c.app_read(2, &req(&["SWAPDB", "0", "1"]), &|| 6);
        c.app_read(2, &req(&["EXEC", "x"]), &|| 7);
        assert_eq!(c.stats().entries, 1, "refused EXEC: not run");
        // A refused DISCARD: still in the transaction, whose GETs Redis queues.
        c.app_read(1, &req(&["MULTI"]), &|| 8);
        c.app_read(1, &req(&["DISCARD", "x"]), &|| 8);
        assert_eq!(answer(&mut c, &get("k"), 9).0, 0);
        c.app_read(1, &req(&["DISCARD"]), &|| 10);
        assert!(answer(&mut c, &get("k"), 11).0 > 0);
        // A MULTI Redis refuses starts nothing; RESET ends a transaction unrun.
        c.app_read(2, &req(&["MULTI", "x"]), &|| 12);
        c.app_read(2, &req(&["SWAPDB", "0", "1"]), &|| 12);
        assert_eq!(c.stats().entries, 0, "not in a transaction: run");
        fill(&mut c, &mut io, "k", "v", -1, 13);
        c.app_read(2, &req(&["MULTI"]), &|| 14);
        c.app_read(2, &req(&["SWAPDB", "0", "1"]), &|| 14);
        c.app_read(2, &req(&["RESET"]), &|| 14);
        assert_eq!(c.stats().entries, 1, "reset: not run");
        c.app_read(2, &req(&["SWAPDB", "0", "1"]), &|| 15);
        assert_eq!(c.stats().entries, 0, "after RESET: run");
    }

    /// A pause ends for the cache 1000/hz ms after it ends for Redis (whose cron lifts it,
    /// and then runs what it held back); under a pause of every command an UNPAUSE waits for
    /// the pause's end; SHUTDOWN holds back writes for up to shutdown-timeout; FAILOVER turns
    /// the cache off.
    #[test]
    fn pauses_last_until_redis_has_run_what_it_held_back() {
        let (mut c, mut io) = ready(false);
        fill(&mut c, &mut io, "k", "v", -1, 0);
        c.opened(2, 0);
        c.app_read(2, &req(&["CLIENT", "PAUSE", "100"]), &|| 10);
        assert_eq!(answer(&mut c, &get("k"), 150).0, 0, "hz 10: 100 ms more");
        assert!(answer(&mut c, &get("k"), 212).0 > 0);
        c.app_read(2, &req(&["CLIENT", "PAUSE", "10000"]), &|| 300);
        c.app_read(2, &req(&["CLIENT", "UNPAUSE"]), &|| 310);
        assert_eq!(answer(&mut c, &get("k"), 1000).0, 0, "ALL: UNPAUSE waits");
        c.app_read(2, &req(&["CLIENT", "PAUSE", "10000", "WRITE"]), &|| 20_000);
        c.app_read(2, &req(&["CLIENT", "UNPAUSE"]), &|| 20_010);
        assert_eq!(answer(&mut c, &get("k"), 20_050).0, 0);
        assert!(
            answer(&mut c, &get("k"), 20_112).0 > 0,
            "WRITE: UNPAUSE runs"
        );
        c.app_read(2, &req(&["SHUTDOWN", "ABORT"]), &|| 20_200);
        assert!(answer(&mut c, &get("k"), 20_201).0 > 0);
        c.app_read(2, &req(&["SHUTDOWN"]), &|| 20_300);
        c.app_read(2, &req(&["CLIENT", "UNPAUSE"]), &|| 20_400);
        assert_eq!(
            answer(&mut c, &get("k"), 30_000).0,
            0,
            "UNPAUSE: SHUTDOWN holds"
        );
        assert!(answer(&mut c, &get("k"), 30_402).0 > 0);
        // A pause Redis refuses (its timeout not a number) pauses nothing.
        c.app_read(2, &req(&["CLIENT", "PAUSE", "soon"]), &|| 30_500);
        assert!(answer(&mut c, &get("k"), 30_501).0 > 0);
        c.app_read(2, &req(&["FAILOVER"]), &|| 30_500);
        c.upkeep(&mut io, 6379, 30_500);
        assert!(!c.up());
        assert!(
            io.said.iter().any(|s| s.contains("FAIL OVER")),
            "{:?}",
            io.said
        );
    }

    /// INFO read from a connection: its reply, on its way out, shows Redis's figures without
    /// the cache's part in them (its answers counted, its own connection and commands not).
    #[test]
    fn info_shows_what_redis_would_without_the_cache() {
        let (mut c, mut io) = ready(false);
        fill(&mut c, &mut io, "k", "v", -1, 1);
        let three = [get("k"), get("k"), get("k")].concat();
        assert_eq!(answer(&mut c, &three, 2).0, three.len());
        c.loop_turn();
        assert!(!c.rewriting());
        assert!(c.app_read(
            1,
            &[req(&["SET", "a", "b"]), req(&["info"])].concat(),
            &|| 3
        ));
        assert!(c.rewriting());
        // Redis's figures: the GET that missed the cache, the fill's GET and PEXPIRETIME hit;
        // the cache's connection is a tracking client.
        let redis = "# Clients\r\nconnected_clients:2\r\ntracking_clients:1\r\n\r\n\
                     # Stats\r\nkeyspace_hits:3\r\n";
        let shown = "# Clients\r\nconnected_clients:1\r\ntracking_clients:0\r\n\r\n\
                     # Stats\r\nkeyspace_hits:4\r\n";
        let bulk = |t: &str| format!("${}\r\n{t}\r\n", t.len());
        let output = format!("+OK\r\n{}", bulk(redis));
        let (r, sent) = written(&mut c, output.as_bytes());
        assert_eq!(r, Some(Ok(output.len())));
        assert_eq!(
            String::from_utf8(sent).unwrap(),
            format!("+OK\r\n{}", bulk(shown))
        );
        assert!(!c.rewriting());
        assert_eq!(c.app_write(1, b"+OK\r\n", &mut |b| Ok(b.len())), None);
        // Inside MULTI, or on a connection whose replies are not one per request: as written.
        c.loop_turn();
        assert!(!c.app_read(1, &[req(&["MULTI"]), req(&["INFO"])].concat(), &|| 4));
        c.app_read(
            1,
            &[req(&["EXEC"]), req(&["CLIENT", "REPLY", "SKIP"])].concat(),
            &|| 4,
        );
        c.loop_turn();
        assert!(!c.app_read(1, &req(&["INFO"]), &|| 5));
        assert!(!c.rewriting());
    }

    /// CLIENT KILL's count leaves out the cache's connection when Redis closed it then.
    #[test]
    fn client_kill_counts_without_the_caches_connection() {
        let (mut c, mut io) = ready(false);
        c.loop_turn();
        assert!(c.app_read(1, &req(&["CLIENT", "KILL", "SKIPME", "yes"]), &|| 1));
        c.control_closed(&mut io, 1);
        let (r, sent) = written(&mut c, b":7\r\n");
        assert_eq!((r, &sent[..]), (Some(Ok(4)), &b":6\r\n"[..]));
        // The cache's connection not killed: the count as it is.
        c.loop_turn();
        assert!(c.app_read(1, &req(&["CLIENT", "KILL", "TYPE", "pubsub"]), &|| 2));
        let (r, sent) = written(&mut c, b":2\r\n");
        assert_eq!((r, &sent[..]), (Some(Ok(4)), &b":2\r\n"[..]));
    }

    /// A connection left to Redis is still followed: its SWAPDB, CLIENT PAUSE and MONITOR
    /// change what the cache may answer for everyone, also in an inline line with quotes.
    #[test]
    fn a_connection_left_to_redis_is_still_followed() {
        let (mut c, mut io) = ready(false);
        c.opened(2, 0);
        c.app_read(2, &req(&["SELECT", "9"]), &|| 0);
        assert!(!c.wants(2));
        fill(&mut c, &mut io, "k", "v", -1, 0);
        c.app_read(2, &req(&["SWAPDB", "0", "9"]), &|| 1);
        assert_eq!(c.stats().entries, 0, "SWAPDB from db 9");
        fill(&mut c, &mut io, "k", "v", -1, 2);
        c.app_read(2, b"CLIENT \"PAUSE\" '100'\r\n", &|| 3);
        assert_eq!(answer(&mut c, &get("k"), 4).0, 0, "paused");
        assert!(answer(&mut c, &get("k"), 205).0 > 0, "the pause is over");
        c.app_read(2, b"\"monitor\"\n", &|| 206);
        assert_eq!(answer(&mut c, &get("k"), 207).0, 0, "a monitor is open");
    }

    /// A connection whose requests cannot be followed stops the cache for everyone until it
    /// closes.
    #[test]
    fn a_connection_the_cache_cannot_follow_stops_it_until_it_closes() {
        let (mut c, mut io) = ready(false);
        fill(&mut c, &mut io, "k", "v", -1, 0);
        c.opened(2, 0);
        c.app_read(2, b"SET \"a b\r\n", &|| 1);
        assert_eq!(answer(&mut c, &get("k"), 2).0, 0);
        assert_eq!(c.stats().aside[Aside::Unparsed as usize], 1);
        c.closed(2);
        assert!(answer(&mut c, &get("k"), 3).0 > 0);
    }

    /// While Redis logs every command (slowlog-log-slower-than 0), the cache sends nothing:
    /// it goes off at a client's CONFIG SET that says so, without connecting again (Redis
    /// would log the handshake among the clients' commands), stays off through the ACL and
    /// CONFIG changes that would make it check again, and connects once the setting allows it.
    #[test]
    fn while_redis_logs_every_command_the_cache_sends_nothing() {
        let (mut c, mut io) = ready(false);
        let set = |v: &str| req(&["CONFIG", "SET", "slowlog-log-slower-than", v]);
        c.app_read(1, &set("0"), &|| 1);
        c.upkeep(&mut io, 6379, 2);
        assert!(!c.up());
        assert!(
            io.sent.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&io.sent)
        );
        assert_eq!(io.said.len(), 1, "{:?}", io.said);
        assert!(io.said[0].contains("slowlog"), "{:?}", io.said);
        for r in [
            req(&["ACL", "SETUSER", "u", "+get"]),
            req(&["CONFIG", "SET", "masterauth", ""]),
            set("00"),
        ] {
            c.app_read(1, &r, &|| 3);
            c.upkeep(&mut io, 6379, 4);
            c.upkeep(&mut io, 6379, 10_000);
            assert!(
                io.sent.is_empty(),
                "{:?}",
                String::from_utf8_lossy(&io.sent)
            );
        }
        assert_eq!(io.said.len(), 1, "said once");
        c.app_read(1, &set("10000"), &|| 10_001);
        io.incoming = HANDSHAKE_REPLIES.to_vec();
        c.upkeep(&mut io, 6379, 10_002);
        assert!(String::from_utf8_lossy(&io.sent).contains("HELLO"));
        assert_eq!(c.upkeep(&mut io, 6379, 10_002), Upkeep::Watch(7));
    }

    #[test]
    fn a_redis_that_asks_for_a_password_leaves_the_cache_off_said_once() {
        let mut c = RedisCache::new(1 << 20, false, 0);
        let mut io = Io {
            incoming: b"-NOAUTH HELLO must be called with the client already authenticated\r\n"
                .to_vec(),
            ..Io::default()
        };
        c.upkeep(&mut io, 6379, 0);
        c.upkeep(&mut io, 6379, 0);
        assert!(!c.up());
        assert_eq!(io.said.len(), 1, "{:?}", io.said);
        assert!(io.said[0].contains("password"), "{:?}", io.said);
        c.upkeep(&mut io, 6379, 10_000);
        assert_eq!(io.said.len(), 1);
        let mut io = Io {
            refuse: Some(libc::ECONNREFUSED),
            ..Io::default()
        };
        let mut c = RedisCache::new(1 << 20, false, 0);
        c.upkeep(&mut io, 6379, 0);
        assert!(io.said[0].contains("127.0.0.1:6379"), "{:?}", io.said);
        // Every command in the slowlog (the cache's answers would be missing there), and
        // listeners whose clients the shim does not see.
        for (from, to, says) in [
            ("$5\r\n10000", "$1\r\n0", "slowlog"),
            ("$0\r\n\r\n$8", "$5\r\n/tmp/\r\n$8", "unix socket /tmp/"),
            ("$1\r\n0\r\n$4", "$4\r\n6380\r\n$4", "TLS on port 6380"),
            ("$7\r\n0.0.0.0", "$7\r\n0.0.0.1", "0.0.0.1 (bind)"),
            (
                "$9\r\nreplicaof\r\n$0\r\n\r\n",
                "$9\r\nreplicaof\r\n$8\r\n10.0.0.1\r\n",
                "replica of 10.0.0.1",
            ),
            ("$2\r\nno\r\n", "$3\r\nyes\r\n", "cluster mode"),
            (
                "events\r\n$0\r\n\r\n",
                "events\r\n$3\r\nKEm\r\n",
                "key-miss events",
            ),
            (
                "*0\r\n",
                "*1\r\n%2\r\n$4\r\nname\r\n$4\r\njson\r\n$3\r\nver\r\n:1\r\n",
                "modules loaded",
            ),
        ] {
            let replies = String::from_utf8_lossy(HANDSHAKE_REPLIES).replace(from, to);
            let mut io = Io {
                incoming: replies.into_bytes(),
                ..Io::default()
            };
            let mut c = RedisCache::new(1 << 20, false, 0);
            c.upkeep(&mut io, 6379, 0);
            c.upkeep(&mut io, 6379, 0);
            assert!(!c.up(), "{says}");
            assert!(io.said[0].contains(says), "{:?}", io.said);
        }
        // The stack's own address and the wildcards are served or followed.
        let replies = String::from_utf8_lossy(HANDSHAKE_REPLIES)
            .replace("$7\r\n0.0.0.0", "$19\r\n198.18.0.2 * -::*  ");
        let mut io = Io {
            incoming: replies.into_bytes(),
            ..Io::default()
        };
        let mut c = RedisCache::new(1 << 20, false, 0).with_stack_addr([198, 18, 0, 2].into());
        c.upkeep(&mut io, 6379, 0);
        assert_eq!(
            c.upkeep(&mut io, 6379, 0),
            Upkeep::Watch(7),
            "{:?}",
            io.said
        );
        // Until a CONFIG SET, which makes it check again.
        c.upkeep(&mut io, 6379, 5_000);
        assert!(!c.up());
        io.sent.clear();
        c.opened(1, 5_000);
        c.app_read(
            1,
            &req(&["CONFIG", "SET", "slowlog-log-slower-than", "10000"]),
            &|| 5_001,
        );
        io.incoming = HANDSHAKE_REPLIES.to_vec();
        c.upkeep(&mut io, 6379, 5_002);
        assert!(String::from_utf8_lossy(&io.sent).contains("HELLO"));
        assert_eq!(c.upkeep(&mut io, 6379, 5_002), Upkeep::Watch(7));
    }

    #[test]
    fn a_lost_connection_empties_the_cache_and_is_made_again() {
        let (mut c, mut io) = ready(false);
        fill(&mut c, &mut io, "k", "v", -1, 0);
        c.control_closed(&mut io, 10);
        assert!(!c.up());
        assert_eq!(c.stats().entries, 0);
        assert_eq!(io.closed, [7]);
        io.incoming = HANDSHAKE_REPLIES.to_vec();
        c.upkeep(&mut io, 6379, 10 + RETRY_MS - 1);
        assert!(io.sent.is_empty(), "not before {RETRY_MS} ms");
        c.upkeep(&mut io, 6379, 10 + RETRY_MS);
        assert_eq!(c.upkeep(&mut io, 6379, 10 + RETRY_MS), Upkeep::Watch(7));
    }

    #[test]
    fn with_the_late_fault_an_invalidated_entry_is_answered_once_more() {
        let (mut c, mut io) = ready(true);
        fill(&mut c, &mut io, "k", "v", -1, 0);
        c.control_output(&push(&["k"]), 1);
        assert!(answer(&mut c, &get("k"), 2).0 > 0);
        assert_eq!(answer(&mut c, &get("k"), 3).0, 0);
    }
}
