//! TCP sequence numbers: comparison modulo 2^32.

/// Compares sequence numbers modulo 2^32.
pub fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}
