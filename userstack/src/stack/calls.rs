//! The socket calls: listen, accept, connect, recv, send, shutdown, close, the options and
//! the queries an application makes of a connection, and the events it takes.

use std::collections::VecDeque;
use std::net::SocketAddrV4;

use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use super::api::{
    linux_state, ConnId, Event, Keepalive, Readiness, Respond, SockError, TcpInfo, TcpOptions,
};
use super::conn::{readiness, Conn, Open, Origin, CONNECT_TIMEOUT_US};
use super::demux::key;
use super::{Listener, Stack, PORT_PERTURB};
use crate::config::CongestionControl;
use crate::link::Link;

/// Segments TCP_QUICKACK acknowledges at once (Linux's quick-ACK mode: at most 16).
const QUICKACK_SEGMENTS: u8 = 16;
use crate::net::Micros;

/// Linux's default `net.core.somaxconn`.
pub const SOMAXCONN: usize = 4096;

impl<L: Link> Stack<L> {
    /// Whether events wait for `take_events` (made outside `poll`: a connection another
    /// process handed over, `settle_handovers`).
    pub fn events_pending(&self) -> bool {
        !self.events.is_empty()
    }

    /// Moves the pending events into `out` (cleared first).
    pub fn take_events(&mut self, out: &mut Vec<Event>) {
        out.clear();
        std::mem::swap(out, &mut self.events);
        for e in out.iter_mut() {
            if let Event::Conn(id, ready, edge) = e {
                let slot = &mut self.slots[id.slot as usize];
                // (An event of a connection freed since, whose slot another took, leaves the
                // new one's edge alone.)
                if slot.gen != id.gen {
                    continue;
                }
                if let Some(c) = slot.conn.as_mut() {
                    c.event_queued = false;
                    *edge = std::mem::take(&mut c.edge);
                    // What the connection's last poll_conn computed. Application calls since
                    // then (an event queued by `flush` waits for the next poll) can only have
                    // cleared bits: recv (readable), send (writable), SO_ERROR (error); epoll
                    // re-reads the readiness of every candidate it reports.
                    *ready = c.last_ready;
                }
            }
        }
    }

    // ---------------------------------------------------------------- sockets

    /// Listens on `port` (all of the stack's addresses). Backlog as in listen(2): capped at
    /// SOMAXCONN, at least 1.
    pub fn listen(&mut self, port: u16, backlog: usize, opts: TcpOptions) -> Result<(), SockError> {
        if port == 0 {
            return Err(SockError::Invalid);
        }
        if self.listeners.contains_key(&port) {
            return Err(SockError::AddrInUse);
        }
        self.closed_ports.retain(|&p| p != port);
        let backlog = backlog.clamp(1, SOMAXCONN);
        self.listeners.insert(
            port,
            Listener {
                backlog,
                pending: 0,
                queue: VecDeque::new(),
                opts,
            },
        );
        Ok(())
    }

    /// Changes a listener's backlog (listen(2) called again).
    pub fn set_backlog(&mut self, port: u16, backlog: usize) -> Result<(), SockError> {
        let l = self.listeners.get_mut(&port).ok_or(SockError::Invalid)?;
        l.backlog = backlog.clamp(1, SOMAXCONN);
        Ok(())
    }

    /// Stops listening; connections not yet accepted are reset, as Linux does when the last
    /// holder of a listening socket closes it. Among processes sharing the device (`flows`)
    /// the listening socket lives on in the others: those connections are offered to them
    /// (handover.rs), and only the ones that cannot be are reset.
    pub fn unlisten(&mut self, now: Instant, port: u16) {
        let Some(mut l) = self.listeners.remove(&port) else {
            return;
        };
        if self.flows.is_some() && !self.closed_ports.contains(&port) {
            self.closed_ports.push(port);
        }
        let victims: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.conn
                    .as_ref()
                    .is_some_and(|c| c.origin == Origin::Passive(port))
            })
            .map(|(i, _)| i as u32)
            .collect();
        l.queue.clear();
        for idx in victims {
            if self.hand_over(now, idx) {
                continue;
            }
            let c = self.slots[idx as usize].conn.as_mut().expect("live");
            c.tcb.abort();
            c.origin = Origin::Owned;
            c.app_closed = true;
            self.mark_dirty(idx);
        }
    }

    /// Offers the connections its listeners hold, not accepted, whose flows this stack no
    /// longer takes new connections of (`set_steering`) to the other processes sharing the
    /// device (handover.rs), the listeners staying: for a process whose application stopped
    /// accepting while the others took its flows (an nginx worker without the accept mutex:
    /// on Linux the workers share one accept queue, and another one accepts them). Returns
    /// how many were offered; the others stay queued.
    pub fn hand_over_waiting(&mut self, now: Instant) -> usize {
        if self.flows.is_none() || self.listeners.is_empty() {
            return 0;
        }
        let steering = self.steering;
        let waiting: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.conn.as_ref().is_some_and(|c| {
                    matches!(c.origin, Origin::Passive(port) if self.listeners.contains_key(&port))
                        && !c.app_closed
                        && !steering.takes_syn(crate::steer::flow_bucket(
                            *c.peer.ip(),
                            c.peer.port(),
                            c.local_port,
                        ))
                })
            })
            .map(|(i, _)| i as u32)
            .collect();
        let n = waiting
            .into_iter()
            .filter(|&idx| self.hand_over(now, idx))
            .count();
        if n > 0 {
            let slots = &self.slots;
            for l in self.listeners.values_mut() {
                l.queue.retain(|id| {
                    slots
                        .get(id.slot as usize)
                        .is_some_and(|s| s.gen == id.gen && s.conn.is_some())
                });
            }
        }
        n
    }

    pub fn accept_queue_len(&self, port: u16) -> usize {
        self.listeners.get(&port).map_or(0, |l| l.queue.len())
    }

    /// Takes the next established connection from the listener's queue.
    pub fn accept(&mut self, port: u16) -> Result<(ConnId, SocketAddrV4), SockError> {
        loop {
            let l = self.listeners.get_mut(&port).ok_or(SockError::Invalid)?;
            let id = l.queue.pop_front().ok_or(SockError::WouldBlock)?;
            let slot = &mut self.slots[id.slot as usize];
            if slot.gen != id.gen {
                continue; // reset while queued and already freed
            }
            let Some(c) = slot.conn.as_mut() else {
                continue;
            };
            l.pending = l.pending.saturating_sub(1);
            c.origin = Origin::Owned;
            c.last_ready = readiness(c);
            c.last_recv_queue = c.tcb.recv_queue();
            return Ok((id, c.peer));
        }
    }

    /// Opens a connection to `remote` from an ephemeral port.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddrV4,
        opts: TcpOptions,
    ) -> Result<ConnId, SockError> {
        self.connect_from(now, remote, None, opts)
    }

    /// Opens a connection to `remote` from `local_port` (a port the caller bound), or from an
    /// ephemeral port (see [`Stack::set_local_ports`] and `pick_port`) that no listener and
    /// no connection to the same peer holds. `AddrNotAvail` (Linux's EADDRNOTAVAIL) if
    /// `local_port` already has a connection to `remote`, or if no ephemeral port is free.
    pub fn connect_from(
        &mut self,
        now: Instant,
        remote: SocketAddrV4,
        local_port: Option<u16>,
        opts: TcpOptions,
    ) -> Result<ConnId, SockError> {
        if remote.ip().is_unspecified() {
            return Err(SockError::Invalid);
        }
        // Linux routes no TCP connection to a broadcast or multicast address (the subnet's
        // own broadcast address among them): ENETUNREACH. Port 0 is a port like another (a
        // SYN to it is sent; the peer answers or not).
        if remote.ip().is_broadcast()
            || *remote.ip() == self.net.broadcast()
            || remote.ip().is_multicast()
        {
            return Err(SockError::NetUnreachable);
        }
        if !self.net.addr().contains(*remote.ip()) && self.net.gateway().is_none() {
            return Err(SockError::NetUnreachable);
        }
        // A port is free for this peer unless a connection or a TIME-WAIT record holds the
        // same four-tuple; where processes share the device, only a port whose flow falls in
        // a bucket this stack owns gets the replies.
        let (ip, rport) = (*remote.ip(), remote.port());
        let free = |s: &Self, p: u16| {
            let k = key(ip, rport, p);
            !s.demux.contains_key(&k)
                && !s.time_wait.contains_key(&k)
                && s.steering.owns(crate::steer::flow_bucket(ip, rport, p))
        };
        let port = match local_port.filter(|&p| p != 0) {
            Some(p) if !free(self, p) => return Err(SockError::AddrNotAvail),
            Some(p) => Some(p),
            None => self.pick_port(remote, |s, p| {
                !s.listeners.contains_key(&p) && !s.local_ports.is_reserved(p) && free(s, p)
            }),
        };
        let local_port = port.ok_or(SockError::AddrNotAvail)?;
        let k = key(*remote.ip(), remote.port(), local_port);
        let idx = self.new_conn(
            now,
            k,
            remote,
            local_port,
            Origin::Owned,
            &opts,
            Open::Active,
        );
        let c = self.slots[idx as usize]
            .conn
            .as_mut()
            .expect("just created");
        c.connect_expires = Some(now.total_micros() as Micros + CONNECT_TIMEOUT_US);
        let gen = self.slots[idx as usize].gen;
        self.mark_dirty(idx);
        Ok(ConnId { slot: idx, gen })
    }

    /// The ports connect() picks from when the application bound none: Linux's
    /// `ip_local_port_range` and `ip_local_reserved_ports` (the configuration's
    /// `local_ports`, read from the system at start; Linux's defaults for a stack made
    /// with [`Stack::with_link`]).
    pub fn set_local_ports(&mut self, ports: crate::config::LocalPorts) {
        self.local_ports = ports;
    }

    /// An ephemeral port for a connection to `remote` that `usable` accepts, chosen as Linux's
    /// connect() chooses (RFC 6056's double-hash algorithm): a keyed hash of the destination
    /// gives an offset into the range, unpredictable from outside, and a counter of that
    /// destination's bucket moves it on after each pick, so that connections to one peer
    /// take ports spread apart rather than in sequence, and another peer's start elsewhere.
    /// (Linux's connect() also tries ports of one parity first, to leave the others to
    /// bind() to port 0; here the kernel's bind() and the stack's ports do not meet, and a
    /// worker process sharing the device could own flows reached only by the other parity.)
    fn pick_port(
        &mut self,
        remote: SocketAddrV4,
        usable: impl Fn(&Self, u16) -> bool,
    ) -> Option<u16> {
        let span = self.local_ports.span();
        let h = std::hash::BuildHasher::hash_one(&self.port_key, (*remote.ip(), remote.port()));
        let bucket = (h as usize) & (PORT_PERTURB - 1);
        let start = ((h >> 32) as u32).wrapping_add(self.port_perturb[bucket]) % span;
        for i in 0..span {
            let off = (start + i) % span;
            let p = (u32::from(self.local_ports.low) + off) as u16;
            if usable(self, p) {
                // Past this port, and by a small random step more (as Linux's does), so
                // that the distance between two connections' ports tells nothing either.
                self.port_rng ^= self.port_rng << 13;
                self.port_rng ^= self.port_rng >> 7;
                self.port_rng ^= self.port_rng << 17;
                let step = i.max(2 * (self.port_rng % 8) as u32) + 2;
                self.port_perturb[bucket] = self.port_perturb[bucket].wrapping_add(step);
                return Some(p);
            }
        }
        None
    }

    /// TCP_SYNCNT (or the system's tcp_syn_retries) of a connection still connecting: it is
    /// given up (ETIMEDOUT) when Linux would give up after that many SYN retransmissions.
    pub fn set_syn_retries(&mut self, id: ConnId, retries: u32) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        if let Some(at) = c.connect_expires {
            let start = at - CONNECT_TIMEOUT_US;
            c.connect_expires = Some(start + super::conn::syn_timeout_us(retries));
            // Polled once so that its timer includes the new give-up time.
            self.mark_dirty(id.slot);
        }
        Ok(())
    }

    fn conn(&self, id: ConnId) -> Result<&Conn, SockError> {
        let slot = self
            .slots
            .get(id.slot as usize)
            .ok_or(SockError::BadHandle)?;
        match slot.conn.as_ref() {
            Some(c) if slot.gen == id.gen && !c.app_closed => Ok(c),
            _ => Err(SockError::BadHandle),
        }
    }

    fn conn_mut(&mut self, id: ConnId) -> Result<&mut Conn, SockError> {
        let slot = self
            .slots
            .get_mut(id.slot as usize)
            .ok_or(SockError::BadHandle)?;
        match slot.conn.as_mut() {
            Some(c) if slot.gen == id.gen && !c.app_closed => Ok(c),
            _ => Err(SockError::BadHandle),
        }
    }

    /// The application learnt from connect() that connection `id`'s handshake failed: from
    /// now on it is an unconnected socket (reads `NotConnected`; writable and hung up), until
    /// the application closes it or connects it anew.
    pub fn disconnect(&mut self, id: ConnId) {
        let Ok(c) = self.conn_mut(id) else {
            return;
        };
        c.disconnected = true;
        // Out of the demux, as Linux unhashes a closed socket: a new connection from the same
        // port to the same peer (connect() again on a bound socket) is not refused for it.
        let k = c.key;
        self.unhash(k, id.slot);
    }

    /// connect() with AF_UNSPEC on connection `id` (Linux's tcp_disconnect): a reset if it
    /// was synchronized, what was received and not read is dropped, and it is an unconnected
    /// socket from now on, as after a failed connect (`disconnect`), with `ECONNRESET` pending
    /// as Linux leaves it (its first read or SO_ERROR takes it) when there was a connection to
    /// reset or a handshake to abort.
    pub fn unconnect(&mut self, id: ConnId) -> Result<(), SockError> {
        use crate::tcp::State;
        let c = self.conn_mut(id)?;
        // (Linux: the states tcp_need_reset names, and a handshake it aborts.)
        let live = matches!(
            c.tcb.state(),
            State::SynSent
                | State::SynReceived
                | State::Established
                | State::CloseWait
                | State::FinWait1
                | State::FinWait2
        );
        let queued = c.tcb.recv_queue();
        c.tcb.consume(queued);
        c.tcb.abort();
        // Over: no give-up timer runs for it any more.
        c.failed = true;
        if live {
            c.error = Some(SockError::Reset);
        }
        self.mark_dirty(id.slot);
        self.disconnect(id);
        Ok(())
    }

    pub fn peer_addr(&self, id: ConnId) -> Result<SocketAddrV4, SockError> {
        Ok(self.conn(id)?.peer)
    }

    /// The connection's own address; once unconnected (`disconnect`), the wildcard address
    /// with its port, as Linux resets a closed socket's source address and keeps its port.
    pub fn local_addr(&self, id: ConnId) -> Result<SocketAddrV4, SockError> {
        let c = self.conn(id)?;
        let ip = if c.disconnected {
            std::net::Ipv4Addr::UNSPECIFIED
        } else {
            self.net.addr().addr
        };
        Ok(SocketAddrV4::new(ip, c.local_port))
    }

    /// The TCP state of a slot's connection, also after the application closed it (diagnostics).
    pub fn slot_state(&self, id: ConnId) -> Option<(tcp::State, bool, usize)> {
        let slot = self.slots.get(id.slot as usize)?;
        let c = slot.conn.as_ref().filter(|_| slot.gen == id.gen)?;
        Some((c.state(), c.dirty, c.tcb.recv_queue()))
    }

    pub fn state(&self, id: ConnId) -> Result<tcp::State, SockError> {
        Ok(self.conn(id)?.state())
    }

    pub fn readiness(&self, id: ConnId) -> Result<Readiness, SockError> {
        Ok(readiness(self.conn(id)?))
    }

    /// Bytes [`Stack::send`] would take now (the send buffer's room, as SO_SNDBUF and
    /// TCP_NOTSENT_LOWAT leave it).
    pub fn send_room(&self, id: ConnId) -> Result<usize, SockError> {
        Ok(self.conn(id)?.send_room())
    }

    /// Bytes waiting to be read (FIONREAD).
    pub fn recv_queue(&self, id: ConnId) -> Result<usize, SockError> {
        Ok(self.conn(id)?.tcb.recv_queue())
    }

    /// Reads into `buf`. `Ok(0)` is end of stream (the peer's FIN, after all data). A
    /// connection that ended in error reports the error once, then end of stream. An empty
    /// `buf` reads nothing: `Ok(0)` if data is queued, else what a read would say.
    pub fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, SockError> {
        self.recv_inner(id, buf, false)
    }

    /// recv(MSG_PEEK): copies without consuming.
    pub fn peek(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, SockError> {
        self.recv_inner(id, buf, true)
    }

    /// For a responder that answers requests in place ([`Stack::answer`]): the bytes waiting
    /// to be read on `id`, in place (two slices where its buffer wraps), and what
    /// [`Stack::send`] would take now (as [`Stack::send_room`]), in one look.
    pub fn look(&self, id: ConnId) -> Result<(&[u8], &[u8], usize), SockError> {
        Ok(look(self.conn(id)?))
    }

    /// Queues `reply` and takes the first `n` bytes waiting on `id` (at most what waits, as
    /// `recv` takes them, the window updated as a read updates it): [`Stack::send`] and a read
    /// without the copy, in one step. Returns what `send` would, and
    /// the connection's readiness after both; when `send` fails (as it would: a pending error
    /// is reported here, once) nothing is taken. [`Stack::look`] gives no room where it
    /// would fail.
    pub fn answer(
        &mut self,
        id: ConnId,
        n: usize,
        reply: &[u8],
    ) -> Result<(usize, Readiness), SockError> {
        let c = self.conn_mut(id)?;
        let sent = queue_send(c, reply)?;
        c.tcb.consume(n);
        c.last_recv_queue = c.tcb.recv_queue();
        let ready = readiness(c);
        if sent > 0 || c.tcb.ack_due() {
            self.mark_dirty(id.slot);
        }
        Ok((sent, ready))
    }

    fn recv_inner(&mut self, id: ConnId, buf: &mut [u8], peek: bool) -> Result<usize, SockError> {
        let c = self.conn_mut(id)?;
        let queued = c.tcb.recv_queue();
        if buf.is_empty() && queued > 0 {
            return Ok(0);
        }
        // An empty `buf` with nothing queued: as an empty read (would block, the end of the
        // stream or an error), as Linux's recv of zero bytes.
        let n = if peek {
            c.tcb.peek(buf)
        } else {
            c.tcb.recv(buf)
        };
        if n == 0 {
            if let Some(e) = c.error.take() {
                return Err(e);
            }
            if c.disconnected {
                return Err(SockError::NotConnected);
            }
            if c.failed {
                return Ok(0);
            }
            return match c.tcb.state() {
                crate::tcp::State::SynSent | crate::tcp::State::SynReceived => {
                    Err(SockError::WouldBlock)
                }
                _ if c.tcb.may_recv() && !c.rd_shut => Err(SockError::WouldBlock),
                _ => Ok(0),
            };
        }
        if !peek {
            c.last_recv_queue = c.tcb.recv_queue();
            // Reading may have opened the window enough to tell the peer now (the engine
            // decides, as Linux's tcp_cleanup_rbuf); otherwise the next segment carries it.
            if c.tcb.ack_due() {
                self.mark_dirty(id.slot);
            }
        }
        Ok(n)
    }

    /// Queues `data` for sending; it leaves on the next `poll` or `flush`.
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<usize, SockError> {
        let n = queue_send(self.conn_mut(id)?, data)?;
        if n > 0 {
            self.mark_dirty(id.slot);
        }
        Ok(n)
    }

    /// shutdown(SHUT_RD): what is buffered (and what still arrives) can be read, and then reads
    /// give end of stream instead of waiting; the socket is readable with RDHUP from now on
    /// (the caller tells its epoll sets: no event is queued for its own call, as for `send`).
    pub fn shutdown_read(&mut self, id: ConnId) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        // Linux sets the flag and still says ENOTCONN for a closed (e.g. reset) socket.
        c.rd_shut = true;
        if c.tcb.state() == crate::tcp::State::Closed {
            return Err(SockError::NotConnected);
        }
        c.last_ready = readiness(c);
        Ok(())
    }

    /// shutdown(SHUT_WR): FIN after the queued data; reading goes on.
    pub fn shutdown_write(&mut self, id: ConnId) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        if c.tcb.state() == crate::tcp::State::Closed {
            return Err(SockError::NotConnected);
        }
        c.tcb.set_cork(false);
        c.tcb.close();
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// The options connections from now on get from listener `port` (a listener's
    /// setsockopt): buffer sizes, TCP_MAXSEG, IP_TTL, IP_TOS, ...
    pub fn set_listen_options(&mut self, port: u16, opts: TcpOptions) -> Result<(), SockError> {
        let l = self.listeners.get_mut(&port).ok_or(SockError::Invalid)?;
        l.opts = opts;
        Ok(())
    }

    /// SO_SNDBUF set on a connection: at most `cap` bytes queued (`None`: the whole send
    /// buffer, which is also the most it can be).
    pub fn set_send_cap(&mut self, id: ConnId, cap: Option<usize>) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.tuning.snd_cap = cap.filter(|&n| n < c.tcb.send_capacity());
        c.note_limits();
        c.recheck = true;
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// The size of a connection's receive and send buffers (the send buffer as SO_SNDBUF on
    /// the connection limits it, the receive buffer as SO_RCVBUF did).
    pub fn buffer_sizes(&self, id: ConnId) -> Result<(usize, usize), SockError> {
        let c = self.conn(id)?;
        let snd = c.tuning.snd_cap.unwrap_or(usize::MAX);
        Ok((c.tcb.recv_limit(), c.tcb.send_capacity().min(snd)))
    }

    /// TCP_CONGESTION: the connection's congestion control from now on.
    pub fn set_congestion(&mut self, id: ConnId, cc: CongestionControl) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.tcb.set_congestion(super::api::engine_cc(cc));
        Ok(())
    }

    /// TCP_WINDOW_CLAMP: the window offered is at most `clamp` bytes (`None`: as the buffer
    /// allows). As for a lowered receive buffer, an edge offered before is never moved back.
    pub fn set_window_clamp(&mut self, id: ConnId, clamp: Option<usize>) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        let capacity = c.tcb.recv_capacity();
        let clamp = clamp.filter(|&n| n < capacity);
        c.tcb.set_window_clamp(clamp.map(|n| n as u32));
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// The most a window of the connection offers: TCP_WINDOW_CLAMP if set, else the receive
    /// buffer (as lowered by SO_RCVBUF).
    pub fn window_clamp(&self, id: ConnId) -> Result<usize, SockError> {
        let c = self.conn(id)?;
        Ok(match c.tcb.window_clamp() {
            Some(w) => w as usize,
            None => c.tcb.recv_limit(),
        })
    }

    /// TCP_LINGER2: how long the connection, once closed by the application, waits in FIN-WAIT-2
    /// for the peer's FIN (`None`: 60 s, tcp_fin_timeout; zero: not at all, it is reset then,
    /// as Linux does for a negative TCP_LINGER2).
    pub fn set_fin_timeout(
        &mut self,
        id: ConnId,
        t: Option<std::time::Duration>,
    ) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.tuning.fin_timeout = t.map(|t| t.as_micros() as Micros);
        Ok(())
    }

    /// TCP_NOTSENT_LOWAT: writable, and a send takes more, only while fewer than `lowat`
    /// bytes wait unsent (`None`: no such limit, Linux's default).
    pub fn set_notsent_lowat(&mut self, id: ConnId, lowat: Option<usize>) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.tuning.notsent_lowat = lowat;
        c.note_limits();
        c.recheck = true;
        // Writable again, or not: the readiness changes without a segment.
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// SO_RCVBUF set on an established connection: the window it offers is at most what
    /// `cap` bytes leave room for (`None`, or at least the receive buffer: the whole buffer,
    /// the most it can be). The edge offered before is never moved back.
    pub fn set_recv_cap(&mut self, id: ConnId, cap: Option<usize>) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.tcb
            .set_recv_limit(cap.map(|n| u32::try_from(n).unwrap_or(u32::MAX)));
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// TCP_QUICKACK: on, what is owed is acknowledged now and the next segments at once (16,
    /// Linux's most), then the delayed ACK is back; off, the delayed ACK at once. As on Linux the
    /// setting is not kept: it switches the mode for now.
    pub fn set_quickack(&mut self, id: ConnId, on: bool) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.tcb.set_quickack(if on { QUICKACK_SEGMENTS } else { 0 });
        // Polled once: an ACK owed leaves now.
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// IP_TTL (`None`: the default, 64) and IP_TOS of what a connection sends from now on.
    pub fn set_ip_header(&mut self, id: ConnId, ttl: Option<u8>, tos: u8) -> Result<(), SockError> {
        let local = self.net.addr().addr;
        let c = self.conn_mut(id)?;
        c.tuning.ttl = ttl.unwrap_or(64);
        c.tuning.tos = tos;
        c.tuning.set_ip_header(local, *c.peer.ip());
        Ok(())
    }

    /// TCP_CORK: on, only full segments are sent, the rest is held (at most 200 ms, Linux's
    /// ceiling); off, what is held is sent now. shutdown(SHUT_WR) and close() send it too.
    pub fn set_cork(&mut self, id: ConnId, on: bool) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.tcb.set_cork(on);
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// Sets TCP_NODELAY on an open connection.
    pub fn set_nodelay(&mut self, id: ConnId, on: bool) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.tcb.set_nodelay(on);
        if on {
            // What Nagle held goes now, as Linux's TCP_NODELAY pushes pending data.
            self.mark_dirty(id.slot);
        }
        Ok(())
    }

    /// SO_KEEPALIVE with TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT, or off: as on Linux the
    /// first probe goes after `idle` without traffic, then one every `intvl`, and the
    /// connection is given up (ETIMEDOUT) after `cnt` unanswered probes.
    pub fn set_keepalive(
        &mut self,
        now: Instant,
        id: ConnId,
        ka: Option<Keepalive>,
    ) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.tcb
            .set_keepalive(ka.map(Keepalive::engine), now.total_micros() as Micros);
        // Polled once so that its timer includes the first probe's time (a silent connection
        // is polled again only then).
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// TCP_USER_TIMEOUT: the connection is given up (ETIMEDOUT) when data it sent stays
    /// unacknowledged, with nothing heard from the peer, for `timeout` (`None`: Linux's
    /// default, tcp_retries2).
    pub fn set_user_timeout(
        &mut self,
        id: ConnId,
        timeout: Option<std::time::Duration>,
    ) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.user_timeout = timeout.map(|t| t.as_micros() as Micros);
        // Polled once so that its timer includes the new give-up time.
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// An error `recv` or `send` reported that the caller could not pass on yet (it returns the
    /// bytes it moved before the error, as Linux does): it stays pending for the next call or
    /// SO_ERROR, as Linux keeps sk_err until a call reports it. Only a connection's own errors
    /// (reset, timed out, refused) are kept.
    pub fn keep_error(&mut self, id: ConnId, e: SockError) -> Result<(), SockError> {
        if matches!(
            e,
            SockError::Reset | SockError::TimedOut | SockError::Refused
        ) {
            self.conn_mut(id)?.error = Some(e);
        }
        Ok(())
    }

    /// What the stack knows of the connection, for getsockopt(TCP_INFO) and TCP_MAXSEG: its
    /// state, RTT estimates and timeout, segment sizes (the MTU and the MSS of the peer's
    /// SYN), retransmissions and queues. No per-packet work: everything is read from what the
    /// connection's engine keeps anyway.
    pub fn tcp_info(&self, id: ConnId) -> Result<TcpInfo, SockError> {
        let c = self.conn(id)?;
        let t = &c.tcb;
        let sat = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let pmtu = c.tuning.mtu;
        // The payload of a full segment (the path's MSS less the timestamp option).
        let snd_mss = (t.payload_max() as usize).max(1);
        let unacked = t.in_flight() as usize;
        Ok(TcpInfo {
            state: linux_state(c.state()),
            rto_us: sat(t.rto_us()),
            ato_us: sat(t.ack_delay_us()),
            srtt_us: t.srtt_us().map_or(0, sat),
            rttvar_us: t.srtt_us().map_or(0, |_| sat(t.rttvar_us())),
            backoff: t.backoff().min(u32::from(u8::MAX)) as u8,
            snd_mss: snd_mss as u32,
            rcv_mss: t.rcv_mss(),
            advmss: pmtu.saturating_sub(40) as u32,
            pmtu: pmtu as u32,
            total_retrans: sat(t.counters.retransmits),
            unacked_bytes: unacked as u32,
            unacked_segs: unacked.div_ceil(snd_mss) as u32,
            notsent_bytes: t.notsent() as u32,
            send_queue: t.send_queue() as u32,
            recv_queue: t.recv_queue() as u32,
            rcv_wnd: t.rcv_wnd(),
            options: u8::from(t.timestamps())
                | (u8::from(t.sack_permitted()) << 1)
                | (u8::from(t.window_scales().is_some()) << 2),
            wscales: t.window_scales().map_or(0, |(s, r)| (s & 0xf) | (r << 4)),
            snd_cwnd: t.cwnd() / snd_mss.max(1) as u32,
            snd_ssthresh: match t.ssthresh() {
                u32::MAX => 0x7fff_ffff,
                b => b / snd_mss.max(1) as u32,
            },
            segs_in: t.counters.segs_in as u32,
            segs_out: t.counters.segs_out as u32,
        })
    }

    /// getsockopt(SO_ERROR): the pending error, cleared by reading it.
    pub fn take_error(&mut self, id: ConnId) -> Result<Option<SockError>, SockError> {
        Ok(self.conn_mut(id)?.error.take())
    }

    /// close(2): the handle is dead at once; queued data is still delivered, then FIN, unless
    /// unread data is left, in which case the connection is reset (as Linux does).
    pub fn close(&mut self, id: ConnId) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.app_closed = true;
        if c.tcb.recv_queue() > 0 {
            c.tcb.reset_after_sent();
        } else {
            c.tcb.set_cork(false);
            c.tcb.close();
        }
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// close(2) with SO_LINGER {on, 0}: reset now.
    pub fn abort(&mut self, id: ConnId) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.app_closed = true;
        c.tcb.abort();
        self.mark_dirty(id.slot);
        Ok(())
    }
}

/// What [`Stack::look`] gives.
#[inline]
fn look(c: &Conn) -> (&[u8], &[u8], usize) {
    let (a, b) = c.tcb.received();
    // A connection `send` would refuse (an error to report, failed, shut for sending, in its
    // handshake) has no room: a responder leaves its requests, and the error, to the
    // application.
    let refuses = c.error.is_some() || c.failed || !c.tcb.may_send();
    let room = if refuses {
        0
    } else if c.limits_sending() {
        c.send_room()
    } else {
        // (What `send_room` gives without the options.)
        c.tcb.send_capacity().saturating_sub(c.tcb.send_queue())
    };
    (a, b, room)
}

/// Offers connection `c` (`id`), which a segment just brought data to, to `r`, and takes
/// and queues what it answers ([`Respond`]). The poll that called it goes on with the
/// connection: its output is due, and its readiness is computed after this. An event follows
/// if bytes are left for the application (as one follows every segment with data without a
/// responder), none if the responder took them all. Returns whether a reply was queued.
pub(super) fn respond_in_place(c: &mut Conn, id: ConnId, r: &mut (dyn Respond + '_)) -> bool {
    let (a, b, room) = look(c);
    if a.is_empty() || room == 0 {
        return false;
    }
    let Some((n, reply)) = r.respond(id, a, b, room) else {
        return false;
    };
    if n == 0 {
        return false;
    }
    debug_assert!(reply.len() <= room, "a reply within the room it was given");
    // (`look` gave room: `queue_send`'s refusals do not apply.)
    let replied = !reply.is_empty();
    if replied {
        let sent = queue_checked(c, reply);
        debug_assert_eq!(sent, reply.len(), "the room was looked at");
    }
    c.tcb.consume(n);
    c.last_recv_queue = 0;
    replied
}

/// What [`Stack::send`] does to the connection: `data` queued (as much as it may take), or why
/// not. (Its caller marks the connection dirty when bytes were queued.)
#[inline]
fn queue_send(c: &mut Conn, data: &[u8]) -> Result<usize, SockError> {
    if let Some(e) = c.error.take() {
        return Err(e);
    }
    if c.failed {
        return Err(SockError::Pipe);
    }
    if matches!(
        c.tcb.state(),
        crate::tcp::State::SynSent | crate::tcp::State::SynReceived
    ) {
        return Err(SockError::WouldBlock);
    }
    if !c.tcb.may_send() {
        return Err(SockError::Pipe);
    }
    if data.is_empty() {
        return Ok(0);
    }
    match queue_checked(c, data) {
        0 => Err(SockError::WouldBlock),
        n => Ok(n),
    }
}

/// `queue_send` past its refusals (a connection that may send, `data` not empty): how much
/// of `data` it queued.
#[inline]
fn queue_checked(c: &mut Conn, data: &[u8]) -> usize {
    // SO_SNDBUF set on the connection, or TCP_NOTSENT_LOWAT: no more queued than they
    // allow.
    let data = if c.limits_sending() {
        let room = c.send_room();
        &data[..data.len().min(room)]
    } else {
        data
    };
    let n = c.tcb.send(data);
    if n == 0 {
        return 0;
    }
    if !c.tcb.can_send() || (c.limits_sending() && c.send_room() == 0) {
        // Events are queued when a poll finds the readiness changed since the last one.
        // The buffer is full now: if the next poll takes an ACK that frees room before it
        // polls this write, it finds "writable" again, and must see that as a change, or
        // a writer waiting for EPOLLOUT is never woken.
        c.last_ready.set_writable(false);
    }
    n
}
