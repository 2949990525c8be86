//! Stack logic over an in-memory cable: two stacks talk TCP to each other. The same code runs
//! over DPDK devices in the integration tests (tests/ at the workspace root). This file is the
//! cable and the pair of stacks; the tests are in the files of the rooms they test (and
//! net/tests.rs for the Ethernet layer).

mod calls;
mod conn;
mod demux;
mod handover;
mod handshake;
mod info;
mod options;
mod publish;
mod timers;

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::time::{Duration, Instant};

use crate::config::{parse_cidr, CongestionControl};
use crate::link::MemLink;
use crate::stack::{ConnId, Respond, Stack, TcpOptions};

pub(crate) const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub(crate) const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

pub(crate) fn opts() -> TcpOptions {
    TcpOptions {
        nodelay: true,
        keepalive: None,
        rcvbuf: 16 << 10,
        sndbuf: 16 << 10,
        ack_delay: None,
        cc: CongestionControl::Reno,
        mss: None,
        ttl: None,
        tos: 0,
        defer_accept: None,
    }
}

/// A stack with address `cidr` and the test options on one end of a cable.
pub(crate) fn stack_on(link: MemLink, cidr: &str, now: Instant) -> Stack<MemLink> {
    Stack::with_link(
        link,
        parse_cidr("t", cidr).unwrap(),
        None,
        None,
        opts(),
        now,
    )
}

pub(crate) struct Pair {
    pub(crate) server: Stack<MemLink>,
    pub(crate) client: Stack<MemLink>,
    pub(crate) now: Instant,
}

impl Pair {
    pub(crate) fn new() -> Pair {
        let (a, b) = MemLink::pair(SERVER_MAC, CLIENT_MAC);
        let now = Instant::from_secs(1);
        Pair {
            server: stack_on(a, "198.18.0.2/24", now),
            client: stack_on(b, "198.18.0.1/24", now),
            now,
        }
    }

    /// Polls both sides until neither has work, advancing time by `step` each round.
    pub(crate) fn settle(&mut self, step: Duration) {
        for _ in 0..10_000 {
            self.now += step;
            let a = self.server.poll(self.now);
            let b = self.client.poll(self.now);
            if !a && !b && self.server.link().pending() == 0 && self.client.link().pending() == 0 {
                return;
            }
        }
        panic!("the stacks never settled");
    }

    /// Polls both sides for `total` of simulated time, in `step`s.
    pub(crate) fn advance(&mut self, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.now += step;
            self.server.poll(self.now);
            self.client.poll(self.now);
        }
    }

    pub(crate) fn run(&mut self) {
        self.settle(Duration::from_micros(10));
    }

    /// `run`, the server's polls offering `r` what they receive.
    pub(crate) fn run_with(&mut self, r: &mut dyn Respond) {
        for _ in 0..10_000 {
            self.now += Duration::from_micros(10);
            let a = self.server.poll_with(self.now, Some(&mut *r));
            let b = self.client.poll(self.now);
            if !a && !b && self.server.link().pending() == 0 && self.client.link().pending() == 0 {
                return;
            }
        }
        panic!("the stacks never settled");
    }

    /// A connection from the client to the server's port 7777, both ends with `o`, accepted:
    /// (client's end, server's end). Pending events are taken.
    pub(crate) fn connected(&mut self, o: TcpOptions) -> (ConnId, ConnId) {
        self.server.listen(7777, 16, o).unwrap();
        let c = self
            .client
            .connect(self.now, self.server_addr(7777), o)
            .unwrap();
        self.run();
        let (s, _) = self.server.accept(7777).unwrap();
        let mut ev = Vec::new();
        self.server.take_events(&mut ev);
        (c, s)
    }

    pub(crate) fn server_addr(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), port)
    }
}

/// A poll of `stack` at `now` leaves no timer due (a deadline in the past would make every
/// loop poll at once, for as long as the socket stays open).
pub(crate) fn nothing_due(stack: &mut Stack<MemLink>, now: Instant) {
    stack.poll(now);
    let due = stack.next_deadline();
    assert!(due.is_none_or(|d| d > now), "{due:?} at {now}");
}
