//! Listeners: bind() on a flagged port, listen(), accept().

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::c_int;
use userstack::link::Link;
use userstack::SockError;

use super::{so_errno, Answer, Host, Obj, Sockets};

/// What an accept() found on a listener of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// A stack connection, as a new fd of ours.
    Conn { fd: c_int, peer: SocketAddrV4 },
    /// None queued on the stack's side. `kernel`: a dual listener, whose kernel socket may have
    /// one.
    Empty { kernel: bool },
}

impl<L: Link, H: Host<L>> Sockets<'_, L, H> {
    /// bind() of a stream socket to a flagged port. `None`: the kernel binds as usual (and
    /// the wildcard address makes a dual listener at listen()); `Some(Ok(0))`: bound to
    /// MTCP_ADDR, which the kernel does not have, so only the stack's.
    pub fn bind(&mut self, fd: c_int, ip: Ipv4Addr, port: u16) -> Answer<c_int> {
        let addr = match &self.cfg {
            Ok(c) => c.addr.addr,
            Err(e) => {
                let e = e.clone();
                self.fail(e);
                // Let the kernel bind; listen() will fail loudly.
                self.binds.insert(fd, (port, true));
                return None;
            }
        };
        if ip.is_unspecified() {
            self.binds.insert(fd, (port, true));
            None
        } else if ip == addr {
            self.binds.insert(fd, (port, false));
            Some(Ok(0))
        } else {
            // 127.0.0.1 or another kernel address: the kernel's alone, never reachable from the
            // DPDK port. The stack still runs (the process is configured for it), and answers a
            // SYN for this port with a reset, like any closed port.
            self.binds.remove(&fd);
            let _ = self.ensure_stack();
            None
        }
    }

    /// listen() on a socket bound to a flagged port: the stack listens too. `None`: not bound
    /// to a flagged port (the kernel's).
    pub fn listen(&mut self, fd: c_int, backlog: c_int) -> Answer<c_int> {
        let depth = backlog.max(0) as usize;
        if let Some(Obj::Listener { port, kernel }) = self.obj(fd) {
            // listen() again: a new backlog, on both sides. The kernel side of a stack-only
            // listener is not bound: a listen() there would bind it to an ephemeral port on
            // every address.
            let (port, kernel) = (*port, *kernel);
            if kernel {
                if let Err(e) = self.host.kernel_listen(fd, backlog) {
                    return Some(Err(e));
                }
            }
            let stack = self.stack.as_mut()?;
            return Some(stack.set_backlog(port, depth).map(|_| 0).map_err(so_errno));
        }
        let (port, kernel) = *self.binds.get(&fd)?;
        let stack = match self.ensure_stack() {
            Ok(st) => st,
            Err(e) => return Some(Err(e)),
        };
        let mut opts = stack.default_options();
        opts.nodelay = false;
        if let Err(e) = stack.listen(port, depth, opts) {
            return Some(Err(so_errno(e)));
        }
        if kernel {
            if let Err(e) = self.host.kernel_listen(fd, backlog) {
                if let Some(st) = self.stack.as_mut() {
                    st.unlisten(port);
                }
                return Some(Err(e));
            }
        }
        if let Err(e) = self.insert(fd, Obj::Listener { port, kernel }) {
            return Some(Err(e));
        }
        self.binds.remove(&fd);
        self.port_fds.entry(port).or_default().push(fd);
        Some(Ok(0))
    }

    /// One accept attempt on listener `fd` (after a poll of the stack): a queued stack
    /// connection becomes a new fd of ours (`flags`: SOCK_NONBLOCK, SOCK_CLOEXEC). `None`:
    /// `fd` is not a listener of ours.
    pub fn accept(&mut self, fd: c_int, flags: c_int) -> Answer<Accepted> {
        let Some(Obj::Listener { port, kernel }) = self.obj(fd) else {
            return None;
        };
        let (port, kernel) = (*port, *kernel);
        self.pump();
        let stack = self.stack.as_mut()?;
        let (id, peer) = match stack.accept(port) {
            Ok(c) => c,
            Err(SockError::WouldBlock) => return Some(Ok(Accepted::Empty { kernel })),
            Err(e) => return Some(Err(so_errno(e))),
        };
        let efd = match self
            .host
            .identity_fd(flags & (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC))
        {
            Ok(fd) => fd,
            Err(e) => {
                if let Some(st) = self.stack.as_mut() {
                    let _ = st.abort(id);
                }
                return Some(Err(e));
            }
        };
        let nonblock = flags & libc::SOCK_NONBLOCK != 0;
        let conn = Obj::Conn {
            id,
            nonblock,
            keepalive: None,
            ka_on: false,
        };
        let i = match self.insert(efd, conn) {
            Ok(i) => i,
            Err(e) => {
                self.host.close_fd(efd);
                if let Some(st) = self.stack.as_mut() {
                    let _ = st.abort(id);
                }
                return Some(Err(e));
            }
        };
        self.conn_fd.insert(id, i);
        Some(Ok(Accepted::Conn { fd: efd, peer }))
    }

    /// getsockname of a stack-only listener (MTCP_ADDR:port). `None`: not one.
    pub(crate) fn listener_name(&mut self, fd: c_int) -> Option<SocketAddrV4> {
        let ip = self.cfg.as_ref().ok().map(|c| c.addr.addr);
        match self.obj(fd)? {
            Obj::Listener {
                port,
                kernel: false,
            } => Some(SocketAddrV4::new(
                ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                *port,
            )),
            _ => None,
        }
    }
}
