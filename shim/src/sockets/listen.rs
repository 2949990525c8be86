//! Listeners: bind() on a flagged port, listen(), accept().

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use libc::c_int;
use userstack::link::Link;
use userstack::SockError;

use super::options::{self, ConnOpts, Policy};
use super::{so_errno, Answer, Bound, Family, Host, Obj, Phase, Sockets};

/// What an accept() found on a listener of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// A stack connection, as a new fd of ours; its peer's address as the listener's family
    /// gives it.
    Conn { fd: c_int, peer: SocketAddr },
    /// None queued on the stack's side. `kernel`: a dual listener, whose kernel socket may have
    /// one.
    Empty { kernel: bool },
}

impl<L: Link, H: Host<L>> Sockets<'_, L, H> {
    /// bind() of an AF_INET stream socket to a flagged port. `None`: the kernel binds as usual
    /// (and the wildcard address makes a dual listener at listen()); `Some(Ok(0))`: bound to
    /// MTCP_ADDR, which the kernel does not have, so only the stack's.
    pub fn bind(&mut self, fd: c_int, ip: Ipv4Addr, port: u16) -> Answer<c_int> {
        self.bind_v4(fd, ip, port, Family::Inet)
    }

    /// bind() of an AF_INET6 stream socket to a flagged port (`v6only`: its IPV6_V6ONLY). As
    /// on Linux, `::` without V6ONLY takes IPv4 clients too: a dual listener whose stack
    /// connections are v4-mapped; `::ffff:a.b.c.d` is the IPv4 address a.b.c.d. `::` with
    /// V6ONLY is IPv6 alone: the kernel binds, listen() fails. Any other IPv6 address is the
    /// kernel's.
    pub fn bind6(&mut self, fd: c_int, ip: Ipv6Addr, v6only: bool, port: u16) -> Answer<c_int> {
        match ip.to_ipv4_mapped() {
            // Linux refuses a v4-mapped address on a V6ONLY socket (EINVAL): the kernel says so.
            Some(_) if v6only => {
                self.binds.remove(&fd);
                None
            }
            Some(v4) => self.bind_v4(fd, v4, port, Family::Inet6),
            None if ip.is_unspecified() && v6only => {
                self.binds.insert(fd, Bound::V6Only { port });
                None
            }
            None if ip.is_unspecified() => {
                self.bind_v4(fd, Ipv4Addr::UNSPECIFIED, port, Family::Inet6)
            }
            None => {
                // ::1 or another IPv6 address: the kernel's, as 127.0.0.1 is.
                self.binds.remove(&fd);
                if !self.defers_start() {
                    let _ = self.ensure_stack();
                }
                None
            }
        }
    }

    fn bind_v4(&mut self, fd: c_int, ip: Ipv4Addr, port: u16, family: Family) -> Answer<c_int> {
        let serve = |kernel| Bound::Serve {
            port,
            kernel,
            family,
        };
        let addr = match &self.cfg {
            Ok(c) => c.addr.addr,
            Err(e) => {
                let e = e.clone();
                self.fail(e);
                // Let the kernel bind; listen() will fail loudly.
                self.binds.insert(fd, serve(true));
                return None;
            }
        };
        if ip.is_unspecified() {
            self.binds.insert(fd, serve(true));
            None
        } else if ip == addr {
            self.binds.insert(fd, serve(false));
            Some(Ok(0))
        } else {
            // 127.0.0.1 or another kernel address: the kernel's alone, never reachable from the
            // DPDK port. The stack still runs (the process is configured for it), and answers a
            // SYN for this port with a reset, like any closed port.
            self.binds.remove(&fd);
            if !self.defers_start() {
                let _ = self.ensure_stack();
            }
            None
        }
    }

    /// listen() on a socket bound to a flagged port: the stack listens too. `None`: not bound
    /// to a flagged port (the kernel's).
    pub fn listen(&mut self, fd: c_int, backlog: c_int) -> Answer<c_int> {
        let depth = backlog.max(0) as usize;
        if let Some(Obj::Listener {
            port, kernel, shut, ..
        }) = self.obj(fd)
        {
            let (port, kernel, shut) = (*port, *kernel, *shut);
            if shut {
                // Listening again after shutdown(): on the port it is still bound to.
                if let Err(e) = self.start_listening(fd, port, kernel, backlog) {
                    return Some(Err(e));
                }
                let fds = self.fds_of(fd);
                if let Some(Obj::Listener {
                    shut, read_shut, ..
                }) = self.obj(fd)
                {
                    (*shut, *read_shut) = (false, false);
                }
                self.port_fds.entry(port).or_default().extend(fds);
                self.sync_listen_options(port);
                return Some(Ok(0));
            }
            // listen() again: a new backlog, on both sides. The kernel side of a stack-only
            // listener is not bound: a listen() there would bind it to an ephemeral port on
            // every address.
            if kernel {
                if let Err(e) = self.host.kernel_listen(fd, backlog) {
                    return Some(Err(e));
                }
            }
            if let Some(d) = self.deferred.iter_mut().find(|(p, _)| *p == port) {
                d.1 = depth;
                return Some(Ok(0));
            }
            let stack = self.stack.as_mut()?;
            return Some(stack.set_backlog(port, depth).map(|_| 0).map_err(so_errno));
        }
        let (port, kernel, family) = match *self.binds.get(&fd)? {
            Bound::Serve {
                port,
                kernel,
                family,
            } => (port, kernel, family),
            Bound::V6Only { port } => return Some(Err(self.refuse_v6only(port))),
        };
        if let Err(e) = self.start_listening(fd, port, kernel, backlog) {
            return Some(Err(e));
        }
        let inherit = self.host.listener_options(fd, family);
        let listener = Obj::Listener {
            port,
            kernel,
            family,
            inherit,
            shut: false,
            read_shut: false,
        };
        if let Err(e) = self.insert(fd, listener) {
            return Some(Err(e));
        }
        self.binds.remove(&fd);
        self.port_fds.entry(port).or_default().push(fd);
        self.sync_listen_options(port);
        Some(Ok(0))
    }

    /// The stack (and, for a dual listener, the kernel) starts listening on `port` for
    /// socket `fd`, or joins the port's listener if another socket of ours listens on it.
    fn start_listening(
        &mut self,
        fd: c_int,
        port: u16,
        kernel: bool,
        backlog: c_int,
    ) -> Result<(), c_int> {
        let depth = backlog.max(0) as usize;
        // Another listener of ours on this port: SO_REUSEPORT on both, as the kernel (which
        // bound a dual listener's kernel side) allowed; they share the stack's listener, and
        // each accepts from its queue (nginx's `listen ... reuseport`: one listener per
        // worker, each worker with a stack of its own).
        let shared = self.port_fds.get(&port).is_some_and(|v| !v.is_empty());
        if shared
            && self
                .host
                .kernel_getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT)
                != Some(1)
        {
            return Err(libc::EADDRINUSE);
        }
        if shared {
            if kernel {
                self.host.kernel_listen(fd, backlog)?;
            }
        } else if self.defers_start() {
            if self.failed.is_some() {
                return Err(libc::EADDRNOTAVAIL);
            }
            let checked = match &self.cfg {
                Ok(cfg) => self.host.preflight(cfg),
                Err(e) => Err(e.clone()),
            };
            if let Err(why) = checked {
                self.fail(why);
                return Err(libc::EADDRNOTAVAIL);
            }
            if kernel {
                self.host.kernel_listen(fd, backlog)?;
            }
            self.deferred.push((port, depth));
        } else {
            let stack = self.ensure_stack()?;
            let mut opts = stack.default_options();
            opts.nodelay = false;
            stack.listen(port, depth, opts).map_err(so_errno)?;
            if kernel {
                if let Err(e) = self.host.kernel_listen(fd, backlog) {
                    let now = self.host.now();
                    if let Some(st) = self.stack.as_mut() {
                        st.unlisten(now, port);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// No socket of ours listens on `port` any more: the stack stops listening there and
    /// resets what its queue held, as Linux's listener does when closed.
    pub(super) fn stop_listening(&mut self, port: u16) {
        if !self.port_fds.get(&port).is_none_or(Vec::is_empty) {
            return;
        }
        self.port_fds.remove(&port);
        self.deferred.retain(|&(p, _)| p != port);
        let now = self.host.now();
        if let Some(stack) = self.stack.as_mut() {
            stack.unlisten(now, port);
        }
        if self.port_fds.is_empty() {
            // Its last listener: worker processes sharing the device take its buckets' new
            // connections from now on (an old worker finishing after `nginx -s reload` would
            // refuse them until its next round).
            self.steer();
        }
    }

    /// shutdown() of listener `fd`, as Linux: SHUT_WR changes nothing; SHUT_RD or SHUT_RDWR
    /// stops it listening (its queued connections are reset, accept() fails with EINVAL,
    /// threads blocked in accept() wake to that), and it stays bound to its port for a next
    /// listen(). A stopped listener is not connected: ENOTCONN.
    pub(super) fn shutdown_listener(&mut self, fd: c_int, how: c_int) -> Answer<c_int> {
        let Some(Obj::Listener {
            port,
            kernel,
            shut,
            read_shut,
            ..
        }) = self.obj(fd)
        else {
            return None;
        };
        let (port, kernel) = (*port, *kernel);
        if how != libc::SHUT_RD && how != libc::SHUT_WR && how != libc::SHUT_RDWR {
            return Some(Err(libc::EINVAL));
        }
        if *shut {
            if how != libc::SHUT_WR && !*read_shut {
                *read_shut = true;
                if kernel {
                    let _ = self.host.kernel_shutdown(fd, how);
                }
                if let (Some(i), Some(r)) = (self.index_of(fd), self.readiness(fd)) {
                    self.notify_entry_with(i, r);
                }
            }
            return Some(Err(libc::ENOTCONN));
        }
        if how == libc::SHUT_WR {
            return Some(Ok(0));
        }
        *shut = true;
        if kernel {
            // (Its own threads blocked in the kernel's accept wake with EINVAL.)
            let _ = self.host.kernel_shutdown(fd, how);
        }
        let fds = self.fds_of(fd);
        if let Some(v) = self.port_fds.get_mut(&port) {
            v.retain(|f| !fds.contains(f));
        }
        self.stop_listening(port);
        self.flush();
        if let (Some(i), Some(r)) = (self.index_of(fd), self.readiness(fd)) {
            self.notify_entry_with(i, r);
            self.touched.push(i);
        }
        self.wake_touched();
        Some(Ok(0))
    }

    /// The stack's listener on `port` takes the options set on its listening fd (the last
    /// one, if several share the port): the sizes, MSS and IP header of its next connections.
    pub(super) fn sync_listen_options(&mut self, port: u16) {
        let found = self.port_fds.get(&port).and_then(|fds| {
            fds.iter().rev().find_map(|&fd| match self.obj_ref(fd) {
                Some(Obj::Listener { inherit, .. }) => Some((fd, inherit.clone())),
                _ => None,
            })
        });
        let Some((fd, inherit)) = found else {
            return;
        };
        // TCP_DEFER_ACCEPT is the listener's own (accepted sockets do not inherit it), in
        // seconds as the kernel rounds it.
        let defer = self
            .host
            .kernel_getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT)
            .filter(|&s| s > 0)
            .map(|s| std::time::Duration::from_secs(s as u64));
        let Some(stack) = self.stack.as_mut() else {
            return;
        };
        let mut opts = options::listen_options(stack.default_options(), &inherit);
        opts.defer_accept = defer;
        let _ = stack.set_listen_options(port, opts);
    }

    /// One accept attempt on listener `fd` (after a poll of the stack): a queued stack
    /// connection becomes a new fd of ours (`flags`: SOCK_NONBLOCK, SOCK_CLOEXEC). `None`:
    /// `fd` is not a listener of ours.
    pub fn accept(&mut self, fd: c_int, flags: c_int) -> Answer<Accepted> {
        if matches!(self.obj(fd), Some(Obj::Listener { .. })) {
            self.note_accepting();
        }
        let Some(Obj::Listener {
            port,
            kernel,
            family,
            inherit,
            shut,
            ..
        }) = self.obj(fd)
        else {
            return None;
        };
        if *shut {
            return Some(Err(libc::EINVAL));
        }
        let (port, kernel, family, inherit) = (*port, *kernel, *family, inherit.clone());
        self.pump();
        if self.stack.is_none() && self.failed.is_some() {
            // A listener whose stack could not start (said once): never the kernel's alone.
            return Some(Err(libc::ENETDOWN));
        }
        let stack = self.stack.as_mut()?;
        let (id, peer) = match stack.accept(port) {
            Ok(c) => c,
            Err(SockError::WouldBlock) => return Some(Ok(Accepted::Empty { kernel })),
            Err(e) => return Some(Err(so_errno(e))),
        };
        let efd = match self.host.identity_fd(
            flags & (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC),
            family,
            &inherit,
        ) {
            Ok(fd) => fd,
            Err(e) => {
                if let Some(st) = self.stack.as_mut() {
                    let _ = st.abort(id);
                }
                return Some(Err(e));
            }
        };
        let nonblock = flags & libc::SOCK_NONBLOCK != 0;
        // What the inherited options change on the connection (TCP_NODELAY, keepalive, ...).
        let mut opts = ConnOpts::default();
        for o in &inherit {
            if options::policy(o.level, o.name) == Policy::Mirror {
                let effect = opts.apply(o.level, o.name, &o.value);
                let _ = self.take_effect(efd, id, effect, &opts);
            }
        }
        let conn = Obj::Conn {
            id,
            family,
            nonblock,
            opts,
            phase: Phase::Connected,
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
        self.cache_opened(id);
        let peer = family.addr(peer);
        Some(Ok(Accepted::Conn { fd: efd, peer }))
    }

    /// listen() on a `::` socket with IPV6_V6ONLY on a flagged port: the application asked for
    /// the port's IPv6 clients alone, and the stack speaks IPv4 only. Said once per port; the
    /// listen fails as the other flagged ports that cannot be served do.
    fn refuse_v6only(&mut self, port: u16) -> c_int {
        if !self.refused_v6only.contains(&port) {
            self.refused_v6only.push(port);
            self.host.say(&format!(
                "cannot serve port {port} on [::] with IPV6_V6ONLY: that listener takes IPv6 \
                 clients only, and the stack speaks IPv4; listen() on it fails (clear \
                 IPV6_V6ONLY to serve IPv4 clients through the stack, or bind 0.0.0.0)"
            ));
        }
        libc::EADDRNOTAVAIL
    }

    /// getsockname of a stack-only listener (MTCP_ADDR:port, v4-mapped on an AF_INET6 socket).
    /// `None`: not one.
    pub(crate) fn listener_name(&mut self, fd: c_int) -> Option<SocketAddr> {
        let ip = self.cfg.as_ref().ok().map(|c| c.addr.addr);
        match self.obj(fd)? {
            Obj::Listener {
                port,
                kernel: false,
                family,
                ..
            } => Some(family.addr(SocketAddrV4::new(
                ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                *port,
            ))),
            _ => None,
        }
    }
}
