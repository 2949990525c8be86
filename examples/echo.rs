//! An echo server on userstack, configured by the same MTCP_* variables as the shim.
//!
//!     MTCP_DEV=tap:mtcp0 MTCP_TAP_PEER=198.18.0.1/24 cargo run --release --bin echo -- --port 7777
//!
//! Every byte a client sends comes back; when the client half-closes, the server echoes what is
//! left and closes. It prints `echo: listening on ADDR:PORT (...)` once ready, and its counters
//! on stderr when stopped with SIGINT or SIGTERM.
//!
//! The loop is the polling model the shim uses: poll the stack, serve events, then
//! `userstack::idle::Idler`: spin for MTCP_SPIN_US after the last work, then block on the
//! device's wake-up fd (or sleep with a backoff on devices without one) until the next timer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use userstack::dpdk::DpdkLink;
use userstack::{clock, Config, ConnId, Event, SockError, Stack};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn usage() -> ! {
    eprintln!(
        "usage: echo [--port PORT] [--backlog N]   (device and address from MTCP_* variables)"
    );
    std::process::exit(2);
}

struct Client {
    /// Echo bytes the socket had no room for yet.
    pending: Vec<u8>,
    eof: bool,
}

fn main() {
    let mut port: u16 = 7777;
    let mut backlog: usize = 511;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&p| p != 0)
                    .unwrap_or_else(|| usage())
            }
            "--backlog" => {
                backlog = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("echo: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log))
        .with_writer(std::io::stderr)
        .init();
    let link = match DpdkLink::start(&cfg) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo: {e}");
            std::process::exit(1);
        }
    };
    tracing::info!(
        hugepages = link.info.hugepages,
        eal = %link.info.eal_args.join(" "),
        "device {} started", cfg.dev.describe()
    );
    let huge = if link.info.hugepages {
        "hugepages"
    } else {
        "no hugepages"
    };
    let mut stack = match Stack::new(link, &cfg, clock::now()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("echo: {e}");
            std::process::exit(1);
        }
    };
    let mut opts = stack.default_options();
    opts.nodelay = true;
    stack.listen(port, backlog, opts).expect("fresh stack");
    // SAFETY: installing an async-signal-safe handler that only stores an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    println!(
        "echo: listening on {}:{port} (dev {}, {huge})",
        cfg.addr.addr,
        cfg.dev.describe()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let mut clients: HashMap<ConnId, Client> = HashMap::new();
    let mut events = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut idler = userstack::idle::Idler::new(&cfg);
    while !STOP.load(Ordering::Relaxed) {
        let now = clock::now();
        let mut work = stack.poll(now);
        stack.take_events(&mut events);
        work |= !events.is_empty();
        for ev in events.drain(..) {
            match ev {
                Event::Accept(p) => {
                    while let Ok((id, _peer)) = stack.accept(p) {
                        clients.insert(
                            id,
                            Client {
                                pending: Vec::new(),
                                eof: false,
                            },
                        );
                        serve(&mut stack, id, &mut clients, &mut buf);
                    }
                }
                Event::Conn(id, _, _) => serve(&mut stack, id, &mut clients, &mut buf),
            }
        }
        stack.flush(clock::now());
        if work {
            idler.work();
        } else {
            idler.idle(&mut stack);
        }
    }
    eprintln!("echo: stopped; {}", stack.stats());
}

fn serve(
    stack: &mut Stack<DpdkLink>,
    id: ConnId,
    clients: &mut HashMap<ConnId, Client>,
    buf: &mut [u8],
) {
    let Some(c) = clients.get_mut(&id) else {
        return;
    };
    let mut done = false;
    loop {
        // Flush what is owed first; read more only when it is all out (TCP's window then
        // pushes back on a client that sends faster than it reads).
        while !c.pending.is_empty() {
            match stack.send(id, &c.pending) {
                Ok(n) => {
                    c.pending.drain(..n);
                }
                Err(SockError::WouldBlock) => return,
                Err(_) => {
                    done = true;
                    break;
                }
            }
        }
        if done || c.eof {
            break;
        }
        match stack.recv(id, buf) {
            Ok(0) => c.eof = true,
            Ok(n) => match stack.send(id, &buf[..n]) {
                Ok(m) => c.pending.extend_from_slice(&buf[m..n]),
                Err(SockError::WouldBlock) => c.pending.extend_from_slice(&buf[..n]),
                Err(_) => done = true,
            },
            Err(SockError::WouldBlock) => return,
            Err(_) => done = true,
        }
    }
    // End of stream (everything echoed) or an error: close, which sends FIN after the data.
    let _ = stack.close(id);
    clients.remove(&id);
}
