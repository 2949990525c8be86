//! libmtcpshim: the LD_PRELOAD layer (issue 4).
//!
//! `LD_PRELOAD=libmtcpshim.so MTCP_PORTS=6379 redis-server` puts this library in front of libc
//! for every socket call. This first layer is the hook machinery and the passthrough path: every
//! fd that is not ours (today: every fd) goes to libc's own function, with the same arguments,
//! the same return value and the same errno. The user-space stack plugs in behind [`ops`].
//!
//! Layout:
//! - `table`: the ONE list of intercepted calls with their C signatures. The `intercept!`
//!   macro (in `hook`) expands it into the saved originals and the exported hooks.
//! - `hook`: the expansion, the lazy `dlsym(RTLD_NEXT)` resolution, the slow path (trace
//!   counts, gate, re-entrancy guard, panic barrier, errno), and `MTCP_SHIM_TRACE`.
//! - `ops`: what the library does with a call that may be its own. Returns
//!   `ops::Outcome`: `Bypass(reason)` (libc runs the call), `Done(value)` or `Error(errno)`.
//! - `fdtable`: which fds are ours; one relaxed atomic load per lookup.
//! - `config`: `MTCP_PORTS`.
//! - `guard`: the thread-local re-entrancy guard. `rawio`: the library's own output, by raw
//!   syscalls only. `errno`: errno access.
//!
//! Nothing runs in an ELF constructor: the first call of any hook reads the environment
//! (`init`) and resolves every original with `dlsym(RTLD_NEXT)`. With `MTCP_PORTS` and
//! `MTCP_SHIM_TRACE` unset a hook costs one load of the cached original and one load of the
//! mode word before the jump into libc (9 instructions per call, measured with callgrind by
//! `tests/tests/shim_passthrough.rs`); with `MTCP_PORTS` set, fd calls stay that cheap until
//! an fd first becomes ours.
//!
//! Panic policy: a panic inside the library is caught at the hook (it never unwinds into C),
//! reported on stderr and the process aborts. Returning -1/EIO instead would keep a process
//! running whose socket layer just failed halfway through a change of its own state, and would
//! hand the application an error the kernel never produces: a silent misbehaviour (pitfall 15).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod errno;
pub mod fdtable;
pub mod guard;
#[macro_use]
pub mod rawio;
#[macro_use]
pub mod hook;
mod init;
pub mod ops;
mod raw;
pub mod table;
mod user;

pub use hook::{Id, COUNT, NAMES};
