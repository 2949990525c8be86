//! Outgoing connections: connect() to a destination `MTCP_CONNECT` gives the stack.
//!
//! The application's socket stays a kernel socket that never connects (its identity: fstat,
//! fcntl and close keep working on it); the connection is the stack's, and the fd becomes ours
//! as an accepted connection's is. Loopback and every destination the rule does not take stay
//! the kernel's. A destination the rule takes is never quietly handed to the kernel: if the
//! stack cannot start, connect() fails and says why once.

use std::net::SocketAddrV4;

use libc::c_int;
use userstack::link::Link;
use userstack::{ConnId, SockError};

use super::options::{self, ConnOpts, Policy};
use super::{so_errno, Answer, Family, Host, Obj, Phase, Sockets};

impl<L: Link, H: Host<L>> Sockets<'_, L, H> {
    /// connect() of stream socket `fd` (of `family`) to `to`. `None`: the kernel's (the rule
    /// does not give the destination to the stack, or the socket is not ours to decide).
    /// A new connection answers `EINPROGRESS` (the caller waits if the socket blocks; see
    /// [`Sockets::connect_result`]); on a connection of ours connect() answers as Linux does:
    /// `EALREADY` while the handshake runs (a blocking caller waits for it), `EISCONN` after
    /// it, and once it failed its error (or `ECONNABORTED` if SO_ERROR took it), after which
    /// the next connect() starts a new handshake.
    /// `nonblock`: the socket's O_NONBLOCK; `bound`: the port the kernel socket was bound to;
    /// `set`: the options the application set on it, if known (see `Host::connect_options`).
    pub fn connect(
        &mut self,
        fd: c_int,
        to: SocketAddrV4,
        family: Family,
        nonblock: bool,
        bound: Option<u16>,
        set: Option<&[(c_int, c_int)]>,
    ) -> Answer<c_int> {
        let again = match self.obj(fd) {
            Some(Obj::Conn {
                phase: Phase::Unconnected,
                ..
            }) => true,
            Some(Obj::Conn { .. }) => return Some(self.connect_again(fd)),
            Some(Obj::Listener { .. }) => return Some(Err(libc::EISCONN)),
            Some(Obj::Epoll { .. } | Obj::Watch | Obj::Follow) => return None,
            None => false,
        };
        if again {
            // The options the connection took without the kernel's socket go there now: the
            // next connection reads its options from it, and a destination the kernel serves
            // gets the fd back as that socket.
            self.options_to_identity(fd);
        }
        let cfg = self.cfg.as_ref().ok()?;
        if !cfg.connect.takes(&cfg.addr, cfg.gateway, *to.ip()) {
            if again {
                // A failed connection of ours connects anew to a destination the kernel
                // serves: the fd is the kernel socket's again, and its entries in our epoll
                // sets go to the kernel's instances (`take_released`).
                self.released = self.epoll_entries(fd);
                self.close(fd);
            }
            return None;
        }
        // A failure to start is this connect()'s to say (`fail` stays quiet).
        self.connecting = true;
        let started = self.ensure_stack().map(|_| ());
        self.connecting = false;
        if let Err(e) = started {
            let first = !std::mem::replace(&mut self.said_connect, true);
            return Some(Err(self.cannot_connect(to, e, first)));
        }
        let stack = self.stack.as_mut().expect("started");
        if stack.steering().syn == 0 {
            // A worker process that shares the device and owns no flows (it serves no
            // listener): no port of its would get the replies.
            let why = "this process shares the device with other worker processes and owns \
                       none of its flows (it serves no listener on MTCP_PORTS)";
            if !std::mem::replace(&mut self.said_connect, true) {
                self.host
                    .say(&format!("connect() to {to} through the stack fails: {why}"));
            }
            return Some(Err(libc::EADDRNOTAVAIL));
        }
        // The options the application set on the socket before connect() (the ones an
        // accepted socket would inherit from its listener): the connection's sizes, MSS,
        // congestion control and IP header at its start, and the rest (timeouts, linger,
        // keepalive, TCP_NODELAY, SO_RCVLOWAT...) as setsockopt on it would take them.
        let set = self.host.connect_options(fd, family, set);
        let stack = self.stack.as_mut().expect("started");
        let tcp = options::listen_options(stack.default_options(), &set);
        let id = match stack.connect_from(self.host.now(), to, bound, tcp) {
            Ok(id) => id,
            Err(e) => return Some(Err(connect_errno(e))),
        };
        let mut opts = ConnOpts::default();
        for o in &set {
            if options::policy(o.level, o.name) == Policy::Mirror {
                let effect = opts.apply(o.level, o.name, &o.value);
                let _ = self.take_effect(fd, id, effect, &opts);
            }
        }
        if again {
            self.reconnect(fd, id);
            if let Some(Obj::Conn { opts: o, .. }) = self.obj(fd) {
                *o = opts;
            }
        } else {
            let conn = Obj::Conn {
                id,
                family,
                nonblock,
                opts,
                phase: Phase::Connecting,
            };
            let i = match self.insert(fd, conn) {
                Ok(i) => i,
                Err(e) => {
                    if let Some(st) = self.stack.as_mut() {
                        let _ = st.abort(id);
                    }
                    return Some(Err(e));
                }
            };
            self.conn_fd.insert(id, i);
        }
        // How many SYN retransmissions before ETIMEDOUT: the socket's TCP_SYNCNT, or the
        // system's tcp_syn_retries (the kernel answers either).
        let syncnt = set
            .iter()
            .find(|o| (o.level, o.name) == (libc::IPPROTO_TCP, libc::TCP_SYNCNT))
            .and_then(|o| Some(c_int::from_ne_bytes(o.value.get(..4)?.try_into().ok()?)));
        if let Some(n) = syncnt.or_else(|| {
            self.host
                .default_int(family, libc::IPPROTO_TCP, libc::TCP_SYNCNT)
        }) {
            if let (Some(st), Ok(n)) = (self.stack.as_mut(), u32::try_from(n)) {
                let _ = st.set_syn_retries(id, n);
            }
        }
        // The SYN leaves now, not at the next poll.
        self.flush();
        Some(Err(libc::EINPROGRESS))
    }

    /// The entries of `fd` in our epoll sets, as the kernel's instances would hold them:
    /// (epoll fd, events, data); a disarmed ONESHOT entry asks for no condition (what Linux
    /// leaves of one).
    fn epoll_entries(&mut self, fd: c_int) -> Vec<(c_int, u32, u64)> {
        let eps = self.watchers.get(&fd).cloned().unwrap_or_default();
        let mut v = Vec::new();
        for ep in eps {
            if let Some(Obj::Epoll { set, .. }) = self.obj(ep) {
                if let Some((events, data, disarmed)) = set.entry(fd) {
                    let kept = (libc::EPOLLONESHOT | libc::EPOLLET | libc::EPOLLWAKEUP) as u32;
                    v.push((ep, if disarmed { events & kept } else { events }, data));
                }
            }
        }
        v
    }

    /// What connect() left for the caller to move into the kernel's epoll instances: the
    /// entries of a connection of ours that connected anew to a destination the kernel
    /// serves (connect() answered `None`; the caller makes the kernel's connect first).
    pub fn take_released(&mut self) -> Vec<(c_int, u32, u64)> {
        std::mem::take(&mut self.released)
    }

    /// Connection `fd`, whose handshake failed, takes new connection `id`; the failed one is
    /// released.
    fn reconnect(&mut self, fd: c_int, id: ConnId) {
        let Some(i) = self.index_of(fd) else {
            return;
        };
        let Some(Obj::Conn { id: old, phase, .. }) = self.obj(fd) else {
            return;
        };
        let old = std::mem::replace(old, id);
        *phase = Phase::Connecting;
        self.conn_fd.remove(&old);
        self.conn_fd.insert(id, i);
        self.cache_closed(old);
        if let Some(st) = self.stack.as_mut() {
            let _ = st.close(old);
        }
    }

    /// connect() again on connection `fd` of ours, not unconnected: see [`Sockets::connect`].
    fn connect_again(&mut self, fd: c_int) -> Result<c_int, c_int> {
        let Some(Obj::Conn { phase, .. }) = self.obj(fd) else {
            return Err(libc::EBADF);
        };
        if *phase == Phase::Connected {
            return Err(libc::EISCONN);
        }
        match self.connect_result(fd) {
            None => Err(libc::EALREADY),
            Some(r) => r,
        }
    }

    /// Where the handshake of connection `fd` (connect() said EINPROGRESS) stands: `None`
    /// while it runs; then 0, or its error (taken, as Linux's connect() takes `sk_err`; or
    /// `ECONNABORTED` if SO_ERROR took it) and the connection is unconnected.
    pub fn connect_result(&mut self, fd: c_int) -> Option<Result<c_int, c_int>> {
        use smoltcp::socket::tcp::State as S;
        let Some(Obj::Conn { id, .. }) = self.obj(fd) else {
            // Closed meanwhile by another thread.
            return Some(Err(libc::EBADF));
        };
        let id = *id;
        let stack = self.stack.as_mut()?;
        let (phase, r) = match stack.slot_state(id) {
            Some((S::SynSent | S::SynReceived, ..)) => return None,
            Some((S::Closed, ..)) | None => {
                let e = match stack.take_error(id) {
                    Ok(Some(e)) => so_errno(e),
                    _ => libc::ECONNABORTED,
                };
                stack.disconnect(id);
                (Phase::Unconnected, Err(e))
            }
            Some(_) => (Phase::Connected, Ok(0)),
        };
        if let Some(Obj::Conn { phase: p, .. }) = self.obj(fd) {
            *p = phase;
        }
        Some(r)
    }

    /// The stack cannot start for a connect() to `to`: said by the `first` connect() that
    /// found it so (`why` the same as a listener's); the call fails.
    fn cannot_connect(&mut self, to: SocketAddrV4, e: c_int, first: bool) -> c_int {
        if let (true, Some(why)) = (first, self.failed.clone()) {
            self.host.say(&format!(
                "connect() to {to} through the stack fails: the stack cannot start: {why}"
            ));
        }
        if e == libc::EADDRNOTAVAIL {
            libc::ENETUNREACH
        } else {
            e
        }
    }
}

/// The errno of a connect() the stack refused to start.
fn connect_errno(e: SockError) -> c_int {
    match e {
        SockError::NetUnreachable => libc::ENETUNREACH,
        e => so_errno(e),
    }
}
