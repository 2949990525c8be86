//! The thread-local re-entrancy guard.
//!
//! While a thread runs the library's own code (an op, the panic hook, later the stack and
//! DPDK's threads), every hook it calls — from Rust std, malloc, dlsym, logging — goes straight
//! to libc's original. That keeps the library from re-entering itself (and its locks) and makes
//! its own kernel fds (wake-up eventfds marked "ours" in the fd table) plain kernel fds to it.
//!
//! The guard is a `const`-initialised `Cell` with no destructor: reading it is one TLS access,
//! never allocates, and works at any point of a thread's life.

use std::cell::Cell;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// True while this thread is inside the library.
///
/// Not inlined: in a shared library a TLS access is a call to `__tls_get_addr`, which the
/// compiler would otherwise hoist to the top of callers that need it on one branch only.
#[inline(never)]
pub fn active() -> bool {
    DEPTH.with(|d| d.get() != 0)
}

/// Marks this thread as inside the library until the value is dropped (also on unwind).
#[must_use = "the guard is released when this value is dropped"]
pub struct Entered(());

impl Entered {
    #[inline]
    pub fn new() -> Entered {
        DEPTH.with(|d| d.set(d.get() + 1));
        Entered(())
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
        DEPTH.with(|d| d.set(d.get() - 1));
    }
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
