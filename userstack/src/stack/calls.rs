//! The socket calls: listen, accept, connect, recv, send, shutdown, close, the options and
//! the queries an application makes of a connection, and the events it takes.

use std::collections::VecDeque;
use std::net::SocketAddrV4;

use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::api::{
    linux_state, ConnId, Event, Keepalive, Readiness, SockError, TcpInfo, TcpOptions,
};
use super::conn::{readiness, Conn, Origin, CONNECT_TIMEOUT_US};
use super::demux::key;
use super::device::WinClamp;
use super::{Listener, Stack, EPHEMERAL};
use crate::config::CongestionControl;
use crate::link::Link;

/// Segments TCP_QUICKACK acknowledges at once (Linux's quick-ACK mode: at most 16).
const QUICKACK_SEGMENTS: u8 = 16;
use crate::net::Micros;

/// Linux's default `net.core.somaxconn`.
pub const SOMAXCONN: usize = 4096;

impl<L: Link> Stack<L> {
    /// Moves the pending events into `out` (cleared first).
    pub fn take_events(&mut self, out: &mut Vec<Event>) {
        out.clear();
        std::mem::swap(out, &mut self.events);
        for e in out.iter_mut() {
            if let Event::Conn(id, ready) = e {
                if let Some(c) = self.slots[id.slot as usize].conn.as_mut() {
                    c.event_queued = false;
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

    /// Stops listening; connections not yet accepted are reset, as Linux does.
    pub fn unlisten(&mut self, port: u16) {
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
            let c = self.slots[idx as usize].conn.as_mut().expect("live");
            c.sockets.get_mut::<tcp::Socket>(c.handle).abort();
            c.origin = Origin::Owned;
            c.app_closed = true;
            self.mark_dirty(idx);
        }
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
            let sock = c.sockets.get::<tcp::Socket>(c.handle);
            c.last_ready = readiness(sock, c);
            c.last_recv_queue = sock.recv_queue();
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
    /// ephemeral port: the next one in Linux's range (32768-60999) that no listener and no
    /// connection to the same peer holds. `AddrNotAvail` (Linux's EADDRNOTAVAIL) if
    /// `local_port` already has a connection to `remote`, or if no ephemeral port is free.
    pub fn connect_from(
        &mut self,
        now: Instant,
        remote: SocketAddrV4,
        local_port: Option<u16>,
        opts: TcpOptions,
    ) -> Result<ConnId, SockError> {
        if remote.port() == 0
            || remote.ip().is_unspecified()
            || remote.ip().is_broadcast()
            || remote.ip().is_multicast()
        {
            return Err(SockError::Invalid);
        }
        if !self.net.addr().contains(*remote.ip()) && self.net.gateway().is_none() {
            return Err(SockError::NetUnreachable);
        }
        let span = EPHEMERAL.end - EPHEMERAL.start;
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
        let mut port = None;
        if let Some(p) = local_port.filter(|&p| p != 0) {
            if !free(self, p) {
                return Err(SockError::AddrNotAvail);
            }
            port = Some(p);
        }
        for _ in 0..if port.is_some() { 0 } else { span } {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p + 1 >= EPHEMERAL.end {
                EPHEMERAL.start
            } else {
                p + 1
            };
            if !self.listeners.contains_key(&p) && free(self, p) {
                port = Some(p);
                break;
            }
        }
        let local_port = port.ok_or(SockError::AddrNotAvail)?;
        let k = key(*remote.ip(), remote.port(), local_port);
        let local = IpEndpoint::new(IpAddress::Ipv4(self.net.addr().addr), local_port);
        let remote_ep = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
        // connect() needs the interface's context, so the socket is opened after the
        // connection (and its interface) exists.
        let idx = self.new_conn(now, k, remote, local_port, Origin::Owned, &opts, |_| Ok(()))?;
        let c = self.slots[idx as usize]
            .conn
            .as_mut()
            .expect("just created");
        let cx = c.iface.context();
        let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
        if sock.connect(cx, remote_ep, local).is_err() {
            self.free_conn(idx);
            return Err(SockError::Invalid);
        }
        self.shm.states.moved(c.last_state, tcp::State::SynSent);
        c.last_state = tcp::State::SynSent;
        c.connect_expires = Some(now.total_micros() as Micros + CONNECT_TIMEOUT_US);
        let gen = self.slots[idx as usize].gen;
        self.mark_dirty(idx);
        Ok(ConnId { slot: idx, gen })
    }

    /// TCP_SYNCNT (or the system's tcp_syn_retries) of a connection still connecting: it is
    /// given up (ETIMEDOUT) when Linux would give up after that many SYN retransmissions.
    pub fn set_syn_retries(&mut self, id: ConnId, retries: u32) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        if let Some(at) = c.connect_expires {
            let start = at - CONNECT_TIMEOUT_US;
            c.connect_expires = Some(start + super::conn::syn_timeout_us(retries));
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

    pub fn peer_addr(&self, id: ConnId) -> Result<SocketAddrV4, SockError> {
        Ok(self.conn(id)?.peer)
    }

    pub fn local_addr(&self, id: ConnId) -> Result<SocketAddrV4, SockError> {
        Ok(SocketAddrV4::new(
            self.net.addr().addr,
            self.conn(id)?.local_port,
        ))
    }

    /// The TCP state of a slot's connection, also after the application closed it (diagnostics).
    pub fn slot_state(&self, id: ConnId) -> Option<(tcp::State, bool, usize)> {
        let slot = self.slots.get(id.slot as usize)?;
        let c = slot.conn.as_ref().filter(|_| slot.gen == id.gen)?;
        let sock = c.sockets.get::<tcp::Socket>(c.handle);
        Some((sock.state(), c.dirty, sock.recv_queue()))
    }

    pub fn state(&self, id: ConnId) -> Result<tcp::State, SockError> {
        let c = self.conn(id)?;
        Ok(c.sockets.get::<tcp::Socket>(c.handle).state())
    }

    pub fn readiness(&self, id: ConnId) -> Result<Readiness, SockError> {
        let c = self.conn(id)?;
        Ok(readiness(c.sockets.get::<tcp::Socket>(c.handle), c))
    }

    /// Bytes [`Stack::send`] would take now (the send buffer's room, as SO_SNDBUF,
    /// TCP_CORK and TCP_NOTSENT_LOWAT leave it).
    pub fn send_room(&self, id: ConnId) -> Result<usize, SockError> {
        Ok(self.conn(id)?.send_room())
    }

    /// Bytes waiting to be read (FIONREAD).
    pub fn recv_queue(&self, id: ConnId) -> Result<usize, SockError> {
        let c = self.conn(id)?;
        Ok(c.sockets.get::<tcp::Socket>(c.handle).recv_queue())
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

    fn recv_inner(&mut self, id: ConnId, buf: &mut [u8], peek: bool) -> Result<usize, SockError> {
        let rcvbuf_half;
        let n = {
            let c = self.conn_mut(id)?;
            let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
            rcvbuf_half = sock.recv_capacity() / 2;
            let queued = sock.recv_queue();
            if buf.is_empty() && queued > 0 {
                return Ok(0);
            }
            // An empty `buf` with nothing queued: as an empty read (would block, the end of
            // the stream or an error), as Linux's recv of zero bytes.
            let got = if buf.is_empty() {
                Ok(0)
            } else if peek {
                sock.peek_slice(buf)
            } else {
                sock.recv_slice(buf)
            };
            match got {
                Ok(0) | Err(tcp::RecvError::InvalidState) | Err(tcp::RecvError::Finished) => {
                    if let Some(e) = c.error.take() {
                        return Err(e);
                    }
                    if c.failed {
                        return Ok(0);
                    }
                    return match sock.state() {
                        tcp::State::SynSent | tcp::State::SynReceived => Err(SockError::WouldBlock),
                        tcp::State::Listen => Err(SockError::NotConnected),
                        _ if sock.may_recv() && !c.rd_shut => Err(SockError::WouldBlock),
                        _ => Ok(0),
                    };
                }
                Ok(n) => {
                    c.last_recv_queue = sock.recv_queue();
                    (n, queued)
                }
            }
        };
        // Reading from a more than half full buffer may open the window enough to tell the
        // peer now (smoltcp decides); otherwise the next segment carries the update.
        if !peek && n.1 > rcvbuf_half {
            self.mark_dirty(id.slot);
        }
        if !peek {
            if let Ok(c) = self.conn_mut(id) {
                if c.clamp.is_some() {
                    c.note_read();
                    if c.clamp.is_some_and(|w| w.nudge) {
                        self.mark_dirty(id.slot);
                    }
                }
            }
        }
        Ok(n.0)
    }

    /// Queues `data` for sending; it leaves on the next `poll` or `flush`.
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<usize, SockError> {
        let n = {
            let c = self.conn_mut(id)?;
            if let Some(e) = c.error.take() {
                return Err(e);
            }
            if c.failed {
                return Err(SockError::Pipe);
            }
            let limited = c.limits_sending();
            let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
            match sock.state() {
                tcp::State::SynSent | tcp::State::SynReceived => return Err(SockError::WouldBlock),
                tcp::State::Listen => return Err(SockError::NotConnected),
                _ => {}
            }
            if !sock.may_send() {
                return Err(SockError::Pipe);
            }
            if data.is_empty() {
                return Ok(0);
            }
            // SO_SNDBUF set on the connection, or TCP_CORK holding bytes back: no more
            // queued than the buffer takes.
            if limited {
                let room = c.send_room();
                if room == 0 {
                    return Err(SockError::WouldBlock);
                }
                let data = &data[..data.len().min(room)];
                let n = data.len();
                match c.cork.is_some() {
                    true => c.corked_send(data),
                    false => {
                        c.sockets
                            .get_mut::<tcp::Socket>(c.handle)
                            .send_slice(data)
                            .map_err(|_| SockError::Pipe)?;
                    }
                }
                if c.send_room() == 0 {
                    c.last_ready.writable = false;
                }
                self.mark_dirty(id.slot);
                return Ok(n);
            }
            let n = match sock.send_slice(data) {
                Ok(0) => return Err(SockError::WouldBlock),
                Ok(n) => n,
                Err(_) => return Err(SockError::Pipe),
            };
            if !sock.can_send() {
                // Events are queued when a poll finds the readiness changed since the last
                // one. The buffer is full now: if the next poll takes an ACK that frees room
                // before it polls this write, it finds "writable" again, and must see that as a
                // change, or a writer waiting for EPOLLOUT is never woken.
                c.last_ready.writable = false;
            }
            n
        };
        self.mark_dirty(id.slot);
        Ok(n)
    }

    /// shutdown(SHUT_RD): what is buffered (and what still arrives) can be read, and then reads
    /// give end of stream instead of waiting; the socket is readable with RDHUP from now on
    /// (the caller tells its epoll sets: no event is queued for its own call, as for `send`).
    pub fn shutdown_read(&mut self, id: ConnId) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        let sock = c.sockets.get::<tcp::Socket>(c.handle);
        // Linux sets the flag and still says ENOTCONN for a closed (e.g. reset) socket.
        c.rd_shut = true;
        if matches!(sock.state(), tcp::State::Closed | tcp::State::Listen) {
            return Err(SockError::NotConnected);
        }
        c.last_ready = readiness(sock, c);
        Ok(())
    }

    /// shutdown(SHUT_WR): FIN after the queued data; reading goes on.
    pub fn shutdown_write(&mut self, id: ConnId) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        let state = c.sockets.get::<tcp::Socket>(c.handle).state();
        if matches!(state, tcp::State::Closed | tcp::State::Listen) {
            return Err(SockError::NotConnected);
        }
        c.release_cork();
        c.sockets.get_mut::<tcp::Socket>(c.handle).close();
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
        let sock = c.sockets.get::<tcp::Socket>(c.handle);
        c.tuning.snd_cap = cap.filter(|&n| n < sock.send_capacity());
        c.note_limits();
        c.recheck = true;
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// The size of a connection's receive and send buffers (the send buffer as SO_SNDBUF on
    /// the connection limits it).
    pub fn buffer_sizes(&self, id: ConnId) -> Result<(usize, usize), SockError> {
        let c = self.conn(id)?;
        let sock = c.sockets.get::<tcp::Socket>(c.handle);
        let snd = c.tuning.snd_cap.unwrap_or(usize::MAX);
        let rcv = c.clamp.map_or(usize::MAX, |w| w.cap as usize);
        Ok((sock.recv_capacity().min(rcv), sock.send_capacity().min(snd)))
    }

    /// TCP_CONGESTION: the connection's congestion control from now on.
    pub fn set_congestion(&mut self, id: ConnId, cc: CongestionControl) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.sockets
            .get_mut::<tcp::Socket>(c.handle)
            .set_congestion_control(super::api::smoltcp_cc(cc));
        Ok(())
    }

    /// TCP_WINDOW_CLAMP: the window offered is at most `clamp` bytes (`None`: as the buffer
    /// allows). As for a lowered receive buffer, an edge offered before is never moved back.
    pub fn set_window_clamp(&mut self, id: ConnId, clamp: Option<usize>) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        let capacity = c.sockets.get::<tcp::Socket>(c.handle).recv_capacity();
        let cap = c.clamp.map_or(capacity, |w| w.cap as usize);
        let clamp = clamp.filter(|&n| n < capacity);
        Self::clamp_window(c, (cap < capacity).then_some(cap), clamp);
        Ok(())
    }

    /// The most a window of the connection offers: TCP_WINDOW_CLAMP if set, else the receive
    /// buffer (as lowered by SO_RCVBUF).
    pub fn window_clamp(&self, id: ConnId) -> Result<usize, SockError> {
        let c = self.conn(id)?;
        let capacity = c.sockets.get::<tcp::Socket>(c.handle).recv_capacity();
        Ok(match c.clamp {
            Some(w) => w.window.unwrap_or(w.cap) as usize,
            None => capacity,
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
        let capacity = c.sockets.get::<tcp::Socket>(c.handle).recv_capacity();
        let window = c.clamp.and_then(|w| w.window).map(|w| w as usize);
        Self::clamp_window(c, cap.filter(|&n| n < capacity), window);
        Ok(())
    }

    /// Lowers the window `c` offers to `cap` bytes of buffer and at most `window` bytes, or
    /// lifts the clamp (both `None`).
    fn clamp_window(c: &mut Conn, cap: Option<usize>, window: Option<usize>) {
        let sock = c.sockets.get::<tcp::Socket>(c.handle);
        let (capacity, queued) = (sock.recv_capacity(), sock.recv_queue());
        if cap.is_none() && window.is_none() {
            c.clamp = None;
            return;
        }
        // What smoltcp may have offered last (at most its free room then): kept.
        let edge = c.clamp.and_then(|w| w.edge).or_else(|| {
            c.track
                .last_ack_sent
                .map(|a| a.wrapping_add(capacity.saturating_sub(queued) as u32))
        });
        c.clamp = Some(WinClamp {
            cap: cap.unwrap_or(capacity) as u32,
            window: window.map(|w| w as u32),
            room: 0,
            shift: c.track.wshift,
            edge,
            nudge: false,
        });
    }

    /// TCP_QUICKACK: on, what is owed is acknowledged now and the next segments at once (16,
    /// Linux's most), then the delayed ACK is back; off, the delayed ACK at once. As on Linux the
    /// setting is not kept: it switches the mode for now.
    pub fn set_quickack(&mut self, id: ConnId, on: bool) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
        if on {
            c.tuning.quick = QUICKACK_SEGMENTS;
            sock.set_ack_delay(None);
        } else {
            c.tuning.quick = 0;
            sock.set_ack_delay(c.tuning.ack_delay);
        }
        // Polled once: an ACK owed leaves now.
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// IP_TTL (`None`: the default, 64) and IP_TOS of what a connection sends from now on.
    pub fn set_ip_header(&mut self, id: ConnId, ttl: Option<u8>, tos: u8) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.sockets
            .get_mut::<tcp::Socket>(c.handle)
            .set_hop_limit(ttl);
        c.tuning.tos = tos;
        Ok(())
    }

    /// TCP_CORK: on, only full segments are sent, the rest is held (at most 200 ms, Linux's
    /// ceiling); off, what is held is sent now. shutdown(SHUT_WR) and close() send it too.
    pub fn set_cork(&mut self, id: ConnId, on: bool) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        if on {
            c.cork.get_or_insert_with(Default::default);
            c.note_limits();
        } else {
            c.release_cork();
            c.cork = None;
            c.note_limits();
            c.recheck = true;
        }
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// Sets TCP_NODELAY on an open connection.
    pub fn set_nodelay(&mut self, id: ConnId, on: bool) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.sockets
            .get_mut::<tcp::Socket>(c.handle)
            .set_nagle_enabled(!on);
        Ok(())
    }

    /// SO_KEEPALIVE with TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT, or off. smoltcp has one
    /// keepalive interval and an inactivity timeout: the first probe goes after `idle` (then
    /// every `idle`), and the connection is aborted (ETIMEDOUT) after `idle + intvl * cnt` without
    /// hearing from the peer, which is when Linux gives up too.
    ///
    /// As on Linux the first probe goes out after `idle` without traffic. smoltcp, given a
    /// keep-alive interval on an idle connection,
    /// probes at once (its timer starts at time 0 until a segment moves it), which Redis's
    /// SO_KEEPALIVE on every accepted client turned into a probe (and the client's duplicate
    /// ACK) per connection, counted as a retransmission. So the setting waits: it is handed to
    /// smoltcp just before the connection next sends (the send restarts smoltcp's idle timer)
    /// or, if it stays silent, `idle` from now, when a probe is due anyway.
    pub fn set_keepalive(
        &mut self,
        now: Instant,
        id: ConnId,
        ka: Option<Keepalive>,
    ) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        match ka {
            Some(k) => {
                let due = now.total_micros() as Micros + k.idle.as_micros() as Micros;
                c.keepalive = Some((k, due));
                // Polled once so that its timer includes `due` (a silent connection is
                // polled again only then).
                self.mark_dirty(id.slot);
            }
            None => {
                c.keepalive = None;
                let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
                sock.set_keep_alive(None);
                sock.set_timeout(None);
            }
        }
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
    /// state, RTT estimates and timeout (recovery.rs), segment sizes (the MTU and the MSS of
    /// the peer's SYN), retransmissions and queues. No per-packet work: everything is read
    /// from what the connection keeps anyway.
    pub fn tcp_info(&self, id: ConnId) -> Result<TcpInfo, SockError> {
        let c = self.conn(id)?;
        let sock = c.sockets.get::<tcp::Socket>(c.handle);
        let sat = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        // smoltcp's local MSS (and the one its SYN announces): the IP MTU less the IPv4 and
        // TCP headers.
        let pmtu = c.tuning.mtu;
        let advmss = pmtu.saturating_sub(40);
        let (path_mss, snd_mss) = c.mss();
        let unacked = c.unacked();
        let send_queue = sock.send_queue();
        Ok(TcpInfo {
            state: linux_state(sock.state()),
            rto_us: sat(c.rec.current_rto()),
            ato_us: sock.ack_delay().map_or(0, |d| sat(d.total_micros())),
            srtt_us: c.rec.srtt().map_or(0, sat),
            rttvar_us: c.rec.srtt().map_or(0, |_| sat(c.rec.rttvar())),
            backoff: c.rec.backoff().min(u32::from(u8::MAX)) as u8,
            snd_mss: snd_mss as u32,
            rcv_mss: path_mss as u32,
            advmss: advmss as u32,
            pmtu: pmtu as u32,
            total_retrans: c.track.retransmits,
            unacked_bytes: unacked as u32,
            unacked_segs: unacked.div_ceil(snd_mss) as u32,
            // (The unacknowledged bytes may include a SYN or FIN, which take no buffer room.)
            notsent_bytes: (send_queue.saturating_sub(unacked)
                + c.cork.as_ref().map_or(0, |k| k.held.len())) as u32,
            send_queue: send_queue as u32,
            recv_queue: sock.recv_queue() as u32,
            rcv_wnd: (sock.recv_capacity() - sock.recv_queue()) as u32,
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
        c.release_cork();
        let sock = c.sockets.get_mut::<tcp::Socket>(c.handle);
        if sock.recv_queue() > 0 {
            sock.abort();
        } else {
            sock.close();
        }
        self.mark_dirty(id.slot);
        Ok(())
    }

    /// close(2) with SO_LINGER {on, 0}: reset now.
    pub fn abort(&mut self, id: ConnId) -> Result<(), SockError> {
        let c = self.conn_mut(id)?;
        c.app_closed = true;
        c.sockets.get_mut::<tcp::Socket>(c.handle).abort();
        self.mark_dirty(id.slot);
        Ok(())
    }
}
