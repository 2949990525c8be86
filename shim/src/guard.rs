//! The thread-local re-entrancy guard.
//!
//! While a thread runs the library's own code (an op, the panic hook, later the stack and
//! DPDK's threads), every hook it calls — from Rust std, malloc, dlsym, logging — goes straight
//! to libc's original. That keeps the library from re-entering itself (and its locks) and makes
//! its own kernel fds (wake-up eventfds marked "ours" in the fd table) plain kernel fds to it.
//!
//! The guard is a zero-initialised thread-local counter with no destructor (`crate::tls`):
//! reading it is one TLS access (two instructions on x86-64), never allocates, and works at
//! any point of a thread's life.

use std::cell::Cell;

/// True while this thread is inside the library.
#[inline]
pub fn active() -> bool {
    crate::tls::depth().get() != 0
}

/// Marks this thread as inside the library until the value is dropped (also on unwind). It
/// holds the thread's counter: entering is one TLS access, leaving none.
#[must_use = "the guard is released when this value is dropped"]
pub struct Entered(*const Cell<u32>);

impl Entered {
    #[inline]
    pub fn new() -> Entered {
        let c = crate::tls::depth();
        let d = c as *const Cell<u32>;
        c.set(c.get() + 1);
        Entered(d)
    }

    /// Enters the library unless this thread is inside it already (`None`: a call the library
    /// makes itself). The hooks' one TLS access.
    #[inline]
    pub fn outermost() -> Option<Entered> {
        let c = crate::tls::depth();
        let d = c as *const Cell<u32>;
        if c.get() != 0 {
            return None;
        }
        c.set(1);
        Some(Entered(d))
    }
}

impl Default for Entered {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Entered {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the counter `new` found, on this same thread (see there).
        let c = unsafe { &*self.0 };
        c.set(c.get() - 1);
    }
}

/// Added to the depth of DPDK's interrupt thread while its drivers' callbacks run (from the
/// return of its epoll wait to its next one): every hook those callbacks call goes to libc, as
/// the library's own calls do (they hold the interrupt thread's fence, and must not wait for
/// the socket table, whose holder may wait for the fence), but the next epoll wait
/// ([`callbacks_end`]).
const CALLBACKS: u32 = 1 << 30;

/// On DPDK's interrupt thread, inside its epoll wait's hook: the callbacks that follow run as
/// the library's own code.
pub fn callbacks_begin() {
    let d = crate::tls::depth();
    d.set(d.get() + CALLBACKS);
}

/// At a hooked epoll wait: if this is DPDK's interrupt thread back from its callbacks, ends
/// their state and enters the library for the wait; `None` otherwise.
pub fn callbacks_end() -> Option<Entered> {
    let c = crate::tls::depth();
    let d = c as *const Cell<u32>;
    if c.get() != CALLBACKS {
        return None;
    }
    c.set(1);
    Some(Entered(d))
}

/// Marks the calling thread as the library's own for the rest of its life (for threads the
/// library starts itself, e.g. DPDK's service threads): all its hooked calls go to libc.
pub fn mark_thread_internal() {
    std::mem::forget(Entered::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nests_and_releases() {
        assert!(!active());
        {
            let _a = Entered::new();
            assert!(active());
            {
                let _b = Entered::new();
                assert!(active());
            }
            assert!(active());
        }
        assert!(!active());
    }

    #[test]
    fn outermost_only_outside() {
        {
            let _a = Entered::outermost().expect("outside the library");
            assert!(active());
            assert!(Entered::outermost().is_none(), "inside already");
            let _b = Entered::new();
        }
        assert!(!active());
        assert!(Entered::outermost().is_some());
        assert!(!active());
    }

    #[test]
    fn released_on_unwind() {
        let r = std::panic::catch_unwind(|| {
            let _g = Entered::new();
            panic!("boom");
        });
        assert!(r.is_err());
        assert!(!active());
    }

    #[test]
    fn per_thread() {
        let _g = Entered::new();
        let other = std::thread::spawn(active).join().unwrap();
        assert!(!other);
        assert!(active());
    }

    #[test]
    fn callbacks_run_as_the_librarys_own_until_the_next_wait() {
        std::thread::spawn(|| {
            assert!(callbacks_end().is_none(), "not in callbacks");
            {
                let _wait = Entered::outermost().expect("outermost");
                callbacks_begin();
            }
            assert!(active(), "callbacks are inside");
            assert!(Entered::outermost().is_none());
            {
                let _wait = callbacks_end().expect("the next wait ends them");
                assert!(active());
            }
            assert!(!active());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn internal_thread_stays_marked() {
        let v = std::thread::spawn(|| {
            mark_thread_internal();
            active()
        })
        .join()
        .unwrap();
        assert!(v);
    }
}
