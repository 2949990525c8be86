//! The af_packet PMD's fanout group, while the stack starts its port.
//!
//! DPDK 22.11's net_af_packet puts its socket in a PACKET_FANOUT group whose id is
//! `(getpid() ^ ifindex) & 0xffff`. Group ids are shared by the whole network namespace: a
//! process whose id happens to equal a group another process holds on another interface (two
//! servers under the shim in one namespace, each on its own interface, with sequential pids
//! and interface numbers) gets EINVAL, and DPDK creates no port. The id means nothing but
//! "the PMD's own sockets": while the stack starts its port, a PACKET_FANOUT request that
//! fails with EINVAL is made again for a group of its own whose id the kernel picks
//! (PACKET_FANOUT_FLAG_UNIQUEID), and later requests for the same id (the PMD's other queues)
//! get the same replacement. Not the next id that works: that may be the group of another
//! process on the same interface (a sibling worker whose own id was replaced), which the
//! socket would join, and the kernel would then split the frames between the two processes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use libc::{c_int, c_void, socklen_t};

use crate::outcome::{Bypass, Outcome};

/// The stack is starting its DPDK port (`Host::start`).
static STARTING: AtomicBool = AtomicBool::new(false);
/// The id the PMD asked for (bits 16-31) and the one it got instead (bits 0-15), with bit 32
/// set once an id was replaced.
static REPLACED: AtomicU64 = AtomicU64::new(0);
const REPLACED_SET: u64 = 1 << 32;
/// Asks the kernel for a group id nobody uses (linux/if_packet.h; flags of the request's
/// upper half).
const FANOUT_FLAG_UNIQUEID: u32 = 0x2000;

/// Whether the stack is starting its DPDK port now.
#[inline]
pub fn starting_dpdk() -> bool {
    STARTING.load(Ordering::Relaxed)
}

/// Marks the stack's port start for as long as the guard lives.
pub struct Starting;

impl Starting {
    pub fn begin() -> Starting {
        STARTING.store(true, Ordering::SeqCst);
        Starting
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        STARTING.store(false, Ordering::SeqCst);
    }
}

fn set(fd: c_int, arg: u32) -> Result<(), c_int> {
    let v = arg as c_int;
    // SAFETY: the raw system call (libc's setsockopt would be our own hook), with a valid int.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setsockopt,
            fd,
            libc::SOL_PACKET,
            libc::PACKET_FANOUT,
            (&v as *const c_int).cast::<c_void>(),
            std::mem::size_of::<c_int>() as socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL))
    }
}

/// The id of the group socket `fd` is in.
fn group_of(fd: c_int) -> Result<u32, c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: the raw system call, with a valid int and its length.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            libc::SOL_PACKET,
            libc::PACKET_FANOUT,
            (&mut v as *mut c_int).cast::<c_void>(),
            &mut len as *mut socklen_t,
        )
    };
    if r == 0 {
        Ok(v as u32 & 0xffff)
    } else {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL))
    }
}

/// setsockopt(SOL_PACKET, PACKET_FANOUT) on a socket that is not ours: see the module.
///
/// # Safety
/// `val` points to `len` readable bytes (setsockopt's contract).
pub unsafe fn packet_fanout(fd: c_int, val: *const c_void, len: socklen_t) -> Outcome<c_int> {
    if !starting_dpdk() || val.is_null() || len as usize != std::mem::size_of::<c_int>() {
        return Outcome::Bypass(Bypass::NotOurs);
    }
    // SAFETY: the caller's contract; an int may be unaligned in the caller's buffer.
    let arg = unsafe { val.cast::<u32>().read_unaligned() };
    let (id, mode) = (arg & 0xffff, arg & !0xffff);
    let replaced = REPLACED.load(Ordering::Relaxed);
    let asked = if replaced & REPLACED_SET != 0 && (replaced >> 16) & 0xffff == u64::from(id) {
        (replaced & 0xffff) as u32 | mode
    } else {
        arg
    };
    match set(fd, asked) {
        Ok(()) => return Outcome::Done(0),
        Err(libc::EINVAL) => {}
        Err(e) => return Outcome::Error(e),
    }
    if let Err(e) = set(fd, mode | FANOUT_FLAG_UNIQUEID << 16) {
        return Outcome::Error(e);
    }
    match group_of(fd) {
        Ok(other) => {
            REPLACED.store(
                REPLACED_SET | u64::from(id) << 16 | u64::from(other),
                Ordering::Relaxed,
            );
            Outcome::Done(0)
        }
        Err(e) => Outcome::Error(e),
    }
}
