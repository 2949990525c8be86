//! Threads inside the kernel's own epoll_wait on an epoll instance that holds none of our fds,
//! the bell that gets them out when one of ours is added, and the one identity of an epoll
//! instance behind several fds.
//!
//! While an epoll instance holds only kernel fds, a wait on it is the kernel's (the hook
//! passes it through, counted here). Another thread may then add one of our fds to that
//! instance: tokio's driver thread blocks on its epoll before the program's first listener
//! exists, and every connection is registered from a worker thread. Linux would wake the
//! waiter when the new fd is ready; the kernel cannot, since our fd's readiness lives in the
//! stack. So the epoll_ctl that makes such an instance ours rings a bell: an eventfd, kept
//! readable, added to the instance with [`BELL`] as its data. Every kernel waiter returns
//! (epoll wakes its waiters one by one while a level-triggered entry stays ready), drops the
//! bell's entry from what it got, and goes on waiting through the stack for the rest of its
//! timeout. The last waiter out takes the bell away. The application never sees the bell:
//! every kernel epoll_wait on one of our instances drops its entries ([`drop_bells`]).
//!
//! Several fds may name one instance, and the shim does not see the dups of an fd that is not
//! ours yet (mio waits on its epoll fd and registers through an `F_DUPFD_CLOEXEC` copy of it).
//! An epoll fd the table does not know is matched against the instances it does by a probe
//! ([`same_instance`]: an eventfd added through one fd is already there through the other),
//! and made a dup of the one it names: when it is first used for one of our fds
//! (`runtime::epoll_ctl`), and when a thread is about to wait on it, whenever an instance of
//! ours was made since that fd was last probed ([`GENERATION`]).
//!
//! Lock order: the registry's lock is taken alone or after the table's lock, never before it.

use std::sync::Mutex;

use libc::{c_int, epoll_event};

use crate::fdtable::{self, FdState};

/// The data of a bell's (and a probe's) epoll entry: a kernel-half address, which no
/// application pointer or fd number is.
pub(crate) const BELL: u64 = 0xffff_b311_0000_0000;

struct Registry {
    /// (epoll fd, threads inside the kernel's wait on it).
    waits: Vec<(c_int, u32)>,
    /// (object index of an epoll instance of ours, its bell's eventfd, the fd it was added
    /// through).
    bells: Vec<(u32, c_int, c_int)>,
    /// Bumped whenever an epoll instance becomes ours.
    generation: u64,
    /// (epoll fd that is not ours, the generation it was last probed at).
    probed: Vec<(c_int, u64)>,
    /// One fd of every instance that became ours (those still ours are probed against).
    instances: Vec<c_int>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    waits: Vec::new(),
    bells: Vec::new(),
    generation: 0,
    probed: Vec::new(),
    instances: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The object index of `fd` if it is ours.
fn index(fd: c_int) -> Option<u32> {
    match fdtable::global()?.lookup(fd) {
        FdState::Ours(i) => Some(i),
        FdState::NotOurs => None,
    }
}

/// Whether epoll fds `a` and `b` name one kernel instance: an eventfd added through `a` (with
/// no events, so no waiter ever sees it) is already there through `b`.
pub(crate) fn same_instance(a: c_int, b: c_int, probe: c_int) -> bool {
    let mut ev = epoll_event {
        events: 0,
        u64: BELL,
    };
    // SAFETY: adding and removing our own eventfd, with no events, to the application's epoll
    // instances.
    unsafe {
        if libc::epoll_ctl(a, libc::EPOLL_CTL_ADD, probe, &mut ev) < 0 {
            return false;
        }
        let added = libc::epoll_ctl(b, libc::EPOLL_CTL_ADD, probe, &mut ev) == 0;
        let same = !added && crate::errno::get() == libc::EEXIST;
        if added {
            libc::epoll_ctl(b, libc::EPOLL_CTL_DEL, probe, std::ptr::null_mut());
        }
        libc::epoll_ctl(a, libc::EPOLL_CTL_DEL, probe, std::ptr::null_mut());
        same
    }
}

/// A fresh eventfd for [`same_instance`] (-1 if none can be made: nothing matches then).
pub(crate) fn probe_fd() -> c_int {
    // SAFETY: a new eventfd, closed by the caller.
    unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }
}

/// The generation of instances of ours, if `epfd` was not probed against it yet.
pub(crate) fn needs_probe(epfd: c_int) -> Option<u64> {
    let r = registry();
    let g = r.generation;
    match r.probed.iter().find(|(fd, _)| *fd == epfd) {
        Some((_, seen)) if *seen == g => None,
        _ if g == 0 => None,
        _ => Some(g),
    }
}

/// This thread is about to wait in the kernel on `epfd`, which was probed at generation
/// `probed_at` (None: no probe was needed). False if `epfd` is ours by now, or an instance of
/// ours was made since the probe (probe again); true: call [`leave`] after the wait.
pub(crate) fn enter(epfd: c_int, probed_at: Option<u64>) -> bool {
    let mut r = registry();
    // Checked under the registry's lock: an epoll_ctl that makes an instance ours marks it in
    // the fd table and bumps the generation before it takes this lock to look for waiters
    // (`added_to`), so either it sees this thread counted or this thread sees the change.
    if fdtable::is_ours(epfd) {
        return false;
    }
    if let Some(g) = probed_at {
        if g != r.generation {
            return false;
        }
        match r.probed.iter_mut().find(|(fd, _)| *fd == epfd) {
            Some((_, seen)) => *seen = g,
            None => r.probed.push((epfd, g)),
        }
    }
    match r.waits.iter_mut().find(|(fd, _)| *fd == epfd) {
        Some((_, n)) => *n += 1,
        None => r.waits.push((epfd, 1)),
    }
    true
}

/// This thread's kernel wait on `epfd` is over. The last waiter out of an instance with a bell
/// takes the bell away.
pub(crate) fn leave(epfd: c_int) {
    let mut r = registry();
    let Some(i) = r.waits.iter().position(|(fd, _)| *fd == epfd) else {
        return;
    };
    r.waits[i].1 -= 1;
    if r.waits[i].1 == 0 {
        r.waits.swap_remove(i);
    }
    let Some(obj) = index(epfd) else {
        return;
    };
    if r.waits.iter().any(|(fd, _)| index(*fd) == Some(obj)) {
        return;
    }
    if let Some(j) = r.bells.iter().position(|(o, _, _)| *o == obj) {
        let (_, bell, via) = r.bells.swap_remove(j);
        // SAFETY: the eventfd this module made and added through `via`; the DEL fails
        // harmlessly if the application closed `via` meanwhile (closing the eventfd then
        // removes the entry).
        unsafe {
            libc::epoll_ctl(via, libc::EPOLL_CTL_DEL, bell, std::ptr::null_mut());
            libc::close(bell);
        }
    }
}

/// An epoll instance just became ours: the fds threads are waiting on in the kernel (copied
/// out, to be probed by the caller), after bumping the generation.
pub(crate) fn became_ours(epfd: c_int) -> Vec<c_int> {
    let mut r = registry();
    r.generation += 1;
    r.instances.retain(|fd| fdtable::is_ours(*fd));
    r.instances.push(epfd);
    r.waits.iter().map(|(fd, _)| *fd).collect()
}

/// One fd of each epoll instance of ours (read without the table's lock: DPDK's interrupt
/// thread waits on an epoll instance of its own, and must never wait for that lock).
pub(crate) fn instances() -> Vec<c_int> {
    let r = registry();
    r.instances
        .iter()
        .copied()
        .filter(|fd| fdtable::is_ours(*fd))
        .collect()
}

/// `epfd` is ours (one of our fds was just added to its instance, which held none): threads
/// inside the kernel's wait on any fd of the instance are rung out of it.
pub(crate) fn ring(epfd: c_int) {
    let Some(obj) = index(epfd) else {
        return;
    };
    let mut r = registry();
    if !r.waits.iter().any(|(fd, _)| index(*fd) == Some(obj))
        || r.bells.iter().any(|(o, _, _)| *o == obj)
    {
        return;
    }
    // SAFETY: a new eventfd, readable from the start (counter 1), never read.
    let bell =
        super::fds::lift(unsafe { libc::eventfd(1, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) });
    if bell < 0 {
        crate::shim_log!(
            "cannot wake a thread waiting on epoll fd {epfd} for the socket just added to it \
             (eventfd: {}); it sees the socket when its wait ends",
            std::io::Error::last_os_error()
        );
        return;
    }
    let mut ev = epoll_event {
        events: libc::EPOLLIN as u32,
        u64: BELL,
    };
    // SAFETY: adding our eventfd to the application's epoll instance, with the bell's data.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, bell, &mut ev) } < 0 {
        // SAFETY: the eventfd made above.
        unsafe { libc::close(bell) };
        return;
    }
    r.bells.push((obj, bell, epfd));
}

/// Drops the bells' entries from the first `n` events a kernel epoll_wait wrote; returns how
/// many are left (moved to the front, in order). Always a full look (a comparison per event):
/// a bell taken away by another thread may still be in what this one got.
pub(crate) fn drop_bells(events: &mut [std::mem::MaybeUninit<epoll_event>], n: usize) -> usize {
    let mut kept = 0;
    for i in 0..n {
        // SAFETY: the kernel wrote the first `n` entries.
        let ev = unsafe { events[i].assume_init_read() };
        let data = ev.u64;
        if data != BELL {
            events[kept].write(ev);
            kept += 1;
        }
    }
    kept
}

/// A bell for an epoll set of ours nested in another epoll set: an eventfd in `epfd`'s kernel
/// instance with [`BELL`] as its data, not readable yet (-1 if it cannot be made).
pub(crate) fn nest_bell(epfd: c_int) -> c_int {
    // SAFETY: a new eventfd, owned by the socket table from now on.
    let bell =
        super::fds::lift(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) });
    if bell < 0 {
        return -1;
    }
    let mut ev = epoll_event {
        events: libc::EPOLLIN as u32,
        u64: BELL,
    };
    // SAFETY: adding our eventfd to the application's epoll instance, with the bell's data.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, bell, &mut ev) } < 0 {
        // SAFETY: the eventfd made above.
        unsafe { libc::close(bell) };
        return -1;
    }
    bell
}

/// Makes a nested set's bell readable (`on`) or drains it.
pub(crate) fn ring_bell(bell: c_int, on: bool) {
    let mut v: u64 = 1;
    // SAFETY: an 8-byte write to or read from our own nonblocking eventfd.
    unsafe {
        if on {
            libc::write(bell, (&v as *const u64).cast(), 8);
        } else {
            libc::read(bell, (&mut v as *mut u64).cast(), 8);
        }
    }
}
