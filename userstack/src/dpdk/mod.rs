//! The DPDK port as a [`Link`](crate::link::Link): EAL start-up from a
//! [`Config`](crate::config::Config), one rx and one tx queue, received mbufs lent to the stack
//! without a copy, transmitted frames written into fresh mbufs and sent in one burst per poll.
//!
//! All of the stack's unsafe code is in this module:
//! - `eal`: the EAL command line from the configuration, and starting the EAL;
//! - `mbuf`: the mbuf a frame lives in, received or to transmit;
//! - `wake`: wake-up fds for drivers without one (af_packet's filter, af_xdp's socket);
//! - `signals`: net_tap receiving without a signal to the process;
//! - `log`: where DPDK's own messages go (stderr only if MTCP_LOG asks, or the start fails);
//! - `netdev`: ioctls on the kernel side of a port (tap address, queue length);
//! - `link`: the started port, [`DpdkLink`], and its transmit backlog.
//! - `fence`: bursts on a port against the drivers' callbacks on DPDK's interrupt thread.

use std::ffi::CStr;
use std::fmt;

use dpdk_sys as sys;

mod eal;
mod fence;
mod link;
mod log;
mod mbuf;
mod memif_wake;
mod netdev;
mod signals;
mod wake;

pub use eal::{device_args, eal_args, StartInfo};
pub use fence::{interrupt_thread_waits, on_interrupt_thread};
pub use link::DpdkLink;
pub use mbuf::Mbuf;

/// Why the device could not be started. `Display` is the message for users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn fail<T>(msg: impl Into<String>) -> Result<T, StartError> {
    Err(StartError(msg.into()))
}

fn rte_err(code: i32) -> String {
    let code = code.abs();
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    let s = unsafe { CStr::from_ptr(sys::rte_strerror(code)) };
    format!("{} (errno {code})", s.to_string_lossy())
}
