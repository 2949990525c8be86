//! A connection's byte ring: its send queue, or its receive buffer, where bytes that arrived
//! out of order are written at their place ahead of the in-order ones and become part of them
//! when the hole before them is filled.

/// A fixed-capacity ring of bytes. `len` bytes from `head` are the queue; the rest of the
/// capacity may hold bytes written ahead of the queue (`write_at`) until `commit` takes them.
#[derive(Clone, PartialEq)]
pub struct Ring {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Ring {
            buf: vec![0; capacity].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room after the queued bytes.
    pub fn free(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Appends as much of `data` as fits; returns how much.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = self.write_at(self.len, data);
        self.len += n;
        n
    }

    /// Writes `data` at `off` bytes from the head (at or after the queue's end), as far as the
    /// capacity goes, without making it part of the queue; returns how much was written.
    #[inline]
    pub fn write_at(&mut self, off: usize, data: &[u8]) -> usize {
        let cap = self.buf.len();
        if off >= cap {
            return 0;
        }
        let n = data.len().min(cap - off);
        let start = self.at(off);
        let first = n.min(cap - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        if first < n {
            self.buf[..n - first].copy_from_slice(&data[first..n]);
        }
        n
    }

    /// The index of the byte `off` (at most the capacity) bytes from the head. (A compare, not
    /// a division: the head is below the capacity.)
    #[inline]
    fn at(&self, off: usize) -> usize {
        let i = self.head + off;
        if i >= self.buf.len() {
            i - self.buf.len()
        } else {
            i
        }
    }

    /// Makes `n` bytes written ahead of the queue (`write_at`) part of it.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.len + n <= self.buf.len());
        self.len += n;
    }

    /// The queue's bytes `off..off + n` as at most two slices (the second empty unless the
    /// range wraps).
    #[inline]
    pub fn slices(&self, off: usize, n: usize) -> (&[u8], &[u8]) {
        debug_assert!(off + n <= self.len);
        let cap = self.buf.len();
        if n == 0 {
            return (&[], &[]);
        }
        let start = self.at(off);
        let first = n.min(cap - start);
        (&self.buf[start..start + first], &self.buf[..n - first])
    }

    /// Empties the ring (its bytes stay allocated).
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    /// Copies up to `out.len()` bytes from the front of the queue without taking them.
    pub fn peek(&self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len);
        let (a, b) = self.slices(0, n);
        out[..a.len()].copy_from_slice(a);
        if !b.is_empty() {
            out[a.len()..n].copy_from_slice(b);
        }
        n
    }

    /// Takes `n` bytes from the front of the queue.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len);
        self.len -= n;
        // Not reset to 0 when empty: bytes written ahead of the queue keep their place.
        self.head = self.at(n);
    }

    /// Copies and takes up to `out.len()` bytes from the front of the queue.
    pub fn pop(&mut self, out: &mut [u8]) -> usize {
        let n = self.peek(out);
        self.consume(n);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::Ring;

    #[test]
    fn wraps_and_places_bytes_ahead_of_the_queue() {
        let mut r = Ring::new(8);
        assert_eq!(r.push(b"abcdef"), 6);
        let mut out = [0; 4];
        assert_eq!(r.pop(&mut out), 4);
        assert_eq!(&out, b"abcd");
        // Two bytes queued at 4..6; write 3 bytes 2 past the end (wrapping), then fill the gap.
        assert_eq!(r.write_at(4, b"xyz"), 3);
        assert_eq!(r.push(b"12"), 2);
        r.commit(3);
        assert_eq!(r.len(), 7);
        let (a, b) = r.slices(0, 7);
        assert_eq!([a, b].concat(), b"ef12xyz");
        assert_eq!(r.write_at(7, b"long"), 1);
        assert_eq!(r.push(b"!!"), 1);
        assert_eq!(r.free(), 0);
        let mut all = [0; 8];
        assert_eq!(r.pop(&mut all), 8);
        assert_eq!(&all, b"ef12xyz!");
        assert!(r.is_empty());
    }
}
