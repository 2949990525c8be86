//! The public types of the socket calls: connection handles, events, readiness, errors,
//! keepalive parameters and per-socket TCP options.

use smoltcp::socket::tcp;

use crate::config::{Config, CongestionControl};
use crate::net::Micros;

/// A connection handle. The generation changes whenever a slot is reused, so a handle kept
/// after its connection was freed can never reach the connection that took the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub slot: u32,
    pub gen: u32,
}

/// What answers requests in place, inside the poll that receives them (the shim's data-path
/// cache): [`Stack::poll_with`] offers it every connection of the application's (accepted or
/// connected, not closed) that a segment brought new bytes to read, right after that segment
/// and before the connection's readiness is computed, so that a connection it answers
/// entirely raises no event and its replies leave in the same poll.
pub trait Respond {
    /// Connection `id` has `a` then `b` waiting to be read (in place: two slices where the
    /// buffer wraps; never empty) and `room` bytes of send room (never 0: a connection whose
    /// `send` would fail is not offered). Returns how many of the waiting bytes it answers and
    /// the reply (at most `room` bytes), which the stack takes and queues as
    /// [`Stack::answer`](super::Stack::answer) does; `None`: the application reads them.
    fn respond(&mut self, id: ConnId, a: &[u8], b: &[u8], room: usize) -> Option<(usize, &[u8])>;
}

/// What changed since the last `take_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A connection became ready in a way it was not (a readiness bit set), or more data
    /// arrived; its readiness as of `take_events` (what `readiness` would return then, without
    /// computing it again), and the edge: the epoll bits of what happened since its last
    /// event (the bits gained, EPOLLIN for more data; every bit for a change of state: the
    /// peer's FIN, an error, a hang-up), as Linux's wake-ups carry them to epoll. Readiness
    /// lost makes no event.
    Conn(ConnId, Readiness, u32),
    /// A connection joined a listener's accept queue (one event per connection).
    Accept(u16),
}

/// Readiness of a connection, with the meaning of the epoll bits of the same names: a set of
/// EPOLLIN (readable), EPOLLOUT (writable), EPOLLRDHUP (the peer sent FIN), EPOLLHUP (both
/// directions closed, or reset) and EPOLLERR (a pending error). Kept as those bits: a request's
/// path computes, compares and reports readiness several times.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness(u32);

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;
const RDHUP: u32 = libc::EPOLLRDHUP as u32;
const HUP: u32 = libc::EPOLLHUP as u32;
const ERR: u32 = libc::EPOLLERR as u32;

impl Readiness {
    /// Nothing ready.
    pub const NONE: Readiness = Readiness(0);
    /// Readable only.
    pub const READABLE: Readiness = Readiness(IN);
    /// Writable only.
    pub const WRITABLE: Readiness = Readiness(OUT);

    #[inline]
    pub const fn new(readable: bool, writable: bool, rdhup: bool, hup: bool, error: bool) -> Self {
        Readiness(
            (readable as u32 * IN)
                | (writable as u32 * OUT)
                | (rdhup as u32 * RDHUP)
                | (hup as u32 * HUP)
                | (error as u32 * ERR),
        )
    }

    /// As epoll condition bits.
    #[inline]
    pub const fn bits(self) -> u32 {
        self.0
    }

    #[inline]
    pub const fn readable(self) -> bool {
        self.0 & IN != 0
    }

    #[inline]
    pub const fn writable(self) -> bool {
        self.0 & OUT != 0
    }

    /// The peer sent FIN (EPOLLRDHUP).
    #[inline]
    pub const fn rdhup(self) -> bool {
        self.0 & RDHUP != 0
    }

    /// Both directions are closed, or the connection was reset (EPOLLHUP).
    #[inline]
    pub const fn hup(self) -> bool {
        self.0 & HUP != 0
    }

    /// A pending error (EPOLLERR).
    #[inline]
    pub const fn error(self) -> bool {
        self.0 & ERR != 0
    }

    #[inline]
    pub fn set_readable(&mut self, on: bool) {
        self.0 = (self.0 & !IN) | (on as u32 * IN);
    }

    #[inline]
    pub fn set_writable(&mut self, on: bool) {
        self.0 = (self.0 & !OUT) | (on as u32 * OUT);
    }

    /// Whether a bit is set here that is not set in `before`.
    #[inline]
    pub fn gained_since(self, before: Readiness) -> bool {
        self.0 & !before.0 != 0
    }
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("readable", &self.readable())
            .field("writable", &self.writable())
            .field("rdhup", &self.rdhup())
            .field("hup", &self.hup())
            .field("error", &self.error())
            .finish()
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
    /// EHOSTUNREACH: the peer's (or the gateway's) address was not resolved (ARP).
    HostUnreachable,
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
            SockError::HostUnreachable => libc::EHOSTUNREACH,
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
    /// The receive buffer: the most the window offers.
    pub rcvbuf: usize,
    /// The send buffer: the most that may be queued.
    pub sndbuf: usize,
    pub ack_delay: Option<std::time::Duration>,
    pub cc: CongestionControl,
    /// TCP_MAXSEG: the MSS announced and used, at most this (`None`: from the MTU).
    pub mss: Option<u16>,
    /// IP_TTL of the segments sent (`None`: smoltcp's default, 64, Linux's ip_default_ttl).
    pub ttl: Option<u8>,
    /// IP_TOS of the segments sent (the ECN bits stay 0: the stack does not use ECN).
    pub tos: u8,
    /// A listener's TCP_DEFER_ACCEPT: a connection is queued for accept when its first data
    /// comes (or its FIN), or after this long without.
    pub defer_accept: Option<std::time::Duration>,
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
            mss: None,
            ttl: None,
            tos: 0,
            defer_accept: None,
        }
    }

    /// What a connection with these options starts with, over an IP MTU of `mtu`.
    pub(super) fn settings(&self, mtu: usize, rto_min_us: Micros) -> crate::tcp::Settings {
        let us = |d: std::time::Duration| d.as_micros() as Micros;
        crate::tcp::Settings {
            mss: u16::try_from(mtu.saturating_sub(40)).unwrap_or(u16::MAX),
            rx_capacity: self.rcvbuf,
            tx_capacity: self.sndbuf,
            nodelay: self.nodelay,
            ack_delay_us: self.ack_delay.map_or(0, us),
            rto_min_us,
            timestamps: true,
            sack: true,
            window_scaling: true,
            keepalive: self.keepalive.map(|d| crate::tcp::Keepalive {
                idle_us: us(d),
                interval_us: us(d),
                probes: KEEPALIVE_PROBES,
            }),
            congestion: engine_cc(self.cc),
        }
    }
}

/// Unanswered keepalive probes before a connection is given up (Linux's tcp_keepalive_probes).
const KEEPALIVE_PROBES: u32 = 9;

/// The engine's name for a congestion control.
pub(super) fn engine_cc(cc: CongestionControl) -> crate::tcp::Congestion {
    match cc {
        CongestionControl::None => crate::tcp::Congestion::None,
        CongestionControl::Reno => crate::tcp::Congestion::Reno,
        CongestionControl::Cubic => crate::tcp::Congestion::Cubic,
    }
}

impl Keepalive {
    /// The engine's keepalive with these parameters.
    pub(super) fn engine(self) -> crate::tcp::Keepalive {
        crate::tcp::Keepalive {
            idle_us: self.idle.as_micros() as Micros,
            interval_us: self.intvl.as_micros() as Micros,
            probes: self.cnt,
        }
    }
}

/// What the stack knows of a connection, as Linux's TCP_INFO and TCP_MAXSEG report it
/// ([`Stack::tcp_info`](super::Stack::tcp_info)). Times in microseconds, sizes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpInfo {
    /// The TCP state in Linux's numbering: see [`linux_state`].
    pub state: u8,
    /// The retransmission timeout now, backoff included (tcpi_rto).
    pub rto_us: u32,
    /// The delayed-ACK timeout (tcpi_ato; 0: ACKs are not delayed).
    pub ato_us: u32,
    /// The smoothed RTT (tcpi_rtt); 0 before the first sample (the first acknowledged data).
    pub srtt_us: u32,
    /// The RTT variation (tcpi_rttvar); 0 before the first sample.
    pub rttvar_us: u32,
    /// Backoffs of the retransmission timer since data was last acknowledged (tcpi_backoff).
    pub backoff: u8,
    /// The MSS the connection sends with: the smaller of ours (from the MTU) and the peer's
    /// SYN option, less the timestamp option if in use (tcpi_snd_mss, TCP_MAXSEG).
    pub snd_mss: u32,
    /// The largest segment the peer is expected to send: the smaller of ours and the peer's
    /// (tcpi_rcv_mss).
    pub rcv_mss: u32,
    /// The MSS we announce in our SYN: the MTU less the IPv4 and TCP headers (tcpi_advmss).
    pub advmss: u32,
    /// The IP MTU (tcpi_pmtu).
    pub pmtu: u32,
    /// Segments retransmitted over the connection's life (tcpi_total_retrans).
    pub total_retrans: u32,
    /// Bytes sent and not yet acknowledged.
    pub unacked_bytes: u32,
    /// Segments sent and not yet acknowledged, counted in `snd_mss` units (tcpi_unacked).
    pub unacked_segs: u32,
    /// Bytes in the send buffer not yet sent (tcpi_notsent_bytes).
    pub notsent_bytes: u32,
    /// Bytes in the send buffer, sent or not (SIOCOUTQ).
    pub send_queue: u32,
    /// Bytes waiting to be read (FIONREAD).
    pub recv_queue: u32,
    /// The receive window we offer: free room in the receive buffer (tcpi_rcv_wnd,
    /// tcpi_rcv_space).
    pub rcv_wnd: u32,
    /// TCPI_OPT_TIMESTAMPS (1), TCPI_OPT_SACK (2), TCPI_OPT_WSCALE (4) as negotiated
    /// (tcpi_options).
    pub options: u8,
    /// The peer's window scale (low 4 bits) and ours (high 4 bits), as Linux's bit fields
    /// tcpi_snd_wscale and tcpi_rcv_wscale lie on x86-64.
    pub wscales: u8,
    /// The congestion window and the slow-start threshold, in segments of `snd_mss`
    /// (tcpi_snd_cwnd, tcpi_snd_ssthresh; 0x7fffffff before the first loss, as Linux).
    pub snd_cwnd: u32,
    pub snd_ssthresh: u32,
    /// Segments received and sent (tcpi_segs_in, tcpi_segs_out).
    pub segs_in: u32,
    pub segs_out: u32,
}

/// A state in Linux's numbering (include/net/tcp_states.h): TCP_ESTABLISHED 1,
/// TCP_SYN_SENT 2, TCP_SYN_RECV 3, TCP_FIN_WAIT1 4, TCP_FIN_WAIT2 5, TCP_TIME_WAIT 6,
/// TCP_CLOSE 7, TCP_CLOSE_WAIT 8, TCP_LAST_ACK 9, TCP_LISTEN 10, TCP_CLOSING 11.
pub fn linux_state(s: tcp::State) -> u8 {
    match s {
        tcp::State::Established => 1,
        tcp::State::SynSent => 2,
        tcp::State::SynReceived => 3,
        tcp::State::FinWait1 => 4,
        tcp::State::FinWait2 => 5,
        tcp::State::TimeWait => 6,
        tcp::State::Closed => 7,
        tcp::State::CloseWait => 8,
        tcp::State::LastAck => 9,
        tcp::State::Listen => 10,
        tcp::State::Closing => 11,
    }
}
