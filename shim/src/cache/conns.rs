//! A cache's state per connection, by the connection's key ([`super::Responder`]'s `conn`).
//! The socket table names a stack connection `slot << 32 | generation` with small, dense
//! slots: those keys index a vector by their upper half (every request of a followed
//! connection looks its state up two or three times, where a hash map's lookup cost ~45
//! instructions); any other key (the kernel side's connections, or a key whose place is
//! taken by another live one) goes to a map.

use userstack::FastMap;

/// Keys whose upper half is below this index the vector.
const DENSE: u64 = 1 << 20;

pub(crate) struct ConnMap<T> {
    /// By the key's upper half: the key's lower half and the value.
    dense: Vec<Option<(u32, T)>>,
    other: FastMap<u64, T>,
}

impl<T> Default for ConnMap<T> {
    fn default() -> Self {
        ConnMap {
            dense: Vec::new(),
            other: FastMap::default(),
        }
    }
}

impl<T> ConnMap<T> {
    #[inline]
    fn index(key: u64) -> Option<(usize, u32)> {
        (key >> 32 < DENSE).then_some(((key >> 32) as usize, key as u32))
    }

    #[inline]
    pub(crate) fn get(&self, key: &u64) -> Option<&T> {
        if let Some((i, low)) = Self::index(*key) {
            if let Some(Some((l, v))) = self.dense.get(i) {
                if *l == low {
                    return Some(v);
                }
            }
        }
        self.other.get(key)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, key: &u64) -> Option<&mut T> {
        if let Some((i, low)) = Self::index(*key) {
            if let Some(Some((l, v))) = self.dense.get_mut(i) {
                if *l == low {
                    return Some(v);
                }
            }
        }
        self.other.get_mut(key)
    }

    /// Sets `key`'s value; returns the one it replaces. (A key whose place in the vector is
    /// taken by another live key goes to the map.)
    pub(crate) fn insert(&mut self, key: u64, value: T) -> Option<T> {
        let old = self.other.remove(&key);
        if let Some((i, low)) = Self::index(key) {
            if self.dense.len() <= i {
                self.dense.resize_with(i + 1, || None);
            }
            match &mut self.dense[i] {
                Some((l, v)) if *l == low => return Some(std::mem::replace(v, value)),
                slot @ None => {
                    *slot = Some((low, value));
                    return old;
                }
                Some(_) => {}
            }
        }
        self.other.insert(key, value);
        old
    }

    pub(crate) fn remove(&mut self, key: &u64) -> Option<T> {
        if let Some((i, low)) = Self::index(*key) {
            if let Some(slot) = self.dense.get_mut(i) {
                if slot.as_ref().is_some_and(|(l, _)| *l == low) {
                    return slot.take().map(|(_, v)| v);
                }
            }
        }
        self.other.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_slot_and_other_generations_are_other_connections() {
        let mut m = ConnMap::default();
        let a = 7u64 << 32 | 1;
        let b = 7u64 << 32 | 2;
        let far = 1u64 << 63 | 5;
        assert_eq!(m.insert(a, "a"), None);
        assert_eq!(m.insert(far, "far"), None);
        assert_eq!(m.get(&a), Some(&"a"));
        assert_eq!(m.get(&b), None);
        assert_eq!(m.remove(&b), None);
        assert_eq!(
            m.get(&a),
            Some(&"a"),
            "removing another generation leaves it"
        );
        assert_eq!(m.get(&far), Some(&"far"));
        assert_eq!(m.insert(a, "a2"), Some("a"));
        *m.get_mut(&a).unwrap() = "a3";
        assert_eq!(m.remove(&a), Some("a3"));
        assert_eq!(m.get(&a), None);
        assert_eq!(m.insert(b, "b"), None, "a new generation in the freed slot");
        assert_eq!(m.get(&b), Some(&"b"));
        // Two live keys of one slot (any keys are names): both kept.
        assert_eq!(m.insert(a, "a4"), None);
        assert_eq!(m.get(&a), Some(&"a4"));
        assert_eq!(m.get(&b), Some(&"b"));
        assert_eq!(m.remove(&b), Some("b"));
        assert_eq!(m.get(&a), Some(&"a4"));
        assert_eq!(m.insert(b, "b2"), None);
        assert_eq!(
            m.insert(a, "a5"),
            Some("a4"),
            "one value per key, wherever it is"
        );
        assert_eq!(m.remove(&a), Some("a5"));
        assert_eq!(m.remove(&a), None);
        assert_eq!(m.get(&b), Some(&"b2"));
        assert_eq!(m.get(&(3u64 << 32 | 1)), None, "beyond the vector");
        assert_eq!(m.remove(&far), Some("far"));
        assert_eq!(m.get(&far), None);
    }
}
