//! errno of the calling thread. The hooks save it before the library runs and restore it before
//! returning or forwarding, so the application sees exactly what libc would have left.

use libc::c_int;

/// The calling thread's errno.
#[inline]
pub fn get() -> c_int {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno for the
    // thread's whole life.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's errno.
#[inline]
pub fn set(v: c_int) {
    // SAFETY: as in `get`.
    unsafe { *libc::__errno_location() = v }
}

#[cfg(test)]
mod tests {
    #[test]
    fn roundtrip() {
        let old = super::get();
        super::set(libc::EPIPE);
        assert_eq!(super::get(), libc::EPIPE);
        super::set(old);
    }
}
