//! The fence between DPDK's interrupt thread and the data path.
//!
//! The EAL runs the drivers' control-plane callbacks on a thread of its own, the interrupt
//! thread: it sleeps in `epoll_wait` on the drivers' control fds and runs their callbacks when
//! one fires. net_memif's callback handles its peer's control messages, and on the peer's
//! disconnect (or the peer's process ending) it unmaps the shared memory and closes the
//! rings' interrupt fds, with nothing to stop a receive or transmit burst that is reading the
//! same rings on another thread: that burst checked the link's connected flag only at its
//! start, and faults on the unmapped ring (a server killed by SIGSEGV in `eth_memif_rx` when
//! its peer exits mid-flood).
//!
//! The fence: the interrupt thread holds [`FENCE`] from the return of its `epoll_wait` (the
//! callbacks it is about to run) to its next call (the caller of the process's `epoll_wait`
//! tells us, through [`interrupt_thread_waits`]); bursts on a fenced port take it for the
//! burst. A burst then runs wholly before a callback or wholly after it, and one after a
//! disconnect finds the connected flag clear and touches no ring. Only ports whose driver
//! needs it are fenced ([`needs_fence`]): the rest pay nothing per burst.
//!
//! Nothing that holds the fence may wait for anything a burst's caller holds: a burst takes
//! nothing else, and the caller of [`interrupt_thread_waits`] keeps the callbacks' own calls
//! away from its locks (the shim runs them as its own code: straight to libc).

use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard};

use dpdk_sys as sys;

static FENCE: Mutex<()> = Mutex::new(());

thread_local! {
    /// On the interrupt thread: the fence, held while its callbacks run.
    static HELD: RefCell<Option<MutexGuard<'static, ()>>> = const { RefCell::new(None) };
}

fn lock() -> MutexGuard<'static, ()> {
    // Nothing the fence guards is left half-changed by a panic: a poisoned fence is still one.
    FENCE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the calling thread is the EAL's interrupt thread (false before the EAL started,
/// and in a process without DPDK).
pub fn on_interrupt_thread() -> bool {
    // SAFETY: no arguments; compares the caller's thread id with the interrupt thread's
    // (zero until the EAL started it).
    unsafe { sys::rte_thread_is_intr() != 0 }
}

/// Runs `wait` (the interrupt thread's own `epoll_wait`) with the fence released: the
/// callbacks that ran since the last wait are done. Takes the fence again before returning,
/// for the callbacks the wait's events are about to run.
pub fn interrupt_thread_waits<R>(wait: impl FnOnce() -> R) -> R {
    drop(HELD.with(|h| h.borrow_mut().take()));
    let r = wait();
    let g = lock();
    HELD.with(|h| *h.borrow_mut() = Some(g));
    r
}

/// The fence for the length of a burst on a fenced port.
pub(super) fn burst() -> MutexGuard<'static, ()> {
    lock()
}

/// Whether bursts on a port of driver `name` take the fence: net_memif's callbacks unmap its
/// rings.
pub(super) fn needs_fence(name: &str) -> bool {
    name.starts_with("net_memif")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn no_interrupt_thread_before_the_eal_starts() {
        assert!(!on_interrupt_thread());
    }

    #[test]
    fn a_burst_waits_for_the_callbacks_and_runs_while_the_thread_waits() {
        let (to_wait, waiting) = std::sync::mpsc::channel::<()>();
        let (to_go, go) = std::sync::mpsc::channel::<()>();
        let in_callbacks = Arc::new(AtomicBool::new(false));
        let flag = in_callbacks.clone();
        // A stand-in for the interrupt thread: one wait (returns at once), callbacks, then a
        // wait that blocks until the test says so.
        let intr = std::thread::spawn(move || {
            interrupt_thread_waits(|| ());
            flag.store(true, Ordering::SeqCst);
            to_wait.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            flag.store(false, Ordering::SeqCst);
            interrupt_thread_waits(|| go.recv().unwrap());
        });
        waiting.recv().unwrap();
        {
            let _b = burst();
            assert!(
                !in_callbacks.load(Ordering::SeqCst),
                "a burst ran inside the callbacks"
            );
        }
        to_go.send(()).unwrap();
        intr.join().unwrap();
    }

    #[test]
    fn only_memif_is_fenced() {
        assert!(needs_fence("net_memif0"));
        assert!(!needs_fence("net_af_packet0"));
        assert!(!needs_fence("net_tap0"));
    }
}
