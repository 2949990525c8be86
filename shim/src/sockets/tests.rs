//! The socket table over an in-memory cable, against a second stack playing the client: what
//! the comparison program (`tests/src/bin/stack-seq.rs`) checks against the kernel end to end,
//! checked here at the table's level, with simulated time and a host that records what the
//! table asked of the kernel.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::rc::Rc;

use libc::c_int;
use smoltcp::time::{Duration, Instant};
use userstack::link::MemLink;
use userstack::{Config, ConnId, Readiness, SockError, Stack};

use super::fork::Child;
use super::{Accepted, Family, Host, Io, PollKind, SockOpt, Sockets};
use crate::fdtable::FdTable;

const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PORT: u16 = 6379;
/// The fds the tests' "kernel" hands out for sockets the application made itself.
const LISTEN_FD: c_int = 10;
const EPOLL_FD: c_int = 11;
/// Identity fds start here.
const FIRST_IDENTITY: c_int = 100;

/// What the table asked of the kernel and the process.
#[derive(Default)]
struct Log {
    started: usize,
    said: Vec<String>,
    kernel_listens: Vec<(c_int, c_int)>,
    kernel_shutdowns: Vec<(c_int, c_int)>,
    /// What `Host::kernel_readable` says of a dual listener's kernel side.
    kernel_readable: bool,
    closed: Vec<c_int>,
    wakes: usize,
    /// The entries the last wake-up was for (`None`: every blocked thread).
    woken: Option<Vec<u32>>,
    /// The entries threads are blocked on (`Host::waits_on`).
    waiting: Vec<u32>,
    /// Options set on the kernel sockets: (fd, level, name, value).
    kernel_opts: Vec<(c_int, c_int, c_int, Vec<u8>)>,
    /// What each identity socket inherited.
    inherited: Vec<Vec<SockOpt>>,
    /// Each identity socket's fd and family (SO_DOMAIN is then the kernel socket's answer).
    families: Vec<(c_int, Family)>,
}

struct TestHost {
    link: Option<MemLink>,
    /// `Err`: starting the stack fails with this reason.
    start_error: Option<String>,
    now: Rc<Cell<Instant>>,
    next_fd: c_int,
    epolls: HashSet<c_int>,
    log: Rc<RefCell<Log>>,
}

impl Host<MemLink> for TestHost {
    fn preflight(&mut self, _cfg: &Config) -> Result<(), String> {
        match &self.start_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn start(&mut self, cfg: &Config) -> Result<Stack<MemLink>, String> {
        if let Some(e) = &self.start_error {
            return Err(e.clone());
        }
        let link = self.link.take().expect("the stack starts once");
        Stack::new(link, cfg, self.now.get()).map_err(|e| e.to_string())
    }

    fn started(&mut self) {
        self.log.borrow_mut().started += 1;
    }

    fn say(&mut self, msg: &str) {
        self.log.borrow_mut().said.push(msg.to_string());
    }

    fn now(&self) -> Instant {
        self.now.get()
    }

    fn kernel_listen(&mut self, fd: c_int, backlog: c_int) -> Result<(), c_int> {
        self.log.borrow_mut().kernel_listens.push((fd, backlog));
        Ok(())
    }

    /// The kernel side of a dual listener has a connection if the test said so.
    fn kernel_readable(&mut self, _fd: c_int) -> bool {
        self.log.borrow().kernel_readable
    }

    fn kernel_shutdown(&mut self, fd: c_int, how: c_int) -> Result<(), c_int> {
        self.log.borrow_mut().kernel_shutdowns.push((fd, how));
        Ok(())
    }

    fn identity_fd(
        &mut self,
        _flags: c_int,
        family: Family,
        inherit: &[SockOpt],
    ) -> Result<c_int, c_int> {
        self.log.borrow_mut().inherited.push(inherit.to_vec());
        self.log.borrow_mut().families.push((self.next_fd, family));
        self.next_fd += 1;
        Ok(self.next_fd - 1)
    }

    /// The listener's options as set on it (a real kernel keeps those not at their default).
    fn listener_options(&mut self, fd: c_int, _family: Family) -> Vec<SockOpt> {
        let log = self.log.borrow();
        let mut v: Vec<SockOpt> = Vec::new();
        for (f, level, name, value) in &log.kernel_opts {
            if *f != fd {
                continue;
            }
            v.retain(|o| (o.level, o.name) != (*level, *name));
            v.push(SockOpt {
                level: *level,
                name: *name,
                value: value.clone(),
            });
        }
        v
    }

    /// What was set on the socket: all of it, or the options `set` names.
    fn connect_options(
        &mut self,
        fd: c_int,
        family: Family,
        set: Option<&[(c_int, c_int)]>,
    ) -> Vec<SockOpt> {
        let mut v = self.listener_options(fd, family);
        if let Some(set) = set {
            v.retain(|o| set.contains(&(o.level, o.name)));
        }
        v
    }

    fn default_int(&mut self, _family: Family, level: c_int, name: c_int) -> Option<c_int> {
        ((level, name) == (libc::IPPROTO_TCP, libc::TCP_SYNCNT)).then_some(6)
    }

    fn kernel_check(
        &mut self,
        _family: Family,
        level: c_int,
        name: c_int,
        value: &[u8],
    ) -> Result<(), c_int> {
        check_int_option(level, name, value).map(|_| ())
    }

    /// What was last set, or Linux's default keepalive times.
    fn kernel_getsockopt_int(&mut self, fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
        let log = self.log.borrow();
        let set = log
            .kernel_opts
            .iter()
            .rev()
            .find(|o| (o.0, o.1, o.2) == (fd, level, name));
        if let Some(o) = set {
            return Some(c_int::from_ne_bytes(o.3[..4].try_into().unwrap()));
        }
        match (level, name) {
            (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) => Some(7200),
            (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) => Some(75),
            (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) => Some(9),
            _ => None,
        }
    }

    /// The kernel's checks for an int option: at least four bytes, keepalive values positive.
    fn kernel_setsockopt(
        &mut self,
        fd: c_int,
        level: c_int,
        name: c_int,
        value: &[u8],
    ) -> Result<(), c_int> {
        check_int_option(level, name, value)?;
        self.log
            .borrow_mut()
            .kernel_opts
            .push((fd, level, name, value.to_vec()));
        Ok(())
    }

    fn close_fd(&mut self, fd: c_int) {
        self.log.borrow_mut().closed.push(fd);
    }

    fn check_epoll(&mut self, fd: c_int) -> Result<(), c_int> {
        if self.epolls.contains(&fd) {
            Ok(())
        } else {
            Err(libc::EINVAL)
        }
    }

    fn waits_on(&mut self, key: u32) -> bool {
        self.log.borrow().waiting.contains(&key)
    }

    fn wake_waiters(&mut self, only: Option<&[u32]>) {
        let mut log = self.log.borrow_mut();
        log.wakes += 1;
        log.woken = only.map(<[u32]>::to_vec);
    }
}

/// The test kernel's checks of an option: at least four bytes, keepalive values positive, level
/// 9999 unknown.
fn check_int_option(level: c_int, name: c_int, value: &[u8]) -> Result<c_int, c_int> {
    if level == 9999 {
        return Err(libc::ENOPROTOOPT);
    }
    let Some(v) = value.get(..4) else {
        return Err(libc::EINVAL);
    };
    let v = c_int::from_ne_bytes(v.try_into().unwrap());
    let keep = [libc::TCP_KEEPIDLE, libc::TCP_KEEPINTVL, libc::TCP_KEEPCNT];
    if level == libc::IPPROTO_TCP && keep.contains(&name) && v < 1 {
        return Err(libc::EINVAL);
    }
    Ok(v)
}

fn config(pairs: &[(&str, &str)]) -> Result<Config, String> {
    let mut all = vec![
        ("MTCP_ADDR", "198.18.0.2/24"),
        ("MTCP_STATS", "off"),
        ("MTCP_RCVBUF", "65536"),
        ("MTCP_SNDBUF", "65536"),
    ];
    all.extend_from_slice(pairs);
    Config::from_pairs(all.iter().map(|&(k, v)| (k, v))).map_err(|e| e.to_string())
}

/// A socket table on one end of a cable and a client stack on the other.
struct Net {
    s: Sockets<'static, MemLink, TestHost>,
    client: Stack<MemLink>,
    now: Rc<Cell<Instant>>,
    log: Rc<RefCell<Log>>,
}

impl Net {
    fn new() -> Net {
        Net::with(config(&[]), None)
    }

    fn with(cfg: Result<Config, String>, start_error: Option<&str>) -> Net {
        let (a, b) = MemLink::pair(SERVER_MAC, CLIENT_MAC);
        let now = Rc::new(Cell::new(Instant::from_secs(1)));
        let log = Rc::new(RefCell::new(Log::default()));
        let host = TestHost {
            link: Some(a),
            start_error: start_error.map(String::from),
            now: now.clone(),
            next_fd: FIRST_IDENTITY,
            epolls: [EPOLL_FD, EPOLL_FD + 1, EPOLL_FD + 2].into_iter().collect(),
            log: log.clone(),
        };
        let table: &'static FdTable = Box::leak(Box::new(FdTable::with_len(4096).unwrap()));
        let client_cfg = config(&[("MTCP_ADDR", "198.18.0.1/24")]).unwrap();
        let client = Stack::new(b, &client_cfg, now.get()).unwrap();
        Net {
            s: Sockets::new(host, table, cfg),
            client,
            now,
            log,
        }
    }

    /// Both sides poll until neither has work, 10 µs of simulated time a round.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            self.now.set(self.now.get() + Duration::from_micros(10));
            let a = self.s.pump();
            let b = self.client.poll(self.now.get());
            let quiet = self.client.link().pending() == 0
                && self.s.stack().is_none_or(|st| st.link().pending() == 0);
            if !a && !b && quiet {
                return;
            }
        }
        panic!("the two sides never settled");
    }

    /// A dual listener on PORT (bound to the wildcard address).
    fn listen_dual(&mut self) {
        assert_eq!(self.s.bind(LISTEN_FD, Ipv4Addr::UNSPECIFIED, PORT), None);
        assert_eq!(self.s.listen(LISTEN_FD, 128), Some(Ok(0)));
    }

    /// The client opens a connection to the server's `port` (not yet accepted).
    fn client_connects(&mut self, port: u16) -> ConnId {
        self.client
            .connect(
                self.now.get(),
                SocketAddrV4::new(SERVER, port),
                self.client.default_options(),
            )
            .unwrap()
    }

    /// A client connection to PORT: (client's id, our fd).
    fn connect(&mut self, flags: c_int) -> (ConnId, c_int) {
        let (c, fd, peer) = self.connect_peer(flags);
        assert_eq!(peer.ip(), IpAddr::V4(CLIENT));
        (c, fd)
    }

    /// A client connection to PORT: (client's id, our fd, its peer address as accept gave it).
    fn connect_peer(&mut self, flags: c_int) -> (ConnId, c_int, SocketAddr) {
        let c = self.client_connects(PORT);
        self.settle();
        match self.s.accept(LISTEN_FD, flags) {
            Some(Ok(Accepted::Conn { fd, peer })) => (c, fd, peer),
            other => panic!("accept: {other:?}"),
        }
    }

    /// A client connection to PORT is refused.
    fn refused(&mut self) -> bool {
        let c = self.client_connects(PORT);
        self.settle();
        self.client.take_error(c) == Ok(Some(SockError::Refused))
    }

    /// A client connection to PORT is accepted on listener `fd`.
    fn accepted_on(&mut self, fd: c_int) -> bool {
        self.client_connects(PORT);
        self.settle();
        matches!(self.s.accept(fd, 0), Some(Ok(Accepted::Conn { .. })))
    }

    fn read(&mut self, fd: c_int, peek: bool) -> Result<Vec<u8>, SockError> {
        let mut buf = [0u8; 256];
        let t = self
            .s
            .io(fd, &mut Io::Read(&mut buf, peek), |_| false)
            .unwrap();
        t.result.map(|n| buf[..n].to_vec())
    }

    fn write(&mut self, fd: c_int, data: &[u8]) -> Result<usize, SockError> {
        self.s
            .io(fd, &mut Io::Write(data), |_| false)
            .unwrap()
            .result
    }

    fn client_reads(&mut self, c: ConnId) -> Result<Vec<u8>, SockError> {
        self.settle();
        let mut buf = [0u8; 256];
        self.client.recv(c, &mut buf).map(|n| buf[..n].to_vec())
    }

    fn said(&self) -> Vec<String> {
        self.log.borrow().said.clone()
    }
}

// ------------------------------------------------------------------ bind, listen, accept

#[test]
fn a_wildcard_bind_is_the_kernels_and_listen_makes_a_dual_listener() {
    let mut n = Net::new();
    n.listen_dual();
    assert_eq!(n.log.borrow().kernel_listens, vec![(LISTEN_FD, 128)]);
    assert_eq!(n.log.borrow().started, 1);
    assert_eq!(n.s.poll_kind(LISTEN_FD), PollKind::Both);
    // Nothing queued: a blocking caller also asks the kernel side.
    assert_eq!(
        n.s.accept(LISTEN_FD, 0),
        Some(Ok(Accepted::Empty { kernel: true }))
    );
    let (_, fd) = n.connect(0);
    assert!(fd >= FIRST_IDENTITY);
    assert_eq!(n.s.poll_kind(fd), PollKind::Stack);
    assert!(n.s.is_conn(fd));
    assert!(!n.s.is_conn(LISTEN_FD));
}

#[test]
fn a_bind_to_mtcp_addr_is_the_stacks_alone() {
    let mut n = Net::new();
    assert_eq!(n.s.bind(LISTEN_FD, SERVER, PORT), Some(Ok(0)));
    assert_eq!(n.s.listen(LISTEN_FD, 16), Some(Ok(0)));
    assert!(n.log.borrow().kernel_listens.is_empty());
    assert_eq!(n.s.poll_kind(LISTEN_FD), PollKind::Stack);
    assert_eq!(
        n.s.accept(LISTEN_FD, 0),
        Some(Ok(Accepted::Empty { kernel: false }))
    );
    // getsockname says MTCP_ADDR:port; getpeername is the kernel's (ENOTCONN there).
    assert_eq!(
        n.s.name(LISTEN_FD, false),
        Some(Ok(SocketAddrV4::new(SERVER, PORT).into()))
    );
    assert_eq!(n.s.name(LISTEN_FD, true), None);
    let (_, fd) = n.connect(0);
    assert_eq!(
        n.s.name(fd, false),
        Some(Ok(SocketAddrV4::new(SERVER, PORT).into()))
    );
}

#[test]
fn a_loopback_bind_is_never_reachable_from_the_device() {
    let mut n = Net::new();
    assert_eq!(n.s.bind(LISTEN_FD, Ipv4Addr::LOCALHOST, PORT), None);
    // The kernel's socket: listen() is not ours.
    assert_eq!(n.s.listen(LISTEN_FD, 16), None);
    // The stack runs and answers a SYN for that port with a reset.
    assert_eq!(n.log.borrow().started, 1);
    let c = n.client_connects(PORT);
    n.settle();
    assert_eq!(n.client.take_error(c), Ok(Some(SockError::Refused)));
}

// ------------------------------------------------------------------ IPv6 sockets

/// `a`, v4-mapped, as Linux shows an IPv4 peer of an AF_INET6 socket.
fn mapped(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(ip.to_ipv6_mapped(), port, 0, 0))
}

#[test]
fn a_v6_wildcard_without_v6only_is_a_dual_listener_with_v4_mapped_connections() {
    let mut n = Net::new();
    assert_eq!(
        n.s.bind6(LISTEN_FD, Ipv6Addr::UNSPECIFIED, false, PORT),
        None
    );
    assert_eq!(n.s.listen(LISTEN_FD, 128), Some(Ok(0)));
    // The kernel socket listens too (IPv4 and IPv6 on the kernel's interfaces).
    assert_eq!(n.log.borrow().kernel_listens, vec![(LISTEN_FD, 128)]);
    assert_eq!(n.s.poll_kind(LISTEN_FD), PollKind::Both);
    // Its name is the kernel socket's.
    assert_eq!(n.s.name(LISTEN_FD, false), None);
    let (c, fd, peer) = n.connect_peer(0);
    let client_port = n.client.local_addr(c).unwrap().port();
    assert_eq!(peer, mapped(CLIENT, client_port));
    assert_eq!(n.s.name(fd, true), Some(Ok(mapped(CLIENT, client_port))));
    assert_eq!(n.s.name(fd, false), Some(Ok(mapped(SERVER, PORT))));
    // Its identity fd is an AF_INET6 socket: SO_DOMAIN and the IPv6 options are its answers.
    assert!(n.log.borrow().families.contains(&(fd, Family::Inet6)));
    assert_eq!(
        n.s.getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, &mut [0; 4]),
        None
    );
    // A dup is the same AF_INET6 socket.
    n.s.alias(fd, 70).unwrap();
    assert_eq!(n.s.name(70, true), Some(Ok(mapped(CLIENT, client_port))));
    // Data flows as on any connection.
    assert_eq!(n.write(fd, b"v4 via ::"), Ok(9));
    assert_eq!(n.client_reads(c).unwrap(), b"v4 via ::");
}

#[test]
fn an_ipv4_listener_beside_a_v6_one_keeps_its_family() {
    let mut n = Net::new();
    assert_eq!(
        n.s.bind6(LISTEN_FD, Ipv6Addr::UNSPECIFIED, false, PORT),
        None
    );
    assert_eq!(n.s.listen(LISTEN_FD, 8), Some(Ok(0)));
    let (_, v6) = {
        let (c, fd, _) = n.connect_peer(0);
        (c, fd)
    };
    n.s.close(LISTEN_FD);
    n.listen_dual();
    let (_, v4) = n.connect(0);
    let families = n.log.borrow().families.clone();
    assert!(families.contains(&(v4, Family::Inet)));
    assert!(families.contains(&(v6, Family::Inet6)));
}

#[test]
fn a_v4_mapped_mtcp_addr_bind_is_the_stacks_alone() {
    let mut n = Net::new();
    let ip = SERVER.to_ipv6_mapped();
    assert_eq!(n.s.bind6(LISTEN_FD, ip, false, PORT), Some(Ok(0)));
    assert_eq!(n.s.listen(LISTEN_FD, 16), Some(Ok(0)));
    assert!(n.log.borrow().kernel_listens.is_empty());
    assert_eq!(n.s.poll_kind(LISTEN_FD), PollKind::Stack);
    assert_eq!(n.s.name(LISTEN_FD, false), Some(Ok(mapped(SERVER, PORT))));
    let (c, fd, peer) = n.connect_peer(0);
    let client_port = n.client.local_addr(c).unwrap().port();
    assert_eq!(peer, mapped(CLIENT, client_port));
    assert_eq!(n.s.name(fd, false), Some(Ok(mapped(SERVER, PORT))));
}

#[test]
fn a_v6only_wildcard_listener_is_refused_once_with_one_message() {
    let mut n = Net::new();
    // The kernel binds (the port is taken, as on Linux); listen() fails.
    assert_eq!(
        n.s.bind6(LISTEN_FD, Ipv6Addr::UNSPECIFIED, true, PORT),
        None
    );
    assert_eq!(n.s.listen(LISTEN_FD, 16), Some(Err(libc::EADDRNOTAVAIL)));
    assert_eq!(n.s.listen(LISTEN_FD, 16), Some(Err(libc::EADDRNOTAVAIL)));
    // Another such socket on the port (a server retrying): no second line.
    assert_eq!(
        n.s.bind6(LISTEN_FD + 1, Ipv6Addr::UNSPECIFIED, true, PORT),
        None
    );
    assert_eq!(
        n.s.listen(LISTEN_FD + 1, 16),
        Some(Err(libc::EADDRNOTAVAIL))
    );
    let said = n.said();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains(&format!("port {PORT}")) && said[0].contains("IPV6_V6ONLY"),
        "{said:?}"
    );
    assert!(n.log.borrow().kernel_listens.is_empty());
    assert_eq!(n.s.poll_kind(LISTEN_FD), PollKind::Kernel);
    // The stack is not failed: an IPv4 listener on the port is served (Redis's "* -::*").
    n.listen_dual();
    n.connect(0);
    assert_eq!(n.said().len(), 1);
}

#[test]
fn a_socket_closed_before_listen_takes_its_flagged_bind_along() {
    let mut n = Net::new();
    // A refused V6ONLY socket, closed (Redis's optional "-::*"); the next socket gets its fd
    // number (Redis's Unix socket), binds elsewhere (not ours) and listens: the kernel's.
    assert_eq!(
        n.s.bind6(LISTEN_FD, Ipv6Addr::UNSPECIFIED, true, PORT),
        None
    );
    assert_eq!(n.s.listen(LISTEN_FD, 16), Some(Err(libc::EADDRNOTAVAIL)));
    assert!(n.s.has_pending_binds());
    assert!(!n.s.close(LISTEN_FD));
    assert!(!n.s.has_pending_binds());
    assert_eq!(n.s.listen(LISTEN_FD, 16), None);
    // The same for a wildcard bind whose socket never listened.
    assert_eq!(n.s.bind(LISTEN_FD, Ipv4Addr::UNSPECIFIED, PORT), None);
    assert!(!n.s.close(LISTEN_FD));
    assert_eq!(n.s.listen(LISTEN_FD, 16), None);
    assert_eq!(n.log.borrow().started, 0);
}

#[test]
fn other_ipv6_addresses_are_the_kernels() {
    let mut n = Net::new();
    // ::1, as 127.0.0.1: the kernel's; the stack runs and resets SYNs to the port.
    assert_eq!(n.s.bind6(LISTEN_FD, Ipv6Addr::LOCALHOST, false, PORT), None);
    assert_eq!(n.s.listen(LISTEN_FD, 16), None);
    assert_eq!(n.log.borrow().started, 1);
    // A v4-mapped kernel address, as that IPv4 address.
    let lo = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
    assert_eq!(n.s.bind6(LISTEN_FD + 1, lo, false, PORT), None);
    assert_eq!(n.s.listen(LISTEN_FD + 1, 16), None);
    // A v4-mapped address on a V6ONLY socket: the kernel refuses it (EINVAL), even MTCP_ADDR.
    let ours = SERVER.to_ipv6_mapped();
    assert_eq!(n.s.bind6(LISTEN_FD + 2, ours, true, PORT), None);
    assert_eq!(n.s.listen(LISTEN_FD + 2, 16), None);
    assert!(n.said().is_empty());
    assert!(n.log.borrow().kernel_listens.is_empty());
}

#[test]
fn listen_on_an_unflagged_socket_is_the_kernels() {
    let mut n = Net::new();
    assert_eq!(n.s.listen(LISTEN_FD, 16), None);
    assert_eq!(n.s.accept(LISTEN_FD, 0), None);
    assert_eq!(n.log.borrow().started, 0);
}

#[test]
fn a_bad_configuration_is_said_once_and_every_flagged_listen_fails() {
    let mut n = Net::with(Err("MTCP_DEV=\"nope\": unknown device".into()), None);
    // The kernel binds (so the port is taken), listen fails loudly.
    assert_eq!(n.s.bind(LISTEN_FD, Ipv4Addr::UNSPECIFIED, PORT), None);
    assert_eq!(
        n.s.bind(LISTEN_FD + 1, Ipv4Addr::UNSPECIFIED, PORT + 1),
        None
    );
    assert_eq!(n.s.listen(LISTEN_FD, 16), Some(Err(libc::EADDRNOTAVAIL)));
    assert_eq!(
        n.s.listen(LISTEN_FD + 1, 16),
        Some(Err(libc::EADDRNOTAVAIL))
    );
    let said = n.said();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("unknown device") && said[0].contains("listen() on them fails"));
    assert!(n.log.borrow().kernel_listens.is_empty());
}

#[test]
fn a_stack_that_cannot_start_is_said_once() {
    let mut n = Net::with(config(&[]), Some("no hugepages and no memory"));
    n.s.bind(LISTEN_FD, Ipv4Addr::UNSPECIFIED, PORT);
    assert_eq!(n.s.listen(LISTEN_FD, 16), Some(Err(libc::EADDRNOTAVAIL)));
    n.s.bind(LISTEN_FD, Ipv4Addr::UNSPECIFIED, PORT);
    assert_eq!(n.s.listen(LISTEN_FD, 16), Some(Err(libc::EADDRNOTAVAIL)));
    assert_eq!(n.said().len(), 1);
    assert_eq!(n.log.borrow().started, 0);
}

#[test]
fn listen_again_changes_the_backlog_of_both_sides() {
    let mut n = Net::new();
    n.listen_dual();
    assert_eq!(n.s.listen(LISTEN_FD, 1), Some(Ok(0)));
    assert_eq!(
        n.log.borrow().kernel_listens,
        vec![(LISTEN_FD, 128), (LISTEN_FD, 1)]
    );
    // A backlog of one: once two wait in the accept queue (more than the backlog) it is full,
    // and a third connection's SYN is dropped (with 128 it would be queued).
    for _ in 0..2 {
        n.client_connects(PORT);
    }
    n.settle();
    assert_eq!(n.s.stack().unwrap().accept_queue_len(PORT), 2);
    n.client_connects(PORT);
    n.settle();
    let st = n.s.stack().unwrap();
    assert_eq!(st.accept_queue_len(PORT), 2);
    assert_eq!(st.stats().drop_syn_backlog, 1);
}

#[test]
fn listen_again_on_a_stack_only_listener_leaves_the_kernel_alone() {
    let mut n = Net::new();
    assert_eq!(n.s.bind(LISTEN_FD, SERVER, PORT), Some(Ok(0)));
    assert_eq!(n.s.listen(LISTEN_FD, 16), Some(Ok(0)));
    assert_eq!(n.s.listen(LISTEN_FD, 4), Some(Ok(0)));
    assert!(n.log.borrow().kernel_listens.is_empty());
}

#[test]
fn accept_flags_give_a_nonblocking_connection() {
    let mut n = Net::new();
    n.listen_dual();
    let (_, blocking) = n.connect(0);
    let (_, nonblocking) = n.connect(libc::SOCK_NONBLOCK);
    let mut buf = [0u8; 8];
    let t = n.s.io(blocking, &mut Io::Read(&mut buf, false), |_| false);
    assert_eq!(t.map(|t| t.nonblock), Some(false));
    let t =
        n.s.io(nonblocking, &mut Io::Read(&mut buf, false), |_| false);
    assert_eq!(
        t.map(|t| (t.result, t.nonblock)),
        Some((Err(SockError::WouldBlock), true))
    );
    n.s.set_nonblock(blocking, true);
    let t = n.s.io(blocking, &mut Io::Read(&mut buf, false), |_| false);
    assert_eq!(t.map(|t| t.nonblock), Some(true));
}

#[test]
fn a_listener_is_readable_while_a_connection_is_queued() {
    let mut n = Net::new();
    n.listen_dual();
    assert!(!n.s.readiness(LISTEN_FD).unwrap().readable());
    n.client_connects(PORT);
    n.settle();
    assert!(n.s.readiness(LISTEN_FD).unwrap().readable());
    assert!(matches!(
        n.s.accept(LISTEN_FD, 0),
        Some(Ok(Accepted::Conn { .. }))
    ));
    assert!(!n.s.readiness(LISTEN_FD).unwrap().readable());
}

// ------------------------------------------------------------------ data

#[test]
fn data_both_ways_peek_and_fionread() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    assert_eq!(n.read(fd, false), Err(SockError::WouldBlock));
    n.client.send(c, b"hello").unwrap();
    n.client.flush(n.now.get());
    n.settle();
    assert_eq!(n.s.fionread(fd), Some(Ok(5)));
    assert_eq!(n.read(fd, true).unwrap(), b"hello");
    assert_eq!(n.read(fd, false).unwrap(), b"hello");
    assert_eq!(n.s.fionread(fd), Some(Ok(0)));
    assert_eq!(n.write(fd, b"world"), Ok(5));
    assert_eq!(n.client_reads(c).unwrap(), b"world");
}

#[test]
fn a_read_that_finds_nothing_polls_the_stack_once_more() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    n.client.send(c, b"late").unwrap();
    n.client.flush(n.now.get());
    // The frame waits on our side of the cable: no poll has received it yet.
    assert_eq!(n.read(fd, false).unwrap(), b"late");
}

#[test]
fn a_deferred_write_leaves_at_the_next_flush() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    let mut pending = None;
    let t = n.s.io(fd, &mut Io::Write(b"later"), |p| {
        pending = Some(p);
        true
    });
    assert_eq!(t.unwrap().result, Ok(5));
    assert_eq!(pending, Some(1));
    n.client.poll(n.now.get());
    let mut buf = [0u8; 16];
    assert_eq!(n.client.recv(c, &mut buf), Err(SockError::WouldBlock));
    n.s.flush();
    assert_eq!(n.client_reads(c).unwrap(), b"later");
}

#[test]
fn calls_on_fds_that_are_not_ours_are_the_kernels() {
    let mut n = Net::new();
    n.listen_dual();
    let mut buf = [0u8; 4];
    assert!(n
        .s
        .io(3, &mut Io::Read(&mut buf, false), |_| false)
        .is_none());
    assert_eq!(n.s.shutdown(3, libc::SHUT_WR), None);
    assert_eq!(n.s.name(3, true), None);
    assert_eq!(
        n.s.setsockopt(3, libc::SOL_SOCKET, libc::SO_KEEPALIVE, &int(1)),
        None
    );
    assert_eq!(
        n.s.getsockopt(3, libc::SOL_SOCKET, libc::SO_ERROR, &mut [0; 4]),
        None
    );
    assert_eq!(n.s.fionread(3), None);
    assert_eq!(n.s.poll_kind(3), PollKind::Kernel);
    assert!(!n.s.close(3));
    // A listener is no connection: the data calls are the kernel's.
    assert!(n
        .s
        .io(LISTEN_FD, &mut Io::Read(&mut buf, false), |_| false)
        .is_none());
}

// ------------------------------------------------------------------ shutdown and close

#[test]
fn shutdown_write_sends_fin_and_reading_goes_on() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    assert_eq!(n.s.shutdown(fd, 7), Some(Err(libc::EINVAL)));
    let wakes = n.log.borrow().wakes;
    assert_eq!(n.s.shutdown(fd, libc::SHUT_WR), Some(Ok(0)));
    // Threads blocked in waits are told at once.
    assert!(n.log.borrow().wakes > wakes);
    assert_eq!(n.client_reads(c), Ok(Vec::new()));
    assert_eq!(n.write(fd, b"x"), Err(SockError::Pipe));
    n.client.send(c, b"still").unwrap();
    n.client.flush(n.now.get());
    n.settle();
    assert_eq!(n.read(fd, false).unwrap(), b"still");
}

#[test]
fn shutdown_read_keeps_buffered_data_then_says_end_of_stream() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    n.client.send(c, b"buffered").unwrap();
    n.client.flush(n.now.get());
    n.settle();
    assert_eq!(n.s.shutdown(fd, libc::SHUT_RD), Some(Ok(0)));
    let r = n.s.readiness(fd).unwrap();
    assert!(r.readable() && r.rdhup());
    assert_eq!(n.read(fd, false).unwrap(), b"buffered");
    assert_eq!(n.read(fd, false).unwrap(), b"");
}

#[test]
fn close_of_the_last_fd_closes_the_connection() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    assert!(n.s.close(fd));
    assert!(!n.s.is_conn(fd));
    assert_eq!(n.client_reads(c), Ok(Vec::new()));
    // The fd is free for the kernel's next socket.
    assert!(!n.s.close(fd));
}

#[test]
fn closing_the_last_listener_fd_stops_listening() {
    let mut n = Net::new();
    n.listen_dual();
    assert!(n.s.close(LISTEN_FD));
    assert!(n.refused());
}

#[test]
fn shutdown_of_a_listener_stops_it_and_listen_starts_it_again() {
    let mut n = Net::new();
    n.listen_dual();
    let dup = 53;
    assert_eq!(n.s.alias(LISTEN_FD, dup), Ok(()));
    assert_eq!(n.s.shutdown(LISTEN_FD, 9), Some(Err(libc::EINVAL)));
    // SHUT_WR: nothing changes, as on Linux.
    assert_eq!(n.s.shutdown(LISTEN_FD, libc::SHUT_WR), Some(Ok(0)));
    let queued = n.client_connects(PORT);
    n.settle();
    assert!(n.s.readiness(LISTEN_FD).unwrap().readable());
    // SHUT_RD: the queued connection is reset, accept fails on every dup, the kernel side is
    // shut too (and says what the socket's readiness is: nothing of ours).
    assert_eq!(n.s.shutdown(dup, libc::SHUT_RD), Some(Ok(0)));
    assert_eq!(n.log.borrow().kernel_shutdowns, vec![(dup, libc::SHUT_RD)]);
    n.settle();
    assert_eq!(n.client.take_error(queued), Ok(Some(SockError::Reset)));
    assert_eq!(n.s.accept(LISTEN_FD, 0), Some(Err(libc::EINVAL)));
    assert_eq!(n.s.accept(dup, 0), Some(Err(libc::EINVAL)));
    assert_eq!(n.s.readiness(LISTEN_FD), Some(Readiness::NONE));
    assert!(n.refused());
    assert_eq!(
        n.s.shutdown(LISTEN_FD, libc::SHUT_RDWR),
        Some(Err(libc::ENOTCONN))
    );
    assert_eq!(
        n.s.shutdown(LISTEN_FD, libc::SHUT_WR),
        Some(Err(libc::ENOTCONN))
    );
    // listen() again: on the same port, through either fd.
    assert_eq!(n.s.listen(dup, 4), Some(Ok(0)));
    assert!(!n.s.readiness(LISTEN_FD).unwrap().readable());
    n.connect(0);
    // Closing one fd leaves the listener to the other; the last close stops it.
    assert!(n.s.close(LISTEN_FD));
    assert!(n.accepted_on(dup));
    assert!(n.s.close(dup));
    assert!(n.refused());
}

#[test]
fn a_stopped_listener_that_closes_leaves_the_ports_other_listener_alone() {
    let mut n = Net::new();
    assert_eq!(n.s.bind(LISTEN_FD, SERVER, PORT), Some(Ok(0)));
    assert_eq!(n.s.listen(LISTEN_FD, 16), Some(Ok(0)));
    // SO_ACCEPTCONN is ours to say (its kernel socket never listens).
    let accepting = |n: &mut Net| get_int(n, LISTEN_FD, libc::SOL_SOCKET, libc::SO_ACCEPTCONN);
    assert_eq!(accepting(&mut n), Some(Ok(1)));
    assert_eq!(n.s.shutdown(LISTEN_FD, libc::SHUT_RDWR), Some(Ok(0)));
    assert_eq!(accepting(&mut n), Some(Ok(0)));
    // (A stack-only listener has no kernel side to shut.)
    assert!(n.log.borrow().kernel_shutdowns.is_empty());
    // It reads as Linux's closed socket: writable, hung up; once shut again (refused),
    // readable with RDHUP too.
    let bits = |n: &Net| n.s.readiness(LISTEN_FD).unwrap().bits();
    assert_eq!(bits(&n), (libc::EPOLLOUT | libc::EPOLLHUP) as u32);
    assert_eq!(
        n.s.shutdown(LISTEN_FD, libc::SHUT_WR),
        Some(Err(libc::ENOTCONN))
    );
    assert_eq!(bits(&n), (libc::EPOLLOUT | libc::EPOLLHUP) as u32);
    assert_eq!(
        n.s.shutdown(LISTEN_FD, libc::SHUT_RD),
        Some(Err(libc::ENOTCONN))
    );
    let all = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLHUP;
    assert_eq!(bits(&n), all as u32);
    let other = 54;
    assert_eq!(n.s.bind(other, SERVER, PORT), Some(Ok(0)));
    assert_eq!(n.s.listen(other, 16), Some(Ok(0)));
    assert!(n.s.close(LISTEN_FD));
    assert!(n.accepted_on(other));
}

// ------------------------------------------------------------------ dup

#[test]
fn a_dup_refers_to_the_same_connection_until_the_last_close() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    let dup = 50;
    assert_eq!(n.s.alias(fd, dup), Ok(()));
    assert!(n.s.close(fd));
    // Still open through the dup: the peer saw no FIN, and data flows through it.
    assert_eq!(n.write(dup, b"via dup"), Ok(7));
    assert_eq!(n.client_reads(c).unwrap(), b"via dup");
    // O_NONBLOCK is the open file description's: shared by the dups.
    n.s.set_nonblock(dup, true);
    assert!(n.s.close(dup));
    assert_eq!(n.client_reads(c), Ok(Vec::new()));
}

#[test]
fn a_dup_of_a_kernel_fd_is_not_ours() {
    let mut n = Net::new();
    assert_eq!(n.s.alias(3, 51), Ok(()));
    assert_eq!(n.s.poll_kind(51), PollKind::Kernel);
}

#[test]
fn a_dup_of_a_listener_accepts_too() {
    let mut n = Net::new();
    n.listen_dual();
    let dup = 52;
    assert_eq!(n.s.alias(LISTEN_FD, dup), Ok(()));
    assert!(n.s.close(LISTEN_FD));
    assert!(n.accepted_on(dup));
}

// ------------------------------------------------------------------ options

fn int(v: c_int) -> [u8; 4] {
    v.to_ne_bytes()
}

/// getsockopt of an int the connection answers.
fn get_int(n: &mut Net, fd: c_int, level: c_int, name: c_int) -> Option<Result<c_int, c_int>> {
    let mut b = [0u8; 4];
    n.s.getsockopt(fd, level, name, &mut b)
        .map(|r| r.map(|k| c_int::from_ne_bytes(b[..k].try_into().unwrap())))
}

#[test]
fn options_go_to_the_kernel_socket_first_then_take_effect() {
    let mut n = Net::new();
    n.listen_dual();
    let (_, fd) = n.connect(0);
    let (sol, tcp) = (libc::SOL_SOCKET, libc::IPPROTO_TCP);
    assert_eq!(
        n.s.setsockopt(fd, sol, libc::SO_KEEPALIVE, &int(1)),
        Some(Ok(0))
    );
    assert_eq!(
        n.s.setsockopt(fd, tcp, libc::TCP_KEEPIDLE, &int(30)),
        Some(Ok(0))
    );
    assert_eq!(
        n.s.setsockopt(fd, tcp, libc::TCP_NODELAY, &int(1)),
        Some(Ok(0))
    );
    // The kernel's errors are the call's: a bad value, a short value, an unknown level.
    assert_eq!(
        n.s.setsockopt(fd, tcp, libc::TCP_KEEPIDLE, &int(0)),
        Some(Err(libc::EINVAL))
    );
    assert_eq!(
        n.s.setsockopt(fd, tcp, libc::TCP_NODELAY, &[1, 0]),
        Some(Err(libc::EINVAL))
    );
    assert_eq!(
        n.s.setsockopt(fd, 9999, 1, &int(1)),
        Some(Err(libc::ENOPROTOOPT))
    );
    assert_eq!(
        n.s.setsockopt(fd, tcp, libc::TCP_USER_TIMEOUT, &int(5000)),
        Some(Ok(0))
    );
    // Kept by the kernel, no effect to show: fine.
    assert_eq!(
        n.s.setsockopt(fd, sol, libc::SO_REUSEADDR, &int(1)),
        Some(Ok(0))
    );
    // Accepted by the kernel, not honoured by the stack: fails as unsupported.
    assert_eq!(
        n.s.setsockopt(fd, tcp, libc::TCP_THIN_LINEAR_TIMEOUTS, &int(1)),
        Some(Err(libc::ENOPROTOOPT))
    );
    let kernel: Vec<_> = n
        .log
        .borrow()
        .kernel_opts
        .iter()
        .map(|o| (o.0, o.2))
        .collect();
    // TCP_NODELAY (as TCP_CORK) with an int's worth of value is the connection's own: no
    // call of the kernel's.
    assert!(
        kernel.contains(&(fd, libc::TCP_KEEPIDLE)) && !kernel.contains(&(fd, libc::TCP_NODELAY))
    );
    // What only the connection knows.
    assert_eq!(get_int(&mut n, fd, sol, libc::SO_ERROR), Some(Ok(0)));
    // The buffers the connection has (64 KiB each), read back as Linux reads them: doubled.
    assert_eq!(get_int(&mut n, fd, sol, libc::SO_RCVBUF), Some(Ok(131072)));
    assert_eq!(get_int(&mut n, fd, sol, libc::SO_SNDBUF), Some(Ok(131072)));
    // SO_SNDBUF limits the connection's send buffer (this test kernel reads back what was
    // set; Linux reads back twice the request, which `buffer_of` halves).
    assert_eq!(
        n.s.setsockopt(fd, sol, libc::SO_SNDBUF, &int(8192)),
        Some(Ok(0))
    );
    assert_eq!(get_int(&mut n, fd, sol, libc::SO_SNDBUF), Some(Ok(8192)));
    let big = vec![b'x'; 10_000];
    let sent = n.s.io(fd, &mut Io::Write(&big), |_| false).unwrap();
    assert_eq!(sent.result, Ok(4096));
    // TCP_QUICKACK, IP_TTL and IP_TOS take effect; TCP_MAXSEG is kept.
    for (level, name, v) in [
        (tcp, libc::TCP_QUICKACK, 1),
        (libc::IPPROTO_IP, libc::IP_TTL, 9),
        (libc::IPPROTO_IP, libc::IP_TOS, 0x10),
        (tcp, libc::TCP_MAXSEG, 1200),
    ] {
        assert_eq!(n.s.setsockopt(fd, level, name, &int(v)), Some(Ok(0)));
    }
    // The rest is the kernel socket's answer.
    assert_eq!(
        n.s.getsockopt(fd, sol, libc::SO_KEEPALIVE, &mut [0; 4]),
        None
    );
    assert_eq!(get_int(&mut n, fd, tcp, libc::TCP_NODELAY), Some(Ok(1)));
    assert_eq!(
        n.s.getsockopt(fd, tcp, libc::TCP_CORK, &mut [0; 4]),
        None,
        "never set on the connection: the kernel socket's"
    );
    assert_eq!(
        n.s.setsockopt(fd, tcp, libc::TCP_CORK, &int(5)),
        Some(Ok(0))
    );
    assert_eq!(get_int(&mut n, fd, tcp, libc::TCP_CORK), Some(Ok(1)));
    // A short buffer gets the first bytes, as Linux gives.
    let mut one = [0u8; 1];
    assert_eq!(
        n.s.getsockopt(fd, sol, libc::SO_SNDBUF, &mut one),
        Some(Ok(1))
    );
}

#[test]
fn accepted_connections_inherit_the_listeners_options() {
    let mut n = Net::new();
    n.listen_dual();
    let (sol, tcp) = (libc::SOL_SOCKET, libc::IPPROTO_TCP);
    // Set on the listener (after listen: still inherited by later connections).
    assert_eq!(
        n.s.setsockopt(LISTEN_FD, tcp, libc::TCP_NODELAY, &int(1)),
        Some(Ok(0))
    );
    assert_eq!(
        n.s.setsockopt(LISTEN_FD, sol, libc::SO_KEEPALIVE, &int(1)),
        Some(Ok(0))
    );
    // A congestion control the stack does not have: refused on the listener as on a connection.
    assert_eq!(
        n.s.setsockopt(LISTEN_FD, tcp, libc::TCP_CONGESTION, b"bbr\0"),
        Some(Err(libc::ENOENT))
    );
    // A receive buffer (read back as 16 KiB: a request of 8 KiB, as Linux reads it).
    assert_eq!(
        n.s.setsockopt(LISTEN_FD, sol, libc::SO_RCVBUF, &int(16384)),
        Some(Ok(0))
    );
    let (_, fd) = n.connect(0);
    let inherited = n.log.borrow().inherited.last().cloned().unwrap();
    let names: Vec<_> = inherited.iter().map(|o| o.name).collect();
    assert_eq!(
        names,
        vec![libc::TCP_NODELAY, libc::SO_KEEPALIVE, libc::SO_RCVBUF]
    );
    // The connection got that buffer when its SYN came: its window is 8 KiB.
    assert_eq!(get_int(&mut n, fd, sol, libc::SO_RCVBUF), Some(Ok(16384)));
    // And the stack's connection has them: keepalive probes an idle peer.
    let id = match n.s.obj(fd) {
        Some(super::Obj::Conn { id, opts, .. }) => {
            assert!(opts.ka_on);
            *id
        }
        _ => panic!("a connection"),
    };
    assert!(n.s.stack().unwrap().readiness(id).is_ok());
}

/// A corked listener's connections start corked, as Linux's (it clones the listener's Nagle
/// flags): a partial segment waits until the connection takes the cork off.
#[test]
fn a_corked_listeners_connections_start_corked() {
    let mut n = Net::new();
    n.listen_dual();
    let tcp = libc::IPPROTO_TCP;
    assert_eq!(
        n.s.setsockopt(LISTEN_FD, tcp, libc::TCP_CORK, &int(1)),
        Some(Ok(0))
    );
    let (c, fd) = n.connect(0);
    assert_eq!(n.write(fd, b"held"), Ok(4));
    assert_eq!(n.client_reads(c), Err(SockError::WouldBlock));
    assert_eq!(
        n.s.setsockopt(fd, tcp, libc::TCP_CORK, &int(0)),
        Some(Ok(0))
    );
    assert_eq!(n.client_reads(c).unwrap(), b"held");
}

#[test]
fn so_rcvlowat_holds_readiness_until_enough_is_buffered() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    // The client sends each piece at once (no Nagle wait for our delayed ACK).
    n.client.set_nodelay(c, true).unwrap();
    n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, fd, Some((IN, 4)))
        .unwrap()
        .unwrap();
    assert_eq!(
        n.s.setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, &int(5)),
        Some(Ok(0))
    );
    n.client.send(c, b"abc").unwrap();
    n.client.flush(n.now.get());
    n.settle();
    assert!(!n.s.readiness(fd).unwrap().readable());
    assert_eq!(pass(&mut n, EPOLL_FD), vec![]);
    // A blocking receive is told to wait for five bytes.
    let mut buf = [0u8; 16];
    let t =
        n.s.io(fd, &mut Io::Read(&mut buf, true), |_| false)
            .unwrap();
    assert_eq!((t.result, t.rcvlowat), (Ok(3), 5));
    n.client.send(c, b"de").unwrap();
    n.client.flush(n.now.get());
    n.settle();
    assert!(n.s.readiness(fd).unwrap().readable());
    assert_eq!(pass(&mut n, EPOLL_FD), vec![(IN, 4)]);
    // Below the mark again, then the end of the stream: readable.
    assert_eq!(n.read(fd, false).unwrap(), b"abcde");
    n.client.send(c, b"f").unwrap();
    n.client.close(c).unwrap();
    n.client.flush(n.now.get());
    n.settle();
    assert!(n.s.readiness(fd).unwrap().readable());
}

fn timeval_bytes(sec: i64, usec: i64) -> Vec<u8> {
    [sec.to_ne_bytes(), usec.to_ne_bytes()].concat()
}

/// The timeout a blocking read of `fd` gets after SO_RCVTIMEO = `tv`.
fn read_timeout(n: &mut Net, fd: c_int, tv: &[u8]) -> Option<std::time::Duration> {
    let sol = libc::SOL_SOCKET;
    assert_eq!(n.s.setsockopt(fd, sol, libc::SO_RCVTIMEO, tv), Some(Ok(0)));
    let mut buf = [0u8; 4];
    n.s.io(fd, &mut Io::Read(&mut buf, false), |_| false)
        .unwrap()
        .timeout
}

#[test]
fn timeouts_beyond_any_deadline_are_none_and_negative_ones_zero() {
    let mut n = Net::new();
    n.listen_dual();
    let (_, fd) = n.connect(0);
    // Linux: "for ever" (a deadline computed from it must not overflow).
    assert_eq!(read_timeout(&mut n, fd, &timeval_bytes(i64::MAX, 0)), None);
    // Linux: zero ticks, EAGAIN at once.
    assert_eq!(
        read_timeout(&mut n, fd, &timeval_bytes(-1, 0)),
        Some(std::time::Duration::ZERO)
    );
    assert_eq!(read_timeout(&mut n, fd, &timeval_bytes(0, 0)), None);
}

#[test]
fn an_unsupported_option_leaves_the_identity_socket_unchanged() {
    let mut n = Net::new();
    n.listen_dual();
    let (_, fd) = n.connect(0);
    assert_eq!(
        n.s.setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_THIN_LINEAR_TIMEOUTS,
            &int(1)
        ),
        Some(Err(libc::ENOPROTOOPT))
    );
    // The kernel's checks still come first.
    assert_eq!(
        n.s.setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_THIN_LINEAR_TIMEOUTS, &[1]),
        Some(Err(libc::EINVAL))
    );
    let touched = n
        .log
        .borrow()
        .kernel_opts
        .iter()
        .any(|o| (o.0, o.2) == (fd, libc::TCP_THIN_LINEAR_TIMEOUTS));
    assert!(
        !touched,
        "the identity socket holds the value of a failed call"
    );
}

#[test]
fn an_error_after_a_partial_transfer_is_the_next_calls() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    n.client.send(c, b"abc").unwrap();
    n.client.flush(n.now.get());
    n.settle();
    n.client.abort(c).unwrap();
    n.client.flush(n.now.get());
    n.settle();
    // What the runtime's MSG_WAITALL loop does: 3 bytes, then the reset; it returns 3 and
    // keeps the error.
    let mut buf = [0u8; 10];
    let t =
        n.s.io(fd, &mut Io::Read(&mut buf[..], false), |_| false)
            .unwrap();
    assert_eq!(t.result, Ok(3));
    let t =
        n.s.io(fd, &mut Io::Read(&mut buf[3..], false), |_| false)
            .unwrap();
    assert_eq!(t.result, Err(SockError::Reset));
    n.s.keep_error(fd, SockError::Reset);
    assert_eq!(n.read(fd, false), Err(SockError::Reset));
    assert_eq!(n.read(fd, false).unwrap(), b"");
}

#[test]
fn keepalive_times_are_the_identity_sockets() {
    let mut n = Net::new();
    n.listen_dual();
    let (_, fd) = n.connect(0);
    let (sol, tcp) = (libc::SOL_SOCKET, libc::IPPROTO_TCP);
    assert_eq!(
        n.s.setsockopt(fd, tcp, libc::TCP_KEEPIDLE, &int(42)),
        Some(Ok(0))
    );
    assert_eq!(
        n.s.setsockopt(fd, sol, libc::SO_KEEPALIVE, &int(1)),
        Some(Ok(0))
    );
    // The stack probes after the socket's idle time: an idle connection is probed after 42 s,
    // not 7200 s (seen as a keepalive timer due within a minute).
    let now = n.now.get();
    let due = n.s.stack().unwrap().next_deadline().unwrap();
    assert!(
        due <= now + smoltcp::time::Duration::from_secs(43),
        "{due} vs {now}"
    );
}

#[test]
fn linger_zero_resets_on_close() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    let linger = [int(1), int(0)].concat();
    assert_eq!(
        n.s.setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger),
        Some(Ok(0))
    );
    assert!(n.s.close(fd));
    n.settle();
    let mut buf = [0u8; 8];
    assert_eq!(n.client.recv(c, &mut buf), Err(SockError::Reset));
}

#[test]
fn receive_and_send_timeouts_reach_the_blocking_calls() {
    let mut n = Net::new();
    n.listen_dual();
    let (_, fd) = n.connect(0);
    let tv = |ms: i64| {
        [
            (ms / 1000).to_ne_bytes(),
            ((ms % 1000) * 1000).to_ne_bytes(),
        ]
        .concat()
    };
    let sol = libc::SOL_SOCKET;
    assert_eq!(
        n.s.setsockopt(fd, sol, libc::SO_RCVTIMEO, &tv(200)),
        Some(Ok(0))
    );
    assert_eq!(
        n.s.setsockopt(fd, sol, libc::SO_SNDTIMEO, &tv(1500)),
        Some(Ok(0))
    );
    let mut buf = [0u8; 4];
    let t =
        n.s.io(fd, &mut Io::Read(&mut buf, false), |_| false)
            .unwrap();
    assert_eq!(t.timeout, Some(std::time::Duration::from_millis(200)));
    let t = n.s.io(fd, &mut Io::Write(b"x"), |_| false).unwrap();
    assert_eq!(t.timeout, Some(std::time::Duration::from_millis(1500)));
    // Zero: no timeout.
    assert_eq!(
        n.s.setsockopt(fd, sol, libc::SO_RCVTIMEO, &tv(0)),
        Some(Ok(0))
    );
    let t =
        n.s.io(fd, &mut Io::Read(&mut buf, false), |_| false)
            .unwrap();
    assert_eq!(t.timeout, None);
}

#[test]
fn so_error_reports_a_reset_once() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    n.client.abort(c).unwrap();
    n.client.flush(n.now.get());
    n.settle();
    assert_eq!(
        get_int(&mut n, fd, libc::SOL_SOCKET, libc::SO_ERROR),
        Some(Ok(libc::ECONNRESET))
    );
    assert_eq!(
        get_int(&mut n, fd, libc::SOL_SOCKET, libc::SO_ERROR),
        Some(Ok(0))
    );
}

#[test]
fn peer_and_local_names_of_a_connection() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    let client_port = n.client.local_addr(c).unwrap().port();
    assert_eq!(
        n.s.name(fd, true),
        Some(Ok(SocketAddrV4::new(CLIENT, client_port).into()))
    );
    assert_eq!(
        n.s.name(fd, false),
        Some(Ok(SocketAddrV4::new(SERVER, PORT).into()))
    );
    // A dual listener's name is the kernel socket's.
    assert_eq!(n.s.name(LISTEN_FD, false), None);
}

// ------------------------------------------------------------------ epoll

fn pass(n: &mut Net, epfd: c_int) -> Vec<(u32, u64)> {
    let mut out = [std::mem::MaybeUninit::<libc::epoll_event>::uninit(); 8];
    let k =
        n.s.epoll_pass(epfd, 8, &mut out, true, true)
            .expect("an epoll of ours")
            .n;
    out[..k]
        .iter()
        // SAFETY: epoll_pass wrote the first k entries.
        .map(|e| unsafe { e.assume_init() })
        .map(|e| (e.events, e.u64))
        .collect()
}

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;
const ET: u32 = libc::EPOLLET as u32;

#[test]
fn epoll_ctl_follows_linux() {
    let mut n = Net::new();
    n.listen_dual();
    let (_, fd) = n.connect(0);
    // A kernel fd: the kernel's set alone.
    assert_eq!(
        n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, 3, Some((IN, 0))),
        None
    );
    // Not an epoll instance.
    assert_eq!(
        n.s.epoll_ctl(20, libc::EPOLL_CTL_ADD, fd, Some((IN, 0))),
        Some(Err(libc::EINVAL))
    );
    // MOD/DEL before any ADD: ENOENT.
    assert_eq!(
        n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_MOD, fd, Some((IN, 0))),
        Some(Err(libc::ENOENT))
    );
    assert_eq!(
        n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, fd, None),
        Some(Err(libc::EFAULT))
    );
    let added =
        n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, fd, Some((IN, 7)));
    assert_eq!(added.map(|r| r.map(|c| c.kernel_side)), Some(Ok(false)));
    assert_eq!(
        n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, fd, Some((IN, 7))),
        Some(Err(libc::EEXIST))
    );
    assert_eq!(
        n.s.epoll_ctl(EPOLL_FD, 99, fd, Some((IN, 7))),
        Some(Err(libc::EINVAL))
    );
    // The kernel side of a dual listener joins the kernel's set too.
    let l =
        n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, LISTEN_FD, Some((IN, 1)));
    assert_eq!(l.map(|r| r.map(|c| c.kernel_side)), Some(Ok(true)));
    assert_eq!(
        n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_DEL, fd, None)
            .map(|r| r.is_ok()),
        Some(true)
    );
    assert_eq!(
        n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_DEL, fd, None),
        Some(Err(libc::ENOENT))
    );
}

/// A dual listener with connections on both sides is one socket ready to read: the kernel's
/// event for its kernel side joins ours (same data), as Linux reports a socket once; another
/// kernel fd's event stays.
#[test]
fn a_dual_listener_ready_on_both_sides_is_reported_once() {
    let mut n = Net::new();
    n.listen_dual();
    n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, LISTEN_FD, Some((IN, 1)))
        .unwrap()
        .unwrap();
    n.client_connects(PORT);
    n.settle();
    let mut out = [std::mem::MaybeUninit::<libc::epoll_event>::uninit(); 8];
    let p =
        n.s.epoll_pass(EPOLL_FD, 8, &mut out, true, true)
            .expect("ours");
    assert_eq!(p.n, 1);
    assert!(p.paired);
    let ev = |events: u32, u64| libc::epoll_event { events, u64 };
    // What the kernel's set gives after ours: an fd with the listener's data while the
    // listener's kernel side has nothing (another fd's event: kept), then the listener's
    // kernel side and a pipe.
    let mut all = [ev(IN, 1), ev(IN, 1), ev(IN | OUT, 5)];
    assert_eq!(n.s.epoll_fold_paired(EPOLL_FD, p.call, &mut all, 1, 3), 3);
    n.log.borrow_mut().kernel_readable = true;
    let left = n.s.epoll_fold_paired(EPOLL_FD, p.call, &mut all, 1, 3);
    assert_eq!(left, 2);
    let got: Vec<(u32, u64)> = all[..left].iter().map(|e| (e.events, e.u64)).collect();
    assert_eq!(got, [(IN, 1), (IN | OUT, 5)]);
    // A wait that did not report it folds nothing.
    let mut all = [ev(IN, 5), ev(IN, 1)];
    assert_eq!(
        n.s.epoll_fold_paired(EPOLL_FD, p.call + 1, &mut all, 1, 2),
        2
    );
    // Deleted from the set: not paired any more.
    n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_DEL, LISTEN_FD, None)
        .unwrap()
        .unwrap();
    let p =
        n.s.epoll_pass(EPOLL_FD, 8, &mut out, true, true)
            .expect("ours");
    assert!(!p.paired);
}

#[test]
fn epoll_reports_data_and_writability_and_adding_a_ready_fd_wakes_waiters() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    assert!(!n.s.is_epoll(EPOLL_FD));
    let wakes = n.log.borrow().wakes;
    n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, fd, Some((IN | OUT, 42)))
        .unwrap()
        .unwrap();
    assert!(n.s.is_epoll(EPOLL_FD));
    // Writable at once: a thread blocked on the set must look.
    assert!(n.log.borrow().wakes > wakes);
    assert_eq!(pass(&mut n, EPOLL_FD), vec![(OUT, 42)]);
    n.client.send(c, b"ping").unwrap();
    n.client.flush(n.now.get());
    n.settle();
    assert_eq!(pass(&mut n, EPOLL_FD), vec![(IN | OUT, 42)]);
    // Level-triggered: reported again while it holds.
    assert_eq!(pass(&mut n, EPOLL_FD), vec![(IN | OUT, 42)]);
    assert_eq!(n.read(fd, false).unwrap(), b"ping");
    assert_eq!(pass(&mut n, EPOLL_FD), vec![(OUT, 42)]);
}

#[test]
fn an_edge_triggered_listener_reports_each_queued_connection() {
    let mut n = Net::new();
    n.listen_dual();
    n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, LISTEN_FD, Some((IN | ET, 1)))
        .unwrap()
        .unwrap();
    for round in 0..2 {
        n.client_connects(PORT);
        n.settle();
        assert_eq!(pass(&mut n, EPOLL_FD), vec![(IN, 1)], "connection {round}");
        assert_eq!(pass(&mut n, EPOLL_FD), vec![], "connection {round}, again");
    }
    assert_eq!(n.s.stack().unwrap().accept_queue_len(PORT), 2);
}

#[test]
fn a_closed_fd_leaves_the_epoll_set_and_a_set_made_again_is_another() {
    let mut n = Net::new();
    n.listen_dual();
    let (_, fd) = n.connect(0);
    n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, fd, Some((OUT, 5)))
        .unwrap()
        .unwrap();
    let (_, first) = n.s.epoll_ids(EPOLL_FD).unwrap();
    assert!(n.s.close(fd));
    assert_eq!(pass(&mut n, EPOLL_FD), vec![]);
    assert!(n.s.close(EPOLL_FD));
    assert_eq!(n.s.epoll_ids(EPOLL_FD), None);
    // The same fd number, a new set: a wait that registered the old one with the kernel must
    // register again (the kernel dropped the old registration with the old file).
    let (_, fd) = n.connect(0);
    n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, fd, Some((OUT, 5)))
        .unwrap()
        .unwrap();
    let (_, second) = n.s.epoll_ids(EPOLL_FD).unwrap();
    assert_ne!(first, second);
}

#[test]
fn a_dup_of_an_epoll_fd_reports_after_the_original_is_closed() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, fd, Some((IN, 9)))
        .unwrap()
        .unwrap();
    let dup = 60;
    n.s.alias(EPOLL_FD, dup).unwrap();
    assert!(n.s.close(EPOLL_FD));
    n.client.send(c, b"x").unwrap();
    n.client.flush(n.now.get());
    n.settle();
    assert_eq!(pass(&mut n, dup), vec![(IN, 9)]);
}

#[test]
fn events_delivered_by_a_poll_wake_waiters() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, fd, Some((IN, 3)))
        .unwrap()
        .unwrap();
    let wakes = n.log.borrow().wakes;
    n.client.send(c, b"wake").unwrap();
    n.client.flush(n.now.get());
    assert!(n.s.pump());
    assert!(n.log.borrow().wakes > wakes);
}

/// A poll that delivers to one thread's epoll set wakes the threads waiting on that set or on
/// that socket, not a thread waiting on another set (a thread pool's idle workers sleep on).
#[test]
fn a_delivery_wakes_only_the_waiters_of_the_set_and_socket_it_concerns() {
    const OTHER_EP: c_int = 12;
    let mut n = Net::new();
    n.listen_dual();
    let (ca, a) = n.connect(0);
    let (cb, b) = n.connect(0);
    for (ep, fd) in [(EPOLL_FD, a), (OTHER_EP, b)] {
        n.s.epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, Some((IN, 1)))
            .unwrap()
            .unwrap();
    }
    let key = |n: &Net, fd| n.s.key_of(fd).unwrap();
    let (set_a, set_b) = (key(&n, EPOLL_FD), key(&n, OTHER_EP));
    n.client.send(ca, b"to a").unwrap();
    n.client.flush(n.now.get());
    assert!(n.s.pump());
    let woken = n.log.borrow().woken.clone().expect("a targeted wake-up");
    assert!(
        woken.contains(&set_a) && woken.contains(&key(&n, a)),
        "{woken:?}"
    );
    assert!(
        !woken.contains(&set_b) && !woken.contains(&key(&n, b)),
        "{woken:?}"
    );
    // Data for b while a's entry is still queued: b's set and socket only.
    n.client.send(cb, b"to b").unwrap();
    n.client.flush(n.now.get());
    assert!(n.s.pump());
    let woken = n.log.borrow().woken.clone().expect("a targeted wake-up");
    assert!(
        woken.contains(&set_b) && woken.contains(&key(&n, b)),
        "{woken:?}"
    );
    assert!(!woken.contains(&set_a), "{woken:?}");
    // An epoll_ctl that queues a ready entry wakes that set's waiters.
    n.s.epoll_ctl(OTHER_EP, libc::EPOLL_CTL_ADD, a, Some((IN, 2)))
        .unwrap()
        .unwrap();
    assert_eq!(n.log.borrow().woken, Some(vec![set_b]));
}

// ------------------------------------------------------------------ fork

#[test]
fn a_forked_child_forgets_its_copies_and_leaves_the_parents_connection() {
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    // The child's copy of the fd table (here: a table of its own with the same entry).
    let child_table = FdTable::with_len(4096).unwrap();
    child_table.claim(fd, 0).unwrap();
    let child = Child(&child_table);
    assert_eq!(child.alias(fd, 61), Ok(()));
    assert!(child_table.lookup(61).is_ours());
    assert_eq!(child.alias(3, 62), Ok(()));
    assert!(!child_table.lookup(62).is_ours());
    assert!(child.close(fd));
    assert!(child.close(61));
    assert!(!child.close(fd));
    // The parent's connection is untouched: no FIN, data still flows.
    assert_eq!(n.write(fd, b"parent"), Ok(6));
    assert_eq!(n.client_reads(c).unwrap(), b"parent");
}

/// getsockopt(TCP_INFO) of a connection into a buffer of `len` bytes: (length written, the
/// bytes as a `tcp_info`, zero beyond what was written).
fn tcp_info(n: &mut Net, fd: c_int, len: usize) -> (usize, Vec<u8>) {
    let mut b = vec![0u8; len];
    match n
        .s
        .getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut b)
    {
        Some(Ok(k)) => {
            b.resize(std::mem::size_of::<libc::tcp_info>().max(len), 0);
            (k, b)
        }
        other => panic!("getsockopt(TCP_INFO): {other:?}"),
    }
}

fn field_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn tcp_info_and_tcp_maxseg_are_the_connections() {
    use std::mem::{offset_of, size_of};
    let mut n = Net::new();
    n.listen_dual();
    let (c, fd) = n.connect(0);
    let size = size_of::<libc::tcp_info>();
    let (k, b) = tcp_info(&mut n, fd, size + 16);
    // Linux writes sizeof(struct tcp_info) at most.
    assert_eq!(k, size);
    assert_eq!(b[offset_of!(libc::tcp_info, tcpi_state)], 1, "ESTABLISHED");
    // Full segments carry 1448 bytes beside the timestamp option, as Linux reports them.
    let mss = field_u32(&b, offset_of!(libc::tcp_info, tcpi_snd_mss));
    assert_eq!(mss, 1448);
    assert_eq!(field_u32(&b, offset_of!(libc::tcp_info, tcpi_advmss)), 1460);
    assert_eq!(field_u32(&b, offset_of!(libc::tcp_info, tcpi_pmtu)), 1500);
    // The handshake is the first RTT sample; the RTO has its 200 ms floor.
    assert_eq!(field_u32(&b, offset_of!(libc::tcp_info, tcpi_rto)), 200_000);
    let handshake_rtt = field_u32(&b, offset_of!(libc::tcp_info, tcpi_rtt));
    assert!(handshake_rtt > 0);
    // The congestion window (ten segments to start, as Linux's), the options negotiated
    // (timestamps, SACK, window scaling), segments counted; fields the stack does not know
    // are zero.
    assert_eq!(field_u32(&b, offset_of!(libc::tcp_info, tcpi_snd_cwnd)), 10);
    assert_eq!(
        field_u32(&b, offset_of!(libc::tcp_info, tcpi_snd_ssthresh)),
        0x7fff_ffff
    );
    assert_eq!(b[offset_of!(libc::tcp_info, tcpi_options)], 1 | 2 | 4);
    assert!(field_u32(&b, offset_of!(libc::tcp_info, tcpi_segs_in)) >= 1);
    assert_eq!(field_u32(&b, offset_of!(libc::tcp_info, tcpi_lost)), 0);
    assert_eq!(
        get_int(&mut n, fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG),
        Some(Ok(1448))
    );

    // Data the client acknowledged: another RTT sample.
    assert_eq!(n.write(fd, b"hello"), Ok(5));
    assert_eq!(n.client_reads(c).unwrap(), b"hello");
    // (Past the client's delayed ACK.)
    for _ in 0..500 {
        n.now.set(n.now.get() + Duration::from_millis(1));
        n.s.pump();
        n.client.poll(n.now.get());
    }
    let (_, b) = tcp_info(&mut n, fd, size);
    assert!(field_u32(&b, offset_of!(libc::tcp_info, tcpi_rtt)) > 0);

    // A shorter buffer gets the first bytes and that length, as Linux gives; the state is the
    // first byte.
    let (k, b) = tcp_info(&mut n, fd, 8);
    assert_eq!(k, 8);
    assert_eq!(b[0], 1);
    assert_eq!(&b[8..], &vec![0u8; size - 8][..]);
    let (k, _) = tcp_info(&mut n, fd, 0);
    assert_eq!(k, 0);
    let mut two = [0u8; 2];
    assert_eq!(
        n.s.getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG, &mut two),
        Some(Ok(2))
    );
    assert_eq!(two, (1448 as c_int).to_ne_bytes()[..2]);

    // The peer's FIN: CLOSE-WAIT (8).
    let peer = n.client.shutdown_write(c);
    assert_eq!(peer, Ok(()));
    n.settle();
    let (_, b) = tcp_info(&mut n, fd, size);
    assert_eq!(b[0], 8, "CLOSE_WAIT");
}

/// A listener in three sets with EPOLLEXCLUSIVE: a new connection is reported by the sets up
/// to the first one a thread waits on, in the order they added it (Linux's one woken
/// instance), and by all of them when no thread waits.
#[test]
fn an_exclusive_listener_is_reported_up_to_the_first_set_with_a_waiter() {
    let exclusive = IN | libc::EPOLLEXCLUSIVE as u32;
    let sets = [EPOLL_FD, EPOLL_FD + 1, EPOLL_FD + 2];
    for waited in [Some(1), None] {
        let mut n = Net::new();
        n.listen_dual();
        for (k, ep) in sets.iter().enumerate() {
            n.s.epoll_ctl(
                *ep,
                libc::EPOLL_CTL_ADD,
                LISTEN_FD,
                Some((exclusive, k as u64)),
            )
            .unwrap()
            .unwrap();
        }
        if let Some(w) = waited {
            let key = n.s.key_of(sets[w]).unwrap();
            n.log.borrow_mut().waiting.push(key);
        }
        n.client_connects(PORT);
        n.settle();
        let told: Vec<bool> = sets
            .iter()
            .map(|&ep| !pass(&mut n, ep).is_empty())
            .collect();
        let want = match waited {
            Some(_) => vec![true, true, false],
            None => vec![true, true, true],
        };
        assert_eq!(told, want, "waited on {waited:?}");
    }
}

// ------------------------------------------------------------------ connect

/// The application's socket that connects (a kernel socket the table has never seen).
const CONNECT_FD: c_int = 70;

fn connect_to(n: &mut Net, ip: Ipv4Addr, port: u16, bound: Option<u16>) -> super::Answer<c_int> {
    let to = SocketAddrV4::new(ip, port);
    n.s.connect(CONNECT_FD, to, Family::Inet, true, bound, None)
}

#[test]
fn a_nonblocking_connect_is_in_progress_then_connected_and_says_so_as_linux() {
    let mut n = Net::new();
    n.client
        .listen(7000, 8, n.client.default_options())
        .unwrap();
    assert_eq!(
        connect_to(&mut n, CLIENT, 7000, None),
        Some(Err(libc::EINPROGRESS))
    );
    n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, CONNECT_FD, Some((OUT, 4)))
        .unwrap()
        .unwrap();
    // Before the handshake: again is EALREADY, and the socket is not writable.
    assert_eq!(
        connect_to(&mut n, CLIENT, 7000, None),
        Some(Err(libc::EALREADY))
    );
    assert_eq!(n.s.connect_result(CONNECT_FD), None);
    n.settle();
    assert_eq!(pass(&mut n, EPOLL_FD), vec![(OUT, 4)]);
    // The first connect() after the handshake says 0 (Linux's SS_CONNECTING), then EISCONN.
    assert_eq!(connect_to(&mut n, CLIENT, 7000, None), Some(Ok(0)));
    assert_eq!(
        connect_to(&mut n, CLIENT, 7000, None),
        Some(Err(libc::EISCONN))
    );
    assert_eq!(n.s.connect_result(CONNECT_FD), Some(Ok(0)));
    let (c, from) = n.client.accept(7000).unwrap();
    assert_eq!(*from.ip(), SERVER);
    assert!((32768..61000).contains(&from.port()), "{from}");
    assert_eq!(
        n.s.name(CONNECT_FD, true),
        Some(Ok(SocketAddr::from(SocketAddrV4::new(CLIENT, 7000))))
    );
    assert_eq!(
        n.s.name(CONNECT_FD, false),
        Some(Ok(SocketAddr::from(SocketAddrV4::new(SERVER, from.port()))))
    );
    // Data both ways.
    assert_eq!(n.write(CONNECT_FD, b"ping"), Ok(4));
    assert_eq!(n.client_reads(c).unwrap(), b"ping");
    n.client.send(c, b"pong").unwrap();
    n.client.flush(n.now.get());
    n.settle();
    assert_eq!(n.read(CONNECT_FD, false).unwrap(), b"pong");
}

#[test]
fn a_connect_to_a_closed_port_is_refused_once() {
    let mut n = Net::new();
    assert_eq!(
        connect_to(&mut n, CLIENT, 7001, None),
        Some(Err(libc::EINPROGRESS))
    );
    n.settle();
    let r = n.s.readiness(CONNECT_FD).unwrap();
    assert!(r.error() && r.hup(), "{r:?}");
    // A second connect() takes the error, as Linux's takes sk_err.
    assert_eq!(
        connect_to(&mut n, CLIENT, 7001, None),
        Some(Err(libc::ECONNREFUSED))
    );
    // The socket is unconnected again: the next connect() starts a new handshake, which
    // succeeds once someone listens, on the same fd and through the same epoll entry.
    n.s.epoll_ctl(EPOLL_FD, libc::EPOLL_CTL_ADD, CONNECT_FD, Some((OUT, 9)))
        .unwrap()
        .unwrap();
    n.client
        .listen(7001, 8, n.client.default_options())
        .unwrap();
    // TCP_NODELAY taken on the failed connection (no call of the kernel's) reaches the kernel
    // socket before the next connection reads its options there.
    assert_eq!(
        n.s.setsockopt(
            CONNECT_FD,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &1i32.to_ne_bytes()
        ),
        Some(Ok(0))
    );
    let nodelay_in_kernel = |n: &Net| {
        n.log
            .borrow()
            .kernel_opts
            .iter()
            .any(|o| (o.0, o.2) == (CONNECT_FD, libc::TCP_NODELAY) && o.3 == 1i32.to_ne_bytes())
    };
    assert!(!nodelay_in_kernel(&n));
    assert_eq!(
        connect_to(&mut n, CLIENT, 7001, None),
        Some(Err(libc::EINPROGRESS))
    );
    assert!(nodelay_in_kernel(&n));
    n.settle();
    assert_eq!(pass(&mut n, EPOLL_FD), vec![(OUT, 9)]);
    assert_eq!(connect_to(&mut n, CLIENT, 7001, None), Some(Ok(0)));
    let (c, _) = n.client.accept(7001).unwrap();
    assert_eq!(n.write(CONNECT_FD, b"again"), Ok(5));
    assert_eq!(n.client_reads(c).unwrap(), b"again");
}

#[test]
fn a_failure_whose_error_so_error_took_is_econnaborted_to_connect() {
    let mut n = Net::new();
    assert_eq!(
        connect_to(&mut n, CLIENT, 7005, None),
        Some(Err(libc::EINPROGRESS))
    );
    n.settle();
    let mut v = [0u8; 4];
    assert_eq!(
        n.s.getsockopt(CONNECT_FD, libc::SOL_SOCKET, libc::SO_ERROR, &mut v),
        Some(Ok(4))
    );
    assert_eq!(c_int::from_ne_bytes(v), libc::ECONNREFUSED);
    assert_eq!(
        connect_to(&mut n, CLIENT, 7005, None),
        Some(Err(libc::ECONNABORTED))
    );
    assert_eq!(
        connect_to(&mut n, CLIENT, 7005, None),
        Some(Err(libc::EINPROGRESS))
    );
}

#[test]
fn a_blocking_connects_result_is_taken_once() {
    let mut n = Net::new();
    assert_eq!(
        connect_to(&mut n, CLIENT, 7002, None),
        Some(Err(libc::EINPROGRESS))
    );
    n.settle();
    assert_eq!(
        n.s.connect_result(CONNECT_FD),
        Some(Err(libc::ECONNREFUSED))
    );
}

#[test]
fn connect_leaves_loopback_and_other_subnets_to_the_kernel() {
    let mut n = Net::new();
    for ip in [Ipv4Addr::LOCALHOST, Ipv4Addr::new(198, 18, 1, 1), SERVER] {
        assert_eq!(connect_to(&mut n, ip, 7003, None), None, "{ip}");
    }
    assert!(n.s.stack().is_none(), "nothing started the stack");
}

#[test]
fn connect_from_a_bound_port_uses_it() {
    let mut n = Net::new();
    n.client
        .listen(7004, 8, n.client.default_options())
        .unwrap();
    assert_eq!(
        connect_to(&mut n, CLIENT, 7004, Some(40123)),
        Some(Err(libc::EINPROGRESS))
    );
    n.settle();
    let (_, from) = n.client.accept(7004).unwrap();
    assert_eq!(from.port(), 40123);
}

/// TCP_NODELAY set on the socket before connect() holds for the stack's connection: two
/// small writes leave at once, where Nagle holds the second until the first is acknowledged.
#[test]
fn options_set_before_connect_reach_the_connection() {
    for nodelay in [false, true] {
        let mut n = Net::new();
        n.client
            .listen(7005, 8, n.client.default_options())
            .unwrap();
        if nodelay {
            n.log.borrow_mut().kernel_opts.push((
                CONNECT_FD,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                1i32.to_ne_bytes().to_vec(),
            ));
        }
        assert_eq!(
            connect_to(&mut n, CLIENT, 7005, None),
            Some(Err(libc::EINPROGRESS))
        );
        n.settle();
        assert_eq!(n.write(CONNECT_FD, b"a"), Ok(1));
        assert_eq!(n.write(CONNECT_FD, b"b"), Ok(1));
        let frames = n.client.link().pending();
        assert_eq!(frames, if nodelay { 2 } else { 1 }, "nodelay {nodelay}");
    }
}

/// A stack that cannot start fails a connect() the rule gives it, says why once, and never
/// hands the destination to the kernel.
#[test]
fn a_connect_whose_stack_cannot_start_fails_and_says_why_once() {
    let mut n = Net::with(config(&[]), Some("no hugepages and no memory"));
    for _ in 0..2 {
        assert_eq!(
            connect_to(&mut n, CLIENT, 7006, None),
            Some(Err(libc::ENETUNREACH))
        );
    }
    let said = n.said();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].starts_with("connect() to 198.18.0.1:7006 through the stack fails")
            && said[0].contains("no hugepages"),
        "{said:?}"
    );
}

/// At exit the stack closes what the process left open, as the kernel closes a process's
/// sockets: a FIN after what was written (the peer reads it all, then end of stream), a reset
/// where data was left unread, and a listener's queued connections reset.
#[test]
fn at_exit_every_connection_closes_as_the_kernels_would() {
    let mut n = Net::new();
    n.listen_dual();
    let (idle, fd) = n.connect(0);
    assert_eq!(n.write(fd, b"last words"), Ok(10));
    let (unread, _) = n.connect(0);
    n.client.send(unread, b"never read").unwrap();
    n.settle();
    let queued = n.client_connects(PORT);
    n.settle();
    n.s.close_all();
    n.settle();
    // The FINs are acknowledged (the peer's delayed ACK comes within 40 ms).
    for _ in 0..10 {
        if n.s.closing_unacked() == 0 {
            break;
        }
        n.now.set(n.now.get() + Duration::from_millis(10));
        n.settle();
    }
    assert_eq!(n.s.closing_unacked(), 0);
    assert_eq!(n.client_reads(idle), Ok(b"last words".to_vec()));
    assert_eq!(n.client_reads(idle), Ok(Vec::new()), "end of stream");
    let mut buf = [0u8; 8];
    assert_eq!(n.client.recv(unread, &mut buf), Err(SockError::Reset));
    assert_eq!(n.client.recv(queued, &mut buf), Err(SockError::Reset));
}

/// An AF_INET6 socket shows the stack's addresses v4-mapped, and the wildcard (an unconnected
/// socket's source) as `::`, as Linux resets an IPv6 socket's source address.
#[test]
fn an_inet6_socket_shows_addresses_v4_mapped_and_the_wildcard_as_unspecified() {
    let a = SocketAddrV4::new(SERVER, 40_000);
    assert_eq!(
        Family::Inet6.addr(a).to_string(),
        format!("[::ffff:{SERVER}]:40000")
    );
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 40_001);
    assert_eq!(Family::Inet6.addr(any).to_string(), "[::]:40001");
    assert_eq!(Family::Inet.addr(any).to_string(), "0.0.0.0:40001");
}
