//! Once-per-process setup, run lazily by the first hook call that resolves an original (never in
//! an ELF constructor): reads `MTCP_SHIM_TRACE` and `MTCP_PORTS` and publishes the mode word.
//!
//! It allocates nothing and calls no hooked function (getenv, parsing into statics, raw writes),
//! so it cannot re-enter a hook. Another thread arriving meanwhile waits (a few microseconds);
//! the initialising thread itself, re-entered from a signal handler, does not wait for itself:
//! its nested call just sees the mode as it is (passthrough) so far.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::mode::{set_mode, MODE_CONFIG, MODE_TRACE};

const UNINIT: u8 = 0;
const BUSY: u8 = 1;
const DONE: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);

thread_local! {
    static INITIALISING: Cell<bool> = const { Cell::new(false) };
}

/// Runs the setup if nobody has; returns once it is done (or at once on the thread doing it).
#[inline]
pub(crate) fn ensure() {
    if STATE.load(Ordering::Acquire) != DONE {
        slow();
    }
}

#[cold]
fn slow() {
    match STATE.compare_exchange(UNINIT, BUSY, Ordering::Acquire, Ordering::Acquire) {
        Ok(_) => {
            INITIALISING.with(|i| i.set(true));
            if std::panic::catch_unwind(run).is_err() {
                crate::shim_die!("panic while reading the environment");
            }
            INITIALISING.with(|i| i.set(false));
            STATE.store(DONE, Ordering::Release);
        }
        Err(_) => {
            if INITIALISING.with(|i| i.get()) {
                return;
            }
            while STATE.load(Ordering::Acquire) != DONE {
                std::hint::spin_loop();
                // SAFETY: sched_yield has no preconditions (raw: `sched_yield` is not hooked,
                // but this keeps the library's own calls uniform).
                unsafe { libc::syscall(libc::SYS_sched_yield) };
            }
        }
    }
}

fn run() {
    let mut mode = 0;
    if env_flag(c"MTCP_SHIM_TRACE") {
        mode |= MODE_TRACE;
    }
    crate::config::init_from_env();
    // A stack is configured: listeners on MTCP_PORTS, and connect()s MTCP_CONNECT gives it.
    if crate::config::state() != crate::config::State::Unset
        || env_set(c"MTCP_DEV")
        || env_set(c"MTCP_ADDR")
    {
        mode |= MODE_CONFIG;
    }
    if mode != 0 {
        set_mode(mode);
    }
}

/// A boolean variable: set, non-empty and not `0`.
fn env_flag(name: &std::ffi::CStr) -> bool {
    // SAFETY: getenv with a NUL-terminated name.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return false;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
    !v.is_empty() && v != b"0"
}

/// At load: if MTCP_PORTS is set, a thread checks once the program runs that every flagged
/// port it listens on goes through the shim (runtime::watch). Reads one variable, nothing else.
extern "C" fn watch_at_load() {
    crate::runtime::own_memory();
    // SAFETY: getenv with a NUL-terminated name; the result is only tested.
    let p = unsafe { libc::getenv(c"MTCP_PORTS".as_ptr()) };
    // SAFETY: a non-null getenv result is a NUL-terminated string.
    if !p.is_null() && unsafe { *p } != 0 && !env_is(c"MTCP_WATCH", b"off") {
        crate::runtime::watch::start();
    }
}

/// Whether `name` is set to a non-empty value.
fn env_set(name: &std::ffi::CStr) -> bool {
    // SAFETY: getenv with a NUL-terminated name; the result is read at once.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    // SAFETY: a non-null getenv result is a NUL-terminated string.
    !p.is_null() && unsafe { *p } != 0
}

/// Whether variable `name` is set to `value`.
fn env_is(name: &std::ffi::CStr, value: &[u8]) -> bool {
    // SAFETY: getenv with a NUL-terminated name.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    // SAFETY: getenv returned a NUL-terminated string.
    !p.is_null() && unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes() == value
}

#[used]
#[link_section = ".init_array"]
static WATCH_AT_LOAD: extern "C" fn() = watch_at_load;
