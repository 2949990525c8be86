//! Kernel TCP sockets that connect() may make the stack's, and what connect() needs to know of
//! them: their family, the epoll entries the application gave them before it connected them
//! (nginx adds an upstream socket to its epoll instance, then connects it), the options it set
//! and whether it bound them. A bit per fd number, read without a lock by the close, epoll_ctl
//! and setsockopt hooks, and the records under a lock, so that connect() moves the entries to
//! the shim's set (`runtime::adopt_entries`) and reads back only the options the application
//! set (a fresh socket's others are the system's defaults), without asking the kernel about
//! each option a connection could inherit.
//!
//! A socket is a candidate from socket() (AF_INET or AF_INET6, SOCK_STREAM, while MTCP_CONNECT
//! gives the stack destinations) until it is closed, listens, or connects through the kernel
//! or the stack. A number that stops naming the socket unseen (dup2 over it) keeps its bit:
//! its entries are then checked against the kernel's before they move, and the options read
//! back are those set on the number. A candidate duplicated, or a number dup2() made name
//! another socket, is asked about as any other socket.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use libc::c_int;

/// fd numbers with a bit (the fd table's range).
const MAX_FD: usize = 1 << 20;

static BITS: OnceLock<Box<[AtomicU64]>> = OnceLock::new();
/// Candidates now.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// What is known of a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Record {
    /// Its socket's domain (AF_INET or AF_INET6), from socket().
    Domain(c_int),
    /// An entry in a kernel epoll instance: the instance, events, data.
    Entry(c_int, u32, u64),
    /// setsockopt(level, name) succeeded on it.
    Opt(c_int, c_int),
    /// bind() was called on it.
    Bound,
    /// It was duplicated: an option set or a bind through the other number is not seen here.
    Shared,
}

/// Each candidate's records, by fd, behind a lock that fork() takes first (pthread_atfork):
/// a child forked while another thread held it (in socket(), setsockopt, bind) neither finds
/// it held for ever nor the list half changed.
struct Records {
    locked: AtomicBool,
    list: UnsafeCell<Vec<(c_int, Record)>>,
}

// SAFETY: `list` is only reached through `RecordsGuard`, which holds `locked`.
unsafe impl Sync for Records {}

static RECORDS: Records = Records {
    locked: AtomicBool::new(false),
    list: UnsafeCell::new(Vec::new()),
};

impl Records {
    fn lock(&self) {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
    }

    fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

struct RecordsGuard;

impl std::ops::Deref for RecordsGuard {
    type Target = Vec<(c_int, Record)>;
    fn deref(&self) -> &Self::Target {
        // SAFETY: the guard holds the lock.
        unsafe { &*RECORDS.list.get() }
    }
}

impl std::ops::DerefMut for RecordsGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        // SAFETY: the guard holds the lock.
        unsafe { &mut *RECORDS.list.get() }
    }
}

impl Drop for RecordsGuard {
    fn drop(&mut self) {
        RECORDS.unlock();
    }
}

extern "C" fn lock_for_fork() {
    RECORDS.lock();
}

extern "C" fn unlock_after_fork() {
    RECORDS.unlock();
}

/// Has fork() take the records' lock first (at load, before any thread can hold it).
pub fn lock_across_fork() {
    // SAFETY: registering handlers that only take and release this lock.
    unsafe {
        libc::pthread_atfork(
            Some(lock_for_fork),
            Some(unlock_after_fork),
            Some(unlock_after_fork),
        )
    };
}

fn records() -> RecordsGuard {
    RECORDS.lock();
    RecordsGuard
}

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

/// `fd` is a new candidate, a socket of `domain` (a number reused unseen: what the old one
/// had goes).
pub fn mark(fd: c_int, domain: c_int) {
    if let Some((w, b)) = word(fd) {
        if w.fetch_or(b, Ordering::Relaxed) & b == 0 {
            COUNT.fetch_add(1, Ordering::Relaxed);
        } else {
            take_entries(fd);
        }
        records().push((fd, Record::Domain(domain)));
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

/// Removes `fd`'s records; returns its entries.
fn take_entries(fd: c_int) -> Vec<(c_int, u32, u64)> {
    let mut all = records();
    let mut mine = Vec::new();
    all.retain(|&(f, r)| {
        if let (true, Record::Entry(ep, ev, data)) = (f == fd, r) {
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
    let mut all = records();
    all.retain(|&(f, r)| !(f == fd && matches!(r, Record::Entry(ep, ..) if ep == epfd)));
    if let (libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD, Some((ev, data))) = (op, event) {
        all.push((fd, Record::Entry(epfd, ev, data)));
    }
}

/// setsockopt(`level`, `name`) on candidate `fd` succeeded.
pub fn note_option(fd: c_int, level: c_int, name: c_int) {
    let mut all = records();
    if !all.contains(&(fd, Record::Opt(level, name))) {
        all.push((fd, Record::Opt(level, name)));
    }
}

/// bind() was called on candidate `fd`.
pub fn note_bind(fd: c_int) {
    let mut all = records();
    if !all.contains(&(fd, Record::Bound)) {
        all.push((fd, Record::Bound));
    }
}

/// Candidate `fd` was duplicated (dup, dup2/dup3 or F_DUPFD from it): from now on connect()
/// asks the kernel about it.
pub fn note_dup(fd: c_int) {
    let mut all = records();
    if !all.contains(&(fd, Record::Shared)) {
        all.push((fd, Record::Shared));
    }
}

/// What connect() needs of candidate `fd`: its domain, the options the application set on it
/// (level, name), whether it was bound. `None`: not a candidate, or one whose socket another
/// number shares (connect() asks the kernel).
pub fn known(fd: c_int) -> Option<Known> {
    if !is(fd) {
        return None;
    }
    let all = records();
    let mut k = Known {
        domain: None,
        options: Vec::new(),
        bound: false,
    };
    for &(f, r) in all.iter().filter(|(f, _)| *f == fd) {
        debug_assert_eq!(f, fd);
        match r {
            Record::Domain(d) => k.domain = Some(d),
            Record::Opt(level, name) => k.options.push((level, name)),
            Record::Bound => k.bound = true,
            Record::Shared => return None,
            Record::Entry(..) => {}
        }
    }
    // (Marked before records were kept: nothing is known.)
    k.domain?;
    Some(k)
}

/// What is known of a candidate ([`known`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    pub domain: Option<c_int>,
    pub options: Vec<(c_int, c_int)>,
    pub bound: bool,
}

impl Known {
    /// Whether the application set (`level`, `name`).
    pub fn set(&self, level: c_int, name: c_int) -> bool {
        self.options.contains(&(level, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_follow_the_applications_calls_until_the_socket_is_forgotten() {
        let (fd, ep) = (900_001, 7);
        assert!(!is(fd));
        mark(fd, libc::AF_INET);
        assert!(is(fd) && any());
        note_ctl(ep, libc::EPOLL_CTL_ADD, fd, Some((1, 0xaa)));
        note_ctl(ep, libc::EPOLL_CTL_MOD, fd, Some((5, 0xbb)));
        note_ctl(ep + 1, libc::EPOLL_CTL_ADD, fd, Some((4, 0xcc)));
        note_ctl(ep + 1, libc::EPOLL_CTL_DEL, fd, None);
        assert_eq!(forget(fd), vec![(ep, 5, 0xbb)]);
        assert!(!is(fd));
        // A number made a candidate again starts with no entries.
        mark(fd, libc::AF_INET);
        note_ctl(ep, libc::EPOLL_CTL_ADD, fd, Some((1, 0xaa)));
        mark(fd, libc::AF_INET);
        assert_eq!(forget(fd), Vec::new());
        mark(fd, libc::AF_INET);
        forget_range(fd - 1, fd + 1);
        assert!(!is(fd));
    }

    #[test]
    fn options_set_and_bind_are_known_until_the_socket_is_forgotten() {
        let fd = 900_101;
        assert_eq!(known(fd), None);
        mark(fd, libc::AF_INET6);
        note_option(fd, libc::IPPROTO_TCP, libc::TCP_CORK);
        note_option(fd, libc::IPPROTO_TCP, libc::TCP_CORK);
        note_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF);
        note_ctl(3, libc::EPOLL_CTL_ADD, fd, Some((1, 2)));
        let k = known(fd).expect("a candidate");
        assert_eq!(k.domain, Some(libc::AF_INET6));
        assert_eq!(
            k.options,
            [
                (libc::IPPROTO_TCP, libc::TCP_CORK),
                (libc::SOL_SOCKET, libc::SO_RCVBUF)
            ]
        );
        assert!(!k.bound && k.set(libc::IPPROTO_TCP, libc::TCP_CORK));
        note_bind(fd);
        assert!(known(fd).expect("a candidate").bound);
        // A number made a candidate again knows only its new socket.
        mark(fd, libc::AF_INET);
        let k = known(fd).expect("a candidate");
        assert_eq!(
            (k.domain, k.options.len(), k.bound),
            (Some(libc::AF_INET), 0, false)
        );
        note_dup(fd);
        assert_eq!(known(fd), None, "a duplicated socket is asked about");
        assert_eq!(forget(fd), Vec::new());
        assert_eq!(known(fd), None);
    }
}
