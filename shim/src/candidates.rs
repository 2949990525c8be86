//! Kernel TCP sockets that connect() may make the stack's, and the epoll entries the
//! application gave them before it connected them (nginx adds an upstream socket to its epoll
//! instance, then connects it): a bit per fd number, read without a lock by the close and
//! epoll_ctl hooks, and the entries themselves under a lock, so that connect() moves them to
//! the shim's set (`runtime::adopt_entries`).
//!
//! A socket is a candidate from socket() (AF_INET or AF_INET6, SOCK_STREAM, while MTCP_CONNECT
//! gives the stack destinations) until it is closed, listens, or connects through the kernel
//! or the stack. A number that stops naming the socket unseen (dup2 over it) keeps its bit:
//! its entries are then checked against the kernel's before they move.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use libc::c_int;

/// fd numbers with a bit (the fd table's range).
const MAX_FD: usize = 1 << 20;

static BITS: OnceLock<Box<[AtomicU64]>> = OnceLock::new();
/// Candidates now.
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// (fd, epoll fd, events, data) of each candidate's entries in the kernel's epoll instances.
static ENTRIES: Mutex<Vec<(c_int, c_int, u32, u64)>> = Mutex::new(Vec::new());

fn word(fd: c_int) -> Option<(&'static AtomicU64, u64)> {
    let i = usize::try_from(fd).ok().filter(|&i| i < MAX_FD)?;
    let bits = BITS.get_or_init(|| (0..MAX_FD / 64).map(|_| AtomicU64::new(0)).collect());
    Some((&bits[i / 64], 1u64 << (i % 64)))
}

/// Whether `fd` is a candidate.
#[inline]
pub fn is(fd: c_int) -> bool {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return false;
    }
    word(fd).is_some_and(|(w, b)| w.load(Ordering::Relaxed) & b != 0)
}

/// Whether there is any candidate (close_range's gate).
#[inline]
pub fn any() -> bool {
    COUNT.load(Ordering::Relaxed) != 0
}

/// `fd` is a new candidate (a number reused unseen: what the old one had goes).
pub fn mark(fd: c_int) {
    if let Some((w, b)) = word(fd) {
        if w.fetch_or(b, Ordering::Relaxed) & b == 0 {
            COUNT.fetch_add(1, Ordering::Relaxed);
        } else {
            take_entries(fd);
        }
    }
}

/// `fd` is no candidate any more; returns its entries.
pub fn forget(fd: c_int) -> Vec<(c_int, u32, u64)> {
    if let Some((w, b)) = word(fd) {
        if w.fetch_and(!b, Ordering::Relaxed) & b != 0 {
            COUNT.fetch_sub(1, Ordering::Relaxed);
        }
    }
    take_entries(fd)
}

/// Removes and returns `fd`'s entries.
fn take_entries(fd: c_int) -> Vec<(c_int, u32, u64)> {
    let mut all = ENTRIES.lock().unwrap_or_else(|e| e.into_inner());
    let mut mine = Vec::new();
    all.retain(|&(f, ep, ev, data)| {
        if f == fd {
            mine.push((ep, ev, data));
        }
        f != fd
    });
    mine
}

/// The candidates among `first..=last` are closed.
pub fn forget_range(first: c_int, last: c_int) {
    if !any() {
        return;
    }
    for fd in first.max(0)..=last.min(MAX_FD as c_int - 1) {
        if is(fd) {
            forget(fd);
        }
    }
}

/// The application's epoll_ctl `op` of candidate `fd` in kernel instance `epfd` succeeded.
pub fn note_ctl(epfd: c_int, op: c_int, fd: c_int, event: Option<(u32, u64)>) {
    let mut all = ENTRIES.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|&(f, ep, ..)| !(f == fd && ep == epfd));
    if let (libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD, Some((ev, data))) = (op, event) {
        all.push((fd, epfd, ev, data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_follow_the_applications_calls_until_the_socket_is_forgotten() {
        let (fd, ep) = (900_001, 7);
        assert!(!is(fd));
        mark(fd);
        assert!(is(fd) && any());
        note_ctl(ep, libc::EPOLL_CTL_ADD, fd, Some((1, 0xaa)));
        note_ctl(ep, libc::EPOLL_CTL_MOD, fd, Some((5, 0xbb)));
        note_ctl(ep + 1, libc::EPOLL_CTL_ADD, fd, Some((4, 0xcc)));
        note_ctl(ep + 1, libc::EPOLL_CTL_DEL, fd, None);
        assert_eq!(forget(fd), vec![(ep, 5, 0xbb)]);
        assert!(!is(fd));
        // A number made a candidate again starts with no entries.
        mark(fd);
        note_ctl(ep, libc::EPOLL_CTL_ADD, fd, Some((1, 0xaa)));
        mark(fd);
        assert_eq!(forget(fd), Vec::new());
        mark(fd);
        forget_range(fd - 1, fd + 1);
        assert!(!is(fd));
    }
}
