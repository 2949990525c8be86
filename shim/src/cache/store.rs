//! The entries of a cache: key -> the reply to send, bounded in bytes, oldest filled first
//! out.

use std::collections::VecDeque;

use super::UnixMs;

/// Bytes counted per entry besides its key (twice: map and queue) and reply.
const OVERHEAD: usize = 96;

pub struct Entry {
    /// The reply as the client gets it.
    pub reply: Box<[u8]>,
    /// When the key expires (Unix ms; `None`: it has no TTL).
    pub expires: Option<UnixMs>,
    /// When the application last saw a request for the key (a request the cache let through).
    pub seen: UnixMs,
    /// The application said the key changed, and the cache is being tested with its
    /// invalidations one reply late (`MTCP_REDIS_CACHE_FAULT=late`): answer once more, then
    /// drop it.
    pub doomed: bool,
    /// Requests answered from it.
    pub hits: u32,
    /// When the cache last answered a request for it (0: never).
    pub hit_at: UnixMs,
    gen: u64,
}

pub struct Store {
    budget: usize,
    bytes: usize,
    map: userstack::FastMap<Box<[u8]>, Entry>,
    /// Keys in fill order, with the generation of the entry they were queued for (an entry
    /// removed and filled again is queued again; the stale item is skipped).
    order: VecDeque<(Box<[u8]>, u64)>,
    next_gen: u64,
}

fn cost(key: &[u8], reply: &[u8]) -> usize {
    2 * key.len() + reply.len() + OVERHEAD
}

impl Store {
    pub fn new(budget: usize) -> Store {
        Store {
            budget,
            bytes: 0,
            map: Default::default(),
            order: VecDeque::new(),
            next_gen: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether an entry of this size may be kept at all (at most 1/16 of the budget).
    pub fn fits(&self, key: &[u8], reply: &[u8]) -> bool {
        cost(key, reply) <= self.budget / 16
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        self.map.get_mut(key)
    }

    #[cfg(test)]
    pub fn contains(&self, key: &[u8]) -> bool {
        self.map.contains_key(key)
    }

    /// Puts an entry, replacing the key's; the oldest entries go while over budget (those
    /// answered since Redis last saw them are put in `unseen`).
    pub fn insert(
        &mut self,
        key: &[u8],
        reply: Box<[u8]>,
        expires: Option<UnixMs>,
        now: UnixMs,
        unseen: &mut Vec<Box<[u8]>>,
    ) {
        if !self.fits(key, &reply) {
            return;
        }
        self.remove(key);
        self.next_gen += 1;
        self.bytes += cost(key, &reply);
        self.map.insert(
            key.into(),
            Entry {
                reply,
                expires,
                seen: now,
                doomed: false,
                hits: 0,
                hit_at: 0,
                gen: self.next_gen,
            },
        );
        self.order.push_back((key.into(), self.next_gen));
        while self.bytes > self.budget {
            let Some((k, g)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|e| e.gen == g)
                && self.take(&k).is_some_and(|e| e.hit_at > e.seen)
            {
                unseen.push(k);
            }
        }
        // Stale queue items (keys removed or refilled) are dropped once they are the many.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|e| e.gen == *g));
        }
    }

    /// Removes `key`'s entry. Returns whether there was one.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.take(key).is_some()
    }

    /// Removes `key`'s entry and returns it.
    pub fn take(&mut self, key: &[u8]) -> Option<Entry> {
        let e = self.map.remove(key)?;
        self.bytes -= cost(key, &e.reply);
        Some(e)
    }

    /// Every entry goes.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.bytes = 0;
    }

    /// Every entry is doomed (see [`Entry::doomed`]).
    pub fn doom_all(&mut self) {
        for e in self.map.values_mut() {
            e.doomed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_entries_go_when_over_budget() {
        let mut s = Store::new(16 * 200);
        for i in 0..100u32 {
            let k = i.to_be_bytes();
            s.insert(&k, vec![0u8; 50].into(), None, 0, &mut Vec::new());
            assert!(s.bytes() <= 16 * 200);
        }
        assert!(s.len() < 100 && s.len() > 10);
        assert!(s.contains(&99u32.to_be_bytes()));
        assert!(!s.contains(&0u32.to_be_bytes()));
        // A refill moves a key to the back of the queue.
        let first_left = (0..100u32).find(|i| s.contains(&i.to_be_bytes())).unwrap();
        s.insert(
            &first_left.to_be_bytes(),
            vec![1u8; 50].into(),
            None,
            0,
            &mut Vec::new(),
        );
        s.insert(
            &1000u32.to_be_bytes(),
            vec![0u8; 50].into(),
            None,
            0,
            &mut Vec::new(),
        );
        assert!(s.contains(&first_left.to_be_bytes()));
        s.remove(&first_left.to_be_bytes());
        s.clear();
        assert_eq!((s.len(), s.bytes()), (0, 0));
    }

    #[test]
    fn entries_larger_than_a_sixteenth_of_the_budget_are_not_kept() {
        let mut s = Store::new(16 * 1000);
        s.insert(b"k", vec![0u8; 2000].into(), None, 0, &mut Vec::new());
        assert_eq!(s.len(), 0);
    }
}
