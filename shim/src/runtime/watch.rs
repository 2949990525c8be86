//! What the shim cannot serve, said once: a flagged port that listens through the kernel
//! without a call the shim saw (a Go program's runtime makes its own system calls, as does a
//! static binary), and io_uring set up by the process (its socket operations never reach a
//! hook). A thread started when the library is loaded with MTCP_PORTS set looks 1 s and 10 s
//! after the start (a server sets up its listeners and rings when it starts), then ends.

use std::collections::HashMap;

/// Starts the watcher thread (at load, if MTCP_PORTS is set and not empty).
pub(crate) fn start() {
    let spawned = std::thread::Builder::new()
        .name("mtcp-watch".into())
        .spawn(|| {
            crate::guard::mark_thread_internal();
            let mut said = Said::default();
            for wait in [1, 9] {
                std::thread::sleep(std::time::Duration::from_secs(wait));
                crate::init::ensure();
                if crate::config::state() != crate::config::State::Ports || super::in_child() {
                    return;
                }
                look(&mut said);
            }
        });
    // Without the thread nothing is checked; the program runs as before.
    drop(spawned);
}

#[derive(Default)]
struct Said {
    ports: Vec<u16>,
    uring: bool,
}

/// The process's fds that are sockets, by inode; and whether one fd is an io_uring.
fn own_fds() -> (HashMap<u64, i32>, bool) {
    let mut sockets = HashMap::new();
    let mut uring = false;
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return (sockets, uring);
    };
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            sockets.insert(inode, fd);
        } else if link == "anon_inode:[io_uring]" {
            uring = true;
        }
    }
    (sockets, uring)
}

/// Listening sockets on any address (all-zero local address) in /proc/self/net/tcp{,6}:
/// (port, inode).
fn wildcard_listeners() -> Vec<(u16, u64)> {
    let mut out = Vec::new();
    for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((addr, port)) = f[1].split_once(':') else {
                continue;
            };
            if addr.bytes().any(|b| b != b'0') {
                continue; // a specific address: 127.0.0.1 is the kernel's by design
            }
            if let (Ok(port), Ok(inode)) = (u16::from_str_radix(port, 16), f[9].parse()) {
                out.push((port, inode));
            }
        }
    }
    out
}

fn look(said: &mut Said) {
    let (sockets, uring) = own_fds();
    if uring && !said.uring {
        said.uring = true;
        crate::shim_log!(
            "this process uses io_uring: socket operations it submits there never reach \
             mtcpshim, and a socket of the stack used through io_uring fails (docs/shim.md, \
             Limits)"
        );
    }
    for (port, inode) in wildcard_listeners() {
        if !crate::config::is_flagged(port) || said.ports.contains(&port) {
            continue;
        }
        let Some(&fd) = sockets.get(&inode) else {
            continue;
        };
        if crate::fdtable::is_ours(fd) {
            continue;
        }
        said.ports.push(port);
        crate::shim_log!(
            "port {port} is in MTCP_PORTS but listens through the kernel (fd {fd}): its \
             listen() did not go through the C library (a Go program, a static binary or \
             io_uring makes its own system calls), so the stack does not serve it"
        );
    }
}
