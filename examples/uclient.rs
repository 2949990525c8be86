//! A benchmark client on userstack: the counterpart of `mtcp-client latency` / `bulk` for paths
//! where the peer is another DPDK process (memif), so a kernel-socket client cannot reach it.
//!
//!     MTCP_DEV=memif:/tmp/m.sock,client MTCP_ADDR=198.18.0.1/24 \
//!         uclient latency --addr 198.18.0.2:7777 --count 20000 --size 16 [--warmup 1000]
//!     MTCP_DEV=memif:/tmp/m.sock,client MTCP_ADDR=198.18.0.1/24 \
//!         uclient bulk --addr 198.18.0.2:7777 --bytes 268435456 [--chunk 65536] [--seed 1]
//!
//! Device, address and TCP buffers come from the same MTCP_* variables as `echo`. Each
//! subcommand prints one line in exactly the format of `mtcp-client` (`mode=latency ...`,
//! `mode=bulk ...`) and exits non-zero if a check failed. The payload bytes are the same
//! SplitMix64 stream as mtcp-client's for the same seed, so `sha256=` values are comparable.
//!
//! It is a benchmark client: it busy-polls the stack the whole time (no MTCP_SPIN_US, no
//! sleeping). In `bulk` the echoed stream is compared byte by byte with a regenerated copy of
//! what was sent while the clock runs; the SHA-256 of what came back is computed after the
//! clock stops (from the regenerated stream when everything matched, which is then the same
//! value), so hashing does not slow the measured transfer.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use userstack::dpdk::DpdkLink;
use userstack::{clock, Config, ConnId, SockError, Stack};

const USAGE: &str = "\
usage: uclient <subcommand> [--key value ...]   (device and address from MTCP_* variables)
  latency --addr IP:PORT [--count 20000] [--size 16] [--warmup 1000] [--timeout 10]
  bulk    --addr IP:PORT [--bytes 1073741824] [--chunk 65536] [--stall-timeout 30] [--seed 1]
Each prints one line `mode=<sub> key=value ...` (as mtcp-client) and exits non-zero on any mismatch.";

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(sub) = argv.first().cloned() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if sub == "-h" || sub == "--help" || sub == "help" {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if sub != "latency" && sub != "bulk" {
        eprintln!("uclient: unknown subcommand {sub:?}\n{USAGE}");
        return ExitCode::from(2);
    }
    let r = Args::parse(&argv[1..]).and_then(|a| {
        // Check the options before starting DPDK (which takes ~150 ms and a device).
        let cmd = if sub == "latency" {
            Cmd::Latency(LatencyOpts::from(&a)?)
        } else {
            Cmd::Bulk(BulkOpts::from(&a)?)
        };
        a.finish()?;
        run(cmd)
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uclient {sub}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Arguments (same `--key value` / `--key=value` syntax as mtcp-client)
// ---------------------------------------------------------------------------------------

struct Args {
    map: HashMap<String, String>,
    used: std::cell::RefCell<Vec<String>>,
}

impl Args {
    fn parse(v: &[String]) -> Result<Args> {
        let mut map = HashMap::new();
        let mut i = 0;
        while i < v.len() {
            let k = v[i]
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --option, got {:?}", v[i]))?;
            if let Some((k, val)) = k.split_once('=') {
                map.insert(k.to_string(), val.to_string());
                i += 1;
            } else {
                let val = v.get(i + 1).ok_or_else(|| format!("--{k} needs a value"))?;
                map.insert(k.to_string(), val.clone());
                i += 2;
            }
        }
        Ok(Args {
            map,
            used: Default::default(),
        })
    }

    fn get<T: std::str::FromStr>(&self, k: &str, default: Option<T>) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.used.borrow_mut().push(k.to_string());
        match self.map.get(k) {
            Some(v) => v.parse().map_err(|e| format!("--{k} {v:?}: {e}")),
            None => default.ok_or_else(|| format!("--{k} is required")),
        }
    }

    fn finish(&self) -> Result<()> {
        let used = self.used.borrow();
        let mut extra: Vec<&String> = self.map.keys().filter(|k| !used.contains(k)).collect();
        extra.sort();
        if !extra.is_empty() {
            return Err(format!("unknown option(s): {extra:?}"));
        }
        Ok(())
    }
}

struct LatencyOpts {
    addr: SocketAddrV4,
    count: usize,
    size: usize,
    warmup: usize,
    timeout: Duration,
}

impl LatencyOpts {
    fn from(a: &Args) -> Result<Self> {
        let o = LatencyOpts {
            addr: a.get("addr", None)?,
            count: a.get("count", Some(20000))?,
            size: a.get("size", Some(16))?,
            warmup: a.get("warmup", Some(1000))?,
            timeout: Duration::from_secs_f64(a.get("timeout", Some(10.0))?),
        };
        if o.size == 0 {
            return Err("--size must be > 0".into());
        }
        Ok(o)
    }
}

struct BulkOpts {
    addr: SocketAddrV4,
    total: u64,
    chunk: usize,
    stall: Duration,
    seed: u64,
}

impl BulkOpts {
    fn from(a: &Args) -> Result<Self> {
        let o = BulkOpts {
            addr: a.get("addr", None)?,
            total: a.get("bytes", Some(1 << 30))?,
            chunk: a.get("chunk", Some(65536))?,
            stall: Duration::from_secs_f64(a.get("stall-timeout", Some(30.0))?),
            seed: a.get("seed", Some(1))?,
        };
        if o.chunk == 0 {
            return Err("--chunk must be > 0".into());
        }
        Ok(o)
    }
}

enum Cmd {
    Latency(LatencyOpts),
    Bulk(BulkOpts),
}

// ---------------------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------------------

fn run(cmd: Cmd) -> Result<()> {
    let cfg = Config::from_env().map_err(|e| e.to_string())?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log))
        .with_writer(std::io::stderr)
        .init();
    let link = DpdkLink::start(&cfg).map_err(|e| e.to_string())?;
    let mut stack = Stack::new(link, &cfg, clock::now()).map_err(|e| e.to_string())?;
    let addr = match &cmd {
        Cmd::Latency(o) => o.addr,
        Cmd::Bulk(o) => o.addr,
    };
    let r = connect(&mut stack, addr).and_then(|id| {
        let r = match cmd {
            Cmd::Latency(o) => latency(&mut stack, id, o),
            Cmd::Bulk(o) => bulk(&mut stack, id, o),
        };
        finish(&mut stack, id);
        r
    });
    if std::env::var_os("UCLIENT_STATS").is_some() {
        eprintln!("uclient: {}", stack.stats());
    }
    // Dropping the stack stops and closes the DPDK port (memif tells its peer it is leaving).
    drop(stack);
    r
}

/// Connects with TCP_NODELAY and waits (busy-polling) until the connection is established.
fn connect(stack: &mut Stack<DpdkLink>, addr: SocketAddrV4) -> Result<ConnId> {
    let mut opts = stack.default_options();
    opts.nodelay = true;
    let t0 = Instant::now();
    let id = stack
        .connect(clock::now(), addr, opts)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    loop {
        stack.poll(clock::now());
        match stack.readiness(id) {
            Ok(r) if r.error => {
                // The pending error comes back from recv.
                let mut b = [0u8; 1];
                let e = stack.recv(id, &mut b).err().unwrap_or(SockError::Reset);
                return Err(format!("connect {addr}: {e}"));
            }
            Ok(r) if r.writable => return Ok(id),
            Ok(_) => {}
            Err(e) => return Err(format!("connect {addr}: {e}")),
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "connect {addr}: not established within 10 s (is the server up? ARP answered?)"
            ));
        }
    }
}

/// Closes the connection and keeps polling briefly so the FIN exchange reaches the server
/// (the stack only transmits while it is polled).
fn finish(stack: &mut Stack<DpdkLink>, id: ConnId) {
    let _ = stack.close(id);
    let t0 = Instant::now();
    while stack.connections() > 0 && t0.elapsed() < Duration::from_millis(200) {
        stack.poll(clock::now());
    }
}

/// Sends all of `data`, polling while the send buffer is full.
fn send_all(stack: &mut Stack<DpdkLink>, id: ConnId, data: &[u8], deadline: Instant) -> Result<()> {
    let mut off = 0;
    while off < data.len() {
        match stack.send(id, &data[off..]) {
            Ok(n) => off += n,
            Err(SockError::WouldBlock) => {
                stack.poll(clock::now());
                if Instant::now() > deadline {
                    return Err("send timed out".into());
                }
            }
            Err(e) => return Err(format!("send: {e}")),
        }
    }
    stack.flush(clock::now());
    Ok(())
}

fn latency(stack: &mut Stack<DpdkLink>, id: ConnId, o: LatencyOpts) -> Result<()> {
    let mut rng = Rng::new(42);
    let mut msg = vec![0u8; o.size];
    let mut back = vec![0u8; o.size];
    let mut lat: Vec<u32> = Vec::with_capacity(o.count);
    for i in 0..o.warmup + o.count {
        rng.fill(&mut msg);
        let t = Instant::now();
        let deadline = t + o.timeout;
        send_all(stack, id, &msg, deadline).map_err(|e| format!("{e}, round trip {i}"))?;
        let mut got = 0;
        while got < o.size {
            match stack.recv(id, &mut back[got..]) {
                Ok(0) => return Err(format!("read echo, round trip {i}: connection closed")),
                Ok(n) => got += n,
                Err(SockError::WouldBlock) => {
                    stack.poll(clock::now());
                    if Instant::now() > deadline {
                        return Err(format!("read echo, round trip {i}: timed out"));
                    }
                }
                Err(e) => return Err(format!("read echo, round trip {i}: {e}")),
            }
        }
        let ns = t.elapsed().as_nanos().min(u32::MAX as u128) as u32;
        if msg != back {
            return Err(format!("round trip {i}: echo differs from what was sent"));
        }
        if i >= o.warmup {
            lat.push(ns);
        }
    }
    println!(
        "mode=latency count={} size={} {}",
        o.count,
        o.size,
        lat_summary(&mut lat)
    );
    Ok(())
}

fn bulk(stack: &mut Stack<DpdkLink>, id: ConnId, o: BulkOpts) -> Result<()> {
    let total = o.total;
    let chunk = o.chunk;
    // Sender: chunks of the stream, as mtcp-client's writer produces them.
    let mut tx_rng = Rng::new(o.seed);
    let mut txbuf = vec![0u8; chunk];
    let (mut tx_off, mut tx_len) = (0usize, 0usize);
    let mut generated: u64 = 0;
    let mut sent: u64 = 0;
    let mut shut = false;
    // Receiver: the same stream regenerated in the same chunks, compared as it comes back.
    let mut exp = Expected::new(o.seed, chunk, total);
    let mut rbuf = vec![0u8; chunk.max(65536)];
    let mut got: u64 = 0;
    let mut bad: Option<Sha256> = None; // hasher of the received stream after a mismatch
    let mut mismatch_at: Option<u64> = None;
    let mut eof = false;
    let mut err: Option<String> = None;
    let t0 = Instant::now();
    let mut last_progress = t0;
    while !eof {
        let now = clock::now();
        stack.poll(now);
        let mut progress = false;
        while sent < total {
            if tx_off == tx_len {
                let n = ((total - generated) as usize).min(chunk);
                tx_rng.fill(&mut txbuf[..n]);
                generated += n as u64;
                tx_off = 0;
                tx_len = n;
            }
            match stack.send(id, &txbuf[tx_off..tx_len]) {
                Ok(n) => {
                    tx_off += n;
                    sent += n as u64;
                    progress = true;
                }
                Err(SockError::WouldBlock) => break,
                Err(e) => {
                    err = Some(format!("send failed: write after {sent} bytes: {e}"));
                    break;
                }
            }
        }
        if err.is_some() {
            break;
        }
        if sent == total && !shut {
            if let Err(e) = stack.shutdown_write(id) {
                err = Some(format!("shutdown(Write): {e}"));
                break;
            }
            shut = true;
        }
        loop {
            match stack.recv(id, &mut rbuf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let data = &rbuf[..n];
                    match &mut bad {
                        Some(h) => h.update(data),
                        None => {
                            if let Some(off) = exp.compare(data) {
                                let at = got + off as u64;
                                mismatch_at = Some(at);
                                let mut h = Sha256::new();
                                hash_stream(&mut h, o.seed, chunk, at);
                                h.update(&data[off..]);
                                bad = Some(h);
                            }
                        }
                    }
                    got += n as u64;
                    progress = true;
                }
                Err(SockError::WouldBlock) => break,
                Err(e) => {
                    err = Some(format!(
                        "receive failed: read after {got} of {total} bytes: {e}"
                    ));
                    break;
                }
            }
        }
        if err.is_some() {
            break;
        }
        stack.flush(clock::now());
        if progress {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > o.stall {
            err = Some(format!(
                "echo stalled for {:?}: read after {got} of {total} bytes (sent {sent})",
                o.stall
            ));
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let recv_hash = match bad {
        Some(h) => h.finish(),
        None => {
            let mut h = Sha256::new();
            hash_stream(&mut h, o.seed, chunk, got);
            h.finish()
        }
    };
    let ok = got == total && mismatch_at.is_none() && err.is_none();
    let mbps = got as f64 * 8.0 / secs / 1e6;
    println!(
        "mode=bulk bytes={got} secs={secs:.3} mbps={mbps:.1} mb_per_s={:.1} sha256={} match={ok}",
        got as f64 / secs / 1e6,
        hex(&recv_hash),
    );
    if let Some(e) = err {
        return Err(e);
    }
    if got != total {
        return Err(format!("received {got} bytes, sent {total}"));
    }
    if let Some(at) = mismatch_at {
        let mut h = Sha256::new();
        hash_stream(&mut h, o.seed, chunk, total);
        return Err(format!(
            "echo differs from what was sent from byte {at}: sent sha256={} received sha256={}",
            hex(&h.finish()),
            hex(&recv_hash)
        ));
    }
    Ok(())
}

fn hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sent stream regenerated chunk by chunk, for comparing the echo as it arrives.
struct Expected {
    rng: Rng,
    buf: Vec<u8>,
    off: usize,
    len: usize,
    left: u64,
}

impl Expected {
    fn new(seed: u64, chunk: usize, total: u64) -> Self {
        Expected {
            rng: Rng::new(seed),
            buf: vec![0u8; chunk],
            off: 0,
            len: 0,
            left: total,
        }
    }

    /// Compares `data` with the next bytes of the stream; the offset of the first difference.
    fn compare(&mut self, mut data: &[u8]) -> Option<usize> {
        let mut done = 0;
        while !data.is_empty() {
            if self.off == self.len {
                if self.left == 0 {
                    return Some(done); // more bytes than were sent
                }
                let n = (self.left as usize).min(self.buf.len());
                self.rng.fill(&mut self.buf[..n]);
                self.left -= n as u64;
                self.off = 0;
                self.len = n;
            }
            let k = data.len().min(self.len - self.off);
            let want = &self.buf[self.off..self.off + k];
            if want != &data[..k] {
                let i = want.iter().zip(&data[..k]).position(|(a, b)| a != b);
                return Some(done + i.unwrap_or(0));
            }
            self.off += k;
            done += k;
            data = &data[k..];
        }
        None
    }
}

/// Feeds the first `len` bytes of the stream for `seed` (generated in `chunk`s) into `h`.
fn hash_stream(h: &mut Sha256, seed: u64, chunk: usize, len: u64) {
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; chunk];
    let mut left = len;
    while left > 0 {
        let n = (left as usize).min(chunk);
        rng.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        left -= n as u64;
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1e3
}

/// The same summary fields, in the same order and precision, as `mtcp-client latency`.
fn lat_summary(lat: &mut [u32]) -> String {
    lat.sort_unstable();
    let mean = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len() as f64 / 1e3
    };
    format!(
        "p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} mean_us={mean:.1} min_us={:.1} max_us={:.1}",
        percentile(lat, 0.50),
        percentile(lat, 0.90),
        percentile(lat, 0.99),
        percentile(lat, 0.999),
        lat.first().map_or(0.0, |&x| x as f64 / 1e3),
        lat.last().map_or(0.0, |&x| x as f64 / 1e3),
    )
}

// ---------------------------------------------------------------------------------------
// Payload bytes: the SplitMix64 stream mtcp-client uses (little-endian words; a partial
// last word consumes a whole draw)
// ---------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut r = Rng(seed ^ 0x6a09_e667_f3bc_c908);
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next().to_le_bytes());
        }
        let rem = words.into_remainder();
        if !rem.is_empty() {
            let x = self.next().to_le_bytes();
            let n = rem.len();
            rem.copy_from_slice(&x[..n]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// SHA-256 (FIPS 180-4), so this example needs no crate beyond the workspace's. Only used
// after the measured transfer.
// ---------------------------------------------------------------------------------------

struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    used: usize,
    len: u64,
}

const K256: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Sha256 {
    fn new() -> Self {
        Sha256 {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            block: [0; 64],
            used: 0,
            len: 0,
        }
    }

    fn compress(state: &mut [u32; 8], block: &[u8]) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K256[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.used > 0 {
            let k = data.len().min(64 - self.used);
            self.block[self.used..self.used + k].copy_from_slice(&data[..k]);
            self.used += k;
            data = &data[k..];
            if self.used < 64 {
                return;
            }
            let block = self.block;
            Self::compress(&mut self.state, &block);
            self.used = 0;
        }
        let mut blocks = data.chunks_exact(64);
        for b in &mut blocks {
            Self::compress(&mut self.state, b);
        }
        let rem = blocks.remainder();
        self.block[..rem.len()].copy_from_slice(rem);
        self.used = rem.len();
    }

    fn finish(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        let fill = (64 + 56 - (self.used + 1) % 64) % 64;
        pad.resize(1 + fill, 0);
        pad.extend_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&pad);
        self.len = len;
        debug_assert_eq!(self.used, 0);
        let mut out = [0u8; 32];
        for (o, s) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(data);
        hex(&h.finish())
    }

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            sha(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let m = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(
            sha(m),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // Split updates give the same result.
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut h = Sha256::new();
        for c in data.chunks(37) {
            h.update(c);
        }
        assert_eq!(hex(&h.finish()), sha(&data));
    }

    #[test]
    fn expected_stream_finds_first_difference() {
        let mut rng = Rng::new(5);
        let mut sent = [0u8; 200];
        rng.fill(&mut sent[..100]);
        rng.fill(&mut sent[100..]);
        let mut e = Expected::new(5, 100, 200);
        assert_eq!(e.compare(&sent[..30]), None);
        assert_eq!(e.compare(&sent[30..150]), None);
        let mut bad = sent[150..].to_vec();
        bad[7] ^= 1;
        assert_eq!(e.compare(&bad), Some(7));
    }
}
