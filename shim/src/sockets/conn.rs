//! Connections: data in and out, shutdown, addresses, socket options, O_NONBLOCK, FIONREAD.

use std::net::SocketAddr;
use std::time::Duration;

use libc::c_int;
use userstack::link::Link;
use userstack::{ConnId, Keepalive, SockError};

use super::options::{self, ConnOpts, Effect, Policy};
use super::{so_errno, Answer, Host, Obj, Phase, Sockets};

/// One data transfer on a connection.
pub enum Io<'a> {
    /// recv into the buffer; `true`: MSG_PEEK.
    Read(&'a mut [u8], bool),
    Write(&'a [u8]),
}

/// One attempt at an [`Io`], which never blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoTry {
    pub result: Result<usize, SockError>,
    /// The socket is in non-blocking mode (O_NONBLOCK).
    pub nonblock: bool,
    /// How long a blocking call may wait (SO_RCVTIMEO for a read, SO_SNDTIMEO for a write).
    pub timeout: Option<Duration>,
    /// SO_RCVLOWAT: how many bytes a blocking receive waits for (at most the buffer's size).
    pub rcvlowat: usize,
}

impl<L: Link, H: Host<L>> Sockets<'_, L, H> {
    /// Whether `fd` is one of our connections: the data calls only act then.
    pub fn is_conn(&mut self, fd: c_int) -> bool {
        matches!(self.obj(fd), Some(Obj::Conn { .. }))
    }

    /// A send with MSG_FASTOPEN on connection `fd` of ours, as Linux's (its TFO path is a
    /// connect first, `__inet_stream_connect`): `Err` is what it says instead of sending:
    /// `EISCONN` once connected (accepted, or connect() saw the handshake end); while
    /// connect() has not seen the outcome, what a connect() would say (`EALREADY` during the
    /// handshake, its error after a failure); after a failed connect, without an address,
    /// `EINVAL`. `Ok(true)`: a failed connection given an address connects again, then sends;
    /// `Ok(false)`: the handshake completed, the send goes on. `None`: not a connection.
    pub fn fast_open(&mut self, fd: c_int, with_address: bool) -> Option<Result<bool, c_int>> {
        let Obj::Conn { phase, .. } = self.obj(fd)? else {
            return None;
        };
        Some(match phase {
            Phase::Connected => Err(libc::EISCONN),
            Phase::Connecting => match self.connect_result(fd) {
                None => Err(libc::EALREADY),
                Some(r) => r.map(|_| false),
            },
            Phase::Unconnected if with_address => Ok(true),
            Phase::Unconnected => Err(libc::EINVAL),
        })
    }

    /// Whether writes to `fd` are ours: a connection of ours, or the application's end of
    /// the data-path cache's connection (`Obj::Watch`).
    pub fn takes_writes(&mut self, fd: c_int) -> bool {
        matches!(self.obj(fd), Some(Obj::Conn { .. } | Obj::Watch))
    }

    /// One transfer on connection `fd`, without blocking: a read that finds nothing polls
    /// the stack and tries once more. `defer(pending)` says whether a write may leave its data
    /// for the next flush (`pending`: connections with writes queued); otherwise it is sent
    /// at once. `None`: not a connection of ours.
    pub fn io(
        &mut self,
        fd: c_int,
        op: &mut Io<'_>,
        defer: impl FnOnce(usize) -> bool,
    ) -> Option<IoTry> {
        let (result, nonblock) = self.io_once(fd, op, defer)?;
        let (timeout, rcvlowat) = self.io_waits(fd, matches!(op, Io::Write(_)));
        Some(IoTry {
            result,
            nonblock,
            timeout,
            rcvlowat,
        })
    }

    /// SO_RCVTIMEO (`write`: SO_SNDTIMEO) and SO_RCVLOWAT of connection `fd` (none and 1
    /// for anything else): what a blocking transfer waits for.
    pub fn io_waits(&mut self, fd: c_int, write: bool) -> (Option<Duration>, usize) {
        match self.obj(fd) {
            Some(Obj::Conn { opts, .. }) => (
                if write { opts.sndtimeo } else { opts.rcvtimeo },
                opts.rcvlowat,
            ),
            _ => (None, 1),
        }
    }

    /// [`Sockets::io`]'s transfer alone, for the calls that end in it: its result and whether
    /// the socket is in non-blocking mode.
    #[inline(always)]
    pub fn io_once(
        &mut self,
        fd: c_int,
        op: &mut Io<'_>,
        defer: impl FnOnce(usize) -> bool,
    ) -> Option<(Result<usize, SockError>, bool)> {
        let (id, nonblock) = match self.obj(fd) {
            Some(Obj::Conn { id, nonblock, .. }) => (*id, *nonblock),
            Some(Obj::Watch) => {
                return self.watch_io(fd, op).map(|t| (t.result, t.nonblock));
            }
            _ => return None,
        };
        let stack = self.stack.as_mut()?;
        let result = match op {
            Io::Read(buf, peek) => {
                let r = if *peek {
                    stack.peek(id, buf)
                } else {
                    stack.recv(id, buf)
                };
                let r = if r == Err(SockError::WouldBlock) {
                    self.pump();
                    let stack = self.stack.as_mut()?;
                    if *peek {
                        stack.peek(id, buf)
                    } else {
                        stack.recv(id, buf)
                    }
                } else {
                    r
                };
                if let (Ok(n), false) = (r, *peek) {
                    self.cache_read(id, fd, &buf[..n]);
                }
                r
            }
            Io::Write(data) => {
                let r = match self.cache.as_ref().is_some_and(|c| c.rewriting) {
                    true => self.cache_write(id, data),
                    false => None,
                };
                let stack = self.stack.as_mut()?;
                let r = r.unwrap_or_else(|| stack.send(id, data));
                if r.is_ok() && !defer(stack.pending_writes()) {
                    self.flush();
                }
                r
            }
        };
        Some((result, nonblock))
    }

    /// shutdown() of connection or listener `fd`.
    pub fn shutdown(&mut self, fd: c_int, how: c_int) -> Answer<c_int> {
        let Some(Obj::Conn { id, .. }) = self.obj(fd) else {
            return self.shutdown_listener(fd, how);
        };
        let id = *id;
        if how != libc::SHUT_RD && how != libc::SHUT_WR && how != libc::SHUT_RDWR {
            return Some(Err(libc::EINVAL));
        }
        let stack = self.stack.as_mut()?;
        let mut result = Ok(0);
        if how != libc::SHUT_RD {
            if let Err(e) = stack.shutdown_write(id) {
                result = Err(so_errno(e));
            }
            self.flush();
        }
        let stack = self.stack.as_mut()?;
        if how != libc::SHUT_WR {
            if let Err(e) = stack.shutdown_read(id) {
                result = Err(so_errno(e));
            }
        }
        // Readiness changed now (RDHUP, HUP, writable after SHUT_WR), not at the next packet:
        // tell the epoll sets, and wake threads blocked in waits ("shutdown() from another
        // thread wakes the reader" is a common way to stop one).
        let ready = stack.readiness(id);
        if let (Some(i), Ok(r)) = (self.index_of(fd), ready) {
            self.notify_entry_with(i, r);
        }
        self.wake_touched();
        Some(result)
    }

    /// connect() with AF_UNSPEC on connection `fd` of ours: it is reset and unconnected, as
    /// Linux's tcp_disconnect leaves a socket (`Stack::unconnect`); the next connect() starts
    /// a new handshake. On a listener of ours: it stops listening, as shutdown(SHUT_RDWR)
    /// stops it (Linux's tcp_disconnect of a listener), and again is 0. `None`: not a socket
    /// of ours (the kernel's call).
    pub fn unconnect(&mut self, fd: c_int) -> Answer<c_int> {
        match self.obj(fd) {
            Some(Obj::Listener { shut: false, .. }) => {
                return self
                    .shutdown_listener(fd, libc::SHUT_RDWR)
                    .map(|r| r.or(Ok(0)));
            }
            Some(Obj::Listener { shut: true, .. }) => return Some(Ok(0)),
            _ => {}
        }
        let Some(Obj::Conn { id, phase, .. }) = self.obj(fd) else {
            return None;
        };
        let id = *id;
        *phase = Phase::Unconnected;
        let stack = self.stack.as_mut()?;
        let _ = stack.unconnect(id);
        self.flush();
        // Readiness changed now (hung up, the error): the epoll sets and blocked threads.
        let ready = self.stack.as_mut()?.readiness(id);
        if let (Some(i), Ok(r)) = (self.index_of(fd), ready) {
            self.notify_entry_with(i, r);
        }
        self.wake_touched();
        Some(Ok(0))
    }

    /// getpeername (`peer`) or getsockname of a connection or stack-only listener of ours.
    pub fn name(&mut self, fd: c_int, peer: bool) -> Answer<SocketAddr> {
        let (id, family) = match self.obj(fd)? {
            Obj::Conn { id, family, .. } => (*id, *family),
            Obj::Listener { kernel: false, .. } if !peer => return self.listener_name(fd).map(Ok),
            _ => return None,
        };
        let stack = self.stack.as_ref()?;
        let a = if peer {
            // Linux has no peer for a socket still connecting or closed (a reset, both FINs,
            // a failed connect): ENOTCONN, which is how a program tells whether a
            // non-blocking connect completed.
            use smoltcp::socket::tcp::State;
            match stack.state(id) {
                Ok(State::SynSent | State::Closed | State::TimeWait) => {
                    Err(SockError::NotConnected)
                }
                _ => stack.peer_addr(id),
            }
        } else {
            stack.local_addr(id)
        };
        Some(a.map(|a| family.addr(a)).map_err(so_errno))
    }

    /// setsockopt on a connection or a listener of ours (`value`: the caller's bytes). The
    /// kernel socket behind the fd checks and keeps the value first (see `options`); on a
    /// connection the option then takes effect on the stack, or fails with ENOPROTOOPT if the
    /// stack cannot honour it; on a listener it is remembered for the connections it accepts.
    pub fn setsockopt(
        &mut self,
        fd: c_int,
        level: c_int,
        name: c_int,
        value: &[u8],
    ) -> Answer<c_int> {
        let (id, family, mut opts) = match self.obj(fd)? {
            Obj::Conn {
                id, family, opts, ..
            } => (*id, *family, *opts),
            Obj::Listener { family, .. } => {
                let family = *family;
                let unsupported_cc = (level, name) == (libc::IPPROTO_TCP, libc::TCP_CONGESTION)
                    && options::congestion(value).is_none();
                if unsupported_cc {
                    // Its connections could not have it: as on a connection, ENOENT.
                    return Some(match self.host.kernel_check(family, level, name, value) {
                        Err(e) => Err(e),
                        Ok(()) => Err(libc::ENOENT),
                    });
                }
                if (level, name) == (libc::IPPROTO_TCP, libc::TCP_FASTOPEN) {
                    // The stack cannot take data in a SYN: as Linux fails for an option it
                    // does not support, after its own checks, changing nothing.
                    return Some(match self.host.kernel_check(family, level, name, value) {
                        Err(e) => Err(e),
                        Ok(()) => Err(libc::ENOPROTOOPT),
                    });
                }
                if let Err(e) = self.host.kernel_setsockopt(fd, level, name, value) {
                    return Some(Err(e));
                }
                let inherit = self.host.listener_options(fd, family);
                if let Some(Obj::Listener {
                    inherit: slot,
                    port,
                    ..
                }) = self.obj(fd)
                {
                    *slot = inherit;
                    let port = *port;
                    self.sync_listen_options(port);
                }
                return Some(Ok(0));
            }
            Obj::Epoll { .. } | Obj::Watch | Obj::Follow => return None,
        };
        match (level, name) {
            // A congestion control the stack does not have: as Linux fails for one that is not
            // available, after the kernel's own checks (an unknown name is its ENOENT too).
            (libc::IPPROTO_TCP, libc::TCP_CONGESTION) if options::congestion(value).is_none() => {
                return Some(match self.host.kernel_check(family, level, name, value) {
                    Err(e) => Err(e),
                    Ok(()) => Err(libc::ENOENT),
                });
            }
            // Linux takes a clamp of 0 only before the connection exists (the identity socket
            // never does).
            (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP)
                if value.len() >= 4 && options::int_value(value) == Some(0) =>
            {
                return Some(Err(libc::EINVAL));
            }
            _ => {}
        }
        match options::policy(level, name) {
            Policy::Kept => {
                return Some(
                    self.host
                        .kernel_setsockopt(fd, level, name, value)
                        .map(|_| 0),
                )
            }
            // The kernel's own checks first (a bad length or value fails as on Linux), on a
            // socket of nobody's: a call that fails leaves the option as it was.
            Policy::Unsupported => {
                return Some(match self.host.kernel_check(family, level, name, value) {
                    Err(e) => Err(e),
                    Ok(()) => Err(libc::ENOPROTOOPT),
                });
            }
            Policy::Mirror => {}
        }
        // TCP_CORK and TCP_NODELAY with an int's worth of value (any int is valid; a shorter
        // one is the kernel's EINVAL) are the connection's own, without a system call (nginx's
        // tcp_nopush sets and clears the cork around every response): `opts` holds them for
        // getsockopt.
        let own = level == libc::IPPROTO_TCP
            && matches!(name, libc::TCP_CORK | libc::TCP_NODELAY)
            && options::int_value(value).is_some();
        if !own {
            if let Err(e) = self.host.kernel_setsockopt(fd, level, name, value) {
                return Some(Err(e));
            }
        }
        let effect = opts.apply(level, name, value);
        if let Some(Obj::Conn { opts: slot, .. }) = self.obj(fd) {
            *slot = opts;
        }
        self.stack.as_ref()?;
        Some(
            self.take_effect(fd, id, effect, &opts)
                .map(|_| 0)
                .map_err(so_errno),
        )
    }

    /// Writes TCP_CORK and TCP_NODELAY, which setsockopt takes on a connection without the
    /// kernel (see `setsockopt`), to connection `fd`'s identity socket.
    pub(super) fn options_to_identity(&mut self, fd: c_int) {
        let Some(Obj::Conn { opts, .. }) = self.obj(fd) else {
            return;
        };
        let (cork, nodelay) = (opts.cork, opts.nodelay);
        for (name, on) in [(libc::TCP_CORK, cork), (libc::TCP_NODELAY, nodelay)] {
            if let Some(on) = on {
                let v = c_int::from(on).to_ne_bytes();
                let _ = self.host.kernel_setsockopt(fd, libc::IPPROTO_TCP, name, &v);
            }
        }
    }

    /// Makes an option's effect real on the stack's connection `id`, whose identity socket is
    /// `fd` (`opts`: its options with the new value).
    pub(super) fn take_effect(
        &mut self,
        fd: c_int,
        id: ConnId,
        effect: Effect,
        opts: &ConnOpts,
    ) -> Result<(), SockError> {
        let now = self.host.now();
        // Keepalive's times as the identity socket holds them: set, inherited, or the
        // system's defaults (the tcp_keepalive_* sysctls), as Linux would use them.
        let ka = match effect {
            Effect::Keepalive if opts.ka_on => {
                let d = options::KEEPALIVE_DEFAULT;
                let mut get = |name, default: u64| {
                    self.host
                        .kernel_getsockopt_int(fd, libc::IPPROTO_TCP, name)
                        .filter(|v| *v > 0)
                        .map_or(default, |v| v as u64)
                };
                Some(Keepalive {
                    idle: Duration::from_secs(get(libc::TCP_KEEPIDLE, d.idle.as_secs())),
                    intvl: Duration::from_secs(get(libc::TCP_KEEPINTVL, d.intvl.as_secs())),
                    cnt: get(libc::TCP_KEEPCNT, u64::from(d.cnt)) as u32,
                })
            }
            _ => None,
        };
        // The values as the identity socket holds them (the kernel's rounding and defaults).
        let mut get = |level, name| self.host.kernel_getsockopt_int(fd, level, name);
        let int_back = match effect {
            Effect::WindowClamp => get(libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP),
            Effect::NotsentLowat => get(libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT),
            Effect::Linger2 => get(libc::IPPROTO_TCP, libc::TCP_LINGER2),
            _ => None,
        };
        let buffer = match effect {
            Effect::SendBuffer => get(libc::SOL_SOCKET, libc::SO_SNDBUF).map(options::buffer_of),
            Effect::RecvBuffer => get(libc::SOL_SOCKET, libc::SO_RCVBUF).map(options::buffer_of),
            _ => None,
        };
        let ip = match effect {
            Effect::IpHeader => Some((
                get(libc::IPPROTO_IP, libc::IP_TTL).and_then(|v| u8::try_from(v).ok()),
                get(libc::IPPROTO_IP, libc::IP_TOS).map_or(0, |v| (v & 0xfc) as u8),
            )),
            _ => None,
        };
        let Some(stack) = self.stack.as_mut() else {
            return Ok(());
        };
        match effect {
            Effect::None => Ok(()),
            Effect::Nodelay(on) => stack.set_nodelay(id, on),
            Effect::Keepalive => stack.set_keepalive(now, id, ka),
            Effect::UserTimeout(t) => stack.set_user_timeout(id, t),
            Effect::SendBuffer => stack.set_send_cap(id, buffer),
            Effect::RecvBuffer => stack.set_recv_cap(id, buffer),
            Effect::QuickAck(on) => stack.set_quickack(id, on),
            Effect::Cork(on) => stack.set_cork(id, on),
            Effect::Congestion(cc) => stack.set_congestion(id, cc),
            Effect::WindowClamp => {
                stack.set_window_clamp(id, int_back.filter(|&v| v > 0).map(|v| v as usize))
            }
            // An unsigned value: -1 (UINT_MAX) is no limit.
            Effect::NotsentLowat => {
                stack.set_notsent_lowat(id, int_back.and_then(|v| usize::try_from(v).ok()))
            }
            // Seconds as the kernel reads them back (0 set reads tcp_fin_timeout); -1: no wait.
            Effect::Linger2 => {
                stack.set_fin_timeout(id, int_back.map(|v| Duration::from_secs(v.max(0) as u64)))
            }
            Effect::IpHeader => {
                let (ttl, tos) = ip.unwrap_or((None, 0));
                stack.set_ip_header(id, ttl, tos)
            }
        }
    }

    /// An error a transfer on `fd` met after moving some bytes (the call returns those): the
    /// next call reports it, as on Linux.
    pub fn keep_error(&mut self, fd: c_int, e: SockError) {
        if let Some(Obj::Conn { id, .. }) = self.obj(fd) {
            let id = *id;
            if let Some(st) = self.stack.as_mut() {
                let _ = st.keep_error(id, e);
            }
        }
    }

    /// getsockopt on a connection of ours into `out` (the caller's room): the length of the
    /// value. `None`: the kernel socket behind the fd answers (every option but what only the
    /// connection knows).
    pub fn getsockopt(
        &mut self,
        fd: c_int,
        level: c_int,
        name: c_int,
        out: &mut [u8],
    ) -> Answer<usize> {
        let id = match self.obj(fd) {
            Some(Obj::Conn { id, opts, .. }) => {
                let set = match (level, name) {
                    (libc::IPPROTO_TCP, libc::TCP_CORK) => opts.cork,
                    (libc::IPPROTO_TCP, libc::TCP_NODELAY) => opts.nodelay,
                    _ => None,
                };
                if let Some(on) = set {
                    return Some(Ok(int_out(out, c_int::from(on))));
                }
                *id
            }
            // A stack-only listener's kernel socket never listens: whether it does is ours to
            // say (a dual listener's kernel side listens, or was shut, as ours).
            Some(Obj::Listener {
                kernel: false,
                shut,
                ..
            }) if (level, name) == (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => {
                return Some(Ok(int_out(out, c_int::from(!*shut))));
            }
            _ => return None,
        };
        if !options::answered_by_connection(level, name) {
            return None;
        }
        let stack = self.stack.as_mut()?;
        if (level, name) == (libc::IPPROTO_TCP, libc::TCP_INFO) {
            let info = match stack.tcp_info(id) {
                Ok(i) => i,
                Err(e) => return Some(Err(so_errno(e))),
            };
            // Linux copies min(len, sizeof(struct tcp_info)) and writes that length back.
            let bytes = options::tcp_info_bytes(&info);
            let n = out.len().min(bytes.len());
            out[..n].copy_from_slice(&bytes[..n]);
            return Some(Ok(n));
        }
        let v: c_int = match (level, name) {
            (libc::SOL_SOCKET, libc::SO_ERROR) => match stack.take_error(id) {
                Ok(e) => e.map_or(0, so_errno),
                Err(e) => return Some(Err(so_errno(e))),
            },
            // The buffers the connection really has, read back as Linux reads them: twice the
            // request that gives such a buffer (`options::buffer_of`).
            (libc::SOL_SOCKET, libc::SO_RCVBUF | libc::SO_SNDBUF) => match stack.buffer_sizes(id) {
                Ok((rcv, snd)) => {
                    let b = if name == libc::SO_RCVBUF { rcv } else { snd };
                    c_int::try_from(b * 2).unwrap_or(c_int::MAX)
                }
                Err(e) => return Some(Err(so_errno(e))),
            },
            // The MSS the connection sends with (Linux's tp->mss_cache).
            (libc::IPPROTO_TCP, libc::TCP_MAXSEG) => match stack.tcp_info(id) {
                Ok(i) => i.snd_mss as c_int,
                Err(e) => return Some(Err(so_errno(e))),
            },
            // The path's MTU (the kernel socket, never connected, has none: ENOTCONN).
            (libc::IPPROTO_IP, libc::IP_MTU) => match stack.tcp_info(id) {
                Ok(i) => i.pmtu as c_int,
                Err(e) => return Some(Err(so_errno(e))),
            },
            // The clamp set, or else what bounds the window: the receive buffer.
            (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP) => match stack.window_clamp(id) {
                Ok(w) => c_int::try_from(w).unwrap_or(c_int::MAX),
                Err(e) => return Some(Err(so_errno(e))),
            },
            _ => return Some(Err(libc::ENOPROTOOPT)),
        };
        Some(Ok(int_out(out, v)))
    }

    /// fcntl F_SETFL and ioctl FIONBIO: track O_NONBLOCK (the kernel applies it to the
    /// identity fd too).
    pub fn set_nonblock(&mut self, fd: c_int, on: bool) {
        if let Some(Obj::Conn { nonblock, .. }) = self.obj(fd) {
            *nonblock = on;
        }
    }

    /// ioctl FIONREAD: bytes ready to read.
    pub fn fionread(&mut self, fd: c_int) -> Answer<c_int> {
        let Some(Obj::Conn { id, .. }) = self.obj(fd) else {
            return None;
        };
        let id = *id;
        let stack = self.stack.as_ref()?;
        Some(stack.recv_queue(id).map(|n| n as c_int).map_err(so_errno))
    }
}

/// An int option's value written to `out`, truncated to the caller's room as Linux does; the
/// length written.
fn int_out(out: &mut [u8], v: c_int) -> usize {
    let bytes = v.to_ne_bytes();
    let n = out.len().min(bytes.len());
    out[..n].copy_from_slice(&bytes[..n]);
    n
}
