//! A load client for echo servers (the benchmark's tokio row): `echo-load HOST:PORT CONNS SECS
//! [SIZE]` keeps CONNS connections, each sending SIZE bytes (default 64) and reading them back
//! before the next, for SECS seconds, a thread per connection (blocking sockets); prints
//! `requests/s R p50_ms A p99_ms B errors E`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: echo-load HOST:PORT CONNS SECS [SIZE]");
        std::process::exit(2);
    }
    let addr = args[0].clone();
    let conns: usize = args[1].parse().expect("CONNS");
    let secs: u64 = args[2].parse().expect("SECS");
    let size: usize = args.get(3).map_or(64, |s| s.parse().expect("SIZE"));
    let end = Instant::now() + Duration::from_secs(secs);
    let per_thread = 1;
    let threads: Vec<_> = (0..conns.div_ceil(per_thread))
        .map(|t| {
            let addr = addr.clone();
            let n = per_thread.min(conns - t * per_thread);
            std::thread::spawn(move || {
                let mut socks: Vec<TcpStream> = (0..n)
                    .map(|_| {
                        let s = TcpStream::connect(&addr).expect("connect");
                        s.set_nodelay(true).expect("nodelay");
                        s
                    })
                    .collect();
                let msg = vec![0x5au8; size];
                let mut back = vec![0u8; size];
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < end {
                    for s in socks.iter_mut() {
                        let t0 = Instant::now();
                        if s.write_all(&msg)
                            .and_then(|_| s.read_exact(&mut back))
                            .is_err()
                            || back != msg
                        {
                            errors += 1;
                            continue;
                        }
                        lat.push(t0.elapsed());
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().expect("load thread");
        lat.extend(l);
        errors += e;
    }
    lat.sort();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "requests/s {:.0} p50_ms {:.3} p99_ms {:.3} errors {errors}",
        lat.len() as f64 / secs as f64,
        q(0.50),
        q(0.99)
    );
}
