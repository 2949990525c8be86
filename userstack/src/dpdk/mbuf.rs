//! The mbuf a frame lives in: received ones lent to the stack, transmitted ones written in
//! place; freed on drop.

use std::ptr::NonNull;

use dpdk_sys as sys;

use crate::link::{RxFrame, TxFrame};

/// A received mbuf, lent to the stack; freed on drop.
pub struct Mbuf(pub(super) NonNull<sys::rte_mbuf>);

// SAFETY: an Mbuf is the only owner of its mbuf. Moving it to another thread and freeing it
// there is allowed by DPDK: the pool is a multi-producer/multi-consumer ring, and threads that
// are not EAL lcores (rte_lcore_id() == LCORE_ID_ANY) bypass the per-lcore cache.
unsafe impl Send for Mbuf {}

impl RxFrame for Mbuf {
    fn data(&self) -> &[u8] {
        // SAFETY: the mbuf is a valid single-segment mbuf we own; mtod points at data_len bytes.
        unsafe {
            let m = self.0.as_ptr();
            std::slice::from_raw_parts(
                sys::rte_pktmbuf_mtod(m) as *const u8,
                usize::from(sys::rte_pktmbuf_data_len(m)),
            )
        }
    }
}

impl TxFrame for Mbuf {
    fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the only reference to this mbuf.
        unsafe {
            let m = self.0.as_ptr();
            std::slice::from_raw_parts_mut(
                sys::rte_pktmbuf_mtod(m),
                usize::from(sys::rte_pktmbuf_data_len(m)),
            )
        }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and nobody else frees it.
        unsafe { sys::rte_pktmbuf_free(self.0.as_ptr()) }
    }
}
