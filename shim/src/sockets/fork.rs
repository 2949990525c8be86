//! What a forked child may do with the fds of ours it inherited.
//!
//! The child shares DPDK's memory (the device, the mbuf pool) with its parent, and may have
//! copied the socket table's lock while another thread of the parent held it: it never
//! touches the table or the stack. Its copy of the fd table is its own: closing an inherited
//! fd of ours only drops the child's entry (Redis's BGSAVE child closes its listeners and
//! clients; the parent's connections are untouched), and a dup in the child refers to the same
//! entry. Every other call on such an fd goes to the kernel, which sees the identity socket
//! (never connected: reads and writes say ENOTCONN or EPIPE) or the kernel socket of a dual
//! listener: an inherited connection is not served in the child.

use libc::c_int;

use crate::fdtable::{FdState, FdTable};

/// A forked child's view of the fds of ours it inherited.
pub struct Child<'t>(pub &'t FdTable);

impl Child<'_> {
    /// close(): forgets the child's entry for `fd`. Returns whether it was ours.
    pub fn close(&self, fd: c_int) -> bool {
        self.0.release(fd).is_some()
    }

    /// `new` became a dup of `old`: if `old` is ours, so is `new`.
    pub fn alias(&self, old: c_int, new: c_int) -> Result<(), c_int> {
        match self.0.lookup(old) {
            FdState::Ours(i) => self.0.claim(new, i).map_err(|_| libc::EMFILE),
            FdState::NotOurs => Ok(()),
        }
    }
}
