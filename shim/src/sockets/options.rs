//! Socket options of a stack connection.
//!
//! Every connection's identity fd is a real (never connected) kernel TCP socket of its
//! listener's family, created with the options the listener's accepted sockets inherit on
//! Linux. setsockopt goes to that socket first: the kernel checks the level, the name, the
//! length and the value, rounds it (SO_RCVTIMEO to the tick, ...) and keeps it, so every error
//! and every value read back is Linux's own. Then the option takes effect on the stack's
//! connection ([`Policy::Mirror`]), or is one without an effect a connected TCP socket could
//! show ([`Policy::Kept`]), or is one the stack cannot honour ([`Policy::Unsupported`]): the
//! kernel's checks run on a socket of nobody's (so a failed call changes nothing), then the
//! call fails with ENOPROTOOPT, as Linux fails for an option it does not support (the list is
//! in docs/linux-semantics.md). getsockopt reads the kernel socket, except for what
//! only the connection knows (SO_ERROR, the buffer sizes, TCP_INFO, TCP_MAXSEG).

use std::time::Duration;

use std::mem::{offset_of, size_of};

use libc::c_int;
use userstack::{Keepalive, TcpInfo, TcpOptions};

/// One option's raw value, as setsockopt takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockOpt {
    pub level: c_int,
    pub name: c_int,
    pub value: Vec<u8>,
}

/// What setsockopt of an option means on a stack connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// It takes effect on the stack's connection.
    Mirror,
    /// No effect a connected TCP socket could show (SO_REUSEADDR, ...): the kernel keeps it.
    Kept,
    /// The stack cannot honour it: ENOPROTOOPT.
    Unsupported,
}

/// SO_RCVTIMEO and SO_SNDTIMEO with a 64-bit time_t (glibc's `SO_RCVTIMEO` on x86-64 is the
/// "old" number, which has the same layout there).
const SO_RCVTIMEO_NEW: c_int = 66;
const SO_SNDTIMEO_NEW: c_int = 67;

/// The policy for (`level`, `name`).
pub fn policy(level: c_int, name: c_int) -> Policy {
    match (level, name) {
        (
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE
            | libc::SO_RCVLOWAT
            | libc::SO_RCVTIMEO
            | libc::SO_SNDTIMEO
            | SO_RCVTIMEO_NEW
            | SO_SNDTIMEO_NEW
            | libc::SO_LINGER,
        ) => Policy::Mirror,
        (
            libc::SOL_SOCKET,
            libc::SO_SNDBUF | libc::SO_SNDBUFFORCE | libc::SO_RCVBUF | libc::SO_RCVBUFFORCE,
        ) => Policy::Mirror,
        (
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY
            | libc::TCP_KEEPIDLE
            | libc::TCP_KEEPINTVL
            | libc::TCP_KEEPCNT
            | libc::TCP_USER_TIMEOUT
            | libc::TCP_QUICKACK
            | libc::TCP_CORK
            | libc::TCP_CONGESTION
            | libc::TCP_WINDOW_CLAMP
            | libc::TCP_NOTSENT_LOWAT
            | libc::TCP_LINGER2,
        ) => Policy::Mirror,
        (libc::IPPROTO_IP, libc::IP_TTL | libc::IP_TOS) => Policy::Mirror,
        // Linux applies TCP_MAXSEG at the handshake only (its mss_clamp): after it, the value
        // is kept for getsockopt and changes nothing. On a listener it is the MSS of the
        // connections it accepts (`listen_options`).
        (libc::IPPROTO_TCP, libc::TCP_MAXSEG) => Policy::Kept,
        // Binding and broadcast options mean nothing to a connected TCP socket; SO_DEBUG and
        // the credential options only change what the kernel records or passes on unix
        // sockets. SO_PRIORITY, SO_MARK, SO_BUSY_POLL and SO_INCOMING_CPU steer the kernel's
        // own queueing, filtering, routing and polling, which the stack's device bypasses;
        // SO_OOBINLINE on is what the stack does anyway (urgent data stays in the stream).
        (
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR
            | libc::SO_REUSEPORT
            | libc::SO_DEBUG
            | libc::SO_BROADCAST
            | libc::SO_PASSCRED
            | libc::SO_PASSSEC
            | libc::SO_PRIORITY
            | libc::SO_MARK
            | libc::SO_BUSY_POLL
            | libc::SO_INCOMING_CPU
            | libc::SO_OOBINLINE,
        ) => Policy::Kept,
        // Options of connect() and bind(): Linux ignores them on a connected socket too.
        (libc::IPPROTO_TCP, libc::TCP_SYNCNT) => Policy::Kept,
        (
            libc::IPPROTO_IP,
            libc::IP_FREEBIND | libc::IP_TRANSPARENT | libc::IP_BIND_ADDRESS_NO_PORT,
        ) => Policy::Kept,
        _ => Policy::Unsupported,
    }
}

/// Whether getsockopt of (`level`, `name`) is answered by the connection rather than by the
/// kernel socket.
pub fn answered_by_connection(level: c_int, name: c_int) -> bool {
    matches!(
        (level, name),
        (
            libc::SOL_SOCKET,
            libc::SO_ERROR | libc::SO_RCVBUF | libc::SO_SNDBUF
        ) | (
            libc::IPPROTO_TCP,
            libc::TCP_INFO | libc::TCP_MAXSEG | libc::TCP_WINDOW_CLAMP
        ) | (libc::IPPROTO_IP, libc::IP_MTU)
    )
}

/// The options of a connection that change what the shim or the stack does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnOpts {
    /// SO_KEEPALIVE (its times are the identity socket's: `Sockets::take_effect`).
    pub ka_on: bool,
    /// SO_RCVTIMEO: how long a blocking receive (or accept) waits.
    pub rcvtimeo: Option<Duration>,
    /// SO_SNDTIMEO: how long a blocking send waits for room.
    pub sndtimeo: Option<Duration>,
    /// SO_LINGER on: how long close() may take to send what is queued (0: reset at once).
    pub linger: Option<Duration>,
    /// SO_RCVLOWAT: bytes that must be buffered for the connection to be readable, and that a
    /// blocking receive waits for (0 here: never set, which is 1).
    pub rcvlowat: usize,
    /// TCP_CORK and TCP_NODELAY as last set on the connection or taken from its listener.
    /// Set without a system call (nginx's tcp_nopush takes the cork on and off around every
    /// response), so the identity socket does not hold them; `None`: never set, and the
    /// identity socket's default is the value.
    pub cork: Option<bool>,
    pub nodelay: Option<bool>,
}

/// Linux's keepalive defaults (tcp_keepalive_time, _intvl, _probes), if the kernel socket
/// cannot be asked.
pub const KEEPALIVE_DEFAULT: Keepalive = Keepalive {
    idle: Duration::from_secs(7200),
    intvl: Duration::from_secs(75),
    cnt: 9,
};

/// What an option the kernel accepted changes on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    Nodelay(bool),
    Keepalive,
    /// TCP_USER_TIMEOUT (`None`: 0, the default).
    UserTimeout(Option<Duration>),
    /// SO_SNDBUF: the send buffer's size as the kernel reads it back (twice the request).
    SendBuffer,
    /// SO_RCVBUF: the receive buffer's, likewise.
    RecvBuffer,
    /// TCP_QUICKACK.
    QuickAck(bool),
    /// TCP_CORK.
    Cork(bool),
    /// TCP_CONGESTION: one the stack has (`congestion`).
    Congestion(userstack::config::CongestionControl),
    /// TCP_WINDOW_CLAMP, as the kernel reads it back.
    WindowClamp,
    /// TCP_NOTSENT_LOWAT, likewise.
    NotsentLowat,
    /// TCP_LINGER2, likewise (seconds, -1 for a negative one).
    Linger2,
    /// IP_TTL or IP_TOS: the IP header's fields as the identity socket holds them.
    IpHeader,
}

/// An int option's value (its first four bytes).
pub fn int_value(v: &[u8]) -> Option<c_int> {
    int(v)
}

fn int(v: &[u8]) -> Option<c_int> {
    Some(c_int::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// Timeouts at or beyond this are "no timeout" (Linux caps them at MAX_SCHEDULE_TIMEOUT
/// ticks, ~10^16 s at its highest tick rate; a century is far beyond any real use).
const TIMEOUT_CAP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A timeval as Linux reads it for SO_RCVTIMEO/SO_SNDTIMEO: zero (or one beyond the cap) is
/// "no timeout"; a negative one is a timeout of zero (the call fails at once with EAGAIN).
fn timeval(v: &[u8]) -> Option<Option<Duration>> {
    let sec = i64::from_ne_bytes(v.get(..8)?.try_into().ok()?);
    let usec = i64::from_ne_bytes(v.get(8..16)?.try_into().ok()?);
    if sec < 0 {
        return Some(Some(Duration::ZERO));
    }
    let d =
        Duration::from_secs(sec as u64).saturating_add(Duration::from_micros(usec.max(0) as u64));
    Some((!d.is_zero() && d < TIMEOUT_CAP).then_some(d))
}

impl ConnOpts {
    /// Records an option the kernel accepted (so its value is valid) and says what it changes
    /// on the stack's connection.
    pub fn apply(&mut self, level: c_int, name: c_int, value: &[u8]) -> Effect {
        let v = int(value).unwrap_or(0);
        match (level, name) {
            (libc::IPPROTO_TCP, libc::TCP_NODELAY) => {
                self.nodelay = Some(v != 0);
                return Effect::Nodelay(v != 0);
            }
            (libc::IPPROTO_TCP, libc::TCP_QUICKACK) => return Effect::QuickAck(v != 0),
            (libc::IPPROTO_TCP, libc::TCP_CORK) => {
                self.cork = Some(v != 0);
                return Effect::Cork(v != 0);
            }
            (libc::IPPROTO_TCP, libc::TCP_CONGESTION) => {
                return congestion(value).map_or(Effect::None, Effect::Congestion)
            }
            (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP) => return Effect::WindowClamp,
            (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT) => return Effect::NotsentLowat,
            (libc::IPPROTO_TCP, libc::TCP_LINGER2) => return Effect::Linger2,
            (libc::SOL_SOCKET, libc::SO_SNDBUF | libc::SO_SNDBUFFORCE) => {
                return Effect::SendBuffer
            }
            (libc::SOL_SOCKET, libc::SO_RCVBUF | libc::SO_RCVBUFFORCE) => {
                return Effect::RecvBuffer
            }
            (libc::IPPROTO_IP, libc::IP_TTL | libc::IP_TOS) => return Effect::IpHeader,
            (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT) => {
                let ms = v.max(0) as u64;
                return Effect::UserTimeout((ms > 0).then(|| Duration::from_millis(ms)));
            }
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => self.ka_on = v != 0,
            (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE | libc::TCP_KEEPINTVL | libc::TCP_KEEPCNT) => {}
            (libc::SOL_SOCKET, libc::SO_RCVTIMEO | SO_RCVTIMEO_NEW) => {
                self.rcvtimeo = timeval(value).unwrap_or(None);
                return Effect::None;
            }
            (libc::SOL_SOCKET, libc::SO_SNDTIMEO | SO_SNDTIMEO_NEW) => {
                self.sndtimeo = timeval(value).unwrap_or(None);
                return Effect::None;
            }
            (libc::SOL_SOCKET, libc::SO_RCVLOWAT) => {
                // Linux: a negative value is INT_MAX, 0 is 1.
                self.rcvlowat = if v < 0 {
                    c_int::MAX as usize
                } else {
                    v.max(1) as usize
                };
                return Effect::None;
            }
            (libc::SOL_SOCKET, libc::SO_LINGER) => {
                let on = int(value).unwrap_or(0);
                let secs = value.get(4..8).and_then(int).unwrap_or(0);
                self.linger = (on != 0).then(|| Duration::from_secs(secs.max(0) as u64));
                return Effect::None;
            }
            _ => return Effect::None,
        }
        Effect::Keepalive
    }
}

/// The congestion control TCP_CONGESTION names (the name up to its NUL, as Linux reads it), if
/// it is one the stack has: Linux's "cubic" and "reno". Another name the kernel knows fails as
/// Linux fails for one that is not available (ENOENT).
pub fn congestion(value: &[u8]) -> Option<userstack::config::CongestionControl> {
    use userstack::config::CongestionControl as Cc;
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    match &value[..end] {
        b"cubic" => Some(Cc::Cubic),
        b"reno" => Some(Cc::Reno),
        _ => None,
    }
}

/// The smallest buffer a connection gets (Linux's smallest SO_RCVBUF, 2,304 read back, is a
/// request of 1,152 bytes).
const MIN_BUFFER: usize = 1024;

/// A buffer size as getsockopt reads it back (Linux doubles the request) -> the buffer the
/// stack gives the connection: the request.
pub fn buffer_of(read_back: c_int) -> usize {
    (read_back.max(0) as usize / 2).max(MIN_BUFFER)
}

/// The options a listener's connections start with on the stack: `base` (the stack's), with
/// what was set on the listener (`inherit`): SO_RCVBUF/SO_SNDBUF size their buffers (so the
/// window the handshake offers), TCP_MAXSEG their MSS, IP_TTL/IP_TOS their segments' header.
/// The rest takes effect when a connection is accepted.
pub fn listen_options(mut base: TcpOptions, inherit: &[SockOpt]) -> TcpOptions {
    base.nodelay = false;
    for o in inherit {
        let Some(v) = int(&o.value) else { continue };
        match (o.level, o.name) {
            (libc::SOL_SOCKET, libc::SO_RCVBUF) => base.rcvbuf = buffer_of(v),
            (libc::SOL_SOCKET, libc::SO_SNDBUF) => base.sndbuf = buffer_of(v),
            (libc::IPPROTO_TCP, libc::TCP_MAXSEG) if v > 0 => {
                base.mss = u16::try_from(v).ok();
            }
            (libc::IPPROTO_TCP, libc::TCP_CONGESTION) => {
                if let Some(cc) = congestion(&o.value) {
                    base.cc = cc;
                }
            }
            (libc::IPPROTO_IP, libc::IP_TTL) => base.ttl = u8::try_from(v).ok(),
            (libc::IPPROTO_IP, libc::IP_TOS) => base.tos = (v & 0xfc) as u8,

            _ => {}
        }
    }
    base
}

/// Linux's `struct tcp_info` (libc's layout for linux-gnu) for getsockopt(TCP_INFO), from what
/// the stack knows of the connection; the fields it does not know are zero (the list is in
/// docs/linux-semantics.md). Built field by field at the struct's offsets, in native byte order.
pub fn tcp_info_bytes(i: &TcpInfo) -> [u8; size_of::<libc::tcp_info>()] {
    let mut b = [0u8; size_of::<libc::tcp_info>()];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    macro_rules! set {
        ($field:ident, $v:expr) => {
            put(offset_of!(libc::tcp_info, $field), &$v.to_ne_bytes())
        };
    }
    set!(tcpi_state, i.state);
    set!(tcpi_backoff, i.backoff);
    set!(tcpi_rto, i.rto_us);
    set!(tcpi_ato, i.ato_us);
    set!(tcpi_snd_mss, i.snd_mss);
    set!(tcpi_rcv_mss, i.rcv_mss);
    set!(tcpi_unacked, i.unacked_segs);
    set!(tcpi_pmtu, i.pmtu);
    set!(tcpi_rtt, i.srtt_us);
    set!(tcpi_rttvar, i.rttvar_us);
    set!(tcpi_advmss, i.advmss);
    set!(tcpi_rcv_space, i.rcv_wnd);
    set!(tcpi_total_retrans, i.total_retrans);
    set!(tcpi_notsent_bytes, i.notsent_bytes);
    set!(tcpi_rcv_wnd, i.rcv_wnd);
    set!(tcpi_options, i.options);
    set!(tcpi_snd_rcv_wscale, i.wscales);
    set!(tcpi_snd_cwnd, i.snd_cwnd);
    set!(tcpi_snd_ssthresh, i.snd_ssthresh);
    set!(tcpi_segs_in, i.segs_in);
    set!(tcpi_segs_out, i.segs_out);
    b
}
