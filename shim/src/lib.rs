//! libmtcpshim: the LD_PRELOAD layer.
//!
//! `LD_PRELOAD=libmtcpshim.so MTCP_PORTS=6379 redis-server` puts this library in front of libc
//! for every socket call. Listening sockets on the flagged ports, the connections they accept
//! and the epoll instances that watch them are served by the user-space stack (`userstack`);
//! every other fd goes to libc's own function, with the same arguments, the same return value
//! and the same errno.
//!
//! Layout, bottom up (a module only uses those above it in this list, or its own children):
//! - `mode`: the mode word every hook loads first; `outcome`: what an op tells its hook
//!   (`Bypass`: libc runs the call, `Done(value)`, `Error(errno)`); `errno`, `guard` (the
//!   thread-local re-entrancy guard), `rawio` (the library's own output, by raw syscalls).
//! - `config`: `MTCP_PORTS`. `fdtable`: which fds are ours; one relaxed atomic load per lookup.
//! - `sockets`: the socket table with Linux's meaning, generic over the stack's link, with no
//!   global state, no system call and no raw pointer; unit-tested over `MemLink`.
//! - `runtime`: the process's one table behind a lock, the keeper thread, fork, waiting and
//!   naps, wake-ups between threads.
//! - `ops`: the C-ABI translation: one function per intercepted call, from raw pointers to
//!   slices and values and back. The only module that dereferences the caller's pointers.
//! - `table`: the ONE list of intercepted calls with their C signatures; `hook`: the
//!   `intercept!` macro that expands it into the saved originals and the exported hooks, the
//!   lazy `dlsym(RTLD_NEXT)` resolution, the slow path (trace counts, gate, re-entrancy guard,
//!   panic barrier, errno) and `MTCP_SHIM_TRACE`. `init`: reading the environment once.
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
//! hand the application an error the kernel never produces: a silent misbehaviour.

pub mod cache;
pub mod candidates;
pub mod config;
pub mod errno;
pub mod fdtable;
pub mod guard;
pub mod mode;
pub mod outcome;
#[macro_use]
pub mod rawio;
#[macro_use]
pub mod hook;
mod init;
mod mono;
pub mod ops;
mod raw;
mod runtime;
pub mod sockets;
pub mod table;
mod tls;

pub use table::{Id, COUNT, NAMES};
