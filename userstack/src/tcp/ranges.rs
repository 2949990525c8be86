//! Sets of sequence ranges above a moving base: what a receiver holds out of order (and reports
//! in SACK blocks), and what a sender knows the peer holds (its SACK scoreboard).
//!
//! Ranges are kept sorted and disjoint as `[start, end)` in absolute sequence numbers, all
//! within 2^31 above the base the caller passes, so `end.wrapping_sub(base)` orders them.

use crate::seq::seq_lt;

/// At most this many ranges are kept; a segment that would make one more is not kept (a
/// receiver drops it, the peer sends it again; a sender forgets the block).
pub const MAX_RANGES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u32,
    pub end: u32,
    /// When it last grew (a counter): the most recent ranges go first in SACK blocks.
    pub stamp: u32,
}

impl Range {
    pub fn size(&self) -> u32 {
        self.end.wrapping_sub(self.start)
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ranges {
    list: Vec<Range>,
    clock: u32,
}

impl Ranges {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Range> {
        self.list.iter()
    }

    /// Adds `[start, end)`, merging with the ranges it touches. Returns false when it would be
    /// one range too many (nothing changed then).
    pub fn add(&mut self, start: u32, end: u32) -> bool {
        if !seq_lt(start, end) {
            return true;
        }
        self.clock = self.clock.wrapping_add(1);
        // First range that ends at or after `start` (touching counts).
        let i = self
            .list
            .iter()
            .position(|r| !seq_lt(r.end, start))
            .unwrap_or(self.list.len());
        // Ranges from i that start at or before `end` merge.
        let mut j = i;
        while j < self.list.len() && !seq_lt(end, self.list[j].start) {
            j += 1;
        }
        if i == j {
            if self.list.len() >= MAX_RANGES {
                return false;
            }
            self.list.insert(
                i,
                Range {
                    start,
                    end,
                    stamp: self.clock,
                },
            );
            return true;
        }
        let s = if seq_lt(self.list[i].start, start) {
            self.list[i].start
        } else {
            start
        };
        let e = if seq_lt(end, self.list[j - 1].end) {
            self.list[j - 1].end
        } else {
            end
        };
        self.list[i] = Range {
            start: s,
            end: e,
            stamp: self.clock,
        };
        self.list.drain(i + 1..j);
        true
    }

    /// Forgets everything below `base` (ranges that straddle it are cut).
    pub fn trim_below(&mut self, base: u32) {
        let mut drop = 0;
        for r in &mut self.list {
            if !seq_lt(base, r.end) {
                drop += 1;
            } else {
                if seq_lt(r.start, base) {
                    r.start = base;
                }
                break;
            }
        }
        self.list.drain(..drop);
    }

    /// The first range, if it starts at `at`: taken out and returned (a hole was filled).
    pub fn take_at(&mut self, at: u32) -> Option<Range> {
        match self.list.first() {
            Some(r) if !seq_lt(at, r.start) => Some(self.list.remove(0)),
            _ => None,
        }
    }

    /// The end of the highest range.
    pub fn high(&self) -> Option<u32> {
        self.list.last().map(|r| r.end)
    }

    /// How many bytes the ranges hold.
    pub fn bytes(&self) -> u32 {
        self.list.iter().map(Range::size).sum()
    }

    /// Bytes held above `seq`, and how many ranges hold them.
    pub fn above(&self, seq: u32) -> (u32, usize) {
        let mut bytes = 0;
        let mut n = 0;
        for r in self.list.iter().rev() {
            if !seq_lt(seq, r.end) {
                break;
            }
            bytes += if seq_lt(seq, r.start) {
                r.size()
            } else {
                r.end.wrapping_sub(seq)
            };
            n += 1;
        }
        (bytes, n)
    }

    /// If `seq` is inside a range: its end.
    pub fn covering(&self, seq: u32) -> Option<u32> {
        self.list
            .iter()
            .find(|r| !seq_lt(seq, r.start) && seq_lt(seq, r.end))
            .map(|r| r.end)
    }

    /// The ranges, most recently grown first, at most `N` (no allocation: SACK blocks are
    /// built from this for every ACK sent while data is out of order).
    pub fn recent<const N: usize>(&self) -> ([Range; N], usize) {
        let mut out = [Range {
            start: 0,
            end: 0,
            stamp: 0,
        }; N];
        let mut n = 0;
        for r in &self.list {
            let age = self.clock.wrapping_sub(r.stamp);
            // Insertion into the few kept, youngest first.
            let mut i = n;
            while i > 0 && self.clock.wrapping_sub(out[i - 1].stamp) > age {
                if i < N {
                    out[i] = out[i - 1];
                }
                i -= 1;
            }
            if i < N {
                out[i] = *r;
                n = (n + 1).min(N);
            }
        }
        (out, n)
    }

    pub fn clear(&mut self) {
        self.list.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(r: &Ranges) -> Vec<(u32, u32)> {
        r.iter().map(|x| (x.start, x.end)).collect()
    }

    #[test]
    fn merges_trims_and_orders_by_recency() {
        let mut r = Ranges::default();
        let base = u32::MAX - 10; // across the wrap
        let at = |o: u32| base.wrapping_add(o);
        assert!(r.add(at(20), at(30)));
        assert!(r.add(at(40), at(50)));
        assert!(r.add(at(5), at(8)));
        assert_eq!(
            spans(&r),
            vec![(at(5), at(8)), (at(20), at(30)), (at(40), at(50))]
        );
        assert!(r.add(at(28), at(40)));
        assert_eq!(spans(&r), vec![(at(5), at(8)), (at(20), at(50))]);
        assert_eq!(r.above(at(25)), (25, 1));
        assert_eq!(r.above(at(0)), (33, 2));
        assert_eq!(r.covering(at(49)), Some(at(50)));
        assert_eq!(r.covering(at(50)), None);
        let (recent, n) = r.recent::<3>();
        assert_eq!((recent[0].start, recent[1].start, n), (at(20), at(5), 2));
        assert!(r.add(at(6), at(7)));
        let (recent, n) = r.recent::<1>();
        assert_eq!((recent[0].start, n), (at(5), 1));
        r.trim_below(at(25));
        assert_eq!(spans(&r), vec![(at(25), at(50))]);
        assert_eq!(r.take_at(at(20)), None);
        assert_eq!(r.take_at(at(25)).map(|x| x.end), Some(at(50)));
        assert!(r.is_empty());
    }

    #[test]
    fn a_range_too_many_is_refused() {
        let mut r = Ranges::default();
        for i in 0..MAX_RANGES as u32 {
            assert!(r.add(i * 10, i * 10 + 5));
        }
        assert!(!r.add(1000, 1001));
        assert!(r.add(5, 7), "a merge needs no new range");
        assert_eq!(r.iter().count(), MAX_RANGES);
    }
}
