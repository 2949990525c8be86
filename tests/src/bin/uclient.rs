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
//! `mode=bulk ...`) and exits non-zero if a check failed. Options, payload bytes and summary
//! lines come from [`mtcp_tests::workload`], as mtcp-client's do, so for the same seed the
//! `sha256=` values are comparable.
//!
//! It is a benchmark client: it busy-polls the stack the whole time (no MTCP_SPIN_US, no
//! sleeping). In `bulk` the echoed stream is compared byte by byte with a regenerated copy of
//! what was sent while the clock runs; the SHA-256 of what came back is computed after the
//! clock stops (from the regenerated stream when everything matched, which is then the same
//! value), so hashing does not slow the measured transfer.

use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use mtcp_tests::workload::{
    bulk_line, exit_code, hash_stream, hex, latency_rounds, subcommand, Args, BulkOpts, Expected,
    LatencyOpts, Stream,
};
use sha2::{Digest, Sha256};
use userstack::dpdk::DpdkLink;
use userstack::{clock, Config, ConnId, SockError, Stack};

const USAGE: &str = "\
usage: uclient <subcommand> [--key value ...]   (device and address from MTCP_* variables)
  latency --addr IP:PORT [--count 20000] [--size 16] [--warmup 1000] [--timeout 10] [--pause-ms 0]
  bulk    --addr IP:PORT [--bytes 1073741824] [--chunk 65536] [--stall-timeout 30] [--seed 1]
Each prints one line `mode=<sub> key=value ...` (as mtcp-client) and exits non-zero on any mismatch.";

fn main() -> ExitCode {
    let (sub, args) = match subcommand(USAGE) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if sub != "latency" && sub != "bulk" {
        eprintln!("uclient: unknown subcommand {sub:?}\n{USAGE}");
        return ExitCode::from(2);
    }
    let r = Args::parse(&args).and_then(|a| {
        // Check the options before starting DPDK (which takes ~150 ms and a device).
        let addr = a.get("addr", None)?;
        let cmd = if sub == "latency" {
            Cmd::Latency(LatencyOpts::from_args(&a)?)
        } else {
            Cmd::Bulk(BulkOpts::from_args(&a)?)
        };
        a.finish()?;
        run(addr, cmd)
    });
    exit_code("uclient", &sub, r)
}

enum Cmd {
    Latency(LatencyOpts),
    Bulk(BulkOpts),
}

// ---------------------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------------------

fn run(addr: SocketAddrV4, cmd: Cmd) -> Result<()> {
    let cfg = Config::from_env().map_err(|e| anyhow!("{e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log))
        .with_writer(std::io::stderr)
        .init();
    let link = DpdkLink::start(&cfg).map_err(|e| anyhow!("{e}"))?;
    let mut stack = Stack::new(link, &cfg, clock::now()).map_err(|e| anyhow!("{e}"))?;
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
        .map_err(|e| anyhow!("connect {addr}: {e}"))?;
    loop {
        stack.poll(clock::now());
        match stack.readiness(id) {
            Ok(r) if r.error() => {
                // The pending error comes back from recv.
                let mut b = [0u8; 1];
                let e = stack.recv(id, &mut b).err().unwrap_or(SockError::Reset);
                bail!("connect {addr}: {e}");
            }
            Ok(r) if r.writable() => return Ok(id),
            Ok(_) => {}
            Err(e) => bail!("connect {addr}: {e}"),
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("connect {addr}: not established within 10 s (is the server up? ARP answered?)");
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
                    bail!("send timed out");
                }
            }
            Err(e) => bail!("send: {e}"),
        }
    }
    stack.flush(clock::now());
    Ok(())
}

fn latency(stack: &mut Stack<DpdkLink>, id: ConnId, o: LatencyOpts) -> Result<()> {
    let line = latency_rounds(&o, |i, msg, back| {
        let deadline = Instant::now() + o.timeout;
        send_all(stack, id, msg, deadline).map_err(|e| anyhow!("{e:#}, round trip {i}"))?;
        let mut got = 0;
        while got < back.len() {
            match stack.recv(id, &mut back[got..]) {
                Ok(0) => bail!("read echo, round trip {i}: connection closed"),
                Ok(n) => got += n,
                Err(SockError::WouldBlock) => {
                    stack.poll(clock::now());
                    if Instant::now() > deadline {
                        bail!("read echo, round trip {i}: timed out");
                    }
                }
                Err(e) => bail!("read echo, round trip {i}: {e}"),
            }
        }
        Ok(())
    })?;
    println!("{line}");
    Ok(())
}

fn bulk(stack: &mut Stack<DpdkLink>, id: ConnId, o: BulkOpts) -> Result<()> {
    let total = o.total;
    let chunk = o.chunk;
    // Sender: chunks of the stream, as mtcp-client's writer produces them.
    let mut tx = Stream::new(o.seed, chunk, total);
    let mut tx_off = 0usize;
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
            if tx_off == tx.current().len() {
                tx.next_chunk();
                tx_off = 0;
            }
            match stack.send(id, &tx.current()[tx_off..]) {
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
    let recv_hash = bad
        .unwrap_or_else(|| {
            let mut h = Sha256::new();
            hash_stream(&mut h, o.seed, chunk, got);
            h
        })
        .finalize();
    let ok = got == total && mismatch_at.is_none() && err.is_none();
    println!("{}", bulk_line(got, secs, &recv_hash, ok));
    if let Some(e) = err {
        bail!("{e}");
    }
    if got != total {
        bail!("received {got} bytes, sent {total}");
    }
    if let Some(at) = mismatch_at {
        let mut h = Sha256::new();
        hash_stream(&mut h, o.seed, chunk, total);
        bail!(
            "echo differs from what was sent from byte {at}: sent sha256={} received sha256={}",
            hex(&h.finalize()),
            hex(&recv_hash)
        );
    }
    Ok(())
}
