//! Caches in the data path: a [`Responder`] sees the bytes the application reads from and
//! writes to its connections, and answers requests it can answer exactly without the
//! application. The socket table (`crate::sockets`) calls it; it makes no system call itself
//! (what it needs of the kernel, a connection of its own to the application, it asks of a
//! [`ControlIo`]) and knows nothing of the stack.
//!
//! `redis`: Redis GETs, with Redis's own invalidations (CLIENT TRACKING) on a connection of
//! the cache's own (`MTCP_REDIS_CACHE`). Another protocol (memcached's) would be another
//! implementation of the same trait.

mod conns;
pub mod info;
pub mod redis;
pub mod resp;
mod store;

/// Wall-clock milliseconds since the Unix epoch (Redis's expiry times are in that clock).
pub type UnixMs = i64;

/// What a cache counts, published as `cache.*` in the live statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests answered by the cache.
    pub hits: u64,
    /// Cacheable requests left to the application (not cached, expired, or due for the
    /// application to see).
    pub misses: u64,
    /// Entries filled from the application's replies on the cache's connection.
    pub fills: u64,
    /// Entries dropped because the application said the key changed.
    pub invalidations: u64,
    /// Times the whole cache was emptied (a flush, the cache's connection lost, ...).
    pub flushes: u64,
    /// Requests that arrived while the cache could not answer any (not connected yet, the
    /// application paused or busy, ...).
    pub unavailable: u64,
    /// Connections the cache stepped aside for, by reason (see [`Aside`]).
    pub aside: [u64; Aside::COUNT],
    /// Entries and their bytes now.
    pub entries: u64,
    pub bytes: u64,
}

impl CacheStats {
    /// Names of [`CacheStats::values`], in order.
    pub const NAMES: [&'static str; 9 + Aside::COUNT] = [
        "cache.hits",
        "cache.misses",
        "cache.fills",
        "cache.invalidations",
        "cache.flushes",
        "cache.unavailable",
        "cache.aside_db",
        "cache.aside_protocol",
        "cache.aside_auth",
        "cache.aside_mode",
        "cache.aside_blocking",
        "cache.aside_unparsed",
        "cachemem.entries",
        "cachemem.bytes",
        "cachemem.up",
    ];

    /// Every value, in the order of [`CacheStats::NAMES`] (`up`: whether the cache answers).
    pub fn values(&self, up: bool) -> [u64; 9 + Aside::COUNT] {
        let mut v = [0u64; 9 + Aside::COUNT];
        v[..6].copy_from_slice(&[
            self.hits,
            self.misses,
            self.fills,
            self.invalidations,
            self.flushes,
            self.unavailable,
        ]);
        v[6..6 + Aside::COUNT].copy_from_slice(&self.aside);
        v[6 + Aside::COUNT..].copy_from_slice(&[self.entries, self.bytes, u64::from(up)]);
        v
    }
}

/// Why the cache does not answer a connection's requests (it leaves them all to the
/// application from then on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aside {
    /// A database other than 0 is selected (SELECT).
    Db = 0,
    /// RESP3 (HELLO 3): replies would have to be in another protocol version.
    Protocol = 1,
    /// AUTH, or HELLO with AUTH: another user, whose rules the cache does not know.
    Auth = 2,
    /// A mode in which replies are not one per request: CLIENT REPLY, CLIENT TRACKING,
    /// SUBSCRIBE, MONITOR.
    Mode = 3,
    /// A blocking command (BLPOP, WAIT, XREAD, ...): its reply comes later.
    Blocking = 4,
    /// Bytes the cache does not parse as Redis would (nobody is answered until the connection
    /// closes).
    Unparsed = 5,
}

impl Aside {
    pub const COUNT: usize = 6;
}

/// How many bytes of a connection's data [`Responder::may_answer`] looks at.
pub const HEAD: usize = 16;

/// The kernel calls a cache's own connection needs, made by the runtime.
pub trait ControlIo {
    /// A non-blocking TCP connection to 127.0.0.1:`port`, started: its fd.
    fn connect(&mut self, port: u16) -> Result<i32, i32>;
    /// send(MSG_DONTWAIT).
    fn send(&mut self, fd: i32, bytes: &[u8]) -> Result<usize, i32>;
    /// recv(MSG_DONTWAIT): `Ok(0)` at the end of the stream.
    fn recv(&mut self, fd: i32, buf: &mut [u8]) -> Result<usize, i32>;
    fn close(&mut self, fd: i32);
    /// One line for the user, on stderr.
    fn say(&mut self, msg: &str);
}

/// What the socket table must do for a cache after [`Responder::upkeep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upkeep {
    Nothing,
    /// Find the application's end of the cache's connection `fd` (the socket whose peer is
    /// `fd`'s local address) and route what the application writes to it to
    /// [`Responder::control_output`] instead of the kernel; then call
    /// [`Responder::watching`].
    Watch(i32),
}

/// A cache in the data path of the connections of the served listeners. Connections are
/// named by a key unique while they live.
pub trait Responder: Send {
    /// A connection of a served listener opened, whose received data may be offered
    /// ([`Responder::answer`]).
    fn opened(&mut self, conn: u64, now: UnixMs);
    /// One that is followed only (what the application reads from it and writes to it), never
    /// offered: the kernel side's clients.
    fn opened_followed(&mut self, conn: u64, now: UnixMs) {
        self.opened(conn, now);
    }
    /// It closed.
    fn closed(&mut self, conn: u64);
    /// The application read `bytes` from `conn`: requests it will answer itself. Returns
    /// whether their replies are to be changed on their way out ([`Responder::app_write`]),
    /// which takes that the application had written all its earlier output to `conn`
    /// (otherwise the caller says [`Responder::output_unknown`]). `clock` tells the time, if
    /// it is needed.
    fn app_read(&mut self, conn: u64, bytes: &[u8], clock: &dyn Fn() -> UnixMs) -> bool;
    /// The application had output waiting for `conn` when it read what
    /// [`Responder::app_read`] was just given: its replies cannot be found in the output.
    fn output_unknown(&mut self, conn: u64);
    /// The application's event loop waits for events: the requests it reads next are the next
    /// iteration's.
    fn loop_turn(&mut self);
    /// Whether some connection's output goes through [`Responder::app_write`].
    fn rewriting(&self) -> bool;
    /// The application writes `data` to `conn`. `None`: it goes as it is. Otherwise the
    /// cache sent what it must through `send` (which sends on the connection: `Ok(bytes
    /// taken)` or `Err(())`, the error kept by the caller) and says how much of `data` it took.
    fn app_write(
        &mut self,
        conn: u64,
        data: &[u8],
        send: &mut dyn FnMut(&[u8]) -> Result<usize, ()>,
    ) -> Option<Result<usize, ()>>;

    /// Whether any connection may be worth a look ([`Responder::wants`] false for all if
    /// not): a wait that finds this false offers the cache none.
    fn wants_any(&self) -> bool {
        true
    }
    /// Whether `conn` is worth a look at its received data now (its state allows answering,
    /// and it is the kind of connection that sends what the cache answers): the cheapest look,
    /// before any data is touched.
    fn wants(&self, conn: u64) -> bool;
    /// Whether [`Responder::answer`] could answer anything on `conn` whose received data
    /// starts with `head` (at most [`HEAD`] bytes): a cheap look before data that wraps in the
    /// receive buffer is copied together (`answer` looks itself).
    fn may_answer(&self, conn: u64, head: &[u8]) -> bool;
    /// The application is between two iterations of its event loop and executes nothing:
    /// answers what it can from the front of `input` (bytes `conn` received that the
    /// application has not read), appending the replies to `out` (at most `room` bytes);
    /// returns how many bytes of `input` it answered.
    fn answer(
        &mut self,
        conn: u64,
        input: &[u8],
        out: &mut Vec<u8>,
        room: usize,
        now: UnixMs,
    ) -> usize;
    /// Whether [`Responder::upkeep`] has anything to do (false: it would do nothing): asked
    /// at every wait, before the clock is read.
    fn upkeep_due(&self) -> bool {
        true
    }
    /// Work on the cache's own connection, at a point where [`Responder::answer`] may be
    /// called (`port`: a port the application listens on).
    fn upkeep(&mut self, io: &mut dyn ControlIo, port: u16, now: UnixMs) -> Upkeep;
    /// Whether requests on the cache's own connection wait to go together ([`Responder::idle`]
    /// has work): asked at every wait that finds nothing, before the clock is read.
    fn idle_work(&self) -> bool {
        false
    }
    /// The application's wait found nothing to report (its thread is about to poll again or
    /// block): requests on the cache's own connection that wait to go together go now.
    fn idle(&mut self, io: &mut dyn ControlIo, now: UnixMs) {
        let _ = (io, now);
    }
    /// The outcome of [`Upkeep::Watch`]: the application's end is watched (`Some(fd)`) or
    /// was not found.
    fn watching(&mut self, io: &mut dyn ControlIo, fd: Option<i32>, now: UnixMs);
    /// The application wrote `bytes` to its end of the cache's connection.
    fn control_output(&mut self, bytes: &[u8], now: UnixMs);
    /// The application closed its end of the cache's connection.
    fn control_closed(&mut self, io: &mut dyn ControlIo, now: UnixMs);
    /// The application wrote `n` bytes to its end of a connection the cache has left
    /// ([`Responder::link_gen`]): not read, only counted.
    fn stale_output(&mut self, n: usize) {
        let _ = n;
    }
    fn stats(&self) -> CacheStats;
    /// Whether the cache can answer requests now.
    fn up(&self) -> bool;
    /// Counts the cache's connections: when it changes, the application's end of an earlier
    /// one (watched after [`Upkeep::Watch`]) is no longer the cache's (its writes and its
    /// close concern a connection the cache has left: [`Responder::stale_output`]).
    fn link_gen(&self) -> u64 {
        0
    }
}
