//! Per-packet cost of the stack with 10 and with 10,000 open connections.
//!
//!     cargo bench -p userstack --bench scale
//!
//! Two `Stack<MemLink>` back to back (server 198.18.0.2, client 198.18.0.1), simulated time.
//! For each N: open N connections (the server accepts as they complete, backlog 4096, so no
//! SYN is ever dropped and retried), all established and idle; then run ping-pong exchanges,
//! each on a connection drawn at random from all N, so the demux hash map, the per-connection
//! state and the timer heap are touched all over. Each round the client sends one 16-byte
//! request on each of `SCALE_BATCH` distinct random connections (default 8, the same at both
//! N so the per-poll overhead is shared alike), then
//! the *server turn* runs: `poll` (receive + demux + TCP), `take_events`, `recv` + `send` of
//! the echo on every readable connection, `flush` (transmit); then the client receives the
//! echoes and ACKs each at once (no delayed ACK on the client), so the server gets a pure ACK
//! per exchange in the next turn: 2 frames in and 1 out per exchange at any N. The server has
//! the stack's default 1 ms delayed ACK, so its echo carries the ACK of the request.
//!
//! Reported, per N: wall-clock time of the server turns only (client work is not timed)
//! divided by the frames the server received in them (`server ns/rx frame`), and divided by
//! the exchanges (`server ns/exchange`, one request in and one echo out, plus its share of
//! pure ACKs); then the ratio N=10000 / N=10. The best of `SCALE_REPS` (default 5)
//! repetitions is reported, after a warm-up pass over every connection.
//!
//! Environment:
//! - `SCALE_N=10000`: run only that N (e.g. for callgrind); default: 10 and 10000.
//! - `SCALE_EXCHANGES` (default 200000 per repetition), `SCALE_REPS` (default 5),
//!   `SCALE_BATCH` (default 8), `SCALE_BUF` (socket buffers in bytes, default 4096 each way:
//!   10,000 connections x 2 stacks x 2 buffers).
//!
//! Instruction counts (no hardware counters on these VMs): run one N under callgrind and
//! collect only inside the measured server turns (`server_turn`; the warm-up runs the same
//! code inlined elsewhere), then divide `Collected` (Ir) by the `server rx frames (timed)` printed
//! (with SCALE_REPS=1 that is every collected frame):
//!
//!     cargo bench -p userstack --bench scale --no-run   # prints the executable's path
//!     SCALE_N=10000 SCALE_EXCHANGES=20000 SCALE_REPS=1 valgrind --tool=callgrind \
//!         --collect-atstart=no --toggle-collect='*server_turn*' \
//!         target/release/deps/scale-<hash>
//!     callgrind_annotate callgrind.out.<pid> | head -30
//!
//! (and the same with SCALE_N=10.)

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant as WallInstant;

use smoltcp::time::{Duration, Instant};
use userstack::config::{parse_cidr, CongestionControl};
use userstack::link::MemLink;
use userstack::{ConnId, Event, SockError, Stack, TcpOptions};

const PORT: u16 = 7777;
const MSG: usize = 16;
const STEP: Duration = Duration::from_micros(10);

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    match std::env::var(k) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{k}={v:?} is not a valid number")),
        Err(_) => d,
    }
}

struct Params {
    exchanges: usize,
    reps: usize,
    batch: usize,
    buf: usize,
}

struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (((x >> 32) * n as u64) >> 32) as usize
    }
}

/// The server's options: the stack's defaults (delayed ACK 1 ms, so the echo carries the ACK
/// of the request) with small buffers and TCP_NODELAY.
fn opts(buf: usize) -> TcpOptions {
    TcpOptions {
        nodelay: true,
        keepalive: None,
        rcvbuf: buf,
        sndbuf: buf,
        ack_delay: Some(std::time::Duration::from_millis(1)),
        cc: CongestionControl::Cubic,
        mss: None,
        ttl: None,
        tos: 0,
        defer_accept: None,
    }
}

/// The client ACKs every echo at once: each exchange is then exactly two frames in (request,
/// pure ACK) and one out for the server, whatever N (with a delayed ACK the next request
/// would carry the ACK at N=10 but not at N=10000, and the mix would differ).
fn client_opts(buf: usize) -> TcpOptions {
    TcpOptions {
        ack_delay: None,
        ..opts(buf)
    }
}

struct Bench {
    server: Stack<MemLink>,
    client: Stack<MemLink>,
    now: Instant,
    /// (client handle, server handle) per connection.
    conns: Vec<(ConnId, ConnId)>,
    events: Vec<Event>,
    buf: Vec<u8>,
}

impl Bench {
    fn new(p: &Params) -> Bench {
        let (a, b) = MemLink::pair([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let now = Instant::from_secs(1);
        let server = Stack::with_link(
            a,
            parse_cidr("server", "198.18.0.2/24").unwrap(),
            None,
            None,
            opts(p.buf),
            now,
        );
        let client = Stack::with_link(
            b,
            parse_cidr("client", "198.18.0.1/24").unwrap(),
            None,
            None,
            client_opts(p.buf),
            now,
        );
        Bench {
            server,
            client,
            now,
            conns: Vec::new(),
            events: Vec::new(),
            buf: vec![0u8; 4096],
        }
    }

    /// Opens `n` connections, at most 1024 handshakes in flight, accepting as they complete.
    fn open(&mut self, n: usize, p: &Params) {
        self.server.listen(PORT, 4096, opts(p.buf)).unwrap();
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), PORT);
        let mut client_ids: Vec<ConnId> = Vec::with_capacity(n);
        let mut by_port = std::collections::HashMap::new();
        let mut server_ids = Vec::with_capacity(n);
        let mut rounds = 0;
        // The first connection resolves ARP; the burst then never waits in the ARP queue.
        let id = self
            .client
            .connect(self.now, dst, client_opts(p.buf))
            .unwrap();
        by_port.insert(self.client.local_addr(id).unwrap().port(), id);
        client_ids.push(id);
        while server_ids.len() < n {
            while !server_ids.is_empty()
                && client_ids.len() < n
                && client_ids.len() - server_ids.len() < 1024
            {
                let id = self
                    .client
                    .connect(self.now, dst, client_opts(p.buf))
                    .unwrap();
                by_port.insert(self.client.local_addr(id).unwrap().port(), id);
                client_ids.push(id);
            }
            self.now += STEP;
            self.client.poll(self.now);
            self.server.poll(self.now);
            while let Ok((sid, peer)) = self.server.accept(PORT) {
                server_ids.push((by_port[&peer.port()], sid));
            }
            rounds += 1;
            assert!(
                rounds < 1_000_000,
                "handshakes never completed ({} of {n})",
                server_ids.len()
            );
        }
        // Let the last ACKs and timers settle, and drain the events of the set-up.
        for _ in 0..300 {
            self.now += STEP;
            self.client.poll(self.now);
            self.server.poll(self.now);
        }
        self.server.take_events(&mut self.events);
        self.client.take_events(&mut self.events);
        assert_eq!(self.server.connections(), n);
        assert_eq!(self.client.connections(), n);
        let (ss, cs) = (self.server.stats(), self.client.stats());
        assert_eq!(ss.drop_syn_backlog, 0, "{ss}");
        assert_eq!(cs.drop_arp_unresolved + cs.tcp_retransmits, 0, "{cs}");
        self.conns = server_ids;
    }

    /// One round: requests on `batch` random connections, the server turn, the echoes back.
    /// Returns the wall time of the server turn.
    fn round(
        &mut self,
        rng: &mut Xorshift,
        batch: usize,
        picked: &mut Vec<usize>,
        measured: bool,
        active: usize,
    ) -> u64 {
        self.now += STEP;
        picked.clear();
        let msg = [0x5au8; MSG];
        // `batch` distinct connections (at most all of them).
        let active = active.min(self.conns.len());
        let batch = batch.min(active);
        while picked.len() < batch {
            let i = rng.below(active);
            if picked.contains(&i) {
                continue;
            }
            picked.push(i);
            let n = self.client.send(self.conns[i].0, &msg).expect("send");
            assert_eq!(n, MSG);
        }
        self.client.flush(self.now);
        let t = WallInstant::now();
        if measured {
            server_turn(&mut self.server, self.now, &mut self.events, &mut self.buf);
        } else {
            // Inlined here, so callgrind does not count it as `server_turn`.
            turn(&mut self.server, self.now, &mut self.events, &mut self.buf);
        }
        let ns = t.elapsed().as_nanos() as u64;
        client_poll(&mut self.client, self.now);
        let mut back = [0u8; MSG];
        for &i in picked.iter() {
            let id = self.conns[i].0;
            let mut got = 0;
            while got < MSG {
                match self.client.recv(id, &mut back[got..]) {
                    Ok(n) if n > 0 => got += n,
                    r => panic!("echo on connection {i}: {r:?} after {got} bytes"),
                }
            }
        }
        self.client.take_events(&mut self.events);
        ns
    }
}

/// The server side of a measured round: everything the server stack and its application do.
/// (Its own function so callgrind can collect inside it only.)
#[inline(never)]
fn server_turn(server: &mut Stack<MemLink>, now: Instant, events: &mut Vec<Event>, buf: &mut [u8]) {
    turn(server, now, events, buf)
}

#[inline(always)]
fn turn(server: &mut Stack<MemLink>, now: Instant, events: &mut Vec<Event>, buf: &mut [u8]) {
    // One poll takes at most one receive burst (32 frames): poll until the inbox is empty.
    loop {
        server.poll(now);
        server.take_events(events);
        for ev in events.iter() {
            if let Event::Conn(id, _, _) = *ev {
                loop {
                    match server.recv(id, buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let m = server
                                .send(id, &buf[..n])
                                .expect("echo fits the send buffer");
                            assert_eq!(m, n);
                        }
                        Err(SockError::WouldBlock) => break,
                        Err(e) => panic!("server recv: {e}"),
                    }
                }
            }
        }
        server.flush(now);
        black_box(&*events);
        if server.link().pending() == 0 {
            break;
        }
    }
}

/// The client side: receive everything queued (several bursts if needed).
fn client_poll(client: &mut Stack<MemLink>, now: Instant) {
    loop {
        client.poll(now);
        if client.link().pending() == 0 {
            break;
        }
    }
}

#[derive(Clone)]
struct Result1 {
    n: usize,
    server_ns_per_rx: f64,
    server_ns_per_exchange: f64,
    wall_ns_per_exchange: f64,
    rx_frames: u64,
    tx_frames: u64,
    exchanges: u64,
    setup_secs: f64,
}

fn run(n: usize, p: &Params) -> (Result1, Result1) {
    let t_setup = WallInstant::now();
    let mut b = Bench::new(p);
    b.open(n, p);
    let setup_secs = t_setup.elapsed().as_secs_f64();
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let mut picked = Vec::with_capacity(p.batch);
    // Warm-up: every connection once (in order), then some random rounds.
    for chunk in 0..n.div_ceil(p.batch) {
        let lo = chunk * p.batch;
        let hi = (lo + p.batch).min(n);
        b.now += STEP;
        for i in lo..hi {
            b.client.send(b.conns[i].0, &[1u8; MSG]).unwrap();
        }
        b.client.flush(b.now);
        turn(&mut b.server, b.now, &mut b.events, &mut b.buf);
        client_poll(&mut b.client, b.now);
        for i in lo..hi {
            let mut back = [0u8; MSG];
            let mut got = 0;
            while got < MSG {
                match b.client.recv(b.conns[i].0, &mut back[got..]) {
                    Ok(k) => got += k,
                    Err(e) => panic!(
                        "warm-up echo on connection {i}: {e:?}\nserver: {}\nclient: {}\nstate {:?} / {:?}",
                        b.server.stats(),
                        b.client.stats(),
                        b.client.state(b.conns[i].0),
                        b.server.state(b.conns[i].1)
                    ),
                }
            }
        }
    }
    for _ in 0..(p.exchanges / p.batch / 10).max(10) {
        b.round(&mut rng, p.batch, &mut picked, false, n);
    }
    let all = measure(&mut b, &mut rng, &mut picked, p, n, setup_secs);
    // The same stack, with traffic on the first ACTIVE_SET connections only: what N idle open
    // connections cost the active ones (the question smoltcp's linear scans fail).
    let active = measure(&mut b, &mut rng, &mut picked, p, ACTIVE_SET, setup_secs);
    assert_eq!(b.server.connections(), n, "connections were lost");
    (all, active)
}

/// Connections carrying traffic in the "active set" measurement.
const ACTIVE_SET: usize = 10;

fn measure(
    b: &mut Bench,
    rng: &mut Xorshift,
    picked: &mut Vec<usize>,
    p: &Params,
    active: usize,
    setup_secs: f64,
) -> Result1 {
    let n = b.conns.len();
    for _ in 0..(p.exchanges / p.batch / 10).max(10) {
        b.round(rng, p.batch, picked, false, active);
    }
    let mut best: Option<Result1> = None;
    for _ in 0..p.reps {
        let s0 = b.server.stats();
        let mut server_ns = 0u64;
        let mut exchanges = 0u64;
        let t = WallInstant::now();
        while exchanges < p.exchanges as u64 {
            server_ns += b.round(rng, p.batch, picked, true, active);
            exchanges += picked.len() as u64;
        }
        let wall = t.elapsed().as_nanos() as f64;
        let s1 = b.server.stats();
        let rx = s1.rx_frames - s0.rx_frames;
        let tx = s1.tx_frames - s0.tx_frames;
        let r = Result1 {
            n,
            server_ns_per_rx: server_ns as f64 / rx as f64,
            server_ns_per_exchange: server_ns as f64 / exchanges as f64,
            wall_ns_per_exchange: wall / exchanges as f64,
            rx_frames: rx,
            tx_frames: tx,
            exchanges,
            setup_secs,
        };
        if best
            .as_ref()
            .is_none_or(|b| r.server_ns_per_rx < b.server_ns_per_rx)
        {
            best = Some(r);
        }
    }
    best.expect("at least one repetition")
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let p = Params {
        exchanges: env_or("SCALE_EXCHANGES", 200_000),
        reps: env_or("SCALE_REPS", 5usize).max(1),
        batch: env_or("SCALE_BATCH", 8usize).max(1),
        buf: env_or("SCALE_BUF", 4096usize),
    };
    let ns: Vec<usize> = match std::env::var("SCALE_N") {
        Ok(v) => vec![v.parse().expect("SCALE_N must be a number")],
        Err(_) => vec![10, 10_000],
    };
    println!(
        "scale: {} exchanges of {MSG} bytes per repetition, best of {} repetitions, {} distinct random \
         connections per round, {} B socket buffers; timed: server turns only \
         (poll + take_events + recv/send echo + flush)",
        p.exchanges, p.reps, p.batch, p.buf
    );
    let both: Vec<(Result1, Result1)> = ns.iter().map(|&n| run(n, &p)).collect();
    let spread: Vec<Result1> = both.iter().map(|r| r.0.clone()).collect();
    let active: Vec<Result1> = both.iter().map(|r| r.1.clone()).collect();
    println!("\n(1) traffic spread over all open connections (each exchange on a random one):");
    table(&spread);
    println!("\n(2) traffic on {ACTIVE_SET} connections while the others stay open and idle:");
    table(&active);
}

fn table(results: &[Result1]) {
    let mut head = format!("{:<34}", "open connections");
    for r in results {
        head += &format!("{:>12}", r.n);
    }
    if results.len() == 2 {
        head += &format!("{:>10}", "ratio");
    }
    println!("{head}");
    type Row = (&'static str, fn(&Result1) -> f64, bool);
    let rows: [Row; 7] = [
        ("server ns / rx frame", |r| r.server_ns_per_rx, true),
        ("server ns / exchange", |r| r.server_ns_per_exchange, true),
        ("pair wall ns / exchange", |r| r.wall_ns_per_exchange, true),
        (
            "server rx frames / exchange",
            |r| r.rx_frames as f64 / r.exchanges as f64,
            false,
        ),
        (
            "server tx frames / exchange",
            |r| r.tx_frames as f64 / r.exchanges as f64,
            false,
        ),
        ("server rx frames (timed)", |r| r.rx_frames as f64, false),
        ("set-up secs (N handshakes)", |r| r.setup_secs, false),
    ];
    for (name, f, ratio) in rows {
        let mut line = format!("{name:<34}");
        for r in results {
            let v = f(r);
            line += &if v >= 1000.0 || v.fract() == 0.0 {
                format!("{v:>12.0}")
            } else {
                format!("{v:>12.2}")
            };
        }
        if ratio && results.len() == 2 {
            line += &format!("{:>9.2}x", f(&results[1]) / f(&results[0]));
        }
        println!("{line}");
    }
}
