//! The thread-locals every hook reads: the re-entrancy guard's depth and whether the thread
//! is inside an event-loop iteration.
//!
//! On x86-64 they are C thread-locals of the initial-exec model (`tls.c`), found from the
//! thread pointer with two instructions; a `thread_local!` of a shared library is found by a
//! call of `__tls_get_addr` (~11 instructions, three times per request of an event loop). The
//! initial-exec model needs the library in the static TLS block: it is, as it is loaded with
//! the program (LD_PRELOAD), and glibc keeps room there for a few bytes of a library opened
//! later. Elsewhere, `thread_local!`.

use std::cell::Cell;

#[cfg(target_arch = "x86_64")]
mod slots {
    use std::cell::Cell;

    extern "C" {
        // Thread-locals (tls.c): never named here but as `sym` operands of the address
        // computation below, which makes their TLS relocation.
        static mut mtcp_guard_depth: u32;
        static mut mtcp_in_loop: u8;
    }

    /// The calling thread's instance of a thread-local of `tls.c`.
    macro_rules! tls_addr {
        ($sym:ident) => {{
            let p: *mut u8;
            // SAFETY: the initial-exec sequence for a thread-local of this object: its offset
            // from the thread pointer (from the GOT) added to the thread pointer (fs:0). It
            // reads memory only; the result depends only on the thread.
            unsafe {
                std::arch::asm!(
                    "mov {p}, qword ptr [rip + {v}@GOTTPOFF]",
                    "add {p}, qword ptr fs:[0]",
                    v = sym $sym,
                    p = out(reg) p,
                    options(nostack, pure, readonly),
                );
            }
            p
        }};
    }

    #[inline(always)]
    pub(super) fn depth() -> &'static Cell<u32> {
        let p = tls_addr!(mtcp_guard_depth);
        // SAFETY: the thread's own zero-initialised u32 (Cell<u32> has its layout), which lives
        // as long as the thread; a Cell cannot leave the thread.
        unsafe { &*p.cast::<Cell<u32>>() }
    }

    #[inline(always)]
    pub(super) fn in_loop() -> &'static Cell<bool> {
        let p = tls_addr!(mtcp_in_loop);
        // SAFETY: as in `depth`; the byte is 0 or 1 (only a Cell<bool> writes it).
        unsafe { &*p.cast::<Cell<bool>>() }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod slots {
    use std::cell::Cell;

    thread_local! {
        static DEPTH: Cell<u32> = const { Cell::new(0) };
        static IN_LOOP: Cell<bool> = const { Cell::new(false) };
    }

    #[inline]
    pub(super) fn depth() -> &'static Cell<u32> {
        // SAFETY: const-initialised, no destructor: it lives as long as the thread, and a
        // Cell cannot leave the thread.
        DEPTH.with(|d| unsafe { &*(d as *const Cell<u32>) })
    }

    #[inline]
    pub(super) fn in_loop() -> &'static Cell<bool> {
        // SAFETY: as in `depth`.
        IN_LOOP.with(|d| unsafe { &*(d as *const Cell<bool>) })
    }
}

/// This thread's re-entrancy depth (`crate::guard`).
#[inline(always)]
pub(crate) fn depth() -> &'static Cell<u32> {
    slots::depth()
}

/// Whether this thread is between a wait of ours that returned events and its next wait
/// (`crate::runtime::wait`).
#[inline(always)]
pub(crate) fn in_loop() -> &'static Cell<bool> {
    slots::in_loop()
}
