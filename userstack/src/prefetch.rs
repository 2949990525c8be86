//! Cache prefetch hints.

/// Asks the CPU to start loading `len` bytes at `p` into the cache. Only a hint: it never
/// faults and has no visible effect besides timing.
#[inline(always)]
pub fn lines(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut off = 0;
        while off < len {
            // SAFETY: PREFETCHT0 is a hint; it does not fault on any address and reads nothing
            // architecturally. SSE is part of the x86_64 baseline.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    p.wrapping_add(off).cast(),
                )
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}
