//! Connections: data in and out, shutdown, addresses, socket options, O_NONBLOCK, FIONREAD.

use std::net::SocketAddr;
use std::time::Duration;

use libc::c_int;
use userstack::link::Link;
use userstack::{Keepalive, SockError};

use super::{so_errno, Answer, Host, Obj, Sockets};

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
}

/// Linux's keepalive defaults (tcp_keepalive_time, _intvl, _probes).
const KEEPALIVE_DEFAULT: Keepalive = Keepalive {
    idle: Duration::from_secs(7200),
    intvl: Duration::from_secs(75),
    cnt: 9,
};

impl<L: Link, H: Host<L>> Sockets<'_, L, H> {
    /// Whether `fd` is one of our connections: the data calls only act then.
    pub fn is_conn(&mut self, fd: c_int) -> bool {
        matches!(self.obj(fd), Some(Obj::Conn { .. }))
    }

    /// One transfer on connection `fd`, without blocking: a read that finds nothing polls
    /// the stack and tries once more. `defer(pending)` says whether a write may leave its data
    /// for the next flush (`pending`: connections with writes queued); otherwise it is sent
    /// at once. `None`: not a connection of ours.
    #[inline]
    pub fn io(
        &mut self,
        fd: c_int,
        op: &mut Io<'_>,
        defer: impl FnOnce(usize) -> bool,
    ) -> Option<IoTry> {
        let Some(Obj::Conn { id, nonblock, .. }) = self.obj(fd) else {
            return None;
        };
        let (id, nonblock) = (*id, *nonblock);
        let stack = self.stack.as_mut()?;
        let result = match op {
            Io::Read(buf, peek) => {
                let r = if *peek {
                    stack.peek(id, buf)
                } else {
                    stack.recv(id, buf)
                };
                if r == Err(SockError::WouldBlock) {
                    self.pump();
                    let stack = self.stack.as_mut()?;
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
                if r.is_ok() && !defer(stack.pending_writes()) {
                    self.flush();
                }
                r
            }
        };
        Some(IoTry { result, nonblock })
    }

    /// shutdown() of connection `fd`.
    pub fn shutdown(&mut self, fd: c_int, how: c_int) -> Answer<c_int> {
        let Some(Obj::Conn { id, .. }) = self.obj(fd) else {
            return None;
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
        self.host.wake_waiters();
        Some(result)
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
            stack.peer_addr(id)
        } else {
            stack.local_addr(id)
        };
        Some(a.map(|a| family.addr(a)).map_err(so_errno))
    }

    /// setsockopt on a connection, with the option's value as an int (`None`: the caller's
    /// value is too short for one, or missing): the options Redis and friends set take effect.
    pub fn setsockopt(
        &mut self,
        fd: c_int,
        level: c_int,
        name: c_int,
        v: Option<c_int>,
    ) -> Answer<c_int> {
        let Some(Obj::Conn {
            id,
            keepalive,
            ka_on,
            ..
        }) = self.obj(fd)
        else {
            return None;
        };
        let id = *id;
        let Some(v) = v else {
            return Some(Err(libc::EINVAL));
        };
        let mut ka = keepalive.unwrap_or(KEEPALIVE_DEFAULT);
        let mut on = *ka_on;
        match (level, name) {
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => on = v != 0,
            (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) if v > 0 => {
                ka.idle = Duration::from_secs(v as u64)
            }
            (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) if v > 0 => {
                ka.intvl = Duration::from_secs(v as u64)
            }
            (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) if v > 0 => ka.cnt = v as u32,
            (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE | libc::TCP_KEEPINTVL | libc::TCP_KEEPCNT) => {
                return Some(Err(libc::EINVAL));
            }
            (libc::IPPROTO_TCP, libc::TCP_NODELAY) => {
                let stack = self.stack.as_mut()?;
                return Some(stack.set_nodelay(id, v != 0).map(|_| 0).map_err(so_errno));
            }
            // Accepted and without effect on the stack (buffer sizes are MTCP_RCVBUF/SNDBUF).
            _ => return Some(Ok(0)),
        }
        if let Some(Obj::Conn {
            keepalive, ka_on, ..
        }) = self.obj(fd)
        {
            *keepalive = Some(ka);
            *ka_on = on;
        }
        let now = self.host.now();
        let stack = self.stack.as_mut()?;
        Some(
            stack
                .set_keepalive(now, id, on.then_some(ka))
                .map(|_| 0)
                .map_err(so_errno),
        )
    }

    /// getsockopt on a connection: the option's value, an int.
    pub fn getsockopt(&mut self, fd: c_int, level: c_int, name: c_int) -> Answer<c_int> {
        let Some(Obj::Conn {
            id, ka_on, family, ..
        }) = self.obj(fd)
        else {
            return None;
        };
        let (id, ka_on, family) = (*id, *ka_on, *family);
        let stack = self.stack.as_mut()?;
        let v: c_int = match (level, name) {
            (libc::SOL_SOCKET, libc::SO_ERROR) => match stack.take_error(id) {
                Ok(e) => e.map_or(0, so_errno),
                Err(e) => return Some(Err(so_errno(e))),
            },
            (libc::SOL_SOCKET, libc::SO_TYPE) => libc::SOCK_STREAM,
            (libc::SOL_SOCKET, libc::SO_DOMAIN) => family.domain(),
            (libc::SOL_SOCKET, libc::SO_PROTOCOL) => libc::IPPROTO_TCP,
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => c_int::from(ka_on),
            (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => 0,
            _ => return Some(Err(libc::ENOPROTOOPT)),
        };
        Some(Ok(v))
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
