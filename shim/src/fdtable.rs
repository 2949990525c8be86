//! Which fds are ours.
//!
//! One `AtomicU32` per possible fd number, in one anonymous mapping sized to the RLIMIT_NOFILE
//! hard limit and allocated once, the first time an fd becomes ours (never, with `MTCP_PORTS`
//! unset). A slot holds 0 for "not ours" and `index + 1` for "ours, socket `index`" (the index
//! into the library's socket table, later). Looking an fd up is the hottest code of the
//! library: one acquire load of the table pointer (a plain `mov` on x86-64), a bounds check,
//! one relaxed load of the slot.
//!
//! Pages are only touched for fds that were marked, so a table for 1,048,576 fds costs 4 MiB
//! of address space and next to no memory. The size is capped at [`MAX_SLOTS`]; an fd at or
//! beyond the table's size can never be ours (claiming it fails, and the caller must refuse
//! loudly). A root process that raises its hard limit after the table exists has the same
//! limit.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use libc::c_int;

/// Largest table (fds 0 .. 2^24): 64 MiB of address space.
pub const MAX_SLOTS: usize = 1 << 24;

/// What an fd is to the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdState {
    /// A kernel fd (or no fd at all): libc handles it.
    NotOurs,
    /// One of ours; the value indexes the library's socket table.
    Ours(u32),
}

impl FdState {
    #[inline]
    pub fn is_ours(self) -> bool {
        matches!(self, FdState::Ours(_))
    }
}

/// Why an fd could not be marked as ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// Negative, or at or beyond the table's size.
    OutOfRange,
    /// The index cannot be stored (`u32::MAX` is reserved).
    BadIndex,
    /// Already ours, with this index.
    Taken(u32),
    /// The table could not be allocated (mmap failed).
    NoTable,
}

/// The table: `len` atomic slots in an anonymous mapping.
pub struct FdTable {
    slots: NonNull<AtomicU32>,
    len: usize,
    ours: AtomicUsize,
}

// SAFETY: the slots are atomics, the mapping lives as long as the table and is never moved.
unsafe impl Send for FdTable {}
// SAFETY: as above; every access to a slot is atomic.
unsafe impl Sync for FdTable {}

impl FdTable {
    /// A table for fds `0..len` (`len` clamped to 1..=MAX_SLOTS), or `None` if mmap fails.
    pub fn with_len(len: usize) -> Option<FdTable> {
        let len = len.clamp(1, MAX_SLOTS);
        let bytes = len * std::mem::size_of::<AtomicU32>();
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(FdTable {
            // Anonymous mappings are zero-filled: every slot starts as NotOurs. AtomicU32 has
            // the layout of u32 and a page-aligned address is aligned for it.
            slots: NonNull::new(p.cast::<AtomicU32>())?,
            len,
            ours: AtomicUsize::new(0),
        })
    }

    /// A table sized to this process's RLIMIT_NOFILE hard limit.
    pub fn for_process() -> Option<FdTable> {
        FdTable::with_len(nofile_hard_limit())
    }

    /// Number of fd numbers the table covers.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of fds currently ours.
    pub fn ours_count(&self) -> usize {
        self.ours.load(Ordering::Relaxed)
    }

    #[inline]
    fn slot(&self, fd: c_int) -> Option<&AtomicU32> {
        let i = usize::try_from(fd).ok()?;
        if i >= self.len {
            return None;
        }
        // SAFETY: i < len, and the mapping holds `len` initialised (zeroed) AtomicU32s for the
        // table's whole life.
        Some(unsafe { &*self.slots.as_ptr().add(i) })
    }

    /// The hot path: what `fd` is.
    #[inline]
    pub fn lookup(&self, fd: c_int) -> FdState {
        match self.slot(fd) {
            None => FdState::NotOurs,
            Some(s) => match s.load(Ordering::Relaxed) {
                0 => FdState::NotOurs,
                v => FdState::Ours(v - 1),
            },
        }
    }

    /// Marks `fd` as ours with socket index `index`; fails if it already is.
    pub fn claim(&self, fd: c_int, index: u32) -> Result<(), ClaimError> {
        let s = self.slot(fd).ok_or(ClaimError::OutOfRange)?;
        let v = index.checked_add(1).ok_or(ClaimError::BadIndex)?;
        match s.compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                self.ours.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(old) => Err(ClaimError::Taken(old - 1)),
        }
    }

    /// Marks `fd` as not ours; returns the index it had, if it was ours.
    pub fn release(&self, fd: c_int) -> Option<u32> {
        let s = self.slot(fd)?;
        match s.swap(0, Ordering::AcqRel) {
            0 => None,
            v => {
                self.ours.fetch_sub(1, Ordering::Relaxed);
                Some(v - 1)
            }
        }
    }
}

impl Drop for FdTable {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping `with_len` created; no reference to a slot
        // outlives `&self`.
        unsafe {
            libc::munmap(
                self.slots.as_ptr().cast(),
                self.len * std::mem::size_of::<AtomicU32>(),
            );
        }
    }
}

/// RLIMIT_NOFILE's hard limit (the most fds this process can open without privileges),
/// capped at [`MAX_SLOTS`]; 1024 if it cannot be read.
pub fn nofile_hard_limit() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    usize::try_from(rl.rlim_max)
        .unwrap_or(MAX_SLOTS)
        .min(MAX_SLOTS)
}

// ---------------------------------------------------------------------------------------------
// The process-wide table
// ---------------------------------------------------------------------------------------------

static GLOBAL: AtomicPtr<FdTable> = AtomicPtr::new(std::ptr::null_mut());

/// The process's table, if one was allocated.
#[inline]
pub fn global() -> Option<&'static FdTable> {
    let p = GLOBAL.load(Ordering::Acquire);
    // SAFETY: a non-null GLOBAL points to a leaked (never freed) FdTable.
    unsafe { p.as_ref() }
}

/// The process's table, allocated on first use (call from inside the library only: it may
/// allocate). `None` if the mapping cannot be made.
pub fn global_or_init() -> Option<&'static FdTable> {
    if let Some(t) = global() {
        return Some(t);
    }
    let fresh = Box::into_raw(Box::new(FdTable::for_process()?));
    match GLOBAL.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => {
            crate::mode::set_mode(crate::mode::MODE_TABLE);
            // SAFETY: just published; never freed.
            Some(unsafe { &*fresh })
        }
        Err(winner) => {
            // SAFETY: `fresh` was never shared; free it. `winner` is the leaked table.
            unsafe {
                drop(Box::from_raw(fresh));
                Some(&*winner)
            }
        }
    }
}

/// Whether `fd` is ours (false while no table exists).
#[inline]
pub fn is_ours(fd: c_int) -> bool {
    match global() {
        None => false,
        Some(t) => t.lookup(fd).is_ours(),
    }
}

/// Some socket is bound to a flagged port and not listening yet. Such an fd is not ours, but
/// its close must reach the socket table (which forgets the bind), or the fd number's next
/// socket would inherit it. Set by the runtime under the table's lock.
static PENDING_BINDS: AtomicBool = AtomicBool::new(false);

/// Notes whether some socket is bound to a flagged port and not listening yet.
pub fn set_pending_binds(on: bool) {
    PENDING_BINDS.store(on, Ordering::Relaxed);
}

/// Whether some socket is bound to a flagged port and not listening yet (close's gate).
#[inline]
pub fn pending_binds() -> bool {
    PENDING_BINDS.load(Ordering::Relaxed)
}

/// Whether any fd is ours right now (poll/select only look at their sets when one is).
#[inline]
pub fn any_ours() -> bool {
    match global() {
        None => false,
        Some(t) => t.ours_count() != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn empty_table_says_not_ours() {
        let t = FdTable::with_len(64).unwrap();
        assert_eq!(t.len(), 64);
        for fd in [-1, 0, 1, 63, 64, 1 << 20, c_int::MAX, c_int::MIN] {
            assert_eq!(t.lookup(fd), FdState::NotOurs, "fd {fd}");
        }
        assert_eq!(t.ours_count(), 0);
    }

    #[test]
    fn claim_lookup_release() {
        let t = FdTable::with_len(64).unwrap();
        t.claim(3, 0).unwrap();
        t.claim(63, 41).unwrap();
        assert_eq!(t.lookup(3), FdState::Ours(0));
        assert!(t.lookup(3).is_ours());
        assert_eq!(t.lookup(63), FdState::Ours(41));
        assert_eq!(t.lookup(4), FdState::NotOurs);
        assert_eq!(t.ours_count(), 2);
        assert_eq!(t.claim(3, 9), Err(ClaimError::Taken(0)));
        assert_eq!(t.release(3), Some(0));
        assert_eq!(t.release(3), None);
        assert_eq!(t.lookup(3), FdState::NotOurs);
        assert_eq!(t.ours_count(), 1);
        // Reused fd number: a fresh claim with a new index.
        t.claim(3, 7).unwrap();
        assert_eq!(t.lookup(3), FdState::Ours(7));
    }

    #[test]
    fn out_of_range_and_bad_index() {
        let t = FdTable::with_len(8).unwrap();
        assert_eq!(t.claim(8, 1), Err(ClaimError::OutOfRange));
        assert_eq!(t.claim(-1, 1), Err(ClaimError::OutOfRange));
        assert_eq!(t.claim(1, u32::MAX), Err(ClaimError::BadIndex));
        t.claim(1, u32::MAX - 1).unwrap();
        assert_eq!(t.lookup(1), FdState::Ours(u32::MAX - 1));
        assert_eq!(t.release(100), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(FdTable::with_len(0).unwrap().len(), 1);
        assert_eq!(FdTable::with_len(usize::MAX).unwrap().len(), MAX_SLOTS);
        let hard = nofile_hard_limit();
        assert!((1..=MAX_SLOTS).contains(&hard));
        let t = FdTable::for_process().unwrap();
        assert_eq!(t.len(), hard);
        // The highest fd the process may ever open is covered.
        t.claim((hard - 1) as c_int, 5).unwrap();
        assert_eq!(t.lookup((hard - 1) as c_int), FdState::Ours(5));
    }

    #[test]
    fn one_winner_per_fd_across_threads() {
        let t = Arc::new(FdTable::with_len(128).unwrap());
        let winners: usize = (0..8u32)
            .map(|i| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || (0..128).filter(|&fd| t.claim(fd, i).is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(winners, 128);
        assert_eq!(t.ours_count(), 128);
        for fd in 0..128 {
            assert!(t.lookup(fd).is_ours());
        }
    }

    #[test]
    fn global_table() {
        // Before any claim nothing is ours; the table appears once and stays the same.
        assert!(!is_ours(-1));
        let a = global_or_init().unwrap() as *const FdTable;
        let b = global_or_init().unwrap() as *const FdTable;
        assert_eq!(a, b);
        assert!(!is_ours(-1));
        assert!(!is_ours(c_int::MAX));
    }
}
