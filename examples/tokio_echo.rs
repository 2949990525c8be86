//! An echo server on tokio's multi-threaded runtime, the shape of most Rust services:
//! `TcpListener::bind`, `accept` in a loop, one `tokio::spawn`ed task per connection, on a pool
//! of worker threads that share one epoll set. Used by the tests and the benchmark to run such
//! a server under the shim unchanged.
//!
//! `tokio-echo PORT [WORKERS]`: listens on 0.0.0.0:PORT, prints `ready` when listening, echoes
//! every byte back until the peer closes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: tokio-echo PORT [WORKERS]");
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_io()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(("0.0.0.0", port))
            .await
            .unwrap_or_else(|e| panic!("bind 0.0.0.0:{port}: {e}"));
        println!("ready");
        loop {
            let (mut conn, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}
