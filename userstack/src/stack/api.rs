//! The public types of the socket calls: connection handles, events, readiness, errors,
//! keepalive parameters and per-socket TCP options.

use smoltcp::socket::tcp;
use smoltcp::time::Duration as SDuration;

use crate::config::{Config, CongestionControl};

/// A connection handle. The generation changes whenever a slot is reused, so a handle kept
/// after its connection was freed can never reach the connection that took the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub slot: u32,
    pub gen: u32,
}

/// What changed since the last `take_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A connection became ready in a way it was not (a readiness bit set), or more data
    /// arrived; its readiness as of `take_events` (what `readiness` would return then, without
    /// computing it again). Readiness lost makes no event.
    Conn(ConnId, Readiness),
    /// A connection joined a listener's accept queue (one event per connection).
    Accept(u16),
}

/// Readiness of a connection, with the meaning of the epoll bits of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer sent FIN (EPOLLRDHUP).
    pub rdhup: bool,
    /// Both directions are closed, or the connection was reset (EPOLLHUP).
    pub hup: bool,
    /// A pending error (EPOLLERR).
    pub error: bool,
}

impl Readiness {
    /// Whether a bit is set here that is not set in `before`.
    #[inline]
    pub fn gained_since(self, before: Readiness) -> bool {
        (self.readable && !before.readable)
            || (self.writable && !before.writable)
            || (self.rdhup && !before.rdhup)
            || (self.hup && !before.hup)
            || (self.error && !before.error)
    }
}

/// Errors of socket operations, mapped one to one onto errno by callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockError {
    /// EAGAIN
    WouldBlock,
    /// ECONNRESET
    Reset,
    /// ETIMEDOUT
    TimedOut,
    /// ECONNREFUSED (an active open answered by RST)
    Refused,
    /// EPIPE: writing after shutdown(SHUT_WR) or after the connection closed.
    Pipe,
    /// ENOTCONN
    NotConnected,
    /// EBADF: the handle was closed or its slot reused.
    BadHandle,
    /// EADDRINUSE
    AddrInUse,
    /// EADDRNOTAVAIL: no free ephemeral port.
    AddrNotAvail,
    /// EINVAL
    Invalid,
    /// ENETUNREACH
    NetUnreachable,
}

impl SockError {
    pub fn errno(self) -> i32 {
        match self {
            SockError::WouldBlock => libc::EAGAIN,
            SockError::Reset => libc::ECONNRESET,
            SockError::TimedOut => libc::ETIMEDOUT,
            SockError::Refused => libc::ECONNREFUSED,
            SockError::Pipe => libc::EPIPE,
            SockError::NotConnected => libc::ENOTCONN,
            SockError::BadHandle => libc::EBADF,
            SockError::AddrInUse => libc::EADDRINUSE,
            SockError::AddrNotAvail => libc::EADDRNOTAVAIL,
            SockError::Invalid => libc::EINVAL,
            SockError::NetUnreachable => libc::ENETUNREACH,
        }
    }
}

impl std::fmt::Display for SockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.errno()))
    }
}

impl std::error::Error for SockError {}

/// TCP keepalive parameters (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: std::time::Duration,
    pub intvl: std::time::Duration,
    pub cnt: u32,
}

/// Per-socket TCP options; a listener's are inherited by the connections it accepts, as on Linux.
#[derive(Debug, Clone, Copy)]
pub struct TcpOptions {
    pub nodelay: bool,
    pub keepalive: Option<std::time::Duration>,
    pub rcvbuf: usize,
    pub sndbuf: usize,
    pub ack_delay: Option<std::time::Duration>,
    pub cc: CongestionControl,
}

impl TcpOptions {
    pub fn from_config(c: &Config) -> Self {
        TcpOptions {
            nodelay: false,
            keepalive: None,
            rcvbuf: c.rcvbuf,
            sndbuf: c.sndbuf,
            ack_delay: c.ack_delay,
            cc: c.cc,
        }
    }

    pub(super) fn apply(&self, s: &mut tcp::Socket<'_>) {
        s.set_nagle_enabled(!self.nodelay);
        s.set_ack_delay(self.ack_delay.map(to_sdur));
        s.set_keep_alive(self.keepalive.map(to_sdur));
        s.set_congestion_control(match self.cc {
            CongestionControl::None => tcp::CongestionControl::None,
            CongestionControl::Reno => tcp::CongestionControl::Reno,
            CongestionControl::Cubic => tcp::CongestionControl::Cubic,
        });
    }
}

pub(super) fn to_sdur(d: std::time::Duration) -> SDuration {
    SDuration::from_micros(d.as_micros() as u64)
}
