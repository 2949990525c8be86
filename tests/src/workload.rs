//! The workload shared by the two benchmark clients, `mtcp-client` (kernel sockets) and
//! `uclient` (userstack over DPDK): their `--key value` options, the deterministic payload
//! stream and the checker of its echo, the latency loop, and the summary lines
//! (`mode=latency ...`, `mode=bulk ...`) that the integration tests and `ci/bench.sh` parse.
//! Keeping them in one place keeps the two clients' payloads (and so their `sha256=` values)
//! and output formats identical.

use std::cell::RefCell;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------
// Arguments: `--key value` or `--key=value`
// ---------------------------------------------------------------------------------------

/// The start of a client's `main`: the subcommand and the arguments after it, or the exit
/// code to return at once when there is none (usage on stderr, 2) or help was asked for
/// (usage on stdout, 0).
pub fn subcommand(usage: &str) -> std::result::Result<(String, Vec<String>), ExitCode> {
    let mut argv = std::env::args().skip(1);
    let Some(sub) = argv.next() else {
        eprintln!("{usage}");
        return Err(ExitCode::from(2));
    };
    if sub == "-h" || sub == "--help" || sub == "help" {
        println!("{usage}");
        return Err(ExitCode::SUCCESS);
    }
    Ok((sub, argv.collect()))
}

/// The end of a client's `main`: an error goes to stderr as `<prog> <sub>: error: ...`.
pub fn exit_code(prog: &str, sub: &str, r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{prog} {sub}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A subcommand's options. Read them with [`Args::get`], then call [`Args::finish`] to reject
/// the ones nobody asked for (typos).
pub struct Args {
    map: HashMap<String, String>,
    used: RefCell<Vec<String>>,
}

impl Args {
    pub fn parse(v: &[String]) -> Result<Args> {
        let mut map = HashMap::new();
        let mut i = 0;
        while i < v.len() {
            let k = v[i]
                .strip_prefix("--")
                .ok_or_else(|| anyhow!("expected --option, got {:?}", v[i]))?;
            if let Some((k, val)) = k.split_once('=') {
                map.insert(k.to_string(), val.to_string());
                i += 1;
            } else {
                let val = v.get(i + 1).ok_or_else(|| anyhow!("--{k} needs a value"))?;
                map.insert(k.to_string(), val.clone());
                i += 2;
            }
        }
        Ok(Args {
            map,
            used: Default::default(),
        })
    }

    /// The value of `--k`, or `default`; without a default the option is required.
    pub fn get<T: std::str::FromStr>(&self, k: &str, default: Option<T>) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.used.borrow_mut().push(k.to_string());
        match self.map.get(k) {
            Some(v) => v.parse().map_err(|e| anyhow!("--{k} {v:?}: {e}")),
            None => default.ok_or_else(|| anyhow!("--{k} is required")),
        }
    }

    /// Rejects options that no `get` asked for (typos).
    pub fn finish(&self) -> Result<()> {
        let used = self.used.borrow();
        let mut extra: Vec<&String> = self.map.keys().filter(|k| !used.contains(k)).collect();
        extra.sort();
        if !extra.is_empty() {
            bail!("unknown option(s): {extra:?}");
        }
        Ok(())
    }
}

/// Options of the `latency` subcommand (besides `--addr`).
pub struct LatencyOpts {
    pub count: usize,
    pub size: usize,
    pub warmup: usize,
    pub timeout: Duration,
    /// A pause before each round trip (not counted): the server goes idle between requests.
    pub pause: Duration,
}

impl LatencyOpts {
    /// `[--count 20000] [--size 16] [--warmup 1000] [--timeout 10] [--pause-ms 0]`.
    pub fn from_args(a: &Args) -> Result<Self> {
        let o = LatencyOpts {
            count: a.get("count", Some(20000))?,
            size: a.get("size", Some(16))?,
            warmup: a.get("warmup", Some(1000))?,
            timeout: Duration::from_secs_f64(a.get("timeout", Some(10.0))?),
            pause: Duration::from_secs_f64(a.get::<f64>("pause-ms", Some(0.0))? / 1e3),
        };
        if o.size == 0 {
            bail!("--size must be > 0");
        }
        Ok(o)
    }
}

/// Options of the `bulk` subcommand (besides `--addr`).
pub struct BulkOpts {
    pub total: u64,
    pub chunk: usize,
    pub stall: Duration,
    pub seed: u64,
}

impl BulkOpts {
    /// `[--bytes 1073741824] [--chunk 65536] [--stall-timeout 30] [--seed 1]`.
    pub fn from_args(a: &Args) -> Result<Self> {
        let o = BulkOpts {
            total: a.get("bytes", Some(1 << 30))?,
            chunk: a.get("chunk", Some(65536))?,
            stall: Duration::from_secs_f64(a.get("stall-timeout", Some(30.0))?),
            seed: a.get("seed", Some(1))?,
        };
        if o.chunk == 0 {
            bail!("--chunk must be > 0");
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------
// Payload bytes: SplitMix64 (little-endian words; a partial last word consumes a whole draw)
// ---------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut r = Rng(seed ^ 0x6a09_e667_f3bc_c908);
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rem = words.into_remainder();
        if !rem.is_empty() {
            let x = self.next_u64().to_le_bytes();
            let n = rem.len();
            rem.copy_from_slice(&x[..n]);
        }
    }
}

/// The `bulk` payload: `total` bytes of the [`Rng`] stream for `seed`, generated in pieces of
/// `chunk` bytes (the last one shorter). The chunking is part of the stream's definition,
/// since a partial last word consumes a whole draw.
pub struct Stream {
    rng: Rng,
    buf: Vec<u8>,
    len: usize,
    left: u64,
}

impl Stream {
    pub fn new(seed: u64, chunk: usize, total: u64) -> Stream {
        assert!(chunk > 0, "stream chunk must be > 0");
        Stream {
            rng: Rng::new(seed),
            buf: vec![0u8; chunk],
            len: 0,
            left: total,
        }
    }

    /// Generates the next chunk and returns it; `None` once all `total` bytes were generated.
    pub fn next_chunk(&mut self) -> Option<&[u8]> {
        if self.left == 0 {
            self.len = 0;
            return None;
        }
        let n = (self.left as usize).min(self.buf.len());
        self.rng.fill(&mut self.buf[..n]);
        self.left -= n as u64;
        self.len = n;
        Some(&self.buf[..n])
    }

    /// The chunk the last [`Stream::next_chunk`] generated (empty before the first).
    pub fn current(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Feeds the first `len` bytes of the stream for `seed` (generated in `chunk`s) into `h`.
pub fn hash_stream(h: &mut Sha256, seed: u64, chunk: usize, len: u64) {
    let mut s = Stream::new(seed, chunk, len);
    while let Some(c) = s.next_chunk() {
        h.update(c);
    }
}

/// The sent stream regenerated chunk by chunk, for comparing the echo as it arrives.
pub struct Expected {
    stream: Stream,
    off: usize,
}

impl Expected {
    pub fn new(seed: u64, chunk: usize, total: u64) -> Self {
        Expected {
            stream: Stream::new(seed, chunk, total),
            off: 0,
        }
    }

    /// Compares `data` with the next bytes of the stream; the offset of the first difference
    /// (bytes beyond the end of the stream differ).
    pub fn compare(&mut self, mut data: &[u8]) -> Option<usize> {
        let mut done = 0;
        while !data.is_empty() {
            if self.off == self.stream.current().len() {
                self.off = 0;
                if self.stream.next_chunk().is_none() {
                    return Some(done); // more bytes than were sent
                }
            }
            let want = &self.stream.current()[self.off..];
            let k = data.len().min(want.len());
            let (want, got) = (&want[..k], &data[..k]);
            if want != got {
                let i = want.iter().zip(got).position(|(a, b)| a != b);
                return Some(done + i.unwrap_or(0));
            }
            self.off += k;
            done += k;
            data = &data[k..];
        }
        None
    }
}

pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Measurements and summary lines
// ---------------------------------------------------------------------------------------

/// Runs `o.warmup + o.count` round trips of `o.size` pseudo-random bytes (seed 42):
/// `round_trip(i, msg, back)` sends `msg` and reads its echo into `back`. Checks every echo
/// and returns the `mode=latency ...` summary line of the last `o.count` round trips.
pub fn latency_rounds(
    o: &LatencyOpts,
    mut round_trip: impl FnMut(usize, &[u8], &mut [u8]) -> Result<()>,
) -> Result<String> {
    let mut rng = Rng::new(42);
    let mut msg = vec![0u8; o.size];
    let mut back = vec![0u8; o.size];
    let mut lat: Vec<u32> = Vec::with_capacity(o.count);
    for i in 0..o.warmup + o.count {
        rng.fill(&mut msg);
        if !o.pause.is_zero() {
            std::thread::sleep(o.pause);
        }
        let t = Instant::now();
        round_trip(i, &msg, &mut back)?;
        let ns = t.elapsed().as_nanos().min(u32::MAX as u128) as u32;
        if msg != back {
            bail!("round trip {i}: echo differs from what was sent");
        }
        if i >= o.warmup {
            lat.push(ns);
        }
    }
    Ok(format!(
        "mode=latency count={} size={} {}",
        o.count,
        o.size,
        lat_summary(&mut lat)
    ))
}

/// The `mode=bulk ...` summary line: `bytes` echoed in `secs`, SHA-256 of what came back,
/// and whether everything matched.
pub fn bulk_line(bytes: u64, secs: f64, recv_sha256: &[u8], ok: bool) -> String {
    let mbps = bytes as f64 * 8.0 / secs / 1e6;
    format!(
        "mode=bulk bytes={bytes} secs={secs:.3} mbps={mbps:.1} mb_per_s={:.1} sha256={} match={ok}",
        bytes as f64 / secs / 1e6,
        hex(recv_sha256),
    )
}

/// The `p`-quantile (0..=1) of sorted nanoseconds, in microseconds (0 when empty).
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1e3
}

/// Sorts `lat` (nanoseconds) and formats `p50_us=... p90_us=... p99_us=... p999_us=...
/// mean_us=... min_us=... max_us=...`.
pub fn lat_summary(lat: &mut [u32]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_the_rng_in_chunks() {
        let mut s = Stream::new(9, 10, 25);
        let mut got = Vec::new();
        while let Some(c) = s.next_chunk() {
            got.push(c.to_vec());
        }
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
        let mut rng = Rng::new(9);
        for c in &got {
            let mut want = vec![0u8; c.len()];
            rng.fill(&mut want);
            assert_eq!(&want, c);
        }
        let mut h = Sha256::new();
        hash_stream(&mut h, 9, 10, 25);
        assert_eq!(
            <[u8; 32]>::from(h.finalize()),
            <[u8; 32]>::from(Sha256::digest(got.concat()))
        );
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

    #[test]
    fn expected_stream_rejects_extra_bytes() {
        let mut s = Stream::new(3, 64, 100);
        let mut sent = Vec::new();
        while let Some(c) = s.next_chunk() {
            sent.extend_from_slice(c);
        }
        let mut e = Expected::new(3, 64, 100);
        assert_eq!(e.compare(&sent[..90]), None);
        sent.push(0);
        assert_eq!(e.compare(&sent[90..]), Some(10));
    }

    #[test]
    fn summaries() {
        let mut lat = vec![3000, 1000, 2000, 4000];
        assert_eq!(
            lat_summary(&mut lat),
            "p50_us=2.0 p90_us=4.0 p99_us=4.0 p999_us=4.0 mean_us=2.5 min_us=1.0 max_us=4.0"
        );
        assert_eq!(
            bulk_line(1_000_000, 0.5, &[0xab; 32], true),
            format!(
                "mode=bulk bytes=1000000 secs=0.500 mbps=16.0 mb_per_s=2.0 sha256={} match=true",
                "ab".repeat(32)
            )
        );
    }
}
